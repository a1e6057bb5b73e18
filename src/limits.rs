//! The daemon's open-file limit: raised at start, and named when it runs out.
//!
//! Every worker holds a Redis connection and every running job a few pipes, so COUNT workers need
//! several times COUNT descriptors; the usual soft limit of 1024 is too few for a few hundred
//! workers while the hard limit (524288 under systemd) is not. [`raise_nofile`] raises the soft
//! limit to the hard one, as systemd advises programs that need many files to do themselves.
//!
//! Running out anyway ("Too many open files", EMFILE; or ENFILE, the system's table) while
//! starting a job's process is the worker's problem, not the job's: the handlers report it with
//! [`crate::handler::JobFailure::worker_side`] and the message from [`out_of_files`], which names
//! the limit to raise; the worker gives the job back and waits a little.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Logs what it was, at debug; a failure is
/// logged too and changes nothing.
pub fn raise_nofile() {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::debug!("cannot read the open files limit: {e}");
            return;
        }
    };
    if soft >= hard {
        tracing::debug!("open files limit: {soft} (the hard limit)");
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => tracing::debug!("raised the open files limit from {soft} to {hard}"),
        Err(e) => tracing::debug!("cannot raise the open files limit from {soft} to {hard}: {e}"),
    }
}

/// Whether `e` says that no file descriptor was left (EMFILE for this process, ENFILE for the
/// system).
pub fn is_out_of_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// What ran out, and what to raise, for an error [`is_out_of_files`] accepts.
pub fn out_of_files(e: &std::io::Error) -> String {
    if e.raw_os_error() == Some(libc::ENFILE) {
        return format!(
            "{e}: the system's open file table is full; raise fs.file-max (sysctl) or run fewer \
             workers"
        );
    }
    let limit = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => format!("its limit of {soft} open files"),
        Err(_) => "its open files limit".to_string(),
    };
    format!(
        "{e}: the daemon has reached {limit}; raise LimitNOFILE= in the service's unit (or \
         `ulimit -n` before starting it), or lower the worker count"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_files_is_told_apart() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_out_of_files(&emfile));
        assert!(is_out_of_files(&std::io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_out_of_files(&std::io::Error::from_raw_os_error(
            libc::ENOENT
        )));
        assert!(out_of_files(&emfile).contains("LimitNOFILE="));
    }
}
