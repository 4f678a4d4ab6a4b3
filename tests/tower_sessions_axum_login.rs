//! axum-login 0.18 over tower-sessions 0.14 over real HTTP and real Redis
//! (single and cluster), with the app of `examples/axum_login.rs`: login, a
//! `login_required!` route, logout, a second device listed and revoked
//! through the axum-login index (the revoked device is no longer
//! authenticated), and 503 while Redis is down.
#![cfg(feature = "tower-sessions")]

mod common;
#[allow(dead_code)]
#[path = "../examples/axum_login.rs"]
mod example;

use std::sync::Arc;
use std::time::Duration;

use reqwest::cookie::{CookieStore, Jar};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower_redis_sessions::tower_sessions::TowerSessionsStore;
use tower_redis_sessions::{Keyring, RedisStore, StoreConfig};

use common::stores::unique_prefix;
use common::{RedisServer, shared_cluster, shared_server};

struct App {
    base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(store: TowerSessionsStore) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = example::app(store, false);
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    App { base, task }
}

/// A client keeping cookies, like a browser on one device.
struct Device {
    http: reqwest::Client,
    jar: Arc<Jar>,
    base: String,
}

impl Device {
    fn new(app: &App) -> Device {
        let jar = Arc::new(Jar::default());
        let http = reqwest::Client::builder()
            .no_proxy()
            .cookie_provider(jar.clone())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Device {
            http,
            jar,
            base: app.base.clone(),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut request = self.http.post(format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    async fn login(&self, user: &str, password: &str) -> u16 {
        self.post(
            "/login",
            Some(json!({"username": user, "password": password})),
        )
        .await
        .status()
        .as_u16()
    }

    async fn me(&self) -> (u16, String) {
        let response = self.get("/me").await;
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// The session cookie's value (tower-sessions' id).
    fn cookie(&self) -> Option<String> {
        let url = self.base.parse().unwrap();
        let header = self.jar.cookies(&url)?;
        header
            .to_str()
            .unwrap()
            .split("; ")
            .find_map(|c| c.strip_prefix("id=").map(str::to_owned))
    }
}

fn config() -> StoreConfig {
    StoreConfig::new(Keyring::new([5u8; 32]).unwrap().encrypt_records(true))
        .prefix(unique_prefix("tsal"))
}

async fn login_list_revoke(store: TowerSessionsStore) {
    let app = serve(store.with_axum_login_index()).await;
    let phone = Device::new(&app);
    assert_eq!(phone.me().await.0, 401, "login_required! guards /me");
    assert_eq!(phone.login("alice", "wrong").await, 401);
    assert_eq!(phone.login("alice", "wonderland").await, 200);
    assert_eq!(phone.me().await, (200, "hello alice\n".to_owned()));
    let phone_id = phone.cookie().unwrap();

    let laptop = Device::new(&app);
    assert_eq!(laptop.login("alice", "wonderland").await, 200);
    assert_eq!(laptop.me().await.0, 200);
    let bob = Device::new(&app);
    assert_eq!(bob.login("bob", "builder").await, 200);

    // The phone sees alice's two devices (not bob's), itself marked.
    let listed: Vec<Value> = phone.get("/sessions").await.json().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(
        listed
            .iter()
            .filter(|s| s["current"] == json!(true))
            .count(),
        1
    );
    // Signing out the other devices: the laptop is no longer authenticated.
    let revoked: Value = phone
        .post("/sessions/revoke-others", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(revoked, json!({"revoked": 1}));
    assert_eq!(laptop.me().await.0, 401, "the revoked device is logged out");
    assert_eq!(phone.me().await.0, 200);
    assert_eq!(phone.cookie().unwrap(), phone_id);
    assert_eq!(
        bob.me().await.0,
        200,
        "another user's sessions are untouched"
    );

    // The laptop logs in again and is revoked by its handle.
    assert_eq!(laptop.login("alice", "wonderland").await, 200);
    let listed: Vec<Value> = phone.get("/sessions").await.json().await.unwrap();
    let other = listed
        .iter()
        .find(|s| s["current"] == json!(false))
        .unwrap();
    let handle = other["handle"].as_str().unwrap();
    let response = phone
        .http
        .delete(format!("{}/sessions/{handle}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(laptop.me().await.0, 401);
    // Bob cannot revoke alice's session by handle: it is not his.
    assert_eq!(laptop.login("alice", "wonderland").await, 200);
    let listed: Vec<Value> = laptop.get("/sessions").await.json().await.unwrap();
    let mine = listed.iter().find(|s| s["current"] == json!(true)).unwrap();
    let response = bob
        .http
        .delete(format!(
            "{}/sessions/{}",
            app.base,
            mine["handle"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(laptop.me().await.0, 200);

    // Logout ends the session and leaves the index.
    assert_eq!(phone.post("/logout", None).await.status(), 200);
    assert_eq!(phone.me().await.0, 401);
    let listed: Vec<Value> = laptop.get("/sessions").await.json().await.unwrap();
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn login_list_revoke_logout_on_a_single_redis() {
    let store = RedisStore::builder(config())
        .connect_tower_sessions(&shared_server().url())
        .await
        .unwrap();
    login_list_revoke(store).await;
}

#[tokio::test]
async fn login_list_revoke_logout_on_a_cluster() {
    let store = RedisStore::builder(config())
        .connect_tower_sessions_cluster(shared_cluster().urls())
        .await
        .unwrap();
    login_list_revoke(store).await;
}

#[tokio::test]
async fn redis_down_answers_503_not_500() {
    let mut server = RedisServer::start();
    let store = RedisStore::builder(config())
        .pool_size(1)
        .connect_timeout(Duration::from_millis(300))
        .connect_tower_sessions(&server.url())
        .await
        .unwrap();
    let app = serve(store.with_axum_login_index()).await;
    let phone = Device::new(&app);
    assert_eq!(phone.login("alice", "wonderland").await, 200);
    server.stop();
    // axum-login cannot load the session: it answers 500, the outage layer
    // makes it 503.
    assert_eq!(phone.me().await.0, 503);
    assert_eq!(phone.login("bob", "builder").await, 503);
    // The test server keeps no data across a restart: the session is gone,
    // and signing in works again (the library is registered again).
    server.restart();
    assert_eq!(phone.me().await.0, 401);
    assert_eq!(phone.login("alice", "wonderland").await, 200);
    assert_eq!(phone.me().await.0, 200);
}

/// Plain tower-sessions (no axum-login): a handler that reads its session
/// while Redis is down fails inside tower-sessions' `Session`; the handler
/// answers 503 by testing the error with `is_unavailable`, and tower-sessions'
/// own 500 for a failed end-of-request save becomes 503 under
/// `StoreOutageLayer` (and stays 500 without it).
#[tokio::test]
async fn tower_sessions_answers_500_and_the_outage_layer_503() {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use tower_redis_sessions::tower_sessions::{StoreOutageLayer, is_unavailable};
    use tower_sessions::{Session, SessionManagerLayer, session};

    async fn read(session: Session) -> StatusCode {
        match session.get::<u64>("n").await {
            Ok(_) => StatusCode::OK,
            Err(session::Error::Store(e)) if is_unavailable(&e) => StatusCode::SERVICE_UNAVAILABLE,
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
    // Writes without reading: the store is first met by the final save.
    async fn write(session: Session) -> StatusCode {
        match session.insert("n", 1u64).await {
            Ok(()) => StatusCode::OK,
            Err(_) => StatusCode::IM_A_TEAPOT,
        }
    }

    let mut server = RedisServer::start();
    let store = RedisStore::builder(config())
        .pool_size(1)
        .connect_timeout(Duration::from_millis(300))
        .connect_tower_sessions(&server.url())
        .await
        .unwrap();
    let routes = || {
        Router::new()
            .route("/read", get(read))
            .route("/write", post(write))
    };
    let layer = SessionManagerLayer::new(store).with_secure(false);
    let bare = routes().layer(layer.clone());
    let wrapped = routes().layer(layer).layer(StoreOutageLayer::new());
    server.stop();
    for (router, save_status) in [(bare, 500), (wrapped, 503)] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        // A cookie, so the read has a session to load.
        let cookie = "id=AAAAAAAAAAAAAAAAAAAAAA";
        let read = http
            .get(format!("{base}/read"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 503);
        let write = http.post(format!("{base}/write")).send().await.unwrap();
        assert_eq!(write.status().as_u16(), save_status);
        task.abort();
    }
}
