//! Faults: a Redis that stops answering (`CLIENT PAUSE ... ALL`, `DEBUG
//! SLEEP`) and a saturated store (every place for a call in flight taken).
//! Requests must answer 503 within the store's timeouts, none may hang, and
//! everything works again once Redis answers. Each test on its own Redis.

mod common;
#[path = "common/faults.rs"]
mod faults;
#[path = "common/http.rs"]
mod http;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tower_redis_sessions::StoreError;
use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore};

use common::{RedisServer, ServerOptions};
use faults::{DemoApp, FAST, Log, SLACK, Timeouts, demo_over, max_latency, statuses};
use http::Browser;

/// `POST /api/incr/n` through `browser`, returning the status and the value.
async fn incr(log: &Log, name: &str, browser: &Browser) -> (u16, Option<i64>) {
    let (_, response) = log.request(name, browser.post("/api/incr/n")).await;
    http::incr_answer(response).await
}

/// `CLIENT PAUSE <ms> ALL`; returns when Redis has acknowledged it (from
/// then on, until `ms` have passed, it answers no client).
fn pause(server: &RedisServer, ms: u64) {
    assert_eq!(
        server.cmd(&["CLIENT", "PAUSE", &ms.to_string(), "ALL"]),
        "OK"
    );
}

/// Redis paused for 3 s: every request touching its session answers 503
/// within the store's timeouts (far less than the pause), requests that do
/// not touch it are served, and nothing a 503 answered was written. After
/// the pause, everything works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_gives_503_within_the_timeouts() {
    const PAUSE: Duration = Duration::from_millis(3000);
    let server = RedisServer::start();
    let DemoApp { web, .. } =
        demo_over(&server.url(), "pause", |c| FAST.builder(c).pool_size(2)).await;
    let log = Log::new();
    let browsers: Vec<Browser> = (0..4).map(|_| Browser::new(&web)).collect();
    for b in &browsers {
        assert_eq!(incr(&log, "setup", b).await, (200, Some(1)));
    }

    pause(&server, PAUSE.as_millis() as u64);
    let paused = log.mark("paused");
    // Clients keep sending until shortly before the pause ends, so every
    // answer they get comes from a Redis that answers nobody.
    let until = paused + PAUSE - FAST.operation_bound() - Duration::from_millis(200);
    let mut tasks = JoinSet::new();
    for (i, b) in browsers.iter().enumerate() {
        let (log, b) = (log.clone(), b.clone());
        tasks.spawn(async move {
            while log.now() < until {
                incr(&log, &format!("session{i}"), &b).await;
                log.request(&format!("session{i}"), b.get("/api/session"))
                    .await;
            }
        });
    }
    {
        let (log, b) = (log.clone(), browsers[0].clone());
        tasks.spawn(async move {
            while log.now() < until {
                log.request("health", b.get("/healthz")).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let seen = log.seen();
    let during: Vec<_> = seen
        .iter()
        .filter(|s| s.client.starts_with("session") && s.sent >= paused)
        .collect();
    let health: Vec<_> = seen.iter().filter(|s| s.client == "health").collect();
    let bound = FAST.operation_bound();
    eprintln!(
        "paused {PAUSE:?}: {:?}, slowest {:?} (command timeout {:?}, bound {bound:?}); \
         /healthz {:?}, slowest {:?}",
        statuses(during.iter().copied()),
        max_latency(during.iter().copied()),
        FAST.command,
        statuses(health.iter().copied()),
        max_latency(health.iter().copied()),
    );
    assert!(during.len() >= 8, "traffic ran during the pause");
    for s in &during {
        assert_eq!(s.status, 503, "{s:?}");
        assert!(s.latency() <= bound + SLACK, "{s:?}");
        assert!(s.done < paused + PAUSE, "answered before the pause ended");
    }
    assert!(health.iter().all(|s| s.status == 200));

    // After the pause: all fine, and each counter holds 1 (the 503s wrote
    // nothing) plus what comes now.
    tokio::time::sleep((paused + PAUSE).saturating_sub(log.now()) + Duration::from_millis(100))
        .await;
    for round in 2..4 {
        for b in &browsers {
            assert_eq!(incr(&log, "after", b).await, (200, Some(round)));
        }
    }
}

/// `DEBUG SLEEP`: Redis blocked entirely. The call already on a connection
/// fails after the command timeout; later calls, which need a new
/// connection, after the connect timeout; none waits for Redis. Then it
/// works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_redis_fails_calls_after_the_command_timeout() {
    let server = RedisServer::start_with(ServerOptions {
        enable_debug_command: true,
        ..ServerOptions::default()
    });
    let store = FAST
        .builder(http::config(&http::unique_prefix("sleep")))
        .pool_size(1)
        // Every call must meet the sleeping Redis (a cached read would not).
        .near_cache(tower_redis_sessions::store::NearCache::off())
        .connect(&server.url())
        .await
        .unwrap();
    let token = store.new_token(None).unwrap();
    let record = Record::new(token.id(), "web", store.now());
    assert_eq!(
        store.save(&token, &record).await.unwrap(),
        SaveOutcome::Saved { version: 1 }
    );
    assert!(store.load(&token).await.unwrap().is_some());

    let mut sleeper = server.connect();
    let sleeping = std::thread::spawn(move || {
        let started = Instant::now();
        assert_eq!(sleeper.cmd(&["DEBUG", "SLEEP", "3"]), "OK");
        started.elapsed()
    });
    // Let DEBUG SLEEP reach Redis before the store's calls.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut errors = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let result = store.load(&token).await;
        errors.push((started.elapsed(), result.expect_err("Redis is asleep")));
    }
    let slept = tokio::task::spawn_blocking(move || sleeping.join().unwrap())
        .await
        .unwrap();
    eprintln!("DEBUG SLEEP 3 (returned after {slept:?}): {errors:?}");
    assert!(
        matches!(errors[0].1, StoreError::Timeout(t) if t == FAST.command),
        "the first call times out on its connection: {:?}",
        errors[0]
    );
    for (took, error) in &errors {
        assert!(error.is_unavailable(), "{error:?}");
        assert!(*took <= FAST.operation_bound() + SLACK, "{took:?}");
    }
    let total: Duration = errors.iter().map(|(t, _)| *t).sum();
    assert!(
        total < slept,
        "the calls did not wait for Redis: {total:?} vs {slept:?}"
    );

    // Awake: the same store works (over a new connection).
    let loaded = store.load(&token).await.unwrap().expect("still there");
    assert_eq!(loaded.version, 1);
}

/// One connection, one call in flight at a time, and Redis paused so that
/// the call in flight keeps its place: the other requests wait at most the
/// wait timeout for a place, then get a 503; none waits for the pause to
/// end; nothing deadlocks; afterwards every request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_store_waits_at_most_the_wait_timeout() {
    saturated(tower_redis_sessions::store::NearCache::off()).await;
}

