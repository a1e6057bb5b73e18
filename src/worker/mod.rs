//! A worker: reserve a job reliably, run it through its handler, record the outcome.
//!
//! The loop: reserve (Lua: the job moves atomically into this worker's in-flight list) → run →
//! write the outcome in one MULTI that also takes the job out of the in-flight list. If the
//! process dies anywhere in between, the job is still in Redis and recovery puts it back.
//! Idle workers wait for a wake-up from [`wakeup`] (Redis client tracking on the queue keys), so
//! a new job starts within milliseconds while idle workers send no commands at all.

pub mod recovery;
pub mod wakeup;

use crate::handler::{HandlerMap, Job, JobFailure};
use crate::protocol::{
    commands, commands::Outcome, resque_time, scripts, FailureRecord, Keys, Payload, WorkerId,
};
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, error, info, info_span, warn, Instrument};

/// What the supervisor wants from a worker; sent through a `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub mode: Mode,
    /// Stop reserving (USR2 / `resque pause`).
    pub paused: bool,
    /// Bumped by USR1: kill the job running now (it fails, as php-resque's killChild).
    pub kill_epoch: u64,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            mode: Mode::Run,
            paused: false,
            kill_epoch: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Run,
    /// Finish the job in hand, then exit.
    Drain,
    /// Kill the job in hand, put it back at the head of its queue, exit.
    Abort,
}

/// Counters shared by the workers of one pool, for STATUS= and `resque bench`.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub busy: AtomicUsize,
    pub processed: AtomicU64,
    pub failed: AtomicU64,
    /// 0 while Redis answers; otherwise the count of consecutive errors.
    pub redis_errors: AtomicU64,
}

/// What every worker of a pool shares.
pub struct Shared {
    pub keys: Keys,
    pub queues: Vec<String>,
    pub handlers: HandlerMap,
    pub interval: Duration,
    pub wake: Arc<wakeup::Wakeup>,
    pub stats: Arc<PoolStats>,
}

/// Seconds since this process started, for the liveness ticks the watchdog reads.
pub fn monotonic_secs() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

/// One worker. It owns its connection; it is driven by [`Worker::run`].
pub struct Worker {
    id: WorkerId,
    id_text: String,
    conn: redis::aio::ConnectionManager,
    shared: Arc<Shared>,
    /// Last time (monotonic seconds) this worker's loop was seen alive.
    tick: Arc<AtomicU64>,
}

/// A job this worker holds in its in-flight list.
struct Reserved {
    queue: String,
    raw: String,
}

enum Reservation {
    Job(Reserved),
    Empty,
    Paused,
}

const TICK: Duration = Duration::from_secs(1);

impl Worker {
    pub fn new(
        id: WorkerId,
        conn: redis::aio::ConnectionManager,
        shared: Arc<Shared>,
        tick: Arc<AtomicU64>,
    ) -> Worker {
        let id_text = id.to_string();
        Worker {
            id,
            id_text,
            conn,
            shared,
            tick,
        }
    }

    pub fn id(&self) -> &WorkerId {
        &self.id
    }

    fn beat(&self) {
        self.tick.store(monotonic_secs(), Ordering::Relaxed);
    }

