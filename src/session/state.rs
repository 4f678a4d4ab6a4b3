//! A request's view of its session, the changes it made, and how they are
//! saved: compare-and-set, merge on conflict, never revive.

use std::sync::Arc;
use std::time::Duration;

use ciborium::Value;

use crate::error::SessionError;
use crate::record::{Millis, Record, millis};
use crate::store::{SaveOutcome, SessionStore, StoreError};
use crate::token::Token;

/// How a new session is made and how saves retry; set on the layer.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub(crate) kind: String,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) lifetime: Option<Duration>,
    pub(crate) retry: RetryPolicy,
    /// Saves of one session by requests of this process take turns.
    pub(crate) locks: Arc<super::turns::SaveLocks>,
}

/// How a save that met a concurrent writer retries.
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
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) attempts: u32,
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
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
        }
        Ok(())
    }
}

/// The session as this request sees it.
pub(crate) struct Current {
    pub(crate) token: Token,
    pub(crate) record: Record,
    /// Changed since it was loaded or last saved.
    pub(crate) dirty: bool,
    /// The token to move the session to at the next save (`cycle_id`).
    pub(crate) renew: Option<Token>,
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
    /// The client's token, until the first access loads it.
    pub(crate) incoming: Option<Token>,
    pub(crate) loaded: bool,
    pub(crate) current: Option<Current>,
    /// Changes to `current` since it was loaded or last saved.
    pub(crate) changes: Vec<Change>,
    /// A session to delete once the one replacing it is saved (login,
    /// cycle_id): create first, then delete, so a failure never leaves the
    /// client without a session.
    pub(crate) retire: Option<Token>,
    /// The load moved the idle deadline: the client's cookie needs the new one.
    pub(crate) extended: bool,
    /// A token not yet sent to the client was saved.
    pub(crate) issued: bool,
    /// The client's session ended here (logout, or found gone).
    pub(crate) ended: bool,
}

impl State {
    pub(crate) fn new(incoming: Option<Token>) -> State {
        State {
            loaded: incoming.is_none(),
            incoming,
            current: None,
            changes: Vec::new(),
            retire: None,
            extended: false,
            issued: false,
            ended: false,
        }
    }

    /// Loads the client's session on first access: at most one load per
    /// request. An unknown or expired token leaves no session; the client's
    /// token is never adopted for a new one.
    pub(crate) async fn load(&mut self, store: &dyn SessionStore) -> Result<(), SessionError> {
        if self.loaded {
            return Ok(());
        }
        let Some(token) = self.incoming.take() else {
            self.loaded = true;
            return Ok(());
        };
        let before = store.now();
        match store.load(&token).await {
            Ok(record) => {
                self.loaded = true;
                if let Some(record) = record {
                    self.extended = record.idle_timeout.is_some() && record.last_seen >= before;
                    self.current = Some(Current {
                        token,
                        record,
                        dirty: false,
                        renew: None,
                    });
                }
                Ok(())
            }
            Err(e) => {
                // Keep the token: a later access may try again.
                self.incoming = Some(token);
                Err(e.into())
            }
        }
    }

