//! Child-process plumbing shared by the handlers that run jobs in other processes (`exec`, `php`).
//!
//! A child runs in its own process group, so that what it starts can be signalled with it, and
//! without the service manager's variables, so that it cannot speak for the daemon. Its stdout and
//! stderr are logged line by line under the caller's span, the last [`STDERR_TAIL`] stderr lines
//! kept for failure records. Stopping it is TERM to the group, a grace period, then KILL.

use super::JobFailure;
use crate::protocol::DIRTY_EXIT_EXCEPTION;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// How many stderr lines a failure record keeps.
pub const STDERR_TAIL: usize = 20;

/// How long output is still read after a child is gone, when something it left behind keeps its
/// stdout or stderr open.
pub const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// Longest output line logged as one; longer output is split (a job printing megabytes without a
/// newline must not grow our memory).
const MAX_LINE: usize = 16 * 1024;

/// How often, during the grace period, we look whether a group is gone.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// Variables that configure the daemon, or that the service manager gives it, removed from every
/// child's environment: a job must not speak for the daemon (`NOTIFY_SOCKET`), read its secrets
/// (`REDIS_BACKEND=redis://:password@…`, `CREDENTIALS_DIRECTORY`) or its control socket
/// (`RUNTIME_DIRECTORY`). Every inherited `RESQUE_*` goes too ([`DAEMON_ENV_PREFIXES`]); a
/// handler's `env` and `pass_env` put back what an application needs.
pub const DAEMON_ENV: [&str; 24] = [
    // php-resque's configuration variables, read by the daemon (config.rs).
    "QUEUE",
    "COUNT",
    "INTERVAL",
    "PIDFILE",
    "VERBOSE",
    "VVERBOSE",
    "LOGGING",
    "APP_INCLUDE",
    "REDIS_BACKEND",
    "REDIS_BACKEND_DB",
    "PREFIX",
    "BLOCKING",
    // systemd's, for the daemon: credentials, runtime directory, notify socket, activation.
    "CREDENTIALS_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "NOTIFY_SOCKET",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "MAINPID",
    "MANAGERPID",
    "SYSTEMD_EXEC_PID",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
];

/// Prefixes of variable names removed like [`DAEMON_ENV`]: the daemon's own `RESQUE_*`
/// (`RESQUE_CONFIG`, `RESQUE_LOG_TARGET`), `WATCHDOG_*` and `LISTEN_*`. The `RESQUE_*`
/// variables a handler sets for a job (`RESQUE_JOB_ID`, `RESQUE_RUNNER`, …) are set after.
pub const DAEMON_ENV_PREFIXES: [&str; 3] = ["RESQUE_", "WATCHDOG_", "LISTEN_"];

/// Whether a variable of the daemon's environment stays out of its children's.
pub fn is_daemon_env(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    DAEMON_ENV.contains(&name) || DAEMON_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A command for `program`, run without a shell, in `working_dir` (`None`: the daemon's), without
/// the daemon's variables ([`is_daemon_env`]) except those named in `pass_env`. Set its stdin and
/// environment, then start it with [`ProcessGroup::spawn`].
pub(super) fn child_command(
    program: impl AsRef<OsStr>,
    working_dir: Option<&Path>,
    pass_env: &[String],
) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if is_daemon_env(&name) && !pass_env.iter().any(|p| OsStr::new(p) == name) {
            cmd.env_remove(&name);
        }
    }
    if let Some(dir) = working_dir {
        cmd.current_dir(dir);
    }
    cmd
}

/// " in DIR" for a spawn error, when the child was to run elsewhere than the daemon: a missing
/// working directory fails the spawn with the same error as a missing program.
pub(super) fn spawn_place(working_dir: Option<&Path>) -> String {
    match working_dir {
        Some(dir) => format!(" in {}", dir.display()),
        None => String::new(),
    }
}

