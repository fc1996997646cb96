//! A fault-injecting TCP proxy for the Kafka protocol, so retry paths can be tested against a real broker.
//!
//! Clients connect to the proxy, which forwards to the broker; the broker advertises the proxy's address
//! ([`crate::Broker::start_behind_proxy`]), so every connection a client opens goes through it. Faults:
//! - [`Proxy::set_down`]: reset every open connection and refuse new ones, as a broker outage;
//! - [`Proxy::set_stalled`]: keep connections open but forward nothing, as a hung broker or network;
//! - [`Proxy::drop_produce_responses`]: swallow the broker's next `n` Produce responses, so the producer times the
//!   request out and retries it (the broker then sees a duplicate sequence number).
//!
//! Frames are parsed only as far as the Kafka framing needs (4-byte length; requests' API key and correlation id,
//! responses' correlation id).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

/// The Produce API key.
const PRODUCE: i16 = 0;

#[derive(Default)]
struct State {
    down: AtomicBool,
    stalled: AtomicBool,
    drop_produce: AtomicUsize,
    dropped: AtomicUsize,
    connections: Mutex<Vec<TcpStream>>,
    closed: AtomicBool,
}

/// A proxy on a free loopback port forwarding to `target`; stops accepting when dropped.
pub struct Proxy {
    address: SocketAddr,
    state: Arc<State>,
}

impl Proxy {
    /// Starts a proxy on `listener` (already bound, so its port can be handed out first) forwarding to `target`.
    pub fn start(listener: TcpListener, target: SocketAddr) -> anyhow::Result<Proxy> {
        let address = listener.local_addr().context("proxy address")?;
        let state = Arc::new(State::default());
        let accepting = Arc::clone(&state);
        std::thread::Builder::new()
            .name("proxy:accept".into())
            .spawn(move || accept(listener, target, accepting))
            .context("cannot start the proxy")?;
        Ok(Proxy { address, state })
    }

    /// Binds a free loopback port for a proxy.
    pub fn bind() -> anyhow::Result<TcpListener> {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a loopback port for the proxy")
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Down: resets every connection and refuses new ones until set up again.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
        if down {
            for connection in self.state.connections.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                let _ = connection.shutdown(Shutdown::Both);
            }
        }
    }

    /// Stalled: connections stay open but nothing is forwarded until unstalled.
    pub fn set_stalled(&self, stalled: bool) {
        self.state.stalled.store(stalled, Ordering::SeqCst);
    }

    /// Swallows the broker's next `n` Produce responses.
    pub fn drop_produce_responses(&self, n: usize) {
        self.state.drop_produce.store(n, Ordering::SeqCst);
    }

    /// How many Produce responses have been swallowed so far.
    pub fn dropped(&self) -> usize {
        self.state.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::SeqCst);
        self.set_down(true);
        // Wake the accept loop so it sees `closed`.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_millis(100));
    }
}

fn accept(listener: TcpListener, target: SocketAddr, state: Arc<State>) {
    for client in listener.incoming() {
        if state.closed.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if state.down.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(target) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        {
            let mut connections = state.connections.lock().unwrap_or_else(|e| e.into_inner());
            for stream in [&client, &server] {
                if let Ok(clone) = stream.try_clone() {
                    connections.push(clone);
                }
            }
        }
        let produce_ids: Arc<Mutex<HashSet<i32>>> = Arc::default();
        let (Ok(client_r), Ok(server_w), Ok(server_r), Ok(client_w)) =
            (client.try_clone(), server.try_clone(), server.try_clone(), client.try_clone())
        else {
            continue;
        };
        let (up_state, up_ids) = (Arc::clone(&state), Arc::clone(&produce_ids));
        let _ = std::thread::Builder::new()
            .name("proxy:up".into())
            .spawn(move || forward(client_r, server_w, &up_state, Direction::Requests(up_ids)));
        let down_state = Arc::clone(&state);
        let _ = std::thread::Builder::new()
            .name("proxy:down".into())
            .spawn(move || forward(server_r, client_w, &down_state, Direction::Responses(produce_ids)));
    }
}

enum Direction {
    /// Client to broker: remembers the correlation ids of Produce requests.
    Requests(Arc<Mutex<HashSet<i32>>>),
    /// Broker to client: may swallow responses to those.
    Responses(Arc<Mutex<HashSet<i32>>>),
}

/// Forwards whole frames from `from` to `to`, applying the faults.
fn forward(mut from: TcpStream, mut to: TcpStream, state: &State, direction: Direction) {
    let mut length = [0u8; 4];
    loop {
        if from.read_exact(&mut length).is_err() {
            break;
        }
        let size = i32::from_be_bytes(length).max(0) as usize;
        let mut frame = vec![0u8; size];
        if from.read_exact(&mut frame).is_err() {
            break;
        }
        while state.stalled.load(Ordering::SeqCst) && !state.down.load(Ordering::SeqCst) {
            // A stall is a span of time during which nothing moves; polling the flag is how it ends.
            std::thread::sleep(Duration::from_millis(10));
        }
        if state.down.load(Ordering::SeqCst) {
            break;
        }
        match &direction {
            Direction::Requests(ids) if frame.len() >= 8 => {
                let api_key = i16::from_be_bytes([frame[0], frame[1]]);
                if api_key == PRODUCE {
                    let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                    ids.lock().unwrap_or_else(|e| e.into_inner()).insert(correlation);
                }
            }
            Direction::Responses(ids) if frame.len() >= 4 => {
                let correlation = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                let produce = ids.lock().unwrap_or_else(|e| e.into_inner()).remove(&correlation);
                if produce && state.drop_produce.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                    state.dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
            }
            _ => {}
        }
        if to.write_all(&length).and_then(|()| to.write_all(&frame)).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server of length-prefixed frames.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        address
    }

    fn round_trip(address: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let frame = [0, 0, 0, 8, 0, 3, 0, 1, 0, 0, 0, 42];
        stream.write_all(&frame)?;
        let mut back = [0u8; 12];
        stream.read_exact(&mut back)?;
        Ok(back.to_vec())
    }

    #[test]
    fn forwards_goes_down_and_comes_back() {
        let proxy = Proxy::start(Proxy::bind().unwrap(), echo()).unwrap();
        assert_eq!(round_trip(proxy.address()).unwrap().len(), 12);
        proxy.set_down(true);
        assert!(round_trip(proxy.address()).is_err(), "refused while down");
        proxy.set_down(false);
        assert_eq!(round_trip(proxy.address()).unwrap().len(), 12, "forwards again");
    }
}
