//! TLS against a real `redis-server --tls-port`: a custom CA, mutual TLS,
//! and the refusals (no client certificate, a CA that did not sign the
//! server's certificate). Needs a TLS feature (`tls-rustls` or
//! `tls-native-tls`); without one, `rediss://` must fail naming them.

mod common;

#[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
use std::time::{Duration, Instant};

#[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
use common::deploy::round_trip;
use common::stores::{test_keyring, unique_prefix};
use tower_redis_sessions::store::TlsConfig;
use tower_redis_sessions::{RedisStore, StoreConfig, StoreError};

#[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
/// A guard against a hang, far above any expected time: the assertion is
/// that an answer comes, not how fast.
const HANG: Duration = Duration::from_secs(60);

fn config(label: &str) -> StoreConfig {
    StoreConfig::new(test_keyring()).prefix(unique_prefix(label))
}

#[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
async fn connect(url: &str, tls: TlsConfig, label: &str) -> Result<RedisStore, StoreError> {
    let started = Instant::now();
    let result = tokio::time::timeout(
        HANG,
        RedisStore::builder(config(label))
            .pool_size(2)
            .tls(tls)
            .connect(url),
    )
    .await
    .unwrap_or_else(|_| panic!("connecting to {url} hung for {HANG:?}"));
    // Reported, not asserted: connect + TLS handshake + FUNCTION LOAD.
    eprintln!(
        "[figure] {label}: connect over TLS took {:?} ({})",
        started.elapsed(),
        if result.is_ok() { "ok" } else { "refused" }
    );
    result
}

#[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
mod with_tls {
    use super::*;
    #[cfg(feature = "tls-rustls")]
    use common::tls::TlsCluster;
    use common::tls::TlsServer;

    #[tokio::test]
    async fn round_trip_over_tls_with_a_custom_ca() {
        let server = TlsServer::start(false);
        let tls = TlsConfig::new().ca_cert_pem(server.certs.pem("ca.crt"));
        let store = connect(&server.url(), tls, "tls").await.unwrap();
        round_trip(&store, "ada").await.unwrap();
        // For comparison (reported, not asserted): the same over plain TCP.
        let started = Instant::now();
        let plain = RedisStore::builder(config("plain"))
            .pool_size(2)
            .connect(&server.server.url())
            .await
            .unwrap();
        eprintln!(
            "[figure] plain: connect over TCP took {:?}",
            started.elapsed()
        );
        drop(plain);
        // The calls really went over the TLS port: the server counts TLS
        // clients apart only in its connection list, so ask it.
        let clients = server.server.cmd(&["CLIENT", "LIST"]);
        assert!(
            clients
                .lines()
                .any(|l| l.contains(&format!("laddr=127.0.0.1:{}", server.tls_port()))),
            "no client on the TLS port: {clients}"
        );
    }

    #[tokio::test]
    async fn mutual_tls_accepts_the_client_certificate() {
        let server = TlsServer::start(true);
        let tls = TlsConfig::new()
            .ca_cert_pem(server.certs.pem("ca.crt"))
            .client_cert_pem(
                server.certs.pem("client.crt"),
                server.certs.pem("client.key"),
            );
        let store = connect(&server.url(), tls, "mtls").await.unwrap();
        round_trip(&store, "grace").await.unwrap();
    }

    #[tokio::test]
    async fn mutual_tls_refuses_a_client_without_certificate() {
        let server = TlsServer::start(true);
        let tls = TlsConfig::new().ca_cert_pem(server.certs.pem("ca.crt"));
        let error = connect(&server.url(), tls, "mtls-no-cert")
            .await
            .expect_err("a server asking for a client certificate refuses a client without one");
        eprintln!("mutual TLS without a client certificate: {error}");
        assert!(error.is_unavailable(), "{error:?}");
    }

    #[tokio::test]
    async fn a_ca_that_did_not_sign_the_server_is_refused() {
        let server = TlsServer::start(false);
        let tls = TlsConfig::new().ca_cert_pem(server.certs.pem("other-ca.crt"));
        let error = connect(&server.url(), tls, "wrong-ca")
            .await
            .expect_err("a server certificate from another CA is refused");
        eprintln!("wrong CA: {error}");
        assert!(error.is_unavailable(), "{error:?}");
        let message = error.to_string().to_lowercase();
        assert!(
            message.contains("certificate") || message.contains("tls"),
            "the error should say it is about TLS: {error}"
        );
    }

