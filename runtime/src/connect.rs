//! Connecting the processes of a cluster, with a deadline, before timely takes the sockets over.
//!
//! As in timely, process `p` connects to every process with a lower index and accepts connections from every
//! process with a higher one. Unlike timely, every wait has a deadline, and a handshake checks that both ends run
//! the same layout (process count, workers per process), so a mismatched flag fails at once with a clear message
//! instead of corrupting the exchange. The connected sockets go to timely's
//! `initialize_networking_from_sockets`.
//!
//! Every pair of processes opens two connections: one for timely's data, and one that carries only heartbeats
//! ([`crate::liveness`]), so a peer that is stopped or cut off is noticed even when no data flows.
//!
//! With a cluster secret (`--cluster-secret-file`) each connection is authenticated both ways before it counts:
//! after the greetings the connecting side sends a random nonce, the accepting side answers with its own nonce
//! and an HMAC-SHA256 over both nonces and both greetings, and the connecting side answers with its HMAC. A
//! connection that proves nothing, or without a secret, is refused with a warning naming its address and the
//! wait goes on, so a stranger cannot join the cluster or stop it from forming. With `--cluster-encrypt` the
//! data connections are then encrypted with keys derived from the secret and both nonces ([`crate::encrypt`]).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::cli::{ClusterSecret, Layout};
use crate::encrypt::Keys;
use crate::error::{Error, Result};
use crate::hostfile::HostFile;

const MAGIC: &[u8; 8] = b"TRIBUTRY";
const PROTOCOL: u32 = 3;
const HELLO_LEN: usize = 8 + 4 + 8 + 8 + 8 + 8 + 8;
/// The bytes of a nonce and of an HMAC-SHA256.
const NONCE: usize = 32;
const MAC: usize = 32;
/// Which of a pair's connections a greeting opens.
const DATA: u64 = 0;
const LIVENESS: u64 = 1;
/// How often the startup loop retries refused connections and polls for incoming ones.
const POLL: Duration = Duration::from_millis(20);
/// How long between "still waiting" log lines.
const REPORT_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
struct Hello {
    process: u64,
    processes: u64,
    workers: u64,
    channel: u64,
    /// 1: this process holds a cluster secret and authenticates every connection; 2: and encrypts the data
    /// connections (`--cluster-encrypt`); 0: none.
    auth: u64,
}

impl Hello {
    fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&PROTOCOL.to_be_bytes());
        out[12..20].copy_from_slice(&self.process.to_be_bytes());
        out[20..28].copy_from_slice(&self.processes.to_be_bytes());
        out[28..36].copy_from_slice(&self.workers.to_be_bytes());
        out[36..44].copy_from_slice(&self.channel.to_be_bytes());
        out[44..52].copy_from_slice(&self.auth.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8; HELLO_LEN]) -> std::result::Result<Hello, String> {
        if &bytes[..8] != MAGIC {
            return Err("the peer is not a Tributary process (wrong greeting)".into());
        }
        #[allow(clippy::expect_used, reason = "constant ranges of a fixed-size array: the lengths match")]
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        #[allow(clippy::expect_used, reason = "a constant range of a fixed-size array")]
        let protocol = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if protocol != PROTOCOL {
            return Err(format!("the peer speaks cluster protocol {protocol}, this process {PROTOCOL}; run the same build everywhere"));
        }
        let channel = u64_at(36);
        if channel != DATA && channel != LIVENESS {
            return Err(format!("the peer asks for connection kind {channel}, which this build does not know"));
        }
        Ok(Hello { process: u64_at(12), processes: u64_at(20), workers: u64_at(28), channel, auth: u64_at(44) })
    }
}

/// The connections to the peers, one entry per process, `None` at this process's own index (as timely expects).
pub(crate) struct Connected {
    /// For timely's data.
    pub(crate) data: Vec<Option<TcpStream>>,
    /// For heartbeats.
    pub(crate) liveness: Vec<Option<TcpStream>>,
    /// With `--cluster-encrypt`, each data connection's keys.
    pub(crate) keys: Vec<Option<Keys>>,
}

