//! End to end, over real HTTP, each test on its own Redis: how many Redis
//! round trips each kind of request costs (`INFO commandstats` deltas),
//! malformed tokens cost none, failed responses save nothing, and a store
//! outage fails only the requests that touch their session.

mod common;
#[path = "common/http.rs"]
mod http;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use reqwest::header::COOKIE;
use serde_json::{Value, json};
use tower_redis_sessions::{
    CookieConfig, RedisStore, Session, SessionError, SessionLayer, StoreConfig,
};

use common::{CommandStats, RedisCluster, RedisServer};
use http::{Browser, Server, assert_round_trips, bare_client, demo_app, session_cookie};

/// A store on `url` with a single multiplexed connection, so that no
/// connection is opened (with its handshake commands) during a measurement.
async fn store_on(url: &str, config: StoreConfig) -> Arc<RedisStore> {
    // Without the near cache (it has its own round-trip tests): every
    // request's load is a call, and no heartbeat adds commands.
    Arc::new(
        RedisStore::builder(config)
            .pool_size(1)
            .near_cache(tower_redis_sessions::store::NearCache::off())
            .connect(url)
            .await
            .unwrap(),
    )
}

/// Routes the demo lacks, for the tests.
fn test_routes() -> Router {
    async fn cycle(session: Session) -> Result<&'static str, SessionError> {
        session.cycle_id().await?;
        Ok("cycled\n")
    }
    async fn fail(session: Session) -> Result<StatusCode, SessionError> {
        session.insert("failed", true).await?;
        Ok(StatusCode::INTERNAL_SERVER_ERROR)
    }
    async fn unavailable(session: Session) -> Result<StatusCode, SessionError> {
        session.insert("failed", true).await?;
        Ok(StatusCode::SERVICE_UNAVAILABLE)
    }
    async fn not_found(session: Session) -> Result<StatusCode, SessionError> {
        session.insert("client_error", true).await?;
        Ok(StatusCode::NOT_FOUND)
    }
    Router::new()
        .route("/test/cycle", post(cycle))
        .route("/test/fail", post(fail))
        .route("/test/unavailable", post(unavailable))
        .route("/test/not-found", post(not_found))
}

fn app(store: &Arc<RedisStore>) -> Router {
    demo_app::routes()
        .merge(test_routes())
        .layer(SessionLayer::shared(store.clone()).cookie(CookieConfig::default().secure(false)))
}

/// What `f` costs on `stats()`'s server(s).
async fn measure<T>(
    stats: impl Fn() -> CommandStats,
    f: impl Future<Output = T>,
) -> (T, CommandStats) {
    let before = stats();
    let out = f.await;
    (out, stats().delta_since(&before))
}

/// Records and checks the cost of each request kind.
struct Costs {
    rows: Vec<(String, u64, CommandStats)>,
}

impl Costs {
    #[track_caller]
    fn check(&mut self, what: &str, delta: CommandStats, expected: u64) {
        assert_round_trips(&delta, expected, what);
        self.rows.push((what.to_owned(), delta.get("fcall"), delta));
    }

    fn report(&self, title: &str) {
        eprintln!("[round trips, {title}] FCALLs per request (commands counted by Redis):");
        for (what, fcalls, delta) in &self.rows {
            eprintln!("  {fcalls}  {what:<58} {:?}", delta.0);
        }
    }
}

