//! Hostile input, in the normal suite and bounded in time: random bytes,
//! random strings and near misses fed to the parsers a client or a
//! compromised store reaches (the same entry points as the fuzz targets in
//! `fuzz/`), and random `Cookie` / `Authorization` headers sent through a
//! `SessionLayer`.
//!
//! Invariants:
//! - a token parses only from its one canonical text, and re-encodes to it;
//! - a token read from headers is well formed and appears in the headers;
//! - a blob that is not exactly one the key sealed never verifies;
//! - no CBOR body behind a valid MAC panics, overflows a 2 MiB stack or
//!   allocates more than a small multiple of its own size;
//! - the layer answers every request, and never asks the store about a
//!   malformed token.
//!
//! Needs `--features fuzzing` (the test script runs with `--all-features`).
#![cfg(feature = "fuzzing")]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use proptest::collection::vec;
use proptest::prelude::*;
use tower::{Layer, ServiceExt, service_fn};
use tower_redis_sessions::fuzzing::{
    HEADER_LEN, MAX_SEALED, open, open_body, parse_token, read_token, sample_blob,
};
use tower_redis_sessions::store::StoreFuture;
use tower_redis_sessions::store::{
    Record, RetireOutcome, SaveOutcome, SessionStore, TOKEN_LEN, Token,
};
use tower_redis_sessions::{MemoryStore, Session, SessionId, SessionLayer, StoreError};

// ---------------------------------------------------------------------------
// Allocation accounting: the peak of the bytes live on this thread
// (allocation-counter's allocator, which counts per thread). A decoder that
// trusts a length prefix shows up here as a huge peak, long before it would
// exhaust the machine.

/// Runs `f` and returns its result and the peak of the bytes it allocated on
/// this thread.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let mut out = None;
    let info = allocation_counter::measure(|| out = Some(f()));
    let peak = usize::try_from(info.bytes_max).unwrap_or(usize::MAX);
    match out {
        Some(out) => (out, peak),
        None => unreachable!("measure runs the closure"),
    }
}

/// What decoding `len` bytes of CBOR may allocate at most: every CBOR item
/// takes at least one byte and becomes a `ciborium::Value` (32 bytes) or a
/// map entry (64 bytes per two items), in vectors that grow by doubling.
fn alloc_bound(len: usize) -> usize {
    64 * 1024 + 160 * len
}

/// `open_body`, checked for bounded allocation.
fn open_body_bounded(body: &[u8]) -> bool {
    let (opened, peak) = peak_alloc(|| open_body(body));
    assert!(
        peak <= alloc_bound(body.len()),
        "decoding {} bytes allocated {peak} bytes",
        body.len()
    );
    opened
}

// ---------------------------------------------------------------------------
// Strategies.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const TAG_CHARS: usize = 8;

fn b64_char() -> impl Strategy<Value = u8> {
    (0..64usize).prop_map(|i| B64[i])
}

/// Whether `c` may end a secret: 43 characters carry 258 bits for 256, so
/// the canonical last character has its two low bits zero.
fn canonical_last(c: u8) -> bool {
    B64.iter().position(|b| *b == c).is_some_and(|i| i % 4 == 0)
}

/// A well-formed token's text.
fn token_text() -> impl Strategy<Value = String> {
    (
        vec(b64_char(), TAG_CHARS),
        vec(b64_char(), TOKEN_LEN - TAG_CHARS - 2),
        (0..16usize).prop_map(|i| B64[4 * i]),
    )
        .prop_map(|(tag, secret, last)| {
            let mut text = tag;
            text.push(b'.');
            text.extend(secret);
            text.push(last);
            String::from_utf8(text).unwrap()
        })
}

/// A byte that is no base64url character (and no dot).
fn non_b64_byte() -> impl Strategy<Value = u8> {
    any::<u8>().prop_filter("base64url or dot", |b| !B64.contains(b) && *b != b'.')
}

