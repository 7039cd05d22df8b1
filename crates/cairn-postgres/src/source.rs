//! The PostgreSQL source on the adapter contract ([`cairn_source::Source`]).
//!
//! Two modes: `logical` (consistent dumps, [`crate::dump`]; restored into a
//! database, `--to postgresql://…/DB`) and `physical` (base backups,
//! [`crate::physical`]; restored into a data directory with point-in-time
//! recovery, `--physical --data-dir DIR`). Which one a backup is comes from
//! its settings (`--physical`); which one a restore wants from its target
//! and flags, so `cairn restore latest --to postgresql://…` means the newest
//! *logical* snapshot even when nightly base backups land in the same
//! repository.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use cairn_repo::reader::SnapshotReader;
use cairn_repo::{Id, Snapshot};
use cairn_source::units::{Size, human_bytes};
use cairn_source::{
    BackupJob, BackupOutcome, Classify, Descriptor, Envelope, ErrorClass, Meter, ObjectCheck, ObjectEntry,
    Reading, RestoreJob, RestoreOutcome, RestoreRequest, Source, VerifyJob, VerifyOutcome, counts,
};

use crate::physical::{BaseBackupOptions, PitrOptions, RecoveryTarget};
use crate::{DumpOptions, DumpProgress, PgError, PgTarget, RestoreOptions, RestoreProgress};

/// `cairn backup postgres` flags, and the keys of a `kind: postgres` source.
#[derive(Debug, Clone, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// Server to back up: postgresql://USER@HOST:PORT[/DATABASE]; the password
    /// from --pg-password-file, the URL, PGPASSWORD or ~/.pgpass (client tools). TLS as libpq:
    /// ?sslmode=verify-full&sslrootcert=CA.pem (also sslcert, sslkey).
    #[arg(long, env = "CAIRN_PG_URL", hide_env_values = true)]
    pub url: String,
    /// File holding the server password (a mounted secret); `password_file:` in cairn.yaml.
    #[arg(long = "pg-password-file", id = "pg_password_file", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Database to dump (repeatable). Default: the one the URL names, or every database.
    #[arg(long = "database", short = 'd')]
    pub databases: Vec<String>,
    /// Skip roles and tablespaces (pg_dumpall --globals-only); `globals: false` in cairn.yaml.
    #[arg(long = "no-globals", action = clap::ArgAction::SetFalse)]
    pub globals: bool,
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
    #[arg(long, value_name = "RATE", requires = "physical")]
    pub max_rate: Option<Size>,
    /// Directory with pg_dump/pg_dumpall (default: the server's version under
    /// /usr/lib/postgresql, then PATH).
    #[arg(long, env = "CAIRN_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// A physical base backup of the whole cluster, tablespaces included
    /// (BASE_BACKUP over a replication connection), instead of logical dumps;
    /// with WAL archiving (`cairn wal-push`) it restores to any point in time.
    #[arg(long, conflicts_with_all = ["databases", "globals"])]
    pub physical: bool,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            url: String::new(),
            password_file: None,
            databases: Vec::new(),
            globals: true,
            jobs: 2,
            split_large_tables: false,
            max_rate: None,
            pg_bin: None,
            physical: false,
        }
    }
}

