//! Test harness: a private redis-server per test (free loopback port, temp dir, killed on drop),
//! and helpers to run the real `resque` binary against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod fault_proxy;
pub mod node;

pub struct RedisServer {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl RedisServer {
    /// Starts redis-server on a free port; panics with a clear message if it is not installed.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        for _ in 0..5 {
            if let Some(server) = Self::try_start(free_port(), extra) {
                return server;
            }
        }
        panic!("could not start redis-server");
    }

    /// Starts redis-server on a given port (e.g. one a daemon is already trying to reach).
    pub fn start_on(port: u16) -> RedisServer {
        Self::try_start(port, &[]).expect("redis-server on the given port")
    }

    /// A loopback port nobody listens on right now.
    pub fn unused_port() -> u16 {
        free_port()
    }

    fn try_start(port: u16, extra: &[&str]) -> Option<RedisServer> {
        {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut cmd = Command::new("redis-server");
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            let child = cmd
                .spawn()
                .expect("redis-server must be installed (apt-get install redis-server)");
            let mut server = RedisServer { child, port, dir };
            if server.wait_ready() {
                return Some(server);
            }
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
        None
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            match self.client().get_connection() {
                Ok(mut c) => match redis::cmd("PING").query::<String>(&mut c) {
                    Ok(_) => return true,
                    // It answers, it just wants a password (requirepass tests).
                    Err(e) if e.to_string().contains("NOAUTH") => return true,
                    Err(_) => {}
                },
                Err(e) if e.to_string().contains("NOAUTH") => return true,
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn url_db(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().expect("connection")
    }

    pub fn conn_db(&self, db: u32) -> redis::Connection {
        redis::Client::open(self.url_db(db))
            .expect("client")
            .get_connection()
            .expect("connection")
    }

    /// Every key and its type, sorted (for "nothing changed" checks).
    pub fn dump(&self) -> Vec<(String, String)> {
        let mut c = self.conn();
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
        keys.sort();
        keys.into_iter()
            .map(|k| {
                let v: redis::Value = redis::cmd("DUMP").arg(&k).query(&mut c).unwrap();
                (k, format!("{v:?}"))
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `resque` binary built for these tests.
pub fn resque_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_resque"))
}

/// A `resque` command with a clean environment for config (no php-resque variables leaking in).
pub fn resque(config: &Path) -> Command {
    let mut cmd = Command::new(resque_bin());
    for var in [
        "QUEUE",
        "COUNT",
        "INTERVAL",
        "PIDFILE",
        "VERBOSE",
        "VVERBOSE",
        "LOGGING",
        "APP_INCLUDE",
        "REDIS_BACKEND",
        "REDIS_BACKEND_DB",
        "PREFIX",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
        "RESQUE_CONFIG",
        "INVOCATION_ID",
        "CREDENTIALS_DIRECTORY",
    ] {
        cmd.env_remove(var);
    }
    cmd.arg("--config").arg(config);
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run resque")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("resque.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Polls `check` until it returns Some or the time is up (a bound against hangs, not a speed
/// assertion).
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Job ids the test handlers appended to `<dir>/done`, in order.
pub fn done_ids(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("done"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The php-resque status code of a job (`resque:job:<id>:status`), if tracked.
pub fn status_of(redis: &RedisServer, id: &str) -> Option<i64> {
    use redis::Commands;
    let text: Option<String> = redis.conn().get(format!("resque:job:{id}:status")).unwrap();
    text.map(|t| {
        serde_json::from_str::<serde_json::Value>(&t).unwrap()["status"]
            .as_i64()
            .unwrap()
    })
}

/// A configuration for library-level tests: this Redis, the given `[worker]` lines.
pub fn library_config(redis: &RedisServer, worker: &str) -> resque::Config {
    let text = format!("[redis]\nurl = \"{}\"\n[worker]\n{worker}\n", redis.url());
    resque::config::from_str(
        &text,
        Path::new("/test/resque.toml"),
        None,
        &Default::default(),
        &Default::default(),
    )
    .expect("test configuration")
}

/// The shared fixtures recorded from real implementations.
pub fn fixtures() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for candidate in [here.join("tests/fixtures"), here.join("../shared/fixtures")] {
        if candidate.is_dir() {
            return candidate;
        }
    }
    panic!("fixtures not found (tests/fixtures or ../shared/fixtures)");
}

/// A running `resque start` with its own runtime directory; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub runtime: tempfile::TempDir,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path, extra_env: &[(&str, &str)]) -> Daemon {
        Self::start_args(config, extra_env, &[])
    }

    pub fn start_args(config: &Path, extra_env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let runtime = tempfile::tempdir().expect("runtime dir");
        let log = runtime.path().join("daemon.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = resque(config);
        cmd.arg("start")
            .args(args)
            .env("RUNTIME_DIRECTORY", runtime.path())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn resque start");
        Daemon {
            child,
            runtime,
            log,
            config: config.to_path_buf(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("signal");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the daemon to exit (bounded) and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                panic!("daemon did not exit; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the daemon serves its control socket (then `ctl` reaches it).
    pub fn wait_control_socket(&self) {
        let socket = self.runtime.path().join("control.sock");
        wait_for("control socket", Duration::from_secs(30), || {
            socket.exists().then_some(())
        });
    }

    /// A control command (`stop`, `reload`, …) run against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = resque(&self.config);
        cmd.args(args).env("RUNTIME_DIRECTORY", self.runtime.path());
        cmd.output().expect("run resque")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A NOTIFY_SOCKET the daemon under test sends its sd_notify datagrams to.
pub struct NotifyListener {
    sock: std::os::unix::net::UnixDatagram,
    pub path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifyListener {
    pub fn new() -> NotifyListener {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifyListener {
            sock,
            path,
            _dir: dir,
        }
    }

    /// Next datagram, if one arrives within the bound.
    pub fn next(&self, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    }

    /// Reads datagrams until one satisfies `pred`; returns it and everything seen before.
    pub fn until(&self, what: &str, pred: impl Fn(&str) -> bool) -> (String, Vec<String>) {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(msg) = self.next(Duration::from_millis(500)) {
                if pred(&msg) {
                    return (msg, seen);
                }
                seen.push(msg);
            }
        }
        panic!("no {what} notification; saw {seen:?}");
    }
}
