//! The near cache: a bounded, per-process cache of opened sessions in front
//! of [`RedisStore`](crate::RedisStore), kept true by Redis' own
//! invalidations (server-assisted client-side caching, `CLIENT TRACKING`).
//!
//! # What it promises
//!
//! - A read of a cached session makes no Redis call; a read and a write make
//!   one (the save, which still compares lock versions in Redis: a stale
//!   entry can cost a merge, never a lost update).
//! - An entry is served only while sliding expiry needs no touch (until
//!   `last_seen + min(touch interval, idle timeout / 2)`) and before the
//!   session's deadline; then the load goes to Redis as without the cache.
//! - **Bounded staleness**: a session changed or ended through another
//!   process (or expired) is served from this cache for at most
//!   [`max_staleness`](NearCache::max_staleness) after the change, whatever
//!   happens to the network: an entry is served only while a heartbeat sent
//!   on the invalidation connection less than `max_staleness` ago has been
//!   answered, and Redis sends every earlier invalidation on that connection
//!   before the answer. In practice the delay is the invalidation's one-way
//!   trip (well under a millisecond on a LAN).
//! - Changes made through this store (saves, logout, revocation, rotation,
//!   retiring) update or evict the entry before they return, in this
//!   process; [`revoke_all`](crate::store::SessionStore::revoke_all) returns
//!   only after the invalidations of the sessions it ended arrived.
//! - The cache empties when the invalidation connection breaks or
//!   reconnects (a Redis restart, `CLIENT KILL`, a failover behind a proxy),
//!   when Redis flushes its keys, and when the function library is found
//!   missing (`FUNCTION FLUSH`, a restart without persistence).
//!
//! - On a Redis Cluster each master has its own invalidation connection,
//!   and the cache's calls for a key go over the one to the master of its
//!   hash slot; a master that stops serving exactly the slots it served (a
//!   failover, a finished slot migration) or a `MOVED` reply empties the
//!   cache, which then fills again from the new masters.
//!
//! It is on by default for stores made with
//! [`connect`](crate::RedisStoreBuilder::connect) and
//! [`connect_cluster`](crate::RedisStoreBuilder::connect_cluster) (turn it
//! off with [`NearCache::off`]); Sentinel and pool-built stores, and stores
//! with custom TLS certificates, run without it (see
//! [`RedisStoreBuilder::near_cache`](crate::RedisStoreBuilder::near_cache)).
//! Where Redis refuses `CLIENT TRACKING` (an ACL without
//! `+client|tracking`, a managed service that disables it) the store runs
//! without it too, and says so once in the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::record::{Millis, Record};

/// Settings of the near cache (see the [module docs](self) for what it
/// promises), given to
/// [`RedisStoreBuilder::near_cache`](crate::RedisStoreBuilder::near_cache).
/// The default is [`NearCache::new`]: on.
///
/// ```
/// use std::time::Duration;
/// use tower_redis_sessions::store::NearCache;
///
/// let cache = NearCache::new()
///     .capacity(10_000)
///     .max_staleness(Duration::from_millis(300));
/// assert!(cache.is_enabled());
/// assert!(!NearCache::off().is_enabled());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NearCache {
    enabled: bool,
    capacity: usize,
    max_staleness: Duration,
}

impl Default for NearCache {
    /// The same as [`NearCache::new`]: the crate's default.
    fn default() -> Self {
        NearCache::new()
    }
}

impl NearCache {
    /// The most entries a cache holds unless told otherwise.
    pub const DEFAULT_CAPACITY: usize = 10_000;
    /// The staleness bound unless told otherwise.
    pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(300);

    /// A cache that is on: up to [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY)
    /// sessions, stale by at most
    /// [`DEFAULT_MAX_STALENESS`](Self::DEFAULT_MAX_STALENESS).
    ///
    /// ```
    /// use tower_redis_sessions::store::NearCache;
    /// assert_eq!(NearCache::new().get_capacity(), NearCache::DEFAULT_CAPACITY);
    /// ```
    pub fn new() -> NearCache {
        NearCache {
            enabled: true,
            capacity: Self::DEFAULT_CAPACITY,
            max_staleness: Self::DEFAULT_MAX_STALENESS,
        }
    }

