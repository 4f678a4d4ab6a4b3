//! Login racing other requests, across two app "processes" (two stores and
//! two servers sharing one Redis and one secret), with the exact
//! interleaving arranged by a proxy that holds one store call of process A
//! until process B is done:
//!
//! - an increment acknowledged on the old session while the login runs ends
//!   up in the new session, or is refused (never acknowledged and lost);
//! - a session logged out or revoked before the login completes never yields
//!   a live token, nor a listed session.

mod common;
#[path = "common/hold.rs"]
mod hold;
#[path = "common/http.rs"]
mod http;

use std::sync::Arc;

use reqwest::header::COOKIE;
use serde_json::{Value, json};
use tower_redis_sessions::{CookieConfig, Keyring, RedisStore, SessionLayer, StoreConfig};

use hold::HoldProxy;
use http::{Server, bare_client, demo_app, session_cookie};

/// Two app processes on one Redis: A's store talks to Redis through a proxy
/// that can hold its calls, B's directly.
struct Apps {
    proxy: HoldProxy,
    a: Server,
    b: Server,
    library: String,
    http: reqwest::Client,
}

impl Apps {
    async fn start(test: &str) -> Apps {
        let redis = common::shared_server();
        let proxy = HoldProxy::start(redis.port()).await;
        let prefix = http::unique_prefix(test);
        let keyring = Keyring::new([11u8; 32]).unwrap();
        let config = || StoreConfig::new(keyring.clone()).prefix(prefix.clone());
        // TRS_TEST_NEAR_CACHE=0 runs both without the near cache.
        let builder = || RedisStore::builder(config()).near_cache(http::near_cache_from_env());
        let a = Arc::new(builder().connect(&proxy.url()).await.unwrap());
        let b = Arc::new(builder().connect(&redis.url()).await.unwrap());
        let library = a.library_name().to_owned();
        let serve = |store: Arc<RedisStore>| {
            demo_app::routes()
                .layer(SessionLayer::shared(store).cookie(CookieConfig::default().secure(false)))
        };
        Apps {
            proxy,
            a: Server::start(serve(a)).await,
            b: Server::start(serve(b)).await,
            library,
            http: bare_client(),
        }
    }

    /// Holds process A's next call of the library function `name`.
    fn hold_a(&self, name: &str) -> hold::Hold {
        self.proxy.hold(&format!("{}_{name}", self.library))
    }
}

/// One request with `token` as the session cookie: status, body, and the
/// session cookie the response set (`Some("")` when it cleared it).
async fn send(
    http: &reqwest::Client,
    server: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let url = server.url(path);
    let mut request = match method {
        "GET" => http.get(url),
        _ => http.post(url),
    };
    if !token.is_empty() {
        request = request.header(COOKIE, format!("session={token}"));
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let cookie = session_cookie(&response, "session").map(|c| c.value().to_owned());
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, cookie)
}

async fn incr(apps: &Apps, server: &Server, token: &str) -> (u16, Value, Option<String>) {
    send(&apps.http, server, "POST", "/api/incr/n", token, None).await
}

async fn login(
    apps: &Apps,
    server: &Server,
    token: &str,
    user: &str,
) -> (u16, Value, Option<String>) {
    let body = json!({ "user": user });
    send(&apps.http, server, "POST", "/api/login", token, Some(body)).await
}

/// An anonymous session with `n` = 5, made through B.
async fn anonymous_with_five(apps: &Apps) -> String {
    let (status, _, cookie) = incr(apps, &apps.b, "").await;
    assert_eq!(status, 200);
    let token = cookie.expect("a new session sets its cookie");
    for _ in 0..4 {
        assert_eq!(incr(apps, &apps.b, &token).await.0, 200);
    }
    token
}

