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
    })
}

fn session(store: &Arc<MemoryStore>, token: Option<Token>) -> Session {
    let store: Arc<dyn SessionStore> = store.clone();
    Session::new(store, policy(), token, false)
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
    assert_eq!(s.kind().await.unwrap(), "web");
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

/// A store on a clock the test moves.
fn clocked() -> (Arc<MemoryStore>, Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let time = Arc::new(AtomicU64::new(1_000_000));
    let clock = time.clone();
    let config = crate::StoreConfig::new(crate::Keyring::new([3u8; 32]).unwrap())
        .clock(move || clock.load(Ordering::SeqCst));
    (Arc::new(MemoryStore::new(config)), time)
}

fn token_of(update: Option<TokenUpdate>) -> Token {
    match update {
        Some(TokenUpdate::Set(token, _)) => token,
        other => panic!("expected a token, got {other:?}"),
    }
}

#[tokio::test]
async fn login_carries_a_write_made_to_the_old_session_meanwhile() {
    let store = Arc::new(MemoryStore::default());
    let old = existing(&store).await; // n = 0
    let login = session(&store, Some(old.clone()));
    login.login("ada").await.unwrap(); // read version 1
    let writer = session(&store, Some(old.clone()));
    writer.insert("n", 6u32).await.unwrap();
    writer.finish(true).await.unwrap(); // version 2, acknowledged
    let new = token_of(login.finish(true).await.unwrap());
    assert!(store.load(&old).await.unwrap().is_none(), "old retired");
    let check = session(&store, Some(new));
    assert_eq!(
        check.get::<u32>("n").await.unwrap(),
        Some(6),
        "the acknowledged write survives the login"
    );
    assert_eq!(check.user().await.unwrap().as_deref(), Some("ada"));
}

#[tokio::test]
async fn a_write_to_the_old_session_after_the_login_is_refused() {
    let store = Arc::new(MemoryStore::default());
    let old = existing(&store).await;
    let writer = session(&store, Some(old.clone()));
    writer.insert("n", 6u32).await.unwrap(); // loaded before the login
    let login = session(&store, Some(old.clone()));
    login.login("ada").await.unwrap();
    let new = token_of(login.finish(true).await.unwrap());
    // The late save finds the old session gone: not stored, and the client
    // is told so (its token opens nothing).
    assert!(matches!(
        writer.finish(true).await.unwrap(),
        Some(TokenUpdate::Clear)
    ));
    assert_eq!(
        session(&store, Some(new)).get::<u32>("n").await.unwrap(),
        Some(0)
    );
}

#[tokio::test]
async fn a_login_from_a_session_ended_meanwhile_fails_and_leaves_no_session() {
    for end in ["logout", "revoke"] {
        let store = Arc::new(MemoryStore::default());
        // A user's session, then the login racing its end.
        let first = session(&store, None);
        first.login("ada").await.unwrap();
        first.insert("secret", 1u32).await.unwrap();
        let token = token_of(first.finish(true).await.unwrap());
        let other = session(&store, None);
        other.login("ada").await.unwrap();
        let other_token = token_of(other.finish(true).await.unwrap());

        let login = session(&store, Some(token.clone()));
        login.login("ada").await.unwrap();
        match end {
            "logout" => session(&store, Some(token.clone())).logout().await.unwrap(),
            _ => {
                let keeper = session(&store, Some(other_token.clone()));
                assert_eq!(keeper.revoke_others().await.unwrap(), 1);
            }
        }
        let err = login.save().await.unwrap_err();
        assert!(matches!(err, SessionError::Ended), "{end}: {err:?}");
        assert!(matches!(
            login.finish(true).await.unwrap(),
            Some(TokenUpdate::Clear)
        ));
        let listed = store.list("ada", None).await.unwrap();
        assert_eq!(
            listed.len(),
            1,
            "{end}: only the other device is left: {listed:?}"
        );
        assert_eq!(listed[0].id, other_token.id());
    }
}

#[tokio::test]
async fn login_keeps_values_for_the_same_user_and_drops_them_for_another() {
    let store = Arc::new(MemoryStore::default());
    let anon = existing(&store).await; // n = 0, anonymous
    let s = session(&store, Some(anon));
    s.login("frank").await.unwrap();
    s.insert("counter", 7u32).await.unwrap();
    let frank = token_of(s.finish(true).await.unwrap());

    let again = session(&store, Some(frank.clone()));
    again.login("frank").await.unwrap();
    let frank2 = token_of(again.finish(true).await.unwrap());
    let check = session(&store, Some(frank2.clone()));
    assert_eq!(
        check.get::<u32>("counter").await.unwrap(),
        Some(7),
        "same user: kept"
    );
    assert_eq!(
        check.get::<u32>("n").await.unwrap(),
        Some(0),
        "the cart from before sign-in too"
    );

    let other = session(&store, Some(frank2.clone()));
    other.insert("pending", 1u32).await.unwrap();
    other.login("grace").await.unwrap();
    let grace = token_of(other.finish(true).await.unwrap());
    let check = session(&store, Some(grace));
    assert!(
        check.values().await.unwrap().is_empty(),
        "another user starts empty"
    );
    assert_eq!(check.user().await.unwrap().as_deref(), Some("grace"));
    assert!(
        store.load(&frank2).await.unwrap().is_none(),
        "frank's session ended"
    );
}

#[tokio::test]
async fn kind_is_the_layers_before_the_first_write() {
    let store = Arc::new(MemoryStore::default());
    let s = session(&store, None);
    assert_eq!(s.kind().await.unwrap(), "web");
}

#[tokio::test]
async fn a_token_that_opens_nothing_is_cleared() {
    let store = Arc::new(MemoryStore::default());
    let invented = store.new_token(None).unwrap();
    let s = session(&store, Some(invented));
    assert_eq!(s.get::<u32>("n").await.unwrap(), None);
    assert!(matches!(
        s.finish(true).await.unwrap(),
        Some(TokenUpdate::Clear)
    ));
    // Without a token, a read says nothing.
    let s = session(&store, None);
    assert_eq!(s.get::<u32>("n").await.unwrap(), None);
    assert!(s.finish(true).await.unwrap().is_none());
}

#[tokio::test]
async fn the_cookie_follows_every_change_of_the_deadline() {
    use std::sync::atomic::Ordering;
    let (store, time) = clocked();
    let token = existing(&store).await; // idle 60 s, no lifetime
    // 20 s later a read does not move the deadline (touch due at 30 s):
    // nothing to send.
    time.fetch_add(20_000, Ordering::SeqCst);
    let reader = session(&store, Some(token.clone()));
    reader.get::<u32>("n").await.unwrap();
    assert!(reader.finish(true).await.unwrap().is_none());
    // A write moves it: the cookie gets the full idle timeout again.
    let writer = session(&store, Some(token.clone()));
    writer.insert("n", 1u32).await.unwrap();
    match writer.finish(true).await.unwrap() {
        Some(TokenUpdate::Set(t, left)) => {
            assert_eq!(t, token);
            assert_eq!(left, Some(Duration::from_secs(60)));
        }
        other => panic!("a write must refresh the cookie, got {other:?}"),
    }
    // "Remember me" in a later request reaches the cookie.
    let remember = session(&store, Some(token.clone()));
    remember
        .set_idle_timeout(Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    match remember.finish(true).await.unwrap() {
        Some(TokenUpdate::Set(_, left)) => assert_eq!(left, Some(Duration::from_secs(3600))),
        other => panic!("a new idle timeout must reach the cookie, got {other:?}"),
    }
}

/// A store whose compare-and-delete fails as if Redis were down.
struct FailingRetire(MemoryStore);

impl SessionStore for FailingRetire {
    fn new_token(&self, user: Option<&str>) -> Result<Token, crate::StoreError> {
        self.0.new_token(user)
    }
    fn now(&self) -> crate::store::Millis {
        self.0.now()
    }
    fn load<'a>(&'a self, token: &'a Token) -> crate::store::StoreFuture<'a, Option<Record>> {
        self.0.load(token)
    }
    fn save<'a>(
        &'a self,
        token: &'a Token,
        record: &'a Record,
    ) -> crate::store::StoreFuture<'a, crate::store::SaveOutcome> {
        self.0.save(token, record)
    }
    fn rotate<'a>(
        &'a self,
        from: &'a Token,
        to: &'a Token,
        record: &'a Record,
    ) -> crate::store::StoreFuture<'a, crate::store::SaveOutcome> {
        self.0.rotate(from, to, record)
    }
    fn delete<'a>(&'a self, token: &'a Token) -> crate::store::StoreFuture<'a, bool> {
        self.0.delete(token)
    }
    fn retire<'a>(
        &'a self,
        _: &'a Token,
        _: u64,
    ) -> crate::store::StoreFuture<'a, crate::store::RetireOutcome> {
        Box::pin(async { Err(crate::StoreError::Unavailable("Redis unreachable".into())) })
    }
    fn list<'a>(
        &'a self,
        user: &'a str,
        kind: Option<&'a str>,
    ) -> crate::store::StoreFuture<'a, Vec<Record>> {
        self.0.list(user, kind)
    }
    fn revoke<'a>(
        &'a self,
        user: &'a str,
        id: &'a crate::SessionId,
    ) -> crate::store::StoreFuture<'a, bool> {
        self.0.revoke(user, id)
    }
    fn revoke_all<'a>(
        &'a self,
        user: &'a str,
        kind: Option<&'a str>,
        keep: Option<&'a Token>,
    ) -> crate::store::StoreFuture<'a, u64> {
        self.0.revoke_all(user, kind, keep)
    }
}

/// A login whose retirement of the old session fails (the store went away
/// between the two calls) answers the error, hands out no new token and
/// leaves the client the token it had, which still opens its session; a
/// login whose first call fails does not clear the client's token either.
#[tokio::test]
async fn a_login_that_fails_midway_keeps_the_clients_token() {
    let memory = Arc::new(MemoryStore::default());
    let old = existing(&memory).await;
    let failing: Arc<dyn SessionStore> = Arc::new(FailingRetire((*memory).clone()));
    let s = Session::new(failing, policy(), Some(old.clone()), false);
    s.login("ada").await.unwrap();
    let err = s.save().await.unwrap_err();
    assert!(
        matches!(&err, SessionError::Store(e) if e.is_unavailable()),
        "{err:?}"
    );
    assert!(
        s.finish(false).await.unwrap().is_none(),
        "no new token, no clearing"
    );
    assert!(
        memory.load(&old).await.unwrap().is_some(),
        "the old session still opens"
    );
    assert!(
        memory.list("ada", None).await.unwrap().is_empty(),
        "the new one was deleted"
    );
}
