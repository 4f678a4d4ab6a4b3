//! [`MemoryStore`]: the same semantics as [`RedisStore`](crate::RedisStore),
//! in process.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::Keyring;
use crate::record::Millis;
use crate::store::core::{Backend, Core, HasCore, Raw, RawRetire, RawSave, StoreStats, Write};
use crate::store::{StoreConfig, StoreError};
use crate::token::Token;

/// Sessions in this process's memory, with the semantics of
/// [`RedisStore`](crate::RedisStore): sealed records, optimistic locking,
/// no revival of deleted sessions, idle and absolute expiry, per-user
/// listing and revocation.
///
/// For tests of applications, single-process tools and demos: sessions are
/// lost when the process ends and are not shared between processes. Expired
/// sessions are dropped as they are met, and swept every 1024 saves.
///
/// ```
/// use tower_redis_sessions::MemoryStore;
/// use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_redis_sessions::StoreError> {
/// let store = MemoryStore::default();
/// let token = store.new_token(None)?;
/// let record = Record::new(token.id(), "web", store.now());
/// assert_eq!(store.save(&token, &record).await?, SaveOutcome::Saved { version: 1 });
/// assert_eq!(store.load(&token).await?.map(|r| r.version), Some(1));
/// // A second writer still holding version 0 cannot overwrite it.
/// assert!(matches!(store.save(&token, &record).await?, SaveOutcome::Conflict(_)));
/// # Ok(()) }
/// ```
///
/// Cloning is cheap: clones share the sessions.
#[derive(Clone)]
pub struct MemoryStore {
    core: std::sync::Arc<Core<MemoryBackend>>,
}

impl HasCore for MemoryStore {
    type Backend = MemoryBackend;
    fn core(&self) -> &Core<MemoryBackend> {
        &self.core
    }
}

impl MemoryStore {
    /// A store with the given configuration.
    pub fn new(config: StoreConfig) -> MemoryStore {
        MemoryStore {
            core: std::sync::Arc::new(Core::new(MemoryBackend::default(), config)),
        }
    }

    /// Counters of conflicts, blocked revivals and rejected blobs.
    pub fn stats(&self) -> StoreStats {
        self.core.stats()
    }

    /// The sealed bytes stored for `token`'s session.
    ///
    /// With [`set_sealed`](Self::set_sealed), this lets a test corrupt,
    /// truncate or move a stored session and see how the application
    /// copes, as it could with direct access to Redis.
    pub fn sealed(&self, token: &Token) -> Option<Vec<u8>> {
        let key = self.core.session_key(token);
        self.core
            .backend
            .state()
            .sessions
            .get(&key)
            .map(|e| e.blob.clone())
    }

    /// Replaces the sealed bytes stored for `token`'s session, if it exists.
    /// Returns whether it did.
    pub fn set_sealed(&self, token: &Token, blob: Vec<u8>) -> bool {
        let key = self.core.session_key(token);
        match self.core.backend.state().sessions.get_mut(&key) {
            Some(entry) => {
                entry.blob = blob;
                true
            }
            None => false,
        }
    }
}

impl Default for MemoryStore {
    /// A store with a random keyring and default settings. Without a working
    /// OS random number generator, the keyring derives from a fixed secret:
    /// this store keeps nothing outside the process, so its keys only guard
    /// against bugs, not attackers.
    fn default() -> MemoryStore {
        let keyring = Keyring::generate().unwrap_or_else(|_| Keyring::derive(&[0x5a; 32]));
        MemoryStore::new(StoreConfig::new(keyring))
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sessions = self.core.backend.state().sessions.len();
        f.debug_struct("MemoryStore")
            .field("sessions", &sessions)
            .finish_non_exhaustive()
    }
}

/// One session, with the fields of the Redis hash.
struct Entry {
    version: u64,
    blob: Vec<u8>,
    last_seen: Millis,
    idle: u64,
    absolute: Millis,
    kind: String,
    index: String,
    /// The last [`NONCES`] saves applied, newest first: (nonce, version
    /// written), the library's field `w`.
    nonces: VecDeque<(String, u64)>,
}

/// How many applied saves a session remembers (`NONCES` in the library).
const NONCES: usize = 8;

/// The most sessions one call ends to keep a user under the cap
/// (`PRUNE_BATCH` in the library).
const PRUNE_BATCH: u64 = 64;

impl Entry {
    fn deadline(&self) -> Millis {
        deadline(self.last_seen, self.idle, self.absolute)
    }

    /// The version the save with `nonce` wrote, if still remembered.
    fn applied(&self, nonce: &str) -> Option<u64> {
        self.nonces
            .iter()
            .find(|(n, _)| n == nonce)
            .map(|&(_, version)| version)
    }

    fn raw(&self) -> Raw {
        Raw {
            version: self.version,
            blob: self.blob.clone(),
            last_seen: self.last_seen,
            wrote: false,
            tracked: false,
        }
    }
}

