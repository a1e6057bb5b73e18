//! The control socket: `resque stop|reload|pause|resume` talk to the running daemon through a
//! Unix socket in its runtime directory; `reload --wait` gets the result of the reload.
//! Protocol: one request line (`stop`, `stop-now`, `reload`, `pause`, `resume`, `ping`), one reply
//! line: `ok pid=<pid>` or `error <message>`.

use crate::supervisor::Command;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

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

/// Serves the control socket until the task is dropped; removes a stale socket first.
pub fn serve(path: &Path, commands: mpsc::Sender<Command>) -> std::io::Result<ControlSocket> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let commands = commands.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, commands).await {
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

async fn handle(stream: UnixStream, commands: mpsc::Sender<Command>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let pid = std::process::id();
    let reply = match line.trim() {
        "ping" => format!("ok pid={pid}"),
        "stop" | "stop-now" => {
            let graceful = line.trim() == "stop";
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

/// Client side: sends one request and returns the reply (`Ok(pid)` or the daemon's error).
pub async fn request(socket: &Path, what: &str) -> Result<Result<u32, String>, std::io::Error> {
    let mut stream = UnixStream::connect(socket).await?;
    stream.write_all(format!("{what}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
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
