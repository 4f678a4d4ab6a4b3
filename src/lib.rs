//! Server-side sessions for tower and axum, stored in Redis.
//!
//! - Every store operation is one round trip: a call of a Redis function
//!   from one library (`lua/sessions.lua`), on a single Redis or a Redis
//!   Cluster.
//! - Stored sessions are CBOR, sealed with HMAC-SHA256 and bound to their
//!   key; a blob that does not verify is never trusted.
//! - Concurrent writes are optimistically locked, and a deleted session is
//!   never brought back by a late write.
//! - A user's sessions can be listed and revoked.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod codec;
mod error;
#[cfg(feature = "axum")]
mod extract;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod layer;
mod record;
mod session;
pub mod store;
mod token;
mod transport;

pub use codec::{KeyError, Keyring, MIN_SECRET_LEN};
pub use cookie::SameSite;
pub use error::SessionError;
pub use layer::{SessionLayer, SessionService};
pub use record::{Data, Millis, Record};
pub use session::{Session, SessionInfo};
pub use store::core::StoreStats;
pub use store::{
    MemoryStore, RedisStore, RedisStoreBuilder, SaveOutcome, SessionStore, StoreConfig, StoreError,
};
pub use token::{SessionId, TOKEN_LEN, Token, TokenError};

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
