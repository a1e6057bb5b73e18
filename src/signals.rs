//! Signals → supervisor commands (DESIGN §6). Handlers only forward; the supervisor acts, also
//! while jobs run.

use crate::supervisor::Command;
use futures::StreamExt;
use signal_hook::consts::signal::{SIGCONT, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Listens for signals until the receiver side is gone.
pub fn spawn(commands: mpsc::Sender<Command>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut signals = signal_hook_tokio::Signals::new([
        SIGTERM, SIGQUIT, SIGINT, SIGUSR1, SIGUSR2, SIGCONT, SIGHUP,
    ])?;
    Ok(tokio::spawn(async move {
        let mut stops = 0;
        while let Some(signal) = signals.next().await {
            let command = match signal {
                SIGTERM | SIGQUIT => {
                    stops += 1;
                    // A second TERM while draining means "now".
                    Command::Stop {
                        graceful: stops == 1,
                    }
                }
                SIGINT => Command::Stop { graceful: false },
                SIGUSR1 => Command::KillJobs,
                SIGUSR2 => Command::Pause,
                SIGCONT => Command::Resume,
                SIGHUP => Command::Reload(None),
                other => {
                    warn!(signal = other, "ignoring unexpected signal");
                    continue;
                }
            };
            info!(signal = signal_name(signal), "received signal");
            if commands.send(command).await.is_err() {
                return;
            }
        }
    }))
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGQUIT => "SIGQUIT",
        SIGINT => "SIGINT",
        SIGUSR1 => "SIGUSR1",
        SIGUSR2 => "SIGUSR2",
        SIGCONT => "SIGCONT",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}
