//! docs/thinkphp.md, run as written: `scripts/thinkphp-guide.sh` copies the ThinkPHP-shaped
//! fixture app (tests/thinkphp/app), takes the guide's /etc/resque.toml from the guide itself,
//! and runs each step's commands and checks against a real redis-server, php and the built
//! `resque`, so the guide cannot drift from what works.

mod common;

use common::{resque_bin, RedisServer};
use std::process::Command;

#[test]
fn the_thinkphp_guide_works_as_written() {
    let redis = RedisServer::start();
    let work = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/thinkphp-guide.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .arg(resque_bin())
        .arg(redis.port.to_string())
        .arg(work.path());
    // The guide's commands run with the user's environment; php-resque's variables must not
    // leak in from the test's.
    for var in [
        "QUEUE",
        "COUNT",
        "REDIS_BACKEND",
        "REDIS_BACKEND_DB",
        "PREFIX",
        "RESQUE_CONFIG",
        "NOTIFY_SOCKET",
        "RUNTIME_DIRECTORY",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run scripts/thinkphp-guide.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(work.path().join("daemon.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the guide failed:\n{stdout}\n{stderr}\ndaemon log:\n{log}"
    );
    assert!(stdout.contains("== the guide works as written"), "{stdout}");
}