/// A piece of a header value: garbage, or something close to a token.
fn header_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,60}",
        "[a-z]{1,8}=[A-Za-z0-9._\\-\"]{0,60}",
        token_text(),
        token_text().prop_map(|t| format!("session={t}")),
        token_text().prop_map(|t| format!("session=\"{t}\"")),
        token_text().prop_map(|t| format!("Bearer {t}")),
        (token_text(), 0..TOKEN_LEN).prop_map(|(t, cut)| format!("session={}", &t[..cut])),
        (token_text(), "[ -~]{1,3}").prop_map(|(t, extra)| format!("session={t}{extra}")),
    ]
}

/// A header value made of pieces and separators.
fn header_value() -> impl Strategy<Value = String> {
    vec(
        (header_piece(), prop_oneof!["; ", ";", " ", ", ", ""]),
        0..5,
    )
    .prop_map(|parts| parts.into_iter().map(|(p, s)| p + &s).collect())
}

/// An `Authorization` value: a bearer token (well formed or spoiled, with
/// any case and spacing), or garbage.
fn authorization_value() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        token_text(),
        (token_text(), 0..TOKEN_LEN, "[ -~]").prop_map(|(t, i, c)| {
            let mut t = t.into_bytes();
            t[i] = c.as_bytes()[0];
            String::from_utf8(t).unwrap()
        }),
    ];
    prop_oneof![
        (
            "[ \t]{0,2}",
            "[Bb][Ee][Aa][Rr][Ee][Rr]|Basic",
            " [ \t]{0,2}",
            token,
            "[ \t]{0,2}"
        )
            .prop_map(|(a, scheme, b, token, c)| format!("{a}{scheme}{b}{token}{c}")),
        header_value(),
    ]
}

/// A random request's headers: some `Cookie` values and maybe an
/// `Authorization` value, raw bytes (not all are valid header values).
fn raw_headers() -> impl Strategy<Value = (Vec<Vec<u8>>, Option<Vec<u8>>)> {
    let cookie = prop_oneof![
        3 => header_value().prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..80),
    ];
    let authorization = prop_oneof![
        3 => authorization_value().prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..80),
    ];
    (vec(cookie, 0..4), proptest::option::of(authorization))
}

fn header_map(cookies: &[Vec<u8>], authorization: Option<&[u8]>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in cookies {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(COOKIE, value);
        }
    }
    if let Some(value) = authorization.and_then(|v| HeaderValue::from_bytes(v).ok()) {
        headers.insert(AUTHORIZATION, value);
    }
    headers
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A CBOR value of any shape, a few levels deep.
fn cbor_value() -> impl Strategy<Value = ciborium::Value> {
    use ciborium::Value;
    let leaf = prop_oneof![
        any::<i64>().prop_map(|i| Value::Integer(i.into())),
        any::<u64>().prop_map(|i| Value::Integer(i.into())),
        any::<f64>().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
        "[a-z]{0,3}|\\PC{0,6}".prop_map(Value::Text),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((inner.clone(), inner.clone()), 0..6).prop_map(Value::Map),
            vec(("[a-z]{0,2}", inner.clone()), 0..6).prop_map(|entries| Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (Value::Text(k), v))
                    .collect()
            )),
            (any::<u64>(), inner).prop_map(|(tag, v)| Value::Tag(tag, Box::new(v))),
        ]
    })
}

