//! What the deployment tests (TLS, ACLs, Sentinel) check on every store: a
//! full round trip of the store's operations.

use std::time::Duration;

use tower_redis_sessions::StoreError;
use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore};

/// Save, load, list, revoke and load again, for a fresh session of `user`:
/// every function of the library runs once at least.
pub async fn round_trip(store: &dyn SessionStore, user: &str) -> Result<(), StoreError> {
    let token = store.new_token(Some(user))?;
    let mut record = Record::new(token.id(), "web", store.now());
    record.user = Some(user.to_owned());
    record.idle_timeout = Some(Duration::from_secs(60));
    record
        .data
        .insert("cart".to_owned(), ciborium::Value::Text("tea".to_owned()));
    let outcome = store.save(&token, &record).await?;
    assert_eq!(outcome, SaveOutcome::Saved { version: 1 });
    let loaded = store.load(&token).await?.expect("the saved session loads");
    assert_eq!(loaded.user.as_deref(), Some(user));
    assert_eq!(loaded.data, record.data);
    let listed = store.list(user, None).await?;
    assert!(
        listed.iter().any(|r| r.id == token.id()),
        "listed: {listed:?}"
    );
    assert!(store.revoke(user, &token.id()).await?);
    assert_eq!(store.load(&token).await?, None);
    Ok(())
}
