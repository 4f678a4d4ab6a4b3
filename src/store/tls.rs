//! TLS settings of a [`RedisStore`](super::RedisStore): `rediss://` URLs, a
//! custom certificate authority, client certificates (mutual TLS).
//!
//! The types exist whatever the crate features, so configuration code
//! compiles the same everywhere; connecting with TLS needs the crate feature
//! `tls-rustls` (recommended) or `tls-native-tls`, and fails with a
//! [`StoreError::Config`] naming them otherwise.

use deadpool_redis::redis::{ConnectionInfo, IntoConnectionInfo};

use crate::store::StoreError;

/// The crate features that give TLS, for error messages.
const TLS_FEATURES: &str =
    "enable the tower-redis-sessions crate feature `tls-rustls` (recommended) or `tls-native-tls`";

/// How to check the server's certificate and which certificate to present,
/// for [`RedisStoreBuilder::tls`](super::RedisStoreBuilder::tls).
///
/// Without it, a `rediss://` URL trusts the system's certificate
/// authorities (what managed Redis services with public certificates need).
/// The certificates are PEM, as in the files `redis-server` takes with
/// `--tls-ca-cert-file`, `--tls-cert-file` and `--tls-key-file`.
///
/// ```no_run
/// use tower_redis_sessions::store::TlsConfig;
/// use tower_redis_sessions::{Keyring, RedisStore, StoreConfig};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let tls = TlsConfig::new()
///     .ca_cert_pem(std::fs::read("/etc/redis/ca.crt")?)
///     .client_cert_pem(
///         std::fs::read("/etc/redis/client.crt")?,
///         std::fs::read("/etc/redis/client.key")?,
///     );
/// let config = StoreConfig::new(Keyring::new(std::env::var("SESSION_SECRET")?)?);
/// let store = RedisStore::builder(config)
///     .tls(tls)
///     .connect("rediss://redis.internal:6380")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct TlsConfig {
    ca_cert: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsConfig {
    /// Trust the system's certificate authorities, present no client
    /// certificate.
    pub fn new() -> TlsConfig {
        TlsConfig::default()
    }

    /// Trust this certificate authority (PEM; one or more certificates)
    /// instead of the system's.
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_cert = Some(pem.into());
        self
    }

    /// Present this client certificate (PEM, with its chain) and its private
    /// key (PEM) to servers that ask for one (`tls-auth-clients yes`).
    pub fn client_cert_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.client = Some((cert.into(), key.into()));
        self
    }

    /// The CA to trust, if not the system's.
    #[cfg_attr(not(feature = "tls-rustls"), allow(dead_code))]
    pub(super) fn ca_cert(&self) -> Option<&[u8]> {
        self.ca_cert.as_deref()
    }

    /// The client certificate and key, if any.
    #[cfg_attr(not(feature = "tls-rustls"), allow(dead_code))]
    pub(super) fn client(&self) -> Option<(&[u8], &[u8])> {
        self.client
            .as_ref()
            .map(|(cert, key)| (cert.as_slice(), key.as_slice()))
    }

    /// Whether anything differs from the defaults of a `rediss://` URL.
    pub(super) fn is_custom(&self) -> bool {
        self.ca_cert.is_some() || self.client.is_some()
    }
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_cert", &self.ca_cert.as_ref().map(|_| "<pem>"))
            .field("client_cert", &self.client.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

/// Whether TLS is compiled in.
pub(super) const TLS_ENABLED: bool = cfg!(any(feature = "tls-rustls", feature = "tls-native-tls"));

/// Whether `url` asks for TLS.
pub(super) fn is_tls_url(url: &str) -> bool {
    url.trim_start()
        .get(..9)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"))
}

/// Refuses a `rediss://` URL, or TLS settings, when no TLS feature is
/// compiled in, and TLS settings with a plain `redis://` URL.
pub(super) fn check(url: &str, tls: Option<&TlsConfig>) -> Result<(), StoreError> {
    let custom = tls.is_some_and(TlsConfig::is_custom);
    if (is_tls_url(url) || custom) && !TLS_ENABLED {
        return Err(StoreError::Config(format!(
            "can't connect with TLS to {}: this build has no TLS support; {TLS_FEATURES}",
            redact(url)
        )));
    }
    if custom && !is_tls_url(url) {
        return Err(StoreError::Config(format!(
            "TLS certificates were given but {} is not a TLS URL: use rediss://",
            redact(url)
        )));
    }
    Ok(())
}

/// Refuses what [`check`] refuses on any of a cluster's `urls`, and TLS
/// settings with plain `redis://` URLs.
pub(super) fn check_cluster(urls: &[String], tls: Option<&TlsConfig>) -> Result<(), StoreError> {
    for url in urls {
        check(url, tls)?;
        if tls.is_some() && !is_tls_url(url) {
            return Err(StoreError::Config(format!(
                "TLS settings were given but {} is not a TLS URL: use rediss://",
                redact(url)
            )));
        }
    }
    if tls.is_some_and(TlsConfig::is_custom) && !cfg!(feature = "tls-rustls") {
        return Err(StoreError::Config(
            "custom TLS certificates with Redis Cluster need the tower-redis-sessions crate \
             feature `tls-rustls` (redis-rs takes cluster certificates only with rustls)"
                .to_owned(),
        ));
    }
    if urls.iter().any(|u| is_tls_url(u)) {
        install_crypto_provider();
    }
    Ok(())
}

/// The connection settings of `url`, with the certificates of `tls`.
pub(super) fn connection_info(
    url: &str,
    tls: Option<&TlsConfig>,
) -> Result<ConnectionInfo, StoreError> {
    check(url, tls)?;
    if is_tls_url(url) {
        install_crypto_provider();
    }
    let info = url
        .into_connection_info()
        .map_err(|e| StoreError::Config(format!("invalid Redis URL {}: {e}", redact(url))))?;
    match tls.filter(|t| t.is_custom()) {
        None => Ok(info),
        Some(tls) => with_certificates(info, tls, url),
    }
}

#[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
fn with_certificates(
    info: ConnectionInfo,
    tls: &TlsConfig,
    url: &str,
) -> Result<ConnectionInfo, StoreError> {
    use deadpool_redis::redis::{Client, ClientTlsConfig, TlsCertificates};
    install_crypto_provider();
    let certificates = TlsCertificates {
        client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        }),
        root_cert: tls.ca_cert.clone(),
    };
    let client = Client::build_with_tls(info, certificates).map_err(|e| {
        StoreError::Config(format!(
            "unusable TLS certificates for {}: {e}",
            redact(url)
        ))
    })?;
    Ok(client.get_connection_info().clone())
}

