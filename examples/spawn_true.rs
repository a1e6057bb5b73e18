//! The spawn limit of this machine: a tight spawn-and-reap loop of `/bin/true`, printing
//! spawns per second. It is the ceiling for the `exec` handler (one process per job).
//!
//!     cargo run --release --example spawn_true -- [SECONDS] [LOOPS] [--json]
//!
//! SECONDS (default 3) is how long to run; LOOPS (default 1) loops run in parallel, one thread
//! each. Std only. With `--json` the last line is a JSON object (for `bench/run.sh`).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let mut seconds = 3.0_f64;
    let mut loops = 1_usize;
    let mut json = false;
    let mut positional = 0;
    for arg in std::env::args().skip(1) {
        if arg == "--json" {
            json = true;
            continue;
        }
        match positional {
            0 => seconds = arg.parse().expect("SECONDS: a number"),
            1 => loops = arg.parse().expect("LOOPS: a whole number"),
            _ => {
                eprintln!("usage: spawn_true [SECONDS] [LOOPS] [--json]");
                std::process::exit(2);
            }
        }
        positional += 1;
    }
    let loops = loops.max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let spawned = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..loops)
        .map(|_| {
            let stop = stop.clone();
            let spawned = spawned.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let status = Command::new("/bin/true")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .expect("spawn /bin/true");
                    assert!(status.success(), "/bin/true failed: {status}");
                    spawned.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("spawn loop panicked");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = spawned.load(Ordering::Relaxed);
    let rate = n as f64 / elapsed;
    println!("loops={loops} seconds={elapsed:.2} spawns={n} spawns/s={rate:.0}");
    if json {
        println!(
            "{{\"loops\":{loops},\"seconds\":{elapsed:.3},\"spawns\":{n},\"spawns_per_second\":{rate:.1}}}"
        );
    }
}
