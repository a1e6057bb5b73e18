//! resque: a systemd-native, Resque-compatible job worker daemon.
//!
//! - [`protocol`]: the Redis wire format of php-resque / Ruby resque (keys, payloads, statuses,
//!   failure and worker records, Lua scripts). The only module that knows key names.
//! - [`config`]: `/etc/resque.toml` + instance + environment + flags → one validated [`Config`].
//! - [`client`]: enqueue, status, queues, workers, stats, failed jobs.
//! - [`worker`]: reserve reliably, run one job, record its outcome, recover lost jobs.
//! - [`handler`]: how a job runs: `exec` (a process per job), `php` (a PHP runner pool), or
//!   your own in-process [`handler::Handler`].
//! - [`scheduler`]: delayed, recurring and retried jobs on resque-scheduler's keys, moved by a
//!   leader-locked task of every daemon.
//! - [`supervisor`]: keeps COUNT workers alive, applies reloads and drives shutdown;
//!   [`systemd`], [`signals`], [`control`], [`pidfile`], [`logging`], [`limits`] and [`reaper`]
//!   connect it to the OS.

pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod connection;
pub mod control;
pub mod handler;
pub mod instances;
pub mod limits;
pub mod logging;
pub mod manpage;
pub mod pidfile;
pub mod protocol;
pub mod reaper;
pub mod scheduler;
pub mod signals;
pub mod supervisor;
pub mod systemd;
pub mod worker;

pub use client::Client;
pub use config::Config;
pub use handler::{Handler, HandlerMap, Job, JobFailure};
pub use supervisor::Supervisor;
