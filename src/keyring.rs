//! The keys of a deployment: a [`Keyring`] signs (and, when asked, encrypts)
//! sealed records and routes users to hash slots. Every key derives from a
//! secret of at least 32 bytes; the envelope that uses them is in
//! [`envelope`](crate::envelope).

use std::fmt;
use std::sync::Arc;

use chacha20poly1305::XChaCha20Poly1305;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::token::{RandomError, TAG_BYTES, Tag};

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The length of a key id in an envelope.
pub(crate) const KEY_ID_LEN: usize = 4;
/// The shortest secret a [`Keyring`] accepts, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The secret is too short to be a key.
    #[error("session secret is {0} bytes; at least {MIN_SECRET_LEN} bytes are required")]
    TooShort(usize),
    /// The operating system's random number generator failed.
    #[error("could not generate a random session secret: {0}")]
    Random(#[from] RandomError),
}

/// One signing key, pre-keyed so that sealing does not redo the HMAC key
/// setup, with the encryption key derived from the same secret.
#[derive(Clone)]
pub(crate) struct SigningKey {
    pub(crate) id: [u8; KEY_ID_LEN],
    pub(crate) mac: HmacSha256,
    pub(crate) aead: XChaCha20Poly1305,
}

/// The keys of a deployment: one that signs, older ones that still verify,
/// and the key that routes users to hash slots.
///
/// Every key is derived from a base secret of at least 32 bytes with
/// HMAC-SHA256 and a distinct label, so the one secret never signs anything
/// itself.
///
/// Rotation: [`rotate`](Keyring::rotate) makes a new secret the signer while
/// blobs signed with the older ones still open; each blob is re-signed with
/// the new key the next time its session is saved. The routing key stays the
/// one derived from the first secret (or set by
/// [`with_routing_secret`](Keyring::with_routing_secret)), so rotation never
/// moves a user's sessions to another hash slot.
///
/// ```
/// use tower_redis_sessions::Keyring;
///
/// let old = Keyring::new([7u8; 32])?;
/// // Later: sign with a new secret, still accept blobs signed with the old one.
/// let keys = Keyring::new([7u8; 32])?.rotate([9u8; 32])?;
/// assert_ne!(old.key_id(), keys.key_id());
/// assert!(Keyring::new(b"short").is_err());
/// # Ok::<(), tower_redis_sessions::KeyError>(())
/// ```
#[derive(Clone)]
pub struct Keyring {
    /// The signing key first, then older keys that only verify.
    pub(crate) keys: Arc<Vec<SigningKey>>,
    routing: HmacSha256,
    /// Seal records encrypted (format 2) rather than signed (format 1).
    pub(crate) encrypt: bool,
}

impl Keyring {
    /// A keyring whose keys all derive from `secret` (at least 32 bytes).
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Keyring, KeyError> {
        check(secret.as_ref()).map(Keyring::derive)
    }

    /// The keyring of a secret already checked for length.
    pub(crate) fn derive(secret: &[u8]) -> Keyring {
        Keyring {
            keys: Arc::new(vec![signing_key(secret)]),
            routing: derived_mac(secret, b"routing"),
            encrypt: false,
        }
    }

