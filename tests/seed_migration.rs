//! What the seed's users met when they moved to resque, reproduced with the real daemon:
//! a ThinkPHP Queue controller without the `runner` case (tests/thinkphp: the seed's own
//! controller), and Ruby's `pause-all-workers` in its other spellings.

mod common;

use common::{resque, run, status_of, stderr, stdout, wait_for, write_config, Daemon, RedisServer};
use redis::Commands;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/thinkphp");

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-r")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Enqueues as the app does (php-resque: push, then the WAITING status); returns the id.
fn app_enqueue(app: &Path, port: u16, class: &str, args: &str) -> String {
    let out = Command::new("php")
        .current_dir(app)
        .env("FIXTURE_REDIS_PORT", port.to_string())
        .args(["enqueue.php", "default", class, args])
        .output()
        .expect("php");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn processes_running(pattern: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_queue_controller_without_the_runner_case_is_stopped_and_named() {
    // Seen: `php resque runner` fell through to start() and ran a whole php-resque worker on `*`
    // inside each daemon slot; the rogue workers took the jobs, and the daemon waited forever for
    // a PHP process that never said it was ready.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let app: PathBuf = dir.path().join("app");
    copy_dir(&Path::new(FIXTURE).join("app"), &app);
    std::fs::create_dir_all(app.join("Application/Home/Controller")).unwrap();
    std::fs::copy(
        Path::new(FIXTURE).join("seed/QueueController.class.php"),
        app.join("Application/Home/Controller/QueueController.class.php"),
    )
    .unwrap();
    let ids: Vec<String> = (0..3)
        .map(|i| {
            app_enqueue(
                &app,
                redis.port,
                "\\Common\\Job\\XxxxJob",
                &format!("{{\"n\":{i}}}"),
            )
        })
        .collect();
    let config = write_config(
        dir.path(),
        &format!(
            r#"[redis]
url = "{url}"
[worker]
queues = ["default"]
count = 2
[[handler]]
class = '*'
type = "php"
command = ["php", "{app}/resque", "runner"]
working_dir = "{app}"
"#,
            url = redis.url_db(1),
            app = app.display()
        ),
    );
    let port = redis.port.to_string();
    let mut daemon = Daemon::start(&config, &[("FIXTURE_REDIS_PORT", &port)]);
    let mut db1 = redis.conn_db(1);
    let failed: Vec<String> = wait_for("every job failed", LIMIT, || {
        let failed: Vec<String> = db1.lrange("resque:failed", 0, -1).unwrap();
        (failed.len() == ids.len()).then_some(failed)
    });
    for record in &failed {
        let record: serde_json::Value = serde_json::from_str(record).unwrap();
        let error = record["error"].as_str().unwrap();
        for part in [
            "PHP worker failed to start",
            "resque runner` started a php-resque worker instead of resque's runner",
            "*** Starting worker",
            "`runner` case",
        ] {
            assert!(error.contains(part), "{part:?} in {error}");
        }
    }
    // The rogue loops took nothing and are gone; no job ran anywhere.
    let took = std::fs::read_to_string(app.join("Application/Runtime/php-resque-took.log"))
        .unwrap_or_default();
    assert_eq!(took, "", "php-resque loops took jobs");
    assert!(!app.join("Application/Runtime/ran.log").exists());
    let pattern = format!("{}/resque runner", app.display());
    let left = wait_for("no rogue PHP processes", LIMIT, || {
        let left = processes_running(&pattern);
        left.is_empty().then_some(left)
    });
    assert!(left.is_empty());
    for id in &ids {
        let status: String = db1.get(format!("resque:job:{id}:status")).unwrap();
        assert!(status.contains("\"status\":3"), "{status}");
    }
    // The daemon itself stays up and stops cleanly.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0), "{}", daemon.log_text());
    assert!(
        daemon.log_text().contains("started a php-resque worker"),
        "{}",
        daemon.log_text()
    );
}

fn record_config(redis: &RedisServer, dir: &Path) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"[redis]
url = "{url}"
[worker]
queues = ["default"]
interval = 1
[[handler]]
class = "Record"
type = "exec"
command = ["/bin/sh", "-c", "cat >/dev/null"]
"#,
            url = redis.url()
        ),
    )
}

fn enqueue(config: &Path) -> String {
    let o = run(resque(config).args(["enqueue", "default", "Record", "[]", "--track"]));
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().to_string()
}

#[test]
fn pause_all_workers_is_read_as_ruby_reads_it() {
    // Ruby: `redis.get('pause-all-workers').to_s.strip.casecmp('true').zero?` — any case,
    // surrounding whitespace. Seen: only exactly "true" paused us.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = record_config(&redis, dir.path());
    let daemon = Daemon::start(&config, &[]);
    daemon.wait_control_socket();
    let mut c = redis.conn();
    for value in ["TRUE", " true\n", "True", "\ttrue "] {
        let _: () = c.set("resque:pause-all-workers", value).unwrap();
        let id = enqueue(&config);
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(status_of(&redis, &id), Some(1), "{value:?} must pause");
        let _: () = c.del("resque:pause-all-workers").unwrap();
        wait_for("the job after unpausing", LIMIT, || {
            (status_of(&redis, &id) == Some(4)).then_some(())
        });
    }
    for value in ["false", "yes", "truex", ""] {
        let _: () = c.set("resque:pause-all-workers", value).unwrap();
        let id = enqueue(&config);
        wait_for(
            &format!("the job with pause-all-workers = {value:?}"),
            LIMIT,
            || (status_of(&redis, &id) == Some(4)).then_some(()),
        );
    }
}
