use std::path::PathBuf;

use cairn_repo::RepoError;
use cairn_store::DisplaySafe;

/// Everything that can go wrong backing up or restoring PostgreSQL. Each
/// message says what happened and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "invalid PostgreSQL URL {url:?}: {message} (expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE)"
    )]
    Url { url: DisplaySafe, message: String },

    #[error("cannot connect to PostgreSQL at {target}: {message}")]
    Connect { target: String, message: String },

    #[error("PostgreSQL {context}: {source}")]
    Query {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error(
        "{tool} not found{searched}: install the PostgreSQL client tools (e.g. `apt-get install postgresql-client-{major}`) or point --pg-bin at their directory"
    )]
    ToolMissing { tool: String, major: u32, searched: String },

    #[error(
        "{tool} {tool_major} cannot dump a PostgreSQL {server_major} server ({path}): install the PostgreSQL {server_major} client tools (e.g. `apt-get install postgresql-client-{server_major}`) or point --pg-bin at them"
    )]
    ToolTooOld { tool: String, path: PathBuf, tool_major: u32, server_major: u32 },

    #[error(
        "tablespace {name}'s directory {} {problem}; restore it elsewhere with --tablespace-map {name}=/NEW/DIR, or keep all tablespaces inside the data directory with --tablespaces-in-place", directory.display()
    )]
    TablespacePlace { name: String, directory: PathBuf, problem: String },

    #[error(
        "--max-rate {bytes_per_second} bytes/s is outside what PostgreSQL accepts (32KiB to 1GiB per second)"
    )]
    BadMaxRate { bytes_per_second: u64 },

    #[error("base backup of {target} failed: {message}")]
    BaseBackup { target: String, message: String },

    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed { tool: String, status: String, stderr: String },

    #[error("database {name:?} does not exist on {target} (it has: {available})")]
    NoSuchDatabase { name: String, target: String, available: String },

    #[error("snapshot {snapshot} is a {kind} snapshot, not a PostgreSQL logical backup")]
    NotPostgres { snapshot: String, kind: String },

    #[error("{what} is not in this snapshot (it has: {available})")]
    NotInSnapshot { what: String, available: String },

    #[error(
        "target database {database:?} already holds {what}; restore into a new database name, or pass --overwrite to replace what the restore brings"
    )]
    TargetNotEmpty { database: String, what: String },

    #[error("table {table}: restored {restored} rows but the snapshot holds {expected}")]
    RowCountMismatch { table: String, restored: u64, expected: u64 },

    #[error("table {table}: restored content does not match the snapshot's SHA-256 ({detail})")]
    ContentMismatch { table: String, detail: String },

    #[error("the snapshot's {path} is damaged or unreadable: {message}")]
    BadSnapshot { path: String, message: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{name:?} is not a WAL file name (expected what PostgreSQL passes as %p / %f, e.g. 000000010000000000000001)"
    )]
    BadWalName { name: String },

    #[error(
        "WAL file {name} is already archived with different content; refusing to overwrite it (is another cluster archiving into this repository?)"
    )]
    WalConflict { name: String },

    #[error(
        "the WAL spool {} is full ({used} of {max} bytes) and cannot take {name}; PostgreSQL keeps it and retries. Make the repository reachable (then `cairn wal drain --spool {}`), raise --spool-max-size, or use --when-spool-full drop", dir.display(), dir.display()
    )]
    SpoolFull { dir: PathBuf, used: u64, max: u64, name: String },

    #[error("WAL file {name} is not in the archive")]
    WalNotFound { name: String },

    #[error("archived WAL file {name} is damaged: {message}")]
    WalDamaged { name: String, message: String },

    /// The request cannot be done as asked (exit 2).
    #[error("{0}")]
    Usage(String),

    /// A setting cannot be used (an unreadable password file).
    #[error("{0}")]
    Settings(String),

    #[error(
        "no physical base backup in this repository precedes the target; take one with `cairn backup postgres --physical`, or choose a later target"
    )]
    NoBaseBackup,

    #[error("interrupted")]
    Interrupted,

    #[error(transparent)]
    Repo(#[from] RepoError),

    /// The volume restorer's own failure (not damage in the snapshot).
    #[error(transparent)]
    Restore(cairn_volume::VolumeError),
}

impl PgError {
    pub(crate) fn query(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        let context = context.into();
        move |source| PgError::Query { context, source }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
        let context = context.into();
        move |source| PgError::Io { context, source }
    }
}
