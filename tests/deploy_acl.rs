//! A restricted Redis ACL user, on real servers: the minimal ACL with and
//! without the right to load functions (the lines the README documents),
//! `LibraryMode::Load` and `LibraryMode::Verify`, and the clear errors (at
//! start-up) or 503s (lazy stores) when the library or a permission is
//! missing.

mod common;
#[path = "common/http.rs"]
mod http;

use std::sync::Arc;

use common::RedisServer;
use common::deploy::round_trip;
use common::stores::{test_keyring, unique_prefix};
use tower_redis_sessions::store::{LibraryMode, SessionStore, library_name, library_source};
use tower_redis_sessions::{RedisStore, StoreConfig, StoreError};

/// The commands the session functions run inside Redis (ACLs apply to them
/// too), and what the client itself sends: `FCALL`, and `PING` + `UNWATCH`
/// when the pool checks a returned connection.
const COMMANDS: &str = "+fcall \
    +hget +hmget +hset +del +exists +persist +pexpireat \
    +zadd +zrem +zrange +zrangebyscore +zcount +zscore +zcard +zremrangebyscore +pexpiretime +cluster|keyslot +cluster|nodes";

/// `ACL SETUSER <user> ...` for a user that may also load the library
/// (`LibraryMode::Load`), keys under `prefix` only.
fn acl_load(prefix: &str) -> String {
    format!(
        "on >pw resetkeys ~{prefix}* resetchannels -@all {COMMANDS} +function|load +function|list"
    )
}

/// The same without `+function|load` (`LibraryMode::Verify`).
fn acl_verify(prefix: &str) -> String {
    format!("on >pw resetkeys ~{prefix}* resetchannels -@all {COMMANDS} +function|list")
}

fn set_user(server: &RedisServer, user: &str, rules: &str) {
    let mut args = vec!["ACL", "SETUSER", user, "reset"];
    args.extend(rules.split_whitespace());
    assert_eq!(server.cmd(&args), "OK", "ACL SETUSER {user} {rules}");
}

fn url(server: &RedisServer, user: &str) -> String {
    format!("redis://{user}:pw@127.0.0.1:{}", server.port())
}

async fn store(
    server: &RedisServer,
    user: &str,
    prefix: &str,
    mode: LibraryMode,
    lazy: bool,
) -> Result<RedisStore, StoreError> {
    RedisStore::builder(StoreConfig::new(test_keyring()).prefix(prefix))
        .pool_size(2)
        .library(mode)
        .lazy(lazy)
        .connect(&url(server, user))
        .await
}

/// Loads the library as the default (admin) user.
fn preload(server: &RedisServer) {
    let reply = server.cmd(&["FUNCTION", "LOAD", "REPLACE", library_source()]);
    assert_eq!(reply, library_name(), "FUNCTION LOAD");
}

fn has_library(server: &RedisServer) -> bool {
    server
        .cmd(&["FUNCTION", "LIST", "LIBRARYNAME", library_name()])
        .contains(library_name())
}

/// What the near cache needs besides (on a single Redis), as the README says.
const NEAR_CACHE_COMMANDS: &str = "+client|tracking +ping +role";

