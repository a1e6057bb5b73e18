//! Configuration: `/etc/resque.toml` + `[instance.NAME]` + php-resque's environment variables +
//! command-line flags, merged into one validated [`Config`].
//!
//! Precedence (highest first): flags, environment, `[instance.NAME]`, `[worker]`, defaults; for
//! the queues of an instance the last default is the queue named after it. [`load_explained`]
//! also says where each effective value came from (`resque config check`).
//! Every error names where the bad value came from (file and line, variable or flag) and the key;
//! the daemon exits with 78 (EX_CONFIG) on one. The Redis password never appears in errors.

use crate::handler::exec::ExecSettings;
use crate::handler::php::{Isolation, PhpSettings};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/resque.toml";

/// A configuration error: where, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {key}: {message}")]
pub struct ConfigError {
    /// `/etc/resque.toml:12`, `environment variable COUNT`, `flag --count`.
    pub origin: String,
    /// `worker.count`, `redis.url`, …
    pub key: String,
    pub message: String,
    /// The I/O error when the file could not be read (`PermissionDenied` → exit 77).
    pub io: Option<std::io::ErrorKind>,
}

impl ConfigError {
    fn new(origin: impl Into<String>, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.into(),
            key: key.into(),
            message: message.into(),
            io: None,
        }
    }
}

/// Where each effective setting came from: `[worker]`, `[instance.NAME]`, `environment variable
/// COUNT`, `flag --count`, …; a key that is not listed has its built-in default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins(BTreeMap<&'static str, String>);

impl Origins {
    /// The origin of a dotted key (`worker.count`, `redis.url`, `handlers`).
    pub fn of(&self, key: &str) -> &str {
        self.0
            .get(key)
            .map(String::as_str)
            .unwrap_or("built-in default")
    }

    fn set(&mut self, key: &'static str, origin: impl Into<String>) {
        self.0.insert(key, origin.into());
    }

    fn mark_section(&mut self, section: &WorkerSection, origin: &str) {
        let set = [
            ("worker.queues", section.queues.is_some()),
            ("worker.count", section.count.is_some()),
            ("worker.interval", section.interval.is_some()),
            (
                "worker.shutdown_timeout",
                section.shutdown_timeout.is_some(),
            ),
            ("worker.pid_file", section.pid_file.is_some()),
            ("worker.log_level", section.log_level.is_some()),
            ("worker.on_lost", section.on_lost.is_some()),
            ("worker.max_lost", section.max_lost.is_some()),
            ("worker.dead_after", section.dead_after.is_some()),
        ];
        for (key, is_set) in set {
            if is_set {
                self.set(key, origin);
            }
        }
    }

    fn mark_redis(&mut self, section: &RedisSection, origin: &str) {
        let address = section.url.is_some()
            || section.host.is_some()
            || section.port.is_some()
            || section.socket.is_some();
        let set = [
            ("redis.address", address),
            ("redis.database", section.database.is_some()),
            ("redis.namespace", section.namespace.is_some()),
        ];
        for (key, is_set) in set {
            if is_set {
                self.set(key, origin);
            }
        }
    }

    fn mark_overrides(&mut self, o: &Overrides, source: Source) {
        let set = [
            ("worker.queues", o.queues.is_some(), "QUEUE", "queue"),
            ("worker.count", o.count.is_some(), "COUNT", "count"),
            (
                "worker.interval",
                o.interval.is_some(),
                "INTERVAL",
                "interval",
            ),
            (
                "worker.shutdown_timeout",
                o.shutdown_timeout.is_some(),
                "SHUTDOWN_TIMEOUT",
                "shutdown-timeout",
            ),
            ("worker.pid_file", o.pid_file.is_some(), "PIDFILE", "pid"),
            ("worker.log_level", o.debug, "VVERBOSE", "debug"),
            (
                "worker.log_level",
                !o.debug && o.log_level.is_some(),
                "VERBOSE",
                "log-level",
            ),
            (
                "redis.address",
                o.redis_url.is_some(),
                "REDIS_BACKEND",
                "redis",
            ),
            (
                "redis.database",
                o.database.is_some(),
                "REDIS_BACKEND_DB",
                "database",
            ),
            (
                "redis.namespace",
                o.namespace.is_some(),
                "PREFIX",
                "namespace",
            ),
        ];
        for (key, is_set, env, flag) in set {
            if is_set {
                self.set(key, origin_of(source, env, flag));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Value types that validate while they are read, so TOML errors carry the line of the value.

/// A duration: `"5s"`, `"500ms"`, `"2m"`, or a number of seconds (php-resque's `INTERVAL=5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl Seconds {
    pub fn parse(text: &str) -> Result<Seconds, String> {
        let text = text.trim();
        if let Ok(secs) = text.parse::<f64>() {
            return Duration::try_from_secs_f64(secs)
                .map(Seconds)
                .map_err(|_| format!("{text:?} is not a valid number of seconds"));
        }
        humantime::parse_duration(text).map(Seconds).map_err(|e| {
            format!("{text:?} is not a duration ({e}); write e.g. \"5s\", \"500ms\", \"2m\" or 5")
        })
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Text(String),
        }
        let parsed = match Raw::deserialize(d)? {
            Raw::Int(n) if n >= 0 => Ok(Seconds(Duration::from_secs(n as u64))),
            Raw::Int(n) => Err(format!("{n} is negative; a duration must be 0 or more")),
            Raw::Float(f) => Seconds::parse(&f.to_string()),
            Raw::Text(t) => Seconds::parse(&t),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

/// A count of at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub u32);

impl Count {
    pub fn parse(text: &str) -> Result<Count, String> {
        match text.trim().parse::<i64>() {
            Ok(n) => Count::check(n),
            Err(_) => Err(format!("{text:?} is not a whole number")),
        }
    }
    fn check(n: i64) -> Result<Count, String> {
        if n < 1 {
            Err(format!("{n} is not allowed; count must be at least 1"))
        } else if n > 1024 {
            Err(format!("{n} is too many; count must be at most 1024"))
        } else {
            Ok(Count(n as u32))
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Count::check(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A size in bytes: `"256M"`, `"1G"`, `"512K"` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl Bytes {
    pub fn parse(text: &str) -> Result<Bytes, String> {
        let t = text.trim();
        let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?} is not a size; write e.g. \"256M\""))?;
        let factor = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            other => return Err(format!("unknown size unit {other:?}; use K, M or G")),
        };
        Ok(Bytes(n.saturating_mul(factor)))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Bytes(n)),
            Raw::Text(t) => Bytes::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Queue names: an array, or php-resque's comma-separated string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueList(pub Vec<String>);

impl QueueList {
    pub fn parse(text: &str) -> Result<QueueList, String> {
        QueueList::check(text.split(',').map(|q| q.trim().to_string()).collect())
    }
    fn check(queues: Vec<String>) -> Result<QueueList, String> {
        let queues: Vec<String> = queues.into_iter().filter(|q| !q.is_empty()).collect();
        if queues.is_empty() {
            return Err("no queue given; name at least one queue, or \"*\" for all".into());
        }
        if let Some(bad) = queues.iter().find(|q| q.contains(char::is_whitespace)) {
            return Err(format!("queue name {bad:?} contains whitespace"));
        }
        Ok(QueueList(queues))
    }
}

impl<'de> Deserialize<'de> for QueueList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::List(list) => QueueList::check(list),
            Raw::Text(t) => QueueList::parse(&t),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn parse(text: &str) -> Result<LogLevel, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "error" => Ok(LogLevel::Error),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            other => Err(format!(
                "unknown log level {other:?}; use error, warn, info, debug or trace"
            )),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// What recovery does with a job found in the hands of a dead worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLost {
    /// Put it back at the head of its queue (default).
    Requeue,
    /// Record it as failed (a dirty exit), as Ruby resque's pruning does.
    Fail,
}

/// A string whose value is never shown: a TOML type error on it says what was expected, not what
/// was written (`password = 12345678` must not echo the number).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        const NOT_SHOWN: &str = "must be a string in quotes (the value written is not shown)";
        macro_rules! refuse {
            ($($name:ident: $t:ty),*) => {
                $( fn $name<E: serde::de::Error>(self, _: $t) -> Result<Secret, E> {
                    Err(E::custom(NOT_SHOWN))
                } )*
            };
        }
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            refuse!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128,
                visit_u128: u128, visit_f64: f64, visit_char: char, visit_bytes: &[u8]);
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(serde::de::Error::custom(NOT_SHOWN))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(serde::de::Error::custom(NOT_SHOWN))
            }
        }
        d.deserialize_any(Visitor)
    }
}

