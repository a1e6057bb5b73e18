#!/usr/bin/env bash
# One command, a working demo: installs redis-server and php-cli if missing, starts a private
# Redis, builds resque, runs the daemon, enqueues jobs and shows what happened.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v php >/dev/null 2>&1 || missing+=(php-cli)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  # DPkg::Lock::Timeout: wait for another apt or dpkg instead of failing at once.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -qq update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}" >/dev/null
fi

echo "== building resque"
cargo build --release --quiet
resque="$root/target/release/resque"

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 6399)
cleanup() {
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$work/redis.pid" 2>/dev/null)" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== starting a private redis-server on 127.0.0.1:$port"
redis-server --port "$port" --bind 127.0.0.1 --save '' --daemonize yes --pidfile "$work/redis.pid" --dir "$work" >/dev/null

cat > "$work/resque.toml" <<TOML
[redis]
url = "redis://127.0.0.1:$port/0"

[worker]
queues = ["default"]
count = 2

# Shell jobs: a process per job, the payload JSON on stdin.
[[handler]]
class = "Demo\\\\Shell\\\\*"
type = "exec"
command = ["/bin/sh", "-c", "echo \"shell job \$RESQUE_JOB_ID got: \$(cat)\""]

# Everything else: PHP job classes, php-resque's contract, a pool of PHP processes.
[[handler]]
class = "*"
type = "php"
bootstrap = "$root/scripts/demo/jobs.php"
runner = "$root/php/runner.php"
TOML
export RUNTIME_DIRECTORY="$work/run"
r() { echo "\$ resque $*"; "$resque" --config "$work/resque.toml" "$@"; }

r config check
echo "== starting the daemon (log: $work/daemon.log)"
"$resque" --config "$work/resque.toml" start >"$work/daemon.log" 2>&1 &
daemon=$!
sleep 1

hello=$(r enqueue default 'Demo\Job\Hello' '{"name":"world"}' --track | tail -n 1)
r enqueue default 'Demo\Shell\Echo' '{"n":1}'
fails=$(r enqueue default 'Demo\Job\Fails' '{"why":"demo"}' --track | tail -n 1)
sleep 2
r status --id "$hello" || true
r status --id "$fails" || true
r workers
r stats
r failed list
echo "== stopping the daemon gracefully"
r stop --wait
echo "== daemon log"
cat "$work/daemon.log"
