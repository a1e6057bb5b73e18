//! The client side: enqueue, job status, queues, workers, stats and the failed list.
//!
//! Used by the CLI and by applications embedding the library. Every read tolerates what other
//! implementations write; every write keeps php-resque's shapes.

use crate::config::RedisConfig;
use crate::protocol::{
    commands, new_job_id, FailureRecord, JobStatus, Keys, Payload, PayloadError, StatusRecord,
    WorkerId, WorkerRecord,
};
use redis::AsyncCommands;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach Redis at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis at {address}: {source}")]
    Redis {
        address: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("no failed job at index {0} (the failed list has {1})")]
    NoSuchFailure(isize, usize),
    #[error("failed job at index {index} cannot be retried: {reason}")]
    NotRetryable { index: isize, reason: String },
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// What `resque status` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    pub id: String,
    /// `waiting`, `running`, `failed`, `complete`, or `not tracked`.
    pub status: String,
    /// php-resque's integer, if tracked.
    pub code: Option<i64>,
    pub updated: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueInfo {
    pub name: String,
    pub length: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: Option<u32>,
    pub queues: Vec<String>,
    pub started: Option<String>,
    pub heartbeat: Option<String>,
    /// The job it is working on, if busy.
    pub working_on: Option<WorkerRecord>,
    pub processed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub processed: u64,
    pub failed: u64,
    pub pending: u64,
    pub queues: usize,
    pub workers: usize,
    pub working: usize,
    pub failed_list: usize,
    /// Jobs in the delayed queue (resque-scheduler's `delayed:<ts>` lists), counted without KEYS.
    pub delayed: u64,
}

/// One element of the failed list: its index, and the record (or the text if unreadable).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedEntry {
    pub index: isize,
    #[serde(flatten)]
    pub record: Option<FailureRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// A connection to one Redis, under one namespace.
pub struct Client {
    conn: redis::aio::MultiplexedConnection,
    keys: Keys,
    address: String,
}

impl Client {
    pub async fn connect(config: &RedisConfig) -> Result<Client> {
        let address = config.display.clone();
        let client = crate::connection::open_client(config)
            .await
            .map_err(|source| ClientError::Connect {
                address: address.clone(),
                source,
            })?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&config.async_config())
            .await
            .map_err(|source| ClientError::Connect {
                address: address.clone(),
                source,
            })?;
        Ok(Client {
            conn,
            keys: config.keys(),
            address,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn redis_err(&self) -> impl Fn(redis::RedisError) -> ClientError + '_ {
        |source| ClientError::Redis {
            address: self.address.clone(),
            source,
        }
    }

    /// Enqueues a job as php-resque does and returns its id. `args` is PHP's `$args` (an object
    /// or array; `None` gives php-resque's `[null]`). A tracked job's WAITING status is written
    /// before the job is pushed.
    pub async fn enqueue(
        &mut self,
        queue: &str,
        class: &str,
        args: Option<Value>,
        track: bool,
    ) -> Result<String> {
        check_queue_name(queue)?;
        if class.trim().is_empty() {
            return Err(ClientError::Invalid(
                "the job class must not be empty".into(),
            ));
        }
        let args = match args {
            None => Value::Null,
            Some(v @ (Value::Object(_) | Value::Array(_))) => v,
            Some(other) => {
                return Err(ClientError::Invalid(format!(
                    "job arguments must be a JSON object or array (as php-resque requires), not {other}"
                )))
            }
        };
        let id = new_job_id();
        let payload = Payload::new_php(class, args, &id);
        commands::enqueue(&self.keys, queue, &payload, track)
            .query_async::<()>(&mut self.conn)
            .await
            .map_err(self.redis_err())?;
        Ok(id)
    }

    /// Pushes an existing payload text (for retries and interop) after checking it decodes.
    pub async fn push_raw(&mut self, queue: &str, raw: &str) -> Result<()> {
        check_queue_name(queue)?;
        let payload = Payload::parse(raw).map_err(|e| ClientError::Invalid(e.to_string()))?;
        commands::enqueue(&self.keys, queue, &payload, false)
            .query_async::<()>(&mut self.conn)
            .await
            .map_err(self.redis_err())
    }

    /// The status of a tracked job, as `Resque\Job\Status::get()` reads it.
    pub async fn status(&mut self, id: &str) -> Result<StatusReport> {
        let id = id.trim();
        if id.is_empty() || id.contains(char::is_whitespace) {
            return Err(ClientError::Invalid(format!("{id:?} is not a job id")));
        }
        let key = self.keys.job_status(id, None);
        let text: Option<String> = self.conn.get(&key).await.map_err(self.redis_err())?;
        let Some(text) = text else {
            return Ok(StatusReport {
                id: id.into(),
                status: "not tracked".into(),
                code: None,
                updated: None,
            });
        };
        let record = StatusRecord::parse(&text)
            .map_err(|e| ClientError::Invalid(format!("job {id}: {e}")))?;
        Ok(StatusReport {
            id: id.into(),
            status: record.job_status().name().into(),
            code: Some(record.status),
            updated: record.updated,
        })
    }

    /// Queue names (sorted) with their lengths.
    pub async fn queues(&mut self) -> Result<Vec<QueueInfo>> {
        let mut names: Vec<String> = self
            .conn
            .smembers(self.keys.queues())
            .await
            .map_err(self.redis_err())?;
        names.sort();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.llen(self.keys.queue(name));
        }
        let lengths: Vec<usize> = pipe
            .query_async(&mut self.conn)
            .await
            .map_err(self.redis_err())?;
        Ok(names
            .into_iter()
            .zip(lengths)
            .map(|(name, length)| QueueInfo { name, length })
            .collect())
    }

