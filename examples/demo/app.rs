//! The demo's router: a small HTML page and a JSON API over [`Session`].
//!
//! Kept apart from `main.rs` (environment, store, server) so that the
//! end-to-end tests can serve the very same routes in process:
//! `#[path = "../../examples/demo/app.rs"] mod demo_app;`.
//!
//! # JSON API (a contract: tests outside the crate rely on it)
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/session` | `{"user": null \| "<name>", "data": {...}}` |
//! | `POST /api/incr/{key}` | `{"key": "<key>", "value": <n>}`, the value as stored; 409 if the session was ended (logout, revocation) while this request ran, so the increment was not stored |
//! | `POST /api/login` `{"user": "<name>"}` | `{"user": "<name>"}` (new token) |
//! | `POST /api/logout` | `{"ok": true}` (session deleted, cookie cleared) |
//! | `GET /api/sessions` | `[{"id", "current", "kind", "device", "user_agent", "created_at", "last_seen"}, ...]`; 401 when not logged in |
//! | `POST /api/sessions/{id}/revoke` | `{"revoked": true}`: ends one of the user's own sessions (the current one logs out); 404 for an id that is not theirs; 401 when not logged in |
//! | `POST /api/sessions/revoke-others` | `{"revoked": <n>}`; 401 when not logged in |
//!
//! A login records the client's device: `device` is a short label made from
//! the `User-Agent` at login ("Firefox on Linux"), kept in the session's
//! sealed record with the full user agent.
//!
//! Routes that never touch the session, and so never call the store:
//! `GET /healthz`, `GET /style.css`, and (from the demo binary) `GET
//! /api/metrics`: `{"operations", "unavailable", "conflicts",
//! "revivals_blocked", "rejected_blobs"}`, the store's counters.
//!
//! The HTML forms post to `/login`, `/logout`, `/logout-others` and
//! `/sessions/{id}/revoke`, which redirect back to `/`. They carry no CSRF token: the session cookie is
//! `SameSite=Lax`, which browsers do not send with cross-site POSTs.

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

use tower_redis_sessions::store::SessionStore;
use tower_redis_sessions::{Session, SessionError, SessionId, SessionInfo, SessionLayer};

/// `GET /api/metrics`: the store's counters as JSON (it never touches a
/// session). Served next to the session routes, outside the layer.
pub fn metrics(store: Arc<dyn SessionStore>) -> Router {
    Router::new().route(
        "/api/metrics",
        get(move || {
            let stats = store.stats();
            async move {
                Json(json!({
                    "operations": stats.operations,
                    "unavailable": stats.unavailable,
                    "conflicts": stats.conflicts,
                    "revivals_blocked": stats.revivals_blocked,
                    "rejected_blobs": stats.rejected_blobs,
                }))
            }
        }),
    )
}

/// The demo's routes behind `layer`.
pub fn app(layer: SessionLayer) -> Router {
    routes().layer(layer)
}

/// The demo's routes, without the session layer.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(page))
        .route("/login", post(form_login))
        .route("/logout", post(form_logout))
        .route("/logout-others", post(form_logout_others))
        .route("/sessions/{id}/revoke", post(form_revoke))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/style.css", get(style))
        .route("/api/session", get(api_session))
        .route("/api/incr/{key}", post(api_incr))
        .route("/api/login", post(api_login))
        .route("/api/logout", post(api_logout))
        .route("/api/sessions", get(api_sessions))
        .route("/api/sessions/revoke-others", post(api_revoke_others))
        .route("/api/sessions/{id}/revoke", post(api_revoke))
}

/// Longest user name and session key the demo accepts.
const MAX_NAME: usize = 64;

