//! Command-line flags, as parsed (see [`crate::context`] for the resolved settings).
//!
//! The static part is derived here; every adapter adds its own: its
//! `cairn backup <kind>` subcommand and its `cairn restore`/`verify` flags
//! ([`command`] puts them in from the registry), so adding a source never
//! touches this file.

use std::path::PathBuf;

use cairn_source::Registry;
use cairn_source::units::{parse_duration, parse_size};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::output::LogFormat;
use cairn_repo::forget::KeepDuration;

/// The whole command line: the static part plus every adapter's.
pub fn command(registry: &Registry) -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
        .mut_subcommand("backup", |backup| {
            registry.iter().fold(backup, |cmd, s| cmd.subcommand(s.backup_command()))
        })
        .mut_subcommand("restore", |restore| registry.iter().fold(restore, |cmd, s| s.augment_restore(cmd)))
        .mut_subcommand("verify", |verify| registry.iter().fold(verify, |cmd, s| s.augment_restore(cmd)))
}

/// cairn: backups you can prove. One verified, restic-compatible repository
/// for every datastore.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about = None, after_help = cairn_engine::exit::help_text())]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Repository location: a directory (a path, or local:PATH), or S3:
    /// s3://bucket/prefix[?region=..&endpoint=..], s3:https://host/bucket/prefix
    /// or s3:bucket/prefix (restic's spellings). Other `scheme:` forms are refused.
    #[arg(short = 'r', long = "repo", env = "CAIRN_REPOSITORY", hide_env_values = true, global = true)]
    pub repo: Option<String>,
    /// File holding the repository password (else CAIRN_PASSWORD, else a prompt).
    #[arg(long, env = "CAIRN_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Configuration file naming the repository and sources.
    #[arg(short = 'c', long, env = "CAIRN_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log format on stderr: text, or JSON lines (for CronJobs).
    #[arg(long, value_enum, env = "CAIRN_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Print the command's result as JSON on stdout (one line; logs stay on stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Never draw progress bars.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// After the job, merge its metrics into this node-exporter textfile
    /// (`*.prom` in the collector's directory); default `metrics.textfile` of cairn.yaml.
    #[arg(long, env = "CAIRN_METRICS_TEXTFILE", global = true, value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,
    /// After the job, push its metrics to this Prometheus Pushgateway
    /// (http://host:9091); default `metrics.pushgateway` of cairn.yaml.
    #[arg(long, env = "CAIRN_PUSHGATEWAY", global = true, value_name = "URL")]
    pub pushgateway: Option<String>,
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
    /// Remove snapshots by a retention policy (restic's --keep-* rules) or by id.
    Forget(ForgetArgs),
    /// Delete the data no snapshot references and repack partly used packs.
    Prune(PruneArgs),
    /// Restore drills: restore configured sources into scratch targets, check them, measure RTO and RPO.
    Drill(DrillArgs),
}

/// A retention policy on the command line (restic's flags and meanings).
#[derive(Debug, Args, Clone, Default)]
pub struct PolicyArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N newest hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest days that have one.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the N newest ISO weeks that have one.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest months that have one.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest years that have one.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot newer than the newest one minus this (e.g. 1y6m, 14d, 36h).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<KeepDuration>,
    /// Keep the newest snapshot of every hour within this duration of the newest snapshot.
    #[arg(long, value_name = "DURATION")]
    pub keep_within_hourly: Option<KeepDuration>,
    /// Keep the newest snapshot of every day within this duration of the newest snapshot.
    #[arg(long, value_name = "DURATION")]
    pub keep_within_daily: Option<KeepDuration>,
    /// Keep the newest snapshot of every week within this duration of the newest snapshot.
    #[arg(long, value_name = "DURATION")]
    pub keep_within_weekly: Option<KeepDuration>,
    /// Keep the newest snapshot of every month within this duration of the newest snapshot.
    #[arg(long, value_name = "DURATION")]
    pub keep_within_monthly: Option<KeepDuration>,
    /// Keep the newest snapshot of every year within this duration of the newest snapshot.
    #[arg(long, value_name = "DURATION")]
    pub keep_within_yearly: Option<KeepDuration>,
    /// Keep snapshots that carry all of these tags (comma-separated; repeatable).
    #[arg(long = "keep-tag", value_name = "TAG[,TAG...]")]
    pub keep_tags: Vec<String>,
}

