//! The sealed envelope a store keeps in Redis, and the keys that seal it.
//!
//! ```text
//! byte 0       envelope format version (1)
//! bytes 1..5   id of the key that signed it (derived from the key, not secret)
//! bytes 5..37  HMAC-SHA256(key, byte 0 | key id | len(binding) u32 BE | binding | body)
//! bytes 37..   body: CBOR of user, kind, created at, idle timeout, absolute deadline, data
//! ```
//!
//! The binding is the Redis key name the blob is stored under, so a blob
//! copied to another session's key does not verify. The MAC is checked in
//! constant time before a single byte of the body is decoded.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::record::{Data, Millis, Record, millis};
use crate::token::{SessionId, TAG_BYTES, Tag};

type HmacSha256 = Hmac<Sha256>;

const FORMAT: u8 = 1;
const KEY_ID_LEN: usize = 4;
const MAC_LEN: usize = 32;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + MAC_LEN;
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
    Random(String),
}

/// One signing key, pre-keyed so that sealing does not redo the HMAC key setup.
struct SigningKey {
    id: [u8; KEY_ID_LEN],
    mac: HmacSha256,
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
    keys: Arc<Vec<SigningKey>>,
    routing: HmacSha256,
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
        }
    }

    /// A keyring from a fresh random secret: sessions do not survive a
    /// restart of the process. For tests, demos and single-process setups.
    pub fn generate() -> Result<Keyring, KeyError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        Keyring::new(secret)
    }

    /// Signs with a key derived from `secret` from now on; the keys signing
    /// until now keep verifying. The routing key does not change.
    pub fn rotate(self, secret: impl AsRef<[u8]>) -> Result<Keyring, KeyError> {
        let mut keys = vec![signing_key(check(secret.as_ref())?)];
        keys.extend(self.keys.iter().map(|k| SigningKey {
            id: k.id,
            mac: k.mac.clone(),
        }));
        Ok(Keyring {
            keys: Arc::new(keys),
            routing: self.routing,
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
        let mut keys: Vec<SigningKey> = self
            .keys
            .iter()
            .map(|k| SigningKey {
                id: k.id,
                mac: k.mac.clone(),
            })
            .collect();
        keys.push(signing_key(check(secret.as_ref())?));
        Ok(Keyring {
            keys: Arc::new(keys),
            routing: self.routing,
        })
    }

    /// Derives the routing key from `secret` instead: set it once and keep
    /// it, as changing it moves users' new sessions to other hash slots
    /// (their existing sessions stay readable, but leave the user's index).
    pub fn with_routing_secret(self, secret: impl AsRef<[u8]>) -> Result<Keyring, KeyError> {
        Ok(Keyring {
            keys: self.keys,
            routing: derived_mac(check(secret.as_ref())?, b"routing"),
        })
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

fn derived_mac(secret: &[u8], label: &[u8]) -> HmacSha256 {
    let key = hmac(secret)
        .chain_update(b"tower-redis-sessions/v1/")
        .chain_update(label)
        .finalize()
        .into_bytes();
    hmac(&key)
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
    SigningKey { id, mac }
}

/// Why a blob did not open. Each is treated as "no session".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("sealed session is larger than the configured maximum")]
    TooLarge,
    #[error("sealed session is truncated")]
    Truncated,
    #[error("sealed session has an unknown envelope format")]
    Format,
    #[error("sealed session names a key this keyring does not hold")]
    UnknownKey,
    #[error("sealed session failed verification")]
    BadMac,
    #[error("sealed session body does not decode")]
    Body,
}

#[derive(Serialize)]
struct BodyRef<'a> {
    u: Option<&'a str>,
    k: &'a str,
    c: Millis,
    i: Option<u64>,
    a: Option<Millis>,
    d: &'a Data,
}

#[derive(Deserialize)]
struct Body {
    u: Option<String>,
    k: String,
    c: Millis,
    i: Option<u64>,
    a: Option<Millis>,
    d: Data,
}

/// What the store knows about a blob besides the blob: where it lives and
/// its unsealed bookkeeping.
pub(crate) struct Meta<'a> {
    pub(crate) binding: &'a str,
    pub(crate) id: SessionId,
    pub(crate) version: u64,
    pub(crate) last_seen: Millis,
}

