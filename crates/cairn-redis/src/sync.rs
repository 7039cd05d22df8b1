//! The RDB over the replication protocol, as a replica (or `redis-cli
//! --rdb`) gets it: no file on the server, no `BGSAVE` of cairn's own.
//!
//! The handshake: `REPLCONF capa eof capa psync2` (cairn can take an RDB
//! streamed straight from the primary's fork, so a primary with
//! `repl-diskless-sync yes` — the default since Redis 7 — writes nothing to
//! its disk), `REPLCONF rdb-only 1` (Redis 7: send the RDB and close, keep
//! no replication backlog for this client; older servers refuse it and
//! cairn stops reading after the RDB instead), then `PSYNC ? -1` (a full
//! resynchronisation: `+FULLRESYNC <replication id> <offset>`, the point in
//! the primary's history the RDB is as of), or `SYNC` for servers without
//! `PSYNC`. Then, after bare newlines while the fork starts, the payload:
//! `$<length>` and that many bytes (the primary saved to disk first), or
//! `$EOF:<40 random bytes>`, the RDB, and the same 40 bytes again
//! (diskless: the length is not known in advance). The RDB's bytes are
//! passed on as they arrive; the end marker never is.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use crate::RedisError;
use crate::resp::{Conn, READ_TIMEOUT};

/// Length of the end marker of a diskless transfer.
const MARK_LEN: usize = 40;
/// Bytes gathered before they are passed on as one piece.
const PIECE: usize = 128 << 10;

/// How the payload's end is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// `$<length>`: the primary saved the RDB to its disk and sends the file.
    Length(u64),
    /// `$EOF:<mark>`: streamed from the fork; ends with the mark.
    Mark([u8; MARK_LEN]),
}

/// What the handshake established.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The primary's replication id and offset the RDB is as of (`PSYNC` only).
    pub replication_id: Option<String>,
    pub offset: Option<u64>,
    /// Whether the server knew `REPLCONF rdb-only` (Redis 7).
    pub rdb_only: bool,
    pub framing: Framing,
}

impl Handshake {
    pub fn diskless(&self) -> bool {
        matches!(self.framing, Framing::Mark(_))
    }
}

/// The permissions the replication handshake needs.
const GRANT: &str = "+psync +replconf +sync";

fn permission(conn: &Conn, command: &str, message: String) -> RedisError {
    RedisError::NoPermission {
        server: conn.server.clone(),
        user: conn.user.clone(),
        command: command.into(),
        grant: GRANT.into(),
        message,
    }
}

/// Runs the handshake up to the first byte of the RDB.
pub async fn begin(conn: &mut Conn) -> Result<Handshake, RedisError> {
    match conn.call(&[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"]).await {
        Ok(_) => {}
        Err(RedisError::NoPermission { message, .. }) => return Err(permission(conn, "REPLCONF", message)),
        // Servers before 4.0 know no capabilities and send the RDB from disk.
        Err(RedisError::Server { .. }) => {}
        Err(e) => return Err(e),
    }
    let rdb_only = match conn.call(&[b"REPLCONF", b"rdb-only", b"1"]).await {
        Ok(_) => true,
        Err(RedisError::NoPermission { message, .. }) => return Err(permission(conn, "REPLCONF", message)),
        Err(RedisError::Server { .. }) => false,
        Err(e) => return Err(e),
    };
    conn.send(&[b"PSYNC", b"?", b"-1"]).await?;
    let mut line = next_line(conn).await?;
    let (mut replication_id, mut offset) = (None, None);
    if let Some(rest) = line.strip_prefix(b"+FULLRESYNC ") {
        let text = String::from_utf8_lossy(rest).into_owned();
        let mut parts = text.split_whitespace();
        replication_id = parts.next().map(str::to_string);
        offset = parts.next().and_then(|o| o.parse().ok());
        line = next_line(conn).await?;
    } else if line.starts_with(b"-ERR unknown command") {
        conn.send(&[b"SYNC"]).await?;
        line = next_line(conn).await?;
    }
    if let Some(message) = line.strip_prefix(b"-") {
        let message = String::from_utf8_lossy(message).into_owned();
        return Err(if message.starts_with("NOPERM") {
            permission(conn, "PSYNC", message)
        } else {
            RedisError::Server { server: conn.server.clone(), command: "PSYNC".into(), message }
        });
    }
    let framing = match line.strip_prefix(b"$") {
        Some(mark) if mark.starts_with(b"EOF:") && mark.len() == 4 + MARK_LEN => {
            Framing::Mark(mark[4..].try_into().expect("40 bytes"))
        }
        Some(len) => {
            Framing::Length(std::str::from_utf8(len).ok().and_then(|l| l.parse().ok()).ok_or_else(|| {
                conn.protocol(format!("unexpected payload header {:?}", String::from_utf8_lossy(&line)))
            })?)
        }
        None => {
            return Err(conn.protocol(format!(
                "expected the RDB payload, got {:?}",
                String::from_utf8_lossy(&line[..line.len().min(80)])
            )));
        }
    };
    Ok(Handshake { replication_id, offset, rdb_only, framing })
}

/// The next line that is not a keep-alive newline.
async fn next_line(conn: &mut Conn) -> Result<Bytes, RedisError> {
    loop {
        let line = conn.read_line().await?;
        if !line.is_empty() {
            return Ok(line);
        }
    }
}

/// Where the RDB's pieces go: the snapshot writer and the parser.
pub struct Tee {
    pub writer: flume::Sender<Result<Bytes, String>>,
    pub parser: flume::Sender<Bytes>,
}

impl Tee {
    /// Passes a piece on to both; `Some(which)` when one has stopped taking
    /// them (it failed, and says why itself).
    pub async fn send(&self, piece: Bytes) -> Option<Consumer> {
        if self.parser.send_async(piece.clone()).await.is_err() {
            return Some(Consumer::Parser);
        }
        if self.writer.send_async(Ok(piece)).await.is_err() {
            return Some(Consumer::Writer);
        }
        None
    }
}

/// The two consumers of the RDB's pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    Parser,
    Writer,
}

