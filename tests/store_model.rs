//! The same semantics in Rust and in Lua: random sequences of store
//! operations (saves with fresh or stale versions, loads, deletes,
//! compare-and-deletes, rotations, listings, revocations, time passing) run
//! against a `MemoryStore` and a `RedisStore` on a real Redis side by side,
//! and every answer must be the same.

mod common;

use std::time::Duration;

use proptest::prelude::*;
use tower_redis_sessions::store::{Record, RetireOutcome, SaveOutcome, SessionStore, Token};
use tower_redis_sessions::{MemoryStore, RedisStore, StoreConfig};

use common::shared_server;
use common::stores::{ManualClock, test_keyring, unique_prefix};

/// Three session slots: 0 anonymous, 1 and 2 sessions of user "u".
const SLOTS: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    /// Save slot `i` with value `n`, expecting the version last seen (or a
    /// stale one, `stale` versions older).
    Save {
        i: usize,
        n: u8,
        stale: u8,
    },
    Load(usize),
    Delete(usize),
    /// Compare-and-delete with the version last seen (or a stale one).
    Retire {
        i: usize,
        stale: u8,
    },
    /// Move slot `i` to a fresh token of its slot.
    Rotate(usize),
    List,
    RevokeAll {
        keep: Option<usize>,
    },
    /// Let time pass (the sessions' idle timeout is 10 s).
    Wait(u16),
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0..SLOTS;
    prop_oneof![
        4 => (i.clone(), any::<u8>(), 0u8..3).prop_map(|(i, n, stale)| Op::Save { i, n, stale: stale.saturating_sub(1) }),
        3 => i.clone().prop_map(Op::Load),
        1 => i.clone().prop_map(Op::Delete),
        1 => (i.clone(), 0u8..2).prop_map(|(i, stale)| Op::Retire { i, stale }),
        1 => i.clone().prop_map(Op::Rotate),
        1 => Just(Op::List),
        1 => prop::option::of(i).prop_map(|keep| Op::RevokeAll { keep }),
        1 => (0u16..12_000).prop_map(Op::Wait),
    ]
}

/// One side of the comparison: a store and what the client knows of each
/// slot (its token and the last version it saw).
struct Side<S> {
    store: S,
    tokens: Vec<Token>,
    versions: Vec<u64>,
}

/// What an operation answered, in a form both stores must agree on.
#[derive(Debug, PartialEq)]
enum Answer {
    Loaded(Option<(u64, Option<String>, Option<i64>)>),
    Saved(&'static str, u64),
    Deleted(bool),
    Retired(&'static str),
    Listed(Vec<(u64, i64)>),
    Revoked(u64),
    Waited,
}

fn value(record: &Record) -> Option<i64> {
    record
        .data
        .get("n")
        .and_then(|v| v.as_integer())
        .and_then(|n| i64::try_from(n).ok())
}

impl<S: SessionStore> Side<S> {
    fn new(store: S, tokens: Vec<Token>) -> Side<S> {
        Side {
            store,
            tokens,
            versions: vec![0; SLOTS],
        }
    }

    fn user(i: usize) -> Option<String> {
        (i > 0).then(|| "u".to_owned())
    }

    fn record(&self, i: usize, n: u8, version: u64) -> Record {
        let mut record = Record::new(self.tokens[i].id(), "web", self.store.now());
        record.user = Self::user(i);
        record.idle_timeout = Some(Duration::from_secs(10));
        record.version = version;
        record
            .data
            .insert("n".into(), ciborium::Value::Integer(n.into()));
        record
    }

    async fn run(&mut self, op: &Op) -> Answer {
        match *op {
            Op::Save { i, n, stale } => {
                let expected = self.versions[i].saturating_sub(u64::from(stale));
                let record = self.record(i, n, expected);
                match self.store.save(&self.tokens[i], &record).await.unwrap() {
                    SaveOutcome::Saved { version } => {
                        self.versions[i] = version;
                        Answer::Saved("saved", version)
                    }
                    SaveOutcome::Conflict(current) => {
                        self.versions[i] = current.version;
                        Answer::Saved("conflict", current.version)
                    }
                    SaveOutcome::Gone => Answer::Saved("gone", 0),
                }
            }
            Op::Load(i) => {
                let loaded = self.store.load(&self.tokens[i]).await.unwrap();
                if let Some(r) = &loaded {
                    self.versions[i] = r.version;
                }
                Answer::Loaded(loaded.map(|r| (r.version, r.user.clone(), value(&r))))
            }
            Op::Delete(i) => Answer::Deleted(self.store.delete(&self.tokens[i]).await.unwrap()),
            Op::Retire { i, stale } => {
                let version = self.versions[i].saturating_sub(u64::from(stale));
                Answer::Retired(
                    match self.store.retire(&self.tokens[i], version).await.unwrap() {
                        RetireOutcome::Deleted => "deleted",
                        RetireOutcome::Conflict(_) => "conflict",
                        RetireOutcome::Gone => "gone",
                    },
                )
            }
            Op::Rotate(_) => unreachable!("rotations go through `rotate`"),
            Op::List => {
                let mut listed: Vec<(u64, i64)> = self
                    .store
                    .list("u", None)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.version, value(r).unwrap_or(-1)))
                    .collect();
                listed.sort();
                Answer::Listed(listed)
            }
            Op::RevokeAll { keep } => {
                let keep = keep.map(|k| &self.tokens[k]);
                Answer::Revoked(self.store.revoke_all("u", None, keep).await.unwrap())
            }
            Op::Wait(_) => Answer::Waited,
        }
    }

    /// Moves slot `i` to `next` (both sides get the same fresh token).
    async fn rotate(&mut self, i: usize, next: &Token) -> Answer {
        let mut record = self.record(i, 99, self.versions[i]);
        record.id = next.id();
        match self
            .store
            .rotate(&self.tokens[i], next, &record)
            .await
            .unwrap()
        {
            SaveOutcome::Saved { version } => {
                self.versions[i] = version;
                self.tokens[i] = next.clone();
                Answer::Saved("saved", version)
            }
            SaveOutcome::Conflict(current) => {
                self.versions[i] = current.version;
                Answer::Saved("conflict", current.version)
            }
            SaveOutcome::Gone => Answer::Saved("gone", 0),
        }
    }
}

async fn compare(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::now_real();
    let config = || clock.install(StoreConfig::new(test_keyring()).prefix(unique_prefix("model")));
    let memory = MemoryStore::new(config());
    let redis = RedisStore::builder(config())
        .pool_size(1)
        .connect(&shared_server().url())
        .await
        .unwrap();
    let tokens: Vec<Token> = (0..SLOTS)
        .map(|i| {
            memory
                .new_token(Side::<MemoryStore>::user(i).as_deref())
                .unwrap()
        })
        .collect();
    let mut m = Side::new(memory, tokens.clone());
    let mut r = Side::new(redis, tokens);
    for (step, op) in ops.iter().enumerate() {
        let (a, b) = match *op {
            Op::Wait(ms) => {
                clock.advance(u64::from(ms));
                (Answer::Waited, Answer::Waited)
            }
            Op::Rotate(i) => {
                // Both sides must hold the same tokens: one fresh token for both.
                let next = m.tokens[i].renew().unwrap();
                (m.rotate(i, &next).await, r.rotate(i, &next).await)
            }
            _ => (m.run(op).await, r.run(op).await),
        };
        prop_assert_eq!(&a, &b, "step {} {:?} in {:?}", step, op, ops);
        prop_assert_eq!(&m.tokens, &r.tokens);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn memory_and_redis_answer_alike(ops in prop::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(compare(ops))?;
    }
}
