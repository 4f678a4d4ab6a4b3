//! [`SessionLayer`]: the tower middleware that gives each request its
//! [`Session`].
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_redis_sessions::{MemoryStore, Session, SessionError, SessionLayer};
//!
//! async fn handler(session: Session) -> Result<String, SessionError> {
//!     let user: Option<String> = session.user().await?;
//!     Ok(format!("hello {}", user.as_deref().unwrap_or("stranger")))
//! }
//!
//! let layer = SessionLayer::new(MemoryStore::default())
//!     .cookie_name("sid")
//!     .idle_timeout(Some(Duration::from_secs(30 * 60)))
//!     .lifetime(Some(Duration::from_secs(7 * 24 * 3600)));
//! let app: Router = Router::new().route("/", get(handler)).layer(layer);
//! ```
//!
//! # What happens to a request
//!
//! 1. The token is read from the cookie (or header). A malformed one counts
//!    as none, without a store call.
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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use cookie::SameSite;
use http::{HeaderName, Request, Response};
use pin_project::pin_project;
use tower::{Layer, Service};

use crate::error::SessionError;
use crate::session::{Policy, RetryPolicy, Session, TokenUpdate};
use crate::store::SessionStore;
use crate::transport::Transport;

/// Layer that adds a [`Session`] to every request. See the [module
/// docs](self).
///
/// Defaults: cookie `session` with `Secure`, `HttpOnly`, `SameSite=Lax`,
/// `Path=/` and a `Max-Age` following the session's deadline; kind `"web"`;
/// idle timeout 24 hours; absolute lifetime 30 days; up to 16 save attempts
/// under contention.
pub struct SessionLayer<S> {
    store: Arc<S>,
    transport: Transport,
    policy: Policy,
}

impl<S> Clone for SessionLayer<S> {
    fn clone(&self) -> Self {
        SessionLayer {
            store: self.store.clone(),
            transport: self.transport.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<S: SessionStore> SessionLayer<S> {
    /// A layer keeping sessions in `store`.
    pub fn new(store: S) -> Self {
        SessionLayer::shared(Arc::new(store))
    }

    /// A layer keeping sessions in a store shared with other code.
    pub fn shared(store: Arc<S>) -> Self {
        SessionLayer {
            store,
            transport: Transport::Cookie(Default::default()),
            policy: Policy {
                kind: "web".to_owned(),
                idle_timeout: Some(Duration::from_secs(24 * 3600)),
                lifetime: Some(Duration::from_secs(30 * 24 * 3600)),
                retry: RetryPolicy {
                    attempts: 16,
                    base: Duration::from_millis(2),
                    cap: Duration::from_millis(128),
                },
                locks: Default::default(),
            },
        }
    }

    fn with_cookie(mut self, f: impl FnOnce(&mut crate::transport::CookieConfig)) -> Self {
        if let Some(cookie) = self.transport.cookie_mut() {
            f(cookie);
        }
        self
    }

    /// The cookie's name (default `session`).
    pub fn cookie_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.with_cookie(|c| c.name = name)
    }

    /// The cookie's `Secure` attribute (default on). Turn it off only for
    /// plain-HTTP development.
    pub fn secure(self, secure: bool) -> Self {
        self.with_cookie(|c| c.secure = secure)
    }

    /// The cookie's `HttpOnly` attribute (default on).
    pub fn http_only(self, http_only: bool) -> Self {
        self.with_cookie(|c| c.http_only = http_only)
    }

    /// The cookie's `SameSite` attribute (default `Lax`).
    pub fn same_site(self, same_site: SameSite) -> Self {
        self.with_cookie(|c| c.same_site = same_site)
    }

    /// The cookie's `Path` (default `/`).
    pub fn path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.with_cookie(|c| c.path = path)
    }

    /// The cookie's `Domain` (default none: the exact host).
    pub fn domain(self, domain: impl Into<String>) -> Self {
        let domain = domain.into();
        self.with_cookie(|c| c.domain = Some(domain))
    }

    /// Sends the cookie without `Max-Age`, so the browser forgets it when it
    /// closes (the server-side deadlines still apply).
    pub fn browser_session(self, browser_session: bool) -> Self {
        self.with_cookie(|c| c.browser_session = browser_session)
    }

    /// Reads the token from `Authorization: Bearer <token>` instead of a
    /// cookie, and returns new tokens in the `x-session-token` response
    /// header (empty when the session ended). For APIs.
    pub fn bearer(mut self) -> Self {
        self.transport = Transport::bearer();
        self
    }

    /// Reads the token from the header `name` instead of a cookie, and
    /// returns new tokens in the same header of the response (empty when
    /// the session ended).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.transport = Transport::header(name);
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

    /// How many times a save is attempted when concurrent requests keep
    /// changing the session (default 16), and the pause range between
    /// attempts: uniform in `[0, min(cap, base x 2^attempt))` (defaults
    /// 2 ms and 128 ms).
    pub fn conflict_retries(mut self, attempts: u32, base: Duration, cap: Duration) -> Self {
        self.policy.retry = RetryPolicy {
            attempts: attempts.max(1),
            base,
            cap,
        };
        self
    }
}

impl<S, I> Layer<I> for SessionLayer<S> {
    type Service = SessionService<I, S>;

    fn layer(&self, inner: I) -> Self::Service {
        SessionService {
            inner,
            store: self.store.clone(),
            config: Arc::new((self.transport.clone(), Arc::new(self.policy.clone()))),
        }
    }
}

/// The service of [`SessionLayer`].
pub struct SessionService<I, S> {
    inner: I,
    store: Arc<S>,
    config: Arc<(Transport, Arc<Policy>)>,
}

impl<I: Clone, S> Clone for SessionService<I, S> {
    fn clone(&self) -> Self {
        SessionService {
            inner: self.inner.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
        }
    }
}

impl<I, S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<I, S>
where
    I: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S: SessionStore,
    ResBody: From<&'static str> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = I::Error;
    type Future = ResponseFuture<I::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let (transport, policy) = &*self.config;
        let incoming = transport.read(request.headers());
        let store: Arc<dyn SessionStore> = self.store.clone();
        let session = Session::new(store, policy.clone(), incoming);
        request.extensions_mut().insert(session.clone());
        ResponseFuture {
            inner: self.inner.call(request),
            session: Some(session),
            config: self.config.clone(),
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
    inner: F,
    session: Option<Session>,
    config: Arc<(Transport, Arc<Policy>)>,
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
        let response = ready!(this.inner.poll(cx))?;
        let Some(session) = this.session.take().filter(Session::was_used) else {
            // The handler never touched its session: nothing to do.
            return Poll::Ready(Ok(response));
        };
        let mut finishing = Box::pin(finish(session, response, this.config.clone()));
        let poll = finishing.as_mut().poll(cx).map(Ok);
        *this.finishing = Some(finishing);
        poll
    }
}

async fn finish<B: From<&'static str>>(
    session: Session,
    mut response: Response<B>,
    config: Arc<(Transport, Arc<Policy>)>,
) -> Response<B> {
    let save = !response.status().is_server_error();
    match session.finish(save).await {
        Ok(Some(update)) => {
            config.0.write(response.headers_mut(), &update);
            response
        }
        Ok(None) => response,
        Err(error) => {
            let mut response = error.to_response();
            if let SessionError::Ended = error {
                // The client's token opens nothing any more.
                config.0.write(response.headers_mut(), &TokenUpdate::Clear);
            }
            response
        }
    }
}
