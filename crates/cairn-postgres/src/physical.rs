//! Physical base backups and point-in-time restore.
//!
//! **Backup**: `pg_basebackup -D - -F tar -X fetch` streams the cluster as
//! one tar archive; cairn parses it on the fly and stores every entry as its
//! own file in the snapshot, with the mode, owner and time the tar header
//! gives, so the snapshot *is* the data directory (restic can restore it
//! too). Relation files (`base/…`, `global/…`) are cut into fixed
//! [`PAGE_CHUNK`] (two-page) blobs at page-aligned offsets: PostgreSQL rewrites pages in
//! place, so a night that dirtied 1% of the pages stores about 1% of the
//! file, never the whole file again. Everything else (configuration, the WAL
//! fetched during the backup) goes through the content-defined chunker.
//! `-X fetch` puts the WAL the backup needs inside it, so every base backup
//! restores on its own; the WAL archive (`cairn wal-push`) extends it to any
//! later point in time.
//!
//! **Restore**: the snapshot is laid down with the volume restorer (every
//! blob verified), recovery is configured in `postgresql.auto.conf`
//! (`restore_command = 'cairn wal-fetch %f %p'`, the `recovery_target_*`
//! setting, `recovery_target_action`) plus `recovery.signal`, and with
//! `start` the server is started and watched until recovery has ended, with
//! the log line that proves where it stopped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_repo::archive::{Chunking, EntryMeta};
use cairn_repo::{Id, Index, Repository, SaverOptions, Snapshot};
use cairn_source::{BackupJob, SnapshotWriter};
use chrono::{DateTime, FixedOffset, TimeZone};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::conn::{BaseBackupEvent, ReplicationError, replication_message};
use crate::dump::DUMP_CHUNKS;
use crate::{PgError, PgTarget, PgTools};

/// Blob size for relation files: two 8 KiB pages. PostgreSQL rewrites pages
/// in place, so a scattered update costs one blob; measured on pgbench
/// (bench/postgres.sh), 8 KiB blobs halved a night's new data but made full
/// backups and restores a third slower (twice the blobs), 32 KiB blobs
/// doubled the night's upload. Sixteen is the middle that meets both targets.
pub const PAGE_CHUNK: usize = 16 << 10;

/// Where the physical manifest sits in the snapshot (removed again after a restore).
pub const MANIFEST_FILE: &str = "cairn-physical.json";

/// What a base backup was, as far as recovery needs to know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhysicalManifest {
    pub version: u32,
    pub server: String,
    pub server_version: String,
    pub server_version_num: u32,
    pub system_identifier: String,
    pub timeline: u32,
    /// `START WAL LOCATION` of the backup label.
    pub start_lsn: String,
    /// The WAL end point pg_basebackup reported: the earliest consistent point.
    pub end_lsn: String,
    pub start_time: DateTime<FixedOffset>,
    pub end_time: DateTime<FixedOffset>,
    pub files: u64,
    pub bytes: u64,
    /// `archive_command` at backup time: whether point-in-time recovery past
    /// the backup's end can work from this repository.
    pub archive_command: String,
    /// Tablespaces outside the data directory (their files are under `pg_tblspc/<oid>/`).
    #[serde(default)]
    pub tablespaces: Vec<TablespaceInfo>,
}

/// What to back up.
#[derive(Debug, Clone)]
pub struct BaseBackupOptions {
    pub target: PgTarget,
    /// The most bytes per second the server sends (`MAX_RATE`), if capped.
    pub max_rate: Option<u64>,
    pub saver: SaverOptions,
}

/// A tablespace outside the data directory, as backed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceInfo {
    pub oid: u32,
    /// `spcname` (empty when the tablespace appeared during the backup).
    pub name: String,
    /// Its directory on the backed-up server.
    pub location: String,
}

/// Where tablespace `oid`'s files are, in the snapshot and in a data
/// directory (its link, or the directory itself when in place).
fn tablespace_dir(oid: u32) -> String {
    format!("pg_tblspc/{oid}")
}

/// The `BASE_BACKUP` command in the syntax the server's version speaks. The
/// WAL the backup needs comes inside it (`pg_basebackup -X fetch`), so every
/// base backup restores on its own.
fn base_backup_command(server_version_num: u32, max_rate_kib: Option<u32>) -> String {
    if server_version_num >= 150_000 {
        let rate = max_rate_kib.map(|r| format!(", MAX_RATE {r}")).unwrap_or_default();
        format!("BASE_BACKUP (LABEL 'cairn base backup', CHECKPOINT 'fast', WAL, MANIFEST 'no'{rate})")
    } else {
        let rate = max_rate_kib.map(|r| format!(" MAX_RATE {r}")).unwrap_or_default();
        format!("BASE_BACKUP LABEL 'cairn base backup' FAST WAL{rate}")
    }
}

