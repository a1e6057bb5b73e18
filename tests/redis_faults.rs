//! Redis misbehaving the ordinary ways production Redis does, injected for real against a real
//! redis-server and the real daemon: replies lost after Redis ran the command (CLIENT PAUSE,
//! DEBUG SLEEP past `command_timeout`), half-open connections (a fault proxy that blackholes one
//! connection), a demoted master answering READONLY, a stopped server (SIGSTOP), reloads to
//! another or an unreachable server, Redis out of memory, bad data in Redis.
//!
//! Each scenario counts what a user counts — jobs pushed, ran, ran twice, left unrun, statuses
//! final with their TTL, `stat:processed` — and asserts it. Waits are generous bounds, never
//! speed assertions; the bounds a user relies on ("starts within 30 s of Redis being reachable")
//! are asserted with margin.

mod common;

use common::fault_proxy::{FaultProxy, Mode};
use common::{stderr, wait_for, write_config, Daemon, NotifyListener, RedisServer};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use redis::Commands;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A config with exec handlers: every class appends `<id or "-">` to `<dir>/runs` after
/// sleeping `sleep` seconds.
fn config(url: &str, dir: &Path, worker: &str, sleep: f64) -> PathBuf {
    config_with_redis(url, "", dir, worker, sleep)
}

/// [`config`] with more `[redis]` lines.
fn config_with_redis(
    url: &str,
    redis_extra: &str,
    dir: &Path,
    worker: &str,
    sleep: f64,
) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"[redis]
url = "{url}"
{redis_extra}
[worker]
{worker}
[[handler]]
class = "*"
type = "exec"
command = ["/bin/sh", "-c", 'cat >/dev/null; sleep {sleep}; echo "${{RESQUE_JOB_ID:--}}" >> {dir}/runs']
"#,
            dir = dir.display()
        ),
    )
}

