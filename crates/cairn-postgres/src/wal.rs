//! WAL archiving: `cairn wal-push` as PostgreSQL's `archive_command`,
//! `cairn wal-fetch` as its `restore_command`, and `cairn wal verify`.
//!
//! The archive is the repository's journal [`JOURNAL`] (`wal`,
//! `cairn_repo::journal`): each WAL file is one entry under its own name,
//! stored whole in `cairn/wal/<name>`, sealed, compressed and checked by its
//! SHA-256 on every read. WAL never deduplicates against anything, and an
//! archive must answer "do you have segment X?" in one request, so there is
//! no pack or index indirection. What this module adds is PostgreSQL's:
//! which names are WAL files, the errors PostgreSQL's commands need, and
//! what the archive means for recovery (timelines, gaps, recovery windows).
//!
//! Rules PostgreSQL relies on:
//! * `wal-push` succeeds only once the object is durably stored (the
//!   journal's create-only write). Pushing a name again with identical
//!   content succeeds (PostgreSQL retries after crashes); with different
//!   content it fails loudly and changes nothing.
//! * `wal-fetch` distinguishes "not in the archive" (exit 1: the normal end
//!   of the archive during recovery) from damage or an unreachable
//!   repository, which must stop recovery rather than end it early at the
//!   wrong point; see the CLI for the exit codes.

use std::collections::BTreeMap;
use std::path::Path;

use cairn_repo::journal::{JournalSpec, Put};
use cairn_repo::{RepoError, Repository};

use crate::PgError;

pub mod spool;

/// PostgreSQL's WAL archive. Its tag is what its entries carried before
/// there were journals, so every archive written since stays readable, and
/// older cairn binaries (a restored server's `restore_command`) read new
/// entries.
pub const JOURNAL: JournalSpec = JournalSpec::new("wal", *b"CAIRNWAL");

/// What `wal-push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Stored {
        bytes: u64,
        stored: u64,
    },
    /// The archive already held this name with identical content.
    AlreadyArchived,
}

/// Is `name` a file PostgreSQL archives: a segment (24 hex digits), a
/// timeline history file, a backup label or a partial segment?
pub fn is_wal_name(name: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
    };
    if hex(name, 24) {
        return true;
    }
    if let Some(tli) = name.strip_suffix(".history") {
        return hex(tli, 8);
    }
    if let Some(seg) = name.strip_suffix(".partial") {
        return hex(seg, 24);
    }
    // 000000010000000000000002.00000028.backup
    if let Some(rest) = name.strip_suffix(".backup") {
        return rest.len() == 33
            && hex(&rest[..24], 24)
            && rest.as_bytes()[24] == b'.'
            && hex(&rest[25..], 8);
    }
    false
}

/// The journal's errors as PostgreSQL's commands report them.
fn wal_error(e: RepoError) -> PgError {
    match e {
        RepoError::JournalConflict { entry, .. } => PgError::WalConflict { name: entry },
        RepoError::JournalEntryNotFound { entry, .. } => PgError::WalNotFound { name: entry },
        RepoError::JournalDamaged { entry, reason, .. } => {
            PgError::WalDamaged { name: entry, message: reason }
        }
        e => PgError::Repo(e),
    }
}

/// The WAL file name of `path`, which PostgreSQL passes as `%p`.
pub(crate) fn wal_file_name(path: &Path) -> Result<String, PgError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_wal_name(n))
        .map(str::to_string)
        .ok_or_else(|| PgError::BadWalName { name: path.display().to_string() })
}

/// Archives the WAL file at `path` under its file name.
pub async fn push(repo: &Repository, path: &Path) -> Result<PushOutcome, PgError> {
    let name = wal_file_name(path)?;
    let content = tokio::fs::read(path).await.map_err(PgError::io(format!("reading {}", path.display())))?;
    match repo.journal(JOURNAL).put_new(&name, &content).await.map_err(wal_error)? {
        Put::Stored { bytes, stored } => Ok(PushOutcome::Stored { bytes, stored }),
        Put::AlreadyStored => Ok(PushOutcome::AlreadyArchived),
    }
}

