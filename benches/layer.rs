//! The layer's own cost per request: an axum router behind `SessionLayer`
//! with a `MemoryStore`, against the same router without the layer.
//!
//! ```text
//! cargo bench --bench layer
//! ```
//!
//! Requests go straight into the router (no sockets). `bare` has no layer;
//! `untouched` carries a session cookie that the handler never uses;
//! `no_cookie` carries none; `read` reads one value of a typical session
//! (10 values, about 1.1 KiB sealed); `write` reads a counter and writes it
//! back. `read` and `write` include the memory store's open/seal (see the
//! `codec` bench's `memory_store` group), so the layer's own share is their
//! time minus `bare` minus the store's.

use std::hint::black_box;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use hyper::header::COOKIE;
use hyper::{Request, StatusCode};
use tower::Service;
use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore};
use tower_redis_sessions::{CookieConfig, MemoryStore, Session, SessionError, SessionLayer};

async fn ok() -> &'static str {
    "ok"
}

async fn untouched(_session: Session) -> &'static str {
    "ok"
}

async fn read(session: Session) -> Result<String, SessionError> {
    let value: Option<String> = session.get("k0").await?;
    Ok(value.map_or(0, |v| v.len()).to_string())
}

async fn write(session: Session) -> Result<String, SessionError> {
    let n: u64 = session.get("n").await?.unwrap_or(0);
    session.insert("n", n + 1).await?;
    Ok((n + 1).to_string())
}

fn routes() -> Router {
    Router::new()
        .route("/ok", get(ok))
        .route("/untouched", get(untouched))
        .route("/read", get(read))
        .route("/write", get(write))
}

/// One request through `router`, its body read to the end. (A router is
/// always ready, and its response future does not borrow it.)
fn call(
    router: &mut Router,
    path: &'static str,
    cookie: Option<&str>,
) -> impl Future<Output = StatusCode> + use<> {
    let mut request = Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    let request = request.body(Body::empty()).expect("a request");
    let response = router.call(request);
    async move {
        let response = response.await.expect("infallible");
        let status = response.status();
        black_box(response.into_body().collect().await.expect("a body"));
        status
    }
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let store = std::sync::Arc::new(MemoryStore::default());
    let token = store.new_token(Some("user-4242")).expect("a token");
    let mut record = Record::new(token.id(), "web", store.now());
    record.user = Some("user-4242".to_owned());
    record.idle_timeout = Some(Duration::from_secs(24 * 3600));
    for i in 0..10 {
        record.data.insert(
            format!("k{i}"),
            ciborium::Value::Text(format!("{i:02}{}", "x".repeat(94))),
        );
    }
    let saved = rt.block_on(store.save(&token, &record));
    assert!(matches!(saved, Ok(SaveOutcome::Saved { .. })));
    let cookie = format!("session={token}");
    let cookie = Some(cookie.as_str());

    // `with_state(())` builds the routes once, as `axum::serve` does; a
    // router called without it rebuilds each route (and its layers) per call.
    let mut bare = routes().with_state(());
    let mut layered = routes()
        .layer(SessionLayer::shared(store.clone()).cookie(CookieConfig::default().secure(false)))
        .with_state(());
    rt.block_on(async {
        assert_eq!(call(&mut bare, "/ok", None).await, StatusCode::OK);
        for path in ["/untouched", "/read", "/write"] {
            assert_eq!(
                call(&mut layered, path, cookie).await,
                StatusCode::OK,
                "{path}"
            );
        }
    });

    let mut group = c.benchmark_group("layer");
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| call(&mut bare, "/ok", None))
    });
    group.bench_function("untouched", |b| {
        b.to_async(&rt)
            .iter(|| call(&mut layered, "/untouched", cookie))
    });
    group.bench_function("no_cookie", |b| {
        b.to_async(&rt)
            .iter(|| call(&mut layered, "/untouched", None))
    });
    group.bench_function("read", |b| {
        b.to_async(&rt).iter(|| call(&mut layered, "/read", cookie))
    });
    group.bench_function("write", |b| {
        b.to_async(&rt)
            .iter(|| call(&mut layered, "/write", cookie))
    });
    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