    /// The raw entries of a queue, from `start` to `stop` (inclusive, negative from the end).
    pub async fn peek(&mut self, queue: &str, start: isize, stop: isize) -> Result<Vec<String>> {
        self.conn
            .lrange(self.keys.queue(queue), start, stop)
            .await
            .map_err(self.redis_err())
    }

    /// Registered workers (any implementation), with what they are working on.
    pub async fn workers(&mut self) -> Result<Vec<WorkerInfo>> {
        let mut ids: Vec<String> = self
            .conn
            .smembers(self.keys.workers())
            .await
            .map_err(self.redis_err())?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let beats: std::collections::HashMap<String, String> = self
            .conn
            .hgetall(self.keys.workers_heartbeat())
            .await
            .map_err(self.redis_err())?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.get(self.keys.worker(id))
                .get(self.keys.worker_started(id))
                .get(self.keys.stat_processed_by(id))
                .get(self.keys.stat_failed_by(id));
        }
        type Row = (Option<String>, Option<String>, Option<u64>, Option<u64>);
        let rows: Vec<Row> = pipe
            .query_async(&mut self.conn)
            .await
            .map_err(self.redis_err())?;
        Ok(ids
            .into_iter()
            .zip(rows)
            .map(|(id, (record, started, processed, failed))| {
                let parsed = WorkerId::parse(&id).ok();
                WorkerInfo {
                    host: parsed.as_ref().map(|p| p.host.clone()).unwrap_or_default(),
                    pid: parsed.as_ref().map(|p| p.pid),
                    queues: parsed.map(|p| p.queues).unwrap_or_default(),
                    heartbeat: beats.get(&id).cloned(),
                    working_on: record.and_then(|r| WorkerRecord::parse(&r).ok()),
                    started,
                    processed: processed.unwrap_or(0),
                    failed: failed.unwrap_or(0),
                    id,
                }
            })
            .collect())
    }

    pub async fn stats(&mut self) -> Result<Stats> {
        let queues = self.queues().await?;
        let workers = self.workers().await?;
        let (processed, failed, failed_list): (Option<u64>, Option<u64>, usize) = redis::pipe()
            .get(self.keys.stat_processed())
            .get(self.keys.stat_failed())
            .llen(self.keys.failed())
            .query_async(&mut self.conn)
            .await
            .map_err(self.redis_err())?;
        let delayed = self.delayed_count().await?;
        Ok(Stats {
            delayed,
            processed: processed.unwrap_or(0),
            failed: failed.unwrap_or(0),
            pending: queues.iter().map(|q| q.length as u64).sum(),
            queues: queues.len(),
            working: workers.iter().filter(|w| w.working_on.is_some()).count(),
            workers: workers.len(),
            failed_list,
        })
    }

    /// Failure records from `start`, at most `count`.
    pub async fn failed(&mut self, start: isize, count: usize) -> Result<Vec<FailedEntry>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let texts: Vec<String> = self
            .conn
            .lrange(self.keys.failed(), start, start + count as isize - 1)
            .await
            .map_err(self.redis_err())?;
        Ok(texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| match FailureRecord::parse(&text) {
                Ok(record) => FailedEntry {
                    index: start + i as isize,
                    record: Some(record),
                    unreadable: None,
                },
                Err(_) => FailedEntry {
                    index: start + i as isize,
                    record: None,
                    unreadable: Some(text),
                },
            })
            .collect())
    }

    pub async fn failed_count(&mut self) -> Result<usize> {
        self.conn
            .llen(self.keys.failed())
            .await
            .map_err(self.redis_err())
    }

    async fn failed_text(&mut self, index: isize) -> Result<String> {
        let text: Option<String> = self
            .conn
            .lindex(self.keys.failed(), index)
            .await
            .map_err(self.redis_err())?;
        match text {
            Some(t) => Ok(t),
            None => {
                let len = self.failed_count().await?;
                Err(ClientError::NoSuchFailure(index, len))
            }
        }
    }

    pub async fn failed_show(&mut self, index: isize) -> Result<FailedEntry> {
        let text = self.failed_text(index).await?;
        Ok(match FailureRecord::parse(&text) {
            Ok(record) => FailedEntry {
                index,
                record: Some(record),
                unreadable: None,
            },
            Err(_) => FailedEntry {
                index,
                record: None,
                unreadable: Some(text),
            },
        })
    }

    /// Puts a failed job back into its queue with its id (so status tracking continues) and
    /// removes it from the failed list. Returns the queue and job id.
    pub async fn failed_retry(&mut self, index: isize) -> Result<(String, Option<String>)> {
        let text = self.failed_text(index).await?;
        let not_retryable = |reason: String| ClientError::NotRetryable { index, reason };
        let record = FailureRecord::parse(&text).map_err(|e| not_retryable(e.to_string()))?;
        let queue = record.queue.trim().to_string();
        let queue = if queue.is_empty() {
            record
                .payload
                .get("queue")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        } else {
            queue
        };
        if queue.is_empty() {
            return Err(not_retryable("the record names no queue".into()));
        }
        let fields = match &record.payload {
            Value::Object(map) => map.clone(),
            Value::String(raw) => match serde_json::from_str::<Value>(raw) {
                Ok(Value::Object(map)) => map,
                _ => return Err(not_retryable("its payload is not a job".into())),
            },
            _ => return Err(not_retryable("its payload is not a job".into())),
        };
        let payload =
            Payload::from_fields(fields).map_err(|e: PayloadError| not_retryable(e.to_string()))?;
        // Remove exactly this entry (by value, like node-resque) and push the job in one MULTI,
        // so it is neither lost nor duplicated if we are interrupted.
        let mut pipe = commands::retry(&self.keys, &queue, &payload);
        pipe.lrem(self.keys.failed(), 1, &text).ignore();
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(self.redis_err())?;
        Ok((queue, payload.id().map(str::to_string)))
    }

    /// Removes one failure record (by value, so a concurrent change of indexes removes the
    /// right one).
    pub async fn failed_remove(&mut self, index: isize) -> Result<()> {
        let text = self.failed_text(index).await?;
        let _: usize = self
            .conn
            .lrem(self.keys.failed(), 1, &text)
            .await
            .map_err(self.redis_err())?;
        Ok(())
    }

    /// Empties the failed list; returns how many records were removed.
    pub async fn failed_clear(&mut self) -> Result<usize> {
        let (len, _): (usize, ()) = redis::pipe()
            .atomic()
            .llen(self.keys.failed())
            .del(self.keys.failed())
            .query_async(&mut self.conn)
            .await
            .map_err(self.redis_err())?;
        Ok(len)
    }

    /// The current status code of a job, `None` if untracked (for `status --watch`).
    pub async fn status_code(&mut self, id: &str) -> Result<Option<JobStatus>> {
        Ok(self.status(id).await?.code.and_then(JobStatus::from_code))
    }

    /// The underlying connection, for callers that need more.
    pub fn connection(&mut self) -> &mut redis::aio::MultiplexedConnection {
        &mut self.conn
    }
}

