//! Counting the commands clients send, exactly, with `MONITOR`.
//!
//! `INFO commandstats` also counts the commands a function runs inside
//! (`HMGET`, `HSET`, ...), so it can only say "one FCALL, and nothing outside
//! the library's own set". `MONITOR` shows every command with its origin:
//! client commands as `[db 127.0.0.1:port]`, commands run by scripts and
//! functions as `[db lua]`. Counting the lines not from `lua` gives the
//! number of top-level commands clients sent, exactly.
//!
//! ```ignore
//! let mut monitor = Monitor::start(&server);
//! monitor.mark();                       // forget everything so far
//! store.load(&token).await?;
//! let seen = monitor.since_mark();      // the client commands since mark()
//! assert_eq!(seen.len(), 1);
//! ```
//!
//! Synchronisation: `mark` and `since_mark` send an `ECHO <marker>` over a
//! connection of their own and read the monitor stream up to that marker, so
//! every command the server executed before it has been read. Commands of
//! that marker connection, and of the harness's own connections used through
//! [`RedisServer::cmd`] (for instance `INFO commandstats`), are left out.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::resp::RawConnection;
use super::server::RedisServer;

/// One command seen by `MONITOR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// `ip:port` of the client, or `lua` for commands run by a script or function.
    pub client: String,
    /// The command name, upper case (`"FCALL"`, `"CLIENT"`, ...).
    pub command: String,
    /// The whole monitor line.
    pub line: String,
}

/// A `MONITOR` connection to one server.
pub struct Monitor {
    reader: BufReader<TcpStream>,
    marker: RawConnection,
    /// Addresses (`ip:port`) whose commands are not counted.
    ignored: Vec<String>,
    seq: u64,
}

impl Monitor {
    /// Starts monitoring `server`.
    pub fn start(server: &RedisServer) -> Monitor {
        let stream = TcpStream::connect(("127.0.0.1", server.port())).expect("connect for MONITOR");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut writer = stream.try_clone().expect("clone stream");
        writer
            .write_all(b"*1\r\n$7\r\nMONITOR\r\n")
            .expect("send MONITOR");
        let mut reader = BufReader::new(stream);
        let first = read_line(&mut reader).expect("MONITOR reply");
        assert_eq!(first, "+OK", "MONITOR on port {}", server.port());

        let mut marker = server.connect();
        let mut ignored = vec![client_addr(&mut marker)];
        // The harness's cached connection (commandstats snapshots, raw
        // commands): learn its address by asking through it.
        let info = server.cmd(&["CLIENT", "INFO"]);
        ignored.push(addr_of(&info));
        let mut monitor = Monitor {
            reader,
            marker,
            ignored,
            seq: 0,
        };
        monitor.mark();
        monitor
    }

    /// Forgets every command seen so far.
    pub fn mark(&mut self) {
        self.since_mark();
    }

    /// The client commands (not from `lua`, not from the harness) the server
    /// executed since the last [`mark`](Self::mark) or `since_mark`.
    pub fn since_mark(&mut self) -> Vec<Seen> {
        self.seq += 1;
        let token = format!("trs-monitor-marker-{}-{}", std::process::id(), self.seq);
        let echoed = self.marker.cmd(&["ECHO", &token]);
        assert_eq!(echoed, token);
        let mut seen = Vec::new();
        loop {
            let line = read_line(&mut self.reader).expect("read MONITOR stream");
            let Some(parsed) = parse(&line) else {
                panic!("unexpected MONITOR line {line:?}");
            };
            if self.ignored.contains(&parsed.client) {
                if line.contains(&token) {
                    return seen;
                }
                continue;
            }
            if parsed.client != "lua" {
                seen.push(parsed);
            }
        }
    }
}

/// `+1700000000.123456 [0 127.0.0.1:5555] "FCALL" "x" ...`
fn parse(line: &str) -> Option<Seen> {
    let rest = line.strip_prefix('+')?;
    let open = rest.find('[')?;
    let close = open + rest[open..].find(']')?;
    let inside = &rest[open + 1..close];
    let client = inside.split_once(' ')?.1.to_owned();
    let args = rest[close + 1..].trim_start();
    let command = args
        .strip_prefix('"')?
        .split('"')
        .next()?
        .to_ascii_uppercase();
    Some(Seen {
        client,
        command,
        line: line.to_owned(),
    })
}

fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "MONITOR closed",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// The `addr=` of `CLIENT INFO` asked over `conn`.
fn client_addr(conn: &mut RawConnection) -> String {
    addr_of(&conn.cmd(&["CLIENT", "INFO"]))
}

fn addr_of(client_info: &str) -> String {
    client_info
        .split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in CLIENT INFO reply {client_info:?}"))
        .to_owned()
}
