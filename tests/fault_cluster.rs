//! Faults on a Redis Cluster (a private one: the test reshards it): the hash
//! slot of a live session moves to another master while the service runs.
//! The store follows the `ASK` redirects during the migration and the
//! `MOVED` ones after it; the session stays readable and writable.

mod common;
#[path = "common/faults.rs"]
mod faults;
#[path = "common/http.rs"]
mod http;

use std::sync::Arc;

use serde_json::{Value, json};
use tower_redis_sessions::RedisStore;
use tower_redis_sessions::store::{SessionStore, Token};

use common::{RedisCluster, key_slot};
use faults::demo_on;
use http::{Browser, Server, session_key};

async fn incr(browser: &Browser) -> i64 {
    match browser.incr("n").await {
        (200, Some(value)) => value,
        other => panic!("increment answered {other:?}"),
    }
}

/// A logged-in session (its key and its user's index share the slot) moves
/// to another master, with `CLUSTER SETSLOT IMPORTING / MIGRATING`,
/// `MIGRATE ... KEYS` and `CLUSTER SETSLOT NODE`, as `redis-cli --cluster
/// reshard` does. Through every step the same store reads and writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_slot_moves_to_another_master() {
    let cluster = RedisCluster::start();
    let prefix = http::unique_prefix("reshard");
    let store = Arc::new(
        RedisStore::builder(http::config(&prefix))
            .connect_cluster(cluster.urls())
            .await
            .unwrap(),
    );
    let web = Server::start(demo_on(&store)).await;
    let a = Browser::new(&web);
    a.login("ada").await;
    assert_eq!(incr(&a).await, 1);
    assert_eq!(incr(&a).await, 2);
    let token = a.token().unwrap();
    let key = session_key(&prefix, &token);
    let slot = key_slot(key.as_bytes());
    let source = cluster.node_for_slot(slot);
    let target = cluster
        .nodes()
        .iter()
        .find(|n| n.port() != source.port())
        .unwrap();
    let (source_id, target_id) = (source.node_id(), target.node_id());
    let moved = source.keys_in_slot(slot);
    assert_eq!(moved.len(), 2, "the session and ada's index: {moved:?}");
    assert!(moved.contains(&key));

    // Migration begins: the keys are still on the source, which serves them.
    target.setslot(slot, &["IMPORTING", &source_id]);
    source.setslot(slot, &["MIGRATING", &target_id]);
    assert_eq!(incr(&a).await, 3);

    // The keys move; the source now answers ASK for them, and the store
    // follows to the target.
    let batch: Vec<&str> = moved.iter().map(String::as_str).collect();
    source.migrate_keys(target, &batch);
    assert_eq!(target.keys_in_slot(slot), moved);
    assert!(source.keys_in_slot(slot).is_empty());
    assert_eq!(
        a.session().await,
        json!({ "user": "ada", "data": { "n": 3 } }),
        "read through ASK"
    );
    assert_eq!(incr(&a).await, 4, "written through ASK");

    // The slot changes owner on every node: the store's requests to the
    // source now get MOVED, and it follows.
    target.setslot(slot, &["NODE", &target_id]);
    source.setslot(slot, &["NODE", &target_id]);
    for node in cluster.nodes() {
        if node.port() != source.port() && node.port() != target.port() {
            node.setslot(slot, &["NODE", &target_id]);
        }
    }
    assert_eq!(
        a.session().await,
        json!({ "user": "ada", "data": { "n": 4 } }),
        "read after MOVED"
    );
    assert_eq!(incr(&a).await, 5, "written after MOVED");
    let parsed: Token = token.parse().unwrap();
    assert_eq!(
        store.load(&parsed).await.unwrap().unwrap().data["n"],
        ciborium::Value::Integer(5.into())
    );
    // Another session of ada's lands in the same slot, now on the target;
    // the listing (her index, moved too) shows both.
    let b = Browser::new(&web);
    b.login("ada").await;
    let sessions = a.get("/api/sessions").await;
    assert_eq!(sessions.status(), 200);
    let sessions: Value = sessions.json().await.unwrap();
    assert_eq!(sessions.as_array().unwrap().len(), 2, "{sessions}");
    let keys = target.keys_in_slot(slot);
    assert_eq!(keys.len(), 3, "two sessions and the index: {keys:?}");
    assert!(source.keys_in_slot(slot).is_empty());
    // Logout deletes on the target.
    assert_eq!(a.post("/api/logout").await.status(), 200);
    assert_eq!(target.keys_in_slot(slot).len(), 2);
}
