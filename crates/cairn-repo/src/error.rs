//! Errors from the repository layer.
//!
//! Every variant names the object involved and, where the user can act, the
//! message says what to do. Damage is reported as [`RepoError::Damaged`] with
//! the object's path, so `check` and `restore` can say exactly what broke.

use cairn_store::StoreError;

use crate::id::Id;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error(
        "{location} is not a cairn/restic repository (it has no config file); run `cairn init` to create one, or check --repo / CAIRN_REPOSITORY"
    )]
    NotARepository { location: String },

    #[error("{location} already holds a repository; use it as it is, or pick an empty location")]
    AlreadyInitialized { location: String },

    #[error("wrong password: no key in {location} opens with it; check CAIRN_PASSWORD / CAIRN_PASSWORD_FILE")]
    WrongPassword { location: String },

    #[error("damaged repository object {path}: {reason}")]
    Damaged { path: String, reason: String },

    #[error("repository format version {0} is not supported (cairn reads versions 1 and 2)")]
    UnsupportedVersion(u32),

    #[error("no snapshot matches {spec:?}; run `cairn snapshots` to see the ids")]
    SnapshotNotFound { spec: String },

    #[error("snapshot {} is a {kind}{} snapshot, which this command does not act on (it takes snapshots {filter})", id.short(), if mode.is_empty() { String::new() } else { format!("/{mode}") })]
    SnapshotExcluded { id: Id, kind: String, mode: String, filter: String },

    #[error("snapshot prefix {spec:?} is ambiguous ({count} snapshots match); give more digits")]
    AmbiguousSnapshot { spec: String, count: usize },

    #[error("{kind} blob {id} is not in any index; run `cairn check` to see what is affected")]
    BlobNotFound { kind: &'static str, id: Id },

    #[error(
        "repository is locked by {holder}; wait for it to finish, or run `cairn unlock` if that process is gone"
    )]
    Locked { holder: String },

    #[error(
        "the repository lock was lost: {reason}; stopped without writing a snapshot or anything else that needs the lock; run the command again"
    )]
    LockLost { reason: String },

    #[error("not committing the snapshot: {0}")]
    CommitRefused(String),

    #[error("the backup pipeline stopped: {0}")]
    Pipeline(String),

    #[error(
        "the snapshot's {path} {problem}; the snapshot is not what this command expects, or it is damaged"
    )]
    SnapshotFile { path: String, problem: String },

    #[error(
        "entry {entry} of the {journal} journal is already stored with different content; refusing to overwrite it"
    )]
    JournalConflict { journal: &'static str, entry: String },

    #[error("the {journal} journal has no entry {entry}")]
    JournalEntryNotFound { journal: &'static str, entry: String },

    /// A journal entry that fails authentication, its tag or its SHA-256.
    #[error("damaged repository object {path}: {reason}")]
    JournalDamaged { journal: &'static str, entry: String, path: String, reason: String },

    #[error(
        "{entry:?} is not a valid name for an entry of the {journal} journal (1 to 200 letters, digits, '.', '_' or '-', not starting with '.')"
    )]
    BadJournalEntry { journal: &'static str, entry: String },

    #[error("{}: {source}", path.display())]
    LocalFile { path: std::path::PathBuf, source: std::io::Error },

    #[error("interrupted")]
    Interrupted,
}

impl RepoError {
    pub(crate) fn damaged(path: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        RepoError::Damaged { path: path.into(), reason: reason.to_string() }
    }
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;
