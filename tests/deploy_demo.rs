//! The demo's deployment knobs, run for real: `REDIS_URL=rediss://…` with
//! `REDIS_CA_CERT`, `REDIS_CLIENT_CERT`, `REDIS_CLIENT_KEY`, and
//! `REDIS_SENTINELS` with `REDIS_SENTINEL_MASTER`; the banner says which
//! Redis it connected to, and a request is served. Runs the compiled demo
//! (`cargo build --examples --all-features` builds it).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::ServerOptions;
use common::sentinel::SentinelSet;

/// Every variable the demo reads about Redis, cleared unless a test sets it.
const REDIS_VARS: &[&str] = &[
    "REDIS_URL",
    "REDIS_CLUSTER_URLS",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER",
    "REDIS_CA_CERT",
    "REDIS_CLIENT_CERT",
    "REDIS_CLIENT_KEY",
];

fn demo_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join("demo");
    assert!(
        path.is_file(),
        "{} is not built (run `cargo build --examples --all-features`)",
        path.display()
    );
    path
}

/// The demo, running; killed on drop.
struct Demo {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Demo {
    fn start(env: &[(&str, String)]) -> Demo {
        let mut command = Command::new(demo_binary());
        for var in REDIS_VARS {
            command.env_remove(var);
        }
        command
            .env("BIND", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(err);
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Demo {
            child,
            stdout,
            stderr,
        }
    }

    /// The base URL from the `listening on http://<addr>` line.
    fn wait_listening(&self) -> String {
        let line = self
            .stdout
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no `listening on` line; stderr:\n{}", self.stderr()));
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        format!("http://{addr}")
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stderr once it contains `text`.
    fn stderr_with(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stderr = self.stderr();
            if stderr.contains(text) {
                return stderr;
            }
            assert!(
                Instant::now() < deadline,
                "stderr never said {text:?}:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the demo to exit (it should fail at start-up).
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serves(base: &str) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for expected in [1, 2] {
        let response = client
            .post(format!("{base}/api/incr/hits"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["value"], expected, "{body}");
    }
}

#[cfg(feature = "tls-rustls")]
#[tokio::test]
async fn rediss_with_a_ca_and_a_client_certificate() {
    let server = common::tls::TlsServer::start(true);
    let path = |name: &str| server.certs.path(name).display().to_string();
    let demo = Demo::start(&[
        ("REDIS_URL", server.url()),
        ("REDIS_CA_CERT", path("ca.crt")),
        ("REDIS_CLIENT_CERT", path("client.crt")),
        ("REDIS_CLIENT_KEY", path("client.key")),
    ]);
    let base = demo.wait_listening();
    let banner = demo.stderr_with("session store:");
    assert!(
        banner.contains(&format!(
            "Redis at {} over TLS (CA from REDIS_CA_CERT, client certificate",
            server.url()
        )),
        "{banner}"
    );
    serves(&base).await;
}

#[cfg(feature = "tls-rustls")]
#[tokio::test]
async fn rediss_without_the_client_certificate_fails_at_start_up() {
    let server = common::tls::TlsServer::start(true);
    let mut demo = Demo::start(&[
        ("REDIS_URL", server.url()),
        (
            "REDIS_CA_CERT",
            server.certs.path("ca.crt").display().to_string(),
        ),
    ]);
    assert_eq!(demo.wait_exit(), Some(1));
    assert!(demo.stderr().contains("demo: error:"), "{}", demo.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_the_primary_name() {
    let set = tokio::task::block_in_place(|| SentinelSet::start("demo", ServerOptions::default()));
    let demo = Demo::start(&[
        ("REDIS_SENTINELS", set.sentinel_addrs().join(",")),
        ("REDIS_SENTINEL_MASTER", "demo".to_owned()),
    ]);
    let base = demo.wait_listening();
    let banner = demo.stderr_with("session store:");
    assert!(
        banner.contains("Redis primary `demo` through Sentinel at 127.0.0.1:"),
        "{banner}"
    );
    serves(&base).await;
}

#[tokio::test]
async fn sentinels_without_the_primary_name_is_an_error() {
    let mut demo = Demo::start(&[("REDIS_SENTINELS", "127.0.0.1:1".to_owned())]);
    assert_eq!(demo.wait_exit(), Some(1));
    assert!(
        demo.stderr().contains("REDIS_SENTINEL_MASTER"),
        "{}",
        demo.stderr()
    );
}
