//! The scheduler's keys and shapes: resque-scheduler's delayed-job layout, shared with Ruby
//! resque-scheduler, php-resque 1.3.6's `ResqueScheduler` and node-resque, and our own leader
//! lock and recurring-schedule state.
//!
//! - `delayed_queue_schedule`: ZSET, member = score = integer unix seconds of a due time.
//! - `delayed:<ts>`: LIST of JSON items `{"class","args","queue"}` (Ruby's key order), due at `ts`.
//! - `timestamps:<item JSON>`: SET of `delayed:<ts>` (no namespace inside the member) for every
//!   time the exact item is scheduled; Ruby and node write it, php-resque never does.
//! - `scheduler:leader` (ours): the leader lock, `{"owner","token","since"}` with a TTL; `token`
//!   comes from `scheduler:fence` (INCR), so each holding of the lock has its own value and every
//!   move checks it inside the same script (a paused old leader cannot act).
//! - `schedule:last` (ours): HASH schedule name → unix time of its last tick handled, written in
//!   the script that enqueues that tick (each tick once across daemons).
//! - `delayed:last_enqueued_at`: Ruby resque-scheduler's HASH name → time of the last enqueue,
//!   for resque-web's schedule tab.

use super::{scripts, Keys, Payload, StatusRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

impl Keys {
    /// ZSET of due times (resque-scheduler's `delayed_queue_schedule`).
    pub fn delayed_schedule(&self) -> String {
        format!("{}delayed_queue_schedule", self.prefix())
    }
    /// LIST of the items due at `ts`.
    pub fn delayed_at(&self, ts: i64) -> String {
        format!("{}delayed:{ts}", self.prefix())
    }
    /// SET of `delayed:<ts>` members for one exact item text.
    pub fn delayed_timestamps(&self, item: &str) -> String {
        format!("{}timestamps:{item}", self.prefix())
    }
    /// Our leader lock (one scheduler per namespace).
    pub fn scheduler_leader(&self) -> String {
        format!("{}scheduler:leader", self.prefix())
    }
    /// Counter giving every holding of the leader lock its own token.
    pub fn scheduler_fence(&self) -> String {
        format!("{}scheduler:fence", self.prefix())
    }
    /// HASH schedule name → last tick handled (unix seconds).
    pub fn schedule_last(&self) -> String {
        format!("{}schedule:last", self.prefix())
    }
    /// Leader locks of other implementations' schedulers, to show who else moves delayed jobs:
    /// node-resque's `resque_scheduler_leader_lock`, and Ruby resque-scheduler's master lock
    /// (its documented name, and the doubly namespaced key it most likely really uses).
    pub fn other_scheduler_locks(&self) -> Vec<String> {
        let p = self.prefix();
        vec![
            format!("{p}resque_scheduler_leader_lock"),
            format!("{p}resque_scheduler_master_lock"),
            format!("{p}{p}resque_scheduler_master_lock"),
        ]
    }
    /// Ruby resque-scheduler's HASH schedule name → `Time.now.to_s` of the last enqueue.
    pub fn schedule_last_enqueued_at(&self) -> String {
        format!("{}delayed:last_enqueued_at", self.prefix())
    }
}

/// Field of a recurring job's payload: the name of its `[[schedule]]`.
pub const SCHEDULE_FIELD: &str = "schedule";
/// Field of a recurring job's payload: the tick it was enqueued for (unix seconds).
pub const SCHEDULED_AT_FIELD: &str = "scheduled_at";

/// The member of a `timestamps:` set for `ts` (no namespace: as Ruby and node write it).
pub fn timestamp_member(ts: i64) -> String {
    format!("delayed:{ts}")
}

/// A delayed item as resque-scheduler writes it: `{"class","args","queue"}` in that order, so
/// Ruby's `remove_delayed` (byte-exact) finds it; a tracked job also carries php-resque's `id`
/// (and empty `prefix`), which stays with it when it reaches its queue.
pub fn delayed_item(class: &str, args: Value, queue: &str, id: Option<&str>) -> String {
    let mut fields = Map::new();
    fields.insert("class".into(), Value::String(class.to_string()));
    fields.insert("args".into(), Value::Array(vec![args]));
    fields.insert("queue".into(), Value::String(queue.to_string()));
    if let Some(id) = id {
        fields.insert("id".into(), Value::String(id.to_string()));
        fields.insert("prefix".into(), Value::String(String::new()));
    }
    Value::Object(fields).to_string()
}

/// Schedules an item at `ts` as Ruby and node do, in one MULTI: `RPUSH delayed:<ts>`,
/// `SADD timestamps:<item>`, `ZADD delayed_queue_schedule ts ts`; a tracked job's WAITING status
/// is written first.
pub fn schedule(keys: &Keys, ts: i64, item: &str, status_key: Option<&str>) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    if let Some(key) = status_key {
        pipe.set(key, StatusRecord::waiting_json(super::now_unix()))
            .ignore();
    }
    pipe.rpush(keys.delayed_at(ts), item).ignore();
    pipe.sadd(keys.delayed_timestamps(item), timestamp_member(ts))
        .ignore();
    pipe.zadd(keys.delayed_schedule(), ts, ts).ignore();
    pipe
}

