//! tower-sessions' store semantics, against real Redis, on a single server
//! and on the 3-node cluster: create / load / save / delete, expiry, id
//! collisions, no resurrection, tampered blobs, no clear id in Redis, the
//! size limit, and the user index.
#![cfg(feature = "tower-sessions")]

mod common;

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use tower_redis_sessions::tower_sessions::{
    TowerSessionsStore, axum_login_user, is_unavailable, session_handle,
};
use tower_redis_sessions::{Keyring, RedisStore, StoreConfig};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{Error, SessionStore};

use common::stores::unique_prefix;
use common::{RedisServer, Reply, key_slot, shared_cluster, shared_server};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Deployment {
    Standalone,
    Cluster,
}

struct Fixture {
    store: TowerSessionsStore,
    prefix: String,
    deployment: Deployment,
}

fn keyring(encrypt: bool) -> Keyring {
    Keyring::new([9u8; 32]).unwrap().encrypt_records(encrypt)
}

async fn fixture_with(
    deployment: Deployment,
    config: impl FnOnce(StoreConfig) -> StoreConfig,
    encrypt: bool,
) -> Fixture {
    let prefix = unique_prefix("ts");
    let config = config(StoreConfig::new(keyring(encrypt)).prefix(prefix.clone()));
    let builder = RedisStore::builder(config).pool_size(2);
    let store = match deployment {
        Deployment::Standalone => builder
            .connect_tower_sessions(&shared_server().url())
            .await
            .unwrap(),
        Deployment::Cluster => builder
            .connect_tower_sessions_cluster(shared_cluster().urls())
            .await
            .unwrap(),
    };
    Fixture {
        store: store.with_axum_login_index(),
        prefix,
        deployment,
    }
}

async fn fixture(deployment: Deployment) -> Fixture {
    fixture_with(deployment, |c| c, false).await
}

impl Fixture {
    /// The Redis key the store keeps `id` under, computed independently.
    fn key(&self, id: &Id) -> String {
        let hash = Sha256::digest(id.0.to_le_bytes());
        format!(
            "{}{{{:02x}}}:t:{}",
            self.prefix,
            hash[0],
            URL_SAFE_NO_PAD.encode(hash)
        )
    }

    fn node(&self, key: &str) -> &'static RedisServer {
        match self.deployment {
            Deployment::Standalone => shared_server(),
            Deployment::Cluster => shared_cluster().node_for_key(key),
        }
    }

    fn nodes(&self) -> Vec<&'static RedisServer> {
        match self.deployment {
            Deployment::Standalone => vec![shared_server()],
            Deployment::Cluster => shared_cluster().nodes().iter().collect(),
        }
    }

    fn raw(&self, key: &str, args: &[&[u8]]) -> Reply {
        self.node(key).cmd_bytes(args)
    }

    fn exists(&self, id: &Id) -> bool {
        let key = self.key(id);
        self.raw(&key, &[b"EXISTS", key.as_bytes()]).unwrap_int() == 1
    }

    /// Every key under the prefix, on every node.
    fn all_keys(&self) -> Vec<(&'static RedisServer, String)> {
        let pattern = format!("{}*", self.prefix);
        let mut out = Vec::new();
        for node in self.nodes() {
            let keys = node
                .cmd_bytes(&[b"KEYS", pattern.as_bytes()])
                .unwrap_array();
            for key in keys {
                out.push((node, String::from_utf8(key.unwrap_bytes()).unwrap()));
            }
        }
        out
    }
}

fn record(data: serde_json::Value, expiry: OffsetDateTime) -> Record {
    let data: HashMap<String, serde_json::Value> = serde_json::from_value(data).unwrap();
    Record {
        id: Id::default(),
        data,
        expiry_date: expiry,
    }
}

fn in_an_hour() -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::hours(1)
}

fn axum_login_data(user: serde_json::Value) -> serde_json::Value {
    json!({"axum-login.data": {"user_id": user, "auth_hash": [1, 2, 3]}, "theme": "dark"})
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn standalone() {
                super::$name(super::Deployment::Standalone).await
            }
            #[tokio::test]
            async fn cluster() {
                super::$name(super::Deployment::Cluster).await
            }
        }
    };
}