/// `cairn restore` flags for PostgreSQL snapshots.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "PostgreSQL restore")]
pub struct PostgresRestoreSettings {
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
    /// Directory with pg_restore/psql.
    #[arg(long, env = "CAIRN_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Point-in-time restore of a physical base backup into --data-dir (not --to).
    #[arg(long, requires = "data_dir")]
    pub physical: bool,
    /// The (empty or new) data directory for --physical.
    #[arg(long, requires = "physical")]
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

impl PostgresRestoreSettings {
    fn recovery_target(&self) -> RecoveryTarget {
        match (&self.to_time, &self.to_lsn, &self.to_xid, &self.to_name) {
            (Some(t), ..) => RecoveryTarget::Time(t.clone()),
            (_, Some(l), ..) => RecoveryTarget::Lsn(l.clone()),
            (_, _, Some(x), _) => RecoveryTarget::Xid(x.clone()),
            (.., Some(n)) => RecoveryTarget::Name(n.clone()),
            _ => RecoveryTarget::Latest,
        }
    }
}

/// PostgreSQL servers.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresSource;

impl PostgresSettings {
    /// The server, with the password from `password_file` when one is set.
    pub fn target(&self) -> Result<PgTarget, PgError> {
        if self.url.is_empty() {
            return Err(PgError::Url {
                url: String::new().into(),
                message: "no server given: pass --url (or `url:` in the source's cairn.yaml entry)".into(),
            });
        }
        let target = PgTarget::parse(&self.url)?;
        match &self.password_file {
            Some(file) => {
                let password = cairn_source::config::read_secret_file(file)
                    .map_err(|e| PgError::Settings(e.to_string()))?;
                Ok(target.with_password(&password))
            }
            None => Ok(target),
        }
    }
}

struct DumpMeter(Arc<DumpProgress>, bool);

impl Meter for DumpMeter {
    fn read(&self) -> Reading {
        let p = &self.0;
        let detail = if self.1 {
            String::new()
        } else {
            format!(
                "{}/{} tables",
                p.tables_done.load(Ordering::Relaxed),
                p.tables_total.load(Ordering::Relaxed)
            )
        };
        Reading { bytes_done: p.bytes_done.load(Ordering::Relaxed), bytes_total: 0, detail }
    }
}

struct RestoreMeter(Arc<RestoreProgress>);

impl Meter for RestoreMeter {
    fn read(&self) -> Reading {
        let p = &self.0;
        Reading::counted([&p.bytes_done, &p.bytes_total], [&p.tables_done, &p.tables_total], "tables")
    }
}

#[async_trait]
impl Source for PostgresSource {
    type Settings = PostgresSettings;
    type RestoreSettings = PostgresRestoreSettings;
    type Error = PgError;

    fn descriptor(&self) -> Descriptor {
        Descriptor {
            kind: "postgres",
            about: "PostgreSQL: logical backups (one consistent snapshot per database) or --physical base backups.",
            modes: &["logical", "physical"],
        }
    }

    fn mode(&self, settings: &PostgresSettings) -> &'static str {
        if settings.physical { "physical" } else { "logical" }
    }

    fn validate(&self, settings: &PostgresSettings) -> Result<(), PgError> {
        settings.target()?;
        if let Some(rate) = settings.max_rate {
            crate::physical::max_rate_kib(rate.0)?;
        }
        Ok(())
    }

    async fn backup(&self, job: BackupJob<'_>, s: &PostgresSettings) -> Result<BackupOutcome, PgError> {
        let target = s.target()?;
        let progress = Arc::new(DumpProgress::default());
        {
            let p = progress.clone();
            job.on_cancel(move || p.cancel.store(true, Ordering::Relaxed));
        }
        job.progress.show(Arc::new(DumpMeter(progress.clone(), s.physical)));
        tracing::info!(server = %target.display(), physical = s.physical, "PostgreSQL backup started");
        if s.physical {
            let opts = BaseBackupOptions {
                target,
                max_rate: s.max_rate.map(|r| r.0),
                saver: cairn_repo::SaverOptions::default(),
            };
            let (snapshot_id, snapshot, manifest) =
                crate::physical::base_backup(&job, opts, progress).await?;
            let notes = snapshot.cairn.as_ref().map(|c| c.warnings.clone()).unwrap_or_default();
            return Ok(BackupOutcome {
                snapshot_id,
                parent: None,
                warnings: Vec::new(),
                notes,
                objects: counts([
                    ("files", manifest.files),
                    ("tablespaces", manifest.tablespaces.len() as u64),
                ]),
                summary: format!(
                    "Base backup of {} files, {} (WAL {} .. {})",
                    manifest.files,
                    human_bytes(manifest.bytes),
                    manifest.start_lsn,
                    manifest.end_lsn
                ),
                details: serde_json::json!({
                    "start_lsn": manifest.start_lsn,
                    "end_lsn": manifest.end_lsn,
                    "timeline": manifest.timeline,
                    "files": manifest.files,
                    "bytes": manifest.bytes,
                    "tablespaces": manifest.tablespaces,
                }),
                snapshot,
            });
        }
        let opts = DumpOptions {
            databases: s.databases.clone(),
            globals: s.globals,
            jobs: s.jobs.max(1),
            split_large_tables: s.split_large_tables,
            pg_bin: s.pg_bin.clone(),
            ..DumpOptions::new(target)
        };
        let result = crate::dump(&job, opts, progress).await?;
        let m = &result.manifest;
        let tables: u64 = m.databases.iter().map(|d| d.tables.len() as u64).sum();
        let rows: u64 = m.databases.iter().flat_map(|d| &d.tables).map(|t| t.rows).sum();
        Ok(BackupOutcome {
            snapshot_id: result.snapshot_id,
            parent: None,
            warnings: Vec::new(),
            notes: Vec::new(),
            objects: counts([("databases", m.databases.len() as u64), ("tables", tables), ("rows", rows)]),
            summary: format!("Dumped {} database(s), {tables} tables, {rows} rows", m.databases.len()),
            details: serde_json::json!({
                "server_version": m.server_version,
                "databases": m.databases.iter().map(|d| &d.name).collect::<Vec<_>>(),
            }),
            snapshot: result.snapshot,
        })
    }

