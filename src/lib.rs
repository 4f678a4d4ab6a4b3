//! Server-side sessions for tower and axum, stored in Redis.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
