//! Redis states that refuse calls for a while: memory full (`maxmemory`
//! with `noeviction`), a long script (`BUSY`), a replica (`READONLY`).
//! Each is reached on a private, real `redis-server`; the store must answer
//! "unavailable" (a 503) for what Redis refuses, never another error, and
//! keep serving what Redis still allows.

mod common;

use std::time::Duration;

use tower_redis_sessions::store::{Record, RetireOutcome, SaveOutcome, SessionStore, Token};
use tower_redis_sessions::{Keyring, RedisStore, StoreConfig, StoreError};

use common::logs::Captured;
use common::stores::unique_prefix;
use common::{RawConnection, RedisServer, Reply, ServerOptions};

fn config(prefix: &str) -> StoreConfig {
    StoreConfig::new(Keyring::new([3u8; 32]).unwrap()).prefix(prefix)
}

async fn store_on(server: &RedisServer, prefix: &str) -> RedisStore {
    // Without the near cache: every call meets the Redis state under test.
    RedisStore::builder(config(prefix))
        .pool_size(1)
        .near_cache(tower_redis_sessions::store::NearCache::off())
        .connect(&server.url())
        .await
        .unwrap()
}

/// A new session of `user`, saved (version 1).
async fn create(store: &RedisStore, user: &str) -> (Token, Record) {
    let token = store.new_token(Some(user)).unwrap();
    let mut record = Record::new(token.id(), "web", store.now());
    record.user = Some(user.to_owned());
    record.idle_timeout = Some(Duration::from_secs(600));
    assert_eq!(
        store.save(&token, &record).await.unwrap(),
        SaveOutcome::Saved { version: 1 }
    );
    record.version = 1;
    (token, record)
}

/// An error that must be a 503: `StoreError::Unavailable`.
#[track_caller]
fn unavailable<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Unavailable(reason)) => reason,
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

