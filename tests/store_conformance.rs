//! The conformance suite: every case is written once against
//! `&dyn SessionStore` (plus raw access to what the store keeps, see
//! `common::stores::Tamper`) and runs against three stores:
//! `memory::<case>` ([`MemoryStore`]), `standalone::<case>` ([`RedisStore`]
//! on one real Redis) and `cluster::<case>` ([`RedisStore`] on a real
//! 3-master Redis Cluster). Each test uses a key prefix of its own.
//!
//! [`MemoryStore`]: tower_redis_sessions::MemoryStore
//! [`RedisStore`]: tower_redis_sessions::RedisStore

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use ciborium::Value;
use common::stores::{
    Deployment, ManualClock, Tamper, carry, eventually, grid_expiry, open, open_with, session_key,
    test_keyring,
};
use tower_redis_sessions::store::{Millis, Record, RetireOutcome, SaveOutcome, Token};
use tower_redis_sessions::{Keyring, SessionId, StoreConfig, StoreError};

/// Instantiates each case as `memory::<case>`, `standalone::<case>` and
/// `cluster::<case>`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Deployment::Memory).await;
                }
            )*
        }
        mod standalone {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Deployment::Standalone).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::Deployment::Cluster).await;
                }
            )*
        }
    };
}

conformance!(
    create_load_save,
    conflicts_carry_the_current_state,
    no_resurrection_after_delete,
    no_resurrection_after_revocation,
    listing_per_user_and_kind,
    listing_honours_max_listed,
    revocation,
    idle_expiry_drops_keys_and_blocks_resurrection,
    absolute_expiry_and_the_earlier_deadline,
    deadlines_follow_the_application_clock,
    application_clock_is_authoritative,
    sliding_expiry_happens_in_load,
    sliding_expiry_is_throttled,
    tampered_blobs_are_rejected_and_kept,
    moved_and_foreign_blobs_are_rejected,
    key_rotation,
    size_limit,
    ownership_changes_and_invalid_saves,
    a_save_past_its_deadline_is_gone,
    listing_pages_through_many_sessions,
    huge_timeouts_mean_never,
    rotation_moves_a_session_atomically,
    rotation_conflicts_and_never_revives,
    a_session_in_use_never_idles_out,
    retire_deletes_the_expected_version_only,
    retire_of_a_changed_session_returns_it,
    retire_finds_deleted_and_expired_sessions_gone,
    a_dead_session_created_again_is_listed,
    a_dead_session_held_on_the_grid_is_refused,
    a_foreign_expiry_write_is_never_trusted,
);

const MINUTE: Duration = Duration::from_secs(60);
/// How long an expired key may take to disappear, generously.
const SLACK: Duration = Duration::from_secs(10);

