//! Command-line definitions (clap derive). `main.rs` dispatches; the work is in the library.

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Args, Parser, Subcommand, ValueHint};
use std::path::PathBuf;

/// Exit codes a script can rely on.
pub mod exit {
    pub const OK: i32 = 0;
    /// The command failed (bad input, job not found, reload rejected…).
    pub const FAILURE: i32 = 1;
    /// `resque status`: the job is not tracked (no status key, or it expired).
    pub const NOT_TRACKED: i32 = 3;
    /// Redis (or the daemon) could not be reached (EX_UNAVAILABLE).
    pub const UNAVAILABLE: i32 = 69;
    /// The configuration file exists but may not be read (EX_NOPERM).
    pub const NOPERM: i32 = 77;
    /// Invalid configuration (EX_CONFIG); systemd's RestartPreventExitStatus=78.
    pub const CONFIG: i32 = 78;
}

/// "1 worker", "2 workers", "0 running jobs": `noun` is the singular; the plural adds "s".
pub fn count_of(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `label value` lines with every value in one column.
pub fn aligned(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(label, value)| format!("{label:<width$}  {value}\n"))
        .collect()
}

/// The log levels `--log-level` takes (completions offer them; `warning` is accepted too).
fn log_levels() -> PossibleValuesParser {
    PossibleValuesParser::new([
        PossibleValue::new("error"),
        PossibleValue::new("warn"),
        PossibleValue::new("warning").hide(true),
        PossibleValue::new("info"),
        PossibleValue::new("debug"),
        PossibleValue::new("trace"),
    ])
}

#[derive(Debug, Parser)]
#[command(
    name = "resque",
    version,
    about = "A systemd-native, Resque-compatible job worker daemon",
    long_about = "Runs Resque jobs (php-resque, Ruby resque, node-resque) from Redis under systemd, \
                  and manages them: enqueue, status, queues, workers, stats, failed jobs."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Configuration file [default: /etc/resque.toml; if that does not exist, built-in
    /// defaults].
    #[arg(long, global = true, value_name = "FILE", env = "RESQUE_CONFIG", value_hint = ValueHint::FilePath)]
    pub config: Option<PathBuf>,
    /// Instance name: applies `[instance.NAME]`; without queues there or in `[worker]`, works the
    /// queue NAME.
    #[arg(long, global = true, value_name = "NAME", value_hint = ValueHint::Other)]
    pub instance: Option<String>,
    /// Redis URL (redis://[:password@]host:port/db, rediss://…, unix:///path?db=N); overrides
    /// the file and REDIS_BACKEND. A password here is visible to every local user in `ps`: give
    /// it with `[redis] password_file` or a systemd credential (redis-password) instead.
    #[arg(long, global = true, value_name = "URL", value_hint = ValueHint::Url)]
    pub redis: Option<String>,
    /// Key namespace (default "resque"; "" for none); overrides the file and PREFIX.
    #[arg(long, global = true, value_name = "NS", value_hint = ValueHint::Other)]
    pub namespace: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (what `systemctl start resque@NAME` runs).
    Start(StartArgs),
    /// Stop the running daemon: graceful, or at once with --now.
    Stop {
        /// Kill running jobs and put them back in their queues (SIGINT) instead of draining.
        #[arg(long)]
        now: bool,
        /// Return only when the daemon has exited.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: DaemonTarget,
    },
    /// Reload the configuration of the running daemon (SIGHUP).
    Reload {
        /// Wait for the result; fail with the reason if the new configuration is rejected.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: DaemonTarget,
    },
    /// Stop reserving new jobs in the running daemon (SIGUSR2).
    Pause {
        #[command(flatten)]
        target: DaemonTarget,
    },
    /// Resume reserving jobs (SIGCONT).
    Resume {
        #[command(flatten)]
        target: DaemonTarget,
    },
    /// Put a job into a queue (php-resque's format); prints its id.
    Enqueue {
        /// Queue name.
        queue: String,
        /// Job class, e.g. 'Common\Job\MailJob'.
        class: String,
        /// Arguments as a JSON object or array: what a PHP job sees as $this->args.
        args: Option<String>,
        /// Track the job's status (php-resque's $trackStatus).
        #[arg(long)]
        track: bool,
        /// Run it later: put it into the delayed queue (resque-scheduler's layout) this long from
        /// now, e.g. "10m", "90s", "1h 30m".
        #[arg(long = "in", value_name = "DURATION", conflicts_with = "at")]
        in_: Option<String>,
        /// Run it later, at this time: RFC 3339 ("2026-12-24T18:00:00+01:00") or unix seconds.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
    /// Show the status of a tracked job: waiting, running, failed, complete or not tracked.
    Status {
        /// Job id (as printed by enqueue).
        #[arg(long)]
        id: String,
        /// Keep printing the status every second until it is final.
        #[arg(long)]
        watch: bool,
    },
    /// List queues and their lengths.
    Queues,
    /// List registered workers and what they are doing.
    Workers,
    /// Show processed/failed counters, pending jobs and workers.
    Stats,
    /// Inspect and act on the failed-jobs list.
    #[command(subcommand)]
    Failed(FailedCommand),
    /// Inspect and act on the delayed queue (jobs enqueued with --in/--at, retries, and what
    /// resque-scheduler, node-resque and php-resque schedule).
    #[command(subcommand)]
    Delayed(DelayedCommand),
    /// Recurring jobs ([[schedule]]) and the scheduler's leader.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Measure throughput, pickup latency, Redis commands per job, idle cost and memory on a
    /// scratch namespace of the configured Redis.
    Bench(BenchArgs),
    /// The systemd instances (resque@NAME.service): show their state, or reload every running
    /// one and report each (what resque.service runs); exit 1 if any instance failed.
    Instances {
        #[command(subcommand)]
        action: Option<InstancesCommand>,
    },
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum InstancesCommand {
    /// Every loaded resque@NAME.service and its state (the default); exit 1 if one failed.
    Status,
    /// `systemctl reload` every running instance, one after the other; exit 1 if a reload failed
    /// or an instance is in the failed state.
    Reload,
}

/// `resque generate …`: parsed on its own, before [`Cli`], so that the build-time command is in
/// neither the completions nor the man page.
#[derive(Debug, Parser)]
#[command(
    name = "resque generate",
    about = "Generate the man pages or shell completions (used to build the package)"
)]
pub struct GenerateCli {
    #[command(subcommand)]
    pub what: GenerateCommand,
}

