//! [`Session`] as an axum extractor.

use axum_core::extract::FromRequestParts;
use http::request::Parts;

use crate::error::SessionError;
use crate::session::Session;

/// Takes the request's [`Session`], put there by
/// [`SessionLayer`](crate::SessionLayer).
///
/// Rejection: [`SessionError::MissingLayer`], a 500 saying the layer is
/// missing, when the handler is not behind a `SessionLayer`. Extracting
/// costs nothing: the session loads on first use.
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_redis_sessions::{MemoryStore, Session, SessionError, SessionLayer};
///
/// async fn whoami(session: Session) -> Result<String, SessionError> {
///     Ok(session.user().await?.unwrap_or_else(|| "nobody".into()))
/// }
///
/// let app: Router = Router::new()
///     .route("/whoami", get(whoami))
///     .layer(SessionLayer::new(MemoryStore::default()));
/// ```
impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(SessionError::MissingLayer)
    }
}
