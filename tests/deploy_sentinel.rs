//! Redis behind Sentinel, on real processes: a primary, one replica and
//! three sentinels (`down-after-milliseconds` 1000). The store connects
//! through the sentinels, and survives a failover without a restart:
//! requests get 503 at most while it happens (never 500), then succeed on
//! the new primary, where the function library is present (replicated, or
//! loaded again).
//!
//! The time to recover and the errors seen are printed as `[figure]` lines
//! (`cargo test --all-features --test deploy_sentinel -- --nocapture`), not
//! asserted.

mod common;
#[path = "common/http.rs"]
mod http;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::ServerOptions;
use common::deploy::round_trip;
use common::sentinel::{SentinelSet, wait_for};
use common::stores::{test_keyring, unique_prefix};
use tokio::task::JoinHandle;
use tower_redis_sessions::store::library_name;
use tower_redis_sessions::{RedisStore, StoreConfig, StoreError};

const NAME: &str = "sessions";

/// Concurrent clients during a failover, each with its own session.
const CLIENTS: usize = 4;

async fn connect(set: &SentinelSet, prefix: &str) -> Result<RedisStore, StoreError> {
    RedisStore::builder(StoreConfig::new(test_keyring()).prefix(prefix))
        .pool_size(4)
        .connect_timeout(Duration::from_millis(500))
        .connect_sentinel(set.sentinel_addrs(), NAME)
        .await
}

fn has_library(server: &common::RedisServer) -> bool {
    server
        .cmd(&["FUNCTION", "LIST", "LIBRARYNAME", library_name()])
        .contains(library_name())
}

/// One answer seen by a client: when the request was sent, its status.
#[derive(Clone, Copy)]
struct Seen {
    sent: Instant,
    status: u16,
}

/// Clients sending `POST /api/incr/hits` in a loop until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Vec<Arc<std::sync::Mutex<Vec<Seen>>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(web: &http::Server) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut seen = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let browser = http::Browser::new(web);
            let log = Arc::new(std::sync::Mutex::new(Vec::new()));
            let (stop, log2) = (stop.clone(), log.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let status = match browser
                        .http
                        .post(browser.url("/api/incr/hits"))
                        .send()
                        .await
                    {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    log2.lock().unwrap().push(Seen { sent, status });
                    if status != 200 {
                        // Do not spin on errors; this paces, it is no hope
                        // for an interleaving.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
            seen.push(log);
        }
        Load { stop, seen, tasks }
    }

    /// Whether every client got a 200 for a request sent after `since`.
    fn all_served_since(&self, since: Instant) -> bool {
        self.seen.iter().all(|log| {
            log.lock()
                .unwrap()
                .iter()
                .any(|s| s.sent >= since && s.status == 200)
        })
    }

    async fn wait_all_served_since(&self, since: Instant, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.all_served_since(since) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let mut all: Vec<Seen> = self
            .seen
            .iter()
            .flat_map(|log| log.lock().unwrap().clone())
            .collect();
        all.sort_by_key(|s| s.sent);
        all
    }
}

