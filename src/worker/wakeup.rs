//! Wakes idle workers when a job is pushed, without polling.
//!
//! php-resque polls every INTERVAL seconds (0–5 s pickup latency); BLMOVE blocks on one queue
//! only and cannot serve several queues in priority order. Instead one RESP3 connection per pool
//! turns on Redis client-side-caching invalidations in broadcast mode for the queue keys
//! (`CLIENT TRACKING ON BCAST PREFIX <ns>queue:…`): Redis pushes a message whenever a queue key
//! changes — whoever pushed (php-resque, Ruby, node) — and we wake one idle worker, which then
//! reserves with the Lua script in priority order. Idle workers send no commands; if the
//! tracking connection is lost, workers still look every `interval` until it is back.
//!
//! A connection that only listens cannot tell a quiet Redis from a dead socket (a NAT that forgot
//! it, a Redis host that lost power): it asks ROLE every [`LIVENESS`] and gives up on the socket when
//! the answer does not come within `command_timeout` or is not "master", then reconnects and wakes every idle worker
//! (a push may have been missed meanwhile).

use super::late_status::LateStatuses;
use crate::config::RedisConfig;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify, Semaphore};
use tracing::{debug, warn};

/// How often the tracking connection proves it is alive. One ROLE per pool every 10 s is the
/// whole idle cost; a dead socket is noticed within this plus `command_timeout`.
const LIVENESS: Duration = Duration::from_secs(10);

/// Wake-ups for idle workers: one per pushed job, counted (a burst of pushes while workers are
/// busy is not collapsed into one, as a `Notify` permit would be) and capped at the number of
/// workers (so a burst does not turn into thousands of empty reservations later).
#[derive(Debug)]
pub struct Wakeup {
    permits: Semaphore,
    cap: AtomicUsize,
    /// True while Redis pushes invalidations to us; otherwise idle workers poll.
    tracking: AtomicBool,
    /// Bumped each time the wake-up connection comes back after a loss (an outage, a restart,
    /// a failover): every worker then looks once for a job it may hold without knowing (an
    /// outcome lost with the old server, a reply lost in the outage).
    disruptions: std::sync::atomic::AtomicU64,
}

