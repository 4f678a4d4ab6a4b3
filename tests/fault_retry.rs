//! A save whose reply is lost is retried once by the store over a new
//! connection. Here another writer (a second store, as another process
//! would be, on its own direct connection) saves the same session between
//! the first attempt and the retry: the retry must still be recognised as
//! already applied, not meet a conflict that makes the caller apply its
//! change a second time.
//!
//! The interleaving is forced, not hoped for: the [`LossyProxy`] loses the
//! reply to the save and holds the store's next connection (the retry's)
//! until the other writer has saved.

mod common;
#[path = "common/faults.rs"]
mod faults;
#[path = "common/http.rs"]
mod http;

use std::sync::Arc;
use std::time::Duration;

use ciborium::Value as Cbor;
use serde_json::json;
use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore};
use tower_redis_sessions::{CookieConfig, Keyring, RedisStore, SessionLayer, StoreConfig};

use common::RedisServer;
use faults::{LossyProxy, Timeouts};
use http::{Browser, Server};

/// Long enough that the held retry never times out while the test acts
/// (the test releases it as soon as the other writer saved).
const PATIENT: Timeouts = Timeouts {
    wait: Duration::from_secs(10),
    connect: Duration::from_secs(10),
    command: Duration::from_secs(10),
};

fn config(prefix: &str) -> StoreConfig {
    StoreConfig::new(Keyring::new([9u8; 32]).unwrap()).prefix(prefix)
}

/// A private Redis, a one-connection store behind a proxy (the process
/// whose reply is lost) and a store on a direct connection (another
/// process), sharing a prefix and keys.
async fn two_processes(
    name: &str,
) -> (
    RedisServer,
    LossyProxy,
    String,
    Arc<RedisStore>,
    Arc<RedisStore>,
) {
    let server = RedisServer::start();
    let proxy = LossyProxy::start(server.port()).await;
    let prefix = http::unique_prefix(name);
    let behind = PATIENT
        .builder(config(&prefix))
        .pool_size(1)
        .connect(&proxy.url())
        .await
        .unwrap();
    let direct = RedisStore::connect(&server.url(), config(&prefix))
        .await
        .unwrap();
    (server, proxy, prefix, Arc::new(behind), Arc::new(direct))
}

fn n(record: &Record) -> i128 {
    match record.data.get("n") {
        Some(Cbor::Integer(n)) => i128::from(*n),
        other => panic!("n: {other:?}"),
    }
}

fn with_n(record: &Record, value: i64) -> Record {
    let mut next = record.clone();
    next.data.insert("n".into(), Cbor::Integer(value.into()));
    next
}

/// Through the store API: the retried save answers `Saved` with the
/// version it wrote (2), though version 3 is stored by then; the counter
/// holds each increment once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_save_is_applied_once_though_another_writer_saved_between() {
    let (_server, proxy, _, behind, direct) = two_processes("retry-api").await;
    let token = behind.new_token(None).unwrap();
    let first = with_n(&Record::new(token.id(), "web", behind.now()), 1);
    assert_eq!(
        behind.save(&token, &first).await.unwrap(),
        SaveOutcome::Saved { version: 1 }
    );

    // Increment 1 (process A): the reply to its save is lost, the retry held.
    let loaded = behind.load(&token).await.unwrap().unwrap();
    proxy.lose_reply_to(&format!("{}_save", behind.library_name()), 0);
    proxy.hold_next_connection_after_loss();
    let a = {
        let (behind, token) = (behind.clone(), token.clone());
        let next = with_n(&loaded, 2);
        tokio::spawn(async move { behind.save(&token, &next).await })
    };
    proxy.wait_held(1).await;
    assert_eq!(
        proxy.lost(),
        1,
        "Redis applied the save, its reply was lost"
    );

    // Increment 2 (process B) lands between A's first attempt and its retry.
    let seen = direct.load(&token).await.unwrap().unwrap();
    assert_eq!(
        (seen.version, n(&seen)),
        (2, 2),
        "A's first attempt was applied"
    );
    assert_eq!(
        direct.save(&token, &with_n(&seen, 3)).await.unwrap(),
        SaveOutcome::Saved { version: 3 }
    );

    proxy.release();
    assert_eq!(
        a.await.unwrap().unwrap(),
        SaveOutcome::Saved { version: 2 },
        "the retry is recognised as the save already applied, not a conflict"
    );
    let last = direct.load(&token).await.unwrap().unwrap();
    assert_eq!((last.version, n(&last)), (3, 3), "each increment once");
    assert_eq!(behind.stats().conflicts, 0);
}

