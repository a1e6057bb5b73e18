//! The `php` handler against a real php-cli: php-resque's job contract, failures, the pool.
//!
//! Job classes live in `tests/php/jobs.php`; jobs that report something write to a file named in
//! their args (`out`). Needs `php` (with pcntl and posix) in `PATH`.

use resque::handler::php::{Isolation, PhpHandler, PhpSettings};
use resque::handler::{Handler, Job, JobFailure};
use resque::protocol::Payload;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;
use tempfile::TempDir;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/php");
const RUNNER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/php/runner.php");

fn require_php() {
    static CHECK: Once = Once::new();
    CHECK.call_once(|| {
        let out = std::process::Command::new("php")
            .args(["-r", "echo function_exists('pcntl_fork') && function_exists('posix_kill') ? 'ok' : 'no';"])
            .output();
        match out {
            Ok(out) if out.status.success() => assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "ok",
                "these tests need php-cli with the pcntl and posix extensions"
            ),
            Ok(out) => panic!("`php -r` failed ({}): these tests need php-cli", out.status),
            Err(e) => panic!("cannot run `php` ({e}): these tests need php-cli in PATH"),
        }
    });
}

fn settings() -> PhpSettings {
    require_php();
    capture_logs();
    PhpSettings {
        runner: PathBuf::from(RUNNER),
        bootstrap: Some(Path::new(FIXTURES).join("jobs.php")),
        ..PhpSettings::default()
    }
}

fn pool() -> PhpHandler {
    PhpHandler::new(settings())
}

fn job_in(queue: &str, class: &str, args: Value) -> Job {
    let payload = json!({"class": class, "args": [args], "id": "0123456789abcdef0123456789abcdef"});
    Job {
        worker_id: "test:1:q".into(),
        queue: queue.into(),
        payload: Payload::parse(&payload.to_string()).expect("payload"),
    }
}

fn job(class: &str, args: Value) -> Job {
    job_in("q", class, args)
}

