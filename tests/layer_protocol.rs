//! End to end, over real HTTP: where the token travels and what the client
//! is told. Session fixation, cookie attributes, header transport, the
//! missing-layer rejection.

mod common;
#[path = "common/http.rs"]
mod http;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use reqwest::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use serde_json::{Value, json};
use tower_redis_sessions::{
    CookieConfig, MemoryStore, SameSite, Session, SessionError, SessionLayer,
};

use http::demo_app;
use http::{Backend, Browser, Server, Store, bare_client, invented_token, session_cookie};

// ------------------------------------------------------------- fixation

/// A token the client made up is never adopted, and login always issues a
/// new token.
async fn fixation(backend: Backend) {
    let prefix = http::unique_prefix("fixation");
    let store = Store::connect(backend, &prefix).await;
    let server = Server::start(store.demo()).await;
    let browser = Browser::new(&server);
    let invented = invented_token(7);
    browser.set_token(&invented);

    // Reading with it: no session, and the client is told to drop the token
    // (else every later request would cost a store call for nothing).
    let response = browser.get("/api/session").await;
    assert_eq!(response.status(), 200);
    let cleared = session_cookie(&response, "session").expect("a dead token is cleared");
    assert_eq!(cleared.value(), "");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "user": null, "data": {} }));
    assert_eq!(browser.token(), None);
    browser.set_token(&invented);

    // Writing with it: a new session under a token of the server's choosing.
    let response = browser.post("/api/incr/x").await;
    assert_eq!(response.status(), 200);
    let issued = session_cookie(&response, "session").expect("a write issues a token");
    assert_ne!(
        issued.value(),
        invented,
        "the client's token is not adopted"
    );
    assert_eq!(browser.token().as_deref(), Some(issued.value()));
    assert_eq!(
        browser.session().await,
        json!({ "user": null, "data": { "x": 1 } })
    );

    // The invented token still opens nothing, and was never stored.
    let (status, body) =
        http::session_with_cookie(&bare_client(), &server, &format!("session={invented}")).await;
    assert_eq!((status, body), (200, json!({ "user": null, "data": {} })));
    if backend != Backend::Memory {
        let keys = http::redis_keys(backend, &prefix);
        assert!(!keys.contains(&http::session_key(&prefix, &invented)));
        assert!(keys.contains(&http::session_key(&prefix, issued.value())));
    }

    // Every login issues a new token; the values follow from an anonymous
    // session and to the same user, not to another user; the old token dies.
    let mut previous = issued.value().to_owned();
    for (user, data) in [
        ("alice", json!({ "x": 1 })),
        ("alice", json!({ "x": 1 })),
        ("bob", json!({})),
    ] {
        let response = browser
            .post_json("/api/login", json!({ "user": user }))
            .await;
        assert_eq!(response.status(), 200);
        let new = session_cookie(&response, "session").expect("login sets a token");
        assert_ne!(new.value(), previous, "login as {user} rotates the token");
        assert_eq!(
            browser.session().await,
            json!({ "user": user, "data": data })
        );
        let (_, old) =
            http::session_with_cookie(&bare_client(), &server, &format!("session={previous}"))
                .await;
        assert_eq!(old, json!({ "user": null, "data": {} }), "old token dead");
        previous = new.value().to_owned();
    }

    // Logging in while presenting an invented token: a new token too.
    let other = Browser::new(&server);
    other.set_token(&invented_token(8));
    let response = other
        .post_json("/api/login", json!({ "user": "carol" }))
        .await;
    assert_eq!(response.status(), 200);
    let new = session_cookie(&response, "session").unwrap();
    assert_ne!(new.value(), invented_token(8));
    assert_eq!(other.session().await["user"], json!("carol"));
}

#[tokio::test]
async fn fixation_memory() {
    fixation(Backend::Memory).await;
}

#[tokio::test]
async fn fixation_standalone() {
    fixation(Backend::Standalone).await;
}

#[tokio::test]
async fn fixation_cluster() {
    fixation(Backend::Cluster).await;
}

// ------------------------------------------------------ cookie attributes

