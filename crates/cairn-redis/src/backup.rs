//! A backup: the RDB pulled over the replication protocol ([`crate::sync`])
//! and streamed into the snapshot as `dump.rdb` while the RDB reader
//! ([`crate::rdb`]) checks and counts it on a thread of its own. Nothing
//! is written to local disk; the snapshot is written only when the whole
//! RDB arrived, its CRC-64 matched and every value decoded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cairn_repo::archive::Chunking;
use cairn_repo::chunker::ChunkerParams;
use cairn_repo::{Id, SaverOptions, Snapshot};
use cairn_source::{BackupJob, ObjectEntry, SnapshotWriter};

use crate::manifest::{LogicalScope, MANIFEST_FILE, RDB_FILE, RedisManifest, Replication};
use crate::rdb::{self, RdbReport, Received};
use crate::resp::Conn;
use crate::sync::{self, Consumer, Framing, Streamed, Tee};
use crate::{RedisError, RedisTarget};

/// Chunk sizes of the RDB stream (4 KiB min, 16 KiB average, 64 KiB max).
/// A night's changes are scattered keys rewritten in place (the file keeps
/// the hash table's order while the server runs): a changed key costs the
/// chunk around it, so smaller chunks store less of what did not change.
pub const RDB_CHUNKS: ChunkerParams = ChunkerParams { min: 4 << 10, avg: 16 << 10, max: 64 << 10 };

/// Pieces in flight between the network and each consumer (about 128 KiB each).
const PIECES_IN_FLIGHT: usize = 32;

/// Live counters of a running backup.
#[derive(Debug, Default)]
pub struct BackupProgress {
    pub bytes: AtomicU64,
    /// The RDB's length, when the server said it in advance.
    pub total: AtomicU64,
    pub keys: Arc<AtomicU64>,
}

/// What a backup produced.
#[derive(Debug)]
pub struct BackupResult {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    pub manifest: RedisManifest,
}

pub async fn backup(
    job: &BackupJob<'_>,
    target: &RedisTarget,
    progress: Arc<BackupProgress>,
) -> Result<BackupResult, RedisError> {
    let started = chrono::Local::now().fixed_offset();
    let mut conn = Conn::open(target).await?;
    // The index is loaded before the server is asked for the RDB: a primary
    // gives up on a replica that does not read for `repl-timeout` (60 s).
    let writer = SnapshotWriter::start(job, "redis", "physical", RDB_CHUNKS, SaverOptions::default()).await?;
    let handshake = sync::begin(&mut conn).await?;
    if let Framing::Length(len) = handshake.framing {
        progress.total.store(len, Ordering::Relaxed);
    }
    tracing::info!(
        server = %target.server(),
        diskless = handshake.diskless(),
        rdb_only = handshake.rdb_only,
        "receiving the RDB"
    );
    if !handshake.diskless() {
        tracing::info!(
            "the server saved the RDB to its own disk before sending it (repl-diskless-sync no, or a server older than 4.0)"
        );
    }
    let report = store_rdb(job, &writer, target, &progress, async |tee: &Tee| {
        sync::stream(conn, &handshake.framing, tee, &job.cancel, &progress.bytes).await
    })
    .await?;
    let replication = Replication {
        id: handshake.replication_id.clone(),
        offset: handshake.offset,
        diskless: handshake.diskless(),
        rdb_only: handshake.rdb_only,
    };
    let manifest = RedisManifest::new(target.server(), &report, replication, started);
    finish(writer, target, manifest).await
}

/// A logical backup: the keys `SCAN` finds (matching a pattern, in one
/// database or all), each read with `DUMP` and `PEXPIRETIME` and written
/// as an RDB of their own ([`crate::logical`]), so it restores, checks and
/// compares as a physical one does.
pub async fn backup_logical(
    job: &BackupJob<'_>,
    target: &RedisTarget,
    progress: Arc<BackupProgress>,
    scope: LogicalScope,
) -> Result<BackupResult, RedisError> {
    let started = chrono::Local::now().fixed_offset();
    let conn = Conn::open(target).await?;
    let writer = SnapshotWriter::start(job, "redis", "logical", RDB_CHUNKS, SaverOptions::default()).await?;
    tracing::info!(server = %target.server(), pattern = ?scope.pattern, db = ?scope.db, "reading keys");
    let report = store_rdb(job, &writer, target, &progress, async |tee: &Tee| {
        crate::logical::stream(conn, &scope, tee, &job.cancel, &progress.bytes).await
    })
    .await?;
    let replication = Replication { id: None, offset: None, diskless: false, rdb_only: false };
    let mut manifest = RedisManifest::new(target.server(), &report, replication, started);
    manifest.logical = Some(scope);
    finish(writer, target, manifest).await
}