    #[tokio::test]
    async fn system_roots_do_not_trust_a_private_ca() {
        let server = TlsServer::start(false);
        let error = connect(&server.url(), TlsConfig::new(), "system-roots")
            .await
            .expect_err("the test CA is not among the system's");
        assert!(error.is_unavailable(), "{error:?}");
    }

    #[tokio::test]
    async fn a_lazy_store_over_tls_connects_on_first_use() {
        let server = TlsServer::start(true);
        let tls = TlsConfig::new()
            .ca_cert_pem(server.certs.pem("ca.crt"))
            .client_cert_pem(
                server.certs.pem("client.crt"),
                server.certs.pem("client.key"),
            );
        let store = RedisStore::builder(config("tls-lazy"))
            .lazy(true)
            .tls(tls)
            .connect(&server.url())
            .await
            .unwrap();
        round_trip(&store, "lin").await.unwrap();
    }

    // redis-rs takes custom certificates for a cluster only with rustls.
    #[cfg(feature = "tls-rustls")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_on_a_tls_cluster_with_mutual_tls() {
        let cluster = tokio::task::block_in_place(|| TlsCluster::start(true));
        let tls = TlsConfig::new()
            .ca_cert_pem(cluster.certs.pem("ca.crt"))
            .client_cert_pem(
                cluster.certs.pem("client.crt"),
                cluster.certs.pem("client.key"),
            );
        let started = Instant::now();
        let store = RedisStore::builder(config("tls-cluster"))
            .pool_size(2)
            .tls(tls)
            .connect_cluster(cluster.urls())
            .await
            .unwrap();
        eprintln!(
            "[figure] tls-cluster: connect over TLS took {:?}",
            started.elapsed()
        );
        // Users whose sessions land on different masters.
        for user in ["ada", "grace", "lin", "barbara", "edsger", "tony"] {
            round_trip(&store, user).await.unwrap();
        }
        for node in &cluster.nodes {
            let libraries = node.cmd(&["FUNCTION", "LIST"]);
            assert!(
                libraries.contains(tower_redis_sessions::store::library_name()),
                "the library is on every master"
            );
        }
        // Without a client certificate the cluster refuses.
        let error = RedisStore::builder(config("tls-cluster-no-cert"))
            .tls(TlsConfig::new().ca_cert_pem(cluster.certs.pem("ca.crt")))
            .connect_cluster(cluster.urls())
            .await
            .expect_err("no client certificate");
        assert!(error.is_unavailable(), "{error:?}");
    }

    #[tokio::test]
    async fn unusable_certificates_are_a_configuration_error() {
        let tls = TlsConfig::new()
            .ca_cert_pem("not a certificate")
            .client_cert_pem("nor this", "nor a key");
        let error = RedisStore::builder(config("tls-bad-pem"))
            .tls(tls)
            .connect("rediss://127.0.0.1:1")
            .await
            .expect_err("garbage PEM is refused");
        assert!(matches!(error, StoreError::Config(_)), "{error:?}");
    }
}

#[tokio::test]
async fn certificates_with_a_plain_url_are_a_configuration_error() {
    let tls = TlsConfig::new().ca_cert_pem("irrelevant");
    let error = RedisStore::builder(config("tls-plain"))
        .tls(tls)
        .connect("redis://127.0.0.1:1")
        .await
        .expect_err("certificates need rediss://");
    assert!(matches!(error, StoreError::Config(_)), "{error:?}");
}

#[cfg(not(any(feature = "tls-rustls", feature = "tls-native-tls")))]
#[tokio::test]
async fn without_a_tls_feature_rediss_names_the_feature() {
    for result in [
        RedisStore::builder(config("no-tls"))
            .connect("rediss://127.0.0.1:1")
            .await,
        RedisStore::builder(config("no-tls"))
            .connect_cluster(["rediss://127.0.0.1:1"])
            .await,
    ] {
        let error = result.expect_err("rediss:// without TLS support fails");
        assert!(matches!(error, StoreError::Config(_)), "{error:?}");
        assert!(error.to_string().contains("tls-rustls"), "{error}");
    }
}
