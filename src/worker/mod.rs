//! A worker: reserve a job reliably, run it through its handler, record the outcome.
//!
//! The loop: reserve (Lua: the job moves atomically into this worker's in-flight list) → run →
//! write the outcome in one MULTI that also takes the job out of the in-flight list. If the
//! process dies anywhere in between, the job is still in Redis and recovery puts it back.
//! Idle workers wait for a wake-up from [`wakeup`] (Redis client tracking on the queue keys), so
//! a new job starts within milliseconds while idle workers send no commands at all.

pub mod late_status;
pub mod recovery;
pub mod wakeup;

use crate::connection::Connection;
use crate::handler::{HandlerMap, Job, JobFailure};
use crate::protocol::commands::{self, Outcome, Reservation, Reserved};
use crate::protocol::{resque_time, FailureRecord, JobStatus, Keys, Payload, WorkerId};
use futures::FutureExt;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
}

/// What every worker of a pool shares.
pub struct Shared {
    pub keys: Keys,
    pub queues: Vec<String>,
    pub handlers: HandlerMap,
    pub interval: Duration,
    pub wake: Arc<wakeup::Wakeup>,
    pub stats: Arc<PoolStats>,
    /// Statuses to put over ones the enqueuer writes after the push.
    pub late: Arc<late_status::LateStatuses>,
    /// `[redis] wait_replicas`: replicas each reservation and outcome waits for, and how long.
    pub wait_replicas: Option<(u32, Duration)>,
    /// Retry policies of the handlers (`retry = {…}`).
    pub retry: Arc<crate::scheduler::retry::RetryPolicies>,
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
    conn: Connection,
    shared: Arc<Shared>,
    /// Last time (monotonic seconds) this worker's loop was seen alive.
    tick: Arc<AtomicU64>,
    /// Queue keys of the wrong type, and when we last said so.
    warned_keys: HashMap<String, Instant>,
    /// Set once the worker's records are in Redis (the supervisor sends READY after that).
    registered: Arc<AtomicBool>,
    /// A reply may have been lost since the last reservation reply (an error, or the start):
    /// the next reservation looks for a job this worker already holds.
    maybe_holding: bool,
    /// The connection's socket generation when we last reserved.
    seen_generation: u64,
    /// The wake-up connection's disruptions when we last reserved.
    seen_disruptions: u64,
    /// The wait after the last worker-side error ([`JobFailure::worker_side`]); zero after a job
    /// that ran.
    setback: Duration,
}

const TICK: Duration = Duration::from_secs(1);

impl Worker {
    pub fn new(
        id: WorkerId,
        conn: Connection,
        shared: Arc<Shared>,
        tick: Arc<AtomicU64>,
        registered: Arc<AtomicBool>,
    ) -> Worker {
        let id_text = id.to_string();
        Worker {
            id,
            id_text,
            conn,
            shared,
            tick,
            warned_keys: HashMap::new(),
            registered,
            setback: Duration::ZERO,
            maybe_holding: true,
            seen_generation: 0,
            seen_disruptions: 0,
        }
    }

    pub fn id(&self) -> &WorkerId {
        &self.id
    }

    fn beat(&self) {
        self.tick.store(monotonic_secs(), Ordering::Relaxed);
    }

    /// Awaits `fut` while ticking: a worker waiting for Redis (a stall, a timeout, a
    /// reconnect) is alive, and the watchdog must not starve because Redis does.
    async fn ticking<F: std::future::Future>(&self, fut: F) -> F::Output {
        tick_while(&self.tick, fut).await
    }

