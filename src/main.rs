//! The `resque` binary: parse the command line, call into the library, map errors to exit codes.

use clap::{CommandFactory, Parser};
use resque::cli::{
    aligned, count_of, exit, Cli, Command, ConfigCommand, DaemonTarget, DelayedCommand,
    FailedCommand, GenerateCli, GenerateCommand, GlobalArgs, InstancesCommand, ScheduleCommand,
    StartArgs,
};
use resque::client::{Client, ClientError};
use resque::config::{self, Config, Overrides};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// An error with the exit code it maps to.
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Connect { .. } | ClientError::Redis { .. } => exit::UNAVAILABLE,
            _ => exit::FAILURE,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<config::ConfigError> for Failure {
    fn from(e: config::ConfigError) -> Self {
        let code = match e.io {
            Some(std::io::ErrorKind::PermissionDenied) => exit::NOPERM,
            _ => exit::CONFIG,
        };
        Failure::new(code, e.to_string())
    }
}

/// `println!` that ends the program quietly when stdout is a closed pipe (`resque … | head`),
/// as `cat` does, instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => { emit(format_args!($($arg)*)) };
}

fn emit(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(exit::OK);
        }
        eprintln!("resque: cannot write the output: {e}");
        std::process::exit(exit::FAILURE);
    }
}

fn main() -> ExitCode {
    // The build-time `generate` command is not part of the documented CLI.
    if std::env::args_os().nth(1).is_some_and(|a| a == "generate") {
        let args = std::env::args_os().skip(1);
        return ExitCode::from(match generate(GenerateCli::parse_from(args).what) {
            Ok(code) => code as u8,
            Err(f) => {
                eprintln!("resque: {}", f.message);
                f.code as u8
            }
        });
    }
    let cli = Cli::parse();
    // The daemon's signal handlers go in before anything else, so that a HUP in its first
    // milliseconds is a reload, not the default action (death, exit status 129).
    let signals = match &cli.command {
        Command::Start(_) => match resque::signals::install() {
            Ok(installed) => Some(installed),
            Err(e) => {
                eprintln!("resque: cannot install signal handlers: {e}");
                return ExitCode::from(exit::FAILURE as u8);
            }
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("resque: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE as u8);
        }
    };
    match runtime.block_on(dispatch(cli, signals)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(f) => {
            eprintln!("resque: {}", f.message);
            ExitCode::from(f.code as u8)
        }
    }
}

fn config_path(global: &GlobalArgs) -> (PathBuf, bool) {
    match &global.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_CONFIG_PATH), false),
    }
}

fn flag_overrides(global: &GlobalArgs, start: Option<&StartArgs>) -> Overrides {
    let mut o = Overrides {
        redis_url: global.redis.clone(),
        namespace: global.namespace.clone(),
        ..Overrides::default()
    };
    if let Some(s) = start {
        o.queues = s.queue.clone();
        o.count = s.count.clone();
        o.interval = s.interval.clone();
        o.pid_file = s.pid.clone();
        o.debug = matches!(s.debug.as_deref(), Some(v) if !v.is_empty() && v != "0");
        o.app_include = s.app.clone();
        o.shutdown_timeout = s.shutdown_timeout.clone();
        o.log_level = s.log_level.clone();
    }
    o
}

fn load_config_explained(global: &GlobalArgs) -> Result<(Config, config::Origins), Failure> {
    let (path, explicit) = config_path(global);
    Ok(config::load_explained(
        &path,
        explicit,
        global.instance.as_deref(),
        &Overrides::from_env(),
        &flag_overrides(global, None),
    )?)
}

fn load_config(global: &GlobalArgs, start: Option<&StartArgs>) -> Result<Config, Failure> {
    let (path, explicit) = config_path(global);
    Ok(config::load(
        &path,
        explicit,
        global.instance.as_deref(),
        &Overrides::from_env(),
        &flag_overrides(global, start),
    )?)
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => outln!("{text}"),
        Err(e) => eprintln!("resque: cannot print JSON: {e}"),
    }
}

