//! The daemon as systemd runs it: the real binary, a real redis-server, a real NOTIFY_SOCKET.
//! Signals, graceful stop, reload under load, PID file, control commands.

mod common;

use common::{
    done_ids, resque, run, status_of, stderr, stdout, wait_for, write_config, Daemon,
    NotifyListener, RedisServer,
};
use nix::sys::signal::Signal;
use redis::Commands;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

fn exec_config(redis: &RedisServer, dir: &Path, worker: &str) -> std::path::PathBuf {
    // Sleep: sleeps args[0].sleep seconds, then records its id; Record: records its id.
    let sleep = dir.join("sleep.sh");
    // Written aside and renamed: tests rewrite the config (and so this script) while jobs run,
    // and a job must never start an empty, half-written script.
    let draft = dir.join("sleep.sh.new");
    std::fs::write(
        &draft,
        format!(
            "payload=$(cat)\nn=$(printf '%s' \"$payload\" | sed -n 's/.*\"sleep\":\\([0-9.]*\\).*/\\1/p')\nsleep \"${{n:-0}}\"\necho \"$RESQUE_JOB_ID\" >> {dir}/done\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    std::fs::rename(&draft, &sleep).unwrap();
    write_config(
        dir,
        &format!(
            r#"[redis]
url = "{url}"
[worker]
{worker}
[[handler]]
class = "Sleep"
type = "exec"
command = ["/bin/sh", '{sleep}']
[[handler]]
class = "Record"
type = "exec"
command = ["/bin/sh", "-c", 'echo "$RESQUE_JOB_ID" >> {dir}/done']
"#,
            url = redis.url(),
            sleep = sleep.display(),
            dir = dir.display()
        ),
    )
}

fn enqueue(config: &Path, queue: &str, class: &str, args: &str) -> String {
    let o = run(resque(config).args(["enqueue", queue, class, args, "--track"]));
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().to_string()
}

#[test]
fn notify_ready_watchdog_status_reload_stopping() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(&redis, dir.path(), "queues = [\"default\"]\ncount = 2");
    let notify = NotifyListener::new();
    let mut daemon = Daemon::start(
        &config,
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let (ready, _) = notify.until("READY", |m| m.contains("READY=1"));
    assert!(ready.contains("STATUS=2 workers, 0 busy"), "{ready}");
    notify.until("WATCHDOG", |m| m == "WATCHDOG=1\n");
    notify.until("second WATCHDOG", |m| m == "WATCHDOG=1\n");

    // STATUS follows the work.
    let id = enqueue(&config, "default", "Record", "[]");
    wait_for("job done", LIMIT, || {
        done_ids(dir.path()).contains(&id).then_some(())
    });
    notify.until("STATUS with processed 1", |m| {
        m.contains("STATUS=") && m.contains("processed 1")
    });

    // Reload: RELOADING and MONOTONIC_USEC in one datagram, then READY.
    daemon.signal(Signal::SIGHUP);
    let (reloading, _) = notify.until("RELOADING", |m| m.contains("RELOADING=1"));
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("MONOTONIC_USEC in the same datagram: {reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0);
    notify.until("READY after reload", |m| m.contains("READY=1"));

    daemon.signal(Signal::SIGTERM);
    notify.until("STOPPING", |m| m.contains("STOPPING=1"));
    assert_eq!(daemon.wait_exit(LIMIT), Some(0));
    // Worker records are gone after a clean stop.
    let workers: Vec<String> = redis.conn().smembers("resque:workers").unwrap();
    assert!(workers.is_empty(), "{workers:?}");
}

#[test]
fn graceful_stop_lets_the_running_job_finish_and_records_it() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(
        &redis,
        dir.path(),
        "queues = [\"default\"]\nshutdown_timeout = \"60s\"",
    );
    let mut daemon = Daemon::start(&config, &[]);
    let id = enqueue(&config, "default", "Sleep", r#"{"sleep":2}"#);
    wait_for("job running", LIMIT, || {
        (status_of(&redis, &id) == Some(2)).then_some(())
    });
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0), "{}", daemon.log_text());
    assert_eq!(done_ids(dir.path()), vec![id.clone()], "the job completed");
    assert_eq!(status_of(&redis, &id), Some(4));
    let mut c = redis.conn();
    let processed: i64 = c.get("resque:stat:processed").unwrap();
    assert_eq!(processed, 1);
    let keys: Vec<String> = c.keys("resque:worker*").unwrap();
    assert!(keys.is_empty(), "worker records are gone: {keys:?}");
    let inflight: Vec<String> = c.keys("resque:inflight*").unwrap();
    assert!(inflight.is_empty(), "{inflight:?}");
}

#[test]
fn a_job_still_running_at_shutdown_timeout_goes_back_to_its_queue() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(
        &redis,
        dir.path(),
        "queues = [\"default\"]\nshutdown_timeout = \"1s\"",
    );
    let mut daemon = Daemon::start(&config, &[]);
    let id = enqueue(&config, "default", "Sleep", r#"{"sleep":60}"#);
    wait_for("job running", LIMIT, || {
        (status_of(&redis, &id) == Some(2)).then_some(())
    });
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0), "{}", daemon.log_text());
    let mut c = redis.conn();
    let queued: Vec<String> = c.lrange("resque:queue:default", 0, -1).unwrap();
    assert_eq!(queued.len(), 1, "the job is back");
    assert!(queued[0].contains(&id));
    let failed: usize = c.llen("resque:failed").unwrap();
    assert_eq!(failed, 0, "an interrupted job is not a failure");
    let workers: Vec<String> = c.smembers("resque:workers").unwrap();
    assert!(workers.is_empty());
    assert!(done_ids(dir.path()).is_empty());
    // And it runs when a daemon comes back.
    let _daemon = Daemon::start(&config, &[]);
    let _ = run(resque(&config).args(["enqueue", "default", "Record", "[]"]));
    wait_for("requeued job starts", LIMIT, || {
        (status_of(&redis, &id) == Some(2)).then_some(())
    });
}

