//! Failure records: the elements of the `failed` list.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// A failure record in php-resque's field order
/// (`failed_at, payload, exception, error, backtrace, worker, queue`), read tolerantly:
/// Ruby adds `retried_at`, node puts `worker` first and lacks the queue part of the id, pyres
/// writes odd types. Unknown fields are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    #[serde(default, deserialize_with = "lenient_string")]
    pub failed_at: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(default, deserialize_with = "lenient_string")]
    pub exception: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub error: String,
    #[serde(default, deserialize_with = "lenient_lines")]
    pub backtrace: Vec<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub worker: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub queue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_at: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => String::new(),
        Value::String(s) => s,
        other => other.to_string(),
    })
}

fn lenient_lines<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => Vec::new(),
        Value::String(s) => s.lines().map(str::to_string).collect(),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        other => vec![other.to_string()],
    })
}

impl FailureRecord {
    pub fn parse(text: &str) -> Result<FailureRecord, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn to_json(&self) -> String {
        // Serializing a struct of strings and JSON values cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The class of the failed job, if the payload is readable.
    pub fn class(&self) -> Option<&str> {
        self.payload.get("class").and_then(Value::as_str)
    }

    /// The job id, if the payload has one.
    pub fn job_id(&self) -> Option<&str> {
        self.payload.get("id").and_then(Value::as_str)
    }
}