async fn create_then_load_round_trips(d: Deployment) {
    let f = fixture(d).await;
    let mut rec = record(json!({"a": 1, "b": [true, "x"]}), in_an_hour());
    let original = rec.id;
    f.store.create(&mut rec).await.unwrap();
    assert_eq!(rec.id, original, "a free id is kept");
    let loaded = f.store.load(&rec.id).await.unwrap().unwrap();
    assert_eq!(
        loaded, rec,
        "id, data and expiry (to the nanosecond) come back"
    );
    // Redis expires the key at the record's expiry (ms).
    let key = f.key(&rec.id);
    let at = f.raw(&key, &[b"PEXPIRETIME", key.as_bytes()]).unwrap_int();
    assert_eq!(
        i128::from(at),
        rec.expiry_date.unix_timestamp_nanos() / 1_000_000
    );
    assert!(f.store.load(&Id::default()).await.unwrap().is_none());
}
both!(create_then_load_round_trips);

async fn save_replaces_data_and_expiry(d: Deployment) {
    let f = fixture(d).await;
    let mut rec = record(json!({"n": 1}), in_an_hour());
    f.store.create(&mut rec).await.unwrap();
    rec.data.insert("n".into(), json!(2));
    rec.expiry_date += Duration::hours(1);
    f.store.save(&rec).await.unwrap();
    assert_eq!(f.store.load(&rec.id).await.unwrap().unwrap(), rec);
    let key = f.key(&rec.id);
    let at = f.raw(&key, &[b"PEXPIRETIME", key.as_bytes()]).unwrap_int();
    assert_eq!(
        i128::from(at),
        rec.expiry_date.unix_timestamp_nanos() / 1_000_000
    );
}
both!(save_replaces_data_and_expiry);

async fn delete_removes_the_session(d: Deployment) {
    let f = fixture(d).await;
    let mut rec = record(json!({"n": 1}), in_an_hour());
    f.store.create(&mut rec).await.unwrap();
    f.store.delete(&rec.id).await.unwrap();
    assert!(f.store.load(&rec.id).await.unwrap().is_none());
    assert!(!f.exists(&rec.id));
    f.store.delete(&rec.id).await.unwrap();
    f.store.delete(&Id::default()).await.unwrap();
}
both!(delete_removes_the_session);

async fn a_past_expiry_is_not_stored(d: Deployment) {
    let f = fixture(d).await;
    let mut rec = record(
        json!({"n": 1}),
        OffsetDateTime::now_utc() - Duration::minutes(1),
    );
    f.store.create(&mut rec).await.unwrap();
    assert!(!f.exists(&rec.id), "create writes nothing");
    assert!(f.store.load(&rec.id).await.unwrap().is_none());

    let mut live = record(json!({"n": 1}), in_an_hour());
    f.store.create(&mut live).await.unwrap();
    live.expiry_date = OffsetDateTime::now_utc() - Duration::seconds(1);
    f.store.save(&live).await.unwrap();
    assert!(f.store.load(&live.id).await.unwrap().is_none());
    assert!(
        !f.exists(&live.id),
        "a save with a past expiry ends the session"
    );
}
both!(a_past_expiry_is_not_stored);

async fn a_record_past_its_expiry_by_the_app_clock_loads_as_none(d: Deployment) {
    // The application's clock runs two hours ahead of Redis': the key is
    // still in Redis, the record has expired for the application.
    let ahead = || common::stores::real_now() + 7_200_000;
    let f = fixture_with(d, |c| c.clock(ahead), false).await;
    let mut rec = record(
        json!({"n": 1}),
        OffsetDateTime::now_utc() + Duration::hours(3),
    );
    f.store.create(&mut rec).await.unwrap();
    assert!(f.store.load(&rec.id).await.unwrap().is_some());
    let mut soon = record(
        json!({"n": 1}),
        OffsetDateTime::now_utc() + Duration::hours(1),
    );
    f.store.create(&mut soon).await.unwrap();
    assert!(!f.exists(&soon.id), "expired by the app clock: not stored");
    assert!(f.store.load(&soon.id).await.unwrap().is_none());
}
both!(a_record_past_its_expiry_by_the_app_clock_loads_as_none);

