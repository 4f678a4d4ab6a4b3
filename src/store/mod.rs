//! Where sessions are kept: the [`SessionStore`] trait, its outcomes and
//! errors, and the configuration every store shares.
//!
//! Two stores implement it with the same semantics: [`RedisStore`] (one Redis
//! or a Redis Cluster) and [`MemoryStore`] (in process). Both keep sessions
//! sealed with HMAC-SHA256 (see [`Keyring`]) under a key derived from the
//! token, and both lock optimistically:
//!
//! - a save carries the lock version its record was loaded with
//!   ([`Record::version`]); version 0 creates the session only if it does not
//!   exist;
//! - if the stored version differs, the save writes nothing and returns
//!   [`SaveOutcome::Conflict`] with the current record, so the caller can
//!   merge without another read;
//! - if the session no longer exists (deleted, revoked, expired), a save
//!   with version > 0 writes nothing and returns [`SaveOutcome::Gone`]: a
//!   deleted session is never brought back.
//!
//! # Time
//!
//! Deadlines are decided on the application's clock ([`StoreConfig::clock`],
//! the system clock by default). The sealed record carries them, so they
//! have to be known before the single call that stores it. Redis receives
//! absolute expiry times (`PEXPIREAT`) and drops keys by itself; each store
//! function also refuses a session whose deadline has passed by the
//! application's clock, so a Redis clock running late never keeps a session
//! alive. Skew between application servers shifts deadlines by that skew
//! (milliseconds under NTP).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::keyring::Keyring;
use crate::token::RandomError;

#[cfg(feature = "tls-rustls")]
mod cluster_tls;
pub(crate) mod core;
pub(crate) mod keys;
mod library;
mod memory;
pub mod near_cache;
mod observe;
mod pool;
mod redis;
mod reply;
mod sentinel;
mod tls;
mod tracking;
mod turns;

pub use self::core::StoreStats;
pub use self::memory::MemoryStore;
pub use self::near_cache::{NearCache, NearCacheStats};
pub use self::redis::preload::{LibraryMode, library_name, library_source};
pub use self::redis::{RedisStore, RedisStoreBuilder};
pub use self::tls::TlsConfig;
pub(crate) use self::turns::SaveLocks;
pub use self::turns::SaveTurn;
pub use crate::record::{Data, Millis, Record};
pub use crate::token::{SessionId, TOKEN_LEN, Token, TokenError};

