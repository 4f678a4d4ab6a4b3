//! HTTP support for the end-to-end tests of the layer (`tests/layer_*.rs`):
//! an in-process server on a loopback port, a cookie-keeping client, the demo
//! app on any store, and Redis key and round-trip checks.
//!
//! Not registered in `common/mod.rs`, so that the other test binaries do not
//! compile axum, reqwest and the demo: the layer tests include it with
//!
//! ```ignore
//! mod common;
//! #[path = "common/http.rs"]
//! mod http;
//! ```
#![allow(dead_code, unused_imports)]

#[path = "../../examples/demo/app.rs"]
pub mod demo_app;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use reqwest::cookie::{CookieStore as _, Jar};
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower_redis_sessions::store::{SessionStore, Token};
use tower_redis_sessions::{
    CookieConfig, Keyring, MemoryStore, RedisStore, SessionLayer, StoreConfig, StoreStats,
};

use crate::common::{CommandStats, RedisCluster, RedisServer};

/// Asserts that `delta` is exactly `fcalls` round trips: that many `FCALL`s
/// and, besides them, only commands the library runs internally. Zero means
/// no command at all.
#[track_caller]
pub fn assert_round_trips(delta: &CommandStats, fcalls: u64, what: &str) {
    if fcalls == 0 {
        assert_eq!(
            delta,
            &CommandStats::default(),
            "{what}: expected no Redis command at all"
        );
        return;
    }
    assert_eq!(
        delta.get("fcall"),
        fcalls,
        "{what}: expected {fcalls} FCALL(s), got {delta:?}"
    );
    let extra = delta.client_commands_besides_fcall();
    assert!(
        extra.is_empty(),
        "{what}: client commands besides FCALL: {extra:?} in {delta:?}"
    );
}

/// A key prefix no other test (or run) shares.
pub fn unique_prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "e2e:{test}:{}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn config(prefix: &str) -> StoreConfig {
    StoreConfig::new(Keyring::generate().unwrap()).prefix(prefix)
}

/// The Redis key of the session `token` opens: `<prefix>{<tag>}:s:<id>`.
pub fn session_key(prefix: &str, token: &str) -> String {
    let parsed: Token = token.parse().expect("a well-formed token");
    format!("{prefix}{{{}}}:s:{}", &token[..8], parsed.id())
}

/// The near cache the Redis stores run with: off when
/// `TRS_TEST_NEAR_CACHE=0` (so every suite can run without it too), else
/// the crate's default (on).
pub fn near_cache_from_env() -> tower_redis_sessions::store::NearCache {
    match std::env::var("TRS_TEST_NEAR_CACHE").as_deref() {
        Ok("0") => tower_redis_sessions::store::NearCache::off(),
        _ => tower_redis_sessions::store::NearCache::default(),
    }
}

/// Where the tests' sessions live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Standalone,
    Cluster,
}

/// A store of any kind, kept by the test for its counters.
#[derive(Clone)]
pub enum Store {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

impl Store {
    pub async fn connect(backend: Backend, prefix: &str) -> Store {
        match backend {
            Backend::Memory => Store::Memory(Arc::new(MemoryStore::new(config(prefix)))),
            Backend::Standalone => Store::Redis(Arc::new(
                RedisStore::builder(config(prefix))
                    .near_cache(near_cache_from_env())
                    .connect(&crate::common::shared_server().url())
                    .await
                    .unwrap(),
            )),
            Backend::Cluster => Store::Redis(Arc::new(
                RedisStore::builder(config(prefix))
                    .near_cache(near_cache_from_env())
                    .connect_cluster(crate::common::shared_cluster().urls())
                    .await
                    .unwrap(),
            )),
        }
    }

    /// A Redis store of `backend` with `config` and the near cache on,
    /// whatever the environment says (two of them with one config are two
    /// application processes of one deployment).
    pub async fn connect_cached(backend: Backend, config: StoreConfig) -> Store {
        let builder =
            RedisStore::builder(config).near_cache(tower_redis_sessions::store::NearCache::new());
        match backend {
            Backend::Memory => panic!("MemoryStore has no near cache"),
            Backend::Standalone => Store::Redis(Arc::new(
                builder
                    .connect(&crate::common::shared_server().url())
                    .await
                    .unwrap(),
            )),
            Backend::Cluster => Store::Redis(Arc::new(
                builder
                    .connect_cluster(crate::common::shared_cluster().urls())
                    .await
                    .unwrap(),
            )),
        }
    }

    pub fn stats(&self) -> StoreStats {
        match self {
            Store::Memory(s) => s.stats(),
            Store::Redis(s) => s.stats(),
        }
    }

    /// The demo's routes behind a layer on this store (the tests' client
    /// speaks plain HTTP, so the cookie is not `Secure`, as in the demo).
    pub fn demo(&self) -> Router {
        self.layer_on(demo_app::routes())
    }

