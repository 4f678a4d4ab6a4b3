//! What every store does the same way: naming keys, sealing and opening
//! records, checking them, counting what happened. A [`Backend`] only moves
//! sealed blobs, with the semantics of the function library in `lua/`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::envelope::{Codec, Meta};
use crate::record::{Millis, Record, millis};
use crate::store::keys::KeySpace;
use crate::store::near_cache::{Near, NearCacheStats};
use crate::store::observe::{Calls, observe, rejected_blob};
use crate::store::{
    Clock, RetireOutcome, SaveLocks, SaveOutcome, SaveTurn, SessionStore, StoreConfig, StoreError,
    StoreFuture,
};
use crate::token::{SessionId, Tag, Token};

/// A stored session as a backend returns it: sealed, with its bookkeeping.
pub(crate) struct Raw {
    pub(crate) version: u64,
    pub(crate) blob: Vec<u8>,
    pub(crate) last_seen: Millis,
    /// The load that returned it wrote the key (moved the idle deadline).
    pub(crate) wrote: bool,
    /// It came over the near cache's invalidation connection, which now
    /// tracks the key: only such a reply may be cached.
    pub(crate) tracked: bool,
}

pub(crate) enum RawSave {
    /// Written: the new version, the other sessions the save ended (a
    /// user's oldest, over the cap) as keys, and whether the reply came over
    /// the near cache's invalidation connection (see [`Raw::tracked`]).
    Saved(u64, Vec<String>, bool),
    Conflict(Raw),
    Gone,
    /// A rotation's new key already exists.
    Taken,
}

/// What a compare-and-delete did, as a backend returns it.
pub(crate) enum RawRetire {
    Deleted,
    Conflict(Raw),
    Gone,
}

/// A record sealed for its key, ready to be written.
struct Sealed {
    key: String,
    index: Option<String>,
    blob: Vec<u8>,
    nonce: String,
    now: Millis,
    cap: u64,
}

impl Sealed {
    fn write<'a>(&'a self, record: &'a Record) -> Write<'a> {
        Write {
            key: &self.key,
            index: self.index.as_deref(),
            expected: record.version,
            blob: &self.blob,
            now: self.now,
            idle: record.idle_timeout.map(millis).unwrap_or(0),
            absolute: record.absolute_deadline.unwrap_or(0),
            kind: &record.kind,
            nonce: &self.nonce,
            cap: self.cap,
        }
    }
}

/// The arguments of one compare-and-set save.
pub(crate) struct Write<'a> {
    pub(crate) key: &'a str,
    pub(crate) index: Option<&'a str>,
    pub(crate) expected: u64,
    pub(crate) blob: &'a [u8],
    pub(crate) now: Millis,
    /// Idle timeout in ms, 0 for none.
    pub(crate) idle: u64,
    /// Absolute deadline in ms, 0 for none.
    pub(crate) absolute: Millis,
    pub(crate) kind: &'a str,
    /// Unique per save: a save retried after a lost reply recognises its own
    /// earlier write instead of reporting a conflict with itself.
    pub(crate) nonce: &'a str,
    /// The most live sessions a user index keeps: adding one beyond ends
    /// the oldest others (`StoreConfig::max_sessions_per_user`).
    pub(crate) cap: u64,
}