/// The server's `MAX_RATE` (kB/s) for a cap in bytes per second; the server
/// takes 32 kB/s to 1 GB/s.
pub(crate) fn max_rate_kib(bytes_per_second: u64) -> Result<u32, PgError> {
    let kib = bytes_per_second / 1024;
    if !(32..=1_048_576).contains(&kib) {
        return Err(PgError::BadMaxRate { bytes_per_second });
    }
    Ok(kib as u32)
}

/// Runs a base backup into a new snapshot.
pub async fn base_backup(
    job: &BackupJob<'_>,
    opts: BaseBackupOptions,
    progress: Arc<crate::DumpProgress>,
) -> Result<(Id, Snapshot, PhysicalManifest), PgError> {
    let max_rate = opts.max_rate.map(max_rate_kib).transpose()?;
    let admin = opts.target.with_database(opts.target.database().unwrap_or("postgres"));
    let client = admin.connect().await?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int, \
             (SELECT system_identifier::text FROM pg_control_system()), \
             current_setting('archive_mode'), current_setting('archive_command')",
            &[],
        )
        .await
        .map_err(PgError::query("reading the server settings"))?;
    let (server_version, version_num): (String, i32) = (row.get(0), row.get(1));
    let system_identifier: String = row.get(2);
    let (archive_mode, archive_command): (String, String) = (row.get(3), row.get(4));
    let names: HashMap<u32, String> = client
        .query("SELECT oid::int8, spcname::text FROM pg_tablespace", &[])
        .await
        .map_err(PgError::query("listing tablespaces"))?
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u32, r.get(1)))
        .collect();
    let mut warnings = Vec::new();
    if archive_mode == "off" || !archive_command.contains("wal-push") {
        warnings.push(
            "WAL archiving to cairn is not configured (archive_command = 'cairn wal-push %p'): this base \
             backup restores to its own end point only"
                .to_string(),
        );
    }
    drop(client);
    let version_num = version_num as u32;
    let replication = admin.connect_replication().await?;

    // The tree is the data directory: its files are not listed one by one.
    let archive = SnapshotWriter::start(job, "postgres", "physical", DUMP_CHUNKS, opts.saver.clone())
        .await?
        .without_stream_list();
    let start_time = chrono::Local::now().fixed_offset();
    let (events_tx, mut events) = tokio::sync::mpsc::channel(ARCHIVE_EVENTS_IN_FLIGHT);
    let command = base_backup_command(version_num, max_rate);
    let produce = replication.base_backup(&command, version_num, events_tx);
    let consume = async {
        let stored = async {
            let mut totals = TarTotals::default();
            while let Some(event) = events.recv().await {
                let BaseBackupEvent::Archive(tablespace) = event else {
                    return Err(stream_error("archive data outside an archive"));
                };
                let prefix = tablespace.map(|t| format!("{}/", tablespace_dir(t.oid))).unwrap_or_default();
                store_tar(&archive, ArchiveReader::new(&mut events), &prefix, &progress, &mut totals).await?;
            }
            Ok(totals)
        }
        .await;
        // A storing side that gave up (stopped, failed) must stop the
        // receiving side too, which would otherwise wait forever for room
        // in the channel.
        events.close();
        stored
    };
    let (produced, consumed) = tokio::join!(produce, consume);
    // The server's word wins; when the storing side failed first, the
    // server only saw its archives go unread.
    let (positions, totals) = match (produced, consumed) {
        (Ok(p), Ok(t)) => (p, t),
        (Ok(_) | Err(ReplicationError::ReceiverGone), Err(e)) => return Err(e),
        (Err(e), _) => {
            return Err(PgError::BaseBackup {
                target: opts.target.server(),
                message: replication_message(&e),
            });
        }
    };
    if totals.label.is_empty() {
        return Err(stream_error("the data directory's archive has no backup_label"));
    }
    let tablespaces: Vec<TablespaceInfo> = positions
        .tablespaces
        .iter()
        .map(|t| TablespaceInfo {
            oid: t.oid,
            name: names.get(&t.oid).cloned().unwrap_or_default(),
            location: t.location.clone(),
        })
        .collect();
    let manifest = PhysicalManifest {
        version: 1,
        server: opts.target.server(),
        server_version,
        server_version_num: version_num,
        system_identifier,
        timeline: positions.start_timeline,
        start_lsn: positions.start_lsn,
        end_lsn: positions.end_lsn,
        start_time,
        end_time: chrono::Local::now().fixed_offset(),
        files: totals.files,
        bytes: totals.bytes,
        archive_command,
        tablespaces,
    };
    archive
        .add_bytes(MANIFEST_FILE, serde_json::to_vec_pretty(&manifest).expect("manifest serializes"))
        .await?;
    let metadata = serde_json::json!({
        "kind": "physical",
        "server_version": manifest.server_version,
        "system_identifier": manifest.system_identifier,
        "timeline": manifest.timeline,
        "start_lsn": manifest.start_lsn,
        "end_lsn": manifest.end_lsn,
        "start_time": manifest.start_time,
        "end_time": manifest.end_time,
        "tablespaces": manifest.tablespaces.len(),
    });
    archive.set_source_version(format!("PostgreSQL {}", manifest.server_version));
    let (id, snapshot) =
        archive.finish(vec![format!("{}/physical", manifest.server)], warnings, metadata).await?;
    Ok((id, snapshot, manifest))
}

