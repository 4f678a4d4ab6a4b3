//! Where the token travels: a cookie (the default), a header, or several of
//! them on one layer.

use cookie::{Cookie, SameSite};
use http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::session::TokenUpdate;
use crate::token::{TOKEN_LEN, Token};

/// The session cookie's name and attributes, for
/// [`SessionLayer::cookie`](crate::SessionLayer::cookie).
///
/// Defaults: name `session`, `Secure`, `HttpOnly`, `SameSite=Lax`, `Path=/`,
/// no `Domain` (the exact host), and a `Max-Age` that follows the session's
/// deadline.
///
/// ```
/// use tower_redis_sessions::{CookieConfig, MemoryStore, SameSite, SessionLayer};
///
/// let layer = SessionLayer::new(MemoryStore::default())
///     .cookie(CookieConfig::default().name("sid").same_site(SameSite::Strict));
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct CookieConfig {
    pub(crate) name: String,
    pub(crate) secure: bool,
    pub(crate) http_only: bool,
    pub(crate) same_site: SameSite,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    /// No `Max-Age`: the browser drops the cookie when it closes.
    pub(crate) browser_session: bool,
}

impl Default for CookieConfig {
    fn default() -> CookieConfig {
        CookieConfig {
            name: "session".to_owned(),
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            path: "/".to_owned(),
            domain: None,
            browser_session: false,
        }
    }
}

impl CookieConfig {
    /// The cookie's name (default `session`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The `Secure` attribute (default on). Turn it off only for plain-HTTP
    /// development: clients do not send a `Secure` cookie back over
    /// `http://` (browsers except on localhost), so every request would
    /// start a new session.
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// The `HttpOnly` attribute (default on): scripts cannot read the token.
    pub fn http_only(mut self, http_only: bool) -> Self {
        self.http_only = http_only;
        self
    }

    /// The `SameSite` attribute (default `Lax`).
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// The `Path` (default `/`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The `Domain` (default none: the exact host only).
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Sends the cookie without `Max-Age`, so the browser forgets it when it
    /// closes (the server-side deadlines still apply).
    pub fn browser_session(mut self, browser_session: bool) -> Self {
        self.browser_session = browser_session;
        self
    }
}

/// How the token is read from requests and given to clients.
#[derive(Clone, Debug)]
pub(crate) enum Transport {
    Cookie(CookieConfig),
    /// Read from `Authorization: Bearer <token>` (when `bearer`) or from the
    /// header `request`; new tokens are returned in the header `response`
    /// (empty when the session ended).
    Header {
        request: HeaderName,
        bearer: bool,
        response: HeaderName,
    },
}

impl Transport {
    pub(crate) fn bearer() -> Transport {
        Transport::Header {
            request: AUTHORIZATION,
            bearer: true,
            response: HeaderName::from_static("x-session-token"),
        }
    }

    pub(crate) fn header(name: HeaderName) -> Transport {
        Transport::Header {
            request: name.clone(),
            bearer: false,
            response: name,
        }
    }

    /// The client's token, if it sent a well-formed one. Anything else
    /// (absent, garbage, wrong length, bad base64) is no token: the store is
    /// not asked about it.
    pub(crate) fn read(&self, headers: &HeaderMap) -> Option<Token> {
        match self {
            Transport::Cookie(config) => headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(Cookie::split_parse)
                .filter_map(Result::ok)
                .filter(|c| c.name() == config.name)
                .find_map(|c| parse(c.value())),
            Transport::Header {
                request, bearer, ..
            } => {
                let value = headers.get(request)?.to_str().ok()?.trim();
                let token = if *bearer {
                    let (scheme, rest) = value.split_once(' ')?;
                    if !scheme.eq_ignore_ascii_case("bearer") {
                        return None;
                    }
                    rest.trim()
                } else {
                    value
                };
                parse(token)
            }
        }
    }

    /// Writes `update` into the response headers.
    pub(crate) fn write(&self, headers: &mut HeaderMap, update: &TokenUpdate) {
        match self {
            Transport::Cookie(config) => {
                let cookie = match update {
                    TokenUpdate::Set(token, left) => {
                        let mut cookie = base_cookie(config, token.to_string());
                        if !config.browser_session
                            && let Some(left) = left
                        {
                            cookie.set_max_age(cookie::time::Duration::seconds(
                                i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                            ));
                        }
                        cookie
                    }
                    TokenUpdate::Clear => {
                        let mut cookie = base_cookie(config, String::new());
                        cookie.make_removal();
                        cookie
                    }
                };
                if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
                    headers.append(SET_COOKIE, value);
                }
            }
            Transport::Header { response, .. } => {
                let text = match update {
                    TokenUpdate::Set(token, _) => token.to_string(),
                    TokenUpdate::Clear => String::new(),
                };
                if let Ok(value) = HeaderValue::from_str(&text) {
                    headers.insert(response.clone(), value);
                }
            }
        }
    }
}

fn base_cookie(config: &CookieConfig, value: String) -> Cookie<'static> {
    let mut cookie = Cookie::new(config.name.clone(), value);
    cookie.set_secure(config.secure);
    cookie.set_http_only(config.http_only);
    cookie.set_same_site(config.same_site);
    cookie.set_path(config.path.clone());
    if let Some(domain) = &config.domain {
        cookie.set_domain(domain.clone());
    }
    cookie
}

fn parse(text: &str) -> Option<Token> {
    // A cheap length check first: most garbage stops here.
    if text.len() != TOKEN_LEN {
        return None;
    }
    text.parse().ok()
}

/// The transports of one layer, in order: the first one that carries a
/// well-formed token is the one the request uses, and the one its response
/// answers on; a request without a token is answered on the first.
#[derive(Clone, Debug)]
pub(crate) struct Transports(Vec<Transport>);

impl Default for Transports {
    fn default() -> Transports {
        Transports(vec![Transport::Cookie(CookieConfig::default())])
    }
}

impl Transports {
    /// One transport, replacing the implicit default or a transport of the
    /// same place (the cookie, or the same request header) when `explicit`
    /// is already true.
    pub(crate) fn add(&mut self, explicit: &mut bool, transport: Transport) {
        if !*explicit {
            self.0.clear();
            *explicit = true;
        }
        let same = |t: &Transport| match (t, &transport) {
            (Transport::Cookie(_), Transport::Cookie(_)) => true,
            (Transport::Header { request: a, .. }, Transport::Header { request: b, .. }) => a == b,
            _ => false,
        };
        match self.0.iter_mut().find(|t| same(t)) {
            Some(slot) => *slot = transport,
            None => self.0.push(transport),
        }
    }

    /// The client's token and the index of the transport it came by (the
    /// first transport when there is none).
    pub(crate) fn read(&self, headers: &HeaderMap) -> (Option<Token>, usize) {
        self.0
            .iter()
            .enumerate()
            .find_map(|(i, t)| t.read(headers).map(|token| (Some(token), i)))
            .unwrap_or((None, 0))
    }

    /// Writes `update` into the response headers, on the transport `via`.
    pub(crate) fn write(&self, via: usize, headers: &mut HeaderMap, update: &TokenUpdate) {
        if let Some(transport) = self.0.get(via).or(self.0.first()) {
            transport.write(headers, update);
        }
    }
}
