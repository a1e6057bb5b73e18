//! Logging: journald with native fields when stderr is the journal, readable lines otherwise.
//!
//! Job spans carry RESQUE_JOB_ID, RESQUE_JOB_CLASS, RESQUE_QUEUE and RESQUE_WORKER (the names
//! exec jobs see in their environment; systemd's own records use JOB_ID for its job numbers, so
//! ours must not). tracing-journald writes span fields as journal fields, and we turn its `F_`
//! prefix off, so `journalctl RESQUE_JOB_ID=…` finds a job's lines. Messages carry what an operator
//! needs to read them with `journalctl -o cat` (class, error, signal, Redis address, queues); the
//! fields are for filtering.
//!
//! On stderr every value is one line: control characters (a newline in a job's class, an escape
//! sequence in its error) are written escaped (`\n`, `\u{1b}`), so job data cannot forge a log
//! line or drive the terminal.

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
                    .fmt_fields(escaped_fields())
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .boxed(),
            )
            .init(),
    }
    LogControl { handle }
}

/// Field formatting for stderr: `message` as it is, others as `name=value`, with control
/// characters escaped in both.
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static
{
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let raw = format!("{value:?}");
        let text = escape_control(&raw);
        if field.name() == "message" {
            write!(writer, "{text}")
        } else {
            write!(writer, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

/// `text` with every control character escaped as Rust writes it (`\n`, `\t`, `\u{1b}`).
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape_control;

    #[test]
    fn control_characters_cannot_forge_a_line() {
        assert_eq!(escape_control("App\\Job"), "App\\Job");
        assert_eq!(
            escape_control("X\n2026-01-01T00:00:00Z  INFO job complete"),
            "X\\n2026-01-01T00:00:00Z  INFO job complete"
        );
        assert_eq!(escape_control("a\r\u{1b}[31mb\0"), "a\\r\\u{1b}[31mb\\u{0}");
        assert_eq!(escape_control("Zürich"), "Zürich");
    }
}
