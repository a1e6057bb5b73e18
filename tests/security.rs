//! Issue 13: secrets stay secret and local files cannot be turned against the daemon.
//!
//! The Redis password never reaches a log line, STATUS=, `config check`, a CLI error or a job's
//! environment; it can come from a file or a systemd credential. As a second local user (created
//! here; these tests need root and say so when skipped): a planted PID file symlink is not
//! followed, a forged PID file does not make `stop --pid` signal a stranger, a pre-created runtime
//! directory is refused, the control socket refuses other users whatever the umask, and a second
//! daemon cannot take a live socket.

mod common;

use common::{
    resque, resque_bin, run, stderr, stdout, wait_for, write_config, Daemon, NotifyListener,
    RedisServer,
};
use nix::sys::signal::Signal;
use redis::Commands;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "S3cretPw-9f1c";

/// A redis-server that wants `PASSWORD`, on loopback and on a Unix socket in its temp dir.
fn redis_with_password() -> (RedisServer, PathBuf) {
    let sock_dir = tempfile::tempdir().unwrap().keep();
    let sock = sock_dir.join("redis.sock");
    let redis = RedisServer::start_with(&[
        "--requirepass",
        PASSWORD,
        "--unixsocket",
        sock.to_str().unwrap(),
        "--unixsocketperm",
        "777",
    ]);
    wait_for("redis unix socket", LIMIT, || sock.exists().then_some(()));
    (redis, sock)
}

fn authed(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(format!("redis://:{PASSWORD}@127.0.0.1:{}/0", redis.port))
        .unwrap()
        .get_connection()
        .unwrap()
}

fn assert_no_secret(what: &str, text: &str, secret: &str) {
    assert!(
        !text.contains(secret),
        "{what} shows the password {secret:?}:\n{text}"
    );
}

/// An exec handler for every class that appends `env` to `<dir>/env.<job id>`.
fn env_dump_handler(dir: &Path, extra: &str) -> String {
    format!(
        r#"[[handler]]
class = "*"
type = "exec"
command = ["/bin/sh", "-c", 'env > {dir}/env.$RESQUE_JOB_ID']
{extra}
"#,
        dir = dir.display()
    )
}