/// The leader lock's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderLock {
    /// `host:pid:incarnation` of the daemon holding it.
    pub owner: String,
    /// Fencing token: grows with every new holding.
    pub token: i64,
    /// Unix time the holding began.
    pub since: i64,
}

impl LeaderLock {
    pub fn parse(text: &str) -> Option<LeaderLock> {
        serde_json::from_str(text).ok()
    }
}

/// What [`leader`] found: whether we hold the lock now, and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderReply {
    pub ours: bool,
    pub value: String,
}

/// Take or renew the leader lock for `owner` with a TTL: see [`scripts::LEADER_LUA`].
pub fn leader(keys: &Keys, owner: &str, ttl_ms: u64) -> redis::ScriptInvocation<'static> {
    let mut inv = scripts::LEADER.prepare_invoke();
    inv.key(keys.scheduler_leader())
        .key(keys.scheduler_fence())
        .arg(owner)
        .arg(ttl_ms)
        .arg(super::now_unix());
    inv
}

pub fn parse_leader(reply: (i64, String)) -> LeaderReply {
    LeaderReply {
        ours: reply.0 == 1,
        value: reply.1,
    }
}

/// Give the lock up if `value` still holds it.
pub fn release(keys: &Keys, value: &str) -> redis::ScriptInvocation<'static> {
    let mut inv = scripts::RELEASE_LEADER.prepare_invoke();
    inv.key(keys.scheduler_leader()).arg(value);
    inv
}

/// Move up to `limit` due items to their queues, fenced by the lock `value`: see
/// [`scripts::MOVE_DUE_LUA`]. `worker` names the mover in failure records of broken items.
pub fn move_due(
    keys: &Keys,
    value: &str,
    now: i64,
    limit: usize,
    worker: &str,
) -> redis::ScriptInvocation<'static> {
    let mut inv = scripts::MOVE_DUE.prepare_invoke();
    inv.key(keys.delayed_schedule())
        .key(keys.scheduler_leader())
        .key(keys.queues())
        .key(keys.failed())
        .arg(value)
        .arg(keys.prefix())
        .arg(now)
        .arg(limit)
        .arg(super::resque_time())
        .arg(worker);
    inv
}

/// A MOVE_DUE reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveReply {
    /// False if the lock was not ours (nothing moved).
    pub fenced_out: bool,
    pub moved: usize,
    /// Earliest due time left, if any.
    pub next: Option<i64>,
    /// Keys in the schedule that were not lists (dropped from the schedule, left as they are).
    pub bad: Vec<String>,
}

pub fn parse_move(reply: Vec<String>) -> MoveReply {
    let num = |i: usize| reply.get(i).and_then(|s| s.parse::<i64>().ok());
    let moved = num(0).unwrap_or(-1);
    MoveReply {
        fenced_out: moved < 0,
        moved: moved.max(0) as usize,
        next: num(1).filter(|n| *n >= 0),
        bad: reply.iter().skip(2).cloned().collect(),
    }
}

/// Enqueue one tick of a recurring schedule once (fenced; nothing if the tick or a later one was
/// handled): see [`scripts::ENQUEUE_TICK_LUA`]. `payload` `None` records the tick without
/// enqueueing (a missed tick skipped, or the first look at a new schedule).
pub fn enqueue_tick(
    keys: &Keys,
    value: &str,
    name: &str,
    tick: i64,
    queue: &str,
    payload: Option<&Payload>,
) -> redis::ScriptInvocation<'static> {
    let mut inv = scripts::ENQUEUE_TICK.prepare_invoke();
    inv.key(keys.scheduler_leader())
        .key(keys.schedule_last())
        .key(keys.queues())
        .key(keys.queue(queue))
        .key(keys.schedule_last_enqueued_at())
        .arg(value)
        .arg(name)
        .arg(tick)
        .arg(payload.map(Payload::raw).unwrap_or(""))
        .arg(queue)
        .arg(ruby_time_now());
    inv
}

