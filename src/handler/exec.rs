//! The `exec` handler: one process per job (DESIGN §4).
//!
//! The command runs without a shell, in its own process group, with the payload JSON on stdin and
//! the job described in `RESQUE_*` variables. The service manager's variables (`NOTIFY_SOCKET`,
//! `WATCHDOG_*`, `LISTEN_*`) are removed so a job cannot speak for the daemon. stdout and stderr
//! are logged line by line under the caller's span; the last [`STDERR_TAIL`] stderr lines become
//! the failure's backtrace.
//!
//! Killing: on timeout the group gets TERM, then `grace`, then KILL. When the `perform` future is
//! dropped (USR1, forced shutdown) the group gets KILL at once. A job that exits on its own is not
//! followed: processes it left behind in its group keep running, and what they write after the
//! job exited is logged for at most [`OUTPUT_DRAIN`].

use super::{Handler, Job, JobFailure};
use crate::protocol::DIRTY_EXIT_EXCEPTION;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// How many stderr lines a failure record keeps.
pub const STDERR_TAIL: usize = 20;

/// How long output is still read after the job process is gone, when something it left behind
/// keeps its stdout or stderr open.
pub const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// Longest line logged as one; longer output is split (a job printing megabytes without a newline
/// must not grow our memory).
const MAX_LINE: usize = 16 * 1024;

/// How often, during the grace period, we look whether the job's group is gone.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// The exception class when the command cannot be started at all.
const SPAWN_EXCEPTION: &str = "RuntimeException";

/// Variables the service manager gives the daemon, removed from every job's environment.
const DAEMON_ONLY_ENV: [&str; 6] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// How jobs are run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSettings {
    /// argv, run without a shell. Never empty (the config checks).
    pub command: Vec<String>,
    /// A job running longer fails; its group gets TERM, `grace`, then KILL. `None`: no limit.
    pub timeout: Option<Duration>,
    /// Time between TERM and KILL on timeout.
    pub grace: Duration,
    /// The job's working directory; `None` keeps the daemon's.
    pub working_dir: Option<PathBuf>,
    /// Extra environment, applied after the `RESQUE_*` variables.
    pub env: Vec<(String, String)>,
}

impl Default for ExecSettings {
    fn default() -> Self {
        ExecSettings {
            command: Vec::new(),
            timeout: None,
            grace: Duration::from_secs(10),
            working_dir: None,
            env: Vec::new(),
        }
    }
}

/// Runs each job as a process of [`ExecSettings::command`].
#[derive(Debug, Clone)]
pub struct ExecHandler {
    settings: ExecSettings,
}

impl ExecHandler {
    pub fn new(settings: ExecSettings) -> Self {
        ExecHandler { settings }
    }

    pub fn settings(&self) -> &ExecSettings {
        &self.settings
    }

