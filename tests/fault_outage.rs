//! Faults: Redis down at start, Redis dying under traffic and coming back
//! empty, Redis losing its function library under load. Each test on its
//! own Redis, with short store timeouts (see `common/faults.rs`); latencies
//! are checked against the documented bound `wait + 2 x (connect + command)`
//! plus a slack for a busy 2-core machine.

mod common;
#[path = "common/faults.rs"]
mod faults;
#[path = "common/http.rs"]
mod http;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinSet;
use tower_redis_sessions::store::{SessionStore, Token};
use tower_redis_sessions::{RedisStore, StoreError};

use common::RedisServer;
use faults::{
    DemoApp, FAST, Log, LossyProxy, SLACK, demo_on, demo_over, has_library, max_latency,
    sent_between, statuses,
};
use http::{Browser, Server};

/// A store error that says Redis cannot be reached, and why.
#[track_caller]
fn assert_unreachable(error: &StoreError) {
    assert!(
        matches!(error, StoreError::Unavailable(_)),
        "expected StoreError::Unavailable, got {error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("unreachable"),
        "the message should say Redis is unreachable: {text:?}"
    );
}

/// Connecting to a Redis that is not there fails at once with a clear
/// error: a closed port (connection refused), and a port that accepts TCP
/// connections but never answers (a hung host), which takes the connect
/// timeout. No panic, no hang.
#[tokio::test]
async fn connecting_to_a_missing_redis_fails_within_the_connect_timeout() {
    let mut server = RedisServer::start();
    let closed = server.url();
    server.stop();
    // Accepts connections (the kernel completes the handshake) and never
    // answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = format!("redis://{}", silent.local_addr().unwrap());
    let bound = FAST.connect + FAST.command;

    for (what, url) in [("closed port", &closed), ("silent port", &silent)] {
        let started = Instant::now();
        let result = FAST.builder(http::config("down:")).connect(url).await;
        let took = started.elapsed();
        let error = result.expect_err("connecting to a missing Redis must fail");
        eprintln!("{what}: {error} (after {took:?}; bound {bound:?})");
        assert_unreachable(&error);
        assert!(took <= bound + SLACK, "{what}: took {took:?}");
    }

    // The default timeouts, on a closed port: refused at once.
    let started = Instant::now();
    let error = RedisStore::connect(&closed, http::config("down:"))
        .await
        .expect_err("connecting to a closed port must fail");
    assert_unreachable(&error);
    assert!(started.elapsed() <= Duration::from_secs(3) + SLACK);
}

/// A lazy store starts while Redis is down; requests that touch their
/// session get a 503 until Redis is up, then work (the first call registers
/// the function library), without restarting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_store_starts_without_redis_and_recovers_when_it_comes_up() {
    let mut server = RedisServer::start();
    server.stop();
    let started = Instant::now();
    let store = Arc::new(
        FAST.builder(http::config("lazy:"))
            .lazy(true)
            .connect(&server.url())
            .await
            .expect("a lazy store starts without Redis"),
    );
    assert!(started.elapsed() < SLACK, "a lazy store contacts no one");
    let web = Server::start(demo_on(&store)).await;
    let a = Browser::new(&web);

    // Requests that need no store call are served.
    assert_eq!(a.get("/healthz").await.status(), 200);
    assert_eq!(
        a.session().await,
        json!({ "user": null, "data": {} }),
        "a visitor without a cookie needs no store call"
    );
    // Those that touch the store: 503, quickly, and no cookie.
    let bound = FAST.operation_bound();
    for _ in 0..3 {
        let started = Instant::now();
        let r = a.post("/api/incr/n").await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        assert!(
            started.elapsed() <= bound + SLACK,
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let r = a.post_json("/api/login", json!({ "user": "ada" })).await;
        assert_eq!(r.status(), 503);
        assert!(started.elapsed() <= bound + SLACK);
    }
    assert_eq!(a.token(), None);
    let token: Token = http::invented_token(1).parse().unwrap();
    assert_unreachable(&store.load(&token).await.unwrap_err());

    // Redis comes up (empty, without the library): the next request works.
    tokio::task::block_in_place(|| server.restart());
    assert!(!has_library(&server, store.library_name()));
    let r = a.post("/api/incr/n").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "key": "n", "value": 1 })
    );
    assert!(has_library(&server, store.library_name()));
    a.login("ada").await;
    assert_eq!(
        a.session().await,
        json!({ "user": "ada", "data": { "n": 1 } })
    );
}