/// Seals and opens records with a keyring, within a size limit.
#[derive(Clone, Debug)]
pub(crate) struct Codec {
    keyring: Keyring,
    max_sealed: usize,
}

impl Codec {
    pub(crate) fn new(keyring: Keyring, max_sealed: usize) -> Codec {
        Codec {
            keyring,
            max_sealed,
        }
    }

    pub(crate) fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub(crate) fn max_sealed(&self) -> usize {
        self.max_sealed
    }

    /// The sealed form of `record`, bound to `binding`. `None` only if the
    /// body does not encode (a CBOR value ciborium refuses).
    pub(crate) fn seal(&self, binding: &str, record: &Record) -> Option<Vec<u8>> {
        let key = self.keyring.keys.first()?;
        let mut out = Vec::with_capacity(sealed_size_hint(record));
        out.push(FORMAT);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&[0; MAC_LEN]);
        let body = BodyRef {
            u: record.user.as_deref(),
            k: &record.kind,
            c: record.created_at,
            i: record.idle_timeout.map(millis),
            a: record.absolute_deadline,
            d: &record.data,
        };
        ciborium::into_writer(&body, &mut out).ok()?;
        let tag = mac_input(
            key.mac.clone(),
            &out[..1 + KEY_ID_LEN],
            binding,
            &out[HEADER_LEN..],
        )
        .finalize()
        .into_bytes();
        out[1 + KEY_ID_LEN..HEADER_LEN].copy_from_slice(&tag);
        Some(out)
    }

    /// An envelope around an already encoded body (for fuzzing the decoder).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn seal_body(&self, binding: &str, body: &[u8]) -> Vec<u8> {
        let mut out = vec![FORMAT];
        if let Some(key) = self.keyring.keys.first() {
            out.extend_from_slice(&key.id);
            let tag = mac_input(key.mac.clone(), &out, binding, body)
                .finalize()
                .into_bytes();
            out.extend_from_slice(&tag);
        }
        out.extend_from_slice(body);
        out
    }

    /// Verifies and decodes a blob read from under `meta.binding`.
    pub(crate) fn open(&self, blob: &[u8], meta: Meta<'_>) -> Result<Record, OpenError> {
        if blob.len() > self.max_sealed {
            return Err(OpenError::TooLarge);
        }
        if blob.len() < HEADER_LEN {
            return Err(OpenError::Truncated);
        }
        if blob[0] != FORMAT {
            return Err(OpenError::Format);
        }
        let (id, tag, body) = (
            &blob[1..1 + KEY_ID_LEN],
            &blob[1 + KEY_ID_LEN..HEADER_LEN],
            &blob[HEADER_LEN..],
        );
        let mut known = false;
        let mut verified = false;
        for key in self.keyring.keys.iter().filter(|k| k.id == id) {
            known = true;
            if mac_input(key.mac.clone(), &blob[..1 + KEY_ID_LEN], meta.binding, body)
                .verify_slice(tag)
                .is_ok()
            {
                verified = true;
                break;
            }
        }
        if !known {
            return Err(OpenError::UnknownKey);
        }
        if !verified {
            return Err(OpenError::BadMac);
        }
        let body = decode_body(body).ok_or(OpenError::Body)?;
        Ok(Record {
            id: meta.id,
            user: body.u,
            kind: body.k,
            created_at: body.c,
            last_seen: meta.last_seen,
            idle_timeout: body.i.map(Duration::from_millis),
            absolute_deadline: body.a,
            version: meta.version,
            data: body.d,
        })
    }
}

/// Decodes a verified body: the common shapes directly (see [`fast`]),
/// anything else with ciborium.
fn decode_body(body: &[u8]) -> Option<Body> {
    fast::body(body).or_else(|| decode_body_ciborium(body))
}

/// Decodes a body with ciborium. `ciborium::from_reader` zeroes a fresh
/// 4 KiB scratch buffer for every call (a tenth of the decoding work of a
/// typical record); each thread reuses one instead.
fn decode_body_ciborium(body: &[u8]) -> Option<Body> {
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 4096]);
    }
    SCRATCH
        .with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => ciborium::de::from_reader_with_buffer(body, &mut scratch),
            // Never nested today; if it were, a fresh buffer is still right.
            Err(_) => ciborium::from_reader(body),
        })
        .ok()
}

