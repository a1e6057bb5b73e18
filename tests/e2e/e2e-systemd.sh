#!/bin/bash
# End-to-end test of the resque .deb under a real systemd: boots Debian 12 in a
# systemd-nspawn container (PID 1 = systemd, with redis-server and php-cli),
# installs the package and drives systemctl, journalctl and dpkg.
#
# Usage: tests/e2e/e2e-systemd.sh target/debian/resque_*.deb
# Needs: root with CAP_SYS_ADMIN, a Debian 12 host, the Debian mirror the
# host's apt uses (only the first time: the root filesystem is cached).
#
# Environment:
#   E2E_CACHE   where the pristine root filesystem is kept (/var/cache/resque-e2e)
#   E2E_WORK    logs of this run (/tmp/resque-e2e)
#   E2E_MIRROR  Debian mirror (default: the host's apt source)
#   E2E_ONLY    space-separated check names to run (default: all)
#
# Each check prints PASS or FAIL with its name; the last line is
# "e2e-systemd: N passed, M failed" and the exit status is 1 if any failed.
# The container boots with --volatile=overlay: every change made inside is
# discarded at poweroff, so the cached root filesystem stays pristine.
# shellcheck disable=SC2015 # "a && b || fail" is meant: fail if either is false
set -euo pipefail

