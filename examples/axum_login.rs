//! axum-login over tower-sessions, with sessions in Redis through
//! [`TowerSessionsStore`]: log in, a protected page, log out, and a
//! "your devices" page that lists the user's sessions and signs out the
//! others.
//!
//! ```text
//! SESSION_SECRET=$(head -c 32 /dev/urandom | base64) \
//! REDIS_URL=redis://127.0.0.1:6379 \
//! cargo run --example axum_login --features tower-sessions
//!
//! curl -c jar -b jar -H 'content-type: application/json' \
//!      -d '{"username":"alice","password":"wonderland"}' localhost:3000/login
//! curl -b jar localhost:3000/me
//! curl -b jar localhost:3000/sessions
//! curl -b jar -X POST localhost:3000/sessions/revoke-others
//! curl -b jar -X POST localhost:3000/logout
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use axum_login::{AuthManagerLayerBuilder, AuthSession, AuthUser, AuthnBackend, login_required};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tower_redis_sessions::tower_sessions::{
    StoreOutageLayer, TowerSessionsStore, is_unavailable, session_handle,
};
use tower_redis_sessions::{Keyring, RedisStore, StoreConfig, StoreError};
use tower_sessions::{Expiry, SessionManagerLayer};

/// A user of the in-memory user table.
#[derive(Clone)]
pub struct User {
    id: i64,
    name: String,
    /// A real app keeps a slow password hash (argon2, ...); SHA-256 keeps
    /// the example small.
    password_hash: Vec<u8>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl AuthUser for User {
    type Id = i64;

    fn id(&self) -> i64 {
        self.id
    }

    // Changing the password changes this, which ends the user's sessions.
    fn session_auth_hash(&self) -> &[u8] {
        &self.password_hash
    }
}

/// What the login form sends.
#[derive(Clone, Deserialize)]
pub struct Credentials {
    username: String,
    password: String,
}

/// An axum-login backend over a fixed user table.
#[derive(Clone)]
pub struct Backend {
    users: Arc<HashMap<i64, User>>,
}

impl Backend {
    /// alice / wonderland and bob / builder.
    pub fn demo() -> Backend {
        let user = |id, name: &str, password: &str| User {
            id,
            name: name.to_owned(),
            password_hash: Sha256::digest(password.as_bytes()).to_vec(),
        };
        let users = [user(1, "alice", "wonderland"), user(2, "bob", "builder")];
        Backend {
            users: Arc::new(users.into_iter().map(|u| (u.id, u)).collect()),
        }
    }
}

impl AuthnBackend for Backend {
    type User = User;
    type Credentials = Credentials;
    type Error = Infallible;

    async fn authenticate(&self, creds: Credentials) -> Result<Option<User>, Infallible> {
        let hash = Sha256::digest(creds.password.as_bytes());
        Ok(self
            .users
            .values()
            .find(|u| u.name == creds.username && u.password_hash == hash.as_slice())
            .cloned())
    }

    async fn get_user(&self, id: &i64) -> Result<Option<User>, Infallible> {
        Ok(self.users.get(id).cloned())
    }
}

type Auth = AuthSession<Backend>;

/// A store error as a response: 503 while Redis is unavailable, else 500.
fn store_error(error: StoreError) -> Response {
    let status = if error.is_unavailable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (status, error.to_string()).into_response()
}

/// An axum-login error as a response: 503 while Redis is unavailable.
fn auth_error(error: axum_login::Error<Backend>) -> Response {
    match error {
        axum_login::Error::Session(tower_sessions::session::Error::Store(e))
            if is_unavailable(&e) =>
        {
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn login(mut auth: Auth, Json(creds): Json<Credentials>) -> Response {
    match auth.authenticate(creds).await {
        Ok(Some(user)) => match auth.login(&user).await {
            Ok(()) => (StatusCode::OK, format!("welcome {}\n", user.name)).into_response(),
            Err(e) => auth_error(e),
        },
        Ok(None) => StatusCode::UNAUTHORIZED.into_response(),
        Err(e) => auth_error(e),
    }
}

async fn logout(mut auth: Auth) -> Response {
    match auth.logout().await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => auth_error(e),
    }
}

async fn me(auth: Auth) -> Response {
    match auth.user {
        Some(user) => format!("hello {}\n", user.name).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// The user's sessions: handle, expiry, and whether it is this one.
async fn sessions(auth: Auth, State(store): State<TowerSessionsStore>) -> Response {
    let Some(user) = auth.user else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let current = auth.session.id().map(|id| session_handle(&id));
    match store.list_user_sessions(&user.id.to_string()).await {
        Ok(list) => Json(
            list.iter()
                .map(|s| {
                    json!({
                        "handle": s.handle,
                        "expires": s.expiry_date.unix_timestamp(),
                        "current": current.as_deref() == Some(s.handle.as_str()),
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => store_error(e),
    }
}

/// Signs out the user's other devices.
async fn revoke_others(auth: Auth, State(store): State<TowerSessionsStore>) -> Response {
    let Some(user) = auth.user else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let current = auth.session.id();
    match store
        .revoke_user_sessions(&user.id.to_string(), current.as_ref())
        .await
    {
        Ok(n) => Json(json!({ "revoked": n })).into_response(),
        Err(e) => store_error(e),
    }
}

/// Signs out one device by its handle.
async fn revoke_one(
    auth: Auth,
    State(store): State<TowerSessionsStore>,
    Path(handle): Path<String>,
) -> Response {
    let Some(user) = auth.user else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    match store
        .revoke_user_session(&user.id.to_string(), &handle)
        .await
    {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => store_error(e),
    }
}

/// The app. `store` must index users as axum-login names them
/// ([`TowerSessionsStore::with_axum_login_index`]). `secure_cookies`:
/// `true` in production (HTTPS only).
pub fn app(store: TowerSessionsStore, secure_cookies: bool) -> Router {
    let sessions_layer = SessionManagerLayer::new(store.clone())
        .with_secure(secure_cookies)
        .with_expiry(Expiry::OnInactivity(time::Duration::days(1)));
    let auth_layer = AuthManagerLayerBuilder::new(Backend::demo(), sessions_layer).build();
    Router::new()
        .route("/me", get(me))
        .route("/sessions", get(sessions))
        .route("/sessions/revoke-others", post(revoke_others))
        .route("/sessions/{handle}", delete(revoke_one))
        .route_layer(login_required!(Backend))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .with_state(store)
        .layer(auth_layer)
        // Outermost: a Redis outage answers 503, not tower-sessions' 500.
        .layer(StoreOutageLayer::new())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("SESSION_SECRET")
        .map_err(|_| "set SESSION_SECRET to at least 32 random bytes")?;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let config =
        StoreConfig::new(Keyring::new(secret)?.encrypt_records(true)).prefix("axum-login-demo:");
    let store = RedisStore::builder(config)
        .connect_tower_sessions(&url)
        .await?
        .with_axum_login_index();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://127.0.0.1:3000");
    // Browsers treat http://localhost as secure: Secure cookies work there.
    axum::serve(listener, app(store, true)).await?;
    Ok(())
}
