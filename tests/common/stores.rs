//! Stores under test, with raw access to what they keep.
//!
//! [`open`] builds a [`MemoryStore`], or a [`RedisStore`] on the shared
//! standalone server or the shared cluster, under a fresh key prefix. The
//! returned [`Tamper`] gives the store (as `&dyn SessionStore`) plus raw
//! access to its stored blobs and keys, the way a test with direct access to
//! Redis (or to the memory store's internals) sees them, so one test case can
//! run against every store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tower_redis_sessions::store::{Millis, NearCache, Record, SessionStore, Token};
use tower_redis_sessions::{Keyring, MemoryStore, RedisStore, StoreConfig, StoreStats};

use super::{RedisCluster, RedisServer, Reply, shared_cluster, shared_server};

/// Where a store under test keeps its sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deployment {
    /// [`MemoryStore`].
    Memory,
    /// [`RedisStore`] on [`shared_server`].
    Standalone,
    /// [`RedisStore`] on [`shared_cluster`].
    Cluster,
}

/// A fresh key prefix, unique in this process and across runs.
pub fn unique_prefix(label: &str) -> String {
    format!(
        "{label}{:012x}:",
        super::server::random_u64() & 0xffff_ffff_ffff
    )
}

/// The keyring most tests use.
pub fn test_keyring() -> Keyring {
    Keyring::new([7u8; 32]).expect("a 32-byte secret is accepted")
}

/// A clock a test moves by hand (milliseconds since the Unix epoch).
/// Starts at the real time, so keys written through it expire in Redis (which
/// uses its own clock) about when the application expects.
#[derive(Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock showing the current real time.
    pub fn now_real() -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(real_now())))
    }

    /// The time it shows.
    pub fn get(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }

    /// Sets the time it shows.
    pub fn set(&self, at: Millis) {
        self.0.store(at, Ordering::SeqCst);
    }

    /// Moves it forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// `config` with this clock.
    pub fn install(&self, config: StoreConfig) -> StoreConfig {
        let time = self.0.clone();
        config.clock(move || time.load(Ordering::SeqCst))
    }
}

/// The real time in ms since the Unix epoch.
pub fn real_now() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as Millis
}

/// E(deadline) of `lua/sessions.lua` (`late`): where Redis puts the key
/// expiry and the index score of a session with this deadline and idle
/// timeout (ms, 0 = none): the deadline rounded up to a multiple of
/// idle / 32 clamped to 1 s ..= 60 s, or the deadline itself without idle
/// timeout. Computed independently here so the tests pin the rule.
pub fn grid_expiry(deadline: u64, idle: u64) -> u64 {
    const NO_DEADLINE: u64 = (1 << 53) - 1;
    if idle == 0 || deadline >= NO_DEADLINE {
        return deadline;
    }
    let step = (idle / 32).clamp(1_000, 60_000);
    deadline
        .div_ceil(step)
        .saturating_mul(step)
        .min(NO_DEADLINE)
}

/// The Redis key of `token`'s session under `prefix`:
/// `<prefix>{<first 8 chars of the token>}:s:<id>`.
pub fn session_key(prefix: &str, token: &Token) -> String {
    let text = token.to_string();
    format!("{prefix}{{{}}}:s:{}", &text[..8], token.id())
}

/// A store under test plus raw access to what it stores.
pub trait Tamper: Send + Sync {
    /// Which kind of store this is.
    fn deployment(&self) -> Deployment;
    /// The store, through the trait every store implements.
    fn store(&self) -> &dyn SessionStore;
    /// The store's counters.
    fn stats(&self) -> StoreStats;
    /// The key prefix of this store.
    fn prefix(&self) -> &str;
    /// The sealed blob stored for `token` (Redis: field `b` of its hash).
    fn blob(&self, token: &Token) -> Option<Vec<u8>>;
    /// Overwrites the sealed blob of an existing session; whether it existed.
    fn set_blob(&self, token: &Token, blob: &[u8]) -> bool;
    /// Whether anything is stored for `token` (Redis: `EXISTS` of its key;
    /// memory: an entry, even one not yet noticed to have expired).
    fn exists(&self, token: &Token) -> bool;
    /// Redis only: `PEXPIRETIME` of the session key (-1 none, -2 no key).
    fn expire_time(&self, token: &Token) -> Option<i64>;
    /// Redis only: every key of this prefix on the node that holds
    /// `token`'s hash slot (`KEYS <prefix>*`), sorted.
    fn keys_near(&self, token: &Token) -> Option<Vec<String>>;
    /// Redis only: runs a raw command on the node holding `key`.
    fn raw(&self, key: &str, args: &[&[u8]]) -> Option<Reply>;
    /// Whether another store opened with the same prefix (see [`open_with`])
    /// sees the same sessions (Redis: yes; memory: no, each is its own).
    fn shares_data(&self) -> bool;
}

