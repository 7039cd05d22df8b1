//! Restoring into a data directory: `dump.rdb` for a new instance, and
//! optionally the server started on it.
//!
//! The RDB is written beside its destination (`.cairn-restore-<pid>.dump.rdb.part`)
//! from verified blobs only, and read back by the RDB reader as it is
//! written, on the same thread: it must end where the manifest says, with
//! the recorded CRC-64 and the recorded key counts and digests of every
//! database. Only then is it fsynced and renamed into place (over an
//! existing `dump.rdb` only with `--overwrite`), and the directory fsynced,
//! so a crash or a damaged snapshot never leaves a `dump.rdb` a server
//! would load half of.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use cairn_source::{Overwrite, RestoreJob};
use futures::TryStreamExt;
use serde::Serialize;

use crate::manifest::{RDB_FILE, RedisManifest};
use crate::rdb::{self, Pieces, RdbReport};
use crate::resp::Conn;
use crate::server::{self, Started};
use crate::{RedisError, live};

/// What a restore will do (a dry run's answer) and did.
#[derive(Debug, Clone, Serialize)]
pub struct RestorePlan {
    pub data_dir: PathBuf,
    pub rdb_bytes: u64,
    pub databases: usize,
    pub keys: u64,
    pub redis_version: Option<String>,
    /// An existing `dump.rdb` is replaced (after the new one is checked).
    pub replaces: bool,
    /// The server to start, and its port.
    pub start: Option<u16>,
}

/// What a finished restore reports.
#[derive(Debug, Clone)]
pub struct Restored {
    pub plan: RestorePlan,
    pub server: Option<Started>,
    /// Keys per database the started server holds (`INFO keyspace`).
    pub loaded: Vec<(u32, u64)>,
    /// Objects compared with the snapshot, when asked to verify.
    pub checks: Vec<cairn_source::ObjectCheck>,
}

/// The options beyond the job's request.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub data_dir: PathBuf,
    pub redis_server: Option<PathBuf>,
}

/// Pieces for the RDB reader that are written to `file` as they are taken.
struct WriteThrough {
    pieces: flume::Receiver<Bytes>,
    file: std::fs::File,
    failed: Option<std::io::Error>,
}

impl Pieces for WriteThrough {
    fn next_piece(&mut self) -> Result<Option<Bytes>, String> {
        let Ok(piece) = self.pieces.recv() else { return Ok(None) };
        if let Err(e) = self.file.write_all(&piece) {
            let message = e.to_string();
            self.failed = Some(e);
            return Err(message);
        }
        Ok(Some(piece))
    }
}

pub async fn restore(job: &RestoreJob<'_>, opts: &RestoreOptions) -> Result<Restored, RedisError> {
    let manifest = RedisManifest::read(&job.reader).await?;
    let node = job.reader.file(RDB_FILE).await?;
    let dir = &opts.data_dir;
    let dest = dir.join(RDB_FILE);
    let exists = dest.exists();
    let request = &job.request;
    let port = request.start.then(|| request.port.unwrap_or(crate::target::DEFAULT_PORT));
    let plan = RestorePlan {
        data_dir: dir.clone(),
        rdb_bytes: node.size,
        databases: manifest.databases.len(),
        keys: manifest.keys(),
        redis_version: manifest.redis_version.clone(),
        replaces: exists,
        start: port,
    };
    if exists && request.overwrite == Overwrite::Never {
        return Err(RedisError::TargetNotEmpty { dir: dir.clone(), file: RDB_FILE.into() });
    }
    let bin = if request.start { Some(server::find_server(opts.redis_server.as_deref())?) } else { None };
    if request.dry_run {
        return Ok(Restored { plan, server: None, loaded: Vec::new(), checks: Vec::new() });
    }
    std::fs::create_dir_all(dir).map_err(RedisError::io(format!("creating {}", dir.display())))?;
    let part = dir.join(format!(".cairn-restore-{}.{RDB_FILE}.part", std::process::id()));
    let result = write_checked(job, &manifest, &node, &part, request.fsync).await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, &dest).map_err(|e| {
        let _ = std::fs::remove_file(&part);
        RedisError::Io { context: format!("renaming {} to {}", part.display(), dest.display()), source: e }
    })?;
    if request.fsync {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(RedisError::io(format!("fsync of {}", dir.display())))?;
    }
    tracing::info!(file = %dest.display(), bytes = node.size, "dump.rdb restored and checked");
    let (Some(bin), Some(port)) = (bin, port) else {
        return Ok(Restored { plan, server: None, loaded: Vec::new(), checks: Vec::new() });
    };
    let started = server::start(&bin, dir, port, true, &job.cancel).await?;
    let mut conn = Conn::open(&started.target()).await?;
    let loaded = live::keyspace_info(&mut conn).await?;
    let checks = if request.verify {
        let reference = manifest.ctime.map(|s| s * 1000);
        let keyspace =
            live::read_keyspace(&mut conn, manifest.databases.keys().copied(), reference, &job.cancel)
                .await?;
        let checks = live::compare(&manifest, &keyspace);
        let differing: Vec<String> = checks.iter().filter(|c| !c.ok()).map(|c| c.name.clone()).collect();
        if !differing.is_empty() {
            return Err(RedisError::Differs { port, message: format!("{} differ", differing.join(", ")) });
        }
        checks
    } else {
        Vec::new()
    };
    Ok(Restored { plan, server: Some(started), loaded, checks })
}

/// Writes the snapshot's RDB to `part` while reading it back, and checks
/// what was read against the manifest.
async fn write_checked(
    job: &RestoreJob<'_>,
    manifest: &RedisManifest,
    node: &cairn_repo::tree::Node,
    part: &Path,
    fsync: bool,
) -> Result<(), RedisError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(part)
        .map_err(RedisError::io(format!("creating {}", part.display())))?;
    let (tx, rx) = flume::bounded::<Bytes>(16);
    let check = tokio::task::spawn_blocking(move || {
        let mut through = WriteThrough { pieces: rx, file, failed: None };
        let report = rdb::read_rdb(&mut through, &AtomicU64::new(0));
        (report, through)
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
    let (report, through) = check.await.map_err(|e| RedisError::Io {
        context: format!("writing {}", part.display()),
        source: std::io::Error::other(e.to_string()),
    })?;
    fed?;
    if let Some(e) = through.failed {
        return Err(RedisError::Io { context: format!("writing {}", part.display()), source: e });
    }
    let report: RdbReport =
        report.map_err(|e| RedisError::DamagedSnapshot { path: RDB_FILE.into(), message: e.to_string() })?;
    let differences = manifest.differences(&report);
    if !differences.is_empty() {
        return Err(RedisError::DamagedSnapshot {
            path: RDB_FILE.into(),
            message: format!("it does not read back as backed up: {}", differences.join("; ")),
        });
    }
    if fsync {
        through.file.sync_all().map_err(RedisError::io(format!("fsync of {}", part.display())))?;
    }
    Ok(())
}

impl Pieces for &mut WriteThrough {
    fn next_piece(&mut self) -> Result<Option<Bytes>, String> {
        (**self).next_piece()
    }
}
