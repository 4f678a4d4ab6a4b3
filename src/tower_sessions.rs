//! A store for [tower-sessions] 0.14 (and so for [axum-login] 0.17 and 0.18):
//! [`TowerSessionsStore`], backed by this crate's Redis connections and
//! function library. Feature `tower-sessions`.
//!
//! [tower-sessions]: https://docs.rs/tower-sessions/0.14
//! [axum-login]: https://docs.rs/axum-login/0.18
//!
//! What it keeps, compared with a plain Redis store:
//!
//! - **Redis never sees the session id.** A record lives under
//!   `P{G}:t:<base64url(SHA-256(id))>` (`P` = [`StoreConfig::prefix`], `G` =
//!   two hex digits routing the key to a hash slot); the sealed record does
//!   not contain the id either.
//! - **Records are sealed** with the [`Keyring`](crate::Keyring) of the
//!   [`StoreConfig`]: signed (HMAC-SHA256), encrypted with
//!   [`Keyring::encrypt_records`](crate::Keyring::encrypt_records), bound to
//!   their key (a blob copied under another session's key does not open),
//!   at most [`StoreConfig::max_sealed_size`] bytes. A blob that does not
//!   verify loads as no session.
//! - **`create` never overwrites**: it writes only if the key is free, and
//!   on a collision draws a new [`Id`] and tries again (what tower-sessions
//!   0.12.1's fix for session-id collisions asks of stores).
//! - **No resurrection**: `save` writes only while the session exists, so a
//!   session deleted (logout, revocation) or expired meanwhile stays gone
//!   whatever a request still in flight saves.
//! - **Expiry** is the record's `expiry_date` (`PEXPIREAT`): Redis drops
//!   the key by itself, and a record whose `expiry_date` has passed (by
//!   [`StoreConfig::clock`]) is not stored (`create` writes nothing, `save`
//!   ends the session) and never loads.
//! - **One round trip per operation**: each of `create`, `save`, `load`,
//!   `delete`, listing and revocation is one `FCALL`.
//! - **Redis Cluster**: every call touches one hash slot.
//! - **A user index** (opt-in): with [`with_user_index`] or
//!   [`with_axum_login_index`], the sessions of a user can be listed
//!   ([`list_user_sessions`]) and revoked ([`revoke_user_sessions`],
//!   [`revoke_user_session`]). A user keeps at most
//!   [`StoreConfig::max_sessions_per_user`] live sessions: a login beyond
//!   ends the ones closest to expiry, in the same call.
//!
//! What it cannot keep: tower-sessions saves whole records, so two
//! concurrent requests of one session each write their own copy and the
//! last write wins. The no-lost-update guarantee (optimistic locking and
//! merging) needs this crate's own [`Session`](crate::Session).
//!
//! [`with_user_index`]: TowerSessionsStore::with_user_index
//! [`with_axum_login_index`]: TowerSessionsStore::with_axum_login_index
//! [`list_user_sessions`]: TowerSessionsStore::list_user_sessions
//! [`revoke_user_sessions`]: TowerSessionsStore::revoke_user_sessions
//! [`revoke_user_session`]: TowerSessionsStore::revoke_user_session
//!
//! # The user index on Redis Cluster
//!
//! A call of a Redis function stays within one hash slot, so a session can
//! enter its user's index only if its key shares the user's slot. The
//! routing digits `G` of a key come from the hash of the id, and
//! `create` draws, for a record that already names a user, an id whose
//! digits are the user's (256 SHA-256 draws on average, some tens of
//! microseconds; the id keeps 120 random bits, and the first byte of the
//! id's SHA-256, which anyone holding the cookie can compute, is the same
//! for all of a user's sessions, as the tag of this crate's own tokens is).
//! There are 256 such routes, spread over the cluster's slots. axum-login
//! logs in by cycling the id
//! (`Session::cycle_id`), so its login always goes through `create` with
//! the user in the record: on a cluster every axum-login session is
//! indexed. A session that gains a user by a plain `save` (an app that
//! writes the user without cycling the id) keeps its key: on a single Redis
//! it is indexed all the same; on a cluster it is stored but not indexed
//! (not listed, not revoked by user), with one warning in the log.
//! Cycle the id at login (as axum-login does) and this never happens.
//!
//! # Errors and 503
//!
//! Store errors reach tower-sessions as
//! [`session_store::Error`]: an unreachable, slow or saturated Redis (see
//! [`StoreError::is_unavailable`]) as `Backend` with a message starting
//! with [`UNAVAILABLE`] (test it with [`is_unavailable`]), a record over the
//! size limit as `Encode`, anything else as `Backend`. tower-sessions
//! itself answers **500** when its end-of-request save fails, and
//! axum-login answers 500 when it cannot load the session. To answer
//! **503** for an outage instead, put [`StoreOutageLayer`] outside the
//! session layer; in handlers, match `tower_sessions::session::Error::Store`
//! with [`is_unavailable`].
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use tower_redis_sessions::tower_sessions::StoreOutageLayer;
//! use tower_redis_sessions::{Keyring, RedisStore, StoreConfig};
//! use tower_sessions::SessionManagerLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = StoreConfig::new(Keyring::new(std::env::var("SESSION_SECRET")?)?).prefix("app:");
//! let store = RedisStore::builder(config)
//!     .connect_tower_sessions("redis://127.0.0.1:6379")
//!     .await?
//!     .with_axum_login_index();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(SessionManagerLayer::new(store))
//!     .layer(StoreOutageLayer::new());
//! # Ok(()) }
//! ```

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, SessionStore};

