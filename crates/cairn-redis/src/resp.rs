//! A small client of Redis's wire protocol (RESP2), enough for what cairn
//! asks of a server: log in, the replication handshake, and the commands
//! that compare a live key space with a snapshot (`SELECT`, `SCAN`, `DUMP`,
//! `PEXPIRETIME`, `TIME`, `INFO`), pipelined.
//!
//! The replication stream that follows `PSYNC` is not RESP, so the
//! connection also hands out raw lines and its buffered bytes
//! ([`Conn::read_line`], [`Conn::into_parts`]).

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{RedisError, RedisTarget};

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may stay silent while an answer is due (Redis's own
/// `repl-timeout` is 60 s; a primary preparing an RDB sends a newline
/// every second meanwhile).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Bytes>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn into_bulk(self) -> Option<Bytes> {
        match self {
            Reply::Bulk(b) => b,
            Reply::Status(s) => Some(Bytes::from(s)),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(v) => Some(*v),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn into_array(self) -> Option<Vec<Reply>> {
        match self {
            Reply::Array(Some(items)) => Some(items),
            _ => None,
        }
    }
}

/// A RESP command.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply at the start of `buf`: the reply and its length, or
/// `None` when more bytes are needed.
fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(nl) = memchr(buf) else { return Ok(None) };
    if nl == 0 || buf[nl - 1] != b'\r' {
        return Err(format!(
            "a reply line does not end in CRLF: {:?}",
            String::from_utf8_lossy(&buf[..nl.min(80)])
        ));
    }
    let line = &buf[1..nl - 1];
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("not a number: {:?}", text()))
    };
    let next = nl + 1;
    Ok(match buf[0] {
        b'+' => Some((Reply::Status(text()), next)),
        b'-' => Some((Reply::Error(text()), next)),
        b':' => Some((Reply::Int(number()?), next)),
        b'$' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            let end = next + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("a bulk reply does not end in CRLF".into());
            }
            Some((Reply::Bulk(Some(Bytes::copy_from_slice(&buf[next..end]))), end + 2))
        }
        b'*' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), next)));
            }
            let mut items = Vec::with_capacity((n as usize).min(4096));
            let mut at = next;
            for _ in 0..n {
                match parse(&buf[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Some((Reply::Array(Some(items)), at))
        }
        other => return Err(format!("unknown reply type {:?}", other as char)),
    })
}

fn memchr(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// One connection to a server.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// `host:port`, for messages.
    pub server: String,
    /// The logged-in user, for messages.
    pub user: String,
}

impl Conn {
    /// Connects and logs in (`AUTH [user] password` when a password is set).
    pub async fn open(target: &RedisTarget) -> Result<Conn, RedisError> {
        let server = target.server();
        let connect = TcpStream::connect((target.host.as_str(), target.port));
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(RedisError::Connect { server, message: e.to_string() }),
            Err(_) => {
                return Err(RedisError::Connect {
                    server,
                    message: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                });
            }
        };
        stream.set_nodelay(true).ok();
        let mut conn = Conn {
            stream,
            buf: BytesMut::with_capacity(64 << 10),
            server,
            user: target.user_name().to_string(),
        };
        if let Some(password) = target.password() {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &target.user {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            conn.send(&args).await?;
            match conn.reply().await? {
                Reply::Status(_) => {}
                Reply::Error(message) => return Err(RedisError::Auth { server: conn.server, message }),
                other => return Err(conn.protocol(format!("AUTH answered {other:?}"))),
            }
        }
        Ok(conn)
    }

    pub fn protocol(&self, message: impl Into<String>) -> RedisError {
        RedisError::Protocol { server: self.server.clone(), message: message.into() }
    }

    fn io(&self, e: std::io::Error) -> RedisError {
        RedisError::Connect { server: self.server.clone(), message: e.to_string() }
    }

