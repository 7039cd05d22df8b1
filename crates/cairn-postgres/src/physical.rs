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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_repo::archive::{Chunking, EntryMeta, SnapshotInfo, StreamArchive};
use cairn_repo::{Id, Index, Repository, SaverOptions, Snapshot};
use chrono::{DateTime, FixedOffset, TimeZone};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

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
}

/// What to back up.
#[derive(Debug, Clone)]
pub struct BaseBackupOptions {
    pub target: PgTarget,
    pub pg_bin: Option<PathBuf>,
    pub tags: Vec<String>,
    pub hostname: Option<String>,
    pub source_name: Option<String>,
    pub saver: SaverOptions,
}

/// Runs a base backup into a new snapshot.
pub async fn base_backup(
    repo: &Repository,
    opts: BaseBackupOptions,
    progress: Arc<crate::DumpProgress>,
) -> Result<(Id, Snapshot, PhysicalManifest), PgError> {
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
    let mut warnings = Vec::new();
    if archive_mode == "off" || !archive_command.contains("wal-push") {
        warnings.push(
            "WAL archiving to cairn is not configured (archive_command = 'cairn wal-push %p'): this base \
             backup restores to its own end point only"
                .to_string(),
        );
    }
    drop(client);
    let tools = PgTools::new(opts.pg_bin.clone(), version_num as u32);
    let pg_basebackup = tools.find("pg_basebackup", true).await?;

    let archive = StreamArchive::start(repo, DUMP_CHUNKS, opts.saver.clone()).await?;
    let start_time = chrono::Local::now().fixed_offset();
    let mut cmd = tokio::process::Command::new(&pg_basebackup);
    cmd.args(["-D", "-", "-F", "tar", "-X", "fetch", "--checkpoint=fast", "--no-manifest", "-v"])
        .arg("--label=cairn base backup")
        .arg(format!("--dbname={}", admin.conninfo()));
    admin.prepare_tool(&mut cmd);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(PgError::io("running pg_basebackup"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let parsed = store_tar(&archive, BufReader::with_capacity(1 << 20, stdout), &progress).await;
    if parsed.is_err() {
        // Our failure comes first: pg_basebackup only saw its pipe close.
        let _ = child.kill().await;
    }
    let status = child.wait().await.map_err(PgError::io("waiting for pg_basebackup"))?;
    let stderr = stderr_task.await.unwrap_or_default();
    let parsed = parsed?;
    if !status.success() {
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(PgError::ToolFailed {
            tool: "pg_basebackup".into(),
            status: status.to_string(),
            stderr: tail[tail.len().saturating_sub(3)..].join(" | "),
        });
    }
    let (files, bytes, label) = parsed;
    let field = |key: &str| {
        label.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string()).unwrap_or_default()
    };
    let start_lsn = field("START WAL LOCATION:").split_whitespace().next().unwrap_or_default().to_string();
    let timeline = field("START TIMELINE:").parse().unwrap_or(1);
    let end_lsn = stderr
        .lines()
        .find_map(|l| l.split("write-ahead log end point:").nth(1))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    let manifest = PhysicalManifest {
        version: 1,
        server: opts.target.server(),
        server_version,
        server_version_num: version_num as u32,
        system_identifier,
        timeline,
        start_lsn,
        end_lsn,
        start_time,
        end_time: chrono::Local::now().fixed_offset(),
        files,
        bytes,
        archive_command,
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
    });
    let (id, snapshot) = archive
        .finish(SnapshotInfo {
            paths: vec![format!("{}/physical", manifest.server)],
            tags: opts.tags,
            hostname: opts.hostname,
            source_kind: "postgres".into(),
            source_name: opts.source_name,
            warnings,
            metadata,
        })
        .await?;
    Ok((id, snapshot, manifest))
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

/// Is this data-directory path a relation file (`base/<db>/<relfilenode>[_fsm|_vm][.N]`, `global/<n>`)?
fn is_relation_file(path: &str) -> bool {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    if !(dir == "global" || dir.starts_with("base/")) {
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

/// Reads the tar stream, storing each entry. Returns (files, bytes, backup_label).
async fn store_tar<R: AsyncRead + Unpin>(
    archive: &StreamArchive,
    mut reader: R,
    progress: &crate::DumpProgress,
) -> Result<(u64, u64, String), PgError> {
    let io = |e: std::io::Error| PgError::io("reading pg_basebackup's output")(e);
    let (mut files, mut bytes, mut label) = (0u64, 0u64, String::new());
    let mut long_name: Option<String> = None;
    let mut header = [0u8; 512];
    loop {
        match reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io(e)),
        }
        if header.iter().all(|b| *b == 0) {
            // End of archive. Drain what follows (the second zero block,
            // record padding): closing the pipe early would kill the writer.
            tokio::io::copy(&mut reader, &mut tokio::io::sink()).await.map_err(io)?;
            break;
        }
        let mut entry = parse_header(&header);
        if let Some(name) = long_name.take() {
            entry.path = name;
        }
        let padding = (512 - entry.size % 512) % 512;
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
                continue;
            }
            b'5' => archive.add_dir(entry.path.trim_end_matches('/'), entry.meta),
            b'0' | 0 => {
                let path = entry.path.trim_start_matches("./").to_string();
                let chunking = if is_relation_file(&path) {
                    Chunking::Fixed(PAGE_CHUNK)
                } else {
                    Chunking::ContentDefined
                };
                if path == "backup_label" {
                    let mut data = vec![0u8; entry.size as usize];
                    reader.read_exact(&mut data).await.map_err(io)?;
                    label = String::from_utf8_lossy(&data).into_owned();
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
                            let mut buf = vec![0u8; left.min(1 << 20) as usize];
                            r.read_exact(&mut buf).await?;
                            Ok::<_, std::io::Error>(Some((Bytes::from(buf), (r, left - left.min(1 << 20)))))
                        });
                    archive.add_stream_with(&path, stream, Some(entry.meta), chunking).await?;
                }
                skip(&mut reader, padding).await.map_err(io)?;
                files += 1;
                bytes += entry.size;
                progress.bytes_done.fetch_add(entry.size, std::sync::atomic::Ordering::Relaxed);
            }
            b'2' => {
                return Err(PgError::ToolFailed {
                    tool: "pg_basebackup".into(),
                    status: "unsupported".into(),
                    stderr: format!(
                        "{} is a symbolic link (a tablespace or linked pg_wal); physical backups of clusters with tablespaces are not supported yet",
                        entry.path
                    ),
                });
            }
            other => {
                tracing::warn!(path = %entry.path, kind = other, "skipping an unexpected tar entry");
                skip(&mut reader, entry.size + padding).await.map_err(io)?;
            }
        }
    }
    Ok((files, bytes, label))
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
}