/// How the transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streamed {
    /// The whole RDB was passed on: this many bytes.
    Complete(u64),
    /// A consumer stopped taking pieces (its own error says why).
    ConsumerGone(Consumer),
}

/// Reads the RDB after [`begin`] and passes it on in pieces; `received`
/// counts its bytes. Stops at once, with [`RedisError::Interrupted`], when
/// `cancel` fires.
pub async fn stream(
    conn: Conn,
    framing: &Framing,
    tee: &Tee,
    cancel: &cairn_source::Cancel,
    received: &AtomicU64,
) -> Result<Streamed, RedisError> {
    let server = conn.server.clone();
    let (mut socket, mut buf) = conn.into_parts();
    let closed = |total: u64, expected: Option<u64>| RedisError::Protocol {
        server: server.clone(),
        message: format!(
            "the server closed the replication stream after {total}{} bytes of the RDB",
            expected.map(|e| format!(" of {e}")).unwrap_or_default()
        ),
    };
    let mut total = 0u64;
    loop {
        match framing {
            Framing::Length(len) => {
                let take = (buf.len() as u64).min(len - total) as usize;
                if take > 0 {
                    let piece = buf.split_to(take).freeze();
                    total += take as u64;
                    received.fetch_add(take as u64, Ordering::Relaxed);
                    if let Some(gone) = tee.send(piece).await {
                        return Ok(Streamed::ConsumerGone(gone));
                    }
                }
                // Whatever follows is the replication stream of a server
                // without rdb-only: not wanted.
                if total == *len {
                    return Ok(Streamed::Complete(total));
                }
            }
            Framing::Mark(mark) => {
                if buf.len() >= MARK_LEN && buf.ends_with(mark) {
                    let body = buf.split_to(buf.len() - MARK_LEN).freeze();
                    total += body.len() as u64;
                    received.fetch_add(body.len() as u64, Ordering::Relaxed);
                    if !body.is_empty()
                        && let Some(gone) = tee.send(body).await
                    {
                        return Ok(Streamed::ConsumerGone(gone));
                    }
                    return Ok(Streamed::Complete(total));
                }
                // The last 40 bytes may be the start of the mark: held back.
                if buf.len() >= MARK_LEN + PIECE {
                    let piece = buf.split_to(buf.len() - MARK_LEN).freeze();
                    total += piece.len() as u64;
                    received.fetch_add(piece.len() as u64, Ordering::Relaxed);
                    if let Some(gone) = tee.send(piece).await {
                        return Ok(Streamed::ConsumerGone(gone));
                    }
                }
            }
        }
        if buf.capacity() - buf.len() < PIECE {
            let mut fresh = BytesMut::with_capacity(2 * PIECE + MARK_LEN);
            fresh.extend_from_slice(&buf);
            buf = fresh;
        }
        let read = tokio::select! {
            _ = cancel.cancelled() => return Err(RedisError::Interrupted),
            r = tokio::time::timeout(READ_TIMEOUT, socket.read_buf(&mut buf)) => r,
        };
        match read {
            Ok(Ok(0)) => {
                let expected = match framing {
                    Framing::Length(len) => Some(*len),
                    Framing::Mark(_) => None,
                };
                return Err(closed(total + buf.len() as u64, expected));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(RedisError::Connect { server: server.clone(), message: e.to_string() }),
            Err(_) => {
                return Err(RedisError::Protocol {
                    server: server.clone(),
                    message: format!(
                        "the server sent nothing for {} s in the middle of the RDB",
                        READ_TIMEOUT.as_secs()
                    ),
                });
            }
        }
    }
}
