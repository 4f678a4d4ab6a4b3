//! Redis behind Sentinel: connections go to the primary the sentinels name,
//! looked up again for every new connection, so after a failover the store
//! follows the new primary without a restart.

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleResult};
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::sentinel::{
    SentinelClient, SentinelNodeConnectionInfo, SentinelServerType,
};
use deadpool_redis::redis::{AsyncConnectionConfig, RedisConnectionInfo, RedisError, TlsMode};
use deadpool_redis::{PoolConfig, Runtime};

use crate::store::StoreError;
use crate::store::tls::{self, TlsConfig};

/// Creates connections to the primary the sentinels name (asking them
/// each time) with the store's timeouts, and checks returned ones.
///
/// deadpool-redis has a Sentinel pool too, but its connections keep
/// redis-rs's default response timeout (500 ms) whatever the store's
/// command timeout; the store times calls itself, as on a single node.
pub(crate) struct Manager {
    client: tokio::sync::Mutex<SentinelClient>,
    config: AsyncConnectionConfig,
    ping_number: AtomicUsize,
}

impl managed::Manager for Manager {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut client = self.client.lock().await;
        client.get_async_connection_with_config(&self.config).await
    }

    async fn recycle(
        &self,
        conn: &mut MultiplexedConnection,
        _: &Metrics,
    ) -> RecycleResult<RedisError> {
        crate::store::pool::recycle_by_ping(conn, &self.ping_number).await
    }
}

/// The pool of such connections.
pub(crate) type Pool = managed::Pool<Manager>;
/// A connection checked out of it.
pub(crate) type Object = managed::Object<Manager>;

/// Credentials for the Redis nodes behind the sentinels (the sentinels'
/// own go in their URLs).
#[derive(Clone)]
pub(super) struct NodeAuth {
    pub(super) username: Option<String>,
    pub(super) password: String,
}

impl std::fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `host:port` -> `redis://host:port`; URLs are kept.
pub(super) fn sentinel_url(address: &str) -> String {
    let address = address.trim();
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("redis://{address}")
    }
}

/// A pool of connections to the primary `primary` named by `sentinels`.
pub(super) fn pool(
    sentinels: Vec<String>,
    primary: &str,
    tls: Option<&TlsConfig>,
    auth: Option<&NodeAuth>,
    connect: Duration,
    pool: PoolConfig,
) -> Result<Pool, StoreError> {
    if sentinels.is_empty() {
        return Err(StoreError::Config(
            "connect_sentinel: no sentinel address given".to_owned(),
        ));
    }
    if primary.is_empty() {
        return Err(StoreError::Config(
            "connect_sentinel: empty primary (master) name".to_owned(),
        ));
    }
    let urls: Vec<String> = sentinels.iter().map(|s| sentinel_url(s)).collect();
    for url in &urls {
        tls::check(url, None)?;
    }
    if tls.is_some_and(TlsConfig::is_custom) && !cfg!(feature = "tls-rustls") {
        return Err(StoreError::Config(
            "custom TLS certificates with Sentinel need the tower-redis-sessions crate feature \
             `tls-rustls` (redis-rs takes them only with rustls)"
                .to_owned(),
        ));
    }
    if tls.is_some() && !tls::TLS_ENABLED {
        return Err(StoreError::Config(
            "can't connect with TLS to the nodes behind Sentinel: this build has no TLS support; \
             enable the tower-redis-sessions crate feature `tls-rustls` (recommended) or \
             `tls-native-tls`"
                .to_owned(),
        ));
    }
    if tls.is_some() || urls.iter().any(|u| tls::is_tls_url(u)) {
        tls::install_crypto_provider();
    }
    #[cfg(feature = "tls-rustls")]
    if let Some(tls) = tls.filter(|t| t.is_custom()) {
        let client = with_certificates(&urls, primary, tls, auth)?;
        return manager_pool(client, connect, pool);
    }
    let mut node = SentinelNodeConnectionInfo::default();
    if tls.is_some() {
        node = node.set_tls_mode(TlsMode::Secure);
    }
    if let Some(auth) = auth {
        let mut info = RedisConnectionInfo::default().set_password(&auth.password);
        if let Some(username) = &auth.username {
            info = info.set_username(username);
        }
        node = node.set_redis_connection_info(info);
    }
    // A `String`: redis-rs takes one without `tls-rustls` (`impl AsRef<str>` with it).
    #[allow(clippy::unnecessary_to_owned)]
    let client = SentinelClient::build(
        urls.clone(),
        primary.to_owned(),
        Some(node),
        SentinelServerType::Master,
    )
    .map_err(|e| {
        StoreError::Config(format!(
            "invalid Sentinel settings (primary `{primary}`): {e}"
        ))
    })?;
    manager_pool(client, connect, pool)
}

