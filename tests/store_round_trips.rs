//! One round trip per operation, measured on a private server and a private
//! cluster (so that no other test adds to the counts).
//!
//! Two measurements per operation:
//! - `INFO commandstats` before and after: exactly one `FCALL`, and nothing
//!   but the commands the library runs inside it (Redis counts those too).
//!   Any other command (`PING`, `UNWATCH`, `CLIENT SETINFO`, `HELLO`, a
//!   second `FCALL`, ...) fails the test.
//! - `MONITOR`: the top-level commands clients sent, exactly (commands run
//!   inside the function show as `lua` and are left out): exactly one, an
//!   `FCALL`.
//!
//! Run with `--nocapture` to see the per-operation deltas.

mod common;

use std::future::Future;
use std::time::Duration;

use ciborium::Value;
use common::monitor::{Monitor, Seen};
use common::stores::{ManualClock, session_key, test_keyring, unique_prefix};
use common::{CommandStats, RedisCluster, RedisServer};
use tower_redis_sessions::store::{Record, RetireOutcome, SaveOutcome, SessionStore, Token};
use tower_redis_sessions::{RedisStore, StoreConfig};

/// The servers under measurement: one, or every node of a cluster.
struct Probe<'a> {
    label: &'static str,
    nodes: Vec<&'a RedisServer>,
    monitors: Vec<Monitor>,
}

/// What one operation cost.
struct Cost {
    stats: CommandStats,
    seen: Vec<Seen>,
}

impl<'a> Probe<'a> {
    fn new(label: &'static str, nodes: Vec<&'a RedisServer>) -> Probe<'a> {
        let monitors = nodes.iter().map(|n| Monitor::start(n)).collect();
        Probe {
            label,
            nodes,
            monitors,
        }
    }

    fn stats(&self) -> CommandStats {
        let mut total = CommandStats::default();
        for node in &self.nodes {
            total.add(&node.commandstats());
        }
        total
    }

    /// Runs `op` and returns what it cost. The monitor markers are sent
    /// outside the commandstats snapshots, so they do not count there.
    async fn cost<T>(&mut self, op: impl Future<Output = T>) -> (T, Cost) {
        for monitor in &mut self.monitors {
            monitor.mark();
        }
        let before = self.stats();
        let value = op.await;
        let after = self.stats();
        let seen = self
            .monitors
            .iter_mut()
            .flat_map(|m| m.since_mark())
            .collect();
        let stats = after.delta_since(&before);
        (value, Cost { stats, seen })
    }

    /// Runs `op`, prints its cost, and asserts it was one round trip: one
    /// client command (an `FCALL`), nothing outside the library.
    async fn one_round_trip<T>(&mut self, name: &str, op: impl Future<Output = T>) -> (T, Cost) {
        let (value, cost) = self.cost(op).await;
        let commands: Vec<&str> = cost.seen.iter().map(|s| s.command.as_str()).collect();
        eprintln!(
            "[{}] {name:<22} client commands (MONITOR): {commands:?}; commandstats delta: {:?}",
            self.label, cost.stats.0
        );
        assert_eq!(
            cost.stats.get("fcall"),
            1,
            "[{}] {name}: one FCALL, got {:?}",
            self.label,
            cost.stats
        );
        let extra = cost.stats.client_commands_besides_fcall();
        assert!(
            extra.is_empty(),
            "[{}] {name}: {extra:?} outside the function library: {:?}",
            self.label,
            cost.stats
        );
        assert_eq!(
            commands,
            vec!["FCALL"],
            "[{}] {name}: exactly one client command; saw {:#?}",
            self.label,
            cost.seen
        );
        (value, cost)
    }
}

fn record(token: &Token, user: Option<&str>, now: u64) -> Record {
    let mut r = Record::new(token.id(), "web", now);
    r.user = user.map(str::to_owned);
    r.idle_timeout = Some(Duration::from_secs(600));
    r.data.insert("k".into(), Value::Text("v".into()));
    r
}

