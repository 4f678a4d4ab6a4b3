//! Redis at `maxmemory` under `noeviction`, seen through the layer (the
//! demo's routes in process): requests that change a session get 503 (its
//! outcome unknown to the client, nothing stored), requests that read it,
//! list, revoke others or log out keep working. Prints the counts.

mod common;
#[path = "common/faults.rs"]
mod faults;
#[path = "common/http.rs"]
mod http;

use std::collections::BTreeMap;

use serde_json::json;
use tower_redis_sessions::RedisStore;

use common::RedisServer;
use faults::{DemoApp, demo_over};
use http::Browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_maxmemory_writes_are_503_and_reads_logout_and_revocation_work() {
    let server = RedisServer::start();
    let DemoApp { web, .. } = demo_over(&server.url(), "oom-http", RedisStore::builder).await;
    let a = Browser::new(&web);
    a.login("ada").await;
    let b = Browser::new(&web);
    b.login("ada").await;
    assert_eq!(a.post("/api/incr/n").await.status(), 200);

    assert_eq!(
        server.cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
        "OK"
    );
    assert_eq!(server.cmd(&["CONFIG", "SET", "maxmemory", "1"]), "OK");

    let mut seen: BTreeMap<&str, BTreeMap<u16, usize>> = BTreeMap::new();
    let mut count =
        |what, status: u16| *seen.entry(what).or_default().entry(status).or_insert(0) += 1;
    for _ in 0..20 {
        let status = a.post("/api/incr/n").await.status().as_u16();
        assert_eq!(status, 503, "a change cannot be stored");
        count("POST /api/incr/n", status);
        let status = a.get("/api/session").await.status().as_u16();
        assert_eq!(status, 200, "the session still reads");
        count("GET /api/session", status);
        let status = a.get("/api/sessions").await.status().as_u16();
        assert_eq!(status, 200, "listing works");
        count("GET /api/sessions", status);
    }
    let fresh = Browser::new(&web);
    let status = fresh.post("/api/incr/n").await.status().as_u16();
    assert_eq!(status, 503, "no new session either");
    count("POST /api/incr/n (new visitor)", status);
    assert_eq!(
        a.session().await,
        json!({ "user": "ada", "data": { "n": 1 } }),
        "nothing half-stored"
    );
    let status = a
        .post("/api/sessions/revoke-others")
        .await
        .status()
        .as_u16();
    assert_eq!(status, 200, "revoke others works");
    count("POST /api/sessions/revoke-others", status);
    let status = a.post("/api/logout").await.status().as_u16();
    assert_eq!(status, 200, "logout works");
    count("POST /api/logout", status);
    eprintln!("at maxmemory (noeviction), status counts per route: {seen:#?}");

    assert_eq!(server.cmd(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    assert_eq!(
        fresh.post("/api/incr/n").await.status(),
        200,
        "memory again"
    );
}
