#!/usr/bin/env bash
# Benchmarks against peers, in one run on one private redis-server (see BENCHMARKS.md):
#   1. Redis's own ceiling for one job's commands (redis-benchmark EVAL bench/job.lua), plus
#      plain SET/INCR/LPUSH/LPOP for context;
#   2. node-resque 9.x (bench/node), 2 worker processes, draining N no-op jobs;
#   3. `resque bench`: in-process COUNT 1..64, exec (/bin/true) COUNT 2 and 4, PHP pool and
#      PHP fork COUNT 2;
#   4. the spawn limit (examples/spawn_true.rs), 1 loop and 2 loops;
#   5. pickup latency with idle workers, one queue and three queues;
#   6. idle Redis commands/s per worker (COUNT 16, 30 s) and daemon RSS at COUNT 1, 4, 16
#      (node-resque's worker RSS for comparison);
#   7. throughput with 1 ms of added RTT (network namespace; tc netem, or bench/delay_proxy.rs
#      where the kernel has no netem), COUNT 1, 8, 32.
# Prints a summary table with PASS/FAIL per target and writes bench/results/latest.json + .md.
#
# Usage: bench/run.sh            (as root, or with sudo for apt-get and `ip netns`)
# Environment:
#   BENCH_MAX_LOAD=0.5     wait until the 1-minute load average is at most this before measuring
#   BENCH_WAIT_SECONDS=900 ... but at most this long (then run anyway, and say so)
#   BENCH_REPS=3          runs per in-process COUNT (the median is reported)
#   BENCH_QUICK=1          tiny job counts and windows: a smoke test of the script, not figures
#   RESQUE_BIN=PATH        measure this binary instead of building target/release/resque
#   BENCH_OUT=DIR          where latest.json/.md go (default bench/results)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="${BENCH_OUT:-$ROOT/bench/results}"
MAX_LOAD="${BENCH_MAX_LOAD:-0.5}"
WAIT_SECONDS="${BENCH_WAIT_SECONDS:-900}"
QUICK="${BENCH_QUICK:-0}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# Job counts per mode, chosen so the whole run stays well under 10 minutes on 2 cores.
if [ "$QUICK" = 1 ]; then
  N_INPROC=5000 N_EXEC=500 N_PHP=500 N_FORK=50 N_NODE=2000 IDLE=3 SAMPLES=10 SPAWN_S=1
  CEIL_N=20000 N_RTT1=200 N_RTT8=1000 N_RTT32=3000 REPS=1
else
  N_INPROC=100000 N_EXEC=5000 N_PHP=5000 N_FORK=500 N_NODE=20000 IDLE=30 SAMPLES=50 SPAWN_S=3
  CEIL_N=200000 N_RTT1=2000 N_RTT8=10000 N_RTT32=30000 REPS=3
fi
REPS="${BENCH_REPS:-$REPS}"
INPROC_COUNTS="1 2 4 8 16 32 64"

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

# --- what the run needs ---------------------------------------------------------------------
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v php >/dev/null || need+=(php-cli)
command -v ip >/dev/null || need+=(iproute2)
command -v tc >/dev/null || need+=(iproute2)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v top >/dev/null || need+=(procps)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${need[@]}" >/dev/null
fi

TMP="$(mktemp -d /tmp/resque-bench.XXXXXX)"
RES="$TMP/results"
mkdir -p "$RES"
REDIS_PID="" NS="" NS_REDIS_PID="" PROXY_PID="" SAMPLER_PID=""
cleanup() {
  set +e
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null
  [ -n "$NS_REDIS_PID" ] && kill "$NS_REDIS_PID" 2>/dev/null
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null
  sleep 0.2
  [ -n "$NS" ] && $SUDO ip netns del "$NS" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building (release)"
if [ -z "${RESQUE_BIN:-}" ]; then
  cargo build --release --locked --quiet
  RESQUE_BIN="$ROOT/target/release/resque"
fi
cargo build --release --locked --quiet --example spawn_true
rustc --edition 2021 -O "$ROOT/bench/delay_proxy.rs" -o "$TMP/delay_proxy"
(cd "$ROOT/bench/node" && npm ci --no-audit --no-fund --silent >/dev/null)

# --- a quiet machine ------------------------------------------------------------------------
load1() { cut -d' ' -f1 /proc/loadavg; }
waited=0
while awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'; do
  if [ "$waited" -ge "$WAIT_SECONDS" ]; then
    log "load is still $(load1) after ${waited}s: measuring anyway (the report says so)"
    break
  fi
  [ $((waited % 60)) = 0 ] && log "load $(load1) > $MAX_LOAD: waiting (up to ${WAIT_SECONDS}s)"
  sleep 10
  waited=$((waited + 10))
done
{
  echo "load_at_start	$(cat /proc/loadavg)"
  echo "waited_seconds	$waited"
} >"$RES/load.tsv"
# What else runs during the measurements: the busiest processes every 15 s.
(
  while true; do
    top -b -n 2 -d 1 -w 200 | awk -v t="$(date +%T)" '
      /^top -/ { frame++ } frame == 2 && $1 ~ /^[0-9]+$/ && $9 + 0 >= 5 { print t "\t" $9 "\t" $12 }'
    sleep 14
  done
) >"$RES/top.tsv" 2>/dev/null &
SAMPLER_PID=$!

# --- the private Redis ----------------------------------------------------------------------
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
}
# start_redis DIR PORT [prefix command...] — echoes the pid.
start_redis() {
  local dir="$1" port="$2"
  shift 2
  mkdir -p "$dir"
  "$@" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
  for _ in $(seq 100); do
    "$@" redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.05
  done
  cat "$dir/redis.pid"
}
PORT="$(free_port)"
REDIS_PID="$(start_redis "$TMP/redis" "$PORT")"
URL="redis://127.0.0.1:$PORT"
log "redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2) on port $PORT (pid $REDIS_PID)"

