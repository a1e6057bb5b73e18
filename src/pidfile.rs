//! A locked PID file: held with `flock` for the daemon's life, written only once we hold the
//! lock, removed on exit. A second daemon on the same file is refused with the pid of the running
//! one. The file is never followed through a symbolic link and must be ours, so a PID file path in
//! a directory others can write (`--pid=/tmp/resque.pid`) cannot be turned into a write to
//! someone else's file. Readers ([`running_pid`], [`check_daemon`]) make sure the pid really is a
//! resque daemon before anyone signals it.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("another resque daemon (pid {pid}) is running with PID file {path}")]
    AlreadyRunning { path: PathBuf, pid: String },
    #[error("PID file {path}: {reason}; refusing to use it")]
    Untrusted { path: PathBuf, reason: String },
    #[error("cannot write PID file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Holds the lock until dropped; removes the file then.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    _lock: Flock<File>,
}

/// Opens an existing or new PID file without following a symbolic link at its name.
fn open_no_follow(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Why an open PID file is not one we may write: not a plain file, another owner, or a second
/// name (a hard link to a file elsewhere).
fn untrusted_reason(meta: &std::fs::Metadata) -> Option<String> {
    let me = nix::unistd::Uid::effective().as_raw();
    if !meta.is_file() {
        Some("it is not a regular file".into())
    } else if meta.uid() != me {
        Some(format!(
            "it belongs to uid {}, not to uid {me} (someone else created it)",
            meta.uid()
        ))
    } else if meta.nlink() > 1 {
        Some(format!("it has {} hard links", meta.nlink()))
    } else {
        None
    }
}

impl PidFile {
    pub fn create(path: &Path) -> Result<PidFile, PidFileError> {
        let io = |source| PidFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let untrusted = |reason: String| PidFileError::Untrusted {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Named first from what is there, for a clear message (the open below decides).
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_symlink() {
                return Err(untrusted("it is a symbolic link".into()));
            }
            if let Some(reason) = untrusted_reason(&meta) {
                return Err(untrusted(reason));
            }
        }
        let file = match open_no_follow(path, true) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(untrusted("it is a symbolic link".into()))
            }
            Err(e) => return Err(io(e)),
        };
        if let Some(reason) = untrusted_reason(&file.metadata().map_err(io)?) {
            return Err(untrusted(reason));
        }
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut text = String::new();
                let _ = (&mut file).take(64).read_to_string(&mut text);
                return Err(PidFileError::AlreadyRunning {
                    path: path.to_path_buf(),
                    pid: text.trim().to_string(),
                });
            }
        };
        // We hold the lock: replace the content in place (readers see the old pid or ours).
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        lock.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io)?;
        lock.sync_all().map_err(io)?;
        Ok(PidFile {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The pid a PID file names, if some process holds its lock, with the uid owning the file.
pub fn running_pid(path: &Path) -> Option<(u32, u32)> {
    let file = open_no_follow(path, false).ok()?;
    let owner = file.metadata().ok()?.uid();
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        // We could lock it: nobody holds it, the daemon is gone.
        Ok(_) => None,
        Err((file, _)) => {
            let mut text = String::new();
            file.take(64).read_to_string(&mut text).ok()?;
            text.trim().parse().ok().map(|pid| (pid, owner))
        }
    }
}

/// The program a process runs, without the " (deleted)" of a binary replaced by an upgrade.
fn exe_of(pid: &str) -> std::io::Result<PathBuf> {
    let target = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let text = target.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(t) => PathBuf::from(t),
        None => target,
    })
}

/// Checks that `pid`, read from the PID file owned by `owner`, is a resque daemon before it is
/// signalled: it runs the resque binary (ours, or one named `resque`), as `resque start`, as the
/// PID file's owner. The error says what the pid is instead.
pub fn check_daemon(pid: u32, owner: u32) -> Result<(), String> {
    let not =
        |what: String| format!("pid {pid} is not a resque daemon ({what}); not signalling it");
    let exe = exe_of(&pid.to_string())
        .map_err(|e| format!("cannot tell what pid {pid} runs ({e}); not signalling it"))?;
    let own = exe_of("self").ok();
    let is_resque =
        own.as_deref() == Some(exe.as_path()) || exe.file_name().is_some_and(|n| n == "resque");
    if !is_resque {
        return Err(not(format!("it runs {}", exe.display())));
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !cmdline.split(|b| *b == 0).any(|arg| arg == b"start") {
        return Err(not("it is not `resque start`".into()));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .and_then(|u| u.parse::<u32>().ok());
    if uid != Some(owner) {
        return Err(not(format!(
            "it runs as uid {}, but the PID file belongs to uid {owner}",
            uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into())
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("important");
        std::fs::write(&target, "keep me\n").unwrap();
        let path = dir.path().join("resque.pid");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let e = PidFile::create(&path).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
        assert_eq!(running_pid(&path), None);
    }

    #[test]
    fn a_hard_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("important");
        std::fs::write(&target, "keep me\n").unwrap();
        let path = dir.path().join("resque.pid");
        std::fs::hard_link(&target, &path).unwrap();
        let e = PidFile::create(&path).unwrap_err();
        assert!(e.to_string().contains("hard links"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
    }

    #[test]
    fn our_own_pid_file_is_locked_and_names_us() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resque.pid");
        let held = PidFile::create(&path).unwrap();
        let (pid, owner) = running_pid(&path).unwrap();
        assert_eq!(pid, std::process::id());
        assert_eq!(owner, nix::unistd::Uid::effective().as_raw());
        // The test binary is not `resque start`.
        let e = check_daemon(pid, owner).unwrap_err();
        assert!(e.contains("not a resque daemon"), "{e}");
        assert!(matches!(
            PidFile::create(&path),
            Err(PidFileError::AlreadyRunning { .. })
        ));
        drop(held);
        assert!(!path.exists());
    }
}