    /// Works until told to stop. Returns after unregistering.
    pub async fn run(mut self, mut control: watch::Receiver<Control>) {
        let queues = self.shared.queues.join(",");
        info!(worker = %self.id_text, queues = %queues, "worker {} started on queues {queues}", self.id_text);
        let mut backoff = Duration::from_millis(100);
        // A reservation made together with the previous job's outcome.
        let mut next: Option<Reservation> = None;
        loop {
            self.beat();
            let now = *control.borrow_and_update();
            if now.mode != Mode::Run || now.paused {
                // A job reserved together with the last outcome is not started: give it back.
                if let Some(Reservation::Job(job)) = next.take() {
                    self.give_back(&job).await;
                }
            }
            if now.mode != Mode::Run {
                break;
            }
            if now.paused {
                self.idle(&mut control, self.shared.interval, false).await;
                continue;
            }
            let reservation = match next.take() {
                Some(r) => Ok(r),
                None => self.reserve().await,
            };
            match reservation {
                Ok(Reservation::Job(job)) => {
                    backoff = Duration::from_millis(100);
                    self.shared.stats.redis_errors.store(0, Ordering::Relaxed);
                    next = self.work(job, &mut control).await;
                }
                Ok(Reservation::Empty) => {
                    self.shared.stats.redis_errors.store(0, Ordering::Relaxed);
                    self.idle(&mut control, self.shared.interval, true).await;
                }
                Ok(Reservation::Paused) => {
                    self.idle(&mut control, self.shared.interval, false).await;
                }
                Err(e) => {
                    self.shared
                        .stats
                        .redis_errors
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(worker = %self.id_text, error = %e, retry_in = ?backoff, "cannot reserve a job; Redis unavailable?");
                    self.idle(&mut control, backoff, false).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.unregister().await;
        info!(worker = %self.id_text, "worker {} stopped", self.id_text);
    }

    /// Waits up to `limit` for a wake-up (if `wakeable`) or a control change, ticking.
    ///
    /// Waiting for work (`wakeable`) has no deadline: the pool's wake-up task wakes one idle
    /// worker per pushed job (and, while Redis cannot push, one every `interval`), so idle
    /// workers cost Redis nothing.
    async fn idle(&self, control: &mut watch::Receiver<Control>, limit: Duration, wakeable: bool) {
        let limit = if wakeable {
            Duration::from_secs(86_400 * 365)
        } else {
            limit
        };
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.beat();
            let step = deadline.min(tokio::time::Instant::now() + TICK);
            tokio::select! {
                _ = self.shared.wake.wait(), if wakeable => return,
                changed = control.changed() => {
                    if changed.is_err() { return; }
                    return;
                }
                _ = tokio::time::sleep_until(step) => {
                    if tokio::time::Instant::now() >= deadline { return; }
                }
            }
        }
    }

    /// The RESERVE script's keys and arguments.
    fn reserve_args(&self) -> (Vec<String>, Vec<String>) {
        let keys = &self.shared.keys;
        let script_keys = vec![
            keys.inflight(&self.id_text),
            keys.inflight_index(),
            keys.worker(&self.id_text),
            keys.pause_all_workers(),
            keys.queues(),
        ];
        let mut args = vec![
            self.id_text.clone(),
            resque_time(),
            crate::protocol::now_unix().to_string(),
            keys.prefix().to_string(),
        ];
        args.extend(self.shared.queues.iter().cloned());
        (script_keys, args)
    }

    async fn reserve(&mut self) -> Result<Reservation, redis::RedisError> {
        let (script_keys, args) = self.reserve_args();
        let mut invocation = scripts::RESERVE.prepare_invoke();
        for k in &script_keys {
            invocation.key(k);
        }
        for a in &args {
            invocation.arg(a);
        }
        let reply: redis::Value = invocation.invoke_async(&mut self.conn).await?;
        parse_reservation(reply)
    }

    /// Runs one reserved job and records its outcome. When the worker goes on working, the
    /// outcome and the next reservation travel in one round trip; that reservation is returned.
    async fn work(
        &mut self,
        job: Reserved,
        control: &mut watch::Receiver<Control>,
    ) -> Option<Reservation> {
        let stats = self.shared.stats.clone();
        stats.busy.fetch_add(1, Ordering::Relaxed);
        let parsed = Payload::parse(&job.raw);
        let (job_id, class) = match &parsed {
            Ok(p) => (p.id().unwrap_or("").to_string(), p.class().to_string()),
            Err(_) => (String::new(), String::new()),
        };
        // RESQUE_*: systemd's own records carry JOB_ID (its job numbers).
        let span = info_span!("job", RESQUE_JOB_ID = %job_id, RESQUE_JOB_CLASS = %class, RESQUE_QUEUE = %job.queue, RESQUE_WORKER = %self.id_text);
        let result = async {
            debug!("job started: {job_id} ({class}) from queue {}", job.queue);
            let started = Instant::now();
            let result = match &parsed {
                Err(e) => JobResult::Done(Err(JobFailure::new(
                    "Resque\\Exception",
                    bad_payload_message(e, &job.raw),
                ))),
                Ok(payload) => self.perform(&job, payload.clone(), control).await,
            };
            match &result {
                JobResult::Done(Ok(())) => {
                    let elapsed = started.elapsed();
                    info!(elapsed = ?elapsed, "job complete: {job_id} ({class}) in {elapsed:.2?}")
                }
                JobResult::Done(Err(f)) => warn!(
                    exception = %f.exception,
                    error = %f.error,
                    "job failed: {job_id} ({class}): {}: {}",
                    f.exception,
                    f.error
                ),
                JobResult::Aborted => info!(
                    "job interrupted by shutdown: {job_id} ({class}) goes back to queue {}",
                    job.queue
                ),
            }
            result
        }
        .instrument(span.clone())
        .await;
        let outcome = match result {
            JobResult::Aborted => {
                self.give_back(&job).instrument(span).await;
                stats.busy.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
            JobResult::Done(Ok(())) => Outcome::Complete,
            JobResult::Done(Err(failure)) => {
                let payload_value = match &parsed {
                    Ok(p) => p.to_value(),
                    // The raw entry, so nothing of it is lost.
                    Err(_) => serde_json::Value::String(job.raw.clone()),
                };
                Outcome::Failed(Box::new(FailureRecord {
                    failed_at: resque_time(),
                    payload: payload_value,
                    exception: failure.exception,
                    error: failure.error,
                    backtrace: failure.backtrace,
                    worker: self.id_text.clone(),
                    queue: job.queue.clone(),
                    retried_at: None,
                    extra: Default::default(),
                }))
            }
        };
        let failed = matches!(outcome, Outcome::Failed(_));
        let go_on = {
            let now = *control.borrow();
            now.mode == Mode::Run && !now.paused
        };
        let next = if go_on {
            self.record_and_reserve(&job, parsed.as_ref().ok(), &outcome)
                .instrument(span.clone())
                .await
        } else {
            None
        };
        if next.is_none() {
            self.record(&job, parsed.as_ref().ok(), &outcome, control)
                .instrument(span)
                .await;
        }
        stats.processed.fetch_add(1, Ordering::Relaxed);
        if failed {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        stats.busy.fetch_sub(1, Ordering::Relaxed);
        next.flatten()
    }

    /// The outcome (its own MULTI/EXEC) and the next RESERVE in one round trip. Returns
    /// `Some(next)` once the outcome is known to be written — `Some(None)` if only the
    /// reservation failed — and `None` if the outcome may not be written (the caller then
    /// writes it with retries).
    async fn record_and_reserve(
        &mut self,
        job: &Reserved,
        payload: Option<&Payload>,
        outcome: &Outcome,
    ) -> Option<Option<Reservation>> {
        let (script_keys, args) = self.reserve_args();
        let mut pipe = redis::pipe();
        commands::add_finish(
            &mut pipe,
            &self.shared.keys,
            &self.id_text,
            &job.raw,
            payload,
            outcome,
        );
        pipe.ignore();
        pipe.cmd("EVALSHA")
            .arg(scripts::RESERVE.get_hash())
            .arg(script_keys.len())
            .arg(&script_keys)
            .arg(&args);
        match pipe.query_async::<(redis::Value,)>(&mut self.conn).await {
            Ok((reply,)) => Some(parse_reservation(reply).ok()),
            Err(e) => {
                // The outcome script removes the in-flight entry: if it is gone, the outcome is
                // written and only the reservation failed (e.g. NOSCRIPT after a restart).
                let still: Result<Option<i64>, _> = redis::cmd("LPOS")
                    .arg(self.shared.keys.inflight(&self.id_text))
                    .arg(&job.raw)
                    .query_async(&mut self.conn)
                    .await;
                debug!(error = %e, "combined outcome and reservation failed");
                match still {
                    Ok(None) => Some(None),
                    _ => None,
                }
            }
        }
    }

    /// Runs the handler, watching for kill (USR1), abort (forced shutdown) and panics.
    async fn perform(
        &self,
        job: &Reserved,
        payload: Payload,
        control: &mut watch::Receiver<Control>,
    ) -> JobResult {
        let class = payload.class().to_string();
        let Some(handler) = self.shared.handlers.find(&class).cloned() else {
            return JobResult::Done(Err(JobFailure::new(
                "Resque\\Exception",
                format!("Could not find job class {class}: no [[handler]] matches it."),
            )));
        };
        let job = Job {
            worker_id: self.id_text.clone(),
            queue: job.queue.clone(),
            payload,
        };
        let kill_epoch = control.borrow().kill_epoch;
        let fut = AssertUnwindSafe(handler.perform(&job)).catch_unwind();
        tokio::pin!(fut);
        let mut ticker = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                result = &mut fut => {
                    return JobResult::Done(match result {
                        Ok(r) => r,
                        Err(panic) => Err(JobFailure::new("Panic", panic_message(&panic))),
                    });
                }
                _ = ticker.tick() => self.beat(),
                changed = control.changed() => {
                    let now = *control.borrow_and_update();
                    if changed.is_err() || now.mode == Mode::Abort {
                        return JobResult::Aborted;
                    }
                    if now.kill_epoch != kill_epoch {
                        return JobResult::Done(Err(JobFailure::new(
                            crate::protocol::DIRTY_EXIT_EXCEPTION,
                            "Job killed by SIGUSR1",
                        )));
                    }
                }
            }
        }
    }

    /// Writes the outcome; retries while Redis is unreachable, so a finished job's result is
    /// written once Redis is back (unless we are told to abort: then recovery re-runs it).
    async fn record(
        &mut self,
        job: &Reserved,
        payload: Option<&Payload>,
        outcome: &Outcome,
        control: &mut watch::Receiver<Control>,
    ) {
        let pipe = commands::finish(&self.shared.keys, &self.id_text, &job.raw, payload, outcome);
        let mut backoff = Duration::from_millis(100);
        loop {
            self.beat();
            match pipe.invoke_async::<()>(&mut self.conn).await {
                Ok(()) => return,
                Err(e) => {
                    error!(error = %e, retry_in = ?backoff, "cannot record the job's outcome; retrying");
                    self.shared
                        .stats
                        .redis_errors
                        .fetch_add(1, Ordering::Relaxed);
                    if control.borrow().mode == Mode::Abort {
                        warn!("giving up on recording: shutting down; the job stays in flight and will be recovered");
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Puts the job back at the head of its queue.
    async fn give_back(&mut self, job: &Reserved) {
        let keys = &self.shared.keys;
        let result: Result<i64, _> = scripts::REQUEUE
            .key(keys.inflight(&self.id_text))
            .key(keys.queue(&job.queue))
            .key(keys.worker(&self.id_text))
            .key(keys.queues())
            .arg(&job.raw)
            .arg(&job.queue)
            .invoke_async(&mut self.conn)
            .await;
        if let Err(e) = result {
            error!(error = %e, "cannot put the job back; it stays in flight and will be recovered");
        }
    }

    async fn unregister(&mut self) {
        // Anything still in flight (an outcome we could not write) is left for recovery,
        // which needs the index entry; otherwise remove every record.
        let inflight: Result<usize, _> = redis::cmd("LLEN")
            .arg(self.shared.keys.inflight(&self.id_text))
            .query_async(&mut self.conn)
            .await;
        if matches!(inflight, Ok(0)) {
            let pipe = commands::unregister(&self.shared.keys, &self.id_text);
            if let Err(e) = pipe.query_async::<()>(&mut self.conn).await {
                warn!(worker = %self.id_text, error = %e, "cannot unregister the worker");
            }
        }
    }
}

fn parse_reservation(reply: redis::Value) -> Result<Reservation, redis::RedisError> {
    Ok(match reply {
        redis::Value::Nil => Reservation::Empty,
        redis::Value::Array(items) if items.len() == 2 => {
            let queue: String = redis::from_redis_value(items[0].clone())?;
            let raw: String = redis::from_redis_value(items[1].clone())?;
            Reservation::Job(Reserved { queue, raw })
        }
        redis::Value::SimpleString(s) if s == "paused" => Reservation::Paused,
        redis::Value::BulkString(b) if b == b"paused" => Reservation::Paused,
        // Lua `false` arrives as nil; anything else is not ours to interpret.
        _ => Reservation::Empty,
    })
}

enum JobResult {
    Done(Result<(), JobFailure>),
    /// Interrupted by a forced shutdown: not an outcome; the job goes back to its queue.
    Aborted,
}

fn bad_payload_message(e: &crate::protocol::PayloadError, raw: &str) -> String {
    let shown: String = raw.chars().take(200).collect();
    format!("{e}; the entry was: {shown}")
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("handler panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("handler panicked: {s}")
    } else {
        "handler panicked".to_string()
    }
}
