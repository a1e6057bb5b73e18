-- The whole Redis work of one no-op job, server-side, for `redis-benchmark ... EVAL "<this>" 0`:
-- Redis's own ceiling in jobs/s, with no client round trips. It mirrors what a client enqueue
-- and our worker send (src/protocol/scripts.rs RESERVE and FINISH_LUA, src/protocol/commands.rs),
-- command for command, with the keys of one worker of one queue:
--   enqueue:  RPUSH the payload
--   RESERVE:  GET pause-all-workers, LPOP queue, RPUSH "<token>|payload" to the in-flight list,
--             HSET in-flight index, cjson.decode the payload, SET worker:<id> (run_at + payload),
--             SET status XX (RUNNING)
--   FINISH:   LREM the in-flight entry, INCRBY processed, INCRBY processed:<id>, SET status XX
--             (COMPLETE) then EXPIRE only if the key existed (as
--             FINISH_LUA: the bench's jobs are not tracked, so it does not), DEL worker:<id>
-- Keys live under "resque-ceiling:" so they cannot collide with a real namespace.
local p = 'resque-ceiling:'
local id = 'host:1234-1:bench'
local payload = '{"class":"NoopJob","args":[{"n":1}],"id":"0f1e2d3c4b5a69788796a5b4c3d2e1f0","queue_time":1700000000.123456}'
redis.call('RPUSH', p .. 'queue:bench', payload)
if redis.call('GET', p .. 'pause-all-workers') == 'true' then return 'paused' end
local job = redis.call('LPOP', p .. 'queue:bench')
local entry = '0123456789abcdef|' .. job
redis.call('RPUSH', p .. 'inflight:' .. id, entry)
redis.call('HSET', p .. 'inflight', id, 'bench')
local ok, decoded = pcall(cjson.decode, job)
redis.call('SET', p .. 'worker:' .. id, '{"queue":"bench","run_at":"2026-01-01T00:00:00.000000Z","payload":' .. job .. '}')
local status = p .. 'job:' .. decoded.id .. ':status'
redis.call('SET', status, '{"status":2,"updated":1700000000}', 'XX')
if redis.call('LREM', p .. 'inflight:' .. id, 1, entry) == 0 then return 0 end
redis.call('INCRBY', p .. 'stat:processed', 1)
redis.call('INCRBY', p .. 'stat:processed:' .. id, 1)
if redis.call('SET', status, '{"status":4,"updated":1700000000}', 'XX') then
  redis.call('EXPIRE', status, 86400)
end
redis.call('DEL', p .. 'worker:' .. id)
return 1