async fn create_never_overwrites_an_existing_session(d: Deployment) {
    let f = fixture(d).await;
    let mut first = record(json!({"owner": "first"}), in_an_hour());
    f.store.create(&mut first).await.unwrap();
    let mut second = record(json!({"owner": "second"}), in_an_hour());
    second.id = first.id;
    f.store.create(&mut second).await.unwrap();
    assert_ne!(second.id, first.id, "the colliding create got a new id");
    assert_eq!(f.store.load(&first.id).await.unwrap().unwrap(), first);
    assert_eq!(f.store.load(&second.id).await.unwrap().unwrap(), second);
}
both!(create_never_overwrites_an_existing_session);

async fn save_after_delete_does_not_revive(d: Deployment) {
    let f = fixture(d).await;
    let mut rec = record(json!({"n": 1}), in_an_hour());
    f.store.create(&mut rec).await.unwrap();
    f.store.delete(&rec.id).await.unwrap();
    rec.data.insert("late".into(), json!(true));
    f.store.save(&rec).await.unwrap();
    assert!(f.store.load(&rec.id).await.unwrap().is_none());
    assert!(!f.exists(&rec.id));
    // Nor does a save of a session that never existed create one.
    let never = record(json!({"n": 1}), in_an_hour());
    f.store.save(&never).await.unwrap();
    assert!(!f.exists(&never.id));
}
both!(save_after_delete_does_not_revive);

async fn tampered_or_moved_blobs_load_as_none(d: Deployment) {
    for encrypt in [false, true] {
        let f = fixture_with(d, |c| c, encrypt).await;
        let mut a = record(json!({"role": "user"}), in_an_hour());
        f.store.create(&mut a).await.unwrap();
        let key = f.key(&a.id);
        let mut blob = f.raw(&key, &[b"HGET", key.as_bytes(), b"b"]).unwrap_bytes();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        f.raw(&key, &[b"HSET", key.as_bytes(), b"b", &blob]);
        assert!(
            f.store.load(&a.id).await.unwrap().is_none(),
            "encrypt={encrypt}"
        );

        // A valid blob copied under another session's key does not open
        // there: records are bound to their key.
        let mut b = record(json!({"role": "admin"}), in_an_hour());
        let mut c = record(json!({"role": "user"}), in_an_hour());
        f.store.create(&mut b).await.unwrap();
        f.store.create(&mut c).await.unwrap();
        let (kb, kc) = (f.key(&b.id), f.key(&c.id));
        let admin = f.raw(&kb, &[b"HGET", kb.as_bytes(), b"b"]).unwrap_bytes();
        f.raw(&kc, &[b"HSET", kc.as_bytes(), b"b", &admin]);
        assert!(
            f.store.load(&c.id).await.unwrap().is_none(),
            "encrypt={encrypt}"
        );
        assert_eq!(f.store.load(&b.id).await.unwrap().unwrap(), b);
    }
}
both!(tampered_or_moved_blobs_load_as_none);

async fn redis_never_holds_the_clear_id(d: Deployment) {
    for encrypt in [false, true] {
        let f = fixture_with(d, |c| c, encrypt).await;
        let mut anon = record(json!({"secret-data": "visible?"}), in_an_hour());
        f.store.create(&mut anon).await.unwrap();
        let mut user = record(axum_login_data(json!(7)), in_an_hour());
        f.store.create(&mut user).await.unwrap();
        let keys = f.all_keys();
        assert_eq!(keys.len(), 3, "two sessions and one user index");
        for id in [anon.id, user.id] {
            let text = id.to_string();
            let bytes = id.0.to_le_bytes();
            for (node, key) in &keys {
                assert!(!key.contains(&text));
                let dump = node.cmd_bytes(&[b"DUMP", key.as_bytes()]).unwrap_bytes();
                assert!(!contains(&dump, text.as_bytes()), "{key}");
                assert!(!contains(&dump, &bytes), "{key}");
            }
        }
        let blob_key = f.key(&anon.id);
        let blob = f
            .raw(&blob_key, &[b"HGET", blob_key.as_bytes(), b"b"])
            .unwrap_bytes();
        assert_eq!(contains(&blob, b"visible?"), !encrypt, "encrypt={encrypt}");
    }
}
both!(redis_never_holds_the_clear_id);

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn oversized_records_are_refused(d: Deployment) {
    let f = fixture_with(d, |c| c.max_sealed_size(200), false).await;
    let mut rec = record(json!({"big": "x".repeat(300)}), in_an_hour());
    let err = f.store.create(&mut rec).await.unwrap_err();
    assert!(matches!(err, Error::Encode(_)), "{err:?}");
    assert!(!is_unavailable(&err));
    assert!(!f.exists(&rec.id));
}
both!(oversized_records_are_refused);