fn cbor(value: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

fn sample_body() -> Vec<u8> {
    sample_blob()[HEADER_LEN..].to_vec()
}

/// The sample body as a CBOR map of its fields.
fn sample_fields() -> Vec<(ciborium::Value, ciborium::Value)> {
    let value: ciborium::Value = ciborium::from_reader(&sample_body()[..]).unwrap();
    value.into_map().unwrap()
}

fn body_with(fields: Vec<(ciborium::Value, ciborium::Value)>) -> Vec<u8> {
    cbor(&ciborium::Value::Map(fields))
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Tokens.

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn random_bytes_parse_only_as_their_own_text(bytes in vec(any::<u8>(), 0..80)) {
        if let Some(text) = parse_token(&bytes) {
            prop_assert_eq!(text.as_bytes(), &bytes[..]);
        }
    }

    #[test]
    fn random_strings_parse_only_as_their_own_text(text in "\\PC{0,60}|[A-Za-z0-9_.\\-]{52}") {
        if let Some(parsed) = parse_token(text.as_bytes()) {
            prop_assert_eq!(parsed, text);
        }
    }

    #[test]
    fn well_formed_tokens_round_trip(text in token_text()) {
        prop_assert_eq!(parse_token(text.as_bytes()), Some(text));
    }

    #[test]
    fn a_bad_character_anywhere_is_refused(
        text in token_text(),
        pos in 0..TOKEN_LEN,
        bad in non_b64_byte(),
    ) {
        let mut bytes = text.into_bytes();
        bytes[pos] = bad;
        prop_assert_eq!(parse_token(&bytes), None);
    }

    #[test]
    fn the_dot_anywhere_else_is_refused(text in token_text(), pos in 0..TOKEN_LEN, fill in b64_char()) {
        prop_assume!(pos != TAG_CHARS);
        let mut bytes = text.into_bytes();
        bytes[TAG_CHARS] = fill;
        bytes[pos] = b'.';
        prop_assert_eq!(parse_token(&bytes), None);
    }

    #[test]
    fn a_wrong_length_is_refused(text in token_text(), pos in 0..TOKEN_LEN, extra in b64_char()) {
        let mut longer = text.clone().into_bytes();
        longer.insert(pos, extra);
        prop_assert_eq!(parse_token(&longer), None);
        let mut shorter = text.into_bytes();
        shorter.remove(pos);
        prop_assert_eq!(parse_token(&shorter), None);
    }

    #[test]
    fn one_character_changed_is_another_token_or_none(
        text in token_text(),
        pos in 0..TOKEN_LEN,
        new in b64_char(),
    ) {
        let mut bytes = text.into_bytes();
        prop_assume!(bytes[pos] != new);
        bytes[pos] = new;
        let expected = if pos == TAG_CHARS || (pos == TOKEN_LEN - 1 && !canonical_last(new)) {
            None
        } else {
            Some(String::from_utf8(bytes.clone()).unwrap())
        };
        prop_assert_eq!(parse_token(&bytes), expected);
    }
}

// ---------------------------------------------------------------------------
// Headers.

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn tokens_read_from_headers_are_well_formed_and_were_sent(
        (cookies, authorization) in raw_headers(),
    ) {
        let headers = header_map(&cookies, authorization.as_deref());
        if let Some(token) = read_token(&headers, false) {
            prop_assert_eq!(parse_token(token.as_bytes()), Some(token.clone()));
            prop_assert!(cookies.iter().any(|c| contains(c, token.as_bytes())));
        }
        if let Some(token) = read_token(&headers, true) {
            prop_assert_eq!(parse_token(token.as_bytes()), Some(token.clone()));
            prop_assert!(authorization.as_ref().is_some_and(|a| contains(a, token.as_bytes())));
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others(
        before in vec(("[a-z]{1,8}", "[A-Za-z0-9]{0,20}"), 0..4),
        after in vec(("[a-z]{1,8}", "[A-Za-z0-9]{0,20}"), 0..4),
        spoiled in proptest::option::of("[ -:<-~]{0,60}"),
        token in token_text(),
        split in any::<bool>(),
    ) {
        let others = |list: &[(String, String)]| -> Vec<String> {
            list.iter()
                .filter(|(name, _)| name != "session")
                .map(|(name, value)| format!("{name}={value}"))
                .collect()
        };
        let mut first = others(&before);
        // A malformed `session` cookie before the good one does not hide it.
        if let Some(spoiled) = spoiled.filter(|s| parse_token(s.trim().as_bytes()).is_none()) {
            first.push(format!("session={spoiled}"));
        }
        let mut second = vec![format!("session={token}")];
        second.extend(others(&after));
        let values: Vec<Vec<u8>> = if split {
            vec![first.join("; ").into_bytes(), second.join("; ").into_bytes()]
        } else {
            first.extend(second);
            vec![first.join("; ").into_bytes()]
        };
        let headers = header_map(&values, None);
        prop_assert_eq!(read_token(&headers, false), Some(token));
    }

    #[test]
    fn bearer_tokens_are_read_only_from_the_bearer_scheme(
        token in token_text(),
        scheme in "[Bb][Ee][Aa][Rr][Ee][Rr]|Basic|Token|Bearer:|[a-zA-Z]{0,7}",
        pad in "[ \t]{0,3}",
        gap in "[ \t]{0,3}",
    ) {
        let value = format!("{pad}{scheme} {gap}{token}{pad}");
        let headers = header_map(&[], Some(value.as_bytes()));
        let expected = scheme.eq_ignore_ascii_case("bearer").then(|| token.clone());
        prop_assert_eq!(read_token(&headers, true), expected);
        prop_assert_eq!(read_token(&headers, false), None);
    }

    #[test]
    fn a_spoiled_token_is_no_token(text in token_text(), pos in 0..TOKEN_LEN, bad in "[!#$%&'()*+/:<>?@\\[\\]^`{|}~]") {
        let mut token = text.into_bytes();
        token[pos] = bad.as_bytes()[0];
        let token = String::from_utf8(token).unwrap();
        let headers = header_map(
            &[format!("session={token}").into_bytes()],
            Some(format!("Bearer {token}").as_bytes()),
        );
        prop_assert_eq!(read_token(&headers, false), None);
        prop_assert_eq!(read_token(&headers, true), None);
    }
}

// ---------------------------------------------------------------------------
// Sealed blobs: the MAC.

#[test]
fn the_allocation_tracker_sees_allocations() {
    // The control for every bound on allocation below.
    let (_, peak) = peak_alloc(|| vec![1u8; 1 << 20].len());
    assert!(peak >= 1 << 20, "peak {peak}");
    let (_, peak) = peak_alloc(|| ());
    assert_eq!(peak, 0);
}

#[test]
fn the_sample_blob_opens() {
    // The control for every "does not open" below.
    assert!(open(&sample_blob()));
    assert!(open_body_bounded(&sample_body()));
}

#[test]
fn no_truncation_of_a_blob_opens() {
    let blob = sample_blob();
    for n in 0..blob.len() {
        assert!(!open(&blob[..n]), "prefix of {n} bytes opened");
    }
    let body = sample_body();
    for n in 0..body.len() {
        assert!(
            !open_body_bounded(&body[..n]),
            "body prefix of {n} bytes opened"
        );
    }
}

#[test]
fn oversized_blobs_are_not_opened() {
    let mut blob = sample_blob();
    blob.resize(MAX_SEALED + 1, 0);
    assert!(!open(&blob));
    let mut body = sample_body();
    body.resize(MAX_SEALED, 0);
    assert!(!open_body_bounded(&body));
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn random_bytes_never_verify(bytes in vec(any::<u8>(), 0..300)) {
        prop_assert!(!open(&bytes));
    }

    #[test]
    fn random_bytes_behind_a_valid_header_never_verify(
        mac in vec(any::<u8>(), 32),
        body in prop_oneof![vec(any::<u8>(), 0..200), Just(sample_body())],
    ) {
        // The right format byte and key id: only the MAC stands in the way.
        let mut blob = sample_blob()[..5].to_vec();
        blob.extend(mac);
        blob.extend(body);
        prop_assert!(!open(&blob));
    }

    #[test]
    fn any_flipped_byte_breaks_the_seal(index in any::<prop::sample::Index>(), flip in 1..=255u8) {
        let mut blob = sample_blob();
        let i = index.index(blob.len());
        blob[i] ^= flip;
        prop_assert!(!open(&blob));
    }

    #[test]
    fn appended_bytes_break_the_seal(tail in vec(any::<u8>(), 1..40)) {
        let mut blob = sample_blob();
        blob.extend(tail);
        prop_assert!(!open(&blob));
    }
}

// ---------------------------------------------------------------------------
// Sealed blobs: the CBOR behind a valid MAC.

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn random_bodies_decode_or_fail_within_bounds(body in vec(any::<u8>(), 0..400)) {
        open_body_bounded(&body);
    }

    #[test]
    fn cbor_of_any_shape_decodes_or_fails_within_bounds(value in cbor_value()) {
        open_body_bounded(&cbor(&value));
    }

    #[test]
    fn a_field_of_the_wrong_shape_fails_within_bounds(
        index in any::<prop::sample::Index>(),
        value in cbor_value(),
    ) {
        let mut fields = sample_fields();
        let i = index.index(fields.len());
        fields[i].1 = value;
        open_body_bounded(&body_with(fields));
    }

    #[test]
    fn random_bytes_spliced_into_a_body_fail_within_bounds(
        index in any::<prop::sample::Index>(),
        junk in vec(any::<u8>(), 1..12),
    ) {
        let mut body = sample_body();
        let i = index.index(body.len());
        body.splice(i..i, junk);
        open_body_bounded(&body);
    }
}

#[test]
fn fields_of_the_wrong_type_or_missing_are_refused() {
    use ciborium::Value;
    let fields = sample_fields();
    let field = |name: &str| Value::Text(name.to_owned());
    let replaced = |name: &str, value: Value| {
        let mut fields = fields.clone();
        for (k, v) in &mut fields {
            if *k == field(name) {
                *v = value.clone();
            }
        }
        body_with(fields)
    };
    let without = |name: &str| {
        body_with(
            fields
                .iter()
                .filter(|(k, _)| *k != field(name))
                .cloned()
                .collect(),
        )
    };
    let cases = [
        ("k missing", without("k")),
        ("c missing", without("c")),
        ("d missing", without("d")),
        ("k not text", replaced("k", Value::Integer(1.into()))),
        ("c negative", replaced("c", Value::Integer((-1).into()))),
        ("c text", replaced("c", Value::Text("1".into()))),
        ("i bytes", replaced("i", Value::Bytes(vec![1]))),
        ("u integer", replaced("u", Value::Integer(7.into()))),
        ("d array", replaced("d", Value::Array(vec![]))),
        (
            "d integer key",
            replaced(
                "d",
                Value::Map(vec![(Value::Integer(1.into()), Value::Null)]),
            ),
        ),
        ("body an integer", cbor(&Value::Integer(1.into()))),
        ("body empty", Vec::new()),
        ("body a break", vec![0xff]),
    ];
    for (what, body) in cases {
        assert!(!open_body_bounded(&body), "{what} opened");
    }
}

/// A CBOR head of major type `major` announcing `len` (8-byte argument).
fn head(major: u8, len: u64) -> Vec<u8> {
    let mut out = vec![(major << 5) | 27];
    out.extend(len.to_be_bytes());
    out
}

/// The sample body with `d` replaced by `{"x": <raw>}` (raw CBOR bytes).
fn body_with_data(raw: &[u8]) -> Vec<u8> {
    use ciborium::Value;
    let mut fields = sample_fields();
    fields.retain(|(k, _)| *k != Value::Text("d".into()));
    // Encode the map without `d`, then append `d` by hand, bumping the count.
    let mut body = body_with(fields.clone());
    assert_eq!(body[0] & 0xe0, 0xa0);
    assert!(fields.len() < 23);
    body[0] = 0xa0 | (fields.len() as u8 + 1);
    body.extend([0x61, b'd', 0xa1, 0x61, b'x']);
    body.extend(raw);
    body
}

#[test]
fn announced_lengths_are_not_trusted() {
    // Heads announcing up to 2^64 - 1 bytes, characters, items or pairs,
    // followed by a few bytes only: each must fail fast with no allocation
    // in proportion to the announced length.
    let lengths = [1 << 20, 1 << 31, 1 << 32, 1 << 60, u64::MAX];
    for major in [2u8, 3, 4, 5] {
        for len in lengths {
            let mut raw = head(major, len);
            raw.extend([0u8; 8]);
            for body in [raw.clone(), body_with_data(&raw)] {
                assert!(!open_body_bounded(&body), "major {major} len {len} opened");
            }
        }
        // Indefinite length, never closed.
        let raw = [(major << 5) | 31, 0x00, 0x00];
        assert!(!open_body_bounded(&body_with_data(&raw)));
    }
    // The same inside a string-keyed field of the record itself.
    let mut fields = sample_fields();
    fields.retain(|(k, _)| *k != ciborium::Value::Text("k".into()));
    let mut body = body_with(fields.clone());
    body[0] = 0xa0 | (fields.len() as u8 + 1);
    body.extend([0x61, b'k']);
    body.extend(head(3, 1 << 60));
    body.extend(b"web");
    assert!(!open_body_bounded(&body));
}

/// Runs `f` on a thread with a 2 MiB stack, tokio's default for its worker
/// threads, where the layer decodes sessions.
fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .expect("decoding overflowed a 2 MiB stack")
}