    /// A keyring from a fresh random secret: sessions do not survive a
    /// restart of the process. For tests, demos and single-process setups.
    pub fn generate() -> Result<Keyring, KeyError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(RandomError)?;
        Keyring::new(secret)
    }

    /// Signs with a key derived from `secret` from now on; the keys signing
    /// until now keep verifying. The routing key does not change.
    pub fn rotate(self, secret: impl AsRef<[u8]>) -> Result<Keyring, KeyError> {
        let mut keys = vec![signing_key(check(secret.as_ref())?)];
        keys.extend(self.keys.iter().cloned());
        Ok(Keyring {
            keys: Arc::new(keys),
            ..self
        })
    }

    /// Also accepts (never signs with) blobs signed by a key derived from
    /// `secret`.
    ///
    /// The routing key stays this keyring's. So to restart after a rotation
    /// as `Keyring::new(new)?.accept(old)?`, also pin the routing key with
    /// [`with_routing_secret`](Keyring::with_routing_secret)`(old)` (or
    /// restart as `Keyring::new(old)?.rotate(new)?`); otherwise users' new
    /// sessions land in other hash slots than their existing ones, which
    /// then drop out of listings and revocation.
    pub fn accept(self, secret: impl AsRef<[u8]>) -> Result<Keyring, KeyError> {
        let mut keys: Vec<SigningKey> = self.keys.iter().cloned().collect();
        keys.push(signing_key(check(secret.as_ref())?));
        Ok(Keyring {
            keys: Arc::new(keys),
            ..self
        })
    }

    /// Derives the routing key from `secret` instead: set it once and keep
    /// it, as changing it moves users' new sessions to other hash slots
    /// (their existing sessions stay readable, but leave the user's index).
    pub fn with_routing_secret(self, secret: impl AsRef<[u8]>) -> Result<Keyring, KeyError> {
        Ok(Keyring {
            routing: derived_mac(check(secret.as_ref())?, b"routing"),
            ..self
        })
    }

    /// Whether records are sealed encrypted (default `false`: signed only).
    ///
    /// Signed records are tamper-proof but readable: user ids, session
    /// values and metadata show in a Redis dump, a backup, `MONITOR` or a
    /// replica's traffic. Encrypted records (XChaCha20-Poly1305 under a key
    /// derived from the same secrets, bound to the Redis key as the MAC is,
    /// rotated with the keyring) show nothing but their size. Turn it on
    /// when sessions hold personal data, or when people or systems that may
    /// read Redis (operators, backups, a managed provider) should not read
    /// them. It costs about 1.6 µs more per seal and per open of a typical
    /// 1.1 KiB record (`cargo bench
    /// --features fuzzing --bench codec`). Both forms always open, so
    /// switching needs no migration: a record takes the new form at its next
    /// save.
    ///
    /// ```
    /// use tower_redis_sessions::Keyring;
    ///
    /// let keys = Keyring::new([7u8; 32])?.encrypt_records(true);
    /// # Ok::<(), tower_redis_sessions::KeyError>(())
    /// ```
    pub fn encrypt_records(self, on: bool) -> Keyring {
        Keyring {
            encrypt: on,
            ..self
        }
    }

    /// The id of the key that signs, as written in each envelope (hex). It
    /// identifies the key without revealing it.
    pub fn key_id(&self) -> String {
        self.keys
            .first()
            .map(|k| k.id.iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default()
    }

    /// The routing tag of a user, and a hash naming the user's index: a keyed
    /// hash, so neither reveals the user id.
    pub(crate) fn user_route(&self, user: &str) -> (Tag, [u8; 32]) {
        let hash: [u8; 32] = self
            .routing
            .clone()
            .chain_update(user.as_bytes())
            .finalize()
            .into_bytes()
            .into();
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&hash[..TAG_BYTES]);
        (Tag(tag), hash)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("signing_key_id", &self.key_id())
            .field("keys", &self.keys.len())
            .field("encrypt", &self.encrypt)
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA256 keyed with `key`, infallibly: HMAC takes keys of any length
/// (shorter ones zero-padded to the block, longer ones hashed first).
fn hmac(key: &[u8]) -> HmacSha256 {
    let mut block = [0u8; 64];
    if key.len() <= block.len() {
        block[..key.len()].copy_from_slice(key);
    } else {
        block[..32].copy_from_slice(&Sha256::digest(key));
    }
    HmacSha256::new(&block.into())
}

/// A 32-byte key derived from `secret` for one purpose (`label`).
fn derived_key(secret: &[u8], label: &[u8]) -> [u8; 32] {
    hmac(secret)
        .chain_update(b"tower-redis-sessions/v1/")
        .chain_update(label)
        .finalize()
        .into_bytes()
        .into()
}

fn derived_mac(secret: &[u8], label: &[u8]) -> HmacSha256 {
    hmac(&derived_key(secret, label))
}

fn check(secret: &[u8]) -> Result<&[u8], KeyError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(KeyError::TooShort(secret.len()));
    }
    Ok(secret)
}

fn signing_key(secret: &[u8]) -> SigningKey {
    let mac = derived_mac(secret, b"signing");
    // The id is a MAC of a constant under the signing key: stable, and
    // useless for forging.
    let tag = mac.clone().chain_update(b"key id").finalize().into_bytes();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&tag[..KEY_ID_LEN]);
    let aead = XChaCha20Poly1305::new(&derived_key(secret, b"encryption").into());
    SigningKey { id, mac, aead }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(Keyring::new([0; 31]).err(), Some(KeyError::TooShort(31)));
    }

    #[test]
    fn rotation_keeps_the_routes() {
        let old = Keyring::new([1; 32]).unwrap();
        let new = old.clone().rotate([2; 32]).unwrap();
        assert_ne!(old.key_id(), new.key_id());
        assert_eq!(old.user_route("alice").1, new.user_route("alice").1);
        assert_ne!(old.user_route("alice").1, old.user_route("bob").1);
    }
}
