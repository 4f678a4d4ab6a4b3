//! Keys lost behind the library's back, as a `maxmemory-policy` that evicts
//! loses them: a user's index (or one entry of it) disappears while the
//! sessions live on. A session that is loaded or saved enters its index
//! again, so listing and revocation see it again. And the store warns at
//! connect when Redis runs a policy that can evict its keys.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::logs::Captured;
use common::stores::{Deployment, Tamper, session_key, test_keyring, unique_prefix};
use common::{RedisServer, ServerOptions};
use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore, Token};
use tower_redis_sessions::{RedisStore, StoreConfig};

fn record(token: &Token, user: &str, now: u64) -> Record {
    let mut r = Record::new(token.id(), "web", now);
    r.user = Some(user.to_owned());
    r.idle_timeout = Some(Duration::from_secs(600));
    r
}

fn ids(records: &[Record]) -> BTreeSet<String> {
    records.iter().map(|r| r.id.to_string()).collect()
}

fn id_set<'a>(tokens: impl IntoIterator<Item = &'a Token>) -> BTreeSet<String> {
    tokens.into_iter().map(|t| t.id().to_string()).collect()
}

/// The user index key next to `token` (same tag), if it exists.
fn index_of(s: &dyn Tamper, token: &Token) -> Option<String> {
    let tag = format!("{{{}}}:u:", &token.to_string()[..8]);
    s.keys_near(token)?.into_iter().find(|k| k.contains(&tag))
}

async fn a_lost_index_heals_on_load_and_save(d: Deployment) {
    // Without the near cache, so that every load reaches Redis (with it, a
    // load heals the index when it goes to Redis: when a touch is due).
    let s = common::stores::open_uncached(d, StoreConfig::new(test_keyring())).await;
    let s = s.as_ref();
    let user = "eve";
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let token = s.store().new_token(Some(user)).unwrap();
        let r = record(&token, user, s.store().now());
        assert_eq!(
            s.store().save(&token, &r).await.unwrap(),
            SaveOutcome::Saved { version: 1 }
        );
        tokens.push(token);
    }
    let index = index_of(s, &tokens[0]).expect("the user's index");
    // What an evicting maxmemory policy does to the index.
    assert_eq!(
        s.raw(&index, &[b"DEL", index.as_bytes()]).unwrap().as_int(),
        Some(1)
    );
    assert_eq!(s.store().list(user, None).await.unwrap(), vec![]);

    // A load enters its session again...
    assert!(s.store().load(&tokens[0]).await.unwrap().is_some());
    assert_eq!(
        ids(&s.store().list(user, None).await.unwrap()),
        id_set(&tokens[..1])
    );
    // ...and so does a save.
    let mut r = s.store().load(&tokens[1]).await.unwrap().unwrap();
    r.data.insert("k".into(), ciborium::Value::Text("v".into()));
    assert_eq!(
        s.store().save(&tokens[1], &r).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );
    s.store().load(&tokens[2]).await.unwrap();
    assert_eq!(
        ids(&s.store().list(user, None).await.unwrap()),
        id_set(&tokens)
    );

    // The healed index expires with its longest-lived member (I4).
    let expiry = s
        .raw(&index, &[b"PEXPIRETIME", index.as_bytes()])
        .unwrap()
        .as_int()
        .unwrap();
    let latest = tokens
        .iter()
        .map(|t| s.expire_time(t).unwrap())
        .max()
        .unwrap();
    assert!(
        expiry >= latest,
        "index expiry {expiry} < session expiry {latest}"
    );

    // One entry lost (a member evicted from a big index behaves the same).
    let key = session_key(s.prefix(), &tokens[2]);
    s.raw(&index, &[b"ZREM", index.as_bytes(), key.as_bytes()]);
    assert_eq!(
        ids(&s.store().list(user, None).await.unwrap()),
        id_set(&tokens[..2])
    );
    s.store().load(&tokens[2]).await.unwrap();
    assert_eq!(
        ids(&s.store().list(user, None).await.unwrap()),
        id_set(&tokens)
    );
    assert_eq!(s.store().revoke_all(user, None, None).await.unwrap(), 3);
    for token in &tokens {
        assert_eq!(s.store().load(token).await.unwrap(), None);
    }
}

#[tokio::test]
async fn standalone_a_lost_index_heals_on_load_and_save() {
    a_lost_index_heals_on_load_and_save(Deployment::Standalone).await;
}