/// The future every [`SessionStore`] method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A place to keep sessions. See the [module docs](self) for the semantics
/// every implementation keeps.
///
/// Each method is one round trip to the backing store.
pub trait SessionStore: Send + Sync + 'static {
    /// A fresh token. For a user it carries the user's routing tag, so that
    /// the session lands in the same hash slot as the user's other sessions
    /// ([`Token::new_for`] makes one from the store's keyring).
    fn new_token(&self, user: Option<&str>) -> Result<Token, StoreError>;

    /// Waits for this process's turn to save the session `id`, and holds it
    /// until the returned guard drops.
    ///
    /// Concurrent requests of one session in one process would otherwise all
    /// send their saves at once, and all but one would conflict, again and
    /// again; taking turns, a save meets at most one conflict from its own
    /// process. The turns belong to the store, so layers sharing a store
    /// share them. The default takes no turn (every save goes at once):
    /// correct, only more conflicts; a store that wraps another should
    /// delegate.
    fn save_turn<'a>(
        &'a self,
        id: SessionId,
    ) -> Pin<Box<dyn Future<Output = SaveTurn<'a>> + Send + 'a>> {
        let _ = id;
        Box::pin(std::future::ready(SaveTurn::none()))
    }

    /// Counters of what the store did and refused, for metrics (see the
    /// `session_store` spans and the `metrics` feature for per-operation
    /// detail). The default reports nothing.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// The store's clock, in milliseconds since the Unix epoch.
    fn now(&self) -> Millis;

    /// Loads the session `token` opens, extending its idle deadline in the
    /// same call when due. `None` if there is none, it has expired, or its
    /// stored form does not verify.
    fn load<'a>(&'a self, token: &'a Token) -> StoreFuture<'a, Option<Record>>;

    /// Saves `record` under `token` if the stored lock version still equals
    /// `record.version` (see the [module docs](self)).
    fn save<'a>(&'a self, token: &'a Token, record: &'a Record) -> StoreFuture<'a, SaveOutcome>;

    /// Moves the session `from` opens to the new token `to` (from
    /// [`Token::renew`]), saving `record` there, in one atomic step: the
    /// compare-and-set of [`save`](SessionStore::save) on `from`'s version
    /// (`record.version`), then `from` stops working as `to` starts. A
    /// conflict returns `from`'s current record; `Gone` means `from` no
    /// longer exists. `record.id` must be `to.id()`.
    fn rotate<'a>(
        &'a self,
        from: &'a Token,
        to: &'a Token,
        record: &'a Record,
    ) -> StoreFuture<'a, SaveOutcome>;

    /// Deletes the session `token` opens. `true` if there was one.
    fn delete<'a>(&'a self, token: &'a Token) -> StoreFuture<'a, bool>;

    /// Deletes the session `token` opens only if its lock version is still `version`
    /// (compare-and-delete), for a session replaced by another (login).
    ///
    /// [`RetireOutcome::Conflict`] carries the current record when another
    /// writer saved since `version` (nothing is deleted);
    /// [`RetireOutcome::Gone`] means there was no live session to delete.
    fn retire<'a>(&'a self, token: &'a Token, version: u64) -> StoreFuture<'a, RetireOutcome>;

    /// The live sessions of `user`, of one kind or of all, in the order they
    /// expire (at most [`StoreConfig::max_listed`]).
    fn list<'a>(&'a self, user: &'a str, kind: Option<&'a str>) -> StoreFuture<'a, Vec<Record>>;

    /// Deletes one session of `user` by id, if it is theirs. `true` if it
    /// was.
    fn revoke<'a>(&'a self, user: &'a str, id: &'a SessionId) -> StoreFuture<'a, bool>;

    /// Deletes the sessions of `user` (of one kind, or all), except the one
    /// `keep` opens. Returns how many live sessions were deleted.
    fn revoke_all<'a>(
        &'a self,
        user: &'a str,
        kind: Option<&'a str>,
        keep: Option<&'a Token>,
    ) -> StoreFuture<'a, u64>;
}

/// What a save did.
#[derive(Clone, Debug, PartialEq)]
pub enum SaveOutcome {
    /// Written; the record's new lock version.
    Saved {
        /// The lock version to send with the next save.
        version: u64,
    },
    /// Another writer saved first: nothing was written. The current record
    /// (with its lock version) to merge into and save again.
    Conflict(Record),
    /// The session no longer exists (deleted, revoked or expired): nothing
    /// was written, and it stays gone.
    Gone,
}

/// What a compare-and-delete ([`SessionStore::retire`]) did.
// The record travels once per call, straight to the caller that merges it:
// boxing it would add an allocation to every conflict for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum RetireOutcome {
    /// The session had the expected lock version: it is deleted (and left
    /// its user's index), as by [`SessionStore::delete`].
    Deleted,
    /// Another writer saved since: nothing was deleted. The current record
    /// (with its lock version), to decide again from.
    Conflict(Record),
    /// There was no live session (deleted, revoked, expired, or its stored
    /// form does not verify): nothing to delete.
    Gone,
}

/// A store operation that failed. Sessions that do not exist or do not
/// verify are not errors: they load as `None`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Redis could not be reached or the connection broke.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// No connection became free within the wait timeout.
    #[error("no session store connection free within {0:?}")]
    PoolTimeout(Duration),
    /// Redis did not answer within the command timeout.
    #[error("session store did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend answered with an error, or with a reply of an unexpected
    /// shape (for [`RedisStore`], the source is a `redis::RedisError`).
    #[error("session store error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The sealed record would exceed [`StoreConfig::max_sealed_size`];
    /// nothing was written.
    #[error("sealed session is {size} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// Size of the sealed record.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The record cannot be stored as asked (for instance, a user's session
    /// under a token that does not carry the user's tag).
    #[error("invalid session record: {0}")]
    Invalid(&'static str),
    /// The operating system's random number generator failed.
    #[error("could not generate a session token: {0}")]
    Random(#[from] RandomError),
    /// The connection settings are unusable (for instance, a malformed URL).
    #[error("invalid session store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether the store is unreachable, slow or saturated (a 503), rather
    /// than failing the request for another reason (a 500).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::PoolTimeout(_) | StoreError::Timeout(_)
        )
    }
}