use crate::envelope::Codec;
use crate::record::Millis;
use crate::store::{Clock, RedisStore, RedisStoreBuilder, StoreConfig, StoreError};

/// The key axum-login (0.17, 0.18) writes its session data under, unless
/// the app chose another with `AuthManagerLayerBuilder::with_data_key`.
pub const AXUM_LOGIN_DATA_KEY: &str = "axum-login.data";

/// How the message of a `Backend` error for an unavailable store begins.
pub const UNAVAILABLE: &str = "session store unavailable: ";

/// How many ids `create` draws at most before it gives up (each collision
/// with an existing session costs one more call).
const CREATE_ATTEMPTS: usize = 8;

/// How many ids are drawn at most to find one of a user's routing digits
/// (expected 256; failing all of them has probability (255/256)^65536).
const ROUTE_DRAWS: usize = 1 << 16;

type UserHook = Arc<dyn Fn(&Record) -> Option<String> + Send + Sync>;

/// A tower-sessions [`SessionStore`] in Redis or Redis Cluster (see the
/// [module docs](self)). Cheap to clone: clones share connections.
///
/// Made by [`RedisStoreBuilder::connect_tower_sessions`] or
/// [`RedisStoreBuilder::connect_tower_sessions_cluster`], with the
/// builder's connection settings and [`StoreConfig`] (key prefix, keyring,
/// size limit, clock, [`StoreConfig::max_listed`]).
#[derive(Clone)]
pub struct TowerSessionsStore {
    inner: Arc<Inner>,
    user_of: Option<UserHook>,
}

struct Inner {
    redis: RedisStore,
    codec: Codec,
    prefix: String,
    clock: Clock,
    max_listed: usize,
    /// [`StoreConfig::max_sessions_per_user`], as the text sent to Redis.
    max_sessions_per_user: String,
    cluster: bool,
    warned_unindexed: AtomicBool,
}

/// A session of a user, as [`TowerSessionsStore::list_user_sessions`]
/// returns it. It carries no session id (the id is the credential the
/// cookie carries): name it by its [`handle`](UserSession::handle).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct UserSession {
    /// A public name of the session: base64url of SHA-256 of its id (what
    /// [`session_handle`] computes). Revoke it with
    /// [`TowerSessionsStore::revoke_user_session`].
    pub handle: String,
    /// When the session expires.
    pub expiry_date: OffsetDateTime,
    /// The session's data.
    pub data: HashMap<String, serde_json::Value>,
}

/// The public name of the session `id`: base64url of SHA-256 of its 16
/// bytes (little-endian, as tower-sessions encodes it), as in
/// [`UserSession::handle`] and the Redis key.
pub fn session_handle(id: &Id) -> String {
    URL_SAFE_NO_PAD.encode(id_hash(id))
}

fn id_hash(id: &Id) -> [u8; 32] {
    Sha256::digest(id.0.to_le_bytes()).into()
}

