//! The worker loop through the real daemon, against a real redis-server (and real php):
//! no job lost across SIGKILLs, bad queue entries, recovery of dead workers, registration,
//! PHP jobs end to end, and pickup of pushed jobs without polling.
//!
//! No timing assertions: every wait is a generous bound against hangs.

mod common;

use common::{
    done_ids, resque, run, status_of, stderr, stdout, wait_for, write_config, Daemon, RedisServer,
};
use nix::sys::signal::Signal;
use redis::Commands;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LIMIT: Duration = Duration::from_secs(30);
const PHP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/php");

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The host name the daemon puts in its worker ids (`gethostname()`, `:` replaced).
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("/proc/sys/kernel/hostname")
        .trim()
        .replace(':', "-")
}

/// A small fixed-algorithm PRNG (xorshift64*), so a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// A config with exec handlers: `Record` appends its job id to `<dir>/done`; `Slow` does the
/// same after sleeping a little (to have jobs in flight when the daemon is killed).
fn exec_config(redis: &RedisServer, dir: &Path, worker: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"[redis]
url = "{url}"
[worker]
{worker}
[[handler]]
class = "Record"
type = "exec"
command = ["/bin/sh", "-c", 'echo "$RESQUE_JOB_ID" >> {dir}/done']
[[handler]]
class = "Slow"
type = "exec"
command = ["/bin/sh", "-c", 'sleep 0.01; echo "$RESQUE_JOB_ID" >> {dir}/done']
"#,
            url = redis.url(),
            dir = dir.display()
        ),
    )
}

/// A config whose only handler runs every class as PHP, with the test job classes.
fn php_config(redis: &RedisServer, dir: &Path, worker: &str, handler_extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"[redis]
url = "{url}"
[worker]
{worker}
[[handler]]
class = "*"
type = "php"
bootstrap = "{php}/worker/jobs.php"
{handler_extra}
"#,
            url = redis.url(),
            php = PHP_DIR,
        ),
    )
}

/// php-resque's payload shape.
fn payload(class: &str, id: &str, args: Value) -> String {
    json!({"class": class, "args": [args], "id": id}).to_string()
}

fn new_id(rng: &mut Rng) -> String {
    format!("{:016x}{:016x}", rng.next(), rng.next())
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Enqueue as php-resque does (SADD queues + RPUSH), straight into Redis.
fn push(redis: &RedisServer, queue: &str, raw: &str) {
    let mut c = redis.conn();
    let _: () = c.sadd("resque:queues", queue).unwrap();
    let _: () = c.rpush(format!("resque:queue:{queue}"), raw).unwrap();
}

/// `SET job:<id>:status {"status":1,…}` as php-resque's enqueue with tracking.
fn track(redis: &RedisServer, id: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let _: () = redis
        .conn()
        .set(
            format!("resque:job:{id}:status"),
            format!(r#"{{"status":1,"updated":{now},"started":{now}}}"#),
        )
        .unwrap();
}

/// One RESP command on a fresh TCP connection, as redis-cli would send it; returns the reply line.
fn raw_command(port: u16, args: &[&str]) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
    }
    stream.write_all(out.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    assert!(!line.starts_with('-'), "{args:?}: {line}");
    line
}

fn status_ttl(redis: &RedisServer, id: &str) -> i64 {
    redis.conn().ttl(format!("resque:job:{id}:status")).unwrap()
}

fn wait_status(redis: &RedisServer, id: &str, want: i64) {
    wait_for(&format!("status {want} of {id}"), LIMIT, || {
        (status_of(redis, id) == Some(want)).then_some(())
    });
}

fn failures(redis: &RedisServer) -> Vec<Value> {
    let items: Vec<String> = redis.conn().lrange("resque:failed", 0, -1).unwrap();
    items
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect()
}

fn stat(redis: &RedisServer, name: &str) -> i64 {
    let v: Option<i64> = redis.conn().get(format!("resque:stat:{name}")).unwrap();
    v.unwrap_or(0)
}

/// Every `resque:inflight:*` list with its content.
fn inflight_lists(redis: &RedisServer) -> BTreeMap<String, Vec<String>> {
    let mut c = redis.conn();
    let keys: Vec<String> = c.keys("resque:inflight:*").unwrap();
    keys.into_iter()
        .map(|k| {
            let items: Vec<String> = c.lrange(&k, 0, -1).unwrap();
            (k, items)
        })
        .collect()
}

fn workers(redis: &RedisServer) -> Vec<String> {
    let mut w: Vec<String> = redis.conn().smembers("resque:workers").unwrap();
    w.sort();
    w
}

/// Waits until `count` workers of the daemon with this pid are registered; returns their ids.
fn wait_workers(redis: &RedisServer, pid: i32, count: usize) -> Vec<String> {
    let prefix = format!("{}:{pid}", host());
    wait_for(&format!("{count} workers of pid {pid}"), LIMIT, || {
        let ours: Vec<String> = workers(redis)
            .into_iter()
            .filter(|w| {
                w.starts_with(&format!("{prefix}:")) || w.starts_with(&format!("{prefix}-"))
            })
            .collect();
        (ours.len() == count).then_some(ours)
    })
}

/// A pid that is certainly not running: a child we started and reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn require_php() {
    let out = std::process::Command::new("php")
        .args(["-r", "echo function_exists('pcntl_fork') ? 'ok' : 'no';"])
        .output()
        .expect("these tests need php-cli in PATH");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok",
        "these tests need php-cli with pcntl"
    );
}