/// A clock returning milliseconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> Millis + Send + Sync>;

/// Configuration every store shares: keys, key prefix, expiry bookkeeping
/// and limits.
///
/// ```
/// use std::time::Duration;
/// use tower_redis_sessions::{Keyring, StoreConfig};
///
/// let config = StoreConfig::new(Keyring::new([42u8; 32])?)
///     .prefix("myapp:")
///     .touch_interval(Duration::from_secs(30));
/// # Ok::<(), tower_redis_sessions::KeyError>(())
/// ```
#[derive(Clone)]
pub struct StoreConfig {
    pub(crate) keyring: Keyring,
    pub(crate) prefix: String,
    pub(crate) touch_interval: Duration,
    pub(crate) max_sealed_size: usize,
    pub(crate) max_listed: usize,
    pub(crate) max_sessions_per_user: usize,
    pub(crate) clock: Clock,
}

/// The most sessions per user [`StoreConfig::max_sessions_per_user`]
/// accepts: the library reads at most 1024 index entries per call, so every
/// session of a user stays within reach of listing and revocation.
pub const MAX_SESSIONS_PER_USER: usize = 1000;

impl StoreConfig {
    /// Defaults: prefix `"trs:"`, touch interval 60 s, sealed records up to
    /// 64 KiB, listings of up to 100 sessions, at most 100 sessions per user,
    /// the system clock.
    pub fn new(keyring: Keyring) -> StoreConfig {
        StoreConfig {
            keyring,
            prefix: "trs:".to_owned(),
            touch_interval: Duration::from_secs(60),
            max_sealed_size: 64 * 1024,
            max_listed: 100,
            max_sessions_per_user: 100,
            clock: Arc::new(crate::record::now_millis),
        }
    }

    /// Prefix of every Redis key: deployments sharing one Redis keep apart
    /// by their prefixes.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long after the last extension a load may extend the idle deadline
    /// again: larger values write less, and the idle deadline trails the last
    /// use by up to this much. Whatever it is set to, a session is extended
    /// at least every half idle timeout, so one in use never expires. Zero
    /// extends on every load.
    pub fn touch_interval(mut self, interval: Duration) -> Self {
        self.touch_interval = interval;
        self
    }

    /// The largest sealed record stored or decoded, in bytes. A save over it
    /// fails with [`StoreError::TooLarge`] and writes nothing; a larger blob
    /// found in the store is not decoded (it loads as no session).
    pub fn max_sealed_size(mut self, bytes: usize) -> Self {
        self.max_sealed_size = bytes;
        self
    }

    /// The most sessions [`SessionStore::list`] returns.
    pub fn max_listed(mut self, count: usize) -> Self {
        self.max_listed = count;
        self
    }

    /// The most live sessions a user keeps (default 100, at most
    /// [`MAX_SESSIONS_PER_USER`], at least 1). A save or rotation that adds
    /// a session to a user who already has this many ends the user's oldest
    /// others (those with the earliest deadline) in the same call, so a
    /// user's index, and the work of listing and revoking it, stay bounded
    /// however often a client logs in without logging out.
    pub fn max_sessions_per_user(mut self, count: usize) -> Self {
        self.max_sessions_per_user = count.clamp(1, MAX_SESSIONS_PER_USER);
        self
    }

    /// Replaces the clock (milliseconds since the Unix epoch), for tests.
    pub fn clock(mut self, clock: impl Fn() -> Millis + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("keyring", &self.keyring)
            .field("prefix", &self.prefix)
            .field("touch_interval", &self.touch_interval)
            .field("max_sealed_size", &self.max_sealed_size)
            .field("max_listed", &self.max_listed)
            .field("max_sessions_per_user", &self.max_sessions_per_user)
            .finish_non_exhaustive()
    }
}