[ $# -eq 1 ] && [ -f "$1" ] || { echo "usage: $0 path/to/resque_*.deb" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: must run as root (systemd-nspawn)" >&2; exit 2; }
DEB=$(readlink -f "$1")
CACHE=${E2E_CACHE:-/var/cache/resque-e2e}
WORK=${E2E_WORK:-/tmp/resque-e2e}
SUITE=bookworm
# Everything the tests need inside the container: it has no network.
INCLUDE=systemd,systemd-sysv,dbus,procps,adduser,redis-server,php-cli,man-db
ROOT=$CACHE/rootfs-$SUITE-$(echo "$SUITE $INCLUDE v1" | sha256sum | cut -c1-12)
MACHINE=resque-e2e
U=resque@default.service
U2=resque@second.service
OUT=/srv/e2e/out # where the test jobs write (the unit has PrivateTmp=yes)

t0=$(date +%s)
step() { echo "[e2e +$(($(date +%s) - t0))s] $*"; }
mkdir -p "$WORK"
rm -f "$WORK"/*.log

# ---------------------------------------------------------------- host setup
step "host tools"
if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
	apt-get -o DPkg::Lock::Timeout=300 update -qq
	DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq systemd-container debootstrap >/dev/null
fi

# nspawn refuses to clean up /run/systemd/nspawn/propagate/* unless it is on a
# tmpfs ("Attempted to remove disk file system"); /run may be on disk here.
mkdir -p /run/systemd/nspawn
mountpoint -q /run/systemd/nspawn || mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn

mirror() {
	local m=${E2E_MIRROR:-}
	[ -n "$m" ] || m=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
		grep -v security | head -1 || true)
	[ -n "$m" ] || m=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
	[ -n "$m" ] || m=http://deb.debian.org/debian
	echo "$m"
}

if [ ! -e "$ROOT/.complete" ]; then
	M=$(mirror)
	step "debootstrap $SUITE from $M into $ROOT (once, ~1 min)"
	mkdir -p "$CACHE"
	ok=
	for try in 1 2 3; do
		rm -rf "$ROOT.tmp"
		if debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOT.tmp" "$M" \
			>"$CACHE/debootstrap.log" 2>&1; then
			ok=1
			break
		fi
		echo "debootstrap failed (try $try), see $CACHE/debootstrap.log" >&2
		tail -5 "$CACHE/debootstrap.log" >&2
		sleep 5
	done
	[ -n "$ok" ] || exit 1
	# redis-server must not be reachable beyond the container's loopback
	# anyway (--private-network), but keep it quiet and predictable.
	rm -f "$ROOT.tmp/etc/machine-id" && : >"$ROOT.tmp/etc/machine-id"
	rm -rf "$ROOT" && touch "$ROOT.tmp/.complete" && mv "$ROOT.tmp" "$ROOT"
fi

# ------------------------------------------------------------ boot container
step "boot container"
# --register=no --keep-unit: no systemd/dbus on the host to register with.
# --private-network: the container's redis on :6379 clashes with nothing.
# --volatile=overlay: the cached root stays pristine (tmpfs upper layer).
setsid systemd-nspawn -q -D "$ROOT" --volatile=overlay --boot --register=no --keep-unit \
	--private-network --console=read-only -M "$MACHINE" \
	--bind-ro="$DEB:/var/cache/e2e/resque.deb" \
	>"$WORK/console.log" 2>&1 </dev/null &
NSPID=$!
L=""
cleanup() {
	if kill -0 "$NSPID" 2>/dev/null; then
		{ [ -n "$L" ] && nsenter -t "$L" -a systemctl poweroff >/dev/null 2>&1; } ||
			kill -TERM "$NSPID" 2>/dev/null || true
		for _ in $(seq 1 100); do kill -0 "$NSPID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$NSPID" 2>/dev/null || true
		wait "$NSPID" 2>/dev/null || true
	fi
	# nspawn --keep-unit leaves empty payload/ and supervisor/ cgroups under
	# the caller's cgroup; rmdir only removes empty ones.
	local h base d
	for h in systemd unified; do
		base=/sys/fs/cgroup/$h$(awk -F: -v h="$h" '($2=="name=systemd"&&h=="systemd")||($1=="0"&&h=="unified"){print $3}' /proc/self/cgroup)
		for d in payload supervisor; do
			[ -d "$base/$d" ] && find "$base/$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
		done
	done
}
trap cleanup EXIT
for _ in $(seq 1 300); do
	L=$(ps --ppid "$NSPID" -o pid= | tr -d ' ' | head -1 || true)
	if [ -n "$L" ]; then
		case "$(nsenter -t "$L" -a systemctl is-system-running 2>/dev/null || true)" in
		running | degraded) break ;;
		esac
	fi
	kill -0 "$NSPID" 2>/dev/null || { cat "$WORK/console.log"; exit 1; }
	sleep 0.1
done
[ -n "$L" ] || { cat "$WORK/console.log"; exit 1; }

C() { nsenter -t "$L" -a "$@"; } # run a command inside the container
step "container: $(C systemctl is-system-running || true), $(C systemctl --version | head -1)"

# ------------------------------------------------------------------- helpers
PASSED=0
FAILED=0
FAILED_NAMES=()
# check NAME FUNCTION: run FUNCTION in a subshell with `set -e`, print its
# output indented, then PASS/FAIL.
check() {
	local name=$1 fn=$2 rc
	if [ -n "${E2E_ONLY:-}" ] && [[ " $E2E_ONLY " != *" $name "* ]]; then return 0; fi
	step "check $name"
	set +e
	(
		set -e
		"$fn"
	) 2>&1 | tee "$WORK/$name.log" | sed 's/^/    /'
	rc=${PIPESTATUS[0]}
	set -e
	if [ "$rc" = 0 ]; then
		echo "PASS $name"
		PASSED=$((PASSED + 1))
	else
		echo "FAIL $name"
		FAILED=$((FAILED + 1))
		FAILED_NAMES+=("$name")
	fi
}
fail() { echo "FAILED: $*" >&2; exit 1; }
# wait_for SECONDS COMMAND...: poll every 0.2 s until COMMAND succeeds.
wait_for() {
	local n=$(($1 * 5))
	shift
	while ! "$@" >/dev/null 2>&1; do
		n=$((n - 1))
		[ "$n" -gt 0 ] || return 1
		sleep 0.2
	done
}
state() { C systemctl is-active "$1" 2>/dev/null || true; }
prop() { C systemctl show "$1" -p "$2" --value; }
is_active() { [ "$(state "$1")" = active ]; }
require_active() { is_active "$1" || fail "$1 is $(state "$1"), not active"; }
# start a unit, resetting systemd's start rate limit (StartLimitBurst=20 in
# 60 s) that the many restarts of this test could otherwise trip (the check
# "restarts" shows that an operator's restarts do not).
start() {
	C systemctl reset-failed "$1" 2>/dev/null || true
	C timeout 60 systemctl start "$1"
}
journal() { C journalctl -b --no-pager "$@"; }
rcli() { C redis-cli --raw "$@"; }
# enqueue QUEUE CLASS ARGS_JSON: prints the job id given by `resque enqueue`.
enqueue() {
	local out id
	out=$(C resque enqueue "$@") || { echo "resque enqueue $*: failed: $out" >&2; return 1; }
	id=$(printf '%s\n' "$out" | grep -Eo '[0-9A-Za-z_-]{16,}' | tail -1 || true)
	[ -n "$id" ] || id=$(printf '%s\n' "$out" | awk 'NF{last=$NF} END{print last}')
	[ -n "$id" ] || { echo "resque enqueue $*: no job id in output: $out" >&2; return 1; }
	echo "$id"
}
job_done() { C test -s "$OUT/job-$1"; }
attempts() { C sh -c "cat '$OUT/started-$1' 2>/dev/null | wc -l"; }
watchdog_timeouts() { journal -u "$1" -o cat | grep -c 'Watchdog timeout' || true; }
failed_count() { rcli LLEN resque:failed; }
workers_count() { rcli SCARD resque:workers; }

# --------------------------------------------------------- the test fixtures
# The configuration every check starts from. $1 = count of resque@default.
# With $2, no [instance.default]: $2 is added to [worker] instead.
write_config() {
	local instance="[instance.default]
queues = [\"default\"]
count = ${1:-2}"
	[ -z "${2:-}" ] || instance=""
	C sh -c 'cat >/etc/resque.toml' <<EOF
# written by tests/e2e/e2e-systemd.sh
[redis]
url = "redis://127.0.0.1:6379/0"

[worker]
interval = "1s"
shutdown_timeout = "20s"
${2:-}

$instance

# A line in started-ID per attempt; Sleep5/Sleep10 jobs take that long; the
# payload is written atomically to job-ID when the job is done.
[[handler]]
class = 'Shell\\*'
type = "exec"
command = ["/bin/sh", "-c", 'echo \$\$ >>$OUT/started-\$RESQUE_JOB_ID; case "\$RESQUE_JOB_CLASS" in *Sleep10) sleep 10;; *Sleep5) sleep 5;; *Fail) echo "e2e failing on purpose" >&2; exit 3;; esac; cat >$OUT/.job-\$RESQUE_JOB_ID && mv $OUT/.job-\$RESQUE_JOB_ID $OUT/job-\$RESQUE_JOB_ID; echo "e2e job \$RESQUE_JOB_ID done"']
timeout = "60s"

[[handler]]
class = 'App\\Jobs\\*'
type = "php"
bootstrap = "/srv/e2e/app/bootstrap.php"
EOF
}

fixtures() {
	C mkdir -p "$OUT" /srv/e2e/app
	C chown resque:resque "$OUT"
	C chmod 1777 "$OUT" # the examples check runs jobs as www-data too
	C sh -c 'cat >/srv/e2e/app/bootstrap.php' <<'EOF'
<?php
// Loaded once per PHP runner process (what APP_INCLUDE was for php-resque).
namespace App\Jobs;

class WriteFile
{
    public $args;
    public $queue;
    public $job;

    public function perform()
    {
        // PCRE (JIT where allowed): MemoryDenyWriteExecute must not break it.
        if (!preg_match('/^[a-z]+[0-9]*$/', $this->args['token'])) {
            throw new \RuntimeException('bad token');
        }
        $out = '/srv/e2e/out/php-' . $this->args['token'];
        file_put_contents($out . '.tmp', json_encode([
            'queue' => $this->queue,
            'args' => $this->args,
            'php' => PHP_VERSION,
        ]));
        rename($out . '.tmp', $out);
    }
}

// Sleeps args.ms, then writes php-TOKEN. Its runner has a shutdown function that
// takes a moment, as an application's destructors do.
class Sleep
{
    public $args;

    public function perform()
    {
        file_put_contents('/srv/e2e/out/php-started-' . $this->args['token'], getmypid());
        usleep($this->args['ms'] * 1000);
        file_put_contents('/srv/e2e/out/php-' . $this->args['token'], 'done');
        $pid = getmypid();
        register_shutdown_function(function () use ($pid) {
            usleep(300000);
            file_put_contents('/srv/e2e/out/php-shutdown-' . $pid, 'clean');
        });
    }
}
EOF
	write_config 2
	# Faster failure modes for the test only: the watchdog check needs a short
	# WatchdogSec, and a daemon that never answers must not cost 90 s.
	C mkdir -p /etc/systemd/system/resque@.service.d /etc/systemd/system/$U.d
	C sh -c 'cat >/etc/systemd/system/resque@.service.d/e2e.conf' <<'EOF'
[Service]
TimeoutStartSec=20
TimeoutStopSec=40
RestartSec=1
EOF
	C sh -c "cat >/etc/systemd/system/$U.d/e2e.conf" <<'EOF'
[Service]
WatchdogSec=4
EOF
	C systemctl daemon-reload
}

# ------------------------------------------------------------------- checks
c_install() {
	C redis-cli ping | grep -q PONG || fail "redis-server is not running in the container"
	C dpkg --purge resque >/dev/null 2>&1 || true
	C dpkg -i /var/cache/e2e/resque.deb </dev/null >"$WORK/install-output.txt" 2>&1 ||
		{ cat "$WORK/install-output.txt"; fail "dpkg -i failed"; }
	cat "$WORK/install-output.txt"
	# A fresh install says what to do next.
	grep -q 'systemctl enable --now resque@default' "$WORK/install-output.txt" ||
		fail "no post-install note"
	grep -q 'README.Debian' "$WORK/install-output.txt" || fail "the note does not point at README.Debian"
	C dpkg -s resque | grep -q '^Status: install ok installed'
	local pw uid
	pw=$(C getent passwd resque) || fail "user resque missing"
	echo "user: $pw"
	uid=$(echo "$pw" | cut -d: -f3)
	[ "$uid" -lt 1000 ] || fail "resque is not a system user (uid $uid)"
	echo "$pw" | grep -q ':/nonexistent:' || fail "home should be /nonexistent"
	C getent group resque >/dev/null || fail "group resque missing"
	local st
	st=$(C stat -c '%U:%G %a' /etc/resque.toml)
	echo "/etc/resque.toml: $st"
	[ "$st" = "root:resque 640" ] || fail "/etc/resque.toml should be root:resque 640"
	C grep -qx /etc/resque.toml /var/lib/dpkg/info/resque.conffiles || fail "/etc/resque.toml is not a conffile"
	for f in /usr/bin/resque /lib/systemd/system/resque@.service /lib/systemd/system/resque.service \
		/usr/share/resque/php/runner.php /usr/share/man/man1/resque.1.gz \
		/usr/share/man/man5/resque.toml.5.gz /usr/share/doc/resque/README.Debian \
		/usr/share/bash-completion/completions/resque /usr/share/doc/resque/copyright; do
		C test -e "$f" || fail "$f not installed"
	done
	# man -w finds both pages.
	echo "man -w resque: $(C man -w resque)"
	echo "man -w 5 resque.toml: $(C man -w 5 resque.toml)"
	C man -w resque | grep -q 'man1/resque.1' || fail "man -w resque"
	C man -w 5 resque.toml | grep -q 'man5/resque.toml.5' || fail "man -w 5 resque.toml"
	C sh -c 'MANWIDTH=80 man resque 2>/dev/null' | grep -q 'EXIT STATUS' || fail "man resque: no EXIT STATUS"
	# The shipped config explains its handler and points at the www-data drop-in.
	C grep -q 'www-data.conf' /etc/resque.toml || fail "/etc/resque.toml does not point at www-data.conf"
	C grep -q 'Could not find job class' /etc/resque.toml || fail "/etc/resque.toml does not explain its handler"
	C systemd-analyze verify --man=no resque@default.service resque.service
	# The packaged default configuration is valid as shipped.
	C runuser -u resque -- resque config check --instance default
	C systemctl is-enabled resque@default.service >/dev/null 2>&1 &&
		fail "resque@default must not be enabled before it is configured" || true
}

c_security() {
	C systemd-analyze security --no-pager resque@default.service >"$WORK/security.txt" 2>&1 || true
	local line score
	line=$(grep 'Overall exposure level' "$WORK/security.txt") || { cat "$WORK/security.txt"; fail "no score"; }
	echo "$line"
	score=$(echo "$line" | grep -Eo '[0-9]+\.[0-9]' | head -1)
	awk -v s="$score" 'BEGIN{exit !(s <= 4.0)}' || fail "exposure $score > 4.0"
}

c_config_check() {
	C runuser -u resque -- resque config check --instance default
	C runuser -u resque -- resque config check --instance second
	# An invalid file: exit 78 and one line naming file, line and key.
	C cp /etc/resque.toml /srv/e2e/bad.toml
	C sed -i 's/^count = .*/count = "many"/' /srv/e2e/bad.toml
	local out rc=0
	out=$(C resque config check --config /srv/e2e/bad.toml --instance default 2>&1) || rc=$?
	echo "bad config: rc=$rc: $out"
	[ "$rc" = 78 ] || fail "expected exit 78, got $rc"
	echo "$out" | grep -q 'bad.toml' || fail "error does not name the file"
	echo "$out" | grep -q 'count' || fail "error does not name the key"
	echo "$out" | grep -Eq 'line [0-9]+|:[0-9]+' || fail "error does not name the line"
}

