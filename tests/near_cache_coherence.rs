//! The near cache against real Redis, with two stores sharing one Redis as
//! two application processes would: reads of a cached session cost no Redis
//! call and a read+write one (counted by Redis), a change, logout,
//! revocation of the other sessions or expiry through one store is seen by
//! the other at once in practice and never later than `max_staleness` even
//! with the invalidation connection held silent by a proxy, and no update is
//! lost when 100 + 100 concurrent increments go through two stores.

mod common;
#[path = "common/freeze.rs"]
mod freeze;
#[path = "common/http.rs"]
mod http;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::COOKIE;
use serde_json::{Value, json};
use tower_redis_sessions::store::{NearCache, Record, SaveOutcome, SessionStore};
use tower_redis_sessions::{RedisStore, StoreConfig};

use common::near::{new_session, until_cached, until_seen};
use common::stores::{test_keyring, unique_prefix};
use common::{RedisServer, shared_server};
use freeze::FreezeProxy;

const STALENESS: Duration = Duration::from_millis(200);

fn config(prefix: &str) -> StoreConfig {
    StoreConfig::new(test_keyring()).prefix(prefix)
}

async fn cached(url: &str, prefix: &str) -> Arc<RedisStore> {
    let store = RedisStore::builder(config(prefix))
        .pool_size(1)
        .near_cache(NearCache::new().max_staleness(STALENESS))
        .connect(url)
        .await
        .unwrap();
    Arc::new(store)
}

