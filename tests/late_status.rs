//! Statuses written in php-resque's order — the job pushed first, its WAITING status `SET` after,
//! as a separate command — by real `php`, into idle and busy daemons, hundreds of times, with
//! instant and slow jobs: every tracked status ends final with its 24 h TTL, RUNNING shows while
//! a slow job runs, and no status key appears for an untracked job.
//!
//! Seen before: into an idle daemon RUNNING was never visible for 4–8 of 20 single 1.5 s jobs,
//! and a job that finished before PHP's SET landed stayed WAITING forever, with no TTL (6/300).

mod common;

use common::{wait_for, write_config, Daemon, RedisServer};
use redis::Commands;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ENQUEUE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/php/worker/enqueue_many.php"
);

fn require_php() {
    let ok = Command::new("php")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "php-cli must be installed (apt-get install php-cli)");
}

/// `Instant` jobs only read their payload; `Slow` ones sleep 0.6 s first.
fn config(redis: &RedisServer, dir: &Path, count: u32) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"[redis]
url = "{url}"
[worker]
queues = ["default"]
count = {count}
[[handler]]
class = "Slow"
type = "exec"
command = ["/bin/sh", "-c", "cat >/dev/null; sleep 0.6"]
[[handler]]
class = "Instant"
type = "exec"
command = ["/bin/sh", "-c", "cat >/dev/null"]
"#,
            url = redis.url(),
        ),
    )
}

/// Runs the PHP enqueuer; returns the job ids in order.
fn enqueue(
    redis: &RedisServer,
    class: &str,
    n: usize,
    track: bool,
    max_gap_us: u64,
    pause_us: u64,
) -> Vec<String> {
    let out = Command::new("php")
        .arg(ENQUEUE)
        .args(["127.0.0.1", &redis.port.to_string(), "default", class])
        .arg(n.to_string())
        .arg(if track { "1" } else { "0" })
        .arg(max_gap_us.to_string())
        .arg(pause_us.to_string())
        .output()
        .expect("run php");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn status(c: &mut redis::Connection, id: &str) -> Option<(i64, i64)> {
    let key = format!("resque:job:{id}:status");
    let text: Option<String> = c.get(&key).unwrap();
    let code = serde_json::from_str::<Value>(&text?).ok()?["status"].as_i64()?;
    let ttl: i64 = c.ttl(&key).unwrap();
    Some((code, ttl))
}

/// Waits (bounded) for every job to be processed, then for every status to be final, and
/// returns the ones that are not (id → (status, ttl)).
fn not_final(redis: &RedisServer, ids: &[String]) -> BTreeMap<String, Option<(i64, i64)>> {
    let mut c = redis.conn();
    wait_for("every job processed", Duration::from_secs(120), || {
        let n: Option<usize> = c.get("resque:stat:processed").unwrap();
        (n.unwrap_or(0) >= ids.len()).then_some(())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bad: BTreeMap<String, Option<(i64, i64)>> = ids
            .iter()
            .filter_map(|id| {
                let s = status(&mut c, id);
                let ok = matches!(s, Some((3 | 4, ttl)) if ttl > 0);
                (!ok).then(|| (id.clone(), s))
            })
            .collect();
        if bad.is_empty() || Instant::now() > deadline {
            return bad;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn instant_jobs_into_an_idle_daemon_end_final_with_their_ttl() {
    require_php();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&config(&redis, dir.path(), 1), &[]);
    wait_for("worker", Duration::from_secs(30), || {
        (redis.conn().scard::<_, usize>("resque:workers").unwrap() == 1).then_some(())
    });
    // One at a time into an idle worker; PHP's SET comes up to 15 ms after the push.
    let ids = enqueue(&redis, "Instant", 300, true, 15_000, 20_000);
    let bad = not_final(&redis, &ids);
    assert!(
        bad.is_empty(),
        "{} of {} statuses not final with a TTL: {bad:?}\n{}",
        bad.len(),
        ids.len(),
        daemon
            .log_text()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn instant_jobs_into_a_busy_daemon_end_final_with_their_ttl() {
    require_php();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let _daemon = Daemon::start(&config(&redis, dir.path(), 4), &[]);
    wait_for("workers", Duration::from_secs(30), || {
        (redis.conn().scard::<_, usize>("resque:workers").unwrap() == 4).then_some(())
    });
    // Two enqueuers at once, as fast as they go: the workers are busy, the queue backs up.
    let other = {
        let port = redis.port;
        std::thread::spawn(move || {
            let out = Command::new("php")
                .arg(ENQUEUE)
                .args([
                    "127.0.0.1",
                    &port.to_string(),
                    "default",
                    "Instant",
                    "250",
                    "1",
                    "3000",
                    "0",
                ])
                .output()
                .expect("run php");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
    };
    let mut ids = enqueue(&redis, "Instant", 250, true, 3_000, 0);
    ids.extend(other.join().unwrap());
    assert_eq!(ids.len(), 500);
    let bad = not_final(&redis, &ids);
    assert!(bad.is_empty(), "{} not final: {bad:?}", bad.len());
}

#[test]
fn slow_jobs_show_running_while_they_run() {
    require_php();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let _daemon = Daemon::start(&config(&redis, dir.path(), 1), &[]);
    wait_for("worker", Duration::from_secs(30), || {
        (redis.conn().scard::<_, usize>("resque:workers").unwrap() == 1).then_some(())
    });
    let mut c = redis.conn();
    let mut seen_running = HashSet::new();
    let mut ids = Vec::new();
    for _ in 0..12 {
        // One job at a time into the idle worker, the SET up to 20 ms after the push.
        let id = enqueue(&redis, "Slow", 1, true, 20_000, 0).remove(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match status(&mut c, &id) {
                Some((2, _)) => {
                    seen_running.insert(id.clone());
                }
                Some((3 | 4, _)) => break,
                _ => {}
            }
            assert!(Instant::now() < deadline, "job {id} did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
        ids.push(id);
    }
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !seen_running.contains(*id))
        .collect();
    assert!(missing.is_empty(), "RUNNING never seen for {missing:?}");
    let bad = not_final(&redis, &ids);
    assert!(bad.is_empty(), "{bad:?}");
}

#[test]
fn untracked_jobs_get_no_status_key() {
    require_php();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let _daemon = Daemon::start(&config(&redis, dir.path(), 2), &[]);
    let ids = enqueue(&redis, "Instant", 200, false, 0, 2_000);
    let mut c = redis.conn();
    wait_for("every job processed", Duration::from_secs(60), || {
        let n: Option<usize> = c.get("resque:stat:processed").unwrap();
        (n == Some(ids.len())).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let keys: Vec<String> = c.keys("resque:job:*").unwrap();
    assert!(keys.is_empty(), "status keys of untracked jobs: {keys:?}");
}