/// Loads until `store` serves `token`'s session from its near cache; false
/// if it never did within 2 s.
async fn served_from_cache(store: &RedisStore, token: &tower_redis_sessions::store::Token) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        let hits = store.near_cache_stats().map_or(0, |s| s.hits);
        assert!(store.load(token).await.unwrap().is_some());
        if store.near_cache_stats().map_or(0, |s| s.hits) > hits {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_near_cache_works_with_its_two_rights_and_is_skipped_without_them() {
    let server = RedisServer::start();
    let prefix = unique_prefix("acl");
    set_user(
        &server,
        "cached",
        &format!("{} {NEAR_CACHE_COMMANDS}", acl_load(&prefix)),
    );
    set_user(&server, "plain", &acl_load(&prefix));
    let cached = store(&server, "cached", &prefix, LibraryMode::Load, false)
        .await
        .unwrap();
    let plain = store(&server, "plain", &prefix, LibraryMode::Load, false)
        .await
        .unwrap();
    let token = plain.new_token(None).unwrap();
    let record = tower_redis_sessions::store::Record::new(token.id(), "web", plain.now());
    assert!(matches!(
        plain.save(&token, &record).await.unwrap(),
        tower_redis_sessions::store::SaveOutcome::Saved { .. }
    ));
    assert!(
        served_from_cache(&cached, &token).await,
        "the cache comes up"
    );
    // Refused CLIENT TRACKING: every call works, none from a cache.
    assert!(
        !served_from_cache(&plain, &token).await,
        "no cache without the rights"
    );
    assert_eq!(plain.near_cache_stats().map(|s| s.heartbeats), Some(0));
    round_trip(&plain, "ada").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_without_the_heartbeat_is_a_refusal_not_a_reconnection_loop() {
    let server = RedisServer::start();
    let prefix = unique_prefix("acl");
    set_user(
        &server,
        "noping",
        &format!("{} +client|tracking", acl_load(&prefix)),
    );
    let store = store(&server, "noping", &prefix, LibraryMode::Load, false)
        .await
        .unwrap();
    round_trip(&store, "ada").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let stats = store.near_cache_stats().unwrap();
    // Tracking on, the heartbeat refused: given up at set-up (emptied when
    // made and when given up), asked again only after 30 s.
    assert_eq!(stats.heartbeats, 0, "{stats:?}");
    assert!(
        stats.flushes <= 4,
        "connections made and lost in a loop: {stats:?}"
    );
    round_trip(&store, "grace").await.unwrap();
}

#[tokio::test]
async fn load_mode_with_a_user_that_may_load_functions() {
    let server = RedisServer::start();
    let prefix = unique_prefix("acl");
    set_user(&server, "sessions", &acl_load(&prefix));
    let store = store(&server, "sessions", &prefix, LibraryMode::Load, false)
        .await
        .unwrap();
    assert!(has_library(&server));
    round_trip(&store, "ada").await.unwrap();
    // Lost and loaded again by the store, with the same user.
    assert_eq!(server.cmd(&["FUNCTION", "FLUSH"]), "OK");
    round_trip(&store, "ada").await.unwrap();
    assert!(has_library(&server));
}

#[tokio::test]
async fn verify_mode_with_a_preloaded_library_and_a_user_that_may_not_load() {
    let server = RedisServer::start();
    let prefix = unique_prefix("acl");
    set_user(&server, "sessions", &acl_verify(&prefix));
    preload(&server);
    let store = store(&server, "sessions", &prefix, LibraryMode::Verify, false)
        .await
        .unwrap();
    round_trip(&store, "grace").await.unwrap();
    // The user really may not load it.
    let mut conn = server.connect();
    assert_eq!(conn.cmd(&["AUTH", "sessions", "pw"]), "OK");
    let refused = conn.cmd(&["FUNCTION", "LOAD", "REPLACE", library_source()]);
    assert!(refused.starts_with("NOPERM"), "{refused}");
}

#[tokio::test]
async fn verify_mode_with_the_library_missing_says_which_and_how_to_load_it() {
    let server = RedisServer::start();
    let prefix = unique_prefix("acl");
    set_user(&server, "sessions", &acl_verify(&prefix));
    let error = store(&server, "sessions", &prefix, LibraryMode::Verify, false)
        .await
        .expect_err("a missing library fails the start-up");
    eprintln!("{error}");
    let StoreError::Config(message) = &error else {
        panic!("expected a configuration error, got {error:?}");
    };
    assert!(message.contains(library_name()), "{message}");
    assert!(message.contains("FUNCTION LOAD"), "{message}");
    assert!(message.contains("print_library"), "{message}");
    assert!(!has_library(&server), "Verify never loads");
}

#[tokio::test]
async fn load_mode_with_a_user_that_may_not_load_names_the_permission() {
    let server = RedisServer::start();
    let prefix = unique_prefix("acl");
    set_user(&server, "sessions", &acl_verify(&prefix));
    let error = store(&server, "sessions", &prefix, LibraryMode::Load, false)
        .await
        .expect_err("FUNCTION LOAD is refused");
    eprintln!("{error}");
    let StoreError::Config(message) = &error else {
        panic!("expected a configuration error, got {error:?}");
    };
    assert!(message.contains("+function|load"), "{message}");
    assert!(message.contains("Verify"), "{message}");
}

#[tokio::test]
async fn verify_mode_with_a_user_that_may_not_list_functions_names_the_permission() {
    let server = RedisServer::start();
    let prefix = unique_prefix("acl");
    set_user(
        &server,
        "sessions",
        &format!("on >pw resetkeys ~{prefix}* resetchannels -@all {COMMANDS}"),
    );
    preload(&server);
    let error = store(&server, "sessions", &prefix, LibraryMode::Verify, false)
        .await
        .expect_err("FUNCTION LIST is refused");
    eprintln!("{error}");
    let StoreError::Config(message) = &error else {
        panic!("expected a configuration error, got {error:?}");
    };
    assert!(message.contains("+function|list"), "{message}");
}

#[tokio::test]
async fn function_disabled_is_a_clear_error() {
    // Managed services rename or disable commands; here FUNCTION is gone.
    let server = RedisServer::start_with(common::ServerOptions {
        // redis-server takes `--name` arguments verbatim: `rename-command FUNCTION ""`.
        extra: vec![("rename-command FUNCTION".to_owned(), String::new())],
        ..Default::default()
    });
    let prefix = unique_prefix("acl");
    for mode in [LibraryMode::Load, LibraryMode::Verify] {
        let error = RedisStore::builder(StoreConfig::new(test_keyring()).prefix(&prefix))
            .library(mode)
            .connect(&server.url())
            .await
            .expect_err("FUNCTION is disabled");
        eprintln!("{error}");
        let StoreError::Config(message) = &error else {
            panic!("expected a configuration error, got {error:?}");
        };
        assert!(message.contains("FUNCTION"), "{message}");
        assert!(message.contains(&format!("{mode:?}")), "{message}");
    }
}

#[tokio::test]
async fn lazy_stores_answer_503_until_the_library_is_there() {
    let server = RedisServer::start();
    let prefix = unique_prefix("acl");
    set_user(&server, "sessions", &acl_verify(&prefix));
    for mode in [LibraryMode::Verify, LibraryMode::Load] {
        let store = store(&server, "sessions", &prefix, mode, true)
            .await
            .unwrap();
        let token = store.new_token(None).unwrap();
        let error = store.load(&token).await.expect_err("no library yet");
        assert!(error.is_unavailable(), "{mode:?}: {error:?}");

        // Through the layer: 503, never 500.
        let app = http::Store::Redis(Arc::new(store)).demo();
        let web = http::Server::start(app).await;
        let browser = http::Browser::new(&web);
        let status = browser.post("/api/incr/hits").await.status();
        assert_eq!(status, 503, "{mode:?}");
    }

    // An admin loads it: the same running store serves, no restart.
    preload(&server);
    let store = store(&server, "sessions", &prefix, LibraryMode::Verify, true)
        .await
        .unwrap();
    let app = http::Store::Redis(Arc::new(store)).demo();
    let web = http::Server::start(app).await;
    let browser = http::Browser::new(&web);
    assert_eq!(browser.post("/api/incr/hits").await.status(), 200);
}

#[tokio::test]
async fn the_print_library_example_prints_what_verify_expects() {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join("print_library");
    assert!(
        path.is_file(),
        "{} is not built (run `cargo build --examples --all-features`)",
        path.display()
    );
    let source = std::process::Command::new(&path).output().unwrap();
    assert!(source.status.success());
    let source = String::from_utf8(source.stdout).unwrap();
    assert_eq!(source, library_source());
    let names = std::process::Command::new(&path)
        .arg("--name")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(names.stdout).unwrap().trim(),
        library_name()
    );

    let server = RedisServer::start();
    assert_eq!(server.cmd(&["FUNCTION", "LOAD", &source]), library_name());
    let prefix = unique_prefix("acl");
    set_user(&server, "sessions", &acl_verify(&prefix));
    let store = store(&server, "sessions", &prefix, LibraryMode::Verify, false)
        .await
        .unwrap();
    round_trip(&store, "lin").await.unwrap();
}

/// The commands the library runs inside Redis, from its source:
/// `redis.call('NAME', ...)`, with the subcommand of container commands
/// (`CLUSTER KEYSLOT` is `+cluster|keyslot`).
fn commands_in_the_library() -> std::collections::BTreeSet<String> {
    let source = library_source();
    let mut found = std::collections::BTreeSet::new();
    for call in ["redis.call(", "redis.pcall("] {
        for (at, _) in source.match_indices(call) {
            let rest = &source[at + call.len()..];
            let rest = &rest[..rest.find(')').unwrap_or(rest.len())];
            let mut args = rest
                .split(',')
                .map(|a| a.trim().trim_matches('\'').trim_matches('"'));
            let name = args.next().unwrap_or_default().to_ascii_lowercase();
            let rule = if name == "cluster" {
                format!(
                    "+{name}|{}",
                    args.next().unwrap_or_default().to_ascii_lowercase()
                )
            } else {
                format!("+{name}")
            };
            found.insert(rule);
        }
    }
    found
}

/// The ACL documented in the README and used by these tests lists exactly
/// the commands the library runs (plus `FCALL` and `FUNCTION`): when the
/// library starts calling another command, this fails until the docs say so.
#[test]
fn the_documented_acl_covers_the_library_exactly() {
    let expected: std::collections::BTreeSet<String> = commands_in_the_library()
        .into_iter()
        .chain(["+fcall".to_owned()])
        .collect();
    let tested: std::collections::BTreeSet<String> =
        COMMANDS.split_whitespace().map(str::to_owned).collect();
    assert_eq!(
        tested, expected,
        "tests/deploy_acl.rs COMMANDS vs the library"
    );

    let readme = include_str!("../README.md");
    let lines: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("ACL SETUSER sessions "))
        .collect();
    assert_eq!(lines.len(), 2, "the README documents two ACL variants");
    for (line, function) in lines.iter().zip([
        &["+function|load", "+function|list"][..],
        &["+function|list"][..],
    ]) {
        let documented: std::collections::BTreeSet<String> = line
            .split_whitespace()
            .filter(|w| w.starts_with('+'))
            .map(str::to_owned)
            .collect();
        let want: std::collections::BTreeSet<String> = expected
            .iter()
            .cloned()
            .chain(function.iter().map(|f| (*f).to_owned()))
            .collect();
        assert_eq!(documented, want, "README: {line}");
    }
}
