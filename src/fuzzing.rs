//! Entry points for fuzzers and property tests (feature `fuzzing`): the
//! parsers a client or a compromised store can feed. Not a stable API.

use std::sync::OnceLock;

use http::HeaderMap;

use crate::codec::{Codec, Keyring, Meta};
use crate::token::{Tag, Token};
use crate::transport::Transport;

const BINDING: &str = "fuzz:{AAAAAAAA}:s:key";

fn codec() -> &'static Codec {
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC.get_or_init(|| Codec::new(Keyring::derive(&[7; 32]), 64 * 1024))
}

fn meta() -> Meta<'static> {
    Meta {
        binding: BINDING,
        id: Token::from_parts(Tag([0; 6]), [0; 32]).id(),
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
    transport.read(headers).map(|t| t.to_string())
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
