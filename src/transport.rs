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
    /// Named `__Host-<name>`, always `Secure`, `Path=/`, no `Domain`.
    pub(crate) host_prefix: bool,
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
            host_prefix: false,
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

    /// Names the cookie `__Host-<name>` (default off), and then always sends
    /// it `Secure`, with `Path=/` and without `Domain`, whatever
    /// [`secure`](Self::secure), [`path`](Self::path) and
    /// [`domain`](Self::domain) say.
    ///
    /// Browsers accept a `__Host-` cookie only from a secure origin and only
    /// for the exact host, so a sibling subdomain (`evil.example.com` next to
    /// `app.example.com`), or a plain-HTTP page on the same host, cannot set
    /// or shadow the session cookie: session fixation and cookie tossing
    /// from there are ruled out. Turn it on for HTTPS deployments that do not
    /// share the session with subdomains.
    ///
    /// ```
    /// use tower_redis_sessions::{CookieConfig, MemoryStore, SessionLayer};
    ///
    /// // The browser sees `__Host-session=...; Secure; Path=/; ...`.
    /// let layer = SessionLayer::new(MemoryStore::default())
    ///     .cookie(CookieConfig::default().host_prefix(true));
    /// ```
    pub fn host_prefix(mut self, on: bool) -> Self {
        self.host_prefix = on;
        self
    }

    /// The name the cookie is sent and read under.
    pub(crate) fn full_name(&self) -> String {
        const PREFIX: &str = "__Host-";
        if self.host_prefix && !self.name.starts_with(PREFIX) {
            format!("{PREFIX}{}", self.name)
        } else {
            self.name.clone()
        }
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
    /// not asked about it. A header transport also tells a header that is
    /// there but holds no well-formed token ([`Read::Invalid`]); a cookie
    /// never does (browsers send stray cookies).
    pub(crate) fn read(&self, headers: &HeaderMap) -> Read {
        match self {
            Transport::Cookie(config) => {
                let name = config.full_name();
                headers
                    .get_all(COOKIE)
                    .iter()
                    .filter_map(|value| value.to_str().ok())
                    .flat_map(Cookie::split_parse)
                    .filter_map(Result::ok)
                    .filter(|c| c.name() == name)
                    .find_map(|c| parse(c.value()))
                    .map_or(Read::Absent, Read::Token)
            }
            Transport::Header {
                request, bearer, ..
            } => {
                let Some(value) = headers.get(request) else {
                    return Read::Absent;
                };
                let token = value.to_str().ok().map(str::trim).and_then(|value| {
                    if *bearer {
                        let (scheme, rest) = value.split_once(' ')?;
                        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                    } else {
                        Some(value)
                    }
                });
                match token {
                    // A bearer header of another scheme is not ours.
                    None if *bearer && !is_bearer(value) => Read::Absent,
                    None => Read::Invalid,
                    Some(token) => parse(token).map_or(Read::Invalid, Read::Token),
                }
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
    let mut cookie = Cookie::new(config.full_name(), value);
    cookie.set_http_only(config.http_only);
    cookie.set_same_site(config.same_site);
    if config.host_prefix {
        // What browsers require of a `__Host-` cookie.
        cookie.set_secure(true);
        cookie.set_path("/");
    } else {
        cookie.set_secure(config.secure);
        cookie.set_path(config.path.clone());
        if let Some(domain) = &config.domain {
            cookie.set_domain(domain.clone());
        }
    }
    cookie
}

/// Whether an `Authorization` value uses the Bearer scheme (well-formed or
/// not).
fn is_bearer(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case(b"bearer"))
}

/// What a transport found in a request.
pub(crate) enum Read {
    Absent,
    Token(Token),
    /// A header transport's header, holding no well-formed token.
    Invalid,
}

fn parse(text: &str) -> Option<Token> {
    // A cheap length check first: most garbage stops here.
    if text.len() != TOKEN_LEN {
        return None;
    }
    text.parse().ok()
}

/// What the transports found in a request.
pub(crate) struct Incoming {
    pub(crate) token: Option<Token>,
    /// The transport the response answers on.
    pub(crate) via: usize,
    /// The token came in a header (not a cookie).
    pub(crate) by_header: bool,
    /// A header held something that is not a well-formed token.
    pub(crate) invalid: bool,
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

    /// The client's token, the index of the transport it came by (the first
    /// transport when there is none), and whether a header transport saw a
    /// header holding no well-formed token (when no transport found one).
    pub(crate) fn read(&self, headers: &HeaderMap) -> Incoming {
        let mut invalid = None;
        for (via, transport) in self.0.iter().enumerate() {
            match transport.read(headers) {
                Read::Token(token) => {
                    return Incoming {
                        token: Some(token),
                        via,
                        by_header: matches!(transport, Transport::Header { .. }),
                        invalid: false,
                    };
                }
                Read::Invalid => invalid = invalid.or(Some(via)),
                Read::Absent => {}
            }
        }
        Incoming {
            token: None,
            via: invalid.unwrap_or(0),
            by_header: false,
            invalid: invalid.is_some(),
        }
    }

    /// Writes `update` into the response headers, on the transport `via`.
    pub(crate) fn write(&self, via: usize, headers: &mut HeaderMap, update: &TokenUpdate) {
        if let Some(transport) = self.0.get(via).or(self.0.first()) {
            transport.write(headers, update);
        }
    }
}
