//! Logging: journald with native fields when stderr is the journal, readable lines otherwise.
//!
//! Job spans carry JOB_ID, JOB_CLASS, QUEUE and WORKER; tracing-journald writes span fields as
//! journal fields, and we turn its `F_` prefix off, so `journalctl JOB_ID=…` finds a job's lines.

use crate::config::LogLevel;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{filter::LevelFilter, reload, Layer, Registry};

/// Changes the log level of a running daemon (reload).
pub struct LogControl {
    handle: reload::Handle<LevelFilter, Registry>,
}

impl LogControl {
    pub fn set_level(&self, level: LogLevel) {
        let _ = self.handle.modify(|f| *f = level_filter(level));
    }
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

/// True when systemd connected our stderr to the journal (JOURNAL_STREAM = "dev:inode" of it).
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(meta.dev()) && ino.parse::<u64>().ok() == Some(meta.ino())
}

/// Installs the global subscriber. Call once.
pub fn init(level: LogLevel) -> LogControl {
    let (filter, handle) = reload::Layer::new(level_filter(level));
    // RESQUE_LOG_TARGET=journald|stderr overrides the detection (tests, or a unit that
    // redirects stderr elsewhere).
    let want_journal = match std::env::var("RESQUE_LOG_TARGET").as_deref() {
        Ok("journald") => true,
        Ok("stderr") => false,
        _ => stderr_is_journal(),
    };
    let journald = if want_journal {
        tracing_journald::layer().ok().map(|l| {
            l.with_field_prefix(None)
                .with_syslog_identifier("resque".into())
        })
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(layer) => registry.with(layer.boxed()).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .boxed(),
            )
            .init(),
    }
    LogControl { handle }
}
