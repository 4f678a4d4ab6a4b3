//! The near cache's invalidation connections: RESP3 connections with
//! `CLIENT TRACKING ON` (default mode), one to a single Redis or one to
//! each master of a Redis Cluster, kept by a background task that
//! heartbeats on them and remakes them all when one breaks.
//!
//! - **Own calls**: the cache's loads and saves travel on these
//!   connections (on a cluster, on the one to the master of the key's hash
//!   slot), so Redis tracks the keys they read (reads inside `FCALL` are
//!   tracked) and pushes `invalidate` when another client changes, deletes
//!   or expires one. A process is told only about sessions it read: the
//!   fan-out of a write is the number of processes that hold that session,
//!   not the number of processes.
//! - **Order**: on a connection Redis sends the invalidations of writes
//!   made before a call, then the call's reply, then the invalidation of the
//!   call's own write (a script's writes are never spared, `NOLOOP` or not),
//!   then those of later writes. The `save` and `load` functions read their
//!   key again after writing it, so that the connection keeps tracking it.
//!   redis-rs hands each push to a closure in stream order, before any later
//!   reply is delivered; the closure applies it at once (see
//!   `Near::finish` for how a reply is judged against the invalidations
//!   counted since its call was sent).
//! - **Heartbeats**: every quarter of `max_staleness`, a probe on every
//!   connection, sent at once; answers from all of them prove that every
//!   invalidation sent before the probes arrived (same connections, in
//!   order). Entries are served only within `max_staleness` of the sending
//!   of the last probes all answered, and calls take these connections only
//!   then. A probe not answered within `max_staleness` (or the command
//!   timeout, if longer), or answered wrongly, ends them all: the cache is
//!   emptied and the connections made again. The probe is `ROLE` (the node
//!   must still be a master: a failover behind a proxy or a DNS name that
//!   demoted it ends the connection); it is tried once when a connection is
//!   made, so a refused one (an ACL) leaves the store without the cache
//!   instead of reconnecting at every heartbeat.
//! - **Redis Cluster**: the masters and their slots come from `CLUSTER
//!   SLOTS` of any reachable node; each connection checks with `CLUSTER
//!   MYID` that it reached the master it was meant for. The probe there is
//!   `ROLE` and `EXISTS` of a key in one of the master's slots (it fails
//!   with `CLUSTERDOWN` once the node is cut off from the majority, after
//!   the cluster's node timeout, and with `MOVED` once that slot moved),
//!   and every third time also `CLUSTER SLOTS` (the master must serve
//!   exactly the slots it was mapped with); only those full rounds prove
//!   the cache, so a slot that changed hands is noticed within the bound.
//!   A `MOVED` or `CLUSTERDOWN` reply to a call ends the connections too.
//!   A master cut off with this process on its side of a partition keeps
//!   answering until the node timeout: then, and only then, the bound is
//!   the cluster's node timeout rather than `max_staleness`. Between probes a moving key cannot go stale here either: the
//!   `MIGRATE` that takes a key off its master deletes it there, and that
//!   deletion is an invalidation; while its slot migrates, a call for a key
//!   already moved gets `ASK` and goes to the cluster client (not cached).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo,
    ProtocolVersion, PushInfo, RedisError, Value,
};

use crate::store::near_cache::Near;

/// Where the invalidation connections go.
pub(crate) enum Target {
    /// One Redis at this URL.
    Single(String),
    /// A Redis Cluster reachable at any of these URLs, holding keys under
    /// this prefix.
    Cluster(Vec<String>, String),
}

/// What the store keeps of its invalidation connections.
pub(crate) struct Tracking {
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
}

struct Shared {
    near: Arc<Near>,
    channels: Mutex<Option<Channels>>,
    command: Duration,
}

/// The connections of one generation.
#[derive(Clone)]
struct Channels {
    generation: u64,
    conns: Vec<MultiplexedConnection>,
    /// Redis Cluster: for each hash slot, the index in `conns` of its
    /// master (`NO_MASTER` if none); empty for a single Redis.
    route: Arc<[u16]>,
}

