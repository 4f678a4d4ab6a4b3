//! The demo: an axum app with sessions in Redis (or in memory).
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! Then open <http://127.0.0.1:3000/>, or use the JSON API:
//!
//! ```text
//! curl -c jar -b jar -X POST http://127.0.0.1:3000/api/incr/hits
//! curl -c jar -b jar -H 'content-type: application/json' -d '{"user":"ada"}' http://127.0.0.1:3000/api/login
//! curl -c jar -b jar http://127.0.0.1:3000/api/session
//! ```
//!
//! Environment:
//!
//! - `REDIS_URL`: a single Redis (`redis://127.0.0.1:6379`, or
//!   `rediss://host:6380` for TLS), or
//! - `REDIS_CLUSTER_URLS`: comma-separated node URLs of a Redis Cluster, or
//! - `REDIS_SENTINELS`: comma-separated `host:port` of Redis Sentinels, with
//!   `REDIS_SENTINEL_MASTER`, the name of the primary they monitor.
//! - `REDIS_CA_CERT`: a PEM file of the certificate authority to trust for
//!   `rediss://` instead of the system's; `REDIS_CLIENT_CERT` and
//!   `REDIS_CLIENT_KEY`: PEM files of a client certificate and its key, for
//!   servers that require one (mutual TLS). TLS needs the crate feature
//!   `tls-rustls` (`cargo run --example demo --features tls-rustls`).
//!   With neither, the demo starts a throwaway `redis-server` on a free
//!   loopback port (no persistence; stopped when the demo exits) if one is on
//!   `PATH`, and otherwise keeps sessions in memory. It says which on stderr.
//! - `BIND`: the address to listen on (default `127.0.0.1:3000`; port 0
//!   picks a free one). Once bound, the demo prints
//!   `listening on http://<address>` on stdout.
//! - `SESSION_SECRET`: at least 32 bytes, the key that seals sessions. When
//!   unset, a random one (sessions then do not survive a restart).
//! - `COOKIE_SECURE=1`: mark the cookie `Secure`, for a demo behind TLS.
//! - `SESSION_IDLE_MS`, `SESSION_LIFETIME_MS`: the idle timeout and the
//!   absolute lifetime of new sessions, in ms (0 = none; defaults: the
//!   layer's, 24 hours and 30 days).
//! - `SESSION_TOUCH_MS`: the store's touch interval (default 60 s).
//! - `SESSION_NEAR_CACHE=0|1`: the per-process near cache of sessions
//!   (default: the crate's default, on; single Redis and cluster);
//!   `SESSION_MAX_STALENESS_MS` its staleness bound (default 300).
//! - `SESSION_MAX_PER_USER`: the most sessions one user may have (default:
//!   the store's, 100); a login beyond it ends the user's oldest sessions.
//! - `SESSION_ENCRYPT=1`: seal sessions encrypted (private records) rather
//!   than only signed.
//! - `RUST_LOG`: what to log (an `EnvFilter`, default `info`).
//!
//! Ctrl-C or SIGTERM stops it gracefully.

mod app;

use std::error::Error;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::net::TcpListener;
use tower_redis_sessions::store::{NearCache, SessionStore, TlsConfig};
use tower_redis_sessions::{
    CookieConfig, Keyring, MIN_SECRET_LEN, MemoryStore, RedisStore, RedisStoreBuilder,
    SessionLayer, StoreConfig,
};

type BoxError = Box<dyn Error + Send + Sync>;

