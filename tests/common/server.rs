//! One real `redis-server` process per [`RedisServer`].

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::resp::{RawConnection, Reply, describe};
use super::stats::CommandStats;

/// How long a freshly spawned server may take to answer `PING`. Generous
/// because a 2-core CI machine may be compiling or running other tests.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Ports are picked at random from `PORT_RANGE`. Cluster nodes also listen on
/// `port + 10000` (the cluster bus), so every server reserves both. The range
/// keeps `port + 10000` below 32768, the start of Linux's default ephemeral
/// range, so outgoing connections never squat on our ports.
const PORT_RANGE: std::ops::Range<u16> = 12000..22000;
const BUS_OFFSET: u16 = 10000;

/// Ports handed out in this process and not yet released: lets parallel
/// tests in one binary never pick the same port. Other processes are handled
/// by checking bindability and retrying when redis fails to bind.
static RESERVED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Options for [`RedisServer::start_with`]. `Default` = no persistence.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// `appendonly yes` with `appendfsync always`, so every acknowledged write
    /// survives [`RedisServer::restart`] (even though that uses SIGKILL).
    pub appendonly: bool,
    /// `enable-debug-command yes` (needed for `DEBUG SLEEP`, `DEBUG RELOAD`, ...).
    pub enable_debug_command: bool,
    /// Further `--name value` arguments, applied last (so they override).
    pub extra: Vec<(String, String)>,
}

impl ServerOptions {
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        let mut push = |k: &str, v: &str| {
            args.push(format!("--{k}"));
            args.push(v.to_string());
        };
        if self.appendonly {
            push("appendonly", "yes");
            push("appendfsync", "always");
        }
        if self.enable_debug_command {
            push("enable-debug-command", "yes");
        }
        for (k, v) in &self.extra {
            push(k, v);
        }
        args
    }
}

/// A running `redis-server` child process, plus the watchdog that kills it if
/// this test process goes away without dropping the [`RedisServer`].
struct Process {
    child: Child,
    watchdog: Child,
}

impl Process {
    /// Kills the watchdog first (so it can never act on a recycled pid), then
    /// the server, and reaps both.
    fn kill(mut self) {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The harness's cached connection plus the number of `INFO commandstats`
/// snapshots taken of the current server process (see [`CommandStats`]).
/// One mutex for both, so snapshots are serialized and the count is exact.
#[derive(Default)]
struct ClientState {
    conn: Option<RawConnection>,
    info_snapshots: u64,
}

/// One standalone `redis-server` process on `127.0.0.1`, with its own
/// temporary directory. Killed (and the directory removed) on drop, or by a
/// watchdog shortly after the test process exits, whichever comes first.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    opts: ServerOptions,
    process: Option<Process>,
    client: Mutex<ClientState>,
}

impl RedisServer {
    /// A fresh server on a free loopback port, without persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_with(ServerOptions::default())
    }

