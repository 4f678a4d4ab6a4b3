//! [`RedisStore`]: sessions in one Redis or a Redis Cluster, one function
//! call per operation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_redis::redis::{self, Cmd, ErrorKind, FromRedisValue, RedisError, Value};
use deadpool_redis::{PoolConfig, Runtime};

use crate::record::Millis;
use crate::store::core::{Backend, Core, HasCore, Raw, RawRetire, RawSave, StoreStats, Write};
use crate::store::library::Library;
use crate::store::near_cache::{Near, NearCache, NearCacheStats};
use crate::store::pool::{CallError, Connections, Pool, Timeouts};
use crate::store::reply::{Listed, Loaded};
use crate::store::sentinel::{self, NodeAuth};
use crate::store::tls::{self, TlsConfig};
use crate::store::tracking::{Sent, Target, Tracking};
use crate::store::{StoreConfig, StoreError};

pub(crate) mod preload;

use self::preload::{LibraryMode, Phase};

/// Sessions in Redis (>= 7), on a single node or a Redis Cluster.
///
/// Every operation is one `FCALL` of the function library in
/// `lua/sessions.lua`, which the store registers when it connects (`FUNCTION
/// LOAD REPLACE`) under a name carrying a hash of its source (see
/// [`library_name`](RedisStore::library_name)). If Redis lost the library
/// (a restart without persistence, `FUNCTION FLUSH`, a failover to a node
/// without it), the failing call registers it again and is sent once more.
///
/// # Keys
///
/// With prefix `P`, a session is the hash `P{tag}:s:<id>` and a user's index
/// the sorted set `P{tag}:u:<keyed hash of the user id>`; the `{tag}` hash tag
/// puts a user's sessions and index in one hash slot, so every call stays in
/// one slot on Redis Cluster. Redis expires both by itself: no cleanup job.
///
/// # Connections
///
/// The store keeps up to [`pool_size`](RedisStoreBuilder::pool_size)
/// multiplexed connections (default 10), each carrying many concurrent calls,
/// so a deployment opens `pool_size x processes` connections to a single
/// Redis, and `pool_size x processes x masters` to a cluster. They are leased
/// from a deadpool-redis pool and kept, which avoids the health check
/// deadpool runs at every checkout (it would cost one more round trip per
/// operation).
///
/// # Memory: run `maxmemory-policy noeviction`
///
/// Every key the store writes carries an expiry, so every `allkeys-*` and
/// `volatile-*` policy may evict sessions (logging users out) and user
/// indexes. The store checks the policy when it registers its library and
/// logs a warning for an evicting one (it says nothing where `CONFIG` is
/// not allowed). A session missing from its user's index enters it again
/// when it is next loaded or saved, so an evicted index heals, but only
/// `noeviction` keeps every session. At `maxmemory` under `noeviction`,
/// Redis refuses what would grow it: saves and rotations (new sessions,
/// logins, changed data) fail as [`StoreError::Unavailable`] (a 503, with
/// one error line in the log per episode), while loads, logouts, retiring,
/// listing and revocation keep working.
///
/// # Transient states
///
/// `BUSY`, `LOADING`, `READONLY`, `MASTERDOWN`, `NOREPLICAS`, `TRYAGAIN`,
/// `CLUSTERDOWN`, redirects left over after the client's own, and a call
/// that met a key in migration are
/// [`StoreError::Unavailable`]: retry later, never a 500.
///
/// # Resharding
///
/// While a user's hash slot moves between cluster nodes, each call either
/// completes with a true answer or fails as unavailable before writing
/// anything: no call infers that a session vanished from a key that may sit
/// on the other node. Loads keep working (a due sliding extension waits);
/// listing, revocation and logout of sessions whose keys are split between
/// the two nodes fail as unavailable until the migration completes.
///
/// # Timeouts
///
/// A call waits at most the wait timeout in all for a place among the calls
/// in flight and for a pooled connection, the connect timeout for a new
/// connection, and the command timeout for the answer; a call whose
/// connection broke is sent once more over a new connection. So an operation
/// fails at the latest after `wait + 2 x (connect + command)`.
///
/// ```no_run
/// use tower_redis_sessions::{Keyring, RedisStore, StoreConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = StoreConfig::new(Keyring::new(std::env::var("SESSION_SECRET")?)?);
/// let store = RedisStore::builder(config)
///     .pool_size(16)
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// # Ok(()) }
/// ```
///
/// Cloning is cheap: clones share the connections, the library and the
/// counters (give a clone to each layer, or keep one for the application's
/// own store calls).
#[derive(Clone)]
pub struct RedisStore {
    core: std::sync::Arc<Core<RedisBackend>>,
}