/// How long in-flight requests get to finish after Ctrl-C / SIGTERM.
const GRACE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let mut keys = keyring()?;
    if flag("SESSION_ENCRYPT")? {
        keys = keys.encrypt_records(true);
    }
    let mut config = StoreConfig::new(keys);
    if let Some(touch) = millis_var("SESSION_TOUCH_MS")? {
        config = config.touch_interval(Duration::from_millis(touch));
    }
    if let Some(max) = millis_var("SESSION_MAX_PER_USER")? {
        config = config.max_sessions_per_user(usize::try_from(max)?);
    }
    let settings = Settings {
        secure: cookie_secure()?,
        idle: millis_var("SESSION_IDLE_MS")?,
        lifetime: millis_var("SESSION_LIFETIME_MS")?,
    };
    let bind = env("BIND").unwrap_or_else(|| "127.0.0.1:3000".to_owned());

    // Kept alive until `run` returns; dropping it stops the redis-server.
    let mut throwaway = None;
    let near = near_cache()?;
    let router = if let Some(sentinels) = env("REDIS_SENTINELS") {
        let (store, shown) = connect_sentinel(&sentinels, config).await?;
        banner(&shown);
        with_layer(store, &settings)
    } else if let Some(url) = env("REDIS_URL") {
        let (tls, shown) = tls_from_env(&url)?;
        let store = with_tls(RedisStore::builder(config), tls)
            .near_cache(near)
            .connect(&url)
            .await?;
        banner(&format!("Redis at {}{shown}", redact(&url)));
        with_layer(store, &settings)
    } else if let Some(urls) = env("REDIS_CLUSTER_URLS") {
        let urls: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        let (tls, tls_shown) = tls_from_env(urls.first().map_or("", String::as_str))?;
        let store = with_tls(RedisStore::builder(config), tls)
            .connect_cluster(urls.clone())
            .await?;
        let shown: Vec<String> = urls.iter().map(|u| redact(u)).collect();
        banner(&format!("Redis Cluster at {}{tls_shown}", shown.join(", ")));
        with_layer(store, &settings)
    } else if env("REDIS_SENTINEL_MASTER").is_some() {
        return Err(
            "REDIS_SENTINEL_MASTER is set: set REDIS_SENTINELS to the sentinels' host:port too"
                .into(),
        );
    } else if let Some(server) = Throwaway::start()? {
        let url = server.url();
        // Assigned before connecting, so the server is stopped if that fails.
        let pid = server.child.id();
        throwaway = Some(server);
        let store = RedisStore::builder(config)
            .near_cache(near)
            .connect(&url)
            .await?;
        banner(&format!(
            "a throwaway redis-server at {url} (pid {pid}, no persistence, stopped on exit); \
             set REDIS_URL or REDIS_CLUSTER_URLS to use your own"
        ));
        with_layer(store, &settings)
    } else {
        banner(
            "MEMORY (no redis-server on PATH and neither REDIS_URL nor REDIS_CLUSTER_URLS set): \
             sessions vanish when the demo exits",
        );
        with_layer(MemoryStore::new(config), &settings)
    };

    let listener = TcpListener::bind(&bind)
        .await
        .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }

    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown_signal().await;
        eprintln!("demo: shutting down (in-flight requests get {GRACE:?})");
        let _ = stopping_tx.send(());
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(signal);
    tokio::select! {
        result = server => result?,
        _ = async {
            // Only a signal starts the grace period; if the server ends first
            // this branch is not polled again.
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => eprintln!("demo: connections still open after {GRACE:?}; exiting anyway"),
    }
    drop(throwaway);
    Ok(())
}

/// `REDIS_SENTINELS` + `REDIS_SENTINEL_MASTER`: the primary the sentinels
/// name, and what the banner says.
async fn connect_sentinel(
    sentinels: &str,
    config: StoreConfig,
) -> Result<(RedisStore, String), BoxError> {
    if env("REDIS_URL").is_some() || env("REDIS_CLUSTER_URLS").is_some() {
        return Err("set REDIS_SENTINELS or REDIS_URL / REDIS_CLUSTER_URLS, not both".into());
    }
    let primary = env("REDIS_SENTINEL_MASTER").ok_or(
        "REDIS_SENTINELS is set: set REDIS_SENTINEL_MASTER to the name of the primary \
         the sentinels monitor (`sentinel monitor <name> ...`)",
    )?;
    let addrs: Vec<String> = sentinels
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    let (tls, tls_shown) = tls_from_env("")?;
    let store = with_tls(RedisStore::builder(config), tls)
        .connect_sentinel(addrs.clone(), &primary)
        .await?;
    let shown: Vec<String> = addrs.iter().map(|a| redact(a)).collect();
    Ok((
        store,
        format!(
            "Redis primary `{primary}` through Sentinel at {}{tls_shown}",
            shown.join(", ")
        ),
    ))
}

/// TLS settings from `REDIS_CA_CERT`, `REDIS_CLIENT_CERT` and
/// `REDIS_CLIENT_KEY` (PEM file paths), and what the banner says about TLS
/// for `url`.
fn tls_from_env(url: &str) -> Result<(Option<TlsConfig>, String), BoxError> {
    let read = |var: &str| -> Result<Option<Vec<u8>>, BoxError> {
        env(var)
            .map(|path| {
                std::fs::read(&path).map_err(|e| format!("{var}: cannot read {path}: {e}").into())
            })
            .transpose()
    };
    let ca = read("REDIS_CA_CERT")?;
    let client = match (read("REDIS_CLIENT_CERT")?, read("REDIS_CLIENT_KEY")?) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("set both REDIS_CLIENT_CERT and REDIS_CLIENT_KEY, or neither".into()),
    };
    let tls_url = url
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("rediss://");
    if ca.is_none() && client.is_none() {
        let shown = if tls_url {
            " over TLS (system CAs)"
        } else {
            ""
        };
        return Ok((None, shown.to_owned()));
    }
    let mut shown = String::from(" over TLS (");
    let mut tls = TlsConfig::new();
    if let Some(ca) = ca {
        tls = tls.ca_cert_pem(ca);
        shown.push_str("CA from REDIS_CA_CERT");
    } else {
        shown.push_str("system CAs");
    }
    if let Some((cert, key)) = client {
        tls = tls.client_cert_pem(cert, key);
        shown.push_str(", client certificate from REDIS_CLIENT_CERT");
    }
    shown.push(')');
    Ok((Some(tls), shown))
}