fn runs(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("runs"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Pushes tracked php-resque jobs (status WAITING first, as our CLI does) and returns the ids.
fn push_tracked(redis: &RedisServer, queue: &str, n: usize) -> Vec<String> {
    let mut c = redis.conn();
    let _: () = c.sadd("resque:queues", queue).unwrap();
    (0..n)
        .map(|i| {
            let id = format!("{:032x}", rand_u64() as u128 * 1_000 + i as u128);
            let _: () = c
                .set(
                    format!("resque:job:{id}:status"),
                    format!(r#"{{"status":1,"updated":{},"started":{}}}"#, 1, 1),
                )
                .unwrap();
            let raw = format!(r#"{{"class":"Job","args":[{{"n":{i}}}],"id":"{id}"}}"#);
            let _: () = c.rpush(format!("resque:queue:{queue}"), raw).unwrap();
            id
        })
        .collect()
}

fn rand_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos ^ (std::process::id() as u64).rotate_left(32)
}

/// What happened to a set of pushed jobs.
#[derive(Debug, Default)]
struct Count {
    pushed: usize,
    ran: usize,
    ran_twice: usize,
    unrun: usize,
    not_final: Vec<String>,
    without_ttl: Vec<String>,
    processed: i64,
    in_flight: usize,
}

fn count(redis: &RedisServer, dir: &Path, ids: &[String]) -> Count {
    let mut c = redis.conn();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for id in runs(dir) {
        *seen.entry(id).or_default() += 1;
    }
    let mut out = Count {
        pushed: ids.len(),
        processed: c
            .get::<_, Option<i64>>("resque:stat:processed")
            .unwrap()
            .unwrap_or(0),
        ..Count::default()
    };
    for id in ids {
        match seen.get(id) {
            None => out.unrun += 1,
            Some(1) => out.ran += 1,
            Some(_) => {
                out.ran += 1;
                out.ran_twice += 1
            }
        }
        let key = format!("resque:job:{id}:status");
        let status: Option<String> = c.get(&key).unwrap();
        let code = status
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v["status"].as_i64());
        if !matches!(code, Some(3 | 4)) {
            out.not_final.push(format!("{id}: {code:?}"));
        } else {
            let ttl: i64 = c.ttl(&key).unwrap();
            if ttl <= 0 {
                out.without_ttl.push(id.clone());
            }
        }
    }
    let keys: Vec<String> = c.keys("resque:inflight:*").unwrap();
    for k in keys {
        let n: usize = c.llen(&k).unwrap_or(0);
        out.in_flight += n;
    }
    out
}

/// Waits (bounded) until every id ran, then counts; asserts the promises: nothing unrun, nothing
/// twice (no worker died here), every status final with a TTL, processed = ran.
fn assert_all_ran_once(
    redis: &RedisServer,
    dir: &Path,
    ids: &[String],
    limit: Duration,
    daemon: &Daemon,
) {
    assert_all_ran_once_besides(redis, dir, ids, limit, daemon, 0)
}

/// [`assert_all_ran_once`] with `other` more outcomes counted in `stat:processed` (failed bad
/// entries).
fn assert_all_ran_once_besides(
    redis: &RedisServer,
    dir: &Path,
    ids: &[String],
    limit: Duration,
    daemon: &Daemon,
    other: i64,
) {
    let deadline = Instant::now() + limit;
    let mut last = count(redis, dir, ids);
    while Instant::now() < deadline {
        last = count(redis, dir, ids);
        if last.unrun == 0 && last.not_final.is_empty() && last.in_flight == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{last:?}");
    let log = daemon.log_text();
    let tail: String = log
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(last.unrun, 0, "jobs left unrun: {last:?}\n{tail}");
    assert_eq!(last.ran, last.pushed, "{last:?}");
    assert_eq!(
        last.ran_twice, 0,
        "no worker died, so nothing may run twice: {last:?}"
    );
    assert!(
        last.not_final.is_empty(),
        "statuses not final: {last:?}\n{tail}"
    );
    assert!(
        last.without_ttl.is_empty(),
        "final statuses without TTL: {last:?}"
    );
    assert_eq!(
        last.processed,
        last.pushed as i64 + other,
        "stat:processed = jobs that ran: {last:?}"
    );
    assert_eq!(last.in_flight, 0, "nothing left in flight: {last:?}");
}

fn wait_ready(daemon: &Daemon, redis: &RedisServer, count: usize) {
    wait_for("workers registered", Duration::from_secs(30), || {
        let n: usize = redis.conn().scard("resque:workers").unwrap();
        (n >= count).then_some(())
    });
    let _ = daemon;
}

fn client_pause(redis: &RedisServer, ms: u64, what: &str) {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg(what)
        .query(&mut redis.conn())
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Lost replies.

#[test]
fn client_pause_during_a_drain_leaves_no_job_stuck_or_twice() {
    // Seen: with command_timeout = 300ms, CLIENT PAUSE WRITE while jobs finish made the
    // pipelined outcome + next reservation time out; Redis ran both when the pause ended and the
    // reserved job sat in the live worker's in-flight list, never run, status RUNNING.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_redis(
        &redis.url(),
        "command_timeout = \"300ms\"",
        dir.path(),
        "queues = [\"default\"]\ncount = 4",
        0.2,
    );
    let daemon = Daemon::start(&cfg, &[]);
    wait_ready(&daemon, &redis, 4);
    let ids = push_tracked(&redis, "default", 100);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1200));
        client_pause(&redis, 2500, "WRITE");
        std::thread::sleep(Duration::from_millis(2500));
    }
    assert_all_ran_once(&redis, dir.path(), &ids, Duration::from_secs(90), &daemon);
}

#[test]
fn debug_sleep_past_the_command_timeout_leaves_no_job_stuck() {
    // Seen: one 7 s DEBUG SLEEP left 4 of 40 jobs stuck in flight.
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_redis(
        &redis.url(),
        "command_timeout = \"300ms\"",
        dir.path(),
        "queues = [\"default\"]\ncount = 4",
        0.1,
    );
    let daemon = Daemon::start(&cfg, &[]);
    wait_ready(&daemon, &redis, 4);
    let ids = push_tracked(&redis, "default", 40);
    std::thread::sleep(Duration::from_millis(400));
    let _: () = redis::cmd("DEBUG")
        .arg("SLEEP")
        .arg(7)
        .query(&mut redis.conn())
        .unwrap();
    assert_all_ran_once(&redis, dir.path(), &ids, Duration::from_secs(90), &daemon);
}