// ---------------------------------------------------------------------------------------------
// The file, as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    redis: RedisSection,
    #[serde(default)]
    worker: WorkerSection,
    #[serde(default)]
    instance: BTreeMap<String, WorkerSection>,
    #[serde(default)]
    handler: Vec<HandlerSection>,
    #[serde(default)]
    scheduler: crate::scheduler::config::SchedulerSection,
    #[serde(default)]
    schedule: Vec<crate::scheduler::config::ScheduleSection>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    url: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    socket: Option<PathBuf>,
    database: Option<i64>,
    username: Option<String>,
    password: Option<Secret>,
    /// A file holding the password (its trailing newline ignored).
    password_file: Option<PathBuf>,
    namespace: Option<String>,
    connect_timeout: Option<Seconds>,
    command_timeout: Option<Seconds>,
    /// Redis Sentinel: `["host:26379", …]`; with `master_name`, the master is asked of them.
    sentinels: Option<Vec<String>>,
    master_name: Option<String>,
    sentinel_username: Option<String>,
    sentinel_password: Option<Secret>,
    sentinel_password_file: Option<PathBuf>,
    /// Durability: outcomes and reservations wait for this many replicas (`WAIT`).
    wait_replicas: Option<u32>,
    wait_timeout: Option<Seconds>,
}

/// Keys allowed both in `[worker]` and in `[instance.NAME]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerSection {
    queues: Option<QueueList>,
    count: Option<Count>,
    interval: Option<Seconds>,
    shutdown_timeout: Option<Seconds>,
    pid_file: Option<PathBuf>,
    log_level: Option<LogLevel>,
    on_lost: Option<OnLost>,
    max_lost: Option<Count>,
    dead_after: Option<Seconds>,
}

impl WorkerSection {
    /// Fields set in `over` win.
    fn overlay(mut self, over: &WorkerSection) -> WorkerSection {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f.clone(); } )* };
        }
        take!(
            queues,
            count,
            interval,
            shutdown_timeout,
            pid_file,
            log_level,
            on_lost,
            max_lost,
            dead_after
        );
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum HandlerType {
    Exec,
    Php,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandlerSection {
    class: toml::Spanned<String>,
    #[serde(rename = "type")]
    kind: HandlerType,
    command: Option<Vec<String>>,
    timeout: Option<Seconds>,
    grace: Option<Seconds>,
    #[serde(default)]
    env: BTreeMap<String, Secret>,
    #[serde(default)]
    pass_env: Vec<String>,
    working_dir: Option<PathBuf>,
    php: Option<String>,
    bootstrap: Option<PathBuf>,
    isolation: Option<Isolation>,
    max_jobs: Option<u32>,
    max_memory: Option<Bytes>,
    runner: Option<PathBuf>,
    retry: Option<crate::scheduler::config::RetrySection>,
    start_timeout: Option<Seconds>,
}

// ---------------------------------------------------------------------------------------------
// The result.

/// How to reach Redis. `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct RedisConfig {
    pub connection: redis::ConnectionInfo,
    /// Key prefix, normalized (`resque:`; may be empty).
    pub namespace: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// The address without credentials, for logs and errors.
    pub display: String,
    /// Where to ask for the master, if through Sentinel (`connection` then gives everything
    /// but the address).
    pub sentinel: Option<SentinelSettings>,
    /// Replicas every reservation and outcome waits for (0: none), and for how long at most.
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
}

/// Redis Sentinel: the sentinels to ask and the master's name. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    pub nodes: Vec<(String, u16)>,
    pub master_name: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("nodes", &self.nodes)
            .field("master_name", &self.master_name)
            .field("username", &self.username)
            .finish()
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("address", &self.display)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl PartialEq for RedisConfig {
    fn eq(&self, other: &Self) -> bool {
        self.display == other.display
            && self.namespace == other.namespace
            && self.connection.redis_settings().password()
                == other.connection.redis_settings().password()
            && self.connection.redis_settings().username()
                == other.connection.redis_settings().username()
            && self.connect_timeout == other.connect_timeout
            && self.command_timeout == other.command_timeout
            && self.sentinel == other.sentinel
            && self.wait_replicas == other.wait_replicas
            && self.wait_timeout == other.wait_timeout
    }
}

impl RedisConfig {
    /// A client for this Redis.
    pub fn client(&self) -> Result<redis::Client, redis::RedisError> {
        redis::Client::open(self.connection.clone())
    }

    /// Connection settings for the async connections.
    pub fn async_config(&self) -> redis::AsyncConnectionConfig {
        redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
    }

    pub fn keys(&self) -> crate::protocol::Keys {
        crate::protocol::Keys::new(&self.namespace)
    }
}

/// How one class pattern runs.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerKind {
    Exec(ExecSettings),
    Php(PhpSettings),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HandlerConfig {
    pub class: String,
    pub kind: HandlerKind,
    /// `retry = {…}`: failed attempts go to the delayed queue (see [`crate::scheduler::retry`]).
    pub retry: Option<crate::scheduler::retry::RetryPolicy>,
}

/// Settings of the worker pool of one daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    pub queues: Vec<String>,
    pub count: u32,
    /// How often an idle worker looks at its queues when no wake-up arrived (safety net; jobs
    /// normally start at once).
    pub interval: Duration,
    pub shutdown_timeout: Duration,
    pub pid_file: Option<PathBuf>,
    pub log_level: LogLevel,
    pub on_lost: OnLost,
    pub max_lost: u32,
    /// A worker whose heartbeat is older than this is dead (any host).
    pub dead_after: Duration,
}

/// One validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from, if any.
    pub source: Option<PathBuf>,
    pub instance: Option<String>,
    pub redis: RedisConfig,
    pub worker: WorkerConfig,
    pub handlers: Vec<HandlerConfig>,
    /// `[scheduler]`: delayed and recurring jobs moved by this daemon.
    pub scheduler: crate::scheduler::config::SchedulerConfig,
    /// `[[schedule]]`: recurring jobs.
    pub schedules: Vec<crate::scheduler::recurring::Schedule>,
}

/// What the command line and environment say, before merging.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub queues: Option<String>,
    pub count: Option<String>,
    pub interval: Option<String>,
    pub pid_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub debug: bool,
    pub app_include: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub database: Option<String>,
    pub namespace: Option<String>,
    pub shutdown_timeout: Option<String>,
    /// systemd's `$CREDENTIALS_DIRECTORY` (`LoadCredential=`): its `redis-password` is the
    /// password when nothing else gives one.
    pub credentials_dir: Option<PathBuf>,
}

