//! Load harness: this crate against tower-sessions and the Redis floor.
//!
//! ```text
//! cargo run --release -p loadtest -- --duration 5 --rounds 3 --connections 16
//! ```
//!
//! Starts its own `redis-server` (free loopback port, no persistence), serves
//! the same handlers from this crate, tower-sessions + its Redis store, and
//! hand-written handlers doing only the Redis work a session needs (the
//! floor), all on that one Redis; then drives each scenario against the
//! servers in interleaved rounds with a closed-loop client and prints a
//! markdown table. See BENCHMARKS.md for what each number means.

mod client;
mod delay;
mod redis_server;
mod servers;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tower_redis_sessions::store::NearCache;

use hyper::header::HeaderValue;

use crate::client::{Load, Outcome};
use crate::redis_server::{
    CommandStats, RedisServer, commandstats, cpu_ticks, threads_ticks, ticks_per_second,
};

const USAGE: &str = "\
usage: cargo run --release -p loadtest -- [options]

  --duration SECS      measured seconds per server, scenario and round (default 5)
  --warmup SECS        unmeasured load before each measurement (default 1)
  --rounds N           interleaved rounds (default 3)
  --connections N      client connections (default 16)
  --writers N          connections of the concurrent-writers scenario (default 32)
  --sessions N         sessions created per server and rotated over (default 256)
  --pool N             Redis connections of this crate's store and of fred's pool (default 1)
  --scenarios LIST     comma-separated subset of: untouched,read,write,sliding,writers,login
  --servers LIST       comma-separated subset of: ours,ours-touch0,peer,peer-always-save,floor
                       (to profile one server; ratios need this crate, the peer and the floor)
  --out FILE           also write the report to FILE
  --redis-server PATH  the redis-server binary (default: redis-server on PATH)
 --redis-delay-us N   add N µs to every round trip to Redis (a delaying proxy; default 0)
  --redis-cpu N        pin redis-server to CPU N (taskset); run the harness itself under
                       `taskset -c M` so that app and Redis do not share a core
  --serve DIR          only serve for an outside load generator (e.g. wrk): write each
                       server's address and session cookies to DIR, then wait for Ctrl-C
";

#[derive(Clone, Debug)]
struct Args {
    duration: f64,
    warmup: f64,
    rounds: usize,
    connections: usize,
    writers: usize,
    sessions: usize,
    pool: usize,
    scenarios: Option<Vec<String>>,
    servers: Option<Vec<String>>,
    out: Option<String>,
    redis_server: String,
    serve: Option<String>,
    redis_delay_us: u64,
    redis_cpu: Option<usize>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            duration: 5.0,
            warmup: 1.0,
            rounds: 3,
            connections: 16,
            writers: 32,
            sessions: 256,
            pool: 1,
            scenarios: None,
            servers: None,
            out: None,
            redis_server: "redis-server".to_owned(),
            serve: None,
            redis_delay_us: 0,
            redis_cpu: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                return Err(String::new());
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let num = |v: &str| v.parse::<f64>().map_err(|_| format!("bad {flag}: {v}"));
            let int = |v: &str| v.parse::<usize>().map_err(|_| format!("bad {flag}: {v}"));
            match flag.as_str() {
                "--duration" => args.duration = num(&value)?,
                "--warmup" => args.warmup = num(&value)?,
                "--rounds" => args.rounds = int(&value)?.max(1),
                "--connections" => args.connections = int(&value)?.max(1),
                "--writers" => args.writers = int(&value)?.max(1),
                "--sessions" => args.sessions = int(&value)?.max(1),
                "--pool" => args.pool = int(&value)?.max(1),
                "--scenarios" => {
                    args.scenarios = Some(value.split(',').map(str::to_owned).collect())
                }
                "--servers" => args.servers = Some(value.split(',').map(str::to_owned).collect()),
                "--out" => args.out = Some(value),
                "--redis-server" => args.redis_server = value,
                "--serve" => args.serve = Some(value),
                "--redis-delay-us" => args.redis_delay_us = int(&value)? as u64,
                "--redis-cpu" => args.redis_cpu = Some(int(&value)?),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        Ok(args)
    }
}

