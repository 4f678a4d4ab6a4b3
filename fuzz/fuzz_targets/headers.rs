//! Cookie / Authorization extraction: the input is split at `\n` into
//! header values, the first one as `Authorization`, the others as `Cookie`
//! headers. A token read from them must be a well-formed token (its text
//! parses and re-encodes to itself) and appear verbatim in the input.
#![no_main]

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tower_redis_sessions::fuzzing::{parse_token, read_token};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    let mut parts = data.split(|b| *b == b'\n');
    if let Some(value) = parts.next().and_then(|v| HeaderValue::from_bytes(v).ok()) {
        headers.insert(AUTHORIZATION, value);
    }
    for value in parts.filter_map(|v| HeaderValue::from_bytes(v).ok()) {
        headers.append(COOKIE, value);
    }
    for bearer in [false, true] {
        if let Some(token) = read_token(&headers, bearer) {
            assert_eq!(
                parse_token(token.as_bytes()).as_deref(),
                Some(token.as_str()),
                "read a token that does not parse back"
            );
            assert!(
                contains(data, token.as_bytes()),
                "read a token not in the input"
            );
        }
    }
});
