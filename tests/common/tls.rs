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
    /// A CA, a server certificate for `127.0.0.1` / `localhost` and a client
    /// certificate, both signed by the CA, and a second, unrelated CA.
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
        for (name, cn) in [("server", "localhost"), ("client", "sessions-client")] {
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