/// Archive events buffered between the replication connection and the
/// storing side (each a server message of up to 32 KiB).
const ARCHIVE_EVENTS_IN_FLIGHT: usize = 64;

fn stream_error(message: &str) -> PgError {
    PgError::BaseBackup { target: "the server".into(), message: message.into() }
}

/// One archive's bytes, as an [`AsyncRead`] that ends with the archive.
struct ArchiveReader<'a> {
    events: &'a mut tokio::sync::mpsc::Receiver<BaseBackupEvent>,
    current: Bytes,
    ended: bool,
}

impl<'a> ArchiveReader<'a> {
    fn new(events: &'a mut tokio::sync::mpsc::Receiver<BaseBackupEvent>) -> Self {
        ArchiveReader { events, current: Bytes::new(), ended: false }
    }
}

impl AsyncRead for ArchiveReader<'_> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if !this.current.is_empty() {
                let n = this.current.len().min(buf.remaining());
                buf.put_slice(&this.current.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(this.events.poll_recv(cx)) {
                Some(BaseBackupEvent::Data(data)) => this.current = data,
                Some(BaseBackupEvent::ArchiveEnd) => this.ended = true,
                Some(BaseBackupEvent::Archive(_)) => {
                    return Poll::Ready(Err(std::io::Error::other("a new archive began inside another")));
                }
                // The server's error, if it sent one, is reported instead.
                None => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the base backup ended in the middle of an archive",
                    )));
                }
            }
        }
    }
}

/// One tar header, decoded.
struct TarEntry {
    path: String,
    kind: u8,
    size: u64,
    meta: EntryMeta,
}

fn octal(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256 for large values.
        return field[1..].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    }
    let text = String::from_utf8_lossy(field);
    u64::from_str_radix(text.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0)
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn parse_header(h: &[u8; 512]) -> TarEntry {
    let mut path = cstr(&h[0..100]);
    if &h[257..262] == b"ustar" {
        let prefix = cstr(&h[345..500]);
        if !prefix.is_empty() {
            path = format!("{prefix}/{path}");
        }
    }
    let secs = octal(&h[136..148]) as i64;
    let mtime = chrono::Local.timestamp_opt(secs, 0).single().unwrap_or_default().fixed_offset();
    TarEntry {
        path,
        kind: h[156],
        size: octal(&h[124..136]),
        meta: EntryMeta {
            permissions: octal(&h[100..108]) as u32 & 0o7777,
            uid: octal(&h[108..116]) as u32,
            gid: octal(&h[116..124]) as u32,
            mtime,
        },
    }
}

/// Is this snapshot path a relation file (`base/<db>/<relfilenode>[_fsm|_vm][.N]`,
/// `global/<n>`, `pg_tblspc/<oid>/PG_<version>/<db>/<relfilenode>…`)?
fn is_relation_file(path: &str) -> bool {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let in_tablespace = || {
        let parts: Vec<&str> = dir.split('/').collect();
        matches!(parts.as_slice(), ["pg_tblspc", _, version, _] if version.starts_with("PG_"))
    };
    if !(dir == "global" || dir.starts_with("base/") || in_tablespace()) {
        return false;
    }
    let stem = name.split('.').next().unwrap_or(name);
    let stem = stem
        .strip_suffix("_fsm")
        .or_else(|| stem.strip_suffix("_vm"))
        .or_else(|| stem.strip_suffix("_init"))
        .unwrap_or(stem);
    !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit())
}

/// What the archives held, over all of them.
#[derive(Debug, Default)]
struct TarTotals {
    files: u64,
    bytes: u64,
    /// The data directory's `backup_label`.
    label: String,
}

