//! php-resque's job status (`job:<id>:status`): `{"status":N,"updated":T[,"started":T]}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Statuses 3 and 4 expire after a day, as in php-resque.
pub const STATUS_TTL_SECS: i64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Waiting = 1,
    Running = 2,
    Failed = 3,
    Complete = 4,
}

impl JobStatus {
    pub fn from_code(code: i64) -> Option<JobStatus> {
        match code {
            1 => Some(JobStatus::Waiting),
            2 => Some(JobStatus::Running),
            3 => Some(JobStatus::Failed),
            4 => Some(JobStatus::Complete),
            _ => None,
        }
    }
    pub fn code(self) -> i64 {
        self as i64
    }
    /// The seed's words for each status.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Waiting => "waiting",
            JobStatus::Running => "running",
            JobStatus::Failed => "failed",
            JobStatus::Complete => "complete",
        }
    }
    /// Failed and complete are final; they get the 24 h TTL.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Failed | JobStatus::Complete)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("status key holds text that is not JSON: {0}")]
    NotJson(String),
    #[error("status key holds JSON without a valid \"status\" (1 to 4): {0}")]
    BadStatus(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub status: i64,
    #[serde(default)]
    pub updated: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<i64>,
    /// php-resque ≥ 1.3.4 stores the return value of `perform()`.
    #[serde(default, skip_serializing)]
    pub result: Option<Value>,
}

impl StatusRecord {
    /// Parses a status value; garbage is an error, never a panic.
    pub fn parse(text: &str) -> Result<StatusRecord, StatusError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| StatusError::NotJson(e.to_string()))?;
        let record: StatusRecord = serde_json::from_value(value)
            .map_err(|_| StatusError::BadStatus(text.chars().take(80).collect()))?;
        if JobStatus::from_code(record.status).is_none() {
            return Err(StatusError::BadStatus(text.chars().take(80).collect()));
        }
        Ok(record)
    }

    pub fn job_status(&self) -> JobStatus {
        JobStatus::from_code(self.status).unwrap_or(JobStatus::Waiting)
    }

    /// What php-resque writes at enqueue: `{"status":1,"updated":T,"started":T}`.
    pub fn waiting_json(now: i64) -> String {
        format!("{{\"status\":1,\"updated\":{now},\"started\":{now}}}")
    }

    /// What php-resque writes on every later update: `{"status":N,"updated":T}`.
    pub fn update_json(status: JobStatus, now: i64) -> String {
        format!("{{\"status\":{},\"updated\":{now}}}", status.code())
    }
}
