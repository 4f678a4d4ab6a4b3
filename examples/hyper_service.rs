//! Sessions in a plain hyper 1 server, without axum.
//!
//! ```text
//! cargo run --example hyper_service
//! curl -c jar -b jar http://127.0.0.1:3000/   # counter: 1, 2, 3, ...
//! ```
//!
//! A `tower::service_fn` wrapped in [`SessionLayer`] with a
//! `tower::ServiceBuilder`, handed to hyper through
//! `hyper_util::service::TowerToHyperService`. The handler finds its
//! [`Session`] in the request's extensions.
//!
//! Environment: `REDIS_URL` (sessions in that Redis; in memory when unset),
//! `BIND` (default `127.0.0.1:3000`; port 0 picks a free one). Once bound it
//! prints `listening on http://<address>` on stdout. Ctrl-C stops it.

use std::convert::Infallible;
use std::io::Write as _;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, service_fn};
use tower_redis_sessions::{
    CookieConfig, Keyring, MemoryStore, RedisStore, Session, SessionLayer, StoreConfig,
};

type Body = Full<Bytes>;

/// `GET /`: this session's counter, incremented. Anything else: 404, and the
/// session is not touched (no store call).
async fn handle(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if request.uri().path() != "/" || request.method() != Method::GET {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n".to_owned()));
    }
    let Some(session) = request.extensions().get::<Session>().cloned() else {
        return Ok(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SessionLayer is missing\n".to_owned(),
        ));
    };
    // Saved by the layer when this response is ready; concurrent requests
    // on the same session each add one.
    match session
        .update("counter", |n: Option<u64>| n.unwrap_or(0).saturating_add(1))
        .await
    {
        Ok(n) => Ok(text(StatusCode::OK, format!("counter: {n}\n"))),
        // Without axum there is no `IntoResponse`; the error knows its status.
        Err(e) => Ok(text(e.status(), format!("{}\n", e.status()))),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves `layer` + [`handle`] on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, layer: SessionLayer) {
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(handle));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: keep serving the others.
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            // HTTP/1.1 or HTTP/2, whichever the client speaks.
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {e}");
            }
        });
    }
}

#[tokio::main]
#[allow(dead_code)] // The tests include this file for `serve`, not `main`.
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = TcpListener::bind(&bind).await?;
    let addr = listener.local_addr()?;

    let server = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            let config = StoreConfig::new(Keyring::generate()?);
            eprintln!("session store: Redis at {url}");
            // Plain HTTP: the cookie cannot be `Secure` for non-browser clients.
            let layer = SessionLayer::new(RedisStore::connect(&url, config).await?)
                .cookie(CookieConfig::default().secure(false));
            tokio::spawn(serve(listener, layer))
        }
        _ => {
            eprintln!("session store: memory (set REDIS_URL to use Redis)");
            let layer = SessionLayer::new(MemoryStore::default())
                .cookie(CookieConfig::default().secure(false));
            tokio::spawn(serve(listener, layer))
        }
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    tokio::signal::ctrl_c().await?;
    server.abort();
    Ok(())
}
