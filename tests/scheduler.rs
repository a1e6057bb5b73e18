//! Delayed, recurring and retried jobs (issue 14), against a real redis-server, the real daemon,
//! real node-resque (Queue.enqueueIn, its Scheduler and Worker) and real php writing php-resque
//! 1.3.6's delayed items.

mod common;

use common::*;
use nix::sys::signal::Signal;
use redis::Commands;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A bound against hangs, not a speed assertion.
const LIMIT: Duration = Duration::from_secs(60);

/// A config with handlers `Record` (appends "TIME ID PAYLOAD" to `<dir>/done`) and `Flaky`
/// (appends the same to `<dir>/attempts` and fails).
fn config(redis: &RedisServer, dir: &Path, worker: &str, extra: &str) -> PathBuf {
    let line = |file: &str| {
        format!(
            r#"p=$(cat); printf "%s %s %s\n" "$(date +%s.%N)" "${{RESQUE_JOB_ID:--}}" "$p" >> {}/{file}"#,
            dir.display()
        )
    };
    write_config(
        dir,
        &format!(
            r#"[redis]
url = "{url}"
[worker]
{worker}
[scheduler]
lock_ttl = "3s"
[[handler]]
class = "Record"
type = "exec"
command = ["/bin/sh", "-c", '{record}']
[[handler]]
class = 'Common\Job\Mail'
type = "exec"
command = ["/bin/sh", "-c", '{record}']
[[handler]]
class = "Flaky"
type = "exec"
command = ["/bin/sh", "-c", '{flaky}; echo "no luck" >&2; exit 1']
{retry}
{extra}
"#,
            url = redis.url(),
            record = line("done"),
            flaky = line("attempts"),
            retry = if extra.contains("retry =") {
                ""
            } else {
                r#"retry = { attempts = 3, backoff = "exponential", base = "1s", max = "1m" }"#
            },
        ),
    )
}

/// Lines "TIME ID PAYLOAD" written by the handlers to `<dir>/<file>`.
fn records(dir: &Path, file: &str) -> Vec<(f64, String, Value)> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let t = parts.next()?.parse().ok()?;
            let id = parts.next()?.to_string();
            let payload = serde_json::from_str(parts.next()?).ok()?;
            Some((t, id, payload))
        })
        .collect()
}

fn ok(config: &Path, args: &[&str]) -> String {
    let o = run(resque(config).args(args));
    assert!(
        o.status.success(),
        "resque {args:?}: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn json_of(config: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(config, &all)).expect("JSON output")
}

/// Every key of the delayed layout left in Redis.
fn delayed_keys(redis: &RedisServer) -> Vec<String> {
    let mut c = redis.conn();
    let mut keys: Vec<String> = Vec::new();
    for pattern in [
        "resque:delayed:*",
        "resque:timestamps:*",
        "resque:delayed_queue_schedule",
    ] {
        let found: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap();
        keys.extend(
            found
                .into_iter()
                .filter(|k| !k.ends_with("last_enqueued_at")),
        );
    }
    keys
}

fn queue_items(redis: &RedisServer, queue: &str) -> Vec<String> {
    redis
        .conn()
        .lrange(format!("resque:queue:{queue}"), 0, -1)
        .unwrap()
}

/// The pid in the leader lock's owner (`host:pid:incarnation`), once someone holds it.
fn leader_pid(redis: &RedisServer) -> Option<i32> {
    let v: Option<String> = redis.conn().get("resque:scheduler:leader").unwrap();
    let v: Value = serde_json::from_str(&v?).ok()?;
    v["owner"].as_str()?.split(':').nth(1)?.parse().ok()
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn tracked_delayed_job_keeps_its_id_waits_and_runs_at_its_time() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&redis, dir.path(), "queues = [\"default\"]", "");
    let _daemon = Daemon::start(&config, &[]);
    let out = json_of(
        &config,
        &[
            "enqueue",
            "default",
            "Record",
            r#"{"to":"a/b"}"#,
            "--in",
            "3s",
            "--track",
        ],
    );
    let id = out["id"]
        .as_str()
        .expect("a tracked job has an id")
        .to_string();
    let at = out["at"].as_i64().unwrap();
    // resque-scheduler's layout, with the id in the item.
    let mut c = redis.conn();
    let items: Vec<String> = c.lrange(format!("resque:delayed:{at}"), 0, -1).unwrap();
    assert_eq!(
        items,
        vec![format!(
            r#"{{"class":"Record","args":[{{"to":"a/b"}}],"queue":"default","id":"{id}","prefix":""}}"#
        )]
    );
    let members: Vec<String> = c
        .smembers(format!("resque:timestamps:{}", items[0]))
        .unwrap();
    assert_eq!(members, vec![format!("delayed:{at}")]);
    let scheduled: Vec<(String, f64)> = c
        .zrange_withscores("resque:delayed_queue_schedule", 0, -1)
        .unwrap();
    assert_eq!(scheduled, vec![(at.to_string(), at as f64)]);
    assert_eq!(status_of(&redis, &id), Some(1), "WAITING until it runs");
    assert_eq!(
        json_of(&config, &["stats"])["delayed"],
        1,
        "stats counts delayed jobs"
    );

    let done = wait_for("the delayed job to run", LIMIT, || {
        records(dir.path(), "done").into_iter().next()
    });
    assert_eq!(done.1, id, "the job keeps its id");
    assert!(
        done.0 >= at as f64,
        "ran at {} before its time {at}",
        done.0
    );
    wait_for("COMPLETE", LIMIT, || {
        (status_of(&redis, &id) == Some(4)).then_some(())
    });
    assert!(
        delayed_keys(&redis).is_empty(),
        "{:?}",
        delayed_keys(&redis)
    );
}