#[test]
fn deep_nesting_is_refused_without_exhausting_the_stack() {
    // Arrays, maps and tags, nested far past the decoder's recursion limit.
    let nestings: [(&str, &[u8]); 3] = [
        ("array", &[0x81]),
        ("map", &[0xa1, 0x00]),
        ("tag", &[0xd8, 0x64]),
    ];
    for (what, open_one) in nestings {
        for depth in [255usize, 300, 10_000, 60_000] {
            let mut raw = open_one.repeat(depth);
            raw.push(0x00);
            let body = body_with_data(&raw);
            let opened = on_worker_stack(move || open_body_bounded(&body));
            assert!(!opened, "{what} nested {depth} deep opened");
        }
    }
}

#[test]
fn nesting_up_to_the_limit_still_opens() {
    // Session data nested deep is legitimate: up to the decoder's recursion
    // limit (256 levels, two of which are the record and its data map) it
    // decodes, on a worker-sized stack, in a debug build. The deepest
    // accepted body is also the one that needs the most stack.
    for open_one in [&[0x81u8][..], &[0xa1, 0x00], &[0xd8, 0x64]] {
        let mut raw = open_one.repeat(254);
        raw.push(0x00);
        let body = body_with_data(&raw);
        assert!(on_worker_stack(move || open_body_bounded(&body)));
    }
}