impl HasCore for RedisStore {
    type Backend = RedisBackend;
    fn core(&self) -> &Core<RedisBackend> {
        &self.core
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` with default settings.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<RedisStore, StoreError> {
        RedisStore::builder(config).connect(url).await
    }

    /// A builder for the connection settings.
    pub fn builder(config: StoreConfig) -> RedisStoreBuilder {
        RedisStoreBuilder {
            config,
            pool_size: 10,
            max_in_flight: None,
            timeouts: Timeouts {
                wait: Duration::from_secs(1),
                connect: Duration::from_secs(2),
                command: Duration::from_secs(1),
            },
            lazy: false,
            tls: None,
            library: LibraryMode::Load,
            node_auth: None,
            near: NearCache::default(),
            near_asked: false,
        }
    }

    /// The name the function library is registered under: `trs_` and the
    /// first 16 hex digits of SHA-256 of `lua/sessions.lua`.
    pub fn library_name(&self) -> &str {
        &self.core.backend.library.name
    }

    /// Counters of conflicts, blocked revivals and rejected blobs.
    pub fn stats(&self) -> StoreStats {
        self.core.stats()
    }

    /// The near cache's counters; `None` when the store runs without one
    /// (see [`RedisStoreBuilder::near_cache`]).
    ///
    /// ```no_run
    /// # async fn run(store: tower_redis_sessions::RedisStore) {
    /// if let Some(cache) = store.near_cache_stats() {
    ///     println!("{} reads served without Redis", cache.hits);
    /// }
    /// # }
    /// ```
    pub fn near_cache_stats(&self) -> Option<NearCacheStats> {
        self.core.near_stats()
    }
}

/// For stores built on the same connections and library (the
/// tower-sessions adapter).
#[cfg(feature = "tower-sessions")]
impl RedisStore {
    /// One `FCALL` of the library function `<library>_<function>`, with the
    /// store's re-registration, timeouts and error mapping.
    pub(crate) async fn call_function<T: FromRedisValue>(
        &self,
        function: &str,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(format!("{}_{function}", self.library_name()))
            .arg(keys.len())
            .arg(keys);
        for arg in args {
            cmd.arg(*arg);
        }
        self.core.backend.fcall(cmd).await
    }
}

#[cfg(feature = "tower-sessions")]
impl RedisStoreBuilder {
    /// The store configuration the builder was made with.
    pub(crate) fn store_config(&self) -> &StoreConfig {
        &self.config
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("library", &self.library_name())
            .finish_non_exhaustive()
    }
}

/// Connection settings of a [`RedisStore`].
#[derive(Debug)]
#[must_use]
pub struct RedisStoreBuilder {
    config: StoreConfig,
    pool_size: usize,
    max_in_flight: Option<usize>,
    timeouts: Timeouts,
    lazy: bool,
    tls: Option<TlsConfig>,
    library: LibraryMode,
    node_auth: Option<NodeAuth>,
    near: NearCache,
    /// Whether `near_cache` was called: only then is a store that cannot
    /// have the cache worth a log line.
    near_asked: bool,
}

impl RedisStoreBuilder {
    /// How many multiplexed connections to keep (default 10). With
    /// [`from_pool`](Self::from_pool), at most the pool's own size.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How many calls may be in flight at once, over all connections
    /// (default 32 per connection). Beyond it, calls wait up to the wait
    /// timeout, then fail with [`StoreError::PoolTimeout`].
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.max_in_flight = Some(calls.max(1));
        self
    }

