//! A request's view of its session, the changes it made, and how they are
//! saved: compare-and-set, merge on conflict, never revive.
//!
//! The request's session is a small state machine:
//!
//! - [`Load`]: the client's token waits until the first access loads it
//!   (`Pending`), then the session is known (`Done`): at most one load per
//!   request.
//! - [`Pending`] on the current session: nothing to save (`Clean`), changes
//!   to save (`Dirty`), or changes to save under a new token (`Move`,
//!   `cycle_id`).
//! - [`Replaced`]: after a login, the session the new one replaces; it is
//!   retired (compare-and-delete) once the new one is stored.
//! - [`Held`]: what the client holds (no token, a token, or a token whose
//!   cookie carries a known deadline). The answer to the client
//!   ([`TokenUpdate`]) is derived from it at the end, never tracked by flags:
//!   the token is sent whenever the client's token or deadline is not the
//!   current one, and cleared when the client holds a token that opens
//!   nothing any more.
//!
//! Two rules are the crate's core, and each lives in one place:
//!
//! - **merge, never overwrite** ([`State::merge`]): a save that meets a newer
//!   version re-applies this request's changes onto it;
//! - **never revive** ([`State::gone`]): a session found deleted, revoked or
//!   expired stays so; a login from it fails rather than carry it on.

use std::sync::Arc;
use std::time::Duration;

use ciborium::Value;

use crate::error::SessionError;
use crate::record::{MAX_METADATA_FIELDS, Millis, Record, millis};
use crate::store::{RetireOutcome, SaveOutcome, SessionStore, StoreError};
use crate::token::Token;

/// How a new session is made and how saves retry; set on the layer.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub(crate) kind: String,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) lifetime: Option<Duration>,
    pub(crate) retry: RetryPolicy,
}

/// How a save that met a concurrent writer retries, for
/// [`SessionLayer::retry`](crate::SessionLayer::retry).
///
/// After a first conflict the request's own changes are applied again onto
/// the record the store returned (no extra read) and saved again at once,
/// while that record is fresh. If that save meets a writer too, the session
/// is contended: the request pauses for a time drawn uniformly from
/// `[0, min(cap, base x 2^attempt))` ("full jitter"), so that writers that
/// collided spread out, then loads the session again (a record from before
/// the pause would be stale, and would lose to whoever saved during it),
/// re-applies its changes and saves. After `attempts` saves in all, the
/// request fails with [`SessionError::Busy`] (503).
///
/// Defaults: 16 attempts, pauses from 2 ms up to 128 ms.
///
/// ```
/// use std::time::Duration;
/// use tower_redis_sessions::{MemoryStore, RetryPolicy, SessionLayer};
///
/// let layer = SessionLayer::new(MemoryStore::default()).retry(
///     RetryPolicy::default()
///         .attempts(8)
///         .backoff(Duration::from_millis(1), Duration::from_millis(50)),
/// );
/// ```
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct RetryPolicy {
    pub(crate) attempts: u32,
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 16,
            base: Duration::from_millis(2),
            cap: Duration::from_millis(128),
        }
    }
}

impl RetryPolicy {
    /// How many saves a request attempts in all (at least 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The pause range between attempts: uniform in
    /// `[0, min(cap, base x 2^attempt))`.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.base = base;
        self.cap = cap;
        self
    }
}

impl RetryPolicy {
    fn pause(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
            .min(self.cap);
        let ceiling = millis(ceiling).max(1);
        Duration::from_millis(getrandom::u64().unwrap_or(ceiling / 2) % ceiling)
    }
}

/// One change a request made to its session, kept so that it can be applied
/// again onto a newer record after a conflict.
pub(crate) enum Change {
    Insert(String, Value),
    Remove(String),
    Clear,
    Update(String, Arc<Updater>),
    IdleTimeout(Option<Duration>),
    Lifetime(Option<Duration>),
    Label(Option<String>),
    /// Sets (`Some`) or removes (`None`) a metadata field.
    Metadata(String, Option<String>),
}

/// An `update` closure over CBOR values.
pub(crate) type Updater = dyn Fn(Option<&Value>) -> Result<Value, SessionError> + Send + Sync;