#[test]
fn a_repeated_outcome_never_removes_the_next_job_of_the_same_bytes() {
    // Seen: with byte-identical id-less payloads (Ruby/node style), the retried outcome of the
    // first job removed the next one: 3 pushed, 2 ran, stat:processed = 3.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_redis(
        &redis.url(),
        "command_timeout = \"300ms\"",
        dir.path(),
        "queues = [\"default\"]\ncount = 1",
        1.0,
    );
    let daemon = Daemon::start(&cfg, &[]);
    wait_ready(&daemon, &redis, 1);
    let mut c = redis.conn();
    let _: () = c.sadd("resque:queues", "default").unwrap();
    for _ in 0..3 {
        let _: () = c
            .rpush("resque:queue:default", r#"{"class":"Ping","args":[]}"#)
            .unwrap();
    }
    // The first job runs for a second; its outcome (with the next reservation) meets the pause.
    std::thread::sleep(Duration::from_millis(600));
    client_pause(&redis, 2500, "WRITE");
    wait_for(
        "three runs and three outcomes",
        Duration::from_secs(60),
        || {
            let processed: Option<i64> = redis.conn().get("resque:stat:processed").unwrap();
            let queued: usize = redis.conn().llen("resque:queue:default").unwrap();
            let keys: Vec<String> = redis.conn().keys("resque:inflight:*").unwrap();
            let held: usize = keys
                .iter()
                .map(|k| redis.conn().llen::<_, usize>(k).unwrap())
                .sum();
            (processed == Some(3) && queued == 0 && held == 0).then_some(())
        },
    );
    // Give a wrongly removed job every chance to show: nothing may be left, and three ran.
    std::thread::sleep(Duration::from_millis(500));
    let runs = runs(dir.path());
    assert_eq!(
        runs.len(),
        3,
        "3 pushed, {} ran: {runs:?}\n{}",
        runs.len(),
        daemon.log_text()
    );
}

// ---------------------------------------------------------------------------------------------
// Half-open connections.

#[test]
fn a_silently_dead_wakeup_connection_is_noticed_and_jobs_start() {
    // Seen: the client-tracking connection sends nothing after its handshake, so when it
    // half-opened no invalidation ever arrived, the interval safety net stayed off, and a job
    // pushed then waited forever (20 s+ with interval = "1s") while STATUS said "Redis ok".
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &proxy.url(),
        dir.path(),
        "queues = [\"default\"]\ninterval = \"1s\"",
        0.0,
    );
    let daemon = Daemon::start(&cfg, &[]);
    wait_ready(&daemon, &redis, 1);
    wait_for("the wake-up connection", Duration::from_secs(30), || {
        proxy.has_tracking_connection().then_some(())
    });
    // A first job runs: everything works before the fault.
    let first = push_tracked(&redis, "default", 1);
    wait_for("first job", Duration::from_secs(30), || {
        (runs(dir.path()).len() == 1).then_some(())
    });
    assert_eq!(proxy.blackhole_tracking(), 1);
    std::thread::sleep(Duration::from_millis(500));
    let pushed_at = Instant::now();
    let second = push_tracked(&redis, "default", 1);
    // The bound the README promises: within max(interval, 30 s).
    wait_for(
        "a job pushed while the wake-up connection is dead",
        Duration::from_secs(30),
        || (runs(dir.path()).len() == 2).then_some(()),
    );
    eprintln!("picked up after {:?}", pushed_at.elapsed());
    let all: Vec<String> = first.into_iter().chain(second).collect();
    assert_all_ran_once(&redis, dir.path(), &all, Duration::from_secs(10), &daemon);
}

