//! The sealed envelope a store keeps in Redis: a record signed (format 1) or
//! encrypted (format 2) with the keys of a [`Keyring`].
//!
//! ```text
//! byte 0       envelope format version (1)
//! bytes 1..5   id of the key that signed it (derived from the key, not secret)
//! bytes 5..37  HMAC-SHA256(key, byte 0 | key id | len(binding) u32 BE | binding | body)
//! bytes 37..   body: CBOR of user, kind, created at, idle timeout, absolute deadline, data
//! ```
//!
//! With [`Keyring::encrypt_records`] on, records are sealed in format 2
//! instead, encrypted with XChaCha20-Poly1305 (an AEAD):
//!
//! ```text
//! byte 0       envelope format version (2)
//! bytes 1..5   id of the key that sealed it
//! bytes 5..29  nonce (24 random bytes)
//! bytes 29..   the body encrypted, then its 16-byte Poly1305 tag
//!              (associated data: byte 0 | key id | len(binding) u32 BE | binding)
//! ```
//!
//! The binding is the Redis key name the blob is stored under, so a blob
//! copied to another session's key does not verify. The MAC (or the AEAD
//! tag) is checked in constant time before a single byte of the body is
//! decoded. Both formats always open, whatever the keyring seals with, so
//! turning encryption on (or off) needs no migration: each record takes the
//! new form when its session is next saved.

use std::borrow::Cow;
use std::cell::RefCell;
use std::time::Duration;

use chacha20poly1305::XNonce;
use chacha20poly1305::aead::AeadInOut;
use hmac::Mac;
use serde::{Deserialize, Serialize};

use crate::keyring::{HmacSha256, KEY_ID_LEN, Keyring};
use crate::record::{Data, Metadata, Millis, Record, millis};
use crate::token::SessionId;

const FORMAT: u8 = 1;
const MAC_LEN: usize = 32;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + MAC_LEN;
/// Format 2: encrypted with XChaCha20-Poly1305.
const FORMAT_SEALED: u8 = 2;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const SEALED_HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

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

// The label and metadata came later: absent from older bodies (decoded as
// none), and left out of bodies that have none, so such a body is exactly
// what older versions wrote and read.
#[derive(Serialize)]
struct BodyRef<'a> {
    u: Option<&'a str>,
    k: &'a str,
    c: Millis,
    i: Option<u64>,
    a: Option<Millis>,
    d: &'a Data,
    #[serde(skip_serializing_if = "Option::is_none")]
    l: Option<&'a str>,
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    m: &'a Metadata,
}

#[derive(Deserialize)]
struct Body {
    u: Option<String>,
    k: String,
    c: Millis,
    i: Option<u64>,
    a: Option<Millis>,
    d: Data,
    #[serde(default)]
    l: Option<String>,
    #[serde(default)]
    m: Metadata,
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
    /// body does not encode (a CBOR value ciborium refuses) or the generator
    /// of nonces fails.
    pub(crate) fn seal(&self, binding: &str, record: &Record) -> Option<Vec<u8>> {
        let body = BodyRef {
            u: record.user.as_deref(),
            k: &record.kind,
            c: record.created_at,
            i: record.idle_timeout.map(millis),
            a: record.absolute_deadline,
            d: &record.data,
            l: record.label.as_deref(),
            m: &record.metadata,
        };
        self.seal_with(binding, sealed_size_hint(record), |out| {
            ciborium::into_writer(&body, out).ok()
        })
    }

    /// A blob sealing any body (`body`) for `binding`, in the same envelope
    /// as records.
    #[cfg(feature = "tower-sessions")]
    pub(crate) fn seal_bytes(&self, binding: &str, body: &[u8]) -> Option<Vec<u8>> {
        self.seal_with(
            binding,
            SEALED_HEADER_LEN.max(HEADER_LEN) + body.len(),
            |out| {
                out.extend_from_slice(body);
                Some(())
            },
        )
    }