/// Prints what the clients saw from `since` on, and checks it: only 200s
/// and 503s. Returns the time from `since` to the last non-200 answer's
/// request, and the first 200 after it.
fn report(label: &str, seen: &[Seen], since: Instant) {
    let after: Vec<&Seen> = seen.iter().filter(|s| s.sent >= since).collect();
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for s in &after {
        *counts.entry(s.status).or_default() += 1;
    }
    let last_error = after.iter().rev().find(|s| s.status != 200);
    let recovered = match last_error {
        Some(e) => after
            .iter()
            .find(|s| s.sent > e.sent && s.status == 200)
            .map(|s| s.sent.duration_since(since)),
        None => Some(Duration::ZERO),
    };
    eprintln!(
        "[figure] {label}: statuses after the fault {counts:?}; last error sent at {:?}, \
         first 200 after it sent at {recovered:?} (from the fault)",
        last_error.map(|e| e.sent.duration_since(since)),
    );
    for (status, n) in &counts {
        assert!(
            *status == 200 || *status == 503,
            "{label}: {n} answers with status {status} (only 200 or 503 are acceptable)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trip_through_the_sentinels() {
    let set = tokio::task::block_in_place(|| SentinelSet::start(NAME, ServerOptions::default()));
    let store = connect(&set, &unique_prefix("sent")).await.unwrap();
    round_trip(&store, "ada").await.unwrap();
    assert!(has_library(set.primary()));
    // The replica got the library by replication.
    let replica = set
        .servers
        .iter()
        .find(|s| s.port() != set.primary().port())
        .unwrap();
    wait_for(|| has_library(replica), "the library to replicate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_primary_name_fails_clearly() {
    let set = tokio::task::block_in_place(|| SentinelSet::start(NAME, ServerOptions::default()));
    let error = RedisStore::builder(StoreConfig::new(test_keyring()))
        .connect_sentinel(set.sentinel_addrs(), "no-such-primary")
        .await
        .expect_err("the sentinels monitor no such primary");
    eprintln!("{error}");
    assert!(
        error.to_string().contains("no-such-primary")
            || error.to_string().to_lowercase().contains("master"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_primary_dies_requests_get_503_then_succeed_on_the_new_primary() {
    let mut set =
        tokio::task::block_in_place(|| SentinelSet::start(NAME, ServerOptions::default()));
    let prefix = unique_prefix("fail");
    let store = connect(&set, &prefix).await.unwrap();
    let web = http::Server::start(http::Store::Redis(Arc::new(store)).demo()).await;
    let load = Load::start(&web);
    let started = Instant::now();
    load.wait_all_served_since(started, "the clients to be served before the failover")
        .await;

    let old = set.primary().port();
    let killed = Instant::now();
    let dead = set.servers.iter_mut().find(|s| s.port() == old).unwrap();
    dead.stop();
    tokio::task::block_in_place(|| set.wait_for_failover_from(old));
    let promoted = killed.elapsed();
    load.wait_all_served_since(
        Instant::now(),
        "the clients to be served by the new primary",
    )
    .await;
    let seen = load.stop().await;
    eprintln!("[figure] primary killed: the sentinels promoted the replica after {promoted:?}");
    report("primary killed", &seen, killed);

    let primary = set.primary();
    assert_ne!(primary.port(), old);
    assert!(has_library(primary), "the library is on the new primary");

    // Lost on the new primary too: the store loads it again by itself.
    assert_eq!(primary.cmd(&["FUNCTION", "FLUSH"]), "OK");
    let browser = http::Browser::new(&web);
    assert_eq!(browser.post("/api/incr/hits").await.status(), 200);
    assert!(has_library(primary));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_with_the_old_primary_alive_moves_the_pinned_connections() {
    // `SENTINEL FAILOVER`: the old primary stays up and becomes a replica;
    // the sentinels kill its clients (`CLIENT KILL TYPE normal`), so the
    // store must go back to the sentinels for the new primary rather than
    // reconnect to the old one (see the READONLY test below for a node
    // demoted without that).
    let set = tokio::task::block_in_place(|| SentinelSet::start(NAME, ServerOptions::default()));
    let prefix = unique_prefix("demote");
    let store = connect(&set, &prefix).await.unwrap();
    let web = http::Server::start(http::Store::Redis(Arc::new(store)).demo()).await;
    let load = Load::start(&web);
    let started = Instant::now();
    load.wait_all_served_since(started, "the clients to be served before the failover")
        .await;

    let old = set.primary().port();
    let forced = Instant::now();
    let reply = set.sentinels[0].cmd(&["SENTINEL", "FAILOVER", NAME]);
    assert_eq!(reply.map(|r| r.to_text()).as_deref(), Some("OK"));
    tokio::task::block_in_place(|| set.wait_for_failover_from(old));
    let promoted = forced.elapsed();
    // The old primary is a replica now.
    let demoted = set.servers.iter().find(|s| s.port() == old).unwrap();
    tokio::task::block_in_place(|| {
        wait_for(
            || demoted.cmd(&["INFO", "replication"]).contains("role:slave"),
            "the old primary to become a replica",
        )
    });
    load.wait_all_served_since(
        Instant::now(),
        "the clients to be served by the new primary",
    )
    .await;
    let seen = load.stop().await;
    eprintln!("[figure] SENTINEL FAILOVER: new primary named after {promoted:?}");
    report("SENTINEL FAILOVER", &seen, forced);

    // New sessions are written on the new primary.
    let browser = http::Browser::new(&web);
    assert_eq!(browser.post("/api/incr/hits").await.status(), 200);
    let keys = http::keys_on(set.primary(), &format!("{prefix}*"));
    assert!(!keys.is_empty(), "sessions on the new primary");
}

fn connections_received(server: &common::RedisServer) -> u64 {
    let info = server.cmd(&["INFO", "stats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO stats has total_connections_received")
}

/// Sentinel kills the clients of the primary it demotes (`CLIENT KILL TYPE
/// normal`), so the store's connections break; a node demoted otherwise
/// (`REPLICAOF` by hand, a managed service moving a DNS name) keeps them
/// open and answers `READONLY`. The store then drops the connection and
/// sends the call once more over a new one (through the sentinels, or the
/// DNS name, that finds the new primary); meanwhile a 503, never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_demoted_under_the_store_answers_503_and_its_connections_are_replaced() {
    let a = common::RedisServer::start();
    let b = common::RedisServer::start();
    let store = RedisStore::builder(StoreConfig::new(test_keyring()).prefix(unique_prefix("ro")))
        .pool_size(1)
        .connect(&a.url())
        .await
        .unwrap();
    round_trip(&store, "ada").await.unwrap();

    let port = b.port().to_string();
    assert_eq!(a.cmd(&["REPLICAOF", "127.0.0.1", &port]), "OK");
    tokio::task::block_in_place(|| {
        wait_for(
            || {
                a.cmd(&["INFO", "replication"])
                    .contains("master_link_status:up")
            },
            "the demoted node to sync",
        )
    });
    let before = connections_received(&a);
    let error = round_trip(&store, "ada")
        .await
        .expect_err("a replica refuses writes");
    eprintln!("write on a demoted node: {error}");
    assert!(error.is_unavailable(), "{error:?}");
    assert!(
        connections_received(&a) > before,
        "the READONLY connection was replaced by a new one"
    );

    // Promoted again: the same store writes, no restart (and loads the
    // library again: the sync from `b` replaced it).
    assert_eq!(a.cmd(&["REPLICAOF", "NO", "ONE"]), "OK");
    round_trip(&store, "ada").await.unwrap();
    assert!(has_library(&a));
}

/// The documented minimal ACL (Verify variant) plus `+role`, which a
/// Sentinel client sends to check that the node it was given is the primary.
const SENTINEL_ACL: &str = "on >pw resetkeys ~{prefix}* resetchannels -@all +fcall +function|list \
    +hget +hmget +hset +del +exists +persist +pexpireat \
    +zadd +zrem +zrange +zrangebyscore +zcount +zscore +cluster|keyslot +cluster|nodes +role";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_behind_the_sentinels() {
    let set = tokio::task::block_in_place(|| SentinelSet::start(NAME, ServerOptions::default()));
    let prefix = unique_prefix("sacl");
    let rules = SENTINEL_ACL.replace("{prefix}", &prefix);
    // ACL users are per node: both, so that the replica has it once promoted.
    for server in &set.servers {
        let mut args = vec!["ACL", "SETUSER", "sessions", "reset"];
        args.extend(rules.split_whitespace());
        assert_eq!(server.cmd(&args), "OK");
    }
    let primary = set.primary();
    let source = tower_redis_sessions::store::library_source();
    assert_eq!(
        primary.cmd(&["FUNCTION", "LOAD", "REPLACE", source]),
        library_name()
    );
    let store = RedisStore::builder(StoreConfig::new(test_keyring()).prefix(&prefix))
        .library(tower_redis_sessions::store::LibraryMode::Verify)
        .sentinel_node_auth(Some("sessions"), "pw")
        .connect_sentinel(set.sentinel_addrs(), NAME)
        .await
        .unwrap();
    round_trip(&store, "ada").await.unwrap();
}

/// Connections through the sentinels are timed by the store's command
/// timeout like the others (redis-rs's own default would give up after
/// 500 ms): a call held 1 s by `CLIENT PAUSE` is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_within_the_command_timeout_is_waited_for() {
    let set = tokio::task::block_in_place(|| SentinelSet::start(NAME, ServerOptions::default()));
    let store = RedisStore::builder(StoreConfig::new(test_keyring()).prefix(unique_prefix("slow")))
        .command_timeout(Duration::from_secs(10))
        .connect_sentinel(set.sentinel_addrs(), NAME)
        .await
        .unwrap();
    round_trip(&store, "ada").await.unwrap();
    // Writes wait until the pause ends; the pause is in place before the
    // calls are sent.
    assert_eq!(
        set.primary().cmd(&["CLIENT", "PAUSE", "1000", "WRITE"]),
        "OK"
    );
    let started = Instant::now();
    round_trip(&store, "ada").await.unwrap();
    eprintln!(
        "[figure] round trip behind CLIENT PAUSE 1000: {:?}",
        started.elapsed()
    );
}

/// Redis nodes that serve only TLS to clients with a certificate (mutual
/// TLS) behind plain sentinels: custom certificates through Sentinel.
#[cfg(feature = "tls-rustls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_nodes_with_a_custom_ca_and_a_client_certificate() {
    use tower_redis_sessions::store::TlsConfig;

    let certs = common::tls::Certs::generate();
    let set = tokio::task::block_in_place(|| SentinelSet::start_tls(NAME, &certs));
    let primary_port = set.primary_port().unwrap();
    assert!(
        set.tls_ports.contains(&primary_port),
        "the sentinels name the TLS port"
    );
    let tls = TlsConfig::new()
        .ca_cert_pem(certs.pem("ca.crt"))
        .client_cert_pem(certs.pem("client.crt"), certs.pem("client.key"));
    let store = RedisStore::builder(StoreConfig::new(test_keyring()).prefix(unique_prefix("stls")))
        .tls(tls)
        .connect_sentinel(set.sentinel_addrs(), NAME)
        .await
        .unwrap();
    round_trip(&store, "ada").await.unwrap();

    let error = RedisStore::builder(StoreConfig::new(test_keyring()))
        .tls(TlsConfig::new().ca_cert_pem(certs.pem("ca.crt")))
        .connect_sentinel(set.sentinel_addrs(), NAME)
        .await
        .expect_err("the nodes want a client certificate");
    eprintln!("without a client certificate: {error}");
    assert!(error.is_unavailable(), "{error:?}");
}
