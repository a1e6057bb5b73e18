//! The control socket: `resque stop|reload|pause|resume` talk to the running daemon through a
//! Unix socket in its runtime directory; `reload --wait` gets the result of the reload.
//! Protocol: one request line (`stop`, `stop-now`, `reload`, `pause`, `resume`, `ping`; at most
//! [`MAX_REQUEST`] bytes), one reply line: `ok pid=<pid>` or `error <message>`.
//!
//! Both ends distrust the file system: the runtime directory must belong to the daemon's user and
//! be writable by nobody else ([`prepare_runtime_dir`], [`check_runtime_dir`]); the socket has
//! its own mode whatever the umask ([`Access`]), the daemon checks each caller's credentials
//! (`SO_PEERCRED`), and the client checks that the one answering owns the directory. A daemon
//! never replaces the live socket of another one.

use crate::supervisor::Command;
use nix::unistd::{Gid, Uid};
use std::io::{BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// The longest request line read; a longer one is refused.
pub const MAX_REQUEST: u64 = 256;

/// How long a caller may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a daemon keeps its control socket and default PID file: `$RUNTIME_DIRECTORY` (set by
/// systemd's RuntimeDirectory=), else `/run/resque/<instance>` for root, else
/// `$XDG_RUNTIME_DIR/resque/<instance>`, else `/tmp/resque-<uid>/<instance>`.
pub fn runtime_dir(instance: Option<&str>) -> PathBuf {
    if let Ok(dirs) = std::env::var("RUNTIME_DIRECTORY") {
        if let Some(first) = dirs.split(':').find(|d| !d.is_empty()) {
            return PathBuf::from(first);
        }
    }
    let name = instance.unwrap_or("default");
    let uid = nix::unistd::Uid::current();
    if uid.is_root() {
        return PathBuf::from("/run/resque").join(name);
    }
    if let Ok(xdg) = std::env::var("XDG_RUNTIME_DIR") {
        if !xdg.is_empty() {
            return PathBuf::from(xdg).join("resque").join(name);
        }
    }
    PathBuf::from(format!("/tmp/resque-{uid}")).join(name)
}

pub fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("control.sock")
}

/// Who may use the control socket: root and the daemon's user always; the daemon's group too
/// when a systemd unit with `RuntimeDirectory=` started it (`INVOCATION_ID` and
/// `RUNTIME_DIRECTORY` both set) with a group other than root's, so that the unit's `Group=`
/// (members of `resque`) can run `resque stop`. (`INVOCATION_ID` alone is not enough: a shell in
/// a terminal started as a systemd user service has it too.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub uid: Uid,
    pub group: Option<Gid>,
}

impl Access {
    pub fn from_env() -> Access {
        let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        let under_systemd = set("INVOCATION_ID") && set("RUNTIME_DIRECTORY");
        let gid = Gid::effective();
        Access {
            uid: Uid::effective(),
            group: (under_systemd && gid.as_raw() != 0).then_some(gid),
        }
    }

    /// The runtime directory's mode when we create it.
    pub fn dir_mode(&self) -> u32 {
        if self.group.is_some() {
            0o750
        } else {
            0o700
        }
    }

    /// The socket's mode.
    pub fn socket_mode(&self) -> u32 {
        if self.group.is_some() {
            0o660
        } else {
            0o600
        }
    }

    /// Whether a caller with these credentials may send commands.
    fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || uid == self.uid.as_raw() {
            return true;
        }
        match self.group {
            Some(group) => gid == group.as_raw() || pid.is_some_and(|p| in_group(p, group)),
            None => false,
        }
    }
}

/// Whether process `pid` has `group` among its supplementary groups.
fn in_group(pid: i32, group: Gid) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|groups| {
            groups
                .split_whitespace()
                .any(|g| g.parse::<u32>().ok() == Some(group.as_raw()))
        })
}

/// Why a runtime directory, a socket in it, or the daemon answering there cannot be trusted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TrustError(String);