    /// The session to write to, created if there is none.
    pub(crate) async fn writable(
        &mut self,
        store: &dyn SessionStore,
        policy: &Policy,
    ) -> Result<&mut Current, SessionError> {
        self.load(store).await?;
        let current = match self.current.take() {
            Some(current) => current,
            None => {
                let token = store.new_token(None)?;
                let record = new_record(store, policy, &token, None);
                Current {
                    token,
                    record,
                    dirty: true,
                    renew: None,
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
        current.dirty = true;
        self.changes.push(change);
        Ok(())
    }

    /// Replaces the session by a new one for `user` under the user's token,
    /// keeping its values: the old one is deleted after the new one is saved
    /// (it may live in another hash slot, so this cannot be one call).
    pub(crate) async fn login(
        &mut self,
        store: &dyn SessionStore,
        policy: &Policy,
        user: String,
    ) -> Result<(), SessionError> {
        self.load(store).await?;
        let token = store.new_token(Some(&user))?;
        let mut record = new_record(store, policy, &token, Some(user));
        if let Some(old) = self.current.take() {
            record.data = old.record.data;
            if old.record.version > 0 && self.retire.is_none() {
                self.retire = Some(old.token);
            }
        }
        self.current = Some(Current {
            token,
            record,
            dirty: true,
            renew: None,
        });
        // A new session cannot meet a concurrent writer: nothing to merge.
        self.changes.clear();
        Ok(())
    }

    /// Ends the session now: deleted in the store, forgotten here.
    pub(crate) async fn end(&mut self, store: &dyn SessionStore) -> Result<(), SessionError> {
        let stored = match self.current.take() {
            Some(current) if current.record.version > 0 => Some(current.token),
            _ => self.incoming.take(),
        };
        for token in stored.iter().chain(self.retire.iter()) {
            store.delete(token).await?;
        }
        self.retire = None;
        self.changes.clear();
        self.loaded = true;
        self.issued = false;
        self.ended = true;
        Ok(())
    }

    /// Saves the session if it changed, merging on conflicts, then deletes
    /// the session it replaced, if any.
    pub(crate) async fn commit(
        &mut self,
        store: &dyn SessionStore,
        policy: &Policy,
    ) -> Result<(), SessionError> {
        let retry = &policy.retry;
        let _turn = match self
            .current
            .as_ref()
            .filter(|c| c.dirty && c.record.version > 0)
        {
            Some(c) => Some(policy.locks.turn(c.record.id).await),
            None => None,
        };
        let mut attempt = 0;
        while let Some(current) = self.current.as_mut().filter(|c| c.dirty) {
            attempt += 1;
            let outcome = match &current.renew {
                Some(next) => {
                    let mut moved = current.record.clone();
                    moved.id = next.id();
                    store.rotate(&current.token, next, &moved).await?
                }
                None => store.save(&current.token, &current.record).await?,
            };
            match outcome {
                SaveOutcome::Saved { version } => {
                    if current.record.version == 0 {
                        self.issued = true;
                    }
                    if let Some(next) = current.renew.take() {
                        current.record.id = next.id();
                        current.token = next;
                        self.issued = true;
                    }
                    current.record.version = version;
                    current.record.last_seen = store.now();
                    current.dirty = false;
                    self.changes.clear();
                }
                SaveOutcome::Conflict(_) if attempt >= retry.attempts => {
                    return Err(SessionError::Busy(attempt));
                }
                SaveOutcome::Conflict(_) if current.record.version == 0 => {
                    // A fresh token already in use: astronomically unlikely,
                    // and never merged into. Take another.
                    let token = store.new_token(current.record.user.as_deref())?;
                    current.record.id = token.id();
                    current.token = token;
                }
                SaveOutcome::Conflict(mut newer) => {
                    if attempt > 1 {
                        // Contended (see `RetryPolicy`): pause, then read the
                        // record again rather than save one that went stale
                        // during the pause.
                        tokio::time::sleep(retry.pause(attempt)).await;
                        match store.load(&current.token).await? {
                            Some(fresh) => newer = fresh,
                            None => {
                                self.gone();
                                continue;
                            }
                        }
                    }
                    for change in &self.changes {
                        change.apply(&mut newer)?;
                    }
                    current.record = newer;
                }
                SaveOutcome::Gone => self.gone(),
            }
        }
        if let Some(old) = self.retire.take() {
            store.delete(&old).await?;
        }
        Ok(())
    }

    /// The session was deleted, revoked or expired meanwhile: it stays
    /// that way, and the client is told to drop its token.
    fn gone(&mut self) {
        self.current = None;
        self.changes.clear();
        self.issued = false;
        self.ended = true;
    }

    /// Moves the session to a new token of the same hash slot at the next
    /// save (one atomic call); a session never saved just takes the token.
    pub(crate) async fn renew(&mut self, store: &dyn SessionStore) -> Result<(), SessionError> {
        self.load(store).await?;
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        let next = current
            .token
            .renew()
            .map_err(|e| StoreError::Random(e.to_string()))?;
        if current.record.version == 0 {
            current.record.id = next.id();
            current.token = next;
        } else {
            current.renew = Some(next);
            current.dirty = true;
        }
        Ok(())
    }

    /// What the response must tell the client.
    pub(crate) fn token_update(&self, now: Millis) -> Option<TokenUpdate> {
        match &self.current {
            Some(c) if c.record.version > 0 && (self.issued || self.extended) => {
                let left = c
                    .record
                    .deadline()
                    .map(|d| Duration::from_millis(d.saturating_sub(now)));
                Some(TokenUpdate::Set(c.token.clone(), left))
            }
            _ if self.ended => Some(TokenUpdate::Clear),
            _ => None,
        }
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