/// Restores WAL file `name` from the archive to `dest`: written to a
/// temporary name beside it, fsynced, then renamed and the directory
/// fsynced, so PostgreSQL never reads half a file and a crash never leaves
/// a complete-looking name with missing data.
pub async fn fetch(repo: &Repository, name: &str, dest: &Path) -> Result<u64, PgError> {
    if !is_wal_name(name) {
        return Err(PgError::BadWalName { name: name.into() });
    }
    let content = repo.journal(JOURNAL).get(name).await.map_err(wal_error)?;
    let len = content.len() as u64;
    let tmp = dest.with_file_name(format!(
        ".{}.cairn-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal"),
        std::process::id()
    ));
    let dest = dest.to_path_buf();
    let what = format!("writing {}", dest.display());
    // Durable before PostgreSQL is told the file is there: after a crash the
    // name must never stand over missing bytes.
    tokio::task::spawn_blocking(move || cairn_store::durable::replace_file(&tmp, &dest, &content, 0o666))
        .await
        .expect("writing a WAL file panicked")
        .map_err(PgError::io(what))?;
    Ok(len)
}

/// The archive of one timeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TimelineReport {
    pub timeline: u32,
    pub first: String,
    pub last: String,
    pub segments: u64,
    /// Missing ranges, as (first missing, last missing) segment names.
    pub gaps: Vec<(String, String)>,
    pub history_file: bool,
    /// When the newest segment was archived (the store's write time).
    pub last_archived_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A physical base backup, as `wal verify` needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupRef {
    /// The snapshot's short id, for the report.
    pub snapshot: String,
    pub timeline: u32,
    /// `START WAL LOCATION`: recovery needs WAL from this segment on.
    pub start_lsn: u64,
    /// The earliest point the backup can be recovered to.
    pub end_time: String,
}

/// How far one base backup can be rolled forward with the archived WAL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryWindow {
    pub snapshot: String,
    pub timeline: u32,
    /// Recovery can stop anywhere from here...
    pub from_time: String,
    /// The WAL segment the backup starts in.
    pub start_segment: String,
    /// ...to the end of this segment (the last one of an unbroken chain
    /// from `start_segment` on the backup's timeline); `None` when the
    /// start segment itself is missing and the backup cannot be recovered.
    pub through_segment: Option<String>,
    /// When `through_segment` was archived: about the latest reachable time.
    pub through_archived_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Later timelines in the archive (a failover after the backup):
    /// recovery with `recovery_target_timeline = latest` continues on them.
    pub later_timelines: Vec<u32>,
}

/// `cairn wal verify`: the recoverable range per timeline, gaps, damage.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WalReport {
    pub timelines: Vec<TimelineReport>,
    pub files: u64,
    pub bytes: u64,
    /// Objects that failed authentication or their SHA-256 (`read_data` only).
    pub damaged: Vec<String>,
    /// Objects in the archive's directory (`cairn/wal/`) with names
    /// PostgreSQL never archives.
    pub unexpected: Vec<String>,
    /// Per base backup in the repository, newest first: what it can be
    /// recovered to.
    pub recovery_windows: Vec<RecoveryWindow>,
}

impl WalReport {
    /// No gaps, no damage, and (when there are base backups) the newest
    /// one can be recovered.
    pub fn is_healthy(&self) -> bool {
        self.damaged.is_empty()
            && self.timelines.iter().all(|t| t.gaps.is_empty())
            && self.recovery_windows.first().is_none_or(|w| w.through_segment.is_some())
    }
}