fn describe_mode(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// Checks that `dir` can hold our socket and PID file: a directory (not a symbolic link) owned
/// by `owner_ok`'s choice, writable by nobody else, under parents that only root or we can
/// change (a root-owned sticky directory like /tmp is fine). Returns the directory's owner.
fn check_dir(dir: &Path, owner_ok: impl Fn(&std::fs::Metadata) -> bool) -> Result<u32, TrustError> {
    let me = Uid::effective().as_raw();
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| TrustError(format!("runtime directory {}: {e}", dir.display())))?;
    if meta.file_type().is_symlink() {
        return Err(TrustError(format!(
            "runtime directory {} is a symbolic link; refusing to use it",
            dir.display()
        )));
    }
    if !meta.is_dir() {
        return Err(TrustError(format!(
            "runtime directory {} is not a directory",
            dir.display()
        )));
    }
    if !owner_ok(&meta) {
        return Err(TrustError(format!(
            "runtime directory {} belongs to uid {}, not to uid {me}: someone else created it; \
             remove it or use another (RUNTIME_DIRECTORY, XDG_RUNTIME_DIR)",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(TrustError(format!(
            "runtime directory {} has mode {}: other users may write to it; make it 0700 \
             (or 0750) or remove it",
            dir.display(),
            describe_mode(meta.mode())
        )));
    }
    // Parents: whoever may rename or replace an entry on the way could swap the directory. The
    // directory's owner may own them too (/tmp/resque-UID/NAME, $XDG_RUNTIME_DIR/resque/NAME).
    let dir_owner = meta.uid();
    let canonical = std::fs::canonicalize(dir)
        .map_err(|e| TrustError(format!("runtime directory {}: {e}", dir.display())))?;
    for parent in canonical.ancestors().skip(1) {
        let meta = std::fs::metadata(parent)
            .map_err(|e| TrustError(format!("{}: {e}", parent.display())))?;
        let owner = meta.uid();
        let writable_by_others = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        let trusted = (owner == 0 || owner == me || owner == dir_owner)
            && (!writable_by_others || (owner == 0 && sticky));
        if !trusted {
            return Err(TrustError(format!(
                "runtime directory {} is inside {} (uid {owner}, mode {}), which other users \
                 may change; use another directory",
                dir.display(),
                parent.display(),
                describe_mode(meta.mode())
            )));
        }
    }
    Ok(dir_owner)
}

/// Creates the daemon's runtime directory if missing (mode [`Access::dir_mode`], and so are its
/// missing parents) and refuses one that exists but is not ours or is writable by others.
pub fn prepare_runtime_dir(dir: &Path, access: &Access) -> Result<(), TrustError> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(access.dir_mode())
                    .create(parent)
                    .map_err(|e| {
                        TrustError(format!("cannot create directory {}: {e}", parent.display()))
                    })?;
            }
            match std::fs::DirBuilder::new()
                .mode(access.dir_mode())
                .create(dir)
            {
                Ok(()) => {}
                // Created by someone else meanwhile: the checks below decide.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(TrustError(format!(
                        "cannot create runtime directory {}: {e}",
                        dir.display()
                    )))
                }
            }
        }
        Err(e) => {
            return Err(TrustError(format!(
                "runtime directory {}: {e}",
                dir.display()
            )))
        }
    }
    let me = access.uid.as_raw();
    check_dir(dir, |meta| meta.uid() == me).map(|_| ())
}

/// The client's check before it talks to a daemon through `dir`: the directory must belong to
/// us or root, or to a user who shares it with a group of ours (`/run/resque/NAME` of the unit's
/// `Group=`; any user when we are root: root stops daemons of service users), and be writable by
/// nobody else. Returns the directory's owner, whom the daemon answering must run as.
pub fn check_runtime_dir(dir: &Path) -> Result<u32, TrustError> {
    let me = Uid::effective().as_raw();
    check_dir(dir, |meta| {
        let owner = meta.uid();
        let shared_with_us = meta.mode() & 0o050 == 0o050 && in_our_groups(meta.gid());
        me == 0 || owner == me || owner == 0 || shared_with_us
    })
}