fn is_rfc3339(text: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(text).is_ok()
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL at random moments: at-least-once, nothing lost.

#[test]
fn sigkill_at_random_moments_loses_no_job() {
    let seed = std::env::var("RESQUE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(clock_seed);
    eprintln!("sigkill test seed: {seed} (replay with RESQUE_TEST_SEED={seed})");
    let mut rng = Rng::new(seed);
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    const COUNT: usize = 4;
    // max_lost high: this test is about losing jobs, not about the poison-pill limit (a job
    // may well be in flight at several kills in a row).
    let config = exec_config(
        &redis,
        dir.path(),
        &format!("queues = [\"default\"]\ncount = {COUNT}\nmax_lost = 1000"),
    );
    let ids: Vec<String> = (0..1000).map(|_| new_id(&mut rng)).collect();
    {
        let mut c = redis.conn();
        let mut pipe = redis::pipe();
        pipe.sadd("resque:queues", "default").ignore();
        for id in &ids {
            pipe.rpush("resque:queue:default", payload("Slow", id, json!({})))
                .ignore();
        }
        let _: () = pipe.query(&mut c).unwrap();
    }

    let kills = rng.range(6, 9) as usize;
    for k in 0..kills {
        let mut daemon = Daemon::start(&config, &[]);
        let delay = rng.range(50, 400);
        std::thread::sleep(Duration::from_millis(delay));
        daemon.signal(Signal::SIGKILL);
        daemon.wait_exit(LIMIT);
        let queued: usize = redis.conn().llen("resque:queue:default").unwrap();
        let held: usize = inflight_lists(&redis).values().map(Vec::len).sum();
        eprintln!(
            "kill {}/{kills} after {delay} ms: {} done lines, {queued} queued, {held} in flight",
            k + 1,
            done_ids(dir.path()).len()
        );
    }

    // The last daemon recovers what the last one held and drains the queue.
    let mut daemon = Daemon::start(&config, &[]);
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    wait_for("every job done", Duration::from_secs(240), || {
        let done = done_ids(dir.path());
        let seen: HashSet<&str> = done.iter().map(String::as_str).collect();
        let queued: usize = redis.conn().llen("resque:queue:default").unwrap();
        (want.is_subset(&seen) && queued == 0 && inflight_lists(&redis).is_empty()).then_some(())
    });
    let live = wait_workers(&redis, daemon.pid(), COUNT);

    // Give a stray duplicate the chance to show up before counting.
    std::thread::sleep(Duration::from_millis(500));
    let done = done_ids(dir.path());
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &done {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let missing: Vec<&&str> = want
        .iter()
        .filter(|id| !counts.contains_key(**id))
        .collect();
    assert!(missing.is_empty(), "jobs lost: {missing:?}");
    let strangers: Vec<&&str> = counts.keys().filter(|id| !want.contains(**id)).collect();
    assert!(strangers.is_empty(), "unknown ids ran: {strangers:?}");
    let duplicates: Vec<(&str, usize)> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (*id, *n))
        .collect();
    let extra: usize = duplicates.iter().map(|(_, n)| n - 1).sum();
    eprintln!(
        "{} jobs, {kills} kills, {extra} extra runs (at-least-once): {duplicates:?}",
        ids.len()
    );
    assert!(
        extra <= kills * COUNT,
        "{extra} duplicate runs for {kills} kills of {COUNT} workers: {duplicates:?}"
    );
    assert!(failures(&redis).is_empty(), "{:?}", failures(&redis));

    // Only the live workers are left: the killed daemons' records were removed.
    let mut c = redis.conn();
    assert_eq!(workers(&redis), live, "stale worker records");
    let index: BTreeMap<String, String> = c.hgetall("resque:inflight").unwrap();
    assert!(
        index.keys().all(|w| live.contains(w)),
        "in-flight index of dead workers left: {index:?}"
    );
    let beats: BTreeMap<String, String> = c.hgetall("resque:workers:heartbeat").unwrap();
    assert!(
        beats.keys().all(|w| live.contains(w)),
        "heartbeats of dead workers left: {beats:?} (live: {live:?})"
    );

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0), "{}", daemon.log_text());
    assert!(workers(&redis).is_empty());
    let left: Vec<String> = c.keys("resque:inflight*").unwrap();
    assert!(left.is_empty(), "{left:?}");
}

// ---------------------------------------------------------------------------------------------
// 2. Bad queue entries fail clearly and never stop the worker.

