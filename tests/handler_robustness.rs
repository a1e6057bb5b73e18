//! What jobs leave behind and what they use up must not hurt the daemon (issue 9, "smaller ones
//! found on the same path"): a process a job leaves writing to its output, the orphans a job
//! leaves when the daemon is a container's PID 1, and the daemon's open-file limit.
//!
//! Real daemon, real redis-server, real php and processes. Waits are generous bounds against
//! hangs; the memory and log-size bounds are ones a user relies on.

mod common;

use common::{status_of, wait_for, write_config, Daemon, RedisServer};
use redis::Commands;
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);
const PHP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/php");

/// php-resque's status code for a completed job.
const STATUS_COMPLETE: i64 = 4;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Enqueue as php-resque does, with a tracked status (`SET job:<id>:status`, SADD, RPUSH).
fn push_tracked(redis: &RedisServer, queue: &str, class: &str, id: &str, args: serde_json::Value) {
    let mut c = redis.conn();
    let _: () = c
        .set(
            format!("resque:job:{id}:status"),
            r#"{"status":1,"updated":1700000000,"started":1700000000}"#,
        )
        .unwrap();
    let _: () = c.sadd("resque:queues", queue).unwrap();
    let raw = json!({"class": class, "args": [args], "id": id}).to_string();
    let _: () = c.rpush(format!("resque:queue:{queue}"), raw).unwrap();
}

fn stat(redis: &RedisServer, name: &str) -> i64 {
    let v: Option<i64> = redis.conn().get(format!("resque:stat:{name}")).unwrap();
    v.unwrap_or(0)
}

fn failures(redis: &RedisServer) -> Vec<String> {
    redis.conn().lrange("resque:failed", 0, -1).unwrap()
}

fn done_count(dir: &Path) -> usize {
    common::done_ids(dir).len()
}

/// `resque start` for `config`, run as `prefix… resque …` (e.g. under `unshare`), with
/// `nofile` as its (soft, hard) open-file limits when given.
fn start(config: &Path, prefix: &[&str], nofile: Option<(u64, u64)>) -> Daemon {
    let runtime = tempfile::tempdir().expect("runtime dir");
    let log = runtime.path().join("daemon.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let plain = common::resque(config);
    let mut cmd = match prefix.split_first() {
        None => plain,
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args)
                .arg(plain.get_program())
                .args(plain.get_args());
            for (k, v) in plain.get_envs() {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
            cmd
        }
    };
    cmd.arg("start")
        .env("RUNTIME_DIRECTORY", runtime.path())
        .stdout(Stdio::null())
        .stderr(log_file);
    if let Some((soft, hard)) = nofile {
        // SAFETY: setrlimit is async-signal-safe; nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().expect("spawn resque start");
    Daemon {
        child,
        runtime,
        log,
        config: config.to_path_buf(),
    }
}

/// Fields 3 (state) and 4 (ppid) of `/proc/PID/stat`.
fn state_and_parent(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Every process whose parent is `parent`, with its state.
fn children(parent: i32) -> Vec<(i32, char)> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (state, ppid) = state_and_parent(pid)?;
            (ppid == parent).then_some((pid, state))
        })
        .collect()
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The (soft, hard) open-file limits of a running process.
fn nofile_of(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().unwrap_or_default().to_string();
    let hard = fields.next().unwrap_or_default().to_string();
    (soft, hard)
}

fn php_config(redis: &RedisServer, worker: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"[redis]
url = "{url}"
[worker]
queues = ["default"]
{worker}
[[handler]]
class = "*"
type = "php"
bootstrap = "{php}/robustness.php"
"#,
            url = redis.url(),
            php = PHP_DIR,
        ),
    );
    (dir, config)
}

/// A config running every class as `sh -c SCRIPT` (the job id in `$RESQUE_JOB_ID`).
fn exec_config(redis: &RedisServer, worker: &str, script: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let script = script.replace("{dir}", &dir.path().display().to_string());
    let config = write_config(
        dir.path(),
        &format!(
            r#"[redis]
url = "{url}"
[worker]
queues = ["default"]
{worker}
[[handler]]
class = "*"
type = "exec"
command = ["/bin/sh", "-c", '{script}']
"#,
            url = redis.url(),
        ),
    );
    (dir, config)
}

fn require_root(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: {what} needs root");
    false
}

// ---------------------------------------------------------------------------------------------
// Output a job leaves behind.