c_start() {
	start "$U"
	require_active "$U"
	C systemctl show "$U" -p MainPID -p StatusText -p WatchdogUSec -p NRestarts -p User
	[ -n "$(prop "$U" StatusText)" ] || fail "no STATUS= text"
	C systemctl status --no-pager "$U" | tee "$WORK/status.txt" | head -12
	grep -q 'Status: "' "$WORK/status.txt" || fail "systemctl status shows no Status line"
	[ "$(C ps -o user= -p "$(prop "$U" MainPID)" | tr -d ' ')" = resque ] || fail "daemon does not run as resque"
	# READY=1 only once the workers run: they are registered in Redis.
	wait_for 10 sh -c "[ \"\$(nsenter -t $L -a redis-cli SCARD resque:workers)\" = 2 ]" ||
		fail "expected 2 workers in resque:workers, got $(workers_count)"
}

c_exec_job() {
	require_active "$U"
	local id
	id=$(enqueue default 'Shell\Echo' '{"hello":"world"}' --track)
	echo "job id: $id"
	echo "$id" >"$WORK/exec_job.id"
	wait_for 15 job_done "$id" || fail "job $id did not run (no $OUT/job-$id)"
	C cat "$OUT/job-$id"
	echo
	C grep -q '"hello":"world"' "$OUT/job-$id" || fail "payload args not on stdin"
	C grep -q "\"id\":\"$id\"" "$OUT/job-$id" || fail "payload id not on stdin"
	wait_for 5 sh -c "nsenter -t $L -a resque status --id '$id' | grep -qi complete" ||
		fail "status of $id: $(C resque status --id "$id" 2>&1)"
	[ "$(rcli LLEN resque:queue:default)" = 0 ] || fail "queue not empty"
}