#[test]
fn after_a_power_cut_of_the_redis_host_jobs_start_within_30s_of_it_coming_back() {
    // Every connection goes silent (a power cut: no FIN, no RST), new ones too; a job is pushed
    // meanwhile (by another host, straight into Redis); then the host is back, but the old
    // sockets stay dead (their state died with the host).
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.port);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &proxy.url(),
        dir.path(),
        "queues = [\"default\"]\ncount = 2",
        0.0,
    );
    let daemon = Daemon::start(&cfg, &[]);
    wait_ready(&daemon, &redis, 2);
    let first = push_tracked(&redis, "default", 1);
    wait_for("first job", Duration::from_secs(30), || {
        (runs(dir.path()).len() == 1).then_some(())
    });
    proxy.set_new_mode(Mode::Blackhole);
    proxy.blackhole_open();
    let during = push_tracked(&redis, "default", 3);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        runs(dir.path()).len(),
        1,
        "nothing can run while Redis is unreachable"
    );
    proxy.set_new_mode(Mode::Pass);
    let back = Instant::now();
    wait_for(
        "jobs within 30 s of Redis being reachable again",
        Duration::from_secs(30),
        || (runs(dir.path()).len() == 4).then_some(()),
    );
    eprintln!("all ran {:?} after Redis came back", back.elapsed());
    let all: Vec<String> = first.into_iter().chain(during).collect();
    assert_all_ran_once(&redis, dir.path(), &all, Duration::from_secs(10), &daemon);
}

#[test]
fn a_demoted_master_answering_readonly_is_left_for_the_new_one() {
    // Seen: the redis-rs ConnectionManager does not reconnect on READONLY, so a worker behind a
    // virtual IP that moved to the promoted replica keeps talking to the demoted master.
    let old = RedisServer::start();
    let new = RedisServer::start();
    let proxy = FaultProxy::start(old.port);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &proxy.url(),
        dir.path(),
        "queues = [\"default\"]\ncount = 2",
        0.0,
    );
    let daemon = Daemon::start(&cfg, &[]);
    wait_ready(&daemon, &old, 2);
    let first = push_tracked(&old, "default", 1);
    wait_for("first job", Duration::from_secs(30), || {
        (runs(dir.path()).len() == 1).then_some(())
    });
    // Failover by hand: the old master replicates the new one (and answers READONLY to
    // writes), the virtual IP (our proxy) now leads to the new one.
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(new.port)
        .query(&mut old.conn())
        .unwrap();
    proxy.set_upstream(new.port);
    wait_for(
        "the old master replicating",
        Duration::from_secs(30),
        || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut old.conn())
                .unwrap();
            info.contains("master_link_status:up").then_some(())
        },
    );
    let after = push_tracked(&new, "default", 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    while runs(dir.path()).len() < 4 {
        assert!(
            Instant::now() < deadline,
            "jobs pushed to the new master did not run:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = first;
    assert_all_ran_once(&new, dir.path(), &after, Duration::from_secs(10), &daemon);
}

// ---------------------------------------------------------------------------------------------
// A stopped Redis and the watchdog.

#[test]
fn a_75_second_redis_stall_never_starves_the_watchdog() {
    // Seen: during a 75 s SIGSTOP of redis-server the gap between WATCHDOG=1 pings reached 35 s
    // (WatchdogSec=30 kills at 30), and the restart killed every running job.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &redis.url(),
        dir.path(),
        "queues = [\"default\"]\ncount = 4",
        0.5,
    );
    let notify = NotifyListener::new();
    let daemon = Daemon::start(
        &cfg,
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "30000000"),
        ],
    );
    notify.until("READY", |m| m.contains("READY=1"));
    let before = push_tracked(&redis, "default", 20);
    std::thread::sleep(Duration::from_millis(700));
    let redis_pid = Pid::from_raw(redis_pid(&redis));
    kill(redis_pid, Signal::SIGSTOP).unwrap();
    let stopped_at = Instant::now();
    let mut last_ping = Instant::now();
    let mut worst = Duration::ZERO;
    let mut statuses = Vec::new();
    while stopped_at.elapsed() < Duration::from_secs(75) {
        if let Some(msg) = notify.next(Duration::from_millis(500)) {
            if msg.contains("WATCHDOG=1") {
                worst = worst.max(last_ping.elapsed());
                last_ping = Instant::now();
            }
            if let Some(status) = msg.lines().find(|l| l.starts_with("STATUS=")) {
                statuses.push(status.to_string());
            }
        }
    }
    worst = worst.max(last_ping.elapsed());
    kill(redis_pid, Signal::SIGCONT).unwrap();
    eprintln!("longest gap between WATCHDOG=1: {worst:?}; statuses: {statuses:?}");
    assert!(
        worst < Duration::from_secs(30),
        "watchdog gap {worst:?} ≥ WatchdogSec"
    );
    assert!(
        statuses
            .iter()
            .any(|s| s.contains("Redis unreachable since")),
        "STATUS said the outage: {statuses:?}"
    );
    let mut daemon = daemon;
    assert!(daemon.child.try_wait().unwrap().is_none(), "daemon alive");
    let after = push_tracked(&redis, "default", 5);
    let all: Vec<String> = before.into_iter().chain(after).collect();
    assert_all_ran_once(&redis, dir.path(), &all, Duration::from_secs(60), &daemon);
}

