//! Signals → supervisor commands (DESIGN §6). Handlers only forward; the supervisor acts, also
//! while jobs run.
//!
//! The handlers are installed by [`install`] first thing in `resque start`, before the
//! configuration is read: a HUP or TERM that arrives in the first milliseconds (a deploy script,
//! `systemctl reload` racing a start) is queued, not fatal, and acted on once the supervisor runs.

use crate::supervisor::Command;
use signal_hook::consts::signal::{SIGCONT, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use tokio::sync::mpsc;
use tracing::info;

const HANDLED: [i32; 7] = [SIGTERM, SIGQUIT, SIGINT, SIGUSR1, SIGUSR2, SIGCONT, SIGHUP];

/// The daemon's signal handlers, installed; signals received since are kept until [`forward`].
pub struct Installed(signal_hook::iterator::Signals);

/// Installs the handlers for every signal the daemon acts on.
pub fn install() -> std::io::Result<Installed> {
    signal_hook::iterator::Signals::new(HANDLED).map(Installed)
}

/// Installs the handlers and forwards signals until the receiver side is gone.
pub fn spawn(commands: mpsc::Sender<Command>) -> std::io::Result<std::thread::JoinHandle<()>> {
    forward(install()?, commands)
}

/// Forwards the signals (those that arrived since [`install`] first) to the supervisor, from a
/// thread of its own.
pub fn forward(
    installed: Installed,
    commands: mpsc::Sender<Command>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut signals = installed.0;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stops = 0;
            for signal in signals.forever() {
                let (command, doing) = match signal {
                    SIGTERM | SIGQUIT => {
                        stops += 1;
                        // A second TERM while draining means "now".
                        let graceful = stops == 1;
                        let doing = if graceful {
                            "stopping gracefully"
                        } else {
                            "stopping now: killing running jobs and putting them back"
                        };
                        (Command::Stop { graceful }, doing)
                    }
                    SIGINT => (
                        Command::Stop { graceful: false },
                        "stopping now: killing running jobs and putting them back",
                    ),
                    SIGUSR1 => (Command::KillJobs, "killing the running jobs"),
                    SIGUSR2 => (Command::Pause, "pausing"),
                    SIGCONT => (Command::Resume, "resuming"),
                    SIGHUP => (Command::Reload(None), "reloading the configuration"),
                    _ => continue,
                };
                let name = signal_name(signal);
                info!(signal = name, "received {name}: {doing}");
                if commands.blocking_send(command).is_err() {
                    return;
                }
            }
        })
}

/// The signal's name, as `kill -l` and systemd write it.
pub fn signal_name(signal: i32) -> &'static str {
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