/// The demo's routes behind `layer` on a fresh MemoryStore.
async fn serve_layer(layer: SessionLayer) -> Server {
    Server::start(demo_app::app(layer)).await
}

/// POSTs `path` with an optional raw cookie; returns the response.
async fn post(server: &Server, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = bare_client().post(server.url(path));
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    request.send().await.unwrap()
}

fn max_age_secs(c: &cookie::Cookie<'_>) -> i64 {
    c.max_age().expect("a Max-Age").whole_seconds()
}

#[tokio::test]
async fn default_cookie_is_secure_httponly_lax_root_with_max_age() {
    let server = serve_layer(SessionLayer::new(MemoryStore::default())).await;
    let response = post(&server, "/api/incr/x", None).await;
    assert_eq!(response.status(), 200);
    let raw: Vec<String> = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(raw.len(), 1, "{raw:?}");
    let c = session_cookie(&response, "session").unwrap();
    assert_eq!(c.value().len(), tower_redis_sessions::store::TOKEN_LEN);
    assert_eq!(c.secure(), Some(true), "{}", raw[0]);
    assert_eq!(c.http_only(), Some(true), "{}", raw[0]);
    assert_eq!(c.same_site(), Some(cookie::SameSite::Lax), "{}", raw[0]);
    assert_eq!(c.path(), Some("/"), "{}", raw[0]);
    assert_eq!(c.domain(), None, "{}", raw[0]);
    // The default idle timeout (24 h) comes before the lifetime (30 days).
    let max_age = max_age_secs(&c);
    assert!(
        (86_400 - 60..=86_400).contains(&max_age),
        "Max-Age {max_age} follows the idle deadline: {}",
        raw[0]
    );
    eprintln!("[cookie] default Set-Cookie: {}", raw[0]);
}

#[tokio::test]
async fn max_age_follows_the_earlier_deadline() {
    // Lifetime shorter than the idle timeout.
    let layer = SessionLayer::new(MemoryStore::default())
        .idle_timeout(Some(Duration::from_secs(3600)))
        .lifetime(Some(Duration::from_secs(600)));
    let server = serve_layer(layer).await;
    let c = session_cookie(&post(&server, "/api/incr/x", None).await, "session").unwrap();
    let max_age = max_age_secs(&c);
    assert!((600 - 60..=600).contains(&max_age), "{max_age}");

    // No idle timeout: the lifetime.
    let layer = SessionLayer::new(MemoryStore::default())
        .idle_timeout(None)
        .lifetime(Some(Duration::from_secs(7 * 86_400)));
    let server = serve_layer(layer).await;
    let c = session_cookie(&post(&server, "/api/incr/x", None).await, "session").unwrap();
    let max_age = max_age_secs(&c);
    assert!(
        (7 * 86_400 - 60..=7 * 86_400).contains(&max_age),
        "{max_age}"
    );

    // Neither: a session without deadline, a cookie without Max-Age.
    let layer = SessionLayer::new(MemoryStore::default())
        .idle_timeout(None)
        .lifetime(None);
    let server = serve_layer(layer).await;
    let c = session_cookie(&post(&server, "/api/incr/x", None).await, "session").unwrap();
    assert_eq!(c.max_age(), None);
    assert_eq!(c.expires(), None);
}

#[tokio::test]
async fn browser_session_cookie_has_no_max_age() {
    let layer = SessionLayer::new(MemoryStore::default())
        .cookie(CookieConfig::default().browser_session(true));
    let server = serve_layer(layer).await;
    let response = post(&server, "/api/incr/x", None).await;
    let c = session_cookie(&response, "session").unwrap();
    assert_eq!(c.max_age(), None, "{c}");
    assert_eq!(c.expires(), None, "{c}");
    // The session itself still works, and login keeps it a browser session.
    let cookie = format!("session={}", c.value());
    let response = bare_client()
        .post(server.url("/api/login"))
        .header(COOKIE, &cookie)
        .json(&json!({ "user": "ada" }))
        .send()
        .await
        .unwrap();
    let c = session_cookie(&response, "session").unwrap();
    assert_eq!(c.max_age(), None, "{c}");
}

