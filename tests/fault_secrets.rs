//! Secrets stay out of the logs: everything every crate in the process logs
//! through `tracing` (and `log`), at TRACE level and with span events,
//! during a full scenario over HTTP (login, writes, a conflict, a tampered
//! blob, a Redis outage, bad cookies, revocation, logout) is captured and
//! searched for every token (and its secret part), every session id and key
//! name, the signing secret and every sealed blob (raw bytes, hex, base64).
//!
//! The subscriber is global, so this file holds this one test.

mod common;
#[path = "common/faults.rs"]
mod faults;
#[path = "common/http.rs"]
mod http;

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use reqwest::header::COOKIE;
use serde_json::json;
use tokio::task::JoinSet;
use tower_redis_sessions::store::{SaveOutcome, SessionStore, Token};
use tower_redis_sessions::{Keyring, StoreConfig};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::prelude::*;

use common::{RedisServer, ServerOptions};
use faults::{FAST, demo_on};
use http::{Browser, Server, bare_client, invented_token, session_key};

const PREFIX: &str = "sec:";
const SIGNING_SECRET: &str = "the signing secret: never in a log, 0123456789 abcdefgh";

/// An `io::Write` appending to a shared buffer.
struct Sink(Arc<Mutex<Vec<u8>>>);

impl io::Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What must not appear in the logs.
#[derive(Default)]
struct Secrets {
    /// `(what, text)` pairs searched as text.
    texts: BTreeSet<(String, String)>,
    /// Sealed blobs, searched as raw bytes too.
    blobs: Vec<Vec<u8>>,
}

impl Secrets {
    fn text(&mut self, what: &str, text: impl Into<String>) {
        let text = text.into();
        assert!(text.len() >= 8, "too short to search for: {text:?}");
        self.texts.insert((what.to_owned(), text));
    }

    /// A token, its secret part, its session id (base64url and hex) and
    /// its Redis key.
    fn token(&mut self, prefix: &str, token: &str) {
        self.text("token", token);
        let (_, secret) = token.split_once('.').unwrap();
        self.text("token secret", secret);
        let id = token.parse::<Token>().unwrap().id().to_string();
        self.text("session id", &id);
        let raw = URL_SAFE_NO_PAD.decode(&id).unwrap();
        self.text("session id (hex)", hex(&raw));
        self.text("session id (base64)", STANDARD_NO_PAD.encode(&raw));
        self.text("session key", session_key(prefix, token));
    }

    /// A sealed blob: raw, hex and base64 (searched in pieces, in case a
    /// log line holds part of one).
    fn blob(&mut self, blob: Vec<u8>) {
        for (what, encoded) in [
            ("blob (hex)", hex(&blob)),
            ("blob (base64)", STANDARD.encode(&blob)),
            ("blob (base64url)", URL_SAFE.encode(&blob)),
        ] {
            for start in (0..encoded.len().saturating_sub(32)).step_by(16) {
                self.text(what, &encoded[start..start + 32]);
            }
        }
        self.blobs.push(blob);
    }
}