/// A job put into the delayed queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DelayedJob {
    /// When it is due (unix seconds).
    pub at: i64,
    /// Its id, when tracked (an untracked item is resque-scheduler's `{"class","args","queue"}`).
    pub id: Option<String>,
}

/// One due time of the delayed queue and how many jobs it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DelayedTime {
    pub at: i64,
    pub jobs: usize,
}

/// One item of the delayed queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DelayedItem {
    pub at: i64,
    /// Position in its `delayed:<ts>` list.
    pub index: usize,
    pub class: Option<String>,
    pub queue: Option<String>,
    pub id: Option<String>,
    pub args: Option<Value>,
    /// The item as stored.
    pub raw: String,
}

/// Which delayed items a command acts on: all at a time (`TS`), one (`TS/INDEX`), or a job id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelayedSelector {
    At(i64),
    One(i64, usize),
    Id(String),
}

impl std::str::FromStr for DelayedSelector {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        if let Some((ts, index)) = text.split_once('/') {
            let ts = ts
                .parse()
                .map_err(|_| format!("{text:?}: expected TS/INDEX"))?;
            let index = index
                .parse()
                .map_err(|_| format!("{text:?}: expected TS/INDEX"))?;
            return Ok(DelayedSelector::One(ts, index));
        }
        if let Ok(ts) = text.parse::<i64>() {
            return Ok(DelayedSelector::At(ts));
        }
        if text.is_empty() || text.contains(char::is_whitespace) {
            return Err(format!("{text:?} is neither a time, TS/INDEX nor a job id"));
        }
        Ok(DelayedSelector::Id(text.to_string()))
    }
}