/// Where a setting came from, to name it in errors.
#[derive(Debug, Clone, Copy)]
enum Source {
    Env,
    Flag,
}

impl Overrides {
    /// php-resque's environment variables (QUEUE, COUNT, INTERVAL, PIDFILE, VERBOSE, VVERBOSE,
    /// LOGGING, APP_INCLUDE, REDIS_BACKEND, REDIS_BACKEND_DB, PREFIX; BLOCKING is accepted and
    /// has no effect: we always block). Empty variables count as unset, as in php-resque.
    pub fn from_env() -> Overrides {
        Overrides::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Overrides {
        let log_level = if get("VVERBOSE").is_some() {
            Some("debug".to_string())
        } else if get("VERBOSE").is_some() || get("LOGGING").is_some() {
            Some("info".to_string())
        } else {
            None
        };
        Overrides {
            queues: get("QUEUE"),
            count: get("COUNT"),
            interval: get("INTERVAL"),
            pid_file: get("PIDFILE").map(PathBuf::from),
            log_level,
            debug: false,
            app_include: get("APP_INCLUDE").map(PathBuf::from),
            redis_url: get("REDIS_BACKEND"),
            database: get("REDIS_BACKEND_DB"),
            namespace: get("PREFIX"),
            shutdown_timeout: None,
            credentials_dir: get("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }
}

fn origin_of(source: Source, env: &str, flag: &str) -> String {
    match source {
        Source::Env => format!("environment variable {env}"),
        Source::Flag => format!("flag --{flag}"),
    }
}

/// Applies one layer of overrides onto the merged worker section and Redis section.
fn apply_overrides(
    o: &Overrides,
    source: Source,
    worker: &mut WorkerSection,
    redis: &mut RedisSection,
    app_include: &mut Option<PathBuf>,
) -> Result<(), ConfigError> {
    let err = |env: &str, flag: &str, key: &str, msg: String| {
        ConfigError::new(origin_of(source, env, flag), key, msg)
    };
    if let Some(q) = &o.queues {
        worker.queues =
            Some(QueueList::parse(q).map_err(|m| err("QUEUE", "queue", "worker.queues", m))?);
    }
    if let Some(c) = &o.count {
        worker.count = Some(Count::parse(c).map_err(|m| err("COUNT", "count", "worker.count", m))?);
    }
    if let Some(i) = &o.interval {
        worker.interval =
            Some(Seconds::parse(i).map_err(|m| err("INTERVAL", "interval", "worker.interval", m))?);
    }
    if let Some(s) = &o.shutdown_timeout {
        worker.shutdown_timeout = Some(Seconds::parse(s).map_err(|m| {
            err(
                "SHUTDOWN_TIMEOUT",
                "shutdown-timeout",
                "worker.shutdown_timeout",
                m,
            )
        })?);
    }
    if let Some(p) = &o.pid_file {
        worker.pid_file = Some(p.clone());
    }
    if o.debug {
        worker.log_level = Some(LogLevel::Debug);
    } else if let Some(l) = &o.log_level {
        worker.log_level = Some(
            LogLevel::parse(l).map_err(|m| err("VERBOSE", "log-level", "worker.log_level", m))?,
        );
    }
    if let Some(a) = &o.app_include {
        *app_include = Some(a.clone());
    }
    // As php-resque reads REDIS_BACKEND: it names the server; a database in the DSN's path wins
    // over REDIS_BACKEND_DB (Resque_Redis: "If we have found a database in our DSN, use it
    // instead"), and credentials in the DSN replace the file's. What the DSN leaves out (a
    // password or password_file, username, database, namespace, timeouts) stays as configured.
    let mut dsn_database = false;
    if let Some(backend) = &o.redis_url {
        use redis::IntoConnectionInfo;
        let url = backend_to_url(backend);
        let dsn = parse_backend(&url);
        dsn_database = dsn.database;
        let kept_password = match &redis.url {
            // A password in the replaced URL is the file's password too.
            Some(old) if redis.password.is_none() && redis.password_file.is_none() => old
                .as_str()
                .into_connection_info()
                .ok()
                .and_then(|i| i.redis_settings().password().map(|p| Secret(p.to_string()))),
            _ => redis.password.clone(),
        };
        let (username, password, password_file) = if dsn.password {
            (None, None, None)
        } else {
            (
                redis.username.clone(),
                kept_password,
                redis.password_file.clone(),
            )
        };
        *redis = RedisSection {
            url: Some(url),
            database: if dsn.database { None } else { redis.database },
            username,
            password,
            password_file,
            namespace: redis.namespace.clone(),
            connect_timeout: redis.connect_timeout,
            command_timeout: redis.command_timeout,
            ..RedisSection::default()
        };
    }
    if let Some(db) = &o.database {
        let n: i64 = db.trim().parse().map_err(|_| {
            err(
                "REDIS_BACKEND_DB",
                "database",
                "redis.database",
                format!("{db:?} is not a database number"),
            )
        })?;
        if !dsn_database {
            redis.database = Some(n);
        }
    }
    if let Some(ns) = &o.namespace {
        redis.namespace = Some(ns.clone());
    }
    Ok(())
}

/// What a REDIS_BACKEND DSN carries besides the address.
struct BackendParts {
    /// A database: php-resque takes one from any path (`redis://h:6379/2`; `/` is 0).
    database: bool,
    /// A password (`redis://:pw@h`, `unix:///s.sock?pass=pw`).
    password: bool,
}

fn parse_backend(url: &str) -> BackendParts {
    use redis::IntoConnectionInfo;
    let password = url
        .into_connection_info()
        .is_ok_and(|i| i.redis_settings().password().is_some());
    let database = match redis::parse_redis_url(url) {
        Some(u) if u.scheme().starts_with("redis") && u.scheme() != "redis+unix" => {
            !u.path().is_empty()
        }
        Some(u) => u.query_pairs().any(|(k, _)| k == "db"),
        None => false,
    };
    BackendParts { database, password }
}

/// php-resque's REDIS_BACKEND: `host:port`, `unix:///path`, or a `redis://` (or php-resque's
/// `tcp://`) DSN.
fn backend_to_url(backend: &str) -> String {
    if let Some(rest) = backend.strip_prefix("tcp://") {
        format!("redis://{rest}")
    } else if backend.contains("://") {
        backend.to_string()
    } else if backend.starts_with('/') {
        format!("unix://{backend}")
    } else {
        format!("redis://{backend}")
    }
}

/// A Redis URL in an error message: scheme, host, port and path when it parses, only the scheme
/// otherwise, never its user part or query (`redis://:pw@h`, `unix:///s.sock?pass=pw`).
fn url_for_error(url: &str) -> String {
    if let Some(u) = redis::parse_redis_url(url) {
        let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
        return format!(
            "{}://{}{port}{}",
            u.scheme(),
            u.host_str().unwrap_or_default(),
            u.path()
        );
    }
    match url.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            format!("{scheme}://…")
        }
        _ => "(value not shown)".to_string(),
    }
}

/// The address of a Redis for logs, STATUS= and errors, built from the parsed connection
/// (scheme, user, host and port or socket path, database), so that nothing of the URL's text
/// (a password, a `?pass=` query) can reach it.
pub fn describe_connection(info: &redis::ConnectionInfo) -> String {
    let settings = info.redis_settings();
    let user = settings
        .username()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let address = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => {
            format!("redis://{user}{}:{port}", host_text(host))
        }
        redis::ConnectionAddr::TcpTls { host, port, .. } => {
            format!("rediss://{user}{}:{port}", host_text(host))
        }
        redis::ConnectionAddr::Unix(path) => match settings.username() {
            Some(u) => format!("unix://{} user {u}", path.display()),
            None => format!("unix://{}", path.display()),
        },
        // A kind of address this version does not know how to show.
        _ => "redis (address not shown)".to_string(),
    };
    format!("{address} db {}", settings.db())
}

/// An IPv6 address in brackets, as in a URL.
fn host_text(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The content of a password file without its trailing line break.
fn read_password_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read password file {}: {e}", path.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!("password file {} is empty", path.display()));
    }
    Ok(password.to_string())
}