#[test]
fn bad_entries_fail_with_a_clear_error_and_the_worker_keeps_going() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(&redis, dir.path(), "queues = [\"default\"]");
    let daemon = Daemon::start(&config, &[]);
    let ids = wait_workers(&redis, daemon.pid(), 1);
    let mut rng = Rng::new(clock_seed());

    let cases: Vec<(String, &str)> = vec![
        ("this is not json".into(), "not valid JSON"),
        ("{\"class\":\"Record\",".into(), "not valid JSON"),
        ("[1,2]".into(), "not an object (found an array)"),
        ("\"str\"".into(), "not an object (found a string)"),
        ("42".into(), "not an object (found a number)"),
        (r#"{"args":[{}],"id":"noclass"}"#.into(), "no \"class\""),
        (r#"{"class":7,"args":[]}"#.into(), "\"class\" is not"),
        (
            r#"{"class":["Record"],"args":[]}"#.into(),
            "\"class\" is not",
        ),
        (r#"{"class":"","args":[]}"#.into(), "\"class\" is not"),
        (
            payload("Nobody\\Handles\\This", "0123abcd", json!({})),
            "Could not find job class Nobody\\Handles\\This",
        ),
    ];
    for (n, (raw, expected)) in cases.iter().enumerate() {
        let failed_before = stat(&redis, "failed");
        let processed_before = stat(&redis, "processed");
        push(&redis, "default", raw);
        let record = wait_for(&format!("failure for {raw}"), LIMIT, || {
            failures(&redis).get(n).cloned()
        });
        let error = record["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{raw}: error {error:?}");
        assert_eq!(record["exception"], "Resque\\Exception", "{raw}");
        assert_eq!(record["queue"], "default");
        assert_eq!(record["worker"], ids[0].as_str());
        assert!(is_rfc3339(record["failed_at"].as_str().unwrap()));
        // The raw entry is kept: as text when it is not an object we can read, as the object
        // otherwise.
        match readable_object(raw) {
            Some(object) => assert_eq!(record["payload"], object, "{raw}"),
            None => assert_eq!(record["payload"], Value::String(raw.clone()), "{raw}"),
        }
        wait_for("stats", LIMIT, || {
            (stat(&redis, "failed") == failed_before + 1
                && stat(&redis, "processed") == processed_before + 1)
                .then_some(())
        });

        // The next good job runs and completes.
        let good = new_id(&mut rng);
        track(&redis, &good);
        push(&redis, "default", &payload("Record", &good, json!({})));
        wait_status(&redis, &good, 4);
        assert!(done_ids(dir.path()).contains(&good));
        assert_eq!(stat(&redis, "failed"), failed_before + 1);
        assert_eq!(stat(&redis, "processed"), processed_before + 2);
        assert!(
            inflight_lists(&redis).is_empty(),
            "{:?}",
            inflight_lists(&redis)
        );
        let busy: Option<String> = redis
            .conn()
            .get(format!("resque:worker:{}", ids[0]))
            .unwrap();
        assert_eq!(busy, None, "worker record cleared after {raw}");
    }
    assert_eq!(failures(&redis).len(), cases.len());
    assert_eq!(workers(&redis), ids, "the same worker is still there");
}

/// What a failure record should carry as payload: the object, when the entry is one with a
/// string class (the others are kept as raw text).
fn readable_object(raw: &str) -> Option<Value> {
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ Value::Object(_)) if v["class"].as_str().is_some_and(|c| !c.is_empty()) => Some(v),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Recovery of dead workers.

/// Writes what a worker of another process leaves behind when it dies holding `raw`.
fn plant_dead_worker(redis: &RedisServer, id: &str, queue: &str, raw: &str) {
    let mut c = redis.conn();
    let _: () = c.rpush(format!("resque:inflight:{id}"), raw).unwrap();
    let _: () = c.hset("resque:inflight", id, queue).unwrap();
    let _: () = c.sadd("resque:workers", id).unwrap();
    let _: () = c
        .set(
            format!("resque:worker:{id}:started"),
            "2026-01-01T00:00:00+00:00",
        )
        .unwrap();
    let _: () = c
        .set(
            format!("resque:worker:{id}"),
            json!({"queue": queue, "run_at": "2026-01-01T00:00:00+00:00", "payload": serde_json::from_str::<Value>(raw).unwrap()}).to_string(),
        )
        .unwrap();
    let _: () = c.sadd("resque:queues", queue).unwrap();
}

fn assert_worker_gone(redis: &RedisServer, id: &str) {
    let mut c = redis.conn();
    assert!(
        !workers(redis).contains(&id.to_string()),
        "{id} still in workers"
    );
    let index: Option<String> = c.hget("resque:inflight", id).unwrap();
    assert_eq!(index, None, "{id} still in the in-flight index");
    let beat: Option<String> = c.hget("resque:workers:heartbeat", id).unwrap();
    assert_eq!(beat, None, "{id} still has a heartbeat");
    for key in [
        format!("resque:inflight:{id}"),
        format!("resque:worker:{id}"),
        format!("resque:worker:{id}:started"),
    ] {
        let exists: bool = c.exists(&key).unwrap();
        assert!(!exists, "{key} still exists");
    }
}

#[test]
fn a_dead_local_workers_job_goes_back_to_the_head_of_its_queue_and_runs() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(
        &redis,
        dir.path(),
        "queues = [\"default\"]\ninterval = \"1s\"",
    );
    let dead = format!("{}:{}:default", host(), dead_pid());
    let lost = payload("Record", "lostlostlost", json!({"n": 1}));
    let waiting = payload("Record", "waitingwaiting", json!({"n": 2}));
    push(&redis, "default", &waiting);
    plant_dead_worker(&redis, &dead, "default", &lost);
    track(&redis, "lostlostlost");
    // Ruby's pause key holds the workers while we look at the queue after recovery.
    let _: () = redis
        .conn()
        .set("resque:pause-all-workers", "true")
        .unwrap();

    let daemon = Daemon::start(&config, &[]);
    // Start-up recovery runs before the workers register.
    wait_workers(&redis, daemon.pid(), 1);
    let queued: Vec<String> = redis.conn().lrange("resque:queue:default", 0, -1).unwrap();
    assert_eq!(
        queued,
        vec![lost.clone(), waiting.clone()],
        "back at the head"
    );
    assert_worker_gone(&redis, &dead);

    let _: () = redis.conn().del("resque:pause-all-workers").unwrap();
    wait_for("both jobs", LIMIT, || {
        (done_ids(dir.path()).len() == 2).then_some(())
    });
    assert_eq!(done_ids(dir.path()), vec!["lostlostlost", "waitingwaiting"]);
    assert_eq!(status_of(&redis, "lostlostlost"), Some(4));
    assert!(failures(&redis).is_empty());
    let count: Option<i64> = redis
        .conn()
        .get(format!("resque:lost:{}", sha1_by_redis(&redis, &lost)))
        .unwrap();
    assert_eq!(count, Some(1), "the loss is counted");
    assert!(
        daemon.log_text().contains("put back"),
        "{}",
        daemon.log_text()
    );
}

fn sha1_by_redis(redis: &RedisServer, text: &str) -> String {
    redis::cmd("EVAL")
        .arg("return redis.sha1hex(ARGV[1])")
        .arg(0)
        .arg(text)
        .query(&mut redis.conn())
        .unwrap()
}

#[test]
fn on_lost_fail_records_a_dirty_exit() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(
        &redis,
        dir.path(),
        "queues = [\"default\"]\non_lost = \"fail\"",
    );
    let dead = format!("{}:{}:default", host(), dead_pid());
    let lost = payload("Record", "lostlostlost", json!({"n": 1}));
    plant_dead_worker(&redis, &dead, "default", &lost);
    track(&redis, "lostlostlost");
    let daemon = Daemon::start(&config, &[]);
    wait_workers(&redis, daemon.pid(), 1);
    let failed = wait_for("failure record", LIMIT, || failures(&redis).pop());
    assert_eq!(failed["exception"], "Resque\\Job\\DirtyExitException");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains(&dead) && error.contains("Record"), "{error}");
    assert_eq!(failed["worker"], dead.as_str());
    assert_eq!(failed["queue"], "default");
    assert_eq!(failed["payload"]["id"], "lostlostlost");
    assert!(is_rfc3339(failed["failed_at"].as_str().unwrap()));
    assert_eq!(status_of(&redis, "lostlostlost"), Some(3));
    assert!(status_ttl(&redis, "lostlostlost") > 86_000);
    assert_eq!(stat(&redis, "failed"), 1);
    assert_worker_gone(&redis, &dead);
    let queued: usize = redis.conn().llen("resque:queue:default").unwrap();
    assert_eq!(queued, 0, "not requeued");
    assert!(done_ids(dir.path()).is_empty(), "not run");
    // Failure stats of the dead worker are not left behind.
    let mut c = redis.conn();
    let stray: Vec<String> = c.keys(format!("resque:stat:*:{dead}")).unwrap();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn a_job_lost_max_lost_times_is_failed_as_a_poison_pill() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(&redis, dir.path(), "queues = [\"default\"]");
    let dead = format!("{}:{}:default", host(), dead_pid());
    let lost = payload("Record", "poisonpoison", json!({}));
    plant_dead_worker(&redis, &dead, "default", &lost);
    // Lost twice before: this is the third time (max_lost defaults to 3).
    let digest = sha1_by_redis(&redis, &lost);
    let _: () = redis
        .conn()
        .set(format!("resque:lost:{digest}"), 2)
        .unwrap();
    let daemon = Daemon::start(&config, &[]);
    wait_workers(&redis, daemon.pid(), 1);
    let failed = wait_for("failure record", LIMIT, || failures(&redis).pop());
    assert_eq!(failed["exception"], "Resque\\Job\\DirtyExitException");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("lost 3 times"), "{error}");
    assert_eq!(failed["payload"]["id"], "poisonpoison");
    assert_worker_gone(&redis, &dead);
    let queued: usize = redis.conn().llen("resque:queue:default").unwrap();
    assert_eq!(queued, 0);
    assert!(done_ids(dir.path()).is_empty());
}

