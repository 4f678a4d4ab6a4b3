//! The token a client holds, and the session id Redis knows it by.
//!
//! A token reads `<tag>.<secret>`: `tag` is 6 bytes (8 base64url characters)
//! that choose the Redis hash slot, `secret` is 32 bytes (43 characters) from
//! the operating system's CSPRNG. Redis only ever sees SHA-256 of the secret
//! (the [`SessionId`]), so a dump of Redis yields no usable token.
//!
//! Anonymous sessions get a random tag. A user's sessions all get the user's
//! tag, a keyed hash of the user id (see [`Keyring`](crate::Keyring)), so that
//! the user's sessions and their index share one hash slot on Redis Cluster,
//! and the token does not reveal who the user is.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::keyring::Keyring;

/// Length of the routing tag, in bytes.
pub(crate) const TAG_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;
pub(crate) const TAG_CHARS: usize = 8; // base64url of 6 bytes, no padding
const SECRET_CHARS: usize = 43; // base64url of 32 bytes, no padding
pub(crate) const HASH_CHARS: usize = 43; // base64url of a SHA-256, no padding
/// Length of a token's text form: tag, '.', secret.
pub const TOKEN_LEN: usize = TAG_CHARS + 1 + SECRET_CHARS;

/// The routing part of a token: which hash slot its session lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Tag(pub(crate) [u8; TAG_BYTES]);

impl Tag {
    pub(crate) fn random() -> Result<Tag, RandomError> {
        let mut tag = [0; TAG_BYTES];
        getrandom::fill(&mut tag).map_err(RandomError)?;
        Ok(Tag(tag))
    }

    /// Appends the tag as it appears in tokens and Redis keys.
    pub(crate) fn encode_into(&self, out: &mut String) {
        URL_SAFE_NO_PAD.encode_string(self.0, out);
    }
}

/// A session token: what the cookie (or header) carries.
///
/// Its [`Display`](fmt::Display) form is the text to send to the client; its
/// [`Debug`] form hides the secret, so a token can be logged by accident
/// without harm.
///
/// ```
/// use tower_redis_sessions::store::Token;
///
/// let text = "AAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
/// let token: Token = text.parse().unwrap();
/// assert_eq!(token.to_string(), text);
/// assert!("not a token".parse::<Token>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    tag: Tag,
    secret: [u8; SECRET_BYTES],
}

impl Token {
    /// A new token with the given routing tag and a fresh secret.
    pub(crate) fn generate(tag: Tag) -> Result<Token, RandomError> {
        let mut secret = [0; SECRET_BYTES];
        getrandom::fill(&mut secret).map_err(RandomError)?;
        Ok(Token { tag, secret })
    }

    /// A fresh token for a session of `user` (with the user's routing tag,
    /// from `keyring`, so that it shares the hash slot of the user's other
    /// sessions and index) or, for `None`, an anonymous one (random tag).
    /// What [`SessionStore::new_token`](crate::store::SessionStore::new_token)
    /// returns; for stores implemented outside this crate.
    pub fn new_for(keyring: &Keyring, user: Option<&str>) -> Result<Token, RandomError> {
        let tag = match user {
            Some(user) => keyring.user_route(user).0,
            None => Tag::random()?,
        };
        Token::generate(tag)
    }

    #[cfg(feature = "fuzzing")]
    pub(crate) fn from_parts(tag: Tag, secret: [u8; SECRET_BYTES]) -> Token {
        Token { tag, secret }
    }

    pub(crate) fn tag(&self) -> Tag {
        self.tag
    }

    /// A new token in the same hash slot as this one (same tag, fresh
    /// secret): what [`SessionStore::rotate`](crate::store::SessionStore::rotate)
    /// moves a session to.
    pub fn renew(&self) -> Result<Token, RandomError> {
        Token::generate(self.tag)
    }

    /// The id of the session this token opens: SHA-256 of the secret.
    ///
    /// The id names the session in Redis and in listings, and cannot be
    /// turned back into the token.
    pub fn id(&self) -> SessionId {
        SessionId(Sha256::digest(self.secret).into())
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; TOKEN_LEN];
        // Both lengths are fixed, so encoding into the exact slices cannot fail;
        // still, no panic on a path a request reaches.
        let ok = URL_SAFE_NO_PAD
            .encode_slice(self.tag.0, &mut out[..TAG_CHARS])
            .is_ok()
            && URL_SAFE_NO_PAD
                .encode_slice(self.secret, &mut out[TAG_CHARS + 1..])
                .is_ok();
        out[TAG_CHARS] = b'.';
        match (ok, std::str::from_utf8(&out)) {
            (true, Ok(text)) => f.write_str(text),
            _ => Err(fmt::Error),
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a text is not a token. Deliberately coarse: the text came from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The text does not have the length of a token.
    #[error("session token has the wrong length")]
    Length,
    /// The text is not `<8 base64url chars>.<43 base64url chars>`.
    #[error("session token is not well formed")]
    Format,
}

/// The operating system's random number generator failed (tokens, secrets
/// and nonces all come from it): the one error for it, wherever it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(pub(crate) getrandom::Error);

impl std::str::FromStr for Token {
    type Err = TokenError;

