//! The supervisor: keeps COUNT workers alive, tells systemd how things are, applies reloads and
//! drives shutdown.
//!
//! One loop owns everything, and it never waits for Redis: it feeds the watchdog, so a Redis
//! stall must not look like a hung daemon. Workers are tasks, one per slot, sharing reconnecting
//! connections, each with a `watch` channel for commands and a tick counter the watchdog reads;
//! they register themselves. Heartbeat and recovery run in their own task ([`Upkeep`]). A worker
//! task that ends while it should be running (a panic, a bug) has its job put back and is
//! restarted with backoff. Shutdown: stop reserving, let jobs finish within `shutdown_timeout`,
//! then abort them (they go back to their queues), unregister, exit.

use crate::config::{Config, ConfigError, HandlerKind, LogLevel};
use crate::connection::{Connection, Health};
use crate::handler::{exec::ExecHandler, php::PhpHandler, Handler, HandlerMap};
use crate::protocol::{commands, resque_time, WorkerId};
use crate::systemd::Notifier;
use crate::worker::late_status::LateStatuses;
use crate::worker::recovery::{self, RecoveryContext};
use crate::worker::{monotonic_secs, wakeup, Control, Mode, PoolStats, Shared, Worker};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
/// A slot that has not ticked for this long is wedged: the watchdog stops being fed. Workers
/// tick every second even while they wait for Redis, so a slow Redis does not count; the limit
/// still follows the command timeout, with room, so that no wait of ours can look like a wedge.
fn wedged_after_secs(config: &Config) -> u64 {
    (config.redis.command_timeout.as_secs() + 2).max(5)
}

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
    registered: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// The workers of one configuration.
struct Pool {
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    /// Connections the workers share (round-robin). Workers never block in Redis, so sharing
    /// lets concurrent workers' commands go out in one write and come back in one read.
    conns: Vec<Connection>,
    /// The configured count.
    wanted: usize,
    wake_stop: Arc<Notify>,
    wake_task: JoinHandle<()>,
    late_task: JoinHandle<()>,
}

/// Heartbeat and recovery, in their own task with their own connection, so that neither can
/// hold up the supervisor's loop while Redis is slow.
struct Upkeep {
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Upkeep {
    fn stop(self) {
        self.stop.notify_one();
        self.task.abort();
    }
}

/// Short description for STATUS= and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    /// Workers registered in Redis, and how many there should be.
    workers: usize,
    wanted: usize,
    busy: usize,
    processed: u64,
    failed: u64,
    paused: bool,
    redis: String,
}