/// Reads one tar archive, storing each entry under `prefix` (empty for the
/// data directory, `pg_tblspc/<oid>/` for a tablespace).
async fn store_tar<R: AsyncRead + Unpin>(
    archive: &SnapshotWriter,
    mut reader: R,
    prefix: &str,
    progress: &crate::DumpProgress,
    totals: &mut TarTotals,
) -> Result<(), PgError> {
    let io = |e: std::io::Error| PgError::io("reading the base backup's archives")(e);
    // Stopped (SIGTERM, a lost lock): at the next entry, or the next MiB of
    // a big one; what was stored is indexed and reused by the next run.
    let cancelled = || progress.cancel.load(std::sync::atomic::Ordering::Relaxed);
    let mut long_name: Option<String> = None;
    let mut first = true;
    let mut header = [0u8; 512];
    loop {
        if cancelled() {
            return Err(PgError::Interrupted);
        }
        match reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io(e)),
        }
        if header.iter().all(|b| *b == 0) {
            // End of archive: drain what follows (the second zero block).
            tokio::io::copy(&mut reader, &mut tokio::io::sink()).await.map_err(io)?;
            break;
        }
        let mut entry = parse_header(&header);
        if let Some(name) = long_name.take() {
            entry.path = name;
        }
        if first && !prefix.is_empty() {
            // The tablespace's own directory is not in its archive.
            let meta = EntryMeta { permissions: 0o700, ..entry.meta };
            archive.add_dir(prefix, meta);
        }
        first = false;
        let padding = (512 - entry.size % 512) % 512;
        let path = format!("{prefix}{}", entry.path.trim_start_matches("./"));
        match entry.kind {
            b'L' | b'x' => {
                let mut data = vec![0u8; entry.size as usize];
                reader.read_exact(&mut data).await.map_err(io)?;
                skip(&mut reader, padding).await.map_err(io)?;
                long_name = if entry.kind == b'L' {
                    Some(cstr(&data))
                } else {
                    String::from_utf8_lossy(&data)
                        .lines()
                        .find_map(|rec| rec.split_once(" path=").map(|(_, p)| p.to_string()))
                };
                first = true;
                continue;
            }
            b'5' => archive.add_dir(path.trim_end_matches('/'), entry.meta),
            b'0' | 0 => {
                let chunking = if is_relation_file(&path) {
                    Chunking::Fixed(PAGE_CHUNK)
                } else {
                    Chunking::ContentDefined
                };
                if path == "backup_label" {
                    let mut data = vec![0u8; entry.size as usize];
                    reader.read_exact(&mut data).await.map_err(io)?;
                    totals.label = String::from_utf8_lossy(&data).into_owned();
                    let piece: Result<Bytes, std::io::Error> = Ok(Bytes::from(data));
                    archive
                        .add_stream_with(&path, futures::stream::iter([piece]), Some(entry.meta), chunking)
                        .await?;
                } else {
                    let stream =
                        futures::stream::try_unfold((&mut reader, entry.size), |(r, left)| async move {
                            if left == 0 {
                                return Ok(None);
                            }
                            if cancelled() {
                                return Err(std::io::Error::from(std::io::ErrorKind::Interrupted));
                            }
                            let mut buf = vec![0u8; left.min(1 << 20) as usize];
                            r.read_exact(&mut buf).await?;
                            Ok::<_, std::io::Error>(Some((Bytes::from(buf), (r, left - left.min(1 << 20)))))
                        });
                    match archive.add_stream_with(&path, stream, Some(entry.meta), chunking).await {
                        Err(_) if cancelled() => return Err(PgError::Interrupted),
                        stored => stored?,
                    };
                }
                skip(&mut reader, padding).await.map_err(io)?;
                totals.files += 1;
                totals.bytes += entry.size;
                progress.bytes_done.fetch_add(entry.size, std::sync::atomic::Ordering::Relaxed);
            }
            // The links to the tablespaces, whose files are stored under
            // `pg_tblspc/<oid>/` instead; a restore links them again.
            b'2' if path.starts_with("pg_tblspc/") => {}
            b'2' => {
                return Err(stream_error(&format!(
                    "{path} is a symbolic link outside pg_tblspc, which PostgreSQL does not send"
                )));
            }
            other => {
                tracing::warn!(path = %path, kind = other, "skipping an unexpected tar entry");
                skip(&mut reader, entry.size + padding).await.map_err(io)?;
            }
        }
    }
    Ok(())
}

async fn skip<R: AsyncRead + Unpin>(reader: &mut R, mut n: u64) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    while n > 0 {
        let k = n.min(buf.len() as u64) as usize;
        reader.read_exact(&mut buf[..k]).await?;
        n -= k as u64;
    }
    Ok(())
}

/// Where recovery should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    Latest,
    Time(String),
    Lsn(String),
    Xid(String),
    Name(String),
}

