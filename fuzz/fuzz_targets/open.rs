//! Opening a blob read from the store: fuzzed bytes must never verify (a
//! success would be a forged MAC), and nothing may panic. The one exception
//! is the valid sample blob itself (a seed, so that the fuzzer mutates real
//! envelopes): every mutation of it must fail.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tower_redis_sessions::fuzzing::{open, sample_blob};

fuzz_target!(|data: &[u8]| {
    static SAMPLE: OnceLock<Vec<u8>> = OnceLock::new();
    let sample = SAMPLE.get_or_init(sample_blob);
    assert_eq!(
        open(data),
        data == sample.as_slice(),
        "a blob of fuzzed bytes verified"
    );
});
