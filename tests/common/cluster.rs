//! A 3-master Redis Cluster made of real `redis-server` processes.

use std::thread;
use std::time::{Duration, Instant};

use super::resp::Reply;
use super::server::{RedisServer, ServerOptions};
use super::stats::CommandStats;

/// Number of hash slots in Redis Cluster.
pub const SLOT_COUNT: u16 = 16384;

/// How long the cluster may take to agree on `cluster_state:ok` once the
/// nodes have been told to join.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Three masters, no replicas, all slots assigned, every node agreeing.
/// The slot map never changes (no replicas, so no failover), so it is read
/// once at startup and [`RedisCluster::node_for_key`] sends no commands.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// `(first_slot, last_slot, index into nodes)`, sorted by slot.
    slots: Vec<(u16, u16, usize)>,
}

impl RedisCluster {
    /// Starts 3 cluster-enabled servers, assigns each a contiguous third of
    /// the slots (like `redis-cli --cluster create`), joins them, and waits
    /// until every node reports `cluster_state:ok` and the same complete slot
    /// map.
    pub fn start() -> RedisCluster {
        // Node start-up is mostly waiting, so start the three in parallel.
        let nodes: Vec<RedisServer> = thread::scope(|scope| {
            let handles: Vec<_> = (0..3)
                .map(|_| scope.spawn(|| RedisServer::start_with(node_options())))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });

        join(&nodes);
        let slots = wait_until_ready(&nodes);
        RedisCluster { nodes, slots }
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes (all masters).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, mutably (e.g. to `restart` one: it rejoins the cluster
    /// from its `nodes.conf`; call [`RedisCluster::wait_until_ready`] after).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Waits until every node reports `cluster_state:ok` and the original
    /// slot map again (e.g. after restarting a node); panics on timeout.
    pub fn wait_until_ready(&self) {
        let slots = wait_until_ready(&self.nodes);
        assert_eq!(slots, self.slots, "the cluster's slot map changed");
    }

    /// The node that owns `slot`.
    pub fn node_for_slot(&self, slot: u16) -> &RedisServer {
        let &(_, _, index) = self
            .slots
            .iter()
            .find(|&&(first, last, _)| (first..=last).contains(&slot))
            .unwrap_or_else(|| panic!("slot {slot} is not assigned"));
        &self.nodes[index]
    }

    /// The node that owns `key`'s slot. The slot is computed locally (see
    /// [`key_slot`], checked against `CLUSTER KEYSLOT` in `tests/harness.rs`)
    /// so calling this does not show up in any node's commandstats.
    pub fn node_for_key(&self, key: &str) -> &RedisServer {
        self.node_for_slot(key_slot(key.as_bytes()))
    }

    /// Starts a replica of node `master` and waits until it is in sync and
    /// every node knows it; returns its index in [`RedisCluster::nodes`].
    /// (Its `slots` entry stays with the master: after
    /// [`RedisCluster::fail_over`] use the nodes' own `CLUSTER SLOTS`.)
    pub fn add_replica(&mut self, master: usize) -> usize {
        let replica = RedisServer::start_with(node_options());
        let master_id = self.nodes[master].node_id();
        let port = self.nodes[master].port().to_string();
        expect_ok(&replica, &["CLUSTER", "MEET", "127.0.0.1", &port]);
        wait_for("the replica to learn its master", || {
            replica.cmd(&["CLUSTER", "NODES"]).contains(&master_id)
        });
        expect_ok(&replica, &["CLUSTER", "REPLICATE", &master_id]);
        let replica_id = replica.node_id();
        wait_for("the replica to sync", || {
            replica
                .cmd(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        let nodes = &self.nodes;
        wait_for("every node to know the replica", || {
            nodes
                .iter()
                .all(|n| n.cmd(&["CLUSTER", "NODES"]).contains(&replica_id))
        });
        self.nodes.push(replica);
        self.nodes.len() - 1
    }

    /// `CLUSTER FAILOVER` on the replica `replica`: it takes its master's
    /// slots (the old master stays up, as its replica). Waits until every
    /// node names it as the owner of `slot`.
    pub fn fail_over(&self, replica: usize, slot: u16) {
        let node = &self.nodes[replica];
        expect_ok(node, &["CLUSTER", "FAILOVER"]);
        let port = i64::from(node.port());
        let nodes = &self.nodes;
        wait_for("every node to see the failover", || {
            nodes.iter().all(|n| owner_port(n, slot) == Some(port))
        });
    }

    /// `INFO commandstats` summed over all nodes (one `INFO` per node,
    /// excluded as described on [`CommandStats`]).
    pub fn commandstats(&self) -> CommandStats {
        let mut total = CommandStats::default();
        for node in &self.nodes {
            total.add(&node.commandstats());
        }
        total
    }
}

/// Does what `redis-cli --cluster create <3 nodes> --cluster-replicas 0`
/// does, except that every node MEETs every other node directly. redis-cli
/// MEETs everyone with the first node only and then polls once per second
/// until gossip has spread the topology, which took anywhere from 1 to 7
/// seconds; with a full mesh of MEETs the cluster is ready as soon as Redis
/// allows (a master turns `cluster_state:ok` at the earliest 2 s after start).
fn join(nodes: &[RedisServer]) {
    let count = nodes.len() as u32;
    for (i, node) in nodes.iter().enumerate() {
        let i = i as u32;
        let first = u32::from(SLOT_COUNT) * i / count;
        let last = u32::from(SLOT_COUNT) * (i + 1) / count - 1;
        // Distinct config epochs avoid a round of epoch-collision resolution;
        // they must be set while the node knows only itself.
        let epoch = (i + 1).to_string();
        expect_ok(node, &["CLUSTER", "SET-CONFIG-EPOCH", &epoch]);
        expect_ok(
            node,
            &[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ],
        );
    }
    for (i, node) in nodes.iter().enumerate() {
        for other in &nodes[i + 1..] {
            expect_ok(
                node,
                &["CLUSTER", "MEET", "127.0.0.1", &other.port().to_string()],
            );
        }
    }
}

/// Polls `done` every 20 ms for up to 30 s; panics naming `what` then.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The port of the master that `node` says serves `slot`.
fn owner_port(node: &RedisServer, slot: u16) -> Option<i64> {
    let reply = node.cmd_bytes(&[b"CLUSTER", b"SLOTS"]);
    reply.as_array()?.iter().find_map(|range| {
        let parts = range.as_array()?;
        let first = parts.first()?.as_int()?;
        let last = parts.get(1)?.as_int()?;
        let Some(Reply::Array(master)) = parts.get(2) else {
            return None;
        };
        (first..=last)
            .contains(&i64::from(slot))
            .then(|| master.get(1)?.as_int())?
    })
}

fn expect_ok(node: &RedisServer, args: &[&str]) {
    let reply = node.cmd(args);
    assert_eq!(
        reply,
        "OK",
        "`{}` on cluster node {}",
        args.join(" "),
        node.port()
    );
}

fn node_options() -> ServerOptions {
    let extra = [
        ("cluster-enabled", "yes"),
        // Relative to the node's --dir, which redis-server chdirs into.
        ("cluster-config-file", "nodes.conf"),
        ("cluster-node-timeout", "5000"),
    ];
    ServerOptions {
        extra: extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ServerOptions::default()
    }
}

/// Polls every node until all report `cluster_state:ok` and an identical
/// `CLUSTER SLOTS` map covering all slots with our own `127.0.0.1:<port>`
/// endpoints (so clients following the map reach the right processes).
fn wait_until_ready(nodes: &[RedisServer]) -> Vec<(u16, u16, usize)> {
    let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
    let mut last_problem;
    loop {
        match check_ready(nodes) {
            Ok(slots) => return slots,
            Err(problem) => last_problem = problem,
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| format!("--- node {} log tail:\n{}", n.port(), n.log_tail(15)))
                .collect();
            panic!(
                "Redis Cluster not ready within {CLUSTER_READY_TIMEOUT:?}: {last_problem}\n{}",
                logs.join("\n")
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn check_ready(nodes: &[RedisServer]) -> Result<Vec<(u16, u16, usize)>, String> {
    let mut first_map: Option<Vec<(u16, u16, usize)>> = None;
    for node in nodes {
        let info = node.cmd(&["CLUSTER", "INFO"]);
        if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
            return Err(format!("node {} is not cluster_state:ok", node.port()));
        }
        let map = slot_map(node, nodes)?;
        let covered: u32 = map
            .iter()
            .map(|&(first, last, _)| u32::from(last - first) + 1)
            .sum();
        if covered != u32::from(SLOT_COUNT) {
            return Err(format!("node {} sees {covered} slots covered", node.port()));
        }
        match &first_map {
            None => first_map = Some(map),
            Some(first) if *first != map => {
                return Err(format!("node {} disagrees on the slot map", node.port()));
            }
            Some(_) => {}
        }
    }
    Ok(first_map.unwrap_or_default())
}

/// Parses `CLUSTER SLOTS` as seen by `node` into `(first, last, node index)`.
fn slot_map(node: &RedisServer, nodes: &[RedisServer]) -> Result<Vec<(u16, u16, usize)>, String> {
    let reply = node.cmd_bytes(&[b"CLUSTER", b"SLOTS"]);
    let ranges = reply
        .as_array()
        .ok_or_else(|| format!("CLUSTER SLOTS on {}: {reply:?}", node.port()))?;
    let mut map = Vec::new();
    for range in ranges {
        let parts = range.as_array().unwrap_or_default();
        let (Some(first), Some(last), Some(Reply::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return Err(format!("unexpected CLUSTER SLOTS entry {range:?}"));
        };
        let ip = master.first().and_then(Reply::as_str).unwrap_or_default();
        let port = master.get(1).and_then(Reply::as_int).unwrap_or_default();
        let index = nodes
            .iter()
            .position(|n| i64::from(n.port()) == port && ip == "127.0.0.1")
            .ok_or_else(|| format!("slots served by unknown endpoint {ip:?}:{port}"))?;
        let slot = |r: &Reply| r.as_int().and_then(|i| u16::try_from(i).ok());
        match (slot(first), slot(last)) {
            (Some(first), Some(last)) if first <= last => map.push((first, last, index)),
            _ => return Err(format!("bad slot range in {range:?}")),
        }
    }
    map.sort_unstable();
    Ok(map)
}

/// The hash slot of `key`, as `CLUSTER KEYSLOT` computes it: CRC16/XMODEM of
/// the key, or of its hash tag (the text between the first `{` and the next
/// `}`, if non-empty), modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % SLOT_COUNT
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The steps of a slot migration, as `redis-cli --cluster reshard` takes
/// them, on one node of a cluster (each must answer OK).
impl RedisServer {
    /// `CLUSTER MYID`.
    pub fn node_id(&self) -> String {
        let id = self.cmd(&["CLUSTER", "MYID"]);
        assert_eq!(id.len(), 40, "CLUSTER MYID: {id:?}");
        id
    }

    /// `CLUSTER SETSLOT <slot> <args>`.
    pub fn setslot(&self, slot: u16, args: &[&str]) {
        let slot = slot.to_string();
        let mut command = vec!["CLUSTER", "SETSLOT", &slot];
        command.extend_from_slice(args);
        assert_eq!(self.cmd(&command), "OK", "{command:?} on {}", self.port());
    }

    /// `MIGRATE` of `keys` from this node to `target`, as one batch.
    pub fn migrate_keys(&self, target: &RedisServer, keys: &[&str]) {
        let port = target.port().to_string();
        let mut command = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        command.extend_from_slice(keys);
        assert_eq!(self.cmd(&command), "OK", "{command:?}");
    }

    /// The keys this node holds in `slot` (`CLUSTER GETKEYSINSLOT`).
    pub fn keys_in_slot(&self, slot: u16) -> std::collections::BTreeSet<String> {
        self.cmd_bytes(&[
            b"CLUSTER",
            b"GETKEYSINSLOT",
            slot.to_string().as_bytes(),
            b"1000",
        ])
        .unwrap_array()
        .into_iter()
        .map(|r| String::from_utf8(r.unwrap_bytes()).unwrap())
        .collect()
    }
}
