//! Retries with backoff: a failed attempt of a job whose handler has `retry = {…}` goes to the
//! delayed queue (so every Resque tool sees it waiting) with its id kept and the attempt count in
//! its payload (`"attempts"`); only the last attempt writes the failure record (resque-retry's
//! suppression), unless `record = "every"`.
//!
//! The worker asks [`plan`] once a job has failed; when it gets a plan it writes the outcome with
//! [`write`] (one script: outcome, delayed item, status back to WAITING) instead of FINISH.

use crate::connection::Connection;
use crate::protocol::commands::Reserved;
use crate::protocol::{scheduler, FailureRecord, Keys, Payload};
use serde_json::Value;
use std::time::Duration;
use tracing::{error, info, warn};

/// The payload field carrying how many attempts were made.
pub const ATTEMPTS_FIELD: &str = "attempts";

/// How the delay grows from one attempt to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backoff {
    /// `base`, `2 × base`, `4 × base`, … up to `max`.
    Exponential,
    /// `base` every time.
    Fixed,
    /// The n-th delay of the list for the n-th retry (the last one repeats).
    List(Vec<Duration>),
}

/// Which failed attempts write a failure record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Record {
    /// Only the last (resque-retry's suppression).
    #[default]
    Last,
    /// Every attempt.
    Every,
}

/// `retry = { attempts, backoff, base, max, jitter, record }` of a `[[handler]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (≥ 1).
    pub attempts: u32,
    pub backoff: Backoff,
    pub base: Duration,
    pub max: Duration,
    /// Each delay times a random factor between 0.5 and 1.5.
    pub jitter: bool,
    pub record: Record,
}

impl RetryPolicy {
    /// The wait before the attempt after failed attempt number `failed` (1-based), before jitter.
    pub fn delay(&self, failed: u32) -> Duration {
        let n = failed.max(1);
        let d = match &self.backoff {
            Backoff::Fixed => self.base,
            Backoff::Exponential => {
                let factor = 2u32.saturating_pow(n - 1);
                self.base.saturating_mul(factor)
            }
            Backoff::List(list) => list
                .get((n - 1) as usize)
                .or(list.last())
                .copied()
                .unwrap_or(self.base),
        };
        d.min(self.max)
    }

    fn jittered(&self, d: Duration) -> Duration {
        if !self.jitter {
            return d;
        }
        use rand::Rng;
        d.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
    }
}

/// The retry policy of each class pattern, in the handlers' order (first match wins, as for the
/// handlers themselves).
#[derive(Debug, Default, Clone)]
pub struct RetryPolicies {
    routes: Vec<(String, Option<RetryPolicy>)>,
}

impl RetryPolicies {
    /// `own` patterns (in-process handlers, matched first, never retried by configuration) then
    /// the configured handlers.
    pub fn new<'a>(
        own: impl IntoIterator<Item = &'a str>,
        configured: &[crate::config::HandlerConfig],
    ) -> RetryPolicies {
        let mut routes: Vec<(String, Option<RetryPolicy>)> =
            own.into_iter().map(|p| (p.to_string(), None)).collect();
        routes.extend(
            configured
                .iter()
                .map(|h| (h.class.clone(), h.retry.clone())),
        );
        RetryPolicies { routes }
    }

    pub fn find(&self, class: &str) -> Option<&RetryPolicy> {
        let name = crate::handler::normalize_class(class);
        let options = glob::MatchOptions {
            case_sensitive: false,
            require_literal_separator: false,
            require_literal_leading_dot: false,
        };
        self.routes
            .iter()
            .find(|(pattern, _)| {
                glob::Pattern::new(&crate::handler::normalize_class(pattern).replace('\\', "[\\]"))
                    .is_ok_and(|p| p.matches_with(&name, options))
            })
            .and_then(|(_, policy)| policy.as_ref())
    }
}

/// A failed attempt to retry later.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPlan {
    /// The delayed item: the payload with `attempts` and `queue` set.
    pub item: String,
    /// When the next attempt is due (unix seconds).
    pub at: i64,
    pub attempt: u32,
    pub of: u32,
    /// The failure record to write as well (`record = "every"`).
    pub failure: Option<String>,
}

/// Decides whether a failed job is retried: its handler has a policy and attempts are left.
/// `None`: this was the last attempt (or no policy): record the failure as usual.
pub fn plan(
    policies: &RetryPolicies,
    payload: Option<&Payload>,
    queue: &str,
    failure: &FailureRecord,
) -> Option<RetryPlan> {
    let payload = payload?;
    let policy = policies.find(payload.class())?;
    let made = payload
        .fields()
        .get(ATTEMPTS_FIELD)
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .saturating_add(1)
        .min(u32::MAX as u64) as u32;
    if made >= policy.attempts {
        return None;
    }
    let mut fields = payload.fields().clone();
    fields.insert(ATTEMPTS_FIELD.into(), Value::from(made));
    if !fields.contains_key("queue") {
        fields.insert("queue".into(), Value::String(queue.to_string()));
    }
    let item = Value::Object(fields).to_string();
    let delay = policy.jittered(policy.delay(made));
    let now_ms = chrono::Utc::now().timestamp_millis();
    // Due times are whole seconds (as every scheduler writes them): round up, never early.
    let at = (now_ms + delay.as_millis() as i64 + 999) / 1000;
    let failure = (policy.record == Record::Every).then(|| failure.to_json());
    Some(RetryPlan {
        item,
        at,
        attempt: made,
        of: policy.attempts,
        failure,
    })
}

