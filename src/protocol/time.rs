//! Time as resque records it.

use chrono::{Local, SecondsFormat};

/// Seconds since the epoch, as php-resque writes `updated`/`started` in statuses.
pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `2026-11-25T08:28:35+00:00`: the ISO-8601 form php-resque ≥ 1.3.4 writes for `run_at`,
/// `started` and `failed_at`. Unlike TP3's `%Z` form (`CST`), Ruby's `DateTime.parse` and JS
/// `Date.parse` read it without ambiguity, so resque-web shows the right time.
pub fn resque_time() -> String {
    Local::now().to_rfc3339_opts(SecondsFormat::Secs, false)
}