#[tokio::test]
async fn cluster_a_lost_index_heals_on_load_and_save() {
    a_lost_index_heals_on_load_and_save(Deployment::Cluster).await;
}

/// A real `allkeys-lru` Redis under pressure: junk keys are written until
/// the user's index is evicted. Once the pressure is off, every session
/// that survived and is loaded is listed again.
#[tokio::test]
async fn allkeys_lru_eviction_then_listing_recovers() {
    let server = RedisServer::start();
    let prefix = unique_prefix("lru");
    // Without the near cache: the loads that heal must reach Redis.
    let store = RedisStore::builder(StoreConfig::new(test_keyring()).prefix(&prefix))
        .near_cache(tower_redis_sessions::store::NearCache::off())
        .connect(&server.url())
        .await
        .unwrap();
    let user = "eve";
    let mut tokens = Vec::new();
    for _ in 0..100 {
        let token = store.new_token(Some(user)).unwrap();
        store
            .save(&token, &record(&token, user, store.now()))
            .await
            .unwrap();
        tokens.push(token);
    }
    let keys: Vec<String> = tokens.iter().map(|t| session_key(&prefix, t)).collect();
    let index = server
        .cmd(&["KEYS", &format!("{prefix}*:u:*")])
        .lines()
        .next()
        .expect("the index")
        .to_owned();

    let used: u64 = server
        .cmd(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let limit = (used + 512 * 1024).to_string();
    assert_eq!(server.cmd(&["CONFIG", "SET", "maxmemory", &limit]), "OK");
    assert_eq!(
        server.cmd(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]),
        "OK"
    );
    let junk = "x".repeat(1024);
    let mut written = 0;
    while server.cmd(&["EXISTS", &index]) == "1" {
        assert!(written < 200_000, "the index was never evicted");
        for _ in 0..100 {
            server.cmd(&["SET", &format!("junk:{written}"), &junk]);
            written += 1;
        }
    }
    assert_eq!(server.cmd(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    let survivors: Vec<&Token> = tokens
        .iter()
        .zip(&keys)
        .filter(|(_, key)| server.cmd(&["EXISTS", key]) == "1")
        .map(|(t, _)| t)
        .collect();
    eprintln!(
        "allkeys-lru: index evicted after {written} junk keys; {} of {} sessions survived",
        survivors.len(),
        tokens.len()
    );
    for token in &survivors {
        assert!(store.load(token).await.unwrap().is_some());
    }
    assert_eq!(
        ids(&store.list(user, None).await.unwrap()),
        id_set(survivors.iter().copied()),
        "every surviving session is listed again"
    );
    assert_eq!(
        store.revoke_all(user, None, None).await.unwrap() as usize,
        survivors.len()
    );
}

/// Connects to a private Redis run with `policy` (and `acl`, commands run
/// first to create a restricted user) and returns the log lines about
/// the eviction policy.
async fn policy_warnings(policy: &str, url_user: Option<&str>) -> Vec<String> {
    let server = RedisServer::start_with(ServerOptions {
        extra: vec![("maxmemory-policy".into(), policy.into())],
        ..ServerOptions::default()
    });
    let url = match url_user {
        Some(user) => {
            assert_eq!(
                server.cmd(&[
                    "ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "-config"
                ]),
                "OK"
            );
            format!("redis://{user}:pw@127.0.0.1:{}", server.port())
        }
        None => server.url(),
    };
    let (captured, _guard) = Captured::start();
    let store = RedisStore::connect(&url, StoreConfig::new(test_keyring()))
        .await
        .unwrap();
    let token = store.new_token(None).unwrap();
    assert_eq!(store.load(&token).await.unwrap(), None, "the store works");
    captured.lines_with("maxmemory-policy")
}

#[tokio::test]
async fn an_evicting_policy_is_warned_about_at_connect() {
    for policy in ["allkeys-lru", "volatile-lru", "volatile-ttl"] {
        let lines = policy_warnings(policy, None).await;
        assert_eq!(lines.len(), 1, "{policy}: {lines:#?}");
        assert!(
            lines[0].contains("WARN")
                && lines[0].contains(policy)
                && lines[0].contains("noeviction"),
            "{}",
            lines[0]
        );
        eprintln!("{}", lines[0]);
    }
    assert_eq!(
        policy_warnings("noeviction", None).await,
        Vec::<String>::new()
    );
    // CONFIG refused by ACL: nothing said, the store works.
    assert_eq!(
        policy_warnings("allkeys-lru", Some("app")).await,
        Vec::<String>::new()
    );
}
