//! A closed-loop HTTP/1.1 client: N keep-alive connections, each sending its
//! next request as soon as the previous response is read, until a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::{COOKIE, HOST, HeaderValue, SET_COOKIE};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What a load run sends.
#[derive(Clone)]
pub struct Load {
    pub addr: SocketAddr,
    pub path: &'static str,
    /// Cookies to rotate over; connection `c` sends `cookies[c]`,
    /// `cookies[c + n]`, ... (so with as many sessions as a multiple of the
    /// connections, no two connections share a session). Empty: no cookie.
    pub cookies: Arc<Vec<HeaderValue>>,
    pub connections: usize,
}

/// What a load run got back.
#[derive(Default)]
pub struct Outcome {
    pub ok: u64,
    pub failed: u64,
    /// Latency of every response, in microseconds.
    pub latencies: Vec<u32>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn responses(&self) -> u64 {
        self.ok + self.failed
    }
}

/// Runs `load` for `duration`.
pub async fn run(load: &Load, duration: Duration) -> Outcome {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..load.connections)
        .map(|c| tokio::spawn(connection(load.clone(), c, deadline)))
        .collect();
    let mut outcome = Outcome::default();
    for task in tasks {
        if let Ok(part) = task.await {
            outcome.ok += part.ok;
            outcome.failed += part.failed;
            outcome.latencies.extend(part.latencies);
        }
    }
    outcome.elapsed = start.elapsed();
    outcome
}

type Sender = http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}

fn request(load: &Load, n: usize) -> Request<Empty<Bytes>> {
    let mut req = Request::builder().uri(load.path);
    if !load.cookies.is_empty() {
        req = req.header(COOKIE, load.cookies[n % load.cookies.len()].clone());
    }
    req.header(HOST, "127.0.0.1")
        .body(Empty::new())
        .unwrap_or_default()
}

async fn connection(load: Load, index: usize, deadline: Instant) -> Outcome {
    let mut outcome = Outcome {
        latencies: Vec::with_capacity(1 << 16),
        ..Outcome::default()
    };
    let mut n = index;
    let mut sender = None;
    while Instant::now() < deadline {
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match connect(load.addr).await {
                Some(s) => sender.insert(s),
                None => {
                    outcome.failed += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if s.ready().await.is_err() {
            outcome.failed += 1;
            sender = None;
            continue;
        }
        let req = request(&load, n);
        n += load.connections;
        let start = Instant::now();
        let ok = match s.send_request(req).await {
            Ok(res) => {
                let ok = res.status().is_success();
                res.into_body().collect().await.is_ok() && ok
            }
            Err(_) => false,
        };
        outcome
            .latencies
            .push(u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX));
        if ok {
            outcome.ok += 1;
        } else {
            outcome.failed += 1;
            // The connection may be unusable; open a fresh one.
            sender = None;
        }
    }
    outcome
}

/// One request; returns the status, the body and the `name=value` of the
/// first `Set-Cookie`.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&HeaderValue>,
) -> Result<(u16, String, Option<HeaderValue>), String> {
    let mut sender = connect(addr)
        .await
        .ok_or_else(|| format!("cannot connect to {addr}"))?;
    let mut req = Request::builder().uri(path).header(HOST, "127.0.0.1");
    if let Some(cookie) = cookie {
        req = req.header(COOKIE, cookie.clone());
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let set_cookie = res
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .and_then(|pair| HeaderValue::from_str(pair.trim()).ok());
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((
        status,
        String::from_utf8_lossy(&body).into_owned(),
        set_cookie,
    ))
}