#[tokio::test]
async fn configured_attributes() {
    let layer = SessionLayer::new(MemoryStore::default()).cookie(
        CookieConfig::default()
            .name("sid")
            .domain("example.test")
            .path("/app")
            .same_site(SameSite::Strict)
            .http_only(false)
            .secure(false),
    );
    let server = serve_layer(layer).await;
    let response = post(&server, "/api/incr/x", None).await;
    assert_eq!(session_cookie(&response, "session"), None);
    let c = session_cookie(&response, "sid").unwrap();
    assert_eq!(c.domain(), Some("example.test"), "{c}");
    assert_eq!(c.path(), Some("/app"), "{c}");
    assert_eq!(c.same_site(), Some(cookie::SameSite::Strict), "{c}");
    // Off means absent (`Some(false)` would mean `Secure=false`-style junk).
    assert_eq!(c.http_only(), None, "{c}");
    assert_eq!(c.secure(), None, "{c}");

    // The token is read from the configured name only.
    let token = c.value().to_owned();
    let (_, body) =
        http::session_with_cookie(&bare_client(), &server, &format!("sid={token}")).await;
    assert_eq!(body, json!({ "user": null, "data": { "x": 1 } }));
    let (_, body) =
        http::session_with_cookie(&bare_client(), &server, &format!("session={token}")).await;
    assert_eq!(body, json!({ "user": null, "data": {} }));
}

#[tokio::test]
async fn logout_sends_a_removal_cookie() {
    let layer = SessionLayer::new(MemoryStore::default())
        .cookie(CookieConfig::default().domain("example.test"));
    let server = serve_layer(layer).await;
    let c = session_cookie(&post(&server, "/api/incr/x", None).await, "session").unwrap();
    let cookie = format!("session={}", c.value());

    let response = post(&server, "/api/logout", Some(&cookie)).await;
    assert_eq!(response.status(), 200);
    let removal = session_cookie(&response, "session").expect("a removal cookie");
    assert_eq!(removal.value(), "");
    assert_eq!(
        removal.max_age(),
        Some(cookie::time::Duration::ZERO),
        "{removal}"
    );
    let expires = removal.expires_datetime().expect("an Expires in the past");
    assert!(
        expires < cookie::time::OffsetDateTime::now_utc(),
        "{removal}"
    );
    // Same path and domain, or the browser would keep the original.
    assert_eq!(removal.path(), Some("/"));
    assert_eq!(removal.domain(), Some("example.test"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "ok": true }));

    // The token is dead.
    let (_, body) = http::session_with_cookie(&bare_client(), &server, &cookie).await;
    assert_eq!(body, json!({ "user": null, "data": {} }));
}

