//! Entry points for fuzzers and property tests (feature `fuzzing`): the
//! parsers a client or a compromised store can feed. Not a stable API.

use std::sync::OnceLock;
use std::time::Duration;

use http::HeaderMap;

use crate::envelope::{Codec, Meta};
use crate::keyring::Keyring;
use crate::record::Record;
use crate::token::{SessionId, Tag, Token};
use crate::transport::Transport;

const BINDING: &str = "fuzz:{AAAAAAAA}:s:key";

/// The sealed-size limit of the fuzzing codec (the store's default).
pub const MAX_SEALED: usize = 64 * 1024;

fn codec() -> &'static Codec {
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC.get_or_init(|| Codec::new(Keyring::derive(&[7; 32]), MAX_SEALED))
}

fn token() -> Token {
    Token::from_parts(Tag([0; 6]), [0; 32])
}

fn meta() -> Meta<'static> {
    Meta {
        binding: BINDING,
        id: token().id(),
        version: 1,
        last_seen: 0,
    }
}

/// Parses `text` as a token; on success returns its text form, which must
/// equal `text`.
pub fn parse_token(text: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(text).ok()?;
    text.parse::<Token>().ok().map(|t| t.to_string())
}

/// The token the layer would read from `headers`: through a cookie named
/// `session`, or through `Authorization: Bearer` when `bearer`.
pub fn read_token(headers: &HeaderMap, bearer: bool) -> Option<String> {
    let transport = if bearer {
        Transport::bearer()
    } else {
        Transport::Cookie(Default::default())
    };
    match transport.read(headers) {
        crate::transport::Read::Token(t) => Some(t.to_string()),
        _ => None,
    }
}

/// Opens `blob` as if read from the store: verify, then decode.
pub fn open(blob: &[u8]) -> bool {
    codec().open(blob, meta()).is_ok()
}

/// Wraps `body` in an envelope signed with the right key, then opens it:
/// reaches the CBOR decoder with arbitrary bytes, as only a holder of the
/// signing key could.
pub fn open_body(body: &[u8]) -> bool {
    let blob = codec().seal_body(BINDING, body);
    codec().open(&blob, meta()).is_ok()
}

/// A valid sealed blob (a record with a user, deadlines and a few values),
/// as [`open`] accepts it: the start point for near-miss inputs.
pub fn sample_blob() -> Vec<u8> {
    let mut record = Record::new(token().id(), "web", 1_000);
    record.user = Some("alice".to_owned());
    record.idle_timeout = Some(Duration::from_secs(60));
    record.absolute_deadline = Some(9_000_000);
    record.data.insert("n".to_owned(), 42.into());
    record.data.insert("s".to_owned(), "text".into());
    record.data.insert(
        "a".to_owned(),
        ciborium::Value::Array(vec![1.into(), ciborium::Value::Bytes(vec![0, 255])]),
    );
    codec().seal(BINDING, &record).unwrap_or_default()
}

/// The length of an envelope's header (format, key id, MAC): the body of a
/// blob starts here. `open_body(&sample_blob()[HEADER_LEN..])` holds.
pub const HEADER_LEN: usize = 1 + 4 + 32;

/// Seals `record` as a store would (with the fuzzing key and binding), for
/// the benchmarks; `None` if its data does not encode.
pub fn seal(record: &Record) -> Option<Vec<u8>> {
    codec().seal(BINDING, record)
}

/// Seals `record` encrypted (format 2), with the same key and binding as
/// [`seal`]; [`open_record`] opens both forms.
pub fn seal_encrypted(record: &Record) -> Option<Vec<u8>> {
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC
        .get_or_init(|| Codec::new(Keyring::derive(&[7; 32]).encrypt_records(true), MAX_SEALED))
        .seal(BINDING, record)
}

/// Verifies and decodes `blob` as a load would, for the benchmarks.
pub fn open_record(blob: &[u8]) -> Option<Record> {
    static ID: OnceLock<SessionId> = OnceLock::new();
    // The id hashed once: a load gets it from the token it already holds.
    let meta = Meta {
        binding: BINDING,
        id: *ID.get_or_init(|| token().id()),
        version: 1,
        last_seen: 0,
    };
    codec().open(blob, meta).ok()
}
