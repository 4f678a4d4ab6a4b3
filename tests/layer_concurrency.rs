//! End to end, over real HTTP, on the demo app: concurrent requests on one
//! session lose no update, and a logout racing in-flight writes brings
//! nothing back. On MemoryStore, a standalone Redis and a Redis Cluster;
//! and, as two application processes behind a load balancer would, on two
//! servers with two stores, each with its near cache, sharing one Redis or
//! one cluster (the requests of a burst alternate between them).

mod common;
#[path = "common/http.rs"]
mod http;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use reqwest::header::COOKIE;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use http::{Backend, Browser, Server, Store, bare_client, redis_keys, session_cookie, session_key};

/// One finished request of a burst.
struct Answer {
    status: u16,
    body: Value,
    /// The session cookie the response set, if any.
    cookie: Option<cookie::Cookie<'static>>,
}

/// Sends all `requests` at once (lined up on a barrier), each a POST of the
/// path with the given raw `Cookie` header, or through the browser's jar when
/// `cookie` is `None`; request `i` goes to `browsers[i % browsers.len()]`
/// (each browser on its own server). Answers in the order of `requests`.
async fn burst(browsers: &[Browser], requests: Vec<(String, Option<String>)>) -> Vec<Answer> {
    let barrier = Arc::new(Barrier::new(requests.len()));
    let bare = bare_client();
    let mut tasks = JoinSet::new();
    for (i, (path, cookie)) in requests.into_iter().enumerate() {
        let barrier = barrier.clone();
        let browser = browsers[i % browsers.len()].clone();
        let bare = bare.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let response = match cookie {
                None => browser.post(&path).await,
                Some(cookie) => bare
                    .post(browser.url(&path))
                    .header(COOKIE, cookie)
                    .send()
                    .await
                    .unwrap(),
            };
            let status = response.status().as_u16();
            let cookie = session_cookie(&response, "session");
            let text = response.text().await.unwrap();
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (
                i,
                Answer {
                    status,
                    body,
                    cookie,
                },
            )
        });
    }
    let mut answers: BTreeMap<usize, Answer> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (i, answer) = done.unwrap();
        answers.insert(i, answer);
    }
    answers.into_values().collect()
}

/// One store and server, or (`two`) two of each with their near caches on,
/// sharing `backend`'s data.
async fn apps(backend: Backend, prefix: &str, two: bool) -> (Vec<Store>, Vec<Server>) {
    let stores = if two {
        // One deployment: one prefix, one secret.
        let config = http::config(prefix);
        vec![
            Store::connect_cached(backend, config.clone()).await,
            Store::connect_cached(backend, config).await,
        ]
    } else {
        vec![Store::connect(backend, prefix).await]
    };
    let mut servers = Vec::new();
    for store in &stores {
        servers.push(Server::start(store.demo()).await);
    }
    (stores, servers)
}

/// A browser on each server, all holding `first`'s cookie.
fn browsers(first: &Browser, servers: &[Server]) -> Vec<Browser> {
    let mut all = vec![first.clone()];
    for server in &servers[1..] {
        let other = Browser::new(server);
        if let Some(token) = first.token() {
            other.set_token(&token);
        }
        all.push(other);
    }
    all
}

fn conflicts(stores: &[Store]) -> u64 {
    stores.iter().map(|s| s.stats().conflicts).sum()
}

fn statuses(answers: &[Answer]) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        *counts.entry(a.status).or_insert(0) += 1;
    }
    counts
}

