//! Recurring jobs: `[[schedule]]` entries and the ticks they make.
//!
//! Ticks are whole unix seconds, computed the same way by every daemon (so the leader lock can
//! change hands without a tick being made twice or lost): `every` ticks at multiples of its
//! period since the epoch; `cron` ticks at the wall-clock times the expression matches in its
//! time zone. Across DST, a wall-clock time that happens twice (autumn) ticks once, at its first
//! occurrence; one that does not happen (spring) ticks at the first valid time after it, once.

use chrono::{Local, LocalResult, NaiveDateTime, TimeZone, Utc};
use serde_json::Value;
use std::str::FromStr;

/// What a tick missed while no daemon ran turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missed {
    /// Not run (resque-scheduler's behaviour).
    #[default]
    Skip,
    /// Run once, however many were missed.
    Once,
}

/// The time zone of a cron expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Zone {
    /// The system's local time (`/etc/localtime`, `TZ`).
    Local,
    Named(chrono_tz::Tz),
}

impl Zone {
    pub fn parse(name: &str) -> Result<Zone, String> {
        chrono_tz::Tz::from_str(name).map(Zone::Named).map_err(|_| {
            format!("{name:?} is not a known time zone (e.g. \"Europe/Berlin\", \"UTC\")")
        })
    }

    fn name(&self) -> String {
        match self {
            Zone::Local => "local".into(),
            Zone::Named(tz) => tz.name().to_string(),
        }
    }

    /// Local wall-clock time at `ts`.
    fn wall(&self, ts: i64) -> Option<NaiveDateTime> {
        let utc = Utc.timestamp_opt(ts, 0).single()?;
        Some(match self {
            Zone::Local => utc.with_timezone(&Local).naive_local(),
            Zone::Named(tz) => utc.with_timezone(tz).naive_local(),
        })
    }

    /// The instant of a wall-clock time: the first when it happens twice, `None` when it does not
    /// happen (a DST gap).
    fn instant(&self, wall: &NaiveDateTime) -> Option<i64> {
        fn first<T: TimeZone>(r: LocalResult<chrono::DateTime<T>>) -> Option<i64> {
            match r {
                LocalResult::Single(t) => Some(t.timestamp()),
                LocalResult::Ambiguous(a, b) => Some(a.timestamp().min(b.timestamp())),
                LocalResult::None => None,
            }
        }
        match self {
            Zone::Local => first(Local.from_local_datetime(wall)),
            Zone::Named(tz) => first(tz.from_local_datetime(wall)),
        }
    }

    /// The instant of a wall-clock time, or of the first valid time after it (DST gaps).
    fn instant_or_next(&self, wall: &NaiveDateTime) -> Option<i64> {
        let mut w = *wall;
        // Gaps are at most a few hours; look minute by minute for up to a day.
        for _ in 0..=1440 {
            if let Some(t) = self.instant(&w) {
                return Some(t);
            }
            w = (w + chrono::Duration::minutes(1))
                .with_second(0)
                .unwrap_or(w + chrono::Duration::minutes(1));
        }
        None
    }
}

use chrono::Timelike;

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub enum When {
    Cron {
        expression: String,
        cron: Box<croner::Cron>,
        zone: Zone,
    },
    /// Every this many seconds (multiples of it since the epoch).
    Every(u64),
}

impl PartialEq for When {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                When::Cron {
                    expression: a,
                    zone: za,
                    ..
                },
                When::Cron {
                    expression: b,
                    zone: zb,
                    ..
                },
            ) => a == b && za == zb,
            (When::Every(a), When::Every(b)) => a == b,
            _ => false,
        }
    }
}

impl When {
    /// A cron expression of 5 fields (minute hour day month weekday) or 6 (seconds first),
    /// optionally followed by a time zone name as resque-scheduler allows
    /// (`"29 16 * * * Europe/Stockholm"`); `zone` is the `timezone` key, if given.
    pub fn cron(text: &str, zone: Option<&str>) -> Result<When, String> {
        let mut fields: Vec<&str> = text.split_whitespace().collect();
        let mut zone = match zone {
            Some(z) => Some(Zone::parse(z)?),
            None => None,
        };
        if let Some(last) = fields.last() {
            let looks_like_zone = last.eq_ignore_ascii_case("utc")
                || (last.contains('/') && last.starts_with(|c: char| c.is_ascii_alphabetic()));
            if looks_like_zone {
                if zone.is_some() {
                    return Err(format!(
                        "{text:?} names a time zone and so does `timezone`: give one"
                    ));
                }
                zone = Some(Zone::parse(last)?);
                fields.pop();
            }
        }
        if !(5..=6).contains(&fields.len()) {
            return Err(format!(
                "{text:?} is not a cron expression: expected 5 fields (minute hour day month weekday) or 6 (seconds first), found {}",
                fields.len()
            ));
        }
        let expression = fields.join(" ");
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(&expression)
            .map_err(|e| format!("{text:?} is not a valid cron expression: {e}"))?;
        Ok(When::Cron {
            expression,
            cron: Box::new(cron),
            zone: zone.unwrap_or(Zone::Local),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            When::Cron {
                expression, zone, ..
            } => format!("cron {expression} ({})", zone.name()),
            When::Every(secs) => format!(
                "every {}",
                humantime::format_duration(std::time::Duration::from_secs(*secs))
            ),
        }
    }

    /// The first tick strictly after `ts`.
    pub fn next_after(&self, ts: i64) -> Option<i64> {
        match self {
            When::Every(period) => {
                let p = (*period).max(1) as i64;
                Some((ts.div_euclid(p) + 1) * p)
            }
            When::Cron { cron, zone, .. } => {
                // Walk the wall clock (no DST there), and map each match to its instant.
                let mut wall = zone.wall(ts)?;
                for _ in 0..10_000 {
                    let next = cron.find_next_occurrence(&wall, false).ok()?;
                    let t = zone.instant_or_next(&next)?;
                    if t > ts {
                        return Some(t);
                    }
                    wall = next;
                }
                None
            }
        }
    }
}

/// One `[[schedule]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub name: String,
    pub when: When,
    pub class: String,
    pub queue: String,
    /// What a PHP job sees as `$this->args` (`args[0]` of the payload).
    pub args: Value,
    pub description: Option<String>,
    pub missed: Missed,
}

