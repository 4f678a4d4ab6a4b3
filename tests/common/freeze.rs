//! A loopback TCP proxy in front of a Redis that can hold a client's
//! invalidation connection silent (a partition that closes nothing): the
//! connections that turned `CLIENT TRACKING` on before [`FreezeProxy::freeze`]
//! forward nothing, either way, until [`FreezeProxy::thaw`]; every other
//! connection (data connections, a tracking connection made afterwards)
//! passes untouched. What is held is kept and delivered on thaw, in order.
//!
//! Not registered in `common/mod.rs`; tests include it with
//!
//! ```ignore
//! #[path = "common/freeze.rs"]
//! mod freeze;
//! ```
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// See the module docs.
pub struct FreezeProxy {
    pub port: u16,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    /// `Some(n)`: tracking connections among the first `n` accepted are held.
    frozen: watch::Sender<Option<u64>>,
    accepted: AtomicU64,
    /// Bytes held so far (server to client and back).
    held: AtomicU64,
}

impl FreezeProxy {
    pub async fn start(redis_port: u16) -> FreezeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, _) = watch::channel(None);
        let state = Arc::new(State {
            frozen,
            accepted: AtomicU64::new(0),
            held: AtomicU64::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let n = shared.accepted.fetch_add(1, Ordering::SeqCst);
                let state = shared.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let tracking = Arc::new(AtomicBool::new(false));
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, n, tracking.clone(), state.clone(), true);
                    let down = pump(sr, cw, n, tracking, state, false);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        FreezeProxy { port, state, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Holds the tracking connections accepted so far.
    pub fn freeze(&self) {
        let n = self.state.accepted.load(Ordering::SeqCst);
        self.state.frozen.send_replace(Some(n));
    }

    /// Lets everything held through.
    pub fn thaw(&self) {
        self.state.frozen.send_replace(None);
    }

    /// Bytes held since the start.
    pub fn held_bytes(&self) -> u64 {
        self.state.held.load(Ordering::SeqCst)
    }
}

impl Drop for FreezeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `CLIENT TRACKING` as a client sends it (RESP).
const TURN_ON: &[u8] = b"CLIENT\r\n$8\r\nTRACKING\r\n";

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    n: u64,
    tracking: Arc<AtomicBool>,
    state: Arc<State>,
    upstream: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut frozen = state.frozen.subscribe();
    loop {
        let Ok(read) = from.read(&mut buf).await else {
            return;
        };
        if read == 0 {
            let _ = to.shutdown().await;
            return;
        }
        let chunk = &buf[..read];
        if upstream
            && chunk
                .windows(TURN_ON.len())
                .any(|w| w.eq_ignore_ascii_case(TURN_ON))
        {
            tracking.store(true, Ordering::SeqCst);
        }
        let held = |f: &Option<u64>| matches!(f, Some(limit) if n < *limit);
        if tracking.load(Ordering::SeqCst) && held(&frozen.borrow()) {
            state.held.fetch_add(read as u64, Ordering::SeqCst);
            if frozen.wait_for(|f| !held(f)).await.is_err() {
                return;
            }
        }
        if to.write_all(chunk).await.is_err() {
            return;
        }
    }
}
