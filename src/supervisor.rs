//! The supervisor: keeps COUNT workers alive, tells systemd how things are, applies reloads and
//! drives shutdown.
//!
//! One loop owns everything. Workers are tasks, one per slot, each with its own Redis connection,
//! a `watch` channel for commands and a tick counter the watchdog reads. A worker task that ends
//! while it should be running (a panic, a bug) has its job put back and is restarted with
//! backoff. Shutdown: stop reserving, let jobs finish within `shutdown_timeout`, then abort them
//! (they go back to their queues), unregister, exit.

use crate::config::{Config, ConfigError, HandlerKind, LogLevel};
use crate::handler::{exec::ExecHandler, php::PhpHandler, Handler, HandlerMap};
use crate::protocol::{commands, resque_time, scripts, WorkerId};
use crate::systemd::Notifier;
use crate::worker::recovery::{self, RecoveryContext};
use crate::worker::{monotonic_secs, wakeup, Control, Mode, PoolStats, Shared, Worker};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// What the supervisor can be asked to do (by signals or the control socket).
#[derive(Debug)]
pub enum Command {
    /// TERM/QUIT (graceful) or INT (kill running jobs and requeue them).
    Stop {
        graceful: bool,
    },
    /// HUP, or `resque reload --wait` with a reply channel for the result.
    Reload(Option<oneshot::Sender<Result<(), String>>>),
    Pause,
    Resume,
    /// USR1: kill the running jobs (they fail) and keep working.
    KillJobs,
}

/// Re-reads the configuration on reload.
pub type ConfigLoader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Ruby resque's workers beat every 60 s and prune after 5 min; we beat well within that.
const HEARTBEAT: Duration = Duration::from_secs(30);
const RECOVERY: Duration = Duration::from_secs(60);
/// A slot that has not ticked for this long is wedged: the watchdog stops being fed.
const WEDGED_AFTER_SECS: u64 = 5;

/// How many Redis connections the workers of a pool share.
const SHARED_CONNECTIONS: usize = 2;

static NEXT_SLOT: AtomicU32 = AtomicU32::new(0);

pub struct Supervisor {
    config: Config,
    /// In-process handlers registered by a library user; they take precedence over the
    /// configured ones.
    own_handlers: Vec<(String, Arc<dyn Handler>)>,
    notifier: Notifier,
    loader: Option<ConfigLoader>,
    on_log_level: Option<Box<dyn Fn(LogLevel) + Send + Sync>>,
    host: String,
}

struct Slot {
    id: String,
    control: watch::Sender<Control>,
    tick: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// The workers of one configuration.
struct Pool {
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    /// Connections the workers share (round-robin). Workers never block in Redis, so sharing
    /// lets concurrent workers' commands go out in one write and come back in one read.
    conns: Vec<redis::aio::ConnectionManager>,
    wake_stop: Arc<Notify>,
    wake_task: JoinHandle<()>,
}

/// Short description for STATUS= and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    workers: usize,
    busy: usize,
    processed: u64,
    failed: u64,
    paused: bool,
    redis_ok: bool,
}

impl Snapshot {
    fn text(&self) -> String {
        format!(
            "{}, {} busy{}; processed {}, failed {}; Redis {}",
            crate::cli::count_of(self.workers as u64, "worker"),
            self.busy,
            if self.paused { ", paused" } else { "" },
            self.processed,
            self.failed,
            if self.redis_ok { "ok" } else { "unreachable" }
        )
    }
}

impl Supervisor {
    pub fn new(config: Config) -> Supervisor {
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
            .replace(':', "-");
        Supervisor {
            config,
            own_handlers: Vec::new(),
            notifier: Notifier::default(),
            loader: None,
            on_log_level: None,
            host,
        }
    }

    /// Runs jobs of classes matching `pattern` in-process with `handler`.
    pub fn handle(mut self, pattern: &str, handler: Arc<dyn Handler>) -> Self {
        self.own_handlers.push((pattern.to_string(), handler));
        self
    }