/// Completes after `limit`; never without one.
pub(super) async fn time_limit(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

/// The failure of a job that ran longer than `limit`, with the stderr tail as its backtrace.
pub(super) fn timed_out(limit: Duration, tail: Vec<String>) -> JobFailure {
    JobFailure::new(
        DIRTY_EXIT_EXCEPTION,
        format!("Job timed out after {}", humantime::format_duration(limit)),
    )
    .with_backtrace(tail)
}

/// An exit status in words: `exit code 255`, `killed by signal SIGKILL`.
pub(super) fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(number) => {
            // Real-time signals have no name.
            let name = match Signal::try_from(number) {
                Ok(signal) => signal.as_str().to_string(),
                Err(_) => format!("{number}"),
            };
            let core = if status.core_dumped() {
                " (core dumped)"
            } else {
                ""
            };
            format!("killed by signal {name}{core}")
        }
        None => format!("{status}"),
    }
}

/// A child process and its process group. Dropped while armed, it kills the whole group.
#[derive(Debug)]
pub(super) struct ProcessGroup {
    /// What the child is, for log messages ("job", "PHP worker").
    kind: &'static str,
    /// The group: the child's pid, as `process_group(0)` made it.
    pgid: Pid,
    /// Whether the group is still ours to kill. Cleared once the child has ended, because then the
    /// group may be gone and its id taken by someone else.
    armed: bool,
    /// Dropped after [`Drop`] has signalled the group: an unreaped leader keeps the group id from
    /// being reused.
    child: Child,
}

impl ProcessGroup {
    /// Starts `cmd` as the leader of a new process group, its stdout and stderr piped (take them
    /// with [`ProcessGroup::take_output`]).
    pub(super) fn spawn(mut cmd: Command, kind: &'static str) -> std::io::Result<Self> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        // `id()` is `None` only once the child has been reaped, which cannot have happened yet.
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| std::io::Error::other("the process has no pid"))?;
        Ok(ProcessGroup {
            kind,
            pgid: Pid::from_raw(pid),
            armed: true,
            child,
        })
    }

    /// The leader's pid (and the group's id).
    pub(super) fn pid(&self) -> i32 {
        self.pgid.as_raw()
    }

    pub(super) fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub(super) fn take_output(&mut self) -> Output {
        Output::new(self.child.stdout.take(), self.child.stderr.take())
    }

    /// Waits for the leader to end and reaps it. Cancel safe. The group stays armed: see
    /// [`ProcessGroup::disarm`].
    pub(super) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// The leader's status if it has ended (and is then reaped), without waiting.
    pub(super) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Leaves the group alone from now on, dropped or not: for a leader that has ended.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Sends `signal` to every process in the group. A group already gone is not an error.
    pub(super) fn signal(&self, signal: Signal) {
        match killpg(self.pgid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(
                "cannot send {signal} to {} process group {}: {e}",
                self.kind,
                self.pgid
            ),
        }
    }

    /// Whether any process is left in the group (zombies included).
    fn group_alive(&self) -> bool {
        !matches!(killpg(self.pgid, None), Err(Errno::ESRCH))
    }

    /// TERM to the group, then [`ProcessGroup::wait_or_kill`].
    pub(super) async fn terminate(
        &mut self,
        grace: Duration,
        output: &mut Output,
    ) -> Option<ExitStatus> {
        if self.armed {
            self.signal(Signal::SIGTERM);
        }
        self.wait_or_kill(grace, output).await
    }

    /// Waits up to `grace` for the whole group to end, then KILLs what is left of it, reaps the
    /// leader and disarms. Output keeps being logged meanwhile. The leader's status, if it could
    /// be had; `None` at once when already disarmed.
    pub(super) async fn wait_or_kill(
        &mut self,
        grace: Duration,
        output: &mut Output,
    ) -> Option<ExitStatus> {
        if !self.armed {
            return None;
        }
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        let mut status = None;
        let mut reaped = false;
        loop {
            // Only after the leader is reaped can an empty group be told from a zombie leader.
            if reaped && !self.group_alive() {
                break;
            }
            tokio::select! {
                waited = self.child.wait(), if !reaped => {
                    reaped = true;
                    status = waited.ok();
                }
                () = output.next(), if output.is_open() => {}
                () = tokio::time::sleep(GROUP_POLL), if reaped => {}
                () = &mut deadline => break,
            }
        }
        if !reaped || self.group_alive() {
            self.signal(Signal::SIGKILL);
        }
        if !reaped {
            match self.child.wait().await {
                Ok(waited) => status = Some(waited),
                Err(e) => tracing::warn!("cannot wait for the killed {} process: {e}", self.kind),
            }
        }
        self.armed = false;
        status
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.armed {
            // `kill_on_drop` only reaches the leader; take what it started (a forked PHP job, a
            // job's helpers) along.
            self.signal(Signal::SIGKILL);
        }
    }
}