    /// How long a call waits for a place or a pooled connection (default 1 s).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.wait = timeout;
        self
    }

    /// How long opening a connection may take (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.connect = timeout;
        self
    }

    /// How long Redis may take to answer a call (default 1 s).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.command = timeout;
        self
    }

    /// Whether to start without contacting Redis (default `false`).
    ///
    /// By default connecting opens a connection and registers the function
    /// library, so a wrong URL or an unreachable Redis fails at start-up,
    /// within the connect and command timeouts. A lazy store connects and
    /// registers on first use instead: the service starts while Redis is
    /// down, and requests that need a session fail (503) until it is up.
    pub fn lazy(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// TLS settings for `rediss://` URLs: a certificate authority to trust
    /// instead of the system's, a client certificate for mutual TLS (see
    /// [`TlsConfig`]). Needs the crate feature `tls-rustls` or
    /// `tls-native-tls`; connecting fails with [`StoreError::Config`]
    /// otherwise. With [`connect`](Self::connect) the URL says whether to
    /// use TLS; with [`connect_cluster`](Self::connect_cluster) all node URLs
    /// must be `rediss://`; with [`connect_sentinel`](Self::connect_sentinel)
    /// it makes the connections to the Redis nodes TLS (sentinels given as
    /// `rediss://` URLs are reached over TLS too). Custom certificates with
    /// a cluster or Sentinel need `tls-rustls`.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Whether the store loads its function library or only checks that an
    /// operator loaded it (default [`LibraryMode::Load`]); see
    /// [`LibraryMode`] for the Redis permissions each needs.
    ///
    /// ```no_run
    /// use tower_redis_sessions::store::LibraryMode;
    /// use tower_redis_sessions::{Keyring, RedisStore, StoreConfig};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = StoreConfig::new(Keyring::new(std::env::var("SESSION_SECRET")?)?);
    /// // Loaded beforehand by an admin: `cargo run --example print_library | redis-cli -x FUNCTION LOAD REPLACE`
    /// let store = RedisStore::builder(config)
    ///     .library(LibraryMode::Verify)
    ///     .connect("redis://sessions:password@127.0.0.1:6379")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn library(mut self, mode: LibraryMode) -> Self {
        self.library = mode;
        self
    }

    /// Credentials for the Redis nodes behind the sentinels (an ACL user,
    /// or `None` and the `requirepass` password), with
    /// [`connect_sentinel`](Self::connect_sentinel). The sentinels' own
    /// credentials go in their URLs.
    pub fn sentinel_node_auth(
        mut self,
        username: Option<&str>,
        password: impl Into<String>,
    ) -> Self {
        self.node_auth = Some(NodeAuth {
            username: username.map(str::to_owned),
            password: password.into(),
        });
        self
    }

    /// Connects to the primary named `primary` (the name in `sentinel
    /// monitor <name> ...`) through the sentinels at `sentinels`
    /// (`host:port` or `redis://host:port` URLs, at least one reachable).
    ///
    /// Each new connection asks the sentinels for the current primary and
    /// checks its `ROLE`; a connection that breaks (the primary died) or
    /// answers `READONLY` (it was demoted) is replaced, so after a failover
    /// calls fail with [`StoreError::Unavailable`] (503) until the sentinels
    /// have promoted a replica, then reach it. The function library comes to
    /// the replicas by replication, and is loaded again if the new primary
    /// lacks it ([`LibraryMode::Load`]).
    ///
    /// ```no_run
    /// use tower_redis_sessions::{Keyring, RedisStore, StoreConfig};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = StoreConfig::new(Keyring::new(std::env::var("SESSION_SECRET")?)?);
    /// let store = RedisStore::builder(config)
    ///     .connect_sentinel(["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"], "sessions")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_sentinel<I, S>(
        self,
        sentinels: I,
        primary: &str,
    ) -> Result<RedisStore, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let pool = sentinel::pool(
            sentinels.into_iter().map(Into::into).collect(),
            primary,
            self.tls.as_ref(),
            self.node_auth.as_ref(),
            self.timeouts.connect,
            self.pool_config(),
        )?;
        self.build(Pool::Sentinel(pool), None).await
    }

    /// Sets the near cache of opened sessions in front of the store
    /// (default: [`NearCache::new`], on; [`NearCache::off`] turns it off). See [`store::near_cache`](crate::store::near_cache)
    /// for what it promises: reads of a cached session make no Redis call,
    /// and a change made elsewhere is served for at most
    /// [`max_staleness`](NearCache::max_staleness).
    ///
    /// It needs its own connections to Redis (one to a single Redis, one
    /// per master of a cluster), so it works with [`connect`](Self::connect)
    /// and [`connect_cluster`](Self::connect_cluster): a store made with
    /// `connect_sentinel`, a `from_*pool` method or custom TLS certificates
    /// runs without it (and says so in the log).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tower_redis_sessions::{Keyring, RedisStore, StoreConfig};
    /// use tower_redis_sessions::store::NearCache;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = StoreConfig::new(Keyring::new(std::env::var("SESSION_SECRET")?)?);
    /// let store = RedisStore::builder(config)
    ///     .near_cache(NearCache::new().capacity(10_000).max_staleness(Duration::from_millis(300)))
    ///     .connect("redis://127.0.0.1:6379")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn near_cache(mut self, cache: NearCache) -> Self {
        self.near = cache;
        self.near_asked = true;
        self
    }

    /// Connects to the single Redis at `url` (`redis://[user:password@]host:port[/db]`,
    /// or `rediss://` for TLS with the crate feature `tls-rustls` or
    /// `tls-native-tls`; see [`tls`](Self::tls)).
    pub async fn connect(self, url: &str) -> Result<RedisStore, StoreError> {
        let info = tls::connection_info(url, self.tls.as_ref())?;
        let manager = deadpool_redis::Manager::new_with_config(
            info,
            redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.timeouts.connect))
                // Calls are timed by the store itself, the same way on a cluster.
                .set_response_timeout(None),
        )
        .map_err(|e| StoreError::Config(e.to_string()))?;
        let pool = deadpool_redis::Pool::builder(manager)
            .config(self.pool_config())
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let target = Target::Single(url.to_owned());
        self.build(Pool::Single(pool), Some(target)).await
    }

    /// Connects to the Redis Cluster reachable at any of `urls`.
    pub async fn connect_cluster<I, S>(self, urls: I) -> Result<RedisStore, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let urls: Vec<String> = urls.into_iter().map(Into::into).collect();
        tls::check_cluster(&urls, self.tls.as_ref())?;
        #[cfg(feature = "tls-rustls")]
        if let Some(tls) = self.tls.as_ref().filter(|t| t.is_custom()) {
            let pool = crate::store::cluster_tls::pool(
                urls,
                tls,
                self.timeouts.connect,
                self.pool_config(),
            )?;
            return self.build(Pool::ClusterTls(pool), None).await;
        }
        let config = deadpool_redis::cluster::Config {
            urls: Some(urls.clone()),
            connections: None,
            pool: Some(self.pool_config()),
            read_from_replicas: false,
        };
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let prefix = self.config.prefix.clone();
        self.build(Pool::Cluster(pool), Some(Target::Cluster(urls, prefix)))
            .await
    }

    /// Uses connections from an existing pool (to a single Redis). The store
    /// keeps up to `pool_size` of them checked out: give it a pool of its own,
    /// or one larger than that.
    pub async fn from_pool(self, pool: deadpool_redis::Pool) -> Result<RedisStore, StoreError> {
        self.build(Pool::Single(pool), None).await
    }

    /// Uses connections from an existing Redis Cluster pool (see
    /// [`from_pool`](Self::from_pool)).
    pub async fn from_cluster_pool(
        self,
        pool: deadpool_redis::cluster::Pool,
    ) -> Result<RedisStore, StoreError> {
        self.build(Pool::Cluster(pool), None).await
    }

    fn pool_config(&self) -> PoolConfig {
        let mut config = PoolConfig::new(self.pool_size);
        config.timeouts.wait = Some(self.timeouts.wait);
        config.timeouts.create = Some(self.timeouts.connect);
        config.timeouts.recycle = Some(self.timeouts.command);
        config
    }

    async fn build(self, pool: Pool, target: Option<Target>) -> Result<RedisStore, StoreError> {
        let max_in_flight = self
            .max_in_flight
            .unwrap_or(self.pool_size.saturating_mul(32));
        // The invalidation connections are opened from the URLs alone: with
        // custom TLS certificates the cache stays off rather than connect
        // without them.
        let target = target.filter(|_| self.tls.is_none());
        let tracking = match (self.near.is_enabled(), target) {
            (true, Some(target)) => {
                let near = std::sync::Arc::new(Near::new(self.near));
                let tracking =
                    Tracking::start(near, target, self.timeouts.connect, self.timeouts.command)
                        .map_err(|e| StoreError::Config(e.to_string()))?;
                Some(tracking)
            }
            (true, None) if self.near_asked => {
                tracing::warn!(
                    "near cache asked for a store made from a pool, Sentinel or with \
                     custom TLS certificates: running without it"
                );
                None
            }
            (true, None) | (false, _) => None,
        };
        let near = tracking.as_ref().map(|t| t.near().clone());
        let backend = RedisBackend {
            conns: Connections::new(pool, self.pool_size, max_in_flight, self.timeouts),
            library: Library::new(),
            mode: self.library,
            out_of_memory: AtomicBool::new(false),
            tracking,
        };
        if !self.lazy {
            backend.ensure_library(Phase::Start).await?;
        }
        Ok(RedisStore {
            core: std::sync::Arc::new(Core::new(backend, self.config).with_near(near)),
        })
    }
}

