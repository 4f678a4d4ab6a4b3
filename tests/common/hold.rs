//! A loopback TCP proxy in front of a Redis that can hold one command at the
//! exact step a race needs: the first client command containing a needle
//! (for instance the name of a library function) is kept from Redis until
//! the test releases it, and the test learns when it is held. The rest of the
//! traffic passes untouched. So "request A's second store call reaches Redis
//! only after request B finished" is arranged, not hoped for.
//!
//! Not registered in `common/mod.rs`; tests include it with
//!
//! ```ignore
//! #[path = "common/hold.rs"]
//! mod hold;
//! ```
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// See the module docs.
pub struct HoldProxy {
    pub port: u16,
    armed: Arc<Mutex<Option<Trap>>>,
    task: tokio::task::JoinHandle<()>,
}

/// An armed hold: what to look for, whom to tell, what to wait for.
struct Trap {
    needle: Vec<u8>,
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// One held command, as the test sees it.
pub struct Hold {
    reached: Option<oneshot::Receiver<()>>,
    release: Option<oneshot::Sender<()>>,
}

impl Hold {
    /// Waits until the proxy holds the command (panics after 10 s: the
    /// command never came, which is a failure of the test's premise).
    pub async fn reached(&mut self) {
        if let Some(reached) = self.reached.take() {
            tokio::time::timeout(Duration::from_secs(10), reached)
                .await
                .expect("the held command was never sent")
                .expect("the proxy went away");
        }
    }

    /// Lets the held command (and everything after it) through.
    pub fn release(&mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release();
    }
}

impl HoldProxy {
    pub async fn start(redis_port: u16) -> HoldProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed: Arc<Mutex<Option<Trap>>> = Arc::default();
        let shared = armed.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, redis_port, shared.clone()));
            }
        });
        HoldProxy { port, armed, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Holds the next command containing `needle`, on whichever connection
    /// it comes, until [`Hold::release`] (or the `Hold` is dropped).
    pub fn hold(&self, needle: &str) -> Hold {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.armed.lock().unwrap() = Some(Trap {
            needle: needle.as_bytes().to_vec(),
            reached: reached_tx,
            release: release_rx,
        });
        Hold {
            reached: Some(reached_rx),
            release: Some(release_tx),
        }
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, redis_port: u16, armed: Arc<Mutex<Option<Trap>>>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let trap = {
            let mut armed = armed.lock().unwrap();
            let hit = armed.as_ref().is_some_and(|t| {
                buf[..n]
                    .windows(t.needle.len())
                    .any(|w| w == t.needle.as_slice())
            });
            if hit { armed.take() } else { None }
        };
        if let Some(trap) = trap {
            let _ = trap.reached.send(());
            let _ = trap.release.await;
        }
        if server_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    down.abort();
}