    fn restore_modes(
        &self,
        request: &RestoreRequest,
        settings: &PostgresRestoreSettings,
    ) -> Vec<&'static str> {
        if settings.physical {
            return vec!["physical"];
        }
        match &request.target {
            Some(t) if t.starts_with("postgres://") || t.starts_with("postgresql://") => vec!["logical"],
            _ => Vec::new(),
        }
    }

    fn validate_restore(
        &self,
        request: &RestoreRequest,
        settings: &PostgresRestoreSettings,
    ) -> Result<(), PgError> {
        if !settings.physical
            && let Some(target) = &request.target
        {
            PgTarget::parse(target)?;
        }
        Ok(())
    }

    fn pick_latest(
        &self,
        candidates: &[(Id, Snapshot)],
        settings: &PostgresRestoreSettings,
    ) -> Result<Option<usize>, PgError> {
        if !settings.physical {
            return Ok(candidates.len().checked_sub(1));
        }
        // The newest base backup usable for the target: one that ended
        // before the target time (or the target LSN).
        let target = settings.recovery_target();
        let target_time = match &target {
            RecoveryTarget::Time(t) => Some(parse_pg_time(t)?),
            _ => None,
        };
        let target_lsn = match &target {
            RecoveryTarget::Lsn(l) => Some(parse_lsn(l)?),
            _ => None,
        };
        for (i, (_, snap)) in candidates.iter().enumerate().rev() {
            let Some(meta) = snap.cairn.as_ref().map(|c| &c.metadata) else { continue };
            if let Some(t) = target_time {
                let end = meta
                    .get("end_time")
                    .and_then(|v| v.as_str())
                    .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok());
                if end.is_none_or(|end| end > t) {
                    continue;
                }
            }
            if let Some(l) = target_lsn {
                let end = meta.get("end_lsn").and_then(|v| v.as_str()).and_then(|v| parse_lsn(v).ok());
                if end.is_none_or(|end| end > l) {
                    continue;
                }
            }
            return Ok(Some(i));
        }
        Err(PgError::NoBaseBackup)
    }

    fn restore_hint(&self, mode: &str) -> String {
        match mode {
            "physical" => {
                "restore it into a data directory: `cairn restore ID --physical --data-dir DIR [--to-time T]`"
                    .into()
            }
            _ => "restore it into a database: `cairn restore ID --to postgresql://USER@HOST/NEWDB`".into(),
        }
    }

    async fn restore(
        &self,
        job: RestoreJob<'_>,
        s: &PostgresRestoreSettings,
    ) -> Result<RestoreOutcome, PgError> {
        if s.physical {
            return restore_physical(job, s).await;
        }
        if !job.request.paths.is_empty() {
            return Err(PgError::Usage(format!(
                "paths select files; for a PostgreSQL restore use --schema and --table (got {:?})",
                job.request.paths
            )));
        }
        let target = PgTarget::parse(job.request.target.as_deref().unwrap_or_default())?;
        let opts = RestoreOptions {
            database: s.database.clone(),
            schemas: s.schemas.clone(),
            tables: s.tables.clone(),
            dry_run: job.request.dry_run,
            overwrite: job.request.overwrite != cairn_source::Overwrite::Never,
            no_owner: s.no_owner,
            globals: s.globals,
            jobs: job.request.jobs.max(1),
            pg_bin: s.pg_bin.clone(),
            verify: job.request.verify,
            ..RestoreOptions::new(target.clone())
        };
        let progress = Arc::new(RestoreProgress::default());
        {
            let p = progress.clone();
            job.on_cancel(move || p.cancel.store(true, Ordering::Relaxed));
        }
        job.progress.show(Arc::new(RestoreMeter(progress.clone())));
        let report =
            crate::restore(job.repository(), job.index.clone(), job.snapshot, &opts, progress).await?;
        let plan = &report.plan;
        let summary = if job.request.dry_run {
            let mut lines = vec![format!(
                "would restore database {:?} of snapshot {} into {}{}",
                plan.source_database,
                job.snapshot_id.short(),
                plan.target,
                if plan.create_database {
                    " (new database)"
                } else {
                    " (existing database, in one transaction)"
                }
            )];
            if plan.globals {
                lines.push("  roles and tablespaces first (globals.sql)".into());
            }
            lines.push(format!(
                "  {} schema entries (tables, indexes, constraints, sequences, ...)",
                plan.schema_entries
            ));
            for t in &plan.tables {
                lines.push(format!("  table {}: {} rows, {}", t.table, t.rows, human_bytes(t.bytes)));
            }
            lines.join("\n")
        } else {
            format!(
                "restored {} tables, {} rows ({}) from snapshot {} into {}{}",
                plan.tables.len(),
                report.rows,
                human_bytes(report.bytes),
                job.snapshot_id.short(),
                plan.target,
                if report.verified_tables > 0 {
                    format!("; content of {} tables verified", report.verified_tables)
                } else {
                    String::new()
                }
            )
        };
        Ok(RestoreOutcome {
            target: plan.target.clone(),
            objects: counts([
                ("tables", plan.tables.len() as u64),
                ("rows", report.rows),
                ("verified_tables", report.verified_tables as u64),
            ]),
            bytes: report.bytes,
            warnings: report.warnings.clone(),
            summary,
            details: serde_json::json!({ "plan": plan }),
        })
    }

    fn verifies(&self, target: &str) -> bool {
        target.starts_with("postgres://") || target.starts_with("postgresql://")
    }

    fn scratch(&self) -> Option<Arc<dyn cairn_source::Scratch>> {
        Some(crate::PgScratch::default().arc())
    }

    async fn verify_against(
        &self,
        job: VerifyJob<'_>,
        s: &PostgresRestoreSettings,
    ) -> Result<VerifyOutcome, PgError> {
        let target = PgTarget::parse(&job.target)?;
        let reader = &job.reader;
        let checks = crate::compare_database(
            reader.repository(),
            reader.index(),
            job.snapshot,
            &target,
            s.database.as_deref(),
        )
        .await?;
        Ok(VerifyOutcome {
            target: target.display(),
            objects: checks
                .into_iter()
                .map(|c| ObjectCheck {
                    kind: "table".into(),
                    name: c.table,
                    expected: c.expected_rows,
                    actual: c.rows,
                    content_matches: c.rows.map(|_| c.content_matches),
                })
                .collect(),
        })
    }

    async fn legacy_envelope(
        &self,
        reader: &SnapshotReader<'_>,
        snapshot: &Snapshot,
    ) -> Result<Option<Envelope>, PgError> {
        let (_, mode) = cairn_repo::kind_and_mode(snapshot);
        if mode != "logical" {
            let mut envelope = Envelope::of_file_tree(snapshot);
            envelope.mode = mode;
            return Ok(Some(envelope));
        }
        let manifest = crate::load_manifest(reader.repository(), reader.index(), snapshot).await?;
        let mut envelope = Envelope::new("postgres", "logical");
        envelope.source_name = snapshot.cairn.as_ref().and_then(|c| c.source_name.clone());
        envelope.source_version = Some(format!("PostgreSQL {}", manifest.server_version));
        envelope.chunking = manifest.chunking.map(|c| [c.min, c.avg, c.max]);
        for db in &manifest.databases {
            *envelope.totals.entry("databases".into()).or_default() += 1;
            for t in &db.tables {
                *envelope.totals.entry("tables".into()).or_default() += 1;
                *envelope.totals.entry("rows".into()).or_default() += t.rows;
                let segments = t.segments();
                envelope.objects.push(ObjectEntry {
                    kind: "table".into(),
                    name: format!("{}.{}", db.name, t.qualified()),
                    count: t.rows,
                    streams: segments.iter().map(|s| s.file.to_string()).collect(),
                });
            }
        }
        // Old manifests record no size per stream, so their streams stay
        // unlisted (the objects still name them).
        Ok(Some(envelope))
    }
}