#[test]
fn untracked_items_are_byte_compatible_with_resque_scheduler() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&redis, dir.path(), "queues = [\"default\"]", "");
    let at = (now_secs() as i64) + 3600;
    let out = json_of(
        &config,
        &[
            "enqueue",
            "mail",
            "Mail",
            r#"{"n":1}"#,
            "--at",
            &at.to_string(),
        ],
    );
    assert_eq!(out["id"], Value::Null);
    let items: Vec<String> = redis
        .conn()
        .lrange(format!("resque:delayed:{at}"), 0, -1)
        .unwrap();
    // What Ruby's delayed_push writes for `Resque.enqueue_at(t, Mail, {"n"=>1})` with queue mail.
    assert_eq!(
        items,
        vec![r#"{"class":"Mail","args":[{"n":1}],"queue":"mail"}"#.to_string()]
    );
}

#[test]
fn node_resque_enqueue_in_is_moved_with_its_bytes_and_run_by_our_daemon() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // The workers serve another queue first, so the moved item can be compared byte for byte.
    let config = config(&redis, dir.path(), "queues = [\"other\"]", "");
    let _daemon = Daemon::start(&config, &[]);
    let port = redis.port.to_string();
    node::run(
        "scheduler.js",
        &[
            "enqueue-in",
            &port,
            "1500",
            "nodeq",
            "Common\\Job\\Mail",
            r#"[{"to":"x@y"}]"#,
        ],
        LIMIT,
    );
    let written: Vec<String> = {
        let mut c = redis.conn();
        let ts: Vec<String> = c.zrange("resque:delayed_queue_schedule", 0, -1).unwrap();
        c.lrange(format!("resque:delayed:{}", ts[0]), 0, -1)
            .unwrap()
    };
    let moved = wait_for("the node job in its queue", LIMIT, || {
        let q = queue_items(&redis, "nodeq");
        (!q.is_empty()).then_some(q)
    });
    assert_eq!(moved, written, "the producer's bytes are kept");
    assert!(
        delayed_keys(&redis).is_empty(),
        "{:?}",
        delayed_keys(&redis)
    );

    // And our daemon runs it.
    let config2 = config_for_queue(&redis, dir.path(), "nodeq");
    let _worker = Daemon::start(&config2, &[]);
    let deadline = Instant::now() + LIMIT;
    let done = loop {
        if let Some(d) = records(dir.path(), "done").into_iter().next() {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "the node job did not run; log:\n{}\nfailed: {:?}",
            _worker.log_text(),
            redis
                .conn()
                .lrange::<_, Vec<String>>("resque:failed", 0, -1)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(done.2["args"], json!([{"to": "x@y"}]));
}

fn config_for_queue(redis: &RedisServer, dir: &Path, queue: &str) -> PathBuf {
    let sub = dir.join(queue);
    std::fs::create_dir_all(&sub).unwrap();
    let c = config(redis, dir, &format!("queues = [\"{queue}\"]"), "");
    let text = std::fs::read_to_string(&c).unwrap();
    let path = sub.join("resque.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn our_delayed_job_is_moved_by_node_resques_scheduler_and_run_by_a_node_worker() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&redis, dir.path(), "queues = [\"default\"]", "");
    ok(
        &config,
        &[
            "enqueue",
            "nodeq",
            "Common\\Job\\Mail",
            r#"{"to":"n@x"}"#,
            "--in",
            "1s",
        ],
    );
    let port = redis.port.to_string();
    let scheduler = node::spawn("scheduler.js", &["run", &port, "6"]);
    let worker = node::run("peer.js", &["work", &port, "nodeq", "1"], LIMIT);
    let line: Value = serde_json::from_str(worker.lines().next().unwrap()).unwrap();
    assert_eq!(line["outcome"], "success", "{line}");
    assert_eq!(line["received"], json!([{"to": "n@x"}]));
    // `schedule list` shows node's scheduler as another one moving delayed jobs.
    let list = json_of(&config, &["schedule", "list"]);
    assert_eq!(
        list["other_schedulers"]["resque:resque_scheduler_leader_lock"], "node-scheduler",
        "{list}"
    );
    let out = node::finish(scheduler, "scheduler", LIMIT);
    assert!(out.contains(r#""transferred":1"#), "{out}");
    assert!(
        delayed_keys(&redis).is_empty(),
        "{:?}",
        delayed_keys(&redis)
    );
}

#[test]
fn php_resque_1_3_6_items_without_timestamps_sets_are_moved_with_their_bytes() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&redis, dir.path(), "queues = [\"other\"]", "");
    // ResqueScheduler::enqueueAt: json_encode(array('class','args' => array($args),'queue')),
    // RPUSH delayed:<ts>, ZADD delayed_queue_schedule ts ts; no timestamps: set.
    let at = now_secs() as i64 + 2;
    let php = r#"
$args = array('url' => 'http://a/b', 'zh' => "中文");
echo json_encode(array('class' => 'Common\\Job\\Mail', 'args' => array($args), 'queue' => 'phpq'));
"#;
    let out = std::process::Command::new("php")
        .args(["-r", php])
        .output()
        .expect("php-cli must be installed");
    assert!(out.status.success());
    let item = String::from_utf8(out.stdout).unwrap();
    assert!(
        item.contains(r#"http:\/\/a\/b"#) && item.contains(r#"\u4e2d"#),
        "{item}"
    );
    let mut c = redis.conn();
    let _: () = c.rpush(format!("resque:delayed:{at}"), &item).unwrap();
    let _: () = c.zadd("resque:delayed_queue_schedule", at, at).unwrap();
    let _daemon = Daemon::start(&config, &[]);
    let moved = wait_for("the php item in its queue", LIMIT, || {
        let q = queue_items(&redis, "phpq");
        (!q.is_empty()).then_some(q)
    });
    assert_eq!(moved, vec![item]);
    assert!(
        delayed_keys(&redis).is_empty(),
        "{:?}",
        delayed_keys(&redis)
    );
}

#[test]
fn two_daemons_and_a_node_scheduler_move_10000_due_jobs_each_exactly_once() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&redis, dir.path(), "queues = [\"other\"]", "");
    let port = redis.port.to_string();
    let due = (now_secs() as i64 + 8) * 1000;
    node::run(
        "scheduler.js",
        &[
            "enqueue-many",
            &port,
            &due.to_string(),
            "bulk",
            "Record",
            "10000",
        ],
        LIMIT,
    );
    let scheduled: usize = redis
        .conn()
        .llen(format!("resque:delayed:{}", due / 1000))
        .unwrap();
    assert_eq!(scheduled, 10000);
    let _a = Daemon::start(&config, &[]);
    let _b = Daemon::start(&config, &[]);
    let node_scheduler = node::spawn("scheduler.js", &["run", &port, "14"]);
    wait_for("all 10,000 in the queue", LIMIT, || {
        let n: usize = redis.conn().llen("resque:queue:bulk").unwrap();
        (n >= 10000 && delayed_keys(&redis).is_empty()).then_some(())
    });
    let queued_by = now_secs() - (due / 1000) as f64;
    println!("10,000 due jobs queued {queued_by:.3} s after their due second began");
    let out = node::finish(node_scheduler, "scheduler", LIMIT);
    std::thread::sleep(Duration::from_millis(500));
    let items = queue_items(&redis, "bulk");
    assert_eq!(items.len(), 10000, "each exactly once (node moved: {out})");
    let ns: BTreeSet<i64> = items
        .iter()
        .map(|i| {
            serde_json::from_str::<Value>(i).unwrap()["args"][0]["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ns.len(), 10000);
    assert!(delayed_keys(&redis).is_empty(), "no key left behind");
}

#[test]
fn killed_leader_is_replaced_within_the_lock_ttl() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&redis, dir.path(), "queues = [\"other\"]", "");
    let mut a = Daemon::start(&config, &[]);
    let mut b = Daemon::start(&config, &[]);
    let first = wait_for("a leader", LIMIT, || leader_pid(&redis));
    let (leader, follower) = if first == a.pid() {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    leader.signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    ok(&config, &["enqueue", "later", "Record", "{}", "--in", "1s"]);
    let new = wait_for("another leader", LIMIT, || {
        leader_pid(&redis).filter(|p| *p != first)
    });
    assert_eq!(new, follower.pid());
    wait_for("the job moved by the new leader", LIMIT, || {
        (queue_items(&redis, "later").len() == 1).then_some(())
    });
    // lock_ttl = 3s; a generous margin for a loaded machine.
    assert!(
        killed_at.elapsed() < Duration::from_secs(3 + 5),
        "takeover took {:?}",
        killed_at.elapsed()
    );
}

#[test]
fn stopped_leader_loses_the_lock_and_moves_nothing_when_resumed() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &redis,
        dir.path(),
        "queues = [\"other\"]",
        "[[schedule]]\nname = \"beat\"\nevery = \"1s\"\nclass = \"Record\"\nqueue = \"beats\"\n",
    );
    let a = Daemon::start(&config, &[]);
    let b = Daemon::start(&config, &[]);
    let first = wait_for("a leader", LIMIT, || leader_pid(&redis));
    let (old, new) = if first == a.pid() { (&a, &b) } else { (&b, &a) };
    old.signal(Signal::SIGSTOP);
    wait_for("the other daemon to lead", LIMIT, || {
        (leader_pid(&redis) == Some(new.pid())).then_some(())
    });
    // Due while the old leader is stopped and right after it resumes.
    for i in 0..200 {
        let args = format!(r#"{{"n":{i}}}"#);
        ok(
            &config,
            &[
                "enqueue",
                "fenced",
                "Record",
                &args,
                "--in",
                if i % 2 == 0 { "0s" } else { "2s" },
            ],
        );
        if i == 100 {
            old.signal(Signal::SIGCONT);
        }
    }
    wait_for("all moved", LIMIT, || {
        (queue_items(&redis, "fenced").len() >= 200 && delayed_keys(&redis).is_empty())
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        queue_items(&redis, "fenced").len(),
        200,
        "each exactly once"
    );
    assert_eq!(
        leader_pid(&redis),
        Some(new.pid()),
        "the new leader keeps the lock"
    );
    let log = old.log_text();
    assert!(
        log.contains("lost the scheduler lock") || log.contains("no longer ours"),
        "{log}"
    );
    // And no tick of the recurring job was enqueued twice or lost across the change.
    let ticks: Vec<i64> = queue_items(&redis, "beats")
        .iter()
        .map(|i| {
            serde_json::from_str::<Value>(i).unwrap()["scheduled_at"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(ticks.len() >= 3, "{ticks:?}");
    for w in ticks.windows(2) {
        assert_eq!(w[1], w[0] + 1, "no tick lost or doubled: {ticks:?}");
    }
    let moved_after: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("lost the scheduler lock") && !l.contains("no longer ours"))
        .filter(|l| l.contains("now leads"))
        .collect();
    assert!(moved_after.is_empty(), "{log}");
}

#[test]
fn retries_back_off_exponentially_keep_id_and_status_and_record_one_failure() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&redis, dir.path(), "queues = [\"default\"]", "");
    let _daemon = Daemon::start(&config, &[]);
    let id = ok(
        &config,
        &["enqueue", "default", "Flaky", r#"{"x":1}"#, "--track"],
    )
    .trim()
    .to_string();
    // After the first attempt: waiting in the delayed queue, same id, attempt count carried.
    let item = wait_for("the first retry in the delayed queue", LIMIT, || {
        let ts: Vec<String> = redis
            .conn()
            .zrange("resque:delayed_queue_schedule", 0, -1)
            .unwrap();
        let items: Vec<String> = redis
            .conn()
            .lrange(format!("resque:delayed:{}", ts.first()?), 0, -1)
            .unwrap();
        items.into_iter().next()
    });
    let item: Value = serde_json::from_str(&item).unwrap();
    assert_eq!(item["id"], id.as_str());
    assert_eq!(item["attempts"], 1);
    assert_eq!(item["queue"], "default");
    assert_eq!(status_of(&redis, &id), Some(1), "WAITING between attempts");
    let failed: usize = redis.conn().llen("resque:failed").unwrap();
    assert_eq!(failed, 0, "no failure record before the last attempt");

    wait_for("FAILED after the last attempt", LIMIT, || {
        (status_of(&redis, &id) == Some(3)).then_some(())
    });
    let attempts = records(dir.path(), "attempts");
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(attempts.iter().all(|a| a.1 == id));
    // Delays 1 s then 2 s (due times are whole seconds, rounded up: up to 1 s later), within a
    // generous tolerance for the machine.
    let gaps = [attempts[1].0 - attempts[0].0, attempts[2].0 - attempts[1].0];
    assert!(gaps[0] >= 0.95 && gaps[0] < 1.0 + 1.0 + 3.0, "{gaps:?}");
    assert!(gaps[1] >= 1.95 && gaps[1] < 2.0 + 1.0 + 3.0, "{gaps:?}");
    let records: Vec<String> = redis.conn().lrange("resque:failed", 0, -1).unwrap();
    assert_eq!(
        records.len(),
        1,
        "one failure record after the last attempt"
    );
    let record: Value = serde_json::from_str(&records[0]).unwrap();
    assert_eq!(record["payload"]["id"], id.as_str());
    assert_eq!(record["payload"]["attempts"], 2);
    assert!(
        delayed_keys(&redis).is_empty(),
        "{:?}",
        delayed_keys(&redis)
    );
}

#[test]
fn retries_with_record_every_write_each_failure_and_list_delays() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &redis,
        dir.path(),
        "queues = [\"default\"]",
        r#"retry = { attempts = 3, backoff = ["0s", "1s"], record = "every" }"#,
    );
    let _daemon = Daemon::start(&config, &[]);
    let id = ok(&config, &["enqueue", "default", "Flaky", "{}", "--track"])
        .trim()
        .to_string();
    wait_for("FAILED", LIMIT, || {
        (status_of(&redis, &id) == Some(3)).then_some(())
    });
    let n: usize = redis.conn().llen("resque:failed").unwrap();
    assert_eq!(n, 3);
    assert_eq!(records(dir.path(), "attempts").len(), 3);
}

#[test]
fn every_schedule_ticks_once_across_daemons_and_a_leader_change() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        &redis,
        dir.path(),
        "queues = [\"other\"]",
        r#"
[[schedule]]
name = "beat"
every = "1s"
class = "Record"
queue = "beats"
args = { kind = "beat" }
description = "once a second"
"#,
    );
    let mut a = Daemon::start(&config, &[]);
    let mut b = Daemon::start(&config, &[]);
    wait_for("a few ticks", LIMIT, || {
        (queue_items(&redis, "beats").len() >= 3).then_some(())
    });
    let leader = wait_for("a leader", LIMIT, || leader_pid(&redis));
    let survivor = if leader == a.pid() {
        a.signal(Signal::SIGKILL);
        &mut b
    } else {
        b.signal(Signal::SIGKILL);
        &mut a
    };
    wait_for("the survivor to lead", LIMIT, || {
        (leader_pid(&redis) == Some(survivor.pid())).then_some(())
    });
    let before = queue_items(&redis, "beats").len();
    wait_for("more ticks", LIMIT, || {
        (queue_items(&redis, "beats").len() >= before + 3).then_some(())
    });
    let ticks: Vec<i64> = queue_items(&redis, "beats")
        .iter()
        .map(|i| {
            let v: Value = serde_json::from_str(i).unwrap();
            assert_eq!(v["class"], "Record");
            assert_eq!(v["args"], json!([{"kind": "beat"}]));
            assert_eq!(v["schedule"], "beat");
            v["scheduled_at"].as_i64().unwrap()
        })
        .collect();
    for w in ticks.windows(2) {
        assert_eq!(w[1], w[0] + 1, "no tick lost or doubled: {ticks:?}");
    }
    let list = json_of(&config, &["schedule", "list"]);
    assert_eq!(list["schedules"][0]["name"], "beat");
    assert!(
        list["schedules"][0]["last_run"].as_i64().is_some(),
        "{list}"
    );
    assert!(
        list["schedules"][0]["next_run"].as_i64().is_some(),
        "{list}"
    );
    assert!(
        list["leader"]["owner"]
            .as_str()
            .unwrap()
            .contains(&format!(":{}:", survivor.pid())),
        "{list}"
    );
}