// ---------------------------------------------------------------------------
// End to end: random headers through a `SessionLayer`.

/// A `MemoryStore` that counts the calls made to it.
struct Counting {
    inner: MemoryStore,
    loads: AtomicUsize,
    writes: AtomicUsize,
}

impl Counting {
    fn new() -> Counting {
        Counting {
            inner: MemoryStore::default(),
            loads: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
        }
    }
}

impl SessionStore for Counting {
    fn new_token(&self, user: Option<&str>) -> Result<Token, StoreError> {
        self.inner.new_token(user)
    }

    fn now(&self) -> u64 {
        self.inner.now()
    }

    fn load<'a>(&'a self, token: &'a Token) -> StoreFuture<'a, Option<Record>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(token)
    }

    fn save<'a>(&'a self, token: &'a Token, record: &'a Record) -> StoreFuture<'a, SaveOutcome> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.save(token, record)
    }

    fn rotate<'a>(
        &'a self,
        from: &'a Token,
        to: &'a Token,
        record: &'a Record,
    ) -> StoreFuture<'a, SaveOutcome> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.rotate(from, to, record)
    }

    fn delete<'a>(&'a self, token: &'a Token) -> StoreFuture<'a, bool> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(token)
    }

    fn retire<'a>(&'a self, token: &'a Token, version: u64) -> StoreFuture<'a, RetireOutcome> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.retire(token, version)
    }

    fn list<'a>(&'a self, user: &'a str, kind: Option<&'a str>) -> StoreFuture<'a, Vec<Record>> {
        self.inner.list(user, kind)
    }

    fn revoke<'a>(&'a self, user: &'a str, id: &'a SessionId) -> StoreFuture<'a, bool> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.revoke(user, id)
    }

    fn revoke_all<'a>(
        &'a self,
        user: &'a str,
        kind: Option<&'a str>,
        keep: Option<&'a Token>,
    ) -> StoreFuture<'a, u64> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.revoke_all(user, kind, keep)
    }
}

