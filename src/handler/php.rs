//! The `php` handler: php-resque job classes run by a pool of long-lived PHP processes
//! (DESIGN §4).
//!
//! Each process runs `php/runner.php` (or the application's own entry point, which boots its
//! framework and then `require`s the runner named in `RESQUE_RUNNER`). The application is
//! bootstrapped once per process, not once per job. A process is checked out for one job, and
//! returned to the pool afterwards unless it has run `max_jobs` jobs or reports more than
//! `max_memory` bytes in use; then it is told to exit (end of file on its requests).
//!
//! Requests and responses travel over two pipes on file descriptors 3 and 4, because jobs write
//! to STDOUT: the process's stdout and stderr are logged line by line under the caller's span,
//! the last [`STDERR_TAIL`] stderr lines kept for failure records. See `php/runner.php` for the
//! message format.
//!
//! A process that dies (fatal error, `exit()`, out of memory, a signal) fails its job with PHP's
//! own message when the runner could still write one, or with its exit status and stderr, and is
//! replaced by a new one for the next job. A process that cannot even start (a missing bootstrap
//! file) fails the job with its stderr, and the next start waits a little longer each time
//! ([`MAX_BACKOFF`]), so a broken setup does not spin.
//!
//! Killing: on timeout the process group gets TERM, then `grace`, then KILL. When the `perform`
//! future is dropped the group gets KILL at once, and the process is never reused.
//!
//! Output is read within bounds (see `process.rs`): after a response, only what is already in the
//! pipes, and at most a little more than a pipe holds. If that limit is reached, or if output
//! has come while the process was idle, something a job started keeps writing to the process's
//! stdout or stderr: the job's outcome is reported all the same, and the process is replaced
//! (retired like one that reached `max_jobs`).

use super::process::{
    child_command, describe_status, next_line, spawn_failure, spawn_place, time_limit, timed_out,
    Lines, Output, ProcessGroup, OUTPUT_DRAIN,
};
use super::{Handler, Job, JobFailure};
use crate::protocol::DIRTY_EXIT_EXCEPTION;
use nix::sys::signal::Signal;
use serde::Deserialize;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tracing::Instrument;

pub use super::process::STDERR_TAIL;

/// Longest wait between two attempts to start a PHP process that keeps failing to start.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long a new PHP process may take to report ready, unless configured (`start_timeout`).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What php-resque's worker prints when it starts (`fwrite(STDOUT, '*** Starting worker ' …)` in
/// the seed's `QueueController::start()`): a process that prints it before it is ready runs a
/// php-resque worker of its own, not our runner — an entry point whose `runner` case is missing
/// falls through to `start()`. It would take jobs from Redis behind our back, so it is stopped
/// at once rather than at the start-up deadline.
const PHP_RESQUE_WORKER_START: &str = "*** Starting worker";

/// Longest response line accepted from the runner.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// The exception class php-resque uses for its own errors (a missing job class).
const RESQUE_EXCEPTION: &str = "Resque\\Exception";

/// The runner's message when a job calls `exit()` (see `php/runner.php`).
const EXIT_CALLED: &str = "Job called exit()";

/// Where installed packages put the runner.
const INSTALLED_RUNNER: &str = "/usr/share/resque/php/runner.php";

/// How a PHP process runs its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// One job after another in the same process (the application is booted once).
    Pool,
    /// Each job in a child forked from the booted process, as php-resque does.
    Fork,
}

impl Isolation {
    fn as_str(self) -> &'static str {
        match self {
            Isolation::Pool => "pool",
            Isolation::Fork => "fork",
        }
    }
}