/// Blob-level storage with the semantics of `lua/sessions.lua`.
pub(crate) trait Backend: Send + Sync + 'static {
    fn load(
        &self,
        key: &str,
        now: Millis,
        touch: u64,
    ) -> impl Future<Output = Result<Option<Raw>, StoreError>> + Send;

    fn save(&self, write: Write<'_>) -> impl Future<Output = Result<RawSave, StoreError>> + Send;

    /// Compare-and-move: writes `write` under its key if `old` still has
    /// the expected version, and deletes `old`, atomically.
    fn rotate(
        &self,
        old: &str,
        write: Write<'_>,
    ) -> impl Future<Output = Result<RawSave, StoreError>> + Send;

    /// Deletes `key`; with `owner`, only if that index owns it.
    /// `true` only if a live session (by `now`) was deleted.
    fn delete(
        &self,
        key: &str,
        owner: Option<&str>,
        now: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Compare-and-delete: deletes `key` (and its index entry) only if its
    /// live version is `expected`.
    fn retire(
        &self,
        key: &str,
        expected: u64,
        now: Millis,
    ) -> impl Future<Output = Result<RawRetire, StoreError>> + Send;

    fn list(
        &self,
        index: &str,
        now: Millis,
        kind: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(String, Raw)>, StoreError>> + Send;

    fn revoke_all(
        &self,
        index: &str,
        now: Millis,
        kind: Option<&str>,
        keep: Option<&str>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Returns once every invalidation of a change made before the call
    /// reached the near cache (or the cache was emptied), for keys in the
    /// hash slot of `key`. Without a cache, at once.
    fn barrier(&self, key: &str) -> impl Future<Output = ()> + Send {
        let _ = key;
        std::future::ready(())
    }
}

/// Counters of what a store refused or resolved. Cheap to read at any time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Saves that met another writer's newer version.
    pub conflicts: u64,
    /// Saves refused because the session had been deleted, revoked or had
    /// expired: each one a session that was not brought back.
    pub revivals_blocked: u64,
    /// Stored blobs that failed verification (tampered, truncated, moved,
    /// signed by an unknown key, or over the size limit).
    pub rejected_blobs: u64,
    /// Store operations, whatever their outcome.
    pub operations: u64,
    /// Operations that failed because the store was unreachable, slow,
    /// saturated or in a transient state (each one a 503).
    pub unavailable: u64,
}

#[derive(Default)]
struct Counters {
    conflicts: AtomicU64,
    revivals_blocked: AtomicU64,
    rejected_blobs: AtomicU64,
}

pub(crate) struct Core<B> {
    pub(crate) backend: B,
    codec: Codec,
    keys: KeySpace,
    touch: u64,
    max_listed: usize,
    max_sessions_per_user: u64,
    clock: Clock,
    counters: Counters,
    nonce_base: u64,
    nonce_next: AtomicU64,
    /// Saves of one session by requests of this process take turns.
    locks: SaveLocks,
    calls: Calls,
    /// The near cache, when on.
    near: Option<Arc<Near>>,
}

impl<B: Backend> Core<B> {
    pub(crate) fn new(backend: B, config: StoreConfig) -> Core<B> {
        Core {
            backend,
            codec: Codec::new(config.keyring, config.max_sealed_size),
            keys: KeySpace::new(config.prefix),
            touch: millis(config.touch_interval),
            max_listed: config.max_listed,
            max_sessions_per_user: config.max_sessions_per_user as u64,
            clock: config.clock,
            counters: Counters::default(),
            nonce_base: getrandom::u64().unwrap_or_default(),
            nonce_next: AtomicU64::new(0),
            locks: SaveLocks::default(),
            calls: Calls::default(),
            near: None,
        }
    }

    /// The same store with a near cache in front of its loads.
    pub(crate) fn with_near(mut self, near: Option<Arc<Near>>) -> Core<B> {
        self.near = near;
        self
    }

    /// The near cache's counters, if it is on.
    pub(crate) fn near_stats(&self) -> Option<NearCacheStats> {
        self.near.as_ref().map(|near| near.stats())
    }

    /// Until when (application clock) a cached `record` may be served: while
    /// a load would not extend its idle deadline (the rule of the library's
    /// `load`), and before its deadline.
    fn serve_until(&self, record: &Record) -> Millis {
        let mut until = record.deadline().unwrap_or(Millis::MAX);
        if let Some(idle) = record.idle_timeout {
            let every = self.touch.min(millis(idle) / 2);
            until = until.min(record.last_seen.saturating_add(every));
        }
        until
    }

    fn evict(&self, key: &str) {
        if let Some(near) = &self.near {
            near.evict(key);
        }
    }

    pub(crate) fn now(&self) -> Millis {
        (self.clock)()
    }

    pub(crate) fn stats(&self) -> StoreStats {
        StoreStats {
            conflicts: self.counters.conflicts.load(Ordering::Relaxed),
            revivals_blocked: self.counters.revivals_blocked.load(Ordering::Relaxed),
            rejected_blobs: self.counters.rejected_blobs.load(Ordering::Relaxed),
            operations: self.calls.operations.load(Ordering::Relaxed),
            unavailable: self.calls.unavailable.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn session_key(&self, token: &Token) -> String {
        self.keys.session(token.tag(), &token.id())
    }

    fn user_index(&self, user: &str) -> (Tag, String) {
        let (tag, hash) = self.codec.keyring().user_route(user);
        (tag, self.keys.user_index(tag, &hash))
    }

    pub(crate) fn new_token(&self, user: Option<&str>) -> Result<Token, StoreError> {
        Ok(Token::new_for(self.codec.keyring(), user)?)
    }

    /// Opens a stored blob; `None` (with a warning that names neither token
    /// nor key) when it does not verify or has expired.
    fn open(&self, key: &str, id: SessionId, raw: &Raw, now: Millis) -> Option<Record> {
        let meta = Meta {
            binding: key,
            id,
            version: raw.version,
            last_seen: raw.last_seen,
        };
        match self.codec.open(&raw.blob, meta) {
            Ok(record) if record.is_expired(now) => None,
            Ok(record) => Some(record),
            Err(error) => {
                self.counters.rejected_blobs.fetch_add(1, Ordering::Relaxed);
                rejected_blob();
                tracing::warn!(%error, "stored session rejected; treating it as no session");
                None
            }
        }
    }

    pub(crate) async fn load(&self, token: &Token) -> Result<Option<Record>, StoreError> {
        // The id is a SHA-256 of the token's secret: hash it once per call.
        let id = token.id();
        let key = self.keys.session(token.tag(), &id);
        let now = self.now();
        let Some(near) = &self.near else {
            let raw = self.backend.load(&key, now, self.touch).await?;
            return Ok(raw.and_then(|raw| self.open(&key, id, &raw, now)));
        };
        if let Some(record) = near.get(&key, now) {
            return Ok(Some(record));
        }
        let mark = near.begin(&key);
        let raw = match self.backend.load(&key, now, self.touch).await {
            Ok(raw) => raw,
            Err(e) => {
                near.evict(&key);
                return Err(e);
            }
        };
        // A load that moved the idle deadline wrote the key.
        let wrote = raw.as_ref().is_some_and(|raw| raw.wrote);
        let tracked = raw.as_ref().is_some_and(|raw| raw.tracked);
        let record = raw.and_then(|raw| self.open(&key, id, &raw, now));
        if let Some(mark) = mark {
            let until = record.as_ref().map_or(0, |r| self.serve_until(r));
            let cached = record.clone().filter(|_| tracked);
            near.finish(&key, mark, cached, until, wrote);
        }
        Ok(record)
    }

    pub(crate) async fn save(
        &self,
        token: &Token,
        record: &Record,
    ) -> Result<SaveOutcome, StoreError> {
        let sealed = self.seal(token, record)?;
        let Some(near) = &self.near else {
            let raw = self.backend.save(sealed.write(record)).await?;
            return self.outcome(raw, token, sealed.now);
        };
        let mark = near.begin(&sealed.key);
        let raw = match self.backend.save(sealed.write(record)).await {
            Ok(raw) => raw,
            Err(e) => {
                near.evict(&sealed.key);
                return Err(e);
            }
        };
        let saved = match &raw {
            RawSave::Saved(version, ended, tracked) => {
                for key in ended {
                    near.evict(key);
                }
                // Only a reply over the tracking connection is cached.
                tracked.then(|| {
                    let mut saved = record.clone();
                    saved.version = *version;
                    saved.last_seen = sealed.now;
                    saved
                })
            }
            _ => None,
        };
        match mark {
            Some(mark) => {
                let until = saved.as_ref().map_or(0, |r| self.serve_until(r));
                near.finish(&sealed.key, mark, saved, until, true);
            }
            None => near.evict(&sealed.key),
        }
        self.outcome(raw, token, sealed.now)
    }

    pub(crate) async fn rotate(
        &self,
        from: &Token,
        to: &Token,
        record: &Record,
    ) -> Result<SaveOutcome, StoreError> {
        if from.tag() != to.tag() {
            return Err(StoreError::Invalid(
                "a session rotates only to a token of the same tag",
            ));
        }
        let sealed = self.seal(to, record)?;
        let old = self.session_key(from);
        self.evict(&old);
        self.evict(&sealed.key);
        let raw = self.backend.rotate(&old, sealed.write(record)).await;
        self.evict(&old);
        self.evict(&sealed.key);
        if let Ok(RawSave::Saved(_, ended, _)) = &raw {
            ended.iter().for_each(|key| self.evict(key));
        }
        self.outcome(raw?, from, sealed.now)
    }

    /// Checks `record` against `token` and seals it for the token's key.
    fn seal(&self, token: &Token, record: &Record) -> Result<Sealed, StoreError> {
        let id = token.id();
        if record.id != id {
            return Err(StoreError::Invalid("the record's id is not the token's"));
        }
        let index = match &record.user {
            Some(user) => {
                let (tag, index) = self.user_index(user);
                if tag != token.tag() {
                    return Err(StoreError::Invalid(
                        "a user's session needs a token made for that user",
                    ));
                }
                Some(index)
            }
            None => None,
        };
        let key = self.keys.session(token.tag(), &id);
        let blob = self
            .codec
            .seal(&key, record)
            .ok_or(StoreError::Invalid("the session data does not encode"))?;
        if blob.len() > self.codec.max_sealed() {
            return Err(StoreError::TooLarge {
                size: blob.len(),
                max: self.codec.max_sealed(),
            });
        }
        let nonce = nonce(
            self.nonce_base,
            self.nonce_next.fetch_add(1, Ordering::Relaxed),
        );
        Ok(Sealed {
            key,
            index,
            blob,
            nonce,
            now: self.now(),
            cap: self.max_sessions_per_user,
        })
    }

    /// What a save or rotation did; a conflict's record is opened as the
    /// record of `token`, the session written to.
    fn outcome(&self, raw: RawSave, token: &Token, now: Millis) -> Result<SaveOutcome, StoreError> {
        Ok(match raw {
            RawSave::Saved(version, _, _) => SaveOutcome::Saved { version },
            RawSave::Conflict(raw) => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                let id = token.id();
                let key = self.keys.session(token.tag(), &id);
                match self.open(&key, id, &raw, now) {
                    Some(current) => SaveOutcome::Conflict(current),
                    // What is stored does not verify: as good as no session.
                    None => SaveOutcome::Gone,
                }
            }
            RawSave::Gone => {
                self.counters
                    .revivals_blocked
                    .fetch_add(1, Ordering::Relaxed);
                SaveOutcome::Gone
            }
            RawSave::Taken => {
                return Err(StoreError::Invalid("the new token is already in use"));
            }
        })
    }

    pub(crate) async fn delete(&self, token: &Token) -> Result<bool, StoreError> {
        let key = self.session_key(token);
        self.evict(&key);
        let deleted = self.backend.delete(&key, None, self.now()).await;
        self.evict(&key);
        deleted
    }

    pub(crate) async fn retire(
        &self,
        token: &Token,
        version: u64,
    ) -> Result<RetireOutcome, StoreError> {
        let id = token.id();
        let key = self.keys.session(token.tag(), &id);
        let now = self.now();
        self.evict(&key);
        let retired = self.backend.retire(&key, version, now).await;
        self.evict(&key);
        Ok(match retired? {
            RawRetire::Deleted => RetireOutcome::Deleted,
            RawRetire::Conflict(raw) => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                match self.open(&key, id, &raw, now) {
                    Some(current) => RetireOutcome::Conflict(current),
                    // What is stored does not verify: as good as no session.
                    None => RetireOutcome::Gone,
                }
            }
            RawRetire::Gone => RetireOutcome::Gone,
        })
    }

    pub(crate) async fn list(
        &self,
        user: &str,
        kind: Option<&str>,
    ) -> Result<Vec<Record>, StoreError> {
        let (_, index) = self.user_index(user);
        let now = self.now();
        let raws = self
            .backend
            .list(&index, now, kind, self.max_listed)
            .await?;
        Ok(raws
            .into_iter()
            .filter_map(|(key, raw)| {
                let id = self.keys.id_of(&key)?;
                self.open(&key, id, &raw, now)
            })
            // The index is the user's, but trust only what the seal says.
            .filter(|record| record.user.as_deref() == Some(user))
            .collect())
    }

    pub(crate) async fn revoke(&self, user: &str, id: &SessionId) -> Result<bool, StoreError> {
        let (tag, index) = self.user_index(user);
        let key = self.keys.session(tag, id);
        self.evict(&key);
        let revoked = self.backend.delete(&key, Some(&index), self.now()).await;
        self.evict(&key);
        revoked
    }

    pub(crate) async fn revoke_all(
        &self,
        user: &str,
        kind: Option<&str>,
        keep: Option<&Token>,
    ) -> Result<u64, StoreError> {
        let (_, index) = self.user_index(user);
        let keep = keep.map(|token| self.session_key(token));
        let revoked = self
            .backend
            .revoke_all(&index, self.now(), kind, keep.as_deref())
            .await;
        if self.near.is_some() {
            // The keys it deleted are known to Redis only: wait for their
            // invalidations, so that this process serves none of them after.
            self.backend.barrier(&index).await;
        }
        revoked
    }
}

/// A save's nonce: the store's random base and a counter, 32 hex digits
/// (what `format!("{base:016x}{count:016x}")` gives, without its machinery).
fn nonce(base: u64, count: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (u128::from(base) << 64) | u128::from(count);
    (0..32)
        .rev()
        .map(|i| char::from(HEX[((digits >> (4 * i)) & 0xf) as usize]))
        .collect()
}

/// A store made of a [`Core`] over a backend: [`RedisStore`](crate::RedisStore)
/// and [`MemoryStore`](crate::MemoryStore). Each gets [`SessionStore`] from
/// the blanket implementation below, so the two cannot drift apart.
pub(crate) trait HasCore: Send + Sync + 'static {
    type Backend: Backend;
    fn core(&self) -> &Core<Self::Backend>;
}

impl<T: HasCore> SessionStore for T {
    fn new_token(&self, user: Option<&str>) -> Result<Token, StoreError> {
        self.core().new_token(user)
    }
    fn save_turn<'a>(
        &'a self,
        id: SessionId,
    ) -> Pin<Box<dyn Future<Output = SaveTurn<'a>> + Send + 'a>> {
        Box::pin(self.core().locks.turn(id))
    }
    fn now(&self) -> Millis {
        self.core().now()
    }
    fn stats(&self) -> StoreStats {
        self.core().stats()
    }
    fn load<'a>(&'a self, token: &'a Token) -> StoreFuture<'a, Option<Record>> {
        Box::pin(observe(&self.core().calls, "load", self.core().load(token)))
    }
    fn save<'a>(&'a self, token: &'a Token, record: &'a Record) -> StoreFuture<'a, SaveOutcome> {
        Box::pin(observe(
            &self.core().calls,
            "save",
            self.core().save(token, record),
        ))
    }
    fn rotate<'a>(
        &'a self,
        from: &'a Token,
        to: &'a Token,
        record: &'a Record,
    ) -> StoreFuture<'a, SaveOutcome> {
        Box::pin(observe(
            &self.core().calls,
            "rotate",
            self.core().rotate(from, to, record),
        ))
    }
    fn delete<'a>(&'a self, token: &'a Token) -> StoreFuture<'a, bool> {
        Box::pin(observe(
            &self.core().calls,
            "delete",
            self.core().delete(token),
        ))
    }
    fn retire<'a>(&'a self, token: &'a Token, version: u64) -> StoreFuture<'a, RetireOutcome> {
        Box::pin(observe(
            &self.core().calls,
            "retire",
            self.core().retire(token, version),
        ))
    }
    fn list<'a>(&'a self, user: &'a str, kind: Option<&'a str>) -> StoreFuture<'a, Vec<Record>> {
        Box::pin(observe(
            &self.core().calls,
            "list",
            self.core().list(user, kind),
        ))
    }
    fn revoke<'a>(&'a self, user: &'a str, id: &'a SessionId) -> StoreFuture<'a, bool> {
        Box::pin(observe(
            &self.core().calls,
            "revoke",
            self.core().revoke(user, id),
        ))
    }
    fn revoke_all<'a>(
        &'a self,
        user: &'a str,
        kind: Option<&'a str>,
        keep: Option<&'a Token>,
    ) -> StoreFuture<'a, u64> {
        Box::pin(observe(
            &self.core().calls,
            "revoke_all",
            self.core().revoke_all(user, kind, keep),
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nonces_are_fixed_width_hex() {
        assert_eq!(super::nonce(0, 0), "0".repeat(32));
        let n = super::nonce(0x0123_4567_89ab_cdef, 0xfe);
        assert_eq!(
            n,
            format!("{:016x}{:016x}", 0x0123_4567_89ab_cdef_u64, 0xfe)
        );
        assert_eq!(n.len(), n.capacity());
        assert_ne!(super::nonce(1, 2), super::nonce(2, 1));
    }
}