/// The servers, one port each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Server {
    /// This crate, store touch interval 60 s (the default).
    Ours,
    /// This crate, touch interval 0: every load slides the idle deadline.
    OursSliding,
    /// This crate with the near cache on (default settings).
    OursCached,
    /// tower-sessions + tower-sessions-redis-store.
    Peer,
    /// The same with `always_save`, its way to slide the expiry.
    PeerAlwaysSave,
    /// Hand-written handlers on one multiplexed connection.
    Floor,
}

const SERVERS: [Server; 6] = [
    Server::Ours,
    Server::OursSliding,
    Server::OursCached,
    Server::Peer,
    Server::PeerAlwaysSave,
    Server::Floor,
];

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Ours => "tower-redis-sessions",
            Server::OursSliding => "tower-redis-sessions (touch 0)",
            Server::OursCached => "tower-redis-sessions (near cache)",
            Server::Peer => "tower-sessions",
            Server::PeerAlwaysSave => "tower-sessions (always_save)",
            Server::Floor => "floor",
        }
    }

    /// What sets a variant apart from its library's main server.
    fn variant(self) -> &'static str {
        match self {
            Server::OursSliding => "touch 0",
            Server::OursCached => "near cache",
            Server::PeerAlwaysSave => "always_save",
            _ => self.label(),
        }
    }

    /// The name `--servers` knows it by.
    fn key(self) -> &'static str {
        match self {
            Server::Ours => "ours",
            Server::OursSliding => "ours-touch0",
            Server::OursCached => "ours-cache",
            Server::Peer => "peer",
            Server::PeerAlwaysSave => "peer-always-save",
            Server::Floor => "floor",
        }
    }

    fn is_ours(self) -> bool {
        matches!(
            self,
            Server::Ours | Server::OursSliding | Server::OursCached
        )
    }
}

/// Commands the function library runs inside an `FCALL`: Redis counts them
/// in `INFO commandstats` too.
const INSIDE_FUNCTIONS: [&str; 13] = [
    "exists",
    "zscore",
    "zcount",
    "hmget",
    "hget",
    "hset",
    "del",
    "zadd",
    "zrem",
    "zrange",
    "zrangebyscore",
    "pexpireat",
    "persist",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Rotate over the pre-created sessions.
    Sessions,
    /// No cookie: every request starts a new session.
    NoCookie,
    /// Every connection on one fresh session; count lost updates.
    Writers,
}

struct Scenario {
    key: &'static str,
    name: &'static str,
    path: &'static str,
    kind: Kind,
    /// This crate, the peer, the floor, then further variants of this crate.
    servers: &'static [Server],
}

const SCENARIOS: [Scenario; 6] = [
    Scenario {
        key: "untouched",
        name: "untouched",
        path: "/untouched",
        kind: Kind::Sessions,
        servers: &[Server::Ours, Server::Peer, Server::Floor],
    },
    Scenario {
        key: "read",
        name: "read only",
        path: "/read",
        kind: Kind::Sessions,
        servers: &[
            Server::Ours,
            Server::Peer,
            Server::Floor,
            Server::OursCached,
        ],
    },
    Scenario {
        key: "write",
        name: "read + write",
        path: "/write",
        kind: Kind::Sessions,
        servers: &[
            Server::Ours,
            Server::Peer,
            Server::Floor,
            Server::OursCached,
        ],
    },
    Scenario {
        key: "sliding",
        name: "read, sliding expiry",
        path: "/sliding",
        kind: Kind::Sessions,
        servers: &[
            Server::Ours,
            Server::PeerAlwaysSave,
            Server::Floor,
            Server::OursSliding,
            Server::OursCached,
        ],
    },
    Scenario {
        key: "writers",
        name: "concurrent writers, one session",
        path: "/incr",
        kind: Kind::Writers,
        servers: &[Server::Ours, Server::Peer, Server::Floor],
    },
    Scenario {
        key: "login",
        name: "login (new session)",
        path: "/login",
        kind: Kind::NoCookie,
        servers: &[Server::Ours, Server::Peer, Server::Floor],
    },
];