fn redis_pid(redis: &RedisServer) -> i32 {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("process_id in INFO")
}

// ---------------------------------------------------------------------------------------------
// Reloads that change [redis].

#[test]
fn a_reload_to_another_db_moves_every_connection_there() {
    // Seen: the supervisor's own connection was never replaced, so heartbeats, registration and
    // recovery kept going to the old db while workers used the new one.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&redis.url_db(0), dir.path(), "queues = [\"default\"]", 0.0);
    let daemon = Daemon::start(&cfg, &[]);
    daemon.wait_control_socket();
    wait_ready(&daemon, &redis, 1);
    config(&redis.url_db(1), dir.path(), "queues = [\"default\"]", 0.0);
    let o = daemon.ctl(&["reload", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut db1 = redis.conn_db(1);
    let beats = |c: &mut redis::Connection| -> BTreeMap<String, String> {
        c.hgetall("resque:workers:heartbeat").unwrap()
    };
    let first = wait_for(
        "workers registered on db 1",
        Duration::from_secs(30),
        || {
            let b = beats(&mut db1);
            (!b.is_empty()).then_some(b)
        },
    );
    // A job pushed to the new db runs.
    let _: () = db1.sadd("resque:queues", "default").unwrap();
    let _: () = db1
        .rpush(
            "resque:queue:default",
            r#"{"class":"Job","args":[],"id":"aaaa"}"#,
        )
        .unwrap();
    wait_for("the job on db 1", Duration::from_secs(30), || {
        runs(dir.path()).contains(&"aaaa".to_string()).then_some(())
    });
    // Heartbeats advance on db 1 (the supervisor's beat, every 30 s), and none on db 0.
    wait_for("a heartbeat on db 1", Duration::from_secs(45), || {
        (beats(&mut db1) != first).then_some(())
    });
    let db0: BTreeMap<String, String> = redis.conn().hgetall("resque:workers:heartbeat").unwrap();
    assert!(db0.is_empty(), "db 0 keeps no live worker: {db0:?}");
}

#[test]
fn a_reload_to_an_unreachable_redis_is_rejected_and_the_old_workers_go_on() {
    // Seen: a reload to an unreachable Redis was reported as applied (reload --wait exited 0),
    // the old workers were drained, and READY=1 was sent with "0 workers".
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&redis.url(), dir.path(), "queues = [\"default\"]", 0.0);
    let daemon = Daemon::start(&cfg, &[]);
    daemon.wait_control_socket();
    wait_ready(&daemon, &redis, 1);
    let dead = format!("redis://127.0.0.1:{}/0", RedisServer::unused_port());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&redis.url(), &dead);
    let text = text.replacen("[redis]", "[redis]\nconnect_timeout = \"1s\"", 1);
    std::fs::write(&cfg, text).unwrap();
    let o = daemon.ctl(&["reload", "--wait"]);
    assert_eq!(o.status.code(), Some(1), "reload rejected: {}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot use the new Redis"),
        "{}",
        stderr(&o)
    );
    let ids = push_tracked(&redis, "default", 3);
    assert_all_ran_once(&redis, dir.path(), &ids, Duration::from_secs(30), &daemon);
}

// ---------------------------------------------------------------------------------------------
// Redis out of memory at start.