impl Change {
    pub(crate) fn apply(&self, record: &mut Record) -> Result<(), SessionError> {
        match self {
            Change::Insert(key, value) => {
                record.data.insert(key.clone(), value.clone());
            }
            Change::Remove(key) => {
                record.data.remove(key);
            }
            Change::Clear => record.data.clear(),
            Change::Update(key, f) => {
                let value = f(record.data.get(key))?;
                record.data.insert(key.clone(), value);
            }
            Change::IdleTimeout(idle) => record.idle_timeout = *idle,
            Change::Lifetime(lifetime) => {
                record.absolute_deadline =
                    lifetime.map(|l| record.created_at.saturating_add(millis(l)));
            }
            Change::Label(label) => record.label = label.clone(),
            Change::Metadata(key, Some(value)) => {
                if !record.metadata.contains_key(key)
                    && record.metadata.len() >= MAX_METADATA_FIELDS
                {
                    return Err(SessionError::Encode {
                        key: key.clone(),
                        reason: format!(
                            "a session holds at most {MAX_METADATA_FIELDS} metadata fields"
                        ),
                    });
                }
                record.metadata.insert(key.clone(), value.clone());
            }
            Change::Metadata(key, None) => {
                record.metadata.remove(key);
            }
        }
        Ok(())
    }
}

/// The client's session, before and after the first access loads it.
enum Load {
    /// Not loaded yet: the client's token, if it sent one.
    Pending(Option<Token>),
    Done,
}

/// What the current session has to save.
enum Pending {
    Clean,
    Dirty,
    /// Dirty, and to be moved to this token by the save (`cycle_id`).
    Move(Token),
}

/// The session as this request sees it.
pub(crate) struct Current {
    pub(crate) token: Token,
    pub(crate) record: Record,
    pending: Pending,
}

/// What the client holds, as far as this request knows.
#[derive(PartialEq)]
enum Held {
    /// No token.
    Nothing,
    /// A token, whose cookie's deadline is unknown (the token was not loaded
    /// yet, opens nothing, or its deadline moved when it was loaded).
    Token(Token),
    /// A token, with the deadline its cookie was given.
    Session(Token, Option<Millis>),
    /// A token known to open nothing: never valid, expired, or ended here
    /// or by another request. The response tells the client to drop it.
    Dead,
}

/// The session a login replaced: retired once the new one is stored.
struct Replaced {
    token: Token,
    /// Its lock version as this request last saw it.
    version: u64,
    /// Whether its values were carried into the new session (anonymous, or
    /// the same user): then a concurrent write to it is carried too.
    carried: bool,
}

/// What the response has to tell the client about its token.
#[derive(Debug)]
pub(crate) enum TokenUpdate {
    /// Send this token, valid for this long (None = no deadline).
    Set(Token, Option<Duration>),
    /// Remove the client's token.
    Clear,
}

pub(crate) struct State {
    load: Load,
    /// A token that opens no session is an error (a header token, on a
    /// layer that refuses invalid tokens), not a new anonymous session.
    reject_unknown: bool,
    held: Held,
    pub(crate) current: Option<Current>,
    /// Changes to `current` since it was loaded or last saved.
    changes: Vec<Change>,
    replaced: Option<Replaced>,
}

impl State {
    pub(crate) fn new(incoming: Option<Token>, reject_unknown: bool) -> State {
        State {
            reject_unknown,
            held: match &incoming {
                Some(token) => Held::Token(token.clone()),
                None => Held::Nothing,
            },
            load: Load::Pending(incoming),
            current: None,
            changes: Vec::new(),
            replaced: None,
        }
    }

