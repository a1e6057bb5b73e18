//! The `exec` handler against real processes: small shell scripts in a temporary directory.

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use resque::handler::exec::{ExecHandler, ExecSettings};
use resque::handler::{Handler, Job, JobFailure};
use resque::protocol::{Payload, DIRTY_EXIT_EXCEPTION};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

const PHP_PAYLOAD: &str = r#"{"class":"\\Common\\Job\\XxxxJob","args":[{"url":"http:\/\/a\/b","zh":"\u4e2d\u6587","n":1}],"id":"e22e0000000000000000000000000819","prefix":"","queue_time":1700000000.5}"#;

fn job(raw: &str) -> Job {
    Job {
        worker_id: "host:4242:high,low".to_string(),
        queue: "high".to_string(),
        payload: Payload::parse(raw).expect("test payload"),
    }
}

/// Writes `body` as `dir/name` and returns its path.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write script");
    path
}

/// Settings running `/bin/sh <script> <args…>`.
fn sh(script: &Path, args: &[&Path]) -> ExecSettings {
    let mut command = vec!["/bin/sh".to_string(), script.display().to_string()];
    command.extend(args.iter().map(|a| a.display().to_string()));
    ExecSettings {
        command,
        ..ExecSettings::default()
    }
}

async fn run(settings: ExecSettings, raw: &str) -> Result<(), JobFailure> {
    ExecHandler::new(settings).perform(&job(raw)).await
}

/// The contents of a file once a script has written it (scripts write `x.tmp`, then rename).
async fn wait_for_file(path: &Path) -> String {
    for _ in 0..1000 {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never appeared", path.display());
}

fn pids(text: &str) -> Vec<Pid> {
    text.split_whitespace()
        .map(|p| Pid::from_raw(p.parse().expect("pid")))
        .collect()
}

/// Gone, or a zombie waiting for a reaper that is not ours.
fn is_gone(pid: Pid) -> bool {
    match kill(pid, None) {
        Err(Errno::ESRCH) => true,
        Ok(()) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
                Some(state == "Z" || state == "X")
            })
            .unwrap_or(true),
        Err(e) => panic!("kill({pid}, 0): {e}"),
    }
}

/// Whether `pid` disappears; a SIGKILLed process takes a moment to die.
async fn disappears(pid: Pid) -> bool {
    for _ in 0..1000 {
        if is_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn exit_zero_is_success() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "ok.sh",
        "echo working\necho a warning >&2\nexit 0\n",
    );
    assert_eq!(run(sh(&s, &[]), PHP_PAYLOAD).await, Ok(()));
}

#[tokio::test]
async fn direct_command_without_shell() {
    let settings = ExecSettings {
        command: vec!["true".to_string()],
        ..ExecSettings::default()
    };
    assert_eq!(run(settings, PHP_PAYLOAD).await, Ok(()));
}

#[tokio::test]
async fn payload_arrives_on_stdin_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stdin.json");
    let s = script(dir.path(), "cat.sh", "cat > \"$1\"\n");
    let job = job(PHP_PAYLOAD);
    let handler = ExecHandler::new(sh(&s, &[&out]));
    assert_eq!(handler.perform(&job).await, Ok(()));
    let got = std::fs::read_to_string(&out).unwrap();
    assert_eq!(got, job.payload.raw());
    assert_eq!(got, PHP_PAYLOAD);
}

#[tokio::test]
async fn job_that_ignores_a_large_payload_still_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "quick.sh", "exit 0\n");
    let big = "x".repeat(4 * 1024 * 1024);
    let raw = format!(r#"{{"class":"Big","args":["{big}"]}}"#);
    assert_eq!(run(sh(&s, &[]), &raw).await, Ok(()));
}