    /// The one sealing path: the header, the body `write` appends (straight
    /// into the output, no copy), then the MAC (format 1) or the encryption
    /// in place and its tag (format 2). `size` is a capacity hint.
    fn seal_with(
        &self,
        binding: &str,
        size: usize,
        write: impl FnOnce(&mut Vec<u8>) -> Option<()>,
    ) -> Option<Vec<u8>> {
        let key = self.keyring.keys.first()?;
        let encrypt = self.keyring.encrypt;
        let mut out = Vec::with_capacity(size + TAG_LEN);
        out.push(if encrypt { FORMAT_SEALED } else { FORMAT });
        out.extend_from_slice(&key.id);
        if encrypt {
            let mut nonce = [0u8; NONCE_LEN];
            getrandom::fill(&mut nonce).ok()?;
            out.extend_from_slice(&nonce);
        } else {
            out.extend_from_slice(&[0; MAC_LEN]);
        }
        write(&mut out)?;
        if encrypt {
            let (header, body) = out.split_at_mut(SEALED_HEADER_LEN);
            let nonce = XNonce::try_from(&header[1 + KEY_ID_LEN..]).ok()?;
            let aad = associated_data(&header[..1 + KEY_ID_LEN], binding);
            let tag = key
                .aead
                .encrypt_inout_detached(&nonce, &aad, body.into())
                .ok()?;
            out.extend_from_slice(&tag);
            return Some(out);
        }
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
        let body = self.open_bytes(blob, meta.binding)?;
        let body = decode_body(&body).ok_or(OpenError::Body)?;
        Ok(body.into_record(meta))
    }

    /// The verified body of a blob sealed for `binding`, checked in constant
    /// time (format 1, borrowed from the blob) or decrypted (format 2) with
    /// any key of the keyring; within the size limit. Not a byte of the body
    /// is given out before it verified.
    pub(crate) fn open_bytes<'b>(
        &self,
        blob: &'b [u8],
        binding: &str,
    ) -> Result<Cow<'b, [u8]>, OpenError> {
        if blob.len() > self.max_sealed {
            return Err(OpenError::TooLarge);
        }
        match blob.first() {
            Some(&FORMAT) => {}
            Some(&FORMAT_SEALED) => return self.open_encrypted(blob, binding).map(Cow::Owned),
            Some(_) => return Err(OpenError::Format),
            None => return Err(OpenError::Truncated),
        }
        if blob.len() < HEADER_LEN {
            return Err(OpenError::Truncated);
        }
        let (id, tag, body) = (
            &blob[1..1 + KEY_ID_LEN],
            &blob[1 + KEY_ID_LEN..HEADER_LEN],
            &blob[HEADER_LEN..],
        );
        let mut known = false;
        for key in self.keyring.keys.iter().filter(|k| k.id == id) {
            known = true;
            if mac_input(key.mac.clone(), &blob[..1 + KEY_ID_LEN], binding, body)
                .verify_slice(tag)
                .is_ok()
            {
                return Ok(Cow::Borrowed(body));
            }
        }
        Err(if known {
            OpenError::BadMac
        } else {
            OpenError::UnknownKey
        })
    }

    /// Decrypts a format 2 blob: the tag is checked (in constant time)
    /// before the body is given out.
    fn open_encrypted(&self, blob: &[u8], binding: &str) -> Result<Vec<u8>, OpenError> {
        if blob.len() < SEALED_HEADER_LEN + TAG_LEN {
            return Err(OpenError::Truncated);
        }
        let (header, rest) = blob.split_at(SEALED_HEADER_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let id = &header[1..1 + KEY_ID_LEN];
        let nonce =
            XNonce::try_from(&header[1 + KEY_ID_LEN..]).map_err(|_| OpenError::Truncated)?;
        let tag = chacha20poly1305::Tag::try_from(tag).map_err(|_| OpenError::Truncated)?;
        let aad = associated_data(&header[..1 + KEY_ID_LEN], binding);
        let mut known = false;
        for key in self.keyring.keys.iter().filter(|k| k.id == id) {
            known = true;
            let mut body = ciphertext.to_vec();
            if key
                .aead
                .decrypt_inout_detached(&nonce, &aad, body.as_mut_slice().into(), &tag)
                .is_ok()
            {
                return Ok(body);
            }
        }
        Err(if known {
            OpenError::BadMac
        } else {
            OpenError::UnknownKey
        })
    }
}

impl Body {
    fn into_record(self, meta: Meta<'_>) -> Record {
        let body = self;
        Record {
            id: meta.id,
            user: body.u,
            kind: body.k,
            created_at: body.c,
            last_seen: meta.last_seen,
            idle_timeout: body.i.map(Duration::from_millis),
            absolute_deadline: body.a,
            version: meta.version,
            data: body.d,
            label: body.l,
            metadata: body.m,
        }
    }
}