/// Opens a store of `deployment` with `config` under a fresh prefix.
pub async fn open(deployment: Deployment, config: StoreConfig) -> Box<dyn Tamper> {
    open_with(deployment, config, &unique_prefix("c")).await
}

/// Opens a store of `deployment` with `config` under `prefix` (overriding
/// the config's prefix), with the crate's default near cache (on).
pub async fn open_with(
    deployment: Deployment,
    config: StoreConfig,
    prefix: &str,
) -> Box<dyn Tamper> {
    open_cached(deployment, config, prefix, NearCache::default()).await
}

/// [`open`] without the near cache: for cases about what a call to Redis
/// does (every load reaches Redis).
pub async fn open_uncached(deployment: Deployment, config: StoreConfig) -> Box<dyn Tamper> {
    open_cached(deployment, config, &unique_prefix("c"), NearCache::off()).await
}

/// [`open_with`] with the near cache `cache`.
pub async fn open_cached(
    deployment: Deployment,
    config: StoreConfig,
    prefix: &str,
    cache: NearCache,
) -> Box<dyn Tamper> {
    let config = config.prefix(prefix);
    match deployment {
        Deployment::Memory => Box::new(MemoryUnderTest {
            store: MemoryStore::new(config),
            prefix: prefix.to_owned(),
        }),
        Deployment::Standalone => {
            let store = RedisStore::builder(config)
                .pool_size(2)
                .near_cache(cache)
                .connect(&shared_server().url())
                .await
                .expect("connect to the shared server");
            Box::new(RedisUnderTest {
                store,
                prefix: prefix.to_owned(),
                redis: RedisRef::Server(shared_server()),
            })
        }
        Deployment::Cluster => {
            let store = RedisStore::builder(config)
                .pool_size(2)
                .near_cache(cache)
                .connect_cluster(shared_cluster().urls())
                .await
                .expect("connect to the shared cluster");
            Box::new(RedisUnderTest {
                store,
                prefix: prefix.to_owned(),
                redis: RedisRef::Cluster(shared_cluster()),
            })
        }
    }
}

/// Makes `to` hold what `from` holds for `token`: nothing to do for stores
/// that share their data; for memory stores, copies the sealed blob (creating
/// an anonymous placeholder session first if `to` has none, so that only the
/// blob decides what `to` loads).
pub async fn carry(from: &dyn Tamper, to: &dyn Tamper, token: &Token) {
    if from.shares_data() && to.shares_data() {
        return;
    }
    let blob = from.blob(token).expect("the source holds the session");
    if !to.exists(token) {
        let placeholder = Record::new(token.id(), "placeholder", to.store().now());
        to.store()
            .save(token, &placeholder)
            .await
            .expect("placeholder save");
    }
    assert!(to.set_blob(token, &blob));
}

/// Polls a condition (an expression that may `.await`) every 20 ms until it
/// holds; panics once `within` has passed:
/// `eventually!("key dropped", Duration::from_secs(5), !s.exists(&token));`
// Not every test binary that compiles the harness polls.
#[allow(unused_macros)]
macro_rules! eventually {
    ($what:expr, $within:expr, $cond:expr) => {{
        let start = ::std::time::Instant::now();
        let within: ::std::time::Duration = $within;
        loop {
            if $cond {
                break;
            }
            assert!(
                start.elapsed() < within,
                "{}: still not true after {:?}",
                $what,
                within
            );
            ::tokio::time::sleep(::std::time::Duration::from_millis(20)).await;
        }
    }};
}
pub(crate) use eventually;

struct MemoryUnderTest {
    store: MemoryStore,
    prefix: String,
}