/// How PHP jobs are run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhpSettings {
    /// The PHP binary (looked up in `PATH`).
    pub php: String,
    /// `runner.php`.
    pub runner: PathBuf,
    /// php-resque's `APP_INCLUDE`: `require_once`d once per process before any job.
    pub bootstrap: Option<PathBuf>,
    /// The application's entry point, run instead of `php runner.php`; it boots its framework,
    /// then does `require getenv('RESQUE_RUNNER');` (`php` is not used then). `RESQUE_BOOTSTRAP`
    /// and `RESQUE_ISOLATION` are set for it as for the runner.
    pub command: Option<Vec<String>>,
    pub isolation: Isolation,
    /// A process is replaced after this many jobs; 0: never.
    pub max_jobs: u32,
    /// A process reporting more memory in use (bytes) is replaced; 0: never.
    pub max_memory: u64,
    /// A job running longer fails; its process group gets TERM, `grace`, then KILL.
    pub timeout: Option<Duration>,
    /// Time between TERM and KILL.
    pub grace: Duration,
    /// A new process that has not reported ready (its bootstrap or entry point did not reach the
    /// runner) within this time is killed, and the job it was started for fails.
    pub start_timeout: Duration,
    /// The processes' working directory; `None` keeps the daemon's.
    pub working_dir: Option<PathBuf>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Variables of the daemon's environment that the PHP processes get although they configure
    /// the daemon (`REDIS_BACKEND`, …): see `process::DAEMON_ENV`.
    pub pass_env: Vec<String>,
}

impl Default for PhpSettings {
    fn default() -> Self {
        PhpSettings {
            php: "php".to_string(),
            runner: default_runner_path(),
            bootstrap: None,
            command: None,
            isolation: Isolation::Pool,
            max_jobs: 1000,
            max_memory: 256 * 1024 * 1024,
            timeout: None,
            grace: Duration::from_secs(10),
            start_timeout: START_TIMEOUT,
            working_dir: None,
            env: Vec::new(),
            pass_env: Vec::new(),
        }
    }
}

/// The installed runner if there is one, else the one in this source tree.
pub fn default_runner_path() -> PathBuf {
    let installed = Path::new(INSTALLED_RUNNER);
    if installed.exists() {
        installed.to_path_buf()
    } else {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/php/runner.php"))
    }
}

/// Runs PHP job classes in a pool of PHP processes.
#[derive(Debug, Clone)]
pub struct PhpHandler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: PhpSettings,
    /// Processes waiting for a job.
    idle: Mutex<Vec<PhpProcess>>,
    /// Processes that failed to start, in a row.
    start_failures: Mutex<StartFailures>,
}

#[derive(Debug, Default)]
struct StartFailures {
    count: u32,
    last: Option<Instant>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PhpHandler {
    pub fn new(settings: PhpSettings) -> Self {
        PhpHandler {
            inner: Arc::new(Inner {
                settings,
                idle: Mutex::new(Vec::new()),
                start_failures: Mutex::new(StartFailures::default()),
            }),
        }
    }

    pub fn settings(&self) -> &PhpSettings {
        &self.inner.settings
    }

    /// An idle process that is still alive, if any.
    fn checkout(&self) -> Option<PhpProcess> {
        loop {
            let mut process = lock(&self.inner.idle).pop()?;
            match process.group.try_wait() {
                Ok(None) => {
                    // Nothing writes to an idle runner's stdout or stderr but what a job left
                    // behind there (a helper it started and forgot): replace the process, so
                    // that its output neither mixes with this job's nor keeps us reading.
                    let drained = process.output.drain_ready();
                    if drained.bytes == 0 {
                        return Some(process);
                    }
                    tracing::warn!(
                        pid = process.pid(),
                        "{} bytes written to an idle PHP worker's stdout or stderr: a job left \
                         something running that writes there; replacing the worker",
                        drained.bytes
                    );
                    self.retire(process, "output while idle".to_string());
                }
                Ok(Some(status)) => {
                    process.group.disarm();
                    tracing::warn!(
                        pid = process.pid(),
                        "idle PHP worker ended on its own ({}); starting another",
                        describe_status(status)
                    );
                }
                Err(e) => {
                    tracing::warn!(pid = process.pid(), "cannot check on idle PHP worker: {e}");
                }
            }
        }
    }

    fn checkin(&self, process: PhpProcess) {
        lock(&self.inner.idle).push(process);
    }

    /// Waits out the back-off after failed starts.
    async fn back_off(&self) {
        let wait = {
            let failures = lock(&self.inner.start_failures);
            match failures.last {
                Some(last) if failures.count > 0 => {
                    let exponent = failures.count.saturating_sub(1).min(16);
                    let delay = Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF);
                    (last + delay).checked_duration_since(Instant::now())
                }
                _ => None,
            }
        };
        if let Some(wait) = wait {
            tracing::info!(
                "PHP workers failed to start; waiting {} before the next attempt",
                humantime::format_duration(round_ms(wait))
            );
            tokio::time::sleep(wait).await;
        }
    }