    /// No cache: every read is a Redis call.
    ///
    /// ```
    /// use tower_redis_sessions::store::NearCache;
    /// assert!(!NearCache::off().is_enabled());
    /// assert_eq!(NearCache::new(), NearCache::default());
    /// ```
    pub fn off() -> NearCache {
        NearCache {
            enabled: false,
            ..NearCache::new()
        }
    }

    /// The most sessions kept (at least 1); beyond, the least recently used
    /// goes.
    ///
    /// ```
    /// use tower_redis_sessions::store::NearCache;
    /// assert_eq!(NearCache::new().capacity(0).get_capacity(), 1);
    /// ```
    pub fn capacity(mut self, entries: usize) -> Self {
        self.capacity = entries.max(1);
        self
    }

    /// How long after a change made elsewhere this process may still serve
    /// the session as it was, at worst (at least 10 ms). Heartbeats go every
    /// quarter of it on the invalidation connection.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_redis_sessions::store::NearCache;
    /// let cache = NearCache::new().max_staleness(Duration::from_millis(100));
    /// assert_eq!(cache.get_max_staleness(), Duration::from_millis(100));
    /// ```
    pub fn max_staleness(mut self, bound: Duration) -> Self {
        self.max_staleness = bound.max(Duration::from_millis(10));
        self
    }

    /// Whether the cache is on.
    ///
    /// ```
    /// use tower_redis_sessions::store::NearCache;
    /// assert!(NearCache::new().is_enabled());
    /// ```
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The configured capacity.
    ///
    /// ```
    /// use tower_redis_sessions::store::NearCache;
    /// assert_eq!(NearCache::new().capacity(5).get_capacity(), 5);
    /// ```
    pub fn get_capacity(&self) -> usize {
        self.capacity
    }

    /// The configured staleness bound.
    ///
    /// ```
    /// use tower_redis_sessions::store::NearCache;
    /// assert_eq!(NearCache::new().get_max_staleness(), NearCache::DEFAULT_MAX_STALENESS);
    /// ```
    pub fn get_max_staleness(&self) -> Duration {
        self.max_staleness
    }

    /// The interval between heartbeats.
    pub(crate) fn heartbeat(&self) -> Duration {
        (self.max_staleness / 4).max(Duration::from_millis(2))
    }
}

/// Counters of a near cache, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearCacheStats {
    /// Reads served from the cache (no Redis call).
    pub hits: u64,
    /// Reads that went to Redis.
    pub misses: u64,
    /// Entries (or pending reads) removed by an invalidation from Redis.
    pub invalidations: u64,
    /// Times the whole cache was emptied (connection lost or re-made,
    /// keys or library flushed).
    pub flushes: u64,
    /// Heartbeats answered on the invalidation connection.
    pub heartbeats: u64,
}

// Most slots hold a session: boxing it would add an allocation per entry
// for the rare pending marker's sake.
#[allow(clippy::large_enum_variant)]
enum Slot {
    /// A call reading (and maybe writing) this key is on its way, marked
    /// `id`; `seen` invalidations of the key arrived since the mark, besides
    /// the `owed` ones of earlier own writes (see `Fresh::skip`).
    Pending { id: u64, seen: u32, owed: u32 },
    /// A session, served until `until` (application clock). `skip`: the
    /// invalidation of the store's own write that put it here is still to
    /// come (Redis sends it right after the reply), and is not a change.
    Fresh {
        record: Record,
        until: Millis,
        skip: u32,
    },
}

struct Entry {
    slot: Slot,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Least recently used first.
    order: BTreeMap<u64, String>,
    tick: u64,
}

impl Inner {
    fn remove(&mut self, key: &str) -> bool {
        match self.entries.remove(key) {
            Some(entry) => {
                self.order.remove(&entry.tick);
                true
            }
            None => false,
        }
    }

    fn touch(&mut self, key: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(entry) = self.entries.get_mut(key) {
            if let Some(name) = self.order.remove(&entry.tick) {
                self.order.insert(tick, name);
            }
            entry.tick = tick;
        }
    }

