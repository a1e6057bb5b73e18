//! Delayed, recurring and retried jobs, on the Resque world's own scheduler keys
//! (`delayed_queue_schedule`, `delayed:<ts>`, `timestamps:<json>`: see
//! [`crate::protocol::scheduler`]).
//!
//! Every daemon runs one scheduler task; one at a time per Redis namespace leads, under a lock
//! with a TTL that the leader renews every third of it, and whose value (with a fencing token)
//! every move checks inside the same script: a leader that was stopped and lost the lock moves
//! nothing when it resumes, and a dead leader is replaced within the TTL. The leader
//! - moves due delayed items to their queues in batches, each item atomically and with its
//!   producer's bytes, so Ruby, node or php schedulers running at the same time never make one
//!   run twice or vanish ([`crate::protocol::scripts::MOVE_DUE_LUA`]);
//! - sleeps until the earliest due time, and wakes when the schedule changes (Redis client
//!   tracking on `delayed_queue_schedule`, see [`watch`]; a one-second look while that is down);
//! - enqueues the ticks of `[[schedule]]` entries, each tick once across daemons
//!   ([`recurring`]).
//!
//! The supervisor only starts, updates and stops this task ([`Scheduler`]); nothing here waits
//! on the supervisor's loop, nor it on us. Retries ([`retry`]) are decided by the worker.

pub mod config;
pub mod recurring;
pub mod retry;
mod watch;

use crate::config::{Config, RedisConfig};
use crate::connection::{Connection, Health};
use crate::protocol::{new_job_id, scheduler as proto, Keys, Payload};
use recurring::Schedule;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch as tokio_watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Items moved per script call: about 5 ms of Redis time, so a big backlog never stalls Redis
/// for others while 10,000 due items still reach their queues well within a second.
const BATCH: usize = 1000;

/// How often the leader looks at the schedule when it cannot be told of changes.
const POLL_UNTRACKED: Duration = Duration::from_secs(1);

/// How often it looks anyway while tracking works (a safety net).
const POLL_TRACKED: Duration = Duration::from_secs(30);

/// What the task works from; replaced on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub enabled: bool,
    pub lock_ttl: Duration,
    pub schedules: Vec<Schedule>,
}

impl Settings {
    pub fn of(config: &Config) -> Settings {
        Settings {
            enabled: config.scheduler.enabled,
            lock_ttl: config.scheduler.lock_ttl,
            schedules: config.schedules.clone(),
        }
    }
}

/// The running scheduler task of a daemon.
pub struct Scheduler {
    settings: tokio_watch::Sender<Settings>,
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Scheduler {
    /// Starts the task (it connects lazily: this never waits for Redis).
    pub fn start(config: &Config, health: &Arc<Health>, host: &str) -> Scheduler {
        let (tx, rx) = tokio_watch::channel(Settings::of(config));
        let stop = Arc::new(Notify::new());
        let owner = format!(
            "{host}:{}:{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let task = tokio::spawn(run(
            config.redis.clone(),
            Connection::new(&config.redis, health.clone()),
            owner,
            rx,
            stop.clone(),
        ));
        Scheduler {
            settings: tx,
            stop,
            task,
        }
    }

    /// New schedules and settings (a reload that kept the Redis settings).
    pub fn update(&self, config: &Config) {
        let new = Settings::of(config);
        self.settings.send_if_modified(|s| {
            let changed = *s != new;
            *s = new;
            changed
        });
    }