fn config() -> StoreConfig {
    StoreConfig::new(test_keyring())
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

/// A new record for `token`, with some data.
fn record(token: &Token, user: Option<&str>, kind: &str, now: Millis) -> Record {
    let mut r = Record::new(token.id(), kind, now);
    r.user = user.map(str::to_owned);
    r.data.insert("name".into(), text("ada"));
    r.data.insert("n".into(), Value::Integer(1.into()));
    r
}

/// Creates a session of `user` (or anonymous) with the given idle timeout.
async fn create(
    s: &dyn Tamper,
    user: Option<&str>,
    kind: &str,
    idle: Option<Duration>,
) -> (Token, Record) {
    let token = s.store().new_token(user).unwrap();
    let mut r = record(&token, user, kind, s.store().now());
    r.idle_timeout = idle;
    assert_eq!(
        s.store().save(&token, &r).await.unwrap(),
        SaveOutcome::Saved { version: 1 }
    );
    r.version = 1;
    (token, r)
}

async fn load(s: &dyn Tamper, token: &Token) -> Option<Record> {
    s.store().load(token).await.unwrap()
}

fn ids(records: &[Record]) -> Vec<SessionId> {
    records.iter().map(|r| r.id).collect()
}

fn id_set(records: &[Record]) -> BTreeSet<String> {
    records.iter().map(|r| r.id.to_string()).collect()
}

fn id_set_of(tokens: &[&Token]) -> BTreeSet<String> {
    tokens.iter().map(|t| t.id().to_string()).collect()
}

/// The user index keys (`<prefix>{tag}:u:*`) on the node of `token`.
fn index_keys(s: &dyn Tamper, token: &Token) -> Option<Vec<String>> {
    s.keys_near(token)
        .map(|keys| keys.into_iter().filter(|k| k.contains("}:u:")).collect())
}

async fn create_load_save(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    let token = s.store().new_token(Some("alice")).unwrap();
    let before = s.store().now();
    let mut r = record(&token, Some("alice"), "web", before);
    r.idle_timeout = Some(MINUTE);
    r.absolute_deadline = Some(before + 3_600_000);
    assert_eq!(
        s.store().save(&token, &r).await.unwrap(),
        SaveOutcome::Saved { version: 1 }
    );
    let after = s.store().now();

    let loaded = load(s, &token).await.expect("the session loads");
    assert_eq!(loaded.id, token.id());
    assert_eq!(loaded.user.as_deref(), Some("alice"));
    assert_eq!(loaded.kind, "web");
    assert_eq!(loaded.created_at, before);
    assert_eq!(loaded.idle_timeout, Some(MINUTE));
    assert_eq!(loaded.absolute_deadline, Some(before + 3_600_000));
    assert_eq!(loaded.data, r.data);
    assert_eq!(loaded.version, 1);
    assert!(
        (before..=after).contains(&loaded.last_seen),
        "last seen {} is the save's time, in {before}..={after}",
        loaded.last_seen
    );

    // Redis holds a hash of the token's secret, never the token.
    let text = token.to_string();
    let blob = s.blob(&token).expect("a blob is stored");
    let secret = &text.as_bytes()[9..];
    assert!(!blob.windows(secret.len()).any(|w| w == secret));
    assert!(!session_key(s.prefix(), &token).contains(&text[9..]));

    let mut next = loaded.clone();
    next.data.insert("n".into(), Value::Integer(2.into()));
    assert_eq!(
        s.store().save(&token, &next).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );
    let again = load(s, &token).await.unwrap();
    assert_eq!(again.version, 2);
    assert_eq!(again.data.get("n"), Some(&Value::Integer(2.into())));
    assert_eq!(again.created_at, before);

    // An anonymous session works the same way.
    let (anon, anon_record) = create(s, None, "web", None).await;
    let loaded = load(s, &anon).await.unwrap();
    assert_eq!(loaded.user, None);
    assert_eq!(loaded.data, anon_record.data);
    assert_eq!(loaded.deadline(), None);
    if s.deployment() != Deployment::Memory {
        // No deadline: the key does not expire.
        assert_eq!(s.expire_time(&anon), Some(-1));
    }
}

async fn conflicts_carry_the_current_state(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    let (token, original) = create(s, Some("bob"), "web", Some(MINUTE)).await;

    // A second creation of the same session (version 0) conflicts.
    let mut other = record(&token, Some("bob"), "web", s.store().now());
    other.data.insert("name".into(), text("intruder"));
    match s.store().save(&token, &other).await.unwrap() {
        SaveOutcome::Conflict(current) => {
            assert_eq!(current.version, 1);
            assert_eq!(current.data, original.data);
            assert_eq!(current.id, token.id());
        }
        outcome => panic!("version-0 save over an existing session: {outcome:?}"),
    }

    // Two writers read version 1; the first wins, the second gets its state.
    let mut first = load(s, &token).await.unwrap();
    let mut second = load(s, &token).await.unwrap();
    first.data.insert("name".into(), text("first"));
    second.data.insert("name".into(), text("second"));
    assert_eq!(
        s.store().save(&token, &first).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );
    match s.store().save(&token, &second).await.unwrap() {
        SaveOutcome::Conflict(current) => {
            assert_eq!(current.version, 2);
            assert_eq!(current.data.get("name"), Some(&text("first")));
            assert_eq!(current.user.as_deref(), Some("bob"));
        }
        outcome => panic!("stale save: {outcome:?}"),
    }
    // A version from the future conflicts too.
    let mut future = first.clone();
    future.version = 7;
    assert!(matches!(
        s.store().save(&token, &future).await.unwrap(),
        SaveOutcome::Conflict(ref c) if c.version == 2
    ));
    let stored = load(s, &token).await.unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(stored.data.get("name"), Some(&text("first")));
    assert_eq!(s.stats().conflicts, 3);

    // Merging into the conflict's record and saving again succeeds.
    let mut merged = stored;
    merged.data.insert("other".into(), text("second"));
    assert_eq!(
        s.store().save(&token, &merged).await.unwrap(),
        SaveOutcome::Saved { version: 3 }
    );
}

async fn no_resurrection_after_delete(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    for user in [Some("carol"), None] {
        let (token, _) = create(s, user, "web", Some(MINUTE)).await;
        let loaded = load(s, &token).await.unwrap();
        assert!(s.exists(&token));
        assert!(s.store().delete(&token).await.unwrap());
        assert!(!s.exists(&token), "the key is deleted");
        assert_eq!(load(s, &token).await, None);
        assert!(!s.store().delete(&token).await.unwrap(), "second delete");

        // A late save of the deleted session writes nothing.
        assert_eq!(
            s.store().save(&token, &loaded).await.unwrap(),
            SaveOutcome::Gone
        );
        let mut far = loaded.clone();
        far.version = 9;
        assert_eq!(
            s.store().save(&token, &far).await.unwrap(),
            SaveOutcome::Gone
        );
        assert!(!s.exists(&token), "a Gone save must not write the key");
        assert_eq!(load(s, &token).await, None);
    }
    assert_eq!(s.stats().revivals_blocked, 4);
    // Nothing at all is left under this prefix (no user index either).
    let probe = s.store().new_token(Some("carol")).unwrap();
    if let Some(keys) = s.keys_near(&probe) {
        assert_eq!(keys, Vec::<String>::new());
    }
    assert_eq!(s.store().list("carol", None).await.unwrap(), vec![]);
}

async fn no_resurrection_after_revocation(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    let (t1, _) = create(s, Some("dave"), "web", Some(MINUTE)).await;
    let (t2, _) = create(s, Some("dave"), "api", None).await;
    let (t3, _) = create(s, Some("dave"), "web", Some(MINUTE)).await;
    let l1 = load(s, &t1).await.unwrap();
    let l2 = load(s, &t2).await.unwrap();
    let l3 = load(s, &t3).await.unwrap();

    // One by id.
    assert!(s.store().revoke("dave", &t3.id()).await.unwrap());
    assert_eq!(s.store().save(&t3, &l3).await.unwrap(), SaveOutcome::Gone);
    assert!(!s.exists(&t3));

    // All the others.
    assert_eq!(s.store().revoke_all("dave", None, None).await.unwrap(), 2);
    for (token, loaded) in [(&t1, &l1), (&t2, &l2)] {
        assert_eq!(load(s, token).await, None);
        assert_eq!(
            s.store().save(token, loaded).await.unwrap(),
            SaveOutcome::Gone
        );
        assert!(!s.exists(token), "a revoked session stays gone");
    }
    assert_eq!(s.store().list("dave", None).await.unwrap(), vec![]);
    if let Some(keys) = s.keys_near(&t1) {
        assert_eq!(
            keys,
            Vec::<String>::new(),
            "index removed with the sessions"
        );
    }
    assert_eq!(s.stats().revivals_blocked, 3);
}

async fn listing_per_user_and_kind(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    // Different idle timeouts: the listing comes in the order they expire.
    let (w1, _) = create(s, Some("erin"), "web", Some(3 * MINUTE)).await;
    let (a1, _) = create(s, Some("erin"), "api", Some(MINUTE)).await;
    let (w2, _) = create(s, Some("erin"), "web", Some(2 * MINUTE)).await;
    let (f1, _) = create(s, Some("frank"), "web", Some(MINUTE)).await;
    let (anon, _) = create(s, None, "web", Some(MINUTE)).await;
    // Same tag for the same user, whatever the kind.
    assert_eq!(w1.to_string()[..8], a1.to_string()[..8]);
    assert_ne!(w1.to_string()[..8], f1.to_string()[..8]);

    let all = s.store().list("erin", None).await.unwrap();
    assert_eq!(ids(&all), vec![a1.id(), w2.id(), w1.id()], "deadline order");
    assert!(all.iter().all(|r| r.user.as_deref() == Some("erin")));
    assert!(
        all.iter()
            .all(|r| r.version == 1 && r.data.contains_key("name"))
    );

    let web = s.store().list("erin", Some("web")).await.unwrap();
    assert_eq!(ids(&web), vec![w2.id(), w1.id()]);
    assert!(web.iter().all(|r| r.kind == "web"));
    let api = s.store().list("erin", Some("api")).await.unwrap();
    assert_eq!(ids(&api), vec![a1.id()]);
    assert_eq!(s.store().list("erin", Some("cli")).await.unwrap(), vec![]);

    let frank = s.store().list("frank", None).await.unwrap();
    assert_eq!(ids(&frank), vec![f1.id()]);
    assert_eq!(s.store().list("nobody", None).await.unwrap(), vec![]);

    // The anonymous session is in nobody's listing, and still loads.
    let everyone: BTreeSet<String> = id_set(&all).union(&id_set(&frank)).cloned().collect();
    assert!(!everyone.contains(&anon.id().to_string()));
    assert!(load(s, &anon).await.is_some());

    // A deleted session leaves the listing.
    assert!(s.store().delete(&w2).await.unwrap());
    let all = s.store().list("erin", None).await.unwrap();
    assert_eq!(id_set(&all), id_set_of(&[&a1, &w1]));
}

async fn listing_honours_max_listed(d: Deployment) {
    let s = open(d, config().max_listed(2)).await;
    let s = s.as_ref();
    let (t3, _) = create(s, Some("gina"), "web", Some(3 * MINUTE)).await;
    let (t1, _) = create(s, Some("gina"), "web", Some(MINUTE)).await;
    let (t2, _) = create(s, Some("gina"), "api", Some(2 * MINUTE)).await;
    let listed = s.store().list("gina", None).await.unwrap();
    assert_eq!(
        ids(&listed),
        vec![t1.id(), t2.id()],
        "the first two to expire"
    );
    let web = s.store().list("gina", Some("web")).await.unwrap();
    assert_eq!(ids(&web), vec![t1.id(), t3.id()]);
    // The limit bounds the listing, not the revocation.
    assert_eq!(s.store().revoke_all("gina", None, None).await.unwrap(), 3);
}

async fn revocation(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    let (w1, _) = create(s, Some("hank"), "web", Some(MINUTE)).await;
    let (w2, _) = create(s, Some("hank"), "web", Some(MINUTE)).await;
    let (a1, _) = create(s, Some("hank"), "api", None).await;
    let (b1, _) = create(s, Some("iris"), "web", Some(MINUTE)).await;

    // Another user's session id: not theirs to revoke.
    assert!(!s.store().revoke("hank", &b1.id()).await.unwrap());
    assert!(!s.store().revoke("iris", &w1.id()).await.unwrap());
    assert!(load(s, &b1).await.is_some());
    assert!(load(s, &w1).await.is_some());

    // One kind only.
    assert_eq!(
        s.store()
            .revoke_all("hank", Some("api"), None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(load(s, &a1).await, None);
    assert!(load(s, &w1).await.is_some());
    assert!(load(s, &w2).await.is_some());
    assert_eq!(
        s.store()
            .revoke_all("hank", Some("api"), None)
            .await
            .unwrap(),
        0
    );

    // All but the current one.
    let (a2, _) = create(s, Some("hank"), "api", None).await;
    assert_eq!(
        s.store().revoke_all("hank", None, Some(&w1)).await.unwrap(),
        2
    );
    assert!(load(s, &w1).await.is_some());
    assert_eq!(load(s, &w2).await, None);
    assert_eq!(load(s, &a2).await, None);
    assert_eq!(
        ids(&s.store().list("hank", None).await.unwrap()),
        vec![w1.id()]
    );

    // One by id.
    assert!(s.store().revoke("hank", &w1.id()).await.unwrap());
    assert!(!s.store().revoke("hank", &w1.id()).await.unwrap());
    assert_eq!(load(s, &w1).await, None);
    assert_eq!(s.store().revoke_all("hank", None, None).await.unwrap(), 0);

    // The other user was never touched.
    assert!(load(s, &b1).await.is_some());
    assert_eq!(s.store().revoke_all("iris", None, None).await.unwrap(), 1);
    assert_eq!(load(s, &b1).await, None);
}

/// Asserts that `life` has passed since `start` on the store's clock.
fn assert_not_early(s: &dyn Tamper, start: Millis, life: Duration) {
    let elapsed = s.store().now() - start;
    assert!(
        elapsed >= life.as_millis() as u64,
        "the session ended {elapsed} ms after its creation, before its {life:?}"
    );
}

/// Waits until Redis (its own clock) has dropped every key of this prefix
/// near `token` (session and user index); memory: until the entry is gone.
async fn wait_until_dropped(s: &dyn Tamper, token: &Token) {
    eventually!("session key dropped", SLACK, !s.exists(token));
    if s.keys_near(token).is_some() {
        eventually!(
            "every key of the prefix (user index too) dropped",
            SLACK,
            s.keys_near(token) == Some(vec![])
        );
    }
}

async fn idle_expiry_drops_keys_and_blocks_resurrection(d: Deployment) {
    let idle = Duration::from_secs(1);
    let s = open(d, config()).await;
    let s = s.as_ref();
    let start = s.store().now();
    let (token, _) = create(s, Some("jack"), "web", Some(idle)).await;
    let (anon, _) = create(s, None, "web", Some(idle)).await;
    let loaded = load(s, &token).await;
    if let Some(keys) = index_keys(s, &token)
        && s.store().now() - start < idle.as_millis() as u64
    {
        assert_eq!(
            keys.len(),
            1,
            "the user's index exists while the session lives"
        );
    }
    let anon_loaded = load(s, &anon).await;
    if anon_loaded.is_none() {
        assert_not_early(s, start, idle);
    }

    // Wait past both idle deadlines without loading (a load would extend
    // them: sessions in use do not idle out).
    let ends = [loaded.as_ref(), anon_loaded.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(Record::deadline)
        .max()
        .unwrap_or(start + idle.as_millis() as u64);
    while s.store().now() <= ends {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(load(s, &token).await, None, "idle session ends");
    assert_eq!(load(s, &anon).await, None, "idle session ends");
    assert_not_early(s, start, idle);
    wait_until_dropped(s, &token).await;
    wait_until_dropped(s, &anon).await;

    // The expired session stays gone.
    if let Some(loaded) = loaded {
        assert_eq!(
            s.store().save(&token, &loaded).await.unwrap(),
            SaveOutcome::Gone
        );
        assert!(!s.exists(&token), "no resurrection after expiry");
    }
    assert_eq!(s.store().list("jack", None).await.unwrap(), vec![]);
    assert_eq!(s.store().revoke_all("jack", None, None).await.unwrap(), 0);
}

async fn absolute_expiry_and_the_earlier_deadline(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    let life = Duration::from_millis(1500);
    let now = s.store().now();
    // Absolute deadline only; and an absolute deadline before the idle one.
    let mut tokens = Vec::new();
    for idle in [None, Some(MINUTE)] {
        let token = s.store().new_token(Some("kate")).unwrap();
        let mut r = record(&token, Some("kate"), "web", now);
        r.idle_timeout = idle;
        r.absolute_deadline = Some(now + 1_500);
        assert_eq!(
            s.store().save(&token, &r).await.unwrap(),
            SaveOutcome::Saved { version: 1 }
        );
        tokens.push(token);
    }
    // An idle timeout before the absolute deadline.
    let token = s.store().new_token(Some("kate")).unwrap();
    let mut r = record(&token, Some("kate"), "api", now);
    r.idle_timeout = Some(life);
    r.absolute_deadline = Some(now + 3_600_000);
    s.store().save(&token, &r).await.unwrap();
    tokens.push(token);

    // Each session's deadline as last loaded; then wait past the latest
    // without loading (a load would extend the idle one).
    let mut ends = now + 1_500;
    for token in &tokens {
        match load(s, token).await {
            Some(r) => ends = ends.max(r.deadline().unwrap()),
            None => assert_not_early(s, now, life),
        }
    }
    while s.store().now() <= ends {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for token in &tokens {
        assert_eq!(
            load(s, token).await,
            None,
            "the session ends at its earlier deadline"
        );
    }
    for token in &tokens {
        wait_until_dropped(s, token).await;
    }
    assert_eq!(s.store().list("kate", None).await.unwrap(), vec![]);
}

async fn deadlines_follow_the_application_clock(d: Deployment) {
    let clock = ManualClock::now_real();
    let s = open(d, clock.install(config()).touch_interval(Duration::ZERO)).await;
    let s = s.as_ref();
    let t0 = clock.get();

    // idle 20 s + absolute in 1 h: the idle deadline is the earlier.
    let (a, _) = {
        let token = s.store().new_token(Some("liam")).unwrap();
        let mut r = record(&token, Some("liam"), "web", t0);
        r.idle_timeout = Some(Duration::from_secs(20));
        r.absolute_deadline = Some(t0 + 3_600_000);
        s.store().save(&token, &r).await.unwrap();
        (token, r)
    };
    // idle 1 h + absolute in 30 s: the absolute deadline is the earlier.
    let (b, _) = {
        let token = s.store().new_token(Some("liam")).unwrap();
        let mut r = record(&token, Some("liam"), "web", t0);
        r.idle_timeout = Some(Duration::from_secs(3600));
        r.absolute_deadline = Some(t0 + 30_000);
        s.store().save(&token, &r).await.unwrap();
        (token, r)
    };
    assert_eq!(load(s, &a).await.unwrap().deadline(), Some(t0 + 20_000));
    assert_eq!(load(s, &b).await.unwrap().deadline(), Some(t0 + 30_000));
    // Redis' expiries sit on the grid of each idle timeout (E(deadline) in
    // lua/sessions.lua): never before the deadline, less than a step after.
    let a_at = |d: u64| grid_expiry(d, 20_000);
    let b_at = |d: u64| grid_expiry(d, 3_600_000);
    assert!(a_at(t0 + 20_000) >= t0 + 20_000 && a_at(t0 + 20_000) < t0 + 21_000);
    if s.deployment() != Deployment::Memory {
        assert_eq!(s.expire_time(&a), Some(a_at(t0 + 20_000) as i64));
        assert_eq!(s.expire_time(&b), Some(b_at(t0 + 30_000) as i64));
        // The index lives as long as its longest-lived session.
        let index = index_keys(s, &a).unwrap();
        assert_eq!(index.len(), 1);
        let ttl = s.raw(&index[0], &[b"PEXPIRETIME", index[0].as_bytes()]);
        let top = a_at(t0 + 20_000).max(b_at(t0 + 30_000));
        assert_eq!(ttl.and_then(|r| r.as_int()), Some(top as i64));
    }

    // At t0 + 19.999 s `a` is alive and its load slides it to t0 + 39.999 s.
    clock.set(t0 + 19_999);
    let a_loaded = load(s, &a)
        .await
        .expect("alive just before its idle deadline");
    assert_eq!(a_loaded.last_seen, t0 + 19_999);
    assert_eq!(a_loaded.deadline(), Some(t0 + 39_999));
    // `b` slides too, but stays capped by its absolute deadline.
    let b_loaded = load(s, &b)
        .await
        .expect("alive before its absolute deadline");
    assert_eq!(b_loaded.deadline(), Some(t0 + 30_000));
    if s.deployment() != Deployment::Memory {
        assert_eq!(s.expire_time(&a), Some(a_at(t0 + 39_999) as i64));
        assert_eq!(s.expire_time(&b), Some(b_at(t0 + 30_000) as i64));
    }

    // At the absolute deadline `b` ends, whatever its activity.
    clock.set(t0 + 30_000);
    assert_eq!(load(s, &b).await, None);
    assert!(load(s, &a).await.is_some());
    // And `a` ends 20 s after it was last seen.
    clock.set(t0 + 30_000 + 20_000);
    assert_eq!(load(s, &a).await, None);
    assert_eq!(s.store().list("liam", None).await.unwrap(), vec![]);
}

async fn application_clock_is_authoritative(d: Deployment) {
    let clock = ManualClock::now_real();
    let s = open(d, clock.install(config())).await;
    let s = s.as_ref();
    let (token, _) = create(s, Some("mia"), "web", Some(MINUTE)).await;
    let (other, _) = create(s, Some("mia"), "web", None).await;
    let (idle, _) = create(s, Some("mia"), "api", Some(MINUTE)).await;
    let loaded = load(s, &token).await.unwrap();

    // By the application's clock the session is over; Redis' clock is
    // "behind" and still holds the key.
    clock.advance(61_000);
    assert_eq!(load(s, &token).await, None);
    if s.deployment() != Deployment::Memory {
        assert!(s.exists(&token), "Redis still holds the key");
        assert!(s.exists(&idle), "Redis still holds the key");
    }
    // Revoking counts only live sessions: not `idle`, dead by the
    // application's clock though Redis still holds it.
    assert_eq!(
        s.store()
            .revoke_all("mia", Some("api"), None)
            .await
            .unwrap(),
        0
    );
    assert_eq!(load(s, &idle).await, None);
    // Listing shows only the live one.
    assert_eq!(
        ids(&s.store().list("mia", None).await.unwrap()),
        vec![other.id()]
    );
    // A save of the dead session is gone, and does not write it back.
    assert_eq!(
        s.store().save(&token, &loaded).await.unwrap(),
        SaveOutcome::Gone
    );
    assert!(!s.exists(&token), "the dead session is not written back");
    assert_eq!(load(s, &token).await, None);
    assert_eq!(s.store().revoke_all("mia", None, None).await.unwrap(), 1);
    assert!(!s.exists(&other));
}

async fn sliding_expiry_happens_in_load(d: Deployment) {
    let clock = ManualClock::now_real();
    let config = clock
        .install(config())
        .touch_interval(Duration::from_millis(100));
    let s = open(d, config).await;
    let s = s.as_ref();
    let t0 = clock.get();
    let (token, _) = create(s, Some("noah"), "web", Some(MINUTE)).await;
    let (anon, _) = create(s, None, "web", Some(MINUTE)).await;
    let redis = s.deployment() != Deployment::Memory;
    let index = index_keys(s, &token).map(|keys| keys[0].clone());
    let key = session_key(s.prefix(), &token);
    let score = || {
        let index = index.as_ref()?;
        let reply = s.raw(index, &[b"ZSCORE", index.as_bytes(), key.as_bytes()])?;
        Some(reply.as_str()?.parse::<u64>().unwrap())
    };
    let at = |d: u64| grid_expiry(d, 60_000);
    if redis {
        assert_eq!(s.expire_time(&token), Some(at(t0 + 60_000) as i64));
        assert_eq!(score(), Some(at(t0 + 60_000)));
    }

    // Within the touch interval: nothing moves.
    clock.set(t0 + 50);
    for t in [&token, &anon] {
        assert_eq!(load(s, t).await.unwrap().last_seen, t0);
    }
    if redis {
        assert_eq!(s.expire_time(&token), Some(at(t0 + 60_000) as i64));
    }

    // Past it: the load itself moves last seen, the key's expiry and the
    // index score.
    clock.set(t0 + 500);
    for t in [&token, &anon] {
        let loaded = load(s, t).await.unwrap();
        assert_eq!(loaded.last_seen, t0 + 500);
        assert_eq!(loaded.deadline(), Some(t0 + 60_500));
        assert_eq!(loaded.version, 1, "sliding is not a save");
    }
    if redis {
        assert_eq!(s.expire_time(&token), Some(at(t0 + 60_500) as i64));
        assert_eq!(s.expire_time(&anon), Some(at(t0 + 60_500) as i64));
        assert_eq!(score(), Some(at(t0 + 60_500)));
    }
    // What the next load (and the listing) sees is the moved time.
    clock.set(t0 + 550);
    assert_eq!(load(s, &token).await.unwrap().last_seen, t0 + 500);
    let listed = s.store().list("noah", None).await.unwrap();
    assert_eq!(listed[0].last_seen, t0 + 500);

    // Sliding keeps a busy session alive past its first idle deadline.
    clock.set(t0 + 59_000);
    assert!(load(s, &token).await.is_some());
    clock.set(t0 + 110_000);
    assert!(
        load(s, &token).await.is_some(),
        "alive 51 s after its last load"
    );
    assert_eq!(load(s, &anon).await, None, "not loaded since t0+500");
}

async fn sliding_expiry_is_throttled(d: Deployment) {
    let clock = ManualClock::now_real();
    let config = clock
        .install(config())
        .touch_interval(Duration::from_secs(10));
    let s = open(d, config).await;
    let s = s.as_ref();
    let t0 = clock.get();
    let (token, _) = create(s, Some("olga"), "web", Some(MINUTE)).await;
    let blob = s.blob(&token);
    for offset in [1, 500, 9_999] {
        clock.set(t0 + offset);
        let loaded = load(s, &token).await.unwrap();
        assert_eq!(loaded.last_seen, t0, "no touch within the interval");
        if s.deployment() != Deployment::Memory {
            assert_eq!(
                s.expire_time(&token),
                Some(grid_expiry(t0 + 60_000, 60_000) as i64)
            );
        }
    }
    clock.set(t0 + 10_000);
    assert_eq!(load(s, &token).await.unwrap().last_seen, t0 + 10_000);
    clock.set(t0 + 15_000);
    assert_eq!(load(s, &token).await.unwrap().last_seen, t0 + 10_000);
    if s.deployment() != Deployment::Memory {
        assert_eq!(
            s.expire_time(&token),
            Some(grid_expiry(t0 + 70_000, 60_000) as i64)
        );
    }
    // A touch never rewrites the sealed record.
    assert_eq!(s.blob(&token), blob);
}

async fn tampered_blobs_are_rejected_and_kept(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    let (token, _) = create(s, Some("pete"), "web", Some(MINUTE)).await;
    let original = s.blob(&token).unwrap();
    assert!(original.len() > 40);

    let mut mac = original.clone();
    mac[10] ^= 0x01;
    let mut body = original.clone();
    *body.last_mut().unwrap() ^= 0x01;
    let mut format = original.clone();
    format[0] = 2;
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("flipped MAC byte", mac),
        ("flipped body byte", body),
        ("unknown envelope format", format),
        (
            "truncated by one byte",
            original[..original.len() - 1].to_vec(),
        ),
        ("truncated inside the header", original[..20].to_vec()),
        ("empty", Vec::new()),
    ];
    let mut rejected = s.stats().rejected_blobs;
    assert_eq!(rejected, 0);
    for (what, bad) in variants {
        assert!(s.set_blob(&token, &bad));
        assert_eq!(load(s, &token).await, None, "{what}: loads as no session");
        rejected += 1;
        assert_eq!(s.stats().rejected_blobs, rejected, "{what}: counted");
        assert!(s.exists(&token), "{what}: nothing deleted");
        assert_eq!(s.blob(&token), Some(bad), "{what}: left as it was");
        // Listing skips it (and counts it).
        assert_eq!(s.store().list("pete", None).await.unwrap(), vec![]);
        rejected += 1;
        assert_eq!(s.stats().rejected_blobs, rejected);
    }
    // Put back, the untouched original opens again: nothing else changed.
    assert!(s.set_blob(&token, &original));
    let loaded = load(s, &token).await.unwrap();
    assert_eq!(loaded.version, 1);
    assert_eq!(s.store().list("pete", None).await.unwrap().len(), 1);
}

async fn moved_and_foreign_blobs_are_rejected(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    // Moved: A's blob copied into B's key (same user, same hash slot).
    let (a, _) = create(s, Some("quin"), "web", Some(MINUTE)).await;
    let (b, _) = create(s, Some("quin"), "web", Some(MINUTE)).await;
    let blob_a = s.blob(&a).unwrap();
    assert!(s.set_blob(&b, &blob_a));
    assert_eq!(load(s, &b).await, None, "a blob moved to another key");
    assert!(s.exists(&b));
    assert_eq!(s.stats().rejected_blobs, 1);
    assert_eq!(load(s, &a).await.unwrap().id, a.id(), "A still loads");
    // Across users and anonymous sessions too.
    let (c, _) = create(s, None, "web", None).await;
    assert!(s.set_blob(&c, &blob_a));
    assert_eq!(load(s, &c).await, None);
    assert_eq!(s.stats().rejected_blobs, 2);

    // Signed with a key this store does not hold.
    let stranger_config = StoreConfig::new(Keyring::new([9u8; 32]).unwrap());
    let stranger = open_with(d, stranger_config, s.prefix()).await;
    let stranger = stranger.as_ref();
    let (foreign, _) = create(stranger, None, "web", Some(MINUTE)).await;
    assert!(load(stranger, &foreign).await.is_some());
    carry(stranger, s, &foreign).await;
    assert_eq!(load(s, &foreign).await, None, "unknown signing key");
    assert!(s.exists(&foreign), "nothing deleted");
    assert_eq!(s.stats().rejected_blobs, 3);
    // The stranger's own session is untouched by the failed load.
    assert!(load(stranger, &foreign).await.is_some());
}

async fn key_rotation(d: Deployment) {
    let (k1, k2) = ([1u8; 32], [2u8; 32]);
    let prefix = common::stores::unique_prefix("rot");
    let old = open_with(d, StoreConfig::new(Keyring::new(k1).unwrap()), &prefix).await;
    let rotated_keys = Keyring::new(k1).unwrap().rotate(k2).unwrap();
    let rotated = open_with(d, StoreConfig::new(rotated_keys.clone()), &prefix).await;
    let only_new = open_with(d, StoreConfig::new(Keyring::new(k2).unwrap()), &prefix).await;
    let (old, rotated, only_new) = (old.as_ref(), rotated.as_ref(), only_new.as_ref());

    // Routing does not move: the same user gets the same tag before and after.
    let before = old.store().new_token(Some("rosa")).unwrap();
    let after = rotated.store().new_token(Some("rosa")).unwrap();
    assert_eq!(before.to_string()[..8], after.to_string()[..8]);

    // A blob written with K1 opens under K1.rotate(K2).
    let (token, written) = create(old, Some("rosa"), "web", Some(MINUTE)).await;
    let k1_blob = old.blob(&token).unwrap();
    carry(old, rotated, &token).await;
    let mut loaded = load(rotated, &token)
        .await
        .expect("old blob opens after rotation");
    assert_eq!(loaded.data, written.data);
    assert_eq!(loaded.user.as_deref(), Some("rosa"));
    assert_eq!(rotated.stats().rejected_blobs, 0);

    // Saving through the rotated store re-signs with K2.
    loaded.data.insert("n".into(), Value::Integer(2.into()));
    assert!(matches!(
        rotated.store().save(&token, &loaded).await.unwrap(),
        SaveOutcome::Saved { .. }
    ));
    let k2_blob = rotated.blob(&token).unwrap();
    assert_ne!(
        k2_blob[1..5],
        k1_blob[1..5],
        "a different key id in the envelope"
    );
    let key_id: String = k2_blob[1..5].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(key_id, rotated_keys.key_id());
    // The user's listing still finds it (same index, same slot).
    assert_eq!(
        ids(&rotated.store().list("rosa", None).await.unwrap()),
        vec![token.id()]
    );

    // A store with K1 only no longer opens it; one with K2 only does.
    carry(rotated, old, &token).await;
    assert_eq!(load(old, &token).await, None);
    assert_eq!(old.stats().rejected_blobs, 1);
    carry(rotated, only_new, &token).await;
    let reopened = load(only_new, &token)
        .await
        .expect("K2 alone opens the new blob");
    assert_eq!(reopened.data.get("n"), Some(&Value::Integer(2.into())));
    assert!(old.exists(&token), "a rejected blob is not deleted");
}

async fn size_limit(d: Deployment) {
    let s = open(d, config().max_sealed_size(1024)).await;
    let s = s.as_ref();
    let big = text(&"x".repeat(2000));

    // A new session too large: refused, nothing written.
    let token = s.store().new_token(Some("sam")).unwrap();
    let mut r = record(&token, Some("sam"), "web", s.store().now());
    r.data.insert("big".into(), big.clone());
    match s.store().save(&token, &r).await {
        Err(StoreError::TooLarge { size, max }) => {
            assert_eq!(max, 1024);
            assert!(size > 2000, "size {size}");
        }
        other => panic!("oversized save: {other:?}"),
    }
    assert!(!s.exists(&token));
    assert_eq!(load(s, &token).await, None);
    assert_eq!(s.store().list("sam", None).await.unwrap(), vec![]);

    // An existing session grown too large: refused, the stored one unchanged.
    let (token, _) = create(s, Some("sam"), "web", Some(MINUTE)).await;
    let blob = s.blob(&token);
    let mut grown = load(s, &token).await.unwrap();
    grown.data.insert("big".into(), big);
    assert!(matches!(
        s.store().save(&token, &grown).await,
        Err(StoreError::TooLarge { max: 1024, .. })
    ));
    assert_eq!(s.blob(&token), blob);
    let stored = load(s, &token).await.unwrap();
    assert_eq!(stored.version, 1);
    assert!(!stored.data.contains_key("big"));
    // Just under the limit is fine.
    let mut fits = stored;
    fits.data.insert("big".into(), text(&"y".repeat(700)));
    assert_eq!(
        s.store().save(&token, &fits).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );
}

async fn ownership_changes_and_invalid_saves(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    // An odd user id: it only ever reaches Redis as a keyed hash.
    let user = "ünï {x}:s:*";
    let (token, _) = create(s, Some(user), "web", Some(MINUTE)).await;
    let (kept, _) = create(s, Some(user), "web", Some(MINUTE)).await;
    assert_eq!(s.store().list(user, None).await.unwrap().len(), 2);

    // The same token saved without its user (a logout keeping the session):
    // it leaves the user's index, and still loads.
    let mut anonymous = load(s, &token).await.unwrap();
    anonymous.user = None;
    assert_eq!(
        s.store().save(&token, &anonymous).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );
    assert_eq!(
        ids(&s.store().list(user, None).await.unwrap()),
        vec![kept.id()]
    );
    assert_eq!(load(s, &token).await.unwrap().user, None);
    assert!(!s.store().revoke(user, &token.id()).await.unwrap());
    assert_eq!(s.store().revoke_all(user, None, None).await.unwrap(), 1);
    assert!(load(s, &token).await.is_some(), "no longer the user's");

    // A user's record under a token not made for that user is refused, so
    // that a user's sessions always share one hash slot.
    let anon_token = s.store().new_token(None).unwrap();
    let r = record(&anon_token, Some(user), "web", s.store().now());
    assert!(matches!(
        s.store().save(&anon_token, &r).await,
        Err(StoreError::Invalid(_))
    ));
    let other_user = s.store().new_token(Some("someone else")).unwrap();
    let r = record(&other_user, Some(user), "web", s.store().now());
    assert!(matches!(
        s.store().save(&other_user, &r).await,
        Err(StoreError::Invalid(_))
    ));
    // A record saved under another session's token is refused.
    let r = record(&kept, Some(user), "web", s.store().now());
    let wrong = s.store().new_token(Some(user)).unwrap();
    assert!(matches!(
        s.store().save(&wrong, &r).await,
        Err(StoreError::Invalid(_))
    ));
    for t in [&anon_token, &other_user, &wrong] {
        assert!(!s.exists(t), "an invalid save writes nothing");
    }
}

async fn a_save_past_its_deadline_is_gone(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    let now = s.store().now();
    // Created already over: not stored.
    let token = s.store().new_token(Some("tess")).unwrap();
    let mut r = record(&token, Some("tess"), "web", now);
    r.absolute_deadline = Some(now - 1);
    assert_eq!(s.store().save(&token, &r).await.unwrap(), SaveOutcome::Gone);
    assert!(!s.exists(&token));
    assert_eq!(s.store().list("tess", None).await.unwrap(), vec![]);

    // An existing session saved with a deadline in the past ends now.
    let (token, _) = create(s, Some("tess"), "web", Some(MINUTE)).await;
    let mut over = load(s, &token).await.unwrap();
    over.absolute_deadline = Some(now - 1);
    assert_eq!(
        s.store().save(&token, &over).await.unwrap(),
        SaveOutcome::Gone
    );
    assert_eq!(load(s, &token).await, None);
    assert!(!s.exists(&token));
    assert_eq!(s.store().list("tess", None).await.unwrap(), vec![]);
}

async fn listing_pages_through_many_sessions(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    // More sessions than the library inspects per page (64): the `api`
    // ones expire last, so they sit on the second page of the index.
    let mut web = Vec::new();
    for i in 0..70u64 {
        let idle = Duration::from_secs(600 + i);
        web.push(create(s, Some("uma"), "web", Some(idle)).await.0);
    }
    let mut api = Vec::new();
    for i in 0..3u64 {
        let idle = Duration::from_secs(3600 + i);
        api.push(create(s, Some("uma"), "api", Some(idle)).await.0);
    }
    let listed = s.store().list("uma", Some("api")).await.unwrap();
    assert_eq!(ids(&listed), api.iter().map(Token::id).collect::<Vec<_>>());
    assert_eq!(s.store().list("uma", None).await.unwrap().len(), 73);
    let web_ids: Vec<SessionId> = web.iter().map(Token::id).collect();
    assert_eq!(
        ids(&s.store().list("uma", Some("web")).await.unwrap()),
        web_ids
    );

    // Sessions that vanished behind the store's back (evicted, deleted by
    // hand) are skipped, and their index entries pruned.
    if s.deployment() != Deployment::Memory {
        for token in &web[..5] {
            let key = session_key(s.prefix(), token);
            s.raw(&key, &[b"DEL", key.as_bytes()]).unwrap();
        }
        assert_eq!(s.store().list("uma", None).await.unwrap().len(), 68);
        let index = index_keys(s, &web[0]).unwrap();
        let card = s.raw(&index[0], &[b"ZCARD", index[0].as_bytes()]).unwrap();
        assert_eq!(card.as_int(), Some(68), "vanished entries pruned");
    } else {
        for token in &web[..5] {
            assert!(s.store().delete(token).await.unwrap());
        }
    }
    assert_eq!(
        s.store()
            .revoke_all("uma", Some("web"), None)
            .await
            .unwrap(),
        65
    );
    assert_eq!(
        s.store()
            .revoke_all("uma", None, Some(&api[1]))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        ids(&s.store().list("uma", None).await.unwrap()),
        vec![api[1].id()]
    );
}

async fn huge_timeouts_mean_never(d: Deployment) {
    let clock = ManualClock::now_real();
    let s = open(d, clock.install(config()).touch_interval(Duration::ZERO)).await;
    let s = s.as_ref();
    // "No limit" written as the largest duration or time there is.
    let (idle, _) = create(s, Some("vito"), "web", Some(Duration::MAX)).await;
    let (secs, _) = create(s, Some("vito"), "web", Some(Duration::from_secs(u64::MAX))).await;
    let absolute = {
        let token = s.store().new_token(Some("vito")).unwrap();
        let mut r = record(&token, Some("vito"), "web", s.store().now());
        r.absolute_deadline = Some(u64::MAX);
        r.idle_timeout = Some(MINUTE);
        assert_eq!(
            s.store().save(&token, &r).await.unwrap(),
            SaveOutcome::Saved { version: 1 }
        );
        token
    };
    let all = [&idle, &secs, &absolute];
    for token in all {
        assert!(load(s, token).await.is_some());
    }
    if s.deployment() != Deployment::Memory {
        assert_eq!(s.expire_time(&idle), Some(-1), "no expiry");
        assert_eq!(s.expire_time(&secs), Some(-1), "no expiry");
    }
    // They are the user's sessions: listed, and revocable.
    assert_eq!(
        id_set(&s.store().list("vito", None).await.unwrap()),
        id_set_of(&all)
    );
    clock.advance(30_000);
    for token in all {
        assert!(load(s, token).await.is_some());
    }
    assert_eq!(s.store().list("vito", None).await.unwrap().len(), 3);
    assert_eq!(s.store().revoke_all("vito", None, None).await.unwrap(), 3);
    for token in all {
        assert_eq!(load(s, token).await, None);
    }
}

/// A copy of `r` under `to`, as `rotate` takes it.
fn moved(r: &Record, to: &Token) -> Record {
    let mut r = r.clone();
    r.id = to.id();
    r
}

async fn rotation_moves_a_session_atomically(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    for user in [Some("rosa"), None] {
        let (old, r) = create(s, user, "web", Some(MINUTE)).await;
        let new = old.renew().unwrap();
        assert_ne!(new, old);
        assert_eq!(
            s.store()
                .rotate(&old, &new, &moved(&r, &new))
                .await
                .unwrap(),
            SaveOutcome::Saved { version: 2 }
        );
        assert!(!s.exists(&old), "the old key is gone in the same call");
        assert_eq!(load(s, &old).await, None);
        let loaded = load(s, &new).await.unwrap();
        assert_eq!((loaded.version, &loaded.data), (2, &r.data));
        assert_eq!(loaded.id, new.id());
        if let Some(user) = user {
            let listed = s.store().list(user, None).await.unwrap();
            let ids: Vec<SessionId> = listed.iter().map(|r| r.id).collect();
            assert_eq!(ids, vec![new.id()], "the index follows the move");
        }
        // A token of another slot is refused before anything is sent.
        let elsewhere = s.store().new_token(Some("someone else")).unwrap();
        assert!(matches!(
            s.store()
                .rotate(&new, &elsewhere, &moved(&loaded, &elsewhere))
                .await,
            Err(StoreError::Invalid(_))
        ));
        if user.is_some() {
            // Another session of the user has the same tag: moving onto its
            // token is refused, and changes nothing.
            let (taken, _) = create(s, user, "web", Some(MINUTE)).await;
            assert!(matches!(
                s.store()
                    .rotate(&new, &taken, &moved(&loaded, &taken))
                    .await,
                Err(StoreError::Invalid(_))
            ));
            assert!(s.exists(&new) && s.exists(&taken));
        }
    }
}

async fn rotation_conflicts_and_never_revives(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    let (old, r) = create(s, Some("sam"), "web", Some(MINUTE)).await;
    // Another writer saved version 2 meanwhile: the move is refused and the
    // conflict carries the current session (under the old id).
    let mut other = r.clone();
    other.data.insert("n".into(), Value::Integer(42.into()));
    assert_eq!(
        s.store().save(&old, &other).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );
    let new = old.renew().unwrap();
    match s
        .store()
        .rotate(&old, &new, &moved(&r, &new))
        .await
        .unwrap()
    {
        SaveOutcome::Conflict(current) => {
            assert_eq!(current.version, 2);
            assert_eq!(current.id, old.id());
            assert_eq!(current.data.get("n"), Some(&Value::Integer(42.into())));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(s.exists(&old) && !s.exists(&new), "nothing moved");
    // Revoked meanwhile: the move finds it gone and creates nothing.
    assert_eq!(s.store().revoke_all("sam", None, None).await.unwrap(), 1);
    let mut latest = moved(&other, &new);
    latest.version = 2;
    assert_eq!(
        s.store().rotate(&old, &new, &latest).await.unwrap(),
        SaveOutcome::Gone
    );
    assert!(
        !s.exists(&old) && !s.exists(&new),
        "no revival under a new token"
    );
    assert_eq!(s.store().list("sam", None).await.unwrap(), vec![]);
}

async fn a_session_in_use_never_idles_out(d: Deployment) {
    // The default touch interval (60 s) is far longer than the idle timeout;
    // loads still extend the session at least every half idle timeout.
    let idle = Duration::from_millis(800);
    let s = open(d, config()).await;
    let s = s.as_ref();
    let (token, _) = create(s, Some("uma"), "web", Some(idle)).await;
    let start = s.store().now();
    while s.store().now() - start < 3 * idle.as_millis() as u64 {
        tokio::time::sleep(idle / 4).await;
        assert!(
            load(s, &token).await.is_some(),
            "a session loaded every quarter idle timeout stays alive"
        );
    }
}

async fn retire_deletes_the_expected_version_only(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    for user in [Some("vera"), None] {
        let (token, r) = create(s, user, "web", Some(MINUTE)).await;
        let (other, _) = create(s, user, "web", Some(MINUTE)).await;
        assert_eq!(
            s.store().retire(&token, 1).await.unwrap(),
            RetireOutcome::Deleted
        );
        assert!(!s.exists(&token), "the key is deleted");
        assert_eq!(load(s, &token).await, None);
        if let Some(user) = user {
            assert_eq!(
                ids(&s.store().list(user, None).await.unwrap()),
                vec![other.id()],
                "the index entry left with the session"
            );
        }
        // Retired once: a second retire, and a late save, find it gone.
        assert_eq!(
            s.store().retire(&token, 1).await.unwrap(),
            RetireOutcome::Gone
        );
        assert_eq!(s.store().save(&token, &r).await.unwrap(), SaveOutcome::Gone);
        assert!(!s.exists(&token), "no revival after a retire");
        assert!(load(s, &other).await.is_some(), "the other session stays");
    }
    // The last session of a user retired: the index goes with it.
    let (token, _) = create(s, Some("wes"), "web", Some(MINUTE)).await;
    assert_eq!(
        s.store().retire(&token, 1).await.unwrap(),
        RetireOutcome::Deleted
    );
    let tag = format!("{{{}}}:u:", &token.to_string()[..8]);
    if let Some(keys) = index_keys(s, &token) {
        let left: Vec<&String> = keys.iter().filter(|k| k.contains(&tag)).collect();
        assert_eq!(left, Vec::<&String>::new(), "no index left behind");
    }
}

async fn retire_of_a_changed_session_returns_it(d: Deployment) {
    let s = open(d, config()).await;
    let s = s.as_ref();
    let (token, r) = create(s, Some("xena"), "web", Some(MINUTE)).await;
    // Another writer saved version 2 after version 1 was read.
    let mut other = r.clone();
    other.data.insert("n".into(), Value::Integer(42.into()));
    assert_eq!(
        s.store().save(&token, &other).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );
    for stale in [1, 0, 3] {
        match s.store().retire(&token, stale).await.unwrap() {
            RetireOutcome::Conflict(current) => {
                assert_eq!(current.version, 2);
                assert_eq!(current.id, token.id());
                assert_eq!(current.data.get("n"), Some(&Value::Integer(42.into())));
            }
            other => panic!("retire of version {stale}: expected a conflict, got {other:?}"),
        }
    }
    assert!(s.exists(&token), "a conflict deletes nothing");
    assert_eq!(
        ids(&s.store().list("xena", None).await.unwrap()),
        vec![token.id()]
    );
    assert_eq!(s.stats().conflicts, 3);
    // Deciding again from the current version succeeds.
    assert_eq!(
        s.store().retire(&token, 2).await.unwrap(),
        RetireOutcome::Deleted
    );
    assert_eq!(load(s, &token).await, None);
}

async fn retire_finds_deleted_and_expired_sessions_gone(d: Deployment) {
    let clock = ManualClock::now_real();
    let s = open(d, clock.install(config())).await;
    let s = s.as_ref();
    let (deleted, _) = create(s, Some("yuri"), "web", Some(MINUTE)).await;
    assert!(s.store().delete(&deleted).await.unwrap());
    assert_eq!(
        s.store().retire(&deleted, 1).await.unwrap(),
        RetireOutcome::Gone
    );
    let never = s.store().new_token(Some("yuri")).unwrap();
    assert_eq!(
        s.store().retire(&never, 0).await.unwrap(),
        RetireOutcome::Gone
    );

    let (expired, r) = create(s, Some("yuri"), "web", Some(MINUTE)).await;
    clock.advance(2 * MINUTE.as_millis() as u64);
    // Dead by the application's clock though Redis still holds it.
    assert_eq!(
        s.store().retire(&expired, 1).await.unwrap(),
        RetireOutcome::Gone
    );
    assert!(!s.exists(&expired), "finished off, as a save would");
    assert_eq!(
        s.store().save(&expired, &r).await.unwrap(),
        SaveOutcome::Gone
    );
    assert_eq!(s.store().list("yuri", None).await.unwrap(), vec![]);
}

async fn a_dead_session_created_again_is_listed(d: Deployment) {
    // Dead by the application's clock while Redis still holds the key and
    // its (dead) index entry: a new session under the same token (version
    // 0) takes its place, and its index entry is the new one.
    let clock = ManualClock::now_real();
    let s = open(d, clock.install(config())).await;
    let s = s.as_ref();
    let (token, _) = create(s, Some("zoe"), "web", Some(MINUTE)).await;
    clock.advance(2 * MINUTE.as_millis() as u64);
    let mut again = record(&token, Some("zoe"), "web", clock.get());
    again.idle_timeout = Some(MINUTE);
    assert_eq!(
        s.store().save(&token, &again).await.unwrap(),
        SaveOutcome::Saved { version: 1 }
    );
    assert_eq!(
        ids(&s.store().list("zoe", None).await.unwrap()),
        vec![token.id()]
    );
    assert_eq!(s.store().revoke_all("zoe", None, None).await.unwrap(), 1);
}

/// A clock time `t0` such that a session created then with a one-minute
/// idle timeout has its deadline just past a grid line (step 1.875 s): its
/// key expiry then lies almost a whole step after the deadline.
fn just_past_a_grid_line(clock: &ManualClock) -> Millis {
    let idle = MINUTE.as_millis() as u64;
    let step = 1_875;
    (clock.get() + idle).div_ceil(step) * step + 1 - idle
}

/// Redis keeps a key until E(deadline), up to a grid step after the
/// deadline; in between, the session is dead all the same: load, save,
/// listing and revocation refuse it (I5).
async fn a_dead_session_held_on_the_grid_is_refused(d: Deployment) {
    let clock = ManualClock::now_real();
    clock.set(just_past_a_grid_line(&clock));
    let s = open(d, clock.install(config())).await;
    let s = s.as_ref();
    let t0 = clock.get();
    let (token, r) = create(s, Some("rosa"), "web", Some(MINUTE)).await;
    let (twin, _) = create(s, Some("rosa"), "web", Some(MINUTE)).await;
    let (other, _) = create(s, Some("rosa"), "api", None).await;
    let deadline = t0 + 60_000;
    let held = grid_expiry(deadline, 60_000);
    assert_eq!(held, deadline + 1_874);
    if s.deployment() != Deployment::Memory {
        assert_eq!(s.expire_time(&token), Some(held as i64));
    }

    // Dead from its deadline on, key or no key.
    clock.set(deadline);
    if s.deployment() != Deployment::Memory {
        assert!(s.exists(&token), "Redis still holds the key");
        assert!(s.exists(&twin), "Redis still holds the key");
    }
    assert_eq!(load(s, &token).await, None);
    assert_eq!(
        ids(&s.store().list("rosa", None).await.unwrap()),
        vec![other.id()]
    );
    // Half a step on (still before the key's expiry): a save is gone and
    // writes nothing back (I2).
    clock.set(deadline + 900);
    assert_eq!(s.store().save(&token, &r).await.unwrap(), SaveOutcome::Gone);
    assert!(!s.exists(&token), "the dead session is not written back");
    assert_eq!(load(s, &token).await, None);
    if s.deployment() != Deployment::Memory {
        assert!(s.exists(&twin), "Redis still holds the key");
    }
    assert_eq!(
        s.store()
            .revoke_all("rosa", Some("web"), None)
            .await
            .unwrap(),
        0,
        "a dead session is no session to revoke"
    );
    assert_eq!(load(s, &twin).await, None);
}

/// A rolling upgrade: the previous library version (no field `e`, exact
/// expiries) writes a session between two calls of this one. Its writes
/// change `v` (a save) or `s` (a touch), so this library never trusts the
/// expiry it recorded and writes the key's expiry again: the key never
/// expires before the session's true deadline.
async fn a_foreign_expiry_write_is_never_trusted(d: Deployment) {
    if d == Deployment::Memory {
        return;
    }
    let clock = ManualClock::now_real();
    clock.set(just_past_a_grid_line(&clock));
    let s = open(d, clock.install(config()).touch_interval(Duration::ZERO)).await;
    let s = s.as_ref();
    let t0 = clock.get();
    let at = |d: u64| grid_expiry(d, 60_000);
    let (token, r) = create(s, Some("sven"), "web", Some(MINUTE)).await;
    let key = session_key(s.prefix(), &token);
    assert_eq!(s.expire_time(&token), Some(at(t0 + 60_000) as i64));
    let foreign = |fields: &[(&str, String)], expiry: u64| {
        let mut args: Vec<Vec<u8>> = vec![b"HSET".to_vec(), key.clone().into_bytes()];
        for (f, v) in fields {
            args.push(f.as_bytes().to_vec());
            args.push(v.clone().into_bytes());
        }
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        s.raw(&key, &args).unwrap();
        let at = expiry.to_string();
        s.raw(&key, &[b"PEXPIREAT", key.as_bytes(), at.as_bytes()])
            .unwrap();
    };

    // The old library's touch at t0 + 100: s moves, exact expiry.
    foreign(&[("s", (t0 + 100).to_string())], t0 + 60_100);
    // This library's touch at t0 + 1000 stays in the grid step it recorded
    // in `e`, but `e` was recorded for another s: the expiry is written.
    clock.set(t0 + 1_000);
    let loaded = load(s, &token).await.unwrap();
    assert_eq!(loaded.last_seen, t0 + 1_000);
    assert_eq!(at(t0 + 61_000), at(t0 + 60_000), "same step");
    assert_eq!(s.expire_time(&token), Some(at(t0 + 61_000) as i64));

    // The old library's save at t0 + 1100: v moves, exact expiry.
    foreign(
        &[("v", "2".to_owned()), ("s", (t0 + 1_100).to_string())],
        t0 + 61_100,
    );
    // This library's save at t0 + 1500, same step again: written.
    clock.set(t0 + 1_500);
    let mut next = r.clone();
    next.version = 2;
    assert_eq!(
        s.store().save(&token, &next).await.unwrap(),
        SaveOutcome::Saved { version: 3 }
    );
    let expiry = s.expire_time(&token).unwrap() as u64;
    assert!(expiry >= t0 + 61_500, "expiry {expiry} before the deadline");
    assert_eq!(expiry, at(t0 + 61_500));

    // And this library's own next save in the step trusts its record.
    clock.set(t0 + 1_600);
    next.version = 3;
    assert_eq!(
        s.store().save(&token, &next).await.unwrap(),
        SaveOutcome::Saved { version: 4 }
    );
    assert_eq!(s.expire_time(&token), Some(at(t0 + 61_600) as i64));
}
