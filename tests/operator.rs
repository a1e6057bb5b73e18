//! What an operator meets from the command line and the daemon (issue 12): exit codes, broken
//! pipes, aligned and pluralised text, completions, an early HUP, job data that cannot be passed
//! to a program, log lines that job data cannot forge, PHP runners that end cleanly on stop.

mod common;

use common::{
    resque, resque_bin, run, stderr, stdout, wait_for, write_config, Daemon, RedisServer,
};
use nix::sys::signal::Signal;
use redis::Commands;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

fn setup() -> (RedisServer, tempfile::TempDir, std::path::PathBuf) {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("[redis]\nurl = \"{}\"\n", redis.url()));
    (redis, dir, config)
}

/// A failure record as Ruby resque and php-resque write it.
fn push_failure(redis: &RedisServer, class: &str) {
    let record = serde_json::json!({
        "failed_at": "2026-12-01T10:00:00+00:00",
        "payload": {"class": class, "args": [{}], "id": "0123456789abcdef0123456789abcdef"},
        "exception": "RuntimeException",
        "error": "boom",
        "backtrace": ["#0 {main}"],
        "worker": "host:1:default",
        "queue": "default",
    });
    let _: () = redis
        .conn()
        .rpush("resque:failed", record.to_string())
        .unwrap();
}

#[test]
fn broken_pipe_exits_quietly() {
    let (redis, _dir, config) = setup();
    push_failure(&redis, "App\\Job");
    for args in [
        &["failed", "show", "0"][..],
        &["failed", "list"],
        &["stats"],
    ] {
        // stdout is a pipe whose reading end is already closed: every write fails with EPIPE.
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let o = resque(&config)
            .args(args)
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert_eq!(err, "", "{args:?}");
    }
}

#[test]
fn unreadable_config_exits_77() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = write_config(dir.path(), "[worker]\ncount = 1\n");
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // Tests run as root, whom permissions do not stop: read it as "nobody".
    let mut cmd = resque(&config);
    cmd.args(["config", "check"]);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    let o = cmd.output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(77), "EX_NOPERM: {err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(err.contains(&config.display().to_string()), "{err}");
    // An invalid file still exits 78.
    std::fs::write(&config, "[worker]\ncount = 0\n").unwrap();
    let o = run(resque(&config).args(["config", "check"]));
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
}

#[test]
fn stats_are_aligned_and_counts_pluralised() {
    let (redis, dir, config) = setup();
    push_failure(&redis, "App\\Job");
    let o = run(resque(&config).arg("stats"));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let columns: Vec<usize> = text
        .lines()
        .map(|l| l.rfind(' ').map(|i| i + 1).unwrap())
        .collect();
    assert_eq!(columns.len(), 8, "{text}");
    assert!(
        columns.iter().all(|c| *c == columns[0]),
        "values in one column:\n{text}"
    );
    assert!(text.contains("failed list"), "{text}");

    let o = run(resque(&config).args(["failed", "show", "0"]));
    let text = stdout(&o);
    let values: Vec<usize> = text
        .lines()
        .take(8)
        .map(|l| l.find("  ").unwrap() + l[l.find("  ").unwrap()..].find(|c| c != ' ').unwrap())
        .collect();
    assert!(values.iter().all(|c| *c == values[0]), "{text}");

    // One worker, one handler: singular.
    let one = write_config(
        dir.path(),
        &format!("[redis]\nurl = \"{}\"\n[worker]\ncount = 1\n", redis.url()),
    );
    let o = run(resque(&one).args(["config", "check"]));
    let text = stdout(&o);
    assert!(text.contains(": 1 worker, 1 handler"), "{text}");
    assert!(!text.contains("(s)"), "{text}");
    let o = run(resque(&one).args(["failed", "clear"]));
    assert_eq!(stdout(&o).trim(), "removed 1 failed job");
}

