//! Where repository objects live.
//!
//! A cairn repository is a set of immutable, content-addressed objects plus a
//! single `config` object. This crate knows nothing about their contents: it
//! stores and fetches bytes by [`Handle`] (a [`FileType`] and a name). The
//! repository layer above it decides what the bytes mean.
//!
//! The contract every [`Backend`] honours (and the conformance tests in
//! [`conformance`] check):
//!
//! * `put` is atomic: a reader sees either no object or the whole object,
//!   never a prefix, even if the writer is killed mid-way.
//! * `put` with [`PutMode::CreateNew`] fails with [`StoreError::AlreadyExists`]
//!   when the object exists, and of two racing writers exactly one wins. Locks
//!   and the repository config rely on it.
//! * When `put` returns `Ok`, the object is durable (fsynced, or acknowledged
//!   by the object store).
//! * `list` may miss objects written concurrently but never returns partial ones.
//! * Errors say whether a retry can help ([`StoreError::is_transient`]);
//!   retrying is a wrapper's job, not each backend's.
//!
//! Two things every crate that handles locations needs live here too, as
//! the lowest crate they all depend on: [`Location`], the one place that
//! decides what a location string names, and [`redact`], which keeps the
//! credentials of locations, URLs and connection strings out of messages.

mod error;
mod local;
mod location;

pub mod conformance;
pub mod durable;
pub mod redact;
pub mod retry;

pub use error::StoreError;
pub use local::LocalBackend;
pub use location::Location;
pub use redact::{DisplaySafe, redact};
pub use retry::{RetryBackend, RetryPolicy};

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

/// The kinds of object in a repository, each in its own directory (prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileType {
    /// The single `config` object.
    Config,
    /// Key files (`keys/`): a password-protected copy of the master key.
    Key,
    /// Snapshot manifests (`snapshots/`).
    Snapshot,
    /// Index files (`index/`): which blob lives in which pack.
    Index,
    /// Pack files (`data/XX/`): the blobs themselves.
    Pack,
    /// Lock files (`locks/`).
    Lock,
    /// Entries of cairn's journals: whole log objects that are never
    /// deduplicated (PostgreSQL WAL today), named `<journal>/<entry>`
    /// ([`Handle::journal`]) and kept in the journal's own directory
    /// ([`journal_dir`]). Listing this type lists the entries of every
    /// journal, so replication needs no list of journals. Not a restic
    /// type: restic ignores the `cairn/` prefix, and [`FileType::ALL`]
    /// leaves it out so hash-named walks never meet it.
    Journal,
    /// Records of removed keys (`cairn/revoked-keys/`), named by the removed
    /// key's id; replication reads them to tell a revoked password from a
    /// key the primary merely lacks. Not a restic type either, and not in
    /// [`FileType::ALL`].
    KeyRevocation,
}

impl FileType {
    /// Every type, in the order replication and listings walk them.
    pub const ALL: [FileType; 6] = [
        FileType::Config,
        FileType::Key,
        FileType::Pack,
        FileType::Index,
        FileType::Snapshot,
        FileType::Lock,
    ];

    /// The directory (object-key prefix) holding objects of this type.
    pub fn dir(self) -> &'static str {
        match self {
            FileType::Config => "",
            FileType::Key => "keys",
            FileType::Snapshot => "snapshots",
            FileType::Index => "index",
            FileType::Pack => "data",
            FileType::Lock => "locks",
            // The root of new journals; see [`journal_dir`] for the older ones.
            FileType::Journal => JOURNAL_ROOT,
            FileType::KeyRevocation => "cairn/revoked-keys",
        }
    }

    /// Singular human name, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            FileType::Config => "config",
            FileType::Key => "key",
            FileType::Snapshot => "snapshot",
            FileType::Index => "index",
            FileType::Pack => "pack",
            FileType::Lock => "lock",
            FileType::Journal => "journal entry",
            FileType::KeyRevocation => "key revocation",
        }
    }
}

/// Where journals keep their entries: `cairn/journal/<journal>/`.
pub const JOURNAL_ROOT: &str = "cairn/journal";

/// Journals older than [`JOURNAL_ROOT`], which keep `cairn/<journal>/`:
/// PostgreSQL's WAL archive was written there before there were journals,
/// and moving it would strand every existing archive and the older cairn
/// binaries that restored servers run as their `restore_command`.
pub const JOURNALS_OUTSIDE_ROOT: &[&str] = &["wal"];

/// The directory holding the entries of `journal`.
pub fn journal_dir(journal: &str) -> String {
    if JOURNALS_OUTSIDE_ROOT.contains(&journal) {
        format!("cairn/{journal}")
    } else {
        format!("{JOURNAL_ROOT}/{journal}")
    }
}

/// Whether `cairn/journal/<journal>/` holds that journal's entries: not for
/// a journal outside the root (nothing is ever written there under its
/// name) nor for hidden names. Listings of [`FileType::Journal`] skip the rest.
pub fn journal_below_root(journal: &str) -> bool {
    !journal.is_empty() && !journal.starts_with('.') && !JOURNALS_OUTSIDE_ROOT.contains(&journal)
}