#[tokio::test]
async fn a_browser_keeps_its_session_across_requests() {
    // The demo's own settings (not Secure) work with a real cookie jar.
    let store = Store::connect(Backend::Memory, "jar:").await;
    let server = Server::start(store.demo()).await;
    let browser = Browser::new(&server);
    for n in 1..=3 {
        let body: Value = browser.post("/api/incr/n").await.json().await.unwrap();
        assert_eq!(body, json!({ "key": "n", "value": n }));
    }
    // The HTML page and its form routes.
    let page = browser.get("/").await.text().await.unwrap();
    assert!(page.contains("<strong>1</strong> time."), "{page}");
    assert!(page.contains("action=\"/login\""));
    let response = browser
        .http
        .post(browser.url("/login"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body("user=%3Cada+%26+co%3E")
        .send()
        .await
        .unwrap();
    // Redirects are followed: back on the page, logged in, name escaped.
    assert_eq!(response.status(), 200);
    assert_eq!(response.url().path(), "/");
    let page = response.text().await.unwrap();
    assert!(page.contains("&lt;ada &amp; co&gt;"), "{page}");
    assert!(!page.contains("<ada"), "{page}");
    assert!(page.contains("this one"), "the session list: {page}");
    let response = browser
        .http
        .post(browser.url("/logout-others"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = browser
        .http
        .post(browser.url("/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("action=\"/login\""));
    assert_eq!(browser.session().await["user"], Value::Null);
}

// ------------------------------------------------------- the JSON contract

#[tokio::test]
async fn json_api_contract() {
    let store = Store::connect(Backend::Memory, "api:").await;
    let server = Server::start(store.demo()).await;
    let a = Browser::new(&server);
    let b = Browser::new(&server);

    assert_eq!(a.session().await, json!({ "user": null, "data": {} }));
    // Not logged in: 401 for the user's session list and revocation.
    assert_eq!(a.get("/api/sessions").await.status(), 401);
    assert_eq!(a.post("/api/sessions/revoke-others").await.status(), 401);
    // Bad login bodies.
    assert_eq!(
        a.post_json("/api/login", json!({ "user": "" }))
            .await
            .status(),
        400
    );
    assert!(
        a.post_json("/api/login", json!({}))
            .await
            .status()
            .is_client_error()
    );

    a.post("/api/incr/n").await;
    a.login("ada").await;
    b.login("ada").await;
    let list: Value = a.get("/api/sessions").await.json().await.unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for s in list {
        let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "created_at",
                "current",
                "device",
                "id",
                "kind",
                "last_seen",
                "user_agent"
            ]
        );
        assert!(s["id"].as_str().is_some_and(|id| id.len() == 43), "{s}");
        assert_eq!(s["kind"], json!("web"));
        let created = s["created_at"].as_u64().unwrap();
        let seen = s["last_seen"].as_u64().unwrap();
        assert!(created <= seen && seen <= now + 1000, "{s}");
        assert!(now - created < 60_000, "{s}");
    }
    assert_eq!(
        list.iter().filter(|s| s["current"] == json!(true)).count(),
        1
    );

    let body: Value = a
        .post("/api/sessions/revoke-others")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({ "revoked": 1 }));
    assert_eq!(b.session().await, json!({ "user": null, "data": {} }));
    let list: Value = a.get("/api/sessions").await.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["current"], json!(true));
    assert_eq!(
        a.session().await,
        json!({ "user": "ada", "data": { "n": 1 } })
    );

    let body: Value = a.post("/api/logout").await.json().await.unwrap();
    assert_eq!(body, json!({ "ok": true }));
    assert_eq!(a.token(), None, "the jar dropped the cookie");
    assert_eq!(a.session().await, json!({ "user": null, "data": {} }));
}

// ---------------------------------------------------------- header transport