struct Target {
    addr: SocketAddr,
    cookies: Arc<Vec<HeaderValue>>,
}

/// One (scenario, server) over all rounds.
#[derive(Default)]
struct Totals {
    ok: u64,
    failed: u64,
    secs: f64,
    latencies: Vec<u32>,
    commands: CommandStats,
    rounds: Vec<f64>,
    lost: i64,
    cpu: Cpu,
}

/// CPU time, in clock ticks, of Redis, of the server threads and of the
/// client thread.
#[derive(Clone, Copy, Default)]
struct Cpu {
    redis: u64,
    server: u64,
    client: u64,
}

impl Cpu {
    fn now(redis_pid: u32) -> Cpu {
        Cpu {
            redis: cpu_ticks(&format!("/proc/{redis_pid}/stat")),
            server: threads_ticks("server"),
            client: cpu_ticks(&format!("/proc/self/task/{}/stat", std::process::id())),
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            redis: self.redis.saturating_sub(before.redis),
            server: self.server.saturating_sub(before.server),
            client: self.client.saturating_sub(before.client),
        }
    }

    fn add(&mut self, other: Cpu) {
        self.redis += other.redis;
        self.server += other.server;
        self.client += other.client;
    }
}

impl Totals {
    fn responses(&self) -> u64 {
        self.ok + self.failed
    }

    fn rps(&self) -> f64 {
        self.responses() as f64 / self.secs.max(1e-9)
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1);
        f64::from(self.latencies[i]) / 1000.0
    }

    fn per_request(&self, n: u64) -> f64 {
        n as f64 / self.responses().max(1) as f64
    }
}

