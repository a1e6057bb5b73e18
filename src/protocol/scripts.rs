//! Lua scripts: the steps that must be atomic in Redis.
//!
//! Every script that changes a job's place is idempotent per worker, because a reply can be lost
//! after Redis ran the command (a response timeout during `CLIENT PAUSE`, a stall, a dropped
//! connection) and the worker then sends it again:
//! - a reservation made while the worker already holds a job returns that job (held by the
//!   lost reply) instead of taking another, so a lost reply means "run the held job", never a
//!   job stuck in flight;
//! - every reservation carries a token, kept in the in-flight entry itself (`<token>|<payload>`),
//!   and an outcome removes exactly that entry, so a repeated outcome cannot remove the next job
//!   even when both payloads are the same bytes (Ruby and node jobs without an id);
//! - a script checks what can fail (a key of the wrong type) before it moves anything, because
//!   Redis keeps the effects of a script that errors half way.

use std::sync::LazyLock;

/// Shared Lua: the status key of a payload (php-resque's `job:<id>:status`, or
/// `job:<prefix>_<id>:status`), or nil for a job without an id.
const STATUS_KEY_LUA: &str = r#"
local function status_key(prefix, payload)
  local ok, job = pcall(cjson.decode, payload)
  if not ok or type(job) ~= 'table' or type(job.id) ~= 'string' or job.id == '' then
    return nil
  end
  if type(job.prefix) == 'string' and job.prefix ~= '' then
    return prefix .. 'job:' .. job.prefix .. '_' .. job.id .. ':status'
  end
  return prefix .. 'job:' .. job.id .. ':status'
end
local function wrongtype(reply)
  return type(reply) == 'table' and type(reply.err) == 'string'
    and string.find(reply.err, 'WRONGTYPE', 1, true) ~= nil
end
local function usable_list(key)
  local t = redis.call('TYPE', key)['ok']
  return t == 'list' or t == 'none'
end
"#;

/// Reserve: hand back the job this worker already holds (when asked to look: after an error,
/// at start), or move the first job of the first non-empty queue (priority order) into the
/// worker's in-flight list as `<token>|<payload>` and record that the worker runs it — in one
/// step, so a job is never only in our memory. Writes `worker:<id>` and the RUNNING status
/// (only if the status key exists, as php-resque does). A queue named `*` stands for every
/// queue in the `queues` set not named before it, sorted. A queue key of the wrong type is
/// skipped (and named in the reply) so the other queues keep flowing.
///
/// KEYS: inflight list, inflight index, worker key, pause-all-workers, queues set.
/// ARGV: worker id, run_at text, unix now, namespace prefix, new token, look for a held job
/// ('1'/'0'), queue names…
/// Returns `{'held'|'job', queue, entry, late, bad…}`, `{'empty', bad…}` or `{'paused'}`;
/// `late` is '1' when the job has an id but no status key yet (php-resque writes the status
/// after the push: it may still come).
pub const RESERVE_LUA: &str = r#"
if ARGV[6] == '1' then
  local held = redis.call('LINDEX', KEYS[1], 0)
  if held then
    return {'held', redis.call('HGET', KEYS[2], ARGV[1]) or '', held, '0'}
  end
end
local paused = redis.pcall('GET', KEYS[4])
if type(paused) == 'string' and string.lower(paused):match('^%s*true%s*$') then
  return {'paused'}