    fn from_str(text: &str) -> Result<Token, TokenError> {
        let bytes = text.as_bytes();
        if bytes.len() != TOKEN_LEN {
            return Err(TokenError::Length);
        }
        if bytes[TAG_CHARS] != b'.' {
            return Err(TokenError::Format);
        }
        let mut tag = [0u8; TAG_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        decode_exact(&bytes[..TAG_CHARS], &mut tag)?;
        decode_exact(&bytes[TAG_CHARS + 1..], &mut secret)?;
        Ok(Token {
            tag: Tag(tag),
            secret,
        })
    }
}

/// Decodes base64url into exactly `out.len()` bytes, and only from its
/// canonical text (trailing bits zero), so that each token has one text form.
fn decode_exact(text: &[u8], out: &mut [u8]) -> Result<(), TokenError> {
    match URL_SAFE_NO_PAD.decode_slice(text, out) {
        Ok(n) if n == out.len() => Ok(()),
        _ => Err(TokenError::Format),
    }
}

/// The public id of a session: SHA-256 of its token's secret.
///
/// It appears in Redis keys and in [`SessionInfo`](crate::SessionInfo)
/// listings, can be shown to the session's user (for "sign out that device"),
/// and gives no access to the session.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub(crate) [u8; 32]);

impl SessionId {
    /// Parses the text form produced by [`Display`](fmt::Display).
    pub fn parse(text: &str) -> Option<SessionId> {
        let mut id = [0u8; 32];
        decode_exact(text.as_bytes(), &mut id).ok()?;
        Some(SessionId(id))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; HASH_CHARS];
        // The length is fixed, so encoding into the exact slice cannot fail;
        // still, no panic on a path a request reaches.
        match URL_SAFE_NO_PAD.encode_slice(self.0, &mut out) {
            Ok(HASH_CHARS) => f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?),
            _ => Err(fmt::Error),
        }
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The id is not a credential, but keep logs short and uniform.
        f.write_str("SessionId(<elided>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_round_trip_and_differ() {
        let tag = Tag::random().unwrap();
        let a = Token::generate(tag).unwrap();
        let b = Token::generate(tag).unwrap();
        assert_ne!(a, b);
        assert_ne!(a.id(), b.id());
        let text = a.to_string();
        assert_eq!(text.len(), TOKEN_LEN);
        assert_eq!(text.parse::<Token>().unwrap(), a);
        assert_eq!(a.tag(), b.tag());
    }

    #[test]
    fn rejects_malformed_text() {
        let good = Token::generate(Tag::random().unwrap()).unwrap().to_string();
        assert_eq!("".parse::<Token>(), Err(TokenError::Length));
        assert_eq!(good[1..].parse::<Token>(), Err(TokenError::Length));
        let mut no_dot = good.clone().into_bytes();
        no_dot[TAG_CHARS] = b'x';
        assert_eq!(
            String::from_utf8(no_dot).unwrap().parse::<Token>(),
            Err(TokenError::Format)
        );
        let mut bad_char = good.clone().into_bytes();
        bad_char[3] = b'+';
        assert_eq!(
            String::from_utf8(bad_char).unwrap().parse::<Token>(),
            Err(TokenError::Format)
        );
        // Non-canonical: the last secret character carries bits beyond 32 bytes.
        let mut loose = good.into_bytes();
        loose[TOKEN_LEN - 1] = b'B';
        let loose = String::from_utf8(loose).unwrap();
        if let Ok(token) = loose.parse::<Token>() {
            assert_eq!(token.to_string(), loose);
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let token = Token::generate(Tag::random().unwrap()).unwrap();
        let shown = format!("{token:?} {:?}", token.id());
        assert!(!shown.contains(&token.to_string()[TAG_CHARS + 1..]));
        assert!(!shown.contains(&token.id().to_string()));
    }
}
