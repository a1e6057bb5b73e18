//! The client CLI against a real redis-server: enqueue, status, queues, workers, stats, failed,
//! config check — and every kind of bad input gets a one-line error, a non-zero exit code, and
//! leaves Redis unchanged.

mod common;

use common::{resque, run, stderr, stdout, write_config, RedisServer};
use redis::Commands;
use serde_json::Value;

fn setup() -> (RedisServer, tempfile::TempDir, std::path::PathBuf) {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("[redis]\nurl = \"{}\"\n", redis.url()));
    (redis, dir, config)
}

fn one_line_error(o: &std::process::Output) -> String {
    let err = stderr(o);
    assert_eq!(err.trim().lines().count(), 1, "error is one line: {err:?}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn enqueue_writes_php_resque_payload_and_tracked_status() {
    let (redis, _dir, config) = setup();
    let o = run(resque(&config).args([
        "enqueue",
        "default",
        "\\Common\\Job\\XxxxJob",
        r#"{"time":1,"array":{"test":"test"}}"#,
        "--track",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    assert_eq!(id.len(), 32);
    let mut c = redis.conn();
    let queued: Vec<String> = c.lrange("resque:queue:default", 0, -1).unwrap();
    assert_eq!(queued.len(), 1);
    let payload: Value = serde_json::from_str(&queued[0]).unwrap();
    assert_eq!(payload["class"], "\\Common\\Job\\XxxxJob");
    assert_eq!(
        payload["args"],
        serde_json::json!([{"time":1,"array":{"test":"test"}}])
    );
    assert_eq!(payload["id"], id.as_str());
    let queues: Vec<String> = c.smembers("resque:queues").unwrap();
    assert_eq!(queues, vec!["default"]);
    let status: String = c.get(format!("resque:job:{id}:status")).unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["status"], 1);
    assert_eq!(status["updated"], status["started"]);
    let ttl: i64 = c.ttl(format!("resque:job:{id}:status")).unwrap();
    assert_eq!(ttl, -1, "waiting statuses do not expire, as in php-resque");

    let o = run(resque(&config).args(["status", "--id", &id]));
    assert!(o.status.success());
    assert_eq!(stdout(&o).trim(), format!("Status of {id} is: waiting"));
    let o = run(resque(&config).args(["--json", "status", "--id", &id]));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["status"], "waiting");
    assert_eq!(v["code"], 1);

    // Untracked job: no status key is created.
    let o = run(resque(&config).args(["enqueue", "default", "Plain", "[]"]));
    let plain = stdout(&o).trim().to_string();
    let exists: bool = c.exists(format!("resque:job:{plain}:status")).unwrap();
    assert!(!exists);
    let o = run(resque(&config).args(["status", "--id", &plain]));
    assert_eq!(
        o.status.code(),
        Some(3),
        "not tracked has its own exit code"
    );
    assert!(stdout(&o).contains("not tracked"));
}

#[test]
fn namespace_and_database_are_configuration() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    // The seed's reality: keys under resque: in database 1.
    let config = write_config(
        dir.path(),
        &format!("[redis]\nurl = \"{}\"\nnamespace = \"\"\n", redis.url_db(1)),
    );
    let o = run(resque(&config).args(["enqueue", "mail", "Job", "{}"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let mut db1 = redis.conn_db(1);
    let len: usize = db1.llen("queue:mail").unwrap();
    assert_eq!(len, 1, "no namespace at all");
    let mut db0 = redis.conn();
    let keys: Vec<String> = db0.keys("*").unwrap();
    assert!(keys.is_empty(), "database 0 untouched: {keys:?}");
}

#[test]
fn queues_workers_stats_and_failed_list() {
    let (redis, _dir, config) = setup();
    let mut c = redis.conn();
    let fx = common::fixtures();
    // A php-resque failure record and a worker registered by php-resque.
    let failed = std::fs::read_to_string(fx.join("tp3-seed/failed.json")).unwrap();
    let _: () = c.rpush("resque:failed", failed.trim()).unwrap();
    let _: () = c.sadd("resque:workers", "vm:30583:default").unwrap();
    let worker = std::fs::read_to_string(fx.join("tp3-seed/worker.json")).unwrap();
    let _: () = c
        .set("resque:worker:vm:30583:default", worker.trim())
        .unwrap();
    let _: () = c.set("resque:stat:processed", 4).unwrap();
    let _: () = c.set("resque:stat:failed", 1).unwrap();
    run(resque(&config).args(["enqueue", "b", "X", "[]"]));
    run(resque(&config).args(["enqueue", "a", "X", "[]"]));
    run(resque(&config).args(["enqueue", "a", "X", "[]"]));

    let o = run(resque(&config).args(["--json", "queues"]));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"name":"a","length":2},{"name":"b","length":1}])
    );

    let o = run(resque(&config).args(["--json", "workers"]));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["id"], "vm:30583:default");
    assert_eq!(v[0]["pid"], 30583);
    assert_eq!(
        v[0]["working_on"]["payload"]["class"],
        "\\Common\\Job\\XxxxJob"
    );
    let o = run(resque(&config).arg("workers"));
    assert!(
        stdout(&o).contains("working on \\Common\\Job\\XxxxJob from default"),
        "{}",
        stdout(&o)
    );

    let o = run(resque(&config).args(["--json", "stats"]));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (
            v["processed"].as_u64(),
            v["failed"].as_u64(),
            v["pending"].as_u64()
        ),
        (Some(4), Some(1), Some(3))
    );
    assert_eq!(
        (
            v["workers"].as_u64(),
            v["working"].as_u64(),
            v["failed_list"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );

    let o = run(resque(&config).args(["failed", "list"]));
    assert!(
        stdout(&o).contains("FailJob boom: sample-fail"),
        "{}",
        stdout(&o)
    );
    let o = run(resque(&config).args(["--json", "failed", "show", "0"]));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["exception"], "Resque\\Exception");
    assert_eq!(v["worker"], "vm:30583:default");
    let o = run(resque(&config).args(["failed", "show", "7"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("no failed job at index 7"));
}

#[test]
fn failed_retry_keeps_the_job_id_and_remove_clear_work() {
    let (redis, _dir, config) = setup();
    let mut c = redis.conn();
    let failed = std::fs::read_to_string(common::fixtures().join("tp3-seed/failed.json")).unwrap();
    let id = "586e420b4b226ef0ed7b75b95f0defe9";
    let _: () = c.rpush("resque:failed", failed.trim()).unwrap();
    let _: () = c
        .set_ex(
            format!("resque:job:{id}:status"),
            r#"{"status":3,"updated":1}"#,
            86400,
        )
        .unwrap();
    let o = run(resque(&config).args(["failed", "retry", "0"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(id));
    let queued: Vec<String> = c.lrange("resque:queue:default", 0, -1).unwrap();
    assert_eq!(queued.len(), 1);
    let p: Value = serde_json::from_str(&queued[0]).unwrap();
    assert_eq!(p["id"], id, "retry keeps the id");
    assert_eq!(p["class"], "\\Common\\Job\\FailJob");
    assert_eq!(p["args"], serde_json::json!([{"token":"sample-fail"}]));
    let len: usize = c.llen("resque:failed").unwrap();
    assert_eq!(len, 0);
    let status: String = c.get(format!("resque:job:{id}:status")).unwrap();
    assert!(status.contains("\"status\":1"), "{status}");
    let ttl: i64 = c.ttl(format!("resque:job:{id}:status")).unwrap();
    assert_eq!(ttl, -1, "a waiting status does not expire");

    for _ in 0..3 {
        let _: () = c.rpush("resque:failed", failed.trim()).unwrap();
    }
    let o = run(resque(&config).args(["failed", "remove", "1"]));
    assert!(o.status.success());
    let len: usize = c.llen("resque:failed").unwrap();
    assert_eq!(len, 2);
    let o = run(resque(&config).args(["--json", "failed", "clear"]));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["removed"], 2);
}

#[test]
fn bad_queue_entries_and_status_garbage_are_reported_not_fatal() {
    let (redis, _dir, config) = setup();
    let mut c = redis.conn();
    let _: () = c.sadd("resque:queues", "default").unwrap();
    let _: () = c.rpush("resque:queue:default", "not json").unwrap();
    let _: () = c.rpush("resque:queue:default", "[1,2]").unwrap();
    let _: () = c.set("resque:job:abc:status", "garbage").unwrap();
    let _: () = c.rpush("resque:failed", "also garbage").unwrap();
    let before = redis.dump();

    let o = run(resque(&config).args(["--json", "queues"]));
    assert!(o.status.success());
    assert!(stdout(&o).contains("\"length\": 2"));
    let o = run(resque(&config).args(["status", "--id", "abc"]));
    assert_eq!(o.status.code(), Some(1));
    let err = one_line_error(&o);
    assert!(err.contains("job abc") && err.contains("not JSON"), "{err}");
    let o = run(resque(&config).args(["failed", "list"]));
    assert!(stdout(&o).contains("unreadable"));
    let o = run(resque(&config).args(["failed", "retry", "0"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("cannot be retried"));
    assert_eq!(redis.dump(), before, "nothing in Redis changed");
}

#[test]
fn an_empty_redis_lists_nothing() {
    let (_redis, _dir, config) = setup();
    for (cmd, expected) in [("queues", "no queues"), ("workers", "no workers")] {
        let o = run(resque(&config).arg(cmd));
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
        assert_eq!(stdout(&o).trim(), expected);
    }
    let o = run(resque(&config).args(["--json", "stats"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["pending"], 0);
}

#[test]
fn bad_enqueue_input_is_refused() {
    let (redis, _dir, config) = setup();
    for (args, needle) in [
        (
            vec!["enqueue", "default", "X", "{not json"],
            "ARGS_JSON is not valid JSON",
        ),
        (
            vec!["enqueue", "default", "X", "42"],
            "must be a JSON object or array",
        ),
        (
            vec!["enqueue", "bad queue", "X", "[]"],
            "is not a queue name",
        ),
        (
            vec!["enqueue", "default", "", "[]"],
            "class must not be empty",
        ),
    ] {
        let o = run(resque(&config).args(&args));
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            one_line_error(&o).contains(needle),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    assert!(redis.dump().is_empty());
}

#[test]
fn config_errors_name_file_line_and_key_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[worker]\ncount = 0\n", ":2: worker.count:"),
        (
            "[worker]\nqueue = [\"a\"]\n",
            ":2: worker.queue: unknown field",
        ),
        ("[worker]\ncount = \"many\"\n", ":2: worker.count:"),
        (
            "[worker]\nshutdown_timeout = \"later\"\n",
            ":2: worker.shutdown_timeout:",
        ),
        ("[redis]\nurl = \"http://localhost\"\n", "redis.url"),
        ("[redis]\nport = \"x\"\n", ":2: redis.port:"),
        (
            "[[handler]]\nclass = \"*\"\ntype = \"exec\"\n",
            ":2: handler.command:",
        ),
        (
            "[[handler]]\nclass = \"*\"\ntype = \"perl\"\n",
            ":3: handler.type:",
        ),
        ("[instance.mail]\ncount = -1\n", ":2: instance.mail.count:"),
        ("not toml at all [\n", "resque.toml:1"),
    ];
    for (text, needle) in cases {
        let config = write_config(dir.path(), text);
        let o = run(resque(&config).args(["config", "check"]));
        assert_eq!(o.status.code(), Some(78), "{text:?}: {}", stderr(&o));
        let err = one_line_error(&o);
        assert!(err.contains(&config.display().to_string()), "{err}");
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    // Environment and flags are named too.
    let config = write_config(dir.path(), "");
    let o = run(resque(&config).args(["config", "check"]).env("COUNT", "0"));
    assert_eq!(o.status.code(), Some(78));
    assert!(one_line_error(&o).contains("environment variable COUNT: worker.count"));
    let o = run(resque(&config).args(["--redis", "ftp://x", "config", "check"]));
    assert_eq!(o.status.code(), Some(78));
    let o = run(resque(&config).args(["config", "check", "--instance", "two words"]));
    assert_eq!(o.status.code(), Some(78));
    // A missing explicit file is an error too.
    let o = run(resque(&dir.path().join("nope.toml")).args(["config", "check"]));
    assert_eq!(o.status.code(), Some(78));
    assert!(one_line_error(&o).contains("cannot read"));
    let o = run(resque(&config).args(["config", "check"]));
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn unreachable_redis_and_wrong_password_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = write_config(
        dir.path(),
        &format!("[redis]\nurl = \"redis://:s3cret@127.0.0.1:{port}/0\"\n"),
    );
    let o = run(resque(&config).args(["queues"]));
    assert_eq!(o.status.code(), Some(69));
    let err = one_line_error(&o);
    assert!(
        err.contains("cannot reach Redis") && err.contains(&port.to_string()),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "password leaked: {err}");

    let redis = RedisServer::start_with(&["--requirepass", "right"]);
    let config = write_config(
        dir.path(),
        &format!(
            "[redis]\nurl = \"redis://:wrong@127.0.0.1:{}/0\"\n",
            redis.port
        ),
    );
    let o = run(resque(&config).args(["enqueue", "default", "X", "[]"]));
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    let err = one_line_error(&o);
    assert!(!err.contains("wrong@"), "password leaked: {err}");
    let config = write_config(
        dir.path(),
        &format!("[redis]\nport = {}\npassword = \"right\"\n", redis.port),
    );
    let o = run(resque(&config).args(["enqueue", "default", "X", "[]"]));
    assert!(o.status.success(), "{}", stderr(&o));
}
