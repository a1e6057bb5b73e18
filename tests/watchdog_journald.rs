//! The watchdog is withheld while a worker is wedged; job log lines reach a real journald with
//! their RESQUE_JOB_ID field (not JOB_ID: systemd uses that for its job numbers).

mod common;

use common::{resque, run, stdout, write_config, RedisServer};
use resque::systemd::Notifier;
use resque::{Handler, Job, JobFailure, Supervisor};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Blocks its thread: the worker task cannot tick while it runs.
struct Wedge;

#[async_trait::async_trait]
impl Handler for Wedge {
    async fn perform(&self, _job: &Job) -> Result<(), JobFailure> {
        std::thread::sleep(Duration::from_secs(12));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_watchdog_while_a_worker_slot_is_wedged() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&path).unwrap();
    let config = common::library_config(&redis, "queues = [\"default\"]");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let supervisor = Supervisor::new(config.clone())
        .notifier(Notifier::new(
            Some(path.clone()),
            Some(Duration::from_secs(1)),
        ))
        .handle("Wedge", Arc::new(Wedge));
    let task = tokio::spawn(supervisor.run(rx));

    let mut buf = [0u8; 4096];
    // READY, then regular pings.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), sock.recv(&mut buf))
            .await
            .expect("notification")
            .unwrap();
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break;
        }
    }
    let mut client = resque::Client::connect(&config.redis).await.unwrap();
    client
        .enqueue("default", "Wedge", None, false)
        .await
        .unwrap();
    let started = Instant::now();
    let mut pings = Vec::new();
    while started.elapsed() < Duration::from_secs(17) {
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await
        {
            if &buf[..n] == b"WATCHDOG=1\n" {
                pings.push(started.elapsed());
            }
        }
    }
    // While the worker was stuck (from ~8 s, when its last tick is older than the wedge limit —
    // command_timeout 5 s + 2 s —, until the job ends at ~12 s) no ping was sent; before and
    // after, pings came every half second.
    let longest_gap = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest_gap >= Duration::from_secs(2),
        "the watchdog kept being fed while a worker was wedged: {pings:?}"
    );
    assert!(
        pings.iter().any(|t| *t < Duration::from_secs(4))
            && pings.iter().any(|t| *t > Duration::from_secs(13)),
        "pings before and after the wedge: {pings:?}"
    );
    tx.send(resque::supervisor::Command::Stop { graceful: true })
        .await
        .unwrap();
    task.await.unwrap().unwrap();
}

/// A standalone systemd-journald in a private mount namespace (root only; see
/// shared/reference/systemd-testing.md §6); the daemon logs to it and `journalctl RESQUE_JOB_ID=…`
/// finds the job's output line and its completion.
#[test]
fn job_lines_reach_journald_with_their_job_id() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test needs root (unshare -m and systemd-journald)");
    }
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[redis]\nurl = \"{}\"\n[worker]\nqueues = [\"default\"]\n[[handler]]\nclass = \"*\"\ntype = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"echo hello-from-the-job\"]\n",
            redis.url()
        ),
    );
    let o = run(resque(&config).args(["enqueue", "default", "Journal\\Job", "{}"]));
    let id = stdout(&o).trim().to_string();
    let script = format!(
        r#"set -e
mount -t tmpfs tmpfs /run/systemd 2>/dev/null || {{ mkdir -p /run/systemd; mount -t tmpfs tmpfs /run/systemd; }}
mkdir -p /run/systemd/journal /run/log; mount -t tmpfs tmpfs /run/log
mount -t tmpfs tmpfs /var/log/journal 2>/dev/null || true
/lib/systemd/systemd-journald & JD=$!
for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
RESQUE_LOG_TARGET=journald RUNTIME_DIRECTORY={dir}/run {bin} --config {config} start &
D=$!
for i in $(seq 200); do
  journalctl -q -o cat RESQUE_JOB_ID={id} 2>/dev/null | grep -q "job complete" && break
  sleep 0.1
done
kill -TERM $D; wait $D || true
journalctl -q -o json RESQUE_JOB_ID={id}
kill $JD
"#,
        dir = dir.path().display(),
        bin = common::resque_bin().display(),
        config = config.display(),
        id = id
    );
    let o = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &script])
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("unshare");
    let out = stdout(&o);
    let entries: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let messages: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["MESSAGE"].as_str())
        .collect();
    assert!(
        messages.contains(&"hello-from-the-job"),
        "{messages:?}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The message alone (journalctl -o cat) says which job of which class.
    assert!(
        messages
            .iter()
            .any(|m| m.contains("job complete") && m.contains(&id) && m.contains("Journal\\Job")),
        "{messages:?}"
    );
    for e in &entries {
        assert_eq!(e["RESQUE_JOB_ID"], id.as_str());
        assert_eq!(e["RESQUE_JOB_CLASS"], "Journal\\Job");
        assert_eq!(e["RESQUE_QUEUE"], "default");
        assert!(e["RESQUE_WORKER"].as_str().unwrap().ends_with(":default"));
        assert!(e.get("JOB_ID").is_none(), "JOB_ID is systemd's: {e}");
        assert_eq!(e["SYSLOG_IDENTIFIER"], "resque");
    }
}
