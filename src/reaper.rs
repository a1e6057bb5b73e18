//! Reaping orphans when the daemon is PID 1 (a container's init) or a child subreaper.
//!
//! Processes a job leaves behind outlive it. When the job's process ends they are re-parented to
//! the nearest subreaper: under systemd that is systemd, which reaps them; but when the daemon is
//! PID 1 of a container (or was made a subreaper with `PR_SET_CHILD_SUBREAPER` by whatever started
//! it) it is us, and each one that ends stays a zombie until we wait for it.
//!
//! We must not wait for the children that `tokio::process` waits for: their `wait` would fail
//! with ECHILD (and std's `spawn` asserts that its own wait succeeds). So we never call
//! `waitpid(-1)`; we reap, one pid at a time, only zombies that are our children and
//!
//! - not registered here: the handlers start every job and PHP process inside `spawning`, which
//!   keeps passes out from before `fork` until the pid is registered, and unregister it once they
//!   have dropped the child (if tokio has not reaped it by then, its orphan queue copes with a
//!   pid reaped by someone else); and
//! - not in our own process group: children an in-process handler starts with `std::process`
//!   stay there, while job processes lead their own groups and what they start stays in those.
//!
//! A pass runs on SIGCHLD (at most every 100 ms) and every 10 s as a safety net. It lists our
//! zombie children from `/proc`; where `/proc` belongs to another pid namespace it peeks with
//! `waitid(WNOWAIT)` instead, which sees one zombie at a time.
//!
//! A library user running the [`crate::Supervisor`] as PID 1 in their own binary calls [`start`]
//! as `resque start` does.

use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{getpgid, getpgrp, getpid, Pid};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

/// Shortest time between two passes, however often SIGCHLD comes.
const MIN_PASS_GAP: Duration = Duration::from_millis(100);

/// A pass runs at least this often, SIGCHLD or not.
const PASS_EVERY: Duration = Duration::from_secs(10);

/// Whether [`start`] found reaping needed (and the handlers must register their children).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Held shared while a child is being started and registered, exclusively by a pass.
static SPAWN_LOCK: RwLock<()> = RwLock::new(());

/// Pids of the children that are waited for elsewhere.
static KNOWN: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Whether the daemon inherits orphans: it is PID 1, or a child subreaper.
pub fn needed() -> bool {
    getpid().as_raw() == 1 || nix::sys::prctl::get_child_subreaper().unwrap_or(false)
}

/// Starts reaping orphans if the daemon inherits them ([`needed`]); call it once, inside the
/// runtime, before any job runs. `None` when there is nothing to do.
pub fn start() -> Option<tokio::task::JoinHandle<()>> {
    if !needed() {
        return None;
    }
    ACTIVE.store(true, Ordering::SeqCst);
    let why = if getpid().as_raw() == 1 {
        "running as PID 1"
    } else {
        "running as a child subreaper"
    };
    tracing::debug!("{why}: reaping the orphans jobs leave behind");
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::warn!(
                "cannot listen for SIGCHLD ({e}); reaping orphans every {}",
                humantime::format_duration(PASS_EVERY)
            );
            None
        }
    };
    Some(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = async {
                    match &mut sigchld {
                        Some(stream) => stream.recv().await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = tokio::time::sleep(PASS_EVERY) => {}
            }
            match tokio::task::spawn_blocking(pass).await {
                Ok(0) => {}
                Ok(reaped) => tracing::debug!(reaped, "reaped orphaned processes"),
                Err(e) => tracing::warn!("orphan reaping pass failed: {e}"),
            }
            tokio::time::sleep(MIN_PASS_GAP).await;
        }
    }))
}

/// Held while a child process is started; [`Spawning::register`] it once its pid is known.
#[must_use]
pub(crate) struct Spawning {
    _guard: Option<RwLockReadGuard<'static, ()>>,
}

/// Keeps passes away until the child being started is registered.
pub(crate) fn spawning() -> Spawning {
    let guard = ACTIVE.load(Ordering::SeqCst).then(|| {
        SPAWN_LOCK
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    });
    Spawning { _guard: guard }
}

impl Spawning {
    /// Marks `pid` as waited for elsewhere until the returned value is dropped.
    pub(crate) fn register(self, pid: i32) -> Registration {
        if self._guard.is_none() {
            return Registration(None);
        }
        known().insert(pid);
        Registration(Some(pid))
    }
}

/// A child that is not ours to reap; unregistered when dropped.
#[derive(Debug)]
pub(crate) struct Registration(Option<i32>);

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            known().remove(&pid);
        }
    }
}

fn known() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    KNOWN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reaps the zombies that are nobody else's; returns how many.
fn pass() -> usize {
    let _exclusive = SPAWN_LOCK
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match zombie_children() {
        Some(zombies) => zombies.into_iter().filter(|&pid| reap(pid)).count(),
        None => peek_and_reap(),
    }
}

/// Whether `pid` is ours to reap: not registered, not in our process group.
fn is_orphan(pid: Pid) -> bool {
    if known().contains(&pid.as_raw()) {
        return false;
    }
    // A zombie keeps its process group; an error means it is gone already.
    matches!(getpgid(Some(pid)), Ok(group) if group != getpgrp())
}

/// Reaps `pid` if it is an orphan that has ended.
fn reap(pid: Pid) -> bool {
    if !is_orphan(pid) {
        return false;
    }
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) | Err(_) => false,
        Ok(status) => {
            tracing::trace!(pid = pid.as_raw(), "reaped orphan: {status:?}");
            true
        }
    }
}

/// Our children that are zombies, from `/proc`; `None` when `/proc` is not our pid namespace's.
fn zombie_children() -> Option<Vec<Pid>> {
    let me = getpid();
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    if stat_fields(&own).map(|f| f.pid) != Some(me.as_raw()) {
        return None;
    }
    let entries = std::fs::read_dir("/proc").ok()?;
    let zombies = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields = stat_fields(&stat)?;
            (fields.state == 'Z' && fields.ppid == me.as_raw()).then(|| Pid::from_raw(pid))
        })
        .collect();
    Some(zombies)
}

/// Without `/proc`: peeks at one ended child at a time and reaps it if it is an orphan. Stops
/// at the first that is not (tokio will reap it; the next pass goes on).
fn peek_and_reap() -> usize {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    let mut reaped = 0;
    loop {
        let pid = match waitid(Id::All, flags) {
            Ok(status) => match status.pid() {
                Some(pid) => pid,
                None => return reaped,
            },
            Err(_) => return reaped,
        };
        if !reap(pid) {
            return reaped;
        }
        reaped += 1;
    }
}

/// The fields of `/proc/PID/stat` a pass needs.
struct StatFields {
    pid: i32,
    state: char,
    ppid: i32,
}

/// Parses `pid (comm) state ppid …`; `comm` may hold spaces and parentheses.
fn stat_fields(stat: &str) -> Option<StatFields> {
    let (head, rest) = stat.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(StatFields { pid, state, ppid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse() {
        let f = stat_fields("4242 (a (b) c) Z 1 4242 4242 0 -1").expect("fields");
        assert_eq!((f.pid, f.state, f.ppid), (4242, 'Z', 1));
        assert!(stat_fields("garbage").is_none());
    }
}