c_php_job() {
	require_active "$U"
	local token=t$RANDOM$RANDOM f0 id
	f0=$(failed_count)
	id=$(enqueue default 'App\Jobs\WriteFile' "{\"token\":\"$token\"}")
	echo "job id: $id, token $token"
	if ! wait_for 20 C test -s "$OUT/php-$token"; then
		journal -u "$U" -n 30 -o cat
		rcli LRANGE resque:failed -1 -1
		fail "PHP job did not run"
	fi
	C cat "$OUT/php-$token"
	echo
	C grep -q '"queue":"default"' "$OUT/php-$token" || fail "\$this->queue wrong"
	[ "$(failed_count)" = "$f0" ] || fail "failed list grew"
}

c_journal() {
	require_active "$U"
	local id
	id=$(cat "$WORK/exec_job.id" 2>/dev/null) || fail "no job from check exec_job"
	journal -u "$U" RESQUE_JOB_ID="$id" -o verbose >"$WORK/journal-job.txt"
	journal -u "$U" RESQUE_JOB_ID="$id" -o short-monotonic
	[ -s "$WORK/journal-job.txt" ] || fail "journalctl -u $U RESQUE_JOB_ID=$id finds nothing"
	grep -q "_SYSTEMD_UNIT=$U" "$WORK/journal-job.txt" || fail "lines not attributed to $U"
	grep -q "MESSAGE=.*e2e job $id done" "$WORK/journal-job.txt" ||
		echo "(note: the job's stdout line is not tagged with RESQUE_JOB_ID)"
}

# journalctl -o cat alone tells what happened: the class and error of a failed
# job, the names of signals; our job field is not systemd's JOB_ID.
c_journal_text() {
	require_active "$U"
	local id f0 out
	f0=$(failed_count)
	id=$(enqueue default 'Shell\Fail' '{"fail":"on purpose"}')
	wait_for 15 sh -c "[ \$(nsenter -t $L -a redis-cli LLEN resque:failed) -gt $f0 ]" || fail "job $id did not fail"
	wait_for 5 sh -c "nsenter -t $L -a journalctl -b -u $U -o cat | grep -q 'job failed: $id'" || fail "no 'job failed' line"
	out=$(journal -u "$U" -o cat | grep "job failed: $id")
	echo "$out"
	echo "$out" | grep -qF 'Shell\Fail' || fail "the failed job's line lacks its class"
	echo "$out" | grep -q 'exit code 3' || fail "the failed job's line lacks its error"
	journal -u "$U" -o cat | grep -E 'resque ready: [0-9]+ workers? on queues default, Redis redis://127.0.0.1:6379' ||
		fail "'resque ready' does not name the queues and Redis"
	journal -u "$U" -o cat | grep -E 'worker .* started on queues default' | head -1 || fail "'worker started' lacks the queues"
	C systemctl kill -s SIGUSR2 --kill-whom=main "$U"
	C systemctl kill -s SIGCONT --kill-whom=main "$U"
	wait_for 5 sh -c "nsenter -t $L -a journalctl -b -u $U -o cat | grep -q 'received SIGCONT: resuming'" ||
		fail "no 'received SIGCONT' line"
	journal -u "$U" -o cat | grep 'received SIG'
	journal -u "$U" -o cat | grep -q 'received SIGUSR2: pausing' || fail "no 'received SIGUSR2' line"
	# Our records carry RESQUE_JOB_ID; JOB_ID stays systemd's.
	journal -u "$U" RESQUE_JOB_ID="$id" -o json | grep -q '"RESQUE_JOB_CLASS"' || fail "no RESQUE_JOB_CLASS field"
	if journal -u "$U" RESQUE_JOB_ID="$id" -o json | grep -q '"JOB_ID"'; then
		fail "our records carry JOB_ID"
	fi
	echo "journalctl -F JOB_ID (systemd's): $(journal -u "$U" -F JOB_ID | head -3 | tr '\n' ' ')"
	journal -u "$U" -F JOB_ID | grep -qx "$id" && fail "JOB_ID mixes our job ids with systemd's" || true
}