    pub fn notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = notifier;
        self
    }

    /// How to re-read the configuration on reload (without one, reload re-applies the current).
    pub fn config_loader(mut self, loader: ConfigLoader) -> Self {
        self.loader = Some(loader);
        self
    }

    pub fn on_log_level(mut self, f: Box<dyn Fn(LogLevel) + Send + Sync>) -> Self {
        self.on_log_level = Some(f);
        self
    }

    fn handler_map(&self, config: &Config) -> Result<HandlerMap, String> {
        let mut map = HandlerMap::new();
        for (pattern, handler) in &self.own_handlers {
            map.route(pattern, handler.clone())
                .map_err(|e| format!("handler pattern {pattern:?}: {e}"))?;
        }
        for h in &config.handlers {
            let handler: Arc<dyn Handler> = match &h.kind {
                HandlerKind::Exec(settings) => Arc::new(ExecHandler::new(settings.clone())),
                HandlerKind::Php(settings) => Arc::new(PhpHandler::new(settings.clone())),
            };
            map.route(&h.class, handler)
                .map_err(|e| format!("handler pattern {:?}: {e}", h.class))?;
        }
        Ok(map)
    }

    async fn connect(config: &Config) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
        let client = config.redis.client()?;
        let settings = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.redis.connect_timeout))
            .set_response_timeout(Some(config.redis.command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let mut conn = redis::aio::ConnectionManager::new_with_config(client, settings).await?;
        // Lua scripts are loaded here once, so the first job does not pay for it.
        for script in [
            &*scripts::RESERVE,
            &*scripts::REQUEUE,
            &*scripts::COUNT_LOSS,
            &*scripts::FINISH,
        ] {
            script.load_async(&mut conn).await?;
        }
        Ok(conn)
    }

    fn start_pool(&self, config: &Config, handlers: HandlerMap, stats: Arc<PoolStats>) -> Pool {
        let shared = Arc::new(Shared {
            keys: config.redis.keys(),
            queues: config.worker.queues.clone(),
            handlers,
            interval: config.worker.interval,
            wake: Arc::new(wakeup::Wakeup::new(config.worker.count as usize)),
            stats,
        });
        let wake_stop = Arc::new(Notify::new());
        let prefixes = wakeup::tracking_prefixes(&shared.keys, &shared.queues);
        let wake_task = tokio::spawn(wakeup::run(
            config.redis.clone(),
            prefixes,
            shared.wake.clone(),
            wake_stop.clone(),
            config.worker.interval,
        ));
        Pool {
            shared,
            slots: Vec::new(),
            conns: Vec::new(),
            wake_stop,
            wake_task,
        }
    }

    fn new_worker_id(&self, queues: &[String]) -> WorkerId {
        WorkerId {
            host: self.host.clone(),
            pid: std::process::id(),
            slot: NEXT_SLOT.fetch_add(1, Ordering::Relaxed),
            queues: queues.to_vec(),
        }
    }

    /// Starts one worker in the pool (connecting first).
    async fn spawn_slot(
        &self,
        config: &Config,
        pool: &mut Pool,
        control: Control,
    ) -> Result<Slot, redis::RedisError> {
        let index = pool.slots.len() % SHARED_CONNECTIONS;
        let conn = match pool.conns.get(index) {
            Some(conn) => conn.clone(),
            None => {
                let conn = Self::connect(config).await?;
                pool.conns.push(conn.clone());
                conn
            }
        };
        let id = self.new_worker_id(&pool.shared.queues);
        let id_text = id.to_string();
        let mut reg_conn = conn.clone();
        commands::register(
            &pool.shared.keys,
            std::slice::from_ref(&id_text),
            &resque_time(),
        )
        .query_async::<()>(&mut reg_conn)
        .await?;
        let tick = Arc::new(AtomicU64::new(monotonic_secs()));
        let (tx, rx) = watch::channel(control);
        let worker = Worker::new(id, conn, pool.shared.clone(), tick.clone());
        let task = tokio::spawn(worker.run(rx));
        Ok(Slot {
            id: id_text,
            control: tx,
            tick,
            task,
        })
    }

    /// Runs until stopped. `commands` carries signals and control-socket requests.
    pub async fn run(self, mut commands: mpsc::Receiver<Command>) -> anyhow::Result<()> {
        let mut config = self.config.clone();
        let mut control = Control::default();
        let stats = Arc::new(PoolStats::default());
        let handlers = self.handler_map(&config).map_err(|e| anyhow::anyhow!(e))?;

        // Wait for Redis (the daemon stays up and says so).
        let mut conn = {
            let mut backoff = Duration::from_millis(200);
            loop {
                match Self::connect(&config).await {
                    Ok(conn) => break conn,
                    Err(e) => {
                        let text = format!("Waiting for Redis at {}: {e}", config.redis.display);
                        warn!("{text}");
                        self.notifier.status(&text);
                        tokio::select! {
                            cmd = commands.recv() => match cmd {
                                Some(Command::Stop { .. }) | None => {
                                    self.notifier.stopping("Stopped before Redis answered");
                                    return Ok(());
                                }
                                Some(Command::Reload(Some(reply))) => {
                                    let _ = reply.send(Err("not connected to Redis yet".into()));
                                }
                                Some(_) => {}
                            },
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        };

        self.recover(&mut conn, &config, &HashSet::new()).await;
        let mut pool = self.start_pool(&config, handlers, stats.clone());
        let mut retired: Vec<Slot> = Vec::new();
        self.scale(&config, &mut pool, &mut retired, control).await;

        let mut last_status = self.snapshot(&pool, &stats, control);
        self.notifier.ready(&last_status.text());
        let queues = config.worker.queues.join(",");
        info!(
            workers = pool.slots.len(),
            queues = %queues,
            redis = %config.redis.display,
            "resque ready: {} on queues {queues}, Redis {}",
            crate::cli::count_of(pool.slots.len() as u64, "worker"),
            config.redis.display
        );

        let watchdog_every = self
            .notifier
            .watchdog_timeout()
            .map(|t| t / 2)
            .unwrap_or(Duration::from_secs(3600));
        let mut watchdog = tokio::time::interval(watchdog_every);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut recovery_timer = tokio::time::interval(RECOVERY);
        recovery_timer.tick().await;
        let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
        let mut restart_backoff = Duration::from_millis(100);

        let graceful = loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None => break true,
                    Some(Command::Stop { graceful }) => break graceful,
                    Some(Command::Pause) => {
                        control.paused = true;
                        self.broadcast(&pool, &retired, control);
                        info!("paused: no new jobs are reserved");
                    }
                    Some(Command::Resume) => {
                        control.paused = false;
                        self.broadcast(&pool, &retired, control);
                        info!("resumed");
                    }
                    Some(Command::KillJobs) => {
                        control.kill_epoch += 1;
                        self.broadcast(&pool, &retired, control);
                        info!("killing running jobs");
                    }
                    Some(Command::Reload(reply)) => {
                        self.notifier.reloading();
                        let result = self
                            .reload(&mut config, &mut pool, &mut retired, control, &stats)
                            .await;
                        match &result {
                            Ok(()) => info!(workers = pool.slots.len(), "configuration reloaded"),
                            Err(e) => error!("reload rejected, keeping the running configuration: {e}"),
                        }
                        last_status = self.snapshot(&pool, &stats, control);
                        self.notifier.ready(&last_status.text());
                        if let Some(reply) = reply {
                            let _ = reply.send(result);
                        }
                    }
                },
                _ = watchdog.tick() => {
                    if self.all_ticking(&pool) {
                        self.notifier.watchdog();
                    } else {
                        warn!("a worker is not responding; withholding the watchdog ping");
                    }
                }
                _ = heartbeat.tick() => {
                    let ids: Vec<String> = pool.slots.iter().chain(retired.iter()).map(|s| s.id.clone()).collect();
                    if let Err(e) = commands::register(&pool.shared.keys, &ids, &resque_time())
                        .query_async::<()>(&mut conn).await
                    {
                        warn!(error = %e, "heartbeat failed");
                    }
                }
                _ = recovery_timer.tick() => {
                    let live: HashSet<String> = pool.slots.iter().chain(retired.iter()).map(|s| s.id.clone()).collect();
                    self.recover(&mut conn, &config, &live).await;
                }
                _ = housekeeping.tick() => {
                    retired.retain(|s| !s.task.is_finished());
                    // Restart workers that ended while they should run.
                    let mut i = 0;
                    while i < pool.slots.len() {
                        if pool.slots[i].task.is_finished() {
                            let dead = pool.slots.remove(i);
                            error!(worker = %dead.id, "worker ended unexpectedly; recovering its job and restarting it");
                            self.recover_own(&mut conn, &pool, &dead.id).await;
                            tokio::time::sleep(restart_backoff).await;
                            restart_backoff = (restart_backoff * 2).min(Duration::from_secs(10));
                        } else {
                            i += 1;
                        }
                    }
                    if pool.slots.len() < config.worker.count as usize {
                        self.scale(&config, &mut pool, &mut retired, control).await;
                    } else {
                        restart_backoff = Duration::from_millis(100);
                    }
                    let now = self.snapshot(&pool, &stats, control);
                    if now != last_status {
                        self.notifier.status(&now.text());
                        last_status = now;
                    }
                }
            }
        };

        self.shutdown(&config, pool, retired, graceful, &mut commands, &stats)
            .await;
        Ok(())
    }

    fn snapshot(&self, pool: &Pool, stats: &PoolStats, control: Control) -> Snapshot {
        Snapshot {
            workers: pool.slots.len(),
            busy: stats.busy.load(Ordering::Relaxed),
            processed: stats.processed.load(Ordering::Relaxed),
            failed: stats.failed.load(Ordering::Relaxed),
            paused: control.paused,
            redis_ok: stats.redis_errors.load(Ordering::Relaxed) == 0,
        }
    }

    /// Pause/resume and USR1 reach every worker, draining ones included.
    fn broadcast(&self, pool: &Pool, retired: &[Slot], control: Control) {
        for slot in pool.slots.iter().chain(retired) {
            slot.control.send_modify(|c| {
                c.paused = control.paused;
                c.kill_epoch = control.kill_epoch;
            });
        }
    }

    fn all_ticking(&self, pool: &Pool) -> bool {
        let now = monotonic_secs();
        pool.slots
            .iter()
            .all(|s| now.saturating_sub(s.tick.load(Ordering::Relaxed)) <= WEDGED_AFTER_SECS)
    }

    /// Starts or drains workers until the pool has `count`.
    /// Workers beyond the count drain: they finish their job and exit; they are kept among the
    /// retired until then (dropping their control channel would abort the job in hand).
    async fn scale(
        &self,
        config: &Config,
        pool: &mut Pool,
        retired: &mut Vec<Slot>,
        control: Control,
    ) {
        let want = config.worker.count as usize;
        pool.shared.wake.set_workers(want);
        while pool.slots.len() > want {
            if let Some(slot) = pool.slots.pop() {
                slot.control.send_modify(|c| c.mode = Mode::Drain);
                retired.push(slot);
            }
        }
        while pool.slots.len() < want {
            match self.spawn_slot(config, &mut *pool, control).await {
                Ok(slot) => pool.slots.push(slot),
                Err(e) => {
                    pool.shared
                        .stats
                        .redis_errors
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, "cannot start a worker; will retry");
                    break;
                }
            }
        }
    }

    async fn reload(
        &self,
        config: &mut Config,
        pool: &mut Pool,
        retired: &mut Vec<Slot>,
        control: Control,
        stats: &Arc<PoolStats>,
    ) -> Result<(), String> {
        let new = match &self.loader {
            Some(load) => load().map_err(|e| e.to_string())?,
            None => config.clone(),
        };
        let handlers = self.handler_map(&new)?;
        if new.worker.log_level != config.worker.log_level {
            if let Some(set) = &self.on_log_level {
                set(new.worker.log_level);
            }
        }
        let restart = new.redis != config.redis
            || new.worker.queues != config.worker.queues
            || new.worker.interval != config.worker.interval
            || new.handlers != config.handlers;
        if restart {
            // Drain the old workers (their jobs finish and are recorded) and start new ones;
            // every job is reserved by exactly one worker, so none runs twice or is lost.
            let old = std::mem::replace(pool, self.start_pool(&new, handlers, stats.clone()));
            old.wake_stop.notify_one();
            for slot in old.slots {
                slot.control.send_modify(|c| c.mode = Mode::Drain);
                retired.push(slot);
            }
            *config = new;
            self.scale(config, pool, retired, control).await;
        } else {
            *config = new;
            self.scale(config, pool, retired, control).await;
        }
        Ok(())
    }

    async fn recover(
        &self,
        conn: &mut redis::aio::ConnectionManager,
        config: &Config,
        live: &HashSet<String>,
    ) {
        let keys = config.redis.keys();
        let ctx = RecoveryContext {
            keys: &keys,
            host: &self.host,
            live,
            on_lost: config.worker.on_lost,
            max_lost: config.worker.max_lost,
            dead_after: config.worker.dead_after,
        };
        let owner = format!("{}:{}", self.host, std::process::id());
        match recovery::recover(conn, &ctx, &owner).await {
            Ok(r) if r.dead_workers > 0 => info!(
                dead_workers = r.dead_workers,
                requeued = r.requeued,
                failed = r.failed,
                "recovered jobs of dead workers"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "recovery failed; will try again"),
        }
    }

    /// A worker task of ours ended: put its job back and remove its records.
    async fn recover_own(&self, conn: &mut redis::aio::ConnectionManager, pool: &Pool, id: &str) {
        let keys = &pool.shared.keys;
        let held: Result<Vec<String>, _> = redis::cmd("LRANGE")
            .arg(keys.inflight(id))
            .arg(0)
            .arg(-1)
            .query_async(conn)
            .await;
        let queue: Result<Option<String>, _> = redis::cmd("HGET")
            .arg(keys.inflight_index())
            .arg(id)
            .query_async(conn)
            .await;
        if let (Ok(held), Ok(Some(queue))) = (held, queue) {
            for raw in held {
                let r: Result<i64, _> = scripts::REQUEUE
                    .key(keys.inflight(id))
                    .key(keys.queue(&queue))
                    .key(keys.worker(id))
                    .key(keys.queues())
                    .arg(&raw)
                    .arg(&queue)
                    .invoke_async(conn)
                    .await;
                if let Err(e) = r {
                    warn!(worker = id, error = %e, "cannot put the job back now; periodic recovery will");
                    return;
                }
            }
        }
        let _: Result<(), _> = commands::unregister(keys, id).query_async(conn).await;
    }

    async fn shutdown(
        &self,
        config: &Config,
        pool: Pool,
        retired: Vec<Slot>,
        graceful: bool,
        commands: &mut mpsc::Receiver<Command>,
        stats: &PoolStats,
    ) {
        let timeout = if graceful {
            config.worker.shutdown_timeout
        } else {
            Duration::ZERO
        };
        let busy = stats.busy.load(Ordering::Relaxed);
        let text = format!(
            "Stopping: waiting up to {} for {}",
            humantime::format_duration(timeout),
            crate::cli::count_of(busy as u64, "running job")
        );
        info!("{text}");
        self.notifier.stopping(&text);
        pool.wake_stop.notify_one();
        let slots: Vec<Slot> = pool.slots.into_iter().chain(retired).collect();
        let mode = if graceful { Mode::Drain } else { Mode::Abort };
        for slot in &slots {
            slot.control.send_modify(|c| c.mode = mode);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut extend = tokio::time::interval(Duration::from_secs(5));
        // The supervisor keeps feeding the watchdog while it drains: jobs finishing is progress.
        let mut watchdog = tokio::time::interval(
            self.notifier
                .watchdog_timeout()
                .map(|t| t / 2)
                .unwrap_or(Duration::from_secs(3600)),
        );
        let mut aborted = !graceful;
        loop {
            if slots.iter().all(|s| s.task.is_finished()) {
                break;
            }
            tokio::select! {
                _ = extend.tick() => {
                    // Tell systemd we are making progress; the jobs' own limit still applies.
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    self.notifier.extend_timeout(left + Duration::from_secs(15));
                }
                _ = watchdog.tick() => self.notifier.watchdog(),
                _ = tokio::time::sleep_until(deadline), if !aborted => {
                    warn!("shutdown timeout reached: killing running jobs and putting them back in their queues");
                    for slot in &slots { slot.control.send_modify(|c| c.mode = Mode::Abort); }
                    aborted = true;
                }
                cmd = commands.recv() => {
                    if let Some(Command::Stop { graceful: false }) = cmd {
                        if !aborted {
                            warn!("second stop request: killing running jobs and putting them back");
                            for slot in &slots { slot.control.send_modify(|c| c.mode = Mode::Abort); }
                            aborted = true;
                        }
                    }
                    if let Some(Command::Reload(Some(reply))) = cmd {
                        let _ = reply.send(Err("the daemon is shutting down".into()));
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        for slot in slots {
            let _ = slot.task.await;
        }
        pool.wake_task.abort();
        info!(
            processed = stats.processed.load(Ordering::Relaxed),
            failed = stats.failed.load(Ordering::Relaxed),
            "resque stopped"
        );
    }
}
