//! The optional local spool of `wal-push`.
//!
//! Without it, a `wal-push` that cannot reach the repository fails (after
//! the store's retries) and PostgreSQL keeps the segment in `pg_wal` and
//! retries: nothing is lost, but `pg_wal` grows for as long as the outage
//! lasts, and a full `pg_wal` stops the database. With a spool
//! (`--spool DIR`, ideally on another volume), the segment is copied there
//! durably instead (temporary name, fsync, rename, fsync of the directory)
//! and `wal-push` succeeds, so PostgreSQL can recycle it; every later
//! `wal-push`, and `cairn wal drain`, first pushes what the spool holds,
//! oldest first. After a failure, `wal-push` does not try the repository
//! again for [`RETRY_AFTER`], so an outage costs PostgreSQL one retry
//! cycle, not one per segment.
//!
//! The spool is bounded (`--spool-max-size`). When a segment does not fit,
//! the default is to fail as if there were no spool (PostgreSQL keeps it);
//! `--when-spool-full drop` instead drops it with an error in the log, as
//! pgBackRest's `archive-push-queue-max` does: the database keeps running,
//! and the WAL chain has a gap that `cairn wal verify` reports until the
//! next base backup. A spooled segment is not archived yet: `cairn wal
//! verify` shows it as missing until it is drained.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cairn_repo::Repository;

use super::{PushOutcome, is_wal_name, push, wal_file_name};
use crate::PgError;

/// How long `wal-push` spools without trying the repository after a failure.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

const LOCK_FILE: &str = ".lock";
const FAILURE_FILE: &str = ".last-failure";

/// What to do with a segment that does not fit in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Fail `wal-push`: PostgreSQL keeps the segment in `pg_wal` and retries.
    Fail,
    /// Drop the segment (an error in the log, a gap in the archive) so that
    /// `pg_wal` cannot fill up.
    Drop,
}

/// What [`Spool::put`] did with a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spooled {
    Kept { files: usize, bytes: u64 },
    Dropped { files: usize, bytes: u64 },
}

/// What [`Spool::drain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DrainReport {
    pub pushed: Vec<String>,
    pub remaining: usize,
    pub remaining_bytes: u64,
}

/// A spool directory, locked for this process while it is open.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    when_full: WhenFull,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Spool {
    /// Opens (creating it, mode 0700) and locks the spool directory. The
    /// lock waits for another `wal-push` or `wal drain` on the same spool.
    pub fn open(dir: &Path, max_bytes: u64, when_full: WhenFull) -> Result<Spool, PgError> {
        let io = |what: &str| PgError::io(format!("{what} the WAL spool {}", dir.display()));
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io("creating"))?;
        // Read-only is enough for flock, so a lock file another user made
        // (root draining the postgres user's spool) does not lock us out.
        let path = dir.join(LOCK_FILE);
        let lock = std::fs::File::open(&path)
            .or_else(|_| {
                std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o644).open(&path)
            })
            .map_err(io("opening"))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io("locking")(e.into()))?;
        Ok(Spool { dir: dir.to_path_buf(), max_bytes, when_full, _lock: lock })
    }

    /// The spooled WAL files, oldest (by name) first, with their sizes.
    pub fn entries(&self) -> Result<Vec<(String, u64)>, PgError> {
        let io = PgError::io(format!("reading the WAL spool {}", self.dir.display()));
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(PgError::io("reading the WAL spool"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_wal_name(&name) {
                let size = entry.metadata().map_err(PgError::io("reading the WAL spool"))?.len();
                entries.push((name, size));
            }
        }
        entries.sort();
        Ok(entries)
    }

    /// Whether the repository failed less than `within` ago.
    pub fn failed_recently(&self, within: Duration) -> bool {
        std::fs::metadata(self.dir.join(FAILURE_FILE))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .is_some_and(|age| age < within)
    }

    /// Records that the repository could not be reached just now.
    pub fn note_failure(&self) {
        // A new file (not a rewrite), whoever made the last one.
        let path = self.dir.join(FAILURE_FILE);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::write(path, b"");
    }

    fn clear_failure(&self) {
        let _ = std::fs::remove_file(self.dir.join(FAILURE_FILE));
    }

    /// Copies the WAL file at `path` into the spool, durably, if it fits.
    pub fn put(&self, path: &Path) -> Result<Spooled, PgError> {
        let name = wal_file_name(path)?;
        let content = std::fs::read(path).map_err(PgError::io(format!("reading {}", path.display())))?;
        let entries = self.entries()?;
        if let Some((_, size)) = entries.iter().find(|(n, _)| *n == name) {
            let spooled =
                std::fs::read(self.dir.join(&name)).map_err(PgError::io("reading the WAL spool"))?;
            if *size == content.len() as u64 && spooled == content {
                return Ok(Spooled::Kept {
                    files: entries.len(),
                    bytes: entries.iter().map(|(_, s)| s).sum(),
                });
            }
            return Err(PgError::WalConflict { name });
        }
        let used: u64 = entries.iter().map(|(_, s)| s).sum();
        if used + content.len() as u64 > self.max_bytes {
            return match self.when_full {
                WhenFull::Fail => {
                    Err(PgError::SpoolFull { dir: self.dir.clone(), used, max: self.max_bytes, name })
                }
                WhenFull::Drop => Ok(Spooled::Dropped { files: entries.len(), bytes: used }),
            };
        }
        let io = |e| PgError::io(format!("writing {name} into the WAL spool {}", self.dir.display()))(e);
        let temp = self.dir.join(format!(".{name}.tmp"));
        cairn_store::durable::replace_file(&temp, &self.dir.join(&name), &content, 0o600).map_err(io)?;
        Ok(Spooled::Kept { files: entries.len() + 1, bytes: used + content.len() as u64 })
    }

    /// Pushes the spooled files to `repo`, oldest first, removing each
    /// once it is archived; stops at the first failure and returns it.
    pub async fn drain(&self, repo: &Repository) -> Result<DrainReport, (DrainReport, PgError)> {
        let entries = self.entries().map_err(|e| (DrainReport::default(), e))?;
        let mut report = DrainReport {
            pushed: Vec::new(),
            remaining: entries.len(),
            remaining_bytes: entries.iter().map(|(_, s)| s).sum(),
        };
        for (name, size) in entries {
            let path = self.dir.join(&name);
            match push(repo, &path).await {
                Ok(PushOutcome::Stored { .. } | PushOutcome::AlreadyArchived) => {
                    std::fs::remove_file(&path)
                        .map_err(|e| (report.clone(), PgError::io("removing a drained WAL file")(e)))?;
                    report.pushed.push(name);
                    report.remaining -= 1;
                    report.remaining_bytes -= size;
                }
                Err(e) => return Err((report, e)),
            }
        }
        self.clear_failure();
        Ok(report)
    }
}

