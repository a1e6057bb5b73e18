//! The writes resque makes, as pipelines: each outcome, registration and enqueue is one atomic
//! MULTI/EXEC round trip, with the keys and orders php-resque uses.

use super::{FailureRecord, JobStatus, Keys, Payload, StatusRecord, STATUS_TTL_SECS};

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Complete,
    Failed(Box<FailureRecord>),
}

/// Enqueue as php-resque does (`SADD queues`, `RPUSH`), but with the WAITING status written
/// before the push, so a fast worker always finds it.
pub fn enqueue(keys: &Keys, queue: &str, payload: &Payload, track: bool) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.sadd(keys.queues(), queue).ignore();
    if let (true, Some(id)) = (track, payload.id()) {
        pipe.set(
            keys.job_status(id, payload.status_prefix()),
            StatusRecord::waiting_json(super::now_unix()),
        )
        .ignore();
    }
    pipe.rpush(keys.queue(queue), payload.raw()).ignore();
    pipe
}

/// What a reservation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// A job to run: newly reserved, or (`held`) the one this worker already held, whose
    /// reservation reply was lost.
    Job(Reserved),
    Empty,
    Paused,
}

/// A job in a worker's in-flight list. `entry` is the in-flight element as Redis holds it
/// (`<token>|<payload>`), so the outcome names exactly that reservation; `raw` is the payload's
/// bytes as the producer wrote them (maybe not even UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub queue: String,
    pub entry: Vec<u8>,
    pub raw: Vec<u8>,
    pub held: bool,
    /// The job has an id but its status key did not exist yet: the enqueuer may write it late.
    pub status_late: bool,
}

/// A reply of the RESERVE script, with the queue keys it had to skip (wrong type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveReply {
    pub reservation: Reservation,
    pub skipped: Vec<String>,
}

/// The payload in an in-flight entry: after `<16 hex digits>|`, or the whole entry (written by
/// an older version, without a token).
pub fn entry_payload(entry: &[u8]) -> &[u8] {
    match entry.get(..17) {
        Some(head) if head[16] == b'|' && head[..16].iter().all(u8::is_ascii_hexdigit) => {
            &entry[17..]
        }
        _ => entry,
    }
}

/// The RESERVE script (EVALSHA) for one worker: see [`super::scripts::RESERVE_LUA`]. `token`:
/// 16 hex digits, new for each reservation; `look_for_held`: hand back a job the worker holds
/// (after an error, a reply may have been lost).
pub fn reserve(
    keys: &Keys,
    worker_id: &str,
    token: &str,
    look_for_held: bool,
    queues: &[String],
) -> redis::Cmd {
    let script_keys = [
        keys.inflight(worker_id),
        keys.inflight_index(),
        keys.worker(worker_id),
        keys.pause_all_workers(),
        keys.queues(),
    ];
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(super::scripts::RESERVE.get_hash())
        .arg(script_keys.len())
        .arg(&script_keys[..])
        .arg(worker_id)
        .arg(super::resque_time())
        .arg(super::now_unix())
        .arg(keys.prefix())
        .arg(token)
        .arg(if look_for_held { "1" } else { "0" })
        .arg(queues);
    cmd
}

/// Reads a RESERVE reply.
pub fn parse_reserve(reply: redis::Value) -> Result<ReserveReply, redis::RedisError> {
    let unexpected = |what: &str| {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected reply of the reservation script",
            what.to_string(),
        ))
    };
    let items: Vec<redis::Value> = match reply {
        redis::Value::Array(items) => items,
        other => return Err(unexpected(&format!("{other:?}"))),
    };
    let text = |v: &redis::Value| -> Result<String, redis::RedisError> {
        let bytes: Vec<u8> = redis::from_redis_value(v.clone())?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let kind = items.first().map(text).transpose()?.unwrap_or_default();
    let (reservation, rest) = match kind.as_str() {
        "held" | "job" if items.len() >= 4 => {
            let entry: Vec<u8> = redis::from_redis_value(items[2].clone())?;
            let reserved = Reserved {
                queue: text(&items[1])?,
                raw: entry_payload(&entry).to_vec(),
                entry,
                held: kind == "held",
                status_late: text(&items[3])? == "1",
            };
            (Reservation::Job(reserved), &items[4..])
        }
        "empty" => (Reservation::Empty, &items[1..]),
        "paused" => (Reservation::Paused, &items[1..]),
        _ => return Err(unexpected(&kind)),
    };
    let skipped = rest.iter().map(text).collect::<Result<_, _>>()?;
    Ok(ReserveReply {
        reservation,
        skipped,
    })
}

