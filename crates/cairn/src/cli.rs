//! Command-line flags, as parsed (see [`crate::context`] for the resolved settings).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::output::LogFormat;

/// cairn: backups you can prove. One verified, restic-compatible repository
/// for every datastore.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

pub const EXIT_CODES: &str = "\
Exit codes:
  0   success
  1   failure (the message says why)
  2   bad usage
  3   backup written, but some files could not be read (listed in the snapshot)
  4   check/verify found damage
  10  repository does not exist
  11  repository is locked by another process
  12  wrong password
  130 interrupted (SIGINT), 143 terminated (SIGTERM)";

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Repository location: a directory path, or s3://bucket/prefix[?region=..&endpoint=..].
    #[arg(short = 'r', long = "repo", env = "CAIRN_REPOSITORY", global = true)]
    pub repo: Option<String>,
    /// File holding the repository password (else CAIRN_PASSWORD, else a prompt).
    #[arg(long, env = "CAIRN_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Configuration file naming the repository and sources.
    #[arg(short = 'c', long, env = "CAIRN_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log format: text on stderr, or JSON lines on stdout (for CronJobs).
    #[arg(long, value_enum, env = "CAIRN_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Never draw progress bars.
    #[arg(long, global = true)]
    pub no_progress: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new repository.
    Init,
    /// Back up a source into the repository.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// List the files in a snapshot.
    Ls(LsArgs),
    /// Restore a snapshot (or some of its paths) into a directory.
    Restore(RestoreArgs),
    /// Check the repository's integrity.
    Check(CheckArgs),
    /// Read back and verify every byte a snapshot needs.
    Verify(VerifyArgs),
    /// Repository and snapshot statistics.
    Stats(StatsArgs),
    /// Manage the passwords (key files) of the repository.
    Key(KeyArgs),
    /// Remove stale locks left by killed processes.
    Unlock(UnlockArgs),
    /// Copy the repository to replicas, or verify that they are complete.
    Replicate(ReplicateArgs),
    /// Archive one PostgreSQL WAL file: archive_command = 'cairn wal-push %p'.
    #[command(name = "wal-push")]
    WalPush(WalPushArgs),
    /// Fetch one archived WAL file: restore_command = 'cairn wal-fetch %f %p'.
    #[command(name = "wal-fetch")]
    WalFetch(WalFetchArgs),
    /// Inspect the WAL archive.
    Wal(WalArgs),
    /// Manage the DynamoDB snapshot catalog (catalog_table / CAIRN_CATALOG_TABLE).
    Catalog(CatalogArgs),
}

#[derive(Debug, Args)]
pub struct CatalogArgs {
    #[command(subcommand)]
    pub action: CatalogAction,
}

#[derive(Debug, Subcommand)]
pub enum CatalogAction {
    /// Recreate the repository's snapshot items from the repository (the source of truth).
    Rebuild {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// The WAL file to archive (PostgreSQL's %p).
    pub path: PathBuf,
    #[command(flatten)]
    pub spool: SpoolArgs,
}

/// The optional local spool of `wal-push`.
#[derive(Debug, Args)]
pub struct SpoolArgs {
    /// When the repository cannot be reached, keep the WAL file in this
    /// directory (durably; best on another volume than pg_wal) and succeed,
    /// so PostgreSQL's pg_wal does not grow; every later wal-push, and
    /// `cairn wal drain`, pushes what it holds first.
    #[arg(long, env = "CAIRN_WAL_SPOOL", value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// The most the spool may hold (e.g. 4GiB, 512MiB).
    #[arg(long, env = "CAIRN_WAL_SPOOL_MAX_SIZE", default_value = "4GiB", value_parser = parse_size)]
    pub spool_max_size: u64,
    /// When a file does not fit: `fail` (PostgreSQL keeps it in pg_wal and
    /// retries) or `drop` it (logged as an error; the archive has a gap
    /// until the next base backup, but pg_wal cannot fill up).
    #[arg(long, env = "CAIRN_WAL_SPOOL_FULL", default_value = "fail", value_parser = ["fail", "drop"])]
    pub when_spool_full: String,
}

/// `4GiB`, `512MiB`, `64K`, `1000`: binary units, bytes without one.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{value:?} is not a size (e.g. 4GiB, 512MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(format!("unknown size unit in {value:?} (use KiB, MiB, GiB or TiB)")),
    };
    number.checked_mul(1 << shift).ok_or_else(|| format!("{value:?} is too large"))
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// The WAL file name wanted (PostgreSQL's %f).
    pub name: String,
    /// Where to write it (PostgreSQL's %p).
    pub dest: PathBuf,
}