/// A point-in-time restore.
#[derive(Debug, Clone)]
pub struct PitrOptions {
    pub data_dir: PathBuf,
    pub target: RecoveryTarget,
    /// `restore_command` for the restored server (the CLI builds it: it knows
    /// its own path and how the server can read the password).
    pub restore_command: String,
    /// `promote` (default), `pause` or `shutdown`.
    pub target_action: String,
    /// Port for the restored server (it must not clash with the original).
    pub port: Option<u16>,
    /// Keep the backed-up `archive_command` (default: archiving off, so a
    /// restored copy never writes into the production archive).
    pub keep_archiving: bool,
    pub start: bool,
    pub pg_bin: Option<PathBuf>,
    /// How long recovery may take with `start`.
    pub timeout: Duration,
    /// Where tablespaces go instead of their original directories: each
    /// tablespace named by its name, oid or original directory, and the new
    /// (absolute) directory.
    pub tablespace_map: Vec<(String, PathBuf)>,
    /// Keep every tablespace inside the data directory (`pg_tblspc/<oid>/`
    /// as a directory, PostgreSQL's in-place tablespaces), for scratch
    /// restores next to the original cluster.
    pub tablespaces_in_place: bool,
    /// Make the restored files, directories and recovery settings durable
    /// before returning (off only to trade crash safety for speed).
    pub fsync: bool,
}

/// Where a tablespace was laid down by a restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredTablespace {
    pub oid: u32,
    pub name: String,
    pub original: String,
    pub directory: PathBuf,
}

/// What a point-in-time restore did.
#[derive(Debug, Clone, Serialize)]
pub struct PitrReport {
    pub data_dir: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub base_backup_end: DateTime<FixedOffset>,
    pub tablespaces: Vec<RestoredTablespace>,
    pub started: bool,
    /// The server log line saying where recovery stopped (with `start`).
    pub recovery_stop: Option<String>,
}

/// Reads the physical manifest of a snapshot (errors if it is not a base backup).
pub async fn load_physical_manifest(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
) -> Result<PhysicalManifest, PgError> {
    let kind = snapshot.cairn.as_ref().and_then(|c| c.metadata.get("kind")).and_then(|k| k.as_str());
    if kind != Some("physical") {
        return Err(PgError::NotPostgres { snapshot: snapshot.tree.short(), kind: "non-physical".into() });
    }
    let data = cairn_repo::reader::SnapshotReader::new(repo, index, snapshot).read(MANIFEST_FILE).await?;
    serde_json::from_slice(&data)
        .map_err(|e| PgError::BadSnapshot { path: MANIFEST_FILE.into(), message: e.to_string() })
}