#[tokio::test]
async fn round_trips_per_request_type() {
    let server = RedisServer::start();
    let store = store_on(&server.url(), http::config("rt:")).await;
    let web = Server::start(app(&store)).await;
    let stats = || server.commandstats();
    let mut costs = Costs { rows: Vec::new() };
    let a = Browser::new(&web);

    // Nothing touches the session: no command at all.
    let (r, d) = measure(stats, a.get("/healthz")).await;
    assert_eq!(r.status(), 200);
    costs.check("GET /healthz (route without session), no cookie", d, 0);
    let (r, d) = measure(stats, a.get("/api/session")).await;
    assert_eq!(r.json::<Value>().await.unwrap()["data"], json!({}));
    costs.check("GET /api/session, no cookie", d, 0);

    // The first write: the session is created in one call, no load.
    let (r, d) = measure(stats, a.post("/api/incr/x")).await;
    assert_eq!(r.status(), 200);
    assert!(session_cookie(&r, "session").is_some());
    costs.check("POST /api/incr/x, no cookie (creates the session)", d, 1);

    let (r, d) = measure(stats, a.get("/healthz")).await;
    assert_eq!(r.status(), 200);
    costs.check("GET /healthz with a session cookie", d, 0);
    let (r, d) = measure(stats, a.get("/style.css")).await;
    assert_eq!(r.status(), 200);
    costs.check("GET /style.css (static asset) with a session cookie", d, 0);

    let (r, d) = measure(stats, a.get("/api/session")).await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "user": null, "data": { "x": 1 } })
    );
    costs.check("GET /api/session (read only)", d, 1);

    let (r, d) = measure(stats, a.post("/api/incr/x")).await;
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "key": "x", "value": 2 })
    );
    costs.check("POST /api/incr/x (read + write)", d, 2);

    let (r, d) = measure(stats, a.get("/")).await;
    assert_eq!(r.status(), 200);
    costs.check("GET / (HTML page: visit counter), anonymous", d, 2);

    // Login from an existing anonymous session: load, save under the new
    // token (the user's hash slot), delete the old one.
    let (r, d) = measure(stats, a.post_json("/api/login", json!({ "user": "ada" }))).await;
    assert_eq!(r.status(), 200);
    costs.check("POST /api/login from an anonymous session", d, 3);

    let (r, d) = measure(stats, a.get("/api/sessions")).await;
    assert_eq!(
        r.json::<Value>().await.unwrap().as_array().unwrap().len(),
        1
    );
    costs.check("GET /api/sessions (load + list)", d, 2);

    let (r, d) = measure(stats, a.post("/api/sessions/revoke-others")).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "revoked": 0 }));
    costs.check("POST /api/sessions/revoke-others (load + revoke)", d, 2);

    let before = a.token().unwrap();
    let (r, d) = measure(stats, a.post("/test/cycle")).await;
    assert_eq!(r.status(), 200);
    assert_ne!(a.token().unwrap(), before, "cycle_id issues a new token");
    costs.check("cycle_id (load, then one atomic rotate)", d, 2);

    let (r, d) = measure(stats, a.post_json("/api/login", json!({ "user": "ada" }))).await;
    assert_eq!(r.status(), 200);
    costs.check("POST /api/login when already logged in", d, 3);

    let b = Browser::new(&web);
    let (r, d) = measure(stats, b.post_json("/api/login", json!({ "user": "bob" }))).await;
    assert_eq!(r.status(), 200);
    costs.check("POST /api/login without a session", d, 1);

    let (r, d) = measure(stats, a.post("/api/logout")).await;
    assert_eq!(r.status(), 200);
    costs.check("POST /api/logout (delete, no load)", d, 1);
    let (r, d) = measure(stats, a.get("/api/session")).await;
    assert_eq!(r.json::<Value>().await.unwrap()["user"], Value::Null);
    costs.check("GET /api/session after logout (no cookie left)", d, 0);

    // An unknown but well-formed token is looked up (once) and found absent.
    let unknown = http::invented_token(3);
    let (_, d) = measure(
        stats,
        http::session_with_cookie(&bare_client(), &web, &format!("session={unknown}")),
    )
    .await;
    costs.check("GET /api/session with an unknown well-formed token", d, 1);
    let (r, d) = measure(
        stats,
        bare_client()
            .post(web.url("/api/incr/y"))
            .header(COOKIE, format!("session={unknown}"))
            .send(),
    )
    .await;
    let r = r.unwrap();
    let issued = session_cookie(&r, "session").unwrap();
    assert_ne!(issued.value(), unknown);
    costs.check(
        "POST /api/incr/y with an unknown token (load + create)",
        d,
        2,
    );

    costs.report("standalone");
}

/// With sliding expiry due on every load (touch interval zero), a read is
/// still one call, and the client gets its cookie's new Max-Age.
#[tokio::test]
async fn sliding_expiry_rides_on_the_load() {
    let server = RedisServer::start();
    let config = http::config("slide:").touch_interval(Duration::ZERO);
    let store = store_on(&server.url(), config).await;
    let web = Server::start(app(&store)).await;
    let stats = || server.commandstats();
    let a = Browser::new(&web);
    a.post("/api/incr/x").await;
    let key = http::session_key("slide:", &a.token().unwrap());
    let pttl = || server.cmd(&["PTTL", &key]).parse::<i64>().unwrap();
    let ttl_before = pttl();
    assert!(ttl_before > 0);
    let field = |f: &str| server.cmd(&["HGET", &key, f]).parse::<u64>().unwrap();
    let seen_before = field("s");
    tokio::time::sleep(Duration::from_millis(50)).await;

    let (r, d) = measure(stats, a.get("/api/session")).await;
    assert_round_trips(&d, 1, "GET /api/session with sliding expiry due");
    let c = session_cookie(&r, "session").expect("the extended deadline is sent");
    assert_eq!(c.value(), a.token().unwrap(), "same token");
    assert!(c.max_age().unwrap().whole_seconds() > 86_000);
    // The deadline in Redis moved forward; the key's expiry follows it on
    // the grid (E(deadline), lua/sessions.lua): never before it.
    let (seen, idle, absolute) = (field("s"), field("i"), field("a"));
    assert!(
        seen >= seen_before + 50,
        "last seen {seen_before} -> {seen}"
    );
    let deadline = match absolute {
        0 => seen + idle,
        a => a.min(seen + idle),
    };
    let expiry = server.cmd(&["PEXPIRETIME", &key]).parse::<u64>().unwrap();
    assert_eq!(expiry, common::stores::grid_expiry(deadline, idle));
    assert!(expiry >= deadline);
    eprintln!(
        "[round trips] read with sliding expiry due: {} FCALL ({:?})",
        d.get("fcall"),
        d.0
    );
}