async fn restore_physical(
    job: RestoreJob<'_>,
    s: &PostgresRestoreSettings,
) -> Result<RestoreOutcome, PgError> {
    let data_dir =
        s.data_dir.clone().ok_or_else(|| PgError::Usage("--physical needs --data-dir DIR".into()))?;
    let target = s.recovery_target();
    let access = &job.access;
    let Some(password_file) = &access.password_file else {
        return Err(PgError::Usage(
            "a physical restore needs the password in a file (CAIRN_PASSWORD_FILE or --password-file): the restored server runs `cairn wal-fetch` and must read it".into(),
        ));
    };
    let shell_quote = |v: &str| format!("'{}'", v.replace('\'', "'\\''"));
    let restore_command = format!(
        "CAIRN_REPOSITORY={} CAIRN_PASSWORD_FILE={} {} wal-fetch %f %p",
        shell_quote(&access.location),
        shell_quote(&password_file.display().to_string()),
        shell_quote(&access.exe.display().to_string())
    );
    if job.request.dry_run {
        return Ok(RestoreOutcome {
            target: data_dir.display().to_string(),
            summary: format!(
                "would restore base backup {} into {} and recover to {target:?}",
                job.snapshot_id.short(),
                data_dir.display()
            ),
            ..RestoreOutcome::default()
        });
    }
    let opts = PitrOptions {
        data_dir: data_dir.clone(),
        target: target.clone(),
        restore_command,
        target_action: s.target_action.clone(),
        port: job.request.port,
        keep_archiving: s.keep_archiving,
        start: job.request.start,
        pg_bin: s.pg_bin.clone(),
        timeout: std::time::Duration::from_secs(s.recovery_timeout),
        tablespace_map: s.tablespace_map.clone(),
        tablespaces_in_place: s.tablespaces_in_place,
        fsync: job.request.fsync,
    };
    let progress = Arc::new(cairn_volume::RestoreProgress::default());
    {
        let p = progress.clone();
        job.on_cancel(move || p.cancel.store(true, Ordering::Relaxed));
    }
    let report =
        crate::physical::restore_physical(job.repository(), job.index.clone(), job.snapshot, &opts, progress)
            .await?;
    let mut lines = vec![format!(
        "restored base backup {} ({} files, {}) into {}",
        job.snapshot_id.short(),
        report.files,
        human_bytes(report.bytes),
        data_dir.display()
    )];
    for t in &report.tablespaces {
        lines.push(format!(
            "tablespace {} (oid {}): {}",
            if t.name.is_empty() { "?" } else { &t.name },
            t.oid,
            t.directory.display()
        ));
    }
    lines.push(match &report.recovery_stop {
        Some(line) => format!("recovery finished: {line}"),
        None => format!(
            "recovery is configured ({target:?}); start the server (pg_ctl -D {} start) to replay WAL",
            data_dir.display()
        ),
    });
    Ok(RestoreOutcome {
        target: data_dir.display().to_string(),
        objects: counts([("files", report.files), ("tablespaces", report.tablespaces.len() as u64)]),
        bytes: report.bytes,
        warnings: Vec::new(),
        summary: lines.join("\n"),
        details: serde_json::json!({ "recovery_target": format!("{target:?}"), "report": report }),
    })
}

