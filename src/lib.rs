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
//! - Each process keeps recently used sessions in a near cache, kept true by
//!   Redis' own invalidations (client tracking): a cached read costs no
//!   Redis call, a read and a write one, and a change made by another
//!   process is served for at most a bounded time (300 ms by default) even
//!   when the invalidation channel goes silent (see [`store::near_cache`]).
//!
//! # Pieces
//!
//! | piece | role |
//! |---|---|
//! | [`SessionLayer`] | tower middleware: reads the token, hands the request a [`Session`], saves and sets the cookie when the response is ready |
//! | [`Session`] | the request's session (also an axum extractor): typed values, `update`, login, logout, the user's other sessions |
//! | [`store::SessionStore`] | where sessions live: [`RedisStore`] (Redis, Redis Cluster) or [`MemoryStore`] (in process) |
//! | [`StoreConfig`], [`Keyring`] | key prefix, expiry bookkeeping, limits; signing and routing keys |
//! | `tower_sessions::TowerSessionsStore` (feature `tower-sessions`) | a store for tower-sessions 0.14 and axum-login apps: hashed ids, sealed records, no resurrection, users' sessions listed and revoked |
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

mod envelope;
mod error;
#[cfg(feature = "axum")]
mod extract;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod keyring;
pub mod layer;
mod record;
mod session;
pub mod store;
mod token;
#[cfg(feature = "tower-sessions")]
pub mod tower_sessions;
mod transport;

pub use cookie::SameSite;
pub use error::SessionError;
pub use keyring::{KeyError, Keyring, MIN_SECRET_LEN};
pub use layer::{SessionLayer, SessionService};
pub use record::{MAX_METADATA_FIELDS, MAX_METADATA_KEY, MAX_METADATA_VALUE, Metadata};
pub use session::{RetryPolicy, Session, SessionInfo};
pub use store::{MemoryStore, RedisStore, RedisStoreBuilder, StoreConfig, StoreError, StoreStats};
pub use token::{RandomError, SessionId};
pub use transport::CookieConfig;

/// The deadpool-redis crate this crate's API takes pools from
/// ([`RedisStoreBuilder::from_pool`]), so that versions match without
/// pinning them by hand.
pub use deadpool_redis;
/// The redis crate behind [`RedisStore`] (the source of
/// [`StoreError::Backend`] errors).
pub use deadpool_redis::redis;

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