    fn start_failed(&self) {
        let mut failures = lock(&self.inner.start_failures);
        failures.count = failures.count.saturating_add(1);
        failures.last = Some(Instant::now());
    }

    fn started(&self) {
        let mut failures = lock(&self.inner.start_failures);
        failures.count = 0;
        failures.last = None;
    }

    fn spawn(&self) -> Result<PhpProcess, JobFailure> {
        let settings = &self.inner.settings;
        let runner = match (&settings.working_dir, settings.runner.is_relative()) {
            (Some(dir), true) => dir.join(&settings.runner),
            _ => settings.runner.clone(),
        };
        if !runner.is_file() {
            return Err(JobFailure::new(
                DIRTY_EXIT_EXCEPTION,
                format!(
                    "cannot run PHP jobs: the runner {} does not exist",
                    runner.display()
                ),
            ));
        }
        let working_dir = settings.working_dir.as_deref();
        let shown = match &settings.command {
            Some(command) => command.join(" "),
            None => format!("{} {}", settings.php, runner.display()),
        };
        let (program, mut cmd) = match &settings.command {
            Some(command) => {
                let Some((program, args)) = command.split_first() else {
                    return Err(JobFailure::new(
                        DIRTY_EXIT_EXCEPTION,
                        "cannot run PHP jobs: the command is empty",
                    ));
                };
                let mut cmd = child_command(program, working_dir, &settings.pass_env);
                cmd.args(args);
                (program, cmd)
            }
            None => {
                let mut cmd = child_command(&settings.php, working_dir, &settings.pass_env);
                cmd.arg(&runner);
                (&settings.php, cmd)
            }
        };
        cmd.env("RESQUE_RUNNER", &runner);
        match &settings.bootstrap {
            Some(bootstrap) => cmd.env("RESQUE_BOOTSTRAP", bootstrap),
            None => cmd.env_remove("RESQUE_BOOTSTRAP"),
        };
        cmd.env("RESQUE_ISOLATION", settings.isolation.as_str());
        cmd.envs(settings.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null());

        let spawn_error = |e: &std::io::Error| {
            let place = spawn_place(working_dir);
            spawn_failure(
                DIRTY_EXIT_EXCEPTION,
                &format!("cannot run PHP worker {program}{place}"),
                e,
            )
        };

        // Requests (fd 3 in PHP) and responses (fd 4). Both ends are close-on-exec; only the
        // child's ends are moved to 3 and 4 in the child, between fork and exec. Done by hand
        // (not with a crate like `command-fds`) because it is two `dup2`s.
        let (request_read, request_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_error(&e.into()))?;
        let (response_read, response_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_error(&e.into()))?;
        let child_in = request_read.as_raw_fd();
        let child_out = response_write.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls fcntl and dup2,
        // which are async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                // First copy both above 4, so that moving one onto 3 or 4 cannot overwrite the
                // other, and so that `dup2` never gets the same fd twice (which would keep
                // close-on-exec set). The copies are close-on-exec themselves.
                let input = libc::fcntl(child_in, libc::F_DUPFD_CLOEXEC, 5);
                if input < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let output = libc::fcntl(child_out, libc::F_DUPFD_CLOEXEC, 5);
                if output < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::dup2(input, 3) < 0 || libc::dup2(output, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }

        let spawned = ProcessGroup::spawn(cmd, "PHP worker");
        // The child has its copies; ours must go, or we would never see end of file.
        drop(request_read);
        drop(response_write);
        let mut group = spawned.map_err(|e| spawn_error(&e))?;
        let requests = sender(request_write).map_err(|e| spawn_error(&e))?;
        let responses = receiver(response_read).map_err(|e| spawn_error(&e))?;
        tracing::debug!(
            pid = group.pid(),
            isolation = settings.isolation.as_str(),
            "started PHP worker"
        );
        let mut output = group.take_output();
        output.record_startup();
        Ok(PhpProcess {
            ready: false,
            command: shown,
            jobs: 0,
            requests: Some(requests),
            responses: Some(Lines::new(responses, MAX_RESPONSE)),
            output,
            group,
        })
    }

    /// Tells a process to exit after its last job, in the background.
    fn retire(&self, process: PhpProcess, why: String) {
        tracing::debug!(pid = process.pid(), "recycling PHP worker: {why}");
        retire(process, self.inner.settings.grace);
    }