# --- the machine ----------------------------------------------------------------------------
{
  echo "cpu	$(lscpu | awk -F': *' '/^Model name/ { print $2; exit }')"
  echo "cores	$(nproc)"
  echo "ram	$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "kernel	$(uname -r)"
  echo "redis	$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
  echo "node	$(node --version)"
  echo "node_resque	$(node -p 'require("./bench/node/node_modules/node-resque/package.json").version')"
  echo "php	$(php -r 'echo PHP_VERSION;')"
  echo "rustc	$(rustc --version)"
  echo "resque	$("$RESQUE_BIN" --version)"
  echo "commit	$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "date	$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$RES/machine.tsv"

bench() { # bench NAME [resque bench args...]
  local name="$1"
  shift
  "$RESQUE_BIN" --redis "$URL" bench --json "$@" >"$RES/$name.json" 2>"$TMP/$name.err" || {
    cat "$TMP/$name.err" >&2
    return 1
  }
}

# --- 1. Redis's ceiling ---------------------------------------------------------------------
log "1. Redis ceiling: EVAL of one job's commands, -c 50 -P 16 -n $CEIL_N"
redis-benchmark -p "$PORT" -q -c 50 -P 16 -n "$CEIL_N" --csv EVAL "$(cat "$ROOT/bench/job.lua")" 0 |
  tail -n 1 >"$RES/ceiling.csv"
redis-benchmark -p "$PORT" -q -P 16 --csv -t set,incr,lpush,lpop >"$RES/plain.csv"
redis-cli -p "$PORT" flushall >/dev/null

# --- 2. node-resque -------------------------------------------------------------------------
log "2. node-resque: 2 worker processes, $N_NODE jobs"
node "$ROOT/bench/node/peer.js" bench "$PORT" "$N_NODE" 5 >"$RES/node.json"
redis-cli -p "$PORT" flushall >/dev/null

# --- 3. resque on the same no-op job --------------------------------------------------------
# Two cores shared by redis-server and resque: a run's figure varies with where the scheduler
# puts the threads, so each COUNT runs REPS times (interleaved) and the report takes the median.
for rep in $(seq "$REPS"); do
  for c in $INPROC_COUNTS; do
    log "3. resque in-process COUNT $c, $N_INPROC jobs (run $rep of $REPS)"
    bench "inproc-$c-r$rep" --handler in-process --count "$c" --jobs "$N_INPROC" --latency-samples 0
  done
done
for c in 2 4; do
  log "3. resque exec /bin/true COUNT $c, $N_EXEC jobs"
  bench "exec-$c" --handler exec --count "$c" --jobs "$N_EXEC" --latency-samples 0 --command /bin/true
done
log "3. resque PHP pool COUNT 2, $N_PHP jobs"
bench "php-2" --handler php --count 2 --jobs "$N_PHP" --latency-samples 0 --php-runner "$ROOT/php/runner.php"
log "3. resque PHP fork COUNT 2, $N_FORK jobs"
bench "php-fork-2" --handler php-fork --count 2 --jobs "$N_FORK" --latency-samples 0 --php-runner "$ROOT/php/runner.php"

# --- 4. the spawn limit ---------------------------------------------------------------------
for loops in 1 2; do
  log "4. spawn_true, $loops loop(s), ${SPAWN_S}s"
  cargo run --release --locked --quiet --example spawn_true -- "$SPAWN_S" "$loops" --json | tail -n 1 >"$RES/spawn-$loops.json"
done

# --- 5 + 6. pickup latency and idle cost ----------------------------------------------------
log "5/6. pickup latency ($SAMPLES samples, one queue) and idle commands (COUNT 16, ${IDLE}s)"
bench latency-1q --count 16 --jobs 100 --queues bench --latency-samples "$SAMPLES" --idle-seconds "$IDLE"
log "5. pickup latency ($SAMPLES samples, queues a,b,c; jobs go to c)"
bench latency-3q --count 16 --jobs 100 --queues a,b,c --latency-samples "$SAMPLES"

log "6. daemon RSS after 3 s idle, COUNT 1, 4, 16"
for c in 1 4 16; do
  mkdir -p "$TMP/rt-$c"
  RUNTIME_DIRECTORY="$TMP/rt-$c" "$RESQUE_BIN" --redis "$URL" --namespace "rss$c" start --count "$c" \
    --queue bench >"$TMP/daemon-$c.log" 2>&1 &
  pid=$!
  sleep 3
  awk '/^VmRSS/ { print $2 }' "/proc/$pid/status" >"$RES/daemon-rss-$c.kib"
  kill -TERM "$pid"
  wait "$pid" || true
done
redis-cli -p "$PORT" flushall >/dev/null

# --- 7. 1 ms of added round-trip time -------------------------------------------------------
log "7. 1 ms RTT: network namespace"
RTT_PORT=6379 PROXY_PORT=6380
IN=()
NS="resque-bench-$$"
if $SUDO ip netns add "$NS" 2>/dev/null; then
  IN=($SUDO ip netns exec "$NS")
  "${IN[@]}" ip link set lo up
else
  log "cannot create a network namespace: using the host's loopback"
  NS=""
  RTT_PORT="$(free_port)"
  PROXY_PORT="$(free_port)"
fi
DELAY="netem"
if [ -z "$NS" ] || ! "${IN[@]}" tc qdisc add dev lo root netem delay 500us 2>"$TMP/netem.err"; then
  DELAY="proxy"
  log "no netem ($(tr -d '\n' <"$TMP/netem.err" 2>/dev/null)): delay proxy bench/delay_proxy.rs, 500 µs each way"
fi
NS_REDIS_PID="$(start_redis "$TMP/redis-ns" "$RTT_PORT" "${IN[@]}")"
ping_rtt_us() { # ping_rtt_us PORT: mean round trip of PING with one client, µs
  # redis-benchmark retries a refused connection forever: bound it.
  "${IN[@]}" timeout 60 redis-benchmark -p "$1" -c 1 -n "$2" -t ping --csv | tail -n 1 |
    awk -F'"' '{ printf "%.0f", 1e6 / $4 }'
}
BASE_RTT="$(ping_rtt_us "$RTT_PORT" 2000)"
BENCH_PORT="$RTT_PORT"
ONE_WAY=500
if [ "$DELAY" = proxy ]; then
  # Calibrate: the proxy's own cost and timer overshoot count into the delay, so that the
  # measured RTT is the base RTT + 1 ms, as netem's would be.
  start_proxy() {
    "${IN[@]}" "$TMP/delay_proxy" "$PROXY_PORT" "$RTT_PORT" "$ONE_WAY" &
    PROXY_PID=$!
    for _ in $(seq 100); do
      "${IN[@]}" redis-cli -p "$PROXY_PORT" ping >/dev/null 2>&1 && break
      sleep 0.05
    done
    "${IN[@]}" redis-cli -p "$PROXY_PORT" ping >/dev/null 2>&1 ||
      { echo "bench: the delay proxy did not come up on port $PROXY_PORT" >&2; exit 1; }
  }
  for attempt in 1 2 3; do
    start_proxy
    rtt="$(ping_rtt_us "$PROXY_PORT" 500)"
    excess=$((rtt - BASE_RTT - 1000))
    # Keep the last proxy running even if it is not within 20 µs: the RTT is measured below.
    if [ "${excess#-}" -le 20 ] || [ "$attempt" = 3 ]; then break; fi
    kill "$PROXY_PID"
    wait "$PROXY_PID" 2>/dev/null || true
    ONE_WAY=$((ONE_WAY - excess / 2))
  done
  BENCH_PORT="$PROXY_PORT"
fi
RTT="$(ping_rtt_us "$BENCH_PORT" 500)"
log "RTT: ${BASE_RTT} µs without, ${RTT} µs with the delay ($DELAY, ${ONE_WAY} µs each way)"
printf '{"method":"%s","netns":%s,"one_way_us":%s,"base_rtt_us":%s,"rtt_us":%s}\n' \
  "$DELAY" "$([ -n "$NS" ] && echo true || echo false)" "$ONE_WAY" "$BASE_RTT" "$RTT" >"$RES/rtt.json"
for c in 1 8 32; do
  n_var="N_RTT$c"
  log "7. resque in-process COUNT $c at 1 ms RTT, ${!n_var} jobs"
  "${IN[@]}" "$RESQUE_BIN" --redis "redis://127.0.0.1:$BENCH_PORT" bench --json --handler in-process \
    --count "$c" --jobs "${!n_var}" --latency-samples 0 >"$RES/rtt-$c.json" 2>"$TMP/rtt-$c.err" || {
    cat "$TMP/rtt-$c.err" >&2
    exit 1
  }
done

kill "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
echo "load_at_end	$(cat /proc/loadavg)" >>"$RES/load.tsv"

# --- the report -----------------------------------------------------------------------------
mkdir -p "$OUT"
BENCH_IDLE="$IDLE" BENCH_SAMPLES="$SAMPLES" node "$ROOT/bench/node/report.js" "$RES" "$OUT/latest.json" "$OUT/latest.md"
log "wrote $OUT/latest.json and $OUT/latest.md"