async fn no_lost_updates(backend: Backend, two: bool) {
    let prefix = http::unique_prefix("lost");
    let (stores, servers) = apps(backend, &prefix, two).await;
    let browser = Browser::new(&servers[0]);

    // One request establishes the session; the bursts all carry its cookie.
    let response = browser.post("/api/incr/init").await;
    assert_eq!(response.status(), 200);
    let token = browser.token().expect("the first write sets a cookie");
    let all = browsers(&browser, &servers);
    let browser = &all[0];

    // 100 concurrent increments of 100 distinct keys.
    let started = Instant::now();
    let distinct = burst(
        &all,
        (0..100)
            .map(|i| (format!("/api/incr/k{i}"), None))
            .collect(),
    )
    .await;
    let distinct_time = started.elapsed();
    let distinct_ok = distinct.iter().filter(|a| a.status == 200).count();
    for (i, a) in distinct.iter().enumerate() {
        assert_eq!(a.status, 200, "k{i}: {}", a.body);
        assert_eq!(a.body, json!({ "key": format!("k{i}"), "value": 1 }));
    }

    // 100 concurrent increments of one key.
    let started = Instant::now();
    let shared = burst(
        &all,
        (0..100)
            .map(|_| ("/api/incr/shared".to_owned(), None))
            .collect(),
    )
    .await;
    let shared_time = started.elapsed();
    let shared_ok = shared.iter().filter(|a| a.status == 200).count();
    assert_eq!(statuses(&shared), BTreeMap::from([(200, 100)]));
    // Each answer is the value its own save stored: 1..=100, each once.
    let mut returned: Vec<i64> = shared
        .iter()
        .map(|a| a.body["value"].as_i64().unwrap())
        .collect();
    returned.sort_unstable();
    assert_eq!(returned, (1..=100).collect::<Vec<i64>>());

    // Nobody was handed another token: it was one session throughout. (A
    // response may refresh the same cookie; see `refreshed` in the report.)
    let refreshed = distinct
        .iter()
        .chain(&shared)
        .filter_map(|a| a.cookie.as_ref())
        .inspect(|c| assert_eq!(c.value(), token, "the bursts never change the token"))
        .count();
    assert_eq!(browser.token().as_deref(), Some(token.as_str()));

    let session = browser.session().await;
    let data = session["data"].as_object().unwrap();
    let ones = (0..100)
        .filter(|i| data.get(&format!("k{i}")) == Some(&json!(1)))
        .count();
    let mut expected = serde_json::Map::new();
    expected.insert("init".into(), json!(1));
    for i in 0..100 {
        expected.insert(format!("k{i}"), json!(1));
    }
    expected.insert("shared".into(), json!(100));
    eprintln!(
        "[no lost updates, {backend:?}, {} app(s)] distinct keys: {distinct_ok}/100 answered 200, \
         {ones}/100 keys = 1 ({distinct_time:?}); shared key: {shared_ok}/100 answered 200, \
         shared = {} ({shared_time:?}); conflicts merged by the store: {}; \
         responses refreshing the (same) cookie: {refreshed}",
        servers.len(),
        data.get("shared").unwrap_or(&Value::Null),
        conflicts(&stores),
    );
    assert_eq!(session, json!({ "user": null, "data": expected }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lost_updates_memory() {
    no_lost_updates(Backend::Memory, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lost_updates_standalone() {
    no_lost_updates(Backend::Standalone, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lost_updates_cluster() {
    no_lost_updates(Backend::Cluster, false).await;
}

/// A logout racing 50 in-flight writes on the same session: afterwards the
/// old token opens nothing, and no key of the old session is left.
async fn logout_race(backend: Backend, two: bool) {
    let prefix = http::unique_prefix("race");
    let (stores, servers) = apps(backend, &prefix, two).await;
    let server = &servers[0];
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();

    for round in 0..3 {
        let browser = Browser::new(server);
        let user = format!("racer{round}");
        browser.login(&user).await;
        assert_eq!(browser.post("/api/incr/before").await.status(), 200);
        let token = browser.token().unwrap();
        let all = browsers(&browser, &servers);
        // Every app has the session cached before the race.
        for other in &all {
            assert_eq!(other.session().await["user"], json!(user));
        }
        let key = session_key(&prefix, &token);
        if backend != Backend::Memory {
            assert!(redis_keys(backend, &prefix).contains(&key), "{key} stored");
        }

        // The old cookie is sent by hand, so that cookies set by responses
        // during the race do not change what the other requests send.
        let cookie = format!("session={token}");
        let logout_at = 25;
        let requests = (0..=50)
            .map(|i| {
                let path = if i == logout_at {
                    "/api/logout".to_owned()
                } else {
                    format!("/api/incr/w{i}")
                };
                (path, Some(cookie.clone()))
            })
            .collect();
        let answers = burst(&all, requests).await;

        let logout = &answers[logout_at];
        assert_eq!(logout.status, 200, "{}", logout.body);
        assert_eq!(logout.body, json!({ "ok": true }));
        let removal = logout.cookie.as_ref().expect("logout clears the cookie");
        assert_eq!(removal.value(), "");
        assert_eq!(removal.max_age(), Some(cookie::time::Duration::ZERO));

        for (i, a) in answers.iter().enumerate() {
            if i == logout_at {
                continue;
            }
            match (a.status, &a.cookie) {
                // Saved into the old session before the logout deleted it
                // (possibly refreshing the old cookie, which opens nothing
                // any more: checked below).
                (200, None) => *tally.entry("saved before the logout").or_default() += 1,
                (200, Some(c)) if c.value() == token => {
                    *tally.entry("saved before the logout").or_default() += 1;
                }
                // Loaded after the logout: a new anonymous session, under a
                // new token.
                (200, Some(c)) => {
                    assert_ne!(c.value(), token, "w{i}: the old token is never reissued");
                    assert_eq!(c.value().len(), token.len(), "w{i}: a new token");
                    assert_eq!(a.body["value"], json!(1), "w{i}: a fresh session");
                    *tally.entry("new session after the logout").or_default() += 1;
                }
                // Loaded before the logout, saved after: refused (gone), and
                // the client is told to drop the cookie.
                (409, Some(c)) if c.value().is_empty() => {
                    *tally.entry("refused: session gone").or_default() += 1;
                }
                (status, c) => panic!("w{i}: unexpected answer {status} {c:?} {}", a.body),
            }
        }

        // The old token opens nothing, on any app.
        for server in &servers {
            let (status, body) = http::session_with_cookie(&bare_client(), server, &cookie).await;
            assert_eq!(status, 200);
            assert_eq!(body, json!({ "user": null, "data": {} }));
        }

        // And nothing of the old session is left in Redis: not its hash, and
        // no key in the user's hash slot (the index was its only other key;
        // new anonymous sessions have random tags).
        if backend != Backend::Memory {
            let id = token
                .parse::<tower_redis_sessions::store::Token>()
                .unwrap()
                .id();
            let user_tag = format!("{prefix}{{{}}}", &token[..8]);
            let left: Vec<String> = redis_keys(backend, &prefix)
                .into_iter()
                .filter(|k| k == &key || k.contains(&id.to_string()) || k.starts_with(&user_tag))
                .collect();
            assert!(left.is_empty(), "keys of the old session left: {left:?}");
        }
    }
    eprintln!(
        "[no resurrection, {backend:?}, {} app(s)] 3 rounds of 50 writes racing a logout: \
         {tally:?}; revivals blocked by the stores: {}",
        servers.len(),
        stores
            .iter()
            .map(|s| s.stats().revivals_blocked)
            .sum::<u64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_racing_writes_memory() {
    logout_race(Backend::Memory, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_racing_writes_standalone() {
    logout_race(Backend::Standalone, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_racing_writes_cluster() {
    logout_race(Backend::Cluster, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lost_updates_two_cached_apps_standalone() {
    no_lost_updates(Backend::Standalone, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lost_updates_two_cached_apps_cluster() {
    no_lost_updates(Backend::Cluster, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_racing_writes_two_cached_apps_standalone() {
    logout_race(Backend::Standalone, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_racing_writes_two_cached_apps_cluster() {
    logout_race(Backend::Cluster, true).await;
}