async fn dispatch(cli: Cli, signals: Option<resque::signals::Installed>) -> Result<i32, Failure> {
    let global = cli.global;
    match cli.command {
        Command::Start(args) => {
            let signals = match signals {
                Some(s) => s,
                None => resque::signals::install().map_err(|e| {
                    Failure::new(
                        exit::FAILURE,
                        format!("cannot install signal handlers: {e}"),
                    )
                })?,
            };
            start(&global, &args, signals).await
        }
        Command::Stop { now, wait, target } => {
            daemon_request(
                &global,
                &target,
                if now { "stop-now" } else { "stop" },
                wait,
            )
            .await
        }
        Command::Reload { wait, target } => daemon_request(&global, &target, "reload", wait).await,
        Command::Pause { target } => daemon_request(&global, &target, "pause", false).await,
        Command::Resume { target } => daemon_request(&global, &target, "resume", false).await,
        Command::Config(ConfigCommand::Check) => {
            let (config, origins) = load_config_explained(&global)?;
            config_check_report(&config, &origins, global.json);
            Ok(exit::OK)
        }
        Command::Bench(args) => bench(&global, &args).await,
        Command::Instances { action } => {
            instances(action.unwrap_or(InstancesCommand::Status), global.json)
        }
        other => client_command(&global, other).await,
    }
}

/// `resque config check`: every effective setting, and the section (or variable, or flag) it
/// came from.
fn config_check_report(config: &Config, origins: &config::Origins, json: bool) {
    let w = &config.worker;
    let human = |d: Duration| humantime::format_duration(d).to_string();
    let handlers = config
        .handlers
        .iter()
        .map(|h| {
            let kind = match &h.kind {
                config::HandlerKind::Exec(_) => "exec",
                config::HandlerKind::Php(_) => "php",
            };
            format!("{} ({kind})", h.class)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let pid_file = w
        .pid_file
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "$RUNTIME_DIRECTORY/resque.pid".into());
    let rows: Vec<(&str, &str, String)> = vec![
        ("redis", "redis.address", config.redis.display.clone()),
        (
            "namespace",
            "redis.namespace",
            format!("{:?}", config.redis.namespace),
        ),
        ("queues", "worker.queues", w.queues.join(",")),
        ("count", "worker.count", w.count.to_string()),
        ("interval", "worker.interval", human(w.interval)),
        (
            "shutdown_timeout",
            "worker.shutdown_timeout",
            human(w.shutdown_timeout),
        ),
        ("pid_file", "worker.pid_file", pid_file),
        (
            "log_level",
            "worker.log_level",
            w.log_level.as_str().to_string(),
        ),
        (
            "on_lost",
            "worker.on_lost",
            format!("{:?}", w.on_lost).to_lowercase(),
        ),
        ("max_lost", "worker.max_lost", w.max_lost.to_string()),
        ("dead_after", "worker.dead_after", human(w.dead_after)),
        ("handlers", "handlers", handlers),
    ];
    if json {
        let settings: serde_json::Map<String, Value> = rows
            .iter()
            .map(|(name, key, value)| {
                (
                    name.to_string(),
                    json!({"value": value, "from": origins.of(key)}),
                )
            })
            .collect();
        print_json(&json!({
            "valid": true,
            "source": config.source,
            "instance": config.instance,
            "redis": config.redis.display,
            "namespace": config.redis.namespace,
            "queues": w.queues,
            "count": w.count,
            "handlers": config.handlers.iter().map(|h| h.class.clone()).collect::<Vec<_>>(),
            "settings": settings,
        }));
        return;
    }
    let source = config
        .source
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "defaults (no file)".into());
    let instance = config
        .instance
        .as_deref()
        .map(|i| format!(" for instance {i}"))
        .unwrap_or_default();
    outln!(
        "{source}: OK{instance}: {}, {}",
        count_of(u64::from(w.count), "worker"),
        count_of(config.handlers.len() as u64, "handler")
    );
    let width = rows
        .iter()
        .map(|(_, _, v)| v.chars().count())
        .max()
        .unwrap_or(0)
        .min(48);
    let table = aligned(
        &rows
            .iter()
            .map(|(name, key, value)| (*name, format!("{value:<width$}  from {}", origins.of(key))))
            .collect::<Vec<_>>(),
    );
    for line in table.lines() {
        outln!("  {line}");
    }
}