# [worker] queues applies to resque@default without an [instance.default].
c_worker_queues() {
	C cp /etc/resque.toml /srv/e2e/good.toml
	write_config 2 'queues = ["high", "low"]
count = 2'
	C chgrp resque /etc/resque.toml
	C sed -n '/^.worker./,/^$/p' /etc/resque.toml
	C grep -q 'instance.default' /etc/resque.toml && fail "test config still has [instance.default]" || true
	local out id
	out=$(C runuser -u resque -- resque config check --instance default)
	echo "$out"
	echo "$out" | grep -E '^ +queues +high,low +from \[worker\]' || fail "config check: queues not high,low from [worker]"
	C timeout 60 systemctl restart "$U" || { C cp /srv/e2e/good.toml /etc/resque.toml; fail "restart failed"; }
	id=$(enqueue low 'Shell\Echo' '{"queue":"low"}')
	wait_for 15 job_done "$id" || { C cp /srv/e2e/good.toml /etc/resque.toml; fail "a job in queue low did not run"; }
	C cp /srv/e2e/good.toml /etc/resque.toml
	C chgrp resque /etc/resque.toml
	C timeout 60 systemctl restart "$U"
}

# An operator restarting 8 times in a minute does not trip the start limit.
c_restarts() {
	start "$U"
	local i
	for i in 1 2 3 4 5 6 7 8; do
		C timeout 60 systemctl restart "$U" || fail "restart $i failed: $(prop "$U" Result)"
	done
	echo "after 8 restarts: $(state "$U"), Result $(prop "$U" Result)"
	require_active "$U"
	[ "$(prop "$U" Result)" = success ] || fail "Result $(prop "$U" Result)"
	journal -u "$U" -o cat | grep -q 'start-limit-hit\|Start request repeated too quickly' &&
		fail "start limit hit" || true
}

# A PHP job that finishes while the unit stops: its runner ends on its own
# (shutdown functions run), nothing is left for systemd to SIGKILL.
c_php_stop() {
	start "$U"
	local token=stop$RANDOM n0 pid
	n0=$(journal -u "$U" -o cat | grep -c 'SIGKILL' || true)
	enqueue default 'App\Jobs\Sleep' "{\"token\":\"$token\",\"ms\":1500}" >/dev/null
	wait_for 20 C test -s "$OUT/php-started-$token" || fail "PHP job did not start"
	pid=$(C cat "$OUT/php-started-$token")
	C timeout 60 systemctl stop "$U"
	C test -s "$OUT/php-$token" || fail "the PHP job did not finish during the drain"
	journal -u "$U" -o cat | tail -8
	[ "$(journal -u "$U" -o cat | grep -c 'SIGKILL' || true)" = "$n0" ] ||
		fail "SIGKILL in the journal: $(journal -u "$U" -o cat | grep SIGKILL | tail -3)"
	C test -s "$OUT/php-shutdown-$pid" || fail "the PHP runner's shutdown function did not run"
	C kill -0 "$pid" 2>/dev/null && fail "PHP runner $pid still alive" || true
	echo "PHP runner $pid ended cleanly"
	start "$U"
}

c_reload() {
	require_active "$U"
	local p0 s0 s1
	p0=$(prop "$U" MainPID)
	s0=$(prop "$U" StatusText)
	write_config 3
	C timeout 60 systemctl reload "$U"
	require_active "$U"
	[ "$(prop "$U" MainPID)" = "$p0" ] || fail "MainPID changed: reload restarted the daemon"
	wait_for 10 sh -c "[ \"\$(nsenter -t $L -a redis-cli SCARD resque:workers)\" = 3 ]" ||
		fail "expected 3 workers after reload, got $(workers_count)"
	wait_for 5 sh -c "[ \"\$(nsenter -t $L -a systemctl show $U -p StatusText --value)\" != '$s0' ]" ||
		fail "STATUS= unchanged after reload: $s0"
	s1=$(prop "$U" StatusText)
	echo "STATUS before: $s0"
	echo "STATUS after:  $s1"
	journal -u "$U" -o cat | grep -qi 'reload' || fail "no reload in the journal"
}

c_reload_invalid() {
	require_active "$U"
	local p0 rc=0
	p0=$(prop "$U" MainPID)
	C cp /etc/resque.toml /srv/e2e/good.toml
	C sh -c 'echo "this is = = not toml" >>/etc/resque.toml'
	C timeout 60 systemctl reload "$U" || rc=$?
	C cp /srv/e2e/good.toml /etc/resque.toml
	C chgrp resque /etc/resque.toml
	[ "$rc" != 0 ] || fail "systemctl reload succeeded with an invalid config"
	echo "systemctl reload: rc=$rc (expected non-zero)"
	require_active "$U"
	[ "$(prop "$U" MainPID)" = "$p0" ] || fail "MainPID changed"
	[ "$(workers_count)" = 3 ] || fail "workers changed: $(workers_count)"
	journal -u "$U" -n 20 -o cat | tail -5
	# and the daemon still works
	local id
	id=$(enqueue default 'Shell\Echo' '{"after":"bad reload"}')
	wait_for 15 job_done "$id" || fail "job after a rejected reload did not run"
}

