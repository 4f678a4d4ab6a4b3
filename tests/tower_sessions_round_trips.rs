//! Every `TowerSessionsStore` operation is one round trip: exactly one
//! `FCALL` and no other client command (`INFO commandstats` deltas), on a
//! private single Redis and a private 3-node cluster.
#![cfg(feature = "tower-sessions")]

mod common;

use serde_json::json;
use time::{Duration, OffsetDateTime};
use tower_redis_sessions::tower_sessions::{TowerSessionsStore, session_handle};
use tower_redis_sessions::{Keyring, RedisStore, StoreConfig};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::SessionStore;

use common::{CommandStats, LIBRARY_INTERNAL, RedisCluster, RedisServer};

/// Commands the adapter's functions run inside an FCALL, besides those the
/// harness already knows.
const ADAPTER_INTERNAL: &[&str] = &["pexpiretime", "zremrangebyscore", "zcard"];

fn assert_one_fcall(delta: &CommandStats, what: &str) {
    assert_eq!(delta.get("fcall"), 1, "{what}: {delta:?}");
    let extra: Vec<_> = delta
        .0
        .keys()
        .filter(|c| {
            *c != "fcall"
                && !LIBRARY_INTERNAL.contains(&c.as_str())
                && !ADAPTER_INTERNAL.contains(&c.as_str())
        })
        .collect();
    assert!(extra.is_empty(), "{what}: other client commands {extra:?}");
}

fn user_record(user: i64) -> Record {
    Record {
        id: Id::default(),
        data: serde_json::from_value(
            json!({"axum-login.data": {"user_id": user, "auth_hash": [1]}}),
        )
        .unwrap(),
        expiry_date: OffsetDateTime::now_utc() + Duration::hours(1),
    }
}

/// Runs each operation between two snapshots; prints the figures.
async fn measure(store: &TowerSessionsStore, stats: impl Fn() -> CommandStats, label: &str) {
    macro_rules! step {
        ($what:expr, $op:expr) => {{
            let before = stats();
            let out = $op;
            let delta = stats().delta_since(&before);
            assert_one_fcall(&delta, $what);
            println!("{label}: {} -> fcall {}", $what, delta.get("fcall"));
            out
        }};
    }
    let mut anon = Record {
        id: Id::default(),
        data: serde_json::from_value(json!({"n": 1})).unwrap(),
        expiry_date: OffsetDateTime::now_utc() + Duration::hours(1),
    };
    step!("create (anonymous)", store.create(&mut anon).await.unwrap());
    let mut first = user_record(5);
    step!(
        "create (user, login)",
        store.create(&mut first).await.unwrap()
    );
    let mut second = user_record(5);
    step!(
        "create (user, second device)",
        store.create(&mut second).await.unwrap()
    );
    step!(
        "load",
        assert!(store.load(&first.id).await.unwrap().is_some())
    );
    step!(
        "load (missing)",
        assert!(store.load(&Id::default()).await.unwrap().is_none())
    );
    anon.data.insert("n".into(), json!(2));
    step!("save", store.save(&anon).await.unwrap());
    step!("save (user)", store.save(&first).await.unwrap());
    step!(
        "list",
        assert_eq!(store.list_user_sessions("5").await.unwrap().len(), 2)
    );
    step!(
        "revoke one",
        assert!(
            store
                .revoke_user_session("5", &session_handle(&second.id))
                .await
                .unwrap()
        )
    );
    step!(
        "revoke all but one",
        store
            .revoke_user_sessions("5", Some(&first.id))
            .await
            .unwrap()
    );
    step!("delete (logout)", store.delete(&first.id).await.unwrap());
    step!("delete (anonymous)", store.delete(&anon.id).await.unwrap());
}

fn config() -> StoreConfig {
    StoreConfig::new(Keyring::new([3u8; 32]).unwrap()).prefix("rt:")
}

#[tokio::test]
async fn one_fcall_per_operation_on_a_single_redis() {
    let server = RedisServer::start();
    let store = RedisStore::builder(config())
        .pool_size(1)
        .connect_tower_sessions(&server.url())
        .await
        .unwrap()
        .with_axum_login_index();
    measure(&store, || server.commandstats(), "standalone").await;
}

#[tokio::test]
async fn one_fcall_per_operation_on_a_cluster() {
    let cluster = RedisCluster::start();
    let store = RedisStore::builder(config())
        .pool_size(1)
        .connect_tower_sessions_cluster(cluster.urls())
        .await
        .unwrap()
        .with_axum_login_index();
    measure(&store, || cluster.commandstats(), "cluster").await;
}