#[cfg(not(any(feature = "tls-rustls", feature = "tls-native-tls")))]
fn with_certificates(
    _info: ConnectionInfo,
    _tls: &TlsConfig,
    url: &str,
) -> Result<ConnectionInfo, StoreError> {
    // `check` already refused it; kept for the types.
    Err(StoreError::Config(format!(
        "can't connect with TLS to {}: {TLS_FEATURES}",
        redact(url)
    )))
}

/// rustls needs a process-wide crypto provider when more than one is
/// compiled in (for instance when the application also enables
/// `aws-lc-rs`); this crate brings `ring`. An application that installed
/// its own keeps it.
pub(super) fn install_crypto_provider() {
    #[cfg(feature = "tls-rustls")]
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one meanwhile: fine too.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// `rediss://user:password@host` -> `rediss://***@host`, for messages.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_urls_are_recognised() {
        assert!(is_tls_url("rediss://h:1"));
        assert!(is_tls_url("REDISS://h:1"));
        assert!(!is_tls_url("redis://h:1"));
        assert!(!is_tls_url("redis"));
    }

    #[test]
    fn without_a_tls_feature_rediss_names_the_feature() {
        let result = check("rediss://u:secret@h:6380", None);
        if TLS_ENABLED {
            assert!(result.is_ok());
        } else {
            let message = result.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains("tls-rustls"), "{message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }

    #[test]
    fn certificates_need_a_tls_url() {
        let tls = TlsConfig::new().ca_cert_pem("x");
        assert!(matches!(
            check("redis://h:1", Some(&tls)),
            Err(StoreError::Config(_))
        ));
    }

    #[test]
    fn debug_hides_the_key() {
        let tls = TlsConfig::new().client_cert_pem("CERT", "KEY");
        assert!(!format!("{tls:?}").contains("KEY"));
    }
}