/// A decoder for the bodies this crate writes, about three times faster than
/// ciborium's serde path (which goes through a visitor, a scratch copy and a
/// dispatch per item).
///
/// It accepts only what it decodes exactly as ciborium would: a definite map
/// with the text keys `u k c i a d`, each once and nothing else, then no
/// trailing bytes; values made of unsigned and negative integers, definite
/// text and byte strings, definite arrays and maps (nested at most
/// [`fast::DEPTH`] deep), `false`, `true`, `null`, single and double floats.
/// Anything else (tags, half floats, indefinite lengths, `undefined`, other
/// simple values, a field missing, repeated or unknown, invalid UTF-8, a
/// length past the end) makes it give up, and the caller decodes the body
/// with ciborium, which then accepts or refuses it by its own rules. So a
/// body decodes to the same `Body`, or fails, either way.
mod fast {
    use ciborium::Value;
    use ciborium::value::Integer;

    use super::Body;
    use crate::record::Data;

    /// Deepest nesting of arrays and maps in a value decoded here.
    pub(super) const DEPTH: usize = 16;
    /// Room reserved for an array or map before its items are read (a
    /// length is only a claim until they are).
    const PREALLOCATED: usize = 64;

    pub(super) fn body(bytes: &[u8]) -> Option<Body> {
        let mut r = Reader { bytes, pos: 0 };
        let fields = r.head_of(MAP)?;
        let (mut u, mut k, mut c, mut i, mut a, mut d) = (None, None, None, None, None, None);
        for _ in 0..fields {
            let name = r.text()?;
            let slot_taken = match name {
                "u" => u.replace(r.option(Reader::string)?).is_some(),
                "k" => k.replace(r.string()?).is_some(),
                "c" => c.replace(r.head_of(UNSIGNED)?).is_some(),
                "i" => i.replace(r.option(|r| r.head_of(UNSIGNED))?).is_some(),
                "a" => a.replace(r.option(|r| r.head_of(UNSIGNED))?).is_some(),
                "d" => d.replace(r.data()?).is_some(),
                _ => return None,
            };
            if slot_taken {
                return None;
            }
        }
        if r.pos != bytes.len() {
            return None;
        }
        Some(Body {
            u: u?,
            k: k?,
            c: c?,
            i: i?,
            a: a?,
            d: d?,
        })
    }

    const UNSIGNED: u8 = 0;
    const NEGATIVE: u8 = 1;
    const BYTES: u8 = 2;
    const TEXT: u8 = 3;
    const ARRAY: u8 = 4;
    const MAP: u8 = 5;
    const SIMPLE: u8 = 7;
    const FALSE: u64 = 20;
    const TRUE: u64 = 21;
    const NULL: u64 = 22;

