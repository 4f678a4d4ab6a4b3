//! The examples, run for real: the hyper example's service in process and
//! as its compiled binary, and the demo binary (environment, store choice,
//! `listening on` line, cookie flags, shutdown).
//!
//! The binaries are the ones `cargo test` builds next to the test binaries
//! (`target/<profile>/examples/`); `cargo test --test layer_examples` alone
//! does not build them, so build them first in that case
//! (`cargo build --examples --all-features`).

mod common;
#[path = "common/http.rs"]
mod http;
#[path = "../examples/hyper_service.rs"]
#[allow(dead_code)]
mod hyper_service;
#[path = "common/process.rs"]
mod process;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::cookie::Jar;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower_redis_sessions::{CookieConfig, MemoryStore, RedisStore, SessionLayer};

use http::{bare_client, client_builder, session_cookie};
use process::{App, pid_alive};

// ------------------------------------------------------------- hyper example

async fn hyper_counter(base: &str) {
    let jar = Arc::new(Jar::default());
    let client = client_builder().cookie_provider(jar).build().unwrap();
    for n in 1..=3 {
        let r = client.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), format!("counter: {n}\n"));
    }
    // Another client, another session.
    let r = bare_client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "counter: 1\n");
    // A path the service does not serve: 404, session untouched, no cookie.
    let r = bare_client()
        .get(format!("{base}/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(session_cookie(&r, "session").is_none());

    // Concurrent requests of one session each count once.
    let jar = Arc::new(Jar::default());
    let client = client_builder().cookie_provider(jar).build().unwrap();
    client.get(format!("{base}/")).send().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = client.clone();
        let url = format!("{base}/");
        tasks.spawn(async move { client.get(url).send().await.unwrap().status() });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let r = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "counter: 22\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_service_in_process_memory() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer =
        SessionLayer::new(MemoryStore::default()).cookie(CookieConfig::default().secure(false));
    let task = tokio::spawn(hyper_service::serve(listener, layer));
    hyper_counter(&format!("http://{addr}")).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_service_in_process_redis() {
    let prefix = http::unique_prefix("hyper");
    let store = RedisStore::connect(&common::shared_server().url(), http::config(&prefix))
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(hyper_service::serve(
        listener,
        SessionLayer::new(store).cookie(CookieConfig::default().secure(false)),
    ));
    hyper_counter(&format!("http://{addr}")).await;
    task.abort();
    assert!(!http::redis_keys(http::Backend::Standalone, &prefix).is_empty());
}

// ----------------------------------------------------------- the binaries

const SECRET: &str = "an example secret of at least thirty-two bytes";

/// The demo's JSON API through a cookie jar; returns the session cookie
/// the first write set.
async fn exercise_demo(base: &str) -> cookie::Cookie<'static> {
    let jar = Arc::new(Jar::default());
    let client = client_builder().cookie_provider(jar).build().unwrap();
    let r = client
        .post(format!("{base}/api/incr/hits"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set = session_cookie(&r, "session").expect("a session cookie");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "key": "hits", "value": 1 })
    );
    let r = client
        .post(format!("{base}/api/incr/hits"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "key": "hits", "value": 2 }),
        "the jar sends the cookie back over plain HTTP"
    );
    let r = client
        .post(format!("{base}/api/login"))
        .json(&json!({ "user": "ada" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "user": "ada" }));
    let r = client
        .get(format!("{base}/api/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "user": "ada", "data": { "hits": 2 } })
    );
    set
}

#[test]
fn hyper_service_binary_serves_a_session() {
    let running = App::start("hyper_service", &[("BIND", "127.0.0.1:0")], &["REDIS_URL"]);
    let base = running.wait_listening();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(hyper_counter(&base));
}

