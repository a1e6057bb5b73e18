//! Tells the scheduler when `delayed_queue_schedule` changes, whoever changed it (our client,
//! Ruby, node, php): Redis client tracking in broadcast mode on that one key, on a RESP3
//! connection of its own, as [`crate::worker::wakeup`] does for the queues. The connection PINGs
//! every [`LIVENESS`] so a half-open socket is noticed; while tracking is down, `tracking` is
//! false and the scheduler looks every second instead.

use crate::config::RedisConfig;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tracing::debug;

const LIVENESS: Duration = Duration::from_secs(10);

pub async fn run(redis: RedisConfig, key: String, changed: Arc<Notify>, tracking: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = std::time::Instant::now();
        let result = track(&redis, &key, &changed, &tracking).await;
        if started.elapsed() > LIVENESS {
            backoff = Duration::from_millis(200);
        }
        tracking.store(false, Ordering::Relaxed);
        changed.notify_one();
        if let Err(e) = result {
            debug!(error = %e, retry_in = ?backoff, "schedule change notifications unavailable; the scheduler looks every second");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn track(
    redis: &RedisConfig,
    key: &str,
    changed: &Notify,
    tracking: &AtomicBool,
) -> Result<(), redis::RedisError> {
    let settings = redis
        .connection
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let info = redis.connection.clone().set_redis_settings(settings);
    let client = redis::Client::open(info)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = redis.async_config().set_push_sender(tx);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(key)
        .query_async::<()>(&mut conn)
        .await?;
    tracking.store(true, Ordering::Relaxed);
    // Something may have changed before tracking was on.
    changed.notify_one();
    let mut liveness = tokio::time::interval(LIVENESS);
    liveness.tick().await;
    let closed = || redis::RedisError::from((redis::ErrorKind::Io, "tracking connection closed"));
    loop {
        tokio::select! {
            push = rx.recv() => match push {
                Some(push) => match push.kind {
                    redis::PushKind::Invalidate => changed.notify_one(),
                    redis::PushKind::Disconnection => return Err(closed()),
                    _ => {}
                },
                None => return Err(closed()),
            },
            _ = liveness.tick() => {
                redis::cmd("PING").query_async::<()>(&mut conn).await?;
            }
        }
    }
}