end
local prefix = ARGV[4]
local names, seen, bad = {}, {}, {}
for i = 7, #ARGV do
  if ARGV[i] == '*' then
    local all = redis.pcall('SMEMBERS', KEYS[5])
    if all.err then
      if not wrongtype(all) then return redis.error_reply(all.err) end
      bad[#bad + 1] = KEYS[5]
      all = {}
    end
    table.sort(all)
    for _, q in ipairs(all) do
      if not seen[q] then seen[q] = true; names[#names + 1] = q end
    end
  elseif not seen[ARGV[i]] then
    seen[ARGV[i]] = true; names[#names + 1] = ARGV[i]
  end
end
for _, queue in ipairs(names) do
  local payload = redis.pcall('LPOP', prefix .. 'queue:' .. queue)
  if type(payload) == 'table' and payload.err then
    -- Only a key of the wrong type is skipped; anything else (READONLY, OOM) is Redis's
    -- problem, not the key's, and nothing has been written yet.
    if not wrongtype(payload) then return redis.error_reply(payload.err) end
    bad[#bad + 1] = prefix .. 'queue:' .. queue
  elseif payload then
    local entry = ARGV[5] .. '|' .. payload
    redis.call('RPUSH', KEYS[1], entry)
    redis.call('HSET', KEYS[2], ARGV[1], queue)
    local late = '0'
    local ok, job = pcall(cjson.decode, payload)
    if ok and type(job) == 'table' then
      redis.call('SET', KEYS[3], '{"queue":' .. cjson.encode(queue) .. ',"run_at":' ..
        cjson.encode(ARGV[2]) .. ',"payload":' .. payload .. '}')
      local key = status_key(prefix, payload)
      if key and not redis.call('SET', key, '{"status":2,"updated":' .. ARGV[3] .. '}', 'XX') then
        -- The enqueuer's status SET follows its push: if jobs were pushed after this one, it
        -- has landed already (the job is untracked); only the last job may still get one.
        if redis.call('LLEN', prefix .. 'queue:' .. queue) == 0 then late = '1' end
      end
    end
    local reply = {'job', queue, entry, late}
    for _, b in ipairs(bad) do reply[#reply + 1] = b end
    return reply
  end
end
local reply = {'empty'}
for _, b in ipairs(bad) do reply[#reply + 1] = b end
return reply
"#;

pub static RESERVE: LazyLock<redis::Script> = LazyLock::new(|| script(RESERVE_LUA));

/// Give a reserved job back: remove its entry from the in-flight list and put the payload at
/// the head of its queue, only if the entry was still there (so two recoverers cannot duplicate
/// it). A tracked job's status goes back to WAITING (where the key exists).
///
/// KEYS: inflight list, queue key, worker key, queues set.
/// ARGV: in-flight entry, payload, queue name, namespace prefix, unix now.
/// Returns 1 if the job went back, 0 if it was no longer in flight, -1 if the queue key has
/// the wrong type (the job stays in flight).
pub const REQUEUE_LUA: &str = r#"
if not usable_list(KEYS[2]) then return -1 end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.pcall('SADD', KEYS[4], ARGV[3])
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[3])
  local key = status_key(ARGV[4], ARGV[2])
  if key then
    redis.call('SET', key, '{"status":1,"updated":' .. ARGV[5] .. '}', 'XX')
  end
  return 1
end
return 0
"#;

pub static REQUEUE: LazyLock<redis::Script> = LazyLock::new(|| script(REQUEUE_LUA));

/// Count one more loss of a payload (a worker died holding it) and return the count; the
/// counter expires an hour after the last loss: a poison pill is lost again within minutes
/// (recovery runs every minute), while identical payloads without an id (a recurring Ruby or
/// node job) that crash now and then do not add up to a false verdict.
///
/// KEYS: lost counter key.
pub const COUNT_LOSS_LUA: &str = r#"
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 3600)
return n
"#;

pub static COUNT_LOSS: LazyLock<redis::Script> = LazyLock::new(|| script(COUNT_LOSS_LUA));

/// Take over a lock whose owner is known to be dead: replace the owner only if it is still the
/// one we found (so two daemons starting together cannot both take it).
///
/// KEYS: lock key. ARGV: owner found, new owner, seconds to live. Returns 1 if taken, else 0.
pub const TAKE_OVER_LOCK_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return 1
end
return 0
"#;

pub static TAKE_OVER_LOCK: LazyLock<redis::Script> = LazyLock::new(|| script(TAKE_OVER_LOCK_LUA));

/// Record a finished job, once: nothing happens unless the job's in-flight entry (token and
/// payload) is still in the worker's list, so a retried outcome (the first attempt timed out but
/// ran) or a job that recovery already took is not counted twice, and never removes another
/// job of the same bytes. When nothing is written and the worker holds nothing, its
/// `worker:<id>` record is cleared all the same.
///
/// KEYS: inflight list, worker key, stat:processed, stat:processed:<id>, failed list,
/// stat:failed, stat:failed:<id>, and the status key when the job has an id.
/// ARGV: in-flight entry, failure record JSON (empty when complete), status JSON, status TTL.
/// Returns 1 if the outcome was written, 2 if written but the job has an id and no status key
/// (yet), 0 if the job was no longer in flight.
pub const FINISH_LUA: &str = r#"
if ARGV[2] ~= '' and not usable_list(KEYS[5]) then
  return redis.error_reply('WRONGTYPE the failed list ' .. KEYS[5] .. ' is not a list')
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  if redis.call('LLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
  return 0
end
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[5], ARGV[2])
  redis.call('INCRBY', KEYS[6], '1')
  redis.call('INCRBY', KEYS[7], '1')
end
redis.call('INCRBY', KEYS[3], '1')
redis.call('INCRBY', KEYS[4], '1')
local written = 1
if KEYS[8] then
  if redis.call('SET', KEYS[8], ARGV[3], 'XX') then
    redis.call('EXPIRE', KEYS[8], tonumber(ARGV[4]))
  else
    written = 2
  end
end
redis.call('DEL', KEYS[2])
return written
"#;

pub static FINISH: LazyLock<redis::Script> = LazyLock::new(|| script(FINISH_LUA));

/// A status written late by the enqueuer (php-resque pushes the job first and writes WAITING
/// after it): put the status the job really has over it. `running` replaces only WAITING; a
/// final status replaces WAITING or RUNNING and gets its TTL. A key that does not exist is left
/// alone (the job is not tracked).
///
/// KEYS: status keys. ARGV: for each key, the status JSON and its TTL (0: running).
/// Returns the number of keys changed.
pub const FIX_STATUS_LUA: &str = r#"
local changed = 0
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if current then
    local ok, record = pcall(cjson.decode, current)
    local code = ok and type(record) == 'table' and tonumber(record.status) or nil
    local ttl = tonumber(ARGV[2 * i])
    if code == 1 or (code == 2 and ttl > 0) then
      if ttl > 0 then
        redis.call('SET', key, ARGV[2 * i - 1], 'EX', ttl)
      else
        redis.call('SET', key, ARGV[2 * i - 1])
      end
      changed = changed + 1
    end
  end
end
return changed
"#;

pub static FIX_STATUS: LazyLock<redis::Script> = LazyLock::new(|| script(FIX_STATUS_LUA));

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{STATUS_KEY_LUA}{body}"))
}

/// The full source of a script as loaded (shared helpers included).
pub fn source(body: &str) -> String {
    format!("{STATUS_KEY_LUA}{body}")
}

/// Sources of every script, for `SCRIPT LOAD` on a new connection.
pub fn all_sources() -> [String; 12] {
    [
        source(FIX_STATUS_LUA),
        source(RESERVE_LUA),
        source(REQUEUE_LUA),
        source(COUNT_LOSS_LUA),
        source(TAKE_OVER_LOCK_LUA),
        source(FINISH_LUA),
        source(LEADER_LUA),
        source(RELEASE_LEADER_LUA),
        source(MOVE_DUE_LUA),
        source(ENQUEUE_TICK_LUA),
        source(DELAYED_TAKE_LUA),
        source(RETRY_LATER_LUA),
    ]
}

// ---------------------------------------------------------------------------------------------
// The scheduler's scripts (delayed, recurring and retried jobs; keys in `super::scheduler`).

/// Take or renew the scheduler's leader lock. The lock is ours when its owner is `owner` (also
/// after a lost reply: taking it again is renewing it); a free lock is taken with a new fencing
/// token (INCR of the fence counter), so each holding has its own value.
///
/// KEYS: lock, fence counter. ARGV: owner, TTL in ms, unix now.
/// Returns `{1, value}` when we hold it (TTL renewed), `{0, value}` when another does.
pub const LEADER_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, v = pcall(cjson.decode, cur)
  if ok and type(v) == 'table' and v.owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
    return {1, cur}
  end
  return {0, cur}
end
local token = redis.call('INCR', KEYS[2])
local value = '{"owner":' .. cjson.encode(ARGV[1]) .. ',"token":' .. token .. ',"since":' ..
  ARGV[3] .. '}'
redis.call('SET', KEYS[1], value, 'PX', tonumber(ARGV[2]))
return {1, value}
"#;

pub static LEADER: LazyLock<redis::Script> = LazyLock::new(|| script(LEADER_LUA));

/// Release the leader lock if it still holds `value`. KEYS: lock. ARGV: value. Returns 1 or 0.
pub const RELEASE_LEADER_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

pub static RELEASE_LEADER: LazyLock<redis::Script> = LazyLock::new(|| script(RELEASE_LEADER_LUA));

/// Move due delayed items to their queues, fenced: nothing happens unless the lock holds exactly
/// `value` (so a leader that was paused and lost the lock moves nothing). Each item is taken with
/// LPOP (Ruby, node and php schedulers take with LPOP/LTRIM too, so no item is taken twice),
/// its `timestamps:` member removed (if any: php writes none), and its bytes pushed unchanged to
/// `queue:<item.queue>`; an emptied timestamp is deleted and removed from the schedule. An item
/// that is not JSON or names no queue (or a queue key of the wrong type) becomes a failure record
/// instead of blocking the others; a schedule member whose key is not a list is dropped from the
/// schedule and named in the reply.
///
/// KEYS: schedule ZSET, lock, queues set, failed list.
/// ARGV: lock value, namespace prefix, unix now, most items to move, failed_at text, worker.
/// Returns `{moved, next due ts or -1, bad keys…}`; moved is -1 when fenced out.
pub const MOVE_DUE_LUA: &str = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'-1', '-1'} end
local prefix = ARGV[2]
local moved, limit = 0, tonumber(ARGV[4])
local bad = {}
local usable = {}
local function fail(item, job, queue, why)
  -- Built by hand: cjson writes an empty table as {}, and the backtrace is a list.
  local payload = job and item or cjson.encode(item)
  redis.call('RPUSH', KEYS[4], '{"failed_at":' .. cjson.encode(ARGV[5]) .. ',"payload":' ..
    payload .. ',"exception":"Resque\\\\Exception","error":' .. cjson.encode(why) ..
    ',"backtrace":[],"worker":' .. cjson.encode(ARGV[6]) .. ',"queue":' ..
    cjson.encode(queue or '') .. '}')
end
while moved < limit do
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'LIMIT', 0, 1)
  if #due == 0 then break end
  local ts = due[1]
  local list = prefix .. 'delayed:' .. ts
  local t = redis.call('TYPE', list)['ok']
  if t == 'list' then
    while moved < limit do
      local item = redis.call('LPOP', list)
      if not item then break end
      moved = moved + 1
      redis.pcall('SREM', prefix .. 'timestamps:' .. item, 'delayed:' .. ts)
      local ok, job = pcall(cjson.decode, item)
      if not ok or type(job) ~= 'table' then job = nil end
      local queue = job and job.queue
      if type(queue) ~= 'string' or queue == '' then
        fail(item, job, nil, 'delayed item names no queue: ' .. string.sub(item, 1, 200))
      else
        local qkey = prefix .. 'queue:' .. queue
        if usable[qkey] == nil then usable[qkey] = usable_list(qkey) end
        if usable[qkey] then
          redis.pcall('SADD', KEYS[3], queue)
          redis.call('RPUSH', qkey, item)
        else
          fail(item, job, queue, 'queue key ' .. qkey .. ' is not a list (WRONGTYPE)')
        end
      end
    end
    if redis.call('LLEN', list) == 0 then
      redis.call('DEL', list)
      redis.call('ZREM', KEYS[1], ts)
    end
  else
    redis.call('ZREM', KEYS[1], ts)
    if t ~= 'none' then bad[#bad + 1] = list end
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reply = {tostring(moved), '-1'}
if #first == 2 then reply[2] = string.format('%d', tonumber(first[2])) end
for _, b in ipairs(bad) do reply[#reply + 1] = b end
return reply
"#;

pub static MOVE_DUE: LazyLock<redis::Script> = LazyLock::new(|| script(MOVE_DUE_LUA));

/// Enqueue one tick of a recurring schedule exactly once across daemons: fenced by the leader
/// lock, and nothing if this tick (or a later one) was already handled; the tick is recorded in
/// the same step as the push. An empty payload only records the tick.
///
/// KEYS: lock, last-tick hash, queues set, queue key, Ruby's last_enqueued_at hash.
/// ARGV: lock value, schedule name, tick (unix s), payload or '', queue name, time text.
/// Returns 1 (handled), 0 (already handled), -1 (fenced out), -2 (queue key not a list).
pub const ENQUEUE_TICK_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '')
if last and last >= tonumber(ARGV[3]) then return 0 end
if ARGV[4] ~= '' then
  if not usable_list(KEYS[4]) then return -2 end
  redis.pcall('SADD', KEYS[3], ARGV[5])
  redis.call('RPUSH', KEYS[4], ARGV[4])
  redis.pcall('HSET', KEYS[5], ARGV[2], ARGV[6])
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"#;

pub static ENQUEUE_TICK: LazyLock<redis::Script> = LazyLock::new(|| script(ENQUEUE_TICK_LUA));

/// Take one exact delayed item out of `delayed:<ts>` (LREM: once, even with a scheduler moving
/// it at the same time), remove its `timestamps:` member, and push it to its queue — or drop it
/// when no queue is given; an emptied timestamp is cleaned up.
///
/// KEYS: schedule ZSET, delayed:<ts>, timestamps:<item>, queues set, queue key.
/// ARGV: item, ts, timestamps member, queue name ('' = remove).
/// Returns 1 if taken, 0 if the item was no longer there, -1 if the queue key is not a list.
pub const DELAYED_TAKE_LUA: &str = r#"
if ARGV[4] ~= '' and not usable_list(KEYS[5]) then return -1 end
if not usable_list(KEYS[2]) then return 0 end
if redis.call('LREM', KEYS[2], 1, ARGV[1]) == 0 then return 0 end
redis.pcall('SREM', KEYS[3], ARGV[3])
if ARGV[4] ~= '' then
  redis.pcall('SADD', KEYS[4], ARGV[4])
  redis.call('RPUSH', KEYS[5], ARGV[1])
end
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[2])
end
return 1
"#;

pub static DELAYED_TAKE: LazyLock<redis::Script> = LazyLock::new(|| script(DELAYED_TAKE_LUA));

/// A failed attempt that will be retried: written once (its in-flight entry, token and payload,
/// must still be there, as for FINISH), it counts as processed, puts the job's next attempt into
/// the delayed queue (as Ruby and node write it: list, `timestamps:` member, schedule), sets the
/// status back to WAITING (where the key exists) and takes the job out of flight — in one step.
/// A failure record is written too when given (`record = "every"`).
///
/// KEYS: inflight list, worker key, stat:processed, stat:processed:<id>, failed list,
/// stat:failed, stat:failed:<id>, schedule ZSET, delayed:<ts>, timestamps:<item>, and the status
/// key when the job has an id.
/// ARGV: in-flight entry, failure JSON or '', status JSON, item, ts, member.
/// Returns 1 (written), 2 (written, no status key), 0 (no longer in flight), -1 (the delayed
/// key is not a list: nothing written).
pub const RETRY_LATER_LUA: &str = r#"
if not redis.call('LPOS', KEYS[1], ARGV[1]) then
  if redis.call('LLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
  return 0
end
if not usable_list(KEYS[9]) then return -1 end
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[5], ARGV[2])
  redis.call('INCRBY', KEYS[6], '1')
  redis.call('INCRBY', KEYS[7], '1')
end
redis.call('INCRBY', KEYS[3], '1')
redis.call('INCRBY', KEYS[4], '1')
redis.call('RPUSH', KEYS[9], ARGV[4])
redis.pcall('SADD', KEYS[10], ARGV[6])
redis.call('ZADD', KEYS[8], ARGV[5], ARGV[5])
local written = 1
if KEYS[11] then
  if not redis.call('SET', KEYS[11], ARGV[3], 'XX') then written = 2 end
end
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('DEL', KEYS[2])
return written
"#;

pub static RETRY_LATER: LazyLock<redis::Script> = LazyLock::new(|| script(RETRY_LATER_LUA));