fn main() {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}\n");
            }
            eprint!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let redis = RedisServer::start(&args.redis_server)?;
    let mut url = redis.url();
    eprintln!("redis-server {} on {url}", redis.version);
    if let Some(cpu) = args.redis_cpu {
        redis.pin(cpu)?;
        eprintln!("redis-server pinned to CPU {cpu}");
    }
    if args.redis_delay_us > 0 {
        let port = delay::start(redis.port, Duration::from_micros(args.redis_delay_us))?;
        url = format!("redis://127.0.0.1:{port}");
        eprintln!(
            "apps reach Redis through {url}, +{} µs per round trip",
            args.redis_delay_us
        );
    }

    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("server")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let addrs: BTreeMap<Server, SocketAddr> = server_rt.block_on(async {
        let mut addrs = BTreeMap::new();
        for server in SERVERS {
            let app = match server {
                Server::Ours => {
                    servers::ours::app(&url, args.pool, Duration::from_secs(60), NearCache::off())
                        .await?
                }
                Server::OursSliding => {
                    servers::ours::app(&url, args.pool, Duration::ZERO, NearCache::off()).await?
                }
                Server::OursCached => {
                    servers::ours::app(&url, args.pool, Duration::from_secs(60), NearCache::new())
                        .await?
                }
                Server::Peer => servers::peer::app(&url, args.pool, false).await?,
                Server::PeerAlwaysSave => servers::peer::app(&url, args.pool, true).await?,
                Server::Floor => servers::floor::app(&url).await?,
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            addrs.insert(server, listener.local_addr().map_err(|e| e.to_string())?);
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        Ok::<_, String>(addrs)
    })?;

    // The client: one thread, all connections multiplexed on it.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // Ctrl-C ends the run through the normal path, so that dropping the
    // RedisServer stops redis-server.
    let report = client_rt.block_on(async {
        tokio::select! {
            report = drive(&args, &url, &addrs, &redis) => report,
            _ = tokio::signal::ctrl_c(), if args.serve.is_none() => Err("interrupted".to_owned()),
        }
    })?;
    print!("{report}");
    if let Some(path) = &args.out {
        std::fs::write(path, &report).map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    server_rt.shutdown_timeout(Duration::from_secs(1));
    drop(redis);
    Ok(())
}

async fn drive(
    args: &Args,
    url: &str,
    addrs: &BTreeMap<Server, SocketAddr>,
    redis: &RedisServer,
) -> Result<String, String> {
    let mut admin = redis::Client::open(url)
        .map_err(|e| e.to_string())?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;

    let scenarios: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| {
            args.scenarios
                .as_ref()
                .is_none_or(|only| only.iter().any(|k| k == s.key))
        })
        .collect();

    // Sessions to rotate over, created through each server's own login.
    let mut targets = BTreeMap::new();
    for (&server, &addr) in addrs {
        let selected = args
            .servers
            .as_ref()
            .is_none_or(|only| only.iter().any(|k| k == server.key()));
        let needed = selected
            && (scenarios
                .iter()
                .any(|s| s.kind == Kind::Sessions && s.servers.contains(&server))
                || args.serve.is_some());
        let mut cookies = Vec::new();
        if needed {
            for _ in 0..args.sessions {
                cookies.push(login(addr).await?);
            }
            let (status, body, _) = client::get(addr, "/read", cookies.first()).await?;
            if status != 200 || body == "0" {
                return Err(format!(
                    "{}: reading a fresh session gave {status} {body:?}",
                    server.label()
                ));
            }
        }
        targets.insert(
            server,
            Target {
                addr,
                cookies: Arc::new(cookies),
            },
        );
    }
    if let Some(dir) = &args.serve {
        return serve(dir, &targets).await;
    }
    eprintln!(
        "{} sessions per server; {} s + {} s warm-up per cell, {} rounds",
        args.sessions, args.duration, args.warmup, args.rounds
    );

    let mut totals: BTreeMap<(usize, Server), Totals> = BTreeMap::new();
    for (si, scenario) in scenarios.iter().enumerate() {
        for round in 0..args.rounds {
            let mut order: Vec<Server> = scenario
                .servers
                .iter()
                .copied()
                .filter(|s| {
                    args.servers
                        .as_ref()
                        .is_none_or(|only| only.iter().any(|k| k == s.key()))
                })
                .collect();
            let len = order.len().max(1);
            order.rotate_left(round % len);
            for server in order {
                let target = &targets[&server];
                let (outcome, commands, lost, cpu) =
                    cell(args, scenario, target, &mut admin, redis.pid()).await?;
                let t = totals.entry((si, server)).or_default();
                let rps = outcome.responses() as f64 / outcome.elapsed.as_secs_f64();
                eprintln!(
                    "{:<32} round {} {:<30} {:>9.0} req/s  {:>6.2} cmds/req  {} non-2xx{}",
                    scenario.name,
                    round + 1,
                    server.label(),
                    rps,
                    commands.total() as f64 / outcome.responses().max(1) as f64,
                    outcome.failed,
                    lost.map(|l| format!("  {l} lost")).unwrap_or_default(),
                );
                t.ok += outcome.ok;
                t.failed += outcome.failed;
                t.secs += outcome.elapsed.as_secs_f64();
                t.latencies.extend(outcome.latencies);
                t.commands.add(&commands);
                t.rounds.push(rps);
                t.lost += lost.unwrap_or(0);
                t.cpu.add(cpu);
            }
        }
        for &server in scenario.servers {
            if let Some(t) = totals.get_mut(&(si, server)) {
                t.latencies.sort_unstable();
            }
        }
    }
    Ok(report(args, redis, &scenarios, &totals))
}

/// For a cross-check with another load generator: `DIR/<server>.addr` holds
/// the server's address, `DIR/<server>.cookies` one `Cookie` header value per
/// line; then serve until interrupted.
async fn serve(dir: &str, targets: &BTreeMap<Server, Target>) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    for (server, target) in targets {
        let name = format!("{server:?}").to_lowercase();
        let cookies: Vec<&str> = target
            .cookies
            .iter()
            .filter_map(|c| c.to_str().ok())
            .collect();
        let write = |ext: &str, text: String| {
            std::fs::write(format!("{dir}/{name}.{ext}"), text).map_err(|e| e.to_string())
        };
        write("addr", target.addr.to_string())?;
        write("cookies", cookies.join("\n") + "\n")?;
        eprintln!("{:<32} http://{}", server.label(), target.addr);
    }
    eprintln!("serving; Ctrl-C to stop");
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    Ok(String::new())
}

