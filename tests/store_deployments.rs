//! Deployments side by side in one Redis: two key prefixes, and two versions
//! of the function library.

mod common;

use std::time::Duration;

use common::stores::{session_key, test_keyring, unique_prefix};
use common::{Reply, shared_server};
use sha2::{Digest, Sha256};
use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore, Token};
use tower_redis_sessions::{RedisStore, StoreConfig};

const SOURCE: &str = include_str!("../lua/sessions.lua");

async fn store(prefix: &str) -> RedisStore {
    RedisStore::builder(StoreConfig::new(test_keyring()).prefix(prefix))
        .pool_size(2)
        .connect(&shared_server().url())
        .await
        .unwrap()
}

async fn create(store: &RedisStore, user: Option<&str>) -> Token {
    let token = store.new_token(user).unwrap();
    let mut record = Record::new(token.id(), "web", store.now());
    record.user = user.map(str::to_owned);
    record.idle_timeout = Some(Duration::from_secs(60));
    assert_eq!(
        store.save(&token, &record).await.unwrap(),
        SaveOutcome::Saved { version: 1 }
    );
    token
}

/// The names of the libraries registered on the shared server.
fn libraries() -> Vec<String> {
    let reply = shared_server().cmd_bytes(&[b"FUNCTION", b"LIST"]);
    reply
        .as_array()
        .unwrap_or_else(|| panic!("FUNCTION LIST: {reply:?}"))
        .iter()
        .map(|library| {
            // RESP2: a flat list of field names and values.
            let fields = library.as_array().unwrap();
            let at = fields
                .iter()
                .position(|f| f.as_str() == Some("library_name"))
                .unwrap();
            fields[at + 1].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn library_name_is_a_hash_of_the_source() {
    let store = store(&unique_prefix("name")).await;
    let digest = Sha256::digest(SOURCE.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(store.library_name(), format!("trs_{hex}"));
    assert!(libraries().contains(&store.library_name().to_owned()));
}

#[tokio::test]
async fn two_prefixes_do_not_see_each_other() {
    let (pa, pb) = (unique_prefix("depa"), unique_prefix("depb"));
    let a = store(&pa).await;
    let b = store(&pb).await;
    assert_eq!(a.library_name(), b.library_name(), "one library, shared");

    let ta = create(&a, Some("alice")).await;
    let tb = create(&b, Some("alice")).await;
    let anon = create(&a, None).await;
    // Each sees only its own sessions, by token and by listing.
    assert!(a.load(&ta).await.unwrap().is_some());
    assert_eq!(b.load(&ta).await.unwrap(), None);
    assert_eq!(b.load(&anon).await.unwrap(), None);
    assert_eq!(a.load(&tb).await.unwrap(), None);
    let listed_a: Vec<_> = a.list("alice", None).await.unwrap();
    let listed_b: Vec<_> = b.list("alice", None).await.unwrap();
    assert_eq!(
        listed_a.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ta.id()]
    );
    assert_eq!(
        listed_b.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![tb.id()]
    );

    // A token of one deployment cannot be saved into the other over its
    // session: B has none under that token, so a save with a version is gone.
    let mut foreign = a.load(&ta).await.unwrap().unwrap();
    foreign.data.insert("x".into(), ciborium::Value::Bool(true));
    assert_eq!(b.save(&ta, &foreign).await.unwrap(), SaveOutcome::Gone);
    let server = shared_server();
    let key_b = session_key(&pb, &ta);
    assert_eq!(server.cmd(&["EXISTS", &key_b]), "0");
    // Deleting and revoking in B leaves A alone.
    assert!(!b.delete(&ta).await.unwrap());
    assert!(!b.revoke("alice", &ta.id()).await.unwrap());
    assert_eq!(b.revoke_all("alice", None, None).await.unwrap(), 1);
    assert!(a.load(&ta).await.unwrap().is_some());
    assert_eq!(a.list("alice", None).await.unwrap().len(), 1);
    assert_eq!(b.load(&tb).await.unwrap(), None);

    // The keys are where the prefixes say.
    let key_a = session_key(&pa, &ta);
    assert_eq!(server.cmd(&["EXISTS", &key_a]), "1");
    let keys_b = server.cmd(&["KEYS", &format!("{pb}*")]);
    assert_eq!(keys_b, "", "B revoked everything it had");
}

/// FCALL of a function of the other library, with raw arguments.
fn fcall(function: &str, keys: &[&str], args: &[&[u8]]) -> Reply {
    let numkeys = keys.len().to_string();
    let mut cmd: Vec<&[u8]> = vec![b"FCALL", function.as_bytes(), numkeys.as_bytes()];
    cmd.extend(keys.iter().map(|k| k.as_bytes()));
    cmd.extend_from_slice(args);
    shared_server().cmd_bytes(&cmd)
}

#[tokio::test]
async fn two_library_versions_side_by_side() {
    let server = shared_server();
    let other_name = "trs_othervers";
    let other_source = SOURCE.replace("TRS_LIB", other_name);
    let loaded = server.cmd_bytes(&[b"FUNCTION", b"LOAD", b"REPLACE", other_source.as_bytes()]);
    assert_eq!(loaded, Reply::Bulk(other_name.as_bytes().to_vec()));

    // The crate's store keeps working while the other version is used.
    let prefix = unique_prefix("vers");
    let store = store(&prefix).await;
    assert_ne!(store.library_name(), other_name);
    let token = create(&store, Some("vera")).await;

    // The other version, driven by raw FCALLs under its own prefix.
    let other_key = format!("{}{{tag00000}}:s:some-id", unique_prefix("old"));
    let now = store.now().to_string();
    let save = |expected: &[u8], blob: &[u8], nonce: &[u8]| {
        fcall(
            &format!("{other_name}_save"),
            &[&other_key],
            &[
                expected,
                blob,
                now.as_bytes(),
                b"60000",
                b"0",
                b"web",
                nonce,
            ],
        )
    };
    let saved = save(b"0", b"blob-1", b"n1");
    assert_eq!(
        saved,
        Reply::Array(vec![Reply::Bulk(b"saved".to_vec()), Reply::Int(1)])
    );
    assert_eq!(
        save(b"0", b"blob-2", b"n2").unwrap_array()[0],
        Reply::Bulk(b"conflict".to_vec())
    );
    let loaded = fcall(
        &format!("{other_name}_load"),
        &[&other_key],
        &[now.as_bytes(), b"1000"],
    );
    let loaded = loaded.unwrap_array();
    assert_eq!(loaded[0], Reply::Int(1));
    assert_eq!(loaded[1], Reply::Bulk(b"blob-1".to_vec()));

    // Meanwhile the store goes on.
    let mut record = store.load(&token).await.unwrap().unwrap();
    record
        .data
        .insert("k".into(), ciborium::Value::Integer(1.into()));
    assert_eq!(
        store.save(&token, &record).await.unwrap(),
        SaveOutcome::Saved { version: 2 }
    );

    let names = libraries();
    assert!(names.contains(&other_name.to_owned()), "{names:?}");
    assert!(
        names.contains(&store.library_name().to_owned()),
        "{names:?}"
    );

    // Another store connecting (FUNCTION LOAD REPLACE of its own library)
    // leaves the other version registered and working.
    let again = self::store(&prefix).await;
    assert!(libraries().contains(&other_name.to_owned()));
    assert_eq!(again.load(&token).await.unwrap().unwrap().version, 2);
    assert_eq!(
        fcall(&format!("{other_name}_delete"), &[&other_key], &[b""]),
        Reply::Int(1)
    );
    assert_eq!(server.cmd(&["EXISTS", &other_key]), "0");
    assert!(store.delete(&token).await.unwrap());
}