/// The user of an axum-login session: the `user_id` axum-login (0.17,
/// 0.18) keeps under [`AXUM_LOGIN_DATA_KEY`], as text (a JSON string as
/// it is, any other id as its JSON form, so `42` names user `"42"`).
/// `None` for a session nobody is logged in to.
pub fn axum_login_user(record: &Record) -> Option<String> {
    let user = record.data.get(AXUM_LOGIN_DATA_KEY)?.get("user_id")?;
    match user {
        serde_json::Value::Null => None,
        serde_json::Value::String(user) => Some(user.clone()),
        other => Some(other.to_string()),
    }
}

/// Whether a tower-sessions store error means the store is unreachable,
/// slow or saturated (answer 503 and retry later), as opposed to a fault
/// (500).
pub fn is_unavailable(error: &session_store::Error) -> bool {
    matches!(error, session_store::Error::Backend(message) if message.starts_with(UNAVAILABLE))
}

impl RedisStoreBuilder {
    /// Connects to the single Redis at `url` (as
    /// [`connect`](RedisStoreBuilder::connect)) for tower-sessions. Its
    /// calls do not go through the near cache, so none is made.
    pub async fn connect_tower_sessions(self, url: &str) -> Result<TowerSessionsStore, StoreError> {
        let config = self.store_config().clone();
        let redis = self
            .near_cache(crate::store::NearCache::off())
            .connect(url)
            .await?;
        Ok(TowerSessionsStore::new(redis, config, false))
    }

    /// Connects to the Redis Cluster reachable at any of `urls` (as
    /// [`connect_cluster`](RedisStoreBuilder::connect_cluster)) for
    /// tower-sessions, without a near cache.
    pub async fn connect_tower_sessions_cluster<I, S>(
        self,
        urls: I,
    ) -> Result<TowerSessionsStore, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let config = self.store_config().clone();
        let redis = self
            .near_cache(crate::store::NearCache::off())
            .connect_cluster(urls)
            .await?;
        Ok(TowerSessionsStore::new(redis, config, true))
    }
}

#[derive(Serialize)]
struct BodyRef<'a> {
    d: &'a HashMap<String, serde_json::Value>,
    /// Expiry: Unix seconds and nanoseconds.
    s: i64,
    n: u32,
}

#[derive(Deserialize)]
struct Body {
    d: HashMap<String, serde_json::Value>,
    s: i64,
    n: u32,
}

impl TowerSessionsStore {
    fn new(redis: RedisStore, config: StoreConfig, cluster: bool) -> TowerSessionsStore {
        TowerSessionsStore {
            inner: Arc::new(Inner {
                redis,
                codec: Codec::new(config.keyring, config.max_sealed_size),
                prefix: config.prefix,
                clock: config.clock,
                max_listed: config.max_listed,
                max_sessions_per_user: config.max_sessions_per_user.to_string(),
                cluster,
                warned_unindexed: AtomicBool::new(false),
            }),
            user_of: None,
        }
    }

    /// Keeps an index of each user's sessions: `user_of` names the user a
    /// record belongs to (`None`: nobody's). Call it before handing the
    /// store to a layer (the store's clones made before keep no index).
    ///
    /// ```no_run
    /// # async fn run(store: tower_redis_sessions::tower_sessions::TowerSessionsStore) {
    /// let store = store.with_user_index(|record| {
    ///     record.data.get("user").and_then(|u| u.as_str()).map(str::to_owned)
    /// });
    /// # }
    /// ```
    pub fn with_user_index(
        self,
        user_of: impl Fn(&Record) -> Option<String> + Send + Sync + 'static,
    ) -> TowerSessionsStore {
        TowerSessionsStore {
            inner: self.inner,
            user_of: Some(Arc::new(user_of)),
        }
    }

    /// Keeps an index of each user's sessions, naming the user as
    /// axum-login does ([`axum_login_user`]).
    pub fn with_axum_login_index(self) -> TowerSessionsStore {
        self.with_user_index(axum_login_user)
    }

    /// The name of the function library in Redis (see
    /// [`RedisStore::library_name`]).
    pub fn library_name(&self) -> &str {
        self.inner.redis.library_name()
    }