    fn command(&self, job: &Job) -> Result<Command, JobFailure> {
        let Some((program, args)) = self.settings.command.split_first() else {
            return Err(JobFailure::new(
                SPAWN_EXCEPTION,
                "cannot run job: the exec command is empty",
            ));
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        for name in DAEMON_ONLY_ENV {
            cmd.env_remove(name);
        }
        cmd.env("RESQUE_JOB_ID", job.id().unwrap_or_default())
            .env("RESQUE_JOB_CLASS", job.class())
            .env("RESQUE_QUEUE", &job.queue)
            .env("RESQUE_WORKER", &job.worker_id);
        cmd.envs(self.settings.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.settings.working_dir {
            cmd.current_dir(dir);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        Ok(cmd)
    }

    fn spawn(&self, job: &Job) -> Result<JobProcess, JobFailure> {
        let mut cmd = self.command(job)?;
        let program = self.settings.command.first().map_or("", String::as_str);
        let spawn_error = |e: &dyn std::fmt::Display| {
            let place = match &self.settings.working_dir {
                Some(dir) => format!(" in {}", dir.display()),
                None => String::new(),
            };
            JobFailure::new(SPAWN_EXCEPTION, format!("cannot run {program}{place}: {e}"))
        };
        let child = cmd.spawn().map_err(|e| spawn_error(&e))?;
        // `id()` is `None` only once the child has been reaped, which cannot have happened yet.
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| spawn_error(&"the process has no pid"))?;
        Ok(JobProcess {
            pgid: Pid::from_raw(pid),
            armed: true,
            child,
        })
    }
}

#[async_trait::async_trait]
impl Handler for ExecHandler {
    async fn perform(&self, job: &Job) -> Result<(), JobFailure> {
        let mut process = self.spawn(job)?;
        let stdin = process.child.stdin.take();
        let mut output = Output::new(process.child.stdout.take(), process.child.stderr.take());

        let feed = async move {
            if let Some(mut stdin) = stdin {
                match stdin.write_all(job.payload.raw().as_bytes()).await {
                    Ok(()) => {}
                    // The job did not read its payload: that is its business.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                    Err(e) => tracing::debug!("cannot write the payload to the job's stdin: {e}"),
                }
                // Dropping `stdin` closes it: the job sees end of file.
            }
        };
        tokio::pin!(feed);
        let mut fed = false;

        let timer = async {
            match self.settings.timeout {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timer);

        let waited = loop {
            tokio::select! {
                status = process.child.wait() => break Some(status),
                () = output.next(), if output.is_open() => {}
                () = &mut feed, if !fed => fed = true,
                () = &mut timer => break None,
            }
        };

        let Some(waited) = waited else {
            let limit = self.settings.timeout.unwrap_or_default();
            process.terminate(&mut output, self.settings.grace).await;
            output.drain().await;
            return Err(JobFailure::new(
                DIRTY_EXIT_EXCEPTION,
                format!("Job timed out after {}", humantime::format_duration(limit)),
            )
            .with_backtrace(output.into_tail()));
        };
        // The job ended by itself: what it left behind is not ours to kill.
        process.armed = false;
        output.drain().await;

        let status = waited.map_err(|e| {
            JobFailure::new(
                DIRTY_EXIT_EXCEPTION,
                format!("cannot wait for the job process: {e}"),
            )
        })?;
        if status.success() {
            return Ok(());
        }
        Err(JobFailure::new(DIRTY_EXIT_EXCEPTION, describe_exit(status))
            .with_backtrace(output.into_tail()))
    }
}

/// The failure message for an unsuccessful exit status.
fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("Job exited with exit code {code}");
    }
    match status.signal() {
        Some(number) => {
            let name = match Signal::try_from(number) {
                Ok(signal) => signal.as_str().to_string(),
                Err(_) => format!("signal {number}"),
            };
            let core = if status.core_dumped() {
                " (core dumped)"
            } else {
                ""
            };
            format!("Job exited abnormally: killed by signal {name}{core}")
        }
        None => format!("Job exited abnormally: {status}"),
    }
}

/// The job process and its process group. Dropped while armed, it kills the whole group.
struct JobProcess {
    /// The group: the job's pid, as `process_group(0)` made it.
    pgid: Pid,
    /// Whether the group is still ours to kill. Cleared once the job ended by itself, because then
    /// the group may be gone and its id taken by someone else.
    armed: bool,
    /// Declared last so [`Drop`] signals the group while the leader is not yet reaped: an
    /// unreaped leader keeps the group id from being reused.
    child: Child,
}

impl JobProcess {
    fn signal(&self, signal: Signal) {
        match killpg(self.pgid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => tracing::warn!(
                "cannot send {signal} to job process group {}: {e}",
                self.pgid
            ),
        }
    }

    /// Whether any process is left in the group (zombies included).
    fn group_alive(&self) -> bool {
        !matches!(killpg(self.pgid, None), Err(nix::errno::Errno::ESRCH))
    }

