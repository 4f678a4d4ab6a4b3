//! The demo's deployment knobs, run for real: `REDIS_URL=rediss://…` with
//! `REDIS_CA_CERT`, `REDIS_CLIENT_CERT`, `REDIS_CLIENT_KEY`, and
//! `REDIS_SENTINELS` with `REDIS_SENTINEL_MASTER`; the banner says which
//! Redis it connected to, and a request is served. Runs the compiled demo
//! (`cargo build --examples --all-features` builds it).

mod common;
#[path = "common/process.rs"]
mod process;

use std::time::Duration;

use common::ServerOptions;
use common::sentinel::SentinelSet;
use process::App;

/// Every variable the demo reads about Redis, cleared unless a test sets it.
const REDIS_VARS: &[&str] = &[
    "REDIS_URL",
    "REDIS_CLUSTER_URLS",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER",
    "REDIS_CA_CERT",
    "REDIS_CLIENT_CERT",
    "REDIS_CLIENT_KEY",
];

/// The compiled demo with `env` (and `BIND` on a free port), every other
/// Redis variable cleared; the process harness is `common/process.rs`.
fn start_demo(env: &[(&str, String)]) -> App {
    let mut vars: Vec<(&str, &str)> = vec![("BIND", "127.0.0.1:0")];
    vars.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
    let clear: Vec<&str> = REDIS_VARS
        .iter()
        .copied()
        .filter(|var| !env.iter().any(|(k, _)| k == var))
        .collect();
    App::start("demo", &vars, &clear)
}

async fn serves(base: &str) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for expected in [1, 2] {
        let response = client
            .post(format!("{base}/api/incr/hits"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["value"], expected, "{body}");
    }
}

#[cfg(feature = "tls-rustls")]
#[tokio::test]
async fn rediss_with_a_ca_and_a_client_certificate() {
    let server = common::tls::TlsServer::start(true);
    let path = |name: &str| server.certs.path(name).display().to_string();
    let demo = start_demo(&[
        ("REDIS_URL", server.url()),
        ("REDIS_CA_CERT", path("ca.crt")),
        ("REDIS_CLIENT_CERT", path("client.crt")),
        ("REDIS_CLIENT_KEY", path("client.key")),
    ]);
    let base = demo.wait_listening();
    let banner = demo.stderr_with("session store:");
    assert!(
        banner.contains(&format!(
            "Redis at {} over TLS (CA from REDIS_CA_CERT, client certificate",
            server.url()
        )),
        "{banner}"
    );
    serves(&base).await;
}

#[cfg(feature = "tls-rustls")]
#[tokio::test]
async fn rediss_without_the_client_certificate_fails_at_start_up() {
    let server = common::tls::TlsServer::start(true);
    let mut demo = start_demo(&[
        ("REDIS_URL", server.url()),
        (
            "REDIS_CA_CERT",
            server.certs.path("ca.crt").display().to_string(),
        ),
    ]);
    assert_eq!(demo.wait_exit().code(), Some(1));
    assert!(demo.stderr().contains("demo: error:"), "{}", demo.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_the_primary_name() {
    let set = tokio::task::block_in_place(|| SentinelSet::start("demo", ServerOptions::default()));
    let demo = start_demo(&[
        ("REDIS_SENTINELS", set.sentinel_addrs().join(",")),
        ("REDIS_SENTINEL_MASTER", "demo".to_owned()),
    ]);
    let base = demo.wait_listening();
    let banner = demo.stderr_with("session store:");
    assert!(
        banner.contains("Redis primary `demo` through Sentinel at 127.0.0.1:"),
        "{banner}"
    );
    serves(&base).await;
}

#[tokio::test]
async fn sentinels_without_the_primary_name_is_an_error() {
    let mut demo = start_demo(&[("REDIS_SENTINELS", "127.0.0.1:1".to_owned())]);
    assert_eq!(demo.wait_exit().code(), Some(1));
    assert!(
        demo.stderr().contains("REDIS_SENTINEL_MASTER"),
        "{}",
        demo.stderr()
    );
}
