//! Token parsing, printing and hashing: what every request with a session
//! cookie pays before any store call.
//!
//! ```text
//! cargo bench --bench token
//! ```

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tower_redis_sessions::store::Token;

const TEXT: &str = "q83vEjRW.3q2-78rK_s7aZmOt9LnHS3pGmtJ0wRc7Rz4zYkVqVh0";

fn token(c: &mut Criterion) {
    let token: Token = TEXT.parse().expect("a valid token");
    assert_eq!(token.to_string(), TEXT);
    let mut group = c.benchmark_group("token");
    group.bench_function("parse", |b| b.iter(|| black_box(TEXT).parse::<Token>()));
    group.bench_function("parse_malformed", |b| {
        b.iter(|| {
            black_box("q83vEjRW.3q2-78rK_s7aZmOt9LnHS3pGmtJ0wRc7Rz4zYkVqV!0").parse::<Token>()
        })
    });
    group.bench_function("to_string", |b| b.iter(|| black_box(&token).to_string()));
    group.bench_function("id", |b| b.iter(|| black_box(&token).id()));
    group.finish();
}

criterion_group!(benches, token);
criterion_main!(benches);