/// At `maxmemory` under `noeviction`, Redis refuses the calls that store
/// blobs (save, rotate: 503) and still runs those that only read, delete or
/// write a few bytes: users keep their sessions, list them, log out and
/// revoke. One log line says Redis is out of memory, however many saves
/// were refused.
#[tokio::test]
async fn memory_full_refuses_saves_and_keeps_loads_logout_and_revocation() {
    let server = RedisServer::start();
    let prefix = unique_prefix("oom");
    let store = store_on(&server, &prefix).await;
    let user = "ada";
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(create(&store, user).await);
    }
    let (captured, _guard) = Captured::start();

    assert_eq!(
        server.cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
        "OK"
    );
    // Below what Redis already uses: every call that may grow it is refused.
    assert_eq!(server.cmd(&["CONFIG", "SET", "maxmemory", "1"]), "OK");

    let mut refused = 0;
    for (token, record) in &sessions {
        let mut next = record.clone();
        next.data
            .insert("k".into(), ciborium::Value::Text("v".into()));
        let reason = unavailable("save at maxmemory", store.save(token, &next).await);
        assert!(reason.contains("out of memory"), "{reason}");
        refused += 1;
    }
    let fresh = store.new_token(Some(user)).unwrap();
    let record = Record::new(fresh.id(), "web", store.now());
    unavailable(
        "new session at maxmemory",
        store.save(&fresh, &record).await,
    );
    refused += 1;
    let renewed = sessions[0].0.renew().unwrap();
    let mut moved = sessions[0].1.clone();
    moved.id = renewed.id();
    unavailable(
        "rotation at maxmemory",
        store.rotate(&sessions[0].0, &renewed, &moved).await,
    );
    refused += 1;

    // What still works.
    for (token, _) in &sessions {
        assert!(store.load(token).await.unwrap().is_some(), "load");
    }
    assert_eq!(store.list(user, None).await.unwrap().len(), 4, "list");
    assert!(store.delete(&sessions[3].0).await.unwrap(), "logout");
    assert_eq!(
        store.retire(&sessions[2].0, 1).await.unwrap(),
        RetireOutcome::Deleted,
        "retire"
    );
    assert_eq!(
        store
            .revoke_all(user, None, Some(&sessions[0].0))
            .await
            .unwrap(),
        1,
        "revoke others"
    );
    assert_eq!(store.list(user, None).await.unwrap().len(), 1);

    let lines = captured.lines_with("out of memory");
    assert_eq!(lines.len(), 1, "one line per episode: {lines:#?}");
    assert!(
        lines[0].contains("ERROR") && lines[0].contains("maxmemory"),
        "{lines:?}"
    );
    eprintln!(
        "at maxmemory: {refused} calls refused (503), 9 served; log: {}",
        lines[0]
    );

    // Memory again: saves go through, and a new episode would log again.
    assert_eq!(server.cmd(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    let (token, record) = &sessions[0];
    assert_eq!(
        store.save(token, record).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );
}

/// A script running past `busy-reply-threshold` makes Redis answer `BUSY`
/// to everyone else: every store call is a 503 meanwhile (never another
/// error), and all work again once the script is killed.
#[tokio::test]
async fn a_busy_redis_is_unavailable_never_another_error() {
    let server = RedisServer::start_with(ServerOptions {
        extra: vec![("busy-reply-threshold".into(), "100".into())],
        ..ServerOptions::default()
    });
    let prefix = unique_prefix("busy");
    let store = store_on(&server, &prefix).await;
    let (token, record) = create(&store, "bob").await;

    let port = server.port();
    let script = std::thread::spawn(move || {
        let mut conn = RawConnection::connect(port).unwrap();
        conn.set_read_timeout(None).unwrap();
        conn.cmd_bytes(&[b"EVAL", b"while true do end", b"0"])
    });
    // Wait for the state itself (not for a time): BUSY to another client.
    let mut probe = server.connect();
    loop {
        match probe.cmd_bytes(&[b"PING"]) {
            Reply::Error(e) if e.starts_with("BUSY") => break,
            _ => std::thread::yield_now(),
        }
    }

    let mut refused = 0;
    unavailable("load while BUSY", store.load(&token).await);
    unavailable("save while BUSY", store.save(&token, &record).await);
    unavailable("list while BUSY", store.list("bob", None).await);
    unavailable("retire while BUSY", store.retire(&token, 1).await);
    unavailable("delete while BUSY", store.delete(&token).await);
    unavailable(
        "revoke while BUSY",
        store.revoke_all("bob", None, None).await,
    );
    refused += 6;

    assert_eq!(probe.cmd(&["SCRIPT", "KILL"]), "OK");
    let killed = script.join().unwrap();
    assert!(killed.is_error(), "the script was killed: {killed:?}");
    assert!(store.load(&token).await.unwrap().is_some(), "served again");
    assert_eq!(
        store.save(&token, &record).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );
    eprintln!("while BUSY: {refused} of {refused} calls answered 503, no other error");
}

/// A store pointed at a replica (a misconfiguration, or a primary demoted
/// by a failover): writes are refused with `READONLY`, a 503.
#[tokio::test]
async fn a_store_on_a_replica_is_unavailable_for_writes() {
    let primary = RedisServer::start();
    let replica = RedisServer::start();
    let port = primary.port().to_string();
    assert_eq!(replica.cmd(&["REPLICAOF", "127.0.0.1", &port]), "OK");
    let prefix = unique_prefix("ro");
    let on_primary = store_on(&primary, &prefix).await;
    let (token, record) = create(&on_primary, "cyd").await;
    common::stores::eventually!(
        "the replica caught up",
        Duration::from_secs(10),
        replica
            .cmd(&["INFO", "replication"])
            .contains("master_link_status:up")
            && replica.cmd(&["EXISTS", &common::stores::session_key(&prefix, &token)]) == "1"
    );

    let on_replica = RedisStore::builder(config(&prefix))
        .lazy(true)
        .connect(&replica.url())
        .await
        .unwrap();
    let reason = unavailable("save on a replica", on_replica.save(&token, &record).await);
    assert!(reason.contains("read only replica"), "{reason}");
    unavailable("delete on a replica", on_replica.delete(&token).await);
    assert!(
        on_primary.load(&token).await.unwrap().is_some(),
        "nothing changed on the primary"
    );
}

/// `min-replicas-to-write` unmet (no replica connected): Redis refuses
/// every call that may write with `NOREPLICAS`, a 503; the store works
/// again once the setting is lifted.
#[tokio::test]
async fn too_few_replicas_is_unavailable() {
    let server = RedisServer::start();
    let prefix = unique_prefix("norepl");
    let store = store_on(&server, &prefix).await;
    let (token, record) = create(&store, "dan").await;
    assert_eq!(
        server.cmd(&["CONFIG", "SET", "min-replicas-to-write", "1"]),
        "OK"
    );
    let reason = unavailable("save without replicas", store.save(&token, &record).await);
    assert!(reason.contains("replicas"), "{reason}");
    unavailable("load without replicas", store.load(&token).await);
    unavailable("logout without replicas", store.delete(&token).await);
    assert_eq!(
        server.cmd(&["CONFIG", "SET", "min-replicas-to-write", "0"]),
        "OK"
    );
    assert!(store.load(&token).await.unwrap().is_some());
}

/// A replica that lost its primary and must not serve stale data: every
/// store call is a 503 (Redis checks writability first, so the store sees
/// `READONLY` there; `MASTERDOWN` itself is covered by the classifier's
/// unit test).
#[tokio::test]
async fn a_replica_without_its_primary_is_unavailable() {
    let replica = RedisServer::start();
    let gone = RedisServer::start();
    let port = gone.port().to_string();
    drop(gone);
    assert_eq!(
        replica.cmd(&["CONFIG", "SET", "replica-serve-stale-data", "no"]),
        "OK"
    );
    assert_eq!(replica.cmd(&["REPLICAOF", "127.0.0.1", &port]), "OK");
    let store = RedisStore::builder(config(&unique_prefix("mdown")))
        .lazy(true)
        .connect(&replica.url())
        .await
        .unwrap();
    let token = store.new_token(None).unwrap();
    let reason = unavailable(
        "load on a replica without primary",
        store.load(&token).await,
    );
    eprintln!("a replica without its primary, as seen by the store: {reason}");
}
