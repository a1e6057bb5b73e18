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

/// Record a finished job, atomically (one Lua script): status (only where the key exists),
/// stats (a failed job counts as processed too, as in php-resque and Ruby resque), the failure
/// record, the worker record, and the removal from the in-flight list that makes the job done.
///
/// Written once only: the script does nothing if the job is no longer in the in-flight list. A
/// retry after an attempt that timed out but that Redis ran after all (a failover's CLIENT
/// PAUSE, a stalled server) would otherwise write the failure record and the stats again.
pub fn finish(
    keys: &Keys,
    worker_id: &str,
    payload_raw: &str,
    payload: Option<&Payload>,
    outcome: &Outcome,
) -> redis::ScriptInvocation<'static> {
    let (script_keys, args) = finish_keys_args(keys, worker_id, payload_raw, payload, outcome);
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
/// round trip). The script must be loaded (the worker's connection loads it); on NOSCRIPT the
/// caller falls back to [`finish`], which loads it.
pub fn add_finish(
    pipe: &mut redis::Pipeline,
    keys: &Keys,
    worker_id: &str,
    payload_raw: &str,
    payload: Option<&Payload>,
    outcome: &Outcome,
) {
    let (script_keys, args) = finish_keys_args(keys, worker_id, payload_raw, payload, outcome);
    pipe.cmd("EVALSHA")
        .arg(super::scripts::FINISH.get_hash())
        .arg(script_keys.len())
        .arg(&script_keys)
        .arg(&args);
}

fn finish_keys_args(
    keys: &Keys,
    worker_id: &str,
    payload_raw: &str,
    payload: Option<&Payload>,
    outcome: &Outcome,
) -> (Vec<String>, Vec<String>) {
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
        payload_raw.to_string(),
        failure,
        StatusRecord::update_json(status, super::now_unix()),
        STATUS_TTL_SECS.to_string(),
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