async fn client_command(global: &GlobalArgs, command: Command) -> Result<i32, Failure> {
    let config = load_config(global, None)?;
    let mut client = Client::connect(&config.redis).await?;
    let json = global.json;
    match command {
        Command::Enqueue {
            queue,
            class,
            args,
            track,
            in_,
            at,
        } => {
            let args = match args {
                None => None,
                Some(text) => Some(serde_json::from_str::<Value>(&text).map_err(|e| {
                    Failure::new(exit::FAILURE, format!("ARGS_JSON is not valid JSON: {e}"))
                })?),
            };
            if in_.is_some() || at.is_some() {
                let delayed = match (in_, at) {
                    (Some(d), _) => {
                        let delay = config::Seconds::parse(&d)
                            .map_err(|e| Failure::new(exit::FAILURE, format!("--in: {e}")))?;
                        client
                            .enqueue_in(&queue, &class, args, delay.0, track)
                            .await?
                    }
                    (None, Some(t)) => {
                        let at = parse_time(&t)
                            .map_err(|e| Failure::new(exit::FAILURE, format!("--at: {e}")))?;
                        client.enqueue_at(&queue, &class, args, at, track).await?
                    }
                    (None, None) => unreachable!("one of --in/--at is given"),
                };
                if json {
                    print_json(
                        &json!({"id": delayed.id, "at": delayed.at, "queue": queue, "class": class, "tracked": track}),
                    );
                } else if let Some(id) = &delayed.id {
                    println!("{id}");
                } else {
                    println!("scheduled at {}", delayed.at);
                }
                return Ok(exit::OK);
            }
            let id = client.enqueue(&queue, &class, args, track).await?;
            if json {
                print_json(&json!({"id": id, "queue": queue, "class": class, "tracked": track}));
            } else {
                outln!("{id}");
            }
            Ok(exit::OK)
        }
        Command::Status { id, watch } => {
            let mut last = None;
            loop {
                let report = client.status(&id).await?;
                if last.as_ref() != Some(&report) {
                    if json {
                        print_json(&report);
                    } else if report.code.is_some() {
                        outln!("Status of {} is: {}", report.id, report.status);
                    } else {
                        outln!(
                            "Job {} is not tracked (no status, or it expired).",
                            report.id
                        );
                    }
                }
                let done = match report.code {
                    None => true,
                    Some(c) => c >= 3,
                };
                let untracked = report.code.is_none();
                last = Some(report);
                if !watch || done {
                    return Ok(if untracked {
                        exit::NOT_TRACKED
                    } else {
                        exit::OK
                    });
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Command::Queues => {
            let queues = client.queues().await?;
            if json {
                print_json(&queues);
            } else if queues.is_empty() {
                outln!("no queues");
            } else {
                for q in queues {
                    outln!("{:<30} {}", q.name, q.length);
                }
            }
            Ok(exit::OK)
        }
        Command::Workers => {
            let workers = client.workers().await?;
            if json {
                print_json(&workers);
            } else if workers.is_empty() {
                outln!("no workers");
            } else {
                for w in workers {
                    let doing = match &w.working_on {
                        Some(r) => format!(
                            "working on {} from {} since {}",
                            r.payload
                                .get("class")
                                .and_then(Value::as_str)
                                .unwrap_or("?"),
                            r.queue,
                            r.run_at.as_str().unwrap_or("?")
                        ),
                        None => "idle".into(),
                    };
                    outln!("{}  {doing}", w.id);
                }
            }
            Ok(exit::OK)
        }
        Command::Stats => {
            let s = client.stats().await?;
            if json {
                print_json(&s);
            } else {
                let text = aligned(&[
                    ("processed", s.processed.to_string()),
                    ("failed", s.failed.to_string()),
                    ("pending", s.pending.to_string()),
                    ("queues", s.queues.to_string()),
                    ("workers", s.workers.to_string()),
                    ("working", s.working.to_string()),
                    ("failed list", s.failed_list.to_string()),
                    ("delayed", s.delayed.to_string()),
                ]);
                outln!("{}", text.trim_end());
            }
            Ok(exit::OK)
        }
        Command::Failed(cmd) => failed_command(&mut client, cmd, json).await,
        Command::Delayed(cmd) => delayed_command(&mut client, cmd, json).await,
        Command::Schedule(ScheduleCommand::List) => schedule_list(&mut client, &config, json).await,
        _ => Ok(exit::OK),
    }
}

/// `--at`: RFC 3339 or unix seconds.
fn parse_time(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp() + i64::from(t.timestamp_subsec_nanos() > 0))
        .map_err(|e| {
            format!(
                "{text:?} is neither RFC 3339 (2026-12-24T18:00:00+01:00) nor unix seconds: {e}"
            )
        })
}

fn unix_text(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
        })
        .unwrap_or_else(|| ts.to_string())
}