fn enqueue(config: &Path, extra_env: &[(&str, &str)], queue: &str) -> String {
    let mut cmd = resque(config);
    cmd.args(["enqueue", queue, "Dump", "[]"]);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let o = run(&mut cmd);
    assert!(o.status.success(), "enqueue: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

fn wait_file(path: &Path) -> String {
    wait_for(&format!("{}", path.display()), LIMIT, || {
        std::fs::read_to_string(path).ok().filter(|t| !t.is_empty())
    })
}

// ---------------------------------------------------------------------------------------------
// Leaks of the password.

#[test]
fn issue13_unix_url_pass_is_not_shown_by_config_check_log_status_or_errors() {
    let (redis, sock) = redis_with_password();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("unix://{}?db=1&pass={PASSWORD}", sock.display());
    let config = write_config(
        dir.path(),
        &format!(
            "[redis]\nurl = \"{url}\"\n[worker]\nqueues = [\"default\"]\n{}",
            env_dump_handler(dir.path(), "")
        ),
    );
    let shown = format!("unix://{} db 1", sock.display());

    // config check, text and JSON.
    let o = run(resque(&config).args(["config", "check"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_no_secret("config check", &stdout(&o), PASSWORD);
    assert!(stdout(&o).contains(&shown), "{}", stdout(&o));
    let o = run(resque(&config).args(["--json", "config", "check"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["redis"], shown.as_str());
    assert_no_secret("config check --json", &stdout(&o), PASSWORD);

    // The "resque ready" log line.
    let mut daemon = Daemon::start(&config, &[]);
    wait_for("resque ready", LIMIT, || {
        daemon.log_text().contains("resque ready").then_some(())
    });
    let log = daemon.log_text();
    assert!(
        log.contains(&shown),
        "the ready line names the socket:\n{log}"
    );
    assert_no_secret("the daemon's log", &log, PASSWORD);
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0));

    // A wrong password: STATUS= while waiting for Redis, and a CLI error, both without it.
    let wrong = "Wr0ngPw-77aa";
    let bad_url = format!("unix://{}?db=1&pass={wrong}", sock.display());
    let bad = write_config(
        tempfile::tempdir().unwrap().keep().as_path(),
        &format!(
            "[redis]\nurl = \"{bad_url}\"\n{}",
            env_dump_handler(dir.path(), "")
        ),
    );
    let notify = NotifyListener::new();
    let mut daemon = Daemon::start(&bad, &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())]);
    let (status, _) = notify.until("STATUS while waiting for Redis", |m| {
        m.contains("STATUS=Waiting for Redis")
    });
    assert!(status.contains(&shown), "{status}");
    assert_no_secret("STATUS=", &status, wrong);
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0));
    assert_no_secret("the daemon's log", &daemon.log_text(), wrong);

    for cmd in [vec!["queues"], vec!["--redis", bad_url.as_str(), "stats"]] {
        let o = run(resque(&bad).args(&cmd));
        assert_eq!(o.status.code(), Some(69), "{cmd:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(&shown), "{cmd:?}: {}", stderr(&o));
        assert_no_secret("a CLI error", &stderr(&o), wrong);
        assert_no_secret("a CLI error", &stdout(&o), wrong);
    }
    drop(redis);
}

#[test]
fn issue13_a_numeric_or_unquoted_password_is_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    for (text, secret) in [
        ("[redis]\npassword = 12345678\n", "12345678"),
        ("[redis]\npassword = 1234.5678\n", "1234.5678"),
        ("[redis]\npassword = S3cretUnquoted\n", "S3cretUnquoted"),
        ("[redis]\nurl = \"http://u:Zz9secret@h\"\n", "Zz9secret"),
        (
            "[[handler]]\nclass = \"*\"\ntype = \"exec\"\ncommand = [\"true\"]\nenv = { API_KEY = 998877 }\n",
            "998877",
        ),
    ] {
        let config = write_config(dir.path(), text);
        let o = run(resque(&config).args(["config", "check"]));
        assert_eq!(o.status.code(), Some(78), "{text}: {}", stderr(&o));
        assert!(stderr(&o).contains("resque.toml:"), "{}", stderr(&o));
        assert_no_secret("a config error", &stderr(&o), secret);
    }
    let config = write_config(dir.path(), "[redis]\npassword = 12345678\n");
    let o = run(resque(&config).args(["config", "check"]));
    assert!(stderr(&o).contains("redis.password"), "{}", stderr(&o));
}

/// What an exec job and a PHP job see in their environment under a daemon started with
/// `REDIS_BACKEND` carrying the password and the rest of the daemon's variables; the handlers'
/// `pass_env` lines are `exec_pass` and `php_pass`.
struct JobEnvs {
    exec: String,
    php: String,
    exec_job_id: String,
}

fn job_envs(exec_pass: &str, php_pass: &str) -> JobEnvs {
    let (redis, _sock) = redis_with_password();
    let dir = tempfile::tempdir().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("bootstrap.php");
    std::fs::write(
        &bootstrap,
        format!(
            "<?php\nclass PhpDump {{ public function perform() {{ $e = getenv(); ksort($e); \
             $t = ''; foreach ($e as $k => $v) {{ $t .= \"$k=$v\\n\"; }} \
             file_put_contents('{dir}/env.php', $t); }} }}\n",
            dir = dir.path().display()
        ),
    )
    .unwrap();
    // No [redis] url: the password comes only through REDIS_BACKEND, as the unit documented.
    let config = write_config(
        dir.path(),
        &format!(
            r#"[[handler]]
class = "PhpDump"
type = "php"
bootstrap = "{bootstrap}"
{php_pass}
[[handler]]
class = "*"
type = "exec"
command = ["/bin/sh", "-c", 'env > {dir}/env.$RESQUE_JOB_ID']
env = {{ APP_ENV = "prod" }}
{exec_pass}
"#,
            bootstrap = bootstrap.display(),
            dir = dir.path().display()
        ),
    );
    let backend = format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port);
    let env = [
        ("REDIS_BACKEND", backend.as_str()),
        ("REDIS_BACKEND_DB", "0"),
        ("QUEUE", "default"),
        ("COUNT", "1"),
        ("PREFIX", "resque"),
        ("BLOCKING", "1"),
        ("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap()),
        ("RESQUE_CONFIG", config.to_str().unwrap()),
        ("RESQUE_LOG_TARGET", "stderr"),
        ("INVOCATION_ID", "0123456789abcdef0123456789abcdef"),
        ("WATCHDOG_USEC", "30000000"),
        ("LISTEN_FDNAMES", "x"),
    ];
    let mut daemon = Daemon::start(&config, &env);
    let id = enqueue(&config, &[("REDIS_BACKEND", backend.as_str())], "default");
    let exec = wait_file(&dir.path().join(format!("env.{id}")));
    let _ = enqueue_class(&config, &backend, "PhpDump");
    let php = wait_file(&dir.path().join("env.php"));
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0), "{}", daemon.log_text());
    assert_no_secret("the daemon's log", &daemon.log_text(), PASSWORD);
    JobEnvs {
        exec,
        php,
        exec_job_id: id,
    }
}