    /// Loads the client's session on first access: at most one load per
    /// request. An unknown or expired token leaves no session; the client's
    /// token is never adopted for a new one.
    pub(crate) async fn load(&mut self, store: &dyn SessionStore) -> Result<(), SessionError> {
        let Load::Pending(incoming) = &mut self.load else {
            return Ok(());
        };
        let Some(token) = incoming.take() else {
            self.load = Load::Done;
            return Ok(());
        };
        let before = store.now();
        match store.load(&token).await {
            Ok(record) => {
                self.load = Load::Done;
                if let Some(record) = record {
                    // A load that moved the idle deadline: the cookie's is stale.
                    let extended = record.idle_timeout.is_some() && record.last_seen >= before;
                    if !extended {
                        self.held = Held::Session(token.clone(), record.deadline());
                    }
                    self.current = Some(Current {
                        token,
                        record,
                        pending: Pending::Clean,
                    });
                } else {
                    self.held = Held::Dead;
                    if self.reject_unknown {
                        return Err(SessionError::InvalidToken);
                    }
                }
                Ok(())
            }
            Err(e) => {
                // Keep the token: a later access may try again.
                self.load = Load::Pending(Some(token));
                Err(e.into())
            }
        }
    }

    /// The session to write to, created if there is none.
    async fn writable(
        &mut self,
        store: &dyn SessionStore,
        policy: &Policy,
    ) -> Result<&mut Current, SessionError> {
        self.load(store).await?;
        let current = match self.current.take() {
            Some(current) => current,
            None => {
                let token = store.new_token(None)?;
                Current {
                    record: new_record(store, policy, &token, None),
                    token,
                    pending: Pending::Dirty,
                }
            }
        };
        Ok(self.current.insert(current))
    }

    /// Applies `change` to the session (creating it if needed) and keeps it
    /// for a merge.
    pub(crate) async fn change(
        &mut self,
        store: &dyn SessionStore,
        policy: &Policy,
        change: Change,
    ) -> Result<(), SessionError> {
        let current = self.writable(store, policy).await?;
        change.apply(&mut current.record)?;
        if let Pending::Clean = current.pending {
            current.pending = Pending::Dirty;
        }
        self.changes.push(change);
        Ok(())
    }

    /// Replaces the session by a new one for `user` under the user's token.
    ///
    /// The values of an anonymous session, or of a session of the same user,
    /// are carried over (a cart survives signing in); a session of another
    /// user is not (the new user starts empty). The new session is stored
    /// first and the old one retired after it (they live in different hash
    /// slots, so this cannot be one call): see [`commit`](State::commit).
    pub(crate) async fn login(
        &mut self,
        store: &dyn SessionStore,
        policy: &Policy,
        user: String,
    ) -> Result<(), SessionError> {
        self.load(store).await?;
        let token = store.new_token(Some(&user))?;
        let mut record = new_record(store, policy, &token, Some(user));
        let carried = match self.current.take() {
            Some(old) => {
                let carried = old.record.user.is_none() || old.record.user == record.user;
                let stored = old.record.is_stored();
                if carried {
                    // The same client goes on: its values and what the
                    // application noted about the device come along.
                    record.data = old.record.data;
                    record.label = old.record.label;
                    record.metadata = old.record.metadata;
                }
                if stored {
                    self.replaced = Some(Replaced {
                        token: old.token,
                        version: old.record.version,
                        carried,
                    });
                } else if let Some(replaced) = self.replaced.as_mut() {
                    // A second login in one request: the session the first
                    // one replaced is still to retire.
                    replaced.carried &= carried;
                }
                carried
            }
            None => true,
        };
        if !carried {
            // Nothing of the other user's session comes along.
            self.changes.clear();
        }
        self.current = Some(Current {
            token,
            record,
            pending: Pending::Dirty,
        });
        Ok(())
    }

    /// Ends the session now: deleted in the store, forgotten here.
    pub(crate) async fn end(&mut self, store: &dyn SessionStore) -> Result<(), SessionError> {
        let stored = match self.current.take() {
            Some(current) if current.record.is_stored() => Some(current.token),
            _ => match std::mem::replace(&mut self.load, Load::Done) {
                Load::Pending(token) => token,
                Load::Done => None,
            },
        };
        let replaced = self.replaced.take().map(|r| r.token);
        for token in stored.iter().chain(replaced.iter()) {
            store.delete(token).await?;
        }
        self.changes.clear();
        self.drop_client_token();
        Ok(())
    }

