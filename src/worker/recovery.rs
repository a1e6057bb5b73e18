//! Recovery: jobs held by dead workers go back to their queue (or fail, by configuration).
//!
//! A worker is dead when its pid is gone on this host (or it is this process's id but no
//! running worker has it), or when its heartbeat is older than `dead_after` on any host. Runs
//! at start-up and periodically, under a lock so two daemons do not recover the same worker.

use crate::config::OnLost;
use crate::protocol::{
    commands, commands::Outcome, resque_time, scripts, FailureRecord, Keys, Payload, WorkerId,
    DIRTY_EXIT_EXCEPTION,
};
use redis::AsyncCommands;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tracing::{info, warn};

/// What recovery needs to know about this process.
pub struct RecoveryContext<'a> {
    pub keys: &'a Keys,
    pub host: &'a str,
    /// Ids of the workers running in this process right now.
    pub live: &'a HashSet<String>,
    pub on_lost: OnLost,
    pub max_lost: u32,
    pub dead_after: Duration,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub dead_workers: usize,
    pub requeued: usize,
    pub failed: usize,
}

fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None) {
        Ok(()) => true,
        // It exists but belongs to someone else.
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

fn heartbeat_age(text: &str) -> Option<Duration> {
    let then = chrono::DateTime::parse_from_rfc3339(text.trim()).ok()?;
    let age = chrono::Utc::now().signed_duration_since(then);
    age.to_std().ok()
}

/// One recovery pass. Returns what it did; takes the lock or does nothing.
pub async fn recover(
    conn: &mut crate::connection::Connection,
    ctx: &RecoveryContext<'_>,
    lock_owner: &str,
) -> Result<RecoveryReport, redis::RedisError> {
    let keys = ctx.keys;
    let locked: Option<String> = redis::cmd("SET")
        .arg(keys.recovery_lock())
        .arg(lock_owner)
        .arg("NX")
        .arg("EX")
        .arg(60)
        .query_async(conn)
        .await?;
    if locked.is_none() && !take_over_dead_lock(conn, ctx, lock_owner).await? {
        return Ok(RecoveryReport::default());
    }
    let result = recover_locked(conn, ctx).await;
    let _: Result<(), _> = conn.del(keys.recovery_lock()).await;
    result
}

/// A daemon killed during a pass leaves the lock for up to a minute, which would delay the
/// start-up recovery of its successor (the jobs it held) until the periodic pass. The owner is
/// `host:pid`: if it is a dead process of this host (or this very process), take the lock over.
async fn take_over_dead_lock(
    conn: &mut crate::connection::Connection,
    ctx: &RecoveryContext<'_>,
    lock_owner: &str,
) -> Result<bool, redis::RedisError> {
    let keys = ctx.keys;
    let owner: Option<String> = conn.get(keys.recovery_lock()).await?;
    let Some(owner) = owner else {
        return Ok(false);
    };
    let dead = match owner.rsplit_once(':') {
        Some((host, pid)) if host == ctx.host => match pid.parse::<u32>() {
            Ok(pid) => pid == std::process::id() || !pid_alive(pid),
            Err(_) => false,
        },
        _ => false,
    };
    if !dead {
        return Ok(false);
    }
    let taken: i64 = scripts::TAKE_OVER_LOCK
        .key(keys.recovery_lock())
        .arg(&owner)
        .arg(lock_owner)
        .arg(60)
        .invoke_async(conn)
        .await?;
    if taken == 1 {
        info!(previous_owner = %owner, "took over the recovery lock of a dead process");
    }
    Ok(taken == 1)
}

async fn recover_locked(
    conn: &mut crate::connection::Connection,
    ctx: &RecoveryContext<'_>,
) -> Result<RecoveryReport, redis::RedisError> {
    let keys = ctx.keys;
    let index: HashMap<String, String> = conn.hgetall(keys.inflight_index()).await?;
    let beats: HashMap<String, String> = conn.hgetall(keys.workers_heartbeat()).await?;
    let my_pid = std::process::id();
    let mut report = RecoveryReport::default();
    // Ours first: they hold jobs in in-flight lists.
    for (worker, queue) in &index {
        let (worker, queue) = (worker.clone(), queue.clone());
        if ctx.live.contains(&worker) {
            continue;
        }
        let Ok(id) = WorkerId::parse(&worker) else {
            continue;
        };
        // A remote worker of ours without heartbeat was pruned by another implementation after
        // its heartbeat went stale, so it is dead too.
        if !is_dead(&id, &worker, ctx, &beats, my_pid, true) {
            continue;
        }
        report.dead_workers += 1;
        // Entries are read as bytes (one that is not UTF-8 must not stop the pass), and one
        // entry that cannot be settled is left for the next pass while the others go on.
        let held: Vec<Vec<u8>> = conn.lrange(keys.inflight(&worker), 0, -1).await?;
        let mut left = 0;
        for raw in held {
            match settle_lost_job(conn, ctx, &worker, &queue, &raw).await {
                Ok(Settled::Requeued) => report.requeued += 1,
                Ok(Settled::Failed) => report.failed += 1,
                Ok(Settled::Gone) => {}
                Ok(Settled::Stuck) => left += 1,
                Err(e) if crate::connection::needs_reconnect(&e) => return Err(e),
                Err(e) => {
                    left += 1;
                    warn!(worker = %worker, error = %e, "cannot recover one job of a dead worker; trying again at the next pass");
                }
            }
        }
        if left > 0 {
            continue;
        }
        commands::unregister(keys, &worker)
            .query_async::<()>(conn)
            .await?;
        info!(worker = %worker, "removed dead worker {worker}");
    }
    // Then the records other implementations left behind (php-resque workers killed or crashed
    // on this host, Ruby workers whose heartbeat stopped), as php-resque's and Ruby's own
    // pruning would remove them; a job one was working on is recorded as failed, as Ruby does.
    let members: Vec<String> = conn.smembers(keys.workers()).await?;
    for worker in members {
        if ctx.live.contains(&worker) || index.contains_key(&worker) {
            continue;
        }
        let Ok(id) = WorkerId::parse(&worker) else {
            continue;
        };
        if !is_dead(&id, &worker, ctx, &beats, my_pid, false) {
            continue;
        }
        report.dead_workers += 1;
        let current: Option<String> = conn.get(keys.worker(&worker)).await?;
        let mut pipe = commands::unregister(keys, &worker);
        if let Some(record) = current.and_then(|t| crate::protocol::WorkerRecord::parse(&t).ok()) {
            let class = record
                .payload
                .get("class")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("<Unknown Job>")
                .to_string();
            let failure = FailureRecord {
                failed_at: resque_time(),
                payload: record.payload.clone(),
                exception: DIRTY_EXIT_EXCEPTION.to_string(),
                error: format!("Worker {worker} did not gracefully exit while processing {class}"),
                backtrace: Vec::new(),
                worker: worker.clone(),
                queue: record.queue.clone(),
                retried_at: None,
                extra: Default::default(),
            };
            pipe.rpush(keys.failed(), failure.to_json()).ignore();
            pipe.incr(keys.stat_failed(), 1).ignore();
            report.failed += 1;
        }
        pipe.query_async::<()>(conn).await?;
        info!(worker = %worker, "removed the records of a dead worker of another implementation");
    }
    Ok(report)
}

/// Whether a worker id names a dead worker: its pid is gone on this host (or it is this process
/// but none of our running workers), or its heartbeat is older than `dead_after`.
fn is_dead(
    id: &WorkerId,
    worker: &str,
    ctx: &RecoveryContext<'_>,
    beats: &HashMap<String, String>,
    my_pid: u32,
    dead_without_heartbeat: bool,
) -> bool {
    if id.host == ctx.host {
        return id.pid == my_pid || !pid_alive(id.pid);
    }
    match beats.get(worker) {
        Some(beat) => heartbeat_age(beat).is_some_and(|age| age > ctx.dead_after),
        None => dead_without_heartbeat,
    }
}

enum Settled {
    Requeued,
    Failed,
    /// Someone else settled it meanwhile.
    Gone,
    /// Its queue key has the wrong type: it stays in flight.
    Stuck,
}

/// Puts one lost job back, or fails it (on_lost = "fail", or lost too often).
async fn settle_lost_job(
    conn: &mut crate::connection::Connection,
    ctx: &RecoveryContext<'_>,
    worker: &str,
    queue: &str,
    raw: &[u8],
) -> Result<Settled, redis::RedisError> {
    let keys = ctx.keys;
    // `raw` is the in-flight entry (token and payload); the job is its payload.
    let entry = raw;
    let raw = commands::entry_payload(entry);
    let digest = sha1_hex(raw);
    let losses: u32 = scripts::COUNT_LOSS
        .key(keys.lost_count(&digest))
        .invoke_async(conn)
        .await?;
    let text = std::str::from_utf8(raw).ok();
    let payload = text.and_then(|t| Payload::parse(t).ok());
    let class = payload
        .as_ref()
        .map(|p| p.class().to_string())
        .unwrap_or_default();
    let poison = losses >= ctx.max_lost;
    if ctx.on_lost == OnLost::Requeue && !poison {
        let moved: i64 = commands::requeue(keys, worker, queue, entry)
            .invoke_async(conn)
            .await?;
        return Ok(match moved {
            1 => {
                warn!(worker, queue, class = %class, losses, "job of dead worker {worker} ({class}) put back at the head of queue {queue}");
                Settled::Requeued
            }
            -1 => {
                warn!(worker, queue, "cannot put a job of dead worker {worker} back: queue key {queue} is not a list; it stays in flight until the key is fixed");
                Settled::Stuck
            }
            _ => Settled::Gone,
        });
    }
    let error = if poison {
        format!(
            "Job lost {losses} times: its worker died each time (poison pill?); not retried again"
        )
    } else {
        format!("Worker {worker} died while processing {class}")
    };
    let shown = match text {
        Some(t) => t.to_string(),
        None => raw.escape_ascii().to_string(),
    };
    let record = FailureRecord {
        failed_at: resque_time(),
        payload: payload
            .as_ref()
            .map(Payload::to_value)
            .unwrap_or_else(|| serde_json::Value::String(shown)),
        exception: DIRTY_EXIT_EXCEPTION.to_string(),
        error: error.clone(),
        backtrace: Vec::new(),
        worker: worker.to_string(),
        queue: queue.to_string(),
        retried_at: None,
        extra: Default::default(),
    };
    let written: i64 = commands::finish(
        keys,
        worker,
        entry,
        payload.as_ref(),
        &Outcome::Failed(Box::new(record)),
    )
    .invoke_async(conn)
    .await?;
    if written == 1 {
        warn!(worker, queue, class = %class, "{error} ({class}, queue {queue}, worker {worker})");
        Ok(Settled::Failed)
    } else {
        Ok(Settled::Gone)
    }
}

/// The digest that names a payload's loss counter (Redis's `redis.sha1hex` would need another
/// round trip).
fn sha1_hex(raw: &[u8]) -> String {
    sha1_smol::Sha1::from(raw).digest().to_string()
}
