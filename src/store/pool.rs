//! Redis connections: multiplexed connections leased from a deadpool pool
//! and kept.
//!
//! deadpool-redis health-checks a connection each time it is checked out
//! (`UNWATCH` + `PING`), which would double the round trips of every store
//! operation. A redis-rs multiplexed connection, though, already carries any
//! number of concurrent commands. So the store checks out up to `pool size`
//! connections once, keeps them in slots, and sends each call over a clone of
//! the handle in the next slot (round robin): an operation costs exactly its
//! one command. A connection that breaks or times out leaves its slot and the
//! pool; the next call through that slot leases a fresh one, within the pool's
//! wait and create timeouts. A semaphore bounds the calls in flight, and
//! a call waits at most the wait timeout for a place.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::{Cmd, FromRedisValue, RedisError, RedisResult};
use deadpool_redis::{PoolError, Timeouts as PoolTimeouts};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Where connections come from.
#[derive(Clone)]
pub(crate) enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
    /// The primary the sentinels name, looked up for each new connection.
    Sentinel(crate::store::sentinel::Pool),
    /// A cluster over TLS with custom certificates.
    #[cfg(feature = "tls-rustls")]
    ClusterTls(crate::store::cluster_tls::Pool),
}

impl Pool {
    fn max_size(&self) -> usize {
        match self {
            Pool::Single(p) => p.status().max_size,
            Pool::Cluster(p) => p.status().max_size,
            Pool::Sentinel(p) => p.status().max_size,
            #[cfg(feature = "tls-rustls")]
            Pool::ClusterTls(p) => p.status().max_size,
        }
    }

    async fn lease(&self, timeouts: &PoolTimeouts) -> Result<(Conn, Held), PoolError> {
        Ok(match self {
            Pool::Single(p) => {
                let held = p.timeout_get(timeouts).await?;
                (Conn::Single((*held).clone()), Held::Single(held))
            }
            Pool::Cluster(p) => {
                let held = p.timeout_get(timeouts).await?;
                (Conn::Cluster((*held).clone()), Held::Cluster(held))
            }
            Pool::Sentinel(p) => {
                let held = p.timeout_get(timeouts).await?;
                (Conn::Single((*held).clone()), Held::Sentinel(held))
            }
            #[cfg(feature = "tls-rustls")]
            Pool::ClusterTls(p) => {
                let held = p.timeout_get(timeouts).await?;
                (Conn::Cluster((*held).clone()), Held::ClusterTls(held))
            }
        })
    }
}

/// A pool object kept checked out while its slot uses it.
enum Held {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
    Sentinel(crate::store::sentinel::Object),
    #[cfg(feature = "tls-rustls")]
    ClusterTls(crate::store::cluster_tls::Object),
}

impl Held {
    /// Takes the connection out of the pool for good (it is broken), so the
    /// pool makes a new one instead of health-checking this one.
    fn discard(self) {
        match self {
            Held::Single(c) => drop(deadpool_redis::Connection::take(c)),
            Held::Cluster(c) => drop(deadpool_redis::cluster::Connection::take(c)),
            Held::Sentinel(c) => drop(crate::store::sentinel::Object::take(c)),
            #[cfg(feature = "tls-rustls")]
            Held::ClusterTls(c) => drop(crate::store::cluster_tls::Object::take(c)),
        }
    }
}

/// A handle to a multiplexed connection: cheap to clone, shared by calls.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

struct Lease {
    conn: Conn,
    held: Held,
    generation: u64,
}

/// Why a call failed.
pub(crate) enum CallError {
    /// No place among the calls in flight, or no connection from the pool,
    /// within the wait timeout.
    PoolTimeout,
    /// No answer within the command timeout.
    Timeout,
    /// Could not connect (refused, unreachable, connect timeout).
    Connect(String),
    /// The connection broke, or Redis answered with an error.
    Redis(RedisError),
}

/// Timeouts of the connection layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) wait: Duration,
    pub(crate) connect: Duration,
    pub(crate) command: Duration,
}

pub(crate) struct Connections {
    pool: Pool,
    slots: Box<[Mutex<Option<Lease>>]>,
    /// One lease from the pool at a time per slot. Slots keep their
    /// connections checked out for good, and there are no more slots than
    /// pooled connections: if every caller of an empty slot went to the pool,
    /// the extra checkouts could find the pool emptied by the other slots and
    /// wait for a connection that never comes back (a `PoolTimeout` under a
    /// burst of concurrent first calls).
    leasing: Box<[tokio::sync::Mutex<()>]>,
    next: AtomicUsize,
    generation: AtomicU64,
    in_flight: Semaphore,
    timeouts: Timeouts,
}

