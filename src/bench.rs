//! `resque bench`: enqueue N no-op jobs into a scratch namespace, drain them with the chosen
//! handler and COUNT, and report jobs/s, enqueue→start latency, Redis commands per job, idle cost
//! and memory — like Sidekiq's sidekiqload. It runs the real Supervisor and workers in this
//! process, so the figures are the daemon's.

use crate::config::{self, Config, Overrides};
use crate::handler::{Handler, Job, JobFailure};
use crate::supervisor::{Command, Supervisor};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// How the benchmark's jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchHandler {
    /// An in-process Rust handler that does nothing.
    InProcess,
    /// `exec`: a `/bin/true` process per job (or --command).
    Exec,
    /// `php`: a no-op PHP job class in the runner pool.
    Php,
    /// `php` with `isolation = "fork"`: php-resque's fork per job.
    PhpFork,
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub jobs: usize,
    pub count: u32,
    pub handler: BenchHandler,
    /// Queues the workers serve (the jobs go to the last one).
    pub queues: Vec<String>,
    pub latency_samples: usize,
    pub idle_seconds: u64,
    pub command: Vec<String>,
    pub php_runner: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub handler: BenchHandler,
    pub count: u32,
    pub queues: Vec<String>,
    pub jobs: usize,
    pub seconds: f64,
    pub jobs_per_second: f64,
    pub redis_commands_per_job: f64,
    /// Enqueue→start latency with idle workers, one job at a time.
    pub pickup_latency: Option<Percentiles>,
    /// Redis commands per second per worker while idle.
    pub idle_commands_per_second_per_worker: Option<f64>,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// CPU used while the jobs drained: by this process and by redis-server.
    pub drain_cpu: Option<DrainCpu>,
}

/// Where the CPU went while the jobs drained, to tell whether Redis or resque is the limit.
#[derive(Debug, Clone, Serialize)]
pub struct DrainCpu {
    pub seconds: f64,
    /// user + system CPU seconds of this process (workers, handlers' in-process part).
    pub resque_cpu_seconds: f64,
    /// user + system CPU seconds of this process's child processes (exec jobs, PHP runners and
    /// their forked job children): the reaped ones and the live ones.
    pub children_cpu_seconds: f64,
    /// user + system CPU seconds of redis-server (INFO cpu), all its threads.
    pub redis_cpu_seconds: f64,
    /// CPU seconds per wall second: 1.0 is one core busy.
    pub resque_cores: f64,
    pub redis_cores: f64,
}

/// Records when each job started, relative to its `queue_time`.
///
/// The probe runs inside every job, so it must cost next to nothing: it wakes the waiting
/// benchmark task only when `done` reaches `target` (not once per job: a cross-thread wake-up
/// per job was a measurable share of a no-op job), and it records latencies only while
/// `sampling` (not for the whole drain).
struct Probe {
    started: AtomicUsize,
    latencies: Mutex<Vec<f64>>,
    sampling: AtomicBool,
    first_start: Mutex<Option<Instant>>,
    done: AtomicUsize,
    target: AtomicUsize,
    notify: Notify,
}

fn rss_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

async fn commands_processed(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("INFO stats has no total_commands_processed"))
}

/// The fields of `/proc/PID/stat` after the command name (field 3 of proc(5) is index 0).
fn proc_stat(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Sum of the clock-tick fields at `indexes`, in seconds (USER_HZ = 100).
fn ticks(fields: &[String], indexes: &[usize]) -> Option<f64> {
    let mut sum = 0.0;
    for &i in indexes {
        sum += fields.get(i)?.parse::<f64>().ok()?;
    }
    Some(sum / 100.0)
}

/// user + system CPU seconds of this process, all threads.
fn self_cpu_seconds() -> Option<f64> {
    ticks(&proc_stat("self")?, &[11, 12])
}

/// user + system CPU seconds of this process's children: those reaped (cutime + cstime) and
/// those still running (their own utime + stime, plus what their reaped children used: a PHP
/// runner's forked job children).
fn children_cpu_seconds() -> Option<f64> {
    let me = std::process::id().to_string();
    let mut sum = ticks(&proc_stat("self")?, &[13, 14])?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some(fields) = proc_stat(pid) {
            if fields.get(1).map(String::as_str) == Some(me.as_str()) {
                sum += ticks(&fields, &[11, 12, 13, 14]).unwrap_or(0.0);
            }
        }
    }
    Some(sum)
}