#[test]
fn status_text_says_1_worker() {
    let (redis, dir, _) = setup();
    let config = write_config(
        dir.path(),
        &format!(
            "[redis]\nurl = \"{}\"\n[worker]\ncount = 1\n[[handler]]\nclass = \"*\"\ntype = \"exec\"\ncommand = [\"/bin/true\"]\n",
            redis.url()
        ),
    );
    let notify_dir = tempfile::tempdir().unwrap();
    let path = notify_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut daemon = Daemon::start(&config, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let deadline = Instant::now() + LIMIT;
    let mut buf = [0u8; 4096];
    let ready = loop {
        assert!(
            Instant::now() < deadline,
            "no READY=1: {}",
            daemon.log_text()
        );
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.contains("READY=1") {
                break msg;
            }
        }
    };
    assert!(ready.contains("STATUS=1 worker, 0 busy"), "{ready}");
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0));
    let log = daemon.log_text();
    assert!(
        log.contains("received SIGTERM: stopping gracefully"),
        "{log}"
    );
    assert!(log.contains("for 0 running jobs"), "{log}");
    assert!(
        log.contains(&format!(
            "resque ready: 1 worker on queues *, Redis redis://127.0.0.1:{}",
            redis.port
        )),
        "{log}"
    );
}

#[test]
fn help_and_completions() {
    let o = run(std::process::Command::new(resque_bin()).arg("--help"));
    let help = stdout(&o);
    assert!(
        help.contains("/etc/resque.toml"),
        "--help names the default config: {help}"
    );
    assert!(!help.contains("generate"), "{help}");

    let dir = tempfile::tempdir().unwrap();
    let o = run(std::process::Command::new(resque_bin()).args([
        "generate",
        "completions",
        "--out",
        dir.path().to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let bash = std::fs::read_to_string(dir.path().join("resque.bash")).unwrap();
    let fish = std::fs::read_to_string(dir.path().join("resque.fish")).unwrap();
    let zsh = std::fs::read_to_string(dir.path().join("_resque")).unwrap();
    for (shell, text) in [("bash", &bash), ("fish", &fish), ("zsh", &zsh)] {
        assert!(
            !text.contains("generate"),
            "{shell} completes the hidden generate"
        );
        assert!(text.contains("trace"), "{shell}: no --log-level values");
        assert!(text.contains("php-fork"), "{shell}: no --handler values");
    }
    let log_level = bash.split("--log-level)").nth(1).unwrap();
    let first = log_level.lines().nth(1).unwrap();
    assert!(
        first.contains("compgen -W \"error warn info debug trace\""),
        "bash --log-level: {first}"
    );
    let count = bash
        .split("--count)")
        .nth(1)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap();
    assert!(
        !count.contains("compgen -f"),
        "bash --count completes file names: {count}"
    );
}

/// A HUP while the daemon is still reading its configuration (here: a FIFO nobody writes to
/// yet) is a reload later, not death by the default action (exit 129).
#[test]
fn hup_during_start_does_not_kill_the_daemon() {
    let (redis, dir, _) = setup();
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut daemon = Daemon::start(&fifo, &[]);
    // Give it time to block in open(2) on the FIFO.
    std::thread::sleep(Duration::from_millis(300));
    assert!(daemon.child.try_wait().unwrap().is_none());
    daemon.signal(Signal::SIGHUP);
    let text = format!(
        "[redis]\nurl = \"{}\"\n[[handler]]\nclass = \"*\"\ntype = \"exec\"\ncommand = [\"/bin/true\"]\n",
        redis.url()
    );
    // The start reads the file once, the queued reload once more.
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            for _ in 0..2 {
                std::fs::write(&fifo, &text).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    wait_for("reload after the early HUP", LIMIT, || {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            panic!("daemon died: {status}; log:\n{}", daemon.log_text());
        }
        daemon
            .log_text()
            .contains("configuration reloaded")
            .then_some(())
    });
    writer.join().unwrap();
    assert!(daemon.log_text().contains("received SIGHUP"));
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0), "{}", daemon.log_text());
}

fn exec_daemon(redis: &RedisServer, dir: &Path) -> Daemon {
    let config = write_config(
        dir,
        &format!(
            "[redis]\nurl = \"{}\"\n[worker]\nqueues = [\"default\"]\n[[handler]]\nclass = \"*\"\ntype = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"cat >/dev/null; exit 3\"]\n",
            redis.url()
        ),
    );
    Daemon::start(&config, &[])
}

fn failed_records(redis: &RedisServer, n: usize) -> Vec<serde_json::Value> {
    wait_for("failure records", LIMIT, || {
        let records: Vec<String> = redis.conn().lrange("resque:failed", 0, -1).unwrap();
        (records.len() >= n).then(|| {
            records
                .iter()
                .map(|r| serde_json::from_str(r).unwrap())
                .collect()
        })
    })
}

/// A NUL byte or 128 KB in a job's class or id cannot be put in the program's environment: the
/// job fails, blaming its data, not the program.
#[test]
fn job_data_that_cannot_be_passed_fails_the_job_not_the_program() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = exec_daemon(&redis, dir.path());
    let long = "L".repeat(128 * 1024);
    let payloads = [
        serde_json::json!({"class": "Bad\u{0}Class", "args": [{}], "id": "nul-class"}),
        serde_json::json!({"class": "Good", "args": [{}], "id": "nul\u{0}id"}),
        serde_json::json!({"class": long, "args": [{}], "id": "long-class"}),
        serde_json::json!({"class": "Good", "args": [{}], "id": long}),
    ];
    for p in &payloads {
        let _: () = redis
            .conn()
            .rpush("resque:queue:default", p.to_string())
            .unwrap();
    }
    let records = failed_records(&redis, payloads.len());
    for r in &records {
        let error = r["error"].as_str().unwrap();
        assert!(error.starts_with("bad job data: the job's "), "{error}");
        assert!(!error.contains("cannot run"), "{error}");
        assert!(!error.contains("Argument list too long"), "{error}");
        assert!(
            error.contains("NUL byte") || error.contains("131072 bytes"),
            "{error}"
        );
    }
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0));
}

