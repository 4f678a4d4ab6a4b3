//! The near cache's invalidation connection: one RESP3 connection to Redis
//! with `CLIENT TRACKING ON` (default mode), kept by a background task that
//! heartbeats on it and remakes it when it breaks.
//!
//! - **Own calls**: the cache's loads and saves travel on this connection,
//!   so Redis tracks the keys they read (reads inside `FCALL` are tracked)
//!   and pushes `invalidate` when another client changes, deletes or
//!   expires one. A process is told only about sessions it read: the
//!   fan-out of a write is the number of processes that hold that session,
//!   not the number of processes.
//! - **Order**: on this connection Redis sends the invalidations of writes
//!   made before a call, then the call's reply, then the invalidation of the
//!   call's own write (a script's writes are never spared, `NOLOOP` or not),
//!   then those of later writes. The `save` and `load` functions read their
//!   key again after writing it, so that the connection keeps tracking it.
//!   redis-rs hands each push to a closure in stream order, before any later
//!   reply is delivered; the closure applies it at once (see
//!   `Near::finish` for how a reply is judged against the invalidations
//!   counted since its call was sent).
//! - **Heartbeats**: a `PING` every quarter of `max_staleness`; an answer
//!   proves every invalidation sent before it arrived (same connection, in
//!   order). Entries are served only within `max_staleness` of the sending
//!   of the last answered heartbeat, and calls take this connection only
//!   then. A heartbeat not answered within `max_staleness` (or the command
//!   timeout, if longer) ends the connection: the cache is emptied and the
//!   connection made again.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, PushInfo, RedisError};

use crate::store::near_cache::Near;

/// What the store keeps of its invalidation connection.
pub(crate) struct Tracking {
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
}

struct Shared {
    near: Arc<Near>,
    conn: Mutex<Option<(MultiplexedConnection, u64)>>,
    command: Duration,
}

/// How a call over the invalidation connection went.
pub(crate) enum Sent<T> {
    /// Answered (possibly with an error reply, which does not end the connection).
    Reply(Result<T, RedisError>),
    /// No answer in time: the connection is dropped and the cache emptied;
    /// the call may or may not have run.
    TimedOut,
    /// The connection is down or broke (the cache is emptied): send it elsewhere.
    Elsewhere,
}

impl Drop for Tracking {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The URL of `url` asking for RESP3.
fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}protocol=resp3")
}

impl Tracking {
    /// Starts the invalidation connection to the Redis at `url`, in the
    /// background (the cache serves nothing until it is up). Needs a tokio
    /// runtime.
    pub(crate) fn start(
        near: Arc<Near>,
        url: &str,
        connect: Duration,
        command: Duration,
    ) -> Result<Tracking, RedisError> {
        let client = redis::Client::open(resp3(url))?;
        let shared = Arc::new(Shared {
            near,
            conn: Mutex::new(None),
            command,
        });
        let task = tokio::spawn(run(Arc::downgrade(&shared), client, connect)).abort_handle();
        Ok(Tracking { shared, task })
    }

    pub(crate) fn near(&self) -> &Arc<Near> {
        &self.shared.near
    }

    /// The connection, while it is proven alive (a heartbeat answered
    /// within `max_staleness`): a silent one gets no calls.
    fn current(&self) -> Option<(MultiplexedConnection, u64)> {
        if !self.shared.near.is_proven() {
            return None;
        }
        lock(&self.shared.conn).clone()
    }

    /// Drops the connection of `generation` (the task makes a new one).
    fn fail(&self, generation: u64) {
        let mut conn = lock(&self.shared.conn);
        if matches!(conn.as_ref(), Some((_, g)) if *g == generation) {
            *conn = None;
        }
        drop(conn);
        self.shared.near.disconnected(generation);
    }