fn with_tls(builder: RedisStoreBuilder, tls: Option<TlsConfig>) -> RedisStoreBuilder {
    match tls {
        Some(tls) => builder.tls(tls),
        None => builder,
    }
}

/// The layer's settings the environment chose.
struct Settings {
    secure: bool,
    /// ms; `Some(0)` = none, `None` = the layer's default.
    idle: Option<u64>,
    lifetime: Option<u64>,
}

fn with_layer<S: SessionStore + Clone>(store: S, settings: &Settings) -> Router {
    // The demo serves plain http://, and clients other than browsers on
    // localhost (curl, Python requests, reqwest) do not send a `Secure`
    // cookie back over plain HTTP: with the default `Secure` cookie every
    // request would start a new session. So it is off here, and
    // COOKIE_SECURE=1 turns it back on behind TLS. Everything else keeps the
    // layer's defaults unless the environment says otherwise.
    let mut layer =
        SessionLayer::new(store.clone()).cookie(CookieConfig::default().secure(settings.secure));
    let duration = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
    if let Some(idle) = settings.idle {
        layer = layer.idle_timeout(duration(idle));
    }
    if let Some(lifetime) = settings.lifetime {
        layer = layer.lifetime(duration(lifetime));
    }
    // Clones share the store: the metrics route reads the layer's counters.
    app::app(layer).merge(app::metrics(Arc::new(store)))
}

/// A non-negative integer from the environment, if set.
fn millis_var(name: &str) -> Result<Option<u64>, BoxError> {
    env(name)
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("{name} must be a whole number, not {v:?}").into())
        })
        .transpose()
}

/// The near cache from `SESSION_NEAR_CACHE` and `SESSION_MAX_STALENESS_MS`.
fn near_cache() -> Result<NearCache, BoxError> {
    let mut cache = match env("SESSION_NEAR_CACHE").as_deref() {
        None => NearCache::default(),
        Some("1") => NearCache::new(),
        Some("0") => NearCache::off(),
        Some(other) => {
            return Err(format!("SESSION_NEAR_CACHE must be 0 or 1, not {other:?}").into());
        }
    };
    if let Some(ms) = millis_var("SESSION_MAX_STALENESS_MS")? {
        cache = cache.max_staleness(Duration::from_millis(ms));
    }
    if cache.is_enabled() {
        eprintln!(
            "demo: near cache on, max staleness {:?}",
            cache.get_max_staleness()
        );
    }
    Ok(cache)
}

/// A non-empty environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn banner(store: &str) {
    eprintln!("demo: ==================================================");
    eprintln!("demo: session store: {store}");
    eprintln!("demo: ==================================================");
}

fn keyring() -> Result<Keyring, BoxError> {
    match std::env::var("SESSION_SECRET") {
        Ok(secret) => {
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "SESSION_SECRET is {} bytes; it must be at least {MIN_SECRET_LEN} \
                     (for instance: SESSION_SECRET=$(openssl rand -base64 48))",
                    secret.len()
                )
                .into());
            }
            Ok(Keyring::new(secret)?)
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            Err("SESSION_SECRET is not valid UTF-8".to_owned().into())
        }
        Err(std::env::VarError::NotPresent) => {
            eprintln!(
                "demo: WARNING: SESSION_SECRET is not set; using a random one, so sessions \
                 do not survive a restart of the demo"
            );
            Ok(Keyring::generate()?)
        }
    }
}

fn cookie_secure() -> Result<bool, BoxError> {
    flag("COOKIE_SECURE")
}

/// A 1/0 switch from the environment (unset: off).
fn flag(name: &str) -> Result<bool, BoxError> {
    match env(name).as_deref().map(str::trim) {
        None | Some("0" | "false" | "no") => Ok(false),
        Some("1" | "true" | "yes") => Ok(true),
        Some(other) => Err(format!("{name} must be 1 or 0, not {other:?}").into()),
    }
}

/// `redis://user:password@host` -> `redis://***@host`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No SIGINT handler: rely on SIGTERM alone.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// A `redis-server` started for this run only, killed on drop.
struct Throwaway {
    child: Child,
    port: u16,
}

impl Throwaway {
    /// Starts one if `redis-server` is on `PATH`; `None` if it is not.
    fn start() -> Result<Option<Throwaway>, BoxError> {
        if !on_path("redis-server") {
            return Ok(None);
        }
        let mut last_error = String::new();
        // A free port can be taken between our probe and redis' bind: retry.
        for _ in 0..5 {
            let port = StdListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(std::env::temp_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let mut server = Throwaway { child, port };
            match server.wait_ready(Duration::from_secs(5)) {
                Ok(()) => return Ok(Some(server)),
                Err(e) => last_error = e,
            }
            // Dropping `server` kills it.
        }
        Err(format!("could not start a throwaway redis-server: {last_error}").into())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("redis-server exited at start ({status})"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not accept connections within {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("demo: stopped the throwaway redis-server");
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