c_watchdog() {
	require_active "$U"
	[ "$(prop "$U" WatchdogUSec)" = 4s ] || fail "test drop-in WatchdogSec=4 not applied"
	local n0 p0 id f0
	n0=$(prop "$U" NRestarts)
	p0=$(prop "$U" MainPID)
	f0=$(failed_count)
	id=$(enqueue default 'Shell\Sleep10' '{"in":"flight"}')
	echo "in-flight job: $id"
	wait_for 10 sh -c "[ \$(nsenter -t $L -a sh -c 'cat $OUT/started-$id 2>/dev/null | wc -l') -ge 1 ]" ||
		fail "job $id did not start"
	C systemctl kill -s SIGSTOP --kill-whom=main "$U"
	echo "froze MainPID $p0"
	wait_for 30 sh -c "[ \"\$(nsenter -t $L -a systemctl show $U -p NRestarts --value)\" -gt $n0 ]" ||
		fail "no restart within 30 s (NRestarts $(prop "$U" NRestarts))"
	journal -u "$U" -o cat | grep -q 'Watchdog timeout' || fail "no 'Watchdog timeout' in the journal"
	wait_for 20 is_active "$U" || fail "not active again after the watchdog restart"
	echo "restarted: MainPID $(prop "$U" MainPID), NRestarts $(prop "$U" NRestarts)"
	# The frozen worker's job was killed with the daemon; the new daemon
	# recovers it and runs it again: it is not lost, not failed.
	wait_for 40 job_done "$id" || fail "in-flight job $id lost (attempts: $(attempts "$id"))"
	echo "attempts: $(attempts "$id")"
	[ "$(attempts "$id")" -ge 2 ] || echo "(note: job finished before the watchdog fired)"
	[ "$(failed_count)" = "$f0" ] || fail "in-flight job went to the failed list"
}

c_graceful_stop() {
	require_active "$U"
	local id f0 t1 t2 w0
	f0=$(failed_count)
	w0=$(watchdog_timeouts "$U")
	id=$(enqueue default 'Shell\Sleep5' '{"stop":"graceful"}')
	wait_for 10 sh -c "nsenter -t $L -a test -e $OUT/started-$id" || fail "job $id did not start"
	t1=$(date +%s%N)
	C timeout 60 systemctl stop "$U"
	t2=$(date +%s%N)
	echo "systemctl stop took $(((t2 - t1) / 1000000)) ms"
	if [ "$(watchdog_timeouts "$U")" -gt "$w0" ]; then
		journal -u "$U" -o short-monotonic | grep -B3 -A3 'Watchdog timeout' | tail -8
		fail "watchdog timeout while draining: WATCHDOG=1 must keep coming every WATCHDOG_USEC/2 during a graceful stop (test WatchdogSec=4)"
	fi
	[ "$(state "$U")" = inactive ] || fail "state after stop: $(state "$U")"
	job_done "$id" || fail "running job $id was not allowed to finish"
	[ "$(attempts "$id")" = 1 ] || fail "job ran $(attempts "$id") times"
	[ "$(rcli LLEN resque:queue:default)" = 0 ] || fail "job left in the queue"
	[ "$(failed_count)" = "$f0" ] || fail "job went to the failed list"
	[ "$(workers_count)" = 0 ] || fail "workers still registered: $(rcli SMEMBERS resque:workers)"
	journal -u "$U" -n 5 -o cat
}

c_bad_config_start() {
	C cp /etc/resque.toml /srv/e2e/good.toml
	C sed -i 's/^count = .*/count = "many"/' /etc/resque.toml
	C systemctl reset-failed "$U" 2>/dev/null || true
	local rc=0
	C timeout 60 systemctl start "$U" || rc=$?
	sleep 3 # RestartSec=1 in the test drop-in: a restart loop would show by now
	C cp /srv/e2e/good.toml /etc/resque.toml
	C chgrp resque /etc/resque.toml
	[ "$rc" != 0 ] || fail "systemctl start succeeded with an invalid config"
	journal -u "$U" -n 8 -o cat
	journal -u "$U" -o cat | grep -q 'resque.toml:[0-9]*: instance.default.count' ||
		fail "the journal does not name file, line and key"
	echo "state: $(state "$U"), NRestarts: $(prop "$U" NRestarts), Result: $(prop "$U" Result)"
	[ "$(state "$U")" = failed ] || fail "expected failed, got $(state "$U")"
	[ "$(prop "$U" NRestarts)" = 0 ] || fail "restarted $(prop "$U" NRestarts) times with a bad config"
	C systemctl reset-failed "$U"
}

