//! What a "your devices" page and an API need, end to end over HTTP and a
//! real Redis: device metadata in the listing, revoking one session by id
//! (only one's own), per-kind "log out everywhere else", private
//! (encrypted) records, the `__Host-` cookie, and a 401 for invalid API
//! tokens when asked for.

mod common;
#[path = "common/http.rs"]
mod http;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::{get, post};
use reqwest::header::{AUTHORIZATION, COOKIE, SET_COOKIE, USER_AGENT, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use tower_redis_sessions::{
    CookieConfig, Keyring, RedisStore, Session, SessionError, SessionLayer, StoreConfig,
};

use common::shared_server;
use http::{Server, bare_client, demo_app, invented_token, session_cookie, session_key};

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
const SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";

async fn redis_store(prefix: &str, keyring: Keyring) -> Arc<RedisStore> {
    let config = StoreConfig::new(keyring).prefix(prefix);
    Arc::new(
        RedisStore::connect(&shared_server().url(), config)
            .await
            .unwrap(),
    )
}

fn plain_cookie() -> CookieConfig {
    CookieConfig::default().secure(false)
}

/// Logs in as `user` from a client with `agent`; returns the token.
async fn login_from(server: &Server, user: &str, agent: &str) -> String {
    let response = bare_client()
        .post(server.url("/api/login"))
        .header(USER_AGENT, agent)
        .json(&json!({ "user": user }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    session_cookie(&response, "session")
        .unwrap()
        .value()
        .to_owned()
}

async fn call(server: &Server, method: &str, path: &str, token: &str) -> (u16, Value) {
    let http = bare_client();
    let request = match method {
        "GET" => http.get(server.url(path)),
        _ => http.post(server.url(path)),
    };
    let response = request
        .header(COOKIE, format!("session={token}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The listing names each device from the user agent recorded at login and
/// gives an id that the revoke route takes; an id that is not the user's is
/// a 404 and ends nothing.
#[tokio::test]
async fn devices_are_listed_with_their_label_and_revoked_by_id() {
    let prefix = http::unique_prefix("devices");
    let store = redis_store(&prefix, Keyring::new([5u8; 32]).unwrap()).await;
    let server = Server::start(
        demo_app::routes().layer(SessionLayer::shared(store.clone()).cookie(plain_cookie())),
    )
    .await;
    let laptop = login_from(&server, "ada", FIREFOX).await;
    let phone = login_from(&server, "ada", SAFARI).await;
    let stranger = login_from(&server, "eve", FIREFOX).await;

    let (status, listing) = call(&server, "GET", "/api/sessions", &laptop).await;
    assert_eq!(status, 200);
    let listing = listing.as_array().unwrap().clone();
    assert_eq!(listing.len(), 2, "{listing:?}");
    let mine = listing
        .iter()
        .find(|s| s["current"] == json!(true))
        .unwrap();
    let other = listing
        .iter()
        .find(|s| s["current"] == json!(false))
        .unwrap();
    assert_eq!(mine["device"], json!("Firefox on Linux"));
    assert_eq!(mine["user_agent"], json!(FIREFOX));
    assert_eq!(other["device"], json!("Safari on iOS"));

    // Eve's id is not ada's: 404, and Eve stays logged in.
    let (_, eves) = call(&server, "GET", "/api/sessions", &stranger).await;
    let eves_id = eves[0]["id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &server,
        "POST",
        &format!("/api/sessions/{eves_id}/revoke"),
        &laptop,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(&server, "POST", "/api/sessions/not-an-id/revoke", &laptop).await;
    assert_eq!(status, 404);
    assert_eq!(
        call(&server, "GET", "/api/session", &stranger).await.1["user"],
        json!("eve")
    );

    // Ada ends her phone's session from the laptop.
    let phone_id = other["id"].as_str().unwrap();
    let (status, body) = call(
        &server,
        "POST",
        &format!("/api/sessions/{phone_id}/revoke"),
        &laptop,
    )
    .await;
    assert_eq!((status, body), (200, json!({ "revoked": true })));
    assert_eq!(
        call(&server, "GET", "/api/session", &phone).await.1["user"],
        Value::Null
    );
    let (_, listing) = call(&server, "GET", "/api/sessions", &laptop).await;
    assert_eq!(listing.as_array().unwrap().len(), 1);
}

async fn revoke_web_only(session: Session) -> Result<String, SessionError> {
    Ok(session.revoke_others_of_kind("web").await?.to_string())
}

/// "Log out every other browser" leaves the user's API sessions alone.
#[tokio::test]
async fn revoking_one_kind_keeps_the_others() {
    let prefix = http::unique_prefix("kinds");
    let store = redis_store(&prefix, Keyring::new([5u8; 32]).unwrap()).await;
    let routes = || demo_app::routes().route("/revoke-web", post(revoke_web_only));
    let web =
        Server::start(routes().layer(SessionLayer::shared(store.clone()).cookie(plain_cookie())))
            .await;
    let api = Server::start(
        routes().layer(
            SessionLayer::shared(store.clone())
                .cookie(plain_cookie())
                .kind("api"),
        ),
    )
    .await;
    let here = login_from(&web, "ada", FIREFOX).await;
    let other_browser = login_from(&web, "ada", SAFARI).await;
    let script = login_from(&api, "ada", "curl/8.5").await;

    let (status, ended) = call(&web, "POST", "/revoke-web", &here).await;
    assert_eq!((status, ended), (200, json!(1)));
    assert_eq!(
        call(&web, "GET", "/api/session", &other_browser).await.1["user"],
        Value::Null
    );
    assert_eq!(
        call(&api, "GET", "/api/session", &script).await.1["user"],
        json!("ada")
    );
    assert_eq!(
        call(&web, "GET", "/api/session", &here).await.1["user"],
        json!("ada")
    );
}

/// With private records on, Redis holds nothing readable: not the user, not
/// the values, not the device. Records sealed before the switch still open
/// (no migration), and take the encrypted form at their next save.
#[tokio::test]
async fn private_records_show_nothing_in_redis() {
    let prefix = http::unique_prefix("private");
    let secret = [9u8; 32];
    let signed = redis_store(&prefix, Keyring::new(secret).unwrap()).await;
    let encrypted = redis_store(&prefix, Keyring::new(secret).unwrap().encrypt_records(true)).await;
    let serve = |store: &Arc<RedisStore>| {
        demo_app::routes().layer(SessionLayer::shared(store.clone()).cookie(plain_cookie()))
    };
    let before = Server::start(serve(&signed)).await;
    let after = Server::start(serve(&encrypted)).await;
    let blob = |token: &str| {
        shared_server()
            .cmd_bytes(&[b"HGET", session_key(&prefix, token).as_bytes(), b"b"])
            .into_bytes()
            .unwrap()
    };
    let readable = |blob: &[u8], text: &str| blob.windows(text.len()).any(|w| w == text.as_bytes());

    // Signed: a dump shows the user name and the device.
    let old = login_from(&before, "grace-hopper", FIREFOX).await;
    assert!(
        readable(&blob(&old), "grace-hopper"),
        "signed records are readable"
    );

    // The encrypted deployment opens it (rolling switch), and re-seals it.
    let (status, body) = call(&after, "POST", "/api/incr/visits", &old).await;
    assert_eq!((status, &body["value"]), (200, &json!(1)), "{body}");
    let sealed = blob(&old);
    for text in ["grace-hopper", "visits", "Firefox", "Linux", "web"] {
        assert!(
            !readable(&sealed, text),
            "{text} readable in an encrypted record"
        );
    }
    assert_eq!(
        call(&after, "GET", "/api/session", &old).await.1["user"],
        json!("grace-hopper")
    );

    // New sessions are encrypted from the start, and listings still work.
    let new = login_from(&after, "grace-hopper", SAFARI).await;
    assert!(!readable(&blob(&new), "grace-hopper"));
    let (_, listing) = call(&after, "GET", "/api/sessions", &new).await;
    let devices: Vec<&Value> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["device"])
        .collect();
    assert_eq!(devices.len(), 2, "{listing}");
    assert!(devices.contains(&&json!("Safari on iOS")), "{listing}");
}

/// `__Host-`: the cookie is always `Secure`, `Path=/`, without `Domain`,
/// whatever else was configured, and read back under its prefixed name.
#[tokio::test]
async fn host_prefixed_cookie() {
    let prefix = http::unique_prefix("host");
    let store = redis_store(&prefix, Keyring::new([5u8; 32]).unwrap()).await;
    let layer = SessionLayer::shared(store).cookie(
        CookieConfig::default()
            .host_prefix(true)
            .secure(false)
            .domain("example.test")
            .path("/app"),
    );
    let server = Server::start(demo_app::routes().layer(layer)).await;
    let response = bare_client()
        .post(server.url("/api/incr/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let c = session_cookie(&response, "__Host-session").expect("the prefixed cookie");
    assert_eq!(c.secure(), Some(true), "{c}");
    assert_eq!(c.path(), Some("/"), "{c}");
    assert_eq!(c.domain(), None, "{c}");
    let (_, body) = http::session_with_cookie(
        &bare_client(),
        &server,
        &format!("__Host-session={}", c.value()),
    )
    .await;
    assert_eq!(body["data"], json!({ "x": 1 }));
    let (_, body) =
        http::session_with_cookie(&bare_client(), &server, &format!("session={}", c.value())).await;
    assert_eq!(body["data"], json!({}), "the unprefixed name opens nothing");
}

/// An API layer told to refuse invalid tokens: a malformed bearer token is a
/// 401 before the handler runs; a well-formed one that opens nothing is a
/// 401 when the handler reads its session; a valid one works; no token at
/// all is fine. Without the option, an invalid token is no session (200).
#[tokio::test]
async fn invalid_bearer_tokens_get_401_when_asked() {
    let prefix = http::unique_prefix("bearer401");
    let store = redis_store(&prefix, Keyring::new([5u8; 32]).unwrap()).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let routes = Router::new()
        .route(
            "/me",
            get(move |session: Session| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    session.user().await.map(|u| u.unwrap_or_default())
                }
            }),
        )
        .route(
            "/login",
            post(|session: Session| async move { session.login("ada").await.map(|()| "ok") }),
        );
    let strict = Server::start(
        routes.clone().layer(
            SessionLayer::shared(store.clone())
                .bearer()
                .reject_invalid_tokens(true),
        ),
    )
    .await;
    let lenient = Server::start(routes.layer(SessionLayer::shared(store).bearer())).await;
    let http = bare_client();
    let get = |server: &Server, auth: Option<String>| {
        let mut request = http.get(server.url("/me"));
        if let Some(auth) = auth {
            request = request.header(AUTHORIZATION, auth);
        }
        request.send()
    };

    let response = get(&strict, Some("Bearer not-a-token".into()))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "refused before the handler"
    );

    let unknown = invented_token(3);
    let response = get(&strict, Some(format!("Bearer {unknown}")))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        "Bearer error=\"invalid_token\""
    );

    let response = get(&strict, None).await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "no token at all is not an invalid token"
    );
    let response = get(&strict, Some("Basic YWRhOnB3".into())).await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "another scheme is not ours to refuse"
    );

    let response = http.post(strict.url("/login")).send().await.unwrap();
    let token = response.headers()["x-session-token"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(response.headers().get(SET_COOKIE).is_none());
    let response = get(&strict, Some(format!("Bearer {token}"))).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ada");

    for auth in ["Bearer not-a-token".to_owned(), format!("Bearer {unknown}")] {
        let response = get(&lenient, Some(auth)).await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "by default an invalid token is no session"
        );
    }
}
