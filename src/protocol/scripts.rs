//! Lua scripts: the steps that must be atomic in Redis.

use std::sync::LazyLock;

/// Reserve: move the first job of the first non-empty queue (priority order) into the worker's
/// in-flight list, and record that the worker runs it — in one step, so a job is never only in
/// our memory. Also writes `worker:<id>` and the RUNNING status (only if the status key exists,
/// as php-resque does), saving a round trip per job. A queue named `*` stands for every queue
/// in the `queues` set not named before it, sorted.
///
/// KEYS: inflight list, inflight index, worker key, pause-all-workers, queues set.
/// ARGV: worker id, run_at text, unix now, namespace prefix, queue names…
/// Returns `{queue, payload}`, or `"paused"`, or nil when every queue is empty.
pub static RESERVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[4]) == 'true' then return 'paused' end
local prefix = ARGV[4]
local names, seen = {}, {}
for i = 5, #ARGV do
  if ARGV[i] == '*' then
    local all = redis.call('SMEMBERS', KEYS[5])
    table.sort(all)
    for _, q in ipairs(all) do
      if not seen[q] then seen[q] = true; names[#names + 1] = q end
    end
  elseif not seen[ARGV[i]] then
    seen[ARGV[i]] = true; names[#names + 1] = ARGV[i]
  end
end
for _, queue in ipairs(names) do
  local payload = redis.call('LMOVE', prefix .. 'queue:' .. queue, KEYS[1], 'LEFT', 'RIGHT')
  if payload then
    redis.call('HSET', KEYS[2], ARGV[1], queue)
    local ok, job = pcall(cjson.decode, payload)
    if ok and type(job) == 'table' then
      redis.call('SET', KEYS[3], '{"queue":' .. cjson.encode(queue) .. ',"run_at":' ..
        cjson.encode(ARGV[2]) .. ',"payload":' .. payload .. '}')
      if type(job.id) == 'string' and job.id ~= '' then
        local key = prefix .. 'job:' .. job.id .. ':status'
        if type(job.prefix) == 'string' and job.prefix ~= '' then
          key = prefix .. 'job:' .. job.prefix .. '_' .. job.id .. ':status'
        end
        redis.call('SET', key, '{"status":2,"updated":' .. ARGV[3] .. '}', 'XX')
      end
    end
    return {queue, payload}
  end
end
return false
"#,
    )
});

/// Give a reserved job back: remove it from the in-flight list and put it at the head of its
/// queue, only if it was still there (so two recoverers cannot duplicate it).
///
/// KEYS: inflight list, queue key, worker key, queues set. ARGV: payload, queue name.
/// Returns 1 if the job went back, 0 if it was no longer in flight.
pub static REQUEUE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('SADD', KEYS[4], ARGV[2])
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3])
  return 1
end
return 0
"#,
    )
});

/// Count one more loss of a payload (a worker died holding it) and return the count; the
/// counter expires an hour after the last loss: a poison pill is lost again within minutes
/// (recovery runs every minute), while identical payloads without an id (a recurring Ruby or
/// node job) that crash now and then do not add up to a false verdict.
///
/// KEYS: lost counter key.
pub static COUNT_LOSS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 3600)
return n
"#,
    )
});

/// Take over a lock whose owner is known to be dead: replace the owner only if it is still the
/// one we found (so two daemons starting together cannot both take it).
///
/// KEYS: lock key. ARGV: owner found, new owner, seconds to live. Returns 1 if taken, else 0.
pub static TAKE_OVER_LOCK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return 1
end
return 0
"#,
    )
});

/// Record a finished job, once: nothing happens unless the job is still in the worker's
/// in-flight list, so a retried outcome (the first attempt timed out but ran) or a job that
/// recovery already took is not counted twice.
///
/// KEYS: inflight list, worker key, stat:processed, stat:processed:<id>, failed list,
/// stat:failed, stat:failed:<id>, and the status key when the job has an id.
/// ARGV: payload, failure record JSON (empty when complete), status JSON, status TTL.
/// Returns 1 if the outcome was written, 0 if the job was no longer in flight.
pub static FINISH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FINISH_LUA));

const FINISH_LUA: &str = r#"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if KEYS[8] and redis.call('SET', KEYS[8], ARGV[3], 'XX') then
  redis.call('EXPIRE', KEYS[8], tonumber(ARGV[4]))
end
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[5], ARGV[2])
  redis.call('INCRBY', KEYS[6], '1')
  redis.call('INCRBY', KEYS[7], '1')
end
redis.call('INCRBY', KEYS[3], '1')
redis.call('INCRBY', KEYS[4], '1')
redis.call('DEL', KEYS[2])
return 1
"#;
