//! A live server's key space, counted and digested as the backup counted
//! and digested the RDB ([`crate::rdb::digest`]), and compared with a
//! snapshot's manifest: `verify --against redis://…`, and `restore --start
//! --verify`.
//!
//! Every key is read with `DUMP` (its value in RDB form, decoded by the same
//! reader as the backup's RDB) and `PEXPIRETIME` (Redis 7; older servers
//! give `PTTL`, so their expiry times are only near the recorded ones),
//! pipelined, database by database, over `SCAN` (which may return a key
//! twice; each is counted once). Keys with a time to live make an exact
//! comparison possible only until the first of them expires: after that,
//! the keys without one are compared (count per type and digest) and the
//! others are not.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use bytes::Bytes;
use cairn_source::ObjectCheck;
use sha2::{Digest, Sha256};

use crate::RedisError;
use crate::manifest::RedisManifest;
use crate::rdb::{self, DbStats, KeyKind};
use crate::resp::{Conn, Reply, encode};

/// Keys read per pipeline.
const BATCH: usize = 256;

/// What a live server holds.
#[derive(Debug, Clone, Default)]
pub struct LiveKeyspace {
    pub databases: BTreeMap<u32, DbStats>,
    /// The server's clock when the reading began (Unix milliseconds).
    pub now_ms: i64,
    /// Expiry times came from `PTTL` (Redis before 7), not exact.
    pub approximate_expiry: bool,
}

/// Keys per database as `INFO keyspace` lists them (databases holding keys).
pub async fn keyspace_info(conn: &mut Conn) -> Result<Vec<(u32, u64)>, RedisError> {
    let info = conn.call(&[b"INFO", b"keyspace"]).await?;
    let Reply::Bulk(Some(text)) = info else { return Ok(Vec::new()) };
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| {
            let (db, rest) = l.strip_prefix("db")?.split_once(':')?;
            let keys = rest.split(',').find_map(|f| f.strip_prefix("keys="))?;
            Some((db.parse().ok()?, keys.parse().ok()?))
        })
        .collect())
}

/// The server's clock, Unix milliseconds.
pub async fn server_time_ms(conn: &mut Conn) -> Result<i64, RedisError> {
    let time = conn.call(&[b"TIME"]).await?.into_array().unwrap_or_default();
    match (time.first().and_then(Reply::as_int), time.get(1).and_then(Reply::as_int)) {
        (Some(s), Some(us)) => Ok(s * 1000 + us / 1000),
        _ => Err(conn.protocol("TIME did not answer seconds and microseconds")),
    }
}

/// Reads the key spaces of `dbs` and of every database holding keys.
/// `reference_ms` is the snapshot's time, so keys count as the backup counted them.
pub async fn read_keyspace(
    conn: &mut Conn,
    dbs: impl IntoIterator<Item = u32>,
    reference_ms: Option<i64>,
    cancel: &cairn_source::Cancel,
) -> Result<LiveKeyspace, RedisError> {
    let now_ms = server_time_ms(conn).await?;
    let mut all: BTreeSet<u32> = dbs.into_iter().collect();
    all.extend(keyspace_info(conn).await?.into_iter().map(|(db, _)| db));
    let mut live = LiveKeyspace { now_ms, ..LiveKeyspace::default() };
    let mut exact_expiry = true;
    for db in all {
        conn.call(&[b"SELECT", db.to_string().as_bytes()]).await?;
        let stats = live.databases.entry(db).or_default();
        let mut seen: HashSet<[u8; 16]> = HashSet::new();
        let mut cursor = Bytes::from_static(b"0");
        loop {
            if cancel.is_cancelled() {
                return Err(RedisError::Interrupted);
            }
            let (next, keys) = scan_page(conn, &cursor, None, &mut seen).await?;
            for batch in keys.chunks(BATCH) {
                for (key, payload, expiry) in dump_batch(conn, batch, now_ms, &mut exact_expiry).await? {
                    let value = rdb::read_dump(payload).map_err(|e| {
                        conn.protocol(format!(
                            "DUMP of key {:?}: {e}",
                            String::from_utf8_lossy(&key[..key.len().min(80)])
                        ))
                    })?;
                    stats.add(&key, &value, expiry, reference_ms);
                }
            }
            if next.as_ref() == b"0" {
                break;
            }
            cursor = next;
        }
    }
    live.approximate_expiry = !exact_expiry;
    live.databases.retain(|_, d| d.keys > 0 || d.expired > 0);
    Ok(live)
}

/// One page of `SCAN` (with `MATCH` when given): the next cursor and the
/// keys `seen` had not held (`SCAN` may return a key twice).
pub async fn scan_page(
    conn: &mut Conn,
    cursor: &[u8],
    pattern: Option<&[u8]>,
    seen: &mut HashSet<[u8; 16]>,
) -> Result<(Bytes, Vec<Bytes>), RedisError> {
    let mut args: Vec<&[u8]> = vec![b"SCAN", cursor, b"COUNT", b"1000"];
    if let Some(p) = pattern {
        args.extend([b"MATCH".as_slice(), p]);
    }
    let reply = conn.call(&args).await?;
    let mut parts = reply.into_array().unwrap_or_default().into_iter();
    let next = parts.next().and_then(Reply::into_bulk).ok_or_else(|| conn.protocol("SCAN gave no cursor"))?;
    let keys = parts
        .next()
        .and_then(Reply::into_array)
        .unwrap_or_default()
        .into_iter()
        .filter_map(Reply::into_bulk)
        .filter(|k| seen.insert(Sha256::digest(k)[..16].try_into().expect("16 bytes")))
        .collect();
    Ok((next, keys))
}