impl Wakeup {
    pub fn new(workers: usize) -> Wakeup {
        Wakeup {
            permits: Semaphore::new(0),
            cap: AtomicUsize::new(workers.max(1)),
            tracking: AtomicBool::new(false),
            disruptions: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn set_workers(&self, workers: usize) {
        self.cap.store(workers.max(1), Ordering::Relaxed);
    }

    /// One more job may be waiting.
    pub fn ring(&self) {
        if self.permits.available_permits() < self.cap.load(Ordering::Relaxed) {
            self.permits.add_permits(1);
        }
    }

    /// Every idle worker should look.
    pub fn ring_all(&self) {
        for _ in 0..self.cap.load(Ordering::Relaxed) {
            self.ring();
        }
    }

    /// How many times the wake-up connection came back after a loss.
    pub fn disruptions(&self) -> u64 {
        self.disruptions.load(Ordering::Relaxed)
    }

    /// Waits for a wake-up.
    pub async fn wait(&self) {
        if let Ok(permit) = self.permits.acquire().await {
            permit.forget();
        }
    }
}

/// The key prefixes to track for a queue list: one per queue, or the whole `queue:` space
/// when `*` is among them or two prefixes would overlap (Redis refuses overlapping prefixes).
pub fn tracking_prefixes(keys: &crate::protocol::Keys, queues: &[String]) -> Vec<String> {
    let all = keys.queue("");
    if queues.iter().any(|q| q == "*") {
        return vec![all];
    }
    let prefixes: Vec<String> = queues.iter().map(|q| keys.queue(q)).collect();
    let overlap = prefixes.iter().enumerate().any(|(i, a)| {
        prefixes
            .iter()
            .enumerate()
            .any(|(j, b)| i != j && b.starts_with(a.as_str()))
    });
    if overlap {
        vec![all]
    } else {
        prefixes
    }
}

/// Runs until `stop` is notified: keeps a tracking connection and turns every invalidation into
/// one wake-up. While tracking is down, it wakes one idle worker every `interval` instead: one
/// look per pool, not one per worker.
/// What the wake-up connection listens to: the queue keys (wake a worker) and the status keys
/// (statuses written late by the enqueuer, see [`super::late_status`]).
pub struct Tracked {
    pub queue_prefixes: Vec<String>,
    pub status_prefix: String,
    pub late: Arc<LateStatuses>,
    /// The daemon's view of Redis: a master switch (Sentinel) ends the session at once.
    pub health: Arc<crate::connection::Health>,
}

pub async fn run(
    redis: RedisConfig,
    tracked: Tracked,
    wake: Arc<Wakeup>,
    stop: Arc<Notify>,
    interval: Duration,
) {
    // Without tracking (connection lost), idle workers look every interval: one per pool.
    let safety_net = {
        let wake = wake.clone();
        async move {
            let mut every = tokio::time::interval(interval);
            every.tick().await;
            loop {
                every.tick().await;
                if !wake.tracking.load(Ordering::Relaxed) {
                    wake.ring();
                }
            }
        }
    };
    tokio::pin!(safety_net);
    let mut backoff = Duration::from_millis(200);
    let mut unsupported_said = false;
    loop {
        let session = track(&redis, &tracked, &wake);
        let mut retry_in = None;
        tokio::select! {
            _ = stop.notified() => return,
            _ = &mut safety_net => {}
            result = session => {
                match result {
                    // Not a fault but what this server (or a proxy in front of it) is: look
                    // again rarely, and say it once.
                    Err(e) if tracking_unsupported(&e) => {
                        if !unsupported_said {
                            warn!(error = %e, interval = ?interval, "this Redis does not offer client tracking (RESP3 HELLO / CLIENT TRACKING); idle workers look for jobs every interval instead");
                            unsupported_said = true;
                        }
                        retry_in = Some(UNSUPPORTED_RETRY);
                    }
                    Err(e) => warn!(error = %e, retry_in = ?backoff, "job wake-ups unavailable; idle workers poll every interval until Redis is back"),
                    Ok(()) => {}
                }
            }
        }
        wake.tracking.store(false, Ordering::Relaxed);
        wake.disruptions.fetch_add(1, Ordering::Relaxed);
        // Something may have been pushed while we were not listening.
        wake.ring_all();
        tokio::select! {
            _ = stop.notified() => return,
            _ = &mut safety_net => {}
            _ = tokio::time::sleep(retry_in.unwrap_or(backoff)) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Routes one invalidation: a queue key wakes a worker; a status key may settle a late status.
/// A flush (no keys) wakes every worker.
fn invalidated(data: &[redis::Value], tracked: &Tracked, wake: &Wakeup) {
    let keys: Vec<String> = match data.first() {
        Some(redis::Value::Array(keys)) => keys
            .iter()
            .filter_map(|k| redis::from_redis_value::<String>(k.clone()).ok())
            .collect(),
        _ => {
            wake.ring_all();
            return;
        }
    };
    let (statuses, queues): (Vec<String>, Vec<String>) = keys
        .into_iter()
        .partition(|k| k.starts_with(&tracked.status_prefix));
    for _ in &queues {
        wake.ring();
    }
    if !statuses.is_empty() {
        tracked.late.written(statuses);
    }
}

/// How often to try tracking again on a server that refused it.
const UNSUPPORTED_RETRY: Duration = Duration::from_secs(300);

/// Whether the server refused RESP3 or client tracking (not a connection problem).
fn tracking_unsupported(e: &redis::RedisError) -> bool {
    if e.kind() == redis::ErrorKind::RESP3NotSupported {
        return true;
    }
    let text = e.to_string().to_lowercase();
    text.contains("unknown command") && (text.contains("hello") || text.contains("client"))
        || text.contains("noproto")
        || text.contains("unknown subcommand")
}

async fn track(
    redis: &RedisConfig,
    tracked: &Tracked,
    wake: &Arc<Wakeup>,
) -> Result<(), redis::RedisError> {
    let resolved = crate::connection::open_client(redis).await?;
    let info = resolved.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The handshake (HELLO 3) and CLIENT TRACKING are bounded by the connection's timeouts.
    let config = redis.async_config().set_push_sender(tx);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("TRACKING").arg("ON").arg("BCAST");
    for p in tracked
        .queue_prefixes
        .iter()
        .chain(std::iter::once(&tracked.status_prefix))
    {
        cmd.arg("PREFIX").arg(p);
    }
    cmd.query_async::<()>(&mut conn).await?;
    debug!(prefixes = ?tracked.queue_prefixes, "listening for pushed jobs");
    wake.tracking.store(true, Ordering::Relaxed);
    // A job may have arrived before tracking was on.
    wake.ring_all();
    let mut liveness = tokio::time::interval(LIVENESS);
    liveness.tick().await;
    let closed = || redis::RedisError::from((redis::ErrorKind::Io, "tracking connection closed"));
    loop {
        tokio::select! {
            _ = tracked.health.next_switch() => {
                return Err(redis::RedisError::from((redis::ErrorKind::Io, "the master switched")));
            }
            push = rx.recv() => match push {
                Some(push) => match push.kind {
                    redis::PushKind::Invalidate => invalidated(&push.data, tracked, wake),
                    redis::PushKind::Disconnection => return Err(closed()),
                    _ => {}
                },
                None => return Err(closed()),
            },
            _ = liveness.tick() => {
                // The connection's response timeout (command_timeout) bounds the wait. ROLE
                // rather than PING: a master demoted to a replica (a failover) is left too.
                let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await.map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "tracking connection does not answer",
                        e.to_string(),
                    ))
                })?;
                let master = matches!(role.first(), Some(v) if redis::from_redis_value::<String>(v.clone()).is_ok_and(|r| r == "master"));
                if !master {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "the tracked server is no longer the master",
                    )));
                }
            }
        }
    }
}