const NO_MASTER: u16 = u16::MAX;
const SLOTS: u16 = 16384;

impl Channels {
    fn for_key(&self, key: &str) -> Option<MultiplexedConnection> {
        if self.route.is_empty() {
            return self.conns.first().cloned();
        }
        let index = *self.route.get(usize::from(slot(key.as_bytes())))?;
        self.conns.get(usize::from(index)).cloned()
    }
}

/// How a call over an invalidation connection went.
pub(crate) enum Sent<T> {
    /// Answered (possibly with an error reply, which does not end the connection).
    Reply(Result<T, RedisError>),
    /// No answer in time: the connections are dropped and the cache emptied;
    /// the call may or may not have run.
    TimedOut,
    /// Not sent, or refused before it ran (down, broke, or a cluster
    /// redirect): send it elsewhere.
    Elsewhere,
}

impl Drop for Tracking {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tracking {
    /// Starts the invalidation connections to `target` in the background
    /// (the cache serves nothing until they are up). Needs a tokio runtime.
    pub(crate) fn start(
        near: Arc<Near>,
        target: Target,
        connect: Duration,
        command: Duration,
    ) -> Result<Tracking, RedisError> {
        // A URL that cannot work is a configuration error now, not a
        // reconnection loop later.
        match &target {
            Target::Single(url) => drop(url.as_str().into_connection_info()?),
            Target::Cluster(urls, _) => {
                for url in urls {
                    drop(url.as_str().into_connection_info()?);
                }
            }
        }
        let shared = Arc::new(Shared {
            near,
            channels: Mutex::new(None),
            command,
        });
        let task = tokio::spawn(run(Arc::downgrade(&shared), target, connect)).abort_handle();
        Ok(Tracking { shared, task })
    }

    pub(crate) fn near(&self) -> &Arc<Near> {
        &self.shared.near
    }

    /// The connection for `key`, while the connections are proven alive (a
    /// heartbeat answered within `max_staleness`): silent ones get no calls.
    fn current(&self, key: &str) -> Option<(MultiplexedConnection, u64)> {
        if !self.shared.near.is_proven() {
            return None;
        }
        let channels = lock(&self.shared.channels);
        let channels = channels.as_ref()?;
        Some((channels.for_key(key)?, channels.generation))
    }

    /// Drops the connections of `generation` (the task makes new ones).
    fn fail(&self, generation: u64) {
        let mut channels = lock(&self.shared.channels);
        if matches!(channels.as_ref(), Some(c) if c.generation == generation) {
            *channels = None;
        }
        drop(channels);
        self.shared.near.disconnected(generation);
    }

    /// Sends `cmd`, whose key is `key`, over the invalidation connection
    /// that tracks `key`, within the command timeout (as any call). Only a
    /// connection proven alive within `max_staleness` gets calls, so a
    /// silent one holds only the calls sent just before it fell silent.
    pub(crate) async fn query<T: FromRedisValue>(&self, key: &str, cmd: &Cmd) -> Sent<T> {
        let Some((mut conn, generation)) = self.current(key) else {
            return Sent::Elsewhere;
        };
        let patience = self.shared.command;
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
            // Refused before the function ran. The slot map moved: the
            // connections are made again from the new one.
            Ok(Err(e)) if e.code() == Some("MOVED") => {
                self.fail(generation);
                Sent::Elsewhere
            }
            // The node no longer serves (it left the majority's cluster):
            // nothing it tracks is proven any more.
            Ok(Err(e)) if e.code() == Some("CLUSTERDOWN") => {
                self.fail(generation);
                Sent::Elsewhere
            }
            // A slot in migration: the cluster client follows the redirect.
            Ok(Err(e)) if matches!(e.code(), Some("ASK" | "TRYAGAIN")) => Sent::Elsewhere,
            Ok(Err(e)) => Sent::Reply(Err(e)),
            Err(_) => {
                self.fail(generation);
                Sent::TimedOut
            }
        }
    }

