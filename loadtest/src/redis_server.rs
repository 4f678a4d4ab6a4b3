//! The harness's own `redis-server`: a free loopback port, no persistence,
//! killed when dropped.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    dir: PathBuf,
    pub port: u16,
    pub version: String,
}

impl RedisServer {
    /// Starts `binary` on a free 127.0.0.1 port, retrying on a lost race for
    /// the port.
    pub fn start(binary: &str) -> Result<RedisServer, String> {
        let version = Command::new(binary)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {binary} (install redis-server >= 7): {e}"))?;
        let version = String::from_utf8_lossy(&version.stdout)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v=").map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        let mut last = String::new();
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?
                .port();
            let dir =
                std::env::temp_dir().join(format!("bench-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let child = Command::new(binary)
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .args(["--protected-mode", "no"])
                .args(["--daemonize", "no"])
                .args(["--loglevel", "warning"])
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(dir.join("redis.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {binary}: {e}"))?;
            let mut server = RedisServer {
                child,
                dir,
                port,
                version: version.clone(),
            };
            match server.wait_ready() {
                Ok(()) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(format!("redis-server did not start: {last}"))
    }

    /// Pins the server to CPU `cpu` (`taskset -pc`).
    pub fn pin(&self, cpu: usize) -> Result<(), String> {
        let status = Command::new("taskset")
            .args(["-pc", &cpu.to_string(), &self.child.id().to_string()])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run taskset: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("taskset failed: {status}"))
        }
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("not ready within 20 s".to_owned())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `INFO commandstats`: per command (lowercase: `fcall`, `get`, ...), the
/// calls and the microseconds spent executing them.
#[derive(Clone, Debug, Default)]
pub struct CommandStats(pub BTreeMap<String, Calls>);

#[derive(Clone, Copy, Debug, Default)]
pub struct Calls {
    pub calls: u64,
    pub usec: u64,
}

impl CommandStats {
    pub fn parse(info: &str) -> CommandStats {
        let mut map = BTreeMap::new();
        for line in info.lines() {
            let Some((name, fields)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|r| r.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key))
                    .and_then(|n| n.parse().ok())
            };
            if let (Some(calls), Some(usec)) = (field("calls="), field("usec=")) {
                map.insert(name.to_ascii_lowercase(), Calls { calls, usec });
            }
        }
        CommandStats(map)
    }

    /// Calls made since `before`, leaving out the harness's own `INFO`.
    pub fn since(&self, before: &CommandStats) -> CommandStats {
        CommandStats(
            self.0
                .iter()
                .filter(|(name, _)| name.as_str() != "info")
                .filter_map(|(name, now)| {
                    let then = before.0.get(name).copied().unwrap_or_default();
                    let d = Calls {
                        calls: now.calls.saturating_sub(then.calls),
                        usec: now.usec.saturating_sub(then.usec),
                    };
                    (d.calls > 0).then(|| (name.clone(), d))
                })
                .collect(),
        )
    }

    pub fn total(&self) -> u64 {
        self.0.values().map(|c| c.calls).sum()
    }

    pub fn add(&mut self, other: &CommandStats) {
        for (name, c) in &other.0 {
            let e = self.0.entry(name.clone()).or_default();
            e.calls += c.calls;
            e.usec += c.usec;
        }
    }
}

pub async fn commandstats(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<CommandStats, String> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    Ok(CommandStats::parse(&info))
}

/// CPU time (user + system) of a process or thread, in clock ticks, from
/// `/proc/<path>/stat`.
pub fn cpu_ticks(stat_path: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(stat_path) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

/// CPU ticks of this process's threads whose name starts with `prefix`.
pub fn threads_ticks(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with(prefix))
        })
        .map(|task| cpu_ticks(&task.path().join("stat").to_string_lossy()))
        .sum()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux if unknown).
pub fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