/// Connects this process to all its peers, or fails once `layout.connect_timeout` has passed.
///
/// `interrupted` is asked between attempts and returns the name of a signal that arrived, which ends the wait.
pub(crate) fn connect_peers(layout: &Layout, hosts: &HostFile, interrupted: &dyn Fn() -> Option<&'static str>) -> Result<Connected> {
    let me = layout.process;
    let own = &hosts.hosts()[me];
    let listener = TcpListener::bind(own.resolved).map_err(|source| Error::Listen { process: me, address: own.address.clone(), source })?;
    listener.set_nonblocking(true).map_err(|source| Error::Io { what: "cannot make the listening socket non-blocking".into(), source })?;
    let secret = layout.secret.as_ref();
    let hello = |channel| Hello {
        process: me as u64,
        processes: layout.processes as u64,
        workers: layout.workers_per_process as u64,
        channel,
        auth: match (secret.is_some(), layout.encrypt) {
            (false, _) => 0,
            (true, false) => 1,
            (true, true) => 2,
        },
    };
    let started = Instant::now();
    let deadline = started + layout.connect_timeout;
    let mut sockets: Vec<Option<TcpStream>> = (0..layout.processes).map(|_| None).collect();
    let mut liveness: Vec<Option<TcpStream>> = (0..layout.processes).map(|_| None).collect();
    let mut keys: Vec<Option<Keys>> = (0..layout.processes).map(|_| None).collect();
    let mut next_report = started + REPORT_EVERY;
    tracing::info!(listen = %own.address, peers = layout.processes - 1, "connecting to peer processes");

    loop {
        // Accept from higher-indexed peers.
        loop {
            match listener.accept() {
                Ok((stream, from)) => match accept_one(stream, &hello(DATA), secret, &sockets, &liveness) {
                    Ok((peer, LIVENESS, stream, _)) => liveness[peer] = Some(stream),
                    Ok((peer, _, stream, session)) => {
                        tracing::debug!(peer, %from, "peer connected");
                        sockets[peer] = Some(stream);
                        keys[peer] = session;
                    }
                    Err(Refusal::Stray(why)) => tracing::warn!(%from, "ignoring a connection that is not a peer: {why}"),
                    Err(Refusal::Unauthenticated(why)) => {
                        tracing::warn!(%from, "refusing a connection from {from}: {why}");
                    }
                    Err(Refusal::Mismatch(peer, message)) => {
                        return Err(Error::Handshake { process: me, peer: describe(hosts, peer), message });
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(Error::Io { what: format!("accepting peer connections on {}", own.address), source }),
            }
        }
        // Connect to lower-indexed peers: the data connection, then the heartbeat one.
        for peer in 0..me {
            for channel in [DATA, LIVENESS] {
                let open = if channel == DATA { sockets[peer].is_some() } else { liveness[peer].is_some() || sockets[peer].is_none() };
                if open {
                    continue;
                }
                let target = &hosts.hosts()[peer];
                let Ok(stream) = TcpStream::connect_timeout(&target.resolved, Duration::from_millis(500)) else { continue };
                match greet(stream, &hello(channel), secret, peer) {
                    Ok((stream, session)) => {
                        tracing::debug!(peer, address = %target.address, channel, "connected to peer");
                        let slots = if channel == DATA { &mut sockets } else { &mut liveness };
                        slots[peer] = Some(stream);
                        if channel == DATA {
                            keys[peer] = session;
                        }
                    }
                    Err(GreetError::Retry(why)) => tracing::debug!(peer, "connection attempt failed, retrying: {why}"),
                    Err(GreetError::Unauthenticated(why)) => {
                        tracing::warn!(peer, address = %target.address, "the process at {} is refused: {why}", target.address);
                    }
                    Err(GreetError::Mismatch(message)) => {
                        return Err(Error::Handshake { process: me, peer: describe(hosts, peer), message });
                    }
                }
            }
        }

        let missing: Vec<usize> = (0..layout.processes).filter(|&p| p != me && (sockets[p].is_none() || liveness[p].is_none())).collect();
        if missing.is_empty() {
            break;
        }
        if let Some(signal) = interrupted() {
            return Err(Error::Interrupted { signal });
        }
        let now = Instant::now();
        if now >= deadline {
            let missing = missing.iter().map(|&p| describe(hosts, p)).collect::<Vec<_>>().join(", ");
            return Err(Error::PeersMissing { process: me, missing, timeout: layout.connect_timeout });
        }
        if now >= next_report {
            let waiting = missing.iter().map(|&p| describe(hosts, p)).collect::<Vec<_>>().join(", ");
            tracing::info!("still waiting for {waiting} ({}s left)", (deadline - now).as_secs());
            next_report = now + REPORT_EVERY;
        }
        std::thread::sleep(POLL);
    }

    for stream in sockets.iter().chain(liveness.iter()).flatten() {
        let setup = stream.set_nonblocking(false).and_then(|()| stream.set_read_timeout(None)).and_then(|()| stream.set_nodelay(true));
        setup.map_err(|source| Error::Io { what: "cannot configure a peer socket".into(), source })?;
    }
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "all {} peer processes connected", layout.processes - 1);
    Ok(Connected { data: sockets, liveness, keys })
}

fn describe(hosts: &HostFile, process: usize) -> String {
    format!("process {process} ({})", hosts.hosts()[process].address)
}

enum Refusal {
    /// Not one of ours: ignore it and keep waiting.
    Stray(String),
    /// One of ours with a different layout: fail.
    Mismatch(usize, String),
    /// It does not prove it holds the cluster secret: refuse it, log its address, keep waiting.
    Unauthenticated(String),
}

/// The HMAC-SHA256 of `role` (who proves), both nonces and both greetings under `secret`.
fn mac(secret: &ClusterSecret, role: &[u8], nonces: (&[u8; NONCE], &[u8; NONCE]), hellos: (&Hello, &Hello)) -> Hmac<Sha256> {
    #[allow(clippy::expect_used, reason = "HMAC takes keys of any length")]
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.bytes()).expect("HMAC takes any key length");
    mac.update(role);
    mac.update(nonces.0);
    mac.update(nonces.1);
    mac.update(&hellos.0.encode());
    mac.update(&hellos.1.encode());
    mac
}