/// Names one object: its type and its name (lower-case hex id, or `config`;
/// `<journal>/<entry>` for journal entries).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle {
    pub kind: FileType,
    pub name: String,
}

impl Handle {
    pub fn new(kind: FileType, name: impl Into<String>) -> Self {
        Handle { kind, name: name.into() }
    }

    /// The config object.
    pub fn config() -> Self {
        Handle::new(FileType::Config, "config")
    }

    /// Entry `entry` of `journal`.
    pub fn journal(journal: &str, entry: &str) -> Self {
        Handle::new(FileType::Journal, format!("{journal}/{entry}"))
    }

    /// The object's path relative to the repository root, in restic's layout
    /// (packs are fanned out by the first two hex digits).
    pub fn path(&self) -> String {
        match self.kind {
            FileType::Config => "config".to_string(),
            FileType::Pack => {
                let fan = self.name.get(..2).unwrap_or("00");
                format!("data/{fan}/{}", self.name)
            }
            FileType::Journal => match self.name.split_once('/') {
                Some((journal, entry)) => format!("{}/{entry}", journal_dir(journal)),
                None => format!("{JOURNAL_ROOT}/{}", self.name),
            },
            kind => format!("{}/{}", kind.dir(), self.name),
        }
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

/// How `put` treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PutMode {
    /// Replace silently. Content-addressed objects are identical when names
    /// match, so this is the normal mode.
    #[default]
    Overwrite,
    /// Fail with [`StoreError::AlreadyExists`] if the object exists.
    CreateNew,
}

/// Options for `put`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PutOptions {
    pub mode: PutMode,
    /// SHA-256 of the bytes, when the caller knows it. Object stores that can
    /// verify it on receipt (S3 additional checksums) do; others ignore it.
    pub sha256: Option<[u8; 32]>,
}

impl PutOptions {
    pub fn create_new() -> Self {
        PutOptions { mode: PutMode::CreateNew, sha256: None }
    }
}

/// An object's place for a server-side copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySource {
    /// Which service (endpoint and region): copies only happen within one.
    pub service: String,
    pub bucket: String,
    pub key: String,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    /// When the object was written, where the store says (file mtime, S3
    /// `LastModified` in listings).
    pub modified: Option<std::time::SystemTime>,
}

/// A place that stores repository objects. See the crate docs for the contract.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Where this backend points, safe to print (no credentials).
    fn location(&self) -> String;

    /// Prepares an empty repository location (directories, bucket prefix).
    /// Fails with [`StoreError::AlreadyExists`] if a `config` is already there.
    async fn create(&self) -> Result<(), StoreError>;

    /// Reads a whole object, or the byte `range` of it.
    async fn get(&self, handle: &Handle, range: Option<Range<u64>>) -> Result<Bytes, StoreError>;

    /// Writes a whole object atomically and durably.
    async fn put(&self, handle: &Handle, data: Bytes, opts: PutOptions) -> Result<(), StoreError>;

    /// Size of an object; [`StoreError::NotFound`] if absent.
    async fn stat(&self, handle: &Handle) -> Result<ObjectInfo, StoreError>;

    /// All objects of one type.
    async fn list(&self, kind: FileType) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Removes an object. Removing an absent object is not an error.
    async fn delete(&self, handle: &Handle) -> Result<(), StoreError>;

    /// Where `handle` lives, for a server-side copy into another location of
    /// the same service. `None` for stores that cannot copy server-side.
    fn copy_source(&self, _handle: &Handle) -> Option<CopySource> {
        None
    }

    /// Copies the object `source` (from [`Backend::copy_source`] of another
    /// backend) to `handle` here without moving its bytes through this host.
    /// `Ok(None)`: this store cannot copy from that source (another service,
    /// no permission) and the caller streams instead. `Ok(Some(sum))`: copied;
    /// `sum` is the SHA-256 the store computed for the copy, when it reports one.
    async fn copy_from(
        &self,
        _source: &CopySource,
        _handle: &Handle,
    ) -> Result<Option<Option<[u8; 32]>>, StoreError> {
        Ok(None)
    }

    /// The SHA-256 of a stored object as the store itself recorded it (an S3
    /// additional checksum, say), without downloading the object. `None`
    /// when the store cannot tell; callers then read and hash the object.
    async fn stored_sha256(&self, _handle: &Handle) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(None)
    }

    /// Removes what interrupted writes left behind that the store keeps (and
    /// bills for) but no listing of the repository shows: for S3, multipart
    /// uploads under the repository's prefix that were started more than
    /// `older_than` ago and never completed or aborted (a `kill -9` during a
    /// large upload). Younger ones are left alone, since they may belong to
    /// a run still under way. Returns how many were removed; stores without
    /// such leftovers have nothing to do.
    async fn clean_abandoned_uploads(&self, _older_than: std::time::Duration) -> Result<usize, StoreError> {
        Ok(0)
    }

    /// Whether the object exists.
    async fn exists(&self, handle: &Handle) -> Result<bool, StoreError> {
        match self.stat(handle).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