    /// Stops the task; the lock is released (bounded wait) so another daemon takes over at once.
    pub async fn stop(self) {
        self.stop.notify_one();
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(3), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// The scheduler task.
async fn run(
    redis: RedisConfig,
    conn: Connection,
    owner: String,
    mut settings: tokio_watch::Receiver<Settings>,
    stop: Arc<Notify>,
) {
    let keys = redis.keys();
    let changed = Arc::new(Notify::new());
    let tracking = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = tokio::spawn(watch::run(
        redis.clone(),
        keys.delayed_schedule(),
        changed.clone(),
        tracking.clone(),
    ));
    let mut state = Leader {
        conn,
        keys,
        owner,
        held: None,
        last_ticks: HashMap::new(),
        warned: HashMap::new(),
        next_due: None,
        dirty: true,
        looked_at: std::time::Instant::now(),
    };
    loop {
        let current = settings.borrow_and_update().clone();
        if !tracking.load(std::sync::atomic::Ordering::Relaxed) {
            state.dirty = true;
        }
        let wake = if current.enabled {
            state.step(&current).await
        } else {
            state.give_up().await;
            tokio::time::Instant::now() + Duration::from_secs(3600)
        };
        let poll = if tracking.load(std::sync::atomic::Ordering::Relaxed) {
            POLL_TRACKED
        } else {
            POLL_UNTRACKED
        };
        let wake = if state.held.is_some() {
            wake.min(tokio::time::Instant::now() + poll)
        } else {
            wake
        };
        tokio::select! {
            _ = stop.notified() => break,
            r = settings.changed() => if r.is_err() { break },
            _ = changed.notified(), if state.held.is_some() => state.dirty = true,
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    watcher.abort();
    state.give_up().await;
}

/// The leader side of one daemon.
struct Leader {
    conn: Connection,
    keys: Keys,
    owner: String,
    /// The lock's value while we hold it.
    held: Option<String>,
    /// Last tick handled per schedule, as last read from Redis.
    last_ticks: HashMap<String, i64>,
    /// Keys warned about, and when.
    warned: HashMap<String, std::time::Instant>,
    /// The earliest due time the last look found.
    next_due: Option<i64>,
    /// The schedule may have changed since the last look (a notification, or no tracking).
    dirty: bool,
    /// When the schedule was last looked at.
    looked_at: std::time::Instant,
}

impl Leader {
    /// One round: take or renew the lock; as leader, move what is due and enqueue due ticks.
    /// Returns when to come back.
    async fn step(&mut self, settings: &Settings) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let ttl = settings.lock_ttl;
        // Followers try often enough to take over well within the TTL; the leader renews
        // every third of it.
        let follower_retry = now + (ttl / 10).max(Duration::from_millis(100));
        let renew_at = now + ttl / 3;
        let ttl_ms = ttl.as_millis().min(u64::MAX as u128) as u64;
        let mut c = self.conn.clone();
        let reply: Result<(i64, String), _> = proto::leader(&self.keys, &self.owner, ttl_ms)
            .invoke_async(&mut c)
            .await;
        match reply.map(proto::parse_leader) {
            Ok(r) if r.ours => {
                if self.held.as_deref() != Some(r.value.as_str()) {
                    info!(lock = %r.value, "this daemon now leads the scheduler (delayed and recurring jobs)");
                    self.last_ticks.clear();
                    self.dirty = true;
                }
                self.held = Some(r.value);
            }
            Ok(r) => {
                if self.held.take().is_some() {
                    warn!(holder = %r.value, "lost the scheduler lock to another daemon");
                }
                return follower_retry;
            }
            Err(e) => {
                // Moves are fenced: keep trying them; they do nothing if the lock is gone.
                debug!(error = %e, "cannot renew the scheduler lock");
                if self.held.is_none() {
                    return follower_retry;
                }
            }
        }
        let mut wake = renew_at;
        // Look at the schedule only when something may be due: it changed, the earliest due
        // time has come, or the safety-net interval passed.
        let due_now = self
            .next_due
            .is_some_and(|t| t <= crate::protocol::now_unix());
        if self.dirty || due_now || self.looked_at.elapsed() >= POLL_TRACKED {
            self.dirty = false;
            self.looked_at = std::time::Instant::now();
            match self.move_due().await {
                Ok(next) => self.next_due = next,
                Err(e) => {
                    warn!(error = %e, "cannot move due delayed jobs; trying again");
                    self.dirty = true;
                    wake = wake.min(now + Duration::from_millis(500));
                }
            }
        }
        if let Some(next) = self.next_due {
            wake = wake.min(instant_of_unix(next));
        }
        if !settings.schedules.is_empty() {
            match self.recurring(settings).await {
                Ok(Some(next)) => wake = wake.min(instant_of_unix(next)),
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "cannot enqueue recurring jobs; trying again");
                    wake = wake.min(now + Duration::from_millis(500));
                }
            }
        }
        wake
    }

    /// Moves every due item (batch after batch). Returns the next due time.
    async fn move_due(&mut self) -> Result<Option<i64>, redis::RedisError> {
        let Some(value) = self.held.clone() else {
            return Ok(None);
        };
        let mut total = 0;
        loop {
            let mut c = self.conn.clone();
            let reply: Vec<String> = proto::move_due(
                &self.keys,
                &value,
                crate::protocol::now_unix(),
                BATCH,
                &self.owner,
            )
            .invoke_async(&mut c)
            .await?;
            let r = proto::parse_move(reply);
            if r.fenced_out {
                warn!("the scheduler lock is no longer ours: moving nothing");
                self.held = None;
                return Ok(None);
            }
            for key in r.bad {
                let due = self
                    .warned
                    .get(&key)
                    .map_or(true, |at| at.elapsed() > Duration::from_secs(300));
                if due {
                    warn!(key = %key, "a delayed key is not a list (WRONGTYPE): dropped from the schedule, left as it is");
                    self.warned.insert(key, std::time::Instant::now());
                }
            }
            total += r.moved;
            if r.moved < BATCH {
                if total > 0 {
                    debug!(moved = total, "delayed jobs moved to their queues");
                }
                return Ok(r.next);
            }
        }
    }

    /// Enqueues due ticks of every schedule. Returns the next tick time.
    async fn recurring(&mut self, settings: &Settings) -> Result<Option<i64>, redis::RedisError> {
        let Some(value) = self.held.clone() else {
            return Ok(None);
        };
        let now = crate::protocol::now_unix();
        // Ticks within this window are run late rather than lost (a leader change takes up to
        // the TTL); older ones were missed and follow `missed`.
        let window = (settings.lock_ttl.as_secs() as i64) * 2 + 5;
        let needs_read = settings
            .schedules
            .iter()
            .any(|s| match self.last_ticks.get(&s.name) {
                None => true,
                Some(last) => s.when.next_after(*last).is_some_and(|t| t <= now),
            });
        if needs_read {
            let mut c = self.conn.clone();
            let all: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(self.keys.schedule_last())
                .query_async(&mut c)
                .await?;
            self.last_ticks = all
                .into_iter()
                .filter_map(|(k, v)| Some((k, v.trim().parse::<i64>().ok()?)))
                .collect();
        }
        let mut next: Option<i64> = None;
        for schedule in &settings.schedules {
            let last = match self.last_ticks.get(&schedule.name) {
                Some(l) => *l,
                None => {
                    // A new schedule starts now: record that, so that a leader change before
                    // its first tick does not lose it.
                    self.tick(&value, schedule, now, false).await?;
                    now
                }
            };
            let due = recurring::due(schedule, last, now, window);
            if let Some(skip) = due.skip {
                info!(schedule = %schedule.name, "ticks of schedule {} missed while no daemon ran are skipped (missed = \"skip\")", schedule.name);
                self.tick(&value, schedule, skip, false).await?;
            }
            for t in due.run {
                self.tick(&value, schedule, t, true).await?;
            }
            let from = self.last_ticks.get(&schedule.name).copied().unwrap_or(now);
            if let Some(t) = schedule.when.next_after(from.max(now - window)) {
                next = Some(next.map_or(t, |n: i64| n.min(t)));
            }
        }
        Ok(next)
    }

    /// Handles one tick (enqueue, or only record it).
    async fn tick(
        &mut self,
        value: &str,
        schedule: &Schedule,
        tick: i64,
        enqueue: bool,
    ) -> Result<(), redis::RedisError> {
        let payload = if enqueue {
            Some(tick_payload(schedule, tick))
        } else {
            None
        };
        let mut c = self.conn.clone();
        let r: i64 = proto::enqueue_tick(
            &self.keys,
            value,
            &schedule.name,
            tick,
            &schedule.queue,
            payload.as_ref(),
        )
        .invoke_async(&mut c)
        .await?;
        match r {
            1 => {
                self.last_ticks.insert(schedule.name.clone(), tick);
                if let Some(p) = &payload {
                    info!(schedule = %schedule.name, JOB_ID = p.id().unwrap_or(""), queue = %schedule.queue, "recurring job {} enqueued", schedule.name);
                }
            }
            0 => {
                // Already handled (by us, whose reply was lost, or by a previous leader).
                let mut c = self.conn.clone();
                let last: Option<i64> = redis::cmd("HGET")
                    .arg(self.keys.schedule_last())
                    .arg(&schedule.name)
                    .query_async(&mut c)
                    .await?;
                self.last_ticks
                    .insert(schedule.name.clone(), last.unwrap_or(tick).max(tick));
            }
            -2 => {
                warn!(schedule = %schedule.name, queue = %schedule.queue, "cannot enqueue the recurring job: its queue key is not a list; the tick is skipped");
                self.last_ticks.insert(schedule.name.clone(), tick);
            }
            _ => {
                warn!("the scheduler lock is no longer ours: enqueueing nothing");
                self.held = None;
            }
        }
        Ok(())
    }

    /// Releases the lock if we hold it.
    async fn give_up(&mut self) {
        if let Some(value) = self.held.take() {
            let mut c = self.conn.clone();
            let released = tokio::time::timeout(
                Duration::from_secs(2),
                proto::release(&self.keys, &value).invoke_async::<i64>(&mut c),
            )
            .await;
            if matches!(released, Ok(Ok(1))) {
                info!("scheduler lock released");
            }
        }
    }
}

/// A tick's job: php-resque's payload, plus the schedule's name and the tick's time (unix s), so
/// a job can tell which run it is.
fn tick_payload(schedule: &Schedule, tick: i64) -> Payload {
    let base = Payload::new_php(&schedule.class, schedule.args.clone(), &new_job_id());
    let mut fields = base.fields().clone();
    fields.insert(
        proto::SCHEDULE_FIELD.into(),
        serde_json::Value::String(schedule.name.clone()),
    );
    fields.insert(
        proto::SCHEDULED_AT_FIELD.into(),
        serde_json::Value::from(tick),
    );
    Payload::from_fields(fields).unwrap_or(base)
}

/// The tokio instant of a unix time in whole seconds (just after it begins).
fn instant_of_unix(ts: i64) -> tokio::time::Instant {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let wait_ms = (ts * 1000 - now_ms).max(0) as u64;
    tokio::time::Instant::now() + Duration::from_millis(wait_ms + 1)
}