async fn delayed_command(
    client: &mut Client,
    cmd: DelayedCommand,
    json: bool,
) -> Result<i32, Failure> {
    let selector = |text: &str| {
        text.parse::<resque::client::DelayedSelector>()
            .map_err(|e| Failure::new(exit::FAILURE, e))
    };
    match cmd {
        DelayedCommand::List { start, count } => {
            let times = client.delayed(start, count).await?;
            if json {
                print_json(&times);
            } else if times.is_empty() {
                println!("no delayed jobs");
            } else {
                for t in times {
                    println!("{}  {}  {} job(s)", t.at, unix_text(t.at), t.jobs);
                }
            }
            Ok(exit::OK)
        }
        DelayedCommand::Show { selector: text } => {
            let items = client.delayed_find(&selector(&text)?).await?;
            if json {
                print_json(&items);
            } else if items.is_empty() {
                println!("no delayed job matches {text}");
                return Ok(exit::FAILURE);
            } else {
                for i in items {
                    println!(
                        "{}/{}  {}  {}  queue {}  id {}  {}",
                        i.at,
                        i.index,
                        unix_text(i.at),
                        i.class.as_deref().unwrap_or("?"),
                        i.queue.as_deref().unwrap_or("?"),
                        i.id.as_deref().unwrap_or("-"),
                        i.raw
                    );
                }
            }
            Ok(exit::OK)
        }
        DelayedCommand::Remove { selector: ref text }
        | DelayedCommand::RunNow { selector: ref text } => {
            let run_now = matches!(cmd, DelayedCommand::RunNow { .. });
            let n = client.delayed_take(&selector(text)?, run_now).await?;
            if json {
                print_json(&json!({ if run_now { "queued" } else { "removed" }: n }));
            } else if run_now {
                println!("moved {n} delayed job(s) into their queues");
            } else {
                println!("removed {n} delayed job(s)");
            }
            Ok(if n == 0 { exit::FAILURE } else { exit::OK })
        }
    }
}

async fn schedule_list(client: &mut Client, config: &Config, json: bool) -> Result<i32, Failure> {
    let state = client.scheduler_state().await?;
    let now = chrono::Utc::now().timestamp();
    let rows: Vec<Value> = config
        .schedules
        .iter()
        .map(|s| {
            let last = state.last_ticks.get(&s.name).copied();
            let next = s.when.next_after(last.unwrap_or(now).max(now));
            json!({
                "name": s.name,
                "when": s.when.describe(),
                "class": s.class,
                "queue": s.queue,
                "args": s.args,
                "description": s.description,
                "missed": match s.missed { resque::scheduler::recurring::Missed::Skip => "skip", resque::scheduler::recurring::Missed::Once => "once" },
                "last_run": last,
                "next_run": next,
            })
        })
        .collect();
    if json {
        print_json(&json!({
            "schedules": rows,
            "leader": state.leader,
            "leader_ttl_ms": state.leader_ttl_ms,
            "other_schedulers": state.other_schedulers,
        }));
        return Ok(exit::OK);
    }
    match &state.leader {
        Some(l) => println!(
            "leader: {} since {} (lock token {})",
            l.owner,
            unix_text(l.since),
            l.token
        ),
        None => println!("leader: none (no daemon is moving delayed jobs)"),
    }
    for (key, holder) in &state.other_schedulers {
        println!("another scheduler holds {key}: {holder}");
    }
    if rows.is_empty() {
        println!("no schedules configured");
    }
    for (s, row) in config.schedules.iter().zip(&rows) {
        let show = |v: &Value| v.as_i64().map(unix_text).unwrap_or_else(|| "-".into());
        println!(
            "{}  {}  {} → {}  next {}  last {}",
            s.name,
            s.when.describe(),
            s.class,
            s.queue,
            show(&row["next_run"]),
            show(&row["last_run"])
        );
    }
    Ok(exit::OK)
}

