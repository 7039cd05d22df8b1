//! The volume source: a directory tree in, a directory tree out.
//!
//! * [`backup`] walks a tree, reads only what changed since the parent
//!   snapshot, and writes a restic-compatible snapshot through the
//!   repository's blob pipeline.
//! * [`restore`] lays a snapshot (or chosen paths of it) back down into a
//!   target directory, verifying every blob's SHA-256 before a byte of it
//!   is written, only renaming a file into place once all of its bytes
//!   are there, and (by default) making files and directories durable
//!   before it returns.
//!
//! Consistency model: like restic, a volume backup reads a live file
//! system; files are not frozen. A file that changes while it is read is
//! read again, and if it keeps changing it is reported (in the snapshot and
//! the exit code), never silently stored torn. For crash-consistent images
//! of a busy volume, back up a file-system snapshot (LVM, ZFS, CSI
//! VolumeSnapshot) mounted read-only.

pub mod archiver;
pub mod exclude;
pub mod meta;
pub mod restorer;
pub mod scratch;
pub mod source;

pub use archiver::{BackupOptions, BackupProgress, BackupResult, ParentChoice, backup};
pub use exclude::{ExcludeError, Excludes};
pub use restorer::{Overwrite, RestoreOptions, RestoreProgress, RestoreSummary, restore};
pub use scratch::VolumeScratch;
pub use source::{VolumeRestoreSettings, VolumeSettings, VolumeSource};

use std::path::{Path, PathBuf};

use cairn_repo::RepoError;

/// Errors from volume backup and restore.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Repo(#[from] RepoError),

    #[error(transparent)]
    Exclude(#[from] ExcludeError),

    #[error("no paths to back up")]
    NothingToBackUp,

    #[error("cannot back up {path}: {source}; check the path exists and is readable")]
    SourceUnreadable { path: PathBuf, source: std::io::Error },

    /// One file could not be read; the backup continues without it.
    #[error("cannot read {path}: {message}")]
    FileUnreadable { path: PathBuf, message: String },

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error(
        "restore target {target} already has {count} of the files to restore (e.g. {example}); pass --overwrite always|if-changed, or restore into an empty directory"
    )]
    TargetNotEmpty { target: PathBuf, count: usize, example: String },

    #[error(
        "{path}: fsync failed ({source}); what was restored may not survive a crash: check the disk and restore again"
    )]
    NotDurable { path: PathBuf, source: std::io::Error },

    #[error("path {path:?} is not in the snapshot; run `cairn ls SNAPSHOT` to see its contents")]
    PathNotInSnapshot { path: String },

    #[error("interrupted; nothing was committed (packs already uploaded are indexed and reused next time)")]
    Interrupted,
}

impl VolumeError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        VolumeError::Io { path: path.to_path_buf(), source }
    }
}
