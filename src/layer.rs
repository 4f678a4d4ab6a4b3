//! [`SessionLayer`]: the tower middleware that gives each request its
//! [`Session`].
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_redis_sessions::{CookieConfig, MemoryStore, Session, SessionError, SessionLayer};
//!
//! async fn handler(session: Session) -> Result<String, SessionError> {
//!     let user: Option<String> = session.user().await?;
//!     Ok(format!("hello {}", user.as_deref().unwrap_or("stranger")))
//! }
//!
//! let layer = SessionLayer::new(MemoryStore::default())
//!     .cookie(CookieConfig::default().name("sid"))
//!     .idle_timeout(Some(Duration::from_secs(30 * 60)))
//!     .lifetime(Some(Duration::from_secs(7 * 24 * 3600)));
//! let app: Router = Router::new().route("/", get(handler)).layer(layer);
//! ```
//!
//! # What happens to a request
//!
//! 1. The token is read from the cookie (or header; with several transports,
//!    the first that carries a well-formed token). A malformed one counts as
//!    none, without a store call.
//! 2. A lazy [`Session`] goes into the request extensions.
//! 3. When the response is ready, the session's changes (if any) are saved,
//!    merging with concurrent writers, and the cookie is set, refreshed or
//!    cleared. Nothing is saved for a 5xx response.
//! 4. If the store fails, the response becomes a 503 (store unreachable,
//!    slow or saturated, or the session too contended) or a 500, logged once.
//!
//! Store calls per request: none when the session is not touched, one to
//! read (sliding expiry included), two to read and write, two to cycle the
//! id (load, then one atomic move to the new token), three to log in from an
//! existing session (load, create the user's session, delete the old one:
//! the user's session lives in the user's hash slot, so this cannot be one
//! call), one to log out.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderName, Request, Response};
use pin_project::pin_project;
use tower::{Layer, Service};

use crate::error::SessionError;
use crate::session::{Policy, RetryPolicy, Session, TokenUpdate};
use crate::store::SessionStore;
use crate::transport::{CookieConfig, Transport, Transports};

/// What every request of a layer shares: the store, where tokens travel, and
/// how sessions are made and saved.
struct Shared {
    store: Arc<dyn SessionStore>,
    transports: Transports,
    policy: Arc<Policy>,
    reject_invalid: bool,
}

/// Layer that adds a [`Session`] to every request. See the [module
/// docs](self).
///
/// Defaults: a cookie ([`CookieConfig::default`]: `session`, `Secure`,
/// `HttpOnly`, `SameSite=Lax`, `Path=/`, a `Max-Age` following the session's
/// deadline); kind `"web"`; idle timeout 24 hours; absolute lifetime 30 days;
/// [`RetryPolicy::default`] under contention.
#[derive(Clone)]
#[must_use]
pub struct SessionLayer {
    store: Arc<dyn SessionStore>,
    transports: Transports,
    /// Whether a transport was chosen (the first choice replaces the default
    /// cookie).
    explicit: bool,
    policy: Policy,
    reject_invalid: bool,
}

impl fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("transports", &self.transports)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl SessionLayer {
    /// A layer keeping sessions in `store`.
    pub fn new(store: impl SessionStore) -> Self {
        SessionLayer::shared(Arc::new(store))
    }

    /// A layer keeping sessions in a store shared with other code (or other
    /// layers).
    pub fn shared<S: SessionStore>(store: Arc<S>) -> Self {
        SessionLayer {
            store,
            transports: Transports::default(),
            explicit: false,
            reject_invalid: false,
            policy: Policy {
                kind: "web".to_owned(),
                idle_timeout: Some(Duration::from_secs(24 * 3600)),
                lifetime: Some(Duration::from_secs(30 * 24 * 3600)),
                retry: RetryPolicy::default(),
            },
        }
    }

    /// Carries the token in a cookie with these attributes. The default
    /// transport is `CookieConfig::default()`; calling this replaces it (or
    /// the cookie set earlier) and keeps any header transport chosen.
    pub fn cookie(mut self, cookie: CookieConfig) -> Self {
        self.transports
            .add(&mut self.explicit, Transport::Cookie(cookie));
        self
    }

    /// Carries the token in `Authorization: Bearer <token>`; new tokens are
    /// returned in the `x-session-token` response header (empty when the
    /// session ended). For APIs.
    ///
    /// Alone, the layer then reads no cookie (an API that takes no cookie
    /// cannot be the target of cross-site request forgery). With
    /// [`cookie`](Self::cookie) as well, both are read, in the order they
    /// were added: the first that carries a well-formed token wins, the
    /// response answers on that one, and a request with no token is answered
    /// on the first.
    pub fn bearer(mut self) -> Self {
        self.transports.add(&mut self.explicit, Transport::bearer());
        self
    }

