//! Two demo processes behind one "load balancer" (the test sends each
//! request to the one it picks), sharing one Redis and one secret, each
//! with the near cache on (the crate's default): increments alternating
//! between them lose nothing, and a logout or a revocation of the other
//! sessions made through one is seen by the other within `max_staleness`,
//! although it had the sessions cached. Runs the compiled demo.

mod common;
#[path = "common/process.rs"]
mod process;

use std::time::{Duration, Instant};

use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};

use common::RedisServer;
use process::App;

const STALENESS: Duration = Duration::from_millis(200);

fn start_demo(redis: &RedisServer) -> (App, String) {
    let url = redis.url();
    let app = App::start(
        "demo",
        &[
            ("BIND", "127.0.0.1:0"),
            ("REDIS_URL", &url),
            (
                "SESSION_SECRET",
                "two demos, one deployment: the same secret",
            ),
            ("SESSION_MAX_STALENESS_MS", "200"),
        ],
        &[
            "REDIS_CLUSTER_URLS",
            "REDIS_SENTINELS",
            "REDIS_SENTINEL_MASTER",
            "SESSION_NEAR_CACHE",
        ],
    );
    let base = app.wait_listening();
    (app, base)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The session token a response sets, if any (empty: cleared).
fn set_token(response: &reqwest::Response) -> Option<String> {
    response.headers().get_all(SET_COOKIE).iter().find_map(|v| {
        let cookie = cookie::Cookie::parse(v.to_str().ok()?.to_owned()).ok()?;
        (cookie.name() == "session").then(|| cookie.value().to_owned())
    })
}

async fn login(http: &reqwest::Client, base: &str, user: &str) -> String {
    let response = http
        .post(format!("{base}/api/login"))
        .json(&json!({ "user": user }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    set_token(&response).expect("a login sets the cookie")
}

async fn session(http: &reqwest::Client, base: &str, token: &str) -> Value {
    let response = http
        .get(format!("{base}/api/session"))
        .header(COOKIE, format!("session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn post(http: &reqwest::Client, base: &str, path: &str, token: &str) -> (u16, Value) {
    let response = http
        .post(format!("{base}{path}"))
        .header(COOKIE, format!("session={token}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Asserts that `base` serves `token`'s session without calling Redis
/// (counted by Redis: no `FCALL` during five reads).
async fn served_from_cache(redis: &RedisServer, http: &reqwest::Client, base: &str, token: &str) {
    let before = redis.commandstats();
    for _ in 0..5 {
        assert!(!session(http, base, token).await["user"].is_null());
    }
    let calls = redis.commandstats().delta_since(&before);
    assert_eq!(
        calls.get("fcall"),
        0,
        "served from the near cache: {calls:?}"
    );
}

/// Reads `token`'s session on `base` until its user is `null`, asserting
/// that no read started `STALENESS` after `ended` still showed `user`.
async fn until_ended(http: &reqwest::Client, base: &str, token: &str, ended: Instant) -> Duration {
    loop {
        let late = ended.elapsed() >= STALENESS;
        let body = session(http, base, token).await;
        if body["user"].is_null() {
            return ended.elapsed();
        }
        assert!(!late, "served after max_staleness: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_processes_with_near_caches_agree() {
    let redis = RedisServer::start();
    let (a, base_a) = start_demo(&redis);
    let (b, base_b) = start_demo(&redis);
    for app in [&a, &b] {
        assert!(
            app.stderr_with("near cache on").contains("near cache on"),
            "the demo runs with the near cache"
        );
    }
    let http = client();
    let bases = [base_a.as_str(), base_b.as_str()];

    // Increments alternating between the two processes: each reads what
    // the other wrote (its cache learns of the other's save), none is lost.
    let token = login(&http, &base_a, "ada").await;
    for i in 1..=40 {
        let (status, body) = post(&http, bases[i % 2], "/api/incr/n", &token).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["value"], json!(i), "increment {i} on app {}", i % 2);
    }
    for base in bases {
        assert_eq!(session(&http, base, &token).await["data"]["n"], json!(40));
    }

    // A logout through A, while B has the session cached.
    assert_eq!(session(&http, &base_b, &token).await["user"], json!("ada"));
    served_from_cache(&redis, &http, &base_b, &token).await;
    let (status, _) = post(&http, &base_a, "/api/logout", &token).await;
    assert_eq!(status, 200);
    let logout = until_ended(&http, &base_b, &token, Instant::now()).await;

    // Revoking the other sessions through A, while B has them cached.
    let mine = login(&http, &base_a, "grace").await;
    let others = [
        login(&http, &base_b, "grace").await,
        login(&http, &base_a, "grace").await,
    ];
    for other in &others {
        assert_eq!(session(&http, &base_b, other).await["user"], json!("grace"));
        served_from_cache(&redis, &http, &base_b, other).await;
    }
    let (status, body) = post(&http, &base_a, "/api/sessions/revoke-others", &mine).await;
    assert_eq!(status, 200, "{body}");
    let ended = Instant::now();
    let mut revoked = Vec::new();
    for other in &others {
        revoked.push(until_ended(&http, &base_b, other, ended).await);
    }
    assert_eq!(session(&http, &base_b, &mine).await["user"], json!("grace"));
    eprintln!(
        "[two demo processes] 40 alternating increments, none lost; seen by the other \
         process after: logout {logout:?}, revoke-others {revoked:?}"
    );
}