/// Every operation, each measured. `tokens` are fresh tokens, anonymous,
/// used to warm up every connection of the store first (on a cluster, one
/// per node).
async fn every_operation_is_one_round_trip(
    probe: &mut Probe<'_>,
    store: &RedisStore,
    clock: &ManualClock,
    warm_up: &[Token],
) {
    // Warm-up: each of the store's connections is opened on first use (its
    // handshake sends CLIENT SETINFO); go round every one, on every node.
    let (_, cost) = probe
        .cost(async {
            for _ in 0..3 {
                for token in warm_up {
                    for _ in 0..10 {
                        store.load(token).await.unwrap();
                    }
                }
            }
        })
        .await;
    eprintln!(
        "[{}] warm-up ({} loads): {:?}",
        probe.label,
        30 * warm_up.len(),
        cost.stats.0
    );

    let user = "xena";
    let now = store.now();
    let token = store.new_token(Some(user)).unwrap();
    let (saved, _) = probe
        .one_round_trip(
            "save (create)",
            store.save(&token, &record(&token, Some(user), now)),
        )
        .await;
    assert_eq!(saved.unwrap(), SaveOutcome::Saved { version: 1 });

    let (loaded, cost) = probe.one_round_trip("load (hit)", store.load(&token)).await;
    let loaded = loaded.unwrap().unwrap();
    // Throttled: within the touch interval a load writes nothing.
    assert_eq!(cost.stats.get("hset"), 0, "{:?}", cost.stats);
    assert_eq!(cost.stats.get("pexpireat"), 0, "{:?}", cost.stats);
    // A user's session also reads its index entry (it would enter the index
    // again if it were missing), and writes nothing when it is there.
    assert_eq!(cost.stats.get("zscore"), 1, "{:?}", cost.stats);
    assert_eq!(cost.stats.get("zadd"), 0, "{:?}", cost.stats);

    let missing = store.new_token(None).unwrap();
    let (miss, _) = probe
        .one_round_trip("load (miss)", store.load(&missing))
        .await;
    assert_eq!(miss.unwrap(), None);

    // Past the touch interval, the same single call also slides the expiry.
    clock.advance(61_000);
    let (touched, cost) = probe
        .one_round_trip("load (hit, sliding)", store.load(&token))
        .await;
    assert_eq!(touched.unwrap().unwrap().last_seen, clock.get());
    assert_eq!(cost.stats.get("hset"), 1, "{:?}", cost.stats);
    assert_eq!(
        cost.stats.get("pexpireat"),
        2,
        "session and index: {:?}",
        cost.stats
    );

    let mut update = loaded.clone();
    update.data.insert("k".into(), Value::Text("w".into()));
    let (saved, _) = probe
        .one_round_trip("save (update)", store.save(&token, &update))
        .await;
    assert_eq!(saved.unwrap(), SaveOutcome::Saved { version: 2 });

    let (conflict, _) = probe
        .one_round_trip("save (conflict)", store.save(&token, &loaded))
        .await;
    assert!(matches!(conflict.unwrap(), SaveOutcome::Conflict(ref r) if r.version == 2));

    // cycle_id's move to a new token of the same slot: one call too.
    let renewed = token.renew().unwrap();
    let mut moved = update.clone();
    moved.id = renewed.id();
    moved.version = 2;
    let (rotated, _) = probe
        .one_round_trip("rotate", store.rotate(&token, &renewed, &moved))
        .await;
    assert_eq!(rotated.unwrap(), SaveOutcome::Saved { version: 3 });
    let token = renewed;
    assert!(store.load(&token).await.unwrap().is_some());

    let other = store.new_token(Some(user)).unwrap();
    let other_record = record(&other, Some(user), store.now());
    store.save(&other, &other_record).await.unwrap();
    let third = store.new_token(Some(user)).unwrap();
    store
        .save(&third, &record(&third, Some(user), store.now()))
        .await
        .unwrap();

    let (listed, _) = probe.one_round_trip("list", store.list(user, None)).await;
    assert_eq!(listed.unwrap().len(), 3);

    let (revoked, _) = probe
        .one_round_trip("revoke (one by id)", store.revoke(user, &third.id()))
        .await;
    assert!(revoked.unwrap());

    let (deleted, _) = probe.one_round_trip("delete", store.delete(&other)).await;
    assert!(deleted.unwrap());

    let mut late = other_record.clone();
    late.version = 1;
    let (gone, _) = probe
        .one_round_trip("save (gone)", store.save(&other, &late))
        .await;
    assert_eq!(gone.unwrap(), SaveOutcome::Gone);

    // The compare-and-delete of a login that replaces a session: one call,
    // whether it deletes or meets a newer version.
    let fourth = store.new_token(Some(user)).unwrap();
    store
        .save(&fourth, &record(&fourth, Some(user), store.now()))
        .await
        .unwrap();
    let (conflict, _) = probe
        .one_round_trip("retire (conflict)", store.retire(&fourth, 7))
        .await;
    assert!(matches!(conflict.unwrap(), RetireOutcome::Conflict(ref r) if r.version == 1));
    let (retired, _) = probe
        .one_round_trip("retire", store.retire(&fourth, 1))
        .await;
    assert_eq!(retired.unwrap(), RetireOutcome::Deleted);

    let (count, _) = probe
        .one_round_trip("revoke_all", store.revoke_all(user, None, None))
        .await;
    assert_eq!(count.unwrap(), 1);
}

