//! Shared integration-test harness: real `redis-server` processes, never mocks.
//!
//! Use from any file in `tests/` with `mod common;`, then e.g.
//!
//! ```ignore
//! let server = common::shared_server();          // one per test binary
//! let before = server.commandstats();
//! // ... exercise the crate against server.url() ...
//! let delta = server.commandstats().delta_since(&before);
//! ```
//!
//! * [`RedisServer`]: one standalone server on a random free 127.0.0.1 port,
//!   with its own temp dir and no persistence unless asked for
//!   ([`ServerOptions`]). `cmd` / `cmd_bytes` talk to it over a raw RESP2
//!   connection that sends nothing but the commands you give it.
//! * [`RedisCluster`]: three masters, no replicas, ready to serve all slots.
//! * [`CommandStats`]: parsed `INFO commandstats`, for "exactly one round
//!   trip" style assertions.
//!
//! Processes are killed and temp dirs removed on drop; for the shared
//! statics (never dropped) and for crashed or killed test binaries, a
//! watchdog shell per server does it within ~0.5 s of the test process exit.
//!
//! Every test binary compiles this module but uses only part of it, hence
//! `dead_code` (unused items) and `unused_imports` (unused `pub use`s).
#![allow(dead_code, unused_imports)]

mod cluster;
pub mod deploy;
pub mod logs;
pub mod monitor;
pub mod near;
mod resp;
pub mod sentinel;
mod server;
mod stats;
pub mod stores;
pub mod tls;

use std::sync::OnceLock;

pub use cluster::{RedisCluster, SLOT_COUNT, key_slot};
pub use resp::{RawConnection, Reply};
pub use server::{RedisServer, ServerOptions};
pub use stats::{CommandStats, LIBRARY_INTERNAL};

/// One standalone server per test binary, started on first use. Tests run in
/// parallel against it, so use unique keys and do not flush it; for exact
/// commandstats or restarts, start a private [`RedisServer`] instead.
pub fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// One cluster per test binary, started on first use. Same caveats as
/// [`shared_server`].
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}