/// One session-touching client: increments its counter in a loop and keeps
/// `(sent, status, value)` of every answer.
async fn increment_loop(
    log: Log,
    name: String,
    browser: Browser,
    running: Arc<AtomicBool>,
) -> Vec<(Duration, u16, Option<i64>)> {
    let mut answers = Vec::new();
    while running.load(Ordering::Relaxed) {
        let sent = log.now();
        let (status, response) = log.request(&name, browser.post("/api/incr/n")).await;
        let value = if status == 200 {
            let body: Value = response.json().await.unwrap();
            Some(body["value"].as_i64().unwrap())
        } else {
            None
        };
        answers.push((sent, status, value));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    answers
}

/// Redis is killed while clients are busy: requests touching their session
/// get a 503 within the documented bound, the others keep getting 200.
/// Redis restarts on the same port, empty and without the library: the
/// service recovers by itself and new sessions work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dies_under_traffic_and_the_service_recovers_when_it_restarts() {
    let mut server = RedisServer::start();
    let DemoApp { store, web, .. } =
        demo_over(&server.url(), "dies", |c| FAST.builder(c).pool_size(4)).await;
    let log = Log::new();
    let running = Arc::new(AtomicBool::new(true));

    let mut sessions = JoinSet::new();
    for i in 0..6 {
        let browser = Browser::new(&web);
        sessions.spawn(increment_loop(
            log.clone(),
            format!("session{i}"),
            browser,
            running.clone(),
        ));
    }
    let health = {
        let (log, running, browser) = (log.clone(), running.clone(), Browser::new(&web));
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                log.request("health", browser.get("/healthz")).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(600)).await;
    log.mark("stop");
    server.stop();
    log.mark("stopped");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    log.mark("restart");
    tokio::task::block_in_place(|| server.restart());
    log.mark("restarted");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.store(false, Ordering::Relaxed);
    let mut answers: BTreeMap<usize, Vec<(Duration, u16, Option<i64>)>> = BTreeMap::new();
    let mut i = 0;
    while let Some(done) = sessions.join_next().await {
        answers.insert(i, done.unwrap());
        i += 1;
    }
    health.await.unwrap();

    let seen = log.seen();
    let end = log.now();
    let (stop, stopped) = (log.at("stop"), log.at("stopped"));
    let (restart, restarted) = (log.at("restart"), log.at("restarted"));
    let bound = FAST.operation_bound();
    let before: Vec<_> = sent_between(&seen, "session", Duration::ZERO, stop)
        .filter(|s| s.done < stop)
        .collect();
    let down: Vec<_> = sent_between(&seen, "session", stopped, restart).collect();
    let after: Vec<_> = sent_between(&seen, "session", restarted, end).collect();
    let all: Vec<_> = sent_between(&seen, "session", Duration::ZERO, end).collect();
    let health: Vec<_> = sent_between(&seen, "health", Duration::ZERO, end).collect();
    eprintln!(
        "before the kill: {:?}; Redis down: {:?}, slowest {:?} (bound {bound:?}); \
         after the restart: {:?}; overall slowest {:?}; /healthz: {:?}, slowest {:?}; \
         restart took {:?}",
        statuses(before.iter().copied()),
        statuses(down.iter().copied()),
        max_latency(down.iter().copied()),
        statuses(after.iter().copied()),
        max_latency(all.iter().copied()),
        statuses(health.iter().copied()),
        max_latency(health.iter().copied()),
        restarted - restart,
    );
    assert!(before.len() >= 6, "traffic ran before the kill");
    assert!(before.iter().all(|s| s.status == 200), "all fine before");
    assert!(down.len() >= 6, "traffic ran while Redis was down");
    assert!(
        down.iter().all(|s| s.status == 503),
        "Redis down: 503 for every request touching its session"
    );
    assert!(
        all.iter().all(|s| s.status == 200 || s.status == 503),
        "only 200 or 503: {:?}",
        statuses(all.iter().copied())
    );
    for s in &all {
        assert!(
            s.latency() <= bound + SLACK,
            "a request took {:?} (bound {bound:?}): {s:?}",
            s.latency()
        );
    }
    assert!(after.len() >= 6, "traffic ran after the restart");
    assert!(
        after.iter().all(|s| s.status == 200),
        "recovered without a restart of the service: {:?}",
        statuses(after.iter().copied())
    );
    assert!(
        health.iter().all(|s| s.status == 200),
        "/healthz unaffected"
    );
    assert!(has_library(&server, store.library_name()));

    // Each client's counter counted 1, 2, 3... before the kill and again
    // from 1 after the restart (Redis came back empty: no persistence);
    // its session now holds its last acknowledged value.
    for (client, answers) in &answers {
        let values: Vec<(Duration, i64)> = answers
            .iter()
            .filter_map(|&(sent, _, value)| value.map(|v| (sent, v)))
            .collect();
        let mut expected = 1;
        let mut reset = false;
        for &(sent, value) in &values {
            if value != expected && value == 1 && !reset && sent >= stop {
                reset = true;
                expected = 1;
            }
            assert_eq!(
                value, expected,
                "client {client}: values {values:?} (stop at {stop:?})"
            );
            expected += 1;
        }
        assert!(reset, "client {client} got a new session after the restart");
    }
}

