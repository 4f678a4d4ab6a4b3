//! The session handle's own rules, over the in-process store: merging on
//! conflict, no revival, token rotation. (End-to-end tests over HTTP and
//! real Redis live in `tests/`.)

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::MemoryStore;
use crate::session::state::Policy;

fn policy() -> Arc<Policy> {
    Arc::new(Policy {
        kind: "web".into(),
        idle_timeout: Some(Duration::from_secs(60)),
        lifetime: None,
        retry: RetryPolicy {
            attempts: 8,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
        },
        locks: Default::default(),
    })
}

fn session(store: &Arc<MemoryStore>, token: Option<Token>) -> Session {
    let store: Arc<dyn SessionStore> = store.clone();
    Session::new(store, policy(), token)
}

/// Saves a new session with `n = 0` and returns its token.
async fn existing(store: &Arc<MemoryStore>) -> Token {
    let s = session(store, None);
    s.insert("n", 0u32).await.unwrap();
    s.save().await.unwrap();
    let update = s.finish(true).await.unwrap();
    match update {
        Some(TokenUpdate::Set(token, _)) => token,
        other => panic!("expected a new token, got {other:?}"),
    }
}

#[tokio::test]
async fn concurrent_updates_and_inserts_merge() {
    let store = Arc::new(MemoryStore::default());
    let token = existing(&store).await;
    let a = session(&store, Some(token.clone()));
    let b = session(&store, Some(token.clone()));
    // Both load version 1, then change different and shared keys.
    a.update("n", |n: Option<u32>| n.unwrap_or(0) + 1)
        .await
        .unwrap();
    a.insert("a", "from a").await.unwrap();
    b.update("n", |n: Option<u32>| n.unwrap_or(0) + 1)
        .await
        .unwrap();
    b.insert("b", "from b").await.unwrap();
    a.finish(true).await.unwrap();
    b.finish(true).await.unwrap(); // conflicts, merges, saves
    let check = session(&store, Some(token));
    assert_eq!(check.get::<u32>("n").await.unwrap(), Some(2));
    assert_eq!(
        check.get::<String>("a").await.unwrap().as_deref(),
        Some("from a")
    );
    assert_eq!(
        check.get::<String>("b").await.unwrap().as_deref(),
        Some("from b")
    );
    assert_eq!(store.stats().conflicts, 1);
}

#[tokio::test]
async fn a_write_after_logout_is_not_saved() {
    let store = Arc::new(MemoryStore::default());
    let token = existing(&store).await;
    let writer = session(&store, Some(token.clone()));
    writer.insert("late", true).await.unwrap(); // loaded before the logout
    session(&store, Some(token.clone())).logout().await.unwrap();
    let update = writer.finish(true).await.unwrap();
    assert!(matches!(update, Some(TokenUpdate::Clear)));
    assert!(store.load(&token).await.unwrap().is_none());
    assert_eq!(store.stats().revivals_blocked, 1);
}

#[tokio::test]
async fn unknown_tokens_are_not_adopted() {
    let store = Arc::new(MemoryStore::default());
    let invented = store.new_token(None).unwrap();
    let s = session(&store, Some(invented.clone()));
    s.insert("k", 1).await.unwrap();
    match s.finish(true).await.unwrap() {
        Some(TokenUpdate::Set(token, _)) => assert_ne!(token, invented),
        other => panic!("expected a new token, got {other:?}"),
    }
    assert!(store.load(&invented).await.unwrap().is_none());
}

#[tokio::test]
async fn login_rotates_and_retires_the_old_session() {
    let store = Arc::new(MemoryStore::default());
    let old = existing(&store).await;
    let s = session(&store, Some(old.clone()));
    s.login("alice").await.unwrap();
    let new = match s.finish(true).await.unwrap() {
        Some(TokenUpdate::Set(token, _)) => token,
        other => panic!("expected a new token, got {other:?}"),
    };
    assert_ne!(new, old);
    assert!(store.load(&old).await.unwrap().is_none());
    let record = store.load(&new).await.unwrap().unwrap();
    assert_eq!(record.user.as_deref(), Some("alice"));
    assert_eq!(s.kind().await.unwrap().as_deref(), Some("web"));
    assert_eq!(s.user().await.unwrap().as_deref(), Some("alice"));
    assert!(record.data.contains_key("n"), "values survive login");
    assert_eq!(store.list("alice", None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn cycle_id_keeps_everything_but_the_token() {
    let store = Arc::new(MemoryStore::default());
    let old = existing(&store).await;
    let s = session(&store, Some(old.clone()));
    let before = s.record().await.unwrap().unwrap();
    s.cycle_id().await.unwrap();
    let new = match s.finish(true).await.unwrap() {
        Some(TokenUpdate::Set(token, _)) => token,
        other => panic!("expected a new token, got {other:?}"),
    };
    assert!(store.load(&old).await.unwrap().is_none());
    let after = store.load(&new).await.unwrap().unwrap();
    assert_eq!(after.created_at, before.created_at);
    assert_eq!(after.data, before.data);
}

#[tokio::test]
async fn untouched_and_read_only_sessions_write_nothing() {
    let store = Arc::new(MemoryStore::default());
    let token = existing(&store).await;
    let untouched = session(&store, Some(token.clone()));
    assert!(!untouched.was_used());
    let reader = session(&store, Some(token.clone()));
    assert_eq!(reader.get::<u32>("n").await.unwrap(), Some(0));
    reader.finish(true).await.unwrap();
    assert_eq!(store.load(&token).await.unwrap().unwrap().version, 1);
}

#[tokio::test]
async fn a_failed_response_saves_nothing() {
    let store = Arc::new(MemoryStore::default());
    let token = existing(&store).await;
    let s = session(&store, Some(token.clone()));
    s.insert("n", 99u32).await.unwrap();
    s.finish(false).await.unwrap();
    let check = session(&store, Some(token));
    assert_eq!(check.get::<u32>("n").await.unwrap(), Some(0));
}

#[tokio::test]
async fn cycle_id_merges_a_concurrent_write_and_never_revives() {
    let store = Arc::new(MemoryStore::default());
    let old = existing(&store).await;
    // A concurrent request saves n = 5 after this one loaded.
    let cycling = session(&store, Some(old.clone()));
    cycling.cycle_id().await.unwrap();
    let other = session(&store, Some(old.clone()));
    other.insert("n", 5u32).await.unwrap();
    other.finish(true).await.unwrap();
    let new = match cycling.finish(true).await.unwrap() {
        Some(TokenUpdate::Set(token, _)) => token,
        other => panic!("expected a new token, got {other:?}"),
    };
    assert!(store.load(&old).await.unwrap().is_none());
    let check = session(&store, Some(new));
    assert_eq!(check.get::<u32>("n").await.unwrap(), Some(5));

    // Revoked between the load and the save: no session under a new token.
    let token = existing(&store).await;
    let cycling = session(&store, Some(token.clone()));
    cycling.cycle_id().await.unwrap();
    session(&store, Some(token.clone())).logout().await.unwrap();
    assert!(matches!(
        cycling.finish(true).await.unwrap(),
        Some(TokenUpdate::Clear)
    ));
    assert_eq!(store.stats().revivals_blocked, 1);
}