#[tokio::test]
async fn environment_describes_the_job_without_the_daemons_variables() {
    const DAEMON_ONLY: [&str; 6] = [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    ];
    // Only this test sets these; other tests' jobs would lose them all the same.
    for name in DAEMON_ONLY {
        std::env::set_var(name, "from-the-service-manager");
    }
    std::env::set_var("EXEC_HANDLER_TEST_INHERITED", "inherited");

    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "env.sh", "env > \"$1\"\npwd > \"$2\"\n");
    let env_file = dir.path().join("env");
    let pwd_file = dir.path().join("pwd");
    let mut settings = sh(&s, &[&env_file, &pwd_file]);
    settings.env = vec![("APP_ENV".to_string(), "production".to_string())];
    settings.working_dir = Some(work.path().to_path_buf());
    let handler = ExecHandler::new(settings);

    let read_env = || -> Vec<(String, String)> {
        std::fs::read_to_string(&env_file)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let get = |env: &[(String, String)], name: &str| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };

    assert_eq!(handler.perform(&job(PHP_PAYLOAD)).await, Ok(()));
    let env = read_env();
    assert_eq!(
        get(&env, "RESQUE_JOB_ID").as_deref(),
        Some("e22e0000000000000000000000000819")
    );
    assert_eq!(
        get(&env, "RESQUE_JOB_CLASS").as_deref(),
        Some("\\Common\\Job\\XxxxJob")
    );
    assert_eq!(get(&env, "RESQUE_QUEUE").as_deref(), Some("high"));
    assert_eq!(
        get(&env, "RESQUE_WORKER").as_deref(),
        Some("host:4242:high,low")
    );
    assert_eq!(get(&env, "APP_ENV").as_deref(), Some("production"));
    assert_eq!(
        get(&env, "EXEC_HANDLER_TEST_INHERITED").as_deref(),
        Some("inherited")
    );
    for name in DAEMON_ONLY {
        assert_eq!(get(&env, name), None, "{name} leaked into the job");
    }
    let pwd = std::fs::read_to_string(&pwd_file).unwrap();
    assert_eq!(
        Path::new(pwd.trim()).canonicalize().unwrap(),
        work.path().canonicalize().unwrap()
    );

    // A Ruby payload has no id: the variable is there, empty.
    assert_eq!(
        handler
            .perform(&job(r#"{"class":"Archive","args":[1]}"#))
            .await,
        Ok(())
    );
    let env = read_env();
    assert_eq!(get(&env, "RESQUE_JOB_ID").as_deref(), Some(""));
    assert_eq!(get(&env, "RESQUE_JOB_CLASS").as_deref(), Some("Archive"));
}

#[tokio::test]
async fn non_zero_exit_fails_with_the_stderr_tail() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "fail.sh",
        "echo some output\n\
         i=1\n\
         while [ $i -le 30 ]; do echo \"line $i\" >&2; i=$((i+1)); done\n\
         printf 'no newline' >&2\n\
         exit 3\n",
    );
    let failure = run(sh(&s, &[]), PHP_PAYLOAD).await.unwrap_err();
    assert_eq!(failure.exception, DIRTY_EXIT_EXCEPTION);
    assert_eq!(failure.error, "Job exited with exit code 3");
    let mut expected: Vec<String> = (12..=30).map(|i| format!("line {i}")).collect();
    expected.push("no newline".to_string());
    assert_eq!(failure.backtrace, expected);
}

#[tokio::test]
async fn killed_by_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "die.sh",
        "echo about to die >&2\nkill -KILL $$\n",
    );
    let failure = run(sh(&s, &[]), PHP_PAYLOAD).await.unwrap_err();
    assert_eq!(failure.exception, DIRTY_EXIT_EXCEPTION);
    assert_eq!(
        failure.error,
        "Job exited abnormally: killed by signal SIGKILL"
    );
    assert_eq!(failure.backtrace, vec!["about to die".to_string()]);
}

#[tokio::test]
async fn timeout_terms_then_kills_a_job_that_ignores_term() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let s = script(
        dir.path(),
        "stubborn.sh",
        "trap 'echo got-term >&2' TERM\n\
         echo $$ > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"\n\
         while :; do sleep 1; done\n",
    );
    let mut settings = sh(&s, &[&ready]);
    settings.timeout = Some(Duration::from_secs(2));
    settings.grace = Duration::from_millis(500);
    let failure = run(settings, PHP_PAYLOAD).await.unwrap_err();
    assert_eq!(failure.exception, DIRTY_EXIT_EXCEPTION);
    assert_eq!(failure.error, "Job timed out after 2s");
    // The trap was set before the pid was written, so TERM reached it and it kept running.
    if let Ok(text) = std::fs::read_to_string(&ready) {
        assert!(
            failure.backtrace.contains(&"got-term".to_string()),
            "{failure:?}"
        );
        for pid in pids(&text) {
            assert!(disappears(pid).await, "job {pid} survived");
        }
    }
}

#[tokio::test]
async fn timeout_kills_the_jobs_children() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pids");
    let s = script(
        dir.path(),
        "parent.sh",
        "sleep 1000 &\n\
         echo $$ $! > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"\n\
         wait\n",
    );
    let mut settings = sh(&s, &[&pid_file]);
    settings.timeout = Some(Duration::from_secs(1));
    settings.grace = Duration::from_secs(5);
    let failure = run(settings, PHP_PAYLOAD).await.unwrap_err();
    assert_eq!(failure.error, "Job timed out after 1s");
    let pids = pids(&wait_for_file(&pid_file).await);
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(disappears(pid).await, "{pid} survived the timeout");
    }
}