/// Whether a `wal-push` failure is the repository's (unreachable, refusing,
/// wrong password: spool and retry later) rather than the segment's own
/// (a bad name, a conflicting archived copy, an unreadable file), which no
/// retry cures and must stay loud.
pub fn is_repository_failure(e: &PgError) -> bool {
    !matches!(e, PgError::WalConflict { .. } | PgError::BadWalName { .. } | PgError::Io { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spool_keeps_copies_within_its_bound() {
        let pg_wal = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let segment = |name: &str, byte: u8| {
            let path = pg_wal.path().join(name);
            std::fs::write(&path, vec![byte; 1000]).unwrap();
            path
        };
        let spool_dir = dir.path().join("spool");
        let spool = Spool::open(&spool_dir, 2500, WhenFull::Fail).unwrap();
        let first = segment("000000010000000000000002", 1);
        assert_eq!(spool.put(&first).unwrap(), Spooled::Kept { files: 1, bytes: 1000 });
        assert_eq!(
            spool.put(&first).unwrap(),
            Spooled::Kept { files: 1, bytes: 1000 },
            "again: same content"
        );
        std::fs::write(&first, vec![9u8; 1000]).unwrap();
        assert!(matches!(spool.put(&first), Err(PgError::WalConflict { .. })), "different content is loud");
        assert_eq!(
            spool.put(&segment("000000010000000000000001", 2)).unwrap(),
            Spooled::Kept { files: 2, bytes: 2000 }
        );
        let third = segment("000000010000000000000003", 3);
        let full = spool.put(&third).unwrap_err();
        assert!(matches!(full, PgError::SpoolFull { used: 2000, max: 2500, .. }), "{full}");
        assert_eq!(
            spool.entries().unwrap().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["000000010000000000000001", "000000010000000000000002"],
            "oldest first, no temporary files"
        );
        assert!(matches!(spool.put(&segment("not-wal", 0)), Err(PgError::BadWalName { .. })));
        drop(spool);

        let dropping = Spool::open(&spool_dir, 2500, WhenFull::Drop).unwrap();
        assert_eq!(dropping.put(&third).unwrap(), Spooled::Dropped { files: 2, bytes: 2000 });
        assert!(!dropping.failed_recently(RETRY_AFTER));
        dropping.note_failure();
        assert!(dropping.failed_recently(RETRY_AFTER));
        assert!(!dropping.failed_recently(Duration::ZERO));
    }
}