/// Sends one request with the given headers through a layer over `store`
/// (cookie transport, or bearer when `bearer`) whose handler reads the
/// session's value `k` when `touch`; returns the status and the body.
async fn send(
    store: &Arc<Counting>,
    bearer: bool,
    touch: bool,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let layer = SessionLayer::shared(store.clone());
    let layer = if bearer { layer.bearer() } else { layer };
    let service = layer.layer(service_fn(move |request: Request<String>| async move {
        let mut body = String::new();
        if touch {
            let session = request.extensions().get::<Session>().cloned().unwrap();
            body = session
                .get::<String>("k")
                .await
                .unwrap()
                .unwrap_or_default();
        }
        Ok::<_, Infallible>(Response::new(body))
    }));
    let mut request = Request::new(String::new());
    *request.headers_mut() = headers;
    let response = service.oneshot(request).await.unwrap();
    (response.status(), response.into_body())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn the_layer_answers_and_asks_the_store_only_about_well_formed_tokens(
        (cookies, authorization) in raw_headers(),
        bearer in any::<bool>(),
        touch in any::<bool>(),
    ) {
        let store = Arc::new(Counting::new());
        let headers = header_map(&cookies, authorization.as_deref());
        let well_formed = read_token(&headers, bearer).is_some();
        let (status, body) = runtime().block_on(send(&store, bearer, touch, headers));
        prop_assert_eq!(status, StatusCode::OK);
        prop_assert_eq!(body, "");
        let expected_loads = usize::from(touch && well_formed);
        prop_assert_eq!(store.loads.load(Ordering::SeqCst), expected_loads);
        prop_assert_eq!(store.writes.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_live_session_is_found_among_garbage(
        (mut cookies, authorization) in raw_headers(),
        bearer in any::<bool>(),
        at in any::<prop::sample::Index>(),
    ) {
        let store = Arc::new(Counting::new());
        let rt = runtime();
        let token = store.inner.new_token(None).unwrap();
        let mut record = Record::new(token.id(), "web", store.inner.now());
        record.data.insert("k".to_owned(), "live".into());
        let saved = rt.block_on(store.inner.save(&token, &record)).unwrap();
        prop_assert!(matches!(saved, SaveOutcome::Saved { version: 1 }), "{:?}", saved);
        // The live token in its proper place, garbage everywhere else; the
        // garbage carries no other well-formed `session` token first.
        let headers = if bearer {
            let mut headers = header_map(&cookies, None);
            headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
            headers
        } else {
            let i = at.index(cookies.len() + 1);
            cookies.insert(i, format!("session={token}").into_bytes());
            let headers = header_map(&cookies, authorization.as_deref());
            let read = read_token(&headers, false);
            prop_assume!(read.as_deref() == Some(token.to_string().as_str()));
            headers
        };
        let (status, body) = rt.block_on(send(&store, bearer, true, headers));
        prop_assert_eq!(status, StatusCode::OK);
        prop_assert_eq!(body, "live");
        prop_assert_eq!(store.loads.load(Ordering::SeqCst), 1);
    }
}

// ---------------------------------------------------------------------------
// The fuzz seeds (`fuzz/seeds/`) follow the current envelope format. Set
// UPDATE_FUZZ_SEEDS=1 to rewrite them after a format change.

#[test]
fn fuzz_seeds_match_the_current_format() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let seeds = [
        (dir.join("open/sample"), sample_blob()),
        (dir.join("open_body/sample"), sample_body()),
    ];
    for (path, bytes) in seeds {
        if std::env::var_os("UPDATE_FUZZ_SEEDS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let stored = std::fs::read(&path).unwrap();
        assert_eq!(stored, bytes, "{} is stale", path.display());
    }
}

#[test]
fn the_densest_data_stays_within_the_allocation_bound() {
    // The most allocation per input byte a body can ask for: ~60 KB of
    // one-byte items (each a 32-byte `Value`, in doubling vectors). It opens,
    // and stays within the bound the properties above check (about 53x its
    // size here, so a 64 KiB blob decodes in a few MiB at most).
    let dense: [(u8, &[u8]); 5] = [
        (4, &[0x00]),       // array of integers
        (4, &[0x80]),       // array of empty arrays
        (4, &[0x60]),       // array of empty strings
        (4, &[0xc1, 0x00]), // array of tagged integers
        (5, &[0x00, 0x00]), // map of integer pairs
    ];
    for (major, unit) in dense {
        let n = 60_000 / unit.len();
        let mut raw = head(major, n as u64);
        raw.extend(unit.repeat(n));
        let body = body_with_data(&raw);
        assert!(open_body_bounded(&body), "{unit:?} x {n} did not open");
    }
}
