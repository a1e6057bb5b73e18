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
//! job exited is logged for at most [`OUTPUT_DRAIN`] (within the output limits, [`LOG_BURST`]).
//!
//! A job whose process cannot be started because the daemon is out of file descriptors is given
//! back to its queue (a worker-side error, [`JobFailure::worker_side`]), not failed.

use super::process::{
    child_command, describe_status, spawn_failure, spawn_place, time_limit, timed_out, ProcessGroup,
};
use super::{Handler, Job, JobFailure};
use crate::protocol::DIRTY_EXIT_EXCEPTION;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

pub use super::process::{LOG_BURST, LOG_RATE, OUTPUT_DRAIN, STDERR_TAIL};

/// The exception class when the command cannot be started at all.
const SPAWN_EXCEPTION: &str = "RuntimeException";

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
    /// Variables of the daemon's environment that the job gets although they configure the
    /// daemon (`REDIS_BACKEND`, …): see `process::DAEMON_ENV`.
    pub pass_env: Vec<String>,
}

impl Default for ExecSettings {
    fn default() -> Self {
        ExecSettings {
            command: Vec::new(),
            timeout: None,
            grace: Duration::from_secs(10),
            working_dir: None,
            env: Vec::new(),
            pass_env: Vec::new(),
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
        for (name, what, value) in [
            ("RESQUE_JOB_ID", "id", job.id().unwrap_or_default()),
            ("RESQUE_JOB_CLASS", "class", job.class()),
        ] {
            check_env_value(name, what, value)?;
        }
        let mut cmd = child_command(
            program,
            self.settings.working_dir.as_deref(),
            &self.settings.pass_env,
        );
        cmd.args(args);
        cmd.env("RESQUE_JOB_ID", job.id().unwrap_or_default())
            .env("RESQUE_JOB_CLASS", job.class())
            .env("RESQUE_QUEUE", &job.queue)
            .env("RESQUE_WORKER", &job.worker_id);
        cmd.envs(self.settings.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::piped());
        Ok(cmd)
    }

    fn spawn(&self, job: &Job) -> Result<ProcessGroup, JobFailure> {
        let cmd = self.command(job)?;
        ProcessGroup::spawn(cmd, "job").map_err(|e| {
            let program = self.settings.command.first().map_or("", String::as_str);
            let place = spawn_place(self.settings.working_dir.as_deref());
            spawn_failure(SPAWN_EXCEPTION, &format!("cannot run {program}{place}"), &e)
        })
    }
}

/// Longest job class or id passed in the environment. Linux refuses a single environment string
/// above 128 KiB (`MAX_ARG_STRLEN`, "Argument list too long"); no real class or id comes near.
pub const MAX_ENV_VALUE: usize = 32 * 1024;

/// A job class or id that cannot be put in the environment fails the job with an error about the
/// job's data, not about the program (which is fine).
fn check_env_value(name: &str, what: &str, value: &str) -> Result<(), JobFailure> {
    let problem = if value.contains('\0') {
        "contains a NUL byte".to_string()
    } else if value.len() > MAX_ENV_VALUE {
        format!("is {} bytes long (at most {MAX_ENV_VALUE})", value.len())
    } else {
        return Ok(());
    };
    Err(JobFailure::new(
        JOB_DATA_EXCEPTION,
        format!("bad job data: the job's {what} {problem}, so it cannot be passed to the program in {name}; the job was not run"),
    ))
}

/// The exception class php-resque uses for a job it cannot run as given.
const JOB_DATA_EXCEPTION: &str = "Resque\\Exception";

#[async_trait::async_trait]
impl Handler for ExecHandler {
    async fn perform(&self, job: &Job) -> Result<(), JobFailure> {
        let mut process = self.spawn(job)?;
        let stdin = process.take_stdin();
        let mut output = process.take_output();

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

        let timer = time_limit(self.settings.timeout);
        tokio::pin!(timer);

        let waited = loop {
            tokio::select! {
                status = process.wait() => break Some(status),
                () = output.next(), if output.is_open() => {}
                () = &mut feed, if !fed => fed = true,
                () = &mut timer => break None,
            }
        };

        let Some(waited) = waited else {
            let limit = self.settings.timeout.unwrap_or_default();
            process.terminate(self.settings.grace, &mut output).await;
            output.drain().await;
            return Err(timed_out(limit, output.tail()));
        };
        // The job ended by itself: what it left behind is not ours to kill.
        process.disarm();
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
            .with_backtrace(output.tail()))
    }
}

/// The failure message for an unsuccessful exit status.
fn describe_exit(status: ExitStatus) -> String {
    let how = describe_status(status);
    if status.code().is_some() {
        format!("Job exited with {how}")
    } else {
        format!("Job exited abnormally: {how}")
    }
}