    /// Returns once every invalidation Redis sent (for keys in `key`'s hash
    /// slot) before now has been applied: a `PING` answered on the
    /// connection that tracks them. Empties the cache if that cannot be shown.
    pub(crate) async fn barrier(&self, key: &str) {
        let mut ping = redis::cmd("PING");
        ping.arg("barrier");
        match self.query::<Value>(key, &ping).await {
            Sent::Reply(Ok(_)) => {}
            _ => self.shared.near.clear(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps the invalidation connections: connect, turn tracking on,
/// heartbeat; on any failure empty the cache and start over (backing off up
/// to 1 s). Ends when the store is dropped.
async fn run(shared: Weak<Shared>, target: Target, connect: Duration) {
    let mut backoff = Duration::from_millis(20);
    // Said once per episode: the first failure at WARN, the retries at DEBUG.
    let mut said = false;
    // When connections were last lost: losses in quick succession (a
    // cluster whose nodes still disagree on the slots, a flapping link)
    // are logged once and retried with a growing pause.
    let mut lost: Option<Instant> = None;
    loop {
        let Some(state) = shared.upgrade() else {
            return;
        };
        let near = state.near.clone();
        let command = state.command;
        drop(state);
        let generation = near.reconnecting();
        let link = Link {
            near: &near,
            generation,
            connect,
            command,
        };
        let opened = match &target {
            Target::Single(url) => link.single(url).await,
            Target::Cluster(urls, prefix) => link.cluster(urls, prefix).await,
        };
        match opened {
            Ok((channels, probes)) => {
                let Some(state) = shared.upgrade() else {
                    return;
                };
                *lock(&state.channels) = Some(channels.clone());
                drop(state);
                near.connected(generation);
                tracing::debug!(
                    connections = channels.conns.len(),
                    "near cache: invalidation connections up"
                );
                said = false;
                let up = Instant::now();
                heartbeat(&shared, &near, &channels, &probes, command).await;
                if up.elapsed() >= Duration::from_secs(1) {
                    backoff = Duration::from_millis(20);
                }
                if lost.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(
                        "near cache: an invalidation connection was lost or a master's slots \
                         changed; cache emptied, reconnecting"
                    );
                } else {
                    tracing::debug!(
                        "near cache: invalidation connections lost again; reconnecting"
                    );
                }
                lost = Some(Instant::now());
            }
            Err(Failure::Refused(reason)) => {
                // An ACL or a service that does not allow client tracking:
                // asking often will not change that.
                if !said {
                    tracing::warn!(
                        %reason,
                        "near cache: Redis refuses client tracking or its heartbeat (allow \
                         +client|tracking, +ping and +role, on a cluster also +cluster|slots \
                         and +cluster|myid); \
                         running without the cache, asking again every 30 s"
                    );
                }
                said = true;
                backoff = Duration::from_secs(30);
            }
            Err(Failure::Unreachable(reason)) => {
                if said {
                    tracing::debug!(%reason, "near cache: no invalidation connections; retrying");
                } else {
                    tracing::warn!(%reason, "near cache: no invalidation connections; retrying");
                }
                said = true;
            }
        }
        if let Some(state) = shared.upgrade() {
            let mut channels = lock(&state.channels);
            if matches!(channels.as_ref(), Some(c) if c.generation == generation) {
                *channels = None;
            }
        }
        near.disconnected(generation);
        tokio::time::sleep(backoff).await;
        if backoff < Duration::from_secs(1) {
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// Why the connections could not be made.
enum Failure {
    /// Redis answered with an error (`NOPERM`, an unknown or disabled command).
    Refused(String),
    /// No answer, or not the Redis expected.
    Unreachable(String),
}

impl From<String> for Failure {
    fn from(reason: String) -> Failure {
        Failure::Unreachable(reason)
    }
}

impl From<&str> for Failure {
    fn from(reason: &str) -> Failure {
        Failure::Unreachable(reason.to_owned())
    }
}

/// What a heartbeat asks of one connection.
#[derive(Clone)]
enum Probe {
    /// A single Redis: still a master (`ROLE`), so a failover behind a
    /// proxy or a DNS name that demoted it ends the connection.
    Single,
    /// A cluster master: still a master (`ROLE`), still serving (`EXISTS`
    /// of `key`, a key in one of its slots, fails with `CLUSTERDOWN` once
    /// the node left the majority's cluster, with `MOVED` once the slot
    /// moved), and on a full round serving exactly `ranges` (`CLUSTER
    /// SLOTS`).
    Master {
        id: String,
        ranges: Vec<(u16, u16)>,
        key: String,
    },
}

/// A full round (`CLUSTER SLOTS` of every master, about 10 µs of Redis
/// time each against 0.2 µs for `ROLE` or `EXISTS`, Redis 7.0) every this
/// many heartbeats. On a cluster only full rounds prove the cache: with
/// heartbeats every quarter of `max_staleness`, a full round goes every
/// three quarters of it, so a slot that changed hands is noticed within
/// the bound.
const FULL_EVERY: u32 = 3;

impl Probe {
    /// Sends the probe on `conn`: `Ok(true)` if it holds, `Ok(false)` if
    /// Redis answered something else, the error if it answered one.
    async fn run(self, mut conn: MultiplexedConnection, full: bool) -> Result<bool, RedisError> {
        let mut pipe = redis::pipe();
        pipe.cmd("ROLE");
        if let Probe::Master { key, .. } = &self {
            pipe.cmd("EXISTS").arg(key);
            if full {
                pipe.cmd("CLUSTER").arg("SLOTS");
            }
        }
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        let master = match replies.first() {
            Some(Value::Array(role)) => role.first().and_then(text).as_deref() == Some("master"),
            _ => false,
        };
        Ok(match self {
            Probe::Single => master,
            Probe::Master { id, ranges, .. } => {
                let serving = matches!(replies.get(1), Some(Value::Int(_)));
                let slots = !full
                    || replies
                        .get(2)
                        .and_then(parse_slots)
                        .is_some_and(|map| own_ranges(&map, &id) == ranges);
                master && serving && slots
            }
        })
    }

    /// Whether only full rounds prove the cache.
    fn rounds(&self) -> bool {
        matches!(self, Probe::Master { .. })
    }
}

/// Heartbeats on `channels` until a probe fails or goes unanswered, the
/// connections are replaced or broke, or the store is dropped.
async fn heartbeat(
    shared: &Weak<Shared>,
    near: &Arc<Near>,
    channels: &Channels,
    probes: &[Probe],
    command: Duration,
) {
    let every = near.config().heartbeat();
    let patience = near.config().get_max_staleness().max(command);
    let rounds = probes.iter().any(Probe::rounds);
    let mut beat: u32 = 0;
    loop {
        if shared.strong_count() == 0 || !near.is_up() {
            return;
        }
        let sent = Instant::now();
        let full = !rounds || beat.is_multiple_of(FULL_EVERY);
        beat = beat.wrapping_add(1);
        let mut answers = tokio::task::JoinSet::new();
        for (conn, probe) in channels.conns.iter().zip(probes) {
            answers.spawn(probe.clone().run(conn.clone(), full));
        }
        let all = async {
            let mut all = true;
            while let Some(answer) = answers.join_next().await {
                all &= matches!(answer, Ok(Ok(true)));
            }
            all
        };
        match tokio::time::timeout(patience, all).await {
            // A light round only shows nothing broke: it proves nothing.
            Ok(true) if full => near.proved(channels.generation, sent),
            Ok(true) => {}
            _ => return,
        }
        tokio::time::sleep(every).await;
    }
}

/// What making the connections of one generation needs.
struct Link<'a> {
    near: &'a Arc<Near>,
    generation: u64,
    connect: Duration,
    command: Duration,
}

impl Link<'_> {
    async fn single(&self, url: &str) -> Result<(Channels, Vec<Probe>), Failure> {
        let info = url
            .into_connection_info()
            .map_err(|e| Failure::from(e.to_string()))?;
        let conn = self.tracked(info).await?;
        self.holds(&Probe::Single, &conn).await?;
        let channels = Channels {
            generation: self.generation,
            conns: vec![conn],
            route: Arc::from(Vec::new()),
        };
        Ok((channels, vec![Probe::Single]))
    }

    async fn cluster(
        &self,
        urls: &[String],
        prefix: &str,
    ) -> Result<(Channels, Vec<Probe>), Failure> {
        let mut last = Failure::from("no cluster URL given");
        // Each attempt starts at another node: one whose view of the slots
        // is behind the masters' own is not asked first every time.
        let start = usize::try_from(self.generation).unwrap_or(0) % urls.len().max(1);
        for url in urls.iter().cycle().skip(start).take(urls.len()) {
            match self.cluster_from(url, prefix).await {
                Ok(opened) => return Ok(opened),
                Err(reason) => last = reason,
            }
        }
        Err(last)
    }

    /// The masters as the node at `url` sees them, each with a tracking
    /// connection that `CLUSTER MYID` showed to reach that master.
    async fn cluster_from(
        &self,
        url: &str,
        prefix: &str,
    ) -> Result<(Channels, Vec<Probe>), Failure> {
        let seed = url
            .into_connection_info()
            .map_err(|e| Failure::from(e.to_string()))?;
        let map = {
            let client =
                redis::Client::open(seed.clone()).map_err(|e| Failure::from(e.to_string()))?;
            let mut conn = self
                .within(self.connect, client.get_multiplexed_async_connection())
                .await?;
            let reply: Value = self
                .within(
                    self.command,
                    redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn),
                )
                .await?;
            parse_slots(&reply).ok_or("CLUSTER SLOTS: an unexpected reply")?
        };
        let mut masters: Vec<(SlotOwner, Vec<(u16, u16)>)> = Vec::new();
        for (first, last, owner) in map {
            match masters.iter_mut().find(|(known, _)| known.id == owner.id) {
                Some((_, ranges)) => ranges.push((first, last)),
                None => masters.push((owner, vec![(first, last)])),
            }
        }
        let mut route = vec![NO_MASTER; usize::from(SLOTS)];
        let mut conns = Vec::with_capacity(masters.len());
        let mut probes = Vec::with_capacity(masters.len());
        for (index, (owner, mut ranges)) in masters.into_iter().enumerate() {
            let host = if owner.host.is_empty() || owner.host == "?" {
                // "": the node does not know its own address; it is the
                // one that was asked.
                host_of(seed.addr()).to_owned()
            } else {
                owner.host.clone()
            };
            let info = seed
                .clone()
                .set_addr(with_host(seed.addr(), host, owner.port));
            let mut conn = self.tracked(info).await?;
            let id: String = self
                .within(
                    self.command,
                    redis::cmd("CLUSTER").arg("MYID").query_async(&mut conn),
                )
                .await?;
            if id != owner.id {
                return Err(Failure::Unreachable(format!(
                    "{}:{} answers as node {id}, not {}",
                    owner.host, owner.port, owner.id
                )));
            }
            let slot_index = u16::try_from(index).map_err(|_| Failure::from("too many masters"))?;
            for &(first, last) in &ranges {
                for slot in first..=last.min(SLOTS - 1) {
                    route[usize::from(slot)] = slot_index;
                }
            }
            ranges.sort_unstable();
            let probe = Probe::Master {
                key: probe_key(prefix, &ranges),
                id,
                ranges,
            };
            self.holds(&probe, &conn).await?;
            conns.push(conn);
            probes.push(probe);
        }
        let channels = Channels {
            generation: self.generation,
            conns,
            route: Arc::from(route),
        };
        Ok((channels, probes))
    }

    /// A RESP3 connection to `info` whose pushes reach the cache, with
    /// tracking on.
    async fn tracked(&self, info: ConnectionInfo) -> Result<MultiplexedConnection, Failure> {
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))
            .map_err(|e| Failure::from(e.to_string()))?;
        let pushes = Arc::downgrade(self.near);
        let generation = self.generation;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect))
            .set_response_timeout(None)
            .set_push_sender(
                move |info: PushInfo| -> Result<(), std::convert::Infallible> {
                    if let Some(near) = pushes.upgrade() {
                        near.push(generation, &info.kind, &info.data);
                    }
                    Ok(())
                },
            );
        let mut conn = self
            .within(
                self.connect,
                client.get_multiplexed_async_connection_with_config(&config),
            )
            .await?;
        // Default mode: Redis tracks the keys this connection reads (inside
        // FCALL too) and tells it when they change.
        let _: Value = self
            .within(
                self.command,
                redis::cmd("CLIENT")
                    .arg("TRACKING")
                    .arg("ON")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(conn)
    }