#[tokio::test]
async fn timeout_kills_children_that_outlive_the_job_and_ignore_term() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pids");
    let s = script(
        dir.path(),
        "parent.sh",
        "(trap '' TERM; exec sleep 1000) &\n\
         echo $$ $! > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"\n\
         wait\n",
    );
    let mut settings = sh(&s, &[&pid_file]);
    settings.timeout = Some(Duration::from_secs(1));
    settings.grace = Duration::from_millis(500);
    let failure = run(settings, PHP_PAYLOAD).await.unwrap_err();
    assert_eq!(failure.error, "Job timed out after 1s");
    let pids = pids(&wait_for_file(&pid_file).await);
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(disappears(pid).await, "{pid} survived the timeout");
    }
}

#[tokio::test]
async fn dropping_the_future_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pids");
    let s = script(
        dir.path(),
        "forever.sh",
        "trap '' TERM\n\
         sleep 1000 &\n\
         echo $$ $! > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"\n\
         wait\n",
    );
    let handler = ExecHandler::new(sh(&s, &[&pid_file]));
    let job = job(PHP_PAYLOAD);
    let mut perform = Box::pin(handler.perform(&job));
    let text = tokio::select! {
        result = &mut perform => panic!("job ended by itself: {result:?}"),
        text = wait_for_file(&pid_file) => text,
    };
    drop(perform);
    let pids = pids(&text);
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(disappears(pid).await, "{pid} survived the cancelled job");
    }
}

#[tokio::test]
async fn dropping_the_future_under_a_timeout_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pids");
    let s = script(
        dir.path(),
        "forever.sh",
        "sleep 1000 &\n\
         echo $$ $! > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"\n\
         wait\n",
    );
    let handler = ExecHandler::new(sh(&s, &[&pid_file]));
    let job = job(PHP_PAYLOAD);
    let outcome = tokio::time::timeout(Duration::from_millis(300), handler.perform(&job)).await;
    assert!(outcome.is_err(), "job ended by itself: {outcome:?}");
    // The script may not have got as far as starting its child; if it did, the child is gone.
    if let Ok(text) = std::fs::read_to_string(&pid_file) {
        for pid in pids(&text) {
            assert!(disappears(pid).await, "{pid} survived the cancelled job");
        }
    }
}

#[tokio::test]
async fn missing_command_is_a_clear_failure() {
    let settings = ExecSettings {
        command: vec!["/no/such".to_string(), "arg".to_string()],
        ..ExecSettings::default()
    };
    let failure = run(settings, PHP_PAYLOAD).await.unwrap_err();
    assert_eq!(
        failure.error,
        "cannot run /no/such: No such file or directory (os error 2)"
    );
}

#[tokio::test]
async fn command_that_is_not_executable_is_a_clear_failure() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "plain.sh", "exit 0\n");
    let settings = ExecSettings {
        command: vec![s.display().to_string()],
        ..ExecSettings::default()
    };
    let failure = run(settings, PHP_PAYLOAD).await.unwrap_err();
    assert_eq!(
        failure.error,
        format!(
            "cannot run {}: Permission denied (os error 13)",
            s.display()
        )
    );
}

/// Collects formatted log output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn output_is_logged_inside_the_callers_span() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // A current-thread runtime: the job's future runs on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "talk.sh",
        "echo hello-stdout\necho hello-stderr >&2\n",
    );
    let span = tracing::info_span!("job", id = "j-42");
    let result = run(sh(&s, &[]), PHP_PAYLOAD).instrument(span).await;
    assert_eq!(result, Ok(()));

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let out = text
        .lines()
        .find(|l| l.contains("hello-stdout"))
        .unwrap_or_else(|| panic!("stdout not logged:\n{text}"));
    assert!(out.contains("INFO"), "{out}");
    assert!(out.contains("job{id=\"j-42\"}"), "{out}");
    assert!(out.contains("resque::job_output"), "{out}");
    assert!(out.contains("stream=\"stdout\""), "{out}");
    let err = text
        .lines()
        .find(|l| l.contains("hello-stderr"))
        .unwrap_or_else(|| panic!("stderr not logged:\n{text}"));
    assert!(err.contains("WARN"), "{err}");
    assert!(err.contains("job{id=\"j-42\"}"), "{err}");
    assert!(err.contains("stream=\"stderr\""), "{err}");
}