    /// The live sessions of `user` (as the index hook names users), the
    /// earliest expiry first, at most [`StoreConfig::max_listed`]. Empty
    /// without an index. One round trip.
    pub async fn list_user_sessions(&self, user: &str) -> Result<Vec<UserSession>, StoreError> {
        if self.user_of.is_none() {
            return Ok(Vec::new());
        }
        let index = self.inner.index_key(user).1;
        let now = self.inner.now();
        let limit = self.inner.max_listed.to_string();
        let rows: Vec<(String, Vec<u8>)> = self
            .inner
            .redis
            .call_function(
                "ts_list",
                &[&index],
                &[now.to_string().as_bytes(), limit.as_bytes()],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (key, blob) in rows {
            let Some((_, handle)) = key.rsplit_once(":t:") else {
                continue;
            };
            if let Some((data, expiry_date)) = self.inner.open(&key, &blob, now) {
                out.push(UserSession {
                    handle: handle.to_owned(),
                    expiry_date,
                    data,
                });
            }
        }
        Ok(out)
    }

    /// Deletes the sessions of `user`, except the session `except` (the
    /// current one, say). Returns how many were deleted. A revoked session
    /// loads as none from then on, and a save still in flight for it does
    /// not bring it back. One round trip.
    pub async fn revoke_user_sessions(
        &self,
        user: &str,
        except: Option<&Id>,
    ) -> Result<u64, StoreError> {
        let keep = except
            .map(|id| self.inner.session_key(id))
            .unwrap_or_default();
        self.revoke(user, &keep, "").await
    }

    /// Deletes the session of `user` named `handle` (from
    /// [`UserSession::handle`] or [`session_handle`]), if it is theirs.
    /// `true` if it was. One round trip (none for a malformed handle).
    pub async fn revoke_user_session(&self, user: &str, handle: &str) -> Result<bool, StoreError> {
        let Some(key) = self.inner.key_of_handle(handle) else {
            return Ok(false);
        };
        Ok(self.revoke(user, "", &key).await? > 0)
    }

    /// The index `record` enters, if the hook names its user.
    fn index_for(&self, record: &Record) -> Option<(u8, String)> {
        let user = (self.user_of.as_ref()?)(record)?;
        Some(self.inner.index_key(&user))
    }

    async fn revoke(&self, user: &str, keep: &str, only: &str) -> Result<u64, StoreError> {
        if self.user_of.is_none() {
            return Ok(0);
        }
        let index = self.inner.index_key(user).1;
        let now = self.inner.now().to_string();
        self.inner
            .redis
            .call_function(
                "ts_revoke",
                &[&index],
                &[now.as_bytes(), keep.as_bytes(), only.as_bytes()],
            )
            .await
    }
}

impl Inner {
    fn now(&self) -> Millis {
        (self.clock)()
    }

    /// `P{G}:t:<base64url(SHA-256(id))>`, G the first byte of the hash.
    fn session_key(&self, id: &Id) -> String {
        let hash = id_hash(id);
        self.key_of_hash(&hash)
    }

    fn key_of_hash(&self, hash: &[u8; 32]) -> String {
        format!(
            "{}{{{:02x}}}:t:{}",
            self.prefix,
            hash[0],
            URL_SAFE_NO_PAD.encode(hash)
        )
    }

    fn key_of_handle(&self, handle: &str) -> Option<String> {
        let bytes = URL_SAFE_NO_PAD.decode(handle).ok()?;
        let hash: [u8; 32] = bytes.try_into().ok()?;
        Some(self.key_of_hash(&hash))
    }

    /// The routing byte of `user` and the name of their index:
    /// `P{G}:tu:<keyed hash of the user>`.
    fn index_key(&self, user: &str) -> (u8, String) {
        let (_, hash) = self.codec.keyring().user_route(user);
        let key = format!(
            "{}{{{:02x}}}:tu:{}",
            self.prefix,
            hash[0],
            URL_SAFE_NO_PAD.encode(hash)
        );
        (hash[0], key)
    }

    fn seal(&self, key: &str, record: &Record) -> Result<Vec<u8>, session_store::Error> {
        let body = serde_json::to_vec(&BodyRef {
            d: &record.data,
            s: record.expiry_date.unix_timestamp(),
            n: record.expiry_date.nanosecond(),
        })
        .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        let blob = self.codec.seal_bytes(key, &body).ok_or_else(|| {
            session_store::Error::Encode("the session record could not be sealed".to_owned())
        })?;
        let max = self.codec.max_sealed();
        if blob.len() > max {
            return Err(session_store::Error::Encode(
                StoreError::TooLarge {
                    size: blob.len(),
                    max,
                }
                .to_string(),
            ));
        }
        Ok(blob)
    }

