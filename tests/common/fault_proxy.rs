//! A TCP proxy in front of a real redis-server that can misbehave on purpose, one connection at
//! a time: delay, blackhole (keep the socket open, silently drop everything — a NAT that forgot
//! the connection, a Redis host that lost power), reset, or send new connections elsewhere (a
//! virtual IP moved to a promoted replica).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a connection does with the bytes it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Read and drop, both ways; the sockets stay open.
    Blackhole,
    /// Forward after this many milliseconds.
    Delay(u64),
}

impl Mode {
    fn encode(self) -> u64 {
        match self {
            Mode::Pass => 0,
            Mode::Blackhole => 1,
            Mode::Delay(ms) => 2 + ms,
        }
    }
    fn decode(n: u64) -> Mode {
        match n {
            0 => Mode::Pass,
            1 => Mode::Blackhole,
            n => Mode::Delay(n - 2),
        }
    }
}

struct Conn {
    client: TcpStream,
    server: TcpStream,
    mode: Arc<AtomicU64>,
    /// It sent CLIENT TRACKING: the daemon's wake-up connection.
    tracking: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
}

pub struct FaultProxy {
    pub port: u16,
    upstream: Arc<AtomicU16>,
    new_mode: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<Conn>>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let proxy = FaultProxy {
            port,
            upstream: Arc::new(AtomicU16::new(upstream)),
            new_mode: Arc::new(AtomicU64::new(Mode::Pass.encode())),
            conns: Arc::default(),
            stop: Arc::default(),
        };
        let (upstream, new_mode, conns, stop) = (
            proxy.upstream.clone(),
            proxy.new_mode.clone(),
            proxy.conns.clone(),
            proxy.stop.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let port = upstream.load(Ordering::Relaxed);
                        let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        };
                        let conn = Conn {
                            client,
                            server,
                            mode: Arc::new(AtomicU64::new(new_mode.load(Ordering::Relaxed))),
                            tracking: Arc::default(),
                            closed: Arc::default(),
                        };
                        spawn_pumps(&conn);
                        conns.lock().unwrap().push(conn);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Connections opened so far that are still open.
    pub fn open_connections(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .filter(|c| !c.closed.load(Ordering::Relaxed))
            .count()
    }

    /// Whether the wake-up (CLIENT TRACKING) connection is open.
    pub fn has_tracking_connection(&self) -> bool {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .any(|c| c.tracking.load(Ordering::Relaxed) && !c.closed.load(Ordering::Relaxed))
    }

    /// Sets the mode of the open connections that match.
    fn set(&self, mode: Mode, only_tracking: bool) -> usize {
        let conns = self.conns.lock().unwrap();
        let mut n = 0;
        for c in conns.iter() {
            if c.closed.load(Ordering::Relaxed) {
                continue;
            }
            if only_tracking && !c.tracking.load(Ordering::Relaxed) {
                continue;
            }
            c.mode.store(mode.encode(), Ordering::Relaxed);
            n += 1;
        }
        n
    }

    /// The wake-up connection goes silent (its socket stays open). Returns how many matched.
    pub fn blackhole_tracking(&self) -> usize {
        self.set(Mode::Blackhole, true)
    }

    /// Every open connection goes silent.
    pub fn blackhole_open(&self) -> usize {
        self.set(Mode::Blackhole, false)
    }

    /// Every open connection delays what it forwards.
    pub fn delay_open(&self, ms: u64) -> usize {
        self.set(Mode::Delay(ms), false)
    }

    /// What new connections do (a dead host: Blackhole; back: Pass).
    pub fn set_new_mode(&self, mode: Mode) {
        self.new_mode.store(mode.encode(), Ordering::Relaxed);
    }

    /// New connections go to another server (old ones stay where they are).
    pub fn set_upstream(&self, port: u16) {
        self.upstream.store(port, Ordering::Relaxed);
    }

    /// Closes every open connection.
    pub fn reset_open(&self) {
        let conns = self.conns.lock().unwrap();
        for c in conns.iter() {
            c.closed.store(true, Ordering::Relaxed);
            let _ = c.client.shutdown(Shutdown::Both);
            let _ = c.server.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.reset_open();
    }
}

fn spawn_pumps(conn: &Conn) {
    let pairs = [
        (conn.client.try_clone(), conn.server.try_clone(), true),
        (conn.server.try_clone(), conn.client.try_clone(), false),
    ];
    for (from, to, upstream) in pairs {
        let (Ok(from), Ok(to)) = (from, to) else {
            continue;
        };
        let mode = conn.mode.clone();
        let tracking = conn.tracking.clone();
        let closed = conn.closed.clone();
        std::thread::spawn(move || pump(from, to, upstream, &mode, &tracking, &closed));
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    upstream: bool,
    mode: &AtomicU64,
    tracking: &AtomicBool,
    closed: &AtomicBool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // The scheduler's own tracking connection (on delayed_queue_schedule) is not the
        // workers' wake-up connection.
        if upstream
            && contains(&buf[..n], b"TRACKING")
            && !contains(&buf[..n], b"delayed_queue_schedule")
        {
            tracking.store(true, Ordering::Relaxed);
        }
        match Mode::decode(mode.load(Ordering::Relaxed)) {
            Mode::Blackhole => continue,
            Mode::Delay(ms) => std::thread::sleep(Duration::from_millis(ms)),
            Mode::Pass => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    closed.store(true, Ordering::Relaxed);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