/// The name of the systemd credential holding the Redis password
/// (`LoadCredential=redis-password:/etc/resque/redis-password`).
pub const PASSWORD_CREDENTIAL: &str = "redis-password";

fn build_redis(
    section: &RedisSection,
    origin: &str,
    over_db: Option<i64>,
    credentials_dir: Option<&Path>,
) -> Result<RedisConfig, ConfigError> {
    use redis::IntoConnectionInfo;
    let err = |key: &str, msg: String| ConfigError::new(origin, key, msg);
    let mut info = if let Some(url) = &section.url {
        if section.host.is_some() || section.port.is_some() || section.socket.is_some() {
            return Err(err(
                "redis.url",
                "give either url or host/port/socket, not both".into(),
            ));
        }
        let shown = url_for_error(url);
        let scheme_ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|s| url.starts_with(s));
        if !scheme_ok {
            return Err(err(
                "redis.url",
                format!(
                    "{shown:?} is not a Redis URL; use redis://host:port/db, rediss://… or unix:///path/to/redis.sock"
                ),
            ));
        }
        url.as_str().into_connection_info().map_err(|e| {
            // The library's message never contains the URL; ours shows it without secrets.
            err(
                "redis.url",
                format!("{shown:?} is not a valid Redis URL ({:?})", e.kind()),
            )
        })?
    } else if let Some(socket) = &section.socket {
        redis::ConnectionAddr::Unix(socket.clone())
            .into_connection_info()
            .map_err(|e| err("redis.socket", format!("{e}")))?
    } else {
        let host = section.host.clone().unwrap_or_else(|| "127.0.0.1".into());
        let port = section.port.unwrap_or(6379);
        if host.is_empty() {
            return Err(err("redis.host", "must not be empty".into()));
        }
        redis::ConnectionAddr::Tcp(host, port)
            .into_connection_info()
            .map_err(|e| err("redis.host", format!("{e}")))?
    };
    let mut settings = info.redis_settings().clone();
    if let Some(db) = section.database.or(over_db) {
        if !(0..=1_000_000).contains(&db) {
            return Err(err(
                "redis.database",
                format!("{db} is not a database number"),
            ));
        }
        settings = settings.set_db(db);
    }
    if let Some(user) = &section.username {
        settings = settings.set_username(user);
    }
    // The password: `password` or `password_file`, else the URL's, else the systemd credential.
    match (&section.password, &section.password_file) {
        (Some(_), Some(_)) => {
            return Err(err(
                "redis.password_file",
                "give either password or password_file, not both".into(),
            ))
        }
        (Some(pass), None) => settings = settings.set_password(&pass.0),
        (None, Some(file)) => {
            let pass = read_password_file(file).map_err(|m| err("redis.password_file", m))?;
            settings = settings.set_password(pass);
        }
        (None, None) => {
            if let Some(dir) = credentials_dir.filter(|_| settings.password().is_none()) {
                let file = dir.join(PASSWORD_CREDENTIAL);
                if file.exists() {
                    let pass = read_password_file(&file).map_err(|m| {
                        ConfigError::new(
                            "environment variable CREDENTIALS_DIRECTORY",
                            "redis.password",
                            m,
                        )
                    })?;
                    settings = settings.set_password(pass);
                }
            }
        }
    }
    info = info.set_redis_settings(settings);
    // Workers share connections: without TCP_NODELAY one worker's command waits behind
    // another's for the ACK (Nagle), a round trip per job more over a real network.
    // A connection that half-opened (a NAT forgot it, the Redis host lost power) must be
    // noticed by the kernel too, not only by our timeouts: keepalive probes on idle sockets and
    // TCP_USER_TIMEOUT on sockets with unacknowledged data.
    let keepalive = redis::io::tcp::socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(15))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    let tcp = info
        .tcp_settings()
        .clone()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(Duration::from_secs(20));
    info = info.set_tcp_settings(tcp);
    let sentinel = build_sentinel(section, origin)?;
    let display = match &sentinel {
        Some(s) => format!(
            "sentinel master {:?} via {} db {}",
            s.master_name,
            s.nodes
                .iter()
                .map(|(h, p)| format!("{}:{p}", host_text(h)))
                .collect::<Vec<_>>()
                .join(","),
            info.redis_settings().db()
        ),
        None => describe_connection(&info),
    };
    Ok(RedisConfig {
        connection: info,
        namespace: crate::protocol::normalize_namespace(
            section.namespace.as_deref().unwrap_or("resque"),
        ),
        connect_timeout: section
            .connect_timeout
            .map(|s| s.0)
            .unwrap_or(Duration::from_secs(5)),
        command_timeout: section
            .command_timeout
            .map(|s| s.0)
            .unwrap_or(Duration::from_secs(5)),
        display,
        sentinel,
        wait_replicas: section.wait_replicas.unwrap_or(0),
        wait_timeout: section
            .wait_timeout
            .map(|s| s.0)
            .unwrap_or(Duration::from_secs(1)),
    })
}