/// `FUNCTION FLUSH`, several times, while clients are busy: the store
/// registers the library again and retries, so at most calls in flight at
/// the instant of a flush could fail, and every later call succeeds. No
/// acknowledged increment is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_flushed_under_load() {
    const CLIENTS: usize = 12;
    const FLUSHES: usize = 5;
    let server = RedisServer::start();
    // Default timeouts: this test is about the library, not about latency.
    let DemoApp { store, web, .. } = demo_over(&server.url(), "flush", |c| {
        RedisStore::builder(c).pool_size(4)
    })
    .await;
    let log = Log::new();
    let running = Arc::new(AtomicBool::new(true));
    let mut clients = JoinSet::new();
    let mut browsers = Vec::new();
    for i in 0..CLIENTS {
        let browser = Browser::new(&web);
        browsers.push(browser.clone());
        let (log, running) = (log.clone(), running.clone());
        clients.spawn(async move {
            let mut answers = Vec::new();
            while running.load(Ordering::Relaxed) {
                let sent = log.now();
                let (status, response) = log
                    .request(&format!("client{i}"), browser.post("/api/incr/n"))
                    .await;
                let value = if status == 200 {
                    let body: Value = response.json().await.unwrap();
                    body["value"].as_i64()
                } else {
                    None
                };
                answers.push((sent, log.now(), status, value));
            }
            (i, answers)
        });
    }

    let mut flushes = Vec::new();
    for _ in 0..FLUSHES {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let from = log.now();
        tokio::task::block_in_place(|| assert_eq!(server.cmd(&["FUNCTION", "FLUSH"]), "OK"));
        flushes.push((from, log.now()));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    running.store(false, Ordering::Relaxed);
    let mut per_client = BTreeMap::new();
    while let Some(done) = clients.join_next().await {
        let (i, answers) = done.unwrap();
        per_client.insert(i, answers);
    }

    let seen = log.seen();
    let failed: Vec<_> = seen.iter().filter(|s| s.status != 200).collect();
    let in_flight = |s: &faults::Seen| {
        flushes
            .iter()
            .any(|&(from, to)| s.sent <= to && s.done >= from)
    };
    let last_flush = flushes.last().unwrap().1;
    let later: Vec<_> = sent_between(&seen, "client", last_flush, log.now()).collect();
    eprintln!(
        "{} requests, {FLUSHES} flushes, {} failed ({:?}); {} sent after the last flush, all 200: {}",
        seen.len(),
        failed.len(),
        statuses(failed.iter().copied()),
        later.len(),
        later.iter().all(|s| s.status == 200),
    );
    assert!(
        seen.len() >= CLIENTS * FLUSHES,
        "traffic ran: {}",
        seen.len()
    );
    for s in &failed {
        assert!(
            in_flight(s),
            "a request failed that was not in flight during a flush: {s:?}"
        );
    }
    assert!(!later.is_empty());
    assert!(later.iter().all(|s| s.status == 200));
    assert!(has_library(&server, store.library_name()));

    // Every acknowledged increment is there, once: the values a client saw
    // are 1, 2, 3... (a failed call may or may not have been applied, and
    // then shows as a gap of one) and its session holds the last one.
    for (i, answers) in &per_client {
        let mut expected = 1;
        for &(_, _, status, value) in answers {
            match (status, value) {
                (200, Some(v)) => {
                    assert!(
                        v == expected || (v == expected + 1 && !failed.is_empty()),
                        "client {i}: got {v}, expected {expected}"
                    );
                    expected = v + 1;
                }
                (200, None) => panic!("client {i}: a 200 without a value"),
                _ => {}
            }
        }
        let body = browsers[*i].session().await;
        assert_eq!(body["data"]["n"], json!(expected - 1), "client {i}");
    }
}

/// The lock version Redis holds for `browser`'s session.
fn stored_version(server: &RedisServer, prefix: &str, browser: &Browser) -> String {
    let key = http::session_key(prefix, &browser.token().unwrap());
    server.cmd(&["HGET", &key, "v"])
}

/// A private Redis behind a [`LossyProxy`], a one-connection store through
/// the proxy, and the demo served on that store.
async fn behind_lossy_proxy(
    name: &str,
) -> (RedisServer, LossyProxy, String, Arc<RedisStore>, Server) {
    let server = RedisServer::start();
    let proxy = LossyProxy::start(server.port()).await;
    let DemoApp { store, web, prefix } =
        // One connection only: without the near cache's own.
        demo_over(&proxy.url(), name, |c| {
            FAST.builder(c)
                .pool_size(1)
                .near_cache(tower_redis_sessions::store::NearCache::off())
        })
        .await;
    (server, proxy, prefix, store, web)
}

