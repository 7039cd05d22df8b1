//! Restoring into a running server: `cairn restore ID --to redis://HOST:PORT
//! [--match PATTERN]… [--db-map 0=3] [--replace] [--dry-run]`.
//!
//! Every selected key goes in with `RESTORE key ABSTTL-expiry payload
//! ABSTTL [REPLACE]`, pipelined. The payload is what `DUMP` would have
//! given on the source: the value's bytes exactly as the RDB holds them,
//! cut out by the RDB reader as it decodes the value, behind their type
//! byte and followed by the RDB version and a CRC-64
//! ([`crate::rdb::dump_payload`]). The expiry stays absolute, so a key
//! restored later expires when it would have on the source (and one that
//! has expired since is not created).
//!
//! What exists in the target is never touched before the data replacing it
//! has been verified. The snapshot's RDB is therefore read twice:
//!
//! 1. The whole RDB is read and checked against the manifest (its length,
//!    CRC-64, and the key counts and digests of every database), choosing
//!    the keys on the way; then `EXISTS` asks which of them the target
//!    already holds. Without `--replace` any such key stops the restore
//!    before anything is written, naming the keys; a damaged blob or RDB
//!    stops it here too.
//! 2. The RDB is read again and the chosen keys are restored as they come.
//!    The blobs are the same (the repository addresses them by content and
//!    checks each as it is read), so what pass 1 verified is what is
//!    written; holding every payload in memory between the passes instead
//!    would bound restores by memory.
//!
//! A key created in the target between the check and its `RESTORE` is
//! refused by the server (`BUSYKEY`); that stops the restore and says so.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use cairn_source::RestoreJob;
use futures::TryStreamExt;
use serde::Serialize;

use crate::manifest::{RDB_FILE, RedisManifest};
use crate::rdb::{self, KeyRecord, KeyVisitor, RdbError, RdbReport, Received};
use crate::resp::{Conn, encode};
use crate::{RedisError, RedisTarget, pattern};

/// Commands per pipeline.
const BATCH: usize = 256;
/// Payload bytes per pipeline, beyond which it is sent at once.
const BATCH_BYTES: usize = 8 << 20;
/// Keys in flight between the RDB reader and the connection.
const IN_FLIGHT: usize = 64;
/// Existing keys named in a refusal.
const NAMED: usize = 5;

/// What to restore where.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub target: RedisTarget,
    /// Keys matching any of these (Redis glob patterns); none: every key.
    pub patterns: Vec<Vec<u8>>,
    /// Source database to target database; unmapped ones keep their number.
    pub db_map: BTreeMap<u32, u32>,
    /// Replace keys the target holds (`RESTORE … REPLACE`).
    pub replace: bool,
}

/// What a live restore will do (a dry run's answer) and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LivePlan {
    pub server: String,
    /// Keys chosen, by target database.
    pub databases: BTreeMap<u32, u64>,
    pub keys: u64,
    /// Keys matching the selection that had expired by the restore's start.
    pub expired: u64,
    /// Keys the target already holds (replaced with `--replace`).
    pub existing: u64,
    /// Some of those, by target database, for messages.
    pub existing_named: Vec<(u32, String)>,
    /// Keys restored (0 for a dry run).
    pub restored: u64,
    pub payload_bytes: u64,
}

/// A key to restore, as the reader hands it to the connection.
struct Item {
    db: u32,
    key: Vec<u8>,
    expiry_ms: Option<i64>,
    payload: Vec<u8>,
}

/// Chooses keys from the RDB: pass 1 notes them, pass 2 sends them on.
struct Chooser {
    patterns: Vec<Vec<u8>>,
    db_map: BTreeMap<u32, u32>,
    now_ms: i64,
    chosen: Vec<(u32, Vec<u8>)>,
    expired: u64,
    send: Option<flume::Sender<Item>>,
}

impl Chooser {
    fn selected(&self, key: &[u8]) -> bool {
        pattern::any(&self.patterns, key)
    }

    fn target_db(&self, db: u32) -> u32 {
        self.db_map.get(&db).copied().unwrap_or(db)
    }
}

impl KeyVisitor for Chooser {
    fn wants_raw(&mut self, _db: u32, key: &[u8]) -> bool {
        self.send.is_some() && self.selected(key)
    }

    fn key(&mut self, record: KeyRecord) -> Result<(), RdbError> {
        if !self.selected(&record.key) {
            return Ok(());
        }
        if record.expiry_ms.is_some_and(|e| e <= self.now_ms) {
            self.expired += 1;
            return Ok(());
        }
        let db = self.target_db(record.db);
        match &self.send {
            None => self.chosen.push((db, record.key)),
            Some(send) => {
                let payload = record.dump_payload().expect("asked for the raw value");
                let item = Item { db, key: record.key, expiry_ms: record.expiry_ms, payload };
                send.send(item).map_err(|_| RdbError::Source("the restore stopped".into()))?;
            }
        }
        Ok(())
    }
}