#[test]
fn remote_workers_are_recovered_only_when_their_heartbeat_is_stale() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // dead_after is short of the stale beat (1 h) and far above the fresh one, so the result
    // does not depend on how fast the daemon starts.
    let config = exec_config(
        &redis,
        dir.path(),
        "queues = [\"default\"]\ndead_after = \"10m\"",
    );
    let fresh = "otherhost:4242:default";
    let stale = "otherhost:4343:default";
    let fresh_job = payload("Record", "freshfresh", json!({}));
    let stale_job = payload("Record", "stalestale", json!({}));
    plant_dead_worker(&redis, fresh, "default", &fresh_job);
    plant_dead_worker(&redis, stale, "default", &stale_job);
    let now = chrono::Utc::now();
    let hour_ago = now - chrono::Duration::hours(1);
    let mut c = redis.conn();
    let _: () = c
        .hset("resque:workers:heartbeat", fresh, now.to_rfc3339())
        .unwrap();
    let _: () = c
        .hset("resque:workers:heartbeat", stale, hour_ago.to_rfc3339())
        .unwrap();

    let daemon = Daemon::start(&config, &[]);
    wait_workers(&redis, daemon.pid(), 1);
    wait_for("the stale worker's job ran", LIMIT, || {
        done_ids(dir.path())
            .contains(&"stalestale".to_string())
            .then_some(())
    });
    assert_worker_gone(&redis, stale);
    // The fresh one is untouched.
    let held: Vec<String> = c.lrange(format!("resque:inflight:{fresh}"), 0, -1).unwrap();
    assert_eq!(held, vec![fresh_job]);
    assert!(workers(&redis).contains(&fresh.to_string()));
    let index: Option<String> = c.hget("resque:inflight", fresh).unwrap();
    assert_eq!(index.as_deref(), Some("default"));
    let beat: Option<String> = c.hget("resque:workers:heartbeat", fresh).unwrap();
    assert!(beat.is_some());
    assert!(!done_ids(dir.path()).contains(&"freshfresh".to_string()));
    assert!(failures(&redis).is_empty());

    // With dead_after = 1s, the same beat is stale after a moment: a daemon started now
    // recovers it.
    drop(daemon);
    let config = exec_config(
        &redis,
        dir.path(),
        "queues = [\"default\"]\ndead_after = \"1s\"",
    );
    std::thread::sleep(Duration::from_millis(2100));
    let daemon = Daemon::start(&config, &[]);
    wait_for("the fresh worker's job ran once stale", LIMIT, || {
        done_ids(dir.path())
            .contains(&"freshfresh".to_string())
            .then_some(())
    });
    wait_workers(&redis, daemon.pid(), 1);
    assert_worker_gone(&redis, fresh);
}