    fn put(&mut self, key: &str, slot: Slot, capacity: usize) {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(key) {
            Some(entry) => {
                if let Some(name) = self.order.remove(&entry.tick) {
                    self.order.insert(tick, name);
                }
                entry.tick = tick;
                entry.slot = slot;
            }
            None => {
                self.entries.insert(key.to_owned(), Entry { slot, tick });
                self.order.insert(tick, key.to_owned());
            }
        }
        // Bounded: at most one entry over capacity at any time.
        while self.entries.len() > capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

/// The state one store's cache shares with its invalidation connection.
pub(crate) struct Near {
    config: NearCache,
    inner: Mutex<Inner>,
    /// Whether the invalidation connection is established (tracking on).
    up: AtomicBool,
    /// The invalidation connection's generation: pushes and heartbeats of an
    /// older connection change nothing.
    generation: AtomicU64,
    base: Instant,
    /// 1 + nanoseconds since `base` at which the last answered heartbeat was
    /// sent (0: none on this connection).
    proven: AtomicU64,
    next_id: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
    heartbeats: AtomicU64,
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Near {
    pub(crate) fn new(config: NearCache) -> Near {
        Near {
            config,
            inner: Mutex::new(Inner::default()),
            up: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            base: Instant::now(),
            proven: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
        }
    }

    pub(crate) fn config(&self) -> NearCache {
        self.config
    }

    pub(crate) fn stats(&self) -> NearCacheStats {
        NearCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            heartbeats: self.heartbeats.load(Ordering::Relaxed),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether entries may be served now: the connection is up and a
    /// heartbeat sent less than `max_staleness` ago was answered (so every
    /// invalidation Redis sent before it was applied).
    pub(crate) fn is_proven(&self) -> bool {
        if !self.is_up() {
            return false;
        }
        let proven = self.proven.load(Ordering::Acquire);
        if proven == 0 {
            return false;
        }
        let now = self.nanos(Instant::now());
        let bound = u64::try_from(self.config.max_staleness.as_nanos()).unwrap_or(u64::MAX);
        now.saturating_sub(proven - 1) < bound
    }

    /// The cached session of `key`, if it may be served at `now`.
    pub(crate) fn get(&self, key: &str, now: Millis) -> Option<Record> {
        if !self.is_proven() {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut inner = lock(&self.inner);
        let found = match inner.entries.get(key) {
            Some(Entry {
                slot: Slot::Fresh { record, until, .. },
                ..
            }) => {
                if now < *until {
                    Some(record.clone())
                } else {
                    inner.remove(key);
                    None
                }
            }
            _ => None,
        };
        if found.is_some() {
            inner.touch(key);
            drop(inner);
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            drop(inner);
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Marks a call about to read or write `key`; `None` when nothing may
    /// be cached (the invalidation connection is down).
    pub(crate) fn begin(&self, key: &str) -> Option<u64> {
        if !self.is_up() {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut inner = lock(&self.inner);
        // An earlier own write's invalidation still to come is no change.
        let owed = match inner.entries.get(key) {
            Some(Entry {
                slot: Slot::Fresh { skip, .. },
                ..
            }) => *skip,
            _ => 0,
        };
        inner.put(
            key,
            Slot::Pending { id, seen: 0, owed },
            self.config.capacity,
        );
        Some(id)
    }

    /// What the call marked `id` found, as it came over the invalidation
    /// connection (the only replies worth caching: that connection now
    /// tracks the key); `wrote`: the call wrote the key.
    ///
    /// On that connection Redis sends, in this order: invalidations of
    /// writes before the call, the call's reply, the invalidation of the
    /// call's own write (if it wrote), then those of later writes. So with
    /// `seen` invalidations counted since the mark, the reply is the current
    /// state when `seen` is at most the call's own one (0 or 1): cached,
    /// skipping its own invalidation if that is still to come. Otherwise a
    /// later write may have come: not cached. A call that wrote removes
    /// whatever another call put there meanwhile (sent before this write,
    /// it may hold the state before it).
    pub(crate) fn finish(
        &self,
        key: &str,
        id: u64,
        record: Option<Record>,
        until: Millis,
        wrote: bool,
    ) {
        let own = u32::from(wrote);
        let mut inner = lock(&self.inner);
        let seen = match inner.entries.get(key) {
            Some(Entry {
                slot: Slot::Pending {
                    id: pending, seen, ..
                },
                ..
            }) if *pending == id => Some(*seen),
            _ => None,
        };
        match (seen, record) {
            (Some(seen), Some(record)) if seen <= own && self.is_up() => {
                let skip = own - seen;
                inner.put(
                    key,
                    Slot::Fresh {
                        record,
                        until,
                        skip,
                    },
                    self.config.capacity,
                );
            }
            (Some(_), _) => {
                inner.remove(key);
            }
            (None, _) if wrote => {
                inner.remove(key);
            }
            (None, _) => {}
        }
    }

    /// Removes `key` (an entry or a pending call's marker).
    pub(crate) fn evict(&self, key: &str) {
        lock(&self.inner).remove(key);
    }

    /// Applies an invalidation of `keys` from Redis: an entry goes (unless
    /// this is its own write's invalidation), a pending call counts it.
    fn invalidate<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        let mut inner = lock(&self.inner);
        let mut removed = 0;
        for key in keys {
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            let gone = match inner.entries.get_mut(key) {
                Some(Entry {
                    slot: Slot::Pending { seen, owed, .. },
                    ..
                }) => {
                    if *owed > 0 {
                        *owed -= 1;
                    } else {
                        *seen = seen.saturating_add(1);
                    }
                    false
                }
                Some(Entry {
                    slot: Slot::Fresh { skip, .. },
                    ..
                }) if *skip > 0 => {
                    *skip -= 1;
                    false
                }
                Some(_) => true,
                None => false,
            };
            if gone && inner.remove(key) {
                removed += 1;
            }
        }
        drop(inner);
        self.invalidations.fetch_add(removed, Ordering::Relaxed);
    }

    /// Empties the cache, pending calls' markers included.
    pub(crate) fn clear(&self) {
        let mut inner = lock(&self.inner);
        inner.entries.clear();
        inner.order.clear();
        drop(inner);
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// A new invalidation connection is being made: nothing is served or
    /// cached until it is up. Returns its generation.
    pub(crate) fn reconnecting(&self) -> u64 {
        self.up.store(false, Ordering::Release);
        self.proven.store(0, Ordering::Release);
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.clear();
        generation
    }

    /// Tracking is on for the connection of `generation`.
    pub(crate) fn connected(&self, generation: u64) {
        if self.generation.load(Ordering::Acquire) == generation {
            // Whatever was cached before tracking was on may have missed
            // invalidations.
            self.clear();
            self.up.store(true, Ordering::Release);
        }
    }

    /// The connection of `generation` broke or stopped answering.
    pub(crate) fn disconnected(&self, generation: u64) {
        // An older connection's late news changes nothing: its entries went
        // when the current one was being made (`reconnecting`).
        if self.generation.load(Ordering::Acquire) == generation {
            self.up.store(false, Ordering::Release);
            self.proven.store(0, Ordering::Release);
            self.clear();
        }
    }

    /// A heartbeat sent at `sent` on the connection of `generation` was
    /// answered.
    pub(crate) fn proved(&self, generation: u64, sent: Instant) {
        if self.generation.load(Ordering::Acquire) == generation && self.is_up() {
            self.proven
                .fetch_max(self.nanos(sent).saturating_add(1), Ordering::AcqRel);
            self.heartbeats.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A push message on the connection of `generation`, applied before any
    /// later reply on that connection is delivered.
    pub(crate) fn push(&self, generation: u64, kind: &redis::PushKind, data: &[redis::Value]) {
        use redis::{PushKind, Value};
        match kind {
            PushKind::Invalidate => {
                for value in data {
                    match value {
                        // Every key flushed (FLUSHALL / FLUSHDB).
                        Value::Nil => self.clear(),
                        Value::Array(keys) | Value::Set(keys) => {
                            self.invalidate(keys.iter().filter_map(|k| match k {
                                Value::BulkString(k) => Some(k.as_slice()),
                                _ => None,
                            }))
                        }
                        Value::BulkString(key) => self.invalidate(std::iter::once(key.as_slice())),
                        _ => self.clear(),
                    }
                }
            }
            PushKind::Disconnection => self.disconnected(generation),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::SessionId;

    fn record(version: u64) -> Record {
        let mut r = Record::new(SessionId([1; 32]), "web", 1);
        r.version = version;
        r
    }

    fn up(near: &Near, at: Instant) -> u64 {
        let generation = near.reconnecting();
        near.connected(generation);
        near.proved(generation, at);
        generation
    }

    #[test]
    fn a_reply_is_cached_only_if_no_invalidation_met_it() {
        let near = Near::new(NearCache::new());
        let generation = up(&near, Instant::now());
        let id = near.begin("k").unwrap();
        near.finish("k", id, Some(record(1)), 100, false);
        assert_eq!(near.get("k", 10).map(|r| r.version), Some(1));
        assert_eq!(
            near.get("k", 100),
            None,
            "served only until its touch is due"
        );

        let id = near.begin("k").unwrap();
        invalidate(&near, generation, "k");
        near.finish("k", id, Some(record(2)), 100, false);
        assert_eq!(near.get("k", 10), None, "the reply raced an invalidation");
    }

    fn invalidate(near: &Near, generation: u64, key: &str) {
        near.push(
            generation,
            &redis::PushKind::Invalidate,
            &[redis::Value::Array(vec![redis::Value::BulkString(
                key.as_bytes().to_vec(),
            )])],
        );
    }

    #[test]
    fn an_own_write_skips_its_own_invalidation_only() {
        let near = Near::new(NearCache::new());
        let generation = up(&near, Instant::now());
        // Its own invalidation came after the reply was handled.
        let id = near.begin("k").unwrap();
        near.finish("k", id, Some(record(1)), u64::MAX, true);
        invalidate(&near, generation, "k");
        assert!(near.get("k", 1).is_some(), "its own write's invalidation");
        invalidate(&near, generation, "k");
        assert!(near.get("k", 1).is_none(), "a later write's");
        // Its own invalidation came before the reply was handled.
        let id = near.begin("k").unwrap();
        invalidate(&near, generation, "k");
        near.finish("k", id, Some(record(2)), u64::MAX, true);
        assert!(near.get("k", 1).is_some());
        invalidate(&near, generation, "k");
        assert!(near.get("k", 1).is_none());
        // Two invalidations before the reply was handled: one may be later.
        let id = near.begin("k").unwrap();
        invalidate(&near, generation, "k");
        invalidate(&near, generation, "k");
        near.finish("k", id, Some(record(3)), u64::MAX, true);
        assert!(near.get("k", 1).is_none());
    }

    #[test]
    fn a_write_removes_what_a_call_sent_before_it_cached() {
        let near = Near::new(NearCache::new());
        up(&near, Instant::now());
        let write = near.begin("k").unwrap();
        let read = near.begin("k").unwrap();
        near.finish("k", read, Some(record(1)), 100, false);
        near.finish("k", write, Some(record(2)), 100, true);
        assert_eq!(near.get("k", 10), None);
    }

    #[test]
    fn nothing_is_served_without_a_recent_heartbeat() {
        let near = Near::new(NearCache::new().max_staleness(Duration::from_millis(50)));
        let long_ago = Instant::now();
        let generation = up(&near, long_ago);
        let id = near.begin("k").unwrap();
        near.finish("k", id, Some(record(1)), u64::MAX, false);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(near.get("k", 1), None, "the last heartbeat is too old");
        near.proved(generation, Instant::now());
        assert!(near.get("k", 1).is_some());
        near.disconnected(generation);
        assert_eq!(near.get("k", 1), None);
        assert_eq!(near.begin("k"), None, "nothing is cached while down");
    }

    #[test]
    fn capacity_bounds_the_entries_least_recently_used_first() {
        let near = Near::new(NearCache::new().capacity(2));
        up(&near, Instant::now());
        for key in ["a", "b"] {
            let id = near.begin(key).unwrap();
            near.finish(key, id, Some(record(1)), u64::MAX, false);
        }
        assert!(near.get("a", 1).is_some());
        let id = near.begin("c").unwrap();
        near.finish("c", id, Some(record(1)), u64::MAX, false);
        assert!(near.get("a", 1).is_some());
        assert!(near.get("b", 1).is_none(), "the least recently used went");
        assert!(near.get("c", 1).is_some());
        assert_eq!(lock(&near.inner).entries.len(), 2);
    }
}
