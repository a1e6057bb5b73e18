//! Interop with a real node-resque (pinned in `tests/node/package.json`, installed with `npm ci`):
//! jobs and failure records written by one side are read, run and retried by the other.
//!
//! `tests/node/peer.js` is a small CLI around node-resque's `Queue` and `Worker`.

mod common;

use common::node::{ensure_node_resque, node_dir};
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A generous bound for anything to happen (a hang guard, not a speed assertion).
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `node peer.js ARGS…` against the Redis on `port`, killing it if it outlives [`LIMIT`];
/// panics with its output unless it succeeds.
fn peer(args: &[&str]) -> String {
    ensure_node_resque();
    let mut child = Command::new("node")
        .arg("peer.js")
        .args(args)
        .current_dir(node_dir())
        .env("PEER_TIMEOUT_MS", (LIMIT.as_millis() - 5000).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node peer.js {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success(),
        "node peer.js {args:?} failed ({status}):\nstdout: {out}\nstderr: {err}"
    );
    out
}

fn peer_json(args: &[&str]) -> Value {
    let out = peer(args);
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("node peer.js {args:?} printed no JSON ({e}): {out}"))
}

/// `node peer.js work PORT QUEUE N`: one JSON line per performed job.
fn node_work(port: &str, queue: &str, n: usize) -> Vec<Value> {
    let out = peer(&["work", port, queue, &n.to_string()]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect();
    assert_eq!(lines.len(), n, "node worker output: {out}");
    lines
}

/// Runs our CLI and returns its stdout, panicking with its output unless it succeeds.
fn ours(config: &Path, args: &[&str]) -> String {
    let out: Output = run(resque(config).args(args));
    assert!(
        out.status.success(),
        "resque {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn ours_json(config: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ours(config, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("resque {args:?}: not JSON ({e}): {out}"))
}

/// `resque --json queues` as name → length.
fn queue_lengths(config: &Path) -> Vec<(String, u64)> {
    ours_json(config, &["queues"])
        .as_array()
        .expect("queues is an array")
        .iter()
        .map(|q| {
            (
                q["name"].as_str().expect("name").to_string(),
                q["length"].as_u64().expect("length"),
            )
        })
        .collect()
}

fn failed_list(config: &Path) -> Vec<Value> {
    ours_json(config, &["failed", "list", "--count", "100"])
        .as_array()
        .expect("failed list is an array")
        .clone()
}

fn llen(redis: &RedisServer, key: &str) -> u64 {
    redis::cmd("LLEN")
        .arg(key)
        .query(&mut redis.conn())
        .unwrap()
}

fn get_u64(redis: &RedisServer, key: &str) -> u64 {
    let v: Option<u64> = redis::cmd("GET").arg(key).query(&mut redis.conn()).unwrap();
    v.unwrap_or(0)
}

/// A running `resque start` with its runtime directory and log in a temp dir.
struct Daemon {
    child: Child,
    log: PathBuf,
    _runtime: tempfile::TempDir,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let runtime = tempfile::tempdir().expect("runtime dir");
        let log = runtime.path().join("daemon.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = resque(config)
            .arg("start")
            .env("RUNTIME_DIRECTORY", runtime.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("start the daemon");
        Daemon {
            child,
            log,
            _runtime: runtime,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let child = &mut self.child;
        let status = wait_for("the daemon to exit", LIMIT, || child.try_wait().unwrap());
        assert!(
            status.success(),
            "daemon exited with {status}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn config_text(redis: &RedisServer, count: u32, handlers: &str) -> String {
    format!(
        "[redis]\nurl = \"{}\"\n\n[worker]\nqueues = [\"default\"]\ncount = {count}\n\n{handlers}",
        redis.url()
    )
}

/// A TOML string literal for a command argument.
fn toml_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

#[test]
fn job_we_enqueue_is_queued_and_performed_by_node_resque() {
    let redis = RedisServer::start();
    let port = redis.port.to_string();
    let config = write_config(redis.dir.path(), &config_text(&redis, 1, ""));

    let id = ours(
        &config,
        &[
            "enqueue",
            "default",
            r"Common\Job\Mail",
            r#"{"to":"a@example.com"}"#,
        ],
    );
    let id = id.trim();
    assert_eq!(id.len(), 32, "enqueue prints a php-resque id: {id:?}");

    let queued = peer_json(&["queued", &port, "default"]);
    let queued = queued.as_array().expect("queued is an array");
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["class"], r"Common\Job\Mail");
    assert_eq!(queued[0]["args"], json!([{"to": "a@example.com"}]));
    assert_eq!(queued[0]["id"], id);

    let done = node_work(&port, "default", 1);
    assert_eq!(done[0]["outcome"], "success", "{done:?}");
    assert_eq!(done[0]["queue"], "default");
    assert_eq!(done[0]["class"], r"Common\Job\Mail");
    // perform(...args): the one object php-resque-style args wrap.
    assert_eq!(done[0]["received"], json!([{"to": "a@example.com"}]));
    assert_eq!(done[0]["result"], "sent");

    assert_eq!(queue_lengths(&config), vec![("default".to_string(), 0)]);
    assert_eq!(get_u64(&redis, "resque:stat:processed"), 1);
    assert_eq!(llen(&redis, "resque:failed"), 0);
}

#[test]
fn job_node_resque_enqueues_runs_in_our_daemon_with_its_payload_unchanged() {
    let redis = RedisServer::start();
    let port = redis.port.to_string();
    let out = tempfile::tempdir().unwrap();
    let payload_file = out.path().join("payload.json");
    let env_file = out.path().join("env.txt");
    let script = format!(
        "cat > {dir}/payload.tmp && printf '%s\\n%s\\n' \"$RESQUE_JOB_CLASS\" \"$RESQUE_QUEUE\" > {env} \
         && mv {dir}/payload.tmp {payload}",
        dir = out.path().display(),
        env = env_file.display(),
        payload = payload_file.display()
    );
    let handlers = format!(
        "[[handler]]\nclass = \"Shell\\\\*\"\ntype = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", {}]\n",
        toml_str(&script)
    );
    let config = write_config(redis.dir.path(), &config_text(&redis, 2, &handlers));

    let args = json!({"report": 7, "to": "ops@example.com", "zh": "中文", "url": "http://a/b"});
    let enqueued = peer(&[
        "enqueue",
        &port,
        "default",
        r"Shell\Node\Report",
        &args.to_string(),
    ]);
    assert_eq!(enqueued.trim(), "true");

    // Our CLI lists the queue node-resque wrote, and the entry parses as node's shape.
    assert_eq!(queue_lengths(&config), vec![("default".to_string(), 1)]);
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg("resque:queue:default")
        .arg(0)
        .arg(-1)
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(raw.len(), 1);
    let entry: Value = serde_json::from_str(&raw[0]).unwrap();
    let keys: Vec<&str> = entry
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["class", "queue", "args"],
        "node's payload: {}",
        raw[0]
    );

    let daemon = Daemon::start(&config);
    let got = wait_for("the exec handler to write the payload", LIMIT, || {
        std::fs::read_to_string(&payload_file).ok()
    });
    // The handler got exactly the text node-resque wrote.
    assert_eq!(got, raw[0]);
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["class"], r"Shell\Node\Report");
    assert_eq!(got["queue"], "default");
    assert_eq!(got["args"], json!([args]));
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        "Shell\\Node\\Report\ndefault\n"
    );

    wait_for("the job to be recorded as processed", LIMIT, || {
        (get_u64(&redis, "resque:stat:processed") == 1).then_some(())
    });
    daemon.stop();
    assert_eq!(get_u64(&redis, "resque:stat:failed"), 0);
    assert_eq!(failed_list(&config), Vec::<Value>::new());
    assert_eq!(queue_lengths(&config), vec![("default".to_string(), 0)]);
}

#[test]
fn our_failure_records_are_read_and_retried_by_node_resque() {
    let redis = RedisServer::start();
    let port = redis.port.to_string();
    let handlers = "[[handler]]\nclass = \"Shell\\\\*\"\ntype = \"exec\"\n\
                    command = [\"/bin/sh\", \"-c\", \"cat >/dev/null; echo 'disk full' >&2; exit 3\"]\n";
    // One worker, so the two jobs fail in the order they were enqueued.
    let config = write_config(redis.dir.path(), &config_text(&redis, 1, handlers));

    let exit_id = ours(
        &config,
        &["enqueue", "default", r"Shell\Job\Fails", r#"{"n":1}"#],
    );
    let exit_id = exit_id.trim().to_string();
    let missing_id = ours(
        &config,
        &["enqueue", "default", r"Nobody\Job\Missing", r#"{"n":2}"#],
    );
    let missing_id = missing_id.trim().to_string();

    let daemon = Daemon::start(&config);
    wait_for("both jobs to fail", LIMIT, || {
        (llen(&redis, "resque:failed") == 2).then_some(())
    });
    daemon.stop();
    assert_eq!(queue_lengths(&config), vec![("default".to_string(), 0)]);

    // node-resque reads our records.
    let failed = peer_json(&["failed", &port]);
    let failed = failed.as_array().expect("failed is an array").clone();
    assert_eq!(failed.len(), 2, "{failed:?}");
    let exit3 = &failed[0];
    assert_eq!(exit3["queue"], "default");
    assert_eq!(exit3["payload"]["class"], r"Shell\Job\Fails");
    assert_eq!(exit3["payload"]["args"], json!([{"n": 1}]));
    assert_eq!(exit3["payload"]["id"], exit_id.as_str());
    assert!(
        exit3["exception"].as_str().is_some_and(|e| !e.is_empty()),
        "{exit3}"
    );
    assert_eq!(exit3["error"], "Job exited with exit code 3");
    assert!(
        exit3["backtrace"]
            .as_array()
            .is_some_and(|lines| lines.iter().any(|l| l.as_str() == Some("disk full"))),
        "the stderr tail is the backtrace: {exit3}"
    );
    assert!(exit3["worker"].as_str().is_some_and(|w| w.contains(':')));
    assert!(exit3["failed_at"].as_str().is_some_and(|t| !t.is_empty()));

    let missing = &failed[1];
    assert_eq!(missing["queue"], "default");
    assert_eq!(missing["payload"]["class"], r"Nobody\Job\Missing");
    assert_eq!(missing["payload"]["args"], json!([{"n": 2}]));
    assert_eq!(missing["payload"]["id"], missing_id.as_str());
    assert!(
        missing["error"]
            .as_str()
            .is_some_and(|e| e.contains(r"Nobody\Job\Missing")),
        "{missing}"
    );

    // node-resque's retryAndRemoveFailed finds our record by its exact JSON and requeues it.
    let retried = peer(&["retry-first", &port]);
    assert_eq!(retried.trim(), "true");
    assert_eq!(queue_lengths(&config), vec![("default".to_string(), 1)]);
    let queued = peer_json(&["queued", &port, "default"]);
    assert_eq!(
        queued,
        json!([{"class": r"Shell\Job\Fails", "queue": "default", "args": [{"n": 1}]}])
    );
    let left = failed_list(&config);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["payload"]["class"], r"Nobody\Job\Missing");
    assert_eq!(left[0]["payload"]["id"], missing_id.as_str());
}

#[test]
fn our_retry_requeues_a_job_node_resque_failed() {
    let redis = RedisServer::start();
    let port = redis.port.to_string();
    let config = write_config(redis.dir.path(), &config_text(&redis, 1, ""));

    peer(&[
        "enqueue",
        &port,
        "default",
        r"Node\Job\Boom",
        r#"{"reason":"bad"}"#,
    ]);
    let done = node_work(&port, "default", 1);
    assert_eq!(done[0]["outcome"], "failure", "{done:?}");
    assert_eq!(done[0]["received"], json!([{"reason": "bad"}]));

    // Our CLI reads node-resque's record.
    let failed = failed_list(&config);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["index"], 0);
    assert_eq!(failed[0]["queue"], "default");
    assert_eq!(failed[0]["exception"], "Error");
    assert_eq!(failed[0]["error"], "boom: bad");
    assert_eq!(failed[0]["payload"]["class"], r"Node\Job\Boom");
    assert_eq!(failed[0]["payload"]["args"], json!([{"reason": "bad"}]));
    assert!(failed[0]["backtrace"].as_array().is_some_and(|lines| lines
        .iter()
        .any(|l| l.as_str().is_some_and(|l| l.contains("peer.js")))));

    ours(&config, &["failed", "retry", "0"]);
    assert_eq!(failed_list(&config), Vec::<Value>::new());
    assert_eq!(peer_json(&["failed", &port]), json!([]));
    assert_eq!(queue_lengths(&config), vec![("default".to_string(), 1)]);
    let queued = peer_json(&["queued", &port, "default"]);
    let queued = queued.as_array().expect("queued is an array");
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["class"], r"Node\Job\Boom");
    assert_eq!(queued[0]["args"], json!([{"reason": "bad"}]));
    assert_eq!(queued[0]["queue"], "default");

    // node-resque runs the retried job again with the same arguments.
    let again = node_work(&port, "default", 1);
    assert_eq!(again[0]["outcome"], "failure", "{again:?}");
    assert_eq!(again[0]["class"], r"Node\Job\Boom");
    assert_eq!(again[0]["received"], json!([{"reason": "bad"}]));
    assert_eq!(llen(&redis, "resque:failed"), 1);
    assert_eq!(queue_lengths(&config), vec![("default".to_string(), 0)]);
}