pub(crate) struct RedisBackend {
    conns: Connections,
    library: Library,
    mode: LibraryMode,
    /// Whether the last write met `OOM`: its log line is written once per
    /// episode, not once per refused request.
    out_of_memory: AtomicBool,
    /// The near cache's invalidation connection, when the cache is on; the
    /// cache's loads and saves go over it.
    tracking: Option<Tracking>,
}

impl RedisBackend {
    async fn register(&self) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(&self.library.source);
        self.conns
            .query::<Value>(&cmd)
            .await
            .map_err(|e| self.store_error(e))?;
        tracing::info!(library = %self.library.name, "registered the session function library");
        self.check_eviction_policy().await;
        Ok(())
    }

    /// Warns once per registration when Redis may evict this crate's keys:
    /// every session and index carries an expiry, so every `allkeys-*` and
    /// `volatile-*` policy can pick them. Says nothing where `CONFIG` is
    /// refused (ACL, managed services) or fails: the check only advises.
    async fn check_eviction_policy(&self) {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let Ok(reply) = self.conns.query::<Value>(&cmd).await else {
            return;
        };
        if let Some(policy) = evicting_policy(&reply) {
            tracing::warn!(
                maxmemory_policy = %policy,
                "Redis runs maxmemory-policy {policy}: at maxmemory it may evict sessions \
                 (logging users out) and user indexes (hiding sessions from listing and \
                 revocation until they are loaded or saved again); run a session Redis \
                 with maxmemory-policy noeviction"
            );
        }
    }

    /// One function call; registers the library again if Redis lost it.
    async fn fcall<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T, StoreError> {
        match self.conns.query(&cmd).await {
            Err(CallError::Redis(e)) if is_missing_function(&e) => {
                self.flush_near_cache();
                tracing::warn!(
                    library = %self.library.name,
                    "session function library missing in Redis (restart, FUNCTION FLUSH or failover); registering it again"
                );
                self.ensure_library(Phase::Request).await?;
                crate::store::observe::another_attempt(2);
                self.conns
                    .query(&cmd)
                    .await
                    .map_err(|e| self.store_error(e))
            }
            result => result.map_err(|e| self.store_error(e)),
        }
    }

    /// Empties the near cache (the library went missing: a restart or
    /// `FUNCTION FLUSH`, after which nothing cached is trusted).
    fn flush_near_cache(&self) {
        if let Some(tracking) = &self.tracking {
            tracking.near().clear();
        }
    }

    /// A call whose reply the near cache may keep: over the invalidation
    /// connection while it is proven alive (see `store::tracking`), else as
    /// any call. `true` with the reply when it came over that connection.
    async fn fcall_near<T: FromRedisValue>(
        &self,
        key: &str,
        cmd: Cmd,
    ) -> Result<(T, bool), StoreError> {
        if let Some(tracking) = &self.tracking {
            // The same bound on calls in flight as through the pool.
            let place = self.conns.place().await.map_err(|e| self.store_error(e))?;
            let sent = tracking.query::<T>(key, &cmd).await;
            drop(place);
            match sent {
                Sent::Reply(Ok(value)) => return Ok((value, true)),
                // Registered again (and sent again) through the pool.
                Sent::Reply(Err(e)) if is_missing_function(&e) => {}
                Sent::Reply(Err(e)) => return Err(self.store_error(CallError::Redis(e))),
                // No answer within the command timeout, as through the pool:
                // the outcome is unknown, and waiting again elsewhere would
                // double the bound.
                Sent::TimedOut => return Err(self.store_error(CallError::Timeout)),
                // Down, broke or redirected: every library call is safe to
                // send again (a save is applied at most once, I6).
                Sent::Elsewhere => {}
            }
        }
        Ok((self.fcall(cmd).await?, false))
    }

    /// Sends a save or rotation with the arguments they share.
    async fn write(&self, cmd: Cmd, w: &Write<'_>) -> Result<RawSave, StoreError> {
        self.write_via(cmd, w, false).await
    }

    /// [`write`](Self::write), over the near cache's connection if `near`.
    async fn write_via(
        &self,
        mut cmd: Cmd,
        w: &Write<'_>,
        near: bool,
    ) -> Result<RawSave, StoreError> {
        cmd.arg(w.expected)
            .arg(w.blob)
            .arg(w.now)
            .arg(w.idle)
            .arg(w.absolute)
            .arg(w.kind)
            .arg(w.nonce)
            .arg(w.cap)
            // Over the invalidation connection: keep tracking the key.
            .arg(u8::from(near && self.tracking.is_some()));
        let reply: RawSave = if near {
            match self.fcall_near(w.key, cmd).await? {
                (RawSave::Saved(version, ended, _), tracked) => {
                    RawSave::Saved(version, ended, tracked)
                }
                (reply, _) => reply,
            }
        } else {
            self.fcall(cmd).await?
        };
        // A write went through: a later OOM starts a new episode.
        self.out_of_memory.store(false, Ordering::Relaxed);
        Ok(reply)
    }

    /// Notes an `OOM` refusal; the first of an episode is logged.
    fn out_of_memory(&self) {
        if !self.out_of_memory.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "Redis is out of memory (maxmemory reached, maxmemory-policy noeviction): \
                 it refuses session writes (new sessions, saves) until memory is freed or \
                 maxmemory is raised; loads, logouts, listing and revocation still work"
            );
        }
    }

    fn store_error(&self, error: CallError) -> StoreError {
        let timeouts = self.conns.timeouts();
        match error {
            CallError::PoolTimeout => StoreError::PoolTimeout(timeouts.wait),
            CallError::Timeout => StoreError::Timeout(timeouts.command),
            // Says what failed, not just that something did: "session store
            // unavailable: Redis unreachable: Connection refused (os error 111)".
            CallError::Connect(reason) => {
                StoreError::Unavailable(format!("Redis unreachable: {reason}"))
            }
            // A library missing again right after `fcall` registered it
            // (flushed meanwhile, or a failover to a node without it) is
            // transient too, like a node that is loading: a 503, not a 500.
            CallError::Redis(e) => match transient(&e) {
                Some(Transient::OutOfMemory) => {
                    self.out_of_memory();
                    StoreError::Unavailable(format!("Redis is out of memory: {e}"))
                }
                Some(_) => StoreError::Unavailable(e.to_string()),
                None if is_missing_function(&e) => StoreError::Unavailable(format!(
                    "session function library missing in Redis: {e}"
                )),
                None => StoreError::Backend(Box::new(e)),
            },
        }
    }
}

