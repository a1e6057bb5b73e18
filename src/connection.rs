//! Redis connections that notice when they are dead.
//!
//! redis-rs's `ConnectionManager` reconnects only when the socket reports an error. A connection
//! that half-opened (a NAT forgot it, the Redis host lost power) keeps timing out forever, and a
//! demoted master keeps answering `READONLY`. [`Connection`] is shared by clones (one multiplexed
//! socket) and replaces its socket on every error that means "this server or socket is no good":
//! I/O errors, response timeouts, `READONLY`, `LOADING`, `MASTERDOWN`. It connects lazily, so
//! creating one never blocks the caller, and it loads the Lua scripts on every new socket.
//!
//! Every connection of a daemon reports to one [`Health`], which is what STATUS= shows.

use crate::config::RedisConfig;
use crate::protocol::scripts;
use futures::FutureExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tracing::{debug, info, warn};

/// How Redis is doing, as the daemon's connections see it.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<HealthState>,
    /// Bumped when Sentinel announces a new master: every socket made before is left.
    switches: std::sync::atomic::AtomicU64,
    switched: tokio::sync::Notify,
}

#[derive(Debug, Default, Clone)]
struct HealthState {
    /// Since when commands fail, and how (None while Redis answers).
    down: Option<(SystemTime, Problem)>,
}

/// Why Redis does not do what we ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    Unreachable,
    OutOfMemory,
    ReadOnly,
    Loading,
    Other,
}

/// The server's error code, also when redis-rs folded it into a transaction's or a script's
/// error ("Transaction aborted: [(Index 0, error: \"OOM\": …)]").
fn server_code(e: &RedisError) -> Option<&'static str> {
    const CODES: [&str; 5] = ["OOM", "READONLY", "MASTERDOWN", "LOADING", "NOREPLICAS"];
    if let Some(code) = e.code() {
        if let Some(known) = CODES.iter().find(|c| **c == code) {
            return Some(known);
        }
    }
    let text = e.to_string();
    CODES
        .iter()
        .find(|c| {
            text.contains(&format!("\"{c}\""))
                || text.starts_with(*c)
                || text.contains(&format!("{c} "))
        })
        .copied()
}

impl Problem {
    fn of(e: &RedisError) -> Problem {
        if let Some(code) = server_code(e) {
            return match code {
                "OOM" => Problem::OutOfMemory,
                "READONLY" | "MASTERDOWN" | "NOREPLICAS" => Problem::ReadOnly,
                _ => Problem::Loading,
            };
        }
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
            Problem::Unreachable
        } else {
            Problem::Other
        }
    }

    fn text(self) -> &'static str {
        match self {
            Problem::Unreachable => "unreachable",
            Problem::OutOfMemory => "out of memory",
            Problem::ReadOnly => "read-only (a replica?)",
            Problem::Loading => "loading its data",
            Problem::Other => "failing",
        }
    }
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A command succeeded.
    pub fn ok(&self) {
        let mut state = self.lock();
        if let Some((since, problem)) = state.down.take() {
            let secs = since.elapsed().map(|d| d.as_secs()).unwrap_or(0);
            info!(
                was = problem.text(),
                for_secs = secs,
                "Redis answers again after being {} for {secs} s",
                problem.text()
            );
        }
    }

    /// A command failed with an error that is Redis's, not the command's.
    pub fn failed(&self, e: &RedisError) {
        let problem = Problem::of(e);
        if problem == Problem::Other {
            return;
        }
        let mut state = self.lock();
        match &mut state.down {
            Some((_, p)) => *p = problem,
            None => state.down = Some((SystemTime::now(), problem)),
        }
    }

    /// Sentinel named a new master: every connection of the daemon moves over.
    pub fn master_switched(&self) {
        self.switches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.switched.notify_waiters();
    }

    /// How many master switches were seen.
    pub fn switches(&self) -> u64 {
        self.switches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Completes at the next master switch.
    pub async fn next_switch(&self) {
        self.switched.notified().await
    }

    pub fn is_ok(&self) -> bool {
        self.lock().down.is_none()
    }

    /// The current problem, if any.
    pub fn problem(&self) -> Option<Problem> {
        self.lock().down.as_ref().map(|(_, p)| *p)
    }

    /// "ok", or "unreachable since 21:04:05 UTC" for STATUS=.
    pub fn text(&self) -> String {
        match &self.lock().down {
            None => "ok".to_string(),
            Some((since, problem)) => {
                let since: chrono::DateTime<chrono::Utc> = (*since).into();
                format!("{} since {}", problem.text(), since.format("%H:%M:%S UTC"))
            }
        }
    }
}

