//! A user's slot moves between cluster masters in batches (`SETSLOT
//! IMPORTING / MIGRATING`, `MIGRATE ... KEYS`, `SETSLOT NODE`) while the
//! tower-sessions adapter lists, revokes and deletes the user's sessions:
//! each call either answers truthfully or fails as unavailable, and none
//! loses or revives a session.
#![cfg(feature = "tower-sessions")]

mod common;

use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use tower_redis_sessions::tower_sessions::{is_unavailable, session_handle};
use tower_redis_sessions::{Keyring, RedisStore, StoreConfig, StoreError};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::SessionStore;

use common::{RedisCluster, key_slot};

fn key(prefix: &str, id: &Id) -> String {
    let hash = Sha256::digest(id.0.to_le_bytes());
    format!(
        "{prefix}{{{:02x}}}:t:{}",
        hash[0],
        URL_SAFE_NO_PAD.encode(hash)
    )
}

/// A call that answered must have told the truth; one that failed must have
/// failed as unavailable.
fn truthful_or_unavailable<T>(what: &str, result: Result<T, StoreError>, check: impl FnOnce(T)) {
    match result {
        Ok(value) => {
            println!("{what}: answered");
            check(value)
        }
        Err(e) => {
            println!("{what}: unavailable ({e})");
            assert!(e.is_unavailable(), "{what}: {e:?}")
        }
    }
}

#[tokio::test]
async fn a_users_slot_resharded_in_batches_loses_and_revives_nothing() {
    let cluster = RedisCluster::start();
    let prefix = "tsreshard:";
    let config = StoreConfig::new(Keyring::new([8u8; 32]).unwrap()).prefix(prefix);
    let store = RedisStore::builder(config)
        .connect_tower_sessions_cluster(cluster.urls())
        .await
        .unwrap()
        .with_axum_login_index();
    let mut records = Vec::new();
    for _ in 0..4 {
        let mut record = Record {
            id: Id::default(),
            data: serde_json::from_value(
                json!({"axum-login.data": {"user_id": 1, "auth_hash": [1]}}),
            )
            .unwrap(),
            expiry_date: OffsetDateTime::now_utc() + Duration::hours(1),
        };
        store.create(&mut record).await.unwrap();
        records.push(record);
    }
    let keys: Vec<String> = records.iter().map(|r| key(prefix, &r.id)).collect();
    let slot = key_slot(keys[0].as_bytes());
    let source = cluster.node_for_slot(slot);
    let target = cluster
        .nodes()
        .iter()
        .find(|n| n.port() != source.port())
        .unwrap();
    let all = source.keys_in_slot(slot);
    assert_eq!(all.len(), 5, "four sessions and the index");
    let index = all.iter().find(|k| k.contains("}:tu:")).unwrap().clone();
    let (source_id, target_id) = (source.node_id(), target.node_id());
    target.setslot(slot, &["IMPORTING", &source_id]);
    source.setslot(slot, &["MIGRATING", &target_id]);
    let mut live: BTreeSet<String> = records.iter().map(|r| session_handle(&r.id)).collect();

    // Batch 1: two sessions move, the index stays on the source.
    source.migrate_keys(target, &[&keys[2], &keys[3]]);
    truthful_or_unavailable(
        "list (batch 1)",
        store.list_user_sessions("1").await,
        |listed| {
            let listed: BTreeSet<_> = listed.into_iter().map(|s| s.handle).collect();
            assert_eq!(listed, live);
        },
    );
    truthful_or_unavailable(
        "revoke others (batch 1)",
        store.revoke_user_sessions("1", Some(&records[0].id)).await,
        |n| {
            assert_eq!(n as usize, live.len() - 1);
            live.retain(|h| *h == session_handle(&records[0].id));
        },
    );
    // Loads follow the keys wherever they are, and tell the truth.
    for record in &records {
        let loaded = store.load(&record.id).await;
        match loaded {
            Ok(loaded) => assert_eq!(loaded.is_some(), live.contains(&session_handle(&record.id))),
            Err(e) => assert!(is_unavailable(&e), "{e:?}"),
        }
    }
    // A save of a session still alive keeps it; none revives a revoked one.
    for record in &records {
        if let Err(e) = store.save(record).await {
            assert!(is_unavailable(&e), "{e:?}");
        }
    }

    // Batch 2: the index and one session move; one session stays. Calls on
    // the index now run on the target, where that session is missing.
    source.migrate_keys(target, &[&index, &keys[1]]);
    truthful_or_unavailable(
        "list (batch 2)",
        store.list_user_sessions("1").await,
        |listed| {
            let listed: BTreeSet<_> = listed.into_iter().map(|s| s.handle).collect();
            assert_eq!(listed, live);
        },
    );
    truthful_or_unavailable(
        "revoke others (batch 2)",
        store.revoke_user_sessions("1", Some(&records[0].id)).await,
        |n| {
            assert_eq!(n as usize, live.len() - 1);
            live.retain(|h| *h == session_handle(&records[0].id));
        },
    );

    // Batch 3: the rest moves, the slot changes owner everywhere.
    source.migrate_keys(target, &[&keys[0]]);
    for node in cluster.nodes() {
        node.setslot(slot, &["NODE", &target_id]);
    }
    let listed: BTreeSet<_> = store
        .list_user_sessions("1")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.handle)
        .collect();
    assert_eq!(listed, live, "nothing lost, nothing revived");
    for record in &records {
        let loaded = store.load(&record.id).await.unwrap();
        assert_eq!(loaded.is_some(), live.contains(&session_handle(&record.id)));
    }
    let expected = live.len() as u64 - 1;
    assert_eq!(
        store
            .revoke_user_sessions("1", Some(&records[0].id))
            .await
            .unwrap(),
        expected
    );
    assert_eq!(store.list_user_sessions("1").await.unwrap().len(), 1);
}