#[test]
fn records_of_a_killed_idle_daemon_are_removed_by_the_next_one() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(&redis, dir.path(), "queues = [\"default\"]\ncount = 3");
    let mut first = Daemon::start(&config, &[]);
    // Registered, never reserved anything (the queue is empty).
    let gone = wait_workers(&redis, first.pid(), 3);
    first.signal(Signal::SIGKILL);
    first.wait_exit(LIMIT);
    let second = Daemon::start(&config, &[]);
    let live = wait_workers(&redis, second.pid(), 3);
    // Start-up recovery ran before the new workers registered.
    assert_eq!(
        workers(&redis),
        live,
        "records of the killed daemon are left"
    );
    for id in &gone {
        assert_worker_gone(&redis, id);
    }
}

#[test]
fn a_recovery_lock_left_by_a_killed_daemon_does_not_delay_recovery() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(&redis, dir.path(), "queues = [\"default\"]");
    let dead = dead_pid();
    let worker = format!("{}:{dead}:default", host());
    plant_dead_worker(
        &redis,
        &worker,
        "default",
        &payload("Record", "lockedlocked", json!({})),
    );
    // What a daemon killed in the middle of a recovery pass leaves behind.
    let _: () = redis::cmd("SET")
        .arg("resque:recovery-lock")
        .arg(format!("{}:{dead}", host()))
        .arg("EX")
        .arg(60)
        .query(&mut redis.conn())
        .unwrap();
    let daemon = Daemon::start(&config, &[]);
    wait_workers(&redis, daemon.pid(), 1);
    wait_for("the dead worker's job ran", LIMIT, || {
        done_ids(dir.path())
            .contains(&"lockedlocked".to_string())
            .then_some(())
    });
    assert_worker_gone(&redis, &worker);
    let lock: Option<String> = redis.conn().get("resque:recovery-lock").unwrap();
    assert_eq!(lock, None, "the lock is released");
}

#[test]
fn an_outcome_is_recorded_once_when_redis_answers_late() {
    // A failover (or any CLIENT PAUSE WRITE) holds the outcome's MULTI past the command timeout;
    // Redis still runs it when the pause ends. Retrying must not write the outcome again.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let config = write_config(
        dir.path(),
        &format!(
            r#"[redis]
url = "{url}"
command_timeout = "300ms"
[worker]
queues = ["default"]
[[handler]]
class = "Gate"
type = "exec"
command = ["/bin/sh", "-c", 'while [ ! -e {gate} ]; do sleep 0.05; done; echo "$RESQUE_JOB_ID" >> {dir}/done; exit 3']
"#,
            url = redis.url(),
            gate = gate.display(),
            dir = dir.path().display()
        ),
    );
    let daemon = Daemon::start(&config, &[]);
    wait_workers(&redis, daemon.pid(), 1);
    let id = "latelatelate";
    track(&redis, id);
    push(&redis, "default", &payload("Gate", id, json!({})));
    wait_status(&redis, id, 2);
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2500)
        .arg("WRITE")
        .query(&mut redis.conn())
        .unwrap();
    std::fs::write(&gate, "").unwrap();
    wait_for("job ran", LIMIT, || {
        done_ids(dir.path()).contains(&id.to_string()).then_some(())
    });
    wait_status(&redis, id, 3);
    // Let every retry that was sent reach Redis.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        daemon.log_text().contains("cannot record"),
        "the pause outlasted the command timeout: {}",
        daemon.log_text()
    );
    let failed = failures(&redis);
    assert_eq!(failed.len(), 1, "failure recorded {} times", failed.len());
    assert_eq!(stat(&redis, "failed"), 1);
    assert_eq!(stat(&redis, "processed"), 1);
    assert!(inflight_lists(&redis).is_empty());
    // And the worker goes on.
    let next = "afterafter";
    track(&redis, next);
    push(&redis, "default", &payload("Gate", next, json!({})));
    wait_status(&redis, next, 3);
    assert_eq!(stat(&redis, "processed"), 2);
}

// ---------------------------------------------------------------------------------------------
// 4. Registration.