/// The stored fields' deadline, `Millis::MAX` for none (0 means "none" in
/// the hash's fields, as in the Lua library).
fn deadline(seen: Millis, idle: u64, absolute: Millis) -> Millis {
    let some = |n: u64| (n > 0).then_some(n);
    crate::record::deadline(seen, some(idle), some(absolute)).unwrap_or(Millis::MAX)
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Entry>,
    /// user index -> session keys
    indexes: HashMap<String, BTreeSet<String>>,
    saves: u64,
}

impl State {
    /// The live entry under `key`; an expired one is removed, as Redis would
    /// have dropped it.
    fn live(&mut self, key: &str, now: Millis) -> Option<&mut Entry> {
        if self.sessions.get(key).is_some_and(|e| e.deadline() <= now) {
            self.remove(key);
        }
        self.sessions.get_mut(key)
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.sessions.remove(key)?;
        if !entry.index.is_empty() {
            self.unindex(&entry.index.clone(), key);
        }
        Some(entry)
    }

    fn unindex(&mut self, index: &str, key: &str) {
        if let Some(members) = self.indexes.get_mut(index) {
            members.remove(key);
            if members.is_empty() {
                self.indexes.remove(index);
            }
        }
    }

    /// Writes the next version of `w.key` (as the library's `write`) and
    /// returns it; a live session under the key passes on what it
    /// remembered of earlier saves.
    fn write(&mut self, w: &Write<'_>) -> u64 {
        let version = w.expected + 1;
        let index = w.index.unwrap_or("").to_owned();
        let mut nonces = self
            .sessions
            .get_mut(w.key)
            .map(|e| std::mem::take(&mut e.nonces))
            .unwrap_or_default();
        nonces.push_front((w.nonce.to_owned(), version));
        nonces.truncate(NONCES);
        self.sessions.insert(
            w.key.to_owned(),
            Entry {
                version,
                blob: w.blob.to_vec(),
                last_seen: w.now,
                idle: w.idle,
                absolute: w.absolute,
                kind: w.kind.to_owned(),
                index: index.clone(),
                nonces,
            },
        );
        if !index.is_empty() {
            self.indexes
                .entry(index)
                .or_default()
                .insert(w.key.to_owned());
        }
        self.saves += 1;
        if self.saves.is_multiple_of(1024) {
            self.sweep(w.now);
        }
        version
    }

    fn sweep(&mut self, now: Millis) {
        let dead: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.deadline() <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in dead {
            self.remove(&key);
        }
    }

    /// Before `key` enters `index`: ends the oldest live others so that at
    /// most `cap` remain with it, at most [`PRUNE_BATCH`] per call (as the
    /// library's `over_cap`; 0 = no cap).
    fn make_room(&mut self, index: &str, key: &str, cap: u64, now: Millis) {
        if cap == 0 {
            return;
        }
        let others: Vec<String> = self
            .members(index, now)
            .into_iter()
            .filter(|k| k != key)
            .collect();
        let excess = (others.len() as u64 + 1)
            .saturating_sub(cap)
            .min(PRUNE_BATCH);
        for victim in others.iter().take(excess as usize) {
            self.remove(victim);
        }
    }

    /// The live members of `index`, in the order they expire (ties by key,
    /// as a sorted set orders equal scores).
    fn members(&mut self, index: &str, now: Millis) -> Vec<String> {
        let keys: Vec<String> = self
            .indexes
            .get(index)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default();
        let mut live: Vec<(Millis, String)> = keys
            .into_iter()
            .filter_map(|key| {
                let d = self.live(&key, now)?.deadline();
                Some((d, key))
            })
            .collect();
        live.sort();
        live.into_iter().map(|(_, key)| key).collect()
    }
}

#[derive(Default)]
pub(crate) struct MemoryBackend {
    state: Mutex<State>,
}

impl MemoryBackend {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied change
        // that matters more than losing the store, so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for MemoryBackend {
    async fn load(&self, key: &str, now: Millis, touch: u64) -> Result<Option<Raw>, StoreError> {
        let mut state = self.state();
        let Some(entry) = state.live(key, now) else {
            return Ok(None);
        };
        if entry.idle > 0 && now.saturating_sub(entry.last_seen) >= touch.min(entry.idle / 2) {
            entry.last_seen = now;
        }
        Ok(Some(entry.raw()))
    }

    async fn save(&self, w: Write<'_>) -> Result<RawSave, StoreError> {
        let mut state = self.state();
        let live = state.live(w.key, w.now);
        if let Some(wrote) = live.as_ref().and_then(|e| e.applied(w.nonce)) {
            // A retry of a save already applied (I6).
            return Ok(RawSave::Saved(wrote, Vec::new(), false));
        }
        let current = live.map(|e| (e.version, e.raw()));
        match (w.expected, current) {
            (0, Some((_, raw))) => return Ok(RawSave::Conflict(raw)),
            (0, None) => {}
            (_, None) => return Ok(RawSave::Gone),
            (expected, Some((version, raw))) if version != expected => {
                return Ok(RawSave::Conflict(raw));
            }
            _ => {}
        }
        if deadline(w.now, w.idle, w.absolute) <= w.now {
            state.remove(w.key);
            return Ok(RawSave::Gone);
        }
        if let Some(old) = state.sessions.get(w.key).map(|e| e.index.clone())
            && !old.is_empty()
            && Some(old.as_str()) != w.index
        {
            state.unindex(&old, w.key);
        }
        if let Some(index) = w.index
            && !state.indexes.get(index).is_some_and(|m| m.contains(w.key))
        {
            state.make_room(index, w.key, w.cap, w.now);
        }
        Ok(RawSave::Saved(state.write(&w), Vec::new(), false))
    }