async fn failed_command(
    client: &mut Client,
    cmd: FailedCommand,
    json: bool,
) -> Result<i32, Failure> {
    match cmd {
        FailedCommand::List { start, count } => {
            let entries = client.failed(start, count).await?;
            if json {
                print_json(&entries);
            } else if entries.is_empty() {
                outln!("no failed jobs");
            } else {
                for e in entries {
                    match &e.record {
                        Some(r) => outln!(
                            "{:>4}  {}  {}  {}: {}",
                            e.index,
                            r.failed_at,
                            r.class().unwrap_or("?"),
                            r.exception,
                            r.error.lines().next().unwrap_or_default()
                        ),
                        None => outln!("{:>4}  (unreadable record)", e.index),
                    }
                }
            }
            Ok(exit::OK)
        }
        FailedCommand::Show { index } => {
            let e = client.failed_show(index).await?;
            if json {
                print_json(&e);
            } else if let Some(r) = &e.record {
                let text = aligned(&[
                    ("failed_at", r.failed_at.to_string()),
                    ("queue", r.queue.to_string()),
                    ("worker", r.worker.to_string()),
                    ("class", r.class().unwrap_or("?").to_string()),
                    ("job id", r.job_id().unwrap_or("-").to_string()),
                    ("exception", r.exception.to_string()),
                    ("error", r.error.to_string()),
                    ("payload", r.payload.to_string()),
                ]);
                outln!("{}", text.trim_end());
                for line in &r.backtrace {
                    outln!("  {line}");
                }
            } else {
                outln!("unreadable record: {}", e.unreadable.unwrap_or_default());
            }
            Ok(exit::OK)
        }
        FailedCommand::Retry { index, all } => {
            if all {
                let mut retried: u64 = 0;
                // Retrying removes the record, so always take the first one that can be retried.
                let mut index = 0;
                while index < client.failed_count().await? as isize {
                    match client.failed_retry(index).await {
                        Ok(_) => retried += 1,
                        Err(ClientError::NotRetryable { reason, .. }) => {
                            eprintln!("resque: skipping failed job {index}: {reason}");
                            index += 1;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                if json {
                    print_json(&json!({"retried": retried}));
                } else {
                    outln!("retried {}", count_of(retried, "job"));
                }
                return Ok(exit::OK);
            }
            let index = index.unwrap_or(0);
            let (queue, id) = client.failed_retry(index).await?;
            if json {
                print_json(&json!({"queue": queue, "id": id}));
            } else {
                outln!(
                    "job {} back in queue {queue}",
                    id.unwrap_or_else(|| "(no id)".into())
                );
            }
            Ok(exit::OK)
        }
        FailedCommand::Remove { index } => {
            client.failed_remove(index).await?;
            if !json {
                outln!("removed failed job {index}");
            }
            Ok(exit::OK)
        }
        FailedCommand::Clear => {
            let n = client.failed_clear().await?;
            if json {
                print_json(&json!({"removed": n}));
            } else {
                outln!("removed {}", count_of(n as u64, "failed job"));
            }
            Ok(exit::OK)
        }
    }
}

/// Finds the running daemon: its control socket (preferred) or its PID file.
async fn daemon_request(
    global: &GlobalArgs,
    target: &DaemonTarget,
    what: &str,
    wait: bool,
) -> Result<i32, Failure> {
    let runtime = resque::control::runtime_dir(global.instance.as_deref());
    let socket = resque::control::socket_path(&runtime);
    let pid_file = match &target.pid {
        Some(p) => Some(p.clone()),
        None => {
            let (path, explicit) = config_path(global);
            config::load(
                &path,
                explicit,
                global.instance.as_deref(),
                &Overrides::from_env(),
                &Overrides::default(),
            )
            .ok()
            .and_then(|c| c.worker.pid_file)
            .or_else(|| Some(runtime.join("resque.pid")))
        }
    };
    let via_socket = if target.pid.is_none() && socket.symlink_metadata().is_ok() {
        // Only a socket in a directory of the daemon's user, served by that user, is asked.
        let owner = resque::control::check_runtime_dir(&runtime).map_err(|e| {
            Failure::new(exit::FAILURE, format!("{e}; not using its control socket"))
        })?;
        match resque::control::request(&socket, what, owner).await {
            Ok(reply) => Some(reply),
            // Nobody listens (a daemon killed without cleaning up): try the PID file.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                None
            }
            Err(e) => {
                return Err(Failure::new(
                    exit::FAILURE,
                    format!("cannot use control socket {}: {e}", socket.display()),
                ))
            }
        }
    } else {
        None
    };
    let pid = match via_socket {
        Some(Ok(pid)) => pid,
        Some(Err(message)) => return Err(Failure::new(exit::FAILURE, message)),
        None => {
            // No control socket: signal the pid from the PID file, once it proves to be ours.
            let found = pid_file
                .as_deref()
                .and_then(|p| resque::pidfile::running_pid(p).map(|found| (p, found)));
            let Some((path, (pid, owner))) = found else {
                return Err(Failure::new(
                    exit::UNAVAILABLE,
                    format!(
                        "no running resque daemon found (no control socket at {}, no locked PID file at {})",
                        socket.display(),
                        pid_file.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
                    ),
                ));
            };
            resque::pidfile::check_daemon(pid, owner).map_err(|message| {
                Failure::new(
                    exit::FAILURE,
                    format!("PID file {}: {message}", path.display()),
                )
            })?;
            use nix::sys::signal::Signal;
            let signal = match what {
                "stop" => Signal::SIGTERM,
                "stop-now" => Signal::SIGINT,
                "reload" => Signal::SIGHUP,
                "pause" => Signal::SIGUSR2,
                _ => Signal::SIGCONT,
            };
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).map_err(
                |e| {
                    Failure::new(
                        exit::FAILURE,
                        format!("cannot signal daemon pid {pid}: {e}"),
                    )
                },
            )?;
            if what == "reload" && wait {
                return Err(Failure::new(
                    exit::FAILURE,
                    "sent SIGHUP, but without the control socket the result of the reload is unknown",
                ));
            }
            pid
        }
    };
    if wait && what.starts_with("stop") {
        while process_alive(pid) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if !global.json {
        let done = match what {
            "stop" | "stop-now" if wait => "stopped",
            "stop" | "stop-now" => "stopping",
            "reload" if wait => "reloaded",
            "reload" => "reloading",
            "pause" => "paused",
            _ => "resumed",
        };
        outln!("resque daemon (pid {pid}) {done}");
    } else {
        print_json(&json!({"pid": pid, "request": what, "ok": true}));
    }
    Ok(exit::OK)
}

/// True while `pid` runs; an exited process its parent has not reaped yet (a zombie) counts as
/// gone.
fn process_alive(pid: u32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z'))
        ),
        Err(_) => false,
    }
}

