//! Waiting on a store's near cache, for the near-cache suites.

use std::time::{Duration, Instant};

use tower_redis_sessions::RedisStore;
use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore, Token};

/// A new session of `user` (or anonymous) saved through `store`: idle
/// timeout 1 hour, `n` = 0.
pub async fn new_session(store: &RedisStore, user: Option<&str>) -> (Token, Record) {
    let token = store.new_token(user).unwrap();
    let mut record = Record::new(token.id(), "web", store.now());
    record.user = user.map(str::to_owned);
    record.idle_timeout = Some(Duration::from_secs(3600));
    record.data.insert("n".into(), 0.into());
    let SaveOutcome::Saved { version } = store.save(&token, &record).await.unwrap() else {
        panic!("a new session saves");
    };
    record.version = version;
    (token, record)
}

/// Loads `token` through `store` until a load is served from its near cache
/// (its invalidation connections are up and proven), retrying errors of a
/// Redis in transition; panics after 15 s (after a topology change the
/// connections are made again first).
pub async fn until_cached(store: &RedisStore, token: &Token) {
    let deadline = Instant::now() + Duration::from_secs(15);
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

/// Reads `token` through `store` until `seen` holds for what it returns,
/// and returns how long after `changed` that was. Once `bound` (the
/// store's `max_staleness`) has passed since `changed` (the change had
/// returned by then), the read must hold: the staleness bound, asserted by
/// construction. Errors (a Redis or a cluster in transition) are retried
/// for up to 15 s.
pub async fn until_seen(
    store: &RedisStore,
    token: &Token,
    changed: Instant,
    bound: Duration,
    seen: impl Fn(&Option<Record>) -> bool,
) -> Duration {
    loop {
        // Taken before the read: a read that starts after the bound must hold.
        let late = changed.elapsed() >= bound;
        match store.load(token).await {
            Ok(loaded) if seen(&loaded) => return changed.elapsed(),
            Ok(_) => assert!(
                !late,
                "a stale read was served after max_staleness ({bound:?}) had passed"
            ),
            Err(e) => assert!(changed.elapsed() < Duration::from_secs(15), "{e}"),
        }
        tokio::task::yield_now().await;
    }
}