/// user + system CPU seconds of redis-server (INFO cpu).
async fn redis_cpu_seconds(conn: &mut redis::aio::MultiplexedConnection) -> Option<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await.ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some(field("used_cpu_user:")? + field("used_cpu_sys:")?)
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    Percentiles {
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The configuration the benchmark's Supervisor runs with.
fn bench_config(
    base: &Config,
    opts: &BenchOptions,
    namespace: &str,
    dir: &Path,
) -> anyhow::Result<Config> {
    let handler = match opts.handler {
        BenchHandler::InProcess => String::new(),
        BenchHandler::Exec => format!(
            "[[handler]]\nclass = \"*\"\ntype = \"exec\"\ncommand = [{}]\n",
            opts.command
                .iter()
                .map(|a| toml_string(a))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        BenchHandler::Php | BenchHandler::PhpFork => {
            let bootstrap = dir.join("bench_jobs.php");
            std::fs::write(
                &bootstrap,
                "<?php\nclass NoopJob { public function perform() {} }\n",
            )?;
            let runner = opts
                .php_runner
                .clone()
                .unwrap_or_else(crate::handler::php::default_runner_path);
            format!(
                "[[handler]]\nclass = \"*\"\ntype = \"php\"\nbootstrap = {}\nrunner = {}\nisolation = \"{}\"\n",
                toml_string(&bootstrap.display().to_string()),
                toml_string(&runner.display().to_string()),
                if opts.handler == BenchHandler::PhpFork { "fork" } else { "pool" }
            )
        }
    };
    let text = format!(
        "[worker]\nqueues = [{}]\ncount = {}\ninterval = \"5s\"\nshutdown_timeout = \"10s\"\n{handler}",
        opts.queues.iter().map(|q| toml_string(q)).collect::<Vec<_>>().join(", "),
        opts.count,
    );
    let mut config = config::from_str(
        &text,
        &dir.join("bench.toml"),
        None,
        &Overrides::default(),
        &Overrides::default(),
    )?;
    config.redis = base.redis.clone();
    config.redis.namespace = crate::protocol::normalize_namespace(namespace);
    Ok(config)
}

/// Runs the benchmark against the Redis of `base`.
pub async fn run(base: &Config, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let namespace = format!("resque-bench-{}", &crate::protocol::new_job_id()[..8]);
    let dir = tempfile_dir()?;
    let config = bench_config(base, opts, &namespace, &dir)?;
    let keys = config.redis.keys();
    let client = crate::connection::open_client(&config.redis).await?;
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config.redis.async_config())
        .await?;
    let queue = opts
        .queues
        .last()
        .cloned()
        .unwrap_or_else(|| "bench".into());

    // Enqueue every job first (pipelined, in batches).
    let class = "NoopJob";
    let _: () = redis::cmd("SADD")
        .arg(keys.queues())
        .arg(&queue)
        .query_async(&mut conn)
        .await?;
    let mut batch = redis::pipe();
    for i in 0..opts.jobs {
        let payload = crate::protocol::Payload::new_php(
            class,
            serde_json::json!({ "n": i }),
            &crate::protocol::new_job_id(),
        );
        batch.rpush(keys.queue(&queue), payload.raw()).ignore();
        if i % 1000 == 999 || i + 1 == opts.jobs {
            batch.query_async::<()>(&mut conn).await?;
            batch = redis::pipe();
        }
    }

    let probe = Arc::new(Probe {
        started: AtomicUsize::new(0),
        latencies: Mutex::new(Vec::new()),
        sampling: AtomicBool::new(false),
        first_start: Mutex::new(None),
        done: AtomicUsize::new(0),
        target: AtomicUsize::new(opts.jobs.max(1)),
        notify: Notify::new(),
    });
    // The in-process probe wraps the configured handler: route every class through it.
    let routed = ProbeRoute::new(
        probe.clone(),
        &config,
        opts.handler != BenchHandler::InProcess,
    )?;
    let cpu_before = (
        Instant::now(),
        self_cpu_seconds(),
        children_cpu_seconds(),
        redis_cpu_seconds(&mut conn).await,
    );
    let before = commands_processed(&mut conn).await?;
    let (tx, rx) = mpsc::channel(4);
    let supervisor = Supervisor::new(config.clone()).handle("*", Arc::new(routed));
    let task = tokio::spawn(supervisor.run(rx));

    while probe.done.load(Ordering::Relaxed) < opts.jobs {
        let _ = tokio::time::timeout(Duration::from_millis(200), probe.notify.notified()).await;
        if task.is_finished() {
            anyhow::bail!("the workers stopped before the jobs were done");
        }
    }
    let first = probe
        .first_start
        .lock()
        .ok()
        .and_then(|f| *f)
        .unwrap_or_else(Instant::now);
    let seconds = first.elapsed().as_secs_f64();
    let after = commands_processed(&mut conn).await?;
    let drain_cpu = match (
        cpu_before,
        self_cpu_seconds(),
        children_cpu_seconds(),
        redis_cpu_seconds(&mut conn).await,
    ) {
        ((t0, Some(r0), Some(c0), Some(s0)), Some(r1), Some(c1), Some(s1)) => {
            let wall = t0.elapsed().as_secs_f64().max(1e-9);
            Some(DrainCpu {
                seconds: wall,
                resque_cpu_seconds: r1 - r0,
                children_cpu_seconds: c1 - c0,
                redis_cpu_seconds: s1 - s0,
                resque_cores: (r1 - r0) / wall,
                redis_cores: (s1 - s0) / wall,
            })
        }
        _ => None,
    };
    // The INFO call of ours in between counts too: subtract it.
    let per_job = (after.saturating_sub(before).saturating_sub(1)) as f64 / opts.jobs.max(1) as f64;

    // Pickup latency: idle workers, one job at a time.
    let pickup_latency = if opts.latency_samples > 0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(mut l) = probe.latencies.lock() {
            l.clear();
        }
        probe.sampling.store(true, Ordering::Relaxed);
        for i in 0..opts.latency_samples {
            let target = probe.done.load(Ordering::Relaxed) + 1;
            probe.target.store(target, Ordering::Relaxed);
            let payload = crate::protocol::Payload::new_php(
                class,
                serde_json::json!({ "sample": i }),
                &crate::protocol::new_job_id(),
            );
            let _: () = redis::cmd("RPUSH")
                .arg(keys.queue(&queue))
                .arg(payload.raw())
                .query_async(&mut conn)
                .await?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while probe.done.load(Ordering::Relaxed) < target {
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), probe.notify.notified()).await;
                if Instant::now() > deadline {
                    anyhow::bail!("a latency sample did not run within 30 s");
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let samples = probe
            .latencies
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        Some(percentiles(samples))
    } else {
        None
    };

    // Idle cost.
    let idle = if opts.idle_seconds > 0 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let a = commands_processed(&mut conn).await?;
        tokio::time::sleep(Duration::from_secs(opts.idle_seconds)).await;
        let b = commands_processed(&mut conn).await?;
        let commands = b.saturating_sub(a).saturating_sub(1) as f64;
        Some(commands / opts.idle_seconds as f64 / opts.count.max(1) as f64)
    } else {
        None
    };

    let report = BenchReport {
        handler: opts.handler,
        count: opts.count,
        queues: opts.queues.clone(),
        jobs: opts.jobs,
        seconds,
        jobs_per_second: opts.jobs as f64 / seconds.max(1e-9),
        redis_commands_per_job: per_job,
        pickup_latency,
        idle_commands_per_second_per_worker: idle,
        rss_mib: rss_mib("VmRSS:"),
        peak_rss_mib: rss_mib("VmHWM:"),
        drain_cpu,
    };
    let _ = tx.send(Command::Stop { graceful: true }).await;
    let _ = task.await;
    // Remove the scratch namespace.
    let mut scan: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys.prefix()))
        .query_async(&mut conn)
        .await?;
    scan.retain(|k| k.starts_with(keys.prefix()));
    if !scan.is_empty() {
        let _: () = redis::cmd("DEL").arg(&scan).query_async(&mut conn).await?;
    }
    Ok(report)
}

