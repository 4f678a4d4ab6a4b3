//! The store's own cost per operation, without HTTP: for instruction counts
//! (callgrind) of `RedisStore::load` and `RedisStore::save` on the typical
//! session.
//!
//! ```text
//! redis-server --port 47390 --save '' &
//! cargo build --release -p loadtest --example store_ops
//! valgrind --tool=callgrind target/release/examples/store_ops redis://127.0.0.1:47390 load 0
//! valgrind --tool=callgrind target/release/examples/store_ops redis://127.0.0.1:47390 load 20000
//! ```
//!
//! (instructions of the second run - those of the first) / 20000 = the
//! instructions of one operation, client side: key naming, the connection
//! layer, redis-rs, the reply, opening (or sealing) the record. `op` is
//! `load` (a load of one of 256 logged-in sessions, no touch due), `save`
//! (a save of a loaded session with one value changed; the load is counted
//! too, subtract `load`) or `noop` (setup only).

use std::time::Duration;

use tower_redis_sessions::store::{Record, SaveOutcome, SessionStore, Token};
use tower_redis_sessions::{Keyring, RedisStore, StoreConfig};

const SESSIONS: usize = 256;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or("usage: store_ops URL load|save N")?;
    let op = args.next().ok_or("usage: store_ops URL load|save N")?;
    let n: usize = args
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or("usage: store_ops URL load|save N")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(&url, &op, n))
}

async fn run(url: &str, op: &str, n: usize) -> Result<(), String> {
    let keyring = Keyring::new([42u8; 32]).map_err(|e| e.to_string())?;
    let config = StoreConfig::new(keyring).prefix("ops:");
    let store = RedisStore::builder(config)
        .pool_size(1)
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let mut tokens: Vec<Token> = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        let user = format!("user{i}");
        let token = store.new_token(Some(&user)).map_err(|e| e.to_string())?;
        let mut record = Record::new(token.id(), "web", store.now());
        record.user = Some(user);
        record.idle_timeout = Some(Duration::from_secs(24 * 3600));
        record.absolute_deadline = Some(store.now() + 30 * 24 * 3600 * 1000);
        for (i, key) in (0..10).map(|i| (i, format!("k{i}"))) {
            let value = format!("{i:02}{}", "x".repeat(94));
            record.data.insert(key, ciborium::Value::Text(value));
        }
        match store.save(&token, &record).await {
            Ok(SaveOutcome::Saved { .. }) => tokens.push(token),
            other => return Err(format!("setup save: {other:?}")),
        }
    }
    let mut done = 0u64;
    for i in 0..n {
        let token = &tokens[i % SESSIONS];
        let Some(mut record) = store.load(token).await.map_err(|e| e.to_string())? else {
            return Err("a session went missing".to_owned());
        };
        if op == "save" {
            let count = record
                .data
                .get("n")
                .and_then(|v| v.as_integer())
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0);
            record
                .data
                .insert("n".to_owned(), ciborium::Value::Integer((count + 1).into()));
            match store.save(token, &record).await {
                Ok(SaveOutcome::Saved { .. }) => {}
                other => return Err(format!("save: {other:?}")),
            }
        }
        done += 1;
    }
    eprintln!("{op}: {done} operations");
    Ok(())
}