    struct Reader<'a> {
        bytes: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let end = self.pos.checked_add(n)?;
            let taken = self.bytes.get(self.pos..end)?;
            self.pos = end;
            Some(taken)
        }

        fn peek(&self) -> Option<u8> {
            self.bytes.get(self.pos).copied()
        }

        /// An item's major type and argument. For major type 7 the argument
        /// is the simple value, or the float's bits with their width: the
        /// caller tells them apart by the additional information, returned
        /// third. No indefinite lengths, no reserved values.
        fn head(&mut self) -> Option<(u8, u64, u8)> {
            let first = *self.take(1)?.first()?;
            let (major, info) = (first >> 5, first & 0x1f);
            let arg = match info {
                0..=23 => u64::from(info),
                24 => u64::from(*self.take(1)?.first()?),
                25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
                26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)),
                27 => u64::from_be_bytes(self.take(8)?.try_into().ok()?),
                _ => return None,
            };
            // A simple value in the extra byte (info 24) is a form this
            // decoder leaves to ciborium.
            if major == SIMPLE && info == 24 {
                return None;
            }
            Some((major, arg, info))
        }

        /// The argument of an item of major type `major` (not 7).
        fn head_of(&mut self, major: u8) -> Option<u64> {
            match self.head()? {
                (m, arg, _) if m == major => Some(arg),
                _ => None,
            }
        }

        fn len(&mut self, major: u8) -> Option<usize> {
            usize::try_from(self.head_of(major)?).ok()
        }

        fn text(&mut self) -> Option<&'a str> {
            let len = self.len(TEXT)?;
            std::str::from_utf8(self.take(len)?).ok()
        }

        fn string(&mut self) -> Option<String> {
            self.text().map(str::to_owned)
        }

        /// `null` as `None`, else what `some` reads.
        fn option<T>(&mut self, some: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
            if self.peek()? == (SIMPLE << 5) | NULL as u8 {
                self.pos += 1;
                return Some(None);
            }
            some(self).map(Some)
        }

        fn data(&mut self) -> Option<Data> {
            let entries = self.len(MAP)?;
            let mut data = Data::new();
            for _ in 0..entries {
                let key = self.string()?;
                let value = self.value(0)?;
                // As serde's BTreeMap does: a repeated key keeps the last value.
                data.insert(key, value);
            }
            Some(data)
        }

        fn value(&mut self, depth: usize) -> Option<Value> {
            let (major, arg, info) = self.head()?;
            Some(match major {
                UNSIGNED => Value::Integer(Integer::from(arg)),
                NEGATIVE => Value::Integer(Integer::try_from(-1 - i128::from(arg)).ok()?),
                BYTES => Value::Bytes(self.take(usize::try_from(arg).ok()?)?.to_vec()),
                TEXT => {
                    let text = self.take(usize::try_from(arg).ok()?)?;
                    Value::Text(std::str::from_utf8(text).ok()?.to_owned())
                }
                ARRAY if depth < DEPTH => {
                    let len = usize::try_from(arg).ok()?;
                    let mut items = Vec::with_capacity(len.min(PREALLOCATED));
                    for _ in 0..len {
                        items.push(self.value(depth + 1)?);
                    }
                    Value::Array(items)
                }
                MAP if depth < DEPTH => {
                    let len = usize::try_from(arg).ok()?;
                    let mut entries = Vec::with_capacity(len.min(PREALLOCATED));
                    for _ in 0..len {
                        let key = self.value(depth + 1)?;
                        entries.push((key, self.value(depth + 1)?));
                    }
                    Value::Map(entries)
                }
                SIMPLE => match (info, arg) {
                    (0..=23, FALSE) => Value::Bool(false),
                    (0..=23, TRUE) => Value::Bool(true),
                    (0..=23, NULL) => Value::Null,
                    (26, bits) => {
                        Value::Float(f64::from(f32::from_bits(u32::try_from(bits).ok()?)))
                    }
                    (27, bits) => Value::Float(f64::from_bits(bits)),
                    _ => return None,
                },
                _ => return None,
            })
        }
    }
}

/// About the sealed size of `record` (exact for text and byte values, a
/// guess for others), so that sealing writes into one allocation instead of
/// growing it three or four times.
fn sealed_size_hint(record: &Record) -> usize {
    use ciborium::Value;
    // Envelope, field names and headers, the numbers.
    let fixed = HEADER_LEN + 64;
    let strings = record.user.as_deref().map_or(0, str::len) + record.kind.len();
    let data: usize = record
        .data
        .iter()
        .map(|(k, v)| {
            k.len()
                + 18 // two headers of up to 9 bytes
                + match v {
                    Value::Text(t) => t.len(),
                    Value::Bytes(b) => b.len(),
                    _ => 16,
                }
        })
        .sum();
    fixed + strings + data
}

