//! Sealing and opening a typical session record against HMAC-SHA256 of the
//! same bytes alone.
//!
//! ```text
//! cargo bench --features fuzzing --bench codec
//! ```
//!
//! The typical record: a logged-in user, deadlines, and 10 values of 96
//! characters (about 1.1 KiB sealed). `seal` and `open` are the store's own
//! (reached through the `fuzzing` feature); `hmac_sha256` is a pre-keyed
//! HMAC-SHA256 over the sealed bytes, the least any signed format pays.
//! `seal_encrypted` / `open_encrypted` are the same with
//! `Keyring::encrypt_records(true)` (XChaCha20-Poly1305 instead of the MAC).
//! `cbor_*` are ciborium on the values alone, and `memory_store_*` the same
//! record through the public `MemoryStore` (seal or open, plus key naming and
//! a map operation).

use std::cell::RefCell;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tower_redis_sessions::store::{Data, Record, SaveOutcome, SessionStore, Token};
use tower_redis_sessions::{MemoryStore, fuzzing};

const TOKEN: &str = "AAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn typical_record(token: &Token, now: u64) -> Record {
    let mut record = Record::new(token.id(), "web", now);
    record.user = Some("user-4242".to_owned());
    record.idle_timeout = Some(Duration::from_secs(24 * 3600));
    record.absolute_deadline = Some(now + 30 * 24 * 3600 * 1000);
    for i in 0..10 {
        record.data.insert(
            format!("k{i}"),
            ciborium::Value::Text(format!("{i:02}{}", "x".repeat(94))),
        );
    }
    record
}

// The save benchmark holds its record's `RefCell` borrow across the store
// call: one task on a current-thread runtime, so no one else borrows it.
#[allow(clippy::await_holding_refcell_ref)]
fn codec(c: &mut Criterion) {
    let token: Token = TOKEN.parse().expect("a valid token");
    let record = typical_record(&token, 1_750_000_000_000);
    let blob = fuzzing::seal(&record).expect("the record seals");
    assert!(fuzzing::open_record(&blob).is_some_and(|r| r.data == record.data));
    let mac = Hmac::<Sha256>::new_from_slice(&[7; 32]).expect("any key length");
    let mut data_cbor = Vec::new();
    ciborium::into_writer(&record.data, &mut data_cbor).expect("the values encode");

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(blob.len() as u64));
    group.bench_function("hmac_sha256", |b| {
        b.iter(|| mac.clone().chain_update(black_box(&blob)).finalize())
    });
    group.bench_function("seal", |b| b.iter(|| fuzzing::seal(black_box(&record))));
    group.bench_function("open", |b| {
        b.iter(|| fuzzing::open_record(black_box(&blob)))
    });
    let encrypted = fuzzing::seal_encrypted(&record).expect("the record seals");
    assert!(fuzzing::open_record(&encrypted).is_some_and(|r| r.data == record.data));
    group.bench_function("seal_encrypted", |b| {
        b.iter(|| fuzzing::seal_encrypted(black_box(&record)))
    });
    group.bench_function("open_encrypted", |b| {
        b.iter(|| fuzzing::open_record(black_box(&encrypted)))
    });
    group.bench_function("seal_open", |b| {
        b.iter(|| fuzzing::open_record(&fuzzing::seal(black_box(&record))?))
    });
    group.bench_function("cbor_encode_values", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(2048);
            ciborium::into_writer(black_box(&record.data), &mut out).map(|()| out)
        })
    });
    group.bench_function("cbor_decode_values", |b| {
        b.iter(|| ciborium::from_reader::<Data, _>(black_box(&data_cbor[..])))
    });
    group.finish();

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let store = MemoryStore::default();
    // A user's session needs a token carrying the user's routing tag.
    let token = store.new_token(record.user.as_deref()).expect("a token");
    let record = typical_record(&token, store.now());
    let first = rt.block_on(store.save(&token, &record));
    let Ok(SaveOutcome::Saved { version }) = &first else {
        panic!("first save: {first:?}");
    };
    let mut saved = record.clone();
    saved.version = *version;
    let saved = RefCell::new(saved);
    let mut group = c.benchmark_group("memory_store");
    group.bench_function("load", |b| {
        b.to_async(&rt).iter(|| async {
            let loaded = store.load(black_box(&token)).await;
            assert!(matches!(loaded, Ok(Some(_))));
        })
    });
    group.bench_function("save", |b| {
        b.to_async(&rt).iter(|| async {
            let outcome = store.save(&token, black_box(&saved.borrow())).await;
            match outcome {
                Ok(SaveOutcome::Saved { version }) => saved.borrow_mut().version = version,
                other => panic!("save: {other:?}"),
            }
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
