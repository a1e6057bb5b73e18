//! `resque instances`: the systemd instances of the daemon (`resque@NAME.service`) as one, for
//! the umbrella `resque.service` and for operators.
//!
//! systemd 252 has no way to make the umbrella's reload or restart fail when an instance's does:
//! `ReloadPropagatedFrom=`/`PartOf=` jobs are queued beside the umbrella's job and `systemctl`
//! waits for the umbrella's only. So the umbrella runs this command: its `ExecReload=` reloads every
//! running instance and fails if one was rejected, and its `ExecStart=` (ordered after the
//! instances, which say `Before=resque.service`) fails if one did not start.

use std::process::Command;

/// One `resque@NAME.service` as systemd sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub unit: String,
    /// `active`, `inactive`, `failed`, `activating`, …
    pub active: String,
    /// `running`, `dead`, `failed`, `auto-restart`, …
    pub sub: String,
}

impl Instance {
    /// Running as it should.
    pub fn is_active(&self) -> bool {
        self.active == "active"
    }

    /// Stopped on purpose (or never started): not a failure.
    pub fn is_stopped(&self) -> bool {
        self.active == "inactive"
    }

    /// Failed, or crashed and waiting for its automatic restart. An instance that somebody is
    /// starting, stopping or reloading right now is not (yet) a failure.
    pub fn has_failed(&self) -> bool {
        self.active == "failed" || self.sub == "auto-restart"
    }
}

/// Parses `systemctl list-units --plain --no-legend` lines: UNIT LOAD ACTIVE SUB DESCRIPTION.
pub fn parse_list_units(text: &str) -> Vec<Instance> {
    text.lines()
        .filter_map(|line| {
            // Without a terminal systemctl may still mark failed units with "●" or "*".
            let mut words = line
                .split_whitespace()
                .skip_while(|w| !w.ends_with(".service"));
            let unit = words.next()?;
            let _load = words.next()?;
            let active = words.next()?;
            let sub = words.next()?;
            unit.starts_with("resque@").then(|| Instance {
                unit: unit.to_string(),
                active: active.to_string(),
                sub: sub.to_string(),
            })
        })
        .collect()
}

fn systemctl(args: &[&str]) -> Result<std::process::Output, String> {
    Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))
}

/// Every `resque@*.service` systemd has loaded (running, failed, or stopped but enabled).
pub fn list() -> Result<Vec<Instance>, String> {
    let out = systemctl(&[
        "list-units",
        "--all",
        "--plain",
        "--no-legend",
        "--full",
        "--no-pager",
        "--type=service",
        "resque@*.service",
    ])?;
    if !out.status.success() {
        return Err(format!(
            "systemctl list-units failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(parse_list_units(&String::from_utf8_lossy(&out.stdout)))
}

/// What happened to one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub unit: String,
    pub ok: bool,
    pub text: String,
}

/// The state of every instance; failed ones (and ones waiting for an automatic restart) are not
/// ok.
pub fn status(instances: &[Instance]) -> Vec<Report> {
    instances
        .iter()
        .map(|i| Report {
            unit: i.unit.clone(),
            ok: !i.has_failed(),
            text: format!("{} ({})", i.active, i.sub),
        })
        .collect()
}

/// Reloads every running instance, one after the other, and reports each; failed instances are
/// reported as failures, stopped ones are left alone.
pub fn reload(instances: &[Instance]) -> Vec<Report> {
    instances
        .iter()
        .filter(|i| !i.is_stopped())
        .map(|i| {
            if !i.is_active() {
                // A failed instance is a failure; one being started or stopped right now reads
                // the configuration as it starts anyway.
                return Report {
                    unit: i.unit.clone(),
                    ok: !i.has_failed(),
                    text: format!("not reloaded: {} ({})", i.active, i.sub),
                };
            }
            match systemctl(&["reload", &i.unit]) {
                Ok(out) if out.status.success() => Report {
                    unit: i.unit.clone(),
                    ok: true,
                    text: "reloaded".into(),
                },
                Ok(out) => Report {
                    unit: i.unit.clone(),
                    ok: false,
                    text: format!(
                        "reload failed ({}); see journalctl -u {}",
                        String::from_utf8_lossy(&out.stderr)
                            .lines()
                            .next()
                            .unwrap_or("systemctl reload failed")
                            .trim(),
                        i.unit
                    ),
                },
                Err(e) => Report {
                    unit: i.unit.clone(),
                    ok: false,
                    text: e,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_units() {
        let text = "resque@default.service loaded active running Resque job worker (instance default)\n\
                    ● resque@mail.service loaded failed failed Resque job worker (instance mail)\n\
                    resque@old.service loaded inactive dead Resque job worker (instance old)\n\
                    resque@new.service loaded activating auto-restart Resque job worker (instance new)\n\
                    resque@busy.service loaded activating start Resque job worker (instance busy)\n";
        let list = parse_list_units(text);
        assert_eq!(list.len(), 5);
        assert_eq!(list[1].unit, "resque@mail.service");
        assert_eq!(
            (list[1].active.as_str(), list[1].sub.as_str()),
            ("failed", "failed")
        );
        let report = status(&list);
        let ok: Vec<bool> = report.iter().map(|r| r.ok).collect();
        assert_eq!(ok, vec![true, false, true, false, true]);
        assert!(parse_list_units("").is_empty());
    }
}