/// A client for the Redis to use: the configured one, or — through Sentinel — the master the
/// sentinels name now (asked again on every new socket, so a failover is followed). The
/// master's role is checked before it is used. Bounded by `connect_timeout` per attempt.
pub async fn open_client(redis: &RedisConfig) -> Result<redis::Client, RedisError> {
    let Some(sentinel) = &redis.sentinel else {
        return redis.client();
    };
    let nodes: Vec<redis::ConnectionInfo> = sentinel
        .nodes
        .iter()
        .map(|(host, port)| {
            use redis::IntoConnectionInfo;
            let info = redis::ConnectionAddr::Tcp(host.clone(), *port).into_connection_info()?;
            let mut settings = info.redis_settings().clone();
            if let Some(user) = &sentinel.username {
                settings = settings.set_username(user);
            }
            if let Some(pass) = &sentinel.password {
                settings = settings.set_password(pass);
            }
            Ok(info
                .set_redis_settings(settings)
                .set_tcp_settings(redis.connection.tcp_settings().clone()))
        })
        .collect::<Result<_, RedisError>>()?;
    let mut asker = redis::sentinel::Sentinel::build(nodes)?;
    let node_info = redis::sentinel::SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(redis.connection.redis_settings().clone())
        .set_tcp_settings(redis.connection.tcp_settings().clone());
    let limit = redis.connect_timeout * 2;
    let client = tokio::time::timeout(
        limit,
        asker.async_master_for(&sentinel.master_name, Some(&node_info)),
    )
    .await
    .map_err(|_| {
        RedisError::from((
            ErrorKind::Io,
            "no sentinel named the master in time",
            format!("{:?} within {limit:?}", sentinel.master_name),
        ))
    })??;
    debug!(
        master = %crate::config::describe_connection(client.get_connection_info()),
        name = %sentinel.master_name,
        "Sentinel named the master"
    );
    Ok(client)
}