#[test]
fn starting_while_redis_is_out_of_memory_waits_and_says_so() {
    // Seen: starting while Redis answered OOM sent READY with 0 workers, and STATUS said
    // "unreachable".
    let redis = RedisServer::start();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query(&mut redis.conn())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &redis.url(),
        dir.path(),
        "queues = [\"default\"]\ncount = 2",
        0.0,
    );
    let notify = NotifyListener::new();
    let daemon = Daemon::start(&cfg, &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())]);
    let (oom, seen) = notify.until("STATUS out of memory", |m| m.contains("out of memory"));
    assert!(!oom.contains("READY=1"), "{oom}");
    assert!(seen.iter().all(|m| !m.contains("READY=1")), "{seen:?}");
    std::thread::sleep(Duration::from_secs(2));
    while let Some(m) = notify.next(Duration::from_millis(200)) {
        assert!(
            !m.contains("READY=1"),
            "READY while Redis refuses every write: {m}"
        );
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut redis.conn())
        .unwrap();
    let (ready, _) = notify.until("READY", |m| m.contains("READY=1"));
    assert!(ready.contains("2 workers"), "{ready}");
    let ids = push_tracked(&redis, "default", 2);
    assert_all_ran_once(&redis, dir.path(), &ids, Duration::from_secs(30), &daemon);
}

// ---------------------------------------------------------------------------------------------
// Bad data in Redis.

fn failures(redis: &RedisServer) -> Vec<Value> {
    let raw: Vec<String> = redis.conn().lrange("resque:failed", 0, -1).unwrap();
    raw.iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

#[test]
fn an_entry_that_is_not_utf8_fails_alone_in_an_idle_and_a_busy_worker() {
    // Seen: an entry that is not valid UTF-8 was moved into the in-flight list and dropped
    // silently by a busy worker; an idle one logged "Cannot convert from UTF-8".
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &redis.url(),
        dir.path(),
        "queues = [\"default\"]\ncount = 1",
        0.3,
    );
    let daemon = Daemon::start(&cfg, &[]);
    wait_ready(&daemon, &redis, 1);
    let mut c = redis.conn();
    let bad: &[u8] = b"{\"class\":\"Job\",\"args\":[\"\xff\xfe\"]}";
    // Idle worker: the bad entry alone, then a good job.
    let _: () = c.sadd("resque:queues", "default").unwrap();
    let _: () = c.rpush("resque:queue:default", bad).unwrap();
    let mut ids = push_tracked(&redis, "default", 1);
    // Busy worker: a good job running, the bad entry right behind it, then good jobs.
    ids.extend(push_tracked(&redis, "default", 1));
    let _: () = c.rpush("resque:queue:default", bad).unwrap();
    ids.extend(push_tracked(&redis, "default", 2));
    assert_all_ran_once_besides(
        &redis,
        dir.path(),
        &ids,
        Duration::from_secs(30),
        &daemon,
        2,
    );
    let failed = failures(&redis);
    assert_eq!(failed.len(), 2, "{failed:?}");
    for f in &failed {
        let error = f["error"].as_str().unwrap();
        assert!(error.contains("not valid UTF-8"), "{error}");
        assert!(
            error.contains("\\xff\\xfe"),
            "raw bytes shown escaped: {error}"
        );
        assert_eq!(f["queue"], "default");
    }
    let processed: i64 = c.get("resque:stat:processed").unwrap();
    assert_eq!(processed, 6, "4 good + 2 failed");
}

#[test]
fn a_wrong_typed_queue_key_is_skipped_with_a_warning_while_others_flow() {
    // Seen: one key of the wrong type in the `queues` set (with queues = ["*"]) stopped every
    // queue ("WRONGTYPE" on each reserve).
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&redis.url(), dir.path(), "queues = [\"*\"]\ncount = 2", 0.0);
    let mut c = redis.conn();
    let _: () = c.sadd("resque:queues", "broken").unwrap();
    let _: () = c.set("resque:queue:broken", "not a list").unwrap();
    let daemon = Daemon::start(&cfg, &[]);
    wait_ready(&daemon, &redis, 2);
    let mut ids = push_tracked(&redis, "a", 3);
    ids.extend(push_tracked(&redis, "zeta", 3));
    assert_all_ran_once(&redis, dir.path(), &ids, Duration::from_secs(30), &daemon);
    let log = daemon.log_text();
    assert!(
        log.contains("resque:queue:broken") && log.contains("not a list"),
        "a warning names the key:\n{log}"
    );
    let kept: String = c.get("resque:queue:broken").unwrap();
    assert_eq!(kept, "not a list", "the bad key is left alone");
}

