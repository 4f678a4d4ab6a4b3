//! Decoding a verified body: arbitrary CBOR behind a valid MAC (as only a
//! holder of the signing key could write it) must not panic, overflow the
//! stack or allocate without bound. Run with `-rss_limit_mb=512
//! -malloc_limit_mb=256`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_redis_sessions::fuzzing::open_body;

fuzz_target!(|data: &[u8]| {
    let _ = open_body(data);
});