    /// Registers the worker (`workers`, `worker:<id>:started`, heartbeat), retrying while
    /// Redis cannot take it. Returns false if told to stop first.
    async fn register(&mut self, control: &mut watch::Receiver<Control>) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            if control.borrow().mode != Mode::Run {
                return false;
            }
            let pipe = commands::register(
                &self.shared.keys,
                std::slice::from_ref(&self.id_text),
                &resque_time(),
            );
            let mut conn = self.conn.clone();
            match self.ticking(pipe.query_async::<()>(&mut conn)).await {
                Ok(()) => {
                    self.registered.store(true, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    warn!(worker = %self.id_text, error = %e, retry_in = ?backoff, "cannot register the worker; retrying");
                    self.idle(control, backoff, false).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Works until told to stop. Returns after unregistering.
    pub async fn run(mut self, mut control: watch::Receiver<Control>) {
        if !self.register(&mut control).await {
            return;
        }
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
                    next = self.work(job, &mut control).await;
                }
                Ok(Reservation::Empty) => {
                    backoff = Duration::from_millis(100);
                    self.idle(&mut control, self.shared.interval, true).await;
                }
                Ok(Reservation::Paused) => {
                    self.idle(&mut control, self.shared.interval, false).await;
                }
                Err(e) => {
                    self.maybe_holding = true;
                    warn!(worker = %self.id_text, error = %e, retry_in = ?backoff, "cannot reserve a job; Redis unavailable?");
                    self.idle(&mut control, backoff, false).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.release_held().await;
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

    /// A RESERVE for this worker with a fresh reservation token. It also looks for a job the
    /// worker already holds when a reply may have been lost since the last look: after an
    /// error of ours, or a disruption the wake-up connection saw.
    fn reserve_cmd(&mut self) -> redis::Cmd {
        let token = format!("{:016x}", rand::random::<u64>());
        let disruptions = self.shared.wake.disruptions();
        if disruptions != self.seen_disruptions {
            self.seen_disruptions = disruptions;
            self.maybe_holding = true;
        }
        commands::reserve(
            &self.shared.keys,
            &self.id_text,
            &token,
            self.maybe_holding,
            &self.shared.queues,
        )
    }

    async fn reserve(&mut self) -> Result<Reservation, redis::RedisError> {
        loop {
            let mut pipe = redis::pipe();
            pipe.add_command(self.reserve_cmd());
            let looked = self.maybe_holding;
            self.add_wait(&mut pipe);
            let mut conn = self.conn.clone();
            let replies: Vec<redis::Value> = self.ticking(pipe.query_async(&mut conn)).await?;
            let mut replies = replies.into_iter();
            let reply = replies.next().unwrap_or(redis::Value::Nil);
            self.check_wait(replies.next());
            let reservation = self.read_reservation(reply);
            // Found nothing without looking, on a socket that is new since we last looked (a
            // master switch, a reconnect another worker caused): an outcome of ours may have
            // been lost with the old one, so look for a held job once more.
            if self.reconnected() && !looked && matches!(reservation, Reservation::Empty) {
                self.maybe_holding = true;
                continue;
            }
            return Ok(reservation);
        }
    }

    /// Whether the connection got a new socket since the last call.
    fn reconnected(&mut self) -> bool {
        let now = self.conn.generation();
        let changed = now != self.seen_generation;
        self.seen_generation = now;
        changed
    }

    /// With `wait_replicas`, a `WAIT` after the writes of the same round trip: the reply comes
    /// once that many replicas have them (or the timeout passed).
    fn add_wait(&self, pipe: &mut redis::Pipeline) {
        if let Some((replicas, timeout)) = self.shared.wait_replicas {
            pipe.cmd("WAIT")
                .arg(replicas)
                .arg(timeout.as_millis() as u64);
        }
    }

    fn check_wait(&self, reply: Option<redis::Value>) {
        if let (Some((wanted, timeout)), Some(redis::Value::Int(got))) =
            (self.shared.wait_replicas, reply)
        {
            if got < i64::from(wanted) {
                warn!(worker = %self.id_text, replicas = got, wanted, ?timeout, "only {got} of {wanted} replicas acknowledged the write in time; a failover now could undo it (the job would run again)");
            }
        }
    }

    /// Reads a reservation reply, warning (now and then) about skipped keys.
    fn read_reservation(&mut self, reply: redis::Value) -> Reservation {
        if let redis::Value::ServerError(_) = reply {
            self.maybe_holding = true;
        }
        let reply = match commands::parse_reserve(reply) {
            Ok(r) => r,
            Err(e) => {
                error!(worker = %self.id_text, error = %e, "unreadable reservation reply");
                return Reservation::Empty;
            }
        };
        self.maybe_holding = false;
        for key in reply.skipped {
            let due = self
                .warned_keys
                .get(&key)
                .map_or(true, |at| at.elapsed() > Duration::from_secs(300));
            if due {
                warn!(worker = %self.id_text, key = %key, "skipping a queue key that is not a list (WRONGTYPE); the other queues go on: fix or delete key {key}");
                self.warned_keys.insert(key, Instant::now());
            }
        }
        if let Reservation::Job(job) = &reply.reservation {
            if job.held {
                info!(worker = %self.id_text, queue = %job.queue, "running the job this worker already held (a reply from Redis was lost)");
            }
        }
        reply.reservation
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
        let parsed = parse_entry(&job.raw);
        let (job_id, class) = match &parsed {
            Ok(p) => (p.id().unwrap_or("").to_string(), p.class().to_string()),
            Err(_) => (String::new(), String::new()),
        };
        // RESQUE_*: systemd's own records carry JOB_ID (its job numbers).
        let span = info_span!("job", RESQUE_JOB_ID = %job_id, RESQUE_JOB_CLASS = %class, RESQUE_QUEUE = %job.queue, RESQUE_WORKER = %self.id_text);
        if job.status_late {
            if let Ok(payload) = &parsed {
                self.intend_status(payload, JobStatus::Running);
            }
        }
        let result = async {
            debug!("job started: {job_id} ({class}) from queue {}", job.queue);
            let started = Instant::now();
            let result = match &parsed {
                Err(e) => JobResult::Done(Err(JobFailure::new("Resque\\Exception", e.clone()))),
                Ok(payload) => self.perform(&job, payload.clone(), control).await,
            };
            match &result {
                JobResult::Done(Ok(())) => {
                    let elapsed = started.elapsed();
                    info!(elapsed = ?elapsed, "job complete: {job_id} ({class}) in {elapsed:.2?}")
                }
                // Logged with the wait that follows, by `set_back`.
                JobResult::Done(Err(f)) if f.is_worker_side() => {}
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
            JobResult::Done(Err(failure)) if failure.is_worker_side() => {
                self.give_back(&job).instrument(span.clone()).await;
                stats.busy.fetch_sub(1, Ordering::Relaxed);
                self.set_back(&failure, control).instrument(span).await;
                return None;
            }
            JobResult::Done(Ok(())) => Outcome::Complete,
            JobResult::Done(Err(failure)) => {
                let payload_value = match &parsed {
                    Ok(p) => p.to_value(),
                    // The raw entry (escaped where it is not text), so nothing of it is lost.
                    Err(_) => serde_json::Value::String(shown_entry(&job.raw)),
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
        self.setback = Duration::ZERO;
        let retried = crate::scheduler::retry::retry_failed(
            &self.conn,
            &self.shared,
            &self.id_text,
            &job,
            parsed.as_ref().ok(),
            &outcome,
            || control.borrow().mode == Mode::Abort,
        );
        if self.ticking(retried).instrument(span.clone()).await {
            stats.processed.fetch_add(1, Ordering::Relaxed);
            stats.busy.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
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
            // The combined attempt may have run all the same; the token makes a repeat safe.
            self.record(&job, parsed.as_ref().ok(), &outcome, control, go_on)
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

    /// The outcome and the next RESERVE in one round trip. Returns `Some(next)` once the
    /// outcome is known to be written (or known to be someone else's: the job was recovered) —
    /// `Some(None)` if only the reservation's reply is unknown — and `None` if the outcome may
    /// not be written (the caller then writes it with retries; the token makes that safe).
    async fn record_and_reserve(
        &mut self,
        job: &Reserved,
        payload: Option<&Payload>,
        outcome: &Outcome,
    ) -> Option<Option<Reservation>> {
        let mut pipe = redis::pipe();
        commands::add_finish(
            &mut pipe,
            &self.shared.keys,
            &self.id_text,
            &job.entry,
            payload,
            outcome,
        );
        pipe.add_command(self.reserve_cmd());
        self.add_wait(&mut pipe);
        let mut conn = self.conn.clone();
        match self
            .ticking(pipe.query_async::<Vec<redis::Value>>(&mut conn))
            .await
        {
            Ok(replies) => {
                let mut replies = replies.into_iter();
                let written = replies.next().unwrap_or(redis::Value::Nil);
                let reply = replies.next().unwrap_or(redis::Value::Nil);
                self.check_wait(replies.next());
                match written {
                    redis::Value::Int(1) => {}
                    redis::Value::Int(2) => self.status_written_late(job, payload, outcome),
                    _ => self.outcome_not_in_flight(false),
                }
                let looked = self.maybe_holding;
                let reservation = self.read_reservation(reply);
                if self.reconnected() && !looked && matches!(reservation, Reservation::Empty) {
                    // As in `reserve`: look for a held job before going idle.
                    self.maybe_holding = true;
                    return Some(None);
                }
                Some(Some(reservation))
            }
            Err(e) => {
                self.maybe_holding = true;
                debug!(error = %e, "combined outcome and reservation failed; writing the outcome again");
                None
            }
        }
    }

    /// The job's status key is missing; if it was missing at the reservation too, the enqueuer
    /// may write it late (php-resque's order): the final status goes over it when it comes.
    fn status_written_late(&self, job: &Reserved, payload: Option<&Payload>, outcome: &Outcome) {
        if let (true, Some(payload)) = (job.status_late, payload) {
            let status = match outcome {
                Outcome::Complete => JobStatus::Complete,
                Outcome::Failed(_) => JobStatus::Failed,
            };
            self.intend_status(payload, status);
        }
    }

    fn intend_status(&self, payload: &Payload, status: JobStatus) {
        if let Some(late) = commands::late_status(&self.shared.keys, payload, status) {
            self.shared.late.intend(late);
        }
    }

    fn outcome_not_in_flight(&self, retry: bool) {
        if retry {
            info!("the job's outcome was already written by an attempt whose reply was lost (or the job was recovered meanwhile)");
        } else {
            warn!("the job was no longer in this worker's hands (recovered by another daemon?); its outcome was not recorded");
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
    /// `retry`: an earlier attempt may have been written already.
    async fn record(
        &mut self,
        job: &Reserved,
        payload: Option<&Payload>,
        outcome: &Outcome,
        control: &mut watch::Receiver<Control>,
        mut retry: bool,
    ) {
        let invocation = commands::finish(
            &self.shared.keys,
            &self.id_text,
            &job.entry,
            payload,
            outcome,
        );
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut conn = self.conn.clone();
            match self
                .ticking(invocation.invoke_async::<i64>(&mut conn))
                .await
            {
                Ok(1) => return self.wait_for_replicas().await,
                Ok(2) => {
                    self.status_written_late(job, payload, outcome);
                    return self.wait_for_replicas().await;
                }
                Ok(_) => {
                    self.outcome_not_in_flight(retry);
                    return;
                }
                Err(e) => {
                    error!(error = %e, retry_in = ?backoff, "cannot record the job's outcome; retrying");
                    if control.borrow().mode == Mode::Abort {
                        warn!("giving up on recording: shutting down; the job stays in flight and will be recovered");
                        return;
                    }
                    self.ticking(tokio::time::sleep(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    retry = true;
                }
            }
        }
    }

    /// After a worker-side error (the job given back): waits before the next reservation, from
    /// 250 ms doubling to 10 s while they continue, with jitter so that the workers that hit the
    /// same limit do not all come back at once.
    async fn set_back(&mut self, failure: &JobFailure, control: &mut watch::Receiver<Control>) {
        use rand::Rng;
        self.setback =
            (self.setback * 2).clamp(Duration::from_millis(250), Duration::from_secs(10));
        let wait = rand::thread_rng().gen_range(self.setback / 2..=self.setback);
        warn!(retry_in = ?wait, "job not started: {}; it goes back to its queue", failure.error);
        self.idle(control, wait, false).await;
    }

    /// `WAIT` on its own (after an outcome written outside the combined round trip).
    async fn wait_for_replicas(&self) {
        if self.shared.wait_replicas.is_none() {
            return;
        }
        let mut pipe = redis::pipe();
        self.add_wait(&mut pipe);
        let mut conn = self.conn.clone();
        if let Ok(replies) = self
            .ticking(pipe.query_async::<Vec<redis::Value>>(&mut conn))
            .await
        {
            self.check_wait(replies.into_iter().next());
        }
    }

    /// Puts the job back at the head of its queue.
    async fn give_back(&mut self, job: &Reserved) {
        if job.status_late {
            if let Ok(payload) = parse_entry(&job.raw) {
                if let Some(late) =
                    commands::late_status(&self.shared.keys, &payload, JobStatus::Waiting)
                {
                    self.shared.late.forget(&late.key);
                }
            }
        }
        let invocation =
            commands::requeue(&self.shared.keys, &self.id_text, &job.queue, &job.entry);
        let mut conn = self.conn.clone();
        match self
            .ticking(invocation.invoke_async::<i64>(&mut conn))
            .await
        {
            Ok(-1) => {
                warn!(queue = %job.queue, "cannot put the job back: its queue key is not a list; it stays in flight and will be recovered once the key is fixed")
            }
            Ok(_) => {}
            Err(e) => {
                error!(error = %e, "cannot put the job back; it stays in flight and will be recovered")
            }
        }
    }

    /// On the way out: a job held but never started (its reservation reply was lost) goes back
    /// to its queue now instead of waiting for recovery.
    async fn release_held(&mut self) {
        let mut conn = self.conn.clone();
        let reply: Result<redis::Value, _> = self
            .ticking(self.reserve_peek().query_async(&mut conn))
            .await;
        let Ok(reply) = reply else { return };
        if let Ok(commands::ReserveReply {
            reservation: Reservation::Job(job),
            ..
        }) = commands::parse_reserve(reply)
        {
            if job.held {
                info!(worker = %self.id_text, queue = %job.queue, "giving back a job this worker held but did not start");
                self.give_back(&job).await;
            }
        }
    }

    /// A RESERVE that can only return a held job: no queues to take from, paused or not.
    fn reserve_peek(&self) -> redis::Cmd {
        commands::reserve(&self.shared.keys, &self.id_text, "", true, &[])
    }

    async fn unregister(&mut self) {
        // Anything still in flight (an outcome we could not write) is left for recovery,
        // which needs the index entry; otherwise remove every record.
        let mut conn = self.conn.clone();
        let inflight: Result<usize, _> = self
            .ticking(
                redis::cmd("LLEN")
                    .arg(self.shared.keys.inflight(&self.id_text))
                    .query_async(&mut conn),
            )
            .await;
        if matches!(inflight, Ok(0)) {
            let pipe = commands::unregister(&self.shared.keys, &self.id_text);
            if let Err(e) = self.ticking(pipe.query_async::<()>(&mut conn)).await {
                warn!(worker = %self.id_text, error = %e, "cannot unregister the worker");
            }
        }
    }
}

/// Awaits `fut`, storing the monotonic time in `tick` every second meanwhile.
pub async fn tick_while<F: std::future::Future>(tick: &AtomicU64, fut: F) -> F::Output {
    tokio::pin!(fut);
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = ticker.tick() => tick.store(monotonic_secs(), Ordering::Relaxed),
        }
    }
}

/// A queue entry as a payload, or why it is not one (the message for its failure record).
fn parse_entry(raw: &[u8]) -> Result<Payload, String> {
    let text = std::str::from_utf8(raw).map_err(|e| {
        format!(
            "the queue entry is not valid UTF-8 ({e}); the entry was: {}",
            shown_prefix(raw)
        )
    })?;
    Payload::parse(text).map_err(|e| format!("{e}; the entry was: {}", shown_prefix(raw)))
}

/// An entry for a failure record: the text itself, or with its non-UTF-8 bytes escaped.
fn shown_entry(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(text) => text.to_string(),
        Err(_) => raw.escape_ascii().to_string(),
    }
}

/// The first 200 characters of an entry, for a message, with anything unprintable escaped.
fn shown_prefix(raw: &[u8]) -> String {
    let shown = shown_entry(raw);
    let mut out: String = shown.chars().take(200).collect();
    if out.len() < shown.len() {
        out.push('…');
    }
    out.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

enum JobResult {
    Done(Result<(), JobFailure>),
    /// Interrupted by a forced shutdown: not an outcome; the job goes back to its queue.
    Aborted,
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
