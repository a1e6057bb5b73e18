//! Redis Sentinel, for real: Debian's redis-server and redis-sentinel on loopback — one
//! primary, one replica, three sentinels — and the real daemon draining 5,000 exec jobs while
//! `SENTINEL FAILOVER` is forced twice and the primary of the moment is then SIGKILLed. Every
//! job runs at least once, none is lost; duplicates are counted (they can only come from an
//! outcome the killed primary acknowledged but had not yet replicated). The CLI works through
//! Sentinel before and after.

mod common;

use common::{resque, run, stdout, wait_for, write_config, Daemon, RedisServer};
use redis::Commands;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct SentinelNode {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SentinelNode {
    fn start(master_port: u16) -> SentinelNode {
        let dir = tempfile::tempdir().unwrap();
        let port = RedisServer::unused_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 4000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel must be installed (apt-get install redis-sentinel)");
        SentinelNode {
            child,
            port,
            _dir: dir,
        }
    }

    /// A connection, once the sentinel listens.
    fn conn(&self) -> redis::Connection {
        wait_for("the sentinel to listen", Duration::from_secs(30), || {
            redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
                .ok()?
                .get_connection()
                .ok()
        })
    }

    fn master_port(&self) -> Option<u16> {
        let mut c = self.conn();
        let addr: Option<Vec<String>> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query(&mut c)
            .ok()?;
        addr?.get(1)?.parse().ok()
    }
}

impl Drop for SentinelNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn info(port: u16, section: &str) -> String {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("INFO").arg(section).query(&mut c))
        .unwrap_or_default()
}

