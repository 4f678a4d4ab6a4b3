//! TLS for the tests: a certificate authority, server and client
//! certificates made with the `openssl` CLI, and a `redis-server` that
//! serves TLS on its own port.
//!
//! The server keeps its plain port too, on loopback, for the harness's admin
//! connection ([`RedisServer::cmd`]) and readiness check; the tests talk to
//! the store only through [`TlsServer::url`] (`rediss://`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::server::{create_temp_dir, release_port, require_binary, reserve_port};
use super::{RedisServer, ServerOptions};

/// PEM files in a temporary directory, removed on drop.
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// A CA, a server certificate for `127.0.0.1` / `localhost`, a client
    /// certificate and one for cluster nodes talking to each other, all
    /// signed by the CA, and a second, unrelated CA.
    pub fn generate() -> Certs {
        let openssl = require_binary_openssl();
        let dir = create_temp_dir();
        let run = |args: &[&str]| {
            let out = Command::new(&openssl)
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=tower-redis-sessions test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        fs::write(
            dir.join("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        fs::write(
            dir.join("node.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for (name, cn) in [
            ("server", "localhost"),
            ("client", "sessions-client"),
            ("node", "cluster-node"),
        ] {
            run(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ]);
        }
        Certs { dir }
    }

    /// The path of `name` (`ca.crt`, `server.key`, `client.crt`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The contents of `name`.
    pub fn pem(&self, name: &str) -> Vec<u8> {
        fs::read(self.path(name)).unwrap_or_else(|e| panic!("cannot read {name}: {e}"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn require_binary_openssl() -> PathBuf {
    super::server::find_on_path("openssl").unwrap_or_else(|| {
        panic!(
            "`openssl` not found on PATH; the TLS tests make their certificates with it.\n\
             Install it (Debian/Ubuntu): sudo apt-get install -y openssl\n\
             or run `bash scripts/test.sh`, which installs it when missing."
        )
    })
}

/// A `redis-server` serving TLS on [`TlsServer::tls_port`].
pub struct TlsServer {
    pub server: RedisServer,
    tls_port: u16,
    pub certs: Certs,
}

impl TlsServer {
    /// TLS with the server certificate of fresh [`Certs`]; with `mutual`,
    /// clients must present a certificate signed by the CA
    /// (`tls-auth-clients yes`), else none is asked for.
    pub fn start(mutual: bool) -> TlsServer {
        let _ = require_binary("redis-server");
        let certs = Certs::generate();
        let tls_port = reserve_port();
        let path = |name: &str| certs.path(name).display().to_string();
        let extra = vec![
            ("tls-port".to_owned(), tls_port.to_string()),
            ("tls-cert-file".to_owned(), path("server.crt")),
            ("tls-key-file".to_owned(), path("server.key")),
            ("tls-ca-cert-file".to_owned(), path("ca.crt")),
            (
                "tls-auth-clients".to_owned(),
                if mutual { "yes" } else { "no" }.to_owned(),
            ),
        ];
        let server = RedisServer::start_with(ServerOptions {
            extra,
            ..ServerOptions::default()
        });
        TlsServer {
            server,
            tls_port,
            certs,
        }
    }

    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// `rediss://127.0.0.1:<tls port>`
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.server.stop();
        release_port(self.tls_port);
    }
}

/// Three cluster masters serving TLS to clients and to each other
/// (`tls-cluster yes`: the bus runs on the TLS port + 10000, and a TLS
/// client is told the TLS ports in `CLUSTER SLOTS`), all slots assigned.
pub struct TlsCluster {
    pub nodes: Vec<RedisServer>,
    tls_ports: Vec<u16>,
    pub certs: Certs,
}

impl TlsCluster {
    pub fn start(mutual: bool) -> TlsCluster {
        let certs = Certs::generate();
        let path = |name: &str| certs.path(name).display().to_string();
        let mut nodes = Vec::new();
        let mut tls_ports = Vec::new();
        for _ in 0..3 {
            let tls_port = reserve_port();
            let extra = [
                ("cluster-enabled", "yes".to_owned()),
                ("cluster-config-file", "nodes.conf".to_owned()),
                ("cluster-node-timeout", "5000".to_owned()),
                ("tls-port", tls_port.to_string()),
                ("tls-cluster", "yes".to_owned()),
                ("tls-replication", "yes".to_owned()),
                // Nodes authenticate each other with the server certificate.
                ("tls-cert-file", path("server.crt")),
                ("tls-key-file", path("server.key")),
                ("tls-client-cert-file", path("node.crt")),
                ("tls-client-key-file", path("node.key")),
                ("tls-ca-cert-file", path("ca.crt")),
                (
                    "tls-auth-clients",
                    if mutual { "yes" } else { "no" }.to_owned(),
                ),
            ];
            nodes.push(RedisServer::start_with(ServerOptions {
                extra: extra
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
                ..ServerOptions::default()
            }));
            tls_ports.push(tls_port);
        }
        let count = nodes.len() as u32;
        for (i, node) in nodes.iter().enumerate() {
            let i = i as u32;
            let first = 16384 * i / count;
            let last = 16384 * (i + 1) / count - 1;
            let epoch = (i + 1).to_string();
            assert_eq!(node.cmd(&["CLUSTER", "SET-CONFIG-EPOCH", &epoch]), "OK");
            assert_eq!(
                node.cmd(&[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string()
                ]),
                "OK"
            );
        }
        for (i, node) in nodes.iter().enumerate() {
            for other in &tls_ports[i + 1..] {
                assert_eq!(
                    node.cmd(&["CLUSTER", "MEET", "127.0.0.1", &other.to_string()]),
                    "OK"
                );
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !nodes.iter().all(|n| {
            n.cmd(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
                && n.cmd(&["CLUSTER", "NODES"]).lines().count() == 3
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "the TLS cluster did not become ready:\n{}",
                nodes[0].log_tail(20)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        TlsCluster {
            nodes,
            tls_ports,
            certs,
        }
    }

    /// `rediss://127.0.0.1:<tls port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.tls_ports
            .iter()
            .map(|p| format!("rediss://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        for port in &self.tls_ports {
            release_port(*port);
        }
    }
}