/// What to do about the ticks of one schedule between its last handled tick and now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Ticks to enqueue, in order.
    pub run: Vec<i64>,
    /// A missed tick to record without enqueueing (the newest one), so it is not looked at again.
    pub skip: Option<i64>,
}

/// Ticks after `last` up to `now`. Those older than `now - window` were missed (no daemon was
/// there to enqueue them): by `missed`, the newest of them runs once or none does. Ticks within
/// the window run, each once (a leader change takes up to the lock's TTL).
pub fn due(schedule: &Schedule, last: i64, now: i64, window: i64) -> Due {
    let mut run = Vec::new();
    let mut newest_missed = None;
    let mut t = last;
    for _ in 0..100_000 {
        match schedule.when.next_after(t) {
            Some(next) if next <= now => {
                if next < now - window {
                    newest_missed = Some(next);
                } else {
                    run.push(next);
                }
                t = next;
            }
            _ => break,
        }
    }
    match (newest_missed, schedule.missed) {
        (Some(m), Missed::Once) => {
            run.insert(0, m);
            Due { run, skip: None }
        }
        (Some(m), Missed::Skip) => Due { run, skip: Some(m) },
        (None, _) => Due { run, skip: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        chrono_tz::Europe::Berlin
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .earliest()
            .unwrap()
            .timestamp()
    }

    fn ticks(when: &When, from: i64, n: usize) -> Vec<i64> {
        let mut out = Vec::new();
        let mut t = from;
        for _ in 0..n {
            t = when.next_after(t).unwrap();
            out.push(t);
        }
        out
    }

    #[test]
    fn spring_forward_runs_a_skipped_time_once_at_the_next_valid_time() {
        // 2026-03-29: Berlin goes from 02:00 CET straight to 03:00 CEST.
        let when = When::cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let t = ticks(&when, berlin(2026, 3, 28, 12, 0), 3);
        assert_eq!(t[0], berlin(2026, 3, 29, 3, 0));
        assert_eq!(t[1], berlin(2026, 3, 30, 2, 30));
        // Every 15 minutes through the gap: 02:00..02:45 all become 03:00, once.
        let when = When::cron("*/15 * * * * Europe/Berlin", None).unwrap();
        let t = ticks(&when, berlin(2026, 3, 29, 1, 40), 4);
        assert_eq!(
            t,
            vec![
                berlin(2026, 3, 29, 1, 45),
                berlin(2026, 3, 29, 3, 0),
                berlin(2026, 3, 29, 3, 15),
                berlin(2026, 3, 29, 3, 30)
            ]
        );
    }

    #[test]
    fn fall_back_runs_a_doubled_time_once() {
        // 2026-10-25: Berlin's 02:00–03:00 happens twice (CEST, then CET).
        let when = When::cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let t = ticks(&when, berlin(2026, 10, 24, 12, 0), 2);
        assert_eq!(t[0], berlin(2026, 10, 25, 2, 30));
        assert_eq!(t[1], berlin(2026, 10, 26, 2, 30));
        // Hourly: 02:00 once, then 03:00 — 25 real hours that day, 24 ticks.
        let when = When::cron("0 * * * *", Some("Europe/Berlin")).unwrap();
        let day = ticks(&when, berlin(2026, 10, 24, 23, 30), 24);
        assert_eq!(day[0], berlin(2026, 10, 25, 0, 0));
        assert_eq!(day[23], berlin(2026, 10, 25, 23, 0));
        assert_eq!(day[3] - day[2], 7200, "02:00 CEST → 03:00 CET");
    }

    #[test]
    fn six_fields_and_every() {
        let when = When::cron("*/10 * * * * *", Some("UTC")).unwrap();
        assert_eq!(when.next_after(1_000_000_003), Some(1_000_000_010));
        assert_eq!(When::Every(30).next_after(59), Some(60));
        assert_eq!(When::Every(30).next_after(60), Some(90));
        assert!(When::cron("61 * * * *", None).is_err());
        assert!(When::cron("* * *", None).is_err());
        assert!(When::cron("0 2 * * * Mars/Base", None).is_err());
    }

    #[test]
    fn missed_ticks() {
        let s = Schedule {
            name: "n".into(),
            when: When::Every(10),
            class: "C".into(),
            queue: "q".into(),
            args: Value::Null,
            description: None,
            missed: Missed::Skip,
        };
        assert_eq!(
            due(&s, 100, 1000, 25),
            Due {
                run: vec![980, 990, 1000],
                skip: Some(970)
            }
        );
        let once = Schedule {
            missed: Missed::Once,
            ..s.clone()
        };
        assert_eq!(due(&once, 100, 1000, 25).run, vec![970, 980, 990, 1000]);
        assert_eq!(
            due(&s, 1000, 1005, 25),
            Due {
                run: vec![],
                skip: None
            }
        );
    }
}
