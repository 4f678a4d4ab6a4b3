//! Redis behind Sentinel: connections go to the primary the sentinels name,
//! looked up again for every new connection, so after a failover the store
//! follows the new primary without a restart.

use deadpool_redis::sentinel::{Config, SentinelNodeConnectionInfo, SentinelServerType, TlsMode};
use deadpool_redis::{PoolConfig, RedisConnectionInfo, Runtime};

use crate::store::StoreError;
use crate::store::tls::{self, TlsConfig};

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
    pool: PoolConfig,
) -> Result<deadpool_redis::sentinel::Pool, StoreError> {
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
    if tls.is_some_and(TlsConfig::is_custom) {
        return Err(StoreError::Config(
            "custom TLS certificates are not supported with Sentinel yet: use rediss:// with \
             certificates the system trusts, or connect to the primary directly"
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
    let node = SentinelNodeConnectionInfo {
        tls_mode: tls.map(|_| TlsMode::Secure),
        redis_connection_info: auth.map(|auth| RedisConnectionInfo {
            username: auth.username.clone(),
            password: Some(auth.password.clone()),
            ..RedisConnectionInfo::default()
        }),
    };
    let config = Config {
        urls: Some(urls),
        server_type: SentinelServerType::Master,
        master_name: primary.to_owned(),
        connections: None,
        node_connection_info: Some(node),
        pool: Some(pool),
    };
    config.create_pool(Some(Runtime::Tokio1)).map_err(|e| {
        StoreError::Config(format!(
            "invalid Sentinel settings (primary `{primary}`): {e}"
        ))
    })
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