impl Tamper for MemoryUnderTest {
    fn deployment(&self) -> Deployment {
        Deployment::Memory
    }
    fn store(&self) -> &dyn SessionStore {
        &self.store
    }
    fn stats(&self) -> StoreStats {
        self.store.stats()
    }
    fn prefix(&self) -> &str {
        &self.prefix
    }
    fn blob(&self, token: &Token) -> Option<Vec<u8>> {
        self.store.sealed(token)
    }
    fn set_blob(&self, token: &Token, blob: &[u8]) -> bool {
        self.store.set_sealed(token, blob.to_vec())
    }
    fn exists(&self, token: &Token) -> bool {
        self.store.sealed(token).is_some()
    }
    fn expire_time(&self, _token: &Token) -> Option<i64> {
        None
    }
    fn keys_near(&self, _token: &Token) -> Option<Vec<String>> {
        None
    }
    fn raw(&self, _key: &str, _args: &[&[u8]]) -> Option<Reply> {
        None
    }
    fn shares_data(&self) -> bool {
        false
    }
}

/// A standalone server or a cluster, borrowed.
#[derive(Clone, Copy)]
pub enum RedisRef<'a> {
    /// One server.
    Server(&'a RedisServer),
    /// A cluster: commands go to the node owning the key.
    Cluster(&'a RedisCluster),
}

impl<'a> RedisRef<'a> {
    /// The server holding `key`.
    pub fn node(&self, key: &str) -> &'a RedisServer {
        match self {
            RedisRef::Server(server) => server,
            RedisRef::Cluster(cluster) => cluster.node_for_key(key),
        }
    }
}

struct RedisUnderTest {
    store: RedisStore,
    prefix: String,
    redis: RedisRef<'static>,
}

impl RedisUnderTest {
    fn cmd(&self, key: &str, args: &[&[u8]]) -> Reply {
        self.redis.node(key).cmd_bytes(args)
    }
}

impl Tamper for RedisUnderTest {
    fn deployment(&self) -> Deployment {
        match self.redis {
            RedisRef::Server(_) => Deployment::Standalone,
            RedisRef::Cluster(_) => Deployment::Cluster,
        }
    }
    fn store(&self) -> &dyn SessionStore {
        &self.store
    }
    fn stats(&self) -> StoreStats {
        self.store.stats()
    }
    fn prefix(&self) -> &str {
        &self.prefix
    }
    fn blob(&self, token: &Token) -> Option<Vec<u8>> {
        let key = session_key(&self.prefix, token);
        match self.cmd(&key, &[b"HGET", key.as_bytes(), b"b"]) {
            Reply::Bulk(blob) => Some(blob),
            Reply::Nil => None,
            other => panic!("HGET {key} b: {other:?}"),
        }
    }
    fn set_blob(&self, token: &Token, blob: &[u8]) -> bool {
        let key = session_key(&self.prefix, token);
        if !self.exists(token) {
            return false;
        }
        let invalidations = self.store.near_cache_stats().map(|s| s.invalidations);
        let reply = self.cmd(&key, &[b"HSET", key.as_bytes(), b"b", blob]);
        assert_eq!(reply, Reply::Int(0), "HSET {key} b (field overwritten)");
        // A change made behind the store's back, like another process's:
        // its near cache may serve the old blob until the invalidation
        // arrives, and never once the staleness bound has passed.
        if let Some(before) = invalidations {
            let bound = Instant::now() + NearCache::DEFAULT_MAX_STALENESS;
            while Instant::now() < bound
                && self.store.near_cache_stats().map(|s| s.invalidations) == Some(before)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        true
    }
    fn exists(&self, token: &Token) -> bool {
        let key = session_key(&self.prefix, token);
        self.cmd(&key, &[b"EXISTS", key.as_bytes()]) == Reply::Int(1)
    }
    fn expire_time(&self, token: &Token) -> Option<i64> {
        let key = session_key(&self.prefix, token);
        self.cmd(&key, &[b"PEXPIRETIME", key.as_bytes()]).as_int()
    }
    fn keys_near(&self, token: &Token) -> Option<Vec<String>> {
        let key = session_key(&self.prefix, token);
        let pattern = format!("{}*", self.prefix);
        let reply = self.cmd(&key, &[b"KEYS", pattern.as_bytes()]);
        let mut keys: Vec<String> = reply
            .as_array()
            .unwrap_or_else(|| panic!("KEYS {pattern}: {reply:?}"))
            .iter()
            .map(|k| k.as_str().expect("utf-8 key").to_owned())
            .collect();
        keys.sort();
        Some(keys)
    }
    fn raw(&self, key: &str, args: &[&[u8]]) -> Option<Reply> {
        Some(self.cmd(key, args))
    }
    fn shares_data(&self) -> bool {
        true
    }
}