    /// The data and expiry in a blob read from `key`; `None` (with a
    /// warning naming neither id nor key) if it does not verify or decode,
    /// or has expired.
    fn open(
        &self,
        key: &str,
        blob: &[u8],
        now: Millis,
    ) -> Option<(HashMap<String, serde_json::Value>, OffsetDateTime)> {
        let body = match self.codec.open_bytes(blob, key) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(%error, "stored tower-sessions record rejected; treating it as no session");
                return None;
            }
        };
        let Ok(body) = serde_json::from_slice::<Body>(&body) else {
            tracing::warn!(
                "stored tower-sessions record does not decode; treating it as no session"
            );
            return None;
        };
        let expiry = OffsetDateTime::from_unix_timestamp(body.s)
            .ok()?
            .replace_nanosecond(body.n)
            .ok()?;
        if expiry_millis(expiry) <= now {
            return None;
        }
        Some((body.d, expiry))
    }

    /// An id whose key shares the slot of the user routed by `route`.
    fn routed_id(route: u8) -> Result<Id, session_store::Error> {
        let mut batch = [0u8; 16 * 64];
        for _ in 0..ROUTE_DRAWS / 64 {
            getrandom::fill(&mut batch)
                .map_err(|e| backend(StoreError::Random(crate::token::RandomError(e))))?;
            for chunk in batch.chunks_exact(16) {
                let mut bytes = [0u8; 16];
                bytes.copy_from_slice(chunk);
                let id = Id(i128::from_le_bytes(bytes));
                if id_hash(&id)[0] == route {
                    return Ok(id);
                }
            }
        }
        // 65,536 draws missed a 1-in-256 route: the generator is broken.
        Err(backend(StoreError::Invalid(
            "no session id of the user's slot found",
        )))
    }

    fn random_id() -> Result<Id, session_store::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| backend(StoreError::Random(crate::token::RandomError(e))))?;
        Ok(Id(i128::from_le_bytes(bytes)))
    }

    fn nonce() -> Result<String, session_store::Error> {
        let n = getrandom::u64()
            .map_err(|e| backend(StoreError::Random(crate::token::RandomError(e))))?;
        Ok(format!("{n:016x}"))
    }

    async fn call_i64(
        &self,
        function: &str,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<i64, session_store::Error> {
        self.redis
            .call_function(function, keys, args)
            .await
            .map_err(backend)
    }
}

/// Milliseconds since the Unix epoch, clamped to `0..=i64::MAX`.
fn expiry_millis(at: OffsetDateTime) -> Millis {
    let ms = at.unix_timestamp_nanos().div_euclid(1_000_000);
    u64::try_from(ms.clamp(0, i128::from(i64::MAX))).unwrap_or(0)
}

/// A store error as tower-sessions takes it (see the [module docs](self)).
fn backend(error: StoreError) -> session_store::Error {
    if error.is_unavailable() {
        // Outside a `StoreOutageLayer`'s scope there is nothing to mark.
        let _ = OUTAGE.try_with(|outage| outage.set(true));
        let message = match error {
            // Its own text already starts the same way.
            StoreError::Unavailable(reason) => reason,
            other => other.to_string(),
        };
        return session_store::Error::Backend(format!("{UNAVAILABLE}{message}"));
    }
    match error {
        StoreError::TooLarge { .. } => session_store::Error::Encode(error.to_string()),
        other => session_store::Error::Backend(other.to_string()),
    }
}