impl Snapshot {
    fn text(&self) -> String {
        let workers = if self.workers == self.wanted {
            crate::cli::count_of(self.workers as u64, "worker")
        } else {
            format!(
                "{} of {}",
                self.workers,
                crate::cli::count_of(self.wanted as u64, "worker")
            )
        };
        format!(
            "{workers}, {} busy{}; processed {}, failed {}; Redis {}",
            self.busy,
            if self.paused { ", paused" } else { "" },
            self.processed,
            self.failed,
            self.redis
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

    fn start_pool(
        &self,
        config: &Config,
        handlers: HandlerMap,
        stats: Arc<PoolStats>,
        health: &Arc<Health>,
    ) -> Pool {
        let shared = Arc::new(Shared {
            keys: config.redis.keys(),
            queues: config.worker.queues.clone(),
            handlers,
            interval: config.worker.interval,
            wake: Arc::new(wakeup::Wakeup::new(config.worker.count as usize)),
            stats,
            late: LateStatuses::new(),
            wait_replicas: (config.redis.wait_replicas > 0)
                .then_some((config.redis.wait_replicas, config.redis.wait_timeout)),
            retry: Arc::new(crate::scheduler::retry::RetryPolicies::new(
                self.own_handlers.iter().map(|(p, _)| p.as_str()),
                &config.handlers,
            )),
        });
        let wake_stop = Arc::new(Notify::new());
        let tracked = wakeup::Tracked {
            queue_prefixes: wakeup::tracking_prefixes(&shared.keys, &shared.queues),
            status_prefix: commands::status_key_prefix(&shared.keys),
            late: shared.late.clone(),
            health: health.clone(),
        };
        let wake_task = tokio::spawn(wakeup::run(
            config.redis.clone(),
            tracked,
            shared.wake.clone(),
            wake_stop.clone(),
            config.worker.interval,
        ));
        let conns: Vec<Connection> = (0..SHARED_CONNECTIONS)
            .map(|_| Connection::new(&config.redis, health.clone()))
            .collect();
        let late_task = tokio::spawn(shared.late.clone().run(conns[0].clone()));
        Pool {
            shared,
            slots: Vec::new(),
            conns,
            wanted: config.worker.count as usize,
            wake_stop,
            wake_task,
            late_task,
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

    /// Starts one worker in the pool. It registers itself (and retries while Redis cannot
    /// take it), so this never waits for Redis.
    fn spawn_slot(&self, pool: &mut Pool, control: Control) -> Slot {
        let conn = pool.conns[pool.slots.len() % pool.conns.len()].clone();
        let id = self.new_worker_id(&pool.shared.queues);
        let id_text = id.to_string();
        let tick = Arc::new(AtomicU64::new(monotonic_secs()));
        let registered = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(control);
        let worker = Worker::new(
            id,
            conn,
            pool.shared.clone(),
            tick.clone(),
            registered.clone(),
        );
        let task = tokio::spawn(worker.run(rx));
        Slot {
            id: id_text,
            control: tx,
            tick,
            registered,
            task,
        }
    }

    /// Heartbeat (every worker id in `live`) and periodic recovery, in their own task.
    fn start_upkeep(
        &self,
        config: &Config,
        live: Arc<Mutex<Vec<String>>>,
        health: &Arc<Health>,
    ) -> Upkeep {
        let stop = Arc::new(Notify::new());
        let mut conn = Connection::new(&config.redis, health.clone());
        let config = config.clone();
        let host = self.host.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let keys = config.redis.keys();
            let mut heartbeat = tokio::time::interval(HEARTBEAT);
            heartbeat.tick().await;
            let mut recovery_timer = tokio::time::interval(RECOVERY);
            recovery_timer.tick().await;
            loop {
                tokio::select! {
                    _ = stopped.notified() => return,
                    _ = heartbeat.tick() => {
                        let ids = live_ids(&live);
                        if let Err(e) = commands::register(&keys, &ids, &resque_time())
                            .query_async::<()>(&mut conn).await
                        {
                            warn!(error = %e, "heartbeat failed");
                        }
                    }
                    _ = recovery_timer.tick() => {
                        let ids: HashSet<String> = live_ids(&live).into_iter().collect();
                        recover_pass(&mut conn, &config, &host, &ids).await;
                    }
                }
            }
        });
        Upkeep { stop, task }
    }

    /// Runs until stopped. `commands` carries signals and control-socket requests.
    pub async fn run(self, mut commands: mpsc::Receiver<Command>) -> anyhow::Result<()> {
        let mut config = self.config.clone();
        let mut control = Control::default();
        let stats = Arc::new(PoolStats::default());
        let health = Health::new();
        let handlers = self.handler_map(&config).map_err(|e| anyhow::anyhow!(e))?;

        // With Sentinel, master switches are followed as they are announced.
        let mut switches = tokio::spawn(crate::connection::follow_switches(
            config.redis.clone(),
            health.clone(),
        ));
        // Wait for Redis (the daemon stays up and says so).
        let mut conn = Connection::new(&config.redis, health.clone());
        let mut backoff = Duration::from_millis(200);
        while let Err(e) = conn.check().await {
            let text = format!("Waiting for Redis at {}: {e}", config.redis.display);
            warn!("{text}");
            self.notifier.status(&text);
            if self.wait_or_stop(&mut commands, backoff).await {
                self.notifier.stopping("Stopped before Redis answered");
                switches.abort();
                return Ok(());
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }

        recover_pass(&mut conn, &config, &self.host, &HashSet::new()).await;
        let mut pool = self.start_pool(&config, handlers, stats.clone(), &health);
        let mut retired: Vec<Slot> = Vec::new();
        self.scale(&config, &mut pool, &mut retired, control);
        let live: Arc<Mutex<Vec<String>>> = Arc::default();
        set_live(&live, &pool, &retired);
        let mut upkeep = self.start_upkeep(&config, live.clone(), &health);
        let mut scheduler = crate::scheduler::Scheduler::start(&config, &health, &self.host);

        // READY once the workers are registered (from the loop below): before that nothing
        // works (Redis out of memory, read-only…), and STATUS says why.
        let mut ready_sent = false;
        let mut last_status: Option<Snapshot> = None;

        let watchdog_every = self
            .notifier
            .watchdog_timeout()
            .map(|t| t / 2)
            .unwrap_or(Duration::from_secs(3600));
        let mut watchdog = tokio::time::interval(watchdog_every);
        let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
        let mut restart_backoff = Duration::from_millis(100);
        let mut restart_not_before = tokio::time::Instant::now();
        // Since when fewer workers than wanted are registered (the watchdog is withheld if that
        // lasts: the daemon cannot do its job and systemd should know).
        let mut short_since: Option<tokio::time::Instant> = None;

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
                        if ready_sent {
                            self.notifier.reloading();
                        }
                        let result = self
                            .reload(&mut config, &mut pool, &mut retired, control, &stats, &health)
                            .await;
                        match &result {
                            Ok(redis_changed) => {
                                if *redis_changed {
                                    // Every connection follows: the supervisor's, heartbeat,
                                    // registration and recovery too.
                                    conn = Connection::new(&config.redis, health.clone());
                                    switches.abort();
                                    switches = tokio::spawn(crate::connection::follow_switches(
                                        config.redis.clone(),
                                        health.clone(),
                                    ));
                                    upkeep.stop();
                                    upkeep = self.start_upkeep(&config, live.clone(), &health);
                                    let old = std::mem::replace(&mut scheduler, crate::scheduler::Scheduler::start(&config, &health, &self.host));
                                    tokio::spawn(old.stop());
                                } else {
                                    scheduler.update(&config);
                                }
                                info!(workers = pool.slots.len(), "configuration reloaded")
                            }
                            Err(e) => error!("reload rejected, keeping the running configuration: {e}"),
                        }
                        let now = self.snapshot(&pool, &stats, control, &health);
                        if ready_sent {
                            self.notifier.ready(&now.text());
                        }
                        last_status = Some(now);
                        if let Some(reply) = reply {
                            let _ = reply.send(result.map(|_| ()));
                        }
                    }
                },
                _ = watchdog.tick(), if ready_sent => {
                    let short_too_long = short_since
                        .is_some_and(|t| t.elapsed() > watchdog_every * 4);
                    if !self.all_ticking(&pool, &config) {
                        warn!("a worker is not responding; withholding the watchdog ping");
                    } else if short_too_long {
                        warn!("fewer workers than configured are running; withholding the watchdog ping");
                    } else {
                        self.notifier.watchdog();
                    }
                }
                _ = housekeeping.tick() => {
                    retired.retain(|s| !s.task.is_finished());
                    // Restart workers that ended while they should run.
                    let mut i = 0;
                    while i < pool.slots.len() {
                        if pool.slots[i].task.is_finished() {
                            let dead = pool.slots.remove(i);
                            error!(worker = %dead.id, "worker ended unexpectedly; recovering its job and restarting it");
                            tokio::spawn(recover_own(conn.clone(), pool.shared.keys.clone(), dead.id));
                            restart_not_before = tokio::time::Instant::now() + restart_backoff;
                            restart_backoff = (restart_backoff * 2).min(Duration::from_secs(10));
                        } else {
                            i += 1;
                        }
                    }
                    if pool.slots.len() < config.worker.count as usize {
                        if tokio::time::Instant::now() >= restart_not_before {
                            self.scale(&config, &mut pool, &mut retired, control);
                        }
                    } else {
                        restart_backoff = Duration::from_millis(100);
                    }
                    set_live(&live, &pool, &retired);
                    let now = self.snapshot(&pool, &stats, control, &health);
                    if now.workers < now.wanted {
                        short_since.get_or_insert_with(tokio::time::Instant::now);
                    } else {
                        short_since = None;
                    }
                    if !ready_sent && now.workers == now.wanted {
                        ready_sent = true;
                        self.notifier.ready(&now.text());
                        info!(
                            workers = now.workers,
                            queues = %config.worker.queues.join(","),
                            redis = %config.redis.display,
                            "resque ready: {} on queues {}, Redis {}",
                            crate::cli::count_of(now.workers as u64, "worker"),
                            config.worker.queues.join(","),
                            config.redis.display
                        );
                        last_status = Some(now);
                    } else if last_status.as_ref() != Some(&now) {
                        let text = if ready_sent {
                            now.text()
                        } else {
                            format!("Waiting for Redis at {} to take the workers: {}", config.redis.display, now.text())
                        };
                        self.notifier.status(&text);
                        last_status = Some(now);
                    }
                }
            }
        };