fn is_missing_function(e: &RedisError) -> bool {
    e.to_string().contains("Function not found")
}

/// Why a Redis error is transient (a 503: retry later) rather than a fault
/// of the call (a 500), if it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transient {
    /// The connection broke or could not be made.
    Connection,
    /// `OOM`: maxmemory reached, writes refused (under `noeviction`).
    OutOfMemory,
    /// `BUSY`: a script or function runs past `busy-reply-threshold`.
    Busy,
    /// `LOADING`: the dataset is being loaded.
    Loading,
    /// `READONLY`, `MASTERDOWN`, `NOREPLICAS`: the node cannot take writes
    /// now (a replica, a lost primary link, too few replicas).
    NotWritable,
    /// `TRYAGAIN`, `CLUSTERDOWN`, `ASK`/`MOVED` left over after the client's
    /// own redirects, or a function that met a key on the other side of a
    /// slot migration (the library's `MIGRATING`, or Redis' "non local
    /// key"), or a cluster connection missing.
    Cluster,
}

/// Classifies by the error's code (its first word as Redis sends it, which
/// redis-rs keeps for codes it does not know), and by the message only for
/// the script errors Redis sends under the generic `ERR` code.
fn transient(e: &RedisError) -> Option<Transient> {
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        return Some(Transient::Connection);
    }
    if e.kind() == ErrorKind::ClusterConnectionNotFound {
        return Some(Transient::Cluster);
    }
    match e.code()? {
        "OOM" => Some(Transient::OutOfMemory),
        "BUSY" => Some(Transient::Busy),
        "LOADING" => Some(Transient::Loading),
        "READONLY" | "MASTERDOWN" | "NOREPLICAS" => Some(Transient::NotWritable),
        "TRYAGAIN" | "CLUSTERDOWN" | "ASK" | "MOVED" | "MIGRATING" => Some(Transient::Cluster),
        "ERR" => {
            let detail = e.detail().unwrap_or_default();
            // Redis 7.0 sends these as `ERR` from inside a script.
            let cluster = detail.contains("Script attempted to access a non local key")
                || detail.contains("while the cluster is down");
            cluster.then_some(Transient::Cluster)
        }
        _ => None,
    }
}