#[test]
fn workers_register_come_back_after_pruning_and_unregister_on_stop() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(
        &redis,
        dir.path(),
        "queues = [\"default\", \"low\"]\ncount = 3",
    );
    let mut daemon = Daemon::start(&config, &[]);
    let ids = wait_workers(&redis, daemon.pid(), 3);
    let mut c = redis.conn();
    let check_records = |c: &mut redis::Connection| {
        let beats: BTreeMap<String, String> = c.hgetall("resque:workers:heartbeat").unwrap();
        for id in &ids {
            assert!(id.ends_with(":default,low"), "{id}");
            let started: Option<String> = c.get(format!("resque:worker:{id}:started")).unwrap();
            let started = started.unwrap_or_else(|| panic!("no :started for {id}"));
            assert!(is_rfc3339(&started), "{started}");
            let beat = beats
                .get(id)
                .unwrap_or_else(|| panic!("no heartbeat for {id}: {beats:?}"));
            assert!(is_rfc3339(beat), "{beat}");
        }
    };
    check_records(&mut c);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 3);

    // php-resque's pruning (or an operator) removes them; the next heartbeat puts them back.
    for id in &ids {
        let _: () = c.srem("resque:workers", id).unwrap();
        let _: () = c.del(format!("resque:worker:{id}:started")).unwrap();
        let _: () = c.hdel("resque:workers:heartbeat", id).unwrap();
    }
    assert!(workers(&redis).is_empty());
    wait_for(
        "records back at the next heartbeat",
        Duration::from_secs(45),
        || (workers(&redis) == ids).then_some(()),
    );
    wait_for("every record back", LIMIT, || {
        let beats: BTreeMap<String, String> = c.hgetall("resque:workers:heartbeat").unwrap();
        ids.iter().all(|id| beats.contains_key(id)).then_some(())
    });
    check_records(&mut c);

    // A job in between, so there are per-worker stats to remove too.
    let id = "regjobregjob";
    push(&redis, "default", &payload("Record", id, json!({})));
    wait_for("job", LIMIT, || {
        done_ids(dir.path()).contains(&id.to_string()).then_some(())
    });
    wait_for("processed", LIMIT, || {
        (stat(&redis, "processed") == 1).then_some(())
    });

    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0), "{}", daemon.log_text());
    assert!(workers(&redis).is_empty());
    let beats: BTreeMap<String, String> = c.hgetall("resque:workers:heartbeat").unwrap();
    assert!(beats.is_empty(), "{beats:?}");
    let left: Vec<String> = c.keys("resque:worker:*").unwrap();
    assert!(left.is_empty(), "{left:?}");
    let left: Vec<String> = c.keys("resque:stat:*:*").unwrap();
    assert!(left.is_empty(), "{left:?}");
    let left: Vec<String> = c.keys("resque:inflight*").unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(stat(&redis, "processed"), 1, "global stats stay");
}

// ---------------------------------------------------------------------------------------------
// 5. PHP jobs through the daemon.

#[test]
fn php_tracked_job_goes_waiting_running_complete_with_a_day_ttl() {
    require_php();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = php_config(&redis, dir.path(), "queues = [\"default\"]", "");
    let gate = dir.path().join("gate");
    let id = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
    track(&redis, id);
    push(
        &redis,
        "default",
        &payload("Worker\\Job\\GateJob", id, json!({"gate": gate})),
    );
    assert_eq!(status_of(&redis, id), Some(1));
    let daemon = Daemon::start(&config, &[]);
    wait_status(&redis, id, 2);
    assert_eq!(status_ttl(&redis, id), -1, "RUNNING does not expire");
    let ids = wait_workers(&redis, daemon.pid(), 1);
    let record: Option<String> = redis
        .conn()
        .get(format!("resque:worker:{}", ids[0]))
        .unwrap();
    let record: Value = serde_json::from_str(&record.expect("worker record while busy")).unwrap();
    assert_eq!(record["queue"], "default");
    assert_eq!(record["payload"]["id"], id);
    assert!(is_rfc3339(record["run_at"].as_str().unwrap()));
    std::fs::write(&gate, "").unwrap();
    wait_status(&redis, id, 4);
    let ttl = status_ttl(&redis, id);
    assert!((86_000..=86_400).contains(&ttl), "ttl {ttl}");
    assert!(failures(&redis).is_empty());
    assert_eq!(stat(&redis, "processed"), 1);
}