impl Connections {
    /// Up to `size` connections from `pool` (never more than the pool
    /// holds), carrying at most `max_in_flight` calls at a time.
    pub(crate) fn new(
        pool: Pool,
        size: usize,
        max_in_flight: usize,
        timeouts: Timeouts,
    ) -> Connections {
        let size = size.min(pool.max_size()).max(1);
        Connections {
            pool,
            slots: (0..size).map(|_| Mutex::new(None)).collect(),
            leasing: (0..size).map(|_| tokio::sync::Mutex::new(())).collect(),
            next: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            in_flight: Semaphore::new(max_in_flight.max(1)),
            timeouts,
        }
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Sends `cmd` over one connection. If the connection turns out broken
    /// (Redis restarted, a failover), the call is sent once more over a fresh
    /// one; every function of the library is safe to repeat.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, CallError> {
        // One wait budget per call, however many things it waits for (a
        // place in flight, its slot's lease, a pooled connection).
        let waited = tokio::time::Instant::now() + self.timeouts.wait;
        let _permit = self.place_by(waited).await?;
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (mut conn, generation) = self.lease(slot, waited).await?;
            match tokio::time::timeout(self.timeouts.command, conn.query::<T>(cmd)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if e.is_timeout() => {
                    self.evict(slot, generation);
                    return Err(CallError::Timeout);
                }
                Ok(Err(e)) if is_broken(&e) => {
                    self.evict(slot, generation);
                    if attempts >= 2 {
                        return Err(CallError::Redis(e));
                    }
                    crate::store::observe::another_attempt(attempts + 1);
                }
                Ok(Err(e)) => return Err(CallError::Redis(e)),
                Err(_) => {
                    // A connection that stopped answering may be half-open:
                    // replace it rather than queue more calls behind it.
                    self.evict(slot, generation);
                    return Err(CallError::Timeout);
                }
            }
        }
    }

    /// A place among the `max_in_flight` calls, waiting at most the wait
    /// timeout: calls that go over another connection (the near cache's)
    /// take one too, so the bound holds for every call the store makes.
    pub(crate) async fn place(&self) -> Result<SemaphorePermit<'_>, CallError> {
        self.place_by(tokio::time::Instant::now() + self.timeouts.wait)
            .await
    }

    async fn place_by(
        &self,
        waited: tokio::time::Instant,
    ) -> Result<SemaphorePermit<'_>, CallError> {
        // A free place is taken without arming a timer.
        match self.in_flight.try_acquire() {
            Ok(permit) => Ok(permit),
            Err(_) => match tokio::time::timeout_at(waited, self.in_flight.acquire()).await {
                Ok(Ok(permit)) => Ok(permit),
                // The semaphore is never closed; treat it as saturation if it were.
                Ok(Err(_)) | Err(_) => Err(CallError::PoolTimeout),
            },
        }
    }

    /// The connection in `slot`, leasing one from the pool if it is empty;
    /// waiting (for the slot's lease, for the pool) ends at `waited`.
    async fn lease(
        &self,
        slot: usize,
        waited: tokio::time::Instant,
    ) -> Result<(Conn, u64), CallError> {
        if let Some(found) = self.peek(slot) {
            return Ok(found);
        }
        let Ok(_leasing) = tokio::time::timeout_at(waited, self.leasing[slot].lock()).await else {
            return Err(CallError::PoolTimeout);
        };
        // Filled by the call that held the lease lock before us.
        if let Some(found) = self.peek(slot) {
            return Ok(found);
        }
        let timeouts = PoolTimeouts {
            wait: Some(waited.saturating_duration_since(tokio::time::Instant::now())),
            create: Some(self.timeouts.connect),
            recycle: Some(self.timeouts.command),
        };
        let (conn, held) = self.pool.lease(&timeouts).await.map_err(|e| match e {
            PoolError::Timeout(deadpool_redis::TimeoutType::Wait) => CallError::PoolTimeout,
            PoolError::Timeout(_) => CallError::Connect("connect timed out".to_owned()),
            PoolError::Backend(e) => CallError::Connect(e.to_string()),
            other => CallError::Connect(other.to_string()),
        })?;
        let mut guard = lock(&self.slots[slot]);
        if let Some(lease) = guard.as_ref() {
            // Another call filled the slot meanwhile; ours goes back to the pool.
            return Ok((lease.conn.clone(), lease.generation));
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        *guard = Some(Lease {
            conn: conn.clone(),
            held,
            generation,
        });
        Ok((conn, generation))
    }

    fn peek(&self, slot: usize) -> Option<(Conn, u64)> {
        lock(&self.slots[slot])
            .as_ref()
            .map(|lease| (lease.conn.clone(), lease.generation))
    }

    /// Empties `slot` if it still holds the connection of `generation`.
    fn evict(&self, slot: usize, generation: u64) {
        let lease = {
            let mut guard = lock(&self.slots[slot]);
            match guard.as_ref() {
                Some(lease) if lease.generation == generation => guard.take(),
                _ => None,
            }
        };
        if let Some(lease) = lease {
            lease.held.discard();
        }
    }
}

/// A slot's lock; a panic elsewhere while holding it leaves a valid state.
fn lock(slot: &Mutex<Option<Lease>>) -> std::sync::MutexGuard<'_, Option<Lease>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Errors after which a connection cannot be trusted to carry more calls.
/// `READONLY` means the node was demoted to a replica (a failover): a new
/// connection finds the new primary (through the sentinels, or DNS), and the
/// refused call wrote nothing, so it is safe to send again.
pub(crate) fn is_broken(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            deadpool_redis::redis::ErrorKind::Server(
                deadpool_redis::redis::ServerErrorKind::ReadOnly
            )
        )
}

/// The health check of the pools this crate builds itself (cluster with
/// custom TLS, Sentinel), as deadpool-redis does its own: a `PING` with a
/// fresh number must come back with that number.
pub(crate) async fn recycle_by_ping<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    counter: &AtomicUsize,
) -> deadpool::managed::RecycleResult<RedisError> {
    let ping = counter.fetch_add(1, Ordering::Relaxed).to_string();
    let pong: String = redis::cmd("PING").arg(&ping).query_async(conn).await?;
    if pong == ping {
        Ok(())
    } else {
        Err(deadpool::managed::RecycleError::message(
            "Invalid PING response",
        ))
    }
}
