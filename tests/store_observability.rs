//! What a store tells an operator: one `session_store` span per operation
//! (operation, outcome, attempts, duration; never a token, an id or a
//! value), the counters of `StoreStats`, and with the `metrics` feature the
//! same through the `metrics` facade. Against a real Redis.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore};
use tower_redis_sessions::{RedisStore, StoreConfig, StoreError};
use tracing_subscriber::fmt::format::FmtSpan;

use common::stores::{test_keyring, unique_prefix};
use common::{RedisServer, shared_server};

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn store() -> RedisStore {
    let config = StoreConfig::new(test_keyring()).prefix(unique_prefix("obs"));
    RedisStore::connect(&shared_server().url(), config)
        .await
        .unwrap()
}

/// The closed `session_store` spans in `log`, as `op=outcome` pairs, in order.
fn closed_spans(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            l.contains("session_store{") && l.ends_with("close")
                || l.contains("session_store{") && l.contains(": close")
        })
        .map(|l| {
            let field = |name: &str| {
                let start = l.find(&format!("{name}=")).map(|i| i + name.len() + 1)?;
                let rest = &l[start..];
                let end = rest.find([' ', '}']).unwrap_or(rest.len());
                Some(rest[..end].trim_matches('"').to_owned())
            };
            assert!(field("attempts").is_some(), "attempts in {l}");
            assert!(field("duration_us").is_some(), "duration in {l}");
            format!("{}={}", field("op").unwrap(), field("outcome").unwrap())
        })
        .collect()
}

/// Every operation has its span, with the outcome it had; nothing in the
/// output names the token, the session id or a value.
#[tokio::test(flavor = "current_thread")]
async fn every_operation_has_a_span_with_its_outcome() {
    let lines = Lines::default();
    let sink = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = store().await;
    let token = store.new_token(Some("ada")).unwrap();
    let mut record = Record::new(token.id(), "web", store.now());
    record.user = Some("ada".into());
    record
        .data
        .insert("secret".into(), ciborium::Value::Text("hunter2".into()));
    assert!(store.load(&token).await.unwrap().is_none());
    let SaveOutcome::Saved { version } = store.save(&token, &record).await.unwrap() else {
        panic!("first save")
    };
    assert!(matches!(
        store.save(&token, &record).await.unwrap(),
        SaveOutcome::Conflict(_)
    ));
    assert!(store.load(&token).await.unwrap().is_some());
    assert_eq!(store.list("ada", None).await.unwrap().len(), 1);
    record.version = version;
    assert!(store.delete(&token).await.unwrap());
    assert_eq!(
        store.save(&token, &record).await.unwrap(),
        SaveOutcome::Gone
    );

    let log = lines.text();
    assert_eq!(
        closed_spans(&log),
        [
            "load=miss",
            "save=saved",
            "save=conflict",
            "load=hit",
            "list=ok",
            "delete=deleted",
            "save=gone",
        ],
        "{log}"
    );
    for secret in [
        token.to_string(),
        token.id().to_string(),
        "hunter2".to_owned(),
    ] {
        assert!(!log.contains(&secret), "{secret} in the log:\n{log}");
    }

    stats_count_operations_and_outages_and_clones_share_them().await;
}

/// `StoreStats` counts operations and the unavailable ones; clones share
/// the counters (and everything else). (Not a test of its own: `tracing`
/// caches per call site whether anyone listens, and a second test running
/// store calls on another thread can race the span test's capture.)
async fn stats_count_operations_and_outages_and_clones_share_them() {
    let store = store().await;
    let clone = store.clone();
    let token = store.new_token(None).unwrap();
    let before = store.stats();
    clone.load(&token).await.unwrap();
    store.load(&token).await.unwrap();
    let after = store.stats();
    assert_eq!(after.operations - before.operations, 2);
    assert_eq!(after.unavailable, before.unavailable);

    let mut server = RedisServer::start();
    let lazy = RedisStore::builder(StoreConfig::new(test_keyring()))
        .lazy(true)
        .connect(&server.url())
        .await
        .unwrap();
    server.stop();
    let err = lazy.load(&token).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(lazy.stats().unavailable, 1);
    assert_eq!(lazy.stats().operations, 1);
}