/// `[redis] sentinels` + `master_name` (+ credentials), checked.
fn build_sentinel(
    section: &RedisSection,
    origin: &str,
) -> Result<Option<SentinelSettings>, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(origin, key, msg);
    let Some(list) = &section.sentinels else {
        if section.master_name.is_some() {
            return Err(err(
                "redis.master_name",
                "needs `sentinels = [\"host:26379\", …]`".into(),
            ));
        }
        return Ok(None);
    };
    if list.is_empty() {
        return Err(err(
            "redis.sentinels",
            "must name at least one sentinel".into(),
        ));
    }
    let Some(master_name) = section.master_name.clone().filter(|m| !m.is_empty()) else {
        return Err(err(
            "redis.master_name",
            "is required with sentinels (the name the sentinels monitor, e.g. \"mymaster\")".into(),
        ));
    };
    let nodes = list
        .iter()
        .map(|entry| {
            let (host, port) = match entry.rsplit_once(':') {
                Some((h, p)) => (h, p.parse::<u16>().ok()),
                None => (entry.as_str(), Some(26379)),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            match port {
                Some(port) if !host.is_empty() && port > 0 => Ok((host.to_string(), port)),
                _ => Err(err(
                    "redis.sentinels",
                    format!("{entry:?} is not host:port"),
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let password = match (&section.sentinel_password, &section.sentinel_password_file) {
        (Some(_), Some(_)) => {
            return Err(err(
                "redis.sentinel_password_file",
                "give either sentinel_password or sentinel_password_file, not both".into(),
            ))
        }
        (Some(p), None) => Some(p.0.clone()),
        (None, Some(file)) => {
            Some(read_password_file(file).map_err(|m| err("redis.sentinel_password_file", m))?)
        }
        (None, None) => None,
    };
    Ok(Some(SentinelSettings {
        nodes,
        master_name,
        username: section.sentinel_username.clone(),
        password,
    }))
}

/// Turns a TOML error into "file:line: key: message".
fn toml_error(path: &Path, source: &str, e: &toml::de::Error) -> ConfigError {
    let (line, key) = match e.span() {
        Some(span) => locate(source, span.start),
        None => (0, String::new()),
    };
    let origin = if line > 0 {
        format!("{}:{line}", path.display())
    } else {
        path.display().to_string()
    };
    let message = e.message().trim().replace('\n', " ");
    ConfigError::new(
        origin,
        if key.is_empty() { "(file)".into() } else { key },
        message,
    )
}

/// The 1-based line of a byte offset, and the dotted key written on that line
/// (`[worker]` + `count = 0` → `worker.count`).
fn locate(source: &str, offset: usize) -> (usize, String) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_text = source[line_start..]
        .lines()
        .next()
        .unwrap_or_default()
        .trim();
    let mut section = String::new();
    for l in before.lines().rev() {
        let l = l.trim();
        if l.starts_with('[') {
            section = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            break;
        }
    }
    if line_text.starts_with('[') {
        let name = line_text
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string();
        return (line_no, name);
    }
    let key = line_text
        .split('=')
        .next()
        .unwrap_or_default()
        .trim()
        .trim_matches('"')
        .to_string();
    let dotted = match (section.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => section,
        (false, false) => format!("{section}.{key}"),
    };
    (line_no, dotted)
}

fn line_of(path: &Path, source: &str, offset: usize) -> String {
    format!("{}:{}", path.display(), locate(source, offset).0)
}

/// Reads and merges everything. `path` is the file (missing is fine only when it is the default
/// path and was not asked for explicitly).
pub fn load(
    path: &Path,
    path_explicit: bool,
    instance: Option<&str>,
    env: &Overrides,
    flags: &Overrides,
) -> Result<Config, ConfigError> {
    load_explained(path, path_explicit, instance, env, flags).map(|(config, _)| config)
}

/// [`load`], and where each effective value came from (`resque config check`).
pub fn load_explained(
    path: &Path,
    path_explicit: bool,
    instance: Option<&str>,
    env: &Overrides,
    flags: &Overrides,
) -> Result<(Config, Origins), ConfigError> {
    let (file, source_text, source) = match std::fs::read_to_string(path) {
        Ok(text) => {
            let file: FileConfig =
                toml::from_str(&text).map_err(|e| toml_error(path, &text, &e))?;
            (file, text, Some(path.to_path_buf()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !path_explicit => {
            (FileConfig::default(), String::new(), None)
        }
        Err(e) => {
            let mut error = ConfigError::new(
                path.display().to_string(),
                "(file)",
                format!("cannot read: {e}"),
            );
            error.io = Some(e.kind());
            return Err(error);
        }
    };
    resolve(file, path, &source_text, source, instance, env, flags)
}

/// Parses a configuration given as text (tests, `config check` on a string).
pub fn from_str(
    text: &str,
    path: &Path,
    instance: Option<&str>,
    env: &Overrides,
    flags: &Overrides,
) -> Result<Config, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
    resolve(
        file,
        path,
        text,
        Some(path.to_path_buf()),
        instance,
        env,
        flags,
    )
    .map(|(config, _)| config)
}

fn resolve(
    file: FileConfig,
    path: &Path,
    text: &str,
    source: Option<PathBuf>,
    instance: Option<&str>,
    env: &Overrides,
    flags: &Overrides,
) -> Result<(Config, Origins), ConfigError> {
    let file_origin = path.display().to_string();
    let mut worker = file.worker.clone();
    let mut origins = Origins::default();
    origins.mark_section(&worker, "[worker]");
    origins.mark_redis(&file.redis, "[redis]");
    if let Some(name) = instance {
        // The name is also a directory name (the runtime directory /run/resque/NAME).
        if name.is_empty()
            || name.contains(char::is_whitespace)
            || name.contains(['/', '\0'])
            || name == "."
            || name == ".."
        {
            return Err(ConfigError::new(
                "flag --instance",
                "instance",
                format!("{name:?} is not a valid instance name"),
            ));
        }
        if let Some(section) = file.instance.get(name) {
            worker = worker.overlay(section);
            origins.mark_section(section, &format!("[instance.{name}]"));
        }
        // One rule for the queues: [instance.NAME], then [worker], then the queue named NAME.
        if worker.queues.is_none() {
            worker.queues = Some(QueueList(vec![name.to_string()]));
            origins.set(
                "worker.queues",
                format!("the instance name (no queues in [instance.{name}] or [worker])"),
            );
        }
    }
    let mut redis_section = file.redis.clone();
    let mut app_include = None;
    origins.mark_overrides(env, Source::Env);
    apply_overrides(
        env,
        Source::Env,
        &mut worker,
        &mut redis_section,
        &mut app_include,
    )?;
    origins.mark_overrides(flags, Source::Flag);
    apply_overrides(
        flags,
        Source::Flag,
        &mut worker,
        &mut redis_section,
        &mut app_include,
    )?;
    let credentials = flags
        .credentials_dir
        .as_deref()
        .or(env.credentials_dir.as_deref());
    let redis = build_redis(&redis_section, &file_origin, None, credentials)?;

    let worker = WorkerConfig {
        queues: worker
            .queues
            .map(|q| q.0)
            .unwrap_or_else(|| vec!["*".to_string()]),
        count: worker.count.map(|c| c.0).unwrap_or(1),
        interval: worker
            .interval
            .map(|s| s.0)
            .unwrap_or(Duration::from_secs(5)),
        shutdown_timeout: worker
            .shutdown_timeout
            .map(|s| s.0)
            .unwrap_or(Duration::from_secs(30)),
        pid_file: worker.pid_file,
        log_level: worker.log_level.unwrap_or(LogLevel::Info),
        on_lost: worker.on_lost.unwrap_or(OnLost::Requeue),
        max_lost: worker.max_lost.map(|c| c.0).unwrap_or(3),
        dead_after: worker
            .dead_after
            .map(|s| s.0)
            .unwrap_or(Duration::from_secs(300)),
    };
    if worker.interval.is_zero() {
        // php-resque's INTERVAL=0 means "exit when the queues are empty"; a daemon must not.
        return Err(ConfigError::new(
            file_origin,
            "worker.interval",
            "must be more than 0",
        ));
    }

    let mut handlers = Vec::new();
    for h in &file.handler {
        handlers.push(build_handler(h, path, text, app_include.as_deref())?);
    }
    if handlers.is_empty() {
        // Like php-resque: every class is a PHP class, loaded by APP_INCLUDE if given.
        handlers.push(HandlerConfig {
            class: "*".into(),
            kind: HandlerKind::Php(PhpSettings {
                bootstrap: app_include.clone(),
                ..PhpSettings::default()
            }),
            retry: None,
        });
    }
    let scheduler = crate::scheduler::config::build_scheduler(&file.scheduler)
        .map_err(|(key, message)| ConfigError::new(file_origin.clone(), key, message))?;
    let mut schedules: Vec<crate::scheduler::recurring::Schedule> = Vec::new();
    for section in &file.schedule {
        let schedule =
            crate::scheduler::config::build_schedule(section).map_err(|(at, key, message)| {
                ConfigError::new(line_of(path, text, at), key, message)
            })?;
        if schedules.iter().any(|s| s.name == schedule.name) {
            return Err(ConfigError::new(
                line_of(path, text, section.name.span().start),
                "schedule.name",
                format!("{:?} is used by two schedules", schedule.name),
            ));
        }
        schedules.push(schedule);
    }
    if !file.handler.is_empty() {
        origins.set("handlers", "[[handler]]");
    } else if app_include.is_some() {
        origins.set(
            "handlers",
            "default (every class is PHP; bootstrap from APP_INCLUDE/--app)",
        );
    }
    Ok((
        Config {
            source,
            instance: instance.map(str::to_string),
            redis,
            worker,
            handlers,
            scheduler,
            schedules,
        },
        origins,
    ))
}

fn build_handler(
    h: &HandlerSection,
    path: &Path,
    text: &str,
    app_include: Option<&Path>,
) -> Result<HandlerConfig, ConfigError> {
    let origin = line_of(path, text, h.class.span().start);
    let class = h.class.get_ref().trim().to_string();
    if class.is_empty() {
        return Err(ConfigError::new(
            origin,
            "handler.class",
            "must not be empty",
        ));
    }
    if let Err(e) =
        glob::Pattern::new(&crate::handler::normalize_class(&class).replace('\\', "[\\]"))
    {
        return Err(ConfigError::new(
            origin,
            "handler.class",
            format!("{class:?} is not a valid pattern: {e}"),
        ));
    }
    let php_only = [
        ("php", h.php.is_some()),
        ("bootstrap", h.bootstrap.is_some()),
        ("isolation", h.isolation.is_some()),
        ("max_jobs", h.max_jobs.is_some()),
        ("max_memory", h.max_memory.is_some()),
        ("runner", h.runner.is_some()),
        ("start_timeout", h.start_timeout.is_some()),
    ];
    let env: Vec<(String, String)> = h
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    if let Some(bad) = h
        .pass_env
        .iter()
        .find(|n| n.is_empty() || n.contains(['=', '\0']))
    {
        return Err(ConfigError::new(
            origin,
            "handler.pass_env",
            format!("{bad:?} is not an environment variable name"),
        ));
    }
    let pass_env = h.pass_env.clone();
    let kind = match h.kind {
        HandlerType::Exec => {
            if let Some((key, _)) = php_only.iter().find(|(_, set)| *set) {
                return Err(ConfigError::new(
                    origin,
                    format!("handler.{key}"),
                    format!("only applies to type = \"php\" (handler for {class:?} is \"exec\")"),
                ));
            }
            let command = match &h.command {
                Some(c) if !c.is_empty() && !c[0].is_empty() => c.clone(),
                _ => {
                    return Err(ConfigError::new(
                        origin,
                        "handler.command",
                        format!("an exec handler needs a command, e.g. command = [\"/usr/local/bin/job\"] (handler for {class:?})"),
                    ))
                }
            };
            HandlerKind::Exec(ExecSettings {
                command,
                timeout: h.timeout.map(|s| s.0),
                grace: h.grace.map(|s| s.0).unwrap_or(Duration::from_secs(10)),
                working_dir: h.working_dir.clone(),
                env,
                pass_env,
            })
        }
        HandlerType::Php => {
            let defaults = PhpSettings::default();
            if let Some(c) = &h.command {
                if c.is_empty() || c[0].is_empty() {
                    return Err(ConfigError::new(
                        origin,
                        "handler.command",
                        "must name a program, e.g. [\"php\", \"/var/www/app/resque\", \"runner\"]",
                    ));
                }
            }
            if h.start_timeout.is_some_and(|s| s.0.is_zero()) {
                return Err(ConfigError::new(
                    origin,
                    "handler.start_timeout",
                    "must be more than 0",
                ));
            }
            HandlerKind::Php(PhpSettings {
                php: h.php.clone().unwrap_or(defaults.php),
                runner: h.runner.clone().unwrap_or(defaults.runner),
                bootstrap: h
                    .bootstrap
                    .clone()
                    .or_else(|| app_include.map(Path::to_path_buf)),
                command: h.command.clone(),
                isolation: h.isolation.unwrap_or(defaults.isolation),
                max_jobs: h.max_jobs.unwrap_or(defaults.max_jobs),
                max_memory: h.max_memory.map(|b| b.0).unwrap_or(defaults.max_memory),
                timeout: h.timeout.map(|s| s.0),
                grace: h.grace.map(|s| s.0).unwrap_or(defaults.grace),
                start_timeout: h
                    .start_timeout
                    .map(|s| s.0)
                    .unwrap_or(defaults.start_timeout),
                working_dir: h.working_dir.clone(),
                env,
                pass_env,
            })
        }
    };
    let retry = match &h.retry {
        None => None,
        Some(r) => Some(
            crate::scheduler::config::build_retry(r)
                .map_err(|(key, message)| ConfigError::new(origin.clone(), key, message))?,
        ),
    };
    Ok(HandlerConfig { class, kind, retry })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        from_str(
            text,
            Path::new("/etc/resque.toml"),
            None,
            &Overrides::default(),
            &Overrides::default(),
        )
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.worker.queues, vec!["*"]);
        assert_eq!(c.worker.count, 1);
        assert_eq!(c.redis.namespace, "resque:");
        assert_eq!(c.handlers.len(), 1);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse("[worker]\nqueues = [\"a\"]\ncount = 0\n").unwrap_err();
        assert_eq!(e.origin, "/etc/resque.toml:3");
        assert_eq!(e.key, "worker.count");
        assert!(e.message.contains("at least 1"), "{e}");

        let e = parse("[worker]\ncolor = 1\n").unwrap_err();
        assert_eq!(e.origin, "/etc/resque.toml:2");
        assert_eq!(e.key, "worker.color");
        assert!(e.message.contains("unknown field"), "{e}");

        let e = parse("[worker]\ninterval = \"soon\"\n").unwrap_err();
        assert_eq!(e.key, "worker.interval");

        let e = parse("[worker]\ncount = \"two\"\n").unwrap_err();
        assert_eq!(e.key, "worker.count");

        let e = parse("[redis]\nurl = \"http://u:secret@h\"\n").unwrap_err();
        assert_eq!(e.key, "redis.url");
        assert!(!e.to_string().contains("secret"), "{e}");

        let e = parse("[[handler]]\nclass = \"*\"\ntype = \"exec\"\n").unwrap_err();
        assert_eq!(e.origin, "/etc/resque.toml:2");
        assert_eq!(e.key, "handler.command");
    }

    #[test]
    fn precedence_flags_env_instance_worker() {
        let text = "[worker]\ncount = 2\nqueues = [\"w\"]\n[instance.mail]\ncount = 3\n";
        let path = Path::new("/etc/resque.toml");
        let none = Overrides::default();
        let c = from_str(text, path, Some("mail"), &none, &none).unwrap();
        assert_eq!(
            (c.worker.count, c.worker.queues.clone()),
            (3, vec!["w".into()])
        );
        let env = Overrides::from_vars(|k| (k == "COUNT").then(|| "4".to_string()));
        let c = from_str(text, path, Some("mail"), &env, &none).unwrap();
        assert_eq!(c.worker.count, 4);
        let flags = Overrides {
            count: Some("5".into()),
            ..Overrides::default()
        };
        let c = from_str(text, path, Some("mail"), &env, &flags).unwrap();
        assert_eq!(c.worker.count, 5);
        // An instance without a section takes [worker] too (queues included).
        let c = from_str(text, path, Some("default"), &none, &none).unwrap();
        assert_eq!((c.worker.count, c.worker.queues), (2, vec!["w".into()]));
        let e = from_str(
            text,
            path,
            None,
            &Overrides::from_vars(|k| (k == "COUNT").then(|| "0".into())),
            &none,
        )
        .unwrap_err();
        assert_eq!(e.origin, "environment variable COUNT");
        // An instance name is a directory name too.
        for bad in ["../etc", "..", "a/b"] {
            let e = from_str(text, path, Some(bad), &none, &none).unwrap_err();
            assert_eq!(e.key, "instance", "{bad}");
        }
    }

    /// Issue 12: `[worker] queues` was ignored by an instance without a section.
    #[test]
    fn one_queues_rule_instance_then_worker_then_instance_name() {
        let path = Path::new("/etc/resque.toml");
        let none = Overrides::default();
        let explain = |text: &str, instance: &str| {
            let file: FileConfig = toml::from_str(text).unwrap();
            resolve(file, path, text, None, Some(instance), &none, &none).unwrap()
        };
        // [worker] queues, no section: [worker] wins over the instance's name.
        let (c, o) = explain("[worker]\nqueues = [\"high\", \"low\"]\n", "default");
        assert_eq!(c.worker.queues, vec!["high", "low"]);
        assert_eq!(o.of("worker.queues"), "[worker]");
        let (c, _) = explain("[worker]\nqueues = [\"*\"]\n", "default");
        assert_eq!(c.worker.queues, vec!["*"]);
        // A section without queues changes nothing about the queues.
        let (c, o) = explain(
            "[worker]\nqueues = [\"high\", \"low\"]\n[instance.default]\ncount = 4\n",
            "default",
        );
        assert_eq!(c.worker.queues, vec!["high", "low"]);
        assert_eq!(
            (c.worker.count, o.of("worker.count")),
            (4, "[instance.default]")
        );
        // The section's queues win over [worker].
        let (c, o) = explain(
            "[worker]\nqueues = [\"w\"]\n[instance.default]\nqueues = [\"i\"]\n",
            "default",
        );
        assert_eq!(c.worker.queues, vec!["i"]);
        assert_eq!(o.of("worker.queues"), "[instance.default]");
        // Neither: the queue named after the instance, with or without a section.
        for text in ["", "[instance.mail]\ncount = 2\n"] {
            let (c, o) = explain(text, "mail");
            assert_eq!(c.worker.queues, vec!["mail"], "{text:?}");
            assert!(o.of("worker.queues").contains("instance name"), "{o:?}");
        }
    }

    #[test]
    fn origins_name_environment_and_flags() {
        let path = Path::new("/etc/resque.toml");
        let text = "[worker]\ncount = 2\n[redis]\nurl = \"redis://127.0.0.1:6379/0\"\n";
        let env = Overrides::from_vars(|k| (k == "COUNT").then(|| "3".to_string()));
        let flags = Overrides {
            queues: Some("a,b".into()),
            ..Overrides::default()
        };
        let file: FileConfig = toml::from_str(text).unwrap();
        let (c, o) = resolve(file, path, text, None, None, &env, &flags).unwrap();
        assert_eq!(c.worker.count, 3);
        assert_eq!(o.of("worker.count"), "environment variable COUNT");
        assert_eq!(o.of("worker.queues"), "flag --queue");
        assert_eq!(o.of("redis.address"), "[redis]");
        assert_eq!(o.of("worker.interval"), "built-in default");
    }

    #[test]
    fn redis_backend_forms() {
        let none = Overrides::default();
        let path = Path::new("/x.toml");
        let env = Overrides::from_vars(|k| match k {
            "REDIS_BACKEND" => Some("10.0.0.1:6380".into()),
            "REDIS_BACKEND_DB" => Some("1".into()),
            _ => None,
        });
        let c = from_str("", path, None, &env, &none).unwrap();
        assert_eq!(c.redis.display, "redis://10.0.0.1:6380 db 1");
        let c = from_str(
            "[redis]\nurl = \"redis://:pw@localhost:6379/2\"\nnamespace = \"\"\n",
            path,
            None,
            &none,
            &none,
        )
        .unwrap();
        assert_eq!(c.redis.connection.redis_settings().db(), 2);
        assert_eq!(c.redis.namespace, "");
        assert!(!format!("{:?} {}", c.redis, c.redis.display).contains("pw"));
    }

    #[test]
    fn php_start_timeout() {
        let php = |text: &str| match parse(text).map(|c| c.handlers[0].kind.clone()) {
            Ok(HandlerKind::Php(p)) => Ok(p.start_timeout),
            Ok(_) => panic!("not php"),
            Err(e) => Err(e.key),
        };
        let head = "[[handler]]\nclass = '*'\ntype = \"php\"\n";
        assert_eq!(php(head), Ok(crate::handler::php::START_TIMEOUT));
        assert_eq!(
            php(&format!("{head}start_timeout = \"2m\"\n")),
            Ok(Duration::from_secs(120))
        );
        assert_eq!(
            php(&format!("{head}start_timeout = 0\n")),
            Err("handler.start_timeout".to_string())
        );
        let exec = "[[handler]]\nclass = '*'\ntype = \"exec\"\ncommand = [\"/bin/true\"]\nstart_timeout = \"5s\"\n";
        assert_eq!(parse(exec).unwrap_err().key, "handler.start_timeout");
    }

    #[test]
    fn redis_backend_dsn_database_wins_over_redis_backend_db() {
        // Seen: REDIS_BACKEND=redis://h:6379/2 with REDIS_BACKEND_DB=1 worked db 1; php-resque
        // lets the DSN's database win.
        let none = Overrides::default();
        let path = Path::new("/x.toml");
        let db_of = |backend: &str, db: Option<&str>, file: &str| {
            let env = Overrides::from_vars(|k| match k {
                "REDIS_BACKEND" => Some(backend.to_string()),
                "REDIS_BACKEND_DB" => db.map(str::to_string),
                _ => None,
            });
            from_str(file, path, None, &env, &none)
                .unwrap()
                .redis
                .connection
                .redis_settings()
                .db()
        };
        assert_eq!(db_of("redis://10.0.0.1:6379/2", Some("1"), ""), 2);
        assert_eq!(db_of("redis://10.0.0.1:6379/2", None, ""), 2);
        // A path of "/" is database 0 for php-resque too.
        assert_eq!(db_of("redis://10.0.0.1:6379/", Some("1"), ""), 0);
        assert_eq!(db_of("tcp://10.0.0.1:6379/3", Some("1"), ""), 3);
        // No database in the DSN: REDIS_BACKEND_DB, else the file's `database`.
        assert_eq!(db_of("redis://10.0.0.1:6379", Some("1"), ""), 1);
        assert_eq!(db_of("10.0.0.1:6379", Some("1"), ""), 1);
        assert_eq!(db_of("10.0.0.1:6379", None, "[redis]\ndatabase = 4\n"), 4);
        assert_eq!(
            db_of("redis://10.0.0.1:6379/2", None, "[redis]\ndatabase = 4\n"),
            2
        );
        // A flag still wins over the environment's DSN.
        let env = Overrides::from_vars(|k| {
            (k == "REDIS_BACKEND").then(|| "redis://10.0.0.1:6379/2".to_string())
        });
        let flags = Overrides {
            database: Some("5".into()),
            ..Overrides::default()
        };
        let c = from_str("", path, None, &env, &flags).unwrap();
        assert_eq!(c.redis.connection.redis_settings().db(), 5);
    }

    #[test]
    fn redis_backend_keeps_the_files_password_unless_the_dsn_has_one() {
        // Seen: REDIS_BACKEND reset the whole [redis] section, silently dropping the password.
        let none = Overrides::default();
        let path = Path::new("/x.toml");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("redis-password");
        std::fs::write(&file, "fromfile\n").unwrap();
        let password_with = |backend: &str, text: &str| {
            let env = Overrides::from_vars(|k| (k == "REDIS_BACKEND").then(|| backend.to_string()));
            let c = from_str(text, path, None, &env, &none).unwrap();
            let settings = c.redis.connection.redis_settings().clone();
            (
                settings.password().map(str::to_string),
                settings.username().map(str::to_string),
                c.redis.namespace,
                c.redis.display,
            )
        };
        let text = "[redis]\nurl = \"redis://127.0.0.1:6379/1\"\npassword = \"inthefile\"\nusername = \"app\"\nnamespace = \"queue\"\n";
        let (pass, user, ns, shown) = password_with("10.0.0.1:6380", text);
        assert_eq!(pass.as_deref(), Some("inthefile"));
        assert_eq!(user.as_deref(), Some("app"));
        assert_eq!(ns, "queue:");
        assert!(shown.starts_with("redis://app@10.0.0.1:6380"), "{shown}");
        // The file's URL is replaced, not its password.
        let (pass, ..) = password_with(
            "redis://10.0.0.1:6380",
            "[redis]\nurl = \"redis://:inurl@127.0.0.1:6379/1\"\n",
        );
        assert_eq!(pass.as_deref(), Some("inurl"));
        let (pass, ..) = password_with(
            "redis://10.0.0.1:6380/2",
            &format!("[redis]\npassword_file = \"{}\"\n", file.display()),
        );
        assert_eq!(pass.as_deref(), Some("fromfile"));
        // A DSN with credentials replaces the file's.
        let (pass, user, ..) = password_with("redis://:indsn@10.0.0.1:6380/2", text);
        assert_eq!(pass.as_deref(), Some("indsn"));
        assert_eq!(user, None);
        let (pass, ..) = password_with(
            "redis://:indsn@10.0.0.1:6380/2",
            &format!("[redis]\npassword_file = \"{}\"\n", file.display()),
        );
        assert_eq!(pass.as_deref(), Some("indsn"));
    }

    #[test]
    fn addresses_are_built_from_the_parsed_connection_never_the_url_text() {
        let none = Overrides::default();
        let path = Path::new("/x.toml");
        for (url, shown) in [
            (
                "unix:///run/redis/redis.sock?db=1&pass=S3cret",
                "unix:///run/redis/redis.sock db 1",
            ),
            (
                "unix:///run/redis/redis.sock?user=app&pass=S3cret",
                "unix:///run/redis/redis.sock user app db 0",
            ),
            (
                "redis://app:S3cret@10.0.0.2:6390/3",
                "redis://app@10.0.0.2:6390 db 3",
            ),
            (
                "redis://:S3cret@localhost/2?x=S3cret",
                "redis://localhost:6379 db 2",
            ),
            ("rediss://:S3cret@[::1]:6380", "rediss://[::1]:6380 db 0"),
        ] {
            let c = from_str(
                &format!("[redis]\nurl = \"{url}\"\n"),
                path,
                None,
                &none,
                &none,
            )
            .unwrap();
            assert_eq!(c.redis.display, shown);
            assert!(!format!("{:?}", c.redis).contains("S3cret"));
            assert_eq!(
                c.redis.connection.redis_settings().password(),
                Some("S3cret")
            );
        }
        // Unparseable URLs are named without their secret parts.
        for url in [
            "redis://:S3cret@host:notaport",
            "http://u:S3cret@h",
            "u:S3cret@h",
        ] {
            let e = parse(&format!("[redis]\nurl = \"{url}\"\n")).unwrap_err();
            assert_eq!(e.key, "redis.url");
            assert!(!e.to_string().contains("S3cret"), "{e}");
        }
    }

    #[test]
    fn secret_values_are_not_echoed_in_type_errors() {
        for text in [
            "[redis]\npassword = 12345678\n",
            "[redis]\npassword = true\n",
            "[redis]\npassword = [\"12345678\"]\n",
            "[[handler]]\nclass = \"*\"\ntype = \"exec\"\ncommand = [\"x\"]\nenv = { K = 12345678 }\n",
        ] {
            let e = parse(text).unwrap_err();
            assert!(!e.to_string().contains("12345678"), "{e}");
            assert!(e.message.contains("must be a string"), "{e}");
        }
        let e = parse("[redis]\npassword = 12345678\n").unwrap_err();
        assert_eq!(
            (e.origin.as_str(), e.key.as_str()),
            ("/etc/resque.toml:2", "redis.password")
        );
    }

    #[test]
    fn password_from_file_or_credential() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "fromfile\r\n").unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join(PASSWORD_CREDENTIAL), "fromcred").unwrap();
        let path = Path::new("/x.toml");
        let none = Overrides::default();
        let with_creds = Overrides {
            credentials_dir: Some(creds.clone()),
            ..Overrides::default()
        };
        let password = |text: &str, env: &Overrides| {
            from_str(text, path, None, env, &none).map(|c| {
                c.redis
                    .connection
                    .redis_settings()
                    .password()
                    .map(str::to_string)
            })
        };
        let file_key = format!("[redis]\npassword_file = \"{}\"\n", file.display());
        assert_eq!(
            password(&file_key, &none).unwrap().as_deref(),
            Some("fromfile")
        );
        // The configuration's own password wins over the credential; the credential fills in.
        assert_eq!(
            password(&file_key, &with_creds).unwrap().as_deref(),
            Some("fromfile")
        );
        assert_eq!(
            password("[redis]\nurl = \"redis://:inurl@h\"\n", &with_creds)
                .unwrap()
                .as_deref(),
            Some("inurl")
        );
        assert_eq!(
            password("", &with_creds).unwrap().as_deref(),
            Some("fromcred")
        );
        assert_eq!(password("", &none).unwrap(), None);
        // From the environment, as systemd sets it.
        let env = Overrides::from_vars(|k| {
            (k == "CREDENTIALS_DIRECTORY").then(|| creds.display().to_string())
        });
        assert_eq!(password("", &env).unwrap().as_deref(), Some("fromcred"));
        // A credentials directory without our credential is fine.
        let other = Overrides {
            credentials_dir: Some(dir.path().to_path_buf()),
            ..Overrides::default()
        };
        assert_eq!(password("", &other).unwrap(), None);
        let e = password(
            &format!(
                "[redis]\npassword = \"x\"\npassword_file = \"{}\"\n",
                file.display()
            ),
            &none,
        )
        .unwrap_err();
        assert_eq!(e.key, "redis.password_file");
        std::fs::write(&file, "\n").unwrap();
        let e = password(&file_key, &none).unwrap_err();
        assert!(e.message.contains("is empty"), "{e}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(Seconds::parse("5").unwrap().0, Duration::from_secs(5));
        assert_eq!(Seconds::parse("0.5").unwrap().0, Duration::from_millis(500));
        assert_eq!(Seconds::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Seconds::parse("-1").is_err());
        assert_eq!(Bytes::parse("256M").unwrap().0, 256 << 20);
        assert!(Bytes::parse("12Q").is_err());
    }
}