    /// A fresh server with the given options.
    pub fn start_with(opts: ServerOptions) -> RedisServer {
        let bin = redis_server_bin();
        for _attempt in 0..50 {
            // A fresh dir per attempt, so a failed attempt leaves no
            // nodes.conf or log lines behind.
            let dir = create_temp_dir();
            let port = reserve_port();
            match launch(bin, port, &dir, &opts) {
                Ok(process) => {
                    return RedisServer {
                        port,
                        dir,
                        opts,
                        process: Some(process),
                        client: Mutex::new(ClientState::default()),
                    };
                }
                // Lost a race for the port against another process: try another.
                Err(LaunchError::PortInUse) => {
                    release_port(port);
                    let _ = fs::remove_dir_all(&dir);
                }
                Err(LaunchError::Failed(msg)) => {
                    release_port(port);
                    let _ = fs::remove_dir_all(&dir);
                    panic!("{msg}");
                }
            }
        }
        panic!("could not find a free port for redis-server after 50 attempts");
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's working directory (AOF, `nodes.conf`, `redis.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options the server was started with.
    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    /// Process id of the running server, `None` after [`RedisServer::stop`].
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.child.id())
    }

    /// True between start/restart and stop/shutdown.
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Kills the server with SIGKILL and waits for it. Unflushed state is
    /// lost, except what `appendfsync always` already wrote. Idempotent.
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
        self.reset_client();
    }

    /// Sends `SHUTDOWN` (which flushes the AOF when enabled) and waits for
    /// the process to exit; falls back to SIGKILL after a timeout.
    pub fn shutdown(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        self.reset_client();
        if let Ok(mut conn) = RawConnection::connect(self.port) {
            // Success closes the connection without a reply.
            if let Ok(Reply::Error(e)) = conn.try_cmd_bytes(&[b"SHUTDOWN"]) {
                process.kill();
                panic!("SHUTDOWN failed on port {}: {e}", self.port);
            }
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = process.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        process.kill();
    }

    /// Stops the server (if running) and starts it again on the same port,
    /// with the same directory and options; returns once it answers `PING`
    /// (i.e. after any AOF has been loaded).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match launch(redis_server_bin(), self.port, &self.dir, &self.opts) {
                Ok(process) => {
                    self.process = Some(process);
                    return;
                }
                // Something else briefly holds our port; it is reserved in
                // this process, so keep trying the same one.
                Err(LaunchError::PortInUse) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(LaunchError::PortInUse) => {
                    panic!(
                        "cannot restart redis-server: port {} stays in use",
                        self.port
                    )
                }
                Err(LaunchError::Failed(msg)) => panic!("{msg}"),
            }
        }
    }

    /// A new raw connection to this server (sends nothing on connect).
    pub fn connect(&self) -> RawConnection {
        RawConnection::connect(self.port)
            .unwrap_or_else(|e| panic!("cannot connect to redis-server on port {}: {e}", self.port))
    }

    /// Runs one command over the harness's cached raw connection and returns
    /// the reply rendered like `redis-cli --raw` ([`Reply::to_text`]): error
    /// replies come back as text such as `"ERR unknown command ..."`, nil as
    /// `""`. Panics on I/O errors. Use [`RedisServer::cmd_bytes`] to tell
    /// errors, nil and binary values apart.
    pub fn cmd(&self, args: &[&str]) -> String {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd_bytes(&args).to_text()
    }

    /// Runs one command with binary-safe arguments over the harness's cached
    /// raw connection. Error replies are returned as [`Reply::Error`]; I/O
    /// errors panic.
    ///
    /// The connection is shared by all threads using this server (commands
    /// are serialized through a mutex), so do not change its state here:
    /// use [`RedisServer::connect`] for `SELECT`, `MULTI`, `SUBSCRIBE`,
    /// `CLIENT REPLY` or blocking commands such as `BLPOP`.
    pub fn cmd_bytes(&self, args: &[&[u8]]) -> Reply {
        let mut state = self.client_state();
        let conn = self.live_connection(&mut state);
        let first = conn.try_cmd_bytes(args);
        // Redis itself may have closed the cached connection (Sentinel kills
        // the clients of a primary it demotes, `CLIENT KILL`, a restart):
        // the harness's commands are checks, safe to send once more over a
        // fresh connection.
        let result = match first {
            Ok(reply) => Ok(reply),
            Err(_) => {
                state.conn = None;
                let conn = self.live_connection(&mut state);
                conn.try_cmd_bytes(args)
            }
        };
        match result {
            Ok(reply) => reply,
            Err(e) => {
                // The connection may be mid-reply; never reuse it.
                state.conn = None;
                drop(state);
                panic!(
                    "I/O error talking to redis-server on port {} while sending {}: {e}\n{}",
                    self.port,
                    describe(args),
                    self.log_tail(20)
                );
            }
        }
    }

    /// Snapshot of `INFO commandstats`. Sends exactly one command, and the
    /// `info` entry excludes the harness's own snapshots (see [`CommandStats`]).
    pub fn commandstats(&self) -> CommandStats {
        let mut state = self.client_state();
        let conn = self.live_connection(&mut state);
        let reply = conn.try_cmd_bytes(&[b"INFO", b"commandstats"]);
        let text = match reply {
            Ok(Reply::Bulk(text)) => String::from_utf8_lossy(&text).into_owned(),
            other => {
                state.conn = None;
                panic!("INFO commandstats on port {} failed: {other:?}", self.port);
            }
        };
        let mut stats = CommandStats::parse(&text);
        let own = state.info_snapshots;
        state.info_snapshots += 1;
        drop(state);
        if let Some(info) = stats.0.get_mut("info") {
            *info = info.saturating_sub(own);
            if *info == 0 {
                stats.0.remove("info");
            }
        }
        stats
    }

    /// The last `lines` lines of the server's log (stdout and stderr),
    /// for panic messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir, lines)
    }

    fn client_state(&self) -> MutexGuard<'_, ClientState> {
        // A panicking test must not break the shared server for the others;
        // the state is consistent because I/O errors drop the connection.
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached connection, replaced by a fresh one if the server closed
    /// it (restart, `CLIENT KILL`, ...). Checking before sending, instead of
    /// retrying after a failure, means a command is never sent twice.
    fn live_connection<'a>(&self, state: &'a mut ClientState) -> &'a mut RawConnection {
        if !state.conn.as_ref().is_some_and(RawConnection::is_alive) {
            state.conn = Some(self.connect());
        }
        state.conn.as_mut().expect("connection was just set")
    }

    /// Forgets the cached connection and the snapshot count: both belong to
    /// the server process that just went away.
    fn reset_client(&mut self) {
        let state = self
            .client
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        *state = ClientState::default();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
        release_port(self.port);
    }
}

enum LaunchError {
    /// redis-server could not bind its port (or cluster bus port).
    PortInUse,
    /// Any other failure; the message is ready for a panic.
    Failed(String),
}