#[tokio::test]
async fn bearer_transport() {
    let layer = SessionLayer::new(MemoryStore::default()).bearer();
    let server = serve_layer(layer).await;
    let http = bare_client();

    let response = http.post(server.url("/api/incr/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get(SET_COOKIE).is_none(), "no cookie");
    let token = response.headers()["x-session-token"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), tower_redis_sessions::store::TOKEN_LEN);

    let read = |auth: String| {
        let http = http.clone();
        let url = server.url("/api/session");
        async move {
            let response = http
                .get(url)
                .header(AUTHORIZATION, auth)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let with_x = json!({ "user": null, "data": { "x": 1 } });
    let empty = json!({ "user": null, "data": {} });
    assert_eq!(read(format!("Bearer {token}")).await, with_x);
    assert_eq!(
        read(format!("bearer {token}")).await,
        with_x,
        "scheme is case-insensitive"
    );
    assert_eq!(read(format!("Basic {token}")).await, empty);
    assert_eq!(read(format!("Bearer {}", &token[1..])).await, empty);
    assert_eq!(read("Bearer".to_owned()).await, empty);
    // A cookie is not a bearer token.
    let response = http
        .get(server.url("/api/session"))
        .header(COOKIE, format!("session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.json::<Value>().await.unwrap(), empty);

    // A read does not send the token again; login sends a new one.
    let response = http
        .get(server.url("/api/session"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    // (The layer may resend the same token when it cannot tell a save by
    // another request from its own load extending the idle deadline.)
    assert!(
        response
            .headers()
            .get("x-session-token")
            .is_none_or(|v| v == token.as_str()),
        "a read never hands out another token"
    );
    let response = http
        .post(server.url("/api/login"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .json(&json!({ "user": "ada" }))
        .send()
        .await
        .unwrap();
    let rotated = response.headers()["x-session-token"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(rotated, token);
    assert_eq!(read(format!("Bearer {token}")).await, empty);
    assert_eq!(
        read(format!("Bearer {rotated}")).await,
        json!({ "user": "ada", "data": { "x": 1 } })
    );

    // Logout: an empty header tells the client to drop its token.
    let response = http
        .post(server.url("/api/logout"))
        .header(AUTHORIZATION, format!("Bearer {rotated}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-session-token"], "");
    assert_eq!(read(format!("Bearer {rotated}")).await, empty);
}

#[tokio::test]
async fn named_header_transport() {
    let name = reqwest::header::HeaderName::from_static("x-api-session");
    let layer = SessionLayer::new(MemoryStore::default()).header(name.clone());
    let server = serve_layer(layer).await;
    let http = bare_client();

    let response = http.post(server.url("/api/incr/x")).send().await.unwrap();
    assert!(response.headers().get(SET_COOKIE).is_none());
    let token = response.headers()[&name].to_str().unwrap().to_owned();
    let response = http
        .post(server.url("/api/incr/x"))
        .header(&name, &token)
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get(&name)
            .is_none_or(|v| v == token.as_str()),
        "the same session keeps its token"
    );
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "key": "x", "value": 2 })
    );
    // Surrounding blanks are tolerated; a Bearer prefix is not this scheme.
    let response = http
        .get(server.url("/api/session"))
        .header(&name, format!(" {token} "))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.json::<Value>().await.unwrap()["data"]["x"],
        json!(2)
    );
    let response = http
        .get(server.url("/api/session"))
        .header(&name, format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["data"], json!({}));
}

// ------------------------------------------------------------ missing layer

#[tokio::test]
async fn missing_layer_is_a_clear_500() {
    async fn handler(session: Session) -> Result<String, SessionError> {
        Ok(format!("{:?}", session.id().await?))
    }
    let router: Router = Router::new().route("/", get(handler));
    let server = Server::start(router).await;
    let response = bare_client().get(server.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    let body = response.text().await.unwrap();
    assert!(body.contains("SessionLayer"), "{body}");
    eprintln!("[missing layer] 500: {}", body.trim());

    // The demo's own routes without the layer: the same.
    let server = Server::start(demo_app::routes()).await;
    let response = bare_client()
        .get(server.url("/api/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert!(response.text().await.unwrap().contains("SessionLayer"));
}

/// A cookie and a bearer token on one layer: each request is answered on the
/// transport its token came by, a request without a token on the first one,
/// and the cookie's settings survive adding the bearer transport.
#[tokio::test]
async fn cookie_and_bearer_on_one_layer() {
    let layer = SessionLayer::new(MemoryStore::default())
        .cookie(CookieConfig::default().name("sid").secure(false))
        .bearer();
    let server = serve_layer(layer).await;
    let http = bare_client();

    // No token: answered on the first transport, the cookie "sid".
    let response = http.post(server.url("/api/incr/x")).send().await.unwrap();
    let cookie = session_cookie(&response, "sid").expect("the cookie transport answers");
    assert!(response.headers().get("x-session-token").is_none());
    assert_eq!(cookie.secure(), None, "the cookie's settings are kept");

    // The cookie's token opens the session; the bearer transport opens it too.
    let token = cookie.value().to_owned();
    let response = http
        .post(server.url("/api/incr/x"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["value"], json!(2));

    // A bearer client creating its session is answered with the header.
    let response = http
        .post(server.url("/api/login"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .json(&json!({ "user": "ada" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get(SET_COOKIE).is_none(),
        "no cookie for a bearer client"
    );
    let new = response.headers()["x-session-token"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, token);
    let (_, body) = http::session_with_cookie(&http, &server, &format!("sid={new}")).await;
    assert_eq!(body, json!({ "user": "ada", "data": { "x": 2 } }));
}
