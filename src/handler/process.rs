//! Child-process plumbing shared by the handlers that run jobs in other processes (`exec`, `php`).
//!
//! A child runs in its own process group, so that what it starts can be signalled with it, and
//! without the service manager's variables, so that it cannot speak for the daemon. Its stdout and
//! stderr are logged line by line under the caller's span, the last [`STDERR_TAIL`] stderr lines
//! kept for failure records. Stopping it is TERM to the group, a grace period, then KILL.
//!
//! Every read of a child's output is bounded: in memory (a line is at most [`MAX_LINE`] bytes,
//! read [`CHUNK`] bytes at a time), in what reaches the log ([`LOG_BURST`], then [`LOG_RATE`];
//! the excess is dropped with one warning saying how much), and in time (after the child has
//! ended, at most [`OUTPUT_DRAIN`]; without waiting at all, at most [`READY_LIMIT`] bytes). So a
//! process a job leaves behind, writing to the inherited stdout in a loop, can neither grow our
//! memory nor hold up the job's outcome.

use super::JobFailure;
use crate::protocol::DIRTY_EXIT_EXCEPTION;
use crate::{limits, reaper};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// How many stderr lines a failure record keeps.
pub const STDERR_TAIL: usize = 20;

/// How long output is still read after a child is gone, when something it left behind keeps its
/// stdout or stderr open.
pub const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// Longest output line logged as one; longer output is split (a job printing megabytes without a
/// newline must not grow our memory).
const MAX_LINE: usize = 16 * 1024;

/// Job output logged at once, at most, per child process: a job can print a large report, but a
/// runaway one (or something it left behind, writing in a loop) must not flood the journal or
/// keep the daemon busy. Beyond it, output is logged at [`LOG_RATE`]; the rest is dropped and
/// counted, with one warning saying how much.
pub const LOG_BURST: u64 = 1024 * 1024;

/// Job output logged per second once [`LOG_BURST`] is spent.
pub const LOG_RATE: u64 = 64 * 1024;

/// What a logged line costs on top of its bytes (about the size of a log record's own fields),
/// so that a flood of short lines is bounded as well as a flood of bytes.
const LINE_COST: u64 = 64;

/// The pause before each read once output is being dropped, after [`Output::relax`]: what a
/// job left writing to its output must not keep a core busy while we wait for its group to go.
const RELAXED_PAUSE: Duration = Duration::from_millis(20);

/// Bytes read from a child's stdout or stderr at a time (one buffer per stream per child).
const CHUNK: usize = 8 * 1024;

/// Most bytes [`Output::drain_ready`] reads from a stream: more than a pipe holds (64 KiB by
/// default, 1 MiB at most without privileges), so reaching it means something keeps writing.
const READY_LIMIT: usize = 1024 * 1024 + CHUNK;

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