/// Lays down a base backup, configures recovery and optionally runs it.
/// `progress` counts the files laid down; setting its `cancel` stops the
/// restore at the next blob (or, with `start`, stops waiting for recovery).
pub async fn restore_physical(
    repo: &Repository,
    index: Arc<Index>,
    snapshot: &Snapshot,
    opts: &PitrOptions,
    progress: Arc<cairn_volume::RestoreProgress>,
) -> Result<PitrReport, PgError> {
    let manifest = load_physical_manifest(repo, &index, snapshot).await?;
    let dir = &opts.data_dir;
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        return Err(PgError::TargetNotEmpty {
            database: dir.display().to_string(),
            what: "files (a data directory must be restored into an empty or new directory)".into(),
        });
    }
    let tablespaces = place_tablespaces(&manifest, opts)?;
    let vopts = cairn_volume::RestoreOptions {
        target: dir.clone(),
        relocate: tablespaces
            .iter()
            .filter(|_| !opts.tablespaces_in_place)
            .map(|t| (tablespace_dir(t.oid), t.directory.clone()))
            .collect(),
        fsync: opts.fsync,
        // cairn's own bookkeeping is not part of the data directory.
        exclude: vec![
            MANIFEST_FILE.into(),
            cairn_source::ENVELOPE_PATH.split('/').next().unwrap_or_default().into(),
        ],
        ..cairn_volume::RestoreOptions::default()
    };
    let cancel = progress.clone();
    let cancelled = move || cancel.cancel.load(std::sync::atomic::Ordering::Relaxed);
    let summary =
        cairn_volume::restore(repo, index, snapshot, &vopts, progress).await.map_err(|e| match e {
            // Damage found reading the snapshot keeps its class (exit 4);
            // the restorer's own failures (the target's disk) are not damage.
            cairn_volume::VolumeError::Repo(r) => PgError::Repo(r),
            cairn_volume::VolumeError::Interrupted => PgError::Interrupted,
            other => PgError::Restore(other),
        })?;
    // The data directory itself is not in the tar: give it PG_VERSION's owner and mode 0700.
    let owner = std::fs::metadata(dir.join("PG_VERSION"))
        .map_err(|e| PgError::BadSnapshot { path: "PG_VERSION".into(), message: e.to_string() })?;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (uid, gid) = (owner.uid(), owner.gid());
    // Only root may give files away (otherwise they are ours already). The
    // server refuses a data directory it does not own, and needs to write in
    // every directory of it, whatever the tar headers said.
    if !opts.tablespaces_in_place && !tablespaces.is_empty() {
        // The server finds a tablespace through its link in pg_tblspc.
        std::fs::create_dir_all(dir.join("pg_tblspc")).map_err(PgError::io("creating pg_tblspc"))?;
        for t in &tablespaces {
            let link = dir.join(tablespace_dir(t.oid));
            std::os::unix::fs::symlink(&t.directory, &link).map_err(PgError::io(format!(
                "linking {} to {}",
                link.display(),
                t.directory.display()
            )))?;
        }
    }
    // What changed after the volume restore made everything durable, to sync again.
    let mut changed = Vec::new();
    for place in std::iter::once(dir.as_path()).chain(tablespaces.iter().map(|t| t.directory.as_path())) {
        if nix::unistd::geteuid().is_root() {
            chown_tree(place, uid, gid, &mut changed)
                .map_err(PgError::io(format!("giving {} to uid {uid}", place.display())))?;
        }
        std::fs::set_permissions(place, std::fs::Permissions::from_mode(0o700))
            .map_err(PgError::io(format!("chmod {}", place.display())))?;
    }

    let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
    let mut conf = String::from("\n# Added by cairn restore --physical\n");
    conf.push_str(&format!("restore_command = {}\n", quote(&opts.restore_command)));
    match &opts.target {
        RecoveryTarget::Latest => {}
        RecoveryTarget::Time(t) => conf.push_str(&format!("recovery_target_time = {}\n", quote(t))),
        RecoveryTarget::Lsn(l) => conf.push_str(&format!("recovery_target_lsn = {}\n", quote(l))),
        RecoveryTarget::Xid(x) => conf.push_str(&format!("recovery_target_xid = {}\n", quote(x))),
        RecoveryTarget::Name(n) => conf.push_str(&format!("recovery_target_name = {}\n", quote(n))),
    }
    if opts.target != RecoveryTarget::Latest {
        conf.push_str(&format!("recovery_target_action = {}\n", quote(&opts.target_action)));
    }
    conf.push_str("recovery_target_timeline = 'latest'\n");
    if !opts.keep_archiving {
        conf.push_str("archive_mode = off\n");
    }
    if let Some(port) = opts.port {
        conf.push_str(&format!("port = {port}\n"));
    }
    if opts.tablespaces_in_place && !tablespaces.is_empty() {
        // Otherwise recovery stops at the directories where it expects links.
        conf.push_str("allow_in_place_tablespaces = on\n");
    }
    let settings = [("postgresql.auto.conf", conf.as_bytes()), ("recovery.signal", &b""[..])];
    for (name, text) in settings {
        append_owned(&dir.join(name), text, (uid, gid), opts.fsync)
            .map_err(PgError::io(format!("writing {name}")))?;
    }
    if opts.fsync {
        // Deepest first: what chown_tree changed, the links, the tablespaces, the data directory.
        if !opts.tablespaces_in_place && !tablespaces.is_empty() {
            changed.push(dir.join("pg_tblspc"));
        }
        changed.extend(tablespaces.iter().map(|t| t.directory.clone()));
        changed.push(dir.clone());
        for path in &changed {
            cairn_store::durable::sync_path(path)
                .map_err(PgError::io(format!("making {} durable (fsync)", path.display())))?;
        }
    }

    let mut report = PitrReport {
        data_dir: dir.clone(),
        files: summary.files,
        bytes: summary.bytes,
        base_backup_end: manifest.end_time,
        tablespaces,
        started: false,
        recovery_stop: None,
    };
    if opts.start {
        if cancelled() {
            return Err(PgError::Interrupted);
        }
        report.recovery_stop = Some(run_recovery(opts, &manifest, uid, &cancelled).await?);
        report.started = true;
    }
    Ok(report)
}