fn runs(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("runs"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Forces a failover and waits until every sentinel names the new master, it answers as one,
/// and the demoted one replicates from it again (a second failover before that would promote a
/// replica still holding its old data — a test artefact, not what the daemon can help).
fn failover(sentinels: &[SentinelNode], from: u16) -> u16 {
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("mymaster")
        .query(&mut sentinels[0].conn())
        .unwrap();
    let to = wait_for("the failover", Duration::from_secs(60), || {
        let ports: Vec<Option<u16>> = sentinels.iter().map(SentinelNode::master_port).collect();
        match ports[0] {
            Some(p) if p != from && ports.iter().all(|q| *q == Some(p)) => {
                info(p, "replication").contains("role:master").then_some(p)
            }
            _ => None,
        }
    });
    wait_for(
        "the demoted master in sync",
        Duration::from_secs(60),
        || {
            let replication = info(from, "replication");
            (replication.contains("role:slave")
                && replication.contains(&format!("master_port:{to}"))
                && replication.contains("master_link_status:up")
                && replication.contains("master_sync_in_progress:0"))
            .then_some(())
        },
    );
    to
}

/// Pushes `n` php-resque jobs to the master on `port` and, if `replicated`, waits for a replica
/// to have them.
fn push_batch(port: u16, next: &mut usize, n: usize, ids: &mut Vec<String>, replicated: bool) {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let mut pipe = redis::pipe();
    pipe.sadd("resque:queues", "default").ignore();
    for i in *next..*next + n {
        let id = format!("job{i:05}");
        pipe.rpush(
            "resque:queue:default",
            format!(r#"{{"class":"Job","args":[{{"n":{i}}}],"id":"{id}"}}"#),
        )
        .ignore();
        ids.push(id);
    }
    *next += n;
    let _: () = pipe.query(&mut c).unwrap();
    if replicated {
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut c).unwrap();
        assert_eq!(acked, 1, "a replica has the batch");
    }
}

/// Waits (bounded) until every id ran.
fn wait_all(dir: &Path, ids: &[String], daemon: &Daemon, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = runs(dir);
        let seen: std::collections::HashSet<&str> = r.iter().map(String::as_str).collect();
        let missing = ids.iter().filter(|id| !seen.contains(id.as_str())).count();
        if missing == 0 {
            return;
        }
        if Instant::now() > deadline {
            let log = daemon.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{missing} jobs never ran waiting for {what}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_runs(dir: &Path, n: usize, daemon: &Daemon, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while runs(dir).len() <= n {
        if Instant::now() > deadline {
            let log = daemon.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "timed out waiting for {what}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_drain_survives_two_forced_failovers_and_a_killed_primary() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(a.port)
        .query(&mut b.conn())
        .unwrap();
    wait_for("the replica in sync", Duration::from_secs(30), || {
        info(b.port, "replication")
            .contains("master_link_status:up")
            .then_some(())
    });
    let sentinels: Vec<SentinelNode> = (0..3).map(|_| SentinelNode::start(a.port)).collect();
    wait_for(
        "the sentinels to know each other and the replica",
        Duration::from_secs(60),
        || {
            let mut c = sentinels[0].conn();
            let peers: Vec<redis::Value> = redis::cmd("SENTINEL")
                .arg("sentinels")
                .arg("mymaster")
                .query(&mut c)
                .ok()?;
            let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                .arg("replicas")
                .arg("mymaster")
                .query(&mut c)
                .ok()?;
            (peers.len() == 2 && replicas.len() == 1).then_some(())
        },
    );

    let dir = tempfile::tempdir().unwrap();
    let list = sentinels
        .iter()
        .map(|s| format!("\"127.0.0.1:{}\"", s.port))
        .collect::<Vec<_>>()
        .join(", ");
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"[redis]
sentinels = [{list}]
master_name = "mymaster"
connect_timeout = "1s"
command_timeout = "1s"
[worker]
queues = ["default"]
count = 4
[[handler]]
class = "*"
type = "exec"
command = ["/bin/sh", "-c", 'cat >/dev/null; sleep 0.02; echo "$RESQUE_JOB_ID" >> {dir}/runs']
"#,
            dir = dir.path().display()
        ),
    );

    // The CLI through Sentinel, before.
    let o = run(resque(&cfg).args(["enqueue", "default", "Job", "[]"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut ids = vec![stdout(&o).trim().to_string()];

    // 5,000 jobs in batches, each pushed to the master of the moment and replicated before
    // anything fails: 2,000 before the first failover, 1,000 after each forced one (they must
    // run: workers back at work on the new master), 1,000 after the crash.
    let mut next = 0;
    push_batch(a.port, &mut next, 2000, &mut ids, true);

    let daemon = Daemon::start(&cfg, &[]);
    let started = Instant::now();
    wait_runs(dir.path(), 500, &daemon, "some jobs");
    let first = failover(&sentinels, a.port);
    eprintln!(
        "failover 1 → {first} after {:?}, {} ran",
        started.elapsed(),
        runs(dir.path()).len()
    );
    push_batch(first, &mut next, 1000, &mut ids, true);
    wait_all(
        dir.path(),
        &ids,
        &daemon,
        "the jobs pushed after failover 1",
    );
    let second = failover(&sentinels, first);
    eprintln!(
        "failover 2 → {second} after {:?}, {} ran",
        started.elapsed(),
        runs(dir.path()).len()
    );
    push_batch(second, &mut next, 1000, &mut ids, true);
    let at = runs(dir.path()).len();
    wait_runs(dir.path(), at + 300, &daemon, "progress after failover 2");
    // The primary of the moment dies (no failover handshake: a crash).
    let killed = if second == a.port { &a } else { &b };
    let survivor = if second == a.port { &b } else { &a };
    let pid: i32 = info(killed.port, "server")
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("pid of the primary");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eprintln!(
        "killed the primary on {} after {:?}",
        killed.port,
        started.elapsed()
    );
    // Sentinel promotes the survivor; the last batch goes there.
    wait_for("the survivor promoted", Duration::from_secs(60), || {
        (sentinels[0].master_port() == Some(survivor.port)
            && info(survivor.port, "replication").contains("role:master"))
        .then_some(())
    });
    // No replica is left to acknowledge this one.
    push_batch(survivor.port, &mut next, 1000, &mut ids, false);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = runs(dir.path());
        let seen: std::collections::HashSet<&str> = r.iter().map(String::as_str).collect();
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| !seen.contains(id.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let log = daemon.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "{} jobs never ran (e.g. {:?}); sentinels say master {:?}; survivor queue {:?}\n{}",
                missing.len(),
                &missing[..missing.len().min(5)],
                sentinels[1].master_port(),
                survivor.conn().llen::<_, usize>("resque:queue:default"),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = runs(dir.path());
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &r {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<(&&str, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "{} pushed, {} runs, {} ran more than once (outcomes lost with the killed primary or a demotion): {twice:?}",
        ids.len(),
        r.len(),
        twice.len()
    );
    assert!(
        ids.iter().all(|id| seen.contains_key(id.as_str())),
        "a job was lost"
    );
    // Nothing left behind on the survivor.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut s = survivor.conn();
        let queued: Option<usize> = s.llen("resque:queue:default").ok();
        let lists: Vec<String> = s.keys("resque:inflight:*").unwrap_or_default();
        let held: Vec<(String, Vec<String>)> = lists
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    s.lrange::<_, Vec<String>>(k, 0, -1).unwrap_or_default(),
                )
            })
            .filter(|(_, n)| !n.is_empty())
            .collect();
        if queued == Some(0) && held.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let log = daemon.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "left behind: queued {queued:?}, held {held:?}; role {}\n{}",
                info(survivor.port, "replication")
                    .lines()
                    .next()
                    .unwrap_or(""),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The CLI through Sentinel, after.
    let o = run(resque(&cfg).arg("stats"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(resque(&cfg).args(["enqueue", "default", "Job", "[]"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let last = stdout(&o).trim().to_string();
    wait_for(
        "a job enqueued after everything",
        Duration::from_secs(30),
        || runs(dir.path()).contains(&last).then_some(()),
    );
    let log = daemon.log_text();
    assert!(
        log.contains("dropping the Redis connection"),
        "the switches are logged"
    );
}