/// The policy named in a `CONFIG GET maxmemory-policy` reply (an array or
/// a map of name and value), if it may evict keys that carry an expiry.
fn evicting_policy(reply: &Value) -> Option<String> {
    let mut texts = Vec::new();
    strings(reply, &mut texts);
    texts
        .into_iter()
        .filter(|t| t != "maxmemory-policy")
        .find(|t| t.starts_with("allkeys-") || t.starts_with("volatile-"))
}

fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::BulkString(bytes) => out.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => out.push(text.clone()),
        Value::Array(items) | Value::Set(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            strings(k, out);
            strings(v, out);
        }),
        _ => {}
    }
}

/// `FCALL name numkeys keys...`, sized for `args` more arguments of about
/// `data` bytes in all, so that adding them does not grow the buffers.
fn fcall(name: &str, keys: &[&str], args: usize, data: usize) -> Cmd {
    let keys_len: usize = keys.iter().map(|k| k.len()).sum();
    let mut cmd = Cmd::with_capacity(3 + keys.len() + args, 5 + name.len() + 1 + keys_len + data);
    cmd.arg("FCALL").arg(name).arg(keys.len()).arg(keys);
    cmd
}

/// Room for a decimal u64 argument.
const NUM: usize = 20;

/// The number and total size of the arguments [`RedisBackend::write`] adds.
fn write_size(w: &Write<'_>) -> (usize, usize) {
    (9, 6 * NUM + w.blob.len() + w.kind.len() + w.nonce.len())
}

