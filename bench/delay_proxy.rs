//! A TCP proxy that delays every byte by a fixed time in each direction, like `tc netem delay`
//! on loopback (no loss, no rate limit, order kept, many chunks in flight). `bench/run.sh` uses
//! it for the 1 ms-RTT runs when the kernel has no netem qdisc (CONFIG_NET_SCH_NETEM unset).
//!
//!     rustc -O bench/delay_proxy.rs -o delay_proxy
//!     delay_proxy LISTEN_PORT UPSTREAM_PORT ONE_WAY_DELAY_US
//!
//! Std only. Per connection and direction, a reader thread stamps each chunk with its due time
//! and a writer thread sleeps until then (timer slack set to 1 µs so the sleep is precise) and
//! writes it. Runs until killed.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

extern "C" {
    fn prctl(option: i32, ...) -> i32;
}
const PR_SET_TIMERSLACK: i32 = 29;

fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes one unsigned long; it only changes this thread's slack.
    unsafe {
        prctl(PR_SET_TIMERSLACK, 1000_u64);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        precise_timers();
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Read);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: delay_proxy LISTEN_PORT UPSTREAM_PORT ONE_WAY_DELAY_US");
        std::process::exit(2);
    }
    let listen: u16 = args[1].parse().expect("LISTEN_PORT");
    let upstream: u16 = args[2].parse().expect("UPSTREAM_PORT");
    let delay = Duration::from_micros(args[3].parse().expect("ONE_WAY_DELAY_US"));
    let listener = TcpListener::bind(("127.0.0.1", listen)).expect("bind");
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (c2, s2) = match (client.try_clone(), server.try_clone()) {
            (Ok(c), Ok(s)) => (c, s),
            _ => continue,
        };
        std::thread::spawn(move || pump(client, server, delay));
        std::thread::spawn(move || pump(s2, c2, delay));
    }
}