/// Whether `gid` is our effective group or one of our supplementary groups.
fn in_our_groups(gid: u32) -> bool {
    Gid::effective().as_raw() == gid
        || nix::unistd::getgroups().is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
}

/// What `serve` could not do.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "control socket {path} is in use by another resque daemon{pid}: refusing to replace it; \
         give each daemon its own runtime directory (--instance NAME, RUNTIME_DIRECTORY)"
    )]
    InUse { path: PathBuf, pid: String },
    #[error("control socket {path}: {message}")]
    Other { path: PathBuf, message: String },
}

/// The pid a live daemon at `path` reports, or `None` when nothing listens there.
fn live_socket(path: &Path) -> Result<Option<String>, std::io::Error> {
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let _ = stream.write_all(b"ping\n");
    let mut line = String::new();
    let _ = std::io::BufReader::new(std::io::Read::take(stream, MAX_REQUEST)).read_line(&mut line);
    let pid = line
        .trim()
        .strip_prefix("ok pid=")
        .map(|p| format!(" (pid {p})"))
        .unwrap_or_default();
    Ok(Some(pid))
}

/// Serves the control socket until dropped. A stale socket (nobody listening) is replaced; a
/// live one is not ([`ServeError::InUse`]). The socket gets [`Access::socket_mode`] before it
/// appears under its name, so the umask never decides who may connect.
pub fn serve(
    path: &Path,
    commands: mpsc::Sender<Command>,
    access: Access,
) -> Result<ControlSocket, ServeError> {
    let other = |message: String| ServeError::Other {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(other(
                    "exists and is not a socket; remove it if it is not needed".into(),
                ));
            }
            match live_socket(path) {
                Ok(None) => {}
                Ok(Some(pid)) => {
                    return Err(ServeError::InUse {
                        path: path.to_path_buf(),
                        pid,
                    })
                }
                Err(e) => return Err(other(format!("cannot tell whether it is in use: {e}"))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(other(e.to_string())),
    }
    // Bound under a private name, given its mode, then renamed into place: there is no moment in
    // which `control.sock` is ours with the umask's mode, and a stale one is replaced atomically.
    let staging = path.with_file_name(format!(".control.sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(|e| other(format!("cannot bind: {e}")))?;
    let placed = std::fs::set_permissions(
        &staging,
        std::fs::Permissions::from_mode(access.socket_mode()),
    )
    .and_then(|()| std::fs::rename(&staging, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(other(format!("cannot put the socket in place: {e}")));
    }
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let commands = commands.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, commands, access).await {
                    debug!(error = %e, "control connection failed");
                }
            });
        }
    });
    Ok(ControlSocket {
        path: path.to_path_buf(),
        task,
    })
}