c_umbrella() {
	start "$U"
	start "$U2"
	require_active "$U"
	require_active "$U2"
	is_active resque.service || fail "resque.service not started with its instances"
	local a0 b0 a1 b1 r0 r1
	a0=$(prop "$U" MainPID)
	b0=$(prop "$U2" MainPID)
	# reload propagates, without restarting anything
	r0=$(journal -u "$U2" -o cat | grep -c 'Reload' || true)
	C timeout 60 systemctl reload resque.service
	r1=$(journal -u "$U2" -o cat | grep -c 'Reload' || true)
	[ "$r1" -gt "$r0" ] || fail "systemctl reload resque did not reload $U2"
	[ "$(prop "$U" MainPID)" = "$a0" ] && [ "$(prop "$U2" MainPID)" = "$b0" ] || fail "reload restarted an instance"
	C systemctl reset-failed "$U" "$U2" 2>/dev/null || true
	C timeout 90 systemctl restart resque.service
	# systemctl waits for the umbrella's job only; the instances' restart
	# jobs it triggered (PartOf=) finish on their own.
	restarted() {
		is_active "$U" && is_active "$U2" &&
			[ "$(prop "$U" MainPID)" != "$a0" ] && [ "$(prop "$U2" MainPID)" != "$b0" ]
	}
	wait_for 60 restarted || true
	a1=$(prop "$U" MainPID)
	b1=$(prop "$U2" MainPID)
	echo "$U: $a0 -> $a1, $U2: $b0 -> $b1"
	is_active "$U" && is_active "$U2" || fail "instances not active after restart: $(state "$U") $(state "$U2")"
	[ "$a1" != "$a0" ] && [ "$b1" != "$b0" ] || fail "systemctl restart resque did not restart every instance"
	C resque instances

	# A broken config: reload and restart of the umbrella fail, naming the instances.
	local rc=0
	C cp /etc/resque.toml /srv/e2e/good.toml
	C sh -c 'echo "this is = = not toml" >>/etc/resque.toml'
	C timeout 60 systemctl reload resque.service || rc=$?
	echo "systemctl reload resque with a broken config: rc=$rc"
	journal -u resque.service -o cat | tail -4
	if [ "$rc" = 0 ]; then
		C cp /srv/e2e/good.toml /etc/resque.toml
		fail "systemctl reload resque succeeded with a broken config"
	fi
	is_active "$U" && is_active "$U2" || fail "a rejected reload stopped an instance"
	journal -u resque.service -o cat | grep -q "$U2.*reload failed" || fail "the umbrella does not report $U2"
	rc=0
	C timeout 90 systemctl restart resque.service || rc=$?
	echo "systemctl restart resque with a broken config: rc=$rc; $U: $(state "$U"), $U2: $(state "$U2")"
	C cp /srv/e2e/good.toml /etc/resque.toml
	C chgrp resque /etc/resque.toml
	[ "$rc" != 0 ] || fail "systemctl restart resque succeeded while its instances failed"
	C resque instances && fail "resque instances exits 0 with failed instances" || true
	C systemctl reset-failed "$U" "$U2" resque.service
	start "$U"
	start "$U2"
	is_active resque.service || fail "resque.service not active once its instances run again"
	C timeout 60 systemctl reload resque.service || fail "reload of the fixed config failed"
	C timeout 90 systemctl restart resque.service || fail "restart of the fixed config failed"
	is_active "$U" && is_active "$U2" || fail "instances not active again"
}

c_enable() {
	# "systemctl enable resque@.service" enables the DefaultInstance.
	C systemctl enable resque@.service resque@second.service
	[ "$(C systemctl is-enabled "$U")" = enabled ] || fail "resque@default not enabled by DefaultInstance"
	C test -L /etc/systemd/system/multi-user.target.wants/$U || fail "not wanted by multi-user.target"
	C test -L /etc/systemd/system/resque.service.wants/$U2 || fail "not wanted by resque.service"
	C timeout 90 systemctl stop resque.service
	[ "$(state "$U")" != active ] && [ "$(state "$U2")" != active ] ||
		fail "systemctl stop resque left instances running: $(state "$U") $(state "$U2")"
	C systemctl reset-failed "$U" "$U2" 2>/dev/null || true
	C timeout 90 systemctl start resque.service
	wait_for 30 sh -c "[ \"\$(nsenter -t $L -a systemctl is-active $U $U2 | sort -u)\" = active ]" ||
		fail "systemctl start resque did not start the enabled instances: $(state "$U") $(state "$U2")"
	C systemctl disable resque@.service resque@second.service
}

# The documented drop-ins, as installed, on resque@second (queue "second").
c_examples() {
	local ex=/usr/share/doc/resque/examples/systemd d=/etc/systemd/system/$U2.d id token
	C systemctl stop "$U2" || true
	C mkdir -p "$d"

	C cp "$ex/www-data.conf" "$d/"
	C systemctl daemon-reload
	start "$U2"
	require_active "$U2"
	[ "$(C ps -o user= -p "$(prop "$U2" MainPID)" | tr -d ' ')" = www-data ] || fail "www-data.conf: not running as www-data"
	id=$(enqueue second 'Shell\Echo' '{"as":"www-data"}')
	wait_for 15 job_done "$id" || fail "www-data.conf: job did not run"
	[ "$(C stat -c %U "$OUT/job-$id")" = www-data ] || fail "www-data.conf: job did not run as www-data"
	echo "www-data.conf: ok"
	C systemctl stop "$U2"
	C rm "$d/www-data.conf"

	C cp "$ex/strict-hardening.conf" "$ex/memory-limits.conf" "$d/"
	C sh -c "printf '[Service]\nReadWritePaths=$OUT\n' >$d/zz-e2e.conf"
	C systemctl daemon-reload
	start "$U2"
	require_active "$U2"
	id=$(enqueue second 'Shell\Echo' '{"strict":"yes"}')
	token=strict$RANDOM
	enqueue second 'App\Jobs\WriteFile' "{\"token\":\"$token\"}" >/dev/null
	wait_for 15 job_done "$id" || fail "strict-hardening.conf: exec job did not run"
	wait_for 20 C test -s "$OUT/php-$token" || fail "strict-hardening.conf: PHP job did not run"
	C systemctl show "$U2" -p MemoryMax -p TasksMax -p MemoryDenyWriteExecute -p ProtectSystem
	echo "strict-hardening.conf + memory-limits.conf: ok"
	C systemctl stop "$U2"
	C rm -r "$d"
	C systemctl daemon-reload
}

c_upgrade() {
	start "$U"
	start "$U2"
	local a0 b0 a1 b1
	a0=$(prop "$U" MainPID)
	b0=$(prop "$U2" MainPID)
	C systemctl reset-failed "$U" "$U2" 2>/dev/null || true
	C sh -c 'cp /etc/resque.toml /srv/e2e/before-upgrade.toml'
	C dpkg -i /var/cache/e2e/resque.deb </dev/null
	a1=$(prop "$U" MainPID)
	b1=$(prop "$U2" MainPID)
	echo "$U: $a0 -> $a1, $U2: $b0 -> $b1"
	is_active "$U" && is_active "$U2" || fail "not active after upgrade: $(state "$U") $(state "$U2")"
	[ "$a1" != "$a0" ] && [ "$b1" != "$b0" ] || fail "upgrade did not restart the running instances"
	C cmp /etc/resque.toml /srv/e2e/before-upgrade.toml || fail "upgrade changed the edited /etc/resque.toml"
	[ "$(C stat -c '%U:%G %a' /etc/resque.toml)" = "root:resque 640" ] || fail "config permissions changed"
}