fn out_file(dir: &TempDir, name: &str) -> String {
    dir.path().join(name).to_string_lossy().into_owned()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Runs PidJob and returns the pid of the PHP process that ran it.
async fn pid_of_next_job(handler: &PhpHandler, dir: &TempDir, name: &str) -> i32 {
    let out = out_file(dir, name);
    handler
        .perform(&job("Common\\Job\\PidJob", json!({"out": out})))
        .await
        .expect("PidJob");
    read(&out).trim().parse().expect("a pid")
}

async fn expect_failure(handler: &PhpHandler, job: &Job) -> JobFailure {
    match handler.perform(job).await {
        Ok(()) => panic!("{} should have failed", job.class()),
        Err(failure) => failure,
    }
}

/// Whether a process is gone (or a zombie nobody has reaped yet).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

async fn wait_gone(pid: i32) {
    for _ in 0..200 {
        if process_gone(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} is still running");
}

async fn wait_for_file(path: &str) {
    for _ in 0..400 {
        if std::fs::metadata(path)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{path} never appeared");
}

#[tokio::test]
async fn args_queue_and_job_reach_the_instance() {
    let dir = TempDir::new().unwrap();
    let out = out_file(&dir, "args.json");
    let args = json!({"out": out, "url": "http://a/b", "zh": "中文", "n": 7, "list": [1, 2]});
    pool()
        .perform(&job_in("mail", "Common\\Job\\ArgsJob", args.clone()))
        .await
        .expect("ArgsJob");
    let seen: Value = serde_json::from_str(&read(&out)).unwrap();
    assert_eq!(seen["args"], args);
    assert_eq!(seen["arguments"], args);
    assert_eq!(seen["queue"], "mail");
    assert_eq!(seen["job_queue"], "mail");
    assert_eq!(seen["job_id"], "0123456789abcdef0123456789abcdef");
    assert_eq!(seen["job_class"], "Common\\Job\\ArgsJob");
}

#[tokio::test]
async fn only_the_first_element_of_args_is_seen() {
    let dir = TempDir::new().unwrap();
    let out = out_file(&dir, "args.json");
    let raw = json!({"class": "Common\\Job\\ArgsJob", "args": [{"out": out}, "second"]});
    let job = Job {
        worker_id: "w".into(),
        queue: "q".into(),
        payload: Payload::parse(&raw.to_string()).unwrap(),
    };
    pool().perform(&job).await.expect("ArgsJob");
    let seen: Value = serde_json::from_str(&read(&out)).unwrap();
    assert_eq!(seen["args"], json!({"out": out}));
    assert_eq!(seen["job_id"], Value::Null);
}

#[tokio::test]
async fn class_names_resolve_as_php_does() {
    let dir = TempDir::new().unwrap();
    let handler = pool();
    for (i, class) in ["\\Common\\Job\\QueueJob", "common\\job\\QUEUEJOB"]
        .iter()
        .enumerate()
    {
        let out = out_file(&dir, &format!("queue{i}"));
        handler
            .perform(&job_in("high", class, json!({"out": out})))
            .await
            .unwrap_or_else(|f| panic!("{class}: {f:?}"));
        assert_eq!(read(&out), "high");
    }
}

/// Captures what is logged, for the output test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static CAPTURED: OnceLock<Captured> = OnceLock::new();

/// One global subscriber, installed before any test runs a job: a thread-local one
/// (`set_default`) can miss events when another thread registers the same callsite at that
/// moment (tracing's interest cache).
fn capture_logs() {
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("a global subscriber");
        captured
    });
}

#[tokio::test]
async fn job_output_is_logged_under_the_job_span() {
    let dir = TempDir::new().unwrap();
    let handler = pool();
    let span = tracing::info_span!("job", id = "output-test-one");
    let ok = job("Common\\Job\\OkJob", json!({"hello": "world"}));
    tracing::Instrument::instrument(handler.perform(&ok), span)
        .await
        .expect("OkJob");
    let out = out_file(&dir, "queue");
    let span = tracing::info_span!("job", id = "output-test-two");
    let queue = job_in("low", "Common\\Job\\QueueJob", json!({"out": out}));
    tracing::Instrument::instrument(handler.perform(&queue), span)
        .await
        .expect("QueueJob");

    let captured = CAPTURED.get().expect("capture_logs ran");
    let logged = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    // Other tests log concurrently: look for lines of this test's spans.
    let line_with = |needle: &str, span: &str| {
        logged
            .lines()
            .find(|line| line.contains(needle) && line.contains(span))
            .unwrap_or_else(|| panic!("{needle:?} was not logged in span {span}:\n{logged}"))
            .to_string()
    };
    let stdout = line_with(r#"{"hello":"world"}"#, "output-test-one");
    assert!(stdout.contains("INFO"), "{stdout}");
    assert!(stdout.contains("resque::job_output"), "{stdout}");
    assert!(stdout.contains(r#"stream="stdout""#), "{stdout}");
    let echoed = line_with("queue=low", "output-test-two");
    assert!(echoed.contains("INFO"), "{echoed}");
    let stderr = line_with("to stderr", "output-test-two");
    assert!(stderr.contains("WARN"), "{stderr}");
    assert!(stderr.contains(r#"stream="stderr""#), "{stderr}");
}

#[tokio::test]
async fn set_up_perform_tear_down_in_order() {
    let dir = TempDir::new().unwrap();
    let out = out_file(&dir, "order");
    pool()
        .perform(&job("Common\\Job\\LifecycleJob", json!({"out": out})))
        .await
        .expect("LifecycleJob");
    assert_eq!(read(&out), "setUp\nperform\ntearDown\n");
}

#[tokio::test]
async fn tear_down_is_skipped_when_perform_throws() {
    let dir = TempDir::new().unwrap();
    let out = out_file(&dir, "order");
    let failure = expect_failure(
        &pool(),
        &job(
            "Common\\Job\\LifecycleJob",
            json!({"out": out, "throw": true}),
        ),
    )
    .await;
    assert_eq!(failure.exception, "RuntimeException");
    assert_eq!(failure.error, "perform failed on purpose");
    assert_eq!(read(&out), "setUp\nperform\n");
}

#[tokio::test]
async fn dont_perform_from_set_up_is_success_without_perform() {
    let dir = TempDir::new().unwrap();
    let handler = pool();
    for legacy in [false, true] {
        let out = out_file(&dir, &format!("skip-{legacy}"));
        handler
            .perform(&job(
                "Common\\Job\\SkipJob",
                json!({"out": out, "legacy": legacy}),
            ))
            .await
            .unwrap_or_else(|f| panic!("DontPerform (legacy: {legacy}) failed: {f:?}"));
        assert_eq!(read(&out), "setUp\n");
    }
}

#[tokio::test]
async fn an_exception_fails_with_class_message_and_backtrace() {
    let dir = TempDir::new().unwrap();
    let handler = pool();
    let before = pid_of_next_job(&handler, &dir, "before").await;
    let failure = expect_failure(&handler, &job("Common\\Job\\ThrowJob", json!(null))).await;
    assert_eq!(failure.exception, "RuntimeException");
    assert_eq!(failure.error, "something broke: 中");
    assert!(failure.backtrace.len() >= 2, "{:?}", failure.backtrace);
    assert!(
        failure.backtrace[0].starts_with("#0 "),
        "{:?}",
        failure.backtrace
    );
    assert!(
        failure.backtrace[0].contains("ThrowJob->deeper()"),
        "{:?}",
        failure.backtrace
    );
    assert!(failure.backtrace.last().unwrap().ends_with("{main}"));
    // An exception does not cost the process.
    assert_eq!(pid_of_next_job(&handler, &dir, "after").await, before);
}

#[tokio::test]
async fn an_error_is_a_throwable_failure() {
    let failure = expect_failure(
        &pool(),
        &job("Common\\Job\\UndefinedFunctionJob", json!(null)),
    )
    .await;
    assert_eq!(failure.exception, "Error");
    assert!(
        failure.error.contains("Call to undefined function"),
        "{}",
        failure.error
    );
    assert!(failure.backtrace[0].starts_with("#0 "));
}

#[tokio::test]
async fn a_missing_class_fails_as_php_resque_does() {
    let handler = pool();
    let failure = expect_failure(&handler, &job("\\Common\\Job\\Missing", json!(null))).await;
    assert_eq!(failure.exception, "Resque\\Exception");
    assert_eq!(
        failure.error,
        "Could not find job class \\Common\\Job\\Missing."
    );
    let failure = expect_failure(&handler, &job("Common\\Job\\NoPerformJob", json!(null))).await;
    assert_eq!(failure.exception, "Resque\\Exception");
    assert!(
        failure.error.contains("does not contain a perform method"),
        "{}",
        failure.error
    );
}

#[tokio::test]
async fn a_missing_class_has_a_backtrace_of_the_runners_frames() {
    // Seen: the right exception and message but an empty backtrace (php-resque gives one).
    let handler = pool();
    for class in ["\\Common\\Job\\Missing", "Common\\Job\\NoPerformJob"] {
        let failure = expect_failure(&handler, &job(class, json!(null))).await;
        assert_eq!(failure.exception, "Resque\\Exception");
        assert!(!failure.backtrace.is_empty(), "{class}: no backtrace");
        assert!(
            failure.backtrace[0].starts_with("#0 ") && failure.backtrace[0].contains("runner.php"),
            "{class}: {:?}",
            failure.backtrace
        );
        assert!(
            failure.backtrace.last().unwrap().ends_with("{main}"),
            "{:?}",
            failure.backtrace
        );
    }
}

#[tokio::test]
async fn resque_exception_without_php_resque_fails_with_the_jobs_message() {
    // Seen: without php-resque's autoload the record read
    // `Error: Class "Resque\Exception" not found`.
    let handler = pool();
    let failure =
        expect_failure(&handler, &job("Common\\Job\\ResqueExceptionJob", json!({}))).await;
    assert_eq!(failure.exception, "Resque\\Exception");
    assert_eq!(failure.error, "order 42 is not paid");
    assert!(
        failure.backtrace[0].contains("ResqueExceptionJob->perform()"),
        "{:?}",
        failure.backtrace
    );
    let failure = expect_failure(
        &handler,
        &job("Common\\Job\\ResqueExceptionJob", json!({"legacy": true})),
    )
    .await;
    assert_eq!(failure.exception, "Resque_Exception");
    assert_eq!(failure.error, "legacy resque failure");
}

#[tokio::test]
async fn php_resques_own_exception_class_wins_over_the_fallback() {
    // An autoloader the bootstrap registers (php-resque's) is asked before the runner's fallback.
    let dir = TempDir::new().unwrap();
    let marker = out_file(&dir, "own");
    let bootstrap = dir.path().join("bootstrap.php");
    std::fs::write(
        &bootstrap,
        format!(
            r#"<?php
require '{FIXTURES}/jobs.php';
spl_autoload_register(function ($class) {{
    if ($class === 'Resque\\Exception') {{
        eval('namespace Resque; class Exception extends \\Exception {{}}');
        file_put_contents('{marker}', 'app');
    }}
}});
"#
        ),
    )
    .unwrap();
    let handler = PhpHandler::new(PhpSettings {
        bootstrap: Some(bootstrap),
        ..settings()
    });
    let failure =
        expect_failure(&handler, &job("Common\\Job\\ResqueExceptionJob", json!({}))).await;
    assert_eq!(failure.exception, "Resque\\Exception");
    assert_eq!(failure.error, "order 42 is not paid");
    assert_eq!(
        read(&marker),
        "app",
        "the application's class was not the one loaded"
    );
}

#[tokio::test]
async fn a_fatal_error_fails_with_phps_message_and_the_next_job_runs() {
    let dir = TempDir::new().unwrap();
    let handler = pool();
    let before = pid_of_next_job(&handler, &dir, "before").await;
    let failure = expect_failure(&handler, &job("Common\\Job\\RedeclareJob", json!(null))).await;
    assert_eq!(failure.exception, "PHP Fatal error");
    assert!(
        failure
            .error
            .contains("Cannot declare class ResqueTestTwice"),
        "{}",
        failure.error
    );
    assert!(failure.error.contains(" in "), "{}", failure.error);
    let after = pid_of_next_job(&handler, &dir, "after").await;
    assert_ne!(
        after, before,
        "the process that hit a fatal error was reused"
    );
}

#[tokio::test]
async fn running_out_of_memory_fails_with_phps_message_and_the_next_job_runs() {
    let dir = TempDir::new().unwrap();
    let handler = pool();
    let failure = expect_failure(&handler, &job("Common\\Job\\OomJob", json!(null))).await;
    assert_eq!(failure.exception, "PHP Fatal error");
    assert!(
        failure
            .error
            .contains("Allowed memory size of 16777216 bytes exhausted"),
        "{}",
        failure.error
    );
    assert!(failure.error.contains("jobs.php:"), "{}", failure.error);
    pid_of_next_job(&handler, &dir, "after").await;
}

#[tokio::test]
async fn exit_in_a_job_fails_it_and_the_next_job_runs() {
    let dir = TempDir::new().unwrap();
    let handler = pool();
    let failure = expect_failure(&handler, &job("Common\\Job\\ExitJob", json!({"code": 3}))).await;
    assert_eq!(failure.exception, "Resque\\Job\\DirtyExitException");
    assert_eq!(failure.error, "Job called exit() with exit code 3");
    pid_of_next_job(&handler, &dir, "after").await;
}

#[tokio::test]
async fn a_process_killed_mid_job_fails_it_and_is_replaced() {
    let dir = TempDir::new().unwrap();
    let handler = pool();
    let before = pid_of_next_job(&handler, &dir, "before").await;
    let failure = expect_failure(&handler, &job("Common\\Job\\SelfKillJob", json!(null))).await;
    assert_eq!(failure.exception, "Resque\\Job\\DirtyExitException");
    assert_eq!(failure.error, "PHP worker died: killed by signal SIGKILL");
    let after = pid_of_next_job(&handler, &dir, "after").await;
    assert_ne!(after, before);
}

#[tokio::test]
async fn a_job_over_its_timeout_is_killed_and_fails() {
    let dir = TempDir::new().unwrap();
    let handler = PhpHandler::new(PhpSettings {
        timeout: Some(Duration::from_secs(1)),
        grace: Duration::from_secs(1),
        ..settings()
    });
    let out = out_file(&dir, "sleeper");
    let failure = expect_failure(
        &handler,
        &job("Common\\Job\\SleepJob", json!({"out": out, "seconds": 60})),
    )
    .await;
    assert_eq!(failure.exception, "Resque\\Job\\DirtyExitException");
    assert!(
        failure.error.contains("timed out after 1s"),
        "{}",
        failure.error
    );
    let pid: i32 = read(&out).trim().parse().unwrap();
    wait_gone(pid).await;
    pid_of_next_job(&handler, &dir, "after").await;
}

#[tokio::test]
async fn dropping_perform_kills_the_process() {
    let dir = TempDir::new().unwrap();
    let handler = pool();
    let out = out_file(&dir, "sleeper");
    let sleeper = job("Common\\Job\\SleepJob", json!({"out": out, "seconds": 60}));
    {
        let perform = handler.perform(&sleeper);
        tokio::pin!(perform);
        tokio::select! {
            result = &mut perform => panic!("SleepJob ended: {result:?}"),
            () = wait_for_file(&out) => {}
        }
        // Dropping the future cancels the job.
    }
    let pid: i32 = read(&out).trim().parse().unwrap();
    wait_gone(pid).await;
    let after = pid_of_next_job(&handler, &dir, "after").await;
    assert_ne!(after, pid);
}

#[tokio::test]
async fn processes_are_reused_and_recycled_after_max_jobs() {
    let dir = TempDir::new().unwrap();
    let handler = PhpHandler::new(PhpSettings {
        max_jobs: 2,
        ..settings()
    });
    let first = pid_of_next_job(&handler, &dir, "1").await;
    let second = pid_of_next_job(&handler, &dir, "2").await;
    let third = pid_of_next_job(&handler, &dir, "3").await;
    let fourth = pid_of_next_job(&handler, &dir, "4").await;
    assert_eq!(first, second);
    assert_ne!(second, third);
    assert_eq!(third, fourth);
    wait_gone(first).await;
}

#[tokio::test]
async fn processes_are_recycled_over_max_memory() {
    let dir = TempDir::new().unwrap();
    let handler = PhpHandler::new(PhpSettings {
        max_memory: 1,
        ..settings()
    });
    let first = pid_of_next_job(&handler, &dir, "1").await;
    let second = pid_of_next_job(&handler, &dir, "2").await;
    assert_ne!(first, second);
}

#[tokio::test]
async fn concurrent_jobs_get_processes_of_their_own() {
    let dir = TempDir::new().unwrap();
    let handler = pool();
    let (a, b) = (out_file(&dir, "a"), out_file(&dir, "b"));
    let job_a = job("Common\\Job\\RendezvousJob", json!({"out": a, "other": b}));
    let job_b = job("Common\\Job\\RendezvousJob", json!({"out": b, "other": a}));
    let (ra, rb) = tokio::join!(handler.perform(&job_a), handler.perform(&job_b));
    ra.expect("job a");
    rb.expect("job b");
    assert_ne!(read(&a), read(&b));
    // Both go back to the pool: two more jobs at once need no new process.
    let (c, d) = (out_file(&dir, "c"), out_file(&dir, "d"));
    let job_c = job("Common\\Job\\RendezvousJob", json!({"out": c, "other": d}));
    let job_d = job("Common\\Job\\RendezvousJob", json!({"out": d, "other": c}));
    let (rc, rd) = tokio::join!(handler.perform(&job_c), handler.perform(&job_d));
    rc.expect("job c");
    rd.expect("job d");
    let mut before = [read(&a), read(&b)];
    let mut after = [read(&c), read(&d)];
    before.sort();
    after.sort();
    assert_eq!(before, after);
}

#[tokio::test]
async fn fork_isolation_runs_each_job_in_a_child() {
    let dir = TempDir::new().unwrap();
    let handler = PhpHandler::new(PhpSettings {
        isolation: Isolation::Fork,
        ..settings()
    });
    let first = pid_of_next_job(&handler, &dir, "1").await;
    let second = pid_of_next_job(&handler, &dir, "2").await;
    assert_ne!(first, second, "each job should run in a new child");

    let out = out_file(&dir, "order");
    handler
        .perform(&job("Common\\Job\\LifecycleJob", json!({"out": out})))
        .await
        .expect("LifecycleJob");
    assert_eq!(read(&out), "setUp\nperform\ntearDown\n");

    let failure = expect_failure(&handler, &job("Common\\Job\\ThrowJob", json!(null))).await;
    assert_eq!(failure.exception, "RuntimeException");
    assert!(failure.backtrace[0].starts_with("#0 "));

    let failure = expect_failure(&handler, &job("Common\\Job\\ExitJob", json!({"code": 4}))).await;
    assert_eq!(failure.exception, "Resque\\Job\\DirtyExitException");
    assert_eq!(failure.error, "Job called exit() with exit code 4");

    let failure = expect_failure(&handler, &job("Common\\Job\\SelfKillJob", json!(null))).await;
    assert_eq!(failure.exception, "Resque\\Job\\DirtyExitException");
    assert_eq!(failure.error, "Job exited abnormally (signal 9)");

    let failure = expect_failure(&handler, &job("Common\\Job\\OomJob", json!(null))).await;
    assert_eq!(failure.exception, "PHP Fatal error");
    assert!(
        failure.error.contains("Allowed memory size"),
        "{}",
        failure.error
    );

    handler
        .perform(&job(
            "Common\\Job\\SkipJob",
            json!({"out": out_file(&dir, "skip")}),
        ))
        .await
        .expect("DontPerform in a child");

    // The parent survived all of it.
    let out = out_file(&dir, "queue");
    handler
        .perform(&job("Common\\Job\\QueueJob", json!({"out": out})))
        .await
        .expect("QueueJob after failures");
    assert_eq!(read(&out), "q");
}

#[tokio::test]
async fn a_missing_bootstrap_fails_the_job_naming_the_file() {
    let handler = PhpHandler::new(PhpSettings {
        bootstrap: Some(PathBuf::from("/nonexistent/app/bootstrap.php")),
        ..settings()
    });
    let failure = expect_failure(&handler, &job("Common\\Job\\OkJob", json!(null))).await;
    assert_eq!(failure.exception, "Resque\\Job\\DirtyExitException");
    assert!(
        failure
            .error
            .starts_with("PHP worker failed to start: exit code 78"),
        "{}",
        failure.error
    );
    assert!(
        failure.error.contains("/nonexistent/app/bootstrap.php"),
        "{}",
        failure.error
    );
    // The next attempt waits a little (back-off), then fails the same way.
    let again = expect_failure(&handler, &job("Common\\Job\\OkJob", json!(null))).await;
    assert_eq!(again.error, failure.error);
}

#[tokio::test]
async fn without_a_bootstrap_job_classes_are_not_found() {
    let handler = PhpHandler::new(PhpSettings {
        bootstrap: None,
        ..settings()
    });
    let failure = expect_failure(&handler, &job("Common\\Job\\OkJob", json!(null))).await;
    assert_eq!(failure.exception, "Resque\\Exception");
    assert_eq!(
        failure.error,
        "Could not find job class Common\\Job\\OkJob."
    );
}

#[tokio::test]
async fn command_mode_boots_the_app_then_requires_the_runner() {
    let dir = TempDir::new().unwrap();
    let handler = PhpHandler::new(PhpSettings {
        bootstrap: None,
        command: Some(vec![
            "php".into(),
            format!("{FIXTURES}/entry.php"),
            "runner".into(),
        ]),
        working_dir: Some(dir.path().to_path_buf()),
        ..settings()
    });
    let out = out_file(&dir, "booted");
    handler
        .perform(&job("Common\\Job\\BootedJob", json!({"out": out})))
        .await
        .expect("BootedJob");
    assert_eq!(read(&out), "entry");

    // Without the entry point, the same job runs in the plain runner.
    let out = out_file(&dir, "plain");
    pool()
        .perform(&job("Common\\Job\\BootedJob", json!({"out": out})))
        .await
        .expect("BootedJob");
    assert_eq!(read(&out), "runner");

    // Failures behave the same in command mode.
    let failure = expect_failure(&handler, &job("Common\\Job\\ExitJob", json!({"code": 5}))).await;
    assert_eq!(failure.error, "Job called exit() with exit code 5");
    let out = out_file(&dir, "again");
    handler
        .perform(&job("Common\\Job\\BootedJob", json!({"out": out})))
        .await
        .expect("BootedJob after exit()");
    assert_eq!(read(&out), "entry");
}

#[tokio::test]
async fn environment_and_working_dir_reach_php() {
    // As systemd would give it to the daemon; PHP must not see it. (Other tests spawning at the
    // same time remove it as well.)
    std::env::set_var("NOTIFY_SOCKET", "/run/systemd/notify");
    let dir = TempDir::new().unwrap();
    let out = out_file(&dir, "env");
    let script = dir.path().join("envjob.php");
    std::fs::write(
        &script,
        r#"<?php
class EnvJob {
    public $args;
    public function perform() {
        file_put_contents($this->args['out'], json_encode(array(
            'custom' => getenv('CUSTOM_VAR'),
            'notify' => getenv('NOTIFY_SOCKET'),
            'cwd' => getcwd(),
        )));
    }
}
"#,
    )
    .unwrap();
    let handler = PhpHandler::new(PhpSettings {
        // Relative to the working directory.
        bootstrap: Some(PathBuf::from("envjob.php")),
        working_dir: Some(dir.path().to_path_buf()),
        env: vec![("CUSTOM_VAR".into(), "custom value".into())],
        ..settings()
    });
    handler
        .perform(&job("EnvJob", json!({"out": out})))
        .await
        .expect("EnvJob");
    let seen: Value = serde_json::from_str(&read(&out)).unwrap();
    assert_eq!(seen["custom"], "custom value");
    assert_eq!(seen["notify"], false);
    assert_eq!(
        PathBuf::from(seen["cwd"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        dir.path().canonicalize().unwrap()
    );
}

#[tokio::test]
async fn a_missing_php_binary_fails_the_job_clearly() {
    let handler = PhpHandler::new(PhpSettings {
        php: "/nonexistent/bin/php".into(),
        ..settings()
    });
    let failure = expect_failure(&handler, &job("Common\\Job\\OkJob", json!(null))).await;
    assert!(
        failure.error.contains("/nonexistent/bin/php"),
        "{}",
        failure.error
    );
}

#[tokio::test]
async fn dropping_the_handler_ends_its_idle_processes() {
    let dir = TempDir::new().unwrap();
    let handler = pool();
    let pid = pid_of_next_job(&handler, &dir, "pid").await;
    assert!(
        !process_gone(pid),
        "the idle process should wait for the next job"
    );
    drop(handler);
    wait_gone(pid).await;
}

#[tokio::test]
async fn a_process_that_never_reports_ready_fails_the_job_at_the_start_deadline() {
    // Seen: the daemon waited forever for a PHP process that never said it was ready.
    let handler = PhpHandler::new(PhpSettings {
        bootstrap: None,
        command: Some(vec!["php".into(), format!("{FIXTURES}/never_ready.php")]),
        start_timeout: Duration::from_secs(2),
        ..settings()
    });
    let started = std::time::Instant::now();
    let failure = tokio::time::timeout(
        Duration::from_secs(30),
        expect_failure(&handler, &job("Common\\Job\\OkJob", json!(null))),
    )
    .await
    .expect("the job must not wait for ever");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(failure.exception, "Resque\\Job\\DirtyExitException");
    for part in [
        "PHP worker failed to start",
        "never_ready.php",
        "did not reach resque's runner within 2s",
        "booting the application",
        "still booting",
        "RESQUE_RUNNER",
    ] {
        assert!(
            failure.error.contains(part),
            "{part:?} in {}",
            failure.error
        );
    }
    // The process is gone, and the next attempt backs off, then fails the same way.
    let again = expect_failure(&handler, &job("Common\\Job\\OkJob", json!(null))).await;
    assert!(
        again.error.contains("did not reach resque's runner"),
        "{}",
        again.error
    );
    let leftovers = std::process::Command::new("pgrep")
        .args(["-f", &format!("{FIXTURES}/never_ready.php")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&leftovers.stdout).trim().is_empty(),
        "never_ready.php processes left running"
    );
}
