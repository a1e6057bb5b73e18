//! sd_notify: READY, RELOADING, STOPPING, STATUS, WATCHDOG, EXTEND_TIMEOUT_USEC.
//!
//! Messages are formatted by the `sd-notify` crate; we send them ourselves to a socket path we
//! read once at start-up, because the crate reads `NOTIFY_SOCKET` from the environment on every
//! call, and a library embedded in tests (or with several supervisors) needs an explicit socket.

use sd_notify::NotifyState;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;
use tracing::debug;

/// Talks to the service manager. Without a socket every call does nothing.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<PathBuf>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (ignored when it names another
    /// process), as systemd sets them.
    pub fn from_env() -> Notifier {
        Notifier {
            socket: std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from),
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    pub fn new(socket: Option<PathBuf>, watchdog: Option<Duration>) -> Notifier {
        Notifier { socket, watchdog }
    }

    /// The watchdog timeout systemd expects pings within, if enabled.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    fn send(&self, states: &[NotifyState]) {
        let Some(path) = &self.socket else { return };
        let mut msg = String::new();
        for s in states {
            msg.push_str(&s.to_string());
            msg.push('\n');
        }
        if let Err(e) = send_datagram(path, msg.as_bytes()) {
            debug!(error = %e, "cannot notify the service manager");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// RELOADING=1 and MONOTONIC_USEC in one datagram, as systemd's Type=notify-reload needs.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Asks for more time to stop (sent periodically while draining).
    pub fn extend_timeout(&self, by: Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }
}

fn send_datagram(path: &std::path::Path, msg: &[u8]) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let text = path.as_os_str().as_encoded_bytes();
    if let Some(name) = text.strip_prefix(b"@") {
        // Abstract socket namespace (systemd may use one in containers).
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(msg, &addr)?;
    } else {
        sock.send_to(msg, path)?;
    }
    Ok(())
}