    async fn rotate(&self, old: &str, w: Write<'_>) -> Result<RawSave, StoreError> {
        let mut state = self.state();
        if let Some(new) = state.sessions.get(w.key) {
            // Our own write, retried after a lost reply; else a token in use.
            return Ok(match new.applied(w.nonce) {
                Some(wrote) => RawSave::Saved(wrote, Vec::new(), false),
                None => RawSave::Taken,
            });
        }
        let Some(current) = state.live(old, w.now).map(|e| (e.version, e.raw())) else {
            return Ok(RawSave::Gone);
        };
        if current.0 != w.expected {
            return Ok(RawSave::Conflict(current.1));
        }
        state.remove(old);
        if deadline(w.now, w.idle, w.absolute) <= w.now {
            return Ok(RawSave::Gone);
        }
        if let Some(index) = w.index {
            state.make_room(index, w.key, w.cap, w.now);
        }
        Ok(RawSave::Saved(state.write(&w), Vec::new(), false))
    }

    async fn delete(
        &self,
        key: &str,
        owner: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut state = self.state();
        // A dead session is dropped here, and was none to delete.
        let owned = match (state.live(key, now).map(|e| &*e), owner) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(entry), Some(owner)) => entry.index == owner,
        };
        Ok(owned && state.remove(key).is_some())
    }

    async fn retire(&self, key: &str, expected: u64, now: Millis) -> Result<RawRetire, StoreError> {
        let mut state = self.state();
        let Some(entry) = state.live(key, now) else {
            return Ok(RawRetire::Gone);
        };
        if entry.version != expected {
            return Ok(RawRetire::Conflict(entry.raw()));
        }
        state.remove(key);
        Ok(RawRetire::Deleted)
    }

    async fn list(
        &self,
        index: &str,
        now: Millis,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Raw)>, StoreError> {
        let mut state = self.state();
        let members = state.members(index, now);
        Ok(members
            .into_iter()
            .filter_map(|key| {
                let entry = state.sessions.get(&key)?;
                let wanted = kind.is_none_or(|k| k == entry.kind);
                wanted.then(|| (key.clone(), entry.raw()))
            })
            .take(limit)
            .collect())
    }

    async fn revoke_all(
        &self,
        index: &str,
        now: Millis,
        kind: Option<&str>,
        keep: Option<&str>,
    ) -> Result<u64, StoreError> {
        let mut state = self.state();
        let mut revoked = 0;
        for key in state.members(index, now) {
            let doomed = Some(key.as_str()) != keep
                && state
                    .sessions
                    .get(&key)
                    .is_some_and(|e| kind.is_none_or(|k| k == e.kind));
            if doomed && state.remove(&key).is_some() {
                revoked += 1;
            }
        }
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write<'a>(expected: u64, nonce: &'a str) -> Write<'a> {
        Write {
            key: "k",
            index: None,
            expected,
            blob: b"blob",
            now: 1_000,
            idle: 0,
            absolute: 0,
            kind: "web",
            nonce,
            cap: 0,
        }
    }

    fn saved(outcome: RawSave) -> Option<u64> {
        match outcome {
            RawSave::Saved(version, _, _) => Some(version),
            _ => None,
        }
    }

    /// As the library (I6): a repeated save is recognised among the last
    /// eight applied, whatever was written since; older ones are forgotten.
    #[tokio::test]
    async fn a_repeated_save_is_applied_once_among_the_last_eight() {
        let backend = MemoryBackend::default();
        let nonces: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        for (expected, nonce) in nonces.iter().enumerate() {
            let outcome = backend.save(write(expected as u64, nonce)).await.unwrap();
            assert_eq!(saved(outcome), Some(expected as u64 + 1));
        }
        // n2..n9 are the last eight: each repeat answers what it wrote.
        for (i, nonce) in nonces.iter().enumerate().skip(2) {
            let outcome = backend.save(write(i as u64, nonce)).await.unwrap();
            assert_eq!(saved(outcome), Some(i as u64 + 1), "{nonce}");
        }
        // n1 is forgotten: its repeat is a conflict with version 10.
        let outcome = backend.save(write(1, &nonces[1])).await.unwrap();
        assert!(matches!(outcome, RawSave::Conflict(ref raw) if raw.version == 10));
        assert_eq!(backend.state().sessions["k"].nonces.len(), NONCES);
    }
}