    /// Runs one job on one process, which is used up or returned to the pool.
    async fn run(&self, job: &Job) -> Result<(), JobFailure> {
        let settings = &self.inner.settings;
        let request = request_line(job)?;

        let mut process = match self.checkout() {
            Some(process) => process,
            None => {
                self.back_off().await;
                match self.spawn() {
                    Ok(process) => process,
                    Err(failure) => {
                        // Out of file descriptors: not a broken setup, no reason to back off.
                        if !failure.is_worker_side() {
                            self.start_failed();
                        }
                        return Err(failure);
                    }
                }
            }
        };
        process.output.clear_tail();

        let ended = process
            .exchange(&request, settings.timeout, settings.start_timeout, self)
            .await;

        match ended {
            Ended::Response(response) if !response.exiting => {
                process.jobs = process.jobs.saturating_add(1);
                // The runner flushes the job's output before it answers: what is in the pipes now
                // is the rest of this job's output. Read without waiting, and a bounded amount:
                // the outcome must not wait for whatever the job left writing to them.
                let recycle = if process.output.drain_ready().still_written {
                    tracing::warn!(
                        pid = process.pid(),
                        "the job left something writing to its PHP worker's stdout or stderr; \
                         replacing the worker"
                    );
                    Some("its output is still being written to after the job".to_string())
                } else if settings.max_jobs > 0 && process.jobs >= settings.max_jobs {
                    Some(format!("it has run {} jobs", process.jobs))
                } else if settings.max_memory > 0 && response.memory > settings.max_memory {
                    Some(format!(
                        "it uses {} bytes (max_memory is {})",
                        response.memory, settings.max_memory
                    ))
                } else {
                    None
                };
                match recycle {
                    Some(why) => self.retire(process, why),
                    None => self.checkin(process),
                }
                response.into_result()
            }
            Ended::Response(response) => {
                // The runner answered from its shutdown function: the process is going down.
                let status = process.wait_or_kill(settings.grace).await;
                process.output.drain().await;
                let mut failure = response.into_failure();
                if let Some(code) = status.and_then(|s| s.code()) {
                    with_exit_code(&mut failure, code);
                }
                if failure.backtrace.is_empty() {
                    failure.backtrace = process.output.tail();
                }
                Err(failure)
            }
            Ended::Died(status) => {
                // What the process left in its group (a forked job child) goes with it.
                process.group.signal(Signal::SIGKILL);
                process.group.disarm();
                process.output.drain().await;
                // A response written just before the end may still be in the pipe.
                if let Some(response) = process.last_response().await {
                    if response.ok {
                        return response.into_result();
                    }
                    let mut failure = response.into_failure();
                    if let Some(code) = status.as_ref().ok().and_then(|s| s.code()) {
                        with_exit_code(&mut failure, code);
                    }
                    if failure.backtrace.is_empty() {
                        failure.backtrace = process.output.tail();
                    }
                    return Err(failure);
                }
                let how = match &status {
                    Ok(status) => describe_status(*status),
                    Err(e) => format!("cannot wait for it: {e}"),
                };
                let tail = process.output.tail();
                let last = tail
                    .iter()
                    .rev()
                    .find(|line| !line.trim().is_empty())
                    .map(|line| format!(": {}", line.trim()))
                    .unwrap_or_default();
                let error = if process.ready {
                    format!("PHP worker died: {how}{last}")
                } else {
                    self.start_failed();
                    format!("PHP worker failed to start: {how}{last}")
                };
                tracing::warn!(pid = process.pid(), "{error}");
                Err(JobFailure::new(DIRTY_EXIT_EXCEPTION, error).with_backtrace(tail))
            }
            Ended::TimedOut => {
                let limit = settings.timeout.unwrap_or_default();
                tracing::warn!(
                    pid = process.pid(),
                    "job timed out after {}; stopping its PHP worker",
                    humantime::format_duration(limit)
                );
                process.terminate(settings.grace).await;
                process.output.drain().await;
                Err(timed_out(limit, process.output.tail()))
            }
            Ended::NotReady(why) => {
                // Nothing of ours runs in it yet: no grace. A php-resque worker it runs (and that
                // worker's job child) must not keep taking jobs from Redis.
                process.group.signal(Signal::SIGKILL);
                let _ = process.group.wait().await;
                process.group.disarm();
                process.output.drain().await;
                self.start_failed();
                let printed = process.output.startup();
                let error = why.message(
                    &process.command,
                    self.inner.settings.start_timeout,
                    &printed,
                );
                tracing::error!(pid = process.pid(), "{error}");
                Err(JobFailure::new(DIRTY_EXIT_EXCEPTION, error).with_backtrace(printed))
            }
            Ended::Protocol(problem) => {
                tracing::error!(pid = process.pid(), "PHP runner protocol error: {problem}");
                process.terminate(settings.grace).await;
                process.output.drain().await;
                Err(JobFailure::new(
                    DIRTY_EXIT_EXCEPTION,
                    format!("PHP runner protocol error: {problem}"),
                )
                .with_backtrace(process.output.tail()))
            }
        }
    }
}

