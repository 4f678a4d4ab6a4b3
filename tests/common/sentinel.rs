//! A Sentinel deployment of real processes: a primary, one replica
//! (`--replicaof`) and three sentinels (`redis-server <conf> --sentinel`),
//! on free loopback ports, with a small `down-after-milliseconds` so that a
//! failover takes seconds.

use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::resp::{RawConnection, Reply};
use super::server::{
    create_temp_dir, log_tail, redis_server_bin, release_port, reserve_port, spawn_watchdog,
};
use super::{RedisServer, ServerOptions};

/// How long the sentinels wait before they call a silent primary down.
pub const DOWN_AFTER_MS: u64 = 1000;

/// Deadline for the set to settle (replication up, sentinels aware of each
/// other and of the replica), and for a failover to complete.
const SETTLE: Duration = Duration::from_secs(60);

/// One `redis-server --sentinel` process.
pub struct Sentinel {
    port: u16,
    dir: PathBuf,
    child: Option<(Child, Child)>,
}

impl Sentinel {
    fn start(name: &str, primary_port: u16, extra_conf: &str) -> Sentinel {
        let dir = create_temp_dir();
        let port = reserve_port();
        let conf = dir.join("sentinel.conf");
        fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\nprotected-mode no\ndir {}\n\
                 logfile \"\"\n\
                 sentinel monitor {name} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {name} 10000\n\
                 sentinel parallel-syncs {name} 1\n{extra_conf}",
                dir.display()
            ),
        )
        .unwrap();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("redis.log"))
            .unwrap();
        let log_err = log.try_clone().unwrap();
        let child = Command::new(redis_server_bin())
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn redis-server --sentinel: {e}"));
        let watchdog = spawn_watchdog(child.id(), &dir);
        let mut sentinel = Sentinel {
            port,
            dir,
            child: Some((child, watchdog)),
        };
        let deadline = Instant::now() + SETTLE;
        loop {
            let pong = RawConnection::connect(port).and_then(|mut c| c.try_cmd_bytes(&[b"PING"]));
            if matches!(pong, Ok(Reply::Status(ref s)) if s == "PONG") {
                return sentinel;
            }
            if let Some((child, _)) = sentinel.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "sentinel on port {port} exited ({status}):\n{}",
                    log_tail(&sentinel.dir, 30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "sentinel on port {port} did not answer PING:\n{}",
                log_tail(&sentinel.dir, 30)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// One command over a fresh connection; `None` if it cannot connect.
    pub fn cmd(&self, args: &[&str]) -> Option<Reply> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        RawConnection::connect(self.port)
            .and_then(|mut c| c.try_cmd_bytes(&args))
            .ok()
    }

    /// The fields of `SENTINEL MASTER <name>`.
    fn master_field(&self, name: &str, field: &str) -> Option<String> {
        let reply = self.cmd(&["SENTINEL", "MASTER", name])?;
        let fields = reply.as_array()?;
        let at = fields.iter().position(|f| f.as_str() == Some(field))?;
        fields.get(at + 1)?.as_str().map(str::to_owned)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir, lines)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some((mut child, mut watchdog)) = self.child.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
        release_port(self.port);
    }
}

/// A primary, a replica and three sentinels monitoring them as `name`.
pub struct SentinelSet {
    pub name: String,
    /// `[primary, replica]` as started; which one is primary now is
    /// [`SentinelSet::primary_port`].
    pub servers: Vec<RedisServer>,
    /// With [`SentinelSet::start_tls`], the TLS port of each server.
    pub tls_ports: Vec<u16>,
    pub sentinels: Vec<Sentinel>,
}

impl SentinelSet {
    /// Starts everything and waits until the sentinels know the replica and
    /// each other (what a failover needs).
    pub fn start(name: &str, opts: ServerOptions) -> SentinelSet {
        let primary = RedisServer::start_with(opts.clone());
        let mut replica_opts = opts;
        replica_opts.extra.push((
            "replicaof".to_owned(),
            format!("127.0.0.1 {}", primary.port()),
        ));
        let replica = RedisServer::start_with(replica_opts);
        wait_for(
            || {
                replica
                    .cmd(&["INFO", "replication"])
                    .contains("master_link_status:up")
            },
            "the replica to sync with the primary",
        );
        let sentinels: Vec<Sentinel> = (0..3)
            .map(|_| Sentinel::start(name, primary.port(), ""))
            .collect();
        let set = SentinelSet {
            name: name.to_owned(),
            servers: vec![primary, replica],
            tls_ports: Vec::new(),
            sentinels,
        };
        set.wait_settled();
        set
    }