#[test]
fn php_throwing_job_goes_to_failed_with_php_details() {
    require_php();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = php_config(&redis, dir.path(), "queues = [\"default\"]", "");
    let gate = dir.path().join("gate");
    let id = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
    track(&redis, id);
    push(
        &redis,
        "default",
        &payload(
            "Worker\\Job\\GateJob",
            id,
            json!({"gate": gate, "throw": "no way: \u{4e2d}"}),
        ),
    );
    assert_eq!(status_of(&redis, id), Some(1));
    let daemon = Daemon::start(&config, &[]);
    let ids = wait_workers(&redis, daemon.pid(), 1);
    wait_status(&redis, id, 2);
    std::fs::write(&gate, "").unwrap();
    wait_status(&redis, id, 3);
    let ttl = status_ttl(&redis, id);
    assert!((86_000..=86_400).contains(&ttl), "ttl {ttl}");
    let failed = failures(&redis);
    assert_eq!(failed.len(), 1);
    let f = &failed[0];
    assert_eq!(f["exception"], "DomainException");
    assert_eq!(f["error"], "no way: \u{4e2d}");
    let backtrace: Vec<&str> = f["backtrace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(backtrace[0].starts_with("#0 "), "{backtrace:?}");
    assert!(
        backtrace.iter().any(|l| l.contains("GateJob->perform()")),
        "{backtrace:?}"
    );
    assert_eq!(f["worker"], ids[0].as_str());
    assert_eq!(f["queue"], "default");
    assert!(is_rfc3339(f["failed_at"].as_str().unwrap()), "{f}");
    assert_eq!(f["payload"]["id"], id);
    assert_eq!(f["payload"]["class"], "Worker\\Job\\GateJob");
    assert_eq!(stat(&redis, "failed"), 1);
    assert_eq!(stat(&redis, "processed"), 1);
    assert!(inflight_lists(&redis).is_empty());
}

#[test]
fn php_args_stdout_exit_and_fatal_through_the_daemon() {
    require_php();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = php_config(&redis, dir.path(), "queues = [\"default\"]", "");
    let daemon = Daemon::start(&config, &[]);
    wait_workers(&redis, daemon.pid(), 1);
    php_contract(&redis, dir.path(), &daemon);
}

#[test]
fn php_with_fork_isolation_through_the_daemon() {
    require_php();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = php_config(
        &redis,
        dir.path(),
        "queues = [\"default\"]",
        "isolation = \"fork\"",
    );
    let daemon = Daemon::start(&config, &[]);
    wait_workers(&redis, daemon.pid(), 1);
    php_contract(&redis, dir.path(), &daemon);
    // And a throwing job fails as in the pool.
    let id = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";
    track(&redis, id);
    push(
        &redis,
        "default",
        &payload("Common\\Job\\ThrowJob", id, json!({})),
    );
    wait_status(&redis, id, 3);
    let f = failures(&redis).pop().unwrap();
    assert_eq!(f["exception"], "RuntimeException");
    assert_eq!(f["payload"]["id"], id);
}

/// `$this->args`, STDOUT in the log, exit() and a fatal error, each followed by a good job.
fn php_contract(redis: &RedisServer, dir: &Path, daemon: &Daemon) {
    let mut rng = Rng::new(clock_seed());
    // $this->args is args[0]; the second element is not seen.
    let out = dir.join("args.json");
    let id = new_id(&mut rng);
    let first = json!({"out": out, "zh": "中文", "url": "http://a/b", "n": [1, 2]});
    push(
        redis,
        "default",
        &json!({"class": "\\Common\\Job\\ArgsJob", "args": [first, "second"], "id": id})
            .to_string(),
    );
    wait_for("ArgsJob", LIMIT, || std::fs::read_to_string(&out).ok());
    let seen: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(seen["args"], first);
    assert_eq!(seen["queue"], "default");
    assert_eq!(seen["job_id"], id.as_str());

    // STDOUT goes to the daemon's log, tagged with the job.
    let id = new_id(&mut rng);
    let marker = format!("marker-{}", new_id(&mut rng));
    track(redis, &id);
    push(
        redis,
        "default",
        &payload("Common\\Job\\OkJob", &id, json!({"say": marker})),
    );
    wait_status(redis, &id, 4);
    let line = wait_for("the job's output in the log", LIMIT, || {
        daemon
            .log_text()
            .lines()
            .find(|l| l.contains(&marker))
            .map(str::to_string)
    });
    assert!(line.contains(&id), "{line}");

    for (class, args, exception, error) in [
        (
            "Common\\Job\\ExitJob",
            json!({"code": 3}),
            "Resque\\Job\\DirtyExitException",
            "exit()",
        ),
        (
            "Common\\Job\\RedeclareJob",
            json!({}),
            "PHP Fatal error",
            "Cannot declare class ResqueTestTwice",
        ),
        (
            "Common\\Job\\UndefinedFunctionJob",
            json!({}),
            "Error",
            "this_function_does_not_exist",
        ),
    ] {
        let before = failures(redis).len();
        let bad = new_id(&mut rng);
        track(redis, &bad);
        push(redis, "default", &payload(class, &bad, args));
        wait_status(redis, &bad, 3);
        let f = failures(redis);
        assert_eq!(f.len(), before + 1);
        let f = f.last().unwrap();
        assert_eq!(f["exception"], exception, "{class}: {f}");
        assert!(f["error"].as_str().unwrap().contains(error), "{class}: {f}");
        assert_eq!(f["payload"]["id"], bad.as_str());
        // The next job runs.
        let good = new_id(&mut rng);
        track(redis, &good);
        push(
            redis,
            "default",
            &payload("Common\\Job\\OkJob", &good, json!({})),
        );
        wait_status(redis, &good, 4);
    }
    assert!(inflight_lists(redis).is_empty());
}

#[test]
fn a_job_enqueued_by_php_resque_code_runs_and_completes() {
    require_php();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = php_config(&redis, dir.path(), "queues = [\"default\"]", "");
    let daemon = Daemon::start(&config, &[]);
    wait_workers(&redis, daemon.pid(), 1);
    // TP3 writes the WAITING status after the RPUSH; a worker faster than that finds the job
    // untracked and the status then stays 1 for good (protocol.md §4). That race is php-resque's,
    // not ours: hold the workers while the script runs.
    daemon.wait_control_socket();
    let o = daemon.ctl(&["pause"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::thread::sleep(Duration::from_millis(300));
    let marker = format!("php-enqueued-{}", clock_seed());
    let out = std::process::Command::new("php")
        .arg(format!("{PHP_DIR}/worker/enqueue.php"))
        .args(["127.0.0.1", &redis.port.to_string(), "default"])
        .arg(json!({"say": marker, "url": "http://a/b", "zh": "中文"}).to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(status_of(&redis, &id), Some(1));
    let raw: Vec<String> = redis.conn().lrange("resque:queue:default", 0, -1).unwrap();
    assert!(
        raw[0].starts_with(r#"{"class":"\\Common\\Job\\OkJob","args":[{"#),
        "PHP's own encoding: {raw:?}"
    );
    let o = daemon.ctl(&["resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_status(&redis, &id, 4);
    let ttl = status_ttl(&redis, &id);
    assert!((86_000..=86_400).contains(&ttl), "ttl {ttl}");
    let line = wait_for("output in the log", LIMIT, || {
        daemon
            .log_text()
            .lines()
            .find(|l| l.contains(&marker))
            .map(str::to_string)
    });
    assert!(line.contains(&id), "{line}");
    // OkJob echoes json_encode($this->args): PHP's own escaping of the args it was given.
    assert!(line.contains(r#""url":"http:\/\/a\/b""#), "{line}");
    assert!(failures(&redis).is_empty());
    assert_eq!(stat(&redis, "processed"), 1);
}

// ---------------------------------------------------------------------------------------------
// 6. Pickup: a pushed job starts without waiting for the interval; priority order.

fn pickup(queues: &str, push_to: &str) {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(
        &redis,
        dir.path(),
        &format!("queues = {queues}\ninterval = \"60s\"\ncount = 2"),
    );
    let daemon = Daemon::start(&config, &[]);
    wait_workers(&redis, daemon.pid(), 2);
    // Idle for a while: every worker has looked at the empty queues and is waiting.
    std::thread::sleep(Duration::from_secs(2));
    for n in 0..3 {
        let id = format!("pickup{n}");
        raw_command(redis.port, &["SADD", "resque:queues", push_to]);
        raw_command(
            redis.port,
            &[
                "RPUSH",
                &format!("resque:queue:{push_to}"),
                &payload("Record", &id, json!({})),
            ],
        );
        wait_for(
            &format!("job {id} pushed to {push_to} starts before the 60 s interval"),
            Duration::from_secs(10),
            || done_ids(dir.path()).contains(&id).then_some(()),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_pushed_job_starts_without_waiting_for_the_interval() {
    pickup("[\"default\"]", "default");
}

#[test]
fn a_job_pushed_to_the_second_queue_starts_without_waiting_for_the_interval() {
    pickup("[\"high\", \"low\"]", "low");
}

#[test]
fn a_job_pushed_to_any_queue_wakes_a_star_worker() {
    pickup("[\"*\"]", "brand-new");
}

#[test]
fn higher_priority_queue_is_served_first() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(
        &redis,
        dir.path(),
        "queues = [\"high\", \"low\"]\ninterval = \"60s\"\ncount = 1",
    );
    let daemon = Daemon::start(&config, &[]);
    wait_workers(&redis, daemon.pid(), 1);
    daemon.wait_control_socket();
    let o = daemon.ctl(&["pause"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Let the pause reach the worker (it re-reads its control before reserving).
    std::thread::sleep(Duration::from_millis(300));
    let low = run(resque(&config).args(["enqueue", "low", "Record", "[]", "--track"]));
    assert!(low.status.success(), "{}", stderr(&low));
    let low = stdout(&low).trim().to_string();
    let high = run(resque(&config).args(["enqueue", "high", "Record", "[]", "--track"]));
    let high = stdout(&high).trim().to_string();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status_of(&redis, &low), Some(1), "paused: nothing reserved");
    let o = daemon.ctl(&["resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for("both jobs", LIMIT, || {
        (done_ids(dir.path()).len() == 2).then_some(())
    });
    assert_eq!(done_ids(dir.path()), vec![high, low], "high first");
}

/// php-resque workers that died on this host (or Ruby workers whose heartbeat stopped) leave
/// records behind; they are removed, and the job one was working on is recorded as failed, as
/// Ruby resque's pruning does. Live or unknowable ones (another host, no heartbeat) are kept.
#[test]
fn records_of_dead_workers_of_other_implementations_are_pruned() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = redis.conn();
    let dead_busy = format!("{}:{}:default", host(), dead_pid());
    let dead_idle = format!("{}:{}:default", host(), dead_pid());
    let remote_php = "otherhost:4242:default".to_string();
    let worker_json =
        std::fs::read_to_string(common::fixtures().join("tp3-seed/worker.json")).unwrap();
    for id in [&dead_busy, &dead_idle, &remote_php] {
        let _: () = c.sadd("resque:workers", id).unwrap();
        let _: () = c
            .set(
                format!("resque:worker:{id}:started"),
                "Wed Nov 25 16:12:32 CST 2026",
            )
            .unwrap();
    }
    let _: () = c
        .set(format!("resque:worker:{dead_busy}"), worker_json.trim())
        .unwrap();
    let _: () = c
        .set(format!("resque:worker:{remote_php}"), worker_json.trim())
        .unwrap();
    let config = exec_config(&redis, dir.path(), "queues = [\"default\"]");
    let daemon = Daemon::start(&config, &[]);
    let live = wait_workers(&redis, daemon.pid(), 1);
    let mut expected = vec![remote_php.clone(), live[0].clone()];
    expected.sort();
    assert_eq!(workers(&redis), expected);
    for id in [&dead_busy, &dead_idle] {
        let exists: bool = c.exists(format!("resque:worker:{id}:started")).unwrap();
        assert!(!exists, "{id} records removed");
    }
    let failed = failures(&redis);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["worker"], dead_busy.as_str());
    assert_eq!(failed[0]["queue"], "default");
    assert_eq!(failed[0]["payload"]["class"], "\\Common\\Job\\XxxxJob");
    assert!(failed[0]["error"]
        .as_str()
        .unwrap()
        .contains("did not gracefully exit"));
    assert_eq!(stat(&redis, "failed"), 1);
    let remote_kept: bool = c.exists(format!("resque:worker:{remote_php}")).unwrap();
    assert!(
        remote_kept,
        "a remote worker without heartbeat cannot be judged: kept"
    );
}
