//! Soak: the compiled demo (`target/<profile>/examples/demo`) on a private
//! Redis with AOF (`appendfsync always`), under mixed traffic from many
//! clients (reads, increments through `Session::update`, login, logout,
//! revoke-others, listings), with Redis killed and restarted once in the
//! middle. Afterwards: no panic in the demo's output, every increment
//! acknowledged with a 2xx is in its session exactly once, every session
//! that disappeared was ended by design (a logout, or a revoke-others by
//! the other client of the same user), and the demo's memory (VmRSS) after
//! the run is within 20 % of its memory after warm-up.
//!
//! Short form (CI, part of `cargo test`): `SOAK_SECS` seconds, default 20.
//! Long form, by hand:
//!
//! ```text
//! SOAK_SECS=120 cargo test --release --test soak -- --nocapture
//! ```
//!
//! The test builds the demo with `cargo build --example demo` (same profile
//! and features as the test) when the binary is missing or older than the
//! sources; `cargo test --all-targets` has built it already.

mod common;
#[path = "common/process.rs"]
mod process;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::cookie::{CookieStore as _, Jar};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use common::{RedisServer, ServerOptions};
use process::App;

/// Clients, in pairs: both clients of a pair log in as the same user, so
/// one's revoke-others ends the other's session.
const CLIENTS: usize = 16;
const DEFAULT_SECS: u64 = 20;
/// Allowed growth of the demo's RSS between warm-up and the end.
const RSS_MARGIN: f64 = 0.20;

// ------------------------------------------------------------ the demo

/// The compiled demo on `redis_url` (its process harness is shared with the
/// other tests that run examples: `common/process.rs`).
fn start_demo(redis_url: &str) -> (App, String) {
    let demo = App::start(
        "demo",
        &[
            ("REDIS_URL", redis_url),
            ("BIND", "127.0.0.1:0"),
            (
                "SESSION_SECRET",
                "soak-test-secret-soak-test-secret-0123456789",
            ),
        ],
        &["REDIS_CLUSTER_URLS", "COOKIE_SECURE"],
    );
    let base = demo.wait_listening();
    (demo, base)
}

// ------------------------------------------------------------ clients

/// What a client's session must hold, from the answers it got.
#[derive(Debug, Default)]
struct Ledger {
    /// Whether the client's token opens a session, as far as it knows.
    present: bool,
    user: Option<String>,
    /// Per key, the value it must hold: the number of acknowledged
    /// increments since the session began.
    values: Counts,
    /// Per key, increments answered 503 since the value was last seen: each
    /// may or may not have been applied (its answer was lost).
    unsure: Counts,
    /// When those increments were sent and answered, per key.
    unsure_at: BTreeMap<String, Vec<(Duration, Duration)>>,
    /// A logout or login answered 503 since the session was last seen: it
    /// may have ended.
    may_have_ended: bool,
    /// One entry per login acknowledged while the session may just have
    /// ended (a revocation, or a logout answered 503), until a read tells:
    /// each such login carried the values over, or found no session left
    /// and started empty. Each entry counts the increments acknowledged
    /// (and answered 503) since that login.
    resync: Vec<(Counts, Counts)>,
    /// The partner's revoke count when the last request that found the
    /// session alive was sent.
    partner_revokes_seen: u64,
}

type Counts = BTreeMap<String, i64>;

impl Ledger {
    fn reset(&mut self) {
        *self = Ledger {
            partner_revokes_seen: self.partner_revokes_seen,
            ..Ledger::default()
        };
    }
}

/// Whether `data` holds, for each key, `base + since` plus at most
/// `base_unsure + since_unsure` (absent keys count as 0).
/// The element-wise sums of `segments`.
fn sum(segments: &[(Counts, Counts)]) -> (Counts, Counts) {
    let mut total = (Counts::new(), Counts::new());
    for (acknowledged, unsure) in segments {
        for (k, v) in acknowledged {
            *total.0.entry(k.clone()).or_default() += v;
        }
        for (k, v) in unsure {
            *total.1.entry(k.clone()).or_default() += v;
        }
    }
    total
}