/// The values of the session `token` opens (`null` user and empty data if
/// none).
async fn session_of(apps: &Apps, token: &str) -> Value {
    let (status, body, _) = send(&apps.http, &apps.b, "GET", "/api/session", token, None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Process A logs in while process B increments the same anonymous session,
/// B's save landing between A's creation of the user's session and A's
/// retirement of the old one: B's acknowledged increment is in the new
/// session. (On the old code the new session held n = 5 while B answered 6.)
#[tokio::test]
async fn an_increment_acknowledged_during_a_login_ends_up_in_the_new_session() {
    let apps = Arc::new(Apps::start("login-fold").await);
    let token = anonymous_with_five(&apps).await;

    let mut held = apps.hold_a("retire");
    let racer = apps.clone();
    let racing_token = token.clone();
    let login = tokio::spawn(async move { login(&racer, &racer.a, &racing_token, "ada").await });
    held.reached().await; // A created ada's session (n = 5) and is about to retire the old one
    let (status, body, _) = incr(&apps, &apps.b, &token).await;
    assert_eq!((status, &body["value"]), (200, &json!(6)), "{body}");
    held.release();

    let (status, body, cookie) = login.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let new = cookie.expect("the login sets the new token");
    assert!(!new.is_empty() && new != token);
    let after = session_of(&apps, &new).await;
    assert_eq!(after["user"], json!("ada"));
    assert_eq!(
        after["data"]["n"],
        json!(6),
        "the acknowledged increment was carried: {after}"
    );
    assert_eq!(
        session_of(&apps, &token).await["data"],
        json!({}),
        "the old token opens nothing"
    );
}

/// The other order: B loaded the old session before the login and saves
/// after the login retired it. B's increment is refused (409, cookie
/// cleared), not acknowledged and dropped.
#[tokio::test]
async fn an_increment_landing_after_the_login_is_refused() {
    let apps = Arc::new(Apps::start("login-late-write").await);
    let token = anonymous_with_five(&apps).await;

    // This time A is the incrementer: hold its save, after its load.
    let mut held = apps.hold_a("save");
    let racer = apps.clone();
    let racing_token = token.clone();
    let late = tokio::spawn(async move { incr(&racer, &racer.a, &racing_token).await });
    held.reached().await;
    let (status, body, cookie) = login(&apps, &apps.b, &token, "ada").await;
    assert_eq!(status, 200, "{body}");
    let new = cookie.expect("the login sets the new token");
    held.release();

    let (status, body, cookie) = late.await.unwrap();
    assert_eq!(
        status, 409,
        "the late increment is refused, not acknowledged: {body}"
    );
    assert_eq!(
        cookie.as_deref(),
        Some(""),
        "and its client drops the dead token"
    );
    assert_eq!(session_of(&apps, &new).await["data"]["n"], json!(5));
}

/// A user session revoked ("log out everywhere else" from another device) or
/// logged out while a login from it runs: the login fails and leaves no
/// live token and no listed session, whichever of A's two calls the end
/// lands before.
#[tokio::test]
async fn a_login_from_a_session_ended_meanwhile_yields_no_live_token() {
    for (end, step) in [
        ("revoke-others", "save"),
        ("revoke-others", "retire"),
        ("logout", "save"),
        ("logout", "retire"),
    ] {
        let apps = Arc::new(Apps::start("login-ended").await);
        // Two devices of ada; the first holds a value.
        let (_, _, first) = login(&apps, &apps.b, "", "ada").await;
        let first = first.unwrap();
        assert_eq!(incr(&apps, &apps.b, &first).await.0, 200);
        let (_, _, second) = login(&apps, &apps.b, "", "ada").await;
        let second = second.unwrap();

        let mut held = apps.hold_a(step);
        let racer = apps.clone();
        let racing_token = first.clone();
        let relogin =
            tokio::spawn(async move { login(&racer, &racer.a, &racing_token, "ada").await });
        held.reached().await;
        match end {
            "logout" => {
                let (status, body, _) =
                    send(&apps.http, &apps.b, "POST", "/api/logout", &first, None).await;
                assert_eq!(status, 200, "{body}");
            }
            _ => {
                let (status, body, _) = send(
                    &apps.http,
                    &apps.b,
                    "POST",
                    "/api/sessions/revoke-others",
                    &second,
                    None,
                )
                .await;
                assert_eq!(status, 200, "{body}");
                assert!(body["revoked"].as_u64().unwrap() >= 1, "{body}");
            }
        }
        held.release();

        let (status, body, cookie) = relogin.await.unwrap();
        assert_eq!(
            status, 409,
            "[{end} before A's {step}] the login fails: {body}"
        );
        assert_eq!(
            cookie.as_deref(),
            Some(""),
            "[{end}/{step}] and clears the cookie"
        );
        let (status, listing, _) =
            send(&apps.http, &apps.b, "GET", "/api/sessions", &second, None).await;
        assert_eq!(status, 200);
        let listing = listing.as_array().unwrap().clone();
        assert_eq!(
            listing.len(),
            1,
            "[{end}/{step}] only the second device: {listing:?}"
        );
        assert_eq!(listing[0]["current"], json!(true));
        assert_eq!(session_of(&apps, &first).await["user"], Value::Null);
    }
}
