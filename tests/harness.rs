//! Tests of the test harness itself (`tests/common`), so that failures in the
//! real integration tests can be trusted to be about the crate.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::{CommandStats, RedisCluster, RedisServer, Reply, ServerOptions, key_slot};

#[test]
fn standalone_answers_ping_over_raw_connection() {
    let server = RedisServer::start();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(server.cmd(&["PING"]), "PONG");

    let mut conn = server.connect();
    assert_eq!(conn.cmd_bytes(&[b"PING"]), Reply::Status("PONG".into()));
    assert_eq!(conn.cmd(&["ECHO", "hi"]), "hi");

    // Persistence is off by default.
    assert_eq!(
        server.cmd(&["CONFIG", "GET", "appendonly"]),
        "appendonly\nno"
    );
    assert_eq!(server.cmd(&["CONFIG", "GET", "save"]), "save\n");
}

#[test]
fn replies_are_binary_safe_and_typed() {
    let server = common::shared_server();
    let key = b"harness:binary";
    let value: &[u8] = b"a\r\nb\0\xff$3\r\n";
    assert_eq!(
        server.cmd_bytes(&[b"HSET", key, b"f", value]),
        Reply::Int(1)
    );
    assert_eq!(
        server.cmd_bytes(&[b"HGET", key, b"f"]),
        Reply::Bulk(value.to_vec())
    );
    assert_eq!(server.cmd_bytes(&[b"HGET", key, b"missing"]), Reply::Nil);
    assert!(server.cmd_bytes(&[b"NOSUCHCOMMAND"]).is_error());
    assert!(
        server
            .cmd(&["NOSUCHCOMMAND"])
            .starts_with("ERR unknown command")
    );
    let all = server.cmd_bytes(&[b"HGETALL", key]).unwrap_array();
    assert_eq!(
        all,
        vec![Reply::Bulk(b"f".to_vec()), Reply::Bulk(value.to_vec())]
    );
    server.cmd(&["DEL", "harness:binary"]);
}

#[test]
fn restart_keeps_port_and_aof_data() {
    let mut server = RedisServer::start_with(ServerOptions {
        appendonly: true,
        ..ServerOptions::default()
    });
    let port = server.port();
    let old_pid = server.pid();
    server.cmd(&["SET", "k", "v"]);

    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), old_pid);
    assert_eq!(
        server.cmd(&["GET", "k"]),
        "v",
        "AOF data must survive SIGKILL"
    );

    // SHUTDOWN flushes the AOF; restarting after it works too.
    server.cmd(&["SET", "k2", "v2"]);
    server.shutdown();
    assert!(!server.is_running());
    server.restart();
    assert_eq!(server.cmd(&["MGET", "k", "k2"]), "v\nv2");
}

#[test]
fn restart_without_persistence_loses_data() {
    let mut server = RedisServer::start();
    let port = server.port();
    server.cmd(&["SET", "k", "v"]);
    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.cmd_bytes(&[b"GET", b"k"]), Reply::Nil);
}

#[test]
fn drop_kills_process_and_removes_dir() {
    let server = RedisServer::start_with(ServerOptions {
        enable_debug_command: true,
        ..ServerOptions::default()
    });
    assert!(server.cmd(&["DEBUG", "HELP"]).contains("DEBUG"));
    let pid = server.pid().expect("running");
    let dir = server.dir().to_path_buf();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(server);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

#[test]
fn cached_connection_survives_client_kill() {
    let server = RedisServer::start();
    assert_eq!(server.cmd(&["PING"]), "PONG");
    // Kill every normal connection, including the harness's cached one.
    let mut other = server.connect();
    other.cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    assert_eq!(server.cmd(&["PING"]), "PONG");
}

#[test]
fn commandstats_delta_is_exactly_what_was_sent() {
    let server = RedisServer::start();
    let before = server.commandstats();
    // Snapshots in between must not show up either.
    let _ = server.commandstats();
    server.cmd(&["SET", "a", "1"]);
    server.cmd(&["SET", "b", "2"]);
    server.cmd(&["GET", "a"]);
    server.cmd(&["CLIENT", "SETNAME", "harness-test"]);
    // An INFO sent by anything other than a snapshot counts.
    server.cmd(&["INFO", "server"]);
    let delta = server.commandstats().delta_since(&before);
    assert_eq!(
        delta,
        CommandStats::from_pairs(&[("set", 2), ("get", 1), ("client|setname", 1), ("info", 1)])
    );
    assert_eq!(delta.total(), 5);
    assert_eq!(delta.get("SET"), 2);
    assert_eq!(delta.get("hget"), 0);

    // An idle interval gives an empty delta.
    let before = server.commandstats();
    assert_eq!(
        server.commandstats().delta_since(&before),
        CommandStats::default()
    );
}

#[test]
fn cluster_is_ok_and_routes_hash_tags_to_different_nodes() {
    let cluster = common::shared_cluster();
    assert_eq!(cluster.nodes().len(), 3);
    assert_eq!(cluster.urls().len(), 3);
    for node in cluster.nodes() {
        let info = node.cmd(&["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    }

    // Local slot computation agrees with Redis, hash tags included.
    let node = &cluster.nodes()[0];
    for key in [
        "",
        "foo",
        "{user1000}.following",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "{a}b",
    ] {
        let slot = node.cmd(&["CLUSTER", "KEYSLOT", key]);
        assert_eq!(slot, key_slot(key.as_bytes()).to_string(), "key {key:?}");
    }

    // Tags spread over all three nodes; each key is writable on its owner
    // and redirected elsewhere.
    let mut owners = HashSet::new();
    for i in 0..30 {
        let key = format!("{{tag{i}}}:harness");
        let owner = cluster.node_for_key(&key);
        owners.insert(owner.port());
        assert_eq!(owner.cmd(&["SET", &key, "v"]), "OK");
        for other in cluster.nodes().iter().filter(|n| n.port() != owner.port()) {
            let reply = other.cmd(&["GET", &key]);
            assert!(reply.starts_with("MOVED "), "{reply}");
            assert!(
                reply.ends_with(&format!("127.0.0.1:{}", owner.port())),
                "{reply}"
            );
        }
        owner.cmd(&["DEL", &key]);
    }
    assert_eq!(owners.len(), 3);
}

#[test]
fn cluster_commandstats_sum_over_nodes() {
    let cluster = RedisCluster::start();
    let before = cluster.commandstats();
    for node in cluster.nodes() {
        node.cmd(&["PING"]);
    }
    cluster.node_for_key("{x}").cmd(&["SET", "{x}", "1"]);
    let delta = cluster.commandstats().delta_since(&before);
    assert_eq!(delta, CommandStats::from_pairs(&[("ping", 3), ("set", 1)]));
}

#[test]
fn shared_server_is_one_instance() {
    let ports: HashSet<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| common::shared_server().port()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(ports.len(), 1);
    assert_eq!(common::shared_server().cmd(&["PING"]), "PONG");
}