#[derive(Debug, Args)]
pub struct WalArgs {
    #[command(subcommand)]
    pub action: WalAction,
}

#[derive(Debug, Subcommand)]
pub enum WalAction {
    /// Report the archived range of every timeline, any gap, and the recovery window of every
    /// physical base backup; exit 4 when the chain is broken or the newest base backup cannot recover.
    Verify {
        /// Also read every WAL object and verify it (authentication and SHA-256).
        #[arg(long)]
        read_data: bool,
        /// The cluster's wal_segment_size in MiB.
        #[arg(long, default_value_t = 16)]
        segment_size_mib: u64,
        #[arg(long)]
        json: bool,
    },
    /// Push what a `wal-push --spool` directory holds into the repository,
    /// oldest first; exit 1 if anything is left (the repository still fails).
    Drain {
        /// The spool directory (as given to wal-push).
        #[arg(long, env = "CAIRN_WAL_SPOOL", value_name = "DIR")]
        spool: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// Replica location (repeatable); default: `replicas:` from the config file.
    #[arg(long = "to")]
    pub to: Vec<String>,
    /// Only verify: every object present and identical (by SHA-256), and the lag.
    #[arg(long)]
    pub verify: bool,
    /// With --verify: copy again whatever is missing or damaged on the replica, then verify again.
    #[arg(long, requires = "verify")]
    pub repair: bool,
    /// With --verify: fail when the newest snapshot the replica lacks is older than this (e.g. 90m, 26h, 2d).
    #[arg(long, value_parser = parse_duration)]
    pub max_lag: Option<std::time::Duration>,
    /// Objects copied or checked at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[arg(long)]
    pub json: bool,
}

/// Parses `500ms`, `90s`, `15m`, `26h`, `2d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a duration like 90m, 26h or 2d"))?;
    let secs = match unit {
        "ms" => return Ok(std::time::Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub kind: Option<BackupKind>,
    /// Back up the source of this name from the config file.
    #[arg(long)]
    pub source: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not copy the new snapshot to the configured replicas.
    #[arg(long)]
    pub no_replicate: bool,
}

#[derive(Debug, Subcommand)]
pub enum BackupKind {
    /// Back up directories and files.
    Volume(VolumeArgs),
    /// Logical backup of PostgreSQL databases (one consistent snapshot per database).
    Postgres(PostgresArgs),
}

#[derive(Debug, Args, Clone, Default)]
pub struct PostgresArgs {
    /// Server to back up: postgresql://USER@HOST:PORT[/DATABASE]; the password
    /// from the URL, PGPASSWORD or ~/.pgpass (client tools). TLS as libpq:
    /// ?sslmode=verify-full&sslrootcert=CA.pem (also sslcert, sslkey).
    #[arg(long, env = "CAIRN_PG_URL", hide_env_values = true)]
    pub url: String,
    /// Database to dump (repeatable). Default: the one the URL names, or every database.
    #[arg(long = "database", short = 'd')]
    pub databases: Vec<String>,
    /// Skip roles and tablespaces (pg_dumpall --globals-only).
    #[arg(long)]
    pub no_globals: bool,
    /// Tables copied at once per database.
    #[arg(long, short = 'j', default_value_t = 2)]
    pub jobs: usize,
    /// Also copy tables larger than a quarter of the server's shared_buffers
    /// as block ranges spread over the --jobs connections: faster for one
    /// huge table on a server with idle cores, but those pages then pass
    /// through shared_buffers and evict the workload's cached pages (a plain
    /// COPY, like pg_dump's, reads them through a small ring instead).
    #[arg(long)]
    pub split_large_tables: bool,
    /// With --physical: cap the rate the server sends the base backup at
    /// (per second, e.g. 50MiB; 32KiB to 1GiB), to spare a busy primary's disks.
    #[arg(long, value_name = "RATE", value_parser = parse_size, requires = "physical")]
    pub max_rate: Option<u64>,
    /// Directory with pg_dump/pg_dumpall (default: the server's version under
    /// /usr/lib/postgresql, then PATH).
    #[arg(long, env = "CAIRN_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
    /// A physical base backup of the whole cluster, tablespaces included
    /// (BASE_BACKUP over a replication connection), instead of logical dumps; with WAL archiving (`cairn wal-push`) it restores to any
    /// point in time.
    #[arg(long, conflicts_with_all = ["databases", "no_globals"])]
    pub physical: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub struct VolumeArgs {
    /// Paths to back up.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Exclude paths matching this pattern (repeatable; `*.tmp`, `/abs/dir`, `cache/**`).
    #[arg(short = 'e', long = "exclude")]
    pub exclude: Vec<String>,
    /// Read exclude patterns from a file (one per line, # comments).
    #[arg(long = "exclude-file")]
    pub exclude_file: Vec<PathBuf>,
    /// Do not descend into other file systems.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
    /// Compare against this snapshot instead of the latest with the same host and paths.
    #[arg(long)]
    pub parent: Option<String>,
    /// Read every file, ignoring the parent snapshot.
    #[arg(long)]
    pub force: bool,
    /// Do not record extended attributes.
    #[arg(long)]
    pub no_xattrs: bool,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub pack_size: u32,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    #[arg(long)]
    pub json: bool,
    /// Only snapshots with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Only snapshots from this host.
    #[arg(long)]
    pub host: Option<String>,
    /// Read the list from the DynamoDB catalog instead of the repository
    /// (fast for large repositories; `cairn catalog rebuild` if it drifted).
    #[arg(long)]
    pub from_catalog: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Snapshot id, unique prefix, or `latest`.
    pub snapshot: String,
    /// Only this path (and below).
    pub path: Option<String>,
    /// Long listing: mode, owner, size, mtime.
    #[arg(short, long)]
    pub long: bool,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OverwriteArg {
    Never,
    IfChanged,
    Always,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot id, unique prefix, or `latest`.
    pub snapshot: String,
    /// Directory to restore into, or for a PostgreSQL snapshot the database:
    /// postgresql://USER@HOST:PORT/NEWDB (created if missing).
    #[arg(long = "to", short = 't', required_unless_present = "physical")]
    pub to: Option<PathBuf>,
    /// Restore only these paths (inside the snapshot).
    pub paths: Vec<String>,
    /// What to do with files (or, for PostgreSQL, tables) that already exist
    /// in the target; `--overwrite` alone means `always`.
    #[arg(long, value_enum, default_value = "never", num_args = 0..=1, default_missing_value = "always")]
    pub overwrite: OverwriteArg,
    /// Show what would be restored; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not fsync restored files and directories (directory and --physical
    /// restores): faster, but a crash or power loss soon after can leave
    /// files that look complete yet hold zeros, which a later
    /// `--overwrite if-changed` will not notice. For scratch restores only.
    #[arg(long, env = "CAIRN_RESTORE_NO_FSYNC", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_fsync: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub postgres: PgRestoreArgs,
}

/// Options for restoring PostgreSQL snapshots.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "PostgreSQL restore")]
pub struct PgRestoreArgs {
    /// Which database of the snapshot (needed when it holds several).
    #[arg(long)]
    pub database: Option<String>,
    /// Restore only this schema (repeatable).
    #[arg(long = "schema")]
    pub schemas: Vec<String>,
    /// Restore only this table, SCHEMA.TABLE (repeatable).
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// Do not restore ownership and grants (when the roles do not exist on the target).
    #[arg(long)]
    pub no_owner: bool,
    /// Restore roles and tablespaces first.
    #[arg(long)]
    pub globals: bool,
    /// Re-read every restored table and compare its SHA-256 with the snapshot.
    #[arg(long)]
    pub verify: bool,
    /// Tables loaded and indexes built at once.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Directory with pg_restore/psql.
    #[arg(long, env = "CAIRN_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Point-in-time restore of a physical base backup into --data-dir.
    #[arg(long, requires = "data_dir", conflicts_with = "to")]
    pub physical: bool,
    /// The (empty or new) data directory for --physical.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Recover to this time (e.g. '2026-11-23 03:00:00+00'); with `latest`,
    /// the newest base backup that ended before it is used.
    #[arg(long, group = "recovery_target")]
    pub to_time: Option<String>,
    /// Recover to this WAL location (e.g. 0/3000060).
    #[arg(long, group = "recovery_target")]
    pub to_lsn: Option<String>,
    /// Recover to (and including) this transaction id.
    #[arg(long, group = "recovery_target")]
    pub to_xid: Option<String>,
    /// Recover to this named restore point (pg_create_restore_point).
    #[arg(long, group = "recovery_target")]
    pub to_name: Option<String>,
    /// Start the restored server and wait until recovery has reached the target.
    #[arg(long)]
    pub start: bool,
    /// Port for the restored server (must differ from a server running on this host).
    #[arg(long)]
    pub port: Option<u16>,
    /// What the server does at the target: promote (default), pause or shutdown.
    #[arg(long, default_value = "promote", value_parser = ["promote", "pause", "shutdown"])]
    pub target_action: String,
    /// Keep the backed-up archive_command (by default a restored server does not archive).
    #[arg(long)]
    pub keep_archiving: bool,
    /// Seconds recovery may take with --start.
    #[arg(long, default_value_t = 3600)]
    pub recovery_timeout: u64,
    /// Lay a tablespace down in another directory than the one it had
    /// (TABLESPACE is its name, oid or old directory; DIR absolute and empty
    /// or new). Repeatable. Unmapped tablespaces go back where they were.
    #[arg(long, value_name = "TABLESPACE=DIR", value_parser = parse_tablespace_map)]
    pub tablespace_map: Vec<(String, PathBuf)>,
    /// Keep all tablespaces inside the data directory (pg_tblspc/OID as
    /// directories; PostgreSQL 15+, allow_in_place_tablespaces is set): for
    /// scratch restores on a host whose tablespace directories are in use.
    #[arg(long, conflicts_with = "tablespace_map")]
    pub tablespaces_in_place: bool,
}

fn parse_tablespace_map(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((name, dir)) if !name.is_empty() && dir.starts_with('/') => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!("expected TABLESPACE=/ABSOLUTE/DIR, got {value:?}")),
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Read and verify all pack data.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read and verify a random share of the packs, e.g. `10%`.
    #[arg(long, value_name = "N%")]
    pub read_data_subset: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Snapshot id, unique prefix, or `latest`.
    pub snapshot: String,
    /// For a PostgreSQL logical snapshot: instead of reading the snapshot
    /// back, compare this database (postgresql://…/DB, e.g. a restore) with
    /// it: every table's row count and content hash.
    #[arg(long, value_name = "URL")]
    pub against: Option<String>,
    /// With --against: which database of the snapshot (when it holds several).
    #[arg(long, requires = "against")]
    pub database: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Restore size of one snapshot instead of repository totals.
    pub snapshot: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub action: KeyAction,
}

#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Add a password.
    Add(NewPasswordArgs),
    /// List key files.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a key file (not the one in use).
    Remove { id: String },
    /// Change the password in use.
    Passwd(NewPasswordArgs),
}

#[derive(Debug, Args)]
pub struct NewPasswordArgs {
    /// File holding the new password (else CAIRN_NEW_PASSWORD, else a prompt).
    #[arg(long, env = "CAIRN_NEW_PASSWORD_FILE")]
    pub new_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Remove all locks, not only stale ones (make sure nothing is running).
    #[arg(long)]
    pub remove_all: bool,
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_parse() {
        assert_eq!(super::parse_duration("90m").unwrap().as_secs(), 5400);
        assert_eq!(super::parse_duration("2d").unwrap().as_secs(), 172_800);
        assert_eq!(super::parse_duration("45").unwrap().as_secs(), 45);
        assert_eq!(super::parse_duration("250ms").unwrap(), std::time::Duration::from_millis(250));
        assert!(super::parse_duration("5w").is_err());
        assert!(super::parse_duration("h").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