/// A status to put over one written late by the enqueuer: see
/// [`super::scripts::FIX_STATUS_LUA`]. `None` for a payload without an id.
pub fn late_status(keys: &Keys, payload: &Payload, status: JobStatus) -> Option<LateStatus> {
    let id = payload.id()?;
    Some(LateStatus {
        key: keys.job_status(id, payload.status_prefix()),
        json: StatusRecord::update_json(status, super::now_unix()),
        ttl: if status.is_final() {
            STATUS_TTL_SECS
        } else {
            0
        },
    })
}

/// One job's intended status, keyed by its status key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateStatus {
    pub key: String,
    pub json: String,
    /// Seconds to live (final statuses), 0 for RUNNING.
    pub ttl: i64,
}

/// FIX_STATUS for a batch of late statuses.
pub fn fix_statuses(statuses: &[LateStatus]) -> redis::ScriptInvocation<'static> {
    let mut invocation = super::scripts::FIX_STATUS.prepare_invoke();
    for s in statuses {
        invocation.key(&s.key).arg(&s.json).arg(s.ttl);
    }
    invocation
}

/// The key prefix every status key starts with (for client tracking).
pub fn status_key_prefix(keys: &Keys) -> String {
    keys.job_status_prefix()
}

/// Puts a held job back at the head of its queue (status back to WAITING where it exists): see
/// [`super::scripts::REQUEUE_LUA`]. Replies 1 (back), 0 (no longer held), -1 (queue key of the
/// wrong type: the job stays in flight).
pub fn requeue(
    keys: &Keys,
    worker_id: &str,
    queue: &str,
    entry: &[u8],
) -> redis::ScriptInvocation<'static> {
    let mut invocation = super::scripts::REQUEUE.prepare_invoke();
    invocation
        .key(keys.inflight(worker_id))
        .key(keys.queue(queue))
        .key(keys.worker(worker_id))
        .key(keys.queues())
        .arg(entry)
        .arg(entry_payload(entry))
        .arg(queue)
        .arg(keys.prefix())
        .arg(super::now_unix());
    invocation
}

/// Record a finished job, atomically (one Lua script): status (only where the key exists),
/// stats (a failed job counts as processed too, as in php-resque and Ruby resque), the failure
/// record, the worker record, and the removal from the in-flight list that makes the job done.
///
/// Written once only: the script does nothing unless the job's in-flight `entry` (its
/// reservation token and payload) is still there. A retry after an attempt that timed out but
/// that Redis ran after all (a failover's CLIENT PAUSE, a stalled server) would otherwise write
/// the failure record and the stats again, or remove the next job of the same bytes.
pub fn finish(
    keys: &Keys,
    worker_id: &str,
    entry: &[u8],
    payload: Option<&Payload>,
    outcome: &Outcome,
) -> redis::ScriptInvocation<'static> {
    let (script_keys, args) = finish_keys_args(keys, worker_id, entry, payload, outcome);
    let mut invocation = super::scripts::FINISH.prepare_invoke();
    for k in &script_keys {
        invocation.key(k);
    }
    for a in &args {
        invocation.arg(a);
    }
    invocation
}

/// [`finish`] as an EVALSHA in a caller's pipeline (to send the next reservation in the same
/// round trip). The connection loads the script and retries on NOSCRIPT.
pub fn add_finish(
    pipe: &mut redis::Pipeline,
    keys: &Keys,
    worker_id: &str,
    entry: &[u8],
    payload: Option<&Payload>,
    outcome: &Outcome,
) {
    let (script_keys, args) = finish_keys_args(keys, worker_id, entry, payload, outcome);
    pipe.cmd("EVALSHA")
        .arg(super::scripts::FINISH.get_hash())
        .arg(script_keys.len())
        .arg(&script_keys)
        .arg(&args);
}

