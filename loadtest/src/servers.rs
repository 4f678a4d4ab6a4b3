//! The same handlers, served three ways: through this crate, through
//! tower-sessions with its Redis store, and by hand over one multiplexed
//! connection (the floor).
//!
//! Routes (all `GET`):
//! - `/untouched`: the handler takes the session and does not use it;
//! - `/read`, `/sliding`: read one value of the session (`/sliding` is served
//!   by the servers configured for sliding expiry);
//! - `/write`: read a counter and write it back incremented;
//! - `/login`: a new session for a user, with the typical values;
//! - `/incr`: the library's read-modify-write of a counter (concurrent
//!   writers); `/counter`: its value.

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The typical session: a logged-in user and 10 values of 96 characters
/// (about 1 KiB encoded).
pub static VALUES: LazyLock<Vec<(String, String)>> = LazyLock::new(|| {
    (0..10)
        .map(|i| (format!("k{i}"), format!("{i:02}{}", "x".repeat(94))))
        .collect()
});

/// Users logging in rotate over this many ids.
const USERS: u64 = 1024;
static NEXT_USER: AtomicU64 = AtomicU64::new(0);

fn next_user() -> String {
    format!("user{}", NEXT_USER.fetch_add(1, Ordering::Relaxed) % USERS)
}

const IDLE: Duration = Duration::from_secs(24 * 3600);

pub mod ours {
    use super::*;
    use tower_redis_sessions::store::NearCache;
    use tower_redis_sessions::{
        Keyring, RedisStore, Session, SessionError, SessionLayer, StoreConfig,
    };

    /// A server of this crate. `touch` is the store's touch interval: the
    /// default (60 s) for the plain scenarios, zero for sliding expiry (every
    /// load extends the idle deadline).
    pub async fn app(
        url: &str,
        pool: usize,
        touch: Duration,
        near: NearCache,
    ) -> Result<Router, String> {
        let keyring = Keyring::new([42u8; 32]).map_err(|e| e.to_string())?;
        let config = StoreConfig::new(keyring)
            .prefix("bench:")
            .touch_interval(touch);
        let store = RedisStore::builder(config)
            .pool_size(pool)
            .near_cache(near)
            .connect(url)
            .await
            .map_err(|e| e.to_string())?;
        let layer = SessionLayer::new(store)
            .cookie(tower_redis_sessions::CookieConfig::default().secure(false))
            .idle_timeout(Some(IDLE));
        Ok(Router::new()
            .route("/untouched", get(untouched))
            .route("/read", get(read))
            .route("/sliding", get(read))
            .route("/write", get(write))
            .route("/login", get(login))
            .route("/incr", get(incr))
            .route("/counter", get(counter))
            .layer(layer))
    }

    async fn untouched(_session: Session) -> &'static str {
        "ok"
    }

    async fn read(session: Session) -> Result<String, SessionError> {
        let value: Option<String> = session.get("k0").await?;
        Ok(value.map_or(0, |v| v.len()).to_string())
    }

    async fn write(session: Session) -> Result<String, SessionError> {
        let n: u64 = session.get("n").await?.unwrap_or(0);
        session.insert("n", n + 1).await?;
        Ok((n + 1).to_string())
    }

    async fn login(session: Session) -> Result<&'static str, SessionError> {
        session.login(next_user()).await?;
        for (key, value) in VALUES.iter() {
            session.insert(key, value).await?;
        }
        Ok("ok")
    }

    async fn incr(session: Session) -> Result<String, SessionError> {
        let n = session
            .update("c", |n: Option<u64>| n.unwrap_or(0) + 1)
            .await?;
        Ok(n.to_string())
    }

    async fn counter(session: Session) -> Result<String, SessionError> {
        let n: Option<u64> = session.get("c").await?;
        Ok(n.unwrap_or(0).to_string())
    }
}

pub mod peer {
    use super::*;
    use tower_sessions::{Expiry, Session, SessionManagerLayer};
    use tower_sessions_redis_store::RedisStore;
    use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};

    /// A server of tower-sessions with tower-sessions-redis-store: `pool`
    /// fred connections, idle expiry of 24 h; `always_save` is its only way
    /// to slide that expiry (it saves the record on every request).
    pub async fn app(url: &str, pool: usize, always_save: bool) -> Result<Router, String> {
        let config = Config::from_url(url).map_err(|e| e.to_string())?;
        let pool = Pool::new(config, None, None, None, pool).map_err(|e| e.to_string())?;
        pool.init().await.map_err(|e| e.to_string())?;
        let idle = tower_sessions::cookie::time::Duration::seconds(IDLE.as_secs() as i64);
        let layer = SessionManagerLayer::new(RedisStore::new(pool))
            .with_secure(false)
            .with_expiry(Expiry::OnInactivity(idle))
            .with_always_save(always_save);
        Ok(Router::new()
            .route("/untouched", get(untouched))
            .route("/read", get(read))
            .route("/sliding", get(read))
            .route("/write", get(write))
            .route("/login", get(login))
            .route("/incr", get(incr))
            .route("/counter", get(counter))
            .layer(layer))
    }

    type Http<T> = std::result::Result<T, StatusCode>;

    fn fail(_: tower_sessions::session::Error) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    async fn untouched(_session: Session) -> &'static str {
        "ok"
    }

    async fn read(session: Session) -> Http<String> {
        let value: Option<String> = session.get("k0").await.map_err(fail)?;
        Ok(value.map_or(0, |v| v.len()).to_string())
    }

    async fn write(session: Session) -> Http<String> {
        let n: u64 = session.get("n").await.map_err(fail)?.unwrap_or(0);
        session.insert("n", n + 1).await.map_err(fail)?;
        Ok((n + 1).to_string())
    }

    async fn login(session: Session) -> Http<&'static str> {
        session.insert("user", next_user()).await.map_err(fail)?;
        for (key, value) in VALUES.iter() {
            session.insert(key, value).await.map_err(fail)?;
        }
        Ok("ok")
    }

    /// Its read-modify-write: get, then insert.
    async fn incr(session: Session) -> Http<String> {
        let n: u64 = session.get("c").await.map_err(fail)?.unwrap_or(0);
        session.insert("c", n + 1).await.map_err(fail)?;
        Ok((n + 1).to_string())
    }

    async fn counter(session: Session) -> Http<String> {
        let n: Option<u64> = session.get("c").await.map_err(fail)?;
        Ok(n.unwrap_or(0).to_string())
    }
}