#[test]
fn sigint_kills_running_jobs_and_requeues_them() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(
        &redis,
        dir.path(),
        "queues = [\"default\"]\nshutdown_timeout = \"60s\"",
    );
    let mut daemon = Daemon::start(&config, &[]);
    let id = enqueue(&config, "default", "Sleep", r#"{"sleep":60}"#);
    wait_for("job running", LIMIT, || {
        (status_of(&redis, &id) == Some(2)).then_some(())
    });
    daemon.signal(Signal::SIGINT);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0));
    let queued: Vec<String> = redis.conn().lrange("resque:queue:default", 0, -1).unwrap();
    assert_eq!(queued.len(), 1);
}

#[test]
fn usr1_kills_the_running_job_as_failed_and_keeps_working() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(&redis, dir.path(), "queues = [\"default\"]");
    let _daemon = Daemon::start(&config, &[]);
    let slow = enqueue(&config, "default", "Sleep", r#"{"sleep":60}"#);
    wait_for("job running", LIMIT, || {
        (status_of(&redis, &slow) == Some(2)).then_some(())
    });
    _daemon.signal(Signal::SIGUSR1);
    wait_for("job failed", LIMIT, || {
        (status_of(&redis, &slow) == Some(3)).then_some(())
    });
    let failed: Vec<String> = redis.conn().lrange("resque:failed", 0, -1).unwrap();
    assert!(failed[0].contains("SIGUSR1"), "{}", failed[0]);
    let next = enqueue(&config, "default", "Record", "[]");
    wait_for("next job", LIMIT, || {
        (status_of(&redis, &next) == Some(4)).then_some(())
    });
}

#[test]
fn pause_and_resume() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(&redis, dir.path(), "queues = [\"default\"]");
    let daemon = Daemon::start(&config, &[]);
    daemon.wait_control_socket();
    let o = daemon.ctl(&["pause"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Wait until the pause has reached the workers (they re-read control before reserving).
    std::thread::sleep(Duration::from_millis(300));
    let id = enqueue(&config, "default", "Record", "[]");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status_of(&redis, &id), Some(1), "paused: nothing reserved");
    let o = daemon.ctl(&["resume"]);
    assert!(o.status.success());
    wait_for("job after resume", LIMIT, || {
        (status_of(&redis, &id) == Some(4)).then_some(())
    });
    // Ruby's pause-all-workers key pauses us too.
    let _: () = redis
        .conn()
        .set("resque:pause-all-workers", "true")
        .unwrap();
    let id2 = enqueue(&config, "default", "Record", "[]");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status_of(&redis, &id2), Some(1));
    let _: () = redis.conn().del("resque:pause-all-workers").unwrap();
    wait_for("job after unpause", LIMIT, || {
        (status_of(&redis, &id2) == Some(4)).then_some(())
    });
}