/// A retry still finds its save after seven more saves; the store
/// remembers eight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_recognised_after_seven_other_saves() {
    let (server, proxy, prefix, behind, direct) = two_processes("retry-eight").await;
    let token = behind.new_token(None).unwrap();
    let first = with_n(&Record::new(token.id(), "web", behind.now()), 1);
    behind.save(&token, &first).await.unwrap();
    let loaded = behind.load(&token).await.unwrap().unwrap();
    proxy.lose_reply_to(&format!("{}_save", behind.library_name()), 0);
    proxy.hold_next_connection_after_loss();
    let a = {
        let (behind, token) = (behind.clone(), token.clone());
        let next = with_n(&loaded, 2);
        tokio::spawn(async move { behind.save(&token, &next).await })
    };
    proxy.wait_held(1).await;
    for value in 3..=9 {
        let seen = direct.load(&token).await.unwrap().unwrap();
        assert!(matches!(
            direct.save(&token, &with_n(&seen, value)).await.unwrap(),
            SaveOutcome::Saved { .. }
        ));
    }
    proxy.release();
    assert_eq!(a.await.unwrap().unwrap(), SaveOutcome::Saved { version: 2 });
    let last = direct.load(&token).await.unwrap().unwrap();
    assert_eq!((last.version, n(&last)), (9, 9));
    // What the session remembers stays small: eight entries.
    let key = common::stores::session_key(&prefix, &token);
    let w = server.cmd(&["HGET", &key, "w"]);
    assert_eq!(w.matches(' ').count(), 8, "eight saves remembered: {w:?}");
}

/// Through the layer (`POST /api/incr/n` of the demo): process A's
/// increment loses its save's reply, process B increments the same session
/// while A's retry is held, A's retry then lands. Both requests succeed and
/// the counter counts two increments, not three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_increment_is_counted_once_through_the_layer() {
    let (_server, proxy, _, behind, direct) = two_processes("retry-layer").await;
    let web_a =
        Server::start(http::demo_app::routes().layer(
            SessionLayer::shared(behind.clone()).cookie(CookieConfig::default().secure(false)),
        ))
        .await;
    let web_b =
        Server::start(http::demo_app::routes().layer(
            SessionLayer::shared(direct.clone()).cookie(CookieConfig::default().secure(false)),
        ))
        .await;
    let a = Browser::new(&web_a);
    assert_eq!(a.incr("n").await, (200, Some(1)));
    let b = Browser::new(&web_b);
    b.set_token(&a.token().unwrap());

    proxy.lose_reply_to(&format!("{}_save", behind.library_name()), 0);
    proxy.hold_next_connection_after_loss();
    let first = {
        let a = a.clone();
        tokio::spawn(async move { a.incr("n").await })
    };
    proxy.wait_held(1).await;
    assert_eq!(
        b.incr("n").await,
        (200, Some(3)),
        "B saw A's applied increment"
    );
    proxy.release();
    assert_eq!(
        first.await.unwrap(),
        (200, Some(2)),
        "A's increment is acknowledged as applied, not applied again"
    );
    assert_eq!(
        b.session().await,
        json!({ "user": null, "data": { "n": 3 } }),
        "two increments, counted once each"
    );
}