#[async_trait]
impl SessionStore for TowerSessionsStore {
    /// Stores a new session, never over an existing one: on a collision a
    /// new id is drawn (at most 8 attempts, one round trip each). For a
    /// record naming a user, the id is drawn in the user's slot. A record
    /// whose expiry has passed is not stored.
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let inner = &*self.inner;
        let index = self.index_for(record);
        let now = inner.now().to_string();
        let exp = expiry_millis(record.expiry_date).to_string();
        if let Some((route, _)) = &index
            && id_hash(&record.id)[0] != *route
        {
            record.id = Inner::routed_id(*route)?;
        }
        for _ in 0..CREATE_ATTEMPTS {
            let key = inner.session_key(&record.id);
            let blob = inner.seal(&key, record)?;
            let nonce = Inner::nonce()?;
            let mut keys = vec![key.as_str()];
            if let Some((_, index)) = &index {
                keys.push(index);
            }
            let args: [&[u8]; 5] = [
                &blob,
                exp.as_bytes(),
                now.as_bytes(),
                nonce.as_bytes(),
                inner.max_sessions_per_user.as_bytes(),
            ];
            match inner.call_i64("ts_create", &keys, &args).await? {
                0 => {
                    record.id = match &index {
                        Some((route, _)) => Inner::routed_id(*route)?,
                        None => Inner::random_id()?,
                    };
                }
                _ => return Ok(()),
            }
        }
        Err(session_store::Error::Backend(
            "no free session id found: every id drawn is taken".to_owned(),
        ))
    }

    /// Saves an existing session; a session that no longer exists (deleted,
    /// revoked, expired) stays gone. A record whose expiry has passed ends
    /// the session.
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let inner = &*self.inner;
        let key = inner.session_key(&record.id);
        let mut index = self.index_for(record);
        if let Some((route, _)) = &index
            && inner.cluster
            && id_hash(&record.id)[0] != *route
        {
            index = None;
            if !inner.warned_unindexed.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "a session gained its user without a new id (Session::cycle_id): on Redis \
                     Cluster it cannot enter the user's index, so it is neither listed nor \
                     revoked with the user's sessions"
                );
            }
        }
        let blob = inner.seal(&key, record)?;
        let mut keys = vec![key.as_str()];
        if let Some((_, index)) = &index {
            keys.push(index);
        }
        let exp = expiry_millis(record.expiry_date).to_string();
        let now = inner.now().to_string();
        let args: [&[u8]; 4] = [
            &blob,
            exp.as_bytes(),
            now.as_bytes(),
            inner.max_sessions_per_user.as_bytes(),
        ];
        inner.call_i64("ts_save", &keys, &args).await?;
        Ok(())
    }

    /// The session `id` names, `None` if there is none, it has expired, or
    /// its stored form does not verify.
    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let inner = &*self.inner;
        let key = inner.session_key(id);
        let now = inner.now();
        let blob: Option<Vec<u8>> = inner
            .redis
            .call_function("ts_load", &[&key], &[])
            .await
            .map_err(backend)?;
        Ok(blob
            .and_then(|blob| inner.open(&key, &blob, now))
            .map(|(data, expiry_date)| Record {
                id: *id,
                data,
                expiry_date,
            }))
    }

    /// Deletes the session `id` names (and its index entry).
    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let key = self.inner.session_key(id);
        self.inner.call_i64("ts_delete", &[&key], &[]).await?;
        Ok(())
    }
}

impl fmt::Debug for TowerSessionsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerSessionsStore")
            .field("library", &self.library_name())
            .field("prefix", &self.inner.prefix)
            .field("cluster", &self.inner.cluster)
            .field("user_index", &self.user_of.is_some())
            .finish_non_exhaustive()
    }
}

tokio::task_local! {
    /// Set by the store when it met an outage within a `StoreOutageLayer`.
    static OUTAGE: Cell<bool>;
}

/// A tower layer answering **503 Service Unavailable** instead of 500 when
/// a request failed because the [`TowerSessionsStore`] was unavailable
/// (tower-sessions and axum-login answer 500 for any store error). Put it
/// outside the session layer (`.layer(SessionManagerLayer::new(store))`
/// first, then `.layer(StoreOutageLayer::new())`). It changes only 500
/// responses of requests during which the store reported an outage.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreOutageLayer;

impl StoreOutageLayer {
    /// The layer.
    pub fn new() -> StoreOutageLayer {
        StoreOutageLayer
    }
}

impl<S> tower::Layer<S> for StoreOutageLayer {
    type Service = StoreOutage<S>;

    fn layer(&self, inner: S) -> StoreOutage<S> {
        StoreOutage { inner }
    }
}

