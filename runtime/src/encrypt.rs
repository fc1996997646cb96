//! Encryption of the data plane between processes (`--cluster-encrypt`), beside timely rather than inside it.
//!
//! timely's network layer takes any stream it can clone into a reader and a writer, and drives them from two
//! threads; a TLS session cannot be shared that way. Instead each data connection gets a local socket pair:
//! timely gets one end, and two relay threads move bytes between the other end and the TCP connection, one
//! direction each, sealing what goes out and opening what comes in with ChaCha20-Poly1305 (the `chacha20poly1305`
//! crate). Each direction has its own key, derived with HKDF-SHA256 from the cluster secret and both sides'
//! connect-time nonces ([`crate::connect`]), so keys are fresh for every connection; frames carry a counter as
//! their nonce, so a frame replayed, dropped, reordered or altered on the wire fails to open, and the process
//! stops as for a lost peer.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;

/// The largest plaintext in one frame.
const FRAME: usize = 64 * 1024;
/// The bytes of the authentication tag each frame carries.
const TAG: usize = 16;

/// One connection's keys, as one side sees them.
#[derive(Clone)]
pub(crate) struct Keys {
    send: [u8; 32],
    receive: [u8; 32],
}

impl Keys {
    /// The keys of a connection whose connecting side sent `connector_nonce` and accepting side
    /// `acceptor_nonce`, for the side `connector` says.
    pub(crate) fn derive(secret: &[u8], connector_nonce: &[u8], acceptor_nonce: &[u8], connector: bool) -> Keys {
        let salt = [connector_nonce, acceptor_nonce].concat();
        let hkdf = Hkdf::<Sha256>::new(Some(&salt), secret);
        let (mut forward, mut backward) = ([0u8; 32], [0u8; 32]);
        #[allow(clippy::expect_used, reason = "32 bytes is far below HKDF-SHA256's limit of 8160")]
        {
            hkdf.expand(b"tributary data plane v1: connector to acceptor", &mut forward).expect("a valid length");
            hkdf.expand(b"tributary data plane v1: acceptor to connector", &mut backward).expect("a valid length");
        }
        if connector { Keys { send: forward, receive: backward } } else { Keys { send: backward, receive: forward } }
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&counter.to_be_bytes());
    Nonce::from(bytes)
}

/// Puts `tcp` behind a relay that encrypts with `keys`; returns the local end for timely. `name` names the
/// peer in messages.
pub(crate) fn relay(tcp: TcpStream, keys: &Keys, name: String) -> io::Result<UnixStream> {
    let (ours, theirs) = UnixStream::pair()?;
    let (tcp_in, local_out) = (tcp.try_clone()?, theirs.try_clone()?);
    let seal = ChaCha20Poly1305::new(Key::from_slice(&keys.send));
    let open = ChaCha20Poly1305::new(Key::from_slice(&keys.receive));
    let out_name = name.clone();
    std::thread::Builder::new().name("tributary:seal".into()).spawn(move || {
        if let Err(e) = send(theirs, tcp, &seal) {
            tracing::debug!("the encrypted connection to {out_name} ended: {e}");
        }
    })?;
    std::thread::Builder::new().name("tributary:open".into()).spawn(move || {
        if let Err(e) = receive(tcp_in, local_out, &open) {
            if e.kind() == io::ErrorKind::InvalidData {
                tracing::error!("the data from {name} failed authentication ({e}): the connection was altered on the way, or the peer holds another secret; stopping");
            } else {
                tracing::debug!("the encrypted connection from {name} ended: {e}");
            }
        }
    })?;
    Ok(ours)
}

/// Seals what timely writes into frames `[length: u32 BE][ciphertext + tag]` on `tcp`.
fn send(mut local: UnixStream, mut tcp: TcpStream, cipher: &ChaCha20Poly1305) -> io::Result<()> {
    let mut buf = vec![0u8; FRAME];
    let mut frame = Vec::with_capacity(4 + FRAME + TAG);
    let result = (|| {
        for counter in 0u64.. {
            let n = local.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            frame.clear();
            frame.extend_from_slice(&[0; 4]);
            frame.extend_from_slice(&buf[..n]);
            let mut body = frame.split_off(4);
            cipher.encrypt_in_place(&nonce(counter), b"", &mut body).map_err(|_| io::Error::other("encryption failed"))?;
            let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame too long"))?;
            frame.clear();
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&body);
            tcp.write_all(&frame)?;
        }
        Ok(())
    })();
    // timely closed its writing half (it finished): pass that on, and only that, as a TCP half-close. The
    // other direction goes on until the peer finishes too.
    let _ = tcp.shutdown(if result.is_ok() { Shutdown::Write } else { Shutdown::Both });
    let _ = local.shutdown(Shutdown::Read);
    result
}