/// Listens to the sentinels' `+switch-master` announcements for our master and tells `health`,
/// so every connection moves to the new master at once instead of writing to a demoted one
/// until Sentinel reconfigures it (a split brain whose writes the resync would drop). Runs
/// until aborted; does nothing without Sentinel.
pub async fn follow_switches(redis: RedisConfig, health: Arc<Health>) {
    use futures::StreamExt;
    let Some(sentinel) = redis.sentinel.clone() else {
        return;
    };
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        for (host, port) in &sentinel.nodes {
            let mut info = match redis::IntoConnectionInfo::into_connection_info(
                redis::ConnectionAddr::Tcp(host.clone(), *port),
            ) {
                Ok(info) => info,
                Err(_) => continue,
            };
            let mut settings = info.redis_settings().clone();
            if let Some(user) = &sentinel.username {
                settings = settings.set_username(user);
            }
            if let Some(pass) = &sentinel.password {
                settings = settings.set_password(pass);
            }
            info = info
                .set_redis_settings(settings)
                .set_tcp_settings(redis.connection.tcp_settings().clone());
            let subscribed = async {
                let client = redis::Client::open(info)?;
                let mut pubsub =
                    tokio::time::timeout(redis.connect_timeout, client.get_async_pubsub())
                        .await
                        .map_err(|_| {
                            RedisError::from((ErrorKind::Io, "sentinel does not answer"))
                        })??;
                pubsub.subscribe("+switch-master").await?;
                Ok::<_, RedisError>(pubsub)
            }
            .await;
            let pubsub = match subscribed {
                Ok(p) => p,
                Err(e) => {
                    debug!(sentinel = %format!("{host}:{port}"), error = %e, "cannot listen to this sentinel");
                    continue;
                }
            };
            backoff = std::time::Duration::from_millis(200);
            debug!(sentinel = %format!("{host}:{port}"), "listening for master switches");
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let text: String = msg.get_payload().unwrap_or_default();
                // "<name> <old ip> <old port> <new ip> <new port>"
                if text.split(' ').next() == Some(sentinel.master_name.as_str()) {
                    warn!(switch = %text, "Sentinel switched the master; every connection moves over");
                    health.master_switched();
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Whether an error means the socket (or the server behind it) must be replaced.
pub fn needs_reconnect(e: &RedisError) -> bool {
    if e.is_unrecoverable_error() || e.is_timeout() || e.is_connection_dropped() {
        return true;
    }
    if matches!(
        server_code(e),
        Some("READONLY" | "MASTERDOWN" | "LOADING" | "NOREPLICAS")
    ) {
        return true;
    }
    matches!(
        e.kind(),
        ErrorKind::Io
            | ErrorKind::Server(ServerErrorKind::ReadOnly)
            | ErrorKind::Server(ServerErrorKind::BusyLoading)
            | ErrorKind::Server(ServerErrorKind::MasterDown)
    )
}

fn is_noscript(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Server(ServerErrorKind::NoScript))
}

/// A lazily connected, self-replacing, shared Redis connection. Clones share the socket.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
    db: i64,
}

struct Inner {
    redis: RedisConfig,
    health: Arc<Health>,
    /// The socket in use and its generation (bumped on every replacement, so that of many
    /// callers failing on the same dead socket only the first one drops it).
    /// The socket in use, its generation and the master-switch count it was made under.
    current: Mutex<Option<(u64, u64, MultiplexedConnection)>>,
    /// Held while connecting, so that many callers finding no socket connect once.
    connecting: tokio::sync::Mutex<()>,
    generation: std::sync::atomic::AtomicU64,
}

impl Connection {
    /// A connection to `redis`; nothing is sent until it is used.
    pub fn new(redis: &RedisConfig, health: Arc<Health>) -> Connection {
        let db = redis.connection.redis_settings().db();
        Connection {
            inner: Arc::new(Inner {
                redis: redis.clone(),
                health,
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                generation: std::sync::atomic::AtomicU64::new(0),
            }),
            db,
        }
    }

    /// Connects now and checks that Redis accepts our scripts and a write-free command: what a
    /// start or a reload waits for.
    pub async fn check(&self) -> Result<(), RedisError> {
        let mut conn = self.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await
    }

    /// How many sockets this connection has made (a change means a reconnect).
    pub fn generation(&self) -> u64 {
        self.inner
            .generation
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.inner.health
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<(u64, u64, MultiplexedConnection)>> {
        self.inner.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The socket in use, unless the master switched since it was made.
    fn usable(&self) -> Option<(u64, MultiplexedConnection)> {
        let switches = self.inner.health.switches();
        let mut current = self.current();
        match current.as_ref() {
            Some((generation, made_at, conn)) if *made_at == switches => {
                Some((*generation, conn.clone()))
            }
            Some(_) => {
                info!(redis = %self.inner.redis.display, "Sentinel named a new master: reconnecting");
                *current = None;
                None
            }
            None => None,
        }
    }

    async fn socket(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        // The fast path, taken by every command: a clone of the socket in use.
        if let Some(found) = self.usable() {
            return Ok(found);
        }
        let _connecting = self.inner.connecting.lock().await;
        if let Some(found) = self.usable() {
            return Ok(found);
        }
        let switches = self.inner.health.switches();
        let client = open_client(&self.inner.redis).await?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.inner.redis.async_config())
            .await?;
        load_scripts(&mut conn).await?;
        let generation = self
            .inner
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        debug!(redis = %self.inner.redis.display, at = %crate::config::describe_connection(client.get_connection_info()), generation, "connected to Redis");
        *self.current() = Some((generation, switches, conn.clone()));
        Ok((generation, conn))
    }

    /// Drops the socket of `generation` if it is still the current one.
    fn discard(&self, generation: u64, why: &RedisError) {
        let mut current = self.current();
        if matches!(current.as_ref(), Some((g, _, _)) if *g == generation) {
            *current = None;
            warn!(redis = %self.inner.redis.display, error = %why, "dropping the Redis connection; the next command reconnects");
        }
    }

    /// Runs one request on the current socket, replacing the socket on errors that call for it
    /// and retrying once after NOSCRIPT (the server lost our scripts: a restart, a failover).
    /// Retrying is safe because every script of ours is idempotent per worker.
    async fn request(&self, request: Request<'_>) -> Result<Reply, RedisError> {
        let (generation, mut conn) = match self.socket().await {
            Ok(s) => s,
            Err(e) => {
                self.inner.health.failed(&e);
                return Err(e);
            }
        };
        let mut result = request.send(&mut conn).await;
        // Server errors arrive as values (redis-rs turns them into errors later, per reply).
        if matches!(server_error(&result), Some(e) if is_noscript(&e)) {
            result = match load_scripts(&mut conn).await {
                Ok(()) => request.send(&mut conn).await,
                Err(load) => Err(load),
            };
        }
        match server_error(&result) {
            None => self.inner.health.ok(),
            Some(e) => {
                self.inner.health.failed(&e);
                if needs_reconnect(&e) {
                    self.discard(generation, &e);
                }
            }
        }
        result
    }
}

/// The error of a request: its own, or the first server error among its replies.
fn server_error(result: &Result<Reply, RedisError>) -> Option<RedisError> {
    fn in_value(v: &Value, depth: usize) -> Option<RedisError> {
        match v {
            Value::ServerError(e) => Some(e.clone().into()),
            Value::Array(items) if depth > 0 => items.iter().find_map(|i| in_value(i, depth - 1)),
            _ => None,
        }
    }
    match result {
        Err(e) => Some(e.clone()),
        Ok(Reply::One(v)) => in_value(v, 1),
        Ok(Reply::Many(vs)) => vs.iter().find_map(|v| in_value(v, 1)),
    }
}

#[derive(Clone, Copy)]
enum Request<'a> {
    One(&'a Cmd),
    Many(&'a Pipeline, usize, usize),
}

enum Reply {
    One(Value),
    Many(Vec<Value>),
}

impl Request<'_> {
    async fn send(self, conn: &mut MultiplexedConnection) -> Result<Reply, RedisError> {
        match self {
            Request::One(cmd) => conn.req_packed_command(cmd).await.map(Reply::One),
            Request::Many(pipe, offset, count) => conn
                .req_packed_commands(pipe, offset, count)
                .await
                .map(Reply::Many),
        }
    }
}

async fn load_scripts(conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
    let mut pipe = redis::pipe();
    for source in scripts::all_sources() {
        pipe.cmd("SCRIPT").arg("LOAD").arg(source).ignore();
    }
    pipe.query_async::<()>(conn).await
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        async move {
            match self.request(Request::One(cmd)).await? {
                Reply::One(v) => Ok(v),
                Reply::Many(mut v) => Ok(v.pop().unwrap_or(Value::Nil)),
            }
        }
        .boxed()
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        async move {
            match self.request(Request::Many(pipeline, offset, count)).await? {
                Reply::Many(v) => Ok(v),
                Reply::One(v) => Ok(vec![v]),
            }
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}