#[test]
fn recovery_is_not_stopped_by_a_bad_entry_of_a_dead_worker() {
    // Seen: once the worker holding a non-UTF-8 entry was dead, every recovery pass aborted on
    // it, delaying the recovery of every other dead worker.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&redis.url(), dir.path(), "queues = [\"default\"]", 0.0);
    let mut c = redis.conn();
    // Two workers of a dead daemon on this host (pid 4000000 cannot exist: pid_max is lower).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .replace(':', "-");
    let bad_worker = format!("{host}:4000000:default");
    let good_worker = format!("{host}:4000001:default");
    let bad: &[u8] = b"\xff{\"class\":\"Job\"}";
    let _: () = c
        .rpush(format!("resque:inflight:{bad_worker}"), bad)
        .unwrap();
    let _: () = c.hset("resque:inflight", &bad_worker, "default").unwrap();
    let good = r#"{"class":"Job","args":[],"id":"goodgoodgood"}"#;
    let _: () = c
        .rpush(format!("resque:inflight:{good_worker}"), good)
        .unwrap();
    let _: () = c.hset("resque:inflight", &good_worker, "default").unwrap();
    let _: () = c
        .sadd("resque:workers", &[&bad_worker, &good_worker])
        .unwrap();
    let daemon = Daemon::start(&cfg, &[]);
    wait_for(
        "the good job recovered and run",
        Duration::from_secs(30),
        || {
            runs(dir.path())
                .contains(&"goodgoodgood".to_string())
                .then_some(())
        },
    );
    wait_for(
        "the bad entry in the failed list",
        Duration::from_secs(30),
        || (failures(&redis).len() == 1).then_some(()),
    );
    let f = &failures(&redis)[0];
    assert!(
        f["error"].as_str().unwrap().contains("not valid UTF-8"),
        "{f}"
    );
    let _ = daemon;
}

// ---------------------------------------------------------------------------------------------
// Smaller ones on the same path.

#[test]
fn a_requeued_tracked_job_is_waiting_again() {
    // Seen: after a give-back (INT, shutdown timeout) or a recovery, a tracked job waited in its
    // queue with status RUNNING.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&redis.url(), dir.path(), "queues = [\"default\"]", 30.0);
    let mut daemon = Daemon::start(&cfg, &[]);
    wait_ready(&daemon, &redis, 1);
    let ids = push_tracked(&redis, "default", 1);
    let key = format!("resque:job:{}:status", ids[0]);
    let status = |c: &mut redis::Connection| -> i64 {
        let text: String = c.get(&key).unwrap();
        serde_json::from_str::<Value>(&text).unwrap()["status"]
            .as_i64()
            .unwrap()
    };
    let mut c = redis.conn();
    wait_for("RUNNING", Duration::from_secs(30), || {
        (status(&mut c) == 2).then_some(())
    });
    daemon.signal(Signal::SIGINT);
    daemon.wait_exit(Duration::from_secs(30));
    let queued: usize = c.llen("resque:queue:default").unwrap();
    assert_eq!(queued, 1, "the job went back to its queue");
    assert_eq!(status(&mut c), 1, "WAITING again, as long as it waits");
}

#[test]
fn an_outcome_for_a_job_taken_away_is_logged_and_clears_the_worker_record() {
    // Seen: an outcome write that found the job no longer in flight was silently ignored and
    // left worker:<id> set (resque-web showed the worker busy forever).
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&redis.url(), dir.path(), "queues = [\"default\"]", 2.0);
    let daemon = Daemon::start(&cfg, &[]);
    wait_ready(&daemon, &redis, 1);
    let ids = push_tracked(&redis, "default", 1);
    let mut c = redis.conn();
    let worker: String = wait_for("the job in flight", Duration::from_secs(30), || {
        let keys: Vec<String> = c.keys("resque:inflight:*").unwrap();
        keys.into_iter()
            .find(|k| c.llen::<_, usize>(k).unwrap() == 1)
            .map(|k| k.trim_start_matches("resque:inflight:").to_string())
    });
    // Another daemon's recovery takes it (as it would from a worker it judged dead).
    let _: () = c.del(format!("resque:inflight:{worker}")).unwrap();
    wait_for("the job to end", Duration::from_secs(30), || {
        runs(dir.path()).contains(&ids[0]).then_some(())
    });
    wait_for("the warning", Duration::from_secs(10), || {
        daemon
            .log_text()
            .contains("no longer in this worker's hands")
            .then_some(())
    });
    let record: Option<String> = c.get(format!("resque:worker:{worker}")).unwrap();
    assert_eq!(record, None, "worker:<id> cleared");
    let processed: Option<i64> = c.get("resque:stat:processed").unwrap();
    assert_eq!(
        processed, None,
        "not counted: the outcome was not ours to write"
    );
}

