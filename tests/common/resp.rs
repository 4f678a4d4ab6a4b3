//! A minimal, blocking RESP2 client over `std::net::TcpStream`.
//!
//! It exists so the harness can talk to Redis without going through the crate
//! under test (or `redis-cli`, which is slow to spawn). It sends nothing on
//! connect: no `HELLO`, no `CLIENT SETINFO`, no `SELECT`, so the only commands
//! a server sees from it are the ones a test explicitly sends. That is what
//! makes `INFO commandstats` deltas exact.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Default read/write timeout of a [`RawConnection`]; generous because the
/// machine may be busy running many tests in parallel.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...` (the full message, including the error code).
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3\r\nfoo` — binary safe.
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`.
    Nil,
    /// `*N`
    Array(Vec<Reply>),
}

impl Reply {
    /// True for [`Reply::Nil`].
    pub fn is_nil(&self) -> bool {
        matches!(self, Reply::Nil)
    }

    /// True for [`Reply::Error`].
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// The payload of a bulk string or a status reply.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(b) => Some(b),
            Reply::Status(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// The payload of a bulk string or status reply, if it is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The value of an integer reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of an array reply.
    pub fn as_array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The message of an error reply.
    pub fn as_error(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e),
            _ => None,
        }
    }

    /// Consumes a bulk or status reply into its bytes.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Reply::Bulk(b) => Some(b),
            Reply::Status(s) => Some(s.into_bytes()),
            _ => None,
        }
    }

    /// Bytes of a bulk/status reply; panics (showing the reply) otherwise.
    pub fn unwrap_bytes(self) -> Vec<u8> {
        match self {
            Reply::Bulk(b) => b,
            Reply::Status(s) => s.into_bytes(),
            other => panic!("expected a bulk or status reply, got {other:?}"),
        }
    }

    /// Value of an integer reply; panics (showing the reply) otherwise.
    pub fn unwrap_int(&self) -> i64 {
        self.as_int()
            .unwrap_or_else(|| panic!("expected an integer reply, got {self:?}"))
    }

    /// Elements of an array reply; panics (showing the reply) otherwise.
    pub fn unwrap_array(self) -> Vec<Reply> {
        match self {
            Reply::Array(items) => items,
            other => panic!("expected an array reply, got {other:?}"),
        }
    }

    /// Renders the reply like `redis-cli --raw` does:
    /// status and bulk strings as their (lossy UTF-8) content, integers in
    /// decimal, errors as their message (e.g. `ERR unknown command ...`,
    /// without a `(error)` prefix), nil as the empty string, and arrays as
    /// their rendered elements joined by `\n` (nested arrays are flattened).
    pub fn to_text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Int(i) => i.to_string(),
            Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            Reply::Nil => String::new(),
            Reply::Array(items) => items
                .iter()
                .map(Reply::to_text)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// A raw, blocking connection to one Redis server.
///
/// Commands are always sent as RESP arrays of bulk strings, so arguments are
/// binary safe. Methods without `try_` panic on I/O errors (not on Redis error
/// replies, which are returned as [`Reply::Error`]).
pub struct RawConnection {
    reader: BufReader<TcpStream>,
    port: u16,
}

impl RawConnection {
    /// Connects to `127.0.0.1:port`. Sends nothing.
    pub fn connect(port: u16) -> io::Result<RawConnection> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(DEFAULT_IO_TIMEOUT))?;
        stream.set_write_timeout(Some(DEFAULT_IO_TIMEOUT))?;
        Ok(RawConnection {
            reader: BufReader::new(stream),
            port,
        })
    }

    /// The server port this connection talks to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Changes the read timeout (e.g. for blocking commands such as `BLPOP`).
    /// `None` blocks forever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.reader.get_ref().set_read_timeout(timeout)
    }

    /// Sends one command and reads its reply.
    pub fn try_cmd_bytes(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.write_command(args)?;
        self.read_reply()
    }

    /// Sends one command and returns its reply; panics on I/O errors.
    pub fn cmd_bytes(&mut self, args: &[&[u8]]) -> Reply {
        self.try_cmd_bytes(args).unwrap_or_else(|e| {
            panic!(
                "I/O error talking to redis on port {} while sending {}: {e}",
                self.port,
                describe(args)
            )
        })
    }

    /// Sends one command with string arguments and returns the reply rendered
    /// by [`Reply::to_text`]; panics on I/O errors.
    pub fn cmd(&mut self, args: &[&str]) -> String {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd_bytes(&args).to_text()
    }

    /// Writes one command without reading the reply (for pipelining; pair
    /// every call with one [`RawConnection::read_reply`]).
    pub fn write_command(&mut self, args: &[&[u8]]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            buf.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            buf.extend_from_slice(arg);
            buf.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&buf)
    }

    /// Reads one reply.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let line = self.read_line()?;
        let (kind, rest) = line
            .split_first()
            .ok_or_else(|| invalid("empty reply line"))?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        match kind {
            b'+' => Ok(Reply::Status(text())),
            b'-' => Ok(Reply::Error(text())),
            b':' => Ok(Reply::Int(parse_int(rest)?)),
            b'$' => {
                let len = parse_int(rest)?;
                if len < 0 {
                    return Ok(Reply::Nil);
                }
                // Payload plus its trailing CRLF.
                let mut data = vec![0; len as usize + 2];
                self.reader.read_exact(&mut data)?;
                if !data.ends_with(b"\r\n") {
                    return Err(invalid("bulk string not terminated by CRLF"));
                }
                data.truncate(len as usize);
                Ok(Reply::Bulk(data))
            }
            b'*' => {
                let len = parse_int(rest)?;
                if len < 0 {
                    return Ok(Reply::Nil);
                }
                (0..len)
                    .map(|_| self.read_reply())
                    .collect::<io::Result<Vec<_>>>()
                    .map(Reply::Array)
            }
            other => Err(invalid(&format!(
                "unsupported RESP type byte {:?} (only RESP2 is supported)",
                *other as char
            ))),
        }
    }

    /// True if the server has not closed this connection (and there is no
    /// unread data pending). Used to decide whether a cached connection can be
    /// reused without risking sending a command into a dead socket.
    pub fn is_alive(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let stream = self.reader.get_ref();
        if stream.set_nonblocking(true).is_err() {
            return false;
        }
        let alive = matches!(
            stream.peek(&mut [0u8; 1]),
            Err(ref e) if e.kind() == io::ErrorKind::WouldBlock
        );
        stream.set_nonblocking(false).is_ok() && alive
    }

    /// Reads one CRLF-terminated line, without the CRLF.
    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by redis",
            ));
        }
        if !line.ends_with(b"\r\n") {
            return Err(invalid("reply line not terminated by CRLF"));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }
}

fn parse_int(digits: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("invalid integer in reply"))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Short human-readable rendering of a command for panic messages.
pub(crate) fn describe(args: &[&[u8]]) -> String {
    let parts: Vec<String> = args
        .iter()
        .take(4)
        .map(|a| String::from_utf8_lossy(a).chars().take(40).collect())
        .collect();
    let more = if args.len() > 4 { " ..." } else { "" };
    format!("`{}{more}`", parts.join(" "))
}
