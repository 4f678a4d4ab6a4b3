//! Support for the fault tests (`tests/fault_*.rs`): stores with short
//! timeouts, the latency bound they promise, timed HTTP requests and a log
//! of what clients saw.
//!
//! Not registered in `common/mod.rs`; the fault tests include it after
//! `common` and `http`:
//!
//! ```ignore
//! mod common;
//! #[path = "common/http.rs"]
//! mod http;
//! #[path = "common/faults.rs"]
//! mod faults;
//! ```
#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use tower_redis_sessions::{
    CookieConfig, RedisStore, RedisStoreBuilder, SessionLayer, StoreConfig,
};

use crate::common::RedisServer;
use crate::http::demo_app;

/// Short store timeouts, so that faults show within a fraction of a second.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub wait: Duration,
    pub connect: Duration,
    pub command: Duration,
}

/// What the fault tests use unless they need something else.
pub const FAST: Timeouts = Timeouts {
    wait: Duration::from_millis(250),
    connect: Duration::from_millis(250),
    command: Duration::from_millis(250),
};

/// Added to every latency bound: the tests run on 2 busy cores (other test
/// binaries, Redis, the client and the server share them), so a request may
/// be scheduled late. Still far below anything that could pass for a hang
/// (the HTTP client gives up after 30 s).
pub const SLACK: Duration = Duration::from_millis(1500);

impl Timeouts {
    /// The documented bound on a failing store operation (see the
    /// `RedisStore` docs): `wait + 2 x (connect + command)`.
    pub fn operation_bound(&self) -> Duration {
        self.wait + 2 * (self.connect + self.command)
    }

    /// A builder with these timeouts.
    pub fn builder(&self, config: StoreConfig) -> RedisStoreBuilder {
        RedisStore::builder(config)
            .wait_timeout(self.wait)
            .connect_timeout(self.connect)
            .command_timeout(self.command)
    }
}

/// The demo served by one app process: its store, under its own key prefix,
/// and its web server.
pub struct DemoApp {
    pub store: Arc<RedisStore>,
    pub web: crate::http::Server,
    pub prefix: String,
}

/// Connects a store to the Redis at `url` with the settings `build` adds to
/// a builder (timeouts, pool size), under a fresh prefix named after
/// `label`, and serves the demo on it: the setup every fault test shares.
pub async fn demo_over(
    url: &str,
    label: &str,
    build: impl FnOnce(StoreConfig) -> RedisStoreBuilder,
) -> DemoApp {
    let prefix = crate::http::unique_prefix(label);
    let store = Arc::new(
        build(crate::http::config(&prefix))
            .connect(url)
            .await
            .unwrap(),
    );
    let web = crate::http::Server::start(demo_on(&store)).await;
    DemoApp { store, web, prefix }
}

/// The demo's routes behind a layer on `store` (plain HTTP, so no `Secure`).
pub fn demo_on(store: &Arc<RedisStore>) -> Router {
    demo_app::routes()
        .layer(SessionLayer::shared(store.clone()).cookie(CookieConfig::default().secure(false)))
}

/// Whether `server` has the function library `name`.
pub fn has_library(server: &RedisServer, name: &str) -> bool {
    let reply = server.cmd_bytes(&[b"FUNCTION", b"LIST", b"LIBRARYNAME", name.as_bytes()]);
    !reply
        .as_array()
        .expect("FUNCTION LIST is an array")
        .is_empty()
}

/// One request as a client saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Which loop sent it.
    pub client: String,
    /// When it was sent and when its answer arrived, from the log's origin.
    pub sent: Duration,
    pub done: Duration,
    pub status: u16,
}

impl Seen {
    pub fn latency(&self) -> Duration {
        self.done - self.sent
    }
}

/// What clients saw, with times relative to one origin, plus marks for the
/// faults injected meanwhile.
#[derive(Clone)]
pub struct Log {
    origin: Instant,
    seen: Arc<Mutex<Vec<Seen>>>,
    marks: Arc<Mutex<BTreeMap<&'static str, Duration>>>,
}

impl Default for Log {
    fn default() -> Self {
        Log::new()
    }
}

impl Log {
    pub fn new() -> Log {
        Log {
            origin: Instant::now(),
            seen: Arc::default(),
            marks: Arc::default(),
        }
    }

    /// Time since the origin.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Sends the request `send` makes and records its status and timing.
    pub async fn request<F>(&self, client: &str, send: F) -> (u16, reqwest::Response)
    where
        F: Future<Output = reqwest::Response>,
    {
        let sent = self.now();
        let response = send.await;
        let done = self.now();
        let status = response.status().as_u16();
        self.seen.lock().unwrap().push(Seen {
            client: client.to_owned(),
            sent,
            done,
            status,
        });
        (status, response)
    }

    /// Notes that `what` happened now.
    pub fn mark(&self, what: &'static str) -> Duration {
        let at = self.now();
        self.marks.lock().unwrap().insert(what, at);
        at
    }

    pub fn at(&self, what: &'static str) -> Duration {
        self.marks.lock().unwrap()[what]
    }

