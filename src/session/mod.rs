//! [`Session`]: the handle a request uses to read and change its session.

mod state;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ciborium::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, MutexGuard};

use crate::error::SessionError;
use crate::record::{Data, MAX_METADATA_KEY, MAX_METADATA_VALUE, Metadata, Millis, Record};
use crate::store::SessionStore;
use crate::token::{SessionId, Token};

pub use self::state::RetryPolicy;
use self::state::{Change, State};
pub(crate) use self::state::{Policy, TokenUpdate};

/// The session of the current request.
///
/// [`SessionLayer`](crate::SessionLayer) puts one in every request's
/// extensions; axum handlers take it as an extractor. It is cheap to clone
/// (clones share the same session).
///
/// It is lazy: a request that does not touch its session costs no store
/// call. The first access loads the session (one call, which also extends
/// the idle deadline when due); changes are saved once, when the response is
/// ready, or earlier with [`save`](Session::save).
///
/// Changes are kept as operations, not just as a new state: if another
/// request saved the session meanwhile, this request's changes are applied
/// again onto the newer record, keys it did not touch keep the other
/// request's values, and [`update`](Session::update) closures run again on
/// the fresh value. No update is lost.
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_redis_sessions::{MemoryStore, Session, SessionError, SessionLayer};
///
/// async fn visits(session: Session) -> Result<String, SessionError> {
///     let n = session.update("visits", |n: Option<u64>| n.unwrap_or(0) + 1).await?;
///     Ok(format!("visit number {n}"))
/// }
///
/// let app: Router = Router::new()
///     .route("/", get(visits))
///     .layer(SessionLayer::new(MemoryStore::default()));
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SessionStore>,
    policy: Arc<Policy>,
    used: AtomicBool,
    state: Mutex<State>,
}

/// One of a user's sessions, as listed by [`Session::sessions`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session's id.
    pub id: SessionId,
    /// Its kind.
    pub kind: String,
    /// When it was created (ms since the Unix epoch).
    pub created_at: Millis,
    /// When it was last seen (to within the store's touch interval).
    pub last_seen: Millis,
    /// When it ends unless seen again (idle timeout).
    pub idle_deadline: Option<Millis>,
    /// When it ends whatever its activity.
    pub absolute_deadline: Option<Millis>,
    /// Whether it is the session of this request.
    pub current: bool,
    /// The application's label for it ([`Session::set_label`]).
    pub label: Option<String>,
    /// The application's fields about it ([`Session::set_metadata`]).
    pub metadata: Metadata,
}

impl SessionInfo {
    fn new(record: &Record, current: Option<SessionId>) -> SessionInfo {
        SessionInfo {
            id: record.id,
            kind: record.kind.clone(),
            created_at: record.created_at,
            last_seen: record.last_seen,
            idle_deadline: record.idle_deadline(),
            absolute_deadline: record.absolute_deadline,
            current: current == Some(record.id),
            label: record.label.clone(),
            metadata: record.metadata.clone(),
        }
    }
}