fn nonce() -> std::io::Result<[u8; NONCE]> {
    let mut nonce = [0u8; NONCE];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(format!("no random numbers for a nonce: {e}")))?;
    Ok(nonce)
}

/// Whether the two sides' secrets allow the connection: `Ok(true)` to authenticate, `Ok(false)` with none on
/// either side, `Err` with what is wrong when only one side has one.
fn auth_agrees(theirs: &Hello, ours: &Hello) -> std::result::Result<bool, (bool, String)> {
    match (ours.auth, theirs.auth) {
        (0, 0) => Ok(false),
        // Whether both encrypt is checked once they have proven the secret (the proofs cover the greetings).
        (1 | 2, 1 | 2) => Ok(true),
        // We have a secret and they do not: a stranger (or a process started without the file).
        (1 | 2, _) => Err((true, "it has no cluster secret; give every process the same --cluster-secret-file".into())),
        _ => {
            Err((false, "it requires a cluster secret and this process has none; give every process the same --cluster-secret-file".into()))
        }
    }
}

/// Once both proved the secret: whether both encrypt the data connections, or neither.
fn check_encryption(theirs: &Hello, ours: &Hello) -> std::result::Result<(), String> {
    match (ours.auth, theirs.auth) {
        (2, 1) => {
            Err("it does not encrypt the data plane and this process does (--cluster-encrypt); start every process with the same flags"
                .into())
        }
        (1, 2) => {
            Err("it encrypts the data plane (--cluster-encrypt) and this process does not; start every process with the same flags".into())
        }
        _ => Ok(()),
    }
}

/// The keys of a data connection both sides encrypt.
fn session(
    secret: &ClusterSecret,
    ours: &Hello,
    connector_nonce: &[u8; NONCE],
    acceptor_nonce: &[u8; NONCE],
    connector: bool,
) -> Option<Keys> {
    (ours.auth == 2 && ours.channel == DATA).then(|| Keys::derive(secret.bytes(), connector_nonce, acceptor_nonce, connector))
}

fn check_layout(theirs: &Hello, ours: &Hello) -> std::result::Result<(), String> {
    if theirs.processes != ours.processes || theirs.workers != ours.workers {
        return Err(format!(
            "it runs --processes {} --workers {}, this process --processes {} --workers {}; start every process with the same flags and host file",
            theirs.processes, theirs.workers, ours.processes, ours.workers
        ));
    }
    Ok(())
}