    /// Sends `cmd` over the invalidation connection, within the command
    /// timeout or `max_staleness`, whichever is shorter (a connection that
    /// slow cannot prove the cache fresh anyway).
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Sent<T> {
        let Some((mut conn, generation)) = self.current() else {
            return Sent::Elsewhere;
        };
        let patience = self
            .shared
            .command
            .min(self.shared.near.config().get_max_staleness());
        match tokio::time::timeout(patience, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => Sent::Reply(Ok(value)),
            Ok(Err(e)) if e.is_timeout() => {
                self.fail(generation);
                Sent::TimedOut
            }
            Ok(Err(e)) if crate::store::pool::is_broken(&e) => {
                self.fail(generation);
                Sent::Elsewhere
            }
            Ok(Err(e)) => Sent::Reply(Err(e)),
            Err(_) => {
                self.fail(generation);
                Sent::TimedOut
            }
        }
    }

    /// Returns once every invalidation Redis sent before now has been
    /// applied (a `PING` answered on the connection); empties the cache if
    /// that cannot be shown.
    pub(crate) async fn barrier(&self) {
        let mut ping = redis::cmd("PING");
        ping.arg("barrier");
        match self.query::<redis::Value>(&ping).await {
            Sent::Reply(Ok(_)) => {}
            _ => self.shared.near.clear(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps the invalidation connection: connect, turn tracking on, heartbeat;
/// on any failure empty the cache and start over (backing off up to 1 s).
/// Ends when the store is dropped.
async fn run(shared: Weak<Shared>, client: redis::Client, connect: Duration) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let Some(state) = shared.upgrade() else {
            return;
        };
        let near = state.near.clone();
        let command = state.command;
        drop(state);
        let generation = near.reconnecting();
        let pushes = Arc::downgrade(&near);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(None)
            .set_push_sender(
                move |info: PushInfo| -> Result<(), std::convert::Infallible> {
                    if let Some(near) = pushes.upgrade() {
                        near.push(generation, &info.kind, &info.data);
                    }
                    Ok(())
                },
            );
        let connected = tokio::time::timeout(
            connect,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        if let Ok(Ok(mut conn)) = connected {
            let mut on = redis::cmd("CLIENT");
            // Default mode: Redis tracks the keys this connection reads
            // (inside FCALL too) and tells it when they change.
            on.arg("TRACKING").arg("ON");
            let tracking =
                tokio::time::timeout(command, on.query_async::<redis::Value>(&mut conn)).await;
            if let Ok(Ok(_)) = tracking {
                let Some(state) = shared.upgrade() else {
                    return;
                };
                *lock(&state.conn) = Some((conn.clone(), generation));
                drop(state);
                near.connected(generation);
                tracing::debug!("near cache: invalidation connection up");
                backoff = Duration::from_millis(20);
                heartbeat(&shared, &near, conn, generation, command).await;
                tracing::warn!(
                    "near cache: invalidation connection lost; cache emptied, reconnecting"
                );
            } else {
                tracing::warn!("near cache: CLIENT TRACKING refused or timed out; retrying");
            }
        }
        if let Some(state) = shared.upgrade() {
            let mut conn = lock(&state.conn);
            if matches!(conn.as_ref(), Some((_, g)) if *g == generation) {
                *conn = None;
            }
        }
        near.disconnected(generation);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Heartbeats on `conn` until one goes unanswered, the connection of
/// `generation` is replaced or broke, or the store is dropped.
async fn heartbeat(
    shared: &Weak<Shared>,
    near: &Arc<Near>,
    mut conn: MultiplexedConnection,
    generation: u64,
    command: Duration,
) {
    let every = near.config().heartbeat();
    let patience = near.config().get_max_staleness().max(command);
    let ping = redis::cmd("PING");
    loop {
        if shared.strong_count() == 0 || !near.is_up() {
            return;
        }
        let sent = Instant::now();

        match tokio::time::timeout(patience, ping.query_async::<redis::Value>(&mut conn)).await {
            Ok(Ok(_)) => near.proved(generation, sent),
            _ => return,
        }
        tokio::time::sleep(every).await;
    }
}