/// A key's name for messages: printable, at most 80 bytes.
fn shown(key: &[u8]) -> String {
    String::from_utf8_lossy(&key[..key.len().min(80)]).into_owned()
}

/// Reads the snapshot's RDB through `visitor` and checks it against the manifest.
async fn read_checked(
    job: &RestoreJob<'_>,
    manifest: &RedisManifest,
    node: &cairn_repo::tree::Node,
    mut visitor: Chooser,
) -> Result<Chooser, RedisError> {
    let (tx, rx) = flume::bounded::<Bytes>(16);
    let reader = tokio::task::spawn_blocking(move || {
        let report = rdb::read_rdb_with(Received(rx), &AtomicU64::new(0), &mut visitor);
        // The end of the keys, for the connection's side.
        let sending = visitor.send.take().is_some();
        (report, visitor, sending)
    });
    let feed = async {
        let mut blobs = std::pin::pin!(job.reader.stream(node, cairn_repo::reader::READ_AHEAD));
        while let Some(blob) = blobs.try_next().await? {
            if job.cancel.is_cancelled() {
                return Err(RedisError::Interrupted);
            }
            if tx.send_async(blob).await.is_err() {
                break; // the reader stopped; its error is the one to report
            }
        }
        drop(tx);
        Ok(())
    };
    let fed = feed.await;
    let (report, visitor, sending) = reader.await.map_err(|e| RedisError::DamagedSnapshot {
        path: RDB_FILE.into(),
        message: format!("the RDB reader stopped: {e}"),
    })?;
    fed?;
    let report: RdbReport = match report {
        Ok(r) => r,
        // The connection's side stopped taking keys: its error is the one to report.
        Err(RdbError::Source(_)) if sending => return Ok(visitor),
        Err(e) => return Err(RedisError::DamagedSnapshot { path: RDB_FILE.into(), message: e.to_string() }),
    };
    let differences = manifest.differences(&report);
    if !differences.is_empty() {
        return Err(RedisError::DamagedSnapshot {
            path: RDB_FILE.into(),
            message: format!("it does not read back as backed up: {}", differences.join("; ")),
        });
    }
    Ok(visitor)
}

/// Which of `keys` (by target database) the server holds.
async fn existing(conn: &mut Conn, keys: &[(u32, Vec<u8>)]) -> Result<(u64, Vec<(u32, String)>), RedisError> {
    let mut by_db: BTreeMap<u32, Vec<&[u8]>> = BTreeMap::new();
    for (db, key) in keys {
        by_db.entry(*db).or_default().push(key);
    }
    let (mut count, mut named) = (0u64, Vec::new());
    for (db, keys) in by_db {
        conn.call(&[b"SELECT", db.to_string().as_bytes()]).await?;
        for batch in keys.chunks(BATCH) {
            let mut out = Vec::with_capacity(batch.len() * 32);
            for k in batch {
                encode(&mut out, &[b"EXISTS", k]);
            }
            conn.write(&out).await?;
            for k in batch {
                let reply = conn.reply().await?;
                if conn.check(b"EXISTS", reply)?.as_int().unwrap_or(0) > 0 {
                    count += 1;
                    if named.len() < NAMED {
                        named.push((db, shown(k)));
                    }
                }
            }
        }
    }
    Ok((count, named))
}

