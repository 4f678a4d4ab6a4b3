//! Waiting on a store's near cache, for the near-cache suites.

use std::time::{Duration, Instant};

use tower_redis_sessions::RedisStore;
use tower_redis_sessions::store::{SessionStore, Token};

/// Loads `token` through `store` until a load is served from its near cache
/// (its invalidation connections are up and proven), retrying errors of a
/// Redis in transition; panics after `within`.
pub async fn until_cached(store: &RedisStore, token: &Token, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let hits = || {
            store
                .near_cache_stats()
                .expect("a store with the near cache")
                .hits
        };
        let before = hits();
        if let Ok(loaded) = store.load(token).await {
            assert!(loaded.is_some(), "the session exists");
            if hits() > before {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the cache never served");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
