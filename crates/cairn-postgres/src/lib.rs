//! The PostgreSQL source: logical backups that deduplicate night over night,
//! and restores of a whole database, some schemas or single tables.
//!
//! A logical snapshot is taken inside one MVCC snapshot per database:
//!
//! * A coordinating connection opens a `REPEATABLE READ` transaction and
//!   exports its snapshot (`pg_export_snapshot()`).
//! * In that same transaction it reads the verification facts: the server
//!   version, database size, extensions, every table with its columns and
//!   the catalog objects that belong to it (indexes, constraints, triggers,
//!   owned sequences, ...), which later make single-table restores possible.
//! * `pg_dump --snapshot=…` writes everything except the rows of ordinary
//!   tables (schema, sequence values, large objects) as an uncompressed
//!   custom-format archive, `schema.dump`.
//! * Worker connections import the snapshot and stream each table with
//!   `COPY … TO STDOUT` straight into the repository, one file per table.
//!   Rows are counted and the stream hashed on the way through, so the
//!   manifest holds exact row counts and a SHA-256 of each table's content,
//!   as of the same snapshot.
//!
//! Uncompressed per-table streams are what makes the next night cheap: an
//! unchanged table produces identical bytes, and the small content-defined
//! chunks chosen for dumps ([`DUMP_CHUNKS`]) confine a scattered update to
//! the chunks around it.
//!
//! Snapshot layout (ordinary files, so `restic restore` recovers them too):
//!
//! ```text
//! manifest.json                         Manifest (versions, tables, rows, checksums)
//! globals.sql                           pg_dumpall --globals-only (roles, tablespaces)
//! databases/<db>/schema.dump            pg_dump -Fc -Z0 without the rows of copied tables
//! databases/<db>/tables/<schema>.<table>.copy   COPY text format, one line per row
//! ```
//!
//! Restore replays it with the client tools: `pg_restore --section=pre-data`,
//! `COPY … FROM STDIN` per table (every blob verified), the archive's
//! remaining data, then `--section=post-data` (indexes and constraints) — in
//! parallel into a database cairn creates, as one transaction into one that
//! exists, so a failed restore never leaves an existing database changed.

mod conn;
mod dump;
mod error;
mod manifest;
pub mod physical;
pub(crate) mod restore;
pub mod scratch;
mod script;
pub mod source;
mod tools;
pub mod wal;

pub use conn::PgTarget;
pub use dump::{DUMP_CHUNKS, DumpOptions, DumpProgress, DumpResult, dump};
pub use error::PgError;
pub use manifest::{DatabaseManifest, Manifest, TableManifest};
pub use restore::{
    PlannedTable, RestoreOptions, RestorePlan, RestoreProgress, RestoreReport, TableCheck, compare_database,
    load_manifest, restore,
};
pub use scratch::PgScratch;
pub use source::{PostgresRestoreSettings, PostgresSettings, PostgresSource};
pub use tools::PgTools;