/// The pool over `client`, timed by the store.
fn manager_pool(
    client: SentinelClient,
    connect: Duration,
    pool: PoolConfig,
) -> Result<Pool, StoreError> {
    let manager = Manager {
        client: tokio::sync::Mutex::new(client),
        config: AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            // Calls are timed by the store itself.
            .set_response_timeout(None),
        ping_number: AtomicUsize::new(0),
    };
    Pool::builder(manager)
        .config(pool)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Config(e.to_string()))
}

/// A Sentinel client whose connections to the Redis nodes (and to
/// `rediss://` sentinels) trust the CA of `tls` and present its client
/// certificate.
#[cfg(feature = "tls-rustls")]
fn with_certificates(
    urls: &[String],
    primary: &str,
    tls: &TlsConfig,
    auth: Option<&NodeAuth>,
) -> Result<SentinelClient, StoreError> {
    use deadpool_redis::redis::sentinel::SentinelClientBuilder;
    use deadpool_redis::redis::{
        ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, TlsCertificates,
    };

    let invalid = |e: RedisError| {
        StoreError::Config(format!(
            "invalid Sentinel settings (primary `{primary}`): {e}"
        ))
    };
    let certificates = TlsCertificates {
        client_tls: tls.client().map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.to_vec(),
            client_key: key.to_vec(),
        }),
        root_cert: tls.ca_cert().map(<[u8]>::to_vec),
    };
    let infos = urls
        .iter()
        .map(|url| url.as_str().into_connection_info())
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let sentinels_tls = infos
        .iter()
        .any(|i| matches!(i.addr(), ConnectionAddr::TcpTls { .. }));
    let mut builder = SentinelClientBuilder::new(
        infos.iter().map(|i| i.addr().clone()),
        primary,
        SentinelServerType::Master,
    )
    .map_err(invalid)?
    .set_client_to_redis_tls_mode(TlsMode::Secure)
    .set_client_to_redis_certificates(certificates.clone());
    if sentinels_tls {
        builder = builder
            .set_client_to_sentinel_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_certificates(certificates);
    }
    // The sentinels' credentials, from their URLs (the first that has any).
    if let Some(settings) = infos
        .iter()
        .map(|i| i.redis_settings())
        .find(|r| r.password().is_some())
    {
        if let Some(username) = settings.username() {
            builder = builder.set_client_to_sentinel_username(username);
        }
        if let Some(password) = settings.password() {
            builder = builder.set_client_to_sentinel_password(password);
        }
    }
    if let Some(auth) = auth {
        if let Some(username) = &auth.username {
            builder = builder.set_client_to_redis_username(username);
        }
        builder = builder.set_client_to_redis_password(&auth.password);
    }
    builder.build().map_err(invalid)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bare_addresses_become_urls() {
        assert_eq!(
            super::sentinel_url("10.0.0.1:26379"),
            "redis://10.0.0.1:26379"
        );
        assert_eq!(super::sentinel_url(" rediss://h:1 "), "rediss://h:1");
    }
}