/// On stderr, a newline in a job's class is written as `\n`: it cannot start a log line of its
/// own.
#[test]
fn job_class_cannot_forge_a_log_line() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = exec_daemon(&redis, dir.path());
    let forged = "2026-01-01T00:00:00.000000Z  INFO resque ready: forged";
    let p = serde_json::json!({"class": format!("Evil\n{forged}\r\u{1b}[2J"), "args": [{}], "id": "evil"});
    let _: () = redis
        .conn()
        .rpush("resque:queue:default", p.to_string())
        .unwrap();
    failed_records(&redis, 1);
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0));
    let log = daemon.log_text();
    assert!(log.contains("job failed: evil (Evil\\n2026-01-01"), "{log}");
    for line in log.lines() {
        assert!(!line.starts_with(forged), "forged line: {line}");
        assert!(!line.contains('\r') && !line.contains('\u{1b}'), "{line:?}");
    }
}

/// A PHP job that finishes while the daemon drains leaves an idle runner; the daemon waits for
/// it to end on its own (its shutdown functions run) before exiting, instead of it being killed.
#[test]
fn php_runners_end_cleanly_before_the_daemon_exits() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("shutdown");
    let started = dir.path().join("started");
    let bootstrap = dir.path().join("bootstrap.php");
    std::fs::write(
        &bootstrap,
        format!(
            r#"<?php
register_shutdown_function(function () {{
    usleep(300000); // a destructor that takes a moment: flushing a buffer, closing a connection
    file_put_contents('{marker}', getmypid() . "\n", FILE_APPEND);
}});
class SlowJob {{
    public function perform() {{
        touch('{started}');
        usleep(700000);
    }}
}}
"#,
            marker = marker.display(),
            started = started.display()
        ),
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[redis]\nurl = \"{}\"\n[worker]\nqueues = [\"default\"]\n[[handler]]\nclass = \"*\"\ntype = \"php\"\nbootstrap = \"{}\"\n",
            redis.url(),
            bootstrap.display()
        ),
    );
    let mut daemon = Daemon::start(&config, &[]);
    let o = run(resque(&config).args(["enqueue", "default", "SlowJob", "{}"]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for("PHP job started", LIMIT, || started.exists().then_some(()));
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0), "{}", daemon.log_text());
    let ended = std::fs::read_to_string(&marker).unwrap_or_default();
    assert_eq!(
        ended.lines().count(),
        1,
        "the PHP runner's shutdown function did not run before the daemon exited; log:\n{}",
        daemon.log_text()
    );
    let pid: i32 = ended.trim().parse().unwrap();
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
        "PHP runner {pid} outlived the daemon"
    );
    let failed: i64 = redis.conn().llen("resque:failed").unwrap();
    assert_eq!(failed, 0, "{}", daemon.log_text());
}
