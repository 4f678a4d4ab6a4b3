//! A user's slot moves between masters in batches, the way `redis-cli
//! --cluster reshard` moves it (`CLUSTER SETSLOT IMPORTING / MIGRATING`,
//! `MIGRATE ... KEYS` a few keys at a time, `SETSLOT NODE`), while the
//! store lists, revokes and deletes that user's sessions.
//!
//! Mid-migration a user's keys sit on both nodes. Every call must either
//! answer truthfully (a listing of every live session, a revocation that
//! ended all it counted) or fail as unavailable (a 503) before writing
//! anything; no session or index entry may be lost, and once the slot has
//! moved, listing shows every live session and revoking ends all of them.
//!
//! The steps are driven by the test on a private cluster, so each call
//! meets exactly the state it is meant to.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore, Token};
use tower_redis_sessions::{Keyring, RedisStore, StoreConfig, StoreError};

use common::stores::{session_key, unique_prefix};
use common::{RedisCluster, RedisServer, key_slot};

/// The members of the index `index` on `node` (sent with `ASKING`, so the
/// node answers for an importing slot too).
fn index_members(node: &RedisServer, index: &str) -> BTreeSet<String> {
    let mut conn = node.connect();
    assert_eq!(conn.cmd(&["ASKING"]), "OK");
    conn.cmd_bytes(&[b"ZRANGE", index.as_bytes(), b"0", b"-1"])
        .unwrap_array()
        .into_iter()
        .map(|r| String::from_utf8(r.unwrap_bytes()).unwrap())
        .collect()
}

/// Every key of the slot, wherever it sits now.
fn everywhere(cluster: &RedisCluster, slot: u16) -> BTreeSet<String> {
    cluster
        .nodes()
        .iter()
        .flat_map(|n| n.keys_in_slot(slot))
        .collect()
}

/// What the test saw, for the report.
#[derive(Default, Debug)]
struct Tally {
    truthful: usize,
    unavailable: usize,
}

impl Tally {
    /// Records an outcome: `Ok` values go to `check`, errors must be
    /// "unavailable" (a 503), never anything else.
    fn note<T>(&mut self, what: &str, result: Result<T, StoreError>, check: impl FnOnce(T)) {
        match result {
            Ok(value) => {
                self.truthful += 1;
                check(value);
            }
            Err(error) => {
                assert!(
                    error.is_unavailable(),
                    "{what}: a cluster-transient error must be a 503, got {error:?}"
                );
                eprintln!("{what}: unavailable ({error})");
                self.unavailable += 1;
            }
        }
    }
}

/// Nothing lost, nothing half-written: exactly the live sessions exist
/// (wherever they sit), and the index (on `holder`) names exactly them.
fn check(
    cluster: &RedisCluster,
    slot: u16,
    prefix: &str,
    index: &str,
    holder: &RedisServer,
    live: &[Token],
    tokens: &[Token],
) {
    let present = everywhere(cluster, slot);
    for token in tokens {
        assert_eq!(
            present.contains(&session_key(prefix, token)),
            live.contains(token),
            "a session exists exactly when it is live"
        );
    }
    let expected: BTreeSet<String> = live.iter().map(|t| session_key(prefix, t)).collect();
    assert_eq!(
        index_members(holder, index),
        expected,
        "the index names exactly the live sessions"
    );
}

fn ids(records: &[Record]) -> BTreeSet<String> {
    records.iter().map(|r| r.id.to_string()).collect()
}