/// The service of [`StoreOutageLayer`].
#[derive(Clone, Debug)]
pub struct StoreOutage<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for StoreOutage<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(OUTAGE.scope(Cell::new(false), async move {
            let mut response = future.await?;
            if OUTAGE.try_with(Cell::get).unwrap_or(false)
                && response.status() == http::StatusCode::INTERNAL_SERVER_ERROR
            {
                *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok(response)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(data: serde_json::Value) -> Record {
        Record {
            id: Id(42),
            data: serde_json::from_value(data).unwrap(),
            expiry_date: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn axum_login_users_are_named_as_text() {
        let of = |user| {
            axum_login_user(&record(
                serde_json::json!({AXUM_LOGIN_DATA_KEY: {"user_id": user, "auth_hash": [1]}}),
            ))
        };
        assert_eq!(of(serde_json::json!(42)).as_deref(), Some("42"));
        assert_eq!(of(serde_json::json!("alice")).as_deref(), Some("alice"));
        assert_eq!(
            of(serde_json::json!({"org": 1, "id": 2})).as_deref(),
            Some(r#"{"id":2,"org":1}"#)
        );
        assert_eq!(of(serde_json::Value::Null), None);
        assert_eq!(
            axum_login_user(&record(serde_json::json!({"other": 1}))),
            None
        );
    }

    #[test]
    fn handles_are_the_hash_in_the_key() {
        let id = Id(-7);
        let handle = session_handle(&id);
        assert_eq!(handle.len(), 43);
        assert_eq!(URL_SAFE_NO_PAD.decode(&handle).unwrap(), id_hash(&id));
    }

    #[test]
    fn expiry_millis_floors_and_clamps() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_999_999).unwrap();
        assert_eq!(expiry_millis(at), 1_700_000_000_123);
        assert_eq!(
            expiry_millis(OffsetDateTime::UNIX_EPOCH - time::Duration::days(1)),
            0
        );
    }

    #[test]
    fn routed_ids_land_on_the_route() {
        for route in [0u8, 7, 255] {
            let id = Inner::routed_id(route).unwrap();
            assert_eq!(id_hash(&id)[0], route);
        }
    }

    #[test]
    fn unavailable_is_told_by_the_message() {
        let outage = backend(StoreError::Unavailable("down".into()));
        assert!(is_unavailable(&outage));
        assert_eq!(outage.to_string(), "session store unavailable: down");
        let slow = backend(StoreError::Timeout(std::time::Duration::from_secs(1)));
        assert!(is_unavailable(&slow));
        let fault = backend(StoreError::Invalid("bad"));
        assert!(!is_unavailable(&fault));
        let big = backend(StoreError::TooLarge { size: 2, max: 1 });
        assert!(matches!(big, session_store::Error::Encode(_)));
    }

    #[test]
    fn sealed_bytes_open_only_under_their_binding_and_keys() {
        use crate::envelope::OpenError;
        use crate::keyring::Keyring;
        for encrypt in [false, true] {
            let keyring = Keyring::new([1u8; 32]).unwrap().encrypt_records(encrypt);
            let codec = Codec::new(keyring.clone(), 1024);
            let blob = codec.seal_bytes("k1", b"body").unwrap();
            assert_eq!(contains(&blob, b"body"), !encrypt);
            assert_eq!(&*codec.open_bytes(&blob, "k1").unwrap(), b"body");
            assert_eq!(codec.open_bytes(&blob, "k2"), Err(OpenError::BadMac));
            let stranger = Codec::new(Keyring::new([2u8; 32]).unwrap(), 1024);
            assert_eq!(stranger.open_bytes(&blob, "k1"), Err(OpenError::UnknownKey));
            let rotated = Codec::new(keyring.rotate([3u8; 32]).unwrap(), 1024);
            assert_eq!(&*rotated.open_bytes(&blob, "k1").unwrap(), b"body");
            let small = Codec::new(Keyring::new([1u8; 32]).unwrap(), 8);
            assert_eq!(small.open_bytes(&blob, "k1"), Err(OpenError::TooLarge));
            let mut flipped = blob.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            assert_eq!(codec.open_bytes(&flipped, "k1"), Err(OpenError::BadMac));
            assert_eq!(
                codec.open_bytes(&blob[..3], "k1"),
                Err(OpenError::Truncated)
            );
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }
}