    /// Carries the token in the header `name`, requests and responses alike
    /// (empty in a response when the session ended). Combines with the other
    /// transports as [`bearer`](Self::bearer) does.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.transports
            .add(&mut self.explicit, Transport::header(name));
        self
    }

    /// The kind of the sessions this layer creates (default `"web"`).
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.policy.kind = kind.into();
        self
    }

    /// How long a new session lives without being seen (default 24 hours;
    /// `None`: no idle expiry). Each load extends it, at most once per the
    /// store's touch interval and without an extra store call.
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.policy.idle_timeout = idle;
        self
    }

    /// How long a new session lives at most, however active (default 30
    /// days; `None`: no absolute deadline).
    pub fn lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.policy.lifetime = lifetime;
        self
    }

    /// Whether a bearer (or header) token that is malformed, or that opens
    /// no session (unknown, expired, revoked), is refused with 401 and
    /// `WWW-Authenticate: Bearer error="invalid_token"` (default `false`:
    /// such a request goes on without a session, and a write starts a new
    /// one, as for a browser with a stale cookie).
    ///
    /// API clients usually want the 401: it tells them to authenticate
    /// again instead of silently working in a new, empty session. A
    /// malformed token is refused before the handler runs; a well-formed one
    /// when the handler first touches its session (the load is lazy), as
    /// [`SessionError::InvalidToken`]. Cookies are never refused this way
    /// (browsers keep stale cookies; the layer clears them).
    ///
    /// ```
    /// use tower_redis_sessions::{MemoryStore, SessionLayer};
    ///
    /// let api = SessionLayer::new(MemoryStore::default())
    ///     .bearer()
    ///     .reject_invalid_tokens(true);
    /// ```
    pub fn reject_invalid_tokens(mut self, reject: bool) -> Self {
        self.reject_invalid = reject;
        self
    }

    /// How saves retry when concurrent requests keep changing the session.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.policy.retry = retry;
        self
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            shared: Arc::new(Shared {
                store: self.store.clone(),
                transports: self.transports.clone(),
                policy: Arc::new(self.policy.clone()),
                reject_invalid: self.reject_invalid,
            }),
        }
    }
}

/// The service of [`SessionLayer`], around the inner service `S`.
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> SessionService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for SessionService<S> {
    fn clone(&self) -> Self {
        SessionService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionService")
            .field("inner", &self.inner)
            .field("transports", &self.shared.transports)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<&'static str> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        let incoming = shared.transports.read(request.headers());
        if incoming.invalid && shared.reject_invalid {
            return ResponseFuture {
                inner: None,
                rejected: Some(SessionError::InvalidToken.to_response()),
                session: None,
                shared: self.shared.clone(),
                via: incoming.via,
                finishing: None,
            };
        }
        let session = Session::new(
            shared.store.clone(),
            shared.policy.clone(),
            incoming.token,
            shared.reject_invalid && incoming.by_header,
        );
        request.extensions_mut().insert(session.clone());
        ResponseFuture {
            inner: Some(self.inner.call(request)),
            rejected: None,
            session: Some(session),
            shared: self.shared.clone(),
            via: incoming.via,
            finishing: None,
        }
    }
}

type Finishing<B> = Pin<Box<dyn Future<Output = Response<B>> + Send>>;

/// Response future of [`SessionService`]: once the inner response is
/// ready, saves the session and sets the token.
#[pin_project]
pub struct ResponseFuture<F, B> {
    #[pin]
    inner: Option<F>,
    /// The answer to a request refused before its handler ran.
    rejected: Option<Response<B>>,
    session: Option<Session>,
    shared: Arc<Shared>,
    /// The transport the token came by (the response answers on it).
    via: usize,
    finishing: Option<Finishing<B>>,
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<&'static str> + Send + 'static,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(finishing) = this.finishing.as_mut() {
            return finishing.as_mut().poll(cx).map(Ok);
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            let refused = this.rejected.take();
            return Poll::Ready(Ok(refused.unwrap_or_else(|| {
                // Polled again after it answered: a bug of the caller's;
                // answer rather than panic.
                SessionError::MissingLayer.to_response()
            })));
        };
        let response = ready!(inner.poll(cx))?;
        let Some(session) = this.session.take().filter(Session::was_used) else {
            // The handler never touched its session: nothing to do.
            return Poll::Ready(Ok(response));
        };
        let mut finishing = Box::pin(finish(session, response, this.shared.clone(), *this.via));
        let poll = finishing.as_mut().poll(cx).map(Ok);
        *this.finishing = Some(finishing);
        poll
    }
}

async fn finish<B: From<&'static str>>(
    session: Session,
    mut response: Response<B>,
    shared: Arc<Shared>,
    via: usize,
) -> Response<B> {
    let save = !response.status().is_server_error();
    match session.finish(save).await {
        Ok(Some(update)) => {
            shared
                .transports
                .write(via, response.headers_mut(), &update);
            response
        }
        Ok(None) => response,
        Err(error) => {
            let mut response = error.to_response();
            if let SessionError::Ended = error {
                // The client's token opens nothing any more.
                shared
                    .transports
                    .write(via, response.headers_mut(), &TokenUpdate::Clear);
            }
            response
        }
    }
}