async fn a_users_sessions_are_listed_and_revoked(d: Deployment) {
    let f = fixture(d).await;
    let mut phone = record(axum_login_data(json!(42)), in_an_hour());
    let mut laptop = record(
        axum_login_data(json!(42)),
        in_an_hour() + Duration::minutes(1),
    );
    let mut other = record(axum_login_data(json!("someone-else")), in_an_hour());
    let mut anon = record(json!({"n": 1}), in_an_hour());
    for rec in [&mut phone, &mut laptop, &mut other, &mut anon] {
        f.store.create(rec).await.unwrap();
    }
    assert_eq!(axum_login_user(&phone).as_deref(), Some("42"));
    // The sessions of user 42 share a hash slot (so do their index's).
    assert_eq!(
        key_slot(f.key(&phone.id).as_bytes()),
        key_slot(f.key(&laptop.id).as_bytes())
    );
    let listed = f.store.list_user_sessions("42").await.unwrap();
    let handles: Vec<_> = listed.iter().map(|s| s.handle.clone()).collect();
    assert_eq!(
        handles,
        vec![session_handle(&phone.id), session_handle(&laptop.id)]
    );
    assert_eq!(listed[0].data, phone.data);
    assert_eq!(listed[0].expiry_date, phone.expiry_date);

    // Revoking one by handle; a foreign or malformed handle revokes nothing.
    assert!(
        !f.store
            .revoke_user_session("42", &session_handle(&other.id))
            .await
            .unwrap()
    );
    assert!(
        !f.store
            .revoke_user_session("42", "not a handle")
            .await
            .unwrap()
    );
    assert!(
        f.store
            .revoke_user_session("42", &session_handle(&phone.id))
            .await
            .unwrap()
    );
    assert!(f.store.load(&phone.id).await.unwrap().is_none());
    // A late save of the revoked session does not bring it back.
    f.store.save(&phone).await.unwrap();
    assert!(f.store.load(&phone.id).await.unwrap().is_none());

    // Revoking all but the current one.
    let mut tablet = record(axum_login_data(json!(42)), in_an_hour());
    f.store.create(&mut tablet).await.unwrap();
    assert_eq!(
        f.store
            .revoke_user_sessions("42", Some(&tablet.id))
            .await
            .unwrap(),
        1
    );
    assert!(f.store.load(&laptop.id).await.unwrap().is_none());
    assert!(f.store.load(&tablet.id).await.unwrap().is_some());
    assert!(f.store.load(&other.id).await.unwrap().is_some());
    assert!(f.store.load(&anon.id).await.unwrap().is_some());

    // Logging out (delete) takes the session out of the index.
    f.store.delete(&tablet.id).await.unwrap();
    assert!(f.store.list_user_sessions("42").await.unwrap().is_empty());
    assert_eq!(
        f.store
            .list_user_sessions("someone-else")
            .await
            .unwrap()
            .len(),
        1
    );

    // A session whose user changes moves between indexes.
    other.data = serde_json::from_value(axum_login_data(json!(43))).unwrap();
    f.store.save(&other).await.unwrap();
    let moved = f.store.list_user_sessions("43").await.unwrap();
    let gone = f.store.list_user_sessions("someone-else").await.unwrap();
    match d {
        // Same slot or not, one Redis holds both indexes.
        Deployment::Standalone => {
            assert_eq!(moved.len(), 1);
            assert!(gone.is_empty());
        }
        // The key keeps the first user's slot: it leaves that index, and
        // can enter the new user's only if it shares their slot.
        Deployment::Cluster => {
            assert!(gone.is_empty());
            assert!(moved.len() <= 1);
        }
    }
}
both!(a_users_sessions_are_listed_and_revoked);

