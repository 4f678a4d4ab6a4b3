//! The near cache on a real Redis Cluster (private ones: the tests reshard
//! and fail over), with two stores sharing it as two application processes
//! would. One tracking connection per master: a cached read costs no call
//! on any master and a read+write one; a change, logout or revocation
//! through one store is seen by the other at once in practice and never
//! after `max_staleness`; and neither a slot migration nor a failover leaves
//! anything stale, after which the cache works again on the new topology;
//! nor does one master's invalidation connection held silent by a proxy
//! (the others answering) past `max_staleness`.

mod common;
#[path = "common/freeze.rs"]
mod freeze;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tower_redis_sessions::store::{NearCache, Record, SaveOutcome, SessionStore, Token};
use tower_redis_sessions::{RedisStore, StoreConfig};

use common::RedisCluster;
use common::near::{new_session, until_cached, until_seen};
use common::stores::{session_key, test_keyring, unique_prefix};
use freeze::FreezeProxy;

const STALENESS: Duration = Duration::from_millis(200);

fn config(prefix: &str) -> StoreConfig {
    StoreConfig::new(test_keyring()).prefix(prefix)
}

async fn store(cluster: &RedisCluster, prefix: &str, cache: NearCache) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::builder(config(prefix))
            .command_timeout(Duration::from_millis(1500))
            .near_cache(cache)
            .connect_cluster(cluster.urls())
            .await
            .unwrap(),
    )
}

fn cache() -> NearCache {
    NearCache::new().max_staleness(STALENESS)
}