impl Backend for RedisBackend {
    async fn load(&self, key: &str, now: Millis, touch: u64) -> Result<Option<Raw>, StoreError> {
        let mut cmd = fcall(&self.library.load, &[key], 2, 2 * NUM);
        cmd.arg(now).arg(touch);
        let (Loaded(raw), tracked) = self.fcall_near(key, cmd).await?;
        Ok(raw.map(|raw| Raw { tracked, ..raw }))
    }

    async fn save(&self, w: Write<'_>) -> Result<RawSave, StoreError> {
        let (args, data) = write_size(&w);
        let cmd = match w.index {
            Some(index) => fcall(&self.library.save, &[w.key, index], args, data),
            None => fcall(&self.library.save, &[w.key], args, data),
        };
        self.write_via(cmd, &w, true).await
    }

    async fn rotate(&self, old: &str, w: Write<'_>) -> Result<RawSave, StoreError> {
        let (args, data) = write_size(&w);
        let cmd = match w.index {
            Some(index) => fcall(&self.library.rotate, &[old, w.key, index], args, data),
            None => fcall(&self.library.rotate, &[old, w.key], args, data),
        };
        self.write(cmd, &w).await
    }

    async fn delete(
        &self,
        key: &str,
        owner: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut cmd = fcall(
            &self.library.delete,
            &[key],
            2,
            NUM + owner.map_or(0, str::len),
        );
        cmd.arg(owner.unwrap_or("")).arg(now);
        let deleted: u64 = self.fcall(cmd).await?;
        Ok(deleted > 0)
    }

    async fn retire(&self, key: &str, expected: u64, now: Millis) -> Result<RawRetire, StoreError> {
        let mut cmd = fcall(&self.library.retire, &[key], 2, 2 * NUM);
        cmd.arg(expected).arg(now);
        self.fcall(cmd).await
    }

    async fn list(
        &self,
        index: &str,
        now: Millis,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Raw)>, StoreError> {
        let mut cmd = fcall(&self.library.list, &[index], 3, 3 * NUM);
        cmd.arg(now).arg(kind.unwrap_or("")).arg(limit);
        let rows: Vec<Listed> = self.fcall(cmd).await?;
        Ok(rows
            .into_iter()
            .map(|Listed(key, raw)| (key, raw))
            .collect())
    }

