//! Every record in the fixtures (recorded from php-resque TP3 / 1.3.6 / chrisboulton, Ruby resque
//! 3.0, node-resque 9.7 and pyres 1.5) parses, and what we write has the shapes php-resque writes.

mod common;

use resque::protocol::{
    commands::Outcome, FailureRecord, JobStatus, Keys, Payload, StatusRecord, WorkerId,
    WorkerRecord,
};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files(name_filter: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(common::fixtures()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if name_filter(f.file_name().unwrap().to_str().unwrap()) {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

fn object_keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn every_queue_payload_parses() {
    let found = files(|n| n == "queue-payload.json" || n == "payload.json");
    assert_eq!(found.len(), 5, "{found:?}");
    for f in found {
        let text = read(&f);
        let p = Payload::parse(text.trim()).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!p.class().is_empty());
        assert_eq!(p.raw(), text.trim(), "the original text is kept");
    }
    let seed = Payload::parse(&read(&common::fixtures().join("tp3-seed/payload.json"))).unwrap();
    assert_eq!(seed.class(), "\\Common\\Job\\XxxxJob");
    assert_eq!(seed.id(), Some("02488f02bb8828615c669b30d6f64458"));
    assert_eq!(seed.php_args()["array"]["test"], "test");
    let php = Payload::parse(
        read(&common::fixtures().join("php-resque-1.3.6/queue-payload.json")).trim(),
    )
    .unwrap();
    assert_eq!(php.php_args()["text"], "héllo", "\\uXXXX escapes decode");
    assert_eq!(php.status_prefix(), Some(""));
    let node =
        Payload::parse(read(&common::fixtures().join("node-resque-9.7/queue-payload.json")).trim())
            .unwrap();
    assert_eq!(node.queue(), Some("bench"));
    assert_eq!(node.id(), None);
    let pyres =
        Payload::parse(read(&common::fixtures().join("pyres-1.5/queue-payload.json")).trim())
            .unwrap();
    assert!(
        pyres.fields().contains_key("enqueue_timestamp"),
        "unknown fields are kept"
    );
}

#[test]
fn ruby_payloads_and_failures_parse() {
    let enqueue: Value = serde_json::from_str(&read(
        &common::fixtures().join("ruby-resque-3.0/01-enqueue.json"),
    ))
    .unwrap();
    let mut n = 0;
    for (_, list) in enqueue["queue_payloads_raw"].as_object().unwrap() {
        for raw in list.as_array().unwrap() {
            let p = Payload::parse(raw.as_str().unwrap()).unwrap();
            assert_eq!(p.id(), None);
            n += 1;
        }
    }
    assert_eq!(n, 4);
    for name in ["04-failed.json", "04b-failed-requeued.json"] {
        let v: Value = serde_json::from_str(&read(
            &common::fixtures().join("ruby-resque-3.0").join(name),
        ))
        .unwrap();
        for raw in v["failed_list_raw"].as_array().unwrap() {
            let r = FailureRecord::parse(raw.as_str().unwrap()).unwrap();
            assert_eq!(r.exception, "ArgumentError");
            assert_eq!(r.class(), Some("SampleFailJob"));
        }
    }
    let requeued: Value = serde_json::from_str(&read(
        &common::fixtures().join("ruby-resque-3.0/04b-failed-requeued.json"),
    ))
    .unwrap();
    let first = FailureRecord::parse(requeued["failed_list_raw"][0].as_str().unwrap()).unwrap();
    assert_eq!(first.retried_at.as_deref(), Some("2026/11/25 08:13:36 UTC"));
}

/// Walks every keyspace dump and parses every value by what its key says it is.
#[test]
fn every_keyspace_record_parses() {
    let keys = Keys::new("resque");
    let mut checked = 0;
    for f in files(|n| n.starts_with("keyspace-")) {
        let dump: Value = serde_json::from_str(&read(&f)).unwrap();
        for (key, entry) in dump.as_object().unwrap() {
            let values: Vec<String> = match (&entry["value"], &entry["head"], &entry["members"]) {
                (Value::String(s), _, _) => vec![s.clone()],
                (_, Value::Array(items), _) => items
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect(),
                (_, _, Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect(),
                _ => continue,
            };
            let rest = key.strip_prefix(keys.prefix()).unwrap();
            for value in values {
                if keys.queue_name_of(key).is_some() {
                    Payload::parse(&value).unwrap_or_else(|e| panic!("{key}: {e}"));
                } else if rest.starts_with("job:") && rest.ends_with(":status") {
                    StatusRecord::parse(&value).unwrap_or_else(|e| panic!("{key}: {e}"));
                } else if rest == "failed" {
                    FailureRecord::parse(&value).unwrap_or_else(|e| panic!("{key}: {e}"));
                } else if rest == "workers" {
                    WorkerId::parse(&value).unwrap_or_else(|e| panic!("{key}: {e}"));
                } else if rest.starts_with("worker:")
                    && !rest.ends_with(":started")
                    && !rest.starts_with("worker:ping:")
                {
                    WorkerRecord::parse(&value).unwrap_or_else(|e| panic!("{key}: {e}"));
                    WorkerId::parse(rest.strip_prefix("worker:").unwrap()).unwrap();
                } else if rest.starts_with("stat:") {
                    value
                        .parse::<u64>()
                        .unwrap_or_else(|e| panic!("{key}: {e}"));
                } else {
                    continue;
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 40, "only {checked} records checked");
}

#[test]
fn every_status_parses() {
    let found = files(|n| n.starts_with("status-") && n.ends_with(".json"));
    assert_eq!(found.len(), 13, "{found:?}");
    for f in found {
        let r =
            StatusRecord::parse(read(&f).trim()).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.file_name().unwrap().to_str().unwrap();
        let expected = if name.contains("complete") {
            JobStatus::Complete
        } else if name.contains("failed") {
            JobStatus::Failed
        } else if name.contains("running") || name.contains("plain-exception") {
            JobStatus::Running
        } else {
            JobStatus::Waiting
        };
        assert_eq!(r.job_status(), expected, "{}", f.display());
    }
    assert!(StatusRecord::parse("garbage").is_err());
    assert!(StatusRecord::parse("{\"status\":9}").is_err());
    assert!(StatusRecord::parse("[]").is_err());
}

#[test]
fn every_failure_and_worker_record_parses() {
    for f in files(|n| n == "failed.json") {
        let r = FailureRecord::parse(read(&f).trim())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            !r.error.is_empty() && !r.failed_at.is_empty(),
            "{}",
            f.display()
        );
        assert!(r.class().is_some());
    }
    for f in files(|n| n == "worker-key-while-running.json" || n == "worker.json") {
        let r =
            WorkerRecord::parse(read(&f).trim()).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!r.queue.is_empty());
        assert!(r.payload.get("class").is_some());
    }
}

/// What we write has php-resque's keys, in php-resque's order.
#[test]
fn our_records_have_php_resque_shapes() {
    let fx = common::fixtures();
    // Payload: php-resque 1.3.6's five fields.
    let theirs: Value =
        serde_json::from_str(read(&fx.join("php-resque-1.3.6/queue-payload.json")).trim()).unwrap();
    let ours = Payload::new_php(
        "NoopJob",
        serde_json::json!({"a": 1}),
        "0123456789abcdef0123456789abcdef",
    );
    let ours_v: Value = serde_json::from_str(ours.raw()).unwrap();
    assert_eq!(object_keys(&ours_v), object_keys(&theirs));
    assert!(
        ours_v["args"].as_array().unwrap().len() == 1,
        "args wrapped as [A]"
    );
    assert!(ours_v["queue_time"].is_f64());

    // Statuses: TP3's shapes.
    let waiting: Value =
        serde_json::from_str(read(&fx.join("tp3-seed/status-waiting.json")).trim()).unwrap();
    let ours: Value = serde_json::from_str(&StatusRecord::waiting_json(1)).unwrap();
    assert_eq!(object_keys(&ours), object_keys(&waiting));
    let complete: Value =
        serde_json::from_str(read(&fx.join("tp3-seed/status-complete.json")).trim()).unwrap();
    let ours: Value =
        serde_json::from_str(&StatusRecord::update_json(JobStatus::Complete, 1)).unwrap();
    assert_eq!(object_keys(&ours), object_keys(&complete));

    // Failure record: TP3's fields in TP3's order, and a time resque-web can parse.
    let tp3: Value = serde_json::from_str(read(&fx.join("tp3-seed/failed.json")).trim()).unwrap();
    let record = FailureRecord {
        failed_at: resque::protocol::resque_time(),
        payload: serde_json::json!({"class": "X", "args": [null]}),
        exception: "RuntimeException".into(),
        error: "boom".into(),
        backtrace: vec!["#0 {main}".into()],
        worker: "vm:1:default".into(),
        queue: "default".into(),
        retried_at: None,
        extra: Default::default(),
    };
    let ours: Value = serde_json::from_str(&record.to_json()).unwrap();
    assert_eq!(object_keys(&ours), object_keys(&tp3));
    assert!(chrono::DateTime::parse_from_rfc3339(&record.failed_at).is_ok());
    let _ = Outcome::Complete;
}