fn accept_one(
    mut stream: TcpStream,
    ours: &Hello,
    secret: Option<&ClusterSecret>,
    sockets: &[Option<TcpStream>],
    liveness: &[Option<TcpStream>],
) -> std::result::Result<(usize, u64, TcpStream, Option<Keys>), Refusal> {
    let io = |e: std::io::Error| Refusal::Stray(e.to_string());
    stream.set_nonblocking(false).map_err(io)?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
    let mut buf = [0u8; HELLO_LEN];
    stream.read_exact(&mut buf).map_err(io)?;
    let theirs = Hello::decode(&buf).map_err(Refusal::Stray)?;
    let peer = theirs.process as usize;
    if peer <= ours.process as usize || peer >= sockets.len() {
        return Err(Refusal::Stray(format!("it claims to be process {peer}, which should not connect to process {}", ours.process)));
    }
    // Answer before judging the layout, so the peer sees a mismatch too and both fail at once.
    stream.write_all(&ours.encode()).map_err(io)?;
    let mut keys = None;
    match (auth_agrees(&theirs, ours), secret) {
        (Ok(true), Some(secret)) => {
            let unproven = |e: std::io::Error| {
                Refusal::Unauthenticated(format!("it claims to be process {peer} but did not finish the authentication ({e})"))
            };
            let mut theirs_nonce = [0u8; NONCE];
            stream.read_exact(&mut theirs_nonce).map_err(unproven)?;
            let our_nonce = nonce().map_err(io)?;
            let proof = mac(secret, b"acceptor", (&theirs_nonce, &our_nonce), (&theirs, ours)).finalize().into_bytes();
            stream.write_all(&our_nonce).and_then(|()| stream.write_all(&proof)).map_err(unproven)?;
            let mut their_proof = [0u8; MAC];
            stream.read_exact(&mut their_proof).map_err(unproven)?;
            mac(secret, b"connector", (&theirs_nonce, &our_nonce), (&theirs, ours)).verify_slice(&their_proof).map_err(|_| {
                Refusal::Unauthenticated(format!("it claims to be process {peer} but does not hold the cluster secret (wrong secret)"))
            })?;
            check_encryption(&theirs, ours).map_err(|m| Refusal::Mismatch(peer, m))?;
            keys = session(secret, &Hello { channel: theirs.channel, ..*ours }, &theirs_nonce, &our_nonce, false);
        }
        (Ok(_), _) => {}
        (Err((true, why)), _) => return Err(Refusal::Unauthenticated(format!("it claims to be process {peer} but {why}"))),
        (Err((false, why)), _) => return Err(Refusal::Mismatch(peer, why)),
    }
    check_layout(&theirs, ours).map_err(|m| Refusal::Mismatch(peer, m))?;
    let taken = if theirs.channel == LIVENESS { liveness[peer].is_some() } else { sockets[peer].is_some() };
    if taken {
        return Err(Refusal::Mismatch(peer, "a second process claims this index; check the --process flags".into()));
    }
    Ok((peer, theirs.channel, stream, keys))
}

enum GreetError {
    Retry(String),
    Mismatch(String),
    /// The process at the address does not prove it holds the cluster secret: keep trying until the deadline.
    Unauthenticated(String),
}

fn greet(
    mut stream: TcpStream,
    ours: &Hello,
    secret: Option<&ClusterSecret>,
    peer: usize,
) -> std::result::Result<(TcpStream, Option<Keys>), GreetError> {
    let retry = |e: std::io::Error| GreetError::Retry(e.to_string());
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(retry)?;
    stream.write_all(&ours.encode()).map_err(retry)?;
    let mut buf = [0u8; HELLO_LEN];
    stream.read_exact(&mut buf).map_err(retry)?;
    let theirs = Hello::decode(&buf).map_err(GreetError::Mismatch)?;
    if theirs.process as usize != peer {
        return Err(GreetError::Mismatch(format!("the process at that address says it is process {}", theirs.process)));
    }
    let mut keys = None;
    match (auth_agrees(&theirs, ours), secret) {
        (Ok(true), Some(secret)) => {
            let our_nonce = nonce().map_err(retry)?;
            stream.write_all(&our_nonce).map_err(retry)?;
            let mut reply = [0u8; NONCE + MAC];
            // A peer that refuses us closes the connection here.
            stream.read_exact(&mut reply).map_err(|e| {
                GreetError::Unauthenticated(format!(
                    "it closed the connection during the authentication ({e}); does it hold the same cluster secret?"
                ))
            })?;
            #[allow(clippy::expect_used, reason = "a constant range of a fixed-size array")]
            let their_nonce: [u8; NONCE] = reply[..NONCE].try_into().expect("32 bytes");
            let proven = mac(secret, b"acceptor", (&our_nonce, &their_nonce), (ours, &theirs)).verify_slice(&reply[NONCE..]);
            // Our proof goes either way (it reveals nothing of the secret), so a refusing peer can say why.
            let proof = mac(secret, b"connector", (&our_nonce, &their_nonce), (ours, &theirs)).finalize().into_bytes();
            stream.write_all(&proof).map_err(retry)?;
            proven.map_err(|_| GreetError::Unauthenticated("it does not hold the cluster secret (wrong secret)".into()))?;
            check_encryption(&theirs, ours).map_err(GreetError::Mismatch)?;
            keys = session(secret, ours, &our_nonce, &their_nonce, true);
        }
        (Ok(_), _) => {}
        (Err((_, why)), _) => return Err(GreetError::Mismatch(why)),
    }
    check_layout(&theirs, ours).map_err(GreetError::Mismatch)?;
    Ok((stream, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_rejects_strangers() {
        let hello = Hello { process: 3, processes: 4, workers: 2, channel: LIVENESS, auth: 1 };
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
        let mut bytes = hello.encode();
        bytes[0] = b'X';
        assert!(Hello::decode(&bytes).unwrap_err().contains("not a Tributary process"));
        let other = Hello { process: 1, processes: 4, workers: 1, channel: DATA, auth: 0 };
        assert!(check_layout(&other, &hello).unwrap_err().contains("--workers 1"));
    }
}