/// Malformed tokens: a normal answer, and Redis never hears of them.
#[tokio::test]
async fn malformed_cookies_cost_no_redis_command() {
    let server = RedisServer::start();
    let store = store_on(&server.url(), http::config("bad:")).await;
    let web = Server::start(app(&store)).await;
    let stats = || server.commandstats();
    let http = bare_client();

    let good = http::invented_token(1);
    let mut no_dot = good.clone().into_bytes();
    no_dot[8] = b'x';
    let no_dot = String::from_utf8(no_dot).unwrap();
    let bad_chars: Vec<String> = ['+', '/', '=', '!', '*', ' ']
        .iter()
        .map(|c| format!("{}{c}{}", &good[..3], &good[4..]))
        .collect();
    // Non-canonical: the last character carries bits beyond the 32 bytes.
    let loose = format!("{}B", &good[..good.len() - 1]);
    assert!(loose.parse::<tower_redis_sessions::store::Token>().is_err());
    let mut cookies: Vec<Vec<u8>> = vec![
        b"session=garbage".to_vec(),
        b"session=".to_vec(),
        format!("session={}", &good[..good.len() - 1]).into_bytes(),
        format!("session={good}A").into_bytes(),
        format!("session={}", "A".repeat(4000)).into_bytes(),
        format!("session={no_dot}").into_bytes(),
        format!("session={}.{}", &good[..7], &good[9..]).into_bytes(),
        format!("session={loose}").into_bytes(),
        format!("session=\"{good}").into_bytes(),
        format!("other=1; session=garbage; x={good}").into_bytes(),
        format!("session-x={good}").into_bytes(),
        b"session=\xff\xfe\xfd".to_vec(),
        b";;; ===; session".to_vec(),
    ];
    cookies.extend(
        bad_chars
            .iter()
            .map(|t| format!("session={t}").into_bytes()),
    );

    for cookie in &cookies {
        let shown = String::from_utf8_lossy(cookie);
        let shown = &shown[..shown.len().min(80)];
        let value = reqwest::header::HeaderValue::from_bytes(cookie).unwrap();
        let (r, d) = measure(
            stats,
            http.get(web.url("/api/session"))
                .header(COOKIE, value.clone())
                .send(),
        )
        .await;
        let r = r.unwrap();
        assert_eq!(r.status(), 200, "{shown}");
        assert!(session_cookie(&r, "session").is_none(), "{shown}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({ "user": null, "data": {} }),
            "{shown}"
        );
        assert_round_trips(&d, 0, &format!("GET /api/session with cookie {shown}"));

        // A write with it: a fresh session in one call (no load).
        let (r, d) = measure(
            stats,
            http.post(web.url("/api/incr/n"))
                .header(COOKIE, value)
                .send(),
        )
        .await;
        let r = r.unwrap();
        assert_eq!(r.status(), 200, "{shown}");
        let issued = session_cookie(&r, "session").expect("a new token");
        assert!(
            issued
                .value()
                .parse::<tower_redis_sessions::store::Token>()
                .is_ok()
        );
        assert_round_trips(&d, 1, &format!("POST /api/incr/n with cookie {shown}"));
    }
    eprintln!(
        "[bad cookies] {} malformed cookies: 200 each, 0 Redis commands to read, 1 FCALL to write",
        cookies.len()
    );
}