pub mod floor {
    use super::*;
    use redis::aio::MultiplexedConnection;

    /// The sealed size of the typical session in this crate, give or take.
    const BLOB_LEN: usize = 1100;
    const IDLE_MS: u64 = IDLE.as_millis() as u64;

    #[derive(Clone)]
    struct Floor {
        conn: MultiplexedConnection,
        blob: Arc<[u8]>,
    }

    /// Only the Redis work a session needs, over one shared multiplexed
    /// connection: `GET` to read, `GETEX` to read and slide, `GET` + `SET`
    /// to write, `SET` to create. No sealing, no encoding, no locking.
    pub async fn app(url: &str) -> Result<Router, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let state = Floor {
            conn,
            blob: vec![b'x'; BLOB_LEN].into(),
        };
        Ok(Router::new()
            .route("/untouched", get(untouched))
            .route("/read", get(read))
            .route("/sliding", get(sliding))
            .route("/write", get(write))
            .route("/login", get(login))
            .route("/incr", get(incr))
            .route("/counter", get(counter))
            .with_state(state))
    }

    fn key(headers: &HeaderMap) -> Option<String> {
        let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
        cookies
            .split(';')
            .find_map(|c| c.trim().strip_prefix("sid="))
            .map(|id| format!("floor:{id}"))
    }

    fn fail(_: redis::RedisError) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    type Http<T> = std::result::Result<T, StatusCode>;

    async fn untouched() -> &'static str {
        "ok"
    }

    async fn read(State(mut f): State<Floor>, headers: HeaderMap) -> Http<String> {
        let key = key(&headers).ok_or(StatusCode::UNAUTHORIZED)?;
        let blob: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut f.conn)
            .await
            .map_err(fail)?;
        Ok(blob.map_or(0, |b| b.len()).to_string())
    }

    async fn sliding(State(mut f): State<Floor>, headers: HeaderMap) -> Http<String> {
        let key = key(&headers).ok_or(StatusCode::UNAUTHORIZED)?;
        let blob: Option<Vec<u8>> = redis::cmd("GETEX")
            .arg(&key)
            .arg("PX")
            .arg(IDLE_MS)
            .query_async(&mut f.conn)
            .await
            .map_err(fail)?;
        Ok(blob.map_or(0, |b| b.len()).to_string())
    }

    async fn write(State(mut f): State<Floor>, headers: HeaderMap) -> Http<&'static str> {
        let key = key(&headers).ok_or(StatusCode::UNAUTHORIZED)?;
        let blob: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut f.conn)
            .await
            .map_err(fail)?;
        let mut blob = blob.ok_or(StatusCode::NOT_FOUND)?;
        blob[0] = blob[0].wrapping_add(1);
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(blob)
            .arg("PX")
            .arg(IDLE_MS)
            .query_async(&mut f.conn)
            .await
            .map_err(fail)?;
        Ok("ok")
    }

    async fn login(State(mut f): State<Floor>) -> Http<Response> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let () = redis::cmd("SET")
            .arg(format!("floor:{id}"))
            .arg(&*f.blob)
            .arg("PX")
            .arg(IDLE_MS)
            .query_async(&mut f.conn)
            .await
            .map_err(fail)?;
        let cookie = HeaderValue::try_from(format!("sid={id}; Path=/; HttpOnly"))
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        Ok(([(header::SET_COOKIE, cookie)], "ok").into_response())
    }

    /// The counter is the first 8 bytes of the blob: `GET`, add one, `SET`.
    async fn incr(State(mut f): State<Floor>, headers: HeaderMap) -> Http<String> {
        let key = key(&headers).ok_or(StatusCode::UNAUTHORIZED)?;
        let blob: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut f.conn)
            .await
            .map_err(fail)?;
        let mut blob = blob.ok_or(StatusCode::NOT_FOUND)?;
        let n = counter_of(&blob) + 1;
        blob[..8].copy_from_slice(&n.to_le_bytes());
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(blob)
            .arg("PX")
            .arg(IDLE_MS)
            .query_async(&mut f.conn)
            .await
            .map_err(fail)?;
        Ok(n.to_string())
    }

    async fn counter(State(mut f): State<Floor>, headers: HeaderMap) -> Http<String> {
        let key = key(&headers).ok_or(StatusCode::UNAUTHORIZED)?;
        let blob: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut f.conn)
            .await
            .map_err(fail)?;
        Ok(blob.map_or(0, |b| counter_of(&b)).to_string())
    }

    /// A fresh blob is all `x`: counter 0.
    fn counter_of(blob: &[u8]) -> u64 {
        match blob.get(..8) {
            Some(b) if b != [b'x'; 8] => u64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
            _ => 0,
        }
    }
}