    /// The token the client holds opens nothing any more.
    fn drop_client_token(&mut self) {
        if self.held != Held::Nothing {
            self.held = Held::Dead;
        }
    }

    /// Saves the session if it changed, merging on conflicts, then retires
    /// the session a login replaced, if any.
    pub(crate) async fn commit(
        &mut self,
        store: &dyn SessionStore,
        policy: &Policy,
    ) -> Result<(), SessionError> {
        let retry = &policy.retry;
        let _turn = match self.current.as_ref().filter(|c| c.is_dirty()) {
            Some(c) if c.record.is_stored() => Some(store.save_turn(c.record.id).await),
            _ => None,
        };
        let mut attempt = 0;
        loop {
            while let Some(current) = self.current.as_mut().filter(|c| c.is_dirty()) {
                attempt += 1;
                match current.send(store).await? {
                    SaveOutcome::Saved { version } => {
                        current.stored(version, store.now());
                        if self.replaced.is_none() {
                            self.changes.clear();
                        }
                    }
                    SaveOutcome::Conflict(_) if attempt >= retry.attempts => {
                        return Err(SessionError::Busy(attempt));
                    }
                    SaveOutcome::Conflict(_) if !current.record.is_stored() => {
                        // A fresh token already in use: astronomically
                        // unlikely, and never merged into. Take another.
                        let token = store.new_token(current.record.user.as_deref())?;
                        current.record.id = token.id();
                        current.token = token;
                    }
                    SaveOutcome::Conflict(newer) => {
                        let newer = if attempt > 1 {
                            // Contended (see `RetryPolicy`): pause, then read
                            // the record again rather than merge into one that
                            // went stale during the pause.
                            tokio::time::sleep(retry.pause(attempt)).await;
                            store.load(&current.token).await?
                        } else {
                            Some(newer)
                        };
                        match newer {
                            Some(newer) => self.merge(newer)?,
                            None => self.gone(),
                        }
                    }
                    SaveOutcome::Gone => self.gone(),
                }
            }
            if self.replaced.is_none() {
                return Ok(());
            }
            if attempt >= retry.attempts {
                // The replaced session keeps changing: give up the login,
                // and leave the client with the session it has.
                self.abandon_login(store).await?;
                return Err(SessionError::Busy(attempt));
            }
            if let Err(e) = self.retire(store).await {
                if !matches!(e, SessionError::Ended) {
                    // The old session may or may not be retired (the store
                    // failed): the new session's token is not handed out,
                    // so the client keeps the one it has. The new session,
                    // if stored, is deleted if the store lets us, else it
                    // expires unseen.
                    let _ = self.abandon_login(store).await;
                }
                return Err(e);
            }
            attempt += 1;
        }
    }

    /// Re-applies this request's changes onto `newer`, the record a
    /// concurrent writer stored, which becomes the current one.
    fn merge(&mut self, mut newer: Record) -> Result<(), SessionError> {
        for change in &self.changes {
            change.apply(&mut newer)?;
        }
        if let Some(current) = self.current.as_mut() {
            current.record = newer;
        }
        Ok(())
    }

    /// Retires the session a login replaced, once the new one is stored:
    /// compare-and-delete on the version the login read. If the old session
    /// changed meanwhile, its newer values are folded into the new session
    /// (when its values were carried), which is saved again before the next
    /// try; if it ended meanwhile, the login fails, whatever was carried: a
    /// session ended before the login completed never yields a live token.
    async fn retire(&mut self, store: &dyn SessionStore) -> Result<(), SessionError> {
        let Some(replaced) = self.replaced.take() else {
            return Ok(());
        };
        if self.current.is_none() {
            // The new session itself was revoked before this request
            // finished (its user logged out everywhere): nothing to log in to.
            store.delete(&replaced.token).await?;
            return Err(SessionError::Ended);
        }
        match store.retire(&replaced.token, replaced.version).await? {
            RetireOutcome::Deleted => {
                self.changes.clear();
                Ok(())
            }
            RetireOutcome::Conflict(newer) => {
                // Changed after the login read it. Carried values: fold the
                // newer ones into the new session (whose token nobody has
                // yet), with this request's changes on top, and save it
                // again before the next try. Otherwise only the version moves.
                if let Some(current) = self.current.as_mut().filter(|_| replaced.carried) {
                    let mut record = current.record.clone();
                    record.data = newer.data;
                    for change in &self.changes {
                        change.apply(&mut record)?;
                    }
                    current.record.data = record.data;
                    current.pending = Pending::Dirty;
                }
                self.replaced = Some(Replaced {
                    version: newer.version,
                    ..replaced
                });
                Ok(())
            }
            RetireOutcome::Gone => {
                // Ended (logout, revocation, expiry) before the login
                // completed: it must not live on under the new token.
                self.abandon_login(store).await?;
                self.drop_client_token();
                Err(SessionError::Ended)
            }
        }
    }