/// Saves `record` with one more `n` through `store`, retrying errors of a
/// cluster in transition (up to 15 s); returns the value written.
async fn bump(store: &RedisStore, token: &Token) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let attempt = async {
            let mut record = store.load(token).await?.expect("the session exists");
            let n = n_of(&record).unwrap_or(0) + 1;
            record.data.insert("n".into(), n.into());
            match store.save(token, &record).await? {
                SaveOutcome::Saved { .. } => Ok::<_, tower_redis_sessions::StoreError>(Some(n)),
                _ => Ok(None),
            }
        };
        match attempt.await {
            Ok(Some(n)) => return n,
            Ok(None) => {}
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn n_of(record: &Record) -> Option<i64> {
    let n = record.data.get("n")?.as_integer()?;
    i64::try_from(n).ok()
}

fn n_is(n: i64) -> impl Fn(&Option<Record>) -> bool {
    move |r| r.as_ref().and_then(n_of) == Some(n)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_master_serves_the_cache_and_changes_elsewhere_are_seen() {
    let cluster = RedisCluster::start();
    let prefix = unique_prefix("ncc");
    let a = store(&cluster, &prefix, cache()).await;
    let b = store(&cluster, &prefix, cache()).await;

    // Sessions of users spread over the three masters.
    let mut sessions = Vec::new();
    let mut masters = BTreeSet::new();
    for i in 0..12 {
        let user = format!("u{i}");
        let (token, record) = new_session(&a, Some(&user)).await;
        let key = session_key(&prefix, &token);
        masters.insert(cluster.node_for_key(&key).port());
        sessions.push((user, token, record));
    }
    assert_eq!(masters.len(), 3, "the sessions cover every master");
    for (_, token, _) in &sessions {
        until_cached(&b, token).await;
    }

    // Round trips, counted by the masters.
    let before = cluster.commandstats();
    for _ in 0..5 {
        for (_, token, _) in &sessions {
            assert!(b.load(token).await.unwrap().is_some());
        }
    }
    let reads = cluster.commandstats().delta_since(&before);
    let before = cluster.commandstats();
    for (_, token, record) in &mut sessions {
        let mut loaded = b.load(token).await.unwrap().unwrap();
        assert_eq!(loaded.version, record.version);
        loaded.data.insert("seen".into(), true.into());
        let SaveOutcome::Saved { version } = b.save(token, &loaded).await.unwrap() else {
            panic!("no other writer");
        };
        loaded.version = version;
        *record = loaded;
    }
    let writes = cluster.commandstats().delta_since(&before);
    eprintln!(
        "[cluster round trips] 60 cached reads: {} fcall; 12 cached read+writes: {} fcall; \
         heartbeats meanwhile: {reads:?}",
        reads.get("fcall"),
        writes.get("fcall"),
    );
    assert_eq!(reads.get("fcall"), 0, "a cached read makes no call");
    assert_eq!(writes.get("fcall"), 12, "a cached read+write makes one");

    // Changes through A, seen by B (which has them all cached): 8 rounds
    // over the 12 sessions, so on every master.
    let mut delays = Vec::new();
    for _ in 0..8 {
        for (_, token, _) in &sessions {
            until_cached(&b, token).await;
            let n = bump(&a, token).await;
            let at = Instant::now();
            delays.push(until_seen(&b, token, at, STALENESS, n_is(n)).await);
        }
    }
    // A logout through A.
    let (_, token, _) = &sessions[0];
    until_cached(&b, token).await;
    assert!(a.delete(token).await.unwrap());
    let at = Instant::now();
    delays.push(until_seen(&b, token, at, STALENESS, Option::is_none).await);
    // Revoking a user's other sessions through A.
    let (user, mine, _) = &sessions[1];
    let (other, _) = new_session(&a, Some(user)).await;
    until_cached(&b, &other).await;
    assert_eq!(a.revoke_all(user, None, Some(mine)).await.unwrap(), 1);
    let at = Instant::now();
    delays.push(until_seen(&b, &other, at, STALENESS, Option::is_none).await);
    assert!(b.load(mine).await.unwrap().is_some());

    delays.sort_unstable();
    eprintln!(
        "[cluster, two stores] {} changes seen by the other store after: p50 {:?}, p99 {:?}, \
         max {:?}; B {:?}",
        delays.len(),
        percentile(&delays, 50),
        percentile(&delays, 99),
        delays.last().unwrap(),
        b.near_cache_stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_leaves_nothing_stale() {
    let cluster = RedisCluster::start();
    let prefix = unique_prefix("ncc-move");
    let a = store(&cluster, &prefix, NearCache::off()).await;
    let b = store(&cluster, &prefix, cache()).await;
    let (token, _) = new_session(&a, Some("mover")).await;
    let key = session_key(&prefix, &token);
    let slot = common::key_slot(key.as_bytes());
    let source = cluster.node_for_key(&key);
    let target = cluster
        .nodes()
        .iter()
        .find(|n| n.port() != source.port())
        .unwrap();
    until_cached(&b, &token).await;
    let flushes = b.near_cache_stats().unwrap().flushes;

    // The slot moves, as `redis-cli --cluster reshard` moves it.
    target.setslot(slot, &["IMPORTING", &source.node_id()]);
    source.setslot(slot, &["MIGRATING", &target.node_id()]);
    let keys: Vec<String> = source.keys_in_slot(slot).into_iter().collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    source.migrate_keys(target, &keys);
    // The MIGRATE deleted the key on the source: an invalidation.
    let at = Instant::now();
    let n = bump(&a, &token).await;
    let during = until_seen(&b, &token, at, STALENESS, n_is(n)).await;
    for node in cluster.nodes() {
        node.setslot(slot, &["NODE", &target.node_id()]);
    }
    let n = bump(&a, &token).await;
    let at = Instant::now();
    let after = until_seen(&b, &token, at, STALENESS, n_is(n)).await;

    // The cache works again, from the master that now holds the slot.
    until_cached(&b, &token).await;
    assert!(b.near_cache_stats().unwrap().flushes > flushes, "emptied");
    let n = bump(&a, &token).await;
    let at = Instant::now();
    let again = until_seen(&b, &token, at, STALENESS, n_is(n)).await;
    eprintln!(
        "[cluster, slot moved] change seen after: during the migration {during:?}, \
         after it {after:?}, once cached again {again:?}; B {:?}",
        b.near_cache_stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_leaves_nothing_stale() {
    let mut cluster = RedisCluster::start();
    let prefix = unique_prefix("ncc-failover");
    let probe = format!("{prefix}{{probe}}:s:x");
    let slot = common::key_slot(probe.as_bytes());
    let master = cluster
        .nodes()
        .iter()
        .position(|n| n.port() == cluster.node_for_slot(slot).port())
        .unwrap();
    let replica = cluster.add_replica(master);

    let a = store(&cluster, &prefix, NearCache::off()).await;
    let b = store(&cluster, &prefix, cache()).await;
    // A session on the master that fails over.
    let token = loop {
        let (token, _) = new_session(&a, None).await;
        let key = session_key(&prefix, &token);
        if cluster.node_for_key(&key).port() == cluster.nodes()[master].port() {
            break token;
        }
    };
    until_cached(&b, &token).await;
    let flushes = b.near_cache_stats().unwrap().flushes;

    tokio::task::block_in_place(|| {
        let key = session_key(&prefix, &token);
        cluster.fail_over(replica, common::key_slot(key.as_bytes()));
    });
    let n = bump(&a, &token).await;
    let at = Instant::now();
    let seen = until_seen(&b, &token, at, STALENESS, n_is(n)).await;
    until_cached(&b, &token).await;
    assert!(b.near_cache_stats().unwrap().flushes > flushes, "emptied");
    let n = bump(&a, &token).await;
    let at = Instant::now();
    let again = until_seen(&b, &token, at, STALENESS, n_is(n)).await;
    eprintln!(
        "[cluster, failover] change seen after {seen:?}; once cached again {again:?}; B {:?}",
        b.near_cache_stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_masters_channel_held_silent_serves_nothing_stale_after_the_bound() {
    let cluster = RedisCluster::start();
    // Every client reaches every master through its proxy: the nodes
    // announce the proxies' ports (the bus keeps the real ones).
    let mut proxies = Vec::new();
    for node in cluster.nodes() {
        let proxy = FreezeProxy::start(node.port()).await;
        let bus = (node.port() + 10000).to_string();
        let port = proxy.port.to_string();
        for (name, value) in [
            ("cluster-announce-bus-port", &bus),
            ("cluster-announce-port", &port),
        ] {
            assert_eq!(node.cmd(&["CONFIG", "SET", name, value]), "OK");
        }
        proxies.push(proxy);
    }
    let ports: Vec<String> = proxies.iter().map(|p| p.port.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.nodes().iter().all(|n| {
        let slots = format!("{:?}", n.cmd_bytes(&[b"CLUSTER", b"SLOTS"]));
        ports.iter().all(|p| slots.contains(&format!("Int({p})")))
    }) {
        assert!(
            Instant::now() < deadline,
            "the nodes never announced the proxies"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let urls: Vec<String> = proxies.iter().map(FreezeProxy::url).collect();
    let prefix = unique_prefix("ncc-frozen");
    let open = |cache: NearCache| {
        let urls = urls.clone();
        let prefix = prefix.clone();
        async move {
            RedisStore::builder(config(&prefix))
                .command_timeout(Duration::from_millis(1500))
                .near_cache(cache)
                .connect_cluster(urls)
                .await
                .unwrap()
        }
    };
    let a = open(NearCache::off()).await;
    let b = open(cache()).await;

    let mut stale_reads = 0;
    for _ in 0..3 {
        let (token, _) = new_session(&a, None).await;
        let key = session_key(&prefix, &token);
        let owner = cluster.node_for_key(&key).port();
        let index = cluster
            .nodes()
            .iter()
            .position(|n| n.port() == owner)
            .unwrap();
        until_cached(&b, &token).await;
        // Only that master's channel goes silent; the others answer.
        proxies[index].freeze();
        assert!(a.delete(&token).await.unwrap());
        let at = Instant::now();
        while at.elapsed() < STALENESS {
            if matches!(b.load(&token).await, Ok(Some(_))) {
                stale_reads += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            proxies[index].held_bytes() > 0,
            "the proxy held the channel"
        );
        assert!(
            b.load(&token).await.unwrap().is_none(),
            "served a deleted session after max_staleness with one master's channel held"
        );
        proxies[index].thaw();
    }
    eprintln!(
        "[cluster, one channel held silent] stale reads before the bound: {stale_reads}; B {:?}",
        b.near_cache_stats()
    );
    assert!(
        stale_reads > 0,
        "the hold kept the invalidation from B (the premise)"
    );
}
