//! A user who logs in again and again without logging out: the store keeps
//! at most `max_sessions_per_user` live sessions per user, ending the
//! oldest (earliest deadline) in the call that adds one, so the user's
//! index and the work of listing and revoking it stay bounded.
//!
//! The cap case runs on every store (memory, standalone Redis, cluster);
//! the timing case measures the calls at the cap with `SLOWLOG` on a
//! private server and reports them (no assertion on time).

mod common;

use std::time::Duration;

use common::RedisServer;
use common::stores::{Deployment, ManualClock, Tamper, open, session_key, test_keyring};
use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore, Token};
use tower_redis_sessions::{RedisStore, StoreConfig};

const SESSIONS: usize = 2_000;
const CAP: usize = 100;

fn record(token: &Token, user: &str, now: u64) -> Record {
    let mut r = Record::new(token.id(), "web", now);
    r.user = Some(user.to_owned());
    r.idle_timeout = Some(Duration::from_secs(3600));
    r
}

/// The number of entries in `user`'s index, read from Redis (`ZCARD`).
fn index_size(s: &dyn Tamper, token: &Token) -> Option<i64> {
    let keys = s.keys_near(token)?;
    let tag = format!("{{{}}}:u:", &token.to_string()[..8]);
    let index = keys.into_iter().find(|k| k.contains(&tag))?;
    s.raw(&index, &[b"ZCARD", index.as_bytes()])?.as_int()
}

async fn a_user_keeps_at_most_the_cap(d: Deployment) {
    let clock = ManualClock::now_real();
    let config = clock.install(StoreConfig::new(test_keyring()).max_sessions_per_user(CAP));
    let s = open(d, config).await;
    let s = s.as_ref();
    let user = "mallory";
    let mut tokens = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        // One ms apart: each session's deadline is later than the last's.
        clock.advance(1);
        let token = s.store().new_token(Some(user)).unwrap();
        let r = record(&token, user, clock.get());
        assert_eq!(
            s.store().save(&token, &r).await.unwrap(),
            SaveOutcome::Saved { version: 1 }
        );
        tokens.push(token);
    }
    let (old, new) = tokens.split_at(SESSIONS - CAP);
    if let Some(size) = index_size(s, &tokens[0]) {
        assert_eq!(size as usize, CAP, "the index holds the cap");
    }
    for token in old {
        assert_eq!(
            s.store().load(token).await.unwrap(),
            None,
            "the oldest ended"
        );
        assert!(!s.exists(token), "its key is deleted");
    }
    for token in new {
        assert!(
            s.store().load(token).await.unwrap().is_some(),
            "the newest live"
        );
    }
    let listed = s.store().list(user, None).await.unwrap();
    assert_eq!(listed.len(), CAP);
    let mut listed_ids: Vec<String> = listed.iter().map(|r| r.id.to_string()).collect();
    let mut newest: Vec<String> = new.iter().map(|t| t.id().to_string()).collect();
    listed_ids.sort();
    newest.sort();
    assert_eq!(listed_ids, newest);

    // An update of a session already counted ends nothing.
    let mut again = s.store().load(&new[0]).await.unwrap().unwrap();
    again
        .data
        .insert("k".into(), ciborium::Value::Text("v".into()));
    assert_eq!(
        s.store().save(&new[0], &again).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );
    assert!(s.store().load(&new[1]).await.unwrap().is_some());

    // A rotation keeps the count: the old token leaves as the new enters.
    let renewed = new[5].renew().unwrap();
    let mut moved = s.store().load(&new[5]).await.unwrap().unwrap();
    moved.id = renewed.id();
    assert_eq!(
        s.store().rotate(&new[5], &renewed, &moved).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );
    assert!(
        s.store().load(&new[1]).await.unwrap().is_some(),
        "nothing ended"
    );
    assert_eq!(s.store().list(user, None).await.unwrap().len(), CAP);

    assert_eq!(
        s.store().revoke_all(user, None, None).await.unwrap() as usize,
        CAP,
        "revocation ends exactly the live ones"
    );
    assert_eq!(s.store().list(user, None).await.unwrap(), vec![]);
    for token in new {
        assert_eq!(s.store().load(token).await.unwrap(), None);
    }
}

