//! The Redis key layout of one deployment (one key prefix).
//!
//! ```text
//! <prefix>{<tag>}:s:<session id>    a session (hash)
//! <prefix>{<tag>}:u:<user hash>     a user's index (sorted set)
//! ```
//!
//! The `{<tag>}` hash tag puts a user's sessions and index in one hash slot;
//! both ids are base64url of 32-byte hashes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::token::{HASH_CHARS, SessionId, TAG_CHARS, Tag};

/// Builds the Redis key names of one deployment (one key prefix).
#[derive(Clone, Debug)]
pub(crate) struct KeySpace {
    prefix: String,
}

impl KeySpace {
    pub(crate) fn new(prefix: impl Into<String>) -> KeySpace {
        KeySpace {
            prefix: prefix.into(),
        }
    }

    /// `<prefix>{<tag>}:s:<id>`
    pub(crate) fn session(&self, tag: Tag, id: &SessionId) -> String {
        self.key(tag, ":s:", &id.0)
    }

    /// `<prefix>{<tag>}:u:<user hash>`, the hash in base64url.
    pub(crate) fn user_index(&self, tag: Tag, user_hash: &[u8; 32]) -> String {
        self.key(tag, ":u:", user_hash)
    }

    /// `<prefix>{<tag>}<kind><base64url of hash>`, built in one allocation of
    /// the exact size (every store call names a key or two).
    fn key(&self, tag: Tag, kind: &str, hash: &[u8; 32]) -> String {
        let mut key =
            String::with_capacity(self.prefix.len() + TAG_CHARS + 2 + kind.len() + HASH_CHARS);
        key.push_str(&self.prefix);
        key.push('{');
        tag.encode_into(&mut key);
        key.push('}');
        key.push_str(kind);
        URL_SAFE_NO_PAD.encode_string(hash, &mut key);
        key
    }

    /// The session id at the end of a session key name (as listed by Redis).
    pub(crate) fn id_of(&self, key: &str) -> Option<SessionId> {
        let (_, id) = key.rsplit_once(":s:")?;
        SessionId::parse(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{TAG_BYTES, Token};

    #[test]
    fn keys_carry_the_tag_as_hash_tag() {
        let token = Token::generate(Tag([0; TAG_BYTES])).unwrap();
        let keys = KeySpace::new("app:");
        let key = keys.session(token.tag(), &token.id());
        assert_eq!(key, format!("app:{{AAAAAAAA}}:s:{}", token.id()));
        assert_eq!(key.len(), key.capacity());
        assert_eq!(keys.id_of(&key), Some(token.id()));
        let index = keys.user_index(Tag([0xff; TAG_BYTES]), &[0; 32]);
        assert_eq!(index, format!("app:{{________}}:u:{}", "A".repeat(43)));
        assert_eq!(index.len(), index.capacity());
    }
}