/// A recovery target time, with its UTC offset.
pub fn parse_pg_time(t: &str) -> Result<chrono::DateTime<chrono::FixedOffset>, PgError> {
    let t = t.trim();
    if let Ok(v) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(v);
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%#z",
        "%Y-%m-%d %H:%M:%S%.f %#z",
        "%Y-%m-%d %H:%M:%S %#z",
    ] {
        if let Ok(v) = chrono::DateTime::parse_from_str(t, fmt) {
            return Ok(v);
        }
    }
    Err(PgError::Usage(format!(
        "cannot read the time {t:?}: give it with a UTC offset, e.g. '2026-11-23 03:00:00+00' or 2026-11-23T03:00:00Z"
    )))
}

/// A WAL location, `0/3000060`.
pub fn parse_lsn(l: &str) -> Result<u64, PgError> {
    let bad = || PgError::Usage(format!("{l:?} is not an LSN like 0/3000060"));
    let (hi, lo) = l.trim().split_once('/').ok_or_else(bad)?;
    let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
    Ok((hi << 32) | lo)
}

impl Classify for PgError {
    fn class(&self) -> ErrorClass {
        match self {
            PgError::Repo(e) => e.class(),
            PgError::Interrupted => ErrorClass::Interrupted,
            PgError::RowCountMismatch { .. }
            | PgError::ContentMismatch { .. }
            | PgError::BadSnapshot { .. } => ErrorClass::Damaged,
            PgError::NotPostgres { .. } | PgError::Usage(_) => ErrorClass::Usage,
            _ => ErrorClass::Failure,
        }
    }
}