/// Lists the archive and checks every timeline's segments are contiguous;
/// with `read_data`, also opens and verifies every object; for each of
/// `base_backups` (newest first) works out its recovery window. `segment_size`
/// is the cluster's `wal_segment_size` (16 MiB unless initdb changed it).
pub async fn verify(
    repo: &Repository,
    segment_size: u64,
    read_data: bool,
    base_backups: &[BaseBackupRef],
) -> Result<WalReport, PgError> {
    let journal = repo.journal(JOURNAL);
    let objects = journal.list().await?;
    let per_id = 0x1_0000_0000u64 / segment_size.max(1);
    let mut report = WalReport::default();
    let mut segments: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut archived_at: std::collections::HashMap<(u32, u64), std::time::SystemTime> =
        std::collections::HashMap::new();
    let mut histories = std::collections::HashSet::new();
    for obj in &objects {
        report.files += 1;
        report.bytes += obj.size;
        let name = obj.name.as_str();
        if !is_wal_name(name) {
            report.unexpected.push(name.to_string());
            continue;
        }
        if let Some(tli) = name.strip_suffix(".history") {
            histories.insert(u32::from_str_radix(tli, 16).unwrap_or(0));
        } else if name.len() == 24 {
            let parse = |r: std::ops::Range<usize>| u64::from_str_radix(&name[r], 16).unwrap_or(0);
            let tli = parse(0..8) as u32;
            let number = parse(8..16) * per_id + parse(16..24);
            segments.entry(tli).or_default().push(number);
            if let Some(t) = obj.modified {
                archived_at.insert((tli, number), t);
            }
        }
    }
    if read_data {
        let wal_files = objects.iter().map(|o| o.name.as_str()).filter(|n| is_wal_name(n));
        for damaged in journal.verify(wal_files).await? {
            let e = PgError::WalDamaged { name: damaged.entry.clone(), message: damaged.reason };
            report.damaged.push(format!("{}: {e}", damaged.entry));
        }
    }
    let seg_name = |tli: u32, n: u64| format!("{tli:08X}{:08X}{:08X}", n / per_id, n % per_id);
    let utc = |t: std::time::SystemTime| chrono::DateTime::<chrono::Utc>::from(t);
    for numbers in segments.values_mut() {
        numbers.sort_unstable();
        numbers.dedup();
    }
    for b in base_backups {
        let start = b.start_lsn / segment_size.max(1);
        let numbers = segments.get(&b.timeline).map(Vec::as_slice).unwrap_or_default();
        let through = numbers.binary_search(&start).ok().map(|at| {
            let run = numbers[at..].windows(2).take_while(|p| p[1] == p[0] + 1).count();
            start + run as u64
        });
        report.recovery_windows.push(RecoveryWindow {
            snapshot: b.snapshot.clone(),
            timeline: b.timeline,
            from_time: b.end_time.clone(),
            start_segment: seg_name(b.timeline, start),
            through_segment: through.map(|n| seg_name(b.timeline, n)),
            through_archived_at: through.and_then(|n| archived_at.get(&(b.timeline, n)).copied()).map(utc),
            later_timelines: segments.keys().copied().filter(|&t| t > b.timeline).collect(),
        });
    }
    for (tli, numbers) in segments {
        let mut gaps = Vec::new();
        for pair in numbers.windows(2) {
            if pair[1] > pair[0] + 1 {
                gaps.push((seg_name(tli, pair[0] + 1), seg_name(tli, pair[1] - 1)));
            }
        }
        report.timelines.push(TimelineReport {
            timeline: tli,
            first: seg_name(tli, numbers[0]),
            last: seg_name(tli, *numbers.last().expect("non-empty")),
            segments: numbers.len() as u64,
            gaps,
            history_file: tli == 1 || histories.contains(&tli),
            last_archived_at: numbers.last().and_then(|n| archived_at.get(&(tli, *n)).copied()).map(utc),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_names_are_recognised() {
        assert!(is_wal_name("000000010000000000000001"));
        assert!(is_wal_name("00000002.history"));
        assert!(is_wal_name("000000010000000000000002.00000028.backup"));
        assert!(is_wal_name("000000020000000100000003.partial"));
        assert!(!is_wal_name("00000001000000000000000g"));
        assert!(!is_wal_name("000000010000000000000001/../x"));
        assert!(!is_wal_name("archive_status"));
        assert!(!is_wal_name("0000000100000000000000aa"), "PostgreSQL writes upper-case hex");
    }
}
