//! node-resque for the tests: `npm ci` in tests/node once per test process (under a file lock
//! so that test processes do not race), and a runner for its scripts with a time limit.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

pub fn ensure_node_resque() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = INSTALLED.get_or_init(install) {
        panic!("{e}");
    }
}

fn install() -> Result<(), String> {
    let dir = node_dir();
    let lock_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-interop-npm.lock");
    let lock_file = std::fs::File::create(&lock_path)
        .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", lock_path.display()))?;
    let lock_text = std::fs::read_to_string(dir.join("package-lock.json"))
        .map_err(|e| format!("cannot read tests/node/package-lock.json: {e}"))?;
    let stamp = dir.join("node_modules/.interop-stamp");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock_text.as_str())
        && dir.join("node_modules/node-resque/package.json").is_file()
    {
        return Ok(());
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run npm ci (are node and npm installed?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`npm ci` in {} failed ({}):\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::fs::write(&stamp, &lock_text).map_err(|e| format!("cannot write {stamp:?}: {e}"))?;
    Ok(())
}

/// A node script of tests/node started in the background.
pub fn spawn(script: &str, args: &[&str]) -> std::process::Child {
    ensure_node_resque();
    Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(node_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node")
}

/// Waits for a node script (killing it after `limit`); panics with its output unless it
/// succeeded; returns its stdout.
pub fn finish(mut child: std::process::Child, what: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node {what} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    assert!(
        status.success(),
        "node {what} failed ({status}):\nstdout: {out}\nstderr: {err}"
    );
    out
}

/// Runs a node script to the end.
pub fn run(script: &str, args: &[&str], limit: Duration) -> String {
    finish(spawn(script, args), &format!("{script} {args:?}"), limit)
}
