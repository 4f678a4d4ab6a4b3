//! With the `metrics` feature, store operations reach the `metrics` facade.
//! A binary of its own: the recorder is process-global, so no other test may
//! run store operations beside this one.
#![cfg(feature = "metrics")]

mod common;

use tower_redis_sessions::store::{Record, SessionStore};
use tower_redis_sessions::{RedisStore, StoreConfig};

use common::shared_server;
use common::stores::{test_keyring, unique_prefix};

/// With the `metrics` feature, the same through the `metrics` facade.
#[tokio::test]
async fn metrics_count_operations_by_op_and_outcome() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).unwrap();

    let config = StoreConfig::new(test_keyring()).prefix(unique_prefix("metrics"));
    let store = RedisStore::connect(&shared_server().url(), config)
        .await
        .unwrap();
    let token = store.new_token(None).unwrap();
    store.load(&token).await.unwrap();
    store.load(&token).await.unwrap();
    let record = Record::new(token.id(), "web", store.now());
    store.save(&token, &record).await.unwrap();

    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |op: &str, outcome: &str| {
        snapshot.iter().find_map(|(key, _, _, value)| {
            let k = key.key();
            let labels: Vec<(String, String)> = k
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (k.name() == "tower_redis_sessions_store_operations_total"
                && labels.contains(&("op".into(), op.into()))
                && labels.contains(&("outcome".into(), outcome.into())))
            .then_some(match value {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
        })
    };
    assert_eq!(counter("load", "miss"), Some(2), "{snapshot:?}");
    assert_eq!(counter("save", "saved"), Some(1), "{snapshot:?}");
    assert!(
        snapshot
            .iter()
            .any(|(k, _, _, _)| k.key().name() == "tower_redis_sessions_store_operation_seconds"),
        "the latency histogram"
    );
}
