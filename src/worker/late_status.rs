//! Statuses that the enqueuer writes after the job was pushed.
//!
//! php-resque's `Resque::enqueue($queue, $class, $args, true)` pushes the job first and writes
//! its WAITING status with a plain `SET` after. A job reserved in between finds no status key
//! (and we only ever update existing keys, php-resque's "only where tracked" rule), so RUNNING
//! would never show, and a job that also finished in between would stay WAITING forever, without
//! a TTL, once the late `SET` lands.
//!
//! Without polling: the wake-up connection also tracks the status keys (`CLIENT TRACKING … PREFIX
//! <ns>job:`), so Redis tells us when a status key is written. A worker that reserved or finished
//! a job whose status key was missing leaves its intended status here; when the key is written
//! (or was written just before — pushes and replies travel on different connections), the
//! intended status is put over the late WAITING, atomically, in one script. Untracked jobs never
//! get a key, so they cost nothing but a few seconds in this map.

use crate::connection::Connection;
use crate::protocol::commands::{self, LateStatus};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{debug, warn};

/// How long an intended status waits for its key (php-resque writes it right after the push).
const KEEP: Duration = Duration::from_secs(30);
/// How long a written key is remembered, for an intent that arrives after the key's push.
const RECENT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    /// Status key → what it should say, and since when we wait.
    pending: HashMap<String, (LateStatus, Instant)>,
    /// Status keys Redis told us were written, and when.
    written: HashMap<String, Instant>,
    /// Intents whose key was written: to apply now.
    due: Vec<LateStatus>,
}

/// Shared by the workers of a pool and the wake-up task.
#[derive(Default)]
pub struct LateStatuses {
    state: Mutex<State>,
    wake: Notify,
}

impl LateStatuses {
    pub fn new() -> Arc<LateStatuses> {
        Arc::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A job's status should be `status` but its key did not exist when we wrote it.
    pub fn intend(&self, status: LateStatus) {
        let mut state = self.lock();
        let now = Instant::now();
        if state
            .written
            .get(&status.key)
            .is_some_and(|at| now.duration_since(*at) < RECENT)
        {
            state.pending.remove(&status.key);
            state.due.push(status);
            drop(state);
            self.wake.notify_one();
            return;
        }
        state.pending.insert(status.key.clone(), (status, now));
        // Untracked jobs never see their key written: forget them after a while, in batches.
        if state.pending.len() % 1024 == 0 {
            state
                .pending
                .retain(|_, (_, since)| now.duration_since(*since) < KEEP);
        }
    }

    /// The job is no longer ours to describe (given back to its queue).
    pub fn forget(&self, key: &str) {
        self.lock().pending.remove(key);
    }

    /// Redis says these keys were written (client-tracking invalidations).
    pub fn written(&self, keys: impl IntoIterator<Item = String>) {
        let mut state = self.lock();
        let now = Instant::now();
        let mut any = false;
        for key in keys {
            if let Some((status, _)) = state.pending.remove(&key) {
                state.due.push(status);
                any = true;
            }
            state.written.insert(key, now);
        }
        state
            .written
            .retain(|_, at| now.duration_since(*at) < RECENT);
        state
            .pending
            .retain(|_, (_, since)| now.duration_since(*since) < KEEP);
        drop(state);
        if any {
            self.wake.notify_one();
        }
    }

    /// How many intents wait for their key (for tests and STATUS).
    pub fn waiting(&self) -> usize {
        self.lock().pending.len()
    }

    /// Applies due intents, until aborted.
    pub async fn run(self: Arc<Self>, mut conn: Connection) {
        loop {
            self.wake.notified().await;
            let due = std::mem::take(&mut self.lock().due);
            if due.is_empty() {
                continue;
            }
            let mut backoff = Duration::from_millis(100);
            loop {
                match commands::fix_statuses(&due)
                    .invoke_async::<i64>(&mut conn)
                    .await
                {
                    Ok(n) => {
                        debug!(
                            changed = n,
                            of = due.len(),
                            "statuses written late by the enqueuer corrected"
                        );
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot correct late statuses; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }
}