/// Issue 9: "a PHP pool job that leaves a chatty background process makes the daemon read its
/// output synchronously into an unbounded buffer (+100 MB/s, the outcome never written)".
#[test]
fn php_job_leaving_a_chatty_process_is_recorded_and_memory_stays_bounded() {
    let redis = RedisServer::start();
    let (dir, config) = php_config(&redis, "count = 1");
    let out = dir.path().join("done").display().to_string();
    let mut daemon = start(&config, &[], None);

    push_tracked(&redis, "default", "Robust\\ChattyJob", "chatty", json!({}));
    let later: Vec<String> = (0..5).map(|i| format!("later{i}")).collect();
    for id in &later {
        push_tracked(
            &redis,
            "default",
            "Robust\\RecordJob",
            id,
            json!({"out": out}),
        );
    }

    // Ten seconds and more of a helper writing as fast as it can (until the PHP worker it was
    // left in is replaced and its group killed, `grace` = 10 s later).
    let bound_kib = 200 * 1024;
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < Duration::from_secs(12) {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("daemon exited ({status}); log:\n{}", daemon.log_text());
        }
        let rss = rss_kib(daemon.pid()).expect("daemon's VmRSS");
        peak = peak.max(rss);
        assert!(
            rss < bound_kib,
            "daemon RSS {rss} KiB after {:?} (bound {bound_kib} KiB)",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("daemon peak RSS: {peak} KiB");

    wait_for("the chatty job's outcome", LIMIT, || {
        (status_of(&redis, "chatty") == Some(STATUS_COMPLETE)).then_some(())
    });
    wait_for("the later jobs", LIMIT, || {
        (done_count(dir.path()) == later.len()).then_some(())
    });
    for id in &later {
        wait_for(&format!("status of {id}"), LIMIT, || {
            (status_of(&redis, id) == Some(STATUS_COMPLETE)).then_some(())
        });
    }
    assert_eq!(stat(&redis, "processed"), 6);
    assert_eq!(stat(&redis, "failed"), 0, "{:?}", failures(&redis));

    let log = daemon.log_text();
    assert!(
        log.contains(": y stream=\"stdout\""),
        "the output is logged"
    );
    let warning = log
        .lines()
        .find(|l| l.contains("of the job's output"))
        .unwrap_or_else(|| panic!("no warning about dropped output; log tail:\n{}", tail(&log)));
    assert!(warning.contains("dropped"), "{warning}");
    assert!(
        log.contains("replacing the worker"),
        "the PHP worker is replaced; log tail:\n{}",
        tail(&log)
    );
}

/// The same through the `exec` handler: what the helper writes after the job exited is read for
/// a moment, within the output limits, and the job's outcome follows.
#[test]
fn exec_job_leaving_a_chatty_process_is_recorded_and_its_log_bounded() {
    let redis = RedisServer::start();
    let (dir, config) = exec_config(
        &redis,
        "count = 1",
        r#"case "$RESQUE_JOB_ID" in chatty) yes chatty helper output & ;; esac; echo "$RESQUE_JOB_ID" >> {dir}/done"#,
    );
    let daemon = start(&config, &[], None);
    push_tracked(&redis, "default", "Chatty", "chatty", json!({}));
    push_tracked(&redis, "default", "Quiet", "quiet", json!({}));

    wait_for("both jobs", LIMIT, || {
        (status_of(&redis, "quiet") == Some(STATUS_COMPLETE)).then_some(())
    });
    assert_eq!(status_of(&redis, "chatty"), Some(STATUS_COMPLETE));
    assert_eq!(common::done_ids(dir.path()), ["chatty", "quiet"]);
    assert_eq!(stat(&redis, "failed"), 0, "{:?}", failures(&redis));

    let log = daemon.log_text();
    // 1 MiB of output at once (with a line's cost), then 64 KiB/s, for the second the output is
    // read after the job: a few MiB of log at most, however fast the helper writes.
    let size = std::fs::metadata(&daemon.log).unwrap().len();
    eprintln!("daemon log: {size} bytes");
    assert!(size < 16 * 1024 * 1024, "log is {size} bytes");
    assert!(
        log.lines()
            .any(|l| l.contains("dropped") && l.contains("of the job's output")),
        "no warning about dropped output; log tail:\n{}",
        tail(&log)
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Orphans, when the daemon is PID 1.

/// Issue 9: "as PID 1 in a container the daemon never reaps orphans its jobs leave (one zombie
/// each)".
#[test]
fn as_pid_1_the_orphans_jobs_leave_are_reaped() {
    if !require_root("a new pid namespace (unshare --pid)") {
        return;
    }
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        eprintln!("skipped: `unshare --pid --fork --mount-proc` does not work here: {probe:?}");
        return;
    }
    let redis = RedisServer::start();
    // Each job leaves a `sleep` that outlives it and then ends: an orphan for PID 1 to reap.
    // Some jobs exit 3: their exit status must still reach the daemon (the reaper must not take
    // the children the handlers wait for).
    let (dir, config) = exec_config(
        &redis,
        "count = 4",
        r#"sleep 0.2 </dev/null >/dev/null 2>&1 & case "$RESQUE_JOB_ID" in fail*) exit 3;; esac; echo "$RESQUE_JOB_ID" >> {dir}/done"#,
    );
    let daemon = start(
        &config,
        &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
        None,
    );
    // The daemon is the child of `unshare`; its host pid is what /proc here shows as parent.
    let inner = wait_for("the daemon inside the namespace", LIMIT, || {
        children(daemon.pid()).first().map(|&(pid, _)| pid)
    });

    let jobs = 40;
    let failing = 8;
    for i in 0..jobs {
        push_tracked(&redis, "default", "Leaver", &format!("job{i}"), json!({}));
        if i % (jobs / failing) == 0 {
            let id = format!("fail{i}");
            push_tracked(&redis, "default", "Leaver", &id, json!({}));
        }
    }
    wait_for("every job", LIMIT, || {
        (done_count(dir.path()) == jobs && failures(&redis).len() == failing).then_some(())
    });
    for failure in failures(&redis) {
        let record: serde_json::Value = serde_json::from_str(&failure).unwrap();
        assert_eq!(record["error"], "Job exited with exit code 3", "{record}");
    }
    for i in 0..jobs {
        let id = format!("job{i}");
        wait_for(&format!("status of {id}"), LIMIT, || {
            (status_of(&redis, &id) == Some(STATUS_COMPLETE)).then_some(())
        });
    }
    // The sleeps end 0.2 s after their jobs (they are the daemon's only children by then)…
    wait_for("the jobs' sleeps to end", LIMIT, || {
        children(inner)
            .iter()
            .all(|&(_, state)| state == 'Z')
            .then_some(())
    });
    // … and then none may stay a zombie.
    let zombies = |pid| {
        children(pid)
            .into_iter()
            .filter(|&(_, state)| state == 'Z')
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = zombies(inner);
    while left > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = zombies(inner);
    }
    assert_eq!(
        left,
        0,
        "zombie children of the daemon (PID 1) after {jobs} jobs; log:\n{}",
        tail(&daemon.log_text())
    );
    assert_eq!(stat(&redis, "processed"), (jobs + failing) as i64);
    assert_eq!(stat(&redis, "failed"), failing as i64);
}

// ---------------------------------------------------------------------------------------------
// The open-file limit.

/// Jobs that each hold a few descriptors a while: enough of them at once exhaust a low limit.
const HOLDING_JOB: &str = r#"sleep 0.3; echo "$RESQUE_JOB_ID" >> {dir}/done"#;

/// The soft limit is raised to the hard one at start, so a low soft limit costs nothing.
#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
    let redis = RedisServer::start();
    let (dir, config) = exec_config(&redis, "count = 24", HOLDING_JOB);
    let daemon = start(&config, &[], Some((64, 4096)));
    wait_for("the daemon's workers", LIMIT, || {
        let workers: usize = redis.conn().scard("resque:workers").unwrap();
        (workers == 24).then_some(())
    });
    assert_eq!(nofile_of(daemon.pid()), ("4096".into(), "4096".into()));

    let jobs = 96;
    for i in 0..jobs {
        push_tracked(&redis, "default", "Holder", &format!("job{i}"), json!({}));
    }
    wait_for("every job", LIMIT, || {
        (done_count(dir.path()) == jobs).then_some(())
    });
    assert_eq!(stat(&redis, "failed"), 0, "{:?}", failures(&redis));
    assert!(!daemon.log_text().contains("Too many open files"));
}

/// Issue 9: "with `ulimit -n 1024` and COUNT 600, 266 healthy jobs failed with "Too many open
/// files" instead of waiting". Here 24 workers, and once they are up a limit (soft = hard) of
/// what the daemon has open plus 24, so that only a few jobs' pipes fit at a time: the jobs that
/// cannot start go back to their queue and run later; none fails, and the log says which limit
/// to raise.
#[test]
fn running_out_of_file_descriptors_gives_jobs_back_instead_of_failing_them() {
    let redis = RedisServer::start();
    let (dir, config) = exec_config(&redis, "count = 24", HOLDING_JOB);
    let daemon = start(&config, &[], None);
    wait_for("the daemon's workers", LIMIT, || {
        let workers: usize = redis.conn().scard("resque:workers").unwrap();
        (workers == 24).then_some(())
    });
    let open = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .expect("the daemon's fds")
        .count() as u64;
    let limit = libc::rlimit {
        rlim_cur: open + 24,
        rlim_max: open + 24,
    };
    // SAFETY: plain syscall on valid pointers.
    let set = unsafe {
        libc::prlimit(
            daemon.pid(),
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());

    let jobs = 96;
    for i in 0..jobs {
        push_tracked(&redis, "default", "Holder", &format!("job{i}"), json!({}));
    }
    wait_for("every job to run or fail", Duration::from_secs(120), || {
        (done_count(dir.path()) + failures(&redis).len() >= jobs).then_some(())
    });
    let failed = failures(&redis);
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {}",
        failed.len(),
        failed[0]
    );
    for i in 0..jobs {
        let id = format!("job{i}");
        wait_for(&format!("status of {id}"), LIMIT, || {
            (status_of(&redis, &id) == Some(STATUS_COMPLETE)).then_some(())
        });
    }
    assert_eq!(stat(&redis, "failed"), 0);
    assert_eq!(stat(&redis, "processed"), jobs as i64);
    let mut ids = common::done_ids(dir.path());
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), jobs, "each job ran once");

    let log = daemon.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("Too many open files"))
        .unwrap_or_else(|| panic!("the limit was never reached; log tail:\n{}", tail(&log)));
    assert!(warning.contains("LimitNOFILE="), "{warning}");
    assert!(warning.contains("goes back to its queue"), "{warning}");
}
