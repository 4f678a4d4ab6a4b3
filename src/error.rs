//! [`SessionError`]: what can go wrong with a session during a request.

use http::StatusCode;

use crate::store::StoreError;

/// A session operation that failed.
///
/// With the `axum` feature it converts into a response: 503 when the store
/// is unreachable, slow or saturated, or the session too contended
/// ([`SessionError::Busy`]); 500 otherwise. Handlers can return it with `?`.
///
/// A 503 for a request that changed its session means the outcome is
/// unknown: if Redis stored the change and then failed before answering, and
/// was still unreachable for the one retry, the change stands. (A save whose
/// reply was lost is recognised when retried, and applied only once.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed (see [`StoreError::is_unavailable`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored value did not decode as the type asked for.
    #[error("session value `{key}` does not decode as the requested type: {reason}")]
    Decode {
        /// The value's key in the session.
        key: String,
        /// What the decoder said.
        reason: String,
    },
    /// A value could not be encoded as CBOR.
    #[error("session value `{key}` does not encode: {reason}")]
    Encode {
        /// The value's key in the session.
        key: String,
        /// What the encoder said.
        reason: String,
    },
    /// Other requests kept changing the session: the save was retried as
    /// often as the retry policy allows, and gave up.
    #[error("the session kept changing under concurrent requests; gave up after {0} attempts")]
    Busy(u32),
    /// The session ended (logged out, revoked or expired) while this request
    /// was using it, so what the request did to it was not stored: for
    /// instance a login from a session that another request logged out or
    /// revoked meanwhile. The response clears the client's token (409).
    #[error("the session ended while this request was using it; nothing was stored")]
    Ended,
    /// The request's bearer (or header) token is malformed or opens no
    /// session, and the layer was told to refuse such tokens
    /// ([`SessionLayer::reject_invalid_tokens`](crate::SessionLayer::reject_invalid_tokens)):
    /// 401 with `WWW-Authenticate: Bearer error="invalid_token"`.
    #[error("the session token is invalid or expired")]
    InvalidToken,
    /// The operation needs a logged-in session.
    #[error("the session has no user")]
    NotLoggedIn,
    /// The request has no session: [`SessionLayer`](crate::SessionLayer)
    /// is not installed in front of this handler.
    #[error("no session in the request: is SessionLayer installed in front of this handler?")]
    MissingLayer,
}

impl SessionError {
    /// The status a response reporting this error should have.
    pub fn status(&self) -> StatusCode {
        match self {
            SessionError::Store(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            SessionError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            SessionError::NotLoggedIn | SessionError::InvalidToken => StatusCode::UNAUTHORIZED,
            SessionError::Ended => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short text for the client; details stay in the logs.
    pub(crate) fn public_message(&self) -> &'static str {
        if let SessionError::MissingLayer = self {
            // A mistake in the application's setup, not in the request: say
            // what is wrong where the developer first looks (it reveals
            // nothing about any session).
            return "no session in the request: is SessionLayer installed in front of this handler?\n";
        }
        if let SessionError::InvalidToken = self {
            return "invalid or expired session token\n";
        }
        match self.status() {
            StatusCode::SERVICE_UNAVAILABLE => "session store unavailable, try again\n",
            StatusCode::UNAUTHORIZED => "not logged in\n",
            StatusCode::CONFLICT => {
                "the session ended while this request ran; nothing was stored\n"
            }
            _ => "session error\n",
        }
    }

    /// A response for this error, logged once.
    pub(crate) fn to_response<B: From<&'static str>>(&self) -> http::Response<B> {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, status = status.as_u16(), "session operation failed");
        }
        let mut response = http::Response::new(B::from(self.public_message()));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let SessionError::InvalidToken = self {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for SessionError {
    fn into_response(self) -> axum_core::response::Response {
        self.to_response()
    }
}
