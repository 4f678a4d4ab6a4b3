//! A Redis Cluster over TLS with custom certificates: deadpool-redis's
//! cluster pool cannot take certificates, so the store pools redis-rs
//! cluster connections built with them itself.

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleResult};
use deadpool_redis::redis::cluster::{ClusterClient, ClusterClientBuilder};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::{ClientTlsConfig, RedisError, TlsCertificates};
use deadpool_redis::{PoolConfig, Runtime};

use crate::store::StoreError;
use crate::store::tls::{self, TlsConfig};

/// Creates and checks cluster connections carrying the certificates.
pub(crate) struct Manager {
    client: ClusterClient,
    ping_number: AtomicUsize,
}

impl managed::Manager for Manager {
    type Type = ClusterConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ClusterConnection, RedisError> {
        self.client.get_async_connection().await
    }

    async fn recycle(
        &self,
        conn: &mut ClusterConnection,
        _: &Metrics,
    ) -> RecycleResult<RedisError> {
        crate::store::pool::recycle_by_ping(conn, &self.ping_number).await
    }
}

/// The pool of such connections.
pub(crate) type Pool = managed::Pool<Manager>;
/// A connection checked out of it.
pub(crate) type Object = managed::Object<Manager>;

/// A pool of connections to the cluster at `urls` (all `rediss://`), with
/// the certificates of `tls`.
pub(super) fn pool(
    urls: Vec<String>,
    tls: &TlsConfig,
    connect: Duration,
    config: PoolConfig,
) -> Result<Pool, StoreError> {
    tls::install_crypto_provider();
    let certificates = TlsCertificates {
        client_tls: tls.client().map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.to_vec(),
            client_key: key.to_vec(),
        }),
        root_cert: tls.ca_cert().map(<[u8]>::to_vec),
    };
    let shown: Vec<String> = urls.iter().map(|u| tls::redact(u)).collect();
    let client = ClusterClientBuilder::new(urls)
        .certs(certificates)
        .connection_timeout(connect)
        .build()
        .map_err(|e| {
            StoreError::Config(format!(
                "invalid Redis Cluster TLS settings for {}: {e}",
                shown.join(", ")
            ))
        })?;
    let manager = Manager {
        client,
        ping_number: AtomicUsize::new(0),
    };
    Pool::builder(manager)
        .config(config)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Config(e.to_string()))
}