    /// `routes` behind a default layer on this store, except for `Secure`.
    pub fn layer_on(&self, routes: Router) -> Router {
        match self {
            Store::Memory(s) => routes.layer(
                SessionLayer::shared(s.clone()).cookie(CookieConfig::default().secure(false)),
            ),
            Store::Redis(s) => routes.layer(
                SessionLayer::shared(s.clone()).cookie(CookieConfig::default().secure(false)),
            ),
        }
    }
}

/// Every key under `prefix`, on one server or every cluster node.
pub fn redis_keys(backend: Backend, prefix: &str) -> BTreeSet<String> {
    let servers: Vec<&RedisServer> = match backend {
        Backend::Memory => return BTreeSet::new(),
        Backend::Standalone => vec![crate::common::shared_server()],
        Backend::Cluster => crate::common::shared_cluster().nodes().iter().collect(),
    };
    let pattern = format!("{prefix}*");
    servers
        .into_iter()
        .flat_map(|s| keys_on(s, &pattern))
        .collect()
}

/// `KEYS pattern` on one server.
pub fn keys_on(server: &RedisServer, pattern: &str) -> Vec<String> {
    server
        .cmd_bytes(&[b"KEYS", pattern.as_bytes()])
        .unwrap_array()
        .into_iter()
        .map(|r| String::from_utf8(r.unwrap_bytes()).unwrap())
        .collect()
}

/// An in-process server on a free loopback port; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn start(router: Router) -> Server {
        // The layer logs why a request failed: show it with the test's output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_max_level(tracing::Level::WARN)
            .try_init();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Server { addr, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reqwest client for loopback tests: no proxy, a pool large enough for
/// 100+ concurrent requests, a timeout so that a hang fails the test.
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
}

/// A client that keeps cookies, like a browser, bound to one server.
#[derive(Clone)]
pub struct Browser {
    pub http: reqwest::Client,
    pub jar: Arc<Jar>,
    base: String,
}

impl Browser {
    pub fn new(server: &Server) -> Browser {
        let jar = Arc::new(Jar::default());
        let http = client_builder()
            .cookie_provider(jar.clone())
            .build()
            .unwrap();
        Browser {
            http,
            jar,
            base: server.url(""),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.http.post(self.url(path)).send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `POST /api/incr/<key>` of the demo: the status and, for a 200, the
    /// value as stored.
    pub async fn incr(&self, key: &str) -> (u16, Option<i64>) {
        incr_answer(self.post(&format!("/api/incr/{key}")).await).await
    }

    /// `GET /api/session`, asserting a 200.
    pub async fn session(&self) -> Value {
        let response = self.get("/api/session").await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// `POST /api/login`, asserting a 200 and the answer.
    pub async fn login(&self, user: &str) {
        let response = self
            .post_json("/api/login", serde_json::json!({ "user": user }))
            .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, serde_json::json!({ "user": user }));
    }

    /// The session token in the jar, if any.
    pub fn token(&self) -> Option<String> {
        let url = reqwest::Url::parse(&self.base).unwrap();
        let header = self.jar.cookies(&url)?;
        cookie::Cookie::split_parse(header.to_str().unwrap().to_owned())
            .filter_map(Result::ok)
            .find(|c| c.name() == "session")
            .map(|c| c.value().to_owned())
    }

    /// Puts `token` in the jar, as if the server had set it.
    pub fn set_token(&self, token: &str) {
        let url = reqwest::Url::parse(&self.base).unwrap();
        self.jar
            .add_cookie_str(&format!("session={token}; Path=/"), &url);
    }
}

/// The status of a demo `POST /api/incr/..` answer and, for a 200, the value.
pub async fn incr_answer(response: reqwest::Response) -> (u16, Option<i64>) {
    let status = response.status().as_u16();
    let value = if status == 200 {
        response.json::<Value>().await.unwrap()["value"].as_i64()
    } else {
        None
    };
    (status, value)
}

/// A client without cookies, for requests with hand-made headers.
pub fn bare_client() -> reqwest::Client {
    client_builder().build().unwrap()
}

/// `GET /api/session` with `cookie` as the raw `Cookie` header.
pub async fn session_with_cookie(
    http: &reqwest::Client,
    server: &Server,
    cookie: &str,
) -> (u16, Value) {
    let response = http
        .get(server.url("/api/session"))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The `Set-Cookie` headers of a response, parsed.
pub fn set_cookies(response: &reqwest::Response) -> Vec<cookie::Cookie<'static>> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| cookie::Cookie::parse(v.to_str().unwrap().to_owned()).unwrap())
        .collect()
}

/// The one `Set-Cookie` of the session cookie `name`, if any; panics if
/// there are several.
pub fn session_cookie(response: &reqwest::Response, name: &str) -> Option<cookie::Cookie<'static>> {
    let mut found: Vec<_> = set_cookies(response)
        .into_iter()
        .filter(|c| c.name() == name)
        .collect();
    assert!(found.len() <= 1, "several Set-Cookie for {name}: {found:?}");
    found.pop()
}

/// A well-formed token nobody issued: 8 + 1 + 43 base64url characters.
pub fn invented_token(seed: u8) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut state = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut index = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 64) as usize
    };
    let tag: String = (0..8).map(|_| alphabet[index()] as char).collect();
    // 43 characters encode 32 bytes plus 2 bits, which must be zero to be
    // canonical: the last character's index is a multiple of 4.
    let mut secret: String = (0..42).map(|_| alphabet[index()] as char).collect();
    secret.push(alphabet[index() / 4 * 4] as char);
    let token = format!("{tag}.{secret}");
    assert!(
        token.parse::<Token>().is_ok(),
        "{token} must be well formed"
    );
    token
}
