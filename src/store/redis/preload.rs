//! How the function library gets into Redis: loaded by the store
//! ([`LibraryMode::Load`]) or preloaded by an operator and only checked
//! ([`LibraryMode::Verify`]), for Redis users that may not load functions.

use std::sync::OnceLock;

use deadpool_redis::redis::{self, RedisError, ServerErrorKind, Value};

use super::RedisBackend;
use crate::store::StoreError;
use crate::store::library::Library;

/// How a [`RedisStore`](crate::RedisStore) gets its function library into
/// Redis (see [`RedisStoreBuilder::library`](crate::RedisStoreBuilder::library)).
///
/// The library is registered under [`library_name`], which carries a hash
/// of its source: a Redis holding the library under that name holds exactly
/// this version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LibraryMode {
    /// The store loads the library (`FUNCTION LOAD REPLACE`) when it
    /// connects, and again whenever Redis lost it (a restart without
    /// persistence, `FUNCTION FLUSH`, a failover to a node without it).
    /// The Redis user needs `+function|load`.
    #[default]
    Load,
    /// The store never loads the library: an operator loads it beforehand
    /// (see [`library_source`] and `examples/print_library.rs`), and the
    /// store checks at start-up that it is there (`FUNCTION LIST
    /// LIBRARYNAME <name>`). The Redis user needs `+function|list` but not
    /// `+function|load`. A missing library fails the start-up with a
    /// [`StoreError::Config`] saying how to load it; found missing later
    /// (for instance after a failover to a node without it), calls fail
    /// with [`StoreError::Unavailable`] (503) until it is loaded again.
    Verify,
}

/// The library, built once.
fn shared() -> &'static Library {
    static LIBRARY: OnceLock<Library> = OnceLock::new();
    LIBRARY.get_or_init(Library::new)
}

/// The name this version of the crate registers its function library under:
/// `trs_` and the first 16 hex digits of SHA-256 of `lua/sessions.lua` (the
/// same as [`RedisStore::library_name`](crate::RedisStore::library_name)).
///
/// ```
/// let name = tower_redis_sessions::store::library_name();
/// assert!(name.starts_with("trs_"));
/// ```
pub fn library_name() -> &'static str {
    &shared().name
}

/// The source of the function library, ready for `FUNCTION LOAD` (its first
/// line names it [`library_name`]). For operators who preload it and run the
/// store in [`LibraryMode::Verify`]:
///
/// ```text
/// cargo run --example print_library > sessions.lua
/// redis-cli -x FUNCTION LOAD REPLACE < sessions.lua
/// ```
///
/// ```
/// let source = tower_redis_sessions::store::library_source();
/// let name = tower_redis_sessions::store::library_name();
/// assert!(source.starts_with(&format!("#!lua name={name}\n")));
/// ```
pub fn library_source() -> &'static str {
    &shared().source
}

/// Whether the library is being made ready at start-up (errors are
/// configuration errors) or while serving a call (errors are 503s).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Start,
    Request,
}

/// How to load the library by hand, for messages.
const HOW_TO_LOAD: &str = "load it as an admin with `cargo run --example print_library | redis-cli -x FUNCTION LOAD REPLACE` \
     (the source is tower_redis_sessions::store::library_source())";

impl RedisBackend {
    /// Makes sure the library is in Redis, the way `mode` says.
    pub(super) async fn ensure_library(&self, phase: Phase) -> Result<(), StoreError> {
        let result = match self.mode {
            LibraryMode::Load => self.register().await,
            LibraryMode::Verify => self.verify().await,
        };
        result.map_err(|e| self.explain(e, phase))
    }

    /// `FUNCTION LIST LIBRARYNAME <name>`: present, or a clear error.
    async fn verify(&self) -> Result<(), StoreError> {
        let name = &self.library.name;
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LIST").arg("LIBRARYNAME").arg(name);
        let reply: Value = self
            .conns
            .query(&cmd)
            .await
            .map_err(|e| self.store_error(e))?;
        if lists_library(&reply, name) {
            tracing::info!(library = %name, "the session function library is loaded in Redis (verify mode)");
            self.check_eviction_policy().await;
            Ok(())
        } else {
            Err(StoreError::Config(format!(
                "the session function library `{name}` is not loaded in Redis, and the store runs in \
                 LibraryMode::Verify, which never loads it: {HOW_TO_LOAD}, or give the Redis user \
                 `+function|load` and use LibraryMode::Load"
            )))
        }
    }