/// Decides where each tablespace goes (its original directory unless
/// mapped, or inside the data directory), and checks, before anything is
/// written, that every one of those directories is free.
fn place_tablespaces(
    manifest: &PhysicalManifest,
    opts: &PitrOptions,
) -> Result<Vec<RestoredTablespace>, PgError> {
    let names = || {
        manifest
            .tablespaces
            .iter()
            .map(|t| {
                format!("{} (oid {}, {})", if t.name.is_empty() { "?" } else { &t.name }, t.oid, t.location)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (key, _) in &opts.tablespace_map {
        let known = manifest
            .tablespaces
            .iter()
            .any(|t| t.name == *key || t.oid.to_string() == *key || t.location == *key);
        if !known {
            return Err(PgError::NotInSnapshot {
                what: format!("tablespace {key:?} (from --tablespace-map)"),
                available: if manifest.tablespaces.is_empty() { "no tablespaces".into() } else { names() },
            });
        }
    }
    if opts.tablespaces_in_place && !manifest.tablespaces.is_empty() && manifest.server_version_num < 150_000
    {
        return Err(PgError::TablespacePlace {
            name: "(all)".into(),
            directory: opts.data_dir.join("pg_tblspc"),
            problem: "cannot hold tablespaces before PostgreSQL 15 (in-place tablespaces)".into(),
        });
    }
    let mut placed: Vec<RestoredTablespace> = Vec::new();
    for t in &manifest.tablespaces {
        let mapped = opts
            .tablespace_map
            .iter()
            .find(|(key, _)| t.name == *key || t.oid.to_string() == *key || t.location == *key)
            .map(|(_, to)| to.clone());
        let directory = if opts.tablespaces_in_place {
            opts.data_dir.join(tablespace_dir(t.oid))
        } else {
            mapped.unwrap_or_else(|| PathBuf::from(&t.location))
        };
        let label = if t.name.is_empty() { t.oid.to_string() } else { t.name.clone() };
        if !directory.is_absolute() {
            return Err(PgError::TablespacePlace {
                name: label,
                directory,
                problem: "is not an absolute path".into(),
            });
        }
        if placed.iter().any(|p| p.directory == directory) {
            return Err(PgError::TablespacePlace {
                name: label,
                directory,
                problem: "is also where another tablespace goes".into(),
            });
        }
        if !opts.tablespaces_in_place
            && let Ok(mut entries) = std::fs::read_dir(&directory)
            && entries.next().is_some()
        {
            return Err(PgError::TablespacePlace {
                name: label,
                directory,
                problem: "is not empty (is the original cluster still using it?)".into(),
            });
        }
        placed.push(RestoredTablespace {
            oid: t.oid,
            name: t.name.clone(),
            original: t.location.clone(),
            directory,
        });
    }
    Ok(placed)
}

/// Gives `path` and everything under it to `uid:gid`, noting in `changed`
/// (deepest first) what to fsync for it: each file or directory whose owner
/// it changed, or a changed symlink's directory.
fn chown_tree(path: &Path, uid: u32, gid: u32, changed: &mut Vec<PathBuf>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid, changed)?;
        }
    }
    if meta.uid() != uid || meta.gid() != gid {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
        // A symlink cannot be fsynced; its directory's fsync commits it on
        // journalling file systems.
        let synced = if meta.file_type().is_symlink() { path.parent() } else { Some(path) };
        changed.extend(synced.map(Path::to_path_buf));
    }
    Ok(())
}

/// Appends `text` to the file at `path` (made if missing), owned by `owner`
/// when run as root, mode 0600, fsynced with its owner and mode when `fsync`.
fn append_owned(path: &Path, text: &[u8], owner: (u32, u32), fsync: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    file.write_all(text)?;
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::fchown(&file, Some(owner.0), Some(owner.1))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    if fsync {
        file.sync_all()?;
    }
    Ok(())
}