#[test]
fn reload_scales_and_changes_queues_under_load_without_losing_or_repeating_jobs() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(&redis, dir.path(), "queues = [\"a\"]\ncount = 2");
    let daemon = Daemon::start(&config, &[]);
    daemon.wait_control_socket();
    let mut ids = Vec::new();
    for _ in 0..150 {
        ids.push(enqueue(&config, "a", "Sleep", r#"{"sleep":0.01}"#));
    }
    let rewrite = |worker: &str| {
        exec_config(&redis, dir.path(), worker);
    };
    let workers = |redis: &RedisServer| -> usize {
        let w: Vec<String> = redis.conn().smembers("resque:workers").unwrap();
        w.len()
    };
    rewrite("queues = [\"a\"]\ncount = 5");
    let o = daemon.ctl(&["reload", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for("5 workers", LIMIT, || (workers(&redis) == 5).then_some(()));
    for _ in 0..100 {
        ids.push(enqueue(&config, "a", "Sleep", r#"{"sleep":0.01}"#));
    }
    rewrite("queues = [\"a\"]\ncount = 1");
    let o = daemon.ctl(&["reload", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A queue change: jobs on b are picked up, and a's remaining jobs too.
    rewrite("queues = [\"b\", \"a\"]\ncount = 3");
    let o = daemon.ctl(&["reload", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for _ in 0..50 {
        ids.push(enqueue(&config, "b", "Sleep", r#"{"sleep":0.01}"#));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while done_ids(dir.path()).len() < ids.len() {
        if Instant::now() > deadline {
            let mut c = redis.conn();
            let keys: Vec<String> = c.keys("resque:*").unwrap();
            let mut state = String::new();
            for k in keys {
                let t: String = redis::cmd("TYPE").arg(&k).query(&mut c).unwrap();
                let v = match t.as_str() {
                    "list" => format!("{:?}", c.lrange::<_, Vec<String>>(&k, 0, -1).unwrap()),
                    "set" => format!("{:?}", c.smembers::<_, Vec<String>>(&k).unwrap()),
                    "hash" => format!("{:?}", c.hgetall::<_, Vec<String>>(&k).unwrap()),
                    _ => String::new(),
                };
                if !k.contains(":status") {
                    state.push_str(&format!(
                        "{k} {t} {}\n",
                        v.chars().take(400).collect::<String>()
                    ));
                }
            }
            let done = done_ids(dir.path());
            let missing: Vec<(&String, Option<i64>)> = ids
                .iter()
                .filter(|id| !done.contains(id))
                .map(|id| (id, status_of(&redis, id)))
                .collect();
            let log = daemon.log_text();
            let about: Vec<&str> = log
                .lines()
                .filter(|l| {
                    missing.iter().any(|(id, _)| l.contains(id.as_str()))
                        || !l.contains("job complete")
                })
                .collect();
            panic!(
                "{} of {} jobs done; missing (id, status): {missing:?}; Redis:\n{state}\nlog lines about them and not about completions:\n{}",
                done.len(),
                ids.len(),
                about.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Give a stray duplicate the chance to show up before counting.
    std::thread::sleep(Duration::from_millis(300));
    let done = done_ids(dir.path());
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &done {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            counts.get(id.as_str()),
            Some(&1),
            "job {id} ran {:?} times",
            counts.get(id.as_str())
        );
    }
    assert_eq!(done.len(), ids.len());
    // Workers removed by a reload drain: none of their jobs was interrupted and re-run.
    assert!(
        !daemon.log_text().contains("interrupted"),
        "a reload interrupted a running job:\n{}",
        daemon.log_text()
    );
    wait_for("3 workers", LIMIT, || (workers(&redis) == 3).then_some(()));
}

#[test]
fn an_invalid_config_on_reload_keeps_the_old_one() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(&redis, dir.path(), "queues = [\"default\"]\ncount = 2");
    let daemon = Daemon::start(&config, &[]);
    daemon.wait_control_socket();
    std::fs::write(&config, "[worker]\ncount = 0\n").unwrap();
    let o = daemon.ctl(&["reload", "--wait"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("worker.count") && err.contains("at least 1"),
        "{err}"
    );
    assert!(
        daemon.log_text().contains("reload rejected"),
        "{}",
        daemon.log_text()
    );
    // Still running on the old configuration.
    let id = enqueue(
        &common::write_config(
            tempfile::tempdir().unwrap().path(),
            &format!("[redis]\nurl = \"{}\"\n", redis.url()),
        ),
        "default",
        "Record",
        "[]",
    );
    wait_for("job on old config", LIMIT, || {
        (status_of(&redis, &id) == Some(4)).then_some(())
    });
    let workers: Vec<String> = redis.conn().smembers("resque:workers").unwrap();
    assert_eq!(workers.len(), 2);
}

#[test]
fn pid_file_is_locked_and_stop_wait_returns_when_gone() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(&redis, dir.path(), "queues = [\"default\"]");
    let pid_file = dir.path().join("resque.pid");
    let mut first = Daemon::start_args(&config, &[], &["--pid", pid_file.to_str().unwrap()]);
    wait_for("pid file", LIMIT, || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .filter(|t| t.trim() == first.pid().to_string())
    });
    let mut second = Daemon::start_args(&config, &[], &["--pid", pid_file.to_str().unwrap()]);
    assert_eq!(second.wait_exit(LIMIT), Some(1));
    let log = second.log_text();
    assert!(
        log.contains(&format!("pid {}", first.pid())) && log.contains("already")
            || log.contains("another resque daemon"),
        "{log}"
    );
    // `stop --wait` through the PID file (no control socket in this runtime dir).
    let o = run(resque(&config).args(["stop", "--wait", "--pid", pid_file.to_str().unwrap()]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(first.child.try_wait().unwrap().is_some() || first.wait_exit(LIMIT) == Some(0));
    assert!(!pid_file.exists(), "PID file removed on exit");
    // Nothing to stop now: a clear error.
    let o = run(resque(&config).args(["stop", "--pid", pid_file.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(69));
    assert!(stderr(&o).contains("no running resque daemon"));
}

#[test]
fn seed_command_line_works() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(&redis, dir.path(), "");
    let pid_file = dir.path().join("resque.pid");
    let bootstrap = dir.path().join("bootstrap.php");
    std::fs::write(&bootstrap, "<?php\n").unwrap();
    let mut daemon = Daemon::start_args(
        &config,
        &[],
        &[
            "--queue=default",
            &format!("--pid={}", pid_file.display()),
            "--debug=1",
            "--interval=5",
            "--count=2",
            &format!("--app={}", bootstrap.display()),
        ],
    );
    wait_for("2 workers on default", LIMIT, || {
        let w: Vec<String> = redis.conn().smembers("resque:workers").unwrap();
        (w.len() == 2 && w.iter().all(|id| id.ends_with(":default"))).then_some(())
    });
    let id = enqueue(&config, "default", "Record", "[]");
    wait_for("job", LIMIT, || {
        (status_of(&redis, &id) == Some(4)).then_some(())
    });
    assert!(
        daemon.log_text().contains("DEBUG"),
        "--debug=1 enables debug logging"
    );
    daemon.signal(Signal::SIGQUIT);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0));
}

#[test]
fn waits_for_redis_saying_so_then_becomes_ready() {
    let port = RedisServer::unused_port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[redis]\nurl = \"redis://127.0.0.1:{port}/0\"\n[worker]\nqueues = [\"default\"]\n"
        ),
    );
    let notify = NotifyListener::new();
    let mut daemon = Daemon::start(&config, &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())]);
    let (waiting, _) = notify.until("STATUS waiting for Redis", |m| {
        m.contains("STATUS=Waiting for Redis")
    });
    assert!(waiting.contains(&port.to_string()), "{waiting}");
    assert!(!waiting.contains("READY=1"));
    let redis = RedisServer::start_on(port);
    let (ready, _) = notify.until("READY once Redis answers", |m| m.contains("READY=1"));
    assert!(ready.contains("Redis ok"), "{ready}");
    let workers: Vec<String> = redis.conn().smembers("resque:workers").unwrap();
    assert_eq!(workers.len(), 1);
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0));
}

#[test]
fn survives_a_redis_restart_and_reconnects() {
    let redis = RedisServer::start();
    let port = redis.port;
    let dir = tempfile::tempdir().unwrap();
    let config = exec_config(
        &redis,
        dir.path(),
        "queues = [\"default\"]\ncount = 2\ninterval = \"1s\"",
    );
    let notify = NotifyListener::new();
    let mut daemon = Daemon::start(&config, &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())]);
    notify.until("READY", |m| m.contains("READY=1"));
    drop(redis);
    notify.until("STATUS Redis unreachable", |m| {
        m.contains("Redis unreachable")
    });
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon stays up"
    );
    let redis = RedisServer::start_on(port);
    let id = enqueue(&config, "default", "Record", "[]");
    wait_for("job after Redis came back", LIMIT, || {
        (status_of(&redis, &id) == Some(4)).then_some(())
    });
    assert_eq!(done_ids(dir.path()), vec![id]);
    notify.until("STATUS Redis ok", |m| m.contains("Redis ok"));
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0));
}