fn config(prefix: &str, clock: &ManualClock) -> StoreConfig {
    clock.install(StoreConfig::new(test_keyring()).prefix(prefix))
}

#[tokio::test]
async fn standalone_one_round_trip_per_operation() {
    let server = RedisServer::start();
    let clock = ManualClock::now_real();
    let before = server.commandstats();
    // Without the near cache (near_cache_* count its round trips): every
    // operation is one call.
    let store = RedisStore::builder(config("rt:", &clock))
        .near_cache(tower_redis_sessions::store::NearCache::off())
        .connect(&server.url())
        .await
        .unwrap();
    let connect = server.commandstats().delta_since(&before);
    eprintln!("[standalone] connect: {:?}", connect.0);
    assert_eq!(connect.get("function|load"), 1, "{connect:?}");
    assert_eq!(connect.get("fcall"), 0, "{connect:?}");

    let mut probe = Probe::new("standalone", vec![&server]);
    let warm_up = [store.new_token(None).unwrap()];
    every_operation_is_one_round_trip(&mut probe, &store, &clock, &warm_up).await;
}

#[tokio::test]
async fn cluster_one_round_trip_per_operation() {
    let cluster = RedisCluster::start();
    let clock = ManualClock::now_real();
    let prefix = unique_prefix("rt");
    let before = cluster.commandstats();
    let store = RedisStore::builder(config(&prefix, &clock))
        .near_cache(tower_redis_sessions::store::NearCache::off())
        .connect_cluster(cluster.urls())
        .await
        .unwrap();
    let connect = cluster.commandstats().delta_since(&before);
    eprintln!("[cluster] connect: {:?}", connect.0);
    assert_eq!(
        connect.get("function|load"),
        cluster.nodes().len() as u64,
        "registered on every master: {connect:?}"
    );
    assert_eq!(connect.get("fcall"), 0, "{connect:?}");

    // A token for each node, to warm up the connections to every node.
    let mut warm_up: Vec<Token> = Vec::new();
    let mut ports = Vec::new();
    while warm_up.len() < cluster.nodes().len() {
        let token = store.new_token(None).unwrap();
        let port = cluster.node_for_key(&session_key(&prefix, &token)).port();
        if !ports.contains(&port) {
            ports.push(port);
            warm_up.push(token);
        }
    }
    let mut probe = Probe::new("cluster", cluster.nodes().iter().collect());
    every_operation_is_one_round_trip(&mut probe, &store, &clock, &warm_up).await;
}