/// What a point-in-time restore did.
#[derive(Debug, Clone, Serialize)]
pub struct PitrReport {
    pub data_dir: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub base_backup_end: DateTime<FixedOffset>,
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
    let data = crate::restore::read_file(repo, index, &snapshot.tree, MANIFEST_FILE).await?;
    serde_json::from_slice(&data)
        .map_err(|e| PgError::BadSnapshot { path: MANIFEST_FILE.into(), message: e.to_string() })
}

/// Lays down a base backup, configures recovery and optionally runs it.
pub async fn restore_physical(
    repo: &Repository,
    index: Arc<Index>,
    snapshot: &Snapshot,
    opts: &PitrOptions,
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
    let progress = Arc::new(cairn_volume::RestoreProgress::default());
    let vopts =
        cairn_volume::RestoreOptions { target: dir.clone(), ..cairn_volume::RestoreOptions::default() };
    let summary =
        cairn_volume::restore(repo, index, snapshot, &vopts, progress).await.map_err(|e| match e {
            cairn_volume::VolumeError::Repo(r) => PgError::Repo(r),
            other => PgError::BadSnapshot { path: dir.display().to_string(), message: other.to_string() },
        })?;
    let _ = std::fs::remove_file(dir.join(MANIFEST_FILE));
    // The data directory itself is not in the tar: give it PG_VERSION's owner and mode 0700.
    let owner = std::fs::metadata(dir.join("PG_VERSION"))
        .map_err(|e| PgError::BadSnapshot { path: "PG_VERSION".into(), message: e.to_string() })?;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (uid, gid) = (owner.uid(), owner.gid());
    let chown = |p: &Path| std::os::unix::fs::chown(p, Some(uid), Some(gid));
    // Only root may give files away (otherwise they are ours already). The
    // server refuses a data directory it does not own, and needs to write in
    // every directory of it, whatever the tar headers said.
    if nix::unistd::geteuid().is_root() {
        chown_tree(dir, uid, gid).map_err(PgError::io(format!("giving {} to uid {uid}", dir.display())))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(PgError::io("chmod data directory"))?;

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
    let auto = dir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&conf);
    std::fs::write(&auto, text).map_err(PgError::io("writing postgresql.auto.conf"))?;
    let signal = dir.join("recovery.signal");
    std::fs::write(&signal, b"").map_err(PgError::io("writing recovery.signal"))?;
    for p in [&auto, &signal] {
        let _ = chown(p);
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
    }

    let mut report = PitrReport {
        data_dir: dir.clone(),
        files: summary.files,
        bytes: summary.bytes,
        base_backup_end: manifest.end_time,
        started: false,
        recovery_stop: None,
    };
    if opts.start {
        report.recovery_stop = Some(run_recovery(opts, &manifest, uid).await?);
        report.started = true;
    }
    Ok(report)
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.uid() != uid || meta.gid() != gid {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Starts the restored server and waits until recovery has ended; returns
/// the log line that says where it stopped.
async fn run_recovery(opts: &PitrOptions, manifest: &PhysicalManifest, uid: u32) -> Result<String, PgError> {
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
    fn relation_files_are_recognised() {
        assert!(is_relation_file("base/5/16384"));
        assert!(is_relation_file("base/5/16384.1"));
        assert!(is_relation_file("base/5/16384_fsm"));
        assert!(is_relation_file("global/1262"));
        assert!(!is_relation_file("base/5/PG_VERSION"));
        assert!(!is_relation_file("pg_wal/000000010000000000000002"));
        assert!(!is_relation_file("postgresql.conf"));
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