        // The scheduler lets go of its lock at once, so another daemon takes over while we drain.
        let scheduler_stopped = tokio::spawn(scheduler.stop());
        self.shutdown(&config, pool, retired, graceful, &mut commands, &stats)
            .await;
        upkeep.stop();
        switches.abort();
        let _ = scheduler_stopped.await;
        Ok(())
    }

    /// Waits `limit` for a stop request (true) while answering the others; for the phases
    /// before READY.
    async fn wait_or_stop(&self, commands: &mut mpsc::Receiver<Command>, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Stop { .. }) | None => return true,
                    Some(Command::Reload(Some(reply))) => {
                        let _ = reply.send(Err("not connected to Redis yet".into()));
                    }
                    Some(_) => {}
                },
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    fn snapshot(
        &self,
        pool: &Pool,
        stats: &PoolStats,
        control: Control,
        health: &Health,
    ) -> Snapshot {
        Snapshot {
            workers: pool
                .slots
                .iter()
                .filter(|s| s.registered.load(Ordering::Relaxed))
                .count(),
            wanted: pool.wanted,
            busy: stats.busy.load(Ordering::Relaxed),
            processed: stats.processed.load(Ordering::Relaxed),
            failed: stats.failed.load(Ordering::Relaxed),
            paused: control.paused,
            redis: health.text(),
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

    fn all_ticking(&self, pool: &Pool, config: &Config) -> bool {
        let now = monotonic_secs();
        let limit = wedged_after_secs(config);
        pool.slots
            .iter()
            .all(|s| now.saturating_sub(s.tick.load(Ordering::Relaxed)) <= limit)
    }

    /// Starts or drains workers until the pool has `count`.
    /// Workers beyond the count drain: they finish their job and exit; they are kept among the
    /// retired until then (dropping their control channel would abort the job in hand).
    fn scale(&self, config: &Config, pool: &mut Pool, retired: &mut Vec<Slot>, control: Control) {
        let want = config.worker.count as usize;
        pool.wanted = want;
        pool.shared.wake.set_workers(want);
        while pool.slots.len() > want {
            if let Some(slot) = pool.slots.pop() {
                slot.control.send_modify(|c| c.mode = Mode::Drain);
                retired.push(slot);
            }
        }
        while pool.slots.len() < want {
            let slot = self.spawn_slot(pool, control);
            pool.slots.push(slot);
        }
    }

    /// Applies a new configuration, all or nothing. Returns whether the Redis settings changed
    /// (the caller moves its own connections over).
    async fn reload(
        &self,
        config: &mut Config,
        pool: &mut Pool,
        retired: &mut Vec<Slot>,
        control: Control,
        stats: &Arc<PoolStats>,
        health: &Arc<Health>,
    ) -> Result<bool, String> {
        let new = match &self.loader {
            Some(load) => load().map_err(|e| e.to_string())?,
            None => config.clone(),
        };
        let handlers = self.handler_map(&new)?;
        let redis_changed = new.redis != config.redis;
        if redis_changed {
            // Check the new server before anything stops: connected, scripts loaded, a command
            // answered. On failure the old workers go on as they were.
            let probe = Connection::new(&new.redis, Health::new());
            let limit = new.redis.connect_timeout + new.redis.command_timeout;
            match tokio::time::timeout(limit, probe.check()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(format!(
                        "cannot use the new Redis at {}: {e}",
                        new.redis.display
                    ))
                }
                Err(_) => {
                    return Err(format!(
                        "cannot use the new Redis at {}: no answer within {limit:?}",
                        new.redis.display
                    ))
                }
            }
        }
        if new.worker.log_level != config.worker.log_level {
            if let Some(set) = &self.on_log_level {
                set(new.worker.log_level);
            }
        }
        let restart = redis_changed
            || new.worker.queues != config.worker.queues
            || new.worker.interval != config.worker.interval
            || new.handlers != config.handlers;
        if restart {
            // Drain the old workers (their jobs finish and are recorded) and start new ones;
            // every job is reserved by exactly one worker, so none runs twice or is lost.
            let fresh = self.start_pool(&new, handlers, stats.clone(), health);
            let old = std::mem::replace(pool, fresh);
            old.wake_stop.notify_one();
            old.late_task.abort();
            for slot in old.slots {
                slot.control.send_modify(|c| c.mode = Mode::Drain);
                retired.push(slot);
            }
        }
        *config = new;
        self.scale(config, pool, retired, control);
        Ok(redis_changed)
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
        pool.late_task.abort();
        info!(
            processed = stats.processed.load(Ordering::Relaxed),
            failed = stats.failed.load(Ordering::Relaxed),
            "resque stopped"
        );
    }
}

