//! How a job runs: a handler is chosen by the job's class.
//!
//! Handlers are cancelled by dropping their future (USR1, a forced shutdown): whatever a handler
//! started — a process, a process group, a PHP worker — must be killed by its `Drop`.

use crate::protocol::Payload;
use std::sync::Arc;

pub mod exec;
pub mod php;
mod process;

/// One job, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The worker running it (`host:pid:queues`).
    pub worker_id: String,
    /// The queue it was reserved from.
    pub queue: String,
    pub payload: Payload,
}

impl Job {
    pub fn class(&self) -> &str {
        self.payload.class()
    }
    pub fn id(&self) -> Option<&str> {
        self.payload.id()
    }
}

/// Why a job failed, as the failure record shows it.
///
/// Or, made with [`JobFailure::worker_side`], why the worker could not run it: then it is no
/// failure of the job's, nothing is recorded, and the job goes back to its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    /// Exception class (`RuntimeException`, `Resque\Job\DirtyExitException`, …).
    pub exception: String,
    /// Message.
    pub error: String,
    /// Backtrace lines, most recent first (php-resque's `getTraceAsString()` lines).
    pub backtrace: Vec<String>,
    /// Set by [`JobFailure::worker_side`].
    worker_side: bool,
}

impl JobFailure {
    pub fn new(exception: impl Into<String>, error: impl Into<String>) -> Self {
        JobFailure {
            exception: exception.into(),
            error: error.into(),
            backtrace: Vec::new(),
            worker_side: false,
        }
    }

    /// The worker could not run the job, through no fault of the job's (it ran out of file
    /// descriptors starting the job's process, say). The job goes back to the head of its queue
    /// instead of failing, and the worker waits a little, longer each time in a row, before it
    /// reserves again. `error` is logged as a warning: say what went wrong and what to change.
    pub fn worker_side(error: impl Into<String>) -> Self {
        JobFailure {
            worker_side: true,
            ..JobFailure::new("RuntimeException", error)
        }
    }

    pub fn with_backtrace(mut self, backtrace: Vec<String>) -> Self {
        self.backtrace = backtrace;
        self
    }

    /// Whether this is the worker's problem, not the job's ([`JobFailure::worker_side`]).
    pub fn is_worker_side(&self) -> bool {
        self.worker_side
    }
}

/// Runs jobs. Implement it to run jobs in-process from your own binary.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn perform(&self, job: &Job) -> Result<(), JobFailure>;
}

/// Class patterns mapped to handlers; the first match wins.
#[derive(Clone, Default)]
pub struct HandlerMap {
    routes: Vec<(glob::Pattern, String, Arc<dyn Handler>)>,
}

impl std::fmt::Debug for HandlerMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.routes.iter().map(|(_, text, _)| text))
            .finish()
    }
}

/// Class names as PHP resolves them: one leading `\` ignored, case-insensitive.
pub fn normalize_class(class: &str) -> String {
    class.strip_prefix('\\').unwrap_or(class).to_lowercase()
}

impl HandlerMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route. `pattern` is a class name or a glob (`Common\Job\*`, `*`).
    pub fn route(
        &mut self,
        pattern: &str,
        handler: Arc<dyn Handler>,
    ) -> Result<&mut Self, glob::PatternError> {
        // `\` is the PHP namespace separator, not an escape: match it literally.
        let escaped = normalize_class(pattern).replace('\\', "[\\]");
        let compiled = glob::Pattern::new(&escaped)?;
        self.routes.push((compiled, pattern.to_string(), handler));
        Ok(self)
    }

    /// The handler for a class, if any route matches.
    pub fn find(&self, class: &str) -> Option<&Arc<dyn Handler>> {
        let name = normalize_class(class);
        let options = glob::MatchOptions {
            case_sensitive: false,
            require_literal_separator: false,
            require_literal_leading_dot: false,
        };
        self.routes
            .iter()
            .find(|(pattern, _, _)| pattern.matches_with(&name, options))
            .map(|(_, _, handler)| handler)
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    #[async_trait::async_trait]
    impl Handler for Nop {
        async fn perform(&self, _job: &Job) -> Result<(), JobFailure> {
            Ok(())
        }
    }

    #[test]
    fn classes_match_as_php_resolves_them() {
        let mut map = HandlerMap::new();
        map.route("Common\\Job\\*", Arc::new(Nop)).unwrap();
        assert!(map.find("\\Common\\Job\\XxxxJob").is_some());
        assert!(map.find("common\\job\\xxxxjob").is_some());
        assert!(map.find("Other\\Job").is_none());
        map.route("*", Arc::new(Nop)).unwrap();
        assert!(map.find("Anything").is_some());
    }
}
