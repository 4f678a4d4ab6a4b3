//! Server-side sessions for tower and axum, stored in Redis.
//!
//! - Every store operation is one round trip: a call of a Redis function
//!   from one library (`lua/sessions.lua`), on a single Redis or a Redis
//!   Cluster (each call stays within one hash slot).
//! - Stored sessions are CBOR, sealed with HMAC-SHA256 and bound to their
//!   key; a blob that does not verify is never trusted.
//! - Concurrent writes are optimistically locked: a request that meets a
//!   newer version re-applies its own changes onto it, and a deleted session
//!   is never brought back by a late write.
//! - A user's sessions can be listed and revoked.
//!
//! # Pieces
//!
//! | piece | role |
//! |---|---|
//! | [`SessionLayer`] | tower middleware: reads the token, hands the request a [`Session`], saves and sets the cookie when the response is ready |
//! | [`Session`] | the request's session (also an axum extractor): typed values, `update`, login, logout, the user's other sessions |
//! | [`SessionStore`] | where sessions live: [`RedisStore`] (Redis, Redis Cluster) or [`MemoryStore`] (in process) |
//! | [`StoreConfig`], [`Keyring`] | key prefix, expiry bookkeeping, limits; signing and routing keys |
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Json, Router, routing::post};
//! use tower_redis_sessions::{Keyring, RedisStore, Session, SessionError, SessionLayer, StoreConfig};
//!
//! async fn login(session: Session, Json(user): Json<String>) -> Result<(), SessionError> {
//!     // A new token bound to the user: defeats session fixation.
//!     session.login(user).await
//! }
//!
//! async fn add_to_cart(session: Session, Json(item): Json<String>) -> Result<(), SessionError> {
//!     // Re-run on the fresh value if another request changed the cart meanwhile.
//!     session
//!         .update("cart", move |cart: Option<Vec<String>>| {
//!             let mut cart = cart.unwrap_or_default();
//!             cart.push(item.clone());
//!             cart
//!         })
//!         .await?;
//!     Ok(())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = StoreConfig::new(Keyring::new(std::env::var("SESSION_SECRET")?)?).prefix("shop:");
//! let store = RedisStore::builder(config)
//!     .pool_size(8)
//!     .connect_cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
//!     .await?;
//! let app: Router = Router::new()
//!     .route("/login", post(login))
//!     .route("/cart", post(add_to_cart))
//!     .layer(SessionLayer::new(store).idle_timeout(Some(Duration::from_secs(3600))));
//! # Ok(()) }
//! ```
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

pub use transport::CookieConfig;

pub use codec::{KeyError, Keyring, MIN_SECRET_LEN};
pub use cookie::SameSite;
pub use error::SessionError;
pub use layer::{SessionLayer, SessionService};
pub use record::{
    Data, MAX_METADATA_FIELDS, MAX_METADATA_KEY, MAX_METADATA_VALUE, Metadata, Millis, Record,
};
pub use session::{RetryPolicy, Session, SessionInfo};
pub use store::core::StoreStats;
pub use store::{
    MemoryStore, RedisStore, RedisStoreBuilder, RetireOutcome, SaveOutcome, SessionStore,
    StoreConfig, StoreError,
};
pub use token::{SessionId, TOKEN_LEN, Token, TokenError};

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