impl PolicyArgs {
    pub fn policy(&self) -> cairn_repo::forget::Policy {
        let n = |v: Option<u32>| v.unwrap_or(0);
        let d = |v: Option<KeepDuration>| v.unwrap_or_default();
        cairn_repo::forget::Policy {
            keep_last: n(self.keep_last),
            keep_hourly: n(self.keep_hourly),
            keep_daily: n(self.keep_daily),
            keep_weekly: n(self.keep_weekly),
            keep_monthly: n(self.keep_monthly),
            keep_yearly: n(self.keep_yearly),
            keep_within: d(self.keep_within),
            keep_within_hourly: d(self.keep_within_hourly),
            keep_within_daily: d(self.keep_within_daily),
            keep_within_weekly: d(self.keep_within_weekly),
            keep_within_monthly: d(self.keep_within_monthly),
            keep_within_yearly: d(self.keep_within_yearly),
            keep_tags: self.keep_tags.iter().map(|t| cairn_repo::forget::Policy::tag_list(t)).collect(),
        }
    }
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Snapshots to forget (ids or unique prefixes) instead of a policy.
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Apply the policy to each group of snapshots with the same host,
    /// paths, tags and/or source name (comma-separated; '' for one group).
    #[arg(long, short = 'g', default_value = "host,paths", value_name = "GROUPING")]
    pub group_by: String,
    /// Show what would be removed; remove nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Prune afterwards when snapshots were removed (the prune options apply).
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_options: PruneOptionArgs,
    #[command(flatten)]
    pub filter: SnapshotFilterArgs,
}

/// How much `prune` repacks.
#[derive(Debug, Args, Clone)]
pub struct PruneOptionArgs {
    /// Unused space to tolerate in partly used packs: a share of the used
    /// data (`5%`), a size (`2GiB`), or `unlimited` (repack nothing).
    #[arg(long, default_value = "5%", value_name = "PERCENT|SIZE")]
    pub max_unused: String,
    /// Repack at most this much (pack bytes) in one run (e.g. 10GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_repack_size: Option<u64>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Show the plan (packs to delete and repack, bytes freed); change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    #[command(flatten)]
    pub options: PruneOptionArgs,
}