/// Opens frames from `tcp` and hands the plaintext to timely; a frame that does not open ends the connection.
fn receive(mut tcp: TcpStream, mut local: UnixStream, cipher: &ChaCha20Poly1305) -> io::Result<()> {
    let mut body = Vec::with_capacity(FRAME + TAG);
    let result = (|| {
        for counter in 0u64.. {
            let mut len = [0u8; 4];
            match tcp.read_exact(&mut len) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                other => other?,
            }
            let len = u32::from_be_bytes(len) as usize;
            if !(TAG..=FRAME + TAG).contains(&len) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
            }
            body.resize(len, 0);
            tcp.read_exact(&mut body)?;
            cipher
                .decrypt_in_place(&nonce(counter), b"", &mut body)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("frame {counter} does not open")))?;
            local.write_all(&body)?;
        }
        Ok(())
    })();
    // A clean end (the peer finished) reaches timely as the end of what it reads, and only that; a frame
    // that does not open, or a broken connection, ends both directions, as a broken TCP connection would.
    match &result {
        Ok(()) => {
            let _ = local.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = local.shutdown(Shutdown::Both);
            let _ = tcp.shutdown(Shutdown::Both);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Two relays over a real TCP connection: `(a's local end, b's local end, the TCP connection's far side
    /// as a tap)`. The tap sees what crosses the wire from a to b.
    fn pair() -> (UnixStream, UnixStream, std::thread::JoinHandle<Vec<u8>>) {
        let secret = b"a cluster secret for the relay test";
        let (cn, an) = ([1u8; 32], [2u8; 32]);
        // a -> tap -> b: the tap forwards and records.
        let to_tap = TcpListener::bind("127.0.0.1:0").unwrap();
        let to_b = TcpListener::bind("127.0.0.1:0").unwrap();
        let a_tcp = TcpStream::connect(to_tap.local_addr().unwrap()).unwrap();
        let (tap_in, _) = to_tap.accept().unwrap();
        let tap_out = TcpStream::connect(to_b.local_addr().unwrap()).unwrap();
        let (b_tcp, _) = to_b.accept().unwrap();
        let a = relay(a_tcp, &Keys::derive(secret, &cn, &an, true), "b".into()).unwrap();
        let b = relay(b_tcp, &Keys::derive(secret, &cn, &an, false), "a".into()).unwrap();
        let tap = std::thread::spawn(move || {
            let (mut tap_in, mut tap_out) = (tap_in, tap_out);
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = tap_in.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    let _ = tap_out.shutdown(Shutdown::Write);
                    return seen;
                }
                seen.extend_from_slice(&buf[..n]);
                if tap_out.write_all(&buf[..n]).is_err() {
                    return seen;
                }
            }
        });
        (a, b, tap)
    }

    #[test]
    fn what_crosses_the_wire_is_sealed_and_arrives_whole() {
        let (mut a, mut b, tap) = pair();
        let message: Vec<u8> = b"the plaintext records of the dataflow ".iter().copied().cycle().take(200_000).collect();
        a.write_all(&message).unwrap();
        a.shutdown(Shutdown::Write).unwrap();
        let mut received = Vec::new();
        b.read_to_end(&mut received).unwrap();
        assert_eq!(received, message, "b receives exactly what a sent");
        let wire = tap.join().unwrap();
        assert!(wire.len() > message.len(), "frames and tags are added");
        assert!(!wire.windows(16).any(|w| w == b"plaintext record"), "the plaintext shows on the wire");
    }

    #[test]
    fn an_altered_frame_ends_the_connection_instead_of_delivering_it() {
        let secret = b"a cluster secret for the relay test";
        let keys = Keys::derive(secret, &[1; 32], &[2; 32], false);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut attacker = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b_tcp, _) = listener.accept().unwrap();
        let mut b = relay(b_tcp, &keys, "a".into()).unwrap();
        // A frame sealed with the right key, one byte flipped.
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&Keys::derive(secret, &[1; 32], &[2; 32], true).send));
        let mut body = b"records".to_vec();
        cipher.encrypt_in_place(&nonce(0), b"", &mut body).unwrap();
        body[0] ^= 1;
        attacker.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        attacker.write_all(&body).unwrap();
        let mut received = Vec::new();
        let _ = b.read_to_end(&mut received);
        assert!(received.is_empty(), "an altered frame was delivered: {received:?}");
        // Keys differ per direction and per connection.
        let other = Keys::derive(secret, &[3; 32], &[2; 32], true);
        assert_ne!(other.send, Keys::derive(secret, &[1; 32], &[2; 32], true).send);
        assert_eq!(keys.receive, Keys::derive(secret, &[1; 32], &[2; 32], true).send);
    }
}