/// Streams the RDB `produce` passes to the [`Tee`] into the snapshot and
/// through the RDB reader at once; the report of an RDB stored whole.
async fn store_rdb(
    job: &BackupJob<'_>,
    writer: &SnapshotWriter,
    target: &RedisTarget,
    progress: &BackupProgress,
    produce: impl AsyncFnOnce(&Tee) -> Result<Streamed, RedisError>,
) -> Result<RdbReport, RedisError> {
    let (to_writer, from_net) = flume::bounded::<Result<Bytes, String>>(PIECES_IN_FLIGHT);
    let (to_parser, parser_input) = flume::bounded::<Bytes>(PIECES_IN_FLIGHT);
    let keys = progress.keys.clone();
    let parse = tokio::task::spawn_blocking(move || rdb::read_rdb(Received(parser_input), &keys));
    let tee = Tee { writer: to_writer, parser: to_parser };
    let produce = async {
        let result = produce(&tee).await;
        // The stored stream must fail, not end early, when the RDB did not arrive whole.
        if !matches!(result, Ok(Streamed::Complete(_))) {
            let _ = tee.writer.send_async(Err("the RDB did not arrive whole".into())).await;
        }
        drop(tee);
        result
    };
    let store = writer.add_stream_with(RDB_FILE, from_net.into_stream(), None, Chunking::ContentDefined);
    let (produced, stored) = tokio::join!(produce, store);
    let parsed = parse.await.map_err(|e| RedisError::Protocol {
        server: target.server(),
        message: format!("the RDB reader stopped: {e}"),
    })?;
    // The first cause wins: the server's side, then whichever consumer
    // stopped taking the RDB, then the RDB's content, then the repository.
    let bad_rdb = |source| RedisError::BadRdb { server: target.server(), source };
    let report: RdbReport = match (produced?, parsed, stored) {
        (Streamed::ConsumerGone(Consumer::Writer), _, Err(e)) => return Err(e.into()),
        (_, Err(e), _) => return Err(bad_rdb(e)),
        (_, Ok(_), Err(e)) => return Err(e.into()),
        (Streamed::ConsumerGone(_), Ok(_), Ok(_)) => {
            return Err(RedisError::Protocol {
                server: target.server(),
                message: "the RDB was not stored whole".into(),
            });
        }
        (Streamed::Complete(_), Ok(report), Ok(file)) => {
            if file.size != report.bytes {
                return Err(RedisError::Protocol {
                    server: target.server(),
                    message: format!("stored {} bytes of an RDB of {}", file.size, report.bytes),
                });
            }
            report
        }
    };
    if job.cancel.is_cancelled() {
        return Err(RedisError::Interrupted);
    }
    Ok(report)
}

/// The manifest, the objects and the snapshot.
async fn finish(
    writer: SnapshotWriter,
    target: &RedisTarget,
    manifest: RedisManifest,
) -> Result<BackupResult, RedisError> {
    writer
        .add_bytes(MANIFEST_FILE, serde_json::to_vec_pretty(&manifest).expect("manifests serialise"))
        .await?;
    for (db, stats) in &manifest.databases {
        writer.add_object(ObjectEntry {
            kind: "database".into(),
            name: format!("db{db}"),
            count: stats.keys,
            streams: vec![RDB_FILE.into()],
        });
    }
    writer.add_total("databases", manifest.databases.len() as u64);
    writer.add_total("keys", manifest.keys());
    writer.add_total("expires", manifest.databases.values().map(|d| d.volatile).sum());
    if let Some(v) = &manifest.redis_version {
        writer.set_source_version(format!("Redis {v}"));
    }
    let metadata = serde_json::json!({
        "kind": if manifest.logical.is_some() { "logical" } else { "physical" },
        "redis_version": manifest.redis_version,
        "rdb_version": manifest.rdb_version,
        "databases": manifest.databases.len(),
        "keys": manifest.keys(),
        "replication_id": manifest.replication.id,
        "replication_offset": manifest.replication.offset,
        "logical": manifest.logical,
    });
    let (snapshot_id, snapshot) =
        writer.finish(vec![format!("redis://{}", target.server())], Vec::new(), metadata).await?;
    Ok(BackupResult { snapshot_id, snapshot, manifest })
}