/// `DUMP` and the expiry of each key, pipelined: the keys still there, each
/// with its payload (its CRC-64 checked) and absolute expiry. Expiry times
/// come from `PEXPIRETIME`; a server without it (before Redis 7) turns
/// `exact_expiry` off and the times are `now_ms` plus `PTTL`.
pub async fn dump_batch(
    conn: &mut Conn,
    keys: &[Bytes],
    now_ms: i64,
    exact_expiry: &mut bool,
) -> Result<Vec<(Bytes, Bytes, Option<i64>)>, RedisError> {
    let expiry_command: &[u8] = if *exact_expiry { b"PEXPIRETIME" } else { b"PTTL" };
    let mut out = Vec::with_capacity(keys.len() * 48);
    for k in keys {
        encode(&mut out, &[b"DUMP", k]);
        encode(&mut out, &[expiry_command, k]);
    }
    conn.write(&out).await?;
    let mut replies = Vec::with_capacity(keys.len());
    let mut unknown_command = false;
    for _ in keys {
        let dump = conn.reply().await?;
        let expiry = conn.reply().await?;
        if matches!(&expiry, Reply::Error(e) if e.starts_with("ERR unknown command")) {
            unknown_command = true;
        }
        replies.push((dump, expiry));
    }
    if unknown_command && *exact_expiry {
        // Redis before 7: no PEXPIRETIME. Read this batch again with PTTL.
        *exact_expiry = false;
        return Box::pin(dump_batch(conn, keys, now_ms, exact_expiry)).await;
    }
    let mut found = Vec::with_capacity(keys.len());
    for (key, (dump, expiry)) in keys.iter().zip(replies) {
        let Some(payload) = conn.check(b"DUMP", dump)?.into_bulk() else { continue }; // gone since SCAN
        let expiry = match conn.check(expiry_command, expiry)?.as_int() {
            Some(-2) => continue,
            Some(-1) | None => None,
            Some(t) if *exact_expiry => Some(t),
            Some(ttl) => Some(now_ms + ttl),
        };
        let n = payload.len();
        let recorded = (n >= 11).then(|| u64::from_le_bytes(payload[n - 8..].try_into().expect("8 bytes")));
        if recorded.is_none_or(|r| r != 0 && r != crate::crc64::crc64(&payload[..n - 8])) {
            return Err(conn.protocol(format!(
                "the DUMP of key {:?} is damaged",
                String::from_utf8_lossy(&key[..key.len().min(80)])
            )));
        }
        found.push((key.clone(), payload, expiry));
    }
    Ok(found)
}

/// Compares a live key space with a snapshot's manifest, database by
/// database: key counts, per type counts and the content digest.
pub fn compare(snapshot: &RedisManifest, live: &LiveKeyspace) -> Vec<ObjectCheck> {
    let first_expiry = snapshot.databases.values().filter_map(|d| d.first_expiry_ms).min();
    let exact = !live.approximate_expiry && first_expiry.is_none_or(|t| t > live.now_ms);
    if !exact {
        tracing::warn!(
            "keys with a time to live are not compared: {}; keys without one are",
            if live.approximate_expiry {
                "this server reports only remaining times (PTTL), not expiry times".to_string()
            } else {
                format!(
                    "the first of them expired at {} (Unix ms), after the backup",
                    first_expiry.unwrap_or_default()
                )
            }
        );
    }
    let none = DbStats::default();
    let dbs: BTreeSet<u32> = snapshot.databases.keys().chain(live.databases.keys()).copied().collect();
    let mut checks = Vec::new();
    for db in dbs {
        let s = snapshot.databases.get(&db).unwrap_or(&none);
        let l = live.databases.get(&db).unwrap_or(&none);
        let (suffix, count, digest_ok): (&str, fn(&DbStats) -> u64, bool) = if exact {
            ("", |d| d.keys, s.digest == l.digest)
        } else {
            (" (keys without a TTL)", DbStats::persistent, s.persistent_digest == l.persistent_digest)
        };
        checks.push(ObjectCheck {
            kind: "keys".into(),
            name: format!("db{db}{suffix}"),
            expected: count(s),
            actual: Some(count(l)),
            content_matches: Some(digest_ok),
        });
        let kinds: BTreeSet<KeyKind> = s.types.keys().chain(l.types.keys()).copied().collect();
        for kind in kinds {
            let of = |d: &DbStats| {
                d.types.get(&kind).map(|t| if exact { t.keys } else { t.keys - t.volatile }).unwrap_or(0)
            };
            checks.push(ObjectCheck {
                kind: "keys".into(),
                name: format!("db{db} {}{suffix}", kind.name()),
                expected: of(s),
                actual: Some(of(l)),
                content_matches: None,
            });
        }
    }
    checks
}