fn id_set(tokens: &[Token]) -> BTreeSet<String> {
    tokens.iter().map(|t| t.id().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_slot_resharded_in_batches_loses_nothing() {
    let cluster = RedisCluster::start();
    let prefix = unique_prefix("reshard");
    let config = StoreConfig::new(Keyring::new([5u8; 32]).unwrap()).prefix(&prefix);
    let store = RedisStore::builder(config)
        .command_timeout(Duration::from_secs(1))
        .connect_cluster(cluster.urls())
        .await
        .unwrap();
    let user = "ada";
    let mut tokens = Vec::new();
    for _ in 0..6 {
        let token = store.new_token(Some(user)).unwrap();
        let mut record = Record::new(token.id(), "web", store.now());
        record.user = Some(user.to_owned());
        record.idle_timeout = Some(Duration::from_secs(600));
        assert_eq!(
            store.save(&token, &record).await.unwrap(),
            SaveOutcome::Saved { version: 1 }
        );
        tokens.push(token);
    }
    let keys: Vec<String> = tokens.iter().map(|t| session_key(&prefix, t)).collect();
    let slot = key_slot(keys[0].as_bytes());
    let source = cluster.node_for_slot(slot);
    let target = cluster
        .nodes()
        .iter()
        .find(|n| n.port() != source.port())
        .unwrap();
    let all = source.keys_in_slot(slot);
    let _ = &all;
    assert_eq!(all.len(), 7, "six sessions and the index: {all:?}");
    let index = all.iter().find(|k| k.contains("}:u:")).unwrap().clone();

    let (source_id, target_id) = (source.node_id(), target.node_id());
    target.setslot(slot, &["IMPORTING", &source_id]);
    source.setslot(slot, &["MIGRATING", &target_id]);
    let mut tally = Tally::default();
    // The sessions that should be alive, as the calls that succeeded say.
    let mut live: Vec<Token> = tokens.clone();

    // Batch 1: two sessions move, the index stays on the source. Calls on
    // the index run on the source and meet the moved sessions there.
    source.migrate_keys(target, &[&keys[4], &keys[5]]);
    tally.note("list (batch 1)", store.list(user, None).await, |listed| {
        assert_eq!(ids(&listed), id_set(&live), "a listing shows every session");
    });
    tally.note(
        "logout of a moved session (batch 1)",
        store.delete(&tokens[5]).await,
        |deleted| {
            assert!(deleted, "it existed");
            live.retain(|t| *t != tokens[5]);
        },
    );
    check(&cluster, slot, &prefix, &index, source, &live, &tokens);

    // Batch 2: the index and one more session move; three sessions stay.
    source.migrate_keys(target, &[&index, &keys[3]]);
    tally.note("list (batch 2)", store.list(user, None).await, |listed| {
        assert_eq!(ids(&listed), id_set(&live), "a listing shows every session");
    });
    tally.note(
        "logout of a session still on the source (batch 2)",
        store.delete(&tokens[1]).await,
        |deleted| {
            assert!(deleted, "it existed");
            live.retain(|t| *t != tokens[1]);
        },
    );
    // Session and index both on the target now: this logout completes.
    let before = tally.truthful;
    tally.note(
        "logout of a session moved with the index (batch 2)",
        store.delete(&tokens[4]).await,
        |deleted| {
            assert!(deleted, "it existed");
            live.retain(|t| *t != tokens[4]);
        },
    );
    assert_eq!(tally.truthful, before + 1, "nothing stands in its way");
    tally.note(
        "revoke others (batch 2)",
        store.revoke_all(user, None, Some(&tokens[0])).await,
        |revoked| {
            assert_eq!(
                revoked as usize,
                live.len() - 1,
                "a revocation ends every other session"
            );
            live.retain(|t| *t == tokens[0]);
        },
    );
    for token in &tokens {
        tally.note("load (batch 2)", store.load(token).await, |loaded| {
            assert_eq!(
                loaded.is_some(),
                live.contains(token),
                "loads tell the truth"
            );
        });
    }
    check(&cluster, slot, &prefix, &index, target, &live, &tokens);

    // Last batch and the owner change, on every node.
    source.migrate_keys(target, &[&keys[0], &keys[1], &keys[2]]);
    target.setslot(slot, &["NODE", &target_id]);
    source.setslot(slot, &["NODE", &target_id]);
    for node in cluster.nodes() {
        if node.port() != source.port() && node.port() != target.port() {
            node.setslot(slot, &["NODE", &target_id]);
        }
    }
    let arrived = target.keys_in_slot(slot);
    assert!(
        source.keys_in_slot(slot).is_empty(),
        "everything left the source"
    );
    for token in &tokens {
        assert_eq!(
            arrived.contains(&session_key(&prefix, token)),
            live.contains(token),
            "every live session arrived, no ended one"
        );
    }

    let listed = store.list(user, None).await.unwrap();
    assert_eq!(
        ids(&listed),
        id_set(&live),
        "after the move, every live session"
    );
    assert_eq!(
        store
            .revoke_all(user, None, Some(&tokens[0]))
            .await
            .unwrap() as usize,
        live.len() - 1
    );
    assert!(store.delete(&tokens[0]).await.unwrap(), "logout");
    for token in &tokens {
        assert_eq!(store.load(token).await.unwrap(), None);
    }
    assert_eq!(store.list(user, None).await.unwrap(), vec![]);
    assert!(target.keys_in_slot(slot).is_empty(), "nothing left behind");
    eprintln!("mid-migration calls: {tally:?}");
}