/// The same with the near cache on: its calls (the saves here; the loads
/// are cached) go over its own connection, and still take a place among
/// `max_in_flight`, so the bound and the 503s are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_store_with_the_near_cache_waits_at_most_the_wait_timeout() {
    saturated(tower_redis_sessions::store::NearCache::new()).await;
}

async fn saturated(cache: tower_redis_sessions::store::NearCache) {
    const PAUSE: Duration = Duration::from_millis(2500);
    const CLIENTS: usize = 8;
    // The command timeout outlasts the pause: the call in flight holds its
    // place through it, and then succeeds.
    let timeouts = Timeouts {
        command: Duration::from_secs(6),
        ..FAST
    };
    let server = RedisServer::start();
    let DemoApp { store, web, .. } = demo_over(&server.url(), "busy", |c| {
        timeouts
            .builder(c)
            .pool_size(1)
            .max_in_flight(1)
            .near_cache(cache)
    })
    .await;
    let log = Log::new();
    let browsers: Vec<Browser> = (0..CLIENTS).map(|_| Browser::new(&web)).collect();
    for b in &browsers {
        assert_eq!(incr(&log, "setup", b).await, (200, Some(1)));
    }

    pause(&server, PAUSE.as_millis() as u64);
    let paused = log.mark("paused");
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let mut tasks = JoinSet::new();
    for (i, b) in browsers.iter().enumerate() {
        let (log, b, barrier) = (log.clone(), b.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let (status, value) = incr(&log, &format!("client{i}"), &b).await;
            (i, status, value)
        });
    }
    // Meanwhile, straight at the store: no place for this call either. Sent
    // once a request got its 503, so the place is surely taken.
    let token = store.new_token(None).unwrap();
    while !log.seen().iter().any(|s| s.status == 503) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let direct = store.load(&token).await;
    let direct_took = started.elapsed();
    let mut outcomes = Vec::new();
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.unwrap());
    }
    outcomes.sort();

    let seen = log.seen();
    let burst: Vec<_> = seen
        .iter()
        .filter(|s| s.client.starts_with("client"))
        .collect();
    let refused: Vec<_> = burst.iter().copied().filter(|s| s.status == 503).collect();
    let served: Vec<_> = burst.iter().copied().filter(|s| s.status == 200).collect();
    eprintln!(
        "{CLIENTS} concurrent requests, 1 place, Redis paused {PAUSE:?}: {:?}; \
         503s answered within {:?} (wait timeout {:?}); served after {:?}; \
         a direct store call: {direct:?} after {direct_took:?}",
        statuses(burst.iter().copied()),
        max_latency(refused.iter().copied()),
        timeouts.wait,
        max_latency(served.iter().copied()),
    );
    assert!(
        matches!(direct, Err(StoreError::PoolTimeout(t)) if t == timeouts.wait),
        "{direct:?}"
    );
    assert!(direct_took <= timeouts.wait + SLACK);
    assert!(
        refused.len() >= CLIENTS - 1,
        "all but the request holding the place get a 503: {:?}",
        statuses(burst.iter().copied())
    );
    for s in &refused {
        assert!(s.latency() <= timeouts.wait + SLACK, "{s:?}");
        assert!(s.done < paused + PAUSE, "did not wait for the pause: {s:?}");
    }
    // The request that held the place finished once Redis answered.
    for s in &served {
        assert!(
            s.done >= paused + PAUSE - Duration::from_millis(100),
            "{s:?}"
        );
    }

    // The pool recovered: every client works, sequentially and at once, and
    // its counter holds exactly the increments that got a 200.
    let mut expected: Vec<i64> = vec![1; CLIENTS];
    for &(i, status, value) in &outcomes {
        if status == 200 {
            expected[i] += 1;
            assert_eq!(value, Some(expected[i]));
        }
    }
    for (i, b) in browsers.iter().enumerate() {
        expected[i] += 1;
        assert_eq!(incr(&log, "after", b).await, (200, Some(expected[i])));
    }
    let mut tasks = JoinSet::new();
    for (i, b) in browsers.iter().enumerate() {
        let (log, b) = (log.clone(), b.clone());
        tasks.spawn(async move { (i, incr(&log, "after", &b).await) });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, answer) = done.unwrap();
        assert_eq!(answer, (200, Some(expected[i] + 1)), "client {i}");
    }
    for (i, b) in browsers.iter().enumerate() {
        assert_eq!(
            b.session().await,
            json!({ "user": null, "data": { "n": expected[i] + 1 } })
        );
    }
}