async fn uncached(url: &str, prefix: &str) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::builder(config(prefix))
            .pool_size(1)
            .near_cache(NearCache::off())
            .connect(url)
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_read_costs_no_call_and_a_read_write_one() {
    let server = RedisServer::start();
    let prefix = unique_prefix("nc-rt");
    let store = cached(&server.url(), &prefix).await;
    let (token, mut record) = new_session(&store, None).await;
    until_cached(&store, &token).await;

    let before = server.commandstats();
    for _ in 0..20 {
        assert!(store.load(&token).await.unwrap().is_some());
    }
    let reads = server.commandstats().delta_since(&before);

    let before = server.commandstats();
    for i in 1..=20 {
        let loaded = store.load(&token).await.unwrap().unwrap();
        assert_eq!(
            loaded.version, record.version,
            "the cache holds the saved version"
        );
        record = loaded;
        record.data.insert("n".into(), i.into());
        let SaveOutcome::Saved { version } = store.save(&token, &record).await.unwrap() else {
            panic!("no other writer");
        };
        record.version = version;
    }
    let writes = server.commandstats().delta_since(&before);
    eprintln!(
        "[round trips] 20 cached reads: {} fcall, {} ping (heartbeats); \
         20 cached read+writes: {} fcall; {:?}; {reads:?}",
        reads.get("fcall"),
        reads.get("ping"),
        writes.get("fcall"),
        store.near_cache_stats()
    );
    assert_eq!(reads.get("fcall"), 0, "a cached read makes no call");
    assert_eq!(
        writes.get("fcall"),
        20,
        "a cached read+write makes one call"
    );
    let calls_besides = reads.client_commands_besides_fcall();
    assert!(
        calls_besides.iter().all(|c| *c == "ping"),
        "only heartbeats: {calls_besides:?}"
    );

    // Without the cache, every read is a call.
    let plain = uncached(&server.url(), &prefix).await;
    let before = server.commandstats();
    for _ in 0..20 {
        assert!(plain.load(&token).await.unwrap().is_some());
    }
    assert_eq!(server.commandstats().delta_since(&before).get("fcall"), 20);
    assert_eq!(plain.near_cache_stats(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_another_process_are_seen_within_the_bound() {
    let url = shared_server().url();
    let prefix = unique_prefix("nc-two");
    let a = cached(&url, &prefix).await;
    let b = cached(&url, &prefix).await;

    // A change of data.
    let (token, record) = new_session(&a, None).await;
    until_cached(&b, &token).await;
    let mut changed = record.clone();
    changed.data.insert("n".into(), 1.into());
    assert!(matches!(
        a.save(&token, &changed).await.unwrap(),
        SaveOutcome::Saved { .. }
    ));
    let at = Instant::now();
    let change = until_seen(&b, &token, at, STALENESS, |r| {
        r.as_ref().map(|r| r.data.get("n").cloned()) == Some(Some(1.into()))
    })
    .await;

    // A logout.
    until_cached(&b, &token).await;
    assert!(a.delete(&token).await.unwrap());
    let at = Instant::now();
    let logout = until_seen(&b, &token, at, STALENESS, Option::is_none).await;

    // Revoking a user's other sessions.
    let user = format!("user-{}", prefix.trim_end_matches(':'));
    let (mine, _) = new_session(&a, Some(&user)).await;
    let (other, _) = new_session(&a, Some(&user)).await;
    until_cached(&b, &other).await;
    until_cached(&a, &other).await;
    assert_eq!(a.revoke_all(&user, None, Some(&mine)).await.unwrap(), 1);
    let at = Instant::now();
    // The process that revoked serves none of them once revoke_all returned.
    assert!(a.load(&other).await.unwrap().is_none());
    let revoke = until_seen(&b, &other, at, STALENESS, Option::is_none).await;
    assert!(b.load(&mine).await.unwrap().is_some());

    // Expiry: served at most until the deadline, by the application's clock.
    let token = a.new_token(None).unwrap();
    let now = a.now();
    let mut short = Record::new(token.id(), "web", now);
    short.absolute_deadline = Some(now + 300);
    assert!(matches!(
        a.save(&token, &short).await.unwrap(),
        SaveOutcome::Saved { .. }
    ));
    until_cached(&b, &token).await;
    while b.now() < now + 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        b.load(&token).await.unwrap().is_none(),
        "never served past its deadline"
    );

    eprintln!(
        "[two processes] seen by the other store after: change {change:?}, logout {logout:?}, \
         revoke-others {revoke:?}; A {:?}; B {:?}",
        a.near_cache_stats(),
        b.near_cache_stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_delay_over_many_trials() {
    let url = shared_server().url();
    let prefix = unique_prefix("nc-delay");
    let a = uncached(&url, &prefix).await;
    let b = cached(&url, &prefix).await;
    let mut delays = Vec::new();
    for _ in 0..200 {
        let (token, _) = new_session(&a, None).await;
        until_cached(&b, &token).await;
        assert!(a.delete(&token).await.unwrap());
        let at = Instant::now();
        delays.push(until_seen(&b, &token, at, STALENESS, Option::is_none).await);
    }
    delays.sort();
    let pct = |p: usize| delays[(delays.len() * p / 100).min(delays.len() - 1)];
    eprintln!(
        "[revocation delay, {} trials, measured from the revoking call's return] \
         p50 {:?}, p99 {:?}, max {:?} (bound {STALENESS:?})",
        delays.len(),
        pct(50),
        pct(99),
        delays[delays.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_after_the_bound_with_the_channel_held_silent() {
    let server = shared_server();
    let proxy = FreezeProxy::start(server.port()).await;
    let prefix = unique_prefix("nc-frozen");
    let a = uncached(&server.url(), &prefix).await;
    // B reaches Redis through the proxy: data and invalidations.
    let b = cached(&proxy.url(), &prefix).await;
    let mut stale_reads = 0;
    for _ in 0..5 {
        let (token, _) = new_session(&a, None).await;
        until_cached(&b, &token).await;
        proxy.freeze();
        assert!(a.delete(&token).await.unwrap());
        let at = Instant::now();
        // Until the bound, the frozen channel may leave B serving it.
        let deadline = at + STALENESS;
        while Instant::now() < deadline {
            if b.load(&token).await.unwrap().is_some() {
                stale_reads += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The bound passed with the channel still silent: no cached read.
        assert!(proxy.held_bytes() > 0, "the proxy held the channel");
        assert!(
            b.load(&token).await.unwrap().is_none(),
            "served a revoked session after max_staleness with the channel held"
        );
        proxy.thaw();
    }
    eprintln!(
        "[channel held silent] stale reads served before the bound: {stale_reads} \
         (expected: the channel is silent); B {:?}",
        b.near_cache_stats()
    );
    assert!(
        stale_reads > 0,
        "the hold kept invalidations from B (the premise)"
    );
}

/// 100 + 100 concurrent increments on one session, split between two
/// servers (two stores, both cached) sharing one Redis: none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_through_two_cached_stores_lose_nothing() {
    let url = shared_server().url();
    let prefix = unique_prefix("nc-incr");
    let stores = [cached(&url, &prefix).await, cached(&url, &prefix).await];
    let servers = [
        http::Server::start(http::Store::Redis(stores[0].clone()).demo()).await,
        http::Server::start(http::Store::Redis(stores[1].clone()).demo()).await,
    ];
    let browser = http::Browser::new(&servers[0]);
    assert_eq!(browser.post("/api/incr/init").await.status(), 200);
    let token = browser.token().unwrap();
    let cookie = format!("session={token}");
    let client = http::bare_client();

    let burst = |paths: Vec<String>| {
        let client = client.clone();
        let cookie = cookie.clone();
        let urls: Vec<String> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| servers[i % 2].url(p))
            .collect();
        async move {
            let barrier = Arc::new(tokio::sync::Barrier::new(urls.len()));
            let mut tasks = tokio::task::JoinSet::new();
            for url in urls {
                let (client, cookie, barrier) = (client.clone(), cookie.clone(), barrier.clone());
                tasks.spawn(async move {
                    barrier.wait().await;
                    let r = client
                        .post(url)
                        .header(COOKIE, cookie)
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    (status, r.json::<Value>().await.unwrap_or(Value::Null))
                });
            }
            let mut out = Vec::new();
            while let Some(done) = tasks.join_next().await {
                out.push(done.unwrap());
            }
            out
        }
    };
    let distinct = burst((0..100).map(|i| format!("/api/incr/k{i}")).collect()).await;
    assert!(distinct.iter().all(|(s, _)| *s == 200), "{distinct:?}");
    let shared = burst((0..100).map(|_| "/api/incr/shared".to_owned()).collect()).await;
    assert!(shared.iter().all(|(s, _)| *s == 200));
    let mut values: Vec<i64> = shared
        .iter()
        .map(|(_, b)| b["value"].as_i64().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, (1..=100).collect::<Vec<_>>());

    // Both servers now read the same, complete session.
    let mut expected = serde_json::Map::new();
    expected.insert("init".into(), json!(1));
    for i in 0..100 {
        expected.insert(format!("k{i}"), json!(1));
    }
    expected.insert("shared".into(), json!(100));
    let at = Instant::now();
    for server in &servers {
        loop {
            let late = at.elapsed() >= STALENESS;
            let r = client
                .get(server.url("/api/session"))
                .header(COOKIE, cookie.clone())
                .send()
                .await
                .unwrap();
            let body: Value = r.json().await.unwrap();
            if body == json!({ "user": null, "data": expected }) {
                break;
            }
            assert!(!late, "stale after the bound: {body}");
        }
    }
    eprintln!(
        "[two cached stores, 100 + 100 increments] conflicts merged: {} + {}; caches {:?} / {:?}",
        stores[0].stats().conflicts,
        stores[1].stats().conflicts,
        stores[0].near_cache_stats(),
        stores[1].near_cache_stats()
    );
}