    /// Like [`SentinelSet::start`], but the primary and the replica serve
    /// TLS (on ports of their own, with the server certificate of `certs`;
    /// clients must present one signed by its CA) and replicate over it, and
    /// the sentinels monitor them over TLS, so the addresses the sentinels
    /// give clients are the TLS ports. The sentinels themselves are plain.
    pub fn start_tls(name: &str, certs: &super::tls::Certs) -> SentinelSet {
        let path = |n: &str| certs.path(n).display().to_string();
        let tls_ports = [reserve_port(), reserve_port()];
        let opts = |tls_port: u16| ServerOptions {
            extra: vec![
                ("tls-port".to_owned(), tls_port.to_string()),
                ("tls-replication".to_owned(), "yes".to_owned()),
                ("tls-cert-file".to_owned(), path("server.crt")),
                ("tls-key-file".to_owned(), path("server.key")),
                ("tls-client-cert-file".to_owned(), path("node.crt")),
                ("tls-client-key-file".to_owned(), path("node.key")),
                ("tls-ca-cert-file".to_owned(), path("ca.crt")),
                ("tls-auth-clients".to_owned(), "yes".to_owned()),
            ],
            ..ServerOptions::default()
        };
        let primary = RedisServer::start_with(opts(tls_ports[0]));
        let mut replica_opts = opts(tls_ports[1]);
        replica_opts.extra.push((
            "replicaof".to_owned(),
            format!("127.0.0.1 {}", tls_ports[0]),
        ));
        let replica = RedisServer::start_with(replica_opts);
        wait_for(
            || {
                replica
                    .cmd(&["INFO", "replication"])
                    .contains("master_link_status:up")
            },
            "the replica to sync with the primary over TLS",
        );
        let conf = format!(
            "tls-replication yes\ntls-cert-file {}\ntls-key-file {}\n\
             tls-client-cert-file {}\ntls-client-key-file {}\ntls-ca-cert-file {}\n",
            path("server.crt"),
            path("server.key"),
            path("node.crt"),
            path("node.key"),
            path("ca.crt")
        );
        let sentinels: Vec<Sentinel> = (0..3)
            .map(|_| Sentinel::start(name, tls_ports[0], &conf))
            .collect();
        let set = SentinelSet {
            name: name.to_owned(),
            servers: vec![primary, replica],
            tls_ports: tls_ports.to_vec(),
            sentinels,
        };
        set.wait_settled();
        set
    }

    /// Waits until the sentinels know each other and the replica.
    fn wait_settled(&self) {
        wait_for(
            || {
                self.sentinels.iter().all(|s| {
                    s.master_field(&self.name, "num-other-sentinels").as_deref() == Some("2")
                        && s.master_field(&self.name, "num-slaves").as_deref() == Some("1")
                })
            },
            "the sentinels to know each other and the replica",
        );
    }

    /// `host:port` of each sentinel.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(Sentinel::addr).collect()
    }

    /// The primary's port, as the first sentinel that answers names it.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let reply = s.cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.name])?;
            reply.as_array()?.get(1)?.as_str()?.parse().ok()
        })
    }

    /// The server that is primary now.
    pub fn primary(&self) -> &RedisServer {
        let port = self.primary_port().expect("the sentinels name a primary");
        self.servers
            .iter()
            .zip(
                self.tls_ports
                    .iter()
                    .map(Some)
                    .chain(std::iter::repeat(None)),
            )
            .find(|(s, tls)| s.port() == port || tls.is_some_and(|t| *t == port))
            .map(|(s, _)| s)
            .expect("the primary is one of ours")
    }

    /// Waits until every sentinel names a primary other than `old` and
    /// that server says it is a master.
    pub fn wait_for_failover_from(&self, old: u16) {
        wait_for(
            || {
                let ports: Vec<Option<u16>> = self
                    .sentinels
                    .iter()
                    .map(|s| {
                        let reply = s.cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.name])?;
                        reply.as_array()?.get(1)?.as_str()?.parse().ok()
                    })
                    .collect();
                ports.iter().all(|p| p.is_some_and(|p| p != old))
                    && self.servers.iter().any(|s| {
                        s.is_running()
                            && Some(s.port()) == ports[0]
                            && s.cmd(&["INFO", "replication"]).contains("role:master")
                    })
            },
            "the sentinels to promote the replica",
        );
    }

    /// The last lines of every sentinel's log, for panic messages.
    pub fn logs(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("--- sentinel {} ---\n{}", s.port(), s.log_tail(15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Polls `condition` every 50 ms until it holds; panics after [`SETTLE`].
pub fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + SETTLE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for port in &self.tls_ports {
            release_port(*port);
        }
    }
}