    /// Runs `probe` once, in full: a refused command (an ACL without
    /// `+role`, say) is a refusal now, not a connection made and lost at
    /// every heartbeat; a node that does not hold is not used.
    async fn holds(&self, probe: &Probe, conn: &MultiplexedConnection) -> Result<(), Failure> {
        match self
            .within(self.command, probe.clone().run(conn.clone(), true))
            .await?
        {
            true => Ok(()),
            false => Err(Failure::from(
                "a node is not the master it was taken for, or does not serve its slots",
            )),
        }
    }

    async fn within<T>(
        &self,
        bound: Duration,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(bound, call).await {
            Ok(Ok(value)) => Ok(value),
            // Redis is there and says no for good: asking often will not
            // change it (transient answers, LOADING or BUSY, are retried).
            Ok(Err(e)) if refusal(&e) => Err(Failure::Refused(e.to_string())),
            Ok(Err(e)) => Err(Failure::Unreachable(e.to_string())),
            Err(_) => Err(Failure::Unreachable(format!("no answer within {bound:?}"))),
        }
    }
}

/// An answer that will not change by asking again: no permission, or a
/// command this Redis does not have or has disabled.
fn refusal(e: &RedisError) -> bool {
    match e.code() {
        Some("NOPERM") => true,
        Some("ERR") => {
            let detail = e.detail().unwrap_or_default().to_ascii_lowercase();
            [
                "unknown command",
                "unknown subcommand",
                "disabled",
                "not allowed",
            ]
            .iter()
            .any(|t| detail.contains(t))
        }
        _ => false,
    }
}

