//! Worker identity and the `worker:<id>` record.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// `host:pid:queue1,queue2` as php-resque and Ruby resque write it (readers split on `:` with a
/// limit of 3). One daemon process runs several workers, so the pid part of every worker but the
/// first carries a `-N` suffix, which keeps ids unique per worker and per start.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkerId {
    pub host: String,
    pub pid: u32,
    /// Distinguishes the workers of one process (0 for the first, shown without suffix).
    pub slot: u32,
    pub queues: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("worker id {0:?} is not of the form host:pid:queues")]
pub struct WorkerIdError(pub String);

impl WorkerId {
    /// Parses any implementation's id. node's per-worker stats use `host:pid` without queues.
    pub fn parse(id: &str) -> Result<WorkerId, WorkerIdError> {
        let mut parts = id.splitn(3, ':');
        let host = parts.next().unwrap_or_default();
        let pid_part = parts.next().ok_or_else(|| WorkerIdError(id.to_string()))?;
        let queues = parts.next().unwrap_or_default();
        let (pid_text, slot_text) = match pid_part.split_once(['-', '+']) {
            Some((p, s)) => (p, Some(s)),
            None => (pid_part, None),
        };
        let pid = pid_text
            .parse()
            .map_err(|_| WorkerIdError(id.to_string()))?;
        let slot = match slot_text {
            Some(s) => s.parse().map_err(|_| WorkerIdError(id.to_string()))?,
            None => 0,
        };
        Ok(WorkerId {
            host: host.to_string(),
            pid,
            slot,
            queues: queues
                .split(',')
                .filter(|q| !q.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.pid)?;
        if self.slot > 0 {
            write!(f, "-{}", self.slot)?;
        }
        write!(f, ":{}", self.queues.join(","))
    }
}

/// `worker:<id>` while busy: `{"queue","run_at","payload"}` (node adds `worker`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    #[serde(default)]
    pub queue: String,
    #[serde(default)]
    pub run_at: Value,
    #[serde(default)]
    pub payload: Value,
}

impl WorkerRecord {
    pub fn parse(text: &str) -> Result<WorkerRecord, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let id = WorkerId::parse("vm:30583:default").unwrap();
        assert_eq!((id.host.as_str(), id.pid, id.slot), ("vm", 30583, 0));
        assert_eq!(id.to_string(), "vm:30583:default");
        let id = WorkerId::parse("vm:12-3:a,b").unwrap();
        assert_eq!(id.slot, 3);
        assert_eq!(id.queues, vec!["a", "b"]);
        assert_eq!(id.to_string(), "vm:12-3:a,b");
        assert!(WorkerId::parse("vm").is_err());
        assert!(WorkerId::parse("vm:x:q").is_err());
        assert_eq!(WorkerId::parse("vm:32273").unwrap().pid, 32273);
    }
}
