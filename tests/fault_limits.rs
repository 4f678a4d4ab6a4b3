//! Size limits: a write whose sealed record exceeds
//! `StoreConfig::max_sealed_size` is refused (`StoreError::TooLarge`, a 500
//! from the layer) and writes nothing; a stored blob over the limit is not
//! decoded (it loads as no session and counts as a rejected blob);
//! `max_listed` caps listings. On the shared Redis, each test under its own
//! key prefix.

mod common;
#[path = "common/faults.rs"]
mod faults;
#[path = "common/http.rs"]
mod http;

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::routing::post;
use ciborium::Value as Cbor;
use serde_json::{Value, json};
use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore, Token};
use tower_redis_sessions::{
    CookieConfig, Keyring, RedisStore, Session, SessionError, SessionLayer, StoreConfig, StoreError,
};

use common::shared_server;
use http::{Browser, Server, keys_on, session_key};

const LIMIT: usize = 1024;

async fn store(keyring: &Keyring, prefix: &str, max_sealed: usize) -> RedisStore {
    // Without the near cache: blobs written behind the store's back must
    // be read from Redis at once.
    RedisStore::builder(
        StoreConfig::new(keyring.clone())
            .prefix(prefix)
            .max_sealed_size(max_sealed),
    )
    .near_cache(tower_redis_sessions::store::NearCache::off())
    .connect(&shared_server().url())
    .await
    .unwrap()
}

fn text(len: usize) -> Cbor {
    Cbor::Text("x".repeat(len))
}

fn stored_blob(key: &str) -> Option<Vec<u8>> {
    shared_server()
        .cmd_bytes(&[b"HGET", key.as_bytes(), b"b"])
        .into_bytes()
}

fn key_of(prefix: &str, token: &Token) -> String {
    session_key(prefix, &token.to_string())
}

#[tokio::test]
async fn oversized_save_is_refused_and_writes_nothing() {
    let keyring = Keyring::generate().unwrap();
    let prefix = http::unique_prefix("big");
    let store = store(&keyring, &prefix, LIMIT).await;

    // A new session over the limit: refused, no key.
    let token = store.new_token(None).unwrap();
    let mut record = Record::new(token.id(), "web", store.now());
    record.data.insert("v".into(), text(2 * LIMIT));
    let error = store.save(&token, &record).await.unwrap_err();
    let StoreError::TooLarge { size, max } = error else {
        panic!("expected TooLarge, got {error:?}");
    };
    assert!(size > LIMIT, "{size}");
    assert_eq!(max, LIMIT);
    assert_eq!(
        error.to_string(),
        format!("sealed session is {size} bytes, over the limit of {LIMIT} bytes")
    );
    assert!(!error.is_unavailable(), "a 500, not a 503");
    assert!(keys_on(shared_server(), &format!("{prefix}*")).is_empty());
    assert_eq!(store.load(&token).await.unwrap(), None);

    // An existing session grown over the limit: refused, the stored one
    // unchanged (same bytes, same version).
    record.data.insert("v".into(), text(10));
    assert_eq!(
        store.save(&token, &record).await.unwrap(),
        SaveOutcome::Saved { version: 1 }
    );
    let key = key_of(&prefix, &token);
    let before = stored_blob(&key).unwrap();
    let mut loaded = store.load(&token).await.unwrap().unwrap();
    loaded.data.insert("v".into(), text(2 * LIMIT));
    assert!(matches!(
        store.save(&token, &loaded).await,
        Err(StoreError::TooLarge { max: LIMIT, .. })
    ));
    assert_eq!(stored_blob(&key).unwrap(), before);
    let after = store.load(&token).await.unwrap().unwrap();
    assert_eq!(after.version, 1);
    assert_eq!(after.data["v"], text(10));
    // Just under the limit is fine.
    loaded.data.insert("v".into(), text(LIMIT / 2));
    assert_eq!(
        store.save(&token, &loaded).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );
}