async fn login(addr: SocketAddr) -> Result<HeaderValue, String> {
    match client::get(addr, "/login", None).await? {
        (200, _, Some(cookie)) => Ok(cookie),
        (status, body, _) => Err(format!("login at {addr} gave {status} {body:?}")),
    }
}

/// One measurement: warm-up, then `duration` of load between two
/// `INFO commandstats` snapshots. For concurrent writers, also the lost
/// updates: 2xx responses minus the counter's final value.
async fn cell(
    args: &Args,
    scenario: &Scenario,
    target: &Target,
    admin: &mut redis::aio::MultiplexedConnection,
    redis_pid: u32,
) -> Result<(Outcome, CommandStats, Option<i64>, Cpu), String> {
    let mut load = Load {
        addr: target.addr,
        path: scenario.path,
        cookies: match scenario.kind {
            Kind::Sessions => target.cookies.clone(),
            Kind::NoCookie | Kind::Writers => Arc::new(Vec::new()),
        },
        connections: args.connections,
    };
    if scenario.kind == Kind::Writers {
        load.connections = args.writers;
        load.cookies = Arc::new(vec![login(target.addr).await?]);
    }
    if args.warmup > 0.0 {
        client::run(&load, Duration::from_secs_f64(args.warmup)).await;
    }
    if scenario.kind == Kind::Writers {
        // A fresh session for the measurement: its counter starts at 0.
        load.cookies = Arc::new(vec![login(target.addr).await?]);
    }
    let before = commandstats(admin).await?;
    let cpu_before = Cpu::now(redis_pid);
    let outcome = client::run(&load, Duration::from_secs_f64(args.duration)).await;
    let cpu = Cpu::now(redis_pid).since(cpu_before);
    let after = commandstats(admin).await?;
    let lost = if scenario.kind == Kind::Writers {
        let (status, body, _) = client::get(target.addr, "/counter", load.cookies.first()).await?;
        let value: i64 = body
            .parse()
            .map_err(|_| format!("counter read gave {status} {body:?}"))?;
        Some(outcome.ok as i64 - value)
    } else {
        None
    };
    Ok((outcome, after.since(&before), lost, cpu))
}

/// The commands clients sent (an `FCALL` counts once, not the commands it
/// runs), and the microseconds Redis spent executing them.
fn top_level(server: Server, commands: &CommandStats) -> (u64, u64) {
    commands
        .0
        .iter()
        .filter(|(name, _)| !(server.is_ours() && INSIDE_FUNCTIONS.contains(&name.as_str())))
        .fold((0, 0), |(calls, usec), (_, c)| {
            (calls + c.calls, usec + c.usec)
        })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {kernel}")
}