async fn a_user_gained_without_a_new_id(d: Deployment) {
    let f = fixture(d).await;
    // Anonymous first, as a session before login.
    let mut rec = record(json!({"n": 1}), in_an_hour());
    // An id outside user 9's slot, so the cluster cannot index it.
    let user_byte = {
        let mut probe = record(axum_login_data(json!(9)), in_an_hour());
        f.store.create(&mut probe).await.unwrap();
        f.store.delete(&probe.id).await.unwrap();
        Sha256::digest(probe.id.0.to_le_bytes())[0]
    };
    while Sha256::digest(rec.id.0.to_le_bytes())[0] == user_byte {
        rec.id = Id::default();
    }
    f.store.create(&mut rec).await.unwrap();
    rec.data = serde_json::from_value(axum_login_data(json!(9))).unwrap();
    f.store.save(&rec).await.unwrap();
    assert!(
        f.store.load(&rec.id).await.unwrap().is_some(),
        "saved either way"
    );
    let listed = f.store.list_user_sessions("9").await.unwrap();
    match d {
        Deployment::Standalone => assert_eq!(listed.len(), 1),
        Deployment::Cluster => assert!(listed.is_empty()),
    }
}
both!(a_user_gained_without_a_new_id);

#[tokio::test]
async fn an_unreachable_redis_is_unavailable() {
    let mut server = RedisServer::start();
    let store = RedisStore::builder(StoreConfig::new(keyring(false)))
        .pool_size(1)
        .connect_timeout(std::time::Duration::from_millis(300))
        .connect_tower_sessions(&server.url())
        .await
        .unwrap();
    server.stop();
    let err = store.load(&Id::default()).await.unwrap_err();
    assert!(is_unavailable(&err), "{err:?}");
    let mut rec = record(json!({}), in_an_hour());
    assert!(is_unavailable(&store.create(&mut rec).await.unwrap_err()));
}

async fn a_user_keeps_at_most_max_sessions_per_user(d: Deployment) {
    let f = fixture_with(d, |c| c.max_sessions_per_user(2), false).await;
    let mut sessions = Vec::new();
    for minutes in [10, 20, 30] {
        let mut rec = record(
            axum_login_data(json!("capped")),
            in_an_hour() + Duration::minutes(minutes),
        );
        f.store.create(&mut rec).await.unwrap();
        sessions.push(rec);
    }
    // The third login ended the session closest to its expiry.
    assert!(f.store.load(&sessions[0].id).await.unwrap().is_none());
    assert!(!f.exists(&sessions[0].id));
    let listed = f.store.list_user_sessions("capped").await.unwrap();
    let handles: Vec<_> = listed.into_iter().map(|s| s.handle).collect();
    assert_eq!(
        handles,
        vec![
            session_handle(&sessions[1].id),
            session_handle(&sessions[2].id)
        ]
    );
}
both!(a_user_keeps_at_most_max_sessions_per_user);

/// At `maxmemory` (noeviction) Redis refuses what stores a record: create
/// and save fail as unavailable (503), writing nothing, while loads, logout
/// (delete), listing and revocation keep working.
#[tokio::test]
async fn at_maxmemory_writes_are_unavailable_and_the_rest_works() {
    let server = RedisServer::start();
    let store = RedisStore::builder(StoreConfig::new(keyring(false)).prefix("oom:"))
        .pool_size(1)
        .connect_tower_sessions(&server.url())
        .await
        .unwrap()
        .with_axum_login_index();
    let mut a = record(axum_login_data(json!(1)), in_an_hour());
    let mut b = record(axum_login_data(json!(1)), in_an_hour());
    store.create(&mut a).await.unwrap();
    store.create(&mut b).await.unwrap();
    assert_eq!(server.cmd(&["CONFIG", "SET", "maxmemory", "1"]), "OK");

    let mut c = record(axum_login_data(json!(1)), in_an_hour());
    let err = store.create(&mut c).await.unwrap_err();
    assert!(is_unavailable(&err), "{err:?}");
    a.data.insert("changed".into(), json!(true));
    assert!(is_unavailable(&store.save(&a).await.unwrap_err()));
    let loaded = store.load(&a.id).await.unwrap().unwrap();
    assert!(
        !loaded.data.contains_key("changed"),
        "the refused save wrote nothing"
    );
    assert_eq!(store.list_user_sessions("1").await.unwrap().len(), 2);
    store.delete(&b.id).await.unwrap();
    assert!(store.load(&b.id).await.unwrap().is_none());
    assert_eq!(store.revoke_user_sessions("1", None).await.unwrap(), 1);
    assert!(store.load(&a.id).await.unwrap().is_none());

    assert_eq!(server.cmd(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    store.create(&mut c).await.unwrap();
    assert!(store.load(&c.id).await.unwrap().is_some());
}