fn fits(
    data: &serde_json::Map<String, Value>,
    (base, base_unsure): (&Counts, &Counts),
    (since, since_unsure): (&Counts, &Counts),
) -> bool {
    let get = |m: &Counts, k: &str| m.get(k).copied().unwrap_or(0);
    let keys: std::collections::BTreeSet<&str> = base
        .keys()
        .chain(since.keys())
        .map(String::as_str)
        .chain(data.keys().map(String::as_str))
        .collect();
    keys.into_iter().all(|k| {
        let Some(value) = data.get(k).map_or(Some(0), Value::as_i64) else {
            return false;
        };
        let expected = get(base, k) + get(since, k);
        let slack = get(base_unsure, k) + get(since_unsure, k);
        expected <= value && value <= expected + slack
    })
}

/// Counts for the report, and anything that went wrong.
#[derive(Debug, Default)]
struct Tally {
    statuses: BTreeMap<String, BTreeMap<u16, u64>>,
    acknowledged_increments: u64,
    unsure_increments: u64,
    unsure_applied: u64,
    ended_by_design: u64,
    /// When each 503'd increment that turned out applied was answered.
    unsure_applied_at: Vec<String>,
    violations: Vec<String>,
    slowest: Duration,
    /// From the sending of the first request answered 5xx to the answer of
    /// the last.
    failures: Option<(Duration, Duration)>,
}

struct Shared {
    /// Per client: revoke-others requests sent (counted before sending).
    revokes_started: Vec<AtomicU64>,
    /// Per client: revoke-others requests answered (whatever the answer).
    revokes_finished: Vec<AtomicU64>,
    running: AtomicBool,
    /// From just before Redis was killed to just after.
    killed: Mutex<Option<(Duration, Duration)>>,
    tally: Mutex<Tally>,
    origin: Instant,
}

/// A tiny deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

struct Client {
    index: usize,
    partner: usize,
    user: String,
    http: reqwest::Client,
    jar: Arc<Jar>,
    base: String,
    ledger: Ledger,
    rng: Rng,
    shared: Arc<Shared>,
}

impl Client {
    fn token(&self) -> Option<String> {
        let url = reqwest::Url::parse(&self.base).unwrap();
        let header = self.jar.cookies(&url)?;
        cookie::Cookie::split_parse(header.to_str().unwrap().to_owned())
            .filter_map(Result::ok)
            .find(|c| c.name() == "session")
            .map(|c| c.value().to_owned())
    }

    /// The partner's revoke-others requests answered so far: read before
    /// sending a request, for `Ledger::partner_revokes_seen`.
    fn partner_revokes(&self) -> u64 {
        self.shared.revokes_finished[self.partner].load(Ordering::SeqCst)
    }

    /// Whether the partner sent a revoke-others that may have taken effect
    /// after the last request that found the session alive began: one
    /// that was not answered before that request was sent.
    fn partner_may_have_revoked(&self) -> bool {
        self.ledger.user.is_some()
            && self.shared.revokes_started[self.partner].load(Ordering::SeqCst)
                > self.ledger.partner_revokes_seen
    }

    fn violation(&self, what: String) {
        let at = self.shared.origin.elapsed();
        self.shared
            .tally
            .lock()
            .unwrap()
            .violations
            .push(format!("client {} at {at:?}: {what}", self.index));
    }