/// A child's stdout and stderr, logged line by line, with the tail of stderr kept.
#[derive(Debug)]
pub(super) struct Output {
    stdout: Option<Lines<ChildStdout>>,
    stderr: Option<Lines<ChildStderr>>,
    tail: VecDeque<String>,
}

impl Output {
    fn new(stdout: Option<ChildStdout>, stderr: Option<ChildStderr>) -> Self {
        Output {
            stdout: stdout.map(|s| Lines::new(s, MAX_LINE)),
            stderr: stderr.map(|s| Lines::new(s, MAX_LINE)),
            tail: VecDeque::with_capacity(STDERR_TAIL),
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    fn log_stdout(line: &str) {
        tracing::info!(target: "resque::job_output", stream = "stdout", "{}", line);
    }

    fn log_stderr(&mut self, line: String) {
        tracing::warn!(target: "resque::job_output", stream = "stderr", "{}", line);
        if self.tail.len() == STDERR_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// Logs the next line from either stream, or notes an end of file. Cancel safe. Never
    /// completes once both streams are closed.
    pub(super) async fn next(&mut self) {
        tokio::select! {
            line = next_line(&mut self.stdout) => match line {
                Some(line) => Self::log_stdout(&line),
                None => self.stdout = None,
            },
            line = next_line(&mut self.stderr) => match line {
                Some(line) => self.log_stderr(line),
                None => self.stderr = None,
            },
        }
    }

    /// Logs the lines already written, without waiting for more. Read straight from the pipes,
    /// because the runtime may not have noticed yet that they are readable. A last line without a
    /// newline is logged too, so that it goes with the job that wrote it.
    pub(super) fn drain_ready(&mut self) {
        if let Some(stdout) = &mut self.stdout {
            let (lines, open) = stdout.ready_lines();
            lines.iter().for_each(|line| Self::log_stdout(line));
            if !open {
                self.stdout = None;
            }
        }
        if let Some(stderr) = &mut self.stderr {
            let (lines, open) = stderr.ready_lines();
            if !open {
                self.stderr = None;
            }
            lines.into_iter().for_each(|line| self.log_stderr(line));
        }
    }

    /// Logs what is left, until both streams end or [`OUTPUT_DRAIN`] has passed.
    pub(super) async fn drain(&mut self) {
        let read_all = async {
            while self.is_open() {
                self.next().await;
            }
        };
        if tokio::time::timeout(OUTPUT_DRAIN, read_all).await.is_err() {
            tracing::debug!("child output still open after the child ended; no longer read");
        }
        self.stdout = None;
        self.stderr = None;
    }

    /// The last [`STDERR_TAIL`] stderr lines, oldest first.
    pub(super) fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }

    /// Forgets the stderr tail: a long-lived child starts a new job.
    pub(super) fn clear_tail(&mut self) {
        self.tail.clear();
    }
}

/// The next line of an open stream; pending forever for a closed one.
pub(super) async fn next_line<R: AsyncRead + Unpin>(
    lines: &mut Option<Lines<R>>,
) -> Option<String> {
    match lines {
        Some(lines) => lines.next_line().await,
        None => std::future::pending().await,
    }
}

/// Lines of a byte stream, any encoding (invalid UTF-8 is replaced), at most `max` bytes each.
#[derive(Debug)]
pub(super) struct Lines<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    max: usize,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    pub(super) fn new(reader: R, max: usize) -> Self {
        Lines {
            reader: BufReader::new(reader),
            line: Vec::new(),
            max,
        }
    }

    /// The next line without its `\n` (and `\r`); `None` at end of file. A read error counts as end
    /// of file. Cancel safe: a partial line stays in `self.line`.
    pub(super) async fn next_line(&mut self) -> Option<String> {
        loop {
            let available = match self.reader.fill_buf().await {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("cannot read from a child process: {e}");
                    &[]
                }
            };
            if available.is_empty() {
                return (!self.line.is_empty()).then(|| self.take());
            }
            let room = self.max.saturating_sub(self.line.len());
            if let Some(end) = available.iter().take(room).position(|&b| b == b'\n') {
                self.line.extend_from_slice(&available[..end]);
                self.reader.consume(end + 1);
                return Some(self.take());
            }
            let used = available.len().min(room);
            self.line.extend_from_slice(&available[..used]);
            self.reader.consume(used);
            if self.line.len() >= self.max {
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

    /// Adds bytes read, splitting them into lines.
    fn push(&mut self, mut bytes: &[u8], lines: &mut Vec<String>) {
        while !bytes.is_empty() {
            let room = self.max.saturating_sub(self.line.len()).max(1);
            if let Some(end) = bytes.iter().take(room).position(|&b| b == b'\n') {
                self.line.extend_from_slice(&bytes[..end]);
                lines.push(self.take());
                bytes = &bytes[end + 1..];
                continue;
            }
            let used = bytes.len().min(room);
            self.line.extend_from_slice(&bytes[..used]);
            bytes = &bytes[used..];
            if self.line.len() >= self.max {
                lines.push(self.take());
            }
        }
    }
}

impl<R: AsyncRead + Unpin + AsRawFd> Lines<R> {
    /// Everything already written, as lines (a last partial line included), without waiting;
    /// and whether the stream is still open.
    fn ready_lines(&mut self) -> (Vec<String>, bool) {
        let mut lines = Vec::new();
        let buffered = self.reader.buffer().to_vec();
        self.reader.consume(buffered.len());
        self.push(&buffered, &mut lines);
        // The pipe is non-blocking (the runtime made it so): this reads what is there.
        let fd = self.reader.get_ref().as_raw_fd();
        let mut chunk = [0u8; 8192];
        let mut open = true;
        loop {
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => self.push(&chunk[..n], &mut lines),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    tracing::debug!("cannot read from a child process: {e}");
                    open = false;
                    break;
                }
            }
        }
        if !self.line.is_empty() {
            lines.push(self.take());
        }
        (lines, open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_variables_are_known() {
        for name in [
            "REDIS_BACKEND",
            "QUEUE",
            "RESQUE_CONFIG",
            "RESQUE_LOG_TARGET",
            "CREDENTIALS_DIRECTORY",
            "WATCHDOG_USEC",
            "LISTEN_FDNAMES",
            "JOURNAL_STREAM",
        ] {
            assert!(is_daemon_env(OsStr::new(name)), "{name}");
        }
        for name in ["PATH", "HOME", "LANG", "APP_ENV", "REDIS_HOST"] {
            assert!(!is_daemon_env(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn statuses_read_well() {
        assert_eq!(describe_status(ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert_eq!(
            describe_status(ExitStatus::from_raw(9)),
            "killed by signal SIGKILL"
        );
    }

    #[test]
    fn lines_split_long_output() {
        let mut lines = Lines::new(tokio::io::empty(), 4);
        let mut out = Vec::new();
        lines.push(b"ab\ncdefgh\r\nij", &mut out);
        assert_eq!(out, vec!["ab", "cdef", "gh"]);
        assert_eq!(lines.take(), "ij");
    }
}