/// The scheduler's state in Redis: who leads, and the last tick of each schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchedulerState {
    pub leader: Option<crate::protocol::scheduler::LeaderLock>,
    /// Milliseconds the lock has left.
    pub leader_ttl_ms: Option<i64>,
    pub last_ticks: std::collections::HashMap<String, i64>,
    /// Other implementations' scheduler locks that are held: key → holder.
    pub other_schedulers: std::collections::BTreeMap<String, String>,
}

fn delayed_item(at: i64, index: usize, raw: String) -> DelayedItem {
    let parsed: Option<serde_json::Map<String, Value>> = match serde_json::from_str(&raw) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    };
    let text = |k: &str| {
        parsed
            .as_ref()
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    DelayedItem {
        at,
        index,
        class: text("class"),
        queue: text("queue"),
        id: text("id"),
        args: parsed.as_ref().and_then(|m| m.get("args")).cloned(),
        raw,
    }
}

impl Client {
    /// Puts a job into the delayed queue, due at `at` (unix seconds), as resque-scheduler does
    /// (`delayed:<ts>`, `timestamps:`, `delayed_queue_schedule`). A tracked job gets an id and
    /// its WAITING status now; it keeps both when it reaches its queue.
    pub async fn enqueue_at(
        &mut self,
        queue: &str,
        class: &str,
        args: Option<Value>,
        at: i64,
        track: bool,
    ) -> Result<DelayedJob> {
        check_queue_name(queue)?;
        if class.trim().is_empty() {
            return Err(ClientError::Invalid(
                "the job class must not be empty".into(),
            ));
        }
        let args = check_args(args)?;
        let id = track.then(new_job_id);
        let item = crate::protocol::scheduler::delayed_item(class, args, queue, id.as_deref());
        let status_key = id.as_deref().map(|id| self.keys.job_status(id, None));
        crate::protocol::scheduler::schedule(&self.keys, at, &item, status_key.as_deref())
            .query_async::<()>(&mut self.conn)
            .await
            .map_err(self.redis_err())?;
        Ok(DelayedJob { at, id })
    }