    /// Sends one request; returns the status, the body (JSON or text) and
    /// the token before and after.
    async fn send(
        &self,
        op: &str,
        request: reqwest::RequestBuilder,
    ) -> (u16, Value, Option<String>, Option<String>) {
        let before = self.token();
        let started = Instant::now();
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let took = started.elapsed();
        let after = self.token();
        let mut tally = self.shared.tally.lock().unwrap();
        *tally
            .statuses
            .entry(op.to_owned())
            .or_default()
            .entry(status)
            .or_default() += 1;
        tally.slowest = tally.slowest.max(took);
        if status >= 500 {
            let at = self.shared.origin.elapsed();
            let window = tally.failures.get_or_insert((at, at));
            window.0 = window.0.min(at - took);
            window.1 = window.1.max(at);
        }
        drop(tally);
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body, before, after)
    }

    /// The session turned out to be gone (or fresh): fine if it ended by
    /// design; a lost session otherwise.
    fn session_gone(&mut self, how: &str) {
        if !self.ledger.present {
            return;
        }
        // Only a user's session can be revoked by the other client of the
        // same user.
        let revoked = self.partner_may_have_revoked();
        if revoked || self.ledger.may_have_ended {
            self.shared.tally.lock().unwrap().ended_by_design += 1;
        } else {
            self.violation(format!(
                "session lost ({how}) with no logout or revocation: {:?}",
                self.ledger
            ));
        }
        self.ledger.reset();
    }

    /// A read found the session with `user` and `data`; the partner's
    /// revoke count was `revokes` when it was sent.
    fn session_seen(
        &mut self,
        user: Option<String>,
        data: &serde_json::Map<String, Value>,
        revokes: u64,
    ) {
        if !self.ledger.present {
            self.violation(format!("a session came back: {user:?} {data:?}"));
        }
        if user != self.ledger.user {
            self.violation(format!("user {user:?}, expected {:?}", self.ledger.user));
        }
        let empty = Counts::new();
        let observed: Counts = data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(-1)))
            .collect();
        let ledger = &self.ledger;
        if !ledger.resync.is_empty() {
            // Carried over by every login, or started empty at login `i`.
            let (since, since_unsure) = sum(&ledger.resync);
            let carried = fits(
                data,
                (&ledger.values, &ledger.unsure),
                (&since, &since_unsure),
            );
            let fresh = (0..ledger.resync.len()).any(|i| {
                let (since, since_unsure) = sum(&ledger.resync[i..]);
                fits(data, (&empty, &empty), (&since, &since_unsure))
            });
            if !carried && !fresh {
                self.violation(format!("after a login: {data:?} vs {ledger:?}"));
            } else if !carried {
                // A login found no session: it had been revoked just
                // before.
                self.shared.tally.lock().unwrap().ended_by_design += 1;
            }
        } else if !fits(data, (&ledger.values, &ledger.unsure), (&empty, &empty)) {
            self.violation(format!("read {data:?}, expected {ledger:?}"));
        } else {
            let applied: Vec<(String, u64)> = observed
                .iter()
                .map(|(k, v)| {
                    let known = ledger.values.get(k).copied().unwrap_or(0);
                    (k.clone(), (v - known).max(0) as u64)
                })
                .collect();
            for (key, applied) in applied {
                self.unsure_applied(&key, applied);
            }
        }
        self.ledger.values = observed;
        self.ledger.unsure.clear();
        self.ledger.unsure_at.clear();
        self.ledger.resync.clear();
        self.ledger.may_have_ended = false;
        self.ledger.partner_revokes_seen = revokes;
    }

    /// `applied` increments of `key` answered 503 turned out to have been
    /// applied. Only a request in flight when Redis was killed can be: Redis
    /// executed it, and died before its reply left (the store's one retry
    /// then found Redis down). See `lost_reply_*` in `fault_outage.rs`.
    fn unsure_applied(&mut self, key: &str, applied: u64) {
        if applied == 0 {
            return;
        }
        let killed = *self.shared.killed.lock().unwrap();
        let unsure = self.ledger.unsure_at.get(key).cloned().unwrap_or_default();
        let in_flight = unsure
            .iter()
            .filter(|(sent, answered)| {
                killed.is_some_and(|(from, to)| *sent <= to && *answered >= from)
            })
            .count() as u64;
        if applied > in_flight {
            self.violation(format!(
                "{applied} increments of {key} answered 503 were applied, but only {in_flight} \
                 were in flight when Redis was killed ({killed:?}): {unsure:?}"
            ));
        }
        let mut tally = self.shared.tally.lock().unwrap();
        tally.unsure_applied += applied;
        tally.unsure_applied_at.push(format!(
            "client {}: {applied} of the increments of {key} answered 503 (sent, answered: \
             {unsure:?}) was applied; Redis killed within {killed:?}",
            self.index,
        ));
    }

    async fn incr(&mut self, key: &str) {
        let revokes = self.partner_revokes();
        let sent = self.shared.origin.elapsed();
        let url = format!("{}/api/incr/{key}", self.base);
        let (status, body, before, after) = self.send("incr", self.http.post(url)).await;
        match status {
            200 => {
                self.shared.tally.lock().unwrap().acknowledged_increments += 1;
                let value = body["value"].as_i64().unwrap();
                if after.is_some() && after != before {
                    // No session was found: a new one holds just this.
                    self.session_gone("a new session on increment");
                    if value != 1 {
                        self.violation(format!("new session, {key} = {value}"));
                    }
                    self.ledger.present = true;
                    self.ledger.values.insert(key.to_owned(), 1);
                } else if let Some((since, _)) = self.ledger.resync.last_mut() {
                    // Checked by the next read.
                    *since.entry(key.to_owned()).or_default() += 1;
                } else {
                    if !self.ledger.present {
                        self.violation(format!("a session came back: {key} = {value}"));
                    }
                    let known = self.ledger.values.get(key).copied().unwrap_or(0);
                    let unsure = self.ledger.unsure.remove(key).unwrap_or(0);
                    if value < known + 1 || value > known + 1 + unsure {
                        self.violation(format!(
                            "{key} = {value} after an acknowledged increment, expected {} \
                             (+ up to {unsure} unsure)",
                            known + 1
                        ));
                    }
                    self.unsure_applied(key, (value - known - 1).clamp(0, unsure) as u64);
                    self.ledger.unsure_at.remove(key);
                    self.ledger.values.insert(key.to_owned(), value);
                }
                self.ledger.may_have_ended = false;
                self.ledger.partner_revokes_seen = revokes;
            }
            409 => {
                // Ended while the request ran: nothing stored.
                self.session_gone("409 on increment");
            }
            503 => {
                self.shared.tally.lock().unwrap().unsure_increments += 1;
                if self.ledger.present {
                    self.ledger
                        .unsure_at
                        .entry(key.to_owned())
                        .or_default()
                        .push((sent, self.shared.origin.elapsed()));
                    let unsure = match self.ledger.resync.last_mut() {
                        Some((_, since_unsure)) => since_unsure,
                        None => &mut self.ledger.unsure,
                    };
                    *unsure.entry(key.to_owned()).or_default() += 1;
                }
            }
            _ => self.violation(format!("increment: {status} {body}")),
        }
    }

    async fn read(&mut self) -> u16 {
        let revokes = self.partner_revokes();
        let url = format!("{}/api/session", self.base);
        let (status, body, _, _) = self.send("read", self.http.get(url)).await;
        match status {
            200 => {
                let user = body["user"].as_str().map(str::to_owned);
                let data = body["data"].as_object().cloned().unwrap_or_default();
                if user.is_none() && data.is_empty() {
                    self.session_gone("read found no session");
                } else {
                    self.session_seen(user, &data, revokes);
                }
            }
            503 => {}
            _ => self.violation(format!("read: {status} {body}")),
        }
        status
    }

    async fn login(&mut self) {
        let revokes = self.partner_revokes();
        let url = format!("{}/api/login", self.base);
        let request = self.http.post(url).json(&json!({ "user": self.user }));
        let (status, body, _, _) = self.send("login", request).await;
        match status {
            200 => {
                if body != json!({ "user": self.user }) {
                    self.violation(format!("login answered {body}"));
                }
                let revoked = self.partner_may_have_revoked();
                if !self.ledger.present {
                    self.ledger.reset();
                } else if revoked || self.ledger.may_have_ended {
                    self.ledger.resync.push(Default::default());
                }
                self.ledger.present = true;
                self.ledger.may_have_ended = false;
                self.ledger.user = Some(self.user.clone());
                self.ledger.partner_revokes_seen = revokes;
            }
            // The session was ended (the partner revoked it) while the login
            // ran: the login fails rather than carry it on, and the cookie
            // is cleared. Fine only if it ended by design.
            409 => self.session_gone("409 on login"),
            503 => self.ledger.may_have_ended = true,
            _ => self.violation(format!("login: {status} {body}")),
        }
    }

    async fn logout(&mut self) {
        let url = format!("{}/api/logout", self.base);
        let (status, body, _, after) = self.send("logout", self.http.post(url)).await;
        match status {
            200 => {
                if after.is_some() {
                    self.violation("logout left a token".to_owned());
                }
                self.ledger.reset();
            }
            503 => self.ledger.may_have_ended = true,
            _ => self.violation(format!("logout: {status} {body}")),
        }
    }

    async fn revoke_others(&mut self) {
        // Counted before sending: from now on the partner's session may go.
        self.shared.revokes_started[self.index].fetch_add(1, Ordering::SeqCst);
        let url = format!("{}/api/sessions/revoke-others", self.base);
        let (status, body, _, _) = self.send("revoke-others", self.http.post(url)).await;
        self.shared.revokes_finished[self.index].fetch_add(1, Ordering::SeqCst);
        match status {
            200 if self.ledger.user.is_some() => {}
            401 if self.ledger.user.is_none() => {}
            401 => self.session_gone("401 on revoke-others"),
            503 => {}
            _ => self.violation(format!("revoke-others: {status} {body}")),
        }
    }

    async fn list(&mut self) {
        let url = format!("{}/api/sessions", self.base);
        let (status, body, _, _) = self.send("list", self.http.get(url)).await;
        match status {
            200 if self.ledger.user.is_some() => {
                let mine = body
                    .as_array()
                    .is_some_and(|l| l.iter().filter(|s| s["current"] == json!(true)).count() == 1);
                if !mine {
                    // Found at first, then revoked before the listing.
                    self.session_gone("a listing without the current session");
                }
            }
            401 if self.ledger.user.is_none() => {}
            401 => self.session_gone("401 on listing"),
            503 => {}
            _ => self.violation(format!("list: {status} {body}")),
        }
    }

    async fn run(mut self) -> Client {
        while self.shared.running.load(Ordering::Relaxed) {
            match self.rng.below(100) {
                0..40 => self.incr("c").await,
                40..55 => {
                    let key = format!("w{}", self.rng.below(4));
                    self.incr(&key).await;
                }
                55..80 => {
                    self.read().await;
                }
                80..87 => self.login().await,
                87..92 => self.logout().await,
                92..97 => self.revoke_others().await,
                _ => self.list().await,
            }
        }
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_with_a_redis_restart() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("SOAK_SECS is a number of seconds"))
        .unwrap_or(DEFAULT_SECS);
    let duration = Duration::from_secs(secs.max(6));
    let mut server = RedisServer::start_with(ServerOptions {
        appendonly: true,
        ..ServerOptions::default()
    });
    let (demo, demo_base) = tokio::task::block_in_place(|| start_demo(&server.url()));
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!(
        "soak: {duration:?}, {CLIENTS} clients, demo at {}, seed {seed}",
        demo_base
    );
    let shared = Arc::new(Shared {
        revokes_started: (0..CLIENTS).map(|_| AtomicU64::new(0)).collect(),
        revokes_finished: (0..CLIENTS).map(|_| AtomicU64::new(0)).collect(),
        running: AtomicBool::new(true),
        killed: Mutex::new(None),
        tally: Mutex::new(Tally::default()),
        origin: Instant::now(),
    });
    let mut tasks = JoinSet::new();
    for index in 0..CLIENTS {
        let jar = Arc::new(Jar::default());
        let http = reqwest::Client::builder()
            .no_proxy()
            .cookie_provider(jar.clone())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let client = Client {
            index,
            partner: index ^ 1,
            user: format!("user{}", index / 2),
            http,
            jar,
            base: demo_base.clone(),
            ledger: Ledger::default(),
            rng: Rng(seed.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1),
            shared: shared.clone(),
        };
        tasks.spawn(client.run());
    }

    // Warm-up, then the reference memory figure.
    let warm_up = (duration / 4).max(Duration::from_secs(3));
    tokio::time::sleep(warm_up).await;
    let rss_warm = demo.rss_kib();
    tokio::time::sleep(duration / 2 - warm_up.min(duration / 2)).await;
    let requests_before_restart = total(&shared);
    let restart_at = shared.origin.elapsed();
    tokio::task::block_in_place(|| {
        server.stop();
        *shared.killed.lock().unwrap() = Some((restart_at, shared.origin.elapsed()));
        server.restart();
    });
    let restart_took = shared.origin.elapsed() - restart_at;
    tokio::time::sleep(duration - duration / 2).await;
    shared.running.store(false, Ordering::Relaxed);
    let mut clients = Vec::new();
    while let Some(done) = tasks.join_next().await {
        clients.push(done.unwrap());
    }
    clients.sort_by_key(|c| c.index);
    let elapsed = shared.origin.elapsed();

    // Final check of every client's session, with Redis up and no traffic.
    for client in &mut clients {
        assert_eq!(client.read().await, 200, "client {}", client.index);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_end = demo.rss_kib();
    let requests = total(&shared);
    let (status, stderr) = tokio::task::block_in_place(|| demo.stop());

    let tally = shared.tally.lock().unwrap();
    let error_lines = stderr.lines().filter(|l| l.contains("ERROR")).count();
    eprintln!(
        "soak: {requests} requests in {elapsed:?} ({:.0}/s), {requests_before_restart} before the \
         Redis restart at {restart_at:?} (down for {restart_took:?})",
        requests as f64 / elapsed.as_secs_f64()
    );
    for (op, statuses) in &tally.statuses {
        eprintln!("soak:   {op:14} {statuses:?}");
    }
    eprintln!(
        "soak: {} acknowledged increments; {} answered 503, of which {} turned out applied; \
         {} sessions ended by design; slowest answer {:?}; {error_lines} ERROR lines from the demo",
        tally.acknowledged_increments,
        tally.unsure_increments,
        tally.unsure_applied,
        tally.ended_by_design,
        tally.slowest,
    );
    eprintln!(
        "soak: requests answered 5xx were sent and answered within {:?}",
        tally.failures
    );
    for applied in &tally.unsure_applied_at {
        eprintln!("soak:   {applied}");
    }
    let growth = rss_end as f64 / rss_warm as f64 - 1.0;
    eprintln!(
        "soak: demo VmRSS {rss_warm} KiB after warm-up, {rss_end} KiB at the end ({:+.1} %)",
        growth * 100.0
    );
    assert!(
        tally.violations.is_empty(),
        "{} violations:\n{}",
        tally.violations.len(),
        tally.violations.join("\n")
    );
    assert!(!stderr.contains("panicked"), "the demo panicked:\n{stderr}");
    assert!(status.success(), "the demo exited with {status}:\n{stderr}");
    assert!(requests > 1000, "enough traffic: {requests}");
    assert!(tally.acknowledged_increments > 100);
    assert!(
        tally.ended_by_design > 0,
        "revocations and logouts happened"
    );
    assert!(
        growth <= RSS_MARGIN,
        "the demo's memory grew by {:.1} % ({rss_warm} -> {rss_end} KiB)",
        growth * 100.0
    );
}

fn total(shared: &Shared) -> u64 {
    shared
        .tally
        .lock()
        .unwrap()
        .statuses
        .values()
        .flat_map(|s| s.values())
        .sum()
}
