#!/usr/bin/env bash
# The test command of README.md: on a fresh Debian machine with a Rust toolchain, installs what
# the tests need when it is missing, then runs `cargo test` (arguments are passed on, e.g.
# `./scripts/test.sh --test cli`).
#
#   redis-server  every integration test starts its own, on a free loopback port
#   redis-sentinel the Sentinel failover test (three sentinels of its own)
#   php-cli       the PHP handler tests
#   nodejs, npm   the node-resque interop tests (node-resque itself comes from npm)
#   systemd       systemd-journald, for the journald test (present on Debian)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
# Wait up to 5 minutes for another apt or dpkg (unattended-upgrades, another job) to finish.
APT=(apt-get -o DPkg::Lock::Timeout=300 -y -qq)
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
command -v php >/dev/null 2>&1 || missing+=(php-cli)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x /lib/systemd/systemd-journald ] || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
	echo "== installing ${missing[*]}"
	$SUDO env DEBIAN_FRONTEND=noninteractive "${APT[@]}" update
	$SUDO env DEBIAN_FRONTEND=noninteractive "${APT[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
fi
# The distribution's redis-server may run on 6379; the tests use their own, so it may stay.

exec cargo test "$@"