    /// Rewrites the errors an operator has to act on (a refused or disabled
    /// `FUNCTION`, a missing library) into a message that says what to do;
    /// at start-up a configuration error, later a 503.
    fn explain(&self, error: StoreError, phase: Phase) -> StoreError {
        let name = &self.library.name;
        let redis_error = match &error {
            StoreError::Backend(e) => e.downcast_ref::<RedisError>(),
            _ => None,
        };
        let message = match (&error, redis_error) {
            (StoreError::Config(message), _) => message.clone(),
            (_, Some(e)) if is_no_perm(e) => match self.mode {
                LibraryMode::Load => format!(
                    "the Redis user may not load the session function library `{name}` ({e}): \
                     grant it `+function|load`, or {HOW_TO_LOAD} and run the store with \
                     LibraryMode::Verify (RedisStoreBuilder::library), which needs only \
                     `+function|list`"
                ),
                LibraryMode::Verify => format!(
                    "the Redis user may not list functions ({e}), which LibraryMode::Verify needs to \
                     check that the session function library `{name}` is loaded: grant it \
                     `+function|list`"
                ),
            },
            (_, Some(e)) if is_unknown_command(e) => format!(
                "Redis refuses the FUNCTION command ({}): the session store needs Redis >= 7 with \
                 FUNCTION enabled ({} in library mode {:?}); ask for it to be enabled (not renamed)",
                short(e),
                match self.mode {
                    LibraryMode::Load => "FUNCTION LOAD",
                    LibraryMode::Verify => "FUNCTION LIST",
                },
                self.mode
            ),
            _ => return error,
        };
        match phase {
            Phase::Start => StoreError::Config(message),
            Phase::Request => {
                tracing::error!(library = %name, "{message}");
                StoreError::Unavailable(message)
            }
        }
    }
}

/// Whether a `FUNCTION LIST` reply holds the library `name` (RESP2: a flat
/// list of field names and values per library; RESP3: maps).
fn lists_library(reply: &Value, name: &str) -> bool {
    let Value::Array(libraries) = reply else {
        return false;
    };
    libraries.iter().any(|library| {
        let fields: Vec<(&Value, &Value)> = match library {
            Value::Array(flat) => flat
                .chunks_exact(2)
                .map(|pair| (&pair[0], &pair[1]))
                .collect(),
            Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
            _ => return false,
        };
        fields
            .into_iter()
            .any(|(k, v)| text(k) == Some("library_name") && text(v) == Some(name))
    })
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s),
        _ => None,
    }
}

fn is_no_perm(e: &RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::Server(ServerErrorKind::NoPerm))
        || e.code() == Some("NOPERM")
}

/// The error without the arguments Redis echoes (the library's source).
fn short(e: &RedisError) -> String {
    let text = e.to_string();
    match text.find(", with args") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn is_unknown_command(e: &RedisError) -> bool {
    e.to_string()
        .to_ascii_lowercase()
        .contains("unknown command")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn finds_the_library_in_resp2_and_resp3_replies() {
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("library_name"),
            bulk("trs_1"),
            bulk("engine"),
            bulk("LUA"),
        ])]);
        assert!(lists_library(&resp2, "trs_1"));
        assert!(!lists_library(&resp2, "trs_2"));
        let resp3 = Value::Array(vec![Value::Map(vec![(
            bulk("library_name"),
            bulk("trs_1"),
        )])]);
        assert!(lists_library(&resp3, "trs_1"));
        assert!(!lists_library(&Value::Array(vec![]), "trs_1"));
    }

    #[test]
    fn public_name_and_source_match_the_store() {
        assert_eq!(library_name(), Library::new().name);
        assert!(library_source().starts_with(&format!("#!lua name={}\n", library_name())));
    }
}