/// Ruby's `Time.now.to_s`: `2026-12-01 22:00:00 +0000`.
fn ruby_time_now() -> String {
    chrono::Local::now()
        .format("%Y-%m-%d %H:%M:%S %z")
        .to_string()
}

/// Take one exact item out of `delayed:<ts>` (by value, once), and push it to `queue` — or, with
/// `queue` `None`, drop it: see [`scripts::DELAYED_TAKE_LUA`].
pub fn take_delayed(
    keys: &Keys,
    ts: i64,
    item: &[u8],
    queue: Option<&str>,
) -> redis::ScriptInvocation<'static> {
    let item_text = String::from_utf8_lossy(item).into_owned();
    let mut inv = scripts::DELAYED_TAKE.prepare_invoke();
    inv.key(keys.delayed_schedule())
        .key(keys.delayed_at(ts))
        .key(keys.delayed_timestamps(&item_text))
        .key(keys.queues())
        .key(keys.queue(queue.unwrap_or("")))
        .arg(item)
        .arg(ts)
        .arg(timestamp_member(ts))
        .arg(queue.unwrap_or(""));
    inv
}

/// A failed attempt goes to the delayed queue at `ts` as `item` (same id, attempt count
/// carried), atomically with its outcome: see [`scripts::RETRY_LATER_LUA`]. `failure` is written
/// too when every attempt is recorded.
#[allow(clippy::too_many_arguments)]
pub fn retry_later(
    keys: &Keys,
    worker_id: &str,
    entry: &[u8],
    status_key: Option<&str>,
    failure: Option<&str>,
    ts: i64,
    item: &str,
) -> redis::ScriptInvocation<'static> {
    let mut inv = scripts::RETRY_LATER.prepare_invoke();
    inv.key(keys.inflight(worker_id))
        .key(keys.worker(worker_id))
        .key(keys.stat_processed())
        .key(keys.stat_processed_by(worker_id))
        .key(keys.failed())
        .key(keys.stat_failed())
        .key(keys.stat_failed_by(worker_id))
        .key(keys.delayed_schedule())
        .key(keys.delayed_at(ts))
        .key(keys.delayed_timestamps(item));
    if let Some(k) = status_key {
        inv.key(k);
    }
    inv.arg(entry)
        .arg(failure.unwrap_or(""))
        .arg(StatusRecord::update_json(
            super::JobStatus::Waiting,
            super::now_unix(),
        ))
        .arg(item)
        .arg(ts)
        .arg(timestamp_member(ts));
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_resque_schedulers() {
        let k = Keys::new("resque");
        assert_eq!(k.delayed_schedule(), "resque:delayed_queue_schedule");
        assert_eq!(k.delayed_at(1700000000), "resque:delayed:1700000000");
        assert_eq!(
            k.delayed_timestamps(r#"{"class":"A","args":[],"queue":"q"}"#),
            r#"resque:timestamps:{"class":"A","args":[],"queue":"q"}"#
        );
        assert_eq!(timestamp_member(5), "delayed:5");
    }

    #[test]
    fn items_are_in_rubys_key_order() {
        assert_eq!(
            delayed_item("Mail", json!({"to": "a/b"}), "default", None),
            r#"{"class":"Mail","args":[{"to":"a/b"}],"queue":"default"}"#
        );
        let tracked = delayed_item("Mail", Value::Null, "q", Some("abc"));
        assert_eq!(
            tracked,
            r#"{"class":"Mail","args":[null],"queue":"q","id":"abc","prefix":""}"#
        );
    }

    #[test]
    fn move_replies() {
        let r = parse_move(vec!["3".into(), "-1".into()]);
        assert_eq!((r.fenced_out, r.moved, r.next), (false, 3, None));
        let r = parse_move(vec!["-1".into(), "-1".into()]);
        assert!(r.fenced_out);
        let r = parse_move(vec!["0".into(), "17".into(), "resque:delayed:9".into()]);
        assert_eq!(r.next, Some(17));
        assert_eq!(r.bad, vec!["resque:delayed:9".to_string()]);
    }
}