async fn start(
    global: &GlobalArgs,
    args: &StartArgs,
    signals: resque::signals::Installed,
) -> Result<i32, Failure> {
    let config = load_config(global, Some(args))?;
    let log = resque::logging::init(config.worker.log_level);
    resque::limits::raise_nofile();
    let _reaper = resque::reaper::start();
    let runtime = resque::control::runtime_dir(global.instance.as_deref());
    let access = resque::control::Access::from_env();
    resque::control::prepare_runtime_dir(&runtime, &access)
        .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    let pid_path = config
        .worker
        .pid_file
        .clone()
        .unwrap_or_else(|| runtime.join("resque.pid"));
    let _pid_file = resque::pidfile::PidFile::create(&pid_path)
        .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let _signals = resque::signals::forward(signals, tx.clone()).map_err(|e| {
        Failure::new(
            exit::FAILURE,
            format!("cannot start the signal thread: {e}"),
        )
    })?;
    let socket_path = resque::control::socket_path(&runtime);
    let _socket = resque::control::serve(&socket_path, tx.clone(), access)
        .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    // How long PHP processes told to exit at shutdown may take (then they are killed).
    let php_grace = config
        .handlers
        .iter()
        .filter_map(|h| match &h.kind {
            config::HandlerKind::Php(php) => Some(php.grace),
            _ => None,
        })
        .max()
        .unwrap_or_default();
    let reload_global = global.clone();
    let reload_args = args.clone();
    let supervisor = resque::Supervisor::new(config)
        .notifier(resque::systemd::Notifier::from_env())
        .config_loader(Box::new(move || {
            let (path, explicit) = config_path(&reload_global);
            config::load(
                &path,
                explicit,
                reload_global.instance.as_deref(),
                &Overrides::from_env(),
                &flag_overrides(&reload_global, Some(&reload_args)),
            )
        }))
        .on_log_level(Box::new(move |level| log.set_level(level)));
    let result = supervisor.run(rx).await;
    // PHP runners finish their shutdown functions before the daemon exits: on stop, restart and
    // upgrade systemd must find nothing left to kill.
    resque::handler::php::wait_retired(php_grace + Duration::from_secs(2)).await;
    result.map_err(|e| Failure::new(exit::FAILURE, format!("{e:#}")))?;
    Ok(exit::OK)
}