/// `cairn drill` (configured by `drills:` in cairn.yaml and `policies/drill-*.yaml`).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DrillArgs {
    #[command(subcommand)]
    pub action: Option<DrillAction>,
    /// Drill only this configured source (repeatable; default: every configured drill).
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
    /// Write the drill's report here: drill-<time>-<id>.json, .md and .html
    /// (a table per source, RTO and RPO charts over past drills).
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DrillAction {
    /// Past drills recorded in the repository, oldest first.
    History {
        /// Only drills of this source (repeatable).
        #[arg(long = "source", value_name = "NAME")]
        sources: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct CatalogArgs {
    #[command(subcommand)]
    pub action: CatalogAction,
}

#[derive(Debug, Subcommand)]
pub enum CatalogAction {
    /// Recreate the repository's snapshot items from the repository (the source of truth).
    Rebuild,
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
    },
    /// Push what a `wal-push --spool` directory holds into the repository,
    /// oldest first; exit 1 if anything is left (the repository still fails).
    Drain {
        /// The spool directory (as given to wal-push).
        #[arg(long, env = "CAIRN_WAL_SPOOL", value_name = "DIR")]
        spool: PathBuf,
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
    /// Remove from the replica the keys (passwords) that were removed on the
    /// primary with `cairn key remove`, which records each revocation. By
    /// default no key is ever removed from a replica: keys only the replica
    /// has are reported, so a mistaken or compromised primary cannot lock
    /// you out of your disaster-recovery copy. Keys the primary lacks
    /// without a revocation record, and the replica's last key, always stay.
    #[arg(long, conflicts_with = "verify")]
    pub remove_revoked_keys: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Back up the source of this name from the config file.
    #[arg(long)]
    pub source: Option<String>,
    /// Tag the snapshot (repeatable).
    #[arg(long = "tag", global = true)]
    pub tags: Vec<String>,
    /// Host name recorded in the snapshot. Default: `host:` of the source or
    /// of cairn.yaml, else CAIRN_HOST, else this machine's name. A CronJob's
    /// pod gets a new name every night, so set one; a named source finds
    /// its parent by its name whatever the host.
    #[arg(long, env = "CAIRN_HOST", global = true)]
    pub host: Option<String>,
    /// Do not copy the new snapshot to the configured replicas.
    #[arg(long, global = true)]
    pub no_replicate: bool,
}

/// Which snapshots a snapshot argument may name (and `snapshots` lists).
#[derive(Debug, Args, Clone, Default)]
pub struct SnapshotFilterArgs {
    /// Only snapshots of this configured source (cairn.yaml's `name:`).
    #[arg(long = "source", id = "filter_sources", value_name = "NAME")]
    pub sources: Vec<String>,
    /// Only snapshots from this host (repeatable).
    #[arg(long = "host", id = "filter_hosts", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only snapshots with this tag (repeatable: all must match).
    #[arg(long = "tag", id = "filter_tags", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only snapshots of this path (repeatable: all must match).
    #[arg(long = "path", id = "filter_paths", value_name = "PATH")]
    pub paths: Vec<String>,
}

impl SnapshotFilterArgs {
    pub fn filter(&self) -> cairn_repo::SnapshotFilter {
        cairn_repo::SnapshotFilter {
            sources: self.sources.clone(),
            hosts: self.hosts.clone(),
            tags: self.tags.clone(),
            paths: self.paths.clone(),
            kinds: Vec::new(),
        }
    }
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub filter: SnapshotFilterArgs,
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
    #[command(flatten)]
    pub filter: SnapshotFilterArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OverwriteArg {
    Never,
    IfChanged,
    Always,
}

/// `cairn restore`; each source adds its own flags (`--table`, `--physical`, ...).
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot id, unique prefix, or `latest` (the newest the target and filters admit).
    pub snapshot: String,
    /// Where to restore: a directory, or for a PostgreSQL logical snapshot
    /// the database postgresql://USER@HOST:PORT/NEWDB (created if missing).
    #[arg(long = "to", short = 't')]
    pub to: Option<String>,
    /// Restore only these paths (inside the snapshot).
    pub paths: Vec<String>,
    /// What to do with what already exists in the target; `--overwrite`
    /// alone means `always`. Nothing is destroyed before the data replacing
    /// it has been read and verified.
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
    /// After restoring, compare the target with the snapshot (rows and content digests).
    #[arg(long)]
    pub verify: bool,
    /// Work done at once (tables loaded, indexes built).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Start the restored server once its files are in place (a data
    /// directory restore: PostgreSQL --physical --data-dir, Redis
    /// --redis-data-dir) and wait until it serves (PostgreSQL: until recovery
    /// has reached its target).
    #[arg(long)]
    pub start: bool,
    /// Port of the server --start starts (must differ from a server running on this host).
    #[arg(long)]
    pub port: Option<u16>,
    #[command(flatten)]
    pub filter: SnapshotFilterArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Read and verify all pack data.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read and verify a random share of the packs, e.g. `10%`.
    #[arg(long, value_name = "N%")]
    pub read_data_subset: Option<String>,
}

/// `cairn verify`; sources add their flags (`--database`).
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Snapshot id, unique prefix, or `latest`.
    pub snapshot: String,
    /// Instead of reading the snapshot back, compare this live target with
    /// it: a database (postgresql://…/DB, e.g. a restore) or a directory;
    /// every object's presence, count and content digest.
    #[arg(long, value_name = "TARGET")]
    pub against: Option<String>,
    #[command(flatten)]
    pub filter: SnapshotFilterArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Restore size of one snapshot instead of repository totals.
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub filter: SnapshotFilterArgs,
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
    List,
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
    fn cli_definition_is_consistent_with_every_adapter() {
        super::command(&crate::sources::registry()).debug_assert();
    }

    /// A source's server password file is not the repository's: an adapter
    /// flag whose field is named `password_file` would share the global
    /// flag's id and become the repository password.
    #[test]
    fn server_password_files_are_not_the_repository_password_file() {
        for (kind, flag) in [("postgres", "--pg-password-file"), ("redis", "--redis-password-file")] {
            let matches = super::command(&crate::sources::registry())
                .try_get_matches_from(["cairn", "backup", kind, "--url", "x://h", flag, "/run/secret"])
                .unwrap();
            assert_eq!(
                matches.get_one::<std::path::PathBuf>("password_file"),
                None,
                "{flag} set the repository's password file"
            );
        }
    }
}
