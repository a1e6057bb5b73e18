//! The scheduler's part of `/etc/resque.toml`: `[scheduler]`, `[[schedule]]` and a handler's
//! `retry = {…}`, as written and as validated. `config.rs` reads them with the rest of the file
//! and names the file and line of an error.

use super::recurring::{Missed, Schedule, When};
use super::retry::{Backoff, Record, RetryPolicy};
use crate::config::Seconds;
use serde::Deserialize;
use std::time::Duration;

/// `[scheduler]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    pub enabled: Option<bool>,
    pub lock_ttl: Option<Seconds>,
}

/// `[scheduler]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Whether this daemon takes part in moving delayed jobs and enqueueing recurring ones.
    pub enabled: bool,
    /// Life of the leader lock; the leader renews it every third of it, another daemon takes
    /// over within it once the leader is gone.
    pub lock_ttl: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            enabled: true,
            lock_ttl: Duration::from_secs(10),
        }
    }
}

/// Builds `[scheduler]`; errors are `(key, message)`.
pub fn build_scheduler(s: &SchedulerSection) -> Result<SchedulerConfig, (String, String)> {
    let d = SchedulerConfig::default();
    let lock_ttl = s.lock_ttl.map(|s| s.0).unwrap_or(d.lock_ttl);
    if lock_ttl < Duration::from_secs(1) {
        return Err(("scheduler.lock_ttl".into(), "must be at least 1s".into()));
    }
    Ok(SchedulerConfig {
        enabled: s.enabled.unwrap_or(d.enabled),
        lock_ttl,
    })
}

/// `backoff = "exponential" | "fixed" | ["10s", "1m", …]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BackoffSpec {
    Name(String),
    List(Vec<Seconds>),
}

/// A handler's `retry = { … }` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    pub attempts: u32,
    pub backoff: Option<BackoffSpec>,
    pub base: Option<Seconds>,
    pub max: Option<Seconds>,
    pub jitter: Option<bool>,
    pub record: Option<String>,
}

/// Builds a retry policy; errors are `(key, message)`.
pub fn build_retry(r: &RetrySection) -> Result<RetryPolicy, (String, String)> {
    let err = |key: &str, msg: String| Err((format!("handler.retry.{key}"), msg));
    if r.attempts < 1 {
        return err(
            "attempts",
            "must be at least 1 (the first attempt counts)".into(),
        );
    }
    let backoff = match &r.backoff {
        None => Backoff::Exponential,
        Some(BackoffSpec::Name(n)) => match n.as_str() {
            "exponential" => Backoff::Exponential,
            "fixed" => Backoff::Fixed,
            other => {
                return err(
                    "backoff",
                    format!("{other:?}: expected \"exponential\", \"fixed\" or a list of delays"),
                )
            }
        },
        Some(BackoffSpec::List(list)) if list.is_empty() => {
            return err("backoff", "the list of delays is empty".into())
        }
        Some(BackoffSpec::List(list)) => Backoff::List(list.iter().map(|s| s.0).collect()),
    };
    let record = match r.record.as_deref() {
        None | Some("last") => Record::Last,
        Some("every") => Record::Every,
        Some(other) => {
            return err(
                "record",
                format!("{other:?}: expected \"last\" or \"every\""),
            )
        }
    };
    let base = r.base.map(|s| s.0).unwrap_or(Duration::from_secs(15));
    let max = r.max.map(|s| s.0).unwrap_or(Duration::from_secs(3600));
    if max < base && !matches!(backoff, Backoff::List(_)) {
        return err("max", format!("{max:?} is less than base ({base:?})"));
    }
    let max = if matches!(backoff, Backoff::List(_)) && r.max.is_none() {
        Duration::MAX
    } else {
        max
    };
    Ok(RetryPolicy {
        attempts: r.attempts,
        backoff,
        base,
        max,
        jitter: r.jitter.unwrap_or(false),
        record,
    })
}

