//! Where the token travels: a cookie (the default) or a header.

use cookie::{Cookie, SameSite};
use http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::session::TokenUpdate;
use crate::token::{TOKEN_LEN, Token};

/// The session cookie's name and attributes.
#[derive(Clone, Debug)]
pub(crate) struct CookieConfig {
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

    pub(crate) fn cookie_mut(&mut self) -> Option<&mut CookieConfig> {
        match self {
            Transport::Cookie(c) => Some(c),
            Transport::Header { .. } => None,
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
