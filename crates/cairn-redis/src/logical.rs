//! A logical backup's RDB: the keys `SCAN` finds, each read with `DUMP`
//! (its value in RDB form) and `PEXPIRETIME` (its absolute expiry; `PTTL`
//! on servers before 7), written out as an RDB of their own — the header,
//! a `SELECTDB` per database, per key its expiry, type byte, name and the
//! value's bytes from the payload, the end and the CRC-64.
//!
//! So a logical snapshot is a `dump.rdb` like a physical one: the same
//! reader checks and counts it as it streams, it restores into a data
//! directory or a live server, and `verify --against` compares it. It is
//! for partial backups (a pattern, a database) and for servers that do not
//! allow replication (`PSYNC`) to the backup user. It is not a point in
//! time: each key is as it was when it was read, and a key written during
//! the scan may be missed or read as of after the write (`SCAN` returns
//! every key that exists throughout it at least once).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::RedisError;
use crate::crc64::Crc64;
use crate::live::{dump_batch, keyspace_info, scan_page};
use crate::manifest::LogicalScope;
use crate::rdb::encode_length;
use crate::resp::{Conn, info_field};
use crate::sync::{Streamed, Tee};
use bytes::Bytes;

/// Keys read per pipeline.
const BATCH: usize = 256;
/// Bytes gathered before they are passed on as one piece.
const PIECE: usize = 128 << 10;
/// The RDB version of a backup that found no key (every Redis since 5 loads it).
const EMPTY_VERSION: u16 = 9;

/// The RDB being written: bytes not yet passed on, and the CRC of all before them.
struct Out<'a> {
    tee: &'a Tee,
    buf: Vec<u8>,
    crc: Crc64,
    total: u64,
    received: &'a AtomicU64,
    header: bool,
    aux: Vec<(String, String)>,
}

impl Out<'_> {
    /// Passes the buffer on; `false` when a consumer stopped.
    async fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        self.crc.update(&self.buf);
        let piece = Bytes::from(std::mem::take(&mut self.buf));
        self.total += piece.len() as u64;
        self.received.fetch_add(piece.len() as u64, Ordering::Relaxed);
        self.tee.send(piece).await.is_none()
    }

    fn header(&mut self, version: u16) {
        if self.header {
            return;
        }
        self.header = true;
        self.buf.extend_from_slice(format!("REDIS{version:04}").as_bytes());
        for (k, v) in std::mem::take(&mut self.aux) {
            self.buf.push(0xfa);
            string(&mut self.buf, k.as_bytes());
            string(&mut self.buf, v.as_bytes());
        }
    }
}

fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    encode_length(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads the keys of `scope` and passes them on as an RDB.
pub async fn stream(
    mut conn: Conn,
    scope: &LogicalScope,
    tee: &Tee,
    cancel: &cairn_source::Cancel,
    received: &AtomicU64,
) -> Result<Streamed, RedisError> {
    let info = conn.call(&[b"INFO", b"server"]).await?;
    let version = info_field(&info, "redis_version");
    let now_ms = crate::live::server_time_ms(&mut conn).await?;
    let now_s = now_ms / 1000;
    let pattern = scope.pattern.as_deref().map(str::as_bytes);
    let dbs: Vec<u32> = match scope.db {
        Some(db) => vec![db],
        None => keyspace_info(&mut conn).await?.into_iter().map(|(db, _)| db).collect(),
    };
    let mut aux = vec![("ctime".to_string(), now_s.to_string())];
    if let Some(v) = version {
        aux.insert(0, ("redis-ver".into(), v));
    }
    let mut out = Out { tee, buf: Vec::new(), crc: Crc64::new(), total: 0, received, header: false, aux };
    let mut exact_expiry = true;
    for db in dbs {
        conn.call(&[b"SELECT", db.to_string().as_bytes()]).await?;
        let mut selected = false;
        let mut seen: HashSet<[u8; 16]> = HashSet::new();
        let mut cursor = Bytes::from_static(b"0");
        loop {
            if cancel.is_cancelled() {
                return Err(RedisError::Interrupted);
            }
            let (next, keys) = scan_page(&mut conn, &cursor, pattern, &mut seen).await?;
            for batch in keys.chunks(BATCH) {
                for (key, payload, expiry) in dump_batch(&mut conn, batch, now_ms, &mut exact_expiry).await? {
                    let body = payload.len() - 10;
                    let v = u16::from_le_bytes([payload[body], payload[body + 1]]);
                    out.header(v);
                    if !selected {
                        out.buf.push(0xfe);
                        encode_length(&mut out.buf, u64::from(db));
                        selected = true;
                    }
                    if let Some(t) = expiry {
                        out.buf.push(0xfc);
                        out.buf.extend_from_slice(&t.to_le_bytes());
                    }
                    out.buf.push(payload[0]);
                    string(&mut out.buf, &key);
                    out.buf.extend_from_slice(&payload[1..body]);
                    if out.buf.len() >= PIECE && !out.flush().await {
                        return Ok(gone(tee));
                    }
                }
            }
            if next.as_ref() == b"0" {
                break;
            }
            cursor = next;
        }
    }
    out.header(EMPTY_VERSION);
    out.buf.push(0xff);
    let mut crc = out.crc;
    crc.update(&out.buf);
    out.buf.extend_from_slice(&crc.value().to_le_bytes());
    if !out.flush().await {
        return Ok(gone(tee));
    }
    Ok(Streamed::Complete(out.total))
}

/// Which consumer stopped (the parser is asked first, as [`Tee::send`] does).
fn gone(tee: &Tee) -> Streamed {
    let which = if tee.parser.is_disconnected() {
        crate::sync::Consumer::Parser
    } else {
        crate::sync::Consumer::Writer
    };
    Streamed::ConsumerGone(which)
}