    /// [`Client::enqueue_at`] `delay` from now (rounded up to the next whole second).
    pub async fn enqueue_in(
        &mut self,
        queue: &str,
        class: &str,
        args: Option<Value>,
        delay: std::time::Duration,
        track: bool,
    ) -> Result<DelayedJob> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let at = (now_ms + delay.as_millis().min(i64::MAX as u128 / 2) as i64 + 999) / 1000;
        self.enqueue_at(queue, class, args, at, track).await
    }

    /// Due times from `start` (earliest first), at most `count`, with their job counts.
    pub async fn delayed(&mut self, start: isize, count: usize) -> Result<Vec<DelayedTime>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let times: Vec<i64> = self
            .conn
            .zrange(
                self.keys.delayed_schedule(),
                start,
                start + count as isize - 1,
            )
            .await
            .map_err(self.redis_err())?;
        let lengths = self.delayed_lengths(&times).await?;
        Ok(times
            .into_iter()
            .zip(lengths)
            .map(|(at, jobs)| DelayedTime { at, jobs })
            .collect())
    }

    async fn delayed_lengths(&mut self, times: &[i64]) -> Result<Vec<usize>> {
        if times.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for ts in times {
            // LLEN of a key of another type is an error; count it as empty.
            pipe.cmd("EVAL")
                .arg("if redis.call('TYPE', KEYS[1])['ok'] == 'list' then return redis.call('LLEN', KEYS[1]) end return 0")
                .arg(1)
                .arg(self.keys.delayed_at(*ts));
        }
        pipe.query_async(&mut self.conn)
            .await
            .map_err(self.redis_err())
    }

    /// Jobs in the delayed queue: ZCARD, then the lengths of the lists, pipelined a thousand at
    /// a time (never KEYS).
    pub async fn delayed_count(&mut self) -> Result<u64> {
        let mut total = 0u64;
        let mut start = 0isize;
        loop {
            let page = self.delayed(start, 1000).await?;
            total += page.iter().map(|t| t.jobs as u64).sum::<u64>();
            if page.len() < 1000 {
                return Ok(total);
            }
            start += 1000;
        }
    }

    /// The items due at `at`.
    pub async fn delayed_at(&mut self, at: i64) -> Result<Vec<DelayedItem>> {
        let key = self.keys.delayed_at(at);
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut self.conn)
            .await
            .map_err(self.redis_err())?;
        if kind != "list" {
            return Ok(Vec::new());
        }
        let raws: Vec<Vec<u8>> = self
            .conn
            .lrange(&key, 0, -1)
            .await
            .map_err(self.redis_err())?;
        Ok(raws
            .into_iter()
            .enumerate()
            .map(|(i, raw)| delayed_item(at, i, String::from_utf8_lossy(&raw).into_owned()))
            .collect())
    }

    /// The items a selector names (a job id is looked for in every due time).
    pub async fn delayed_find(&mut self, selector: &DelayedSelector) -> Result<Vec<DelayedItem>> {
        match selector {
            DelayedSelector::At(at) => self.delayed_at(*at).await,
            DelayedSelector::One(at, index) => Ok(self
                .delayed_at(*at)
                .await?
                .into_iter()
                .filter(|i| i.index == *index)
                .collect()),
            DelayedSelector::Id(id) => {
                let mut found = Vec::new();
                let mut start = 0isize;
                loop {
                    let page = self.delayed(start, 1000).await?;
                    for t in &page {
                        found.extend(
                            self.delayed_at(t.at)
                                .await?
                                .into_iter()
                                .filter(|i| i.id.as_deref() == Some(id.as_str())),
                        );
                    }
                    if page.len() < 1000 {
                        return Ok(found);
                    }
                    start += 1000;
                }
            }
        }
    }

    /// Takes the selected items out of the delayed queue; with `run_now`, into their queues.
    /// Each item is taken by its exact bytes, once, even while a scheduler is moving it.
    /// Returns how many were taken.
    pub async fn delayed_take(
        &mut self,
        selector: &DelayedSelector,
        run_now: bool,
    ) -> Result<usize> {
        let items = self.delayed_find(selector).await?;
        let mut taken = 0;
        for item in items {
            let queue = if run_now {
                match item.queue.as_deref() {
                    Some(q) if !q.is_empty() => Some(q.to_string()),
                    _ => {
                        return Err(ClientError::Invalid(format!(
                            "delayed item {}/{} names no queue: {}",
                            item.at, item.index, item.raw
                        )))
                    }
                }
            } else {
                None
            };
            let r: i64 = crate::protocol::scheduler::take_delayed(
                &self.keys,
                item.at,
                item.raw.as_bytes(),
                queue.as_deref(),
            )
            .invoke_async(&mut self.conn)
            .await
            .map_err(self.redis_err())?;
            if r == -1 {
                return Err(ClientError::Invalid(format!(
                    "queue key of {:?} is not a list",
                    queue.unwrap_or_default()
                )));
            }
            taken += r.max(0) as usize;
        }
        Ok(taken)
    }

    /// Who leads the scheduler and the last tick of each schedule.
    pub async fn scheduler_state(&mut self) -> Result<SchedulerState> {
        let (lock, ttl, last): (
            Option<String>,
            i64,
            std::collections::HashMap<String, String>,
        ) = redis::pipe()
            .get(self.keys.scheduler_leader())
            .pttl(self.keys.scheduler_leader())
            .hgetall(self.keys.schedule_last())
            .query_async(&mut self.conn)
            .await
            .map_err(self.redis_err())?;
        let other_keys = self.keys.other_scheduler_locks();
        let holders: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&other_keys)
            .query_async(&mut self.conn)
            .await
            .map_err(self.redis_err())?;
        let other_schedulers = other_keys
            .into_iter()
            .zip(holders)
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        Ok(SchedulerState {
            other_schedulers,
            leader: lock
                .as_deref()
                .and_then(crate::protocol::scheduler::LeaderLock::parse),
            leader_ttl_ms: (ttl >= 0).then_some(ttl),
            last_ticks: last
                .into_iter()
                .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
                .collect(),
        })
    }
}

fn check_args(args: Option<Value>) -> Result<Value> {
    match args {
        None => Ok(Value::Null),
        Some(v @ (Value::Object(_) | Value::Array(_))) => Ok(v),
        Some(other) => Err(ClientError::Invalid(format!(
            "job arguments must be a JSON object or array (as php-resque requires), not {other}"
        ))),
    }
}

fn check_queue_name(queue: &str) -> Result<()> {
    if queue.is_empty()
        || queue.contains(char::is_whitespace)
        || queue.contains(',')
        || queue == "*"
    {
        return Err(ClientError::Invalid(format!(
            "{queue:?} is not a queue name (no spaces, commas or \"*\")"
        )));
    }
    Ok(())
}