/// The benchmark's scratch directory (PHP bootstrap, config), removed however the run ends.
struct ScratchDir(std::path::PathBuf);

impl std::ops::Deref for ScratchDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> anyhow::Result<ScratchDir> {
    let dir = std::env::temp_dir().join(format!("resque-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(ScratchDir(dir))
}

/// Routes every job through the probe, then to the handler the configuration names.
struct ProbeRoute {
    probe: Arc<Probe>,
    handlers: crate::handler::HandlerMap,
}

impl ProbeRoute {
    /// `configured`: run the configuration's handlers; otherwise the in-process no-op.
    fn new(probe: Arc<Probe>, config: &Config, configured: bool) -> anyhow::Result<ProbeRoute> {
        let mut handlers = crate::handler::HandlerMap::new();
        for h in config.handlers.iter().filter(|_| configured) {
            let handler: Arc<dyn Handler> = match &h.kind {
                config::HandlerKind::Exec(s) => {
                    Arc::new(crate::handler::exec::ExecHandler::new(s.clone()))
                }
                config::HandlerKind::Php(s) => {
                    Arc::new(crate::handler::php::PhpHandler::new(s.clone()))
                }
            };
            handlers.route(&h.class, handler)?;
        }
        Ok(ProbeRoute { probe, handlers })
    }
}

#[async_trait::async_trait]
impl Handler for ProbeRoute {
    async fn perform(&self, job: &Job) -> Result<(), JobFailure> {
        let probe = &self.probe;
        if probe.sampling.load(Ordering::Relaxed) {
            let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
            if let Some(t) = job
                .payload
                .fields()
                .get("queue_time")
                .and_then(|v| v.as_f64())
            {
                if let Ok(mut l) = probe.latencies.lock() {
                    l.push((now - t) * 1000.0);
                }
            }
        }
        if probe.started.fetch_add(1, Ordering::Relaxed) == 0 {
            if let Ok(mut f) = probe.first_start.lock() {
                *f = Some(Instant::now());
            }
        }
        let result = match self.handlers.find(job.class()) {
            Some(h) => h.perform(job).await,
            None => Ok(()),
        };
        let done = probe.done.fetch_add(1, Ordering::AcqRel) + 1;
        if done >= probe.target.load(Ordering::Acquire) {
            probe.notify.notify_one();
        }
        result
    }
}