#[test]
fn demo_binary_on_redis_url() {
    let prefix_probe = common::shared_server();
    let mut running = App::start(
        "demo",
        &[
            ("BIND", "127.0.0.1:0"),
            ("REDIS_URL", &prefix_probe.url()),
            ("SESSION_SECRET", SECRET),
        ],
        &["REDIS_CLUSTER_URLS", "COOKIE_SECURE"],
    );
    let base = running.wait_listening();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cookie = rt.block_on(exercise_demo(&base));
    assert_eq!(cookie.secure(), None, "plain HTTP: not Secure: {cookie}");
    assert_eq!(cookie.http_only(), Some(true));
    let stderr = running.stderr_with("session store: Redis at redis://127.0.0.1:");
    assert!(!stderr.contains("WARNING"), "a secret was given: {stderr}");
    // The counters, as JSON, from the same store the layer uses.
    let metrics: Value = rt.block_on(async {
        bare_client()
            .get(format!("{base}/api/metrics"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert!(metrics["operations"].as_u64().unwrap() >= 3, "{metrics}");
    for counter in [
        "unavailable",
        "conflicts",
        "revivals_blocked",
        "rejected_blobs",
    ] {
        assert!(metrics[counter].is_u64(), "{counter} in {metrics}");
    }

    running.signal("TERM");
    assert_eq!(running.wait_exit().code(), Some(0), "{}", running.stderr());
}

#[test]
fn demo_binary_on_a_cluster_with_secure_cookie() {
    let cluster = common::shared_cluster();
    let urls = cluster.urls().join(",");
    let mut running = App::start(
        "demo",
        &[
            ("BIND", "127.0.0.1:0"),
            ("REDIS_CLUSTER_URLS", &urls),
            ("SESSION_SECRET", SECRET),
            ("COOKIE_SECURE", "1"),
        ],
        &["REDIS_URL"],
    );
    let base = running.wait_listening();
    running.stderr_with("session store: Redis Cluster at");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(async {
        bare_client()
            .post(format!("{base}/api/incr/x"))
            .send()
            .await
            .unwrap()
    });
    assert_eq!(r.status(), 200);
    let cookie = session_cookie(&r, "session").unwrap();
    assert_eq!(cookie.secure(), Some(true), "COOKIE_SECURE=1: {cookie}");
    running.signal("INT");
    assert_eq!(running.wait_exit().code(), Some(0), "{}", running.stderr());
}

#[test]
fn demo_binary_starts_and_stops_a_throwaway_redis() {
    let mut running = App::start(
        "demo",
        &[("BIND", "127.0.0.1:0")],
        &[
            "REDIS_URL",
            "REDIS_CLUSTER_URLS",
            "SESSION_SECRET",
            "COOKIE_SECURE",
        ],
    );
    let base = running.wait_listening();
    running.stderr_with("WARNING: SESSION_SECRET is not set");
    let stderr = running.stderr_with("(pid ");
    let pid: u32 = stderr
        .split("throwaway redis-server at ")
        .nth(1)
        .and_then(|rest| rest.split("(pid ").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no throwaway redis-server announced: {stderr}"));
    assert!(pid_alive(pid));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(exercise_demo(&base));

    // Ctrl-C: the demo exits and takes its redis-server with it.
    running.signal("INT");
    assert_eq!(running.wait_exit().code(), Some(0), "{}", running.stderr());
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "redis-server {pid} outlived the demo"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn demo_binary_falls_back_to_memory_without_redis_server() {
    // A PATH without redis-server.
    let empty = std::env::temp_dir().join(format!("demo-empty-path-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let mut running = App::start(
        "demo",
        &[
            ("BIND", "127.0.0.1:0"),
            ("PATH", empty.to_str().unwrap()),
            ("SESSION_SECRET", SECRET),
        ],
        &["REDIS_URL", "REDIS_CLUSTER_URLS", "COOKIE_SECURE"],
    );
    let base = running.wait_listening();
    running.stderr_with("session store: MEMORY");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(exercise_demo(&base));
    running.signal("TERM");
    assert_eq!(running.wait_exit().code(), Some(0));
    let _ = std::fs::remove_dir(&empty);
}

#[test]
fn demo_binary_refuses_a_short_secret() {
    let mut running = App::start(
        "demo",
        &[("BIND", "127.0.0.1:0"), ("SESSION_SECRET", "too short")],
        &["REDIS_URL", "REDIS_CLUSTER_URLS"],
    );
    assert_ne!(running.wait_exit().code(), Some(0));
    running.stderr_with("SESSION_SECRET is 9 bytes; it must be at least 32");
    assert!(!running.printed(), "never listened");
}