/// Spawns redis-server plus its watchdog and waits until it answers PING.
fn launch(bin: &Path, port: u16, dir: &Path, opts: &ServerOptions) -> Result<Process, LaunchError> {
    let log = open_log(dir);
    // The log is appended to across restarts; only this launch's part counts.
    let log_start = log.metadata().map_or(0, |m| m.len());
    let log_err = log.try_clone().expect("cannot clone log file handle");
    let mut command = Command::new(bin);
    command
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no"])
        .args(["--protected-mode", "no"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        // Log to stdout, which goes to <dir>/redis.log together with stderr,
        // so even errors printed before logging is set up end up in the file.
        .args(["--logfile", ""])
        .args(opts.args())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    let child = command
        .spawn()
        .map_err(|e| LaunchError::Failed(format!("cannot spawn {}: {e}", bin.display())))?;
    let watchdog = spawn_watchdog(child.id(), dir);
    let mut process = Process { child, watchdog };

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = process.child.try_wait() {
            process.kill();
            let tail = log_tail(dir, 30);
            if read_log_from(dir, log_start).contains("Address already in use") {
                return Err(LaunchError::PortInUse);
            }
            return Err(LaunchError::Failed(format!(
                "redis-server on port {port} exited during startup ({status}); log tail:\n{tail}"
            )));
        }
        // A LOADING error (AOF replay in progress) just means "not yet".
        let pong = RawConnection::connect(port).and_then(|mut c| c.try_cmd_bytes(&[b"PING"]));
        if matches!(pong, Ok(Reply::Status(ref s)) if s == "PONG") {
            return Ok(process);
        }
        if Instant::now() > deadline {
            process.kill();
            return Err(LaunchError::Failed(format!(
                "redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}; log tail:\n{}",
                log_tail(dir, 30)
            )));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `sh` polling this test process; once it is gone (normal exit,
/// panic, SIGKILL), it SIGKILLs the server and removes its directory.
/// Needed because statics (`shared_server()`) are never dropped and killed
/// processes run no destructors. It runs in its own process group so a
/// Ctrl-C on `cargo test` does not kill it before it has cleaned up. The
/// harness kills it (and reaps it) before it reaps the server, so it never
/// signals a recycled pid.
pub(crate) fn spawn_watchdog(server_pid: u32, dir: &Path) -> Child {
    const SCRIPT: &str = r#"trap '' INT HUP TERM
while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
kill -9 "$2" 2>/dev/null
rm -rf "$3""#;
    Command::new("sh")
        .args(["-c", SCRIPT, "redis-test-watchdog"])
        .arg(std::process::id().to_string())
        .arg(server_pid.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn watchdog shell `sh`: {e}"))
}

fn open_log(dir: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("redis.log"))
        .unwrap_or_else(|e| panic!("cannot open {}/redis.log: {e}", dir.display()))
}

/// The log from byte `offset` on (empty if unreadable).
fn read_log_from(dir: &Path, offset: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(dir.join("redis.log"))?;
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    read().unwrap_or_default()
}

pub(crate) fn log_tail(dir: &Path, lines: usize) -> String {
    let len = fs::metadata(dir.join("redis.log")).map_or(0, |m| m.len());
    let text = read_log_from(dir, len.saturating_sub(16 * 1024));
    if text.is_empty() {
        return "(log is empty)".to_string();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Path of `name` if it is an executable on `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Panics with installation instructions if a Redis binary is missing.
pub(crate) fn require_binary(name: &str) -> PathBuf {
    find_on_path(name).unwrap_or_else(|| {
        panic!(
            "`{name}` not found on PATH. The integration tests start real Redis servers.\n\
             Install Redis (Debian/Ubuntu): sudo apt-get install -y redis-server redis-tools\n\
             or run `bash scripts/test.sh`, which installs it when missing."
        )
    })
}

pub(crate) fn redis_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| require_binary("redis-server"))
}

/// A random number without extra crates: `RandomState` is seeded randomly
/// per process; a counter and the clock make successive calls differ.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish()
}

/// `$TMPDIR/tower-redis-sessions-<pid>-<counter>-<random>`, freshly created.
pub(crate) fn create_temp_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let name = format!(
            "tower-redis-sessions-{}-{}-{:016x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            random_u64()
        );
        let dir = std::env::temp_dir().join(name);
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create temp dir {}: {e}", dir.display()),
        }
    }
}

fn reserved_ports() -> MutexGuard<'static, BTreeSet<u16>> {
    RESERVED_PORTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Picks a random port `p` such that neither `p` nor `p + 10000` is reserved
/// in this process or currently bound on 127.0.0.1, and reserves both.
pub(crate) fn reserve_port() -> u16 {
    for _ in 0..1000 {
        let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
        let port = PORT_RANGE.start + (random_u64() % span) as u16;
        let bus = port + BUS_OFFSET;
        let mut reserved = reserved_ports();
        if reserved.contains(&port) || reserved.contains(&bus) {
            continue;
        }
        let bindable = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if bindable(port) && bindable(bus) {
            reserved.insert(port);
            reserved.insert(bus);
            return port;
        }
    }
    panic!("no free port pair (p, p+{BUS_OFFSET}) found in {PORT_RANGE:?} on 127.0.0.1");
}

pub(crate) fn release_port(port: u16) {
    let mut reserved = reserved_ports();
    reserved.remove(&port);
    reserved.remove(&(port + BUS_OFFSET));
}