#[test]
fn without_client_tracking_idle_workers_look_every_interval() {
    // A server (or a proxy in front of it) without RESP3 / CLIENT TRACKING: jobs still start,
    // within `interval`, and the daemon says once why.
    let redis = RedisServer::start_with(&["--rename-command", "HELLO", ""]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &redis.url(),
        dir.path(),
        "queues = [\"default\"]\ninterval = \"1s\"",
        0.0,
    );
    let daemon = Daemon::start(&cfg, &[]);
    wait_ready(&daemon, &redis, 1);
    let ids = push_tracked(&redis, "default", 3);
    assert_all_ran_once(&redis, dir.path(), &ids, Duration::from_secs(30), &daemon);
    std::thread::sleep(Duration::from_secs(3));
    let log = daemon.log_text();
    assert_eq!(
        log.matches("does not offer client tracking").count(),
        1,
        "said once:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Stopping and reporting while Redis is down (an operator's view).

#[test]
fn term_while_redis_is_down_respects_the_shutdown_timeout() {
    // Seen: TERM while Redis was down took 7.8 s with shutdown_timeout = "5s".
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &redis.url(),
        dir.path(),
        "queues = [\"default\"]\ncount = 2\nshutdown_timeout = \"5s\"",
        20.0,
    );
    let mut daemon = Daemon::start(&cfg, &[]);
    wait_ready(&daemon, &redis, 2);
    push_tracked(&redis, "default", 1);
    wait_for("the job running", Duration::from_secs(30), || {
        let keys: Vec<String> = redis.conn().keys("resque:inflight:*").ok()?;
        keys.iter()
            .any(|k| redis.conn().llen::<_, usize>(k).unwrap_or(0) > 0)
            .then_some(())
    });
    drop(redis);
    std::thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(30));
    let took = asked.elapsed();
    eprintln!("stopped {took:?} after TERM");
    // shutdown_timeout, and then the job is killed and left in flight at once (Redis is down:
    // recovery puts it back later); 1.5 s of margin for a loaded machine.
    assert!(
        took < Duration::from_millis(6500),
        "took {took:?} with shutdown_timeout 5s\n{}",
        daemon.log_text()
    );
}

#[test]
fn once_redis_is_back_no_old_error_is_reported() {
    // Seen: the first command after a Redis outage reported the outage's old error
    // ("heartbeat failed: Connection refused" 22 s after Redis was back).
    let redis = RedisServer::start();
    let port = redis.port;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&redis.url(), dir.path(), "queues = [\"default\"]", 0.0);
    let daemon = Daemon::start(&cfg, &[]);
    wait_ready(&daemon, &redis, 1);
    drop(redis);
    std::thread::sleep(Duration::from_secs(3));
    let redis = RedisServer::start_on(port);
    let back = daemon.log_text().lines().count();
    // The next heartbeat (every 30 s) and a job both work, and nothing after Redis came back
    // blames the outage.
    wait_for(
        "a heartbeat after Redis came back",
        Duration::from_secs(45),
        || {
            let beats: BTreeMap<String, String> =
                redis.conn().hgetall("resque:workers:heartbeat").ok()?;
            (!beats.is_empty()).then_some(())
        },
    );
    let ids = push_tracked(&redis, "default", 1);
    wait_for("the job", Duration::from_secs(30), || {
        runs(dir.path()).contains(&ids[0]).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let log = daemon.log_text();
    let after: Vec<&str> = log.lines().skip(back + 2).collect();
    let stale: Vec<&&str> = after
        .iter()
        .filter(|l| l.contains("refused") || l.contains("heartbeat failed"))
        .collect();
    assert!(
        stale.is_empty(),
        "old errors after Redis came back: {stale:?}"
    );
}