/// Starts the restored server and waits until recovery has ended; returns
/// the log line that says where it stopped.
async fn run_recovery(
    opts: &PitrOptions,
    manifest: &PhysicalManifest,
    uid: u32,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<String, PgError> {
    let tools = PgTools::new(opts.pg_bin.clone(), manifest.server_version_num);
    let pg_ctl = tools.find("pg_ctl", false).await?;
    let log = opts.data_dir.join("log").join("cairn-recovery.log");
    let as_owner = |program: &Path| {
        let is_root = nix::unistd::geteuid().is_root();
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten();
        match (is_root && uid != 0, user) {
            (true, Some(u)) => {
                let mut c = tokio::process::Command::new("runuser");
                c.args(["-u", &u.name, "--"]).arg(program);
                c
            }
            _ => tokio::process::Command::new(program),
        }
    };
    let _ = std::fs::create_dir_all(log.parent().expect("log dir"));
    let _ = std::os::unix::fs::chown(log.parent().expect("log dir"), Some(uid), None);
    let mut cmd = as_owner(&pg_ctl);
    cmd.arg("-D")
        .arg(&opts.data_dir)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t"])
        .arg(opts.timeout.as_secs().to_string())
        .arg("start");
    cmd.stdin(std::process::Stdio::null());
    let out = cmd.output().await.map_err(PgError::io("running pg_ctl start"))?;
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    // The most telling line: where recovery stopped for the target, else where redo ended.
    let stop_line = |text: &str| {
        ["recovery stopping", "recovery has paused", "redo done at", "archive recovery complete"]
            .iter()
            .find_map(|needle| text.lines().rev().find(|l| l.contains(needle)))
            .map(|l| l.to_string())
    };
    let failure = |text: String| {
        let fatal: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("FATAL")
                    || l.contains("PANIC")
                    || l.contains("could not restore")
                    || l.contains("recovery must stop")
            })
            .collect();
        PgError::ToolFailed {
            tool: "PostgreSQL recovery".into(),
            status: "server stopped".into(),
            stderr: if fatal.is_empty() {
                text.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
            } else {
                fatal[fatal.len().saturating_sub(3)..].join(" | ")
            },
        }
    };
    if !out.status.success() {
        return Err(failure(log_text()));
    }
    // pg_ctl returns once connections are accepted, which in recovery can be
    // before the end: wait for the end (or the pause), or for the server to die.
    let deadline = Instant::now() + opts.timeout;
    let pid_file = opts.data_dir.join("postmaster.pid");
    loop {
        let text = log_text();
        if let Some(line) = stop_line(&text) {
            let ended = text.contains("database system is ready to accept connections")
                && (text.contains("archive recovery complete")
                    || text.contains("recovery has paused")
                    || opts.target_action == "pause");
            if ended || opts.target_action == "shutdown" {
                return Ok(line);
            }
        }
        if !pid_file.exists() {
            return Err(failure(text));
        }
        if cancelled() {
            tracing::warn!(
                data_dir = %opts.data_dir.display(),
                "no longer waiting for recovery; the restored server runs on (stop it with pg_ctl -D DIR stop)"
            );
            return Err(PgError::Interrupted);
        }
        if Instant::now() > deadline {
            return Err(PgError::ToolFailed {
                tool: "PostgreSQL recovery".into(),
                status: "timed out".into(),
                stderr: format!("recovery did not finish within {:?}; see {}", opts.timeout, log.display()),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_backup_commands_speak_the_servers_syntax() {
        assert_eq!(
            base_backup_command(150_004, Some(51_200)),
            "BASE_BACKUP (LABEL 'cairn base backup', CHECKPOINT 'fast', WAL, MANIFEST 'no', MAX_RATE 51200)"
        );
        assert_eq!(base_backup_command(140_010, None), "BASE_BACKUP LABEL 'cairn base backup' FAST WAL");
        assert_eq!(max_rate_kib(50 << 20).unwrap(), 51_200);
        assert!(max_rate_kib(16 << 10).is_err());
        assert!(max_rate_kib(2 << 30).is_err());
    }

    #[test]
    fn relation_files_are_recognised() {
        assert!(is_relation_file("base/5/16384"));
        assert!(is_relation_file("base/5/16384.1"));
        assert!(is_relation_file("base/5/16384_fsm"));
        assert!(is_relation_file("global/1262"));
        assert!(!is_relation_file("base/5/PG_VERSION"));
        assert!(!is_relation_file("pg_wal/000000010000000000000002"));
        assert!(!is_relation_file("postgresql.conf"));
        assert!(is_relation_file("pg_tblspc/16390/PG_15_202209061/5/16391"));
        assert!(is_relation_file("pg_tblspc/16390/PG_15_202209061/5/16391_vm"));
        assert!(!is_relation_file("pg_tblspc/16390/PG_15_202209061/5/PG_VERSION"));
        assert!(!is_relation_file("pg_tblspc/16390/other/5/16391"));
    }

    #[test]
    fn tar_headers_decode() {
        let mut h = [0u8; 512];
        h[..11].copy_from_slice(b"base/1/1259");
        h[100..108].copy_from_slice(b"0000600\0");
        h[108..116].copy_from_slice(b"0000145\0");
        h[116..124].copy_from_slice(b"0000150\0");
        h[124..136].copy_from_slice(b"00000100000\0");
        h[136..148].copy_from_slice(b"14000000000\0");
        h[156] = b'0';
        h[257..262].copy_from_slice(b"ustar");
        let e = parse_header(&h);
        assert_eq!(e.path, "base/1/1259");
        assert_eq!(e.size, 0o100000);
        assert_eq!((e.meta.permissions, e.meta.uid, e.meta.gid), (0o600, 0o145, 0o150));
        assert_eq!(e.meta.mtime.timestamp(), 0o14000000000);
    }
}