c_remove() {
	start "$U"
	is_active "$U" || fail "not running before removal"
	C dpkg --remove resque </dev/null
	[ "$(state "$U")" != active ] || fail "$U still active after dpkg --remove"
	[ "$(state "$U2")" != active ] || fail "$U2 still active after dpkg --remove"
	C test ! -e /usr/bin/resque || fail "/usr/bin/resque left behind"
	C test -e /etc/resque.toml || fail "dpkg --remove deleted the configuration (only purge may)"
	C getent passwd resque >/dev/null || fail "user removed"
	C dpkg --purge resque </dev/null
	C test ! -e /etc/resque.toml || fail "/etc/resque.toml left after purge"
}

c_purge() {
	C dpkg -i /var/cache/e2e/resque.deb </dev/null
	# dpkg -i installs the package's default config again: use the test one.
	write_config 2
	C chgrp resque /etc/resque.toml
	# Enabled the way an operator does it: links in multi-user.target.wants/
	# and resque.service.wants/.
	C systemctl enable resque@default.service resque@second.service resque.service
	start "$U"
	is_active "$U" || fail "not running before purge"
	# The test's own drop-ins are an admin's files, which purge leaves alone.
	C rm -rf /etc/systemd/system/resque@.service.d /etc/systemd/system/$U.d
	C systemctl daemon-reload
	echo "before purge:"
	C find /etc -name '*resque*' | sort | sed 's/^/    /'
	C dpkg --purge resque </dev/null
	[ "$(state "$U")" != active ] || fail "$U still active after dpkg --purge"
	[ "$(state resque.service)" != active ] || fail "resque.service still active after dpkg --purge"
	C test ! -e /etc/resque.toml || fail "/etc/resque.toml left after purge"
	C test ! -e /run/resque/default || fail "/run/resque/default left after purge"
	C systemctl cat "$U" >/dev/null 2>&1 && fail "unit still loadable after purge" || true
	local left
	left=$(C find /etc -name '*resque*')
	echo "after purge, under /etc: ${left:-nothing}"
	[ -z "$left" ] || fail "left under /etc after purge: $left"
}

c_credential() {
	# The Redis password as a systemd credential (LoadCredential=, as
	# systemd/examples/redis-password.conf shows): not in /etc/resque.toml, the
	# environment or a command line, against a Redis that requires it.
	local u=resque@cred.service d=/etc/systemd/system/resque@cred.service.d
	C redis-server --port 6390 --bind 127.0.0.1 --requirepass e2e-Cred-S3cret --save '' \
		--daemonize yes --pidfile /run/redis-cred.pid
	C install -d -m 0700 /etc/resque
	C sh -c 'umask 077; printf "e2e-Cred-S3cret\n" >/etc/resque/redis-password'
	C mkdir -p "$d"
	C sh -c "cat >$d/credential.conf" <<'EOF'
[Service]
LoadCredential=redis-password:/etc/resque/redis-password
Environment=REDIS_BACKEND=redis://127.0.0.1:6390/0 QUEUE=cred
EOF
	C systemctl daemon-reload
	start "$u"
	require_active "$u"
	C redis-cli -p 6390 -a e2e-Cred-S3cret --no-auth-warning RPUSH resque:queue:cred \
		'{"class":"Shell\\Echo","args":[{"via":"credential"}],"id":"credjob0000000001"}' >/dev/null
	wait_for 15 job_done credjob0000000001 || fail "the job on the password-protected Redis did not run"
	C cat "$OUT/job-credjob0000000001"
	echo
	if journal -u "$u" -o cat | grep -q 'e2e-Cred-S3cret'; then fail "the password is in the journal"; fi
	if C systemctl show -p Environment -p StatusText "$u" | grep -q 'e2e-Cred-S3cret'; then
		fail "the password is in the unit's environment or status"
	fi
	C systemctl stop "$u"
	C rm -rf "$d" /etc/resque
	C systemctl daemon-reload
	C sh -c 'kill "$(cat /run/redis-cred.pid)"' || true
}

check install c_install
check security c_security
check setup fixtures
check config_check c_config_check
check start c_start
check exec_job c_exec_job
check php_job c_php_job
check journal c_journal
check journal_text c_journal_text
check worker_queues c_worker_queues
check restarts c_restarts
check php_stop c_php_stop
check reload c_reload
check reload_invalid c_reload_invalid
check watchdog c_watchdog
check graceful_stop c_graceful_stop
check bad_config_start c_bad_config_start
check umbrella c_umbrella
check enable c_enable
check examples c_examples
check credential c_credential
check upgrade c_upgrade
check remove c_remove
check purge c_purge

if [ -f "$WORK/security.txt" ]; then
	step "systemd-analyze security resque@default.service: $(grep -h 'Overall exposure' "$WORK/security.txt" || echo '?')"
fi
journal -o short-monotonic >"$WORK/journal.txt" 2>&1 || true
if [ "$FAILED" -gt 0 ]; then
	step "journal of the resque units (last 60 lines; all of it: $WORK/journal.txt):"
	journal -u 'resque*' -n 60 -o short-monotonic 2>/dev/null | sed 's/^/    /' || true
fi

step "poweroff"
cleanup
trap - EXIT
[ "$FAILED" = 0 ] || echo "failed checks: ${FAILED_NAMES[*]}"
echo "e2e-systemd: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