/// One `[[schedule]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    pub name: toml::Spanned<String>,
    pub cron: Option<toml::Spanned<String>>,
    pub every: Option<toml::Spanned<String>>,
    pub timezone: Option<toml::Spanned<String>>,
    pub class: Option<String>,
    pub queue: Option<String>,
    pub args: Option<toml::Value>,
    pub description: Option<String>,
    pub missed: Option<toml::Spanned<String>>,
}

/// Builds one schedule; errors are `(byte offset of the bad value, key, message)`.
pub fn build_schedule(s: &ScheduleSection) -> Result<Schedule, (usize, String, String)> {
    let name = s.name.get_ref().trim().to_string();
    let at_name = s.name.span().start;
    let err = |at: usize, key: &str, msg: String| Err((at, format!("schedule.{key}"), msg));
    if name.is_empty() {
        return err(at_name, "name", "must not be empty".into());
    }
    let when = match (&s.cron, &s.every) {
        (Some(_), Some(_)) | (None, None) => {
            return err(
                at_name,
                "cron",
                format!("schedule {name:?} needs exactly one of `cron` or `every`"),
            )
        }
        (Some(cron), None) => {
            let zone = s.timezone.as_ref().map(|z| z.get_ref().as_str());
            match When::cron(cron.get_ref(), zone) {
                Ok(w) => w,
                Err(e) => {
                    let at = match &s.timezone {
                        Some(z) if e.contains("time zone") && e.contains(z.get_ref()) => {
                            z.span().start
                        }
                        _ => cron.span().start,
                    };
                    return err(at, "cron", e);
                }
            }
        }
        (None, Some(every)) => {
            if s.timezone.is_some() {
                return err(
                    at_name,
                    "timezone",
                    "only applies to `cron` schedules".into(),
                );
            }
            let period = match Seconds::parse(every.get_ref()) {
                Ok(p) => p.0,
                Err(e) => return err(every.span().start, "every", e),
            };
            if period < Duration::from_secs(1) || period.subsec_nanos() != 0 {
                return err(
                    every.span().start,
                    "every",
                    format!(
                        "{:?}: must be a whole number of seconds, at least 1s",
                        every.get_ref()
                    ),
                );
            }
            When::Every(period.as_secs())
        }
    };
    let class = s.class.clone().unwrap_or_else(|| name.clone());
    if class.trim().is_empty() {
        return err(at_name, "class", "must not be empty".into());
    }
    let queue = s.queue.clone().unwrap_or_else(|| "default".into());
    if queue.is_empty()
        || queue.contains(char::is_whitespace)
        || queue.contains(',')
        || queue == "*"
    {
        return err(at_name, "queue", format!("{queue:?} is not a queue name"));
    }
    let args = match &s.args {
        None => serde_json::Value::Null,
        Some(v) => match serde_json::to_value(v) {
            Ok(v @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => v,
            _ => {
                return err(
                    at_name,
                    "args",
                    "must be a table or an array (what a PHP job sees as $this->args)".into(),
                )
            }
        },
    };
    let missed = match s
        .missed
        .as_ref()
        .map(|m| (m.span().start, m.get_ref().as_str()))
    {
        None | Some((_, "skip")) => Missed::Skip,
        Some((_, "once")) => Missed::Once,
        Some((at, other)) => {
            return err(
                at,
                "missed",
                format!("{other:?}: expected \"skip\" or \"once\""),
            )
        }
    };
    Ok(Schedule {
        name,
        when,
        class,
        queue,
        args,
        description: s.description.clone(),
        missed,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{from_str, Config, ConfigError};
    use std::path::Path;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        from_str(
            text,
            Path::new("/etc/resque.toml"),
            None,
            &Default::default(),
            &Default::default(),
        )
    }

    const HANDLER: &str =
        "[[handler]]\nclass = \"*\"\ntype = \"exec\"\ncommand = [\"/bin/true\"]\n";

    #[test]
    fn scheduler_defaults_and_lock_ttl() {
        let c = parse("").unwrap();
        assert!(c.scheduler.enabled);
        assert_eq!(c.scheduler.lock_ttl, Duration::from_secs(10));
        assert!(c.schedules.is_empty());
        let c = parse("[scheduler]\nenabled = false\nlock_ttl = \"30s\"\n").unwrap();
        assert!(!c.scheduler.enabled);
        assert_eq!(c.scheduler.lock_ttl, Duration::from_secs(30));
        let e = parse("[scheduler]\nlock_ttl = \"10ms\"\n").unwrap_err();
        assert_eq!(e.key, "scheduler.lock_ttl");
        let e = parse("[scheduler]\nleader = 1\n").unwrap_err();
        assert!(e.origin.ends_with(":2"), "{e}");
    }

    #[test]
    fn retry_settings() {
        let c = parse(&format!("{HANDLER}retry = {{ attempts = 4 }}\n")).unwrap();
        let r = c.handlers[0].retry.clone().unwrap();
        assert_eq!(r.attempts, 4);
        assert_eq!(r.base, Duration::from_secs(15));
        assert_eq!(r.max, Duration::from_secs(3600));
        assert!(!r.jitter);
        for (bad, key) in [
            ("{ attempts = 0 }", "handler.retry.attempts"),
            (
                "{ attempts = 2, backoff = \"linear\" }",
                "handler.retry.backoff",
            ),
            ("{ attempts = 2, backoff = [] }", "handler.retry.backoff"),
            ("{ attempts = 2, record = \"all\" }", "handler.retry.record"),
            (
                "{ attempts = 2, base = \"1h\", max = \"1m\" }",
                "handler.retry.max",
            ),
        ] {
            let e = parse(&format!("{HANDLER}retry = {bad}\n")).unwrap_err();
            assert_eq!(e.key, key, "{bad}: {e}");
            assert_eq!(e.origin, "/etc/resque.toml:2", "{bad}: {e}");
        }
        let e = parse(&format!("{HANDLER}retry = {{ attempts = 2, tries = 3 }}\n")).unwrap_err();
        assert!(e.origin.ends_with(":5"), "{e}");
    }

    #[test]
    fn schedule_settings_and_errors_with_lines() {
        let c = parse(
            "[[schedule]]\nname = \"r\"\ncron = \"0 2 * * * Europe/Berlin\"\nqueue = \"q\"\nargs = [1]\nmissed = \"once\"\n",
        )
        .unwrap();
        let s = &c.schedules[0];
        assert_eq!(s.class, "r", "class defaults to the name");
        assert_eq!(s.args, serde_json::json!([1]));
        assert_eq!(s.missed, crate::scheduler::recurring::Missed::Once);
        for (body, line, key) in [
            ("name = \"a\"\n", 2, "schedule.cron"),
            (
                "name = \"a\"\nevery = \"1s\"\ncron = \"* * * * *\"\n",
                2,
                "schedule.cron",
            ),
            ("name = \"a\"\nevery = \"1500ms\"\n", 3, "schedule.every"),
            (
                "name = \"a\"\ncron = \"* * * * *\"\ntimezone = \"Nowhere/Else\"\n",
                4,
                "schedule.cron",
            ),
            (
                "name = \"a\"\ncron = \"* * * * *\"\nmissed = \"all\"\n",
                4,
                "schedule.missed",
            ),
            (
                "name = \"a\"\nevery = \"1s\"\nargs = 5\n",
                2,
                "schedule.args",
            ),
        ] {
            let e = parse(&format!("[[schedule]]\n{body}")).unwrap_err();
            assert_eq!(e.key, key, "{body}: {e}");
            assert_eq!(e.origin, format!("/etc/resque.toml:{line}"), "{body}: {e}");
        }
        let e = parse(
            "[[schedule]]\nname = \"a\"\nevery = \"1s\"\n[[schedule]]\nname = \"a\"\nevery = \"2s\"\n",
        )
        .unwrap_err();
        assert_eq!(e.origin, "/etc/resque.toml:5");
    }
}
