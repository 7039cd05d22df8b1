//! The cairn repository: a restic repository, format version 2, read and
//! written natively.
//!
//! How the pieces fit:
//!
//! * [`Repository`] opens or creates a repository on any
//!   [`cairn_store::Backend`], holding the decrypted master key and config.
//! * [`Index`] maps blob ids to their place in pack files; load it with
//!   [`Repository::load_index`] before reading blobs.
//! * [`BlobSaver`] is the write pipeline: blobs in, deduplicated,
//!   compressed, encrypted packs and index files out.
//! * [`tree`] and [`format`] are the documents: trees, snapshots, indexes,
//!   locks, keys, config.
//! * [`chunker`] cuts streams into content-defined chunks (keyed FastCDC).
//! * [`archive`] turns named byte streams (database dumps) into snapshots;
//!   [`reader`] reads a snapshot's files back, every blob verified.
//! * [`journal`] keeps named logs of whole objects that are never
//!   deduplicated (PostgreSQL WAL), each entry create-only and verified.
//! * [`forget`] decides which snapshots a retention policy keeps (restic's rules);
//!   [`prune`] deletes the data no snapshot needs.
//! * [`check`] verifies a repository and names what damage affects.
//! * [`lock`] implements restic-compatible repository locks.
//!
//! The on-disk format is specified in `docs/DESIGN.md` at the top of the
//! source tree.

pub mod archive;
pub mod check;
pub mod chunker;
mod error;
pub mod forget;
pub mod format;
pub mod gocompat;
mod id;
pub mod index;
pub mod journal;
pub mod lock;
pub mod pack;
pub mod prune;
pub mod reader;
pub mod replicate;
mod repository;
pub mod saver;
pub mod select;
pub mod tree;
pub mod verify;

pub use error::{RepoError, Result};
pub use format::{BlobType, CairnSnapshotMeta, Snapshot, SnapshotSummary};
pub use id::{Id, ParseIdError};
pub use index::Index;
pub use repository::{CommitCheck, KeyInfo, Repository, decode_blob, host_and_user};
pub use saver::{BlobSaver, SavedBlob, SaverOptions, SaverStats, SaverSummary};
pub use select::{SnapshotFilter, kind_and_mode};
