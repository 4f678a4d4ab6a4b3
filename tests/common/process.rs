//! The crate's example binaries (the demo, the hyper service) run as real
//! processes: built if missing or older than the sources, started with an
//! environment, watched (killed by a watchdog if the test process dies
//! first), their stdout lines and stderr collected.
//!
//! Not registered in `common/mod.rs`; tests include it with
//!
//! ```ignore
//! #[path = "common/process.rs"]
//! mod process;
//! ```
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The example `name` next to this test's own build
/// (`target/<profile>/examples/<name>`), built with this test's profile and
/// all features (as the test script builds them) if missing or older than the
/// sources.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test binary>
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let binary = profile_dir.join("examples").join(name);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let newest_source = ["src", "examples", "lua", "Cargo.toml"]
        .iter()
        .map(|p| newest_mtime(&root.join(p)))
        .max()
        .unwrap();
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    if built.is_none_or(|b| b < newest_source) {
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(root)
            .args(["build", "--example", name, "--all-features"]);
        if !cfg!(debug_assertions) {
            cargo.arg("--release");
        }
        eprintln!("building the example {name}: {cargo:?}");
        let status = cargo.status().unwrap();
        assert!(status.success(), "cargo build --example {name} failed");
    }
    assert!(binary.is_file(), "no binary at {}", binary.display());
    binary
}

fn newest_mtime(path: &Path) -> SystemTime {
    let meta = std::fs::metadata(path).unwrap();
    let mut newest = meta.modified().unwrap();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            newest = newest.max(newest_mtime(&entry.unwrap().path()));
        }
    }
    newest
}

/// A running example binary; killed on drop, and by a watchdog shell if
/// this test process dies first.
pub struct App {
    child: Child,
    watchdog: Child,
    stdout: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl App {
    /// Starts the example `name` with `env` set and `clear` removed.
    pub fn start(name: &str, env: &[(&str, &str)], clear: &[&str]) -> App {
        let mut command = Command::new(example(name));
        for var in clear {
            command.env_remove(var);
        }
        let mut child = command
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let watchdog = Command::new("sh")
            .args([
                "-c",
                "trap '' INT HUP TERM; while kill -0 \"$1\" 2>/dev/null; do sleep 0.5; done; kill -9 \"$2\" 2>/dev/null",
                "example-watchdog",
            ])
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Both pipes are drained for the process's whole life, so it never
        // blocks on a full pipe.
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut pipe, sink) = (child.stderr.take().unwrap(), stderr.clone());
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        App {
            child,
            watchdog,
            stdout,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The base URL from the `listening on http://<addr>` line.
    pub fn wait_listening(&self) -> String {
        let line = self
            .stdout
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no `listening on` line; stderr:\n{}", self.stderr()));
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        assert_ne!(port, 0, "the actual port, not the requested 0");
        format!("http://{addr}")
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether it printed anything on stdout so far.
    pub fn printed(&self) -> bool {
        self.stdout.try_recv().is_ok()
    }

    /// Stderr once it contains `text` (it comes through its own pipe, so it
    /// may trail the stdout line); panics after a generous timeout.
    pub fn stderr_with(&self, text: &str) -> String {
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

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (generously) for the process to exit; its exit status, once
    /// its stderr is fully read.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        status
    }

    /// SIGTERM (graceful shutdown), then the exit status and all of stderr.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.signal("TERM");
        let status = self.wait_exit();
        (status, self.stderr())
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.split(' ').nth(2) == Some("Z"))
}