fn live_ids(live: &Mutex<Vec<String>>) -> Vec<String> {
    live.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn set_live(live: &Mutex<Vec<String>>, pool: &Pool, retired: &[Slot]) {
    let ids = pool
        .slots
        .iter()
        .chain(retired)
        .map(|s| s.id.clone())
        .collect();
    *live.lock().unwrap_or_else(|p| p.into_inner()) = ids;
}

/// One recovery pass (under the shared lock), logged.
async fn recover_pass(conn: &mut Connection, config: &Config, host: &str, live: &HashSet<String>) {
    let keys = config.redis.keys();
    let ctx = RecoveryContext {
        keys: &keys,
        host,
        live,
        on_lost: config.worker.on_lost,
        max_lost: config.worker.max_lost,
        dead_after: config.worker.dead_after,
    };
    let owner = format!("{host}:{}", std::process::id());
    match recovery::recover(conn, &ctx, &owner).await {
        Ok(r) if r.dead_workers > 0 => info!(
            dead_workers = r.dead_workers,
            requeued = r.requeued,
            failed = r.failed,
            "recovered jobs of dead workers: {} dead, {} requeued, {} failed",
            r.dead_workers,
            r.requeued,
            r.failed
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "recovery failed; will try again"),
    }
}

/// A worker task of ours ended: put its job back and remove its records.
async fn recover_own(mut conn: Connection, keys: crate::protocol::Keys, id: String) {
    let held: Result<Vec<Vec<u8>>, _> = redis::cmd("LRANGE")
        .arg(keys.inflight(&id))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await;
    let queue: Result<Option<String>, _> = redis::cmd("HGET")
        .arg(keys.inflight_index())
        .arg(&id)
        .query_async(&mut conn)
        .await;
    if let (Ok(held), Ok(Some(queue))) = (held, queue) {
        for raw in held {
            let r: Result<i64, _> = commands::requeue(&keys, &id, &queue, &raw)
                .invoke_async(&mut conn)
                .await;
            if !matches!(r, Ok(0 | 1)) {
                warn!(worker = %id, "cannot put the job back now; periodic recovery will");
                return;
            }
        }
    }
    let _: Result<(), _> = commands::unregister(&keys, &id)
        .query_async(&mut conn)
        .await;
}