/// A key under `prefix` (so an ACL limited to the store's keys allows it)
/// whose hash slot is in `ranges`, for the `EXISTS` of a master's probe.
fn probe_key(prefix: &str, ranges: &[(u16, u16)]) -> String {
    let owned = |slot: u16| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot));
    // With a third of the slots, one in three tags fits: the search ends
    // within a few tries (at most all tags up to SLOTS * 4, then any key).
    (0..u32::from(SLOTS) * 4)
        .map(|n| format!("{prefix}{{near-cache-probe-{n}}}"))
        .find(|key| owned(slot(key.as_bytes())))
        .unwrap_or_else(|| format!("{prefix}near-cache-probe"))
}

/// A slot range's master, as `CLUSTER SLOTS` names it.
#[derive(Debug, PartialEq, Eq)]
struct SlotOwner {
    host: String,
    port: u16,
    id: String,
}

/// `CLUSTER SLOTS`: `[first, last, [host, port, id, ...], replicas...]` per
/// range.
fn parse_slots(reply: &Value) -> Option<Vec<(u16, u16, SlotOwner)>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let first = u16::try_from(int(fields.first()?)?).ok()?;
            let last = u16::try_from(int(fields.get(1)?)?).ok()?;
            let Value::Array(master) = fields.get(2)? else {
                return None;
            };
            let owner = SlotOwner {
                host: text(master.first()?)?,
                port: u16::try_from(int(master.get(1)?)?).ok()?,
                id: text(master.get(2)?)?,
            };
            Some((first, last, owner))
        })
        .collect()
}