/// Redis executes a save, then the connection drops before its reply
/// arrives (as when Redis dies right after a write): the store sends the
/// save once more over a new connection, the library recognises its own
/// write by the save's nonce, and the increment is acknowledged and
/// applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_reply_to_a_save_is_retried_and_applied_once() {
    let (server, proxy, prefix, store, web) = behind_lossy_proxy("lost").await;
    let a = Browser::new(&web);
    assert_eq!(a.incr("n").await, (200, Some(1)));
    let save = format!("{}_save", store.library_name());
    for round in 2..=4 {
        proxy.lose_reply_to(&save, 0);
        assert_eq!(a.incr("n").await, (200, Some(round)));
        assert_eq!(proxy.lost() as i64, round - 1, "a reply was lost");
    }
    assert_eq!(
        a.session().await,
        json!({ "user": null, "data": { "n": 4 } })
    );
    assert_eq!(
        stored_version(&server, &prefix, &a),
        "4",
        "one write per increment"
    );
}

/// The same lost reply while Redis stays unreachable for the retry: the
/// client gets a 503 although Redis applied the write. A 503 means "outcome
/// unknown", not "not applied" (the soak sees this when Redis is killed
/// right after executing a save); an acknowledged write is never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_reply_with_redis_unreachable_is_a_503_of_unknown_outcome() {
    let (server, proxy, prefix, store, web) = behind_lossy_proxy("unknown").await;
    let a = Browser::new(&web);
    assert_eq!(a.incr("n").await, (200, Some(1)));
    proxy.lose_reply_to(&format!("{}_save", store.library_name()), 100);
    assert_eq!(a.incr("n").await, (503, None));
    assert_eq!(proxy.lost(), 1);
    proxy.heal();
    assert_eq!(
        a.session().await,
        json!({ "user": null, "data": { "n": 2 } }),
        "Redis applied the write whose answer was a 503"
    );
    assert_eq!(a.incr("n").await, (200, Some(3)));
    assert_eq!(stored_version(&server, &prefix, &a), "3");
}

/// `FUNCTION FLUSH` every half millisecond under load (a pathological
/// storm): a call whose library vanishes again right after the store
/// registered it fails with a 503 (transient), never a 500; once the storm
/// ends every call succeeds, and each counter holds exactly its
/// acknowledged increments (a call that found no function ran nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_flush_storm_gives_503_never_500() {
    const CLIENTS: usize = 8;
    let server = RedisServer::start();
    let DemoApp { web, .. } = demo_over(&server.url(), "storm", |c| {
        RedisStore::builder(c).pool_size(4)
    })
    .await;
    let log = Log::new();
    let running = Arc::new(AtomicBool::new(true));
    let mut clients = JoinSet::new();
    for i in 0..CLIENTS {
        let (browser, log, running) = (Browser::new(&web), log.clone(), running.clone());
        clients.spawn(async move {
            let mut acknowledged = 0;
            while running.load(Ordering::Relaxed) {
                let (status, _) = log
                    .request(&format!("client{i}"), browser.post("/api/incr/n"))
                    .await;
                acknowledged += i64::from(status == 200);
            }
            (browser, acknowledged)
        });
    }
    let storming = Arc::new(AtomicBool::new(true));
    let storm = {
        let (storming, mut conn) = (storming.clone(), server.connect());
        std::thread::spawn(move || {
            let mut flushes = 0;
            while storming.load(Ordering::Relaxed) {
                assert_eq!(conn.cmd(&["FUNCTION", "FLUSH"]), "OK");
                flushes += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            flushes
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    storming.store(false, Ordering::Relaxed);
    let flushes = tokio::task::spawn_blocking(move || storm.join().unwrap())
        .await
        .unwrap();
    let calm = log.mark("calm");
    tokio::time::sleep(Duration::from_millis(700)).await;
    running.store(false, Ordering::Relaxed);
    let mut results = Vec::new();
    while let Some(done) = clients.join_next().await {
        results.push(done.unwrap());
    }

    let seen = log.seen();
    let during: Vec<_> = sent_between(&seen, "client", Duration::ZERO, calm).collect();
    let after: Vec<_> = sent_between(&seen, "client", calm, log.now()).collect();
    eprintln!(
        "{flushes} flushes in 1.5 s: {:?}; after: {:?}",
        statuses(during.iter().copied()),
        statuses(after.iter().copied())
    );
    assert!(
        during.iter().all(|s| s.status == 200 || s.status == 503),
        "{:?}",
        statuses(during.iter().copied())
    );
    assert!(!after.is_empty() && after.iter().all(|s| s.status == 200));
    for (browser, acknowledged) in results {
        let body = browser.session().await;
        assert_eq!(body["data"]["n"], json!(acknowledged));
    }
}