fn has_var(env: &str, name: &str) -> bool {
    env.lines().any(|l| l.starts_with(&format!("{name}=")))
}

#[test]
fn issue13_exec_and_php_jobs_do_not_get_the_daemons_environment() {
    let envs = job_envs("", "");
    for (what, text) in [("exec job", &envs.exec), ("PHP job", &envs.php)] {
        assert_no_secret(what, text, PASSWORD);
        for name in [
            "REDIS_BACKEND",
            "REDIS_BACKEND_DB",
            "QUEUE",
            "COUNT",
            "PREFIX",
            "BLOCKING",
            "CREDENTIALS_DIRECTORY",
            "RUNTIME_DIRECTORY",
            "RESQUE_CONFIG",
            "RESQUE_LOG_TARGET",
            "INVOCATION_ID",
            "WATCHDOG_USEC",
            "LISTEN_FDNAMES",
        ] {
            assert!(
                !has_var(text, name),
                "{what} got the daemon's {name}:\n{text}"
            );
        }
        assert!(
            has_var(text, "PATH"),
            "{what} keeps an ordinary environment"
        );
    }
    // What jobs are promised, and what the handler sets.
    let job = &envs.exec;
    assert!(
        job.contains(&format!("RESQUE_JOB_ID={}", envs.exec_job_id)),
        "{job}"
    );
    assert!(job.contains("RESQUE_JOB_CLASS=Dump"), "{job}");
    assert!(job.contains("RESQUE_QUEUE=default"), "{job}");
    assert!(job.contains("APP_ENV=prod"), "{job}");
    assert!(has_var(&envs.php, "RESQUE_RUNNER"), "{}", envs.php);
}

#[test]
fn issue13_pass_env_lets_a_named_daemon_variable_through() {
    let envs = job_envs(
        "pass_env = [\"PREFIX\"]",
        "pass_env = [\"REDIS_BACKEND_DB\"]",
    );
    assert!(envs.exec.contains("PREFIX=resque"), "{}", envs.exec);
    assert!(!has_var(&envs.exec, "REDIS_BACKEND_DB"), "{}", envs.exec);
    assert!(envs.php.contains("REDIS_BACKEND_DB=0"), "{}", envs.php);
    assert!(!has_var(&envs.php, "PREFIX"), "{}", envs.php);
    assert!(!has_var(&envs.php, "REDIS_BACKEND"), "{}", envs.php);
}

