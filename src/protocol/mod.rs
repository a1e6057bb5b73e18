//! The Redis wire format of php-resque and Ruby resque (see `shared/protocol.md`).
//!
//! This module is the only place that knows key names, JSON shapes, time formats and the Lua
//! scripts. Client, worker and supervisor go through it, so a change of format happens here once.

pub mod commands;
mod failure;
mod keys;
mod payload;
pub mod scheduler;
pub mod scripts;
mod status;
mod time;
mod worker_record;

pub use failure::FailureRecord;
pub use keys::{normalize_namespace, Keys};
pub use payload::{new_job_id, Payload, PayloadError};
pub use status::{JobStatus, StatusError, StatusRecord, STATUS_TTL_SECS};
pub use time::{now_unix, resque_time};
pub use worker_record::{WorkerId, WorkerIdError, WorkerRecord};

/// The exception class php-resque (the seed's TP3 variant) writes when a job process ends abnormally.
pub const DIRTY_EXIT_EXCEPTION: &str = "Resque\\Job\\DirtyExitException";