    /// Deletes the session a login created and forgets the login.
    async fn abandon_login(&mut self, store: &dyn SessionStore) -> Result<(), SessionError> {
        self.replaced = None;
        self.changes.clear();
        if let Some(new) = self.current.take().filter(|c| c.record.is_stored()) {
            store.delete(&new.token).await?;
        }
        Ok(())
    }

    /// The session was deleted, revoked or expired meanwhile: it stays
    /// that way, and the client is told to drop its token.
    fn gone(&mut self) {
        self.current = None;
        self.changes.clear();
        self.drop_client_token();
    }

    /// Moves the session to a new token of the same hash slot at the next
    /// save (one atomic call); a session never saved just takes the token.
    pub(crate) async fn renew(&mut self, store: &dyn SessionStore) -> Result<(), SessionError> {
        self.load(store).await?;
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        let next = current.token.renew().map_err(StoreError::Random)?;
        if current.record.is_stored() {
            current.pending = Pending::Move(next);
        } else {
            current.record.id = next.id();
            current.token = next;
        }
        Ok(())
    }

    /// What the response must tell the client: the current token whenever
    /// the client does not hold it with its current deadline, or to drop the
    /// token it holds when that opens nothing any more.
    pub(crate) fn token_update(&self, now: Millis) -> Option<TokenUpdate> {
        match self.current.as_ref().filter(|c| c.record.is_stored()) {
            Some(c) => {
                let deadline = c.record.deadline();
                if self.held == Held::Session(c.token.clone(), deadline) {
                    return None;
                }
                let left = deadline.map(|d| Duration::from_millis(d.saturating_sub(now)));
                Some(TokenUpdate::Set(c.token.clone(), left))
            }
            // A token that opens nothing costs a store call on every request
            // that sends it.
            None if self.held == Held::Dead => Some(TokenUpdate::Clear),
            // No token, or one that may still be good (never loaded because
            // the store failed, or kept because a login failed).
            None => None,
        }
    }
}

impl Current {
    fn is_dirty(&self) -> bool {
        !matches!(self.pending, Pending::Clean)
    }

    /// Sends the pending changes once: a compare-and-set save, or a
    /// compare-and-move to the new token.
    async fn send(&self, store: &dyn SessionStore) -> Result<SaveOutcome, StoreError> {
        match &self.pending {
            Pending::Move(next) => {
                let mut moved = self.record.clone();
                moved.id = next.id();
                store.rotate(&self.token, next, &moved).await
            }
            _ => store.save(&self.token, &self.record).await,
        }
    }

    /// The pending changes were stored as `version`.
    fn stored(&mut self, version: u64, now: Millis) {
        if let Pending::Move(next) = std::mem::replace(&mut self.pending, Pending::Clean) {
            self.record.id = next.id();
            self.token = next;
        }
        self.record.version = version;
        self.record.last_seen = now;
    }
}

fn new_record(
    store: &dyn SessionStore,
    policy: &Policy,
    token: &Token,
    user: Option<String>,
) -> Record {
    let now = store.now();
    let mut record = Record::new(token.id(), policy.kind.clone(), now);
    record.user = user;
    record.idle_timeout = policy.idle_timeout;
    record.absolute_deadline = policy.lifetime.map(|l| now.saturating_add(millis(l)));
    record
}