fn report(
    args: &Args,
    redis: &RedisServer,
    scenarios: &[&Scenario],
    totals: &BTreeMap<(usize, Server), Totals>,
) -> String {
    let tps = ticks_per_second();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}; redis-server {}.",
        machine(),
        redis.version
    );
    let _ = writeln!(
        out,
        "Run: {} rounds x {} s per server and scenario (after {} s of warm-up), {} connections \
         ({} for concurrent writers), {} sessions per server, {} Redis connection(s) per library.",
        args.rounds,
        args.duration,
        args.warmup,
        args.connections,
        args.writers,
        args.sessions,
        args.pool
    );
    if args.redis_delay_us > 0 || args.redis_cpu.is_some() {
        let _ = writeln!(
            out,
            "Redis: +{} µs per round trip (delaying proxy){}.",
            args.redis_delay_us,
            args.redis_cpu
                .map(|c| format!(", redis-server pinned to CPU {c}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| scenario | server | req/s | p50 ms | p99 ms | Redis cmds/req | top-level cmds/req | Redis exec µs/req | CPU µs/req: Redis / server / client | non-2xx | lost updates |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (si, scenario) in scenarios.iter().enumerate() {
        for &server in scenario.servers {
            let Some(t) = totals.get(&(si, server)) else {
                continue;
            };
            let lost = if scenario.kind == Kind::Writers {
                t.lost.to_string()
            } else {
                String::new()
            };
            let (calls, usec) = top_level(server, &t.commands);
            let cpu = |ticks: u64| t.per_request(ticks) * 1e6 / tps;
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} / {:.0} / {:.0} | {} | {} |",
                scenario.name,
                server.label(),
                t.rps(),
                t.percentile(0.50),
                t.percentile(0.99),
                t.per_request(t.commands.total()),
                t.per_request(calls),
                t.per_request(usec),
                cpu(t.cpu.redis),
                cpu(t.cpu.server),
                cpu(t.cpu.client),
                t.failed,
                lost,
            );
        }
    }

    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| scenario | this crate / tower-sessions | this crate / floor | per round (/ tower-sessions; / floor) | goal | met |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|---|---|");
    for (si, scenario) in scenarios.iter().enumerate() {
        let get = |i: usize| scenario.servers.get(i).and_then(|&s| totals.get(&(si, s)));
        let (Some(peer), Some(floor)) = (get(1), get(2)) else {
            continue;
        };
        for (i, &server) in scenario.servers.iter().enumerate() {
            if !(i == 0 || i >= 3) {
                continue;
            }
            let Some(ours) = get(i) else {
                continue;
            };
            let vs_peer = ours.rps() / peer.rps().max(1e-9);
            let vs_floor = ours.rps() / floor.rps().max(1e-9);
            let rounds: Vec<String> = (0..ours.rounds.len())
                .map(|r| {
                    format!(
                        "{:.2}; {:.2}",
                        ours.rounds[r] / peer.rounds.get(r).copied().unwrap_or(f64::NAN),
                        ours.rounds[r] / floor.rounds.get(r).copied().unwrap_or(f64::NAN)
                    )
                })
                .collect();
            let cmds = ours.per_request(top_level(server, &ours.commands).0);
            let one = (cmds - 1.0).abs() < 0.01;
            let (goal, met) = match scenario.key {
                "read" if server == Server::OursCached => (
                    ">= 1.5x floor, >= 2x tower-sessions (near cache)",
                    Some(vs_floor >= 1.5 && vs_peer >= 2.0),
                ),
                "write" if server == Server::OursCached => (
                    ">= 1.0x floor, >= 1.3x tower-sessions, 1 command/request (near cache)",
                    Some(vs_floor >= 1.0 && vs_peer >= 1.3 && one),
                ),
                _ if server == Server::OursCached => ("(none set)", None),
                "untouched" => ("0 commands/request", Some(cmds == 0.0)),
                "read" => (
                    ">= 0.9x floor, >= 1.0x tower-sessions, 1 command/request",
                    Some(vs_floor >= 0.9 && vs_peer >= 1.0 && one),
                ),
                "write" => (
                    ">= 0.85x floor, 2 commands/request",
                    Some(vs_floor >= 0.85 && (cmds - 2.0).abs() < 0.01),
                ),
                "sliding" => (
                    ">= 1.5x tower-sessions (always_save), 1 command/request",
                    Some(vs_peer >= 1.5 && one),
                ),
                "writers" => ("0 lost updates", Some(ours.lost == 0)),
                _ => ("(none set)", None),
            };
            let name = if i == 0 {
                scenario.name.to_owned()
            } else {
                format!("{} ({})", scenario.name, server.variant())
            };
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.2} | {} | {} | {} |",
                name,
                vs_peer,
                vs_floor,
                rounds.join(" / "),
                goal,
                match met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                },
            );
        }
    }

    let _ = writeln!(out);
    let _ = writeln!(out, "Redis commands per request, by command:");
    let _ = writeln!(out);
    for (si, scenario) in scenarios.iter().enumerate() {
        for &server in scenario.servers {
            let Some(t) = totals.get(&(si, server)) else {
                continue;
            };
            let detail: Vec<String> = t
                .commands
                .0
                .iter()
                .map(|(name, c)| format!("{name} {:.2}", t.per_request(c.calls)))
                .collect();
            let _ = writeln!(
                out,
                "- {} / {}: {}",
                scenario.name,
                server.label(),
                if detail.is_empty() {
                    "none".to_owned()
                } else {
                    detail.join(", ")
                }
            );
        }
    }
    out
}