/// The worker's hook: if a failed job has attempts left (its handler's `retry`), write the
/// attempt's outcome together with the job's move to the delayed queue. Returns false when the
/// outcome is still to be written the usual way (no retry, or the delayed key is unusable).
pub async fn retry_failed(
    conn: &Connection,
    shared: &crate::worker::Shared,
    worker_id: &str,
    job: &Reserved,
    payload: Option<&Payload>,
    outcome: &crate::protocol::commands::Outcome,
    aborting: impl Fn() -> bool,
) -> bool {
    let (crate::protocol::commands::Outcome::Failed(record), Some(payload)) = (outcome, payload)
    else {
        return false;
    };
    let Some(plan) = plan(&shared.retry, Some(payload), &job.queue, record) else {
        return false;
    };
    match write(conn, &shared.keys, worker_id, job, payload, &plan, aborting).await {
        Written::Refused => false,
        Written::NotInFlight => {
            info!("the failed attempt was already recorded by an attempt whose reply was lost, or the job was taken from this worker meanwhile");
            true
        }
        _ => true,
    }
}

/// What writing a retried attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Done,
    /// The job was no longer in this worker's hands.
    NotInFlight,
    /// The delayed key is not a list: nothing written; record the failure instead.
    Refused,
    /// Gave up (shutting down): the job stays in flight for recovery.
    GaveUp,
}

/// Writes the retried attempt's outcome (retrying while Redis is unreachable, like FINISH; the
/// token makes a repeat safe). `aborting` is asked between attempts.
pub async fn write(
    conn: &Connection,
    keys: &Keys,
    worker_id: &str,
    job: &Reserved,
    payload: &Payload,
    plan: &RetryPlan,
    aborting: impl Fn() -> bool,
) -> Written {
    let status_key = payload
        .id()
        .map(|id| keys.job_status(id, payload.status_prefix()));
    let inv = scheduler::retry_later(
        keys,
        worker_id,
        &job.entry,
        status_key.as_deref(),
        plan.failure.as_deref(),
        plan.at,
        &plan.item,
    );
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut c = conn.clone();
        match inv.invoke_async::<i64>(&mut c).await {
            Ok(1 | 2) => {
                info!(
                    attempt = plan.attempt,
                    attempts = plan.of,
                    at = plan.at,
                    "job failed (attempt {} of {}); retrying at {}",
                    plan.attempt,
                    plan.of,
                    plan.at
                );
                return Written::Done;
            }
            Ok(-1) => {
                warn!(key = %keys.delayed_at(plan.at), "cannot schedule the retry: the delayed key is not a list; recording the failure instead");
                return Written::Refused;
            }
            Ok(_) => return Written::NotInFlight,
            Err(e) => {
                error!(error = %e, retry_in = ?backoff, "cannot record the failed attempt; retrying");
                if aborting() {
                    return Written::GaveUp;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff) -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            backoff,
            base: Duration::from_secs(2),
            max: Duration::from_secs(10),
            jitter: false,
            record: Record::Last,
        }
    }

    #[test]
    fn delays() {
        let p = policy(Backoff::Exponential);
        let d: Vec<u64> = (1..=5).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(d, vec![2, 4, 8, 10, 10]);
        let p = policy(Backoff::Fixed);
        assert_eq!(p.delay(4).as_secs(), 2);
        let p = policy(Backoff::List(vec![
            Duration::from_secs(1),
            Duration::from_secs(7),
        ]));
        let d: Vec<u64> = (1..=3).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(d, vec![1, 7, 7]);
    }

    #[test]
    fn plans_count_attempts_and_stop_at_the_last() {
        let mut policies = RetryPolicies::default();
        policies
            .routes
            .push(("App\\*".into(), Some(policy(Backoff::Fixed))));
        let failure = FailureRecord::parse("{}").unwrap();
        let p = Payload::parse(r#"{"class":"\\App\\Mail","args":[{}],"id":"x"}"#).unwrap();
        let first = plan(&policies, Some(&p), "mail", &failure).unwrap();
        assert_eq!(first.attempt, 1);
        let item: Value = serde_json::from_str(&first.item).unwrap();
        assert_eq!(item["attempts"], 1);
        assert_eq!(item["queue"], "mail");
        assert_eq!(item["id"], "x");
        let p4 = Payload::parse(r#"{"class":"App\\Mail","args":[],"attempts":4}"#).unwrap();
        assert!(plan(&policies, Some(&p4), "mail", &failure).is_none());
        let other = Payload::parse(r#"{"class":"Other","args":[]}"#).unwrap();
        assert!(plan(&policies, Some(&other), "mail", &failure).is_none());
    }
}