    async fn revoke_all(
        &self,
        index: &str,
        now: Millis,
        kind: Option<&str>,
        keep: Option<&str>,
    ) -> Result<u64, StoreError> {
        let mut cmd = fcall(
            &self.library.revoke,
            &[index],
            3,
            2 * NUM + keep.map_or(0, str::len),
        );
        cmd.arg(now).arg(kind.unwrap_or("")).arg(keep.unwrap_or(""));
        self.fcall(cmd).await
    }

    async fn barrier(&self, key: &str) {
        if let Some(tracking) = &self.tracking {
            // A call like any other: within the bound on calls in flight
            // (without a place, nothing can be shown: empty the cache).
            match self.conns.place().await {
                Ok(_place) => tracking.barrier(key).await,
                Err(_) => tracking.near().clear(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Transient, evicting_policy, is_missing_function, transient};
    use deadpool_redis::redis::{RedisError, Value, parse_redis_value};

    #[test]
    fn evicting_policies_are_every_allkeys_and_volatile_one() {
        let reply = |policy: &str| {
            Value::Array(vec![
                Value::BulkString(b"maxmemory-policy".to_vec()),
                Value::BulkString(policy.as_bytes().to_vec()),
            ])
        };
        for policy in [
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            assert_eq!(evicting_policy(&reply(policy)).as_deref(), Some(policy));
        }
        assert_eq!(evicting_policy(&reply("noeviction")), None);
        let map = Value::Map(vec![(
            Value::BulkString(b"maxmemory-policy".to_vec()),
            Value::BulkString(b"volatile-ttl".to_vec()),
        )]);
        assert_eq!(evicting_policy(&map).as_deref(), Some("volatile-ttl"));
        assert_eq!(evicting_policy(&Value::Array(vec![])), None);
    }

    /// An error reply line as Redis sends it, parsed as redis-rs parses it.
    fn error(line: &str) -> RedisError {
        let value = parse_redis_value(format!("-{line}\r\n").as_bytes()).unwrap();
        value.extract_error().unwrap_err()
    }

    #[test]
    fn transient_states_are_told_by_their_code() {
        use Transient::*;
        let cases = [
            (
                "OOM command not allowed when used memory > 'maxmemory'.",
                Some(OutOfMemory),
            ),
            (
                "OOM command not allowed when used memory > 'maxmemory'. script: trs_x_save, on @user_function:9.",
                Some(OutOfMemory),
            ),
            (
                "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
                Some(Busy),
            ),
            (
                "LOADING Redis is loading the dataset in memory",
                Some(Loading),
            ),
            (
                "READONLY You can't write against a read only replica.",
                Some(NotWritable),
            ),
            (
                "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
                Some(NotWritable),
            ),
            (
                "NOREPLICAS Not enough good replicas to write.",
                Some(NotWritable),
            ),
            ("CLUSTERDOWN The cluster is down", Some(Cluster)),
            ("CLUSTERDOWN Hash slot not served", Some(Cluster)),
            (
                "TRYAGAIN Multiple keys request during rehashing of slot",
                Some(Cluster),
            ),
            (
                "MIGRATING slot 15891 is being migrated; nothing was written script: trs_x_list, on @user_function:70.",
                Some(Cluster),
            ),
            ("MOVED 3999 127.0.0.1:6381", Some(Cluster)),
            ("ASK 3999 127.0.0.1:6381", Some(Cluster)),
            (
                "ERR Script attempted to access a non local key in a cluster node script: trs_x_delete, on @user_function:157.",
                Some(Cluster),
            ),
            (
                "ERR Script attempted to execute a command while the cluster is down script: trs_x_load, on @user_function:3.",
                Some(Cluster),
            ),
            // Faults of the call or of the deployment: a 500.
            ("ERR Function not found", None),
            ("ERR wrong number of arguments for 'fcall' command", None),
            (
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                None,
            ),
            (
                "NOPERM User app has no permissions to run the 'fcall' command",
                None,
            ),
            (
                "CROSSSLOT Keys in request don't hash to the same slot",
                None,
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(transient(&error(line)), expected, "{line}");
        }
        assert!(is_missing_function(&error("ERR Function not found")));
    }
}