/// A logged-in user's steady-state save (sliding idle timeout, so the
/// deadline moves with every save): while the deadline stays within one
/// grid step (idle / 32, here 18.75 s) the save leaves the key's expiry and
/// the index alone; the save that crosses a step moves both.
#[tokio::test]
async fn a_save_within_one_grid_step_skips_the_expiry_and_index_upkeep() {
    let server = RedisServer::start();
    let clock = ManualClock::now_real();
    // Without the near cache: its heartbeats and re-reads are not the save.
    let store = RedisStore::builder(config("grid:", &clock))
        .near_cache(tower_redis_sessions::store::NearCache::off())
        .connect(&server.url())
        .await
        .unwrap();
    let idle = 600_000; // record(): 600 s
    let step = 18_750;
    // The first deadline just past a grid line: the whole step lies ahead.
    let t0 = (clock.get() + idle).div_ceil(step) * step + 1 - idle;
    clock.set(t0);
    let mut probe = Probe::new("standalone", vec![&server]);
    let user = "yuri";
    let token = store.new_token(Some(user)).unwrap();
    let mut r = record(&token, Some(user), t0);
    assert_eq!(
        store.save(&token, &r).await.unwrap(),
        SaveOutcome::Saved { version: 1 }
    );
    let key = session_key("grid:", &token);
    let expiry = || server.cmd(&["PEXPIRETIME", &key]).parse::<u64>().unwrap();
    let at = common::stores::grid_expiry(t0 + idle, idle);
    assert_eq!(at, t0 + idle + step - 1);
    assert_eq!(expiry(), at);

    for (n, offset) in [1_000, 9_000, step - 2].into_iter().enumerate() {
        clock.set(t0 + offset);
        r.version = n as u64 + 1;
        r.last_seen = t0 + offset;
        let (saved, cost) = probe
            .one_round_trip("save (same step)", store.save(&token, &r))
            .await;
        assert_eq!(
            saved.unwrap(),
            SaveOutcome::Saved {
                version: r.version + 1
            }
        );
        for command in ["hmget", "zscore", "hset"] {
            assert_eq!(cost.stats.get(command), 1, "{command}: {:?}", cost.stats);
        }
        for command in ["zadd", "zrangebyscore", "pexpireat", "persist", "zrange"] {
            assert_eq!(cost.stats.get(command), 0, "{command}: {:?}", cost.stats);
        }
        assert_eq!(cost.stats.total(), 4, "{:?}", cost.stats);
        // Still at least the true deadline.
        assert_eq!(expiry(), at);
        assert!(expiry() >= t0 + offset + idle);
    }

    // Into the next step: key expiry, score and index expiry move.
    clock.set(t0 + step);
    r.version = 4;
    r.last_seen = t0 + step;
    let (saved, cost) = probe
        .one_round_trip("save (next step)", store.save(&token, &r))
        .await;
    assert_eq!(saved.unwrap(), SaveOutcome::Saved { version: 5 });
    assert_eq!(cost.stats.get("zadd"), 1, "{:?}", cost.stats);
    assert_eq!(cost.stats.get("zrangebyscore"), 1, "{:?}", cost.stats);
    assert_eq!(
        cost.stats.get("pexpireat"),
        2,
        "key and index: {:?}",
        cost.stats
    );
    let next = common::stores::grid_expiry(t0 + step + idle, idle);
    assert_eq!(next, at + step);
    assert_eq!(expiry(), next);
    let index = server.cmd(&["HGET", &key, "x"]);
    let score = server.cmd(&["ZSCORE", &index, &key]);
    assert_eq!(score.parse::<u64>().unwrap(), next);
    let index_expiry = server.cmd(&["PEXPIRETIME", &index]).parse::<u64>().unwrap();
    assert!(index_expiry >= next, "{index_expiry} < {next}");
}