#[derive(Debug, Args, Clone, Default)]
pub struct DaemonTarget {
    /// PID file of the daemon (default: the configured pid_file, then the runtime directory).
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub pid: Option<PathBuf>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct StartArgs {
    /// Queues to work, comma-separated, in priority order; "*" = all (php-resque's QUEUE).
    #[arg(long, value_name = "LIST", value_hint = ValueHint::Other)]
    pub queue: Option<String>,
    /// Number of workers (COUNT).
    #[arg(long, value_name = "N", value_hint = ValueHint::Other)]
    pub count: Option<String>,
    /// Seconds between looks at the queues while Redis cannot notify (INTERVAL); jobs start at once anyway.
    #[arg(long, value_name = "SECONDS", value_hint = ValueHint::Other)]
    pub interval: Option<String>,
    /// PID file (PIDFILE).
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub pid: Option<PathBuf>,
    /// Debug logging (VVERBOSE); `--debug=1` as in the seed.
    #[arg(long, value_name = "0|1", num_args = 0..=1, default_missing_value = "1", value_hint = ValueHint::Other)]
    pub debug: Option<String>,
    /// PHP bootstrap file loaded once per PHP worker process (APP_INCLUDE).
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub app: Option<PathBuf>,
    /// Time running jobs get to finish on SIGTERM before they are killed and requeued.
    #[arg(long, value_name = "DURATION", value_hint = ValueHint::Other)]
    pub shutdown_timeout: Option<String>,
    /// Log level.
    #[arg(long, value_name = "LEVEL", value_parser = log_levels(), ignore_case = true)]
    pub log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum FailedCommand {
    /// List failure records.
    List {
        /// First index.
        #[arg(long, default_value_t = 0, value_hint = ValueHint::Other)]
        start: isize,
        /// How many.
        #[arg(long, default_value_t = 20, value_hint = ValueHint::Other)]
        count: usize,
    },
    /// Show one failure record in full.
    Show { index: isize },
    /// Put a failed job back into its queue, keeping its id, and remove the record.
    Retry {
        /// Index in the failed list.
        #[arg(required_unless_present = "all")]
        index: Option<isize>,
        /// Retry every failed job.
        #[arg(long, conflicts_with = "index")]
        all: bool,
    },
    /// Remove one failure record.
    Remove { index: isize },
    /// Remove every failure record.
    Clear,
}

#[derive(Debug, Subcommand)]
pub enum DelayedCommand {
    /// List due times (earliest first) with their job counts.
    List {
        /// First index.
        #[arg(long, default_value_t = 0)]
        start: isize,
        /// How many.
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
    /// Show delayed jobs: all due at TS, the one at TS/INDEX, or the job with an id.
    Show {
        /// TS (unix seconds), TS/INDEX, or a job id.
        selector: String,
    },
    /// Remove delayed jobs (TS, TS/INDEX or a job id).
    Remove { selector: String },
    /// Move delayed jobs (TS, TS/INDEX or a job id) into their queues now.
    RunNow { selector: String },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Each [[schedule]] with its next and last run, and who holds the leader lock since when.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration (file, instance, environment); exit 78 if invalid.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Man pages (resque.1 and one per subcommand).
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// bash, zsh and fish completions.
    Completions {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Number of no-op jobs to drain.
    #[arg(long, default_value_t = 20_000, value_hint = ValueHint::Other)]
    pub jobs: usize,
    /// Number of workers.
    #[arg(long, default_value_t = 4, value_hint = ValueHint::Other)]
    pub count: u32,
    /// How the jobs run.
    #[arg(long, value_enum, default_value = "in-process")]
    pub handler: crate::bench::BenchHandler,
    /// Queues the workers serve, in priority order; the jobs go to the last one.
    #[arg(long, value_delimiter = ',', default_value = "bench", value_hint = ValueHint::Other)]
    pub queues: Vec<String>,
    /// Pickup-latency samples taken with idle workers after the drain (0: skip).
    #[arg(long, default_value_t = 50, value_hint = ValueHint::Other)]
    pub latency_samples: usize,
    /// Seconds to measure idle Redis commands (0: skip).
    #[arg(long, default_value_t = 0, value_hint = ValueHint::Other)]
    pub idle_seconds: u64,
    /// The exec handler's command.
    #[arg(long, num_args = 1.., default_value = "/bin/true")]
    pub command: Vec<String>,
    /// The PHP runner (default: installed or in-tree php/runner.php).
    #[arg(long, value_name = "FILE")]
    pub php_runner: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_pluralised() {
        assert_eq!(count_of(1, "worker"), "1 worker");
        assert_eq!(count_of(2, "worker"), "2 workers");
        assert_eq!(count_of(0, "running job"), "0 running jobs");
        assert_eq!(count_of(1, "running job"), "1 running job");
    }

    #[test]
    fn labels_and_values_line_up() {
        let text = aligned(&[("processed", "12".into()), ("failed list", "3".into())]);
        assert_eq!(text, "processed    12\nfailed list  3\n");
    }

    #[test]
    fn log_levels_are_offered_and_warning_is_accepted() {
        use clap::Parser;
        let cli = Cli::try_parse_from(["resque", "start", "--log-level", "WARNING"]).unwrap();
        match cli.command {
            Command::Start(args) => {
                let level = args.log_level.unwrap();
                assert!(level.eq_ignore_ascii_case("warning"), "{level}");
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["resque", "start", "--log-level", "loud"]).is_err());
        // The build-time command is not part of the CLI.
        assert!(Cli::try_parse_from(["resque", "generate", "man", "--out", "x"]).is_err());
    }
}