#[test]
fn invalid_schedules_are_config_errors_with_file_and_line() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    for (bad, key) in [
        ("cron = \"61 * * * *\"", "schedule.cron"),
        ("cron = \"0 2 * * * Mars/Base\"", "schedule.cron"),
        ("cron = \"* *\"", "schedule.cron"),
        ("every = \"soon\"", "schedule.every"),
    ] {
        let config = config(
            &redis,
            dir.path(),
            "",
            &format!("[[schedule]]\nname = \"bad\"\nclass = \"Record\"\n{bad}\n"),
        );
        let text = std::fs::read_to_string(&config).unwrap();
        let line = text.lines().position(|l| l == bad).unwrap() + 1;
        let o = run(resque(&config).args(["config", "check"]));
        assert_eq!(o.status.code(), Some(78), "{bad}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("resque.toml:{line}: {key}:")),
            "{bad}: {err}"
        );
    }
}

#[test]
fn delayed_cli_lists_shows_removes_and_runs_now() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&redis, dir.path(), "", "");
    let at = now_secs() as i64 + 3600;
    let a = json_of(
        &config,
        &[
            "enqueue",
            "q1",
            "Record",
            r#"{"n":1}"#,
            "--at",
            &at.to_string(),
            "--track",
        ],
    );
    ok(
        &config,
        &[
            "enqueue",
            "q1",
            "Record",
            r#"{"n":2}"#,
            "--at",
            &at.to_string(),
        ],
    );
    ok(
        &config,
        &[
            "enqueue",
            "q2",
            "Record",
            r#"{"n":3}"#,
            "--at",
            &(at + 60).to_string(),
        ],
    );
    let list = json_of(&config, &["delayed", "list"]);
    assert_eq!(
        list,
        json!([{"at": at, "jobs": 2}, {"at": at + 60, "jobs": 1}])
    );
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(json_of(&config, &["stats"])["delayed"], 3);
    let commands: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.conn())
        .unwrap();
    assert!(
        !commands.contains("cmdstat_keys"),
        "stats used KEYS: {commands}"
    );
    assert!(!commands.contains("cmdstat_scan"), "{commands}");
    let id = a["id"].as_str().unwrap();
    let shown = json_of(&config, &["delayed", "show", id]);
    assert_eq!(shown[0]["at"], at);
    assert_eq!(shown[0]["index"], 0);
    assert_eq!(shown[0]["args"], json!([{"n": 1}]));
    // run-now: the tracked one goes to its queue with its bytes.
    let raw = shown[0]["raw"].as_str().unwrap().to_string();
    assert_eq!(json_of(&config, &["delayed", "run-now", id])["queued"], 1);
    assert_eq!(queue_items(&redis, "q1"), vec![raw]);
    // remove: TS/INDEX.
    assert_eq!(
        json_of(&config, &["delayed", "remove", &format!("{at}/0")])["removed"],
        1
    );
    assert_eq!(
        json_of(&config, &["delayed", "list"]),
        json!([{"at": at + 60, "jobs": 1}])
    );
    assert_eq!(
        json_of(&config, &["delayed", "remove", &(at + 60).to_string()])["removed"],
        1
    );
    assert!(
        delayed_keys(&redis).is_empty(),
        "{:?}",
        delayed_keys(&redis)
    );
    let o = run(resque(&config).args(["delayed", "remove", "nope"]));
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn cron_schedules_tick_in_the_daemon_and_reload_with_the_config() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&redis, dir.path(), "queues = [\"other\"]", "");
    let daemon = Daemon::start(&config, &[]);
    daemon.wait_control_socket();
    wait_for("a leader", LIMIT, || leader_pid(&redis));
    assert!(queue_items(&redis, "crons").is_empty());
    // Add a schedule (6 fields: every second second, in a named zone) and reload.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[[schedule]]\nname = \"even\"\ncron = \"*/2 * * * * *\"\ntimezone = \"Europe/Berlin\"\nclass = \"Record\"\nqueue = \"crons\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let o = daemon.ctl(&["reload", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for("three cron ticks", LIMIT, || {
        (queue_items(&redis, "crons").len() >= 3).then_some(())
    });
    let ticks: Vec<i64> = queue_items(&redis, "crons")
        .iter()
        .map(|i| {
            serde_json::from_str::<Value>(i).unwrap()["scheduled_at"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(ticks.iter().all(|t| t % 2 == 0), "{ticks:?}");
    for w in ticks.windows(2) {
        assert_eq!(w[1], w[0] + 2, "{ticks:?}");
    }
}

/// A schedule whose last tick was hours ago (no daemon ran): `skip` enqueues none of the
/// missed ticks, `once` enqueues one.
#[test]
fn missed_ticks_follow_the_missed_policy() {
    for (policy, expected) in [("skip", 0), ("once", 1)] {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = config(
            &redis,
            dir.path(),
            "queues = [\"other\"]",
            &format!(
                "[[schedule]]\nname = \"hourly\"\nevery = \"1h\"\nclass = \"Record\"\nqueue = \"hourly\"\nmissed = \"{policy}\"\n"
            ),
        );
        let now = now_secs() as i64;
        // Away for three hours, and not near an hour boundary (the window of late ticks).
        if now % 3600 < 60 || now % 3600 > 3540 {
            std::thread::sleep(Duration::from_secs(61));
        }
        let last = now - 3 * 3600 - now % 3600;
        let _: () = redis
            .conn()
            .hset("resque:schedule:last", "hourly", last)
            .unwrap();
        let _daemon = Daemon::start(&config, &[]);
        wait_for("the missed ticks handled", LIMIT, || {
            let l: Option<i64> = redis.conn().hget("resque:schedule:last", "hourly").unwrap();
            (l.unwrap_or(0) > last + 2 * 3600).then_some(())
        });
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            queue_items(&redis, "hourly").len(),
            expected,
            "missed = {policy}"
        );
    }
}

/// The leader lock's fence, at the script level: a leader whose lock expired and was taken by
/// another daemon (it was paused between checking the lock and moving) moves nothing and
/// enqueues no tick, with the value it held.
#[tokio::test]
async fn a_fenced_out_leader_moves_and_enqueues_nothing() {
    use resque::protocol::{scheduler as proto, Keys, Payload};
    let redis = RedisServer::start();
    let keys = Keys::new("resque");
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let a: (i64, String) = proto::leader(&keys, "a:1:x", 60_000)
        .invoke_async(&mut c)
        .await
        .unwrap();
    assert_eq!(a.0, 1);
    // A's lock runs out while it is stopped; B takes it.
    let _: () = redis::cmd("DEL")
        .arg(keys.scheduler_leader())
        .query_async(&mut c)
        .await
        .unwrap();
    let b: (i64, String) = proto::leader(&keys, "b:2:y", 60_000)
        .invoke_async(&mut c)
        .await
        .unwrap();
    assert_eq!(b.0, 1);
    assert_ne!(a.1, b.1, "a new holding has a new value (fencing token)");
    let item = r#"{"class":"Record","args":[],"queue":"q"}"#;
    let _: () = proto::schedule(&keys, 100, item, None)
        .query_async(&mut c)
        .await
        .unwrap();
    let r: Vec<String> = proto::move_due(&keys, &a.1, 200, 1000, "a")
        .invoke_async(&mut c)
        .await
        .unwrap();
    assert!(proto::parse_move(r).fenced_out);
    let p = Payload::parse(r#"{"class":"Record","args":[]}"#).unwrap();
    let t: i64 = proto::enqueue_tick(&keys, &a.1, "s", 150, "q", Some(&p))
        .invoke_async(&mut c)
        .await
        .unwrap();
    assert_eq!(t, -1);
    let queued: usize = redis::cmd("LLEN")
        .arg("resque:queue:q")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(queued, 0);
    // A renewing finds B's lock; B moves the item, and its tick is enqueued once.
    let again: (i64, String) = proto::leader(&keys, "a:1:x", 60_000)
        .invoke_async(&mut c)
        .await
        .unwrap();
    assert_eq!(again, (0, b.1.clone()));
    let r: Vec<String> = proto::move_due(&keys, &b.1, 200, 1000, "b")
        .invoke_async(&mut c)
        .await
        .unwrap();
    assert_eq!(proto::parse_move(r).moved, 1);
    for expect in [1, 0] {
        let t: i64 = proto::enqueue_tick(&keys, &b.1, "s", 150, "q", Some(&p))
            .invoke_async(&mut c)
            .await
            .unwrap();
        assert_eq!(t, expect);
    }
    let queued: usize = redis::cmd("LLEN")
        .arg("resque:queue:q")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(queued, 2, "the moved item and one tick");
}

/// Due-time → queued latency of our scheduler and of node-resque's (default 5 s poll), one job
/// per second; prints p50/p99 for BENCHMARKS.md. `SCHEDULER_LATENCY_SAMPLES` (default 20).
#[test]
#[ignore = "benchmark: cargo test --test scheduler latency -- --ignored --nocapture"]
fn latency_due_to_queued_ours_and_node_resques() {
    let samples: i64 = std::env::var("SCHEDULER_LATENCY_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let measure = |ours: bool| -> Vec<f64> {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config = config(&redis, dir.path(), "queues = [\"other\"]", "");
        if !ours {
            let text = std::fs::read_to_string(&config)
                .unwrap()
                .replace("[scheduler]\n", "[scheduler]\nenabled = false\n");
            std::fs::write(&config, text).unwrap();
        }
        let _daemon = Daemon::start(&config, &[]);
        let port = redis.port.to_string();
        let node = (!ours).then(|| {
            node::spawn(
                "scheduler.js",
                &["run", &port, &(samples + 12).to_string(), "5000"],
            )
        });
        std::thread::sleep(Duration::from_secs(1));
        let start = now_secs() as i64 + 2;
        for i in 0..samples {
            ok(
                &config,
                &[
                    "enqueue",
                    "lat",
                    "Record",
                    &format!(r#"{{"n":{i}}}"#),
                    "--at",
                    &(start + i).to_string(),
                ],
            );
        }
        let mut c = redis.conn();
        let mut lat = Vec::new();
        while (lat.len() as i64) < samples {
            let (_, item): (String, String) = redis::cmd("BLPOP")
                .arg("resque:queue:lat")
                .arg(30)
                .query(&mut c)
                .expect("a moved job within 30 s");
            let arrived = now_secs();
            let n = serde_json::from_str::<Value>(&item).unwrap()["args"][0]["n"]
                .as_i64()
                .unwrap();
            lat.push(arrived - (start + n) as f64);
        }
        if let Some(n) = node {
            node::finish(n, "scheduler", LIMIT);
        }
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        lat
    };
    let pct = |v: &[f64], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize] * 1000.0;
    let ours = measure(true);
    let node = measure(false);
    println!(
        "due → queued, {samples} samples: ours p50 {:.1} ms p99 {:.1} ms; node-resque scheduler (poll 5 s) p50 {:.1} ms p99 {:.1} ms",
        pct(&ours, 0.5),
        pct(&ours, 0.99),
        pct(&node, 0.5),
        pct(&node, 0.99)
    );
    assert!(ours.iter().all(|l| *l >= 0.0), "never early: {ours:?}");
    assert!(pct(&ours, 0.99) < 1000.0, "{ours:?}");
}

/// A Redis (or proxy) without client tracking: the leader looks every second instead.
#[test]
fn without_client_tracking_delayed_jobs_still_move() {
    let redis = RedisServer::start_with(&["--rename-command", "CLIENT", ""]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(&redis, dir.path(), "queues = [\"other\"]", "");
    let _daemon = Daemon::start(&config, &[]);
    wait_for("a leader", LIMIT, || leader_pid(&redis));
    ok(
        &config,
        &["enqueue", "untracked", "Record", "{}", "--in", "1s"],
    );
    wait_for("the job moved", LIMIT, || {
        (queue_items(&redis, "untracked").len() == 1).then_some(())
    });
    assert!(delayed_keys(&redis).is_empty());
}

/// A delayed item that is not JSON or names no queue becomes a failure record; the items next
/// to it still move.
#[test]
fn broken_delayed_items_are_failed_and_do_not_block_the_others() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&redis, dir.path(), "queues = [\"other\"]", "");
    let at = now_secs() as i64;
    let mut c = redis.conn();
    for item in [
        "not json",
        r#"{"class":"Record","args":[]}"#,
        r#"{"class":"Record","args":[],"queue":"fine"}"#,
    ] {
        let _: () = c.rpush(format!("resque:delayed:{at}"), item).unwrap();
    }
    let _: () = c.zadd("resque:delayed_queue_schedule", at, at).unwrap();
    let _daemon = Daemon::start(&config, &[]);
    wait_for("the good item moved", LIMIT, || {
        (queue_items(&redis, "fine").len() == 1).then_some(())
    });
    let failed: Vec<String> = c.lrange("resque:failed", 0, -1).unwrap();
    assert_eq!(failed.len(), 2, "{failed:?}");
    let first: Value = serde_json::from_str(&failed[0]).unwrap();
    assert_eq!(first["payload"], "not json");
    assert_eq!(first["exception"], "Resque\\Exception");
    assert_eq!(first["backtrace"], json!([]));
    let second: Value = serde_json::from_str(&failed[1]).unwrap();
    assert_eq!(second["payload"]["class"], "Record");
    assert!(
        second["error"].as_str().unwrap().contains("names no queue"),
        "{second}"
    );
    assert!(delayed_keys(&redis).is_empty());
}