    /// Sends one command.
    pub async fn send(&mut self, args: &[&[u8]]) -> Result<(), RedisError> {
        let mut out = Vec::new();
        encode(&mut out, args);
        self.write(&out).await
    }

    /// Sends bytes already encoded (a pipeline).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), RedisError> {
        self.stream.write_all(data).await.map_err(|e| self.io(e))
    }

    /// Reads more from the socket; the server closing is an error.
    async fn fill(&mut self) -> Result<(), RedisError> {
        if self.buf.capacity() - self.buf.len() < 16 << 10 {
            self.buf.reserve(64 << 10);
        }
        match tokio::time::timeout(READ_TIMEOUT, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) => Err(self.protocol("the server closed the connection")),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.io(e)),
            Err(_) => Err(self.protocol(format!("no answer for {} s", READ_TIMEOUT.as_secs()))),
        }
    }

    /// The next reply.
    pub async fn reply(&mut self) -> Result<Reply, RedisError> {
        loop {
            match parse(&self.buf).map_err(|m| self.protocol(m))? {
                Some((reply, used)) => {
                    self.buf.advance(used);
                    return Ok(reply);
                }
                None => self.fill().await?,
            }
        }
    }

    /// Sends a command and returns its reply; an error reply is an error
    /// (a missing permission says which to grant).
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        self.send(args).await?;
        let reply = self.reply().await?;
        self.check(args[0], reply)
    }

    /// Turns an error reply into the error it means.
    pub fn check(&self, command: &[u8], reply: Reply) -> Result<Reply, RedisError> {
        match reply {
            Reply::Error(message) => {
                let command = String::from_utf8_lossy(command).to_uppercase();
                Err(if message.starts_with("NOPERM") {
                    RedisError::NoPermission {
                        server: self.server.clone(),
                        user: self.user.clone(),
                        grant: format!("+{}", command.to_lowercase()),
                        command,
                        message,
                    }
                } else {
                    RedisError::Server { server: self.server.clone(), command, message }
                })
            }
            other => Ok(other),
        }
    }

    /// One line of the replication handshake, without its line end (a
    /// primary preparing the RDB sends bare newlines to keep the link up:
    /// they come back as empty lines).
    pub async fn read_line(&mut self) -> Result<Bytes, RedisError> {
        loop {
            if let Some(nl) = memchr(&self.buf) {
                let mut line = self.buf.split_to(nl + 1).freeze();
                line.truncate(nl);
                if line.ends_with(b"\r") {
                    line.truncate(nl - 1);
                }
                return Ok(line);
            }
            if self.buf.len() > 64 << 10 {
                return Err(self.protocol("a handshake line is longer than 64 KiB"));
            }
            self.fill().await?;
        }
    }

    /// The socket and what has been read from it but not yet consumed.
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.buf)
    }
}

/// One field of an `INFO` reply (`key:value` lines).
pub fn info_field(info: &Reply, key: &str) -> Option<String> {
    let Reply::Bulk(Some(text)) = info else { return None };
    String::from_utf8_lossy(text)
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_whole_or_ask_for_more() {
        let data = b"+OK\r\n-ERR no\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\nx\r\n:7\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while at < data.len() {
            let (r, used) = parse(&data[at..]).unwrap().unwrap();
            got.push(r);
            at += used;
        }
        assert_eq!(
            got,
            [
                Reply::Status("OK".into()),
                Reply::Error("ERR no".into()),
                Reply::Int(42),
                Reply::Bulk(Some(Bytes::from_static(b"abc"))),
                Reply::Bulk(None),
                Reply::Array(Some(vec![Reply::Bulk(Some(Bytes::from_static(b"x"))), Reply::Int(7)])),
            ]
        );
        for cut in 0..data.len() {
            if let Some((_, used)) = parse(&data[..cut]).unwrap() {
                assert!(used <= cut);
            }
        }
        assert_eq!(parse(b"$5\r\nab").unwrap(), None);
        assert!(parse(b"$2\r\nabcd\r\n").is_err());
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }
}