#[tokio::test]
async fn memory_a_user_keeps_at_most_the_cap() {
    a_user_keeps_at_most_the_cap(Deployment::Memory).await;
}

#[tokio::test]
async fn standalone_a_user_keeps_at_most_the_cap() {
    a_user_keeps_at_most_the_cap(Deployment::Standalone).await;
}

#[tokio::test]
async fn cluster_a_user_keeps_at_most_the_cap() {
    a_user_keeps_at_most_the_cap(Deployment::Cluster).await;
}

#[test]
fn the_cap_is_clamped() {
    let config = StoreConfig::new(test_keyring()).max_sessions_per_user(0);
    assert!(format!("{config:?}").contains("max_sessions_per_user: 1"));
    let config = StoreConfig::new(test_keyring()).max_sessions_per_user(1_000_000);
    assert!(format!("{config:?}").contains(&format!(
        "max_sessions_per_user: {}",
        tower_redis_sessions::store::MAX_SESSIONS_PER_USER
    )));
    assert!(
        format!("{:?}", StoreConfig::new(test_keyring())).contains("max_sessions_per_user: 100")
    );
}

/// The time Redis spent in the last `FCALL` of `function`, from `SLOWLOG`.
fn slowest_fcall(server: &RedisServer, function: &str) -> i64 {
    let entries = server
        .cmd_bytes(&[b"SLOWLOG", b"GET", b"128"])
        .unwrap_array();
    entries
        .iter()
        .filter_map(|entry| {
            let fields = entry.as_array()?;
            let micros = fields.get(2)?.as_int()?;
            let args = fields.get(3)?.as_array()?;
            let name = args.get(1)?.as_str()?;
            (args.first()?.as_str()?.eq_ignore_ascii_case("FCALL") && name.ends_with(function))
                .then_some(micros)
        })
        .max()
        .unwrap_or_else(|| panic!("no FCALL of {function} in SLOWLOG"))
}

/// Reports (does not assert) what the calls at the cap cost Redis:
/// `SLOWLOG` with `slowlog-log-slower-than 0` logs every command with its
/// execution time in µs. Run with `--nocapture` to see the figures.
#[tokio::test]
async fn calls_at_the_cap_are_measured() {
    let server = RedisServer::start();
    assert_eq!(
        server.cmd(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]),
        "OK"
    );
    assert_eq!(
        server.cmd(&["CONFIG", "SET", "slowlog-max-len", "1024"]),
        "OK"
    );
    for cap in [CAP, tower_redis_sessions::store::MAX_SESSIONS_PER_USER] {
        measure_at(&server, cap).await;
    }
}

async fn measure_at(server: &RedisServer, cap: usize) {
    let prefix = format!("limits{cap}:");
    let config = StoreConfig::new(test_keyring())
        .prefix(&prefix)
        .max_listed(cap)
        .max_sessions_per_user(cap);
    let store = RedisStore::connect(&server.url(), config).await.unwrap();
    let user = "mallory";
    let mut first = None;
    for _ in 0..cap {
        let token = store.new_token(Some(user)).unwrap();
        store
            .save(&token, &record(&token, user, store.now()))
            .await
            .unwrap();
        first.get_or_insert(token);
    }
    let mut figures = Vec::new();
    for (what, function) in [
        ("save at the cap (ends the oldest)", "_save"),
        ("list at the cap", "_list"),
        ("revoke_all at the cap", "_revoke"),
    ] {
        assert_eq!(server.cmd(&["SLOWLOG", "RESET"]), "OK");
        match function {
            "_save" => {
                let token = store.new_token(Some(user)).unwrap();
                let r = record(&token, user, store.now());
                assert!(matches!(
                    store.save(&token, &r).await.unwrap(),
                    SaveOutcome::Saved { .. }
                ));
            }
            "_list" => assert_eq!(store.list(user, None).await.unwrap().len(), cap),
            _ => assert_eq!(
                store.revoke_all(user, None, None).await.unwrap() as usize,
                cap
            ),
        }
        figures.push((what, slowest_fcall(server, function)));
    }
    let key = session_key(&prefix, first.as_ref().unwrap());
    assert_eq!(server.cmd(&["EXISTS", &key]), "0", "the first was ended");
    for (what, micros) in &figures {
        eprintln!("[SLOWLOG] {what}: {micros} µs (cap {cap})");
    }
}