/// The associated data of an encrypted envelope: its format and key id, and
/// the binding (length-prefixed, as in the MAC input).
fn associated_data(header: &[u8], binding: &str) -> Vec<u8> {
    let len = u32::try_from(binding.len()).unwrap_or(u32::MAX);
    let mut aad = Vec::with_capacity(header.len() + 4 + binding.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(&len.to_be_bytes());
    aad.extend_from_slice(binding.as_bytes());
    aad
}

/// Decodes a verified body. `ciborium::from_reader` zeroes a fresh 4 KiB
/// scratch buffer for every call (a tenth of the decoding work of a typical
/// record); each thread reuses one instead.
fn decode_body(body: &[u8]) -> Option<Body> {
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

/// About the sealed size of `record` (exact for text and byte values, a
/// guess for others), so that sealing writes into one allocation instead of
/// growing it three or four times.
fn sealed_size_hint(record: &Record) -> usize {
    use ciborium::Value;
    // Envelope, field names and headers, the numbers.
    let fixed = HEADER_LEN + 64;
    let strings = record.user.as_deref().map_or(0, str::len)
        + record.kind.len()
        + record.label.as_deref().map_or(0, str::len)
        + record
            .metadata
            .iter()
            .map(|(k, v)| k.len() + v.len() + 18)
            .sum::<usize>();
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
    fn rotation_keeps_old_blobs() {
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
    }

    fn encrypting(secret: u8) -> Codec {
        Codec::new(
            Keyring::new([secret; 32]).unwrap().encrypt_records(true),
            64 * 1024,
        )
    }

    #[test]
    fn encrypted_records_open_and_show_nothing() {
        let codec = encrypting(1);
        let mut r = record();
        r.label = Some("Firefox on Linux".into());
        r.metadata.insert("ua".into(), "Mozilla/5.0".into());
        r.data
            .insert("secret".into(), ciborium::Value::Text("hunter2".into()));
        let blob = codec.seal("k1", &r).unwrap();
        assert_eq!(blob[0], FORMAT_SEALED);
        for needle in [&b"alice"[..], b"hunter2", b"Firefox", b"Mozilla", b"web"] {
            assert!(
                !blob.windows(needle.len()).any(|w| w == needle),
                "{} readable in the encrypted blob",
                String::from_utf8_lossy(needle)
            );
        }
        let opened = codec.open(&blob, meta("k1", &r)).unwrap();
        assert_eq!((opened.user, opened.data), (r.user.clone(), r.data.clone()));
        assert_eq!(
            (opened.label, opened.metadata),
            (r.label.clone(), r.metadata.clone())
        );
        // Two seals of one record differ (a fresh nonce each time).
        assert_ne!(codec.seal("k1", &r).unwrap(), blob);
    }

    #[test]
    fn every_alteration_of_an_encrypted_record_is_refused() {
        let codec = encrypting(1);
        let r = record();
        let blob = codec.seal("k1", &r).unwrap();
        assert_eq!(
            codec.open(&blob, meta("k2", &r)),
            Err(OpenError::BadMac),
            "moved"
        );
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(codec.open(&bad, meta("k1", &r)).is_err(), "byte {i}");
        }
        for n in 0..blob.len() {
            assert!(codec.open(&blob[..n], meta("k1", &r)).is_err(), "len {n}");
        }
        assert_eq!(
            encrypting(2).open(&blob, meta("k1", &r)),
            Err(OpenError::UnknownKey)
        );
    }

    #[test]
    fn both_formats_open_whatever_the_keyring_seals_with() {
        let r = record();
        let signed = Codec::new(Keyring::new([1; 32]).unwrap(), 1 << 16);
        let encrypted = encrypting(1);
        let a = signed.seal("k", &r).unwrap();
        let b = encrypted.seal("k", &r).unwrap();
        assert!(
            encrypted.open(&a, meta("k", &r)).is_ok(),
            "signed opens when encrypting"
        );
        assert!(
            signed.open(&b, meta("k", &r)).is_ok(),
            "encrypted opens when signing"
        );
        // Rotation: an old key's encrypted records open under the new keyring.
        let rotated = Codec::new(
            Keyring::new([1; 32])
                .unwrap()
                .rotate([2; 32])
                .unwrap()
                .encrypt_records(true),
            1 << 16,
        );
        assert!(rotated.open(&b, meta("k", &r)).is_ok());
        let resealed = rotated.seal("k", &r).unwrap();
        assert_eq!(
            encrypted.open(&resealed, meta("k", &r)),
            Err(OpenError::UnknownKey)
        );
    }
}