    /// Every request recorded so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Requests whose client name starts with `prefix`, sent in `[from, to)`.
pub fn sent_between<'a>(
    seen: &'a [Seen],
    prefix: &'a str,
    from: Duration,
    to: Duration,
) -> impl Iterator<Item = &'a Seen> + 'a {
    seen.iter()
        .filter(move |s| s.client.starts_with(prefix) && s.sent >= from && s.sent < to)
}

/// Status counts, for messages and reports.
pub fn statuses<'a>(seen: impl IntoIterator<Item = &'a Seen>) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for s in seen {
        *counts.entry(s.status).or_insert(0) += 1;
    }
    counts
}

/// The longest latency among `seen` (zero if none).
pub fn max_latency<'a>(seen: impl IntoIterator<Item = &'a Seen>) -> Duration {
    seen.into_iter()
        .map(Seen::latency)
        .max()
        .unwrap_or_default()
}

/// A TCP proxy in front of a Redis that can lose the reply to one command:
/// it forwards the command, lets Redis execute it, throws the reply away
/// and closes the client's connection, as when Redis dies right after a
/// write. It can then also refuse the next connections (Redis still down).
pub struct LossyProxy {
    pub port: u16,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    /// Lose the reply to the next request containing these bytes.
    armed: Mutex<Option<Vec<u8>>>,
    /// Connections to close at once, after a reply was lost.
    refuse_after_loss: std::sync::atomic::AtomicUsize,
    refusing: std::sync::atomic::AtomicUsize,
    lost: std::sync::atomic::AtomicUsize,
    /// Hold the first connection accepted after a reply was lost.
    hold_after_loss: std::sync::atomic::AtomicBool,
    holding: std::sync::atomic::AtomicBool,
    /// Connections accepted and held so far (each waits for `released`).
    held: std::sync::atomic::AtomicUsize,
    held_changed: tokio::sync::Notify,
    released: OnceReleased,
}

/// A gate held connections wait at; opened once, for good.
struct OnceReleased(tokio::sync::watch::Sender<bool>);

impl Default for OnceReleased {
    fn default() -> Self {
        OnceReleased(tokio::sync::watch::channel(false).0)
    }
}

impl LossyProxy {
    pub async fn start(redis_port: u16) -> LossyProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let refusing = shared.refusing.load(Ordering::SeqCst);
                if refusing > 0 {
                    shared.refusing.store(refusing - 1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                if shared.holding.swap(false, Ordering::SeqCst) {
                    // Accepted, but nothing is forwarded (not even the
                    // handshake) until the test releases it.
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let mut gate = shared.released.0.subscribe();
                        shared.held.fetch_add(1, Ordering::SeqCst);
                        shared.held_changed.notify_waiters();
                        if gate.wait_for(|open| *open).await.is_ok() {
                            relay(client, redis_port, shared.clone()).await;
                        }
                    });
                    continue;
                }
                tokio::spawn(relay(client, redis_port, shared.clone()));
            }
        });
        LossyProxy { port, state, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Loses the reply to the next request containing `needle`; then
    /// refuses the next `refuse` connections.
    pub fn lose_reply_to(&self, needle: &str, refuse: usize) {
        use std::sync::atomic::Ordering;
        self.state.refuse_after_loss.store(refuse, Ordering::SeqCst);
        *self.state.armed.lock().unwrap() = Some(needle.as_bytes().to_vec());
    }

    /// After the next lost reply, holds the first new connection: accepted,
    /// but nothing forwarded either way until [`release`](Self::release).
    /// The store's retry of the lost call then waits there, so a test can
    /// act (another writer saves) at exactly that step.
    pub fn hold_next_connection_after_loss(&self) {
        self.state
            .hold_after_loss
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits until `n` connections in all have been held.
    pub async fn wait_held(&self, n: usize) {
        use std::sync::atomic::Ordering;
        loop {
            // Registered before the check, so a notice in between is not missed.
            let changed = self.state.held_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.state.held.load(Ordering::SeqCst) >= n {
                return;
            }
            changed.await;
        }
    }

    /// Lets held connections through (and any held later).
    pub fn release(&self) {
        self.state.released.0.send_replace(true);
    }

    /// How many replies were lost so far.
    pub fn lost(&self) -> usize {
        self.state.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops refusing connections.
    pub fn heal(&self) {
        self.state
            .refusing
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: tokio::net::TcpStream, redis_port: u16, state: Arc<ProxyState>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let lose_next = Arc::new(AtomicBool::new(false));
    let lose = lose_next.clone();
    let up_state = state.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            {
                let mut armed = up_state.armed.lock().unwrap();
                if let Some(needle) = armed.as_ref()
                    && buf[..n]
                        .windows(needle.len())
                        .any(|w| w == needle.as_slice())
                {
                    *armed = None;
                    lose.store(true, Ordering::SeqCst);
                }
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if lose_next.load(Ordering::SeqCst) {
            // Redis executed the command; its reply goes nowhere, and the
            // client's connection drops (as if Redis had died).
            let refuse = state.refuse_after_loss.swap(0, Ordering::SeqCst);
            state.refusing.store(refuse, Ordering::SeqCst);
            if state.hold_after_loss.swap(false, Ordering::SeqCst) {
                state.holding.store(true, Ordering::SeqCst);
            }
            state.lost.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    up.abort();
}
