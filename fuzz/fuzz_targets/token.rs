//! Token parsing: whatever parses re-encodes to the very same text (one
//! text form per token), and only 52-byte `<8>.<43>` base64url text parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_redis_sessions::store::TOKEN_LEN;
use tower_redis_sessions::fuzzing::parse_token;

fuzz_target!(|data: &[u8]| {
    if let Some(text) = parse_token(data) {
        assert_eq!(text.as_bytes(), data, "a token re-encodes to another text");
        assert_eq!(data.len(), TOKEN_LEN);
        assert_eq!(data[8], b'.');
        assert!(
            data.iter()
                .enumerate()
                .all(|(i, b)| i == 8 || b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'),
            "a token with a character outside base64url parsed"
        );
    }
});
