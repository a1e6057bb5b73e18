//! The job payload: the JSON element of `queue:<q>`.
//!
//! Shapes seen in the wild (fixtures): php-resque `{"class","args":[A],"id"[,"prefix","queue_time"]}`,
//! Ruby `{"class","args":[…]}`, node `{"class","queue","args"}`, pyres `{…,"enqueue_timestamp"}`.
//! We keep the original text: that is what sits in Redis, what we remove from the in-flight
//! list, and what goes into failure records, unchanged.

use rand::RngCore;
use serde_json::{Map, Value};

/// Why a queue entry is not a job we can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("queue entry is not valid JSON: {0}")]
    NotJson(String),
    #[error("queue entry is JSON but not an object (found {0})")]
    NotObject(&'static str),
    #[error("job payload has no \"class\" field")]
    MissingClass,
    #[error("job payload \"class\" is not a non-empty string (found {0})")]
    BadClass(String),
}

/// A decoded job payload, with the exact text it was decoded from.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    raw: String,
    fields: Map<String, Value>,
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Payload {
    /// Decodes a queue entry. PHP's escaped `\/` and `\uXXXX` are plain JSON escapes.
    pub fn parse(raw: &str) -> Result<Payload, PayloadError> {
        let value: Value =
            serde_json::from_str(raw).map_err(|e| PayloadError::NotJson(e.to_string()))?;
        let fields = match value {
            Value::Object(map) => map,
            other => return Err(PayloadError::NotObject(kind_of(&other))),
        };
        match fields.get("class") {
            None => return Err(PayloadError::MissingClass),
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(other) => return Err(PayloadError::BadClass(other.to_string())),
        }
        Ok(Payload {
            raw: raw.to_string(),
            fields,
        })
    }

    /// A new php-resque payload, in the shape php-resque 1.3 writes:
    /// `{"class","args":[ARGS],"id","prefix":"","queue_time"}`. `args` is PHP's `$args`, wrapped in
    /// a one-element array as every php-resque does (`null` when the caller gave none).
    pub fn new_php(class: &str, args: Value, id: &str) -> Payload {
        let mut fields = Map::new();
        fields.insert("class".into(), Value::String(class.to_string()));
        fields.insert("args".into(), Value::Array(vec![args]));
        fields.insert("id".into(), Value::String(id.to_string()));
        fields.insert("prefix".into(), Value::String(String::new()));
        let queue_time = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        fields.insert("queue_time".into(), Value::from(queue_time));
        let raw = Value::Object(fields.clone()).to_string();
        Payload { raw, fields }
    }

    /// The same job with the same id, for a retry: its text is re-encoded from the fields.
    pub fn from_fields(fields: Map<String, Value>) -> Result<Payload, PayloadError> {
        Payload::parse(&Value::Object(fields).to_string())
    }

    /// The exact text in Redis.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// The decoded payload as a JSON value (what failure and worker records embed).
    pub fn to_value(&self) -> Value {
        Value::Object(self.fields.clone())
    }

    /// The class name exactly as stored (`\Common\Job\XxxxJob` keeps its leading backslash).
    pub fn class(&self) -> &str {
        self.fields
            .get("class")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// The `args` array; a missing or non-array `args` reads as empty.
    pub fn args(&self) -> &[Value] {
        match self.fields.get("args") {
            Some(Value::Array(items)) => items,
            _ => &[],
        }
    }

    /// What a PHP job sees as `$this->args`: the first element of `args`.
    pub fn php_args(&self) -> Value {
        self.args().first().cloned().unwrap_or(Value::Null)
    }

    /// php-resque's job id; Ruby, node and pyres payloads have none.
    pub fn id(&self) -> Option<&str> {
        self.fields
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// php-resque ≥ 1.3.4's status-key prefix.
    pub fn status_prefix(&self) -> Option<&str> {
        self.fields.get("prefix").and_then(Value::as_str)
    }

    /// The queue node-resque writes into its payloads.
    pub fn queue(&self) -> Option<&str> {
        self.fields.get("queue").and_then(Value::as_str)
    }
}

/// A job id as php-resque makes them: 32 lowercase hex characters.
pub fn new_job_id() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_escapes_decode() {
        let raw = r#"{"class":"\\Common\\Job\\OkJob","args":[{"url":"http:\/\/a\/b","zh":"\u4e2d\u6587"}],"id":"e22e0000000000000000000000000819"}"#;
        let p = Payload::parse(raw).unwrap();
        assert_eq!(p.class(), "\\Common\\Job\\OkJob");
        assert_eq!(p.php_args()["url"], "http://a/b");
        assert_eq!(p.php_args()["zh"], "中文");
        assert_eq!(p.raw(), raw);
    }

    #[test]
    fn bad_entries_are_named() {
        assert!(matches!(
            Payload::parse("nope"),
            Err(PayloadError::NotJson(_))
        ));
        assert_eq!(
            Payload::parse("[1,2]"),
            Err(PayloadError::NotObject("an array"))
        );
        assert_eq!(
            Payload::parse(r#"{"args":[]}"#),
            Err(PayloadError::MissingClass)
        );
        assert!(matches!(
            Payload::parse(r#"{"class":7}"#),
            Err(PayloadError::BadClass(_))
        ));
    }

    #[test]
    fn new_ids_look_like_php() {
        let id = new_job_id();
        assert_eq!(id.len(), 32);
        assert!(id
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_uppercase()));
    }
}