fn finish_keys_args(
    keys: &Keys,
    worker_id: &str,
    entry: &[u8],
    payload: Option<&Payload>,
    outcome: &Outcome,
) -> (Vec<String>, Vec<Vec<u8>>) {
    let status_key = payload
        .and_then(Payload::id)
        .map(|id| keys.job_status(id, payload.and_then(Payload::status_prefix)));
    let status = match outcome {
        Outcome::Complete => JobStatus::Complete,
        Outcome::Failed(_) => JobStatus::Failed,
    };
    let failure = match outcome {
        Outcome::Complete => String::new(),
        Outcome::Failed(record) => record.to_json(),
    };
    let mut script_keys = vec![
        keys.inflight(worker_id),
        keys.worker(worker_id),
        keys.stat_processed(),
        keys.stat_processed_by(worker_id),
        keys.failed(),
        keys.stat_failed(),
        keys.stat_failed_by(worker_id),
    ];
    script_keys.extend(status_key);
    let args = vec![
        entry.to_vec(),
        failure.into_bytes(),
        StatusRecord::update_json(status, super::now_unix()).into_bytes(),
        STATUS_TTL_SECS.to_string().into_bytes(),
    ];
    (script_keys, args)
}

/// Register workers (`SADD workers`, `:started`) and beat Ruby's heartbeat. Run again at every
/// heartbeat, so a record another implementation pruned comes back; `:started` keeps its value.
///
/// Each worker also gets an entry in the in-flight index (recovery walks the index, so a worker
/// killed before it reserved anything is found and its records removed too). The value is the
/// queue recovery puts held jobs back into; reserving overwrites it with the job's queue before
/// anything is held, so an existing entry is left alone.
pub fn register(keys: &Keys, worker_ids: &[String], now_text: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    if worker_ids.is_empty() {
        return pipe;
    }
    pipe.sadd(keys.workers(), worker_ids).ignore();
    let beats: Vec<(&str, &str)> = worker_ids
        .iter()
        .map(|id| (id.as_str(), now_text))
        .collect();
    pipe.hset_multiple(keys.workers_heartbeat(), &beats)
        .ignore();
    for id in worker_ids {
        pipe.cmd("SET")
            .arg(keys.worker_started(id))
            .arg(now_text)
            .arg("NX")
            .ignore();
        let first_queue = super::WorkerId::parse(id)
            .ok()
            .and_then(|w| w.queues.into_iter().next())
            .unwrap_or_default();
        pipe.hset_nx(keys.inflight_index(), id, first_queue)
            .ignore();
    }
    pipe
}

/// Remove every record of a worker, as php-resque's `unregisterWorker` and Ruby's
/// `unregister_worker` do (plus our in-flight index entry).
pub fn unregister(keys: &Keys, worker_id: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.srem(keys.workers(), worker_id).ignore();
    pipe.del(keys.worker(worker_id)).ignore();
    pipe.del(keys.worker_started(worker_id)).ignore();
    pipe.del(keys.stat_processed_by(worker_id)).ignore();
    pipe.del(keys.stat_failed_by(worker_id)).ignore();
    pipe.hdel(keys.workers_heartbeat(), worker_id).ignore();
    pipe.hdel(keys.inflight_index(), worker_id).ignore();
    pipe
}

/// A failed job goes back to its queue keeping every field (its id too, so status tracking
/// survives; Ruby's retry drops it). The status goes back to WAITING if it still exists.
pub fn retry(keys: &Keys, queue: &str, payload: &Payload) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.sadd(keys.queues(), queue).ignore();
    if let Some(id) = payload.id() {
        let key = keys.job_status(id, payload.status_prefix());
        pipe.cmd("SET")
            .arg(&key)
            .arg(StatusRecord::update_json(
                JobStatus::Waiting,
                super::now_unix(),
            ))
            .arg("XX")
            .ignore();
        pipe.persist(&key).ignore();
    }
    pipe.rpush(keys.queue(queue), payload.raw()).ignore();
    pipe
}
