//! Recovery without restarting the application: Redis losing the function
//! library (`FUNCTION FLUSH`, a restart without persistence) and restarting
//! with persistence. Private servers and a private cluster, as these tests
//! flush and restart them.

mod common;

use std::time::Duration;

use ciborium::Value;
use common::stores::{session_key, test_keyring, unique_prefix};
use common::{RedisCluster, RedisServer, ServerOptions};
use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore, Token};
use tower_redis_sessions::{RedisStore, StoreConfig};

fn config(prefix: &str) -> StoreConfig {
    StoreConfig::new(test_keyring()).prefix(prefix)
}

async fn create(store: &RedisStore, user: Option<&str>) -> Token {
    let token = store.new_token(user).unwrap();
    let mut record = Record::new(token.id(), "web", store.now());
    record.user = user.map(str::to_owned);
    record.idle_timeout = Some(Duration::from_secs(600));
    record
        .data
        .insert("color".into(), Value::Text("teal".into()));
    assert_eq!(
        store.save(&token, &record).await.unwrap(),
        SaveOutcome::Saved { version: 1 }
    );
    token
}

/// Whether `server` has the library `name` registered.
fn has_library(server: &RedisServer, name: &str) -> bool {
    let reply = server.cmd_bytes(&[b"FUNCTION", b"LIST", b"LIBRARYNAME", name.as_bytes()]);
    !reply.as_array().unwrap().is_empty()
}

fn flush_functions(server: &RedisServer) {
    assert_eq!(server.cmd(&["FUNCTION", "FLUSH"]), "OK");
}

#[tokio::test]
async fn every_operation_recovers_from_function_flush() {
    let server = RedisServer::start();
    // Without the near cache: every call must meet what Redis lost.
    let store = RedisStore::builder(config("rec:"))
        .near_cache(tower_redis_sessions::store::NearCache::off())
        .connect(&server.url())
        .await
        .unwrap();
    let name = store.library_name().to_owned();
    assert!(has_library(&server, &name));
    let token = create(&store, Some("una")).await;
    let other = create(&store, Some("una")).await;
    let api = create(&store, Some("una")).await;

    // After each FUNCTION FLUSH, the next call registers the library again
    // and succeeds; the data is intact.
    flush_functions(&server);
    assert!(!has_library(&server, &name));
    let mut loaded = store.load(&token).await.unwrap().expect("data intact");
    assert_eq!(loaded.data.get("color"), Some(&Value::Text("teal".into())));
    assert!(has_library(&server, &name));

    flush_functions(&server);
    loaded.data.insert("n".into(), Value::Integer(1.into()));
    assert_eq!(
        store.save(&token, &loaded).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );

    flush_functions(&server);
    assert_eq!(store.list("una", None).await.unwrap().len(), 3);

    flush_functions(&server);
    assert!(store.revoke("una", &api.id()).await.unwrap());

    flush_functions(&server);
    assert!(store.delete(&other).await.unwrap());

    flush_functions(&server);
    assert_eq!(
        store.revoke_all("una", None, Some(&token)).await.unwrap(),
        0
    );
    assert_eq!(store.load(&token).await.unwrap().unwrap().version, 2);
    assert!(has_library(&server, &name));
}

#[tokio::test]
async fn restart_without_persistence() {
    let mut server = RedisServer::start();
    // Without the near cache: every call must meet what Redis lost.
    let store = RedisStore::builder(config("rec:"))
        .near_cache(tower_redis_sessions::store::NearCache::off())
        .connect(&server.url())
        .await
        .unwrap();
    // Open several of the store's connections before the restart.
    let tokens = [
        create(&store, Some("vic")).await,
        create(&store, None).await,
        create(&store, None).await,
    ];
    for _ in 0..20 {
        assert!(store.load(&tokens[0]).await.unwrap().is_some());
    }

    server.restart();
    assert!(!has_library(&server, store.library_name()));

    // Every call works again (over fresh connections, with the library
    // registered again); the sessions themselves are gone, of course.
    for _ in 0..20 {
        for token in &tokens {
            assert_eq!(store.load(token).await.unwrap(), None);
        }
    }
    assert!(has_library(&server, store.library_name()));
    assert_eq!(store.list("vic", None).await.unwrap(), vec![]);
    let fresh = create(&store, Some("vic")).await;
    assert!(store.load(&fresh).await.unwrap().is_some());
    assert_eq!(store.list("vic", None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn session_survives_restart_with_aof() {
    let mut server = RedisServer::start_with(ServerOptions {
        appendonly: true,
        ..ServerOptions::default()
    });
    let store = RedisStore::connect(&server.url(), config("aof:"))
        .await
        .unwrap();
    let token = create(&store, Some("wendy")).await;
    let key = session_key("aof:", &token);
    let expiry_before = server.cmd(&["PEXPIRETIME", &key]);

    server.restart();

    let loaded = store.load(&token).await.unwrap().expect("survives");
    assert_eq!(loaded.version, 1);
    assert_eq!(loaded.user.as_deref(), Some("wendy"));
    assert_eq!(loaded.data.get("color"), Some(&Value::Text("teal".into())));
    assert_eq!(server.cmd(&["PEXPIRETIME", &key]), expiry_before);
    assert_eq!(store.list("wendy", None).await.unwrap().len(), 1);
    assert_eq!(
        store.save(&token, &loaded).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );
}

#[tokio::test]
async fn cluster_recovers_from_function_flush_on_every_node() {
    let cluster = RedisCluster::start();
    let prefix = unique_prefix("crec");
    // Without the near cache: every call must meet the flushed nodes.
    let store = RedisStore::builder(config(&prefix))
        .near_cache(tower_redis_sessions::store::NearCache::off())
        .connect_cluster(cluster.urls())
        .await
        .unwrap();
    let name = store.library_name().to_owned();
    for node in cluster.nodes() {
        assert!(has_library(node, &name), "registered on every master");
    }

    // One session on each node.
    let mut per_node: Vec<Option<Token>> = vec![None; cluster.nodes().len()];
    while per_node.iter().any(Option::is_none) {
        let token = store.new_token(None).unwrap();
        let port = cluster.node_for_key(&session_key(&prefix, &token)).port();
        let index = cluster
            .nodes()
            .iter()
            .position(|n| n.port() == port)
            .unwrap();
        if per_node[index].is_none() {
            let mut record = Record::new(token.id(), "web", store.now());
            record
                .data
                .insert("node".into(), Value::Integer(index.into()));
            store.save(&token, &record).await.unwrap();
            per_node[index] = Some(token);
        }
    }
    let tokens: Vec<Token> = per_node.into_iter().map(Option::unwrap).collect();

    // Flushed everywhere: calls for keys on each node succeed.
    for node in cluster.nodes() {
        flush_functions(node);
    }
    for (index, token) in tokens.iter().enumerate() {
        let loaded = store.load(token).await.unwrap().expect("data intact");
        assert_eq!(loaded.data.get("node"), Some(&Value::Integer(index.into())));
    }
    for node in cluster.nodes() {
        assert!(has_library(node, &name));
    }

    // Flushed on one node at a time (as after a failover to a node without
    // the library): calls there succeed too.
    for (index, token) in tokens.iter().enumerate() {
        flush_functions(&cluster.nodes()[index]);
        let loaded = store.load(token).await.unwrap().expect("data intact");
        assert_eq!(
            store.save(token, &loaded).await.unwrap(),
            SaveOutcome::Saved {
                version: loaded.version + 1
            }
        );
        assert!(has_library(&cluster.nodes()[index], &name));
    }
    for token in &tokens {
        assert!(store.delete(token).await.unwrap());
    }
}
