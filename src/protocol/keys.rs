//! Key names, relative to a namespace (`resque:` by default, may be empty).

/// Turns a configured namespace into the key prefix, as php-resque ≥ 1.3 and Ruby resque do:
/// `resque` → `resque:`, `resque:` stays, the empty string means no prefix at all.
pub fn normalize_namespace(namespace: &str) -> String {
    if namespace.is_empty() || namespace.ends_with(':') {
        namespace.to_string()
    } else {
        format!("{namespace}:")
    }
}

/// Builds every key resque reads or writes, under one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Keys {
            prefix: normalize_namespace(namespace),
        }
    }

    /// The prefix every key starts with (`resque:`), possibly empty.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{}", self.prefix, rest)
    }

    /// Set of known queue names.
    pub fn queues(&self) -> String {
        self.key("queues")
    }
    /// List of JSON payloads of one queue.
    pub fn queue(&self, queue: &str) -> String {
        self.key(&format!("queue:{queue}"))
    }
    /// Strips the namespace and `queue:` from a queue key; `None` if it is not one.
    pub fn queue_name_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.prefix.as_str())?
            .strip_prefix("queue:")
    }
    /// Set of registered worker ids.
    pub fn workers(&self) -> String {
        self.key("workers")
    }
    /// JSON `{"queue","run_at","payload"}` while the worker is busy.
    pub fn worker(&self, id: &str) -> String {
        self.key(&format!("worker:{id}"))
    }
    /// Start time of a worker.
    pub fn worker_started(&self, id: &str) -> String {
        self.key(&format!("worker:{id}:started"))
    }
    /// Ruby resque's heartbeat hash: worker id → ISO-8601 time.
    pub fn workers_heartbeat(&self) -> String {
        self.key("workers:heartbeat")
    }
    /// `"true"` pauses every worker (Ruby resque ≥ 2.3).
    pub fn pause_all_workers(&self) -> String {
        self.key("pause-all-workers")
    }
    pub fn stat_processed(&self) -> String {
        self.key("stat:processed")
    }
    pub fn stat_failed(&self) -> String {
        self.key("stat:failed")
    }
    pub fn stat_processed_by(&self, worker_id: &str) -> String {
        self.key(&format!("stat:processed:{worker_id}"))
    }
    pub fn stat_failed_by(&self, worker_id: &str) -> String {
        self.key(&format!("stat:failed:{worker_id}"))
    }
    /// List of failure records.
    pub fn failed(&self) -> String {
        self.key("failed")
    }
    /// Status key of a tracked job; php-resque ≥ 1.3.4 puts a non-empty payload `prefix` in front
    /// of the id.
    pub fn job_status(&self, id: &str, prefix: Option<&str>) -> String {
        match prefix {
            Some(p) if !p.is_empty() => self.key(&format!("job:{p}_{id}:status")),
            _ => self.key(&format!("job:{id}:status")),
        }
    }

    /// What every status key starts with.
    pub fn job_status_prefix(&self) -> String {
        self.key("job:")
    }

    // Keys of our own (no other implementation reads them).

    /// List holding the job a worker has reserved and not yet finished: the reliable-queue part.
    pub fn inflight(&self, worker_id: &str) -> String {
        self.key(&format!("inflight:{worker_id}"))
    }
    /// Hash worker id → queue of its last reserved job: the index recovery walks.
    pub fn inflight_index(&self) -> String {
        self.key("inflight")
    }
    /// How often one payload was found in the hands of a dead worker (poison-pill counter).
    pub fn lost_count(&self, payload_digest: &str) -> String {
        self.key(&format!("lost:{payload_digest}"))
    }
    /// Lock held while one daemon recovers dead workers.
    pub fn recovery_lock(&self) -> String {
        self.key("recovery-lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_rules_match_php_resque() {
        assert_eq!(normalize_namespace("resque"), "resque:");
        assert_eq!(normalize_namespace("resque:"), "resque:");
        assert_eq!(normalize_namespace(""), "");
        assert_eq!(normalize_namespace("queue"), "queue:");
    }

    #[test]
    fn keys_match_the_fixtures() {
        let k = Keys::new("resque");
        assert_eq!(k.queue("default"), "resque:queue:default");
        assert_eq!(
            k.worker("vm:30583:default"),
            "resque:worker:vm:30583:default"
        );
        assert_eq!(
            k.worker_started("vm:30583:default"),
            "resque:worker:vm:30583:default:started"
        );
        assert_eq!(
            k.stat_processed_by("vm:30583:default"),
            "resque:stat:processed:vm:30583:default"
        );
        assert_eq!(
            k.job_status("02488f02bb8828615c669b30d6f64458", None),
            "resque:job:02488f02bb8828615c669b30d6f64458:status"
        );
        assert_eq!(
            k.job_status("abc", Some("app")),
            "resque:job:app_abc:status"
        );
        assert_eq!(k.job_status("abc", Some("")), "resque:job:abc:status");
        let bare = Keys::new("");
        assert_eq!(bare.queue("default"), "queue:default");
        assert_eq!(bare.queue_name_of("queue:default"), Some("default"));
        assert_eq!(k.queue_name_of("resque:queue:a:b"), Some("a:b"));
        assert_eq!(k.queue_name_of("other:queue:a"), None);
    }
}