    /// TERM to the group, up to `grace` for it to go, KILL to what is left, and reap the leader.
    /// Output keeps being logged meanwhile.
    async fn terminate(&mut self, output: &mut Output, grace: Duration) {
        self.signal(Signal::SIGTERM);
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        let mut reaped = false;
        loop {
            // Only after the leader is reaped can an empty group be told from a zombie leader.
            if reaped && !self.group_alive() {
                break;
            }
            tokio::select! {
                _ = self.child.wait(), if !reaped => reaped = true,
                () = output.next(), if output.is_open() => {}
                () = tokio::time::sleep(GROUP_POLL), if reaped => {}
                () = &mut deadline => break,
            }
        }
        if !reaped || self.group_alive() {
            self.signal(Signal::SIGKILL);
        }
        if !reaped {
            if let Err(e) = self.child.wait().await {
                tracing::warn!("cannot wait for the killed job process: {e}");
            }
        }
        self.armed = false;
    }
}

impl Drop for JobProcess {
    fn drop(&mut self) {
        if self.armed {
            // `kill_on_drop` only reaches the leader; take its children along.
            self.signal(Signal::SIGKILL);
        }
    }
}

/// The job's stdout and stderr, logged line by line, with the tail of stderr kept.
struct Output {
    stdout: Option<Lines<ChildStdout>>,
    stderr: Option<Lines<ChildStderr>>,
    tail: VecDeque<String>,
}

impl Output {
    fn new(stdout: Option<ChildStdout>, stderr: Option<ChildStderr>) -> Self {
        Output {
            stdout: stdout.map(Lines::new),
            stderr: stderr.map(Lines::new),
            tail: VecDeque::with_capacity(STDERR_TAIL),
        }
    }

    fn is_open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    /// Logs the next line from either stream, or notes an end of file. Cancel safe. Never
    /// completes once both streams are closed.
    async fn next(&mut self) {
        tokio::select! {
            line = next_line(&mut self.stdout) => match line {
                Some(line) => {
                    tracing::info!(target: "resque::job_output", stream = "stdout", "{}", line)
                }
                None => self.stdout = None,
            },
            line = next_line(&mut self.stderr) => match line {
                Some(line) => {
                    tracing::warn!(target: "resque::job_output", stream = "stderr", "{}", line);
                    if self.tail.len() == STDERR_TAIL {
                        self.tail.pop_front();
                    }
                    self.tail.push_back(line);
                }
                None => self.stderr = None,
            },
        }
    }

    /// Logs what is left, until both streams end or [`OUTPUT_DRAIN`] has passed.
    async fn drain(&mut self) {
        let read_all = async {
            while self.is_open() {
                self.next().await;
            }
        };
        if tokio::time::timeout(OUTPUT_DRAIN, read_all).await.is_err() {
            tracing::debug!("job output still open after the job ended; no longer read");
        }
        self.stdout = None;
        self.stderr = None;
    }

    fn into_tail(self) -> Vec<String> {
        self.tail.into()
    }
}

/// The next line of an open stream; pending forever for a closed one.
async fn next_line<R: AsyncRead + Unpin>(lines: &mut Option<Lines<R>>) -> Option<String> {
    match lines {
        Some(lines) => lines.next_line().await,
        None => std::future::pending().await,
    }
}

/// Lines of a byte stream, any encoding (invalid UTF-8 is replaced), at most [`MAX_LINE`] bytes
/// each.
struct Lines<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    fn new(reader: R) -> Self {
        Lines {
            reader: BufReader::new(reader),
            line: Vec::new(),
        }
    }

    /// The next line without its `\n` (and `\r`); `None` at end of file. A read error counts as end
    /// of file. Cancel safe: a partial line stays in `self.line`.
    async fn next_line(&mut self) -> Option<String> {
        loop {
            let available = match self.reader.fill_buf().await {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("cannot read job output: {e}");
                    &[]
                }
            };
            if available.is_empty() {
                return (!self.line.is_empty()).then(|| self.take());
            }
            let room = MAX_LINE - self.line.len();
            if let Some(end) = available.iter().take(room).position(|&b| b == b'\n') {
                self.line.extend_from_slice(&available[..end]);
                self.reader.consume(end + 1);
                return Some(self.take());
            }
            let used = available.len().min(room);
            self.line.extend_from_slice(&available[..used]);
            self.reader.consume(used);
            if self.line.len() >= MAX_LINE {
                return Some(self.take());
            }
        }
    }

    fn take(&mut self) -> String {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let text = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        text
    }
}