/// A 5xx response saves nothing: neither a new session nor a change.
#[tokio::test]
async fn server_errors_are_not_saved() {
    let server = RedisServer::start();
    let store = store_on(&server.url(), http::config("err:")).await;
    let web = Server::start(app(&store)).await;
    let stats = || server.commandstats();
    let a = Browser::new(&web);

    // No session yet: nothing is created, no cookie, no Redis command.
    let (r, d) = measure(stats, a.post("/test/fail")).await;
    assert_eq!(r.status(), 500);
    assert!(session_cookie(&r, "session").is_none());
    assert_round_trips(&d, 0, "a 500 on a new session");
    let (r, d) = measure(stats, a.post("/test/unavailable")).await;
    assert_eq!(r.status(), 503);
    assert!(session_cookie(&r, "session").is_none());
    assert_round_trips(&d, 0, "a 503 on a new session");

    // An existing session: the change is dropped (only the load happens).
    a.post("/api/incr/x").await;
    let (r, d) = measure(stats, a.post("/test/fail")).await;
    assert_eq!(r.status(), 500);
    assert_round_trips(&d, 1, "a 500 on an existing session (load only)");
    assert_eq!(
        a.session().await,
        json!({ "user": null, "data": { "x": 1 } })
    );

    // A 4xx is a normal answer: saved.
    let (r, d) = measure(stats, a.post("/test/not-found")).await;
    assert_eq!(r.status(), 404);
    assert_round_trips(&d, 2, "a 404 on an existing session (load + save)");
    assert_eq!(
        a.session().await,
        json!({ "user": null, "data": { "x": 1, "client_error": true } })
    );
}

/// Redis down: requests that touch their session get a 503 (with
/// Retry-After), the others are served; back up, everything works again.
#[tokio::test]
async fn store_outage_fails_only_session_requests() {
    let mut server = RedisServer::start();
    let config = http::config("outage:");
    let store = Arc::new(
        RedisStore::builder(config)
            .pool_size(1)
            .connect_timeout(Duration::from_millis(500))
            .wait_timeout(Duration::from_millis(500))
            .command_timeout(Duration::from_millis(500))
            .connect(&server.url())
            .await
            .unwrap(),
    );
    let web = Server::start(app(&store)).await;
    let a = Browser::new(&web);
    assert_eq!(a.post("/api/incr/x").await.status(), 200);
    let token = a.token().unwrap();

    server.stop();
    for (method, path, touches) in [
        ("GET", "/api/session", true),
        ("POST", "/api/incr/x", true),
        ("GET", "/", true),
        ("GET", "/healthz", false),
        ("GET", "/style.css", false),
    ] {
        let request = match method {
            "GET" => a.http.get(a.url(path)),
            _ => a.http.post(a.url(path)),
        };
        let r = request.send().await.unwrap();
        if touches {
            assert_eq!(r.status(), 503, "{method} {path}");
            assert_eq!(r.headers()["retry-after"], "1");
            assert!(session_cookie(&r, "session").is_none(), "cookie kept");
        } else {
            assert_eq!(r.status(), 200, "{method} {path}");
        }
    }
    // A new visitor's read needs no store: fine even now.
    let (status, _) = http::session_with_cookie(&bare_client(), &web, "x=1").await;
    assert_eq!(status, 200);
    assert_eq!(
        a.token().as_deref(),
        Some(token.as_str()),
        "the client keeps its token"
    );

    // Back up (empty: no persistence, and without the function library,
    // which the store registers again).
    server.restart();
    let body = a.session().await;
    assert_eq!(body, json!({ "user": null, "data": {} }));
    let r = a.post("/api/incr/x").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "key": "x", "value": 1 })
    );
}

/// The same costs on a Redis Cluster (its own, for exact counts): reads and
/// writes stay in one hash slot; login from an anonymous session moves to
/// the user's slot.
#[tokio::test]
async fn round_trips_on_a_cluster() {
    let cluster = RedisCluster::start();
    let store = Arc::new(
        RedisStore::builder(http::config("crt:"))
            .pool_size(1)
            .near_cache(tower_redis_sessions::store::NearCache::off())
            .connect_cluster(cluster.urls())
            .await
            .unwrap(),
    );
    let web = Server::start(app(&store)).await;
    let stats = || cluster.commandstats();
    let mut costs = Costs { rows: Vec::new() };
    let a = Browser::new(&web);

    // The cluster client learns the topology once; start measuring after.
    a.post("/api/incr/warm").await;
    let (_, d) = measure(stats, a.get("/healthz")).await;
    costs.check("GET /healthz", d, 0);
    let (_, d) = measure(stats, a.get("/api/session")).await;
    costs.check("GET /api/session (read only)", d, 1);
    let (_, d) = measure(stats, a.post("/api/incr/x")).await;
    costs.check("POST /api/incr/x (read + write)", d, 2);
    let (_, d) = measure(stats, a.post_json("/api/login", json!({ "user": "ada" }))).await;
    costs.check("POST /api/login from an anonymous session", d, 3);
    let (_, d) = measure(stats, a.post("/test/cycle")).await;
    costs.check("cycle_id", d, 2);
    let (_, d) = measure(stats, a.get("/api/sessions")).await;
    costs.check("GET /api/sessions", d, 2);
    let (_, d) = measure(stats, a.post("/api/logout")).await;
    costs.check("POST /api/logout", d, 1);
    costs.report("cluster");
}
