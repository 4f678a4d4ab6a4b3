//! The near cache under faults, on real Redis processes: a Redis restart,
//! `CLIENT KILL` of the invalidation connection, `FUNCTION FLUSH` and
//! `FLUSHALL`. After each, no read serves the session as it was before a
//! change once `max_staleness` has passed (asserted for every read that
//! starts after the bound), and the cache is emptied where it must be. A
//! Redis Cluster store runs without the cache.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tower_redis_sessions::store::{NearCache, SessionStore, Token};
use tower_redis_sessions::{RedisStore, StoreConfig};

use common::near::{new_session, until_cached};
use common::stores::{test_keyring, unique_prefix};
use common::{RedisServer, shared_cluster};

const STALENESS: Duration = Duration::from_millis(200);

fn config(prefix: &str) -> StoreConfig {
    StoreConfig::new(test_keyring()).prefix(prefix)
}

async fn store(url: &str, prefix: &str, cache: NearCache) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::builder(config(prefix))
            .pool_size(1)
            .command_timeout(Duration::from_millis(500))
            .near_cache(cache)
            .connect(url)
            .await
            .unwrap(),
    )
}

fn cache() -> NearCache {
    NearCache::new().max_staleness(STALENESS)
}

/// Reads until `token` no longer loads (gone, or an error: both are true
/// answers), asserting that no read started after `max_staleness` since
/// `at` served it. Returns how long that took.
async fn until_gone(store: &RedisStore, token: &Token, at: Instant) -> Duration {
    loop {
        let late = at.elapsed() >= STALENESS;
        match store.load(token).await {
            Ok(None) | Err(_) => return at.elapsed(),
            Ok(Some(_)) => assert!(!late, "a stale read after max_staleness"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_serves_nothing_stale() {
    let mut server = RedisServer::start();
    let prefix = unique_prefix("ncf-restart");
    let b = store(&server.url(), &prefix, cache()).await;
    let token = new_session(&b, None).await.0;
    until_cached(&b, &token).await;
    let flushes = b.near_cache_stats().unwrap().flushes;
    // No persistence: the session is lost with the restart.
    server.restart();
    let at = Instant::now();
    let gone = until_gone(&b, &token, at).await;
    assert!(b.near_cache_stats().unwrap().flushes > flushes, "emptied");
    // And the cache works again afterwards.
    let token = new_session(&b, None).await.0;
    until_cached(&b, &token).await;
    eprintln!(
        "[restart] no longer served after {gone:?}; {:?}",
        b.near_cache_stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_invalidation_connection_serves_nothing_stale() {
    let server = RedisServer::start();
    let prefix = unique_prefix("ncf-kill");
    let a = store(&server.url(), &prefix, NearCache::off()).await;
    let b = store(&server.url(), &prefix, cache()).await;
    let token = new_session(&a, None).await.0;
    until_cached(&b, &token).await;
    let flushes = b.near_cache_stats().unwrap().flushes;
    // The tracking client: flag `t` in CLIENT LIST.
    let list = server.cmd(&["CLIENT", "LIST"]);
    let ids: Vec<&str> = list
        .lines()
        .filter(|line| {
            line.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('t'))
        })
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert_eq!(ids.len(), 1, "one tracking connection: {list}");
    server.cmd(&["CLIENT", "KILL", "ID", ids[0]]);
    // A change made while B may not be listening.
    assert!(a.delete(&token).await.unwrap());
    let at = Instant::now();
    let gone = until_gone(&b, &token, at).await;
    // The kill was noticed (a disconnect empties the cache), and a new
    // connection tracks again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.near_cache_stats().unwrap().flushes == flushes {
        assert!(Instant::now() < deadline, "the kill was never noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let token = new_session(&a, None).await.0;
    until_cached(&b, &token).await;
    assert!(a.delete(&token).await.unwrap());
    let again = until_gone(&b, &token, Instant::now()).await;
    eprintln!("[client kill] change seen after {gone:?}; after reconnecting {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_flush_empties_the_cache_and_serves_nothing_stale() {
    let server = RedisServer::start();
    let prefix = unique_prefix("ncf-fflush");
    let a = store(&server.url(), &prefix, NearCache::off()).await;
    let b = store(&server.url(), &prefix, cache()).await;
    let token = new_session(&a, None).await.0;
    until_cached(&b, &token).await;
    server.cmd(&["FUNCTION", "FLUSH"]);
    // A registers the library again and ends the session.
    assert!(a.delete(&token).await.unwrap());
    let at = Instant::now();
    let gone = until_gone(&b, &token, at).await;

    // B's next call meets the missing library (flushed again): its cache
    // is emptied before it registers the library again.
    let other = new_session(&b, None).await.0;
    until_cached(&b, &other).await;
    let flushes = b.near_cache_stats().unwrap().flushes;
    server.cmd(&["FUNCTION", "FLUSH"]);
    let fresh = b.new_token(None).unwrap();
    assert!(b.load(&fresh).await.unwrap().is_none());
    assert!(
        b.near_cache_stats().unwrap().flushes > flushes,
        "emptied on the missing library"
    );
    assert!(b.load(&other).await.unwrap().is_some());
    eprintln!("[function flush] change seen after {gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_empties_the_cache() {
    let server = RedisServer::start();
    let prefix = unique_prefix("ncf-flushall");
    let b = store(&server.url(), &prefix, cache()).await;
    let token = new_session(&b, None).await.0;
    until_cached(&b, &token).await;
    server.cmd(&["FLUSHALL"]);
    let at = Instant::now();
    let gone = until_gone(&b, &token, at).await;
    eprintln!("[flushall] no longer served after {gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_store_runs_with_the_cache() {
    let prefix = unique_prefix("ncf-cluster");
    let store = RedisStore::builder(config(&prefix))
        .near_cache(cache())
        .connect_cluster(shared_cluster().urls())
        .await
        .unwrap();
    assert!(store.near_cache_stats().is_some());
    let token = new_session(&store, None).await.0;
    assert!(store.load(&token).await.unwrap().is_some());
}