/// `resque instances [status|reload]`: one line per instance; exit 1 if any is not ok.
fn instances(action: InstancesCommand, json: bool) -> Result<i32, Failure> {
    let list = resque::instances::list().map_err(|e| Failure::new(exit::UNAVAILABLE, e))?;
    let reports = match action {
        InstancesCommand::Status => resque::instances::status(&list),
        InstancesCommand::Reload => resque::instances::reload(&list),
    };
    if json {
        print_json(
            &reports
                .iter()
                .map(|r| json!({"unit": r.unit, "ok": r.ok, "state": r.text}))
                .collect::<Vec<_>>(),
        );
    } else if reports.is_empty() {
        outln!("no resque@NAME.service instance is loaded");
    } else {
        let width = reports.iter().map(|r| r.unit.len()).max().unwrap_or(0);
        for r in &reports {
            outln!("{:<width$}  {}", r.unit, r.text);
        }
    }
    let failed = reports.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        return Err(Failure::new(
            exit::FAILURE,
            format!(
                "{} of {} failed",
                count_of(failed as u64, "instance"),
                reports.len()
            ),
        ));
    }
    Ok(exit::OK)
}

async fn bench(global: &GlobalArgs, args: &resque::cli::BenchArgs) -> Result<i32, Failure> {
    let config = load_config(global, None)?;
    let opts = resque::bench::BenchOptions {
        jobs: args.jobs,
        count: args.count,
        handler: args.handler,
        queues: args.queues.clone(),
        latency_samples: args.latency_samples,
        idle_seconds: args.idle_seconds,
        command: args.command.clone(),
        php_runner: args.php_runner.clone(),
    };
    let report = resque::bench::run(&config, &opts)
        .await
        .map_err(|e| Failure::new(exit::UNAVAILABLE, format!("bench: {e:#}")))?;
    if global.json {
        print_json(&report);
    } else {
        outln!(
            "{:?} handler, {} workers, queues {}: {} jobs in {:.2} s = {:.0} jobs/s, {:.1} Redis commands/job",
            report.handler,
            report.count,
            report.queues.join(","),
            report.jobs,
            report.seconds,
            report.jobs_per_second,
            report.redis_commands_per_job
        );
        if let Some(p) = &report.pickup_latency {
            outln!(
                "pickup latency (idle workers): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
            );
        }
        if let Some(idle) = report.idle_commands_per_second_per_worker {
            outln!("idle: {idle:.3} Redis commands/s per worker");
        }
        outln!(
            "RSS {:.1} MiB (peak {:.1} MiB)",
            report.rss_mib,
            report.peak_rss_mib
        );
    }
    Ok(exit::OK)
}

fn generate(what: GenerateCommand) -> Result<i32, Failure> {
    let io = |path: &Path, e: std::io::Error| {
        Failure::new(
            exit::FAILURE,
            format!("cannot write {}: {e}", path.display()),
        )
    };
    match what {
        GenerateCommand::Man { out } => {
            resque::manpage::generate(Cli::command(), &out).map_err(|e| io(&out, e))?;
        }
        GenerateCommand::Completions { out } => {
            use clap_complete::{generate_to, Shell};
            std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                generate_to(shell, &mut Cli::command(), "resque", &out).map_err(|e| io(&out, e))?;
            }
        }
    }
    Ok(exit::OK)
}