/// Through the layer: the handler's write is refused when the response is
/// ready; the client gets a 500 and keeps its session as it was.
#[tokio::test]
async fn oversized_write_through_the_layer_is_a_500_and_changes_nothing() {
    async fn put(session: Session, Path(len): Path<usize>) -> Result<&'static str, SessionError> {
        session.insert("v", "x".repeat(len)).await?;
        Ok("stored\n")
    }
    let keyring = Keyring::generate().unwrap();
    let prefix = http::unique_prefix("bigweb");
    let store = Arc::new(store(&keyring, &prefix, LIMIT).await);
    let app = Router::new()
        .route("/put/{len}", post(put))
        .merge(http::demo_app::routes())
        .layer(SessionLayer::shared(store.clone()).cookie(CookieConfig::default().secure(false)));
    let web = Server::start(app).await;

    let a = Browser::new(&web);
    assert_eq!(a.post("/put/10").await.status(), 200);
    let token = a.token().unwrap();
    let r = a.post(&format!("/put/{}", 2 * LIMIT)).await;
    assert_eq!(r.status(), 500);
    assert!(http::session_cookie(&r, "session").is_none());
    assert_eq!(r.text().await.unwrap(), "session error\n");
    assert_eq!(a.token().as_deref(), Some(token.as_str()));
    assert_eq!(
        a.session().await,
        json!({ "user": null, "data": { "v": "x".repeat(10) } })
    );

    // A new visitor whose first write is too large: no session at all.
    let b = Browser::new(&web);
    assert_eq!(b.post(&format!("/put/{}", 2 * LIMIT)).await.status(), 500);
    assert_eq!(b.token(), None);
    assert_eq!(keys_on(shared_server(), &format!("{prefix}*")).len(), 1);
}

/// A blob over the limit in Redis is not decoded: a session sealed under a
/// larger limit (valid in every other respect), and a huge `b` field
/// written straight into Redis, both load as no session and count as
/// rejected blobs. Loading leaves them in place.
#[tokio::test]
async fn oversized_blob_in_redis_is_not_decoded() {
    let keyring = Keyring::generate().unwrap();
    let prefix = http::unique_prefix("bigblob");
    let roomy = store(&keyring, &prefix, 64 * 1024).await;
    let strict = store(&keyring, &prefix, LIMIT).await;

    let token = roomy.new_token(None).unwrap();
    let mut record = Record::new(token.id(), "web", roomy.now());
    record.data.insert("v".into(), text(4 * LIMIT));
    roomy.save(&token, &record).await.unwrap();
    let key = key_of(&prefix, &token);
    assert!(stored_blob(&key).unwrap().len() > LIMIT);

    assert!(roomy.load(&token).await.unwrap().is_some(), "a valid seal");
    assert_eq!(strict.stats().rejected_blobs, 0);
    assert_eq!(strict.load(&token).await.unwrap(), None, "over the limit");
    assert_eq!(strict.stats().rejected_blobs, 1);

    // A huge field planted in Redis (1 MiB).
    let small = strict.new_token(None).unwrap();
    let mut record = Record::new(small.id(), "web", strict.now());
    record.data.insert("v".into(), text(10));
    strict.save(&small, &record).await.unwrap();
    let small_key = key_of(&prefix, &small);
    let huge = vec![0xA5u8; 1 << 20];
    assert_eq!(
        shared_server()
            .cmd_bytes(&[b"HSET", small_key.as_bytes(), b"b", &huge])
            .unwrap_int(),
        0
    );
    assert_eq!(strict.load(&small).await.unwrap(), None);
    assert_eq!(strict.stats().rejected_blobs, 2);
    assert_eq!(roomy.load(&small).await.unwrap(), None, "not a valid seal");

    // Through the layer: no session, a fresh start; the blob stays as it
    // was (loading neither decodes nor deletes it).
    let before = stored_blob(&key).unwrap();
    let web = Server::start(http::demo_app::routes().layer(
        SessionLayer::shared(Arc::new(strict)).cookie(CookieConfig::default().secure(false)),
    ))
    .await;
    let a = Browser::new(&web);
    a.set_token(&token.to_string());
    assert_eq!(a.session().await, json!({ "user": null, "data": {} }));
    assert_eq!(stored_blob(&key).unwrap(), before);
}

/// `max_listed` caps what `list` returns (and the layer's listing).
#[tokio::test]
async fn max_listed_caps_listings() {
    let keyring = Keyring::generate().unwrap();
    let prefix = http::unique_prefix("listed");
    let store = Arc::new(
        RedisStore::connect(
            &shared_server().url(),
            StoreConfig::new(keyring).prefix(&prefix).max_listed(3),
        )
        .await
        .unwrap(),
    );
    for _ in 0..5 {
        let token = store.new_token(Some("lee")).unwrap();
        let mut record = Record::new(token.id(), "web", store.now());
        record.user = Some("lee".into());
        store.save(&token, &record).await.unwrap();
    }
    assert_eq!(store.list("lee", None).await.unwrap().len(), 3);

    let web =
        Server::start(http::demo_app::routes().layer(
            SessionLayer::shared(store.clone()).cookie(CookieConfig::default().secure(false)),
        ))
        .await;
    let a = Browser::new(&web);
    a.login("lee").await;
    let listed: Value = a.get("/api/sessions").await.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    // Revoking the others reaches all of them, listed or not.
    let revoked: Value = a
        .post("/api/sessions/revoke-others")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(revoked, json!({ "revoked": 5 }));
    let listed: Value = a.get("/api/sessions").await.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}