/// Stops serving and removes the socket when dropped.
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one request line of at most [`MAX_REQUEST`] bytes.
async fn read_request(read: tokio::net::unix::OwnedReadHalf) -> Result<String, String> {
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => return Err("no request received".into()),
        Ok(Err(e)) => return Err(format!("cannot read the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if !line.ends_with('\n') && line.len() as u64 >= MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    Ok(line.trim().to_string())
}

async fn handle(
    stream: UnixStream,
    commands: mpsc::Sender<Command>,
    access: Access,
) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    let (read, mut write) = stream.into_split();
    if !access.allows(peer.uid(), peer.gid(), peer.pid()) {
        warn!(
            uid = peer.uid(),
            pid = peer.pid(),
            "control socket: refused a command from uid {} (not root, this daemon's user or group)",
            peer.uid()
        );
        write
            .write_all(b"error permission denied: this user may not control the daemon\n")
            .await?;
        return Ok(());
    }
    let request = match read_request(read).await {
        Ok(r) => r,
        Err(message) => {
            write
                .write_all(format!("error {message}\n").as_bytes())
                .await?;
            return Ok(());
        }
    };
    let pid = std::process::id();
    let reply = match request.as_str() {
        "ping" => format!("ok pid={pid}"),
        "stop" | "stop-now" => {
            let graceful = request == "stop";
            forward(&commands, Command::Stop { graceful }).await;
            format!("ok pid={pid}")
        }
        "pause" => {
            forward(&commands, Command::Pause).await;
            format!("ok pid={pid}")
        }
        "resume" => {
            forward(&commands, Command::Resume).await;
            format!("ok pid={pid}")
        }
        "reload" => {
            let (tx, rx) = oneshot::channel();
            forward(&commands, Command::Reload(Some(tx))).await;
            match rx.await {
                Ok(Ok(())) => format!("ok pid={pid}"),
                Ok(Err(message)) => format!("error {message}"),
                Err(_) => "error the daemon is shutting down".to_string(),
            }
        }
        other => format!("error unknown command {other:?}"),
    };
    write.write_all(reply.as_bytes()).await?;
    write.write_all(b"\n").await?;
    Ok(())
}

async fn forward(commands: &mpsc::Sender<Command>, command: Command) {
    if commands.send(command).await.is_err() {
        warn!("control command arrived while shutting down");
    }
}

/// Client side: sends one request and returns the reply (`Ok(pid)` or the daemon's error). The
/// one answering must run as `owner` (the runtime directory's owner, from
/// [`check_runtime_dir`]) or root; anyone else gets an error, not our request.
pub async fn request(
    socket: &Path,
    what: &str,
    owner: u32,
) -> Result<Result<u32, String>, std::io::Error> {
    let mut stream = UnixStream::connect(socket).await?;
    let peer = stream.peer_cred()?;
    if peer.uid() != owner && peer.uid() != 0 {
        return Ok(Err(format!(
            "the process serving {} runs as uid {}, not as the owner of its directory (uid \
             {owner}); not talking to it",
            socket.display(),
            peer.uid()
        )));
    }
    // A daemon refusing us answers without reading, and may close before our request is
    // written: its answer still counts.
    let sent = stream.write_all(format!("{what}\n").as_bytes()).await;
    let mut line = String::new();
    let read = BufReader::new(stream.take(4096)).read_line(&mut line).await;
    if line.is_empty() {
        sent?;
        read?;
    }
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("ok") {
        let pid = rest
            .trim()
            .strip_prefix("pid=")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        Ok(Ok(pid))
    } else if let Some(message) = line.strip_prefix("error ") {
        Ok(Err(message.to_string()))
    } else {
        Ok(Err(format!("unexpected reply {line:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_by_credentials() {
        let alone = Access {
            uid: Uid::from_raw(1234),
            group: None,
        };
        assert!(alone.allows(0, 0, None));
        assert!(alone.allows(1234, 99, None));
        assert!(!alone.allows(4321, 99, None));
        let grouped = Access {
            uid: Uid::from_raw(1234),
            group: Some(Gid::from_raw(77)),
        };
        assert!(grouped.allows(4321, 77, None));
        assert!(!grouped.allows(4321, 78, None));
        assert_eq!((alone.socket_mode(), grouped.socket_mode()), (0o600, 0o660));
        assert_eq!((alone.dir_mode(), grouped.dir_mode()), (0o700, 0o750));
    }

    #[test]
    fn runtime_dir_must_be_private() {
        let top = tempfile::tempdir().unwrap();
        let access = Access {
            uid: Uid::effective(),
            group: None,
        };
        let dir = top.path().join("a/b");
        prepare_runtime_dir(&dir, &access).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare_runtime_dir(&dir, &access).unwrap_err();
        assert!(e.to_string().contains("other users may write"), "{e}");
        let link = top.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = prepare_runtime_dir(&link, &access).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