/// What a demo handler can fail with.
#[derive(Debug)]
pub enum AppError {
    /// The session layer's own error: 503 / 500 / 401 as it decides.
    Session(SessionError),
    /// The request is unusable (400).
    BadRequest(&'static str),
    /// No such thing for this user (404).
    NotFound(&'static str),
    /// The session ended (logout or revocation) while this request ran, so
    /// its change was not stored (409).
    Ended,
    /// The session holds something the JSON view cannot show (500).
    Internal(String),
}

impl From<SessionError> for AppError {
    fn from(e: SessionError) -> AppError {
        AppError::Session(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            AppError::Session(e) => return e.into_response(),
            AppError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.to_owned()),
            AppError::NotFound(m) => (StatusCode::NOT_FOUND, m.to_owned()),
            AppError::Ended => (
                StatusCode::CONFLICT,
                "the session ended while this request ran; nothing was stored".to_owned(),
            ),
            AppError::Internal(m) => {
                tracing::error!(error = %m, "demo request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

// ---------------------------------------------------------------- JSON API

/// `GET /api/session`: who is logged in, and every value in the session.
async fn api_session(session: Session) -> Result<Json<Value>, AppError> {
    let user = session.user().await?;
    let values = session.values().await?;
    // Values are CBOR; everything the demo stores has a JSON form.
    let data = serde_json::to_value(&values).map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(Json(json!({ "user": user, "data": data })))
}

/// `POST /api/incr/{key}`: adds 1 to the integer under `key`.
async fn api_incr(session: Session, Path(key): Path<String>) -> Result<Json<Value>, AppError> {
    if key.is_empty() || key.len() > MAX_NAME {
        return Err(AppError::BadRequest("key must be 1 to 64 bytes"));
    }
    // `update` re-runs the closure on the fresh value if a concurrent
    // request saved the session first, so no increment is lost.
    session
        .update(&key, |n: Option<i64>| n.unwrap_or(0).saturating_add(1))
        .await?;
    // Save now rather than when the response is ready, so that the value
    // returned is the one stored (after any merge with concurrent writers).
    session.save().await?;
    match session.get::<i64>(&key).await? {
        Some(value) => Ok(Json(json!({ "key": key, "value": value }))),
        // The save found the session deleted (a logout racing this request):
        // nothing was written, and the layer clears the client's cookie.
        None => Err(AppError::Ended),
    }
}

#[derive(Deserialize)]
struct Login {
    user: String,
}

fn valid_user(user: &str) -> Result<&str, AppError> {
    let user = user.trim();
    if user.is_empty() || user.len() > MAX_NAME {
        return Err(AppError::BadRequest("user must be 1 to 64 bytes"));
    }
    Ok(user)
}

/// Binds the session to `user` and notes the device it signs in from.
async fn sign_in(session: &Session, user: &str, headers: &HeaderMap) -> Result<(), AppError> {
    // A real application checks a password here.
    session.login(user).await?;
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Kept short: the store bounds labels and metadata values.
    let agent: String = agent.chars().take(256).collect();
    session.set_label(Some(device(&agent))).await?;
    session.set_metadata("user_agent", agent).await?;
    Ok(())
}

/// "Firefox on Linux", from a user agent; "unknown device" when it says
/// nothing recognisable.
fn device(agent: &str) -> String {
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
        ("reqwest", "reqwest"),
    ]
    .iter()
    .find(|(needle, _)| agent.contains(needle))
    .map(|(_, name)| *name);
    let system = [
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(needle, _)| agent.contains(needle))
    .map(|(_, name)| *name);
    match (browser, system) {
        (Some(b), Some(s)) => format!("{b} on {s}"),
        (Some(b), None) => b.to_owned(),
        (None, Some(s)) => format!("a browser on {s}"),
        (None, None) => "unknown device".to_owned(),
    }
}

/// `POST /api/login`: binds the session to the user, under a new token.
async fn api_login(
    session: Session,
    headers: HeaderMap,
    Json(login): Json<Login>,
) -> Result<Json<Value>, AppError> {
    let user = valid_user(&login.user)?;
    sign_in(&session, user, &headers).await?;
    // Store the new session now, so that the answer is the truth: a login
    // from a session that another request logged out or revoked meanwhile
    // fails (409) instead of carrying it on.
    session.save().await?;
    Ok(Json(json!({ "user": user })))
}

/// `POST /api/logout`: deletes the session and clears the cookie.
async fn api_logout(session: Session) -> Result<Json<Value>, AppError> {
    session.logout().await?;
    Ok(Json(json!({ "ok": true })))
}

/// `GET /api/sessions`: the logged-in user's sessions (401 otherwise).
async fn api_sessions(session: Session) -> Result<Json<Value>, AppError> {
    let sessions = session.sessions().await?;
    let list: Vec<Value> = sessions
        .iter()
        .map(|s| {
            json!({
                "id": s.id.to_string(),
                "current": s.current,
                "kind": s.kind,
                "device": device_of(s),
                "user_agent": s.metadata.get("user_agent"),
                "created_at": s.created_at,
                "last_seen": s.last_seen,
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

fn device_of(s: &SessionInfo) -> &str {
    s.label.as_deref().unwrap_or("unknown device")
}

/// Ends the session `id` if it is one of the user's own.
async fn revoke_one(session: &Session, id: &str) -> Result<(), AppError> {
    let id = SessionId::parse(id).ok_or(AppError::NotFound("no such session"))?;
    if session.revoke(&id).await? {
        Ok(())
    } else {
        Err(AppError::NotFound("no such session"))
    }
}

/// `POST /api/sessions/{id}/revoke`: ends one of the user's sessions.
async fn api_revoke(session: Session, Path(id): Path<String>) -> Result<Json<Value>, AppError> {
    revoke_one(&session, &id).await?;
    Ok(Json(json!({ "revoked": true })))
}

/// `POST /api/sessions/revoke-others`: "log out everywhere else".
async fn api_revoke_others(session: Session) -> Result<Json<Value>, AppError> {
    let revoked = session.revoke_others().await?;
    Ok(Json(json!({ "revoked": revoked })))
}

// ------------------------------------------------------------------- HTML

/// `GET /`: counts the visit and shows the session.
async fn page(session: Session) -> Result<Html<String>, AppError> {
    let visits = session
        .update("visits", |n: Option<i64>| n.unwrap_or(0).saturating_add(1))
        .await?;
    let user = session.user().await?;
    let mut html = String::from(HEAD);
    html.push_str(&format!(
        "<p>You have seen this page <strong>{visits}</strong> time{}.</p>\n",
        if visits == 1 { "" } else { "s" }
    ));
    match &user {
        None => html.push_str(
            "<form method=\"post\" action=\"/login\">\n\
             <label>User name <input name=\"user\" required maxlength=\"64\" autofocus></label>\n\
             <button>Log in</button>\n</form>\n\
             <p class=\"hint\">No password: this is a demo. Logging in gives the session a new token.</p>\n",
        ),
        Some(name) => {
            html.push_str(&format!(
                "<p>Logged in as <strong>{}</strong>.</p>\n",
                escape(name)
            ));
            html.push_str(
                "<form method=\"post\" action=\"/logout\"><button>Log out</button></form>\n\
                 <form method=\"post\" action=\"/logout-others\"><button>Log out everywhere else</button></form>\n",
            );
            let now = now_millis();
            html.push_str(
                "<h2>Your sessions</h2>\n<table>\n\
                 <tr><th></th><th>device</th><th>kind</th><th>created</th><th>last seen</th><th></th></tr>\n",
            );
            for s in session.sessions().await? {
                html.push_str(&format!(
                    "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td><form method=\"post\" action=\"/sessions/{}/revoke\"><button>{}</button></form></td></tr>\n",
                    if s.current { " class=\"current\"" } else { "" },
                    if s.current { "this one" } else { "" },
                    escape(device_of(&s)),
                    escape(&s.kind),
                    when(s.created_at, now),
                    when(s.last_seen, now),
                    s.id,
                    if s.current { "Log out" } else { "Revoke" },
                ));
            }
            html.push_str("</table>\n<p class=\"hint\">Open this page in another browser and log in as the same user to see a second session.</p>\n");
        }
    }
    html.push_str(TAIL);
    Ok(Html(html))
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
}

/// `POST /login` (form).
async fn form_login(
    session: Session,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Redirect, AppError> {
    let user = valid_user(&form.user)?;
    sign_in(&session, user, &headers).await?;
    Ok(Redirect::to("/"))
}

/// `POST /sessions/{id}/revoke` (form).
async fn form_revoke(session: Session, Path(id): Path<String>) -> Result<Redirect, AppError> {
    revoke_one(&session, &id).await?;
    Ok(Redirect::to("/"))
}

/// `POST /logout` (form).
async fn form_logout(session: Session) -> Result<Redirect, AppError> {
    session.logout().await?;
    Ok(Redirect::to("/"))
}

/// `POST /logout-others` (form).
async fn form_logout_others(session: Session) -> Result<Redirect, AppError> {
    match session.revoke_others().await {
        // Not logged in (any more): nothing to revoke, just show the page.
        Ok(_) | Err(SessionError::NotLoggedIn) => Ok(Redirect::to("/")),
        Err(e) => Err(e.into()),
    }
}

/// `GET /style.css`: a static asset; never touches the session.
async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

const HEAD: &str = "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<title>tower-redis-sessions demo</title>\n<link rel=\"stylesheet\" href=\"/style.css\">\n</head>\n\
<body>\n<h1>tower-redis-sessions demo</h1>\n";

const TAIL: &str = "<p class=\"hint\">JSON API: <code>GET /api/session</code>, \
<code>POST /api/incr/{key}</code>, <code>POST /api/login</code>, <code>POST /api/logout</code>, \
<code>GET /api/sessions</code>, <code>POST /api/sessions/revoke-others</code>.</p>\n</body>\n</html>\n";

const STYLE: &str = "body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }\n\
form { display: inline-block; margin: 0 .5rem .5rem 0; }\n\
table { border-collapse: collapse; margin: 1rem 0; }\n\
th, td { padding: .25rem .75rem; border-bottom: 1px solid #ddd; text-align: left; }\n\
tr.current { font-weight: bold; }\n\
.hint { color: #666; font-size: .9rem; }\n";

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `2025-01-31 12:34:56 UTC (5 min ago)`.
fn when(ms: u64, now: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    let ago = now.saturating_sub(ms) / 1000;
    let ago = match ago {
        0..=59 => format!("{ago} s ago"),
        60..=3599 => format!("{} min ago", ago / 60),
        3600..=86_399 => format!("{} h ago", ago / 3600),
        _ => format!("{} days ago", ago / 86_400),
    };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC ({ago})",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}