fn enqueue_class(config: &Path, backend: &str, class: &str) -> String {
    let o = run(resque(config)
        .args(["enqueue", "default", class, "[]"])
        .env("REDIS_BACKEND", backend));
    assert!(o.status.success(), "enqueue: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

#[test]
fn issue13_password_file_and_systemd_credential_work_end_to_end() {
    let (redis, _sock) = redis_with_password();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("redis.pass");
    std::fs::write(&secret_file, format!("{PASSWORD}\n")).unwrap();
    let handler = env_dump_handler(dir.path(), "");

    // [redis] password_file.
    let config = write_config(
        dir.path(),
        &format!(
            "[redis]\nport = {}\npassword_file = \"{}\"\n[worker]\nqueues = [\"default\"]\n{handler}",
            redis.port,
            secret_file.display()
        ),
    );
    let o = run(resque(&config).args(["config", "check"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_no_secret("config check", &stdout(&o), PASSWORD);
    let mut daemon = Daemon::start(&config, &[]);
    let id = enqueue(&config, &[], "default");
    let job_env = wait_file(&dir.path().join(format!("env.{id}")));
    assert_no_secret("a job", &job_env, PASSWORD);
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0));
    let processed: String = authed(&redis).get("resque:stat:processed").unwrap();
    assert_eq!(processed, "1");

    // A missing password file is named; its content never is.
    let missing = write_config(
        tempfile::tempdir().unwrap().keep().as_path(),
        "[redis]\npassword_file = \"/nonexistent/redis.pass\"\n",
    );
    let o = run(resque(&missing).args(["config", "check"]));
    assert_eq!(o.status.code(), Some(78));
    assert!(
        stderr(&o).contains("redis.password_file") && stderr(&o).contains("/nonexistent"),
        "{}",
        stderr(&o)
    );

    // $CREDENTIALS_DIRECTORY/redis-password (LoadCredential=redis-password:...), no password in
    // the config, the environment or argv.
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("redis-password"), PASSWORD).unwrap();
    let plain = write_config(
        dir.path(),
        &format!(
            "[redis]\nport = {}\n[worker]\nqueues = [\"default\"]\n{handler}",
            redis.port
        ),
    );
    // Without the credential Redis refuses, and says so without any password.
    let o = run(resque(&plain).arg("queues"));
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    let creds_env = [("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())];
    let mut daemon = Daemon::start(&plain, &creds_env);
    let id = enqueue(&plain, &creds_env, "default");
    let job_env = wait_file(&dir.path().join(format!("env.{id}")));
    assert_no_secret("a job", &job_env, PASSWORD);
    assert!(!job_env.contains("CREDENTIALS_DIRECTORY"), "{job_env}");
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(LIMIT), Some(0));
    let processed: String = authed(&redis).get("resque:stat:processed").unwrap();
    assert_eq!(processed, "2");
    let o = run(resque(&plain).arg("queues").envs(creds_env));
    assert!(o.status.success(), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------------
// A second local user.

/// A local user other than us: (uid, gid). `None` (and a message) when we are not root.
fn other_user(name: &str) -> Option<(u32, u32)> {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: this test needs root to create a second local user ({name})");
        return None;
    }
    let _guard = LOCK
        .get_or_init(|| std::sync::Mutex::new(()))
        .lock()
        .unwrap();
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let o = Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group", "--shell"])
            .args(["/usr/sbin/nologin", name])
            .output()
            .expect("useradd");
        assert!(
            o.status.success() || nix::unistd::User::from_name(name).unwrap().is_some(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let user = nix::unistd::User::from_name(name).unwrap().unwrap();
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// `program args…` as `user` (its uid and gid, no supplementary groups).
fn as_user(user: (u32, u32), program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", user.0))
        .arg(format!("--regid={}", user.1))
        .arg("--clear-groups")
        .arg("--")
        .arg(program);
    for var in [
        "RUNTIME_DIRECTORY",
        "XDG_RUNTIME_DIR",
        "INVOCATION_ID",
        "NOTIFY_SOCKET",
        "RESQUE_CONFIG",
        "REDIS_BACKEND",
        "QUEUE",
        "PIDFILE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A directory anyone may read and enter (for configs other users must read).
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn world_readable_config(dir: &Path, redis: &RedisServer) -> PathBuf {
    let config = write_config(
        dir,
        &format!(
            "[redis]\nurl = \"{}\"\n[worker]\nqueues = [\"default\"]\n{}",
            redis.url(),
            env_dump_handler(dir, "")
        ),
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    config
}

/// A process of the test's, killed and reaped when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
}

#[test]
fn issue13_a_planted_pid_file_symlink_is_not_followed() {
    let Some(attacker) = other_user("resque-t13-evil") else {
        return;
    };
    let redis = RedisServer::start();
    let dir = shared_dir();
    let config = world_readable_config(dir.path(), &redis);
    // The victim's (root's) file, and a directory the attacker controls.
    let important = dir.path().join("important");
    std::fs::write(&important, "precious\n").unwrap();
    let trap = tempfile::tempdir().unwrap();
    std::fs::set_permissions(trap.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let pid_file = trap.path().join("resque.pid");
    let o = as_user(attacker, "ln")
        .arg("-s")
        .arg(&important)
        .arg(&pid_file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut daemon = Daemon::start_args(&config, &[], &["--pid", pid_file.to_str().unwrap()]);
    assert_eq!(daemon.wait_exit(LIMIT), Some(1), "{}", daemon.log_text());
    assert!(
        daemon.log_text().contains("symbolic link"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(std::fs::read_to_string(&important).unwrap(), "precious\n");
}

#[test]
fn issue13_a_forged_pid_file_does_not_make_stop_signal_a_stranger() {
    let Some(attacker) = other_user("resque-t13-evil") else {
        return;
    };
    let redis = RedisServer::start();
    let dir = shared_dir();
    let config = world_readable_config(dir.path(), &redis);
    // Root's innocent process.
    let victim = KillOnDrop(Command::new("sleep").arg("1000").spawn().unwrap());
    // A world-writable, sticky directory like /tmp, where the attacker writes a PID file naming
    // it and holds its lock.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let pid_file = tmp.path().join("resque.pid");
    let forged = victim.0.id().to_string();
    // The lock is on fd 9's open file, which `exec sleep` keeps: killing `holder` releases it.
    let _holder = KillOnDrop(
        as_user(attacker, "sh")
            .arg("-c")
            .arg(format!(
                "exec 9>>{p} && flock 9 && printf '{forged}' > {p} && exec sleep 1000",
                forged = forged,
                p = pid_file.display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the forged PID file is written and locked", LIMIT, || {
        // Opened without creating it: a file of root's there would spoil the attacker's plan.
        let file = std::fs::File::open(&pid_file).ok()?;
        let written = std::fs::read_to_string(&pid_file).ok()? == forged;
        use nix::fcntl::{Flock, FlockArg};
        let locked = Flock::lock(file, FlockArg::LockSharedNonblock).is_err();
        (written && locked).then_some(())
    });

    for request in ["stop", "reload", "pause"] {
        let o = run(resque(&config).args([request, "--pid", pid_file.to_str().unwrap()]));
        assert_eq!(o.status.code(), Some(1), "{request}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("not a resque daemon") && err.contains(&forged),
            "{request}: {err}"
        );
        assert!(err.contains("sleep"), "says what the pid runs: {err}");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        alive(victim.0.id()),
        "the forged pid's process was signalled"
    );

    // `resque start` on that file refuses with the reason, and leaves it alone.
    let mut daemon = Daemon::start_args(&config, &[], &["--pid", pid_file.to_str().unwrap()]);
    assert_eq!(daemon.wait_exit(LIMIT), Some(1));
    assert!(
        daemon.log_text().contains(&format!("uid {}", attacker.0)),
        "{}",
        daemon.log_text()
    );
}

/// `/tmp/resque-<uid>/<instance>`: the runtime directory of a non-root daemon without
/// `XDG_RUNTIME_DIR`, which anyone can predict.
fn predictable_runtime_dir(uid: u32, instance: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/resque-{uid}")).join(instance)
}

#[test]
fn issue13_a_pre_created_runtime_dir_is_refused_by_daemon_and_client() {
    let Some(victim) = other_user("resque-t13-user") else {
        return;
    };
    let Some(attacker) = other_user("resque-t13-evil") else {
        return;
    };
    let redis = RedisServer::start();
    let dir = shared_dir();
    let config = world_readable_config(dir.path(), &redis);
    let instance = format!("t13-{}", std::process::id());
    let runtime = predictable_runtime_dir(victim.0, &instance);
    let top = runtime.parent().unwrap().to_path_buf();
    let _ = std::fs::remove_dir_all(&top);

    // The attacker pre-creates the victim's runtime directory, open to all, with a PID file
    // pointing at a file of the victim's.
    let victims_file = dir.path().join("victims-file");
    std::fs::write(&victims_file, "precious\n").unwrap();
    std::os::unix::fs::chown(&victims_file, Some(victim.0), Some(victim.1)).unwrap();
    let o = as_user(attacker, "sh")
        .arg("-c")
        .arg(format!(
            "mkdir -p {r} && chmod 777 {t} {r} && ln -s {f} {r}/resque.pid",
            r = runtime.display(),
            t = top.display(),
            f = victims_file.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let log = dir.path().join("victim.log");
    let mut start = KillOnDrop(
        as_user(victim, resque_bin())
            .arg("--config")
            .arg(&config)
            .args(["start", "--instance", &instance])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = wait_for("the victim's daemon refuses to start", LIMIT, || {
        start.0.try_wait().unwrap()
    });
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("belongs to uid {}", attacker.0)),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&victims_file).unwrap(),
        "precious\n"
    );

    // The attacker serves a control socket there (a real resque daemon of theirs, in a directory
    // they made private again); the victim's `resque stop` does not believe it.
    std::fs::remove_dir_all(&top).unwrap();
    let o = as_user(attacker, "sh")
        .arg("-c")
        .arg(format!(
            "mkdir -p {r} && chmod 755 {t} {r}",
            r = runtime.display(),
            t = top.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut fake = KillOnDrop(
        as_user(attacker, resque_bin())
            .arg("--config")
            .arg(&config)
            .args(["start", "--instance", &instance])
            .env("RUNTIME_DIRECTORY", &runtime)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let socket = runtime.join("control.sock");
    wait_for("the attacker's socket", LIMIT, || {
        socket.exists().then_some(())
    });
    let o = as_user(victim, resque_bin())
        .arg("--config")
        .arg(&config)
        .args(["stop", "--instance", &instance])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(!stdout(&o).contains("stopping"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("not using its control socket"),
        "{}",
        stderr(&o)
    );
    assert!(
        fake.0.try_wait().unwrap().is_none(),
        "the attacker's daemon got the stop"
    );
    drop(fake);
    let _ = std::fs::remove_dir_all(&top);
}

#[test]
fn issue13_the_control_socket_refuses_another_user_even_under_umask_000() {
    let Some(other) = other_user("resque-t13-evil") else {
        return;
    };
    let redis = RedisServer::start();
    let dir = shared_dir();
    let config = world_readable_config(dir.path(), &redis);
    let runtime = tempfile::tempdir().unwrap();
    // A directory others may enter (0755 is allowed: nobody else can write to it).
    std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = runtime.path().join("daemon.log");
    let child = {
        use std::os::unix::process::CommandExt;
        let mut cmd = resque(&config);
        cmd.arg("start")
            .env("RUNTIME_DIRECTORY", runtime.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // SAFETY: umask is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    };
    let mut daemon = Daemon {
        child,
        runtime,
        log: log.clone(),
        config: config.clone(),
    };
    let runtime = daemon.runtime.path().to_path_buf();
    let socket = runtime.join("control.sock");
    wait_for("control socket", LIMIT, || socket.exists().then_some(()));
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(&socket).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode under umask 000");

    let pause_as_other = || {
        as_user(other, resque_bin())
            .arg("--config")
            .arg(&config)
            .arg("pause")
            .env("RUNTIME_DIRECTORY", &runtime)
            .output()
            .unwrap()
    };
    let o = pause_as_other();
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));

    // Even with the socket opened to all, the daemon checks who is calling.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = pause_as_other();
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("permission denied"), "{}", stderr(&o));

    // Not paused: a job still runs.
    let id = enqueue(&config, &[], "default");
    wait_file(&dir.path().join(format!("env.{id}")));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("refused a command from uid"), "{text}");

    // Root may.
    let o = daemon.ctl(&["stop"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(daemon.wait_exit(LIMIT), Some(0));
}

#[test]
fn issue13_a_second_daemon_cannot_take_a_live_control_socket() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = world_readable_config(dir.path(), &redis);
    let first = Daemon::start_args(
        &config,
        &[],
        &["--pid", dir.path().join("first.pid").to_str().unwrap()],
    );
    first.wait_control_socket();
    let runtime = first.runtime.path().to_str().unwrap().to_string();
    let log = dir.path().join("second.log");
    let mut second = KillOnDrop(
        resque(&config)
            .args(["start", "--pid"])
            .arg(dir.path().join("second.pid"))
            .env("RUNTIME_DIRECTORY", &runtime)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = wait_for("second daemon exits", LIMIT, || {
        second.0.try_wait().unwrap()
    });
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("in use by another resque daemon") && err.contains(&first.pid().to_string()),
        "{err}"
    );
    // The first one still answers on its socket.
    let o = first.ctl(&["pause"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("pid {}", first.pid())),
        "{}",
        stdout(&o)
    );
    let o = first.ctl(&["stop", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn issue13_an_oversized_control_request_is_refused() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = world_readable_config(dir.path(), &redis);
    let daemon = Daemon::start(&config, &[]);
    daemon.wait_control_socket();
    let mut stream =
        std::os::unix::net::UnixStream::connect(daemon.runtime.path().join("control.sock"))
            .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    use std::io::{Read, Write};
    // A megabyte without a newline: the daemon answers after its limit, not after reading all.
    let _ = stream.write_all(&vec![b'a'; 1 << 20]);
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    assert!(reply.starts_with("error request longer than"), "{reply:?}");
    // And it still serves.
    let o = daemon.ctl(&["resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn issue13_under_systemd_the_units_group_may_use_the_socket_and_nobody_else() {
    let Some(daemon_user) = other_user("resque-t13-user") else {
        return;
    };
    let Some(member) = other_user("resque-t13-member") else {
        return;
    };
    let Some(stranger) = other_user("resque-t13-evil") else {
        return;
    };
    let redis = RedisServer::start();
    let dir = shared_dir();
    let config = world_readable_config(dir.path(), &redis);
    // What systemd makes of User=, Group=, RuntimeDirectory=, RuntimeDirectoryMode=0750.
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    std::os::unix::fs::chown(&runtime, Some(daemon_user.0), Some(daemon_user.1)).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o750)).unwrap();
    let log = dir.path().join("daemon.log");
    let _daemon = KillOnDrop(
        as_user(daemon_user, resque_bin())
            .arg("--config")
            .arg(&config)
            .arg("start")
            .env("RUNTIME_DIRECTORY", &runtime)
            .env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let socket = runtime.join("control.sock");
    wait_for("control socket", LIMIT, || socket.exists().then_some(()));
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), daemon_user.1);

    let ctl = |user: (u32, u32), groups: Option<u32>, what: &str| {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", user.0))
            .arg(format!("--regid={}", user.1));
        match groups {
            Some(g) => cmd.arg(format!("--groups={g}")),
            None => cmd.arg("--clear-groups"),
        };
        cmd.arg("--")
            .arg(resque_bin())
            .arg("--config")
            .arg(&config)
            .arg(what)
            .env("RUNTIME_DIRECTORY", &runtime)
            .env_remove("INVOCATION_ID")
            .output()
            .unwrap()
    };
    // Not a member: cannot even reach it.
    let o = ctl(stranger, None, "pause");
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("paused"), "{text}");
    // A member of the daemon's group (a supplementary group, as `usermod -aG resque` gives).
    let o = ctl(member, Some(daemon_user.1), "pause");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("paused"), "{}", stdout(&o));
    let o = ctl(member, Some(daemon_user.1), "resume");
    assert!(o.status.success(), "{}", stderr(&o));
}
