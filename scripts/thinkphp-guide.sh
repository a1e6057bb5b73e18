#!/usr/bin/env bash
# Runs docs/thinkphp.md's steps against the ThinkPHP-shaped fixture app in tests/thinkphp/app,
# checking after each step what the guide says you should see. tests/thinkphp_guide.rs runs it.
#
# Usage: scripts/thinkphp-guide.sh RESQUE_BINARY REDIS_PORT WORK_DIR
#   A redis-server must listen on 127.0.0.1:REDIS_PORT (its database 1 is used); WORK_DIR is
#   an empty directory standing in for /var/www (the app is copied to WORK_DIR/app).
# The /etc/resque.toml of step 2 is taken from the guide itself (its first ```toml block after
# "## 2."), with /var/www/app and the Redis port replaced, so the guide cannot drift from this.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
resque=$(realpath "$1")
port=$2
work=$3
guide="$root/docs/thinkphp.md"
app="$work/app"
export FIXTURE_REDIS_PORT=$port # the app's config (the real one has its port in config.php)

step() { echo "== $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
# expect WHAT PATTERN TEXT: TEXT must match the extended regex PATTERN.
expect() {
  if ! grep -Eq -- "$2" <<<"$3"; then
    fail "$1: expected /$2/ in:
$3"
  fi
  echo "   ok: $1"
}
rcli() { redis-cli -p "$port" "$@"; }

cp -r "$root/tests/thinkphp/app" "$app"
cd "$app"

step "0. the seed's app enqueues as before (php-resque, database 1, keys under resque:)"
id0=$(php enqueue.php default '\Common\Job\XxxxJob' '{"time":1}')
expect "job id" '^[0-9a-f]{32}$' "$id0"

step "1. find the namespace and database"
expect "INFO keyspace lists db1" '^db1:keys=' "$(rcli INFO keyspace)"
expect "the seed's queue key in db 1" '^resque:queue:default$' "$(rcli -n 1 --scan --pattern '*queue:*')"
expect "a php-resque payload" '"class":"\\\\Common\\\\Job\\\\XxxxJob".*"id":"'"$id0"'"' \
  "$(rcli -n 1 LRANGE resque:queue:default 0 0)"
out=$("$resque" --config /dev/null --redis "redis://127.0.0.1:$port/1" --namespace resque queues)
expect "resque sees the queue" '^default +1$' "$out"
out=$("$resque" --config /dev/null --redis "redis://127.0.0.1:$port/0" --namespace resque queues)
expect "a wrong guess finds no queues" 'no queues' "$out"

step "2. /etc/resque.toml, from the guide"
awk '/^## 2\./ {in2=1} in2 && /^```toml$/ {grab=1; next} grab && /^```$/ {exit} grab {print}' "$guide" \
  | sed -e "s|/var/www/app|$app|g" -e "s|127.0.0.1:6379|127.0.0.1:$port|g" >"$work/resque.toml"
expect "the guide's config has a php handler" 'type = "php"' "$(cat "$work/resque.toml")"
conf=(--config "$work/resque.toml")
out=$("$resque" "${conf[@]}" config check --instance default)
expect "config check" ': OK for instance default' "$out"
expect "config check: the database" 'redis +redis://127.0.0.1:[0-9]+ db 1 ' "$out"
expect "config check: the namespace" 'namespace +"resque:"' "$out"
expect "config check: the queues" 'queues +default ' "$out"
expect "resque queues" '^default +1$' "$("$resque" "${conf[@]}" queues)"

step "4b. the runner case in the Queue controller, and the boot check"
cp "$root/docs/examples/thinkphp/QueueController.class.php" Application/Home/Controller/
out=$(php resque runner 2>&1 || true)
expect "boot check" 'This action is started by the resque daemon \(RESQUE_RUNNER is not set\)' "$out"

step "5. run it by hand, with a runtime directory of its own"
mkdir -p "$work/run"
export RUNTIME_DIRECTORY="$work/run"
"$resque" "${conf[@]}" start --queue=default --pid="$work/run/resque.pid" >"$work/daemon.log" 2>&1 &
daemon=$!
trap 'kill "$daemon" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  [ "$(rcli -n 1 LLEN resque:queue:default)" = 0 ] && [ -s Application/Runtime/ran.log ] && break
  sleep 0.1
done
expect "the backlog ran in resque's runner" '^resque \{"time":1\}$' "$(cat Application/Runtime/ran.log 2>/dev/null)"
expect "its status" 'is: complete$' "$("$resque" "${conf[@]}" status --id "$id0")"

step "6. verify: a tracked job from the app, and a failing one"
id1=$(php enqueue.php default '\Common\Job\XxxxJob' '{"time":2}')
out=$(timeout 30 "$resque" "${conf[@]}" status --id "$id1" --watch)
expect "status --watch ends at complete" 'complete$' "$out"
id2=$(php enqueue.php default '\Common\Job\FailJob' '{"why":"not paid"}')
out=$(timeout 30 "$resque" "${conf[@]}" status --id "$id2" --watch || true)
expect "a job throwing \\Resque\\Exception fails" 'failed$' "$out"
out=$("$resque" "${conf[@]}" failed list)
expect "its record has its own message" 'Resque\\Exception: FailJob: not paid' "$out"
out=$("$resque" "${conf[@]}" failed show 0)
expect "with a backtrace" 'FailJob->perform\(\)' "$out"
expect "resque workers (ours, on this host)" ":default +(idle|working)" "$("$resque" "${conf[@]}" workers)"

step "stop it (the same runtime directory, or --pid)"
"$resque" "${conf[@]}" stop --pid "$work/run/resque.pid" --wait
if kill -0 "$daemon" 2>/dev/null; then fail "the daemon is still running"; fi
expect "no workers left" '^$|no workers' "$("$resque" "${conf[@]}" workers)"
echo "== the guide works as written"