fn mac_input(mac: HmacSha256, header: &[u8], binding: &str, body: &[u8]) -> HmacSha256 {
    let len = u32::try_from(binding.len()).unwrap_or(u32::MAX);
    mac.chain_update(header)
        .chain_update(len.to_be_bytes())
        .chain_update(binding.as_bytes())
        .chain_update(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{Tag, Token};

    fn record() -> Record {
        let token = Token::generate(Tag::random().unwrap()).unwrap();
        let mut r = Record::new(token.id(), "web", 1_000);
        r.user = Some("alice".into());
        r.idle_timeout = Some(Duration::from_secs(60));
        r.absolute_deadline = Some(9_000_000);
        r.data
            .insert("n".into(), ciborium::Value::Integer(7.into()));
        r
    }

    fn meta<'a>(binding: &'a str, r: &Record) -> Meta<'a> {
        Meta {
            binding,
            id: r.id,
            version: 3,
            last_seen: 2_000,
        }
    }

    #[test]
    fn seal_then_open_gives_the_record_back() {
        let codec = Codec::new(Keyring::new([1; 32]).unwrap(), 64 * 1024);
        let r = record();
        let blob = codec.seal("k1", &r).unwrap();
        let opened = codec.open(&blob, meta("k1", &r)).unwrap();
        assert_eq!(opened.user, r.user);
        assert_eq!(opened.data, r.data);
        assert_eq!(opened.idle_timeout, r.idle_timeout);
        assert_eq!(opened.absolute_deadline, r.absolute_deadline);
        assert_eq!((opened.version, opened.last_seen), (3, 2_000));
    }

    /// A body as comparable bytes (floats by their bits, so NaN == NaN).
    fn canonical(body: &Body) -> Vec<u8> {
        let mut out = Vec::new();
        let body = BodyRef {
            u: body.u.as_deref(),
            k: &body.k,
            c: body.c,
            i: body.i,
            a: body.a,
            d: &body.d,
        };
        ciborium::into_writer(&body, &mut out).unwrap();
        out
    }

    /// The fast decoder gives up or agrees with ciborium.
    fn check_agrees(bytes: &[u8]) -> bool {
        let fast = fast::body(bytes);
        let slow = decode_body_ciborium(bytes);
        if let Some(fast) = &fast {
            let slow = slow
                .as_ref()
                .expect("ciborium refuses what the fast path accepts");
            assert_eq!(canonical(fast), canonical(slow));
        }
        fast.is_some()
    }

    fn encoded(data: Data, user: Option<&str>, idle: Option<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        let body = BodyRef {
            u: user,
            k: "web",
            c: 1_700_000_000_000,
            i: idle,
            a: None,
            d: &data,
        };
        ciborium::into_writer(&body, &mut out).unwrap();
        out
    }

    fn value() -> impl proptest::strategy::Strategy<Value = ciborium::Value> {
        use ciborium::Value;
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<u64>().prop_map(|n| Value::Integer(n.into())),
            any::<i64>().prop_map(|n| Value::Integer(n.into())),
            (0u64..=u64::MAX).prop_map(|n| Value::Integer(
                ciborium::value::Integer::try_from(-1 - i128::from(n)).unwrap()
            )),
            ".{0,40}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
            any::<f64>().prop_map(Value::Float),
            any::<f32>().prop_map(|f| Value::Float(f.into())),
            (0u64..100, ".{0,8}").prop_map(|(t, s)| Value::Tag(t, Box::new(Value::Text(s)))),
        ];
        leaf.prop_recursive(20, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::vec((inner.clone(), inner), 0..8).prop_map(Value::Map),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        #[test]
        fn fast_decoding_agrees_with_ciborium(
            data in proptest::collection::btree_map(".{0,12}", value(), 0..12),
            user in proptest::option::of(".{0,20}"),
            idle in proptest::option::of(proptest::prelude::any::<u64>()),
        ) {
            let bytes = encoded(data.clone(), user.as_deref(), idle);
            check_agrees(&bytes);
            // Values of the common kinds always take the fast path.
            let plain = data.values().all(|v| {
                matches!(v, ciborium::Value::Integer(_) | ciborium::Value::Text(_) | ciborium::Value::Bool(_) | ciborium::Value::Null)
            });
            if plain {
                proptest::prop_assert!(fast::body(&bytes).is_some());
            }
        }

        #[test]
        fn fast_decoding_agrees_on_damaged_bodies(
            data in proptest::collection::btree_map(".{0,12}", value(), 0..6),
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..4),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let mut bytes = encoded(data, Some("alice"), Some(60_000));
            for (at, byte) in edits {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            check_agrees(&bytes);
            bytes.truncate(cut % (bytes.len() + 1));
            check_agrees(&bytes);
        }
    }

    #[test]
    fn fast_decoding_takes_the_typical_record() {
        let mut data = Data::new();
        for i in 0..10 {
            data.insert(format!("k{i}"), ciborium::Value::Text("x".repeat(96)));
        }
        data.insert("n".into(), ciborium::Value::Integer(7.into()));
        let bytes = encoded(data, Some("alice"), Some(86_400_000));
        assert!(check_agrees(&bytes));
        // Left to ciborium: a repeated field, an unknown one, trailing bytes,
        // a half float, an indefinite map.
        let mut repeated = bytes.clone();
        repeated[0] += 1; // one more field than written: runs into the end
        assert!(!check_agrees(&repeated));
        let mut twice = bytes.clone();
        twice[0] += 1;
        twice.extend_from_slice(&[0x61, b'k', 0x63, b'a', b'p', b'i']); // "k": "api" again
        assert!(!check_agrees(&twice));
        let mut unknown = bytes.clone();
        unknown[0] += 1;
        unknown.extend_from_slice(&[0x61, b'z', 0x01]); // "z": 1
        assert!(!check_agrees(&unknown));
        assert!(
            decode_body_ciborium(&unknown).is_some(),
            "serde skips unknown fields"
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(!check_agrees(&trailing));
        // ciborium writes 1.5 as a half float, 0.1 as a double.
        let half = encoded(
            [("h".to_owned(), ciborium::Value::Float(1.5))].into(),
            None,
            None,
        );
        assert!(!check_agrees(&half));
        let double = encoded(
            [("f".to_owned(), ciborium::Value::Float(0.1))].into(),
            None,
            None,
        );
        assert!(check_agrees(&double));
        let mut indefinite = vec![0xbf];
        indefinite.extend_from_slice(&bytes[1..]);
        indefinite.push(0xff);
        assert!(!check_agrees(&indefinite));
        assert!(decode_body_ciborium(&indefinite).is_some());
    }

    #[test]
    fn the_size_hint_covers_text_values() {
        let codec = Codec::new(Keyring::new([1; 32]).unwrap(), 64 * 1024);
        let mut r = record();
        for i in 0..10 {
            r.data
                .insert(format!("k{i}"), ciborium::Value::Text("x".repeat(96)));
        }
        let blob = codec.seal("k1", &r).unwrap();
        let hint = sealed_size_hint(&r);
        assert!(blob.len() <= hint, "{} > {hint}", blob.len());
        assert!(hint < blob.len() + 256, "{hint} for {}", blob.len());
    }

    #[test]
    fn every_alteration_is_refused() {
        let codec = Codec::new(Keyring::new([1; 32]).unwrap(), 64 * 1024);
        let r = record();
        let blob = codec.seal("k1", &r).unwrap();
        assert_eq!(codec.open(&blob, meta("k2", &r)), Err(OpenError::BadMac));
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(codec.open(&bad, meta("k1", &r)).is_err(), "byte {i}");
        }
        for n in 0..blob.len() {
            assert!(codec.open(&blob[..n], meta("k1", &r)).is_err(), "len {n}");
        }
        let other = Codec::new(Keyring::new([2; 32]).unwrap(), 64 * 1024);
        assert_eq!(
            other.open(&blob, meta("k1", &r)),
            Err(OpenError::UnknownKey)
        );
        let small = Codec::new(Keyring::new([1; 32]).unwrap(), 10);
        assert_eq!(small.open(&blob, meta("k1", &r)), Err(OpenError::TooLarge));
    }

    #[test]
    fn rotation_keeps_old_blobs_and_routes() {
        let old = Keyring::new([1; 32]).unwrap();
        let new = old.clone().rotate([2; 32]).unwrap();
        let r = record();
        let blob = Codec::new(old.clone(), 1 << 16).seal("k", &r).unwrap();
        let codec = Codec::new(new.clone(), 1 << 16);
        assert!(codec.open(&blob, meta("k", &r)).is_ok());
        let resealed = codec.seal("k", &r).unwrap();
        assert_eq!(
            Codec::new(old.clone(), 1 << 16).open(&resealed, meta("k", &r)),
            Err(OpenError::UnknownKey)
        );
        assert_eq!(old.user_route("alice").1, new.user_route("alice").1);
        assert_ne!(old.user_route("alice").1, old.user_route("bob").1);
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(Keyring::new([0; 31]).err(), Some(KeyError::TooShort(31)));
    }
}