/// The ranges `CLUSTER SLOTS` gives to master `id`, sorted.
fn own_ranges(map: &[(u16, u16, SlotOwner)], id: &str) -> Vec<(u16, u16)> {
    let mut ranges: Vec<(u16, u16)> = map
        .iter()
        .filter(|(_, _, owner)| owner.id == id)
        .map(|(first, last, _)| (*first, *last))
        .collect();
    ranges.sort_unstable();
    ranges
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        // An endpoint Redis does not know: as "" (the node asked).
        Value::Nil => Some(String::new()),
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn host_of(addr: &ConnectionAddr) -> &str {
    match addr {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host,
        ConnectionAddr::Unix(_) => "",
        _ => "",
    }
}

/// `addr` (its TLS settings kept) at another host and port.
fn with_host(addr: &ConnectionAddr, host: String, port: u16) -> ConnectionAddr {
    match addr {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag
/// (the first non-empty `{...}`), or of the whole key, modulo 16384.
fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let len = rest.iter().position(|&b| b == b'}')?;
            (len > 0).then(|| &rest[..len])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_cluster_slots() {
        // Values from `CLUSTER KEYSLOT` (Redis 7.0).
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"123456789"), 0x31c3 % SLOTS);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"foo{}{bar}"), 8363);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }

    #[test]
    fn probe_keys_fall_in_the_masters_slots_under_the_prefix() {
        for ranges in [
            vec![(0, 5460)],
            vec![(5461, 10922)],
            vec![(10923, 16383)],
            vec![(7, 7)],
        ] {
            let key = probe_key("trs:", &ranges);
            assert!(key.starts_with("trs:{"), "{key}");
            let slot = slot(key.as_bytes());
            assert!(
                ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)),
                "{key}: {slot}"
            );
        }
    }

    #[test]
    fn only_lasting_answers_are_refusals() {
        let error = |line: &str| {
            redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
                .unwrap()
                .extract_error()
                .unwrap_err()
        };
        assert!(refusal(&error(
            "NOPERM this user has no permissions to run the 'role' command"
        )));
        assert!(refusal(&error(
            "ERR unknown command 'ROLE', with args beginning with: "
        )));
        assert!(refusal(&error(
            "ERR unknown subcommand 'TRACKING'. Try CLIENT HELP."
        )));
        assert!(!refusal(&error(
            "LOADING Redis is loading the dataset in memory"
        )));
        assert!(!refusal(&error("BUSY Redis is busy running a script.")));
        assert!(!refusal(&error("CLUSTERDOWN The cluster is down")));
    }

    #[test]
    fn cluster_slots_replies_are_read_per_master() {
        let node = |host: &str, port: i64, id: &str| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![]),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(99),
                node("10.0.0.1", 7000, "a"),
                node("10.0.0.9", 7009, "r"),
            ]),
            Value::Array(vec![
                Value::Int(100),
                Value::Int(16383),
                node("", 7001, "b"),
            ]),
            Value::Array(vec![
                Value::Int(5),
                Value::Int(6),
                node("10.0.0.1", 7000, "a"),
            ]),
        ]);
        let map = parse_slots(&reply).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].2.host, "");
        assert_eq!(own_ranges(&map, "a"), vec![(0, 99), (5, 6)]);
        assert_eq!(own_ranges(&map, "b"), vec![(100, 16383)]);
        assert!(own_ranges(&map, "r").is_empty(), "replicas own nothing");
        assert_eq!(parse_slots(&Value::Int(1)), None);
    }
}