#[async_trait::async_trait]
impl Handler for PhpHandler {
    async fn perform(&self, job: &Job) -> Result<(), JobFailure> {
        self.run(job).await
    }
}

/// PHP processes told to exit that have not ended yet (see [`wait_retired`]).
static RETIRING: Retiring = Retiring {
    count: std::sync::atomic::AtomicUsize::new(0),
    ended: tokio::sync::Notify::const_new(),
};

struct Retiring {
    count: std::sync::atomic::AtomicUsize,
    ended: tokio::sync::Notify,
}

/// Counts one retiring process until dropped.
struct RetiringGuard;

impl RetiringGuard {
    fn new() -> Self {
        RETIRING
            .count
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        RetiringGuard
    }
}

impl Drop for RetiringGuard {
    fn drop(&mut self) {
        RETIRING
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        RETIRING.ended.notify_waiters();
    }
}

/// Waits until every PHP process told to exit (recycled, or idle when its pool was dropped at
/// shutdown) has ended, at most `limit`. The daemon calls it after the supervisor returned and
/// before the runtime shuts down: otherwise the retiring tasks die with the runtime and the
/// processes are killed (by us, or by systemd once the main process is gone) before PHP ran its
/// shutdown functions and destructors. Each process is killed after its handler's `grace` anyway.
pub async fn wait_retired(limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        loop {
            let ended = RETIRING.ended.notified();
            if RETIRING.count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            ended.await;
        }
    })
    .await;
}

/// Tells a process to exit (end of file on its requests: the runner exits 0, running the
/// application's shutdown functions), in the background; after `grace` its group is killed.
fn retire(mut process: PhpProcess, grace: Duration) {
    let span = tracing::Span::current();
    let guard = RetiringGuard::new();
    let task = async move {
        let _guard = guard;
        process.requests = None;
        let pid = process.pid();
        if let Some(status) = process.wait_or_kill(grace).await {
            tracing::debug!(pid, "PHP worker exited: {}", describe_status(status));
        }
        process.output.drain().await;
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(task.instrument(span));
        }
        // No runtime to wait in: dropping the process kills it.
        Err(_) => drop(task),
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let idle = std::mem::take(
            self.idle
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for process in idle {
            retire(process, self.settings.grace);
        }
    }
}

/// The request line for a job (runner.php's input).
fn request_line(job: &Job) -> Result<Vec<u8>, JobFailure> {
    let request = serde_json::json!({
        "class": job.class(),
        "args": job.payload.php_args(),
        "queue": job.queue,
        "id": job.id(),
        "payload": job.payload.to_value(),
    });
    let mut line = serde_json::to_vec(&request).map_err(|e| {
        JobFailure::new(
            RESQUE_EXCEPTION,
            format!("cannot encode the job for PHP: {e}"),
        )
    })?;
    line.push(b'\n');
    Ok(line)
}

fn sender(fd: OwnedFd) -> std::io::Result<pipe::Sender> {
    pipe::Sender::from_owned_fd(fd)
}

fn receiver(fd: OwnedFd) -> std::io::Result<pipe::Receiver> {
    pipe::Receiver::from_owned_fd(fd)
}

/// "Job called exit()" (the runner cannot know the code) gets the code the process exited with.
fn with_exit_code(failure: &mut JobFailure, code: i32) {
    if failure.exception == DIRTY_EXIT_EXCEPTION && failure.error == EXIT_CALLED {
        failure.error = format!("{EXIT_CALLED} with exit code {code}");
    }
}

