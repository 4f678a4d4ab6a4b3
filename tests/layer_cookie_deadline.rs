//! The cookie follows the session's deadline on every path, over simulated
//! time: a client that honours `Max-Age` (and forgets an expired cookie)
//! talks to a layer whose store runs on a clock the test moves. Writes move
//! the idle deadline, and so does "remember me" in a later request; the
//! cookie must move with them, and nothing is sent when nothing moved.

mod common;
#[path = "common/http.rs"]
mod http;

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use reqwest::header::COOKIE;
use tower_redis_sessions::store::Millis;
use tower_redis_sessions::{CookieConfig, RedisStore, Session, SessionError, SessionLayer};

use common::stores::ManualClock;
use http::{Server, bare_client, session_cookie};

async fn write(session: Session) -> Result<String, SessionError> {
    let n = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(n.to_string())
}

async fn read(session: Session) -> Result<String, SessionError> {
    Ok(session.get::<u64>("n").await?.unwrap_or(0).to_string())
}

async fn remember(session: Session) -> Result<String, SessionError> {
    session
        .set_idle_timeout(Some(Duration::from_secs(30 * 24 * 3600)))
        .await?;
    Ok("ok".into())
}

/// A client with one cookie that it forgets when its `Max-Age` runs out, on
/// the test's clock.
struct Client {
    http: reqwest::Client,
    server: Server,
    clock: ManualClock,
    cookie: Option<(String, Option<Millis>)>,
}

impl Client {
    /// Sends a request; returns the body and the `Max-Age` the response gave
    /// the cookie, if it set one.
    async fn send(&mut self, method: &str, path: &str) -> (String, Option<Option<Duration>>) {
        if let Some((_, Some(expires))) = &self.cookie
            && *expires <= self.clock.get()
        {
            self.cookie = None; // expired: a browser no longer sends it
        }
        let url = self.server.url(path);
        let mut request = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url),
        };
        if let Some((value, _)) = &self.cookie {
            request = request.header(COOKIE, format!("session={value}"));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let set = session_cookie(&response, "session").map(|c| {
            let max_age = c
                .max_age()
                .map(|a| Duration::from_secs(a.whole_seconds() as u64));
            (c.value().to_owned(), max_age)
        });
        let answer = set.as_ref().map(|(_, max_age)| *max_age);
        if let Some((value, max_age)) = set {
            let now = self.clock.get();
            self.cookie = Some((value, max_age.map(|a| now + a.as_millis() as u64)));
        }
        (response.text().await.unwrap(), answer)
    }
}

async fn client(idle: Duration) -> Client {
    let clock = ManualClock::now_real();
    let config = clock.install(http::config(&http::unique_prefix("cookie-deadline")));
    let store = RedisStore::connect(&common::shared_server().url(), config)
        .await
        .unwrap();
    let routes = Router::new()
        .route("/write", post(write))
        .route("/read", get(read))
        .route("/remember", post(remember));
    let layer = SessionLayer::new(store)
        .cookie(CookieConfig::default().secure(false))
        .idle_timeout(Some(idle))
        .lifetime(None);
    Client {
        http: bare_client(),
        server: Server::start(routes.layer(layer)).await,
        clock,
        cookie: None,
    }
}

/// Writes every `every` for `total` with an idle timeout `idle` (shorter than
/// `total`, longer than `every`): the client keeps one session throughout.
/// On the old code the cookie kept the Max-Age of the first response and the
/// browser started a new session once it ran out.
async fn writes_keep_the_session(idle: Duration, every: Duration, total: Duration) {
    let mut c = client(idle).await;
    let mut expected = 0;
    let mut elapsed = Duration::ZERO;
    while elapsed <= total {
        expected += 1;
        let (n, max_age) = c.send("POST", "/write").await;
        assert_eq!(
            n,
            expected.to_string(),
            "at {elapsed:?}: the same session goes on"
        );
        assert_eq!(
            max_age,
            Some(Some(idle)),
            "at {elapsed:?}: the cookie gets the new deadline"
        );
        c.clock.advance(every.as_millis() as u64);
        elapsed += every;
    }
}

#[tokio::test]
async fn writes_every_20_s_keep_a_60_s_idle_session() {
    writes_keep_the_session(
        Duration::from_secs(60),
        Duration::from_secs(20),
        Duration::from_secs(300),
    )
    .await;
}

#[tokio::test]
async fn writes_every_30_s_keep_a_15_min_idle_session() {
    writes_keep_the_session(
        Duration::from_secs(900),
        Duration::from_secs(30),
        Duration::from_secs(1200),
    )
    .await;
}

/// "Remember me" in a later request reaches the cookie, and the session
/// then outlives the layer's idle timeout; a read that moves nothing sends
/// no cookie.
#[tokio::test]
async fn remember_me_reaches_the_cookie_and_reads_send_nothing_extra() {
    let idle = Duration::from_secs(60);
    let mut c = client(idle).await;
    assert_eq!(c.send("POST", "/write").await.0, "1");
    c.clock.advance(10_000);
    let (n, max_age) = c.send("GET", "/read").await;
    assert_eq!(
        (n.as_str(), max_age),
        ("1", None),
        "nothing moved: nothing sent"
    );

    let month = Duration::from_secs(30 * 24 * 3600);
    let (_, max_age) = c.send("POST", "/remember").await;
    assert_eq!(
        max_age,
        Some(Some(month)),
        "the longer idle timeout reaches the cookie"
    );
    c.clock.advance(2 * 3600 * 1000); // far beyond the 60 s idle timeout
    let (n, max_age) = c.send("GET", "/read").await;
    assert_eq!(n, "1", "remembered: still the same session");
    assert_eq!(
        max_age,
        Some(Some(month)),
        "the read extended it, and says so"
    );
}