/// Sends the pipelined `RESTORE`s of what the reader chose.
async fn restore_all(
    conn: &mut Conn,
    items: flume::Receiver<Item>,
    replace: bool,
    cancel: &cairn_source::Cancel,
) -> Result<(u64, u64), RedisError> {
    let (mut restored, mut bytes) = (0u64, 0u64);
    let mut db: Option<u32> = None;
    let mut out = Vec::new();
    // The key of each command in the pipeline (`None`: a SELECT).
    let mut sent: Vec<Option<Vec<u8>>> = Vec::new();
    let mut ended = false;
    while !ended {
        match items.recv_async().await {
            Ok(item) => {
                if cancel.is_cancelled() {
                    return Err(RedisError::Interrupted);
                }
                if db != Some(item.db) {
                    encode(&mut out, &[b"SELECT", item.db.to_string().as_bytes()]);
                    sent.push(None);
                    db = Some(item.db);
                }
                let ttl = item.expiry_ms.unwrap_or(0).to_string();
                let mut args: Vec<&[u8]> = vec![b"RESTORE", &item.key, ttl.as_bytes(), &item.payload];
                if item.expiry_ms.is_some() {
                    args.push(b"ABSTTL");
                }
                if replace {
                    args.push(b"REPLACE");
                }
                encode(&mut out, &args);
                bytes += item.payload.len() as u64;
                sent.push(Some(item.key));
            }
            Err(_) => ended = true,
        }
        if sent.len() >= BATCH || out.len() >= BATCH_BYTES || (ended && !sent.is_empty()) {
            conn.write(&out).await?;
            out.clear();
            let mut first_error = None;
            for key in sent.drain(..) {
                let reply = conn.reply().await?;
                let command: &[u8] = if key.is_some() { b"RESTORE" } else { b"SELECT" };
                match (conn.check(command, reply), key) {
                    (Ok(_), Some(_)) => restored += 1,
                    (Ok(_), None) => {}
                    (Err(e), key) => {
                        if first_error.is_none() {
                            first_error = Some(match (e, key) {
                                (RedisError::Server { server, message, .. }, Some(k))
                                    if message.starts_with("BUSYKEY") =>
                                {
                                    RedisError::KeysExist {
                                        server,
                                        count: 1,
                                        named: format!("{} (created since the check)", shown(&k)),
                                        restored,
                                    }
                                }
                                (RedisError::Server { server, command, message }, Some(k)) => {
                                    RedisError::Server {
                                        server,
                                        command,
                                        message: format!(
                                            "{message} (key {}; {restored} keys restored before it)",
                                            shown(&k)
                                        ),
                                    }
                                }
                                (e, _) => e,
                            });
                        }
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        }
    }
    Ok((restored, bytes))
}

/// Restores the snapshot's keys into a live server.
pub async fn restore(job: &RestoreJob<'_>, opts: &LiveOptions) -> Result<LivePlan, RedisError> {
    let manifest = RedisManifest::read(&job.reader).await?;
    let node = job.reader.file(RDB_FILE).await?;
    let mut conn = Conn::open(&opts.target).await?;
    let now_ms = crate::live::server_time_ms(&mut conn).await?;
    let chooser = |send| Chooser {
        patterns: opts.patterns.clone(),
        db_map: opts.db_map.clone(),
        now_ms,
        chosen: Vec::new(),
        expired: 0,
        send,
    };
    // Pass 1: the whole RDB verified, the keys chosen, the target asked.
    let chosen = read_checked(job, &manifest, &node, chooser(None)).await?;
    let mut plan = LivePlan { server: conn.server.clone(), expired: chosen.expired, ..LivePlan::default() };
    for (db, _) in &chosen.chosen {
        *plan.databases.entry(*db).or_default() += 1;
    }
    plan.keys = chosen.chosen.len() as u64;
    let (count, named) = existing(&mut conn, &chosen.chosen).await?;
    drop(chosen);
    plan.existing = count;
    plan.existing_named = named;
    if plan.existing > 0 && !opts.replace && !job.request.dry_run {
        return Err(RedisError::KeysExist {
            server: plan.server,
            count: plan.existing,
            named: plan
                .existing_named
                .iter()
                .map(|(db, k)| format!("db{db} {k}"))
                .collect::<Vec<_>>()
                .join(", "),
            restored: 0,
        });
    }
    if job.request.dry_run || plan.keys == 0 {
        return Ok(plan);
    }
    // Pass 2: the same blobs again, each chosen key restored as it is read.
    let (tx, rx) = flume::bounded::<Item>(IN_FLIGHT);
    let reading = read_checked(job, &manifest, &node, chooser(Some(tx)));
    let writing = restore_all(&mut conn, rx, opts.replace, &job.cancel);
    let (read, written) = tokio::join!(reading, writing);
    let (restored, bytes) = written?;
    read?;
    plan.restored = restored;
    plan.payload_bytes = bytes;
    tracing::info!(server = %plan.server, keys = restored, "keys restored");
    Ok(plan)
}

/// `--db-map FROM=TO` values.
pub fn parse_db_map(values: &[String]) -> Result<BTreeMap<u32, u32>, RedisError> {
    let mut map = BTreeMap::new();
    for v in values {
        let parsed =
            v.split_once('=').and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
        let Some((from, to)) = parsed else {
            return Err(RedisError::Usage(format!(
                "--db-map {v:?}: expected FROM=TO, two database numbers (e.g. --db-map 0=3)"
            )));
        };
        if map.insert(from, to).is_some() {
            return Err(RedisError::Usage(format!("--db-map names database {from} twice")));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_maps_parse_and_refuse_nonsense() {
        let m = parse_db_map(&["0=3".into(), " 2 = 5".into()]).unwrap();
        assert_eq!(m, BTreeMap::from([(0, 3), (2, 5)]));
        for bad in ["0", "a=1", "0=", "0=-1"] {
            assert!(parse_db_map(&[bad.into()]).is_err(), "{bad} was accepted");
        }
        assert!(parse_db_map(&["0=1".into(), "0=2".into()]).is_err());
        let c = Chooser {
            patterns: Vec::new(),
            db_map: m,
            now_ms: 0,
            chosen: Vec::new(),
            expired: 0,
            send: None,
        };
        assert_eq!((c.target_db(0), c.target_db(1)), (3, 1));
    }
}