/// The failure for a process that could not be started (`what`: "cannot run …"). Running out of
/// file descriptors is the worker's problem, not the job's: that one is
/// [`JobFailure::worker_side`], naming the limit to raise.
pub(super) fn spawn_failure(exception: &str, what: &str, e: &std::io::Error) -> JobFailure {
    if limits::is_out_of_files(e) {
        JobFailure::worker_side(format!("{what}: {}", limits::out_of_files(e)))
    } else {
        JobFailure::new(exception, format!("{what}: {e}"))
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
    /// Keeps the orphan reaper off the child while we may wait for it; dropped after `child`.
    _registration: reaper::Registration,
}

impl ProcessGroup {
    /// Starts `cmd` as the leader of a new process group, its stdout and stderr piped (take them
    /// with [`ProcessGroup::take_output`]).
    pub(super) fn spawn(mut cmd: Command, kind: &'static str) -> std::io::Result<Self> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // Held until the child is registered, so that the orphan reaper cannot take it.
        let spawning = reaper::spawning();
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
            _registration: spawning.register(pid),
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
        output.relax();
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
///
/// Reading is bounded: at most [`MAX_LINE`] bytes of a line are held, and what is logged is
/// limited to [`LOG_BURST`] at once, then [`LOG_RATE`]. Output beyond that is still read (so the
/// child never blocks on a full pipe) but dropped, counted, and reported in one warning by
/// [`Output::report_dropped`] (called by the drains, and when the output is dropped).
#[derive(Debug)]
pub(super) struct Output {
    stdout: Option<Stream<ChildStdout>>,
    stderr: Option<Stream<ChildStderr>>,
    sink: Sink,
    /// Set by [`Output::relax`].
    relaxed: bool,
}

/// What [`Output::drain_ready`] found.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Drained {
    /// Bytes read.
    pub(super) bytes: usize,
    /// [`READY_LIMIT`] was reached on a stream: it is being written to as we read.
    pub(super) still_written: bool,
}

impl Drained {
    fn add(&mut self, read: usize) {
        self.bytes += read;
        self.still_written |= read >= READY_LIMIT;
    }
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stdout,
    Stderr,
}

impl Output {
    fn new(stdout: Option<ChildStdout>, stderr: Option<ChildStderr>) -> Self {
        Output {
            stdout: stdout.map(Stream::new),
            stderr: stderr.map(Stream::new),
            sink: Sink::new(),
            relaxed: false,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    /// From now on, read slowly while output is being dropped: the child has ended or is being
    /// stopped, and nothing waits for its output any more but whatever it left behind writing.
    pub(super) fn relax(&mut self) {
        self.relaxed = true;
    }

    /// Handles the next chunk from either stream, or notes an end of file. Cancel safe. Never
    /// completes once both streams are closed.
    pub(super) async fn next(&mut self) {
        if self.relaxed && self.sink.dropping {
            tokio::time::sleep(RELAXED_PAUSE).await;
        }
        tokio::select! {
            n = read_chunk(&mut self.stdout) => {
                if let Some(stream) = &mut self.stdout {
                    if !stream.take(n, Kind::Stdout, &mut self.sink) {
                        self.stdout = None;
                    }
                }
            }
            n = read_chunk(&mut self.stderr) => {
                if let Some(stream) = &mut self.stderr {
                    if !stream.take(n, Kind::Stderr, &mut self.sink) {
                        self.stderr = None;
                    }
                }
            }
        }
    }

    /// Handles what is already written, without waiting for more, and at most
    /// [`READY_LIMIT`] bytes of each stream. Read straight from the pipes, because the runtime
    /// may not have noticed yet that they are readable. A last line without a newline is logged
    /// too, so that it goes with the job that wrote it.
    ///
    /// Says how much was read, and whether a stream was still being written to when the limit
    /// was reached: a pipe never holds that much, so something (a process the job left behind)
    /// keeps writing.
    pub(super) fn drain_ready(&mut self) -> Drained {
        let mut drained = Drained::default();
        if let Some(stream) = &mut self.stdout {
            let (open, read) = stream.take_ready(Kind::Stdout, &mut self.sink);
            drained.add(read);
            if !open {
                self.stdout = None;
            }
        }
        if let Some(stream) = &mut self.stderr {
            let (open, read) = stream.take_ready(Kind::Stderr, &mut self.sink);
            drained.add(read);
            if !open {
                self.stderr = None;
            }
        }
        self.report_dropped();
        drained
    }

    /// Handles what is left, until both streams end or [`OUTPUT_DRAIN`] has passed, then closes
    /// them (a process still writing to them gets EPIPE).
    pub(super) async fn drain(&mut self) {
        self.relax();
        let read_all = async {
            while self.is_open() {
                self.next().await;
            }
        };
        if tokio::time::timeout(OUTPUT_DRAIN, read_all).await.is_err() {
            tracing::debug!("child output still open after the child ended; no longer read");
        }
        for (stream, kind) in [
            (self.stdout.take().map(|s| s.partial), Kind::Stdout),
            (self.stderr.take().map(|s| s.partial), Kind::Stderr),
        ] {
            if let Some(partial) = stream.filter(|p| !p.is_empty()) {
                self.sink.line(kind, &partial);
            }
        }
        self.report_dropped();
    }

    /// One warning for the output dropped since the last report, if any.
    pub(super) fn report_dropped(&mut self) {
        let dropped = std::mem::take(&mut self.sink.dropped);
        if dropped > 0 {
            tracing::warn!(
                dropped_bytes = dropped,
                "dropped {} of the job's output: output is logged up to {} at once, then {}/s",
                size(dropped),
                size(LOG_BURST),
                size(LOG_RATE)
            );
        }
    }

    /// The last [`STDERR_TAIL`] stderr lines, oldest first.
    pub(super) fn tail(&self) -> Vec<String> {
        self.sink.tail.iter().cloned().collect()
    }

    /// From now on, also keep the last [`STDERR_TAIL`] lines of both streams, in the order
    /// read, until [`Output::stop_startup`]: what a long-lived child printed while starting.
    pub(super) fn record_startup(&mut self) {
        self.sink.startup = Some(VecDeque::with_capacity(STDERR_TAIL));
    }

    /// Stops keeping what [`Output::record_startup`] keeps, and forgets it.
    pub(super) fn stop_startup(&mut self) {
        self.sink.startup = None;
    }

    /// The lines kept since [`Output::record_startup`], oldest first.
    pub(super) fn startup(&self) -> Vec<String> {
        self.sink
            .startup
            .as_ref()
            .map(|lines| lines.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets the stderr tail: a long-lived child starts a new job.
    pub(super) fn clear_tail(&mut self) {
        self.report_dropped();
        self.sink.tail.clear();
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.report_dropped();
    }
}

/// Where lines go: the log while the budget lasts, and the stderr tail.
#[derive(Debug)]
struct Sink {
    budget: Budget,
    tail: VecDeque<String>,
    /// Bytes dropped since the last [`Output::report_dropped`].
    dropped: u64,
    /// The last line was dropped: the budget is spent.
    dropping: bool,
    /// Lines of both streams, while [`Output::record_startup`] asks for them.
    startup: Option<VecDeque<String>>,
}

impl Sink {
    fn new() -> Self {
        Sink {
            budget: Budget::new(),
            tail: VecDeque::with_capacity(STDERR_TAIL),
            dropped: 0,
            dropping: false,
            startup: None,
        }
    }

    /// Logs one line (without its `\n`), if the budget allows; returns whether it did.
    fn line(&mut self, kind: Kind, line: &[u8]) -> bool {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(startup) = &mut self.startup {
            if startup.len() == STDERR_TAIL {
                startup.pop_front();
            }
            startup.push_back(String::from_utf8_lossy(line).into_owned());
        }
        self.dropping = !self.budget.take(line.len() as u64 + LINE_COST);
        if self.dropping {
            self.dropped = self.dropped.saturating_add(line.len() as u64 + 1);
            if kind == Kind::Stderr {
                self.keep(line);
            }
            return false;
        }
        let text = String::from_utf8_lossy(line);
        match kind {
            Kind::Stdout => {
                tracing::info!(target: "resque::job_output", stream = "stdout", "{}", text);
            }
            Kind::Stderr => {
                tracing::warn!(target: "resque::job_output", stream = "stderr", "{}", text);
                self.keep(line);
            }
        }
        true
    }

    /// Adds a stderr line to the tail.
    fn keep(&mut self, line: &[u8]) {
        if self.tail.len() == STDERR_TAIL {
            self.tail.pop_front();
        }
        self.tail
            .push_back(String::from_utf8_lossy(line).into_owned());
    }

    /// Drops `bytes`, the rest of a chunk that came while the budget is spent, at once: counted,
    /// and for stderr its last lines kept in the tail. Returns the start of a last, unfinished
    /// line (to be continued by the next chunk).
    fn drop_rest<'a>(&mut self, kind: Kind, bytes: &'a [u8]) -> &'a [u8] {
        self.dropped = self.dropped.saturating_add(bytes.len() as u64);
        let Some(last_newline) = bytes.iter().rposition(|&b| b == b'\n') else {
            return &[];
        };
        if kind == Kind::Stderr {
            let complete = &bytes[..last_newline];
            let lines: Vec<&[u8]> = complete.rsplit(|&b| b == b'\n').take(STDERR_TAIL).collect();
            for line in lines.into_iter().rev() {
                let line = &line[..line.len().min(MAX_LINE)];
                self.keep(line.strip_suffix(b"\r").unwrap_or(line));
            }
        }
        let rest = &bytes[last_newline + 1..];
        &rest[..rest.len().min(MAX_LINE - 1)]
    }
}

/// A token bucket over logged bytes: [`LOG_BURST`] at once, refilled at [`LOG_RATE`].
#[derive(Debug)]
struct Budget {
    tokens: u64,
    since: Instant,
}

impl Budget {
    fn new() -> Self {
        Budget {
            tokens: LOG_BURST,
            since: Instant::now(),
        }
    }

    fn take(&mut self, cost: u64) -> bool {
        if self.tokens < cost {
            let now = Instant::now();
            let earned = now.duration_since(self.since).as_millis() as u64 * LOG_RATE / 1000;
            if earned > 0 {
                self.tokens = self.tokens.saturating_add(earned).min(LOG_BURST);
                self.since = now;
            }
        }
        if self.tokens < cost {
            return false;
        }
        self.tokens -= cost;
        true
    }
}

/// One of a child's output streams, read in chunks of [`CHUNK`] bytes and split into lines.
#[derive(Debug)]
struct Stream<R> {
    pipe: R,
    buf: Box<[u8]>,
    /// The start of a line whose end has not come yet; shorter than [`MAX_LINE`].
    partial: Vec<u8>,
}

/// Reads the next chunk of an open stream into its buffer; pending forever for a closed one.
/// 0 is end of file (a read error counts as one). Cancel safe.
async fn read_chunk<R: AsyncRead + Unpin>(stream: &mut Option<Stream<R>>) -> usize {
    let Some(stream) = stream else {
        return std::future::pending().await;
    };
    loop {
        match stream.pipe.read(&mut stream.buf).await {
            Ok(n) => return n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!("cannot read from a child process: {e}");
                return 0;
            }
        }
    }
}

impl<R> Stream<R> {
    fn new(pipe: R) -> Self {
        Stream {
            pipe,
            buf: vec![0; CHUNK].into_boxed_slice(),
            partial: Vec::new(),
        }
    }

    /// Handles the `n` bytes [`read_chunk`] read; 0 is end of file. Returns whether the stream
    /// is still open.
    fn take(&mut self, n: usize, kind: Kind, sink: &mut Sink) -> bool {
        if n == 0 {
            if !self.partial.is_empty() {
                sink.line(kind, &self.partial);
                self.partial.clear();
            }
            return false;
        }
        absorb(&mut self.partial, &self.buf[..n], kind, sink);
        true
    }
}

/// Splits `bytes` into lines of at most [`MAX_LINE`] bytes, continuing `partial`, and hands them
/// to `sink`; once the sink's budget is spent, the rest of `bytes` is dropped at once.
fn absorb(partial: &mut Vec<u8>, mut bytes: &[u8], kind: Kind, sink: &mut Sink) {
    while !bytes.is_empty() {
        let room = MAX_LINE.saturating_sub(partial.len()).max(1);
        let window = &bytes[..bytes.len().min(room)];
        let (line_len, used) = match window.iter().position(|&b| b == b'\n') {
            Some(end) => (end, end + 1),
            None if window.len() == room => (room, room),
            None => {
                partial.extend_from_slice(window);
                return;
            }
        };
        let logged = if partial.is_empty() {
            sink.line(kind, &bytes[..line_len])
        } else {
            partial.extend_from_slice(&bytes[..line_len]);
            let logged = sink.line(kind, partial);
            partial.clear();
            logged
        };
        bytes = &bytes[used..];
        if !logged {
            let rest = sink.drop_rest(kind, bytes);
            partial.extend_from_slice(rest);
            return;
        }
    }
}

impl<R: AsRawFd> Stream<R> {
    /// Handles what is already in the pipe, at most [`READY_LIMIT`] bytes, without waiting, and
    /// logs a last partial line. Returns whether the stream is still open, and the bytes read.
    fn take_ready(&mut self, kind: Kind, sink: &mut Sink) -> (bool, usize) {
        // The pipe is non-blocking (the runtime made it so): this reads what is there.
        let fd = self.pipe.as_raw_fd();
        let mut read = 0;
        let mut open = true;
        while read < READY_LIMIT {
            match nix::unistd::read(fd, &mut self.buf) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => {
                    read += n;
                    absorb(&mut self.partial, &self.buf[..n], kind, sink);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    tracing::debug!("cannot read from a child process: {e}");
                    open = false;
                    break;
                }
            }
        }
        if !self.partial.is_empty() {
            sink.line(kind, &self.partial);
            self.partial.clear();
        }
        (open, read)
    }
}

/// A byte count for people: `512 bytes`, `64 KiB`, `1.5 MiB`.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() < 0.05 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
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
    fn output_splits_into_bounded_lines() {
        let mut sink = Sink::new();
        let mut partial = Vec::new();
        absorb(&mut partial, b"ab\ncdefgh\r\nij", Kind::Stderr, &mut sink);
        assert_eq!(sink.tail, ["ab", "cdefgh"]);
        assert_eq!(partial, b"ij");
        absorb(&mut partial, b"k\n", Kind::Stderr, &mut sink);
        assert_eq!(sink.tail.back().map(String::as_str), Some("ijk"));
        assert!(partial.is_empty());

        let long = vec![b'x'; MAX_LINE * 2 + 100];
        absorb(&mut partial, &long, Kind::Stderr, &mut sink);
        assert_eq!(sink.tail.len(), 5);
        assert_eq!(sink.tail.back().map(String::len), Some(MAX_LINE));
        assert_eq!(partial.len(), 100);
        assert_eq!(sink.dropped, 0);
    }

    #[test]
    fn output_beyond_the_budget_is_dropped_and_counted() {
        let mut sink = Sink::new();
        let mut partial = Vec::new();
        let flood = b"y\n".repeat(LOG_BURST as usize);
        for chunk in flood.chunks(CHUNK) {
            absorb(&mut partial, chunk, Kind::Stderr, &mut sink);
        }
        absorb(&mut partial, b"last words\n", Kind::Stderr, &mut sink);
        // Each line costs 1 + LINE_COST: only about LOG_BURST / 65 of them fit.
        let logged_at_most = (LOG_BURST / (1 + LINE_COST) + LOG_RATE) * 2;
        assert!(
            sink.dropped > flood.len() as u64 - logged_at_most,
            "{}",
            sink.dropped
        );
        assert!(partial.is_empty());
        // The tail is the end of the stream, dropped or not.
        assert_eq!(sink.tail.len(), STDERR_TAIL);
        assert_eq!(sink.tail.back().map(String::as_str), Some("last words"));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(512), "512 bytes");
        assert_eq!(size(64 * 1024), "64 KiB");
        assert_eq!(size(3 * 512 * 1024), "1.5 MiB");
    }
}