fn round_ms(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// A message from the runner on fd 4.
#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    pid: Option<u64>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    dont_perform: bool,
    #[serde(default)]
    exception: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    backtrace: Vec<serde_json::Value>,
    #[serde(default)]
    memory: u64,
    #[serde(default)]
    exiting: bool,
}

/// The runner's answer for one job.
#[derive(Debug)]
struct Response {
    ok: bool,
    dont_perform: bool,
    exception: String,
    error: String,
    backtrace: Vec<String>,
    memory: u64,
    exiting: bool,
}

impl Response {
    fn into_failure(self) -> JobFailure {
        JobFailure::new(self.exception, self.error).with_backtrace(self.backtrace)
    }

    fn into_result(self) -> Result<(), JobFailure> {
        if self.ok {
            if self.dont_perform {
                tracing::debug!("job threw DontPerform: not performed, counted as done");
            }
            Ok(())
        } else {
            Err(self.into_failure())
        }
    }
}

enum Parsed {
    Ready(Option<u64>),
    Response(Response),
}

fn parse_message(line: &str) -> Result<Parsed, String> {
    let message: Message = serde_json::from_str(line).map_err(|e| {
        let shown: String = line.chars().take(200).collect();
        format!("unreadable message {shown:?}: {e}")
    })?;
    if message.ready {
        return Ok(Parsed::Ready(message.pid));
    }
    let Some(ok) = message.ok else {
        let shown: String = line.chars().take(200).collect();
        return Err(format!(
            "message is neither ready nor a response: {shown:?}"
        ));
    };
    let backtrace = message
        .backtrace
        .into_iter()
        .map(|line| match line {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
        .collect();
    Ok(Parsed::Response(Response {
        ok,
        dont_perform: message.dont_perform,
        exception: message
            .exception
            .unwrap_or_else(|| RESQUE_EXCEPTION.to_string()),
        error: message
            .error
            .unwrap_or_else(|| "the PHP runner gave no error message".to_string()),
        backtrace,
        memory: message.memory,
        exiting: message.exiting,
    }))
}

/// How one exchange with a process ended.
enum Ended {
    /// The runner answered.
    Response(Response),
    /// The process ended without answering (so far: [`PhpProcess::last_response`]).
    Died(std::io::Result<ExitStatus>),
    TimedOut,
    /// A new process did not reach the runner.
    NotReady(NotReady),
    /// The runner said something we do not understand.
    Protocol(String),
}

/// Why a new process was given up before it reported ready.
enum NotReady {
    /// It printed this line, php-resque's own worker starting.
    PhpResqueWorker(String),
    /// Nothing came from the runner within the start-up deadline.
    Deadline,
}

impl NotReady {
    fn message(&self, command: &str, limit: Duration, printed: &[String]) -> String {
        let last = printed
            .iter()
            .rev()
            .filter(|line| !line.trim().is_empty())
            .take(3)
            .map(|line| line.trim().chars().take(300).collect::<String>())
            .collect::<Vec<_>>();
        let said = if last.is_empty() {
            "it printed nothing".to_string()
        } else {
            let lines: Vec<String> = last.into_iter().rev().collect();
            format!("it printed: {}", lines.join(" | "))
        };
        match self {
            NotReady::PhpResqueWorker(line) => format!(
                "PHP worker failed to start: `{command}` started a php-resque worker instead of \
                 resque's runner (it printed {line:?}); stopped it. The entry point must hand over \
                 with `require getenv('RESQUE_RUNNER');` (ThinkPHP: the Queue controller needs the \
                 `runner` case in index(), see docs/thinkphp.md)"
            ),
            NotReady::Deadline => format!(
                "PHP worker failed to start: `{command}` did not reach resque's runner within {} \
                 ({said}); stopped it. The entry point must end with \
                 `require getenv('RESQUE_RUNNER');` (ThinkPHP: the Queue controller needs the \
                 `runner` case in index()); if the application only boots slowly, raise \
                 start_timeout",
                humantime::format_duration(limit)
            ),
        }
    }
}

/// One PHP process and its process group, killed with it when dropped before it has ended.
#[derive(Debug)]
struct PhpProcess {
    /// First, so that a dropped process is killed before its request pipe closes (which would ask
    /// the runner to exit cleanly, running shutdown functions for a job that was cancelled).
    group: ProcessGroup,
    /// The runner said it is ready (its bootstrap succeeded).
    ready: bool,
    /// The command line it was started with, for errors.
    command: String,
    /// Jobs completed.
    jobs: u32,
    /// Requests (the runner's fd 3). `None` closes it: the runner exits.
    requests: Option<pipe::Sender>,
    /// Responses (the runner's fd 4). `None` after end of file.
    responses: Option<Lines<pipe::Receiver>>,
    output: Output,
}

impl PhpProcess {
    fn pid(&self) -> i32 {
        self.group.pid()
    }

    /// Sends the request and waits for the answer, logging output meanwhile.
    async fn exchange(
        &mut self,
        request: &[u8],
        timeout: Option<Duration>,
        start_timeout: Duration,
        handler: &PhpHandler,
    ) -> Ended {
        let pid = self.pid();
        let timer = time_limit(timeout);
        tokio::pin!(timer);
        let start_deadline = time_limit((!self.ready).then_some(start_timeout));
        tokio::pin!(start_deadline);

        let requests = &mut self.requests;
        let feed = async move {
            let Some(requests) = requests else {
                return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
            };
            requests.write_all(request).await?;
            requests.flush().await
        };
        tokio::pin!(feed);
        let mut fed = false;

        loop {
            tokio::select! {
                status = self.group.wait() => return Ended::Died(status),
                line = next_line(&mut self.responses) => match line {
                    None => self.responses = None,
                    Some(line) => match parse_message(&line) {
                        Ok(Parsed::Ready(php_pid)) => {
                            self.ready = true;
                            self.output.stop_startup();
                            handler.started();
                            tracing::debug!(pid, php_pid, "PHP worker ready");
                        }
                        Ok(Parsed::Response(response)) => return Ended::Response(response),
                        Err(problem) => return Ended::Protocol(problem),
                    },
                },
                () = self.output.next(), if self.output.is_open() => {
                    if !self.ready {
                        let printed = self.output.startup();
                        if let Some(line) = printed
                            .iter()
                            .find(|line| line.trim_start().starts_with(PHP_RESQUE_WORKER_START))
                        {
                            return Ended::NotReady(NotReady::PhpResqueWorker(line.trim().to_string()));
                        }
                    }
                }
                () = &mut start_deadline, if !self.ready => return Ended::NotReady(NotReady::Deadline),
                written = &mut feed, if !fed => {
                    fed = true;
                    if let Err(e) = written {
                        // The process is gone or going: its exit tells the rest.
                        tracing::debug!(pid, "cannot send the job to the PHP worker: {e}");
                    }
                }
                () = &mut timer => return Ended::TimedOut,
            }
        }
    }

    /// The response the runner wrote before it ended, if any.
    async fn last_response(&mut self) -> Option<Response> {
        let read = async {
            while let Some(line) = next_line(&mut self.responses).await {
                match parse_message(&line) {
                    Ok(Parsed::Ready(_)) => self.ready = true,
                    Ok(Parsed::Response(response)) => return Some(response),
                    Err(_) => return None,
                }
            }
            None
        };
        tokio::time::timeout(OUTPUT_DRAIN, read)
            .await
            .ok()
            .flatten()
    }

    /// TERM to the group, up to `grace` for it to go, then KILL to what is left.
    async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.group.terminate(grace, &mut self.output).await
    }

    /// Up to `grace` for the process to end by itself, then KILL to what is left of its group.
    async fn wait_or_kill(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.group.wait_or_kill(grace, &mut self.output).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse() {
        assert!(matches!(
            parse_message(r#"{"ready":true,"pid":12,"php":"8.2.0","isolation":"pool"}"#),
            Ok(Parsed::Ready(Some(12)))
        ));
        let Ok(Parsed::Response(r)) = parse_message(
            r##"{"ok":false,"exception":"RuntimeException","error":"x","backtrace":["#0 a","#1 {main}"],"memory":2097152}"##,
        ) else {
            panic!("not a response");
        };
        assert!(!r.ok && !r.exiting);
        assert_eq!(r.memory, 2097152);
        let failure = r.into_failure();
        assert_eq!(failure.exception, "RuntimeException");
        assert_eq!(failure.backtrace, vec!["#0 a", "#1 {main}"]);
        assert!(parse_message("Fatal error").is_err());
        assert!(parse_message(r#"{"memory":1}"#).is_err());
    }
}