impl Secrets {
    /// Where `logs` holds any of these secrets, one line per find.
    fn find_in(&self, logs: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(logs);
        let mut found = Vec::new();
        for (what, secret) in &self.texts {
            if let Some(at) = text.find(secret.as_str()) {
                let line = text[..at].rsplit('\n').next().unwrap_or("");
                found.push(format!("{what} {secret:?} in a line starting {line:?}"));
            }
        }
        let pieces: HashSet<&[u8]> = self.blobs.iter().flat_map(|b| b.windows(16)).collect();
        if let Some(piece) = logs.windows(16).find(|w| pieces.contains(w)) {
            found.push(format!("16 raw bytes of a sealed blob: {piece:?}"));
        }
        found
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Notes `browser`'s current token and its session's blob.
fn note(secrets: &mut Secrets, server: &RedisServer, browser: &Browser) {
    if let Some(token) = browser.token() {
        secrets.token(PREFIX, &token);
        if let Some(blob) = blob_of(server, &session_key(PREFIX, &token)) {
            secrets.blob(blob);
        }
    }
}

fn blob_of(server: &RedisServer, key: &str) -> Option<Vec<u8>> {
    server
        .cmd_bytes(&[b"HGET", key.as_bytes(), b"b"])
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_hold_no_token_key_secret_or_blob() {
    let captured = Arc::new(Mutex::new(Vec::new()));
    let sink = captured.clone();
    // Everything at TRACE, except the test's own HTTP client (reqwest and
    // its cookie jar, which logs the Set-Cookie headers it receives): it
    // runs in this process only because the test drives the server.
    let client_side = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("reqwest", LevelFilter::OFF)
        .with_target("cookie_store", LevelFilter::OFF);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_span_events(FmtSpan::FULL)
                .with_ansi(false)
                .with_writer(move || Sink(sink.clone()))
                .with_filter(client_side),
        )
        .try_init()
        .expect("the first subscriber of this test binary");

    let mut secrets = Secrets::default();
    secrets.text("signing secret", SIGNING_SECRET);
    secrets.text("signing secret (hex)", hex(SIGNING_SECRET.as_bytes()));
    secrets.text(
        "signing secret (base64)",
        STANDARD.encode(SIGNING_SECRET.as_bytes()),
    );
    // Sessions survive the outage below, so the scenario goes on with them.
    let mut server = RedisServer::start_with(ServerOptions {
        appendonly: true,
        ..ServerOptions::default()
    });
    let store = Arc::new(
        FAST.builder(StoreConfig::new(Keyring::new(SIGNING_SECRET).unwrap()).prefix(PREFIX))
            .connect(&server.url())
            .await
            .unwrap(),
    );
    let web = Server::start(demo_on(&store)).await;
    let a = Browser::new(&web);
    let b = Browser::new(&web);

    // Writes, login, a second session of the same user.
    assert_eq!(a.post("/api/incr/n").await.status(), 200);
    note(&mut secrets, &server, &a);
    a.login("ada").await;
    note(&mut secrets, &server, &a);
    assert_eq!(a.post("/api/incr/n").await.status(), 200);
    note(&mut secrets, &server, &a);
    b.login("ada").await;
    note(&mut secrets, &server, &b);
    assert_eq!(a.get("/api/sessions").await.status(), 200);

    // Conflicts: concurrent writes of one session, and a stale save.
    let mut burst = JoinSet::new();
    for _ in 0..8 {
        let a = a.clone();
        burst.spawn(async move { a.post("/api/incr/n").await.status() });
    }
    while let Some(status) = burst.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    note(&mut secrets, &server, &a);
    let token: Token = a.token().unwrap().parse().unwrap();
    let stale = store.load(&token).await.unwrap().unwrap();
    assert_eq!(a.post("/api/incr/n").await.status(), 200);
    assert!(matches!(
        store.save(&token, &stale).await.unwrap(),
        SaveOutcome::Conflict(_)
    ));
    assert!(store.stats().conflicts >= 1);
    note(&mut secrets, &server, &a);

    // Bad cookies: malformed, and well formed but unknown.
    let bare = bare_client();
    let unknown = invented_token(9);
    secrets.token(PREFIX, &unknown);
    for cookie in [
        "session=not-a-token".to_owned(),
        format!("session={unknown}"),
        format!("session={}x", a.token().unwrap()),
    ] {
        let r = bare
            .get(web.url("/api/session"))
            .header(COOKIE, cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // A tampered blob: rejected, logged, and the client starts afresh.
    let b_key = session_key(PREFIX, &b.token().unwrap());
    let mut tampered = blob_of(&server, &b_key).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    secrets.blob(tampered.clone());
    server.cmd_bytes(&[b"HSET", b_key.as_bytes(), b"b", &tampered]);
    assert_eq!(b.session().await, json!({ "user": null, "data": {} }));
    assert!(store.stats().rejected_blobs >= 1);

    // An outage: 503s, logged; then Redis is back with the sessions.
    server.stop();
    assert_eq!(a.post("/api/incr/n").await.status(), 503);
    assert_eq!(a.get("/api/session").await.status(), 503);
    tokio::task::block_in_place(|| server.restart());
    assert_eq!(a.post("/api/incr/n").await.status(), 200);
    note(&mut secrets, &server, &a);

    // Log out everywhere else, then log out.
    let c = Browser::new(&web);
    c.login("ada").await;
    note(&mut secrets, &server, &c);
    assert_eq!(a.post("/api/sessions/revoke-others").await.status(), 200);
    note(&mut secrets, &server, &a);
    assert_eq!(a.post("/api/logout").await.status(), 200);
    assert_eq!(c.session().await, json!({ "user": null, "data": {} }));

    // Search everything logged meanwhile.
    let logs = captured.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&logs);
    eprintln!(
        "captured {} bytes, {} lines of logs; searched for {} strings and {} blobs",
        logs.len(),
        text.lines().count(),
        secrets.texts.len(),
        secrets.blobs.len()
    );
    let targets: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|t| t.ends_with(':'))
        .collect();
    eprintln!("targets that logged: {targets:?}");
    for needle in [
        "stored session rejected",
        "session operation failed",
        "registered the session function library",
        "Redis unreachable",
    ] {
        assert!(text.contains(needle), "expected a log line with {needle:?}");
    }
    let found = secrets.find_in(&logs);
    assert!(
        found.is_empty(),
        "secrets in the logs:\n{}",
        found.join("\n")
    );

    // The search itself finds what it looks for: a canary token and blob,
    // logged on purpose after the scenario.
    let mut canary = Secrets::default();
    let token = invented_token(77);
    canary.token(PREFIX, &token);
    canary.blob(b"\x01\x02 a sealed blob stand-in of some length \xfe\xff".to_vec());
    assert!(canary.find_in(&logs).is_empty());
    tracing::trace!(target: "canary", "{token} {}", session_key(PREFIX, &token));
    tracing::trace!(target: "canary", "{}", hex(&canary.blobs[0]));
    let logs = captured.lock().unwrap().clone();
    let mut logs_raw = logs.clone();
    logs_raw.extend_from_slice(&canary.blobs[0]);
    let found = canary.find_in(&logs_raw);
    assert!(
        found.iter().any(|f| f.starts_with("token secret")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|f| f.starts_with("session key")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|f| f.starts_with("blob (hex)")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|f| f.starts_with("16 raw bytes")),
        "{found:?}"
    );
}