impl Session {
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        policy: Arc<Policy>,
        incoming: Option<Token>,
        reject_unknown: bool,
    ) -> Session {
        Session {
            inner: Arc::new(Inner {
                store,
                policy,
                used: AtomicBool::new(false),
                state: Mutex::new(State::new(incoming, reject_unknown)),
            }),
        }
    }

    async fn state(&self) -> MutexGuard<'_, State> {
        self.inner.used.store(true, Ordering::Relaxed);
        self.inner.state.lock().await
    }

    fn store(&self) -> &dyn SessionStore {
        &*self.inner.store
    }

    async fn loaded(&self) -> Result<MutexGuard<'_, State>, SessionError> {
        let mut state = self.state().await;
        state.load(self.store()).await?;
        Ok(state)
    }

    async fn change(&self, change: Change) -> Result<(), SessionError> {
        let mut state = self.state().await;
        state.change(self.store(), &self.inner.policy, change).await
    }

    /// The value under `key`, decoded as `T`; `None` if absent.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        let state = self.loaded().await?;
        let value = state.current.as_ref().and_then(|c| c.record.data.get(key));
        value.map(|v| decode(key, v)).transpose()
    }

    /// A copy of all the session's values (empty if there is no session).
    pub async fn values(&self) -> Result<Data, SessionError> {
        let state = self.loaded().await?;
        Ok(state
            .current
            .as_ref()
            .map(|c| c.record.data.clone())
            .unwrap_or_default())
    }

    /// Sets `key` to `value`, creating the session if there is none.
    pub async fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), SessionError> {
        let value = encode(key, &value)?;
        self.change(Change::Insert(key.to_owned(), value)).await
    }

    /// Removes `key`. Returns whether it was there.
    pub async fn remove(&self, key: &str) -> Result<bool, SessionError> {
        let mut state = self.loaded().await?;
        let present = state
            .current
            .as_ref()
            .is_some_and(|c| c.record.data.contains_key(key));
        if state.current.is_some() {
            state
                .change(
                    self.store(),
                    &self.inner.policy,
                    Change::Remove(key.to_owned()),
                )
                .await?;
        }
        Ok(present)
    }

    /// Removes every value; the session itself (and its user) stays.
    pub async fn clear(&self) -> Result<(), SessionError> {
        let mut state = self.loaded().await?;
        if state.current.is_some() {
            state
                .change(self.store(), &self.inner.policy, Change::Clear)
                .await?;
        }
        Ok(())
    }

    /// Read-modify-write of `key`: stores `f(current value)` and returns it.
    ///
    /// If another request saves the session before this one, `f` runs again
    /// on that request's value before saving, so concurrent updates compose
    /// (100 concurrent increments add 100). `f` may thus run more than once:
    /// keep it free of side effects. The value returned is the one computed
    /// now; call [`save`](Session::save) and then [`get`](Session::get) for
    /// the value as finally stored.
    pub async fn update<T, F>(&self, key: &str, f: F) -> Result<T, SessionError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(Option<T>) -> T + Send + Sync + 'static,
    {
        let name = key.to_owned();
        let updater = move |old: Option<&Value>| {
            let old = old.map(|v| decode::<T>(&name, v)).transpose()?;
            encode(&name, &f(old))
        };
        let mut state = self.state().await;
        state
            .change(
                self.store(),
                &self.inner.policy,
                Change::Update(key.to_owned(), Arc::new(updater)),
            )
            .await?;
        let value = state.current.as_ref().and_then(|c| c.record.data.get(key));
        match value {
            Some(v) => decode(key, v),
            None => Err(SessionError::Decode {
                key: key.to_owned(),
                reason: "the value vanished".to_owned(),
            }),
        }
    }

    /// The session's id; `None` if there is no session yet.
    pub async fn id(&self) -> Result<Option<SessionId>, SessionError> {
        Ok(self.loaded().await?.current.as_ref().map(|c| c.record.id))
    }

    /// The user the session belongs to; `None` if anonymous or absent.
    pub async fn user(&self) -> Result<Option<String>, SessionError> {
        let state = self.loaded().await?;
        Ok(state.current.as_ref().and_then(|c| c.record.user.clone()))
    }

    /// The session's kind (`"web"`, `"api"`, ...). A session not created
    /// yet has the kind it will be created with: the layer's
    /// [`kind`](crate::SessionLayer::kind).
    pub async fn kind(&self) -> Result<String, SessionError> {
        let state = self.loaded().await?;
        Ok(match state.current.as_ref() {
            Some(c) => c.record.kind.clone(),
            None => self.inner.policy.kind.clone(),
        })
    }

    /// A copy of the whole record (user, kind, times, deadlines, values);
    /// `None` if there is no session.
    pub async fn record(&self) -> Result<Option<Record>, SessionError> {
        let state = self.loaded().await?;
        Ok(state.current.as_ref().map(|c| c.record.clone()))
    }

    /// Binds the session to `user` under a new token.
    ///
    /// The new token carries the user's routing tag and replaces the
    /// client's, which also defeats session fixation. Values:
    ///
    /// - from an anonymous session, or a session of the same user, they are
    ///   kept (a cart survives signing in);
    /// - from a session of another user, they are not: the new user starts
    ///   with an empty session.
    ///
    /// The new session is stored when the response is ready (or at
    /// [`save`](Session::save)), then the old one is deleted with a
    /// compare-and-delete (its hash slot differs from the user's when it was
    /// anonymous, so that is a second call). If another request changed the
    /// old session meanwhile, its newer values are carried into the new one
    /// first; if another request ended it meanwhile (logout, revocation),
    /// the new session is deleted too and the save fails with
    /// [`SessionError::Ended`]: an ended session never lives on under a new
    /// token.
    pub async fn login(&self, user: impl Into<String>) -> Result<(), SessionError> {
        let mut state = self.state().await;
        state
            .login(self.store(), &self.inner.policy, user.into())
            .await
    }

    /// Deletes the session now and tells the client to drop its token.
    /// Writes after it start a new anonymous session.
    pub async fn logout(&self) -> Result<(), SessionError> {
        self.state().await.end(self.store()).await
    }

    /// Gives the session a new token (and id), keeping everything else.
    ///
    /// The move is one atomic store call when the response is ready (in the
    /// same hash slot): the old token stops working exactly as the new one
    /// starts, and if the session was revoked meanwhile it stays revoked.
    pub async fn cycle_id(&self) -> Result<(), SessionError> {
        self.state().await.renew(self.store()).await
    }

    /// Sets this session's idle timeout (`None`: no idle expiry), for
    /// instance a longer one for "remember me".
    pub async fn set_idle_timeout(&self, idle: Option<Duration>) -> Result<(), SessionError> {
        self.change(Change::IdleTimeout(idle)).await
    }

    /// Sets this session's absolute lifetime, counted from its creation
    /// (`None`: no absolute deadline).
    pub async fn set_lifetime(&self, lifetime: Option<Duration>) -> Result<(), SessionError> {
        self.change(Change::Lifetime(lifetime)).await
    }

    /// Names this session for "your devices" listings (`None` removes the
    /// name), for instance from the user agent at login. Stored inside the
    /// sealed record, at most [`MAX_METADATA_VALUE`] bytes.
    ///
    /// ```
    /// # use tower_redis_sessions::{Session, SessionError};
    /// async fn login(session: Session, user: String, agent: String) -> Result<(), SessionError> {
    ///     session.login(user).await?;
    ///     session.set_label(Some("Firefox on Linux".to_owned())).await?;
    ///     session.set_metadata("user_agent", agent).await
    /// }
    /// ```
    pub async fn set_label(&self, label: Option<String>) -> Result<(), SessionError> {
        if let Some(label) = &label {
            check_len("label", label, MAX_METADATA_VALUE)?;
        }
        self.change(Change::Label(label)).await
    }

    /// Sets a small text field about this session (user agent, sign-in
    /// method, ...) that [`sessions`](Session::sessions) lists with it.
    /// Stored inside the sealed record; at most
    /// [`MAX_METADATA_FIELDS`](crate::MAX_METADATA_FIELDS) fields, keys up
    /// to [`MAX_METADATA_KEY`] and values up to [`MAX_METADATA_VALUE`] bytes.
    pub async fn set_metadata(
        &self,
        key: &str,
        value: impl Into<String>,
    ) -> Result<(), SessionError> {
        let value = value.into();
        check_len(key, key, MAX_METADATA_KEY)?;
        check_len(key, &value, MAX_METADATA_VALUE)?;
        self.change(Change::Metadata(key.to_owned(), Some(value)))
            .await
    }

    /// Removes a metadata field.
    pub async fn remove_metadata(&self, key: &str) -> Result<(), SessionError> {
        self.change(Change::Metadata(key.to_owned(), None)).await
    }

    /// The sessions of this session's user (all kinds), the current one
    /// marked. [`SessionError::NotLoggedIn`] if the session has no user.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, SessionError> {
        let (user, id) = self.owner().await?;
        let records = self.store().list(&user, None).await?;
        Ok(records.iter().map(|r| SessionInfo::new(r, id)).collect())
    }

    /// Deletes one of the user's sessions by id. Returns whether it was one
    /// of theirs. Revoking the current session logs it out.
    pub async fn revoke(&self, id: &SessionId) -> Result<bool, SessionError> {
        let (user, current) = self.owner().await?;
        if current == Some(*id) {
            self.logout().await?;
            return Ok(true);
        }
        Ok(self.store().revoke(&user, id).await?)
    }

    /// Deletes all of the user's sessions except this one ("log out
    /// everywhere else"), of every kind. Returns how many were deleted;
    /// their in-flight writes find them gone and are not saved.
    pub async fn revoke_others(&self) -> Result<u64, SessionError> {
        self.revoke_others_where(None).await
    }

    /// Deletes the user's other sessions of one kind only: for instance
    /// "log out every other browser" while the user's `"api"` sessions
    /// (tokens of scripts and apps) stay.
    ///
    /// ```
    /// # use tower_redis_sessions::{Session, SessionError};
    /// async fn log_out_other_browsers(session: Session) -> Result<String, SessionError> {
    ///     let ended = session.revoke_others_of_kind("web").await?;
    ///     Ok(format!("{ended} other browser sessions ended"))
    /// }
    /// ```
    pub async fn revoke_others_of_kind(&self, kind: &str) -> Result<u64, SessionError> {
        self.revoke_others_where(Some(kind)).await
    }

    async fn revoke_others_where(&self, kind: Option<&str>) -> Result<u64, SessionError> {
        let state = self.loaded().await?;
        let current = state.current.as_ref().filter(|c| c.record.is_stored());
        let user = state
            .current
            .as_ref()
            .and_then(|c| c.record.user.clone())
            .ok_or(SessionError::NotLoggedIn)?;
        let keep = current.map(|c| &c.token);
        Ok(self.store().revoke_all(&user, kind, keep).await?)
    }

    /// Saves the changes now instead of when the response is ready (merging
    /// with concurrent writers as usual). Nothing happens if nothing changed.
    pub async fn save(&self) -> Result<(), SessionError> {
        let mut state = self.state().await;
        state.commit(self.store(), &self.inner.policy).await
    }

    async fn owner(&self) -> Result<(String, Option<SessionId>), SessionError> {
        let state = self.loaded().await?;
        let current = state.current.as_ref();
        let user = current
            .and_then(|c| c.record.user.clone())
            .ok_or(SessionError::NotLoggedIn)?;
        Ok((user, current.map(|c| c.record.id)))
    }

    /// Whether the request touched its session at all.
    pub(crate) fn was_used(&self) -> bool {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// Called when the response is ready: saves (unless `save` is false, for
    /// a failed response) and says what to tell the client.
    pub(crate) async fn finish(&self, save: bool) -> Result<Option<TokenUpdate>, SessionError> {
        let mut state = self.inner.state.lock().await;
        if save {
            state.commit(self.store(), &self.inner.policy).await?;
        }
        Ok(state.token_update(self.store().now()))
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

fn check_len(key: &str, text: &str, max: usize) -> Result<(), SessionError> {
    if text.len() > max {
        return Err(SessionError::Encode {
            key: key.to_owned(),
            reason: format!("{} bytes, over the limit of {max}", text.len()),
        });
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(key: &str, value: &Value) -> Result<T, SessionError> {
    value.deserialized().map_err(|e| SessionError::Decode {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Value, SessionError> {
    Value::serialized(value).map_err(|e| SessionError::Encode {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}
