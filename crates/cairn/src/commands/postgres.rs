//! `cairn backup postgres` and `cairn restore … --to postgresql://…`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use cairn_postgres::physical::{BaseBackupOptions, PitrOptions, RecoveryTarget};
use cairn_postgres::wal::PushOutcome;
use cairn_postgres::wal::spool::{self, Spool, Spooled, WhenFull};
use cairn_postgres::{DumpOptions, DumpProgress, PgError, PgTarget, RestoreOptions, RestoreProgress};
use cairn_repo::lock::LockGuard;

use super::{Stop, StopRecovery, print_json};
use crate::cli::{OverwriteArg, PostgresArgs, RestoreArgs, WalAction, WalArgs, WalFetchArgs, WalPushArgs};
use crate::context::Context;
use crate::exit;
use crate::output::{Ticker, bytes};

pub async fn backup(
    ctx: &Context,
    args: PostgresArgs,
    password: Option<String>,
    source_name: Option<String>,
    json: bool,
    stop: Arc<Stop>,
) -> Result<u8> {
    let mut target = PgTarget::parse(&args.url)?;
    if let Some(pw) = password {
        target = target.with_password(&pw);
    }
    let upload_age = crate::context::abandoned_upload_age()?;
    let repo = ctx.open().await?;
    if args.physical {
        return physical_backup(ctx, &repo, args, target, source_name, json).await;
    }
    let progress = Arc::new(DumpProgress::default());
    let lease = {
        let p = progress.clone();
        super::acquire_lease(ctx, &repo, move || p.cancel.store(true, Ordering::Relaxed)).await?
    };
    let lock = LockGuard::acquire(&repo, false).await?;
    super::backup::clean_abandoned_uploads(&repo, upload_age).await;
    {
        let p = progress.clone();
        stop.on_stop(move || p.cancel.store(true, Ordering::Relaxed));
    }
    let opts = DumpOptions {
        databases: args.databases.clone(),
        globals: !args.no_globals,
        jobs: args.jobs.max(1),
        split_large_tables: args.split_large_tables,
        pg_bin: args.pg_bin.clone(),
        tags: args.tags.clone(),
        hostname: args.host.clone(),
        source_name,
        ..DumpOptions::new(target.clone())
    };
    let p = progress.clone();
    let ticker = Ticker::start(ctx.progress, "dump", move || {
        (
            p.bytes_done.load(Ordering::Relaxed),
            0,
            format!(
                "{}/{} tables",
                p.tables_done.load(Ordering::Relaxed),
                p.tables_total.load(Ordering::Relaxed)
            ),
        )
    });
    tracing::info!(server = %target.display(), repository = %repo.location(), "PostgreSQL backup started");
    let result = cairn_postgres::dump(&repo, opts, progress).await;
    ticker.finish();
    lock.release().await?;
    super::finish_lease(lease).await?;
    let result = result?;
    super::record_snapshot(ctx, &result.snapshot_id, &result.snapshot).await;
    let s = result.snapshot.summary.clone().unwrap_or_default();
    let seconds = (s.backup_end - s.backup_start).num_milliseconds() as f64 / 1000.0;
    let tables: usize = result.manifest.databases.iter().map(|d| d.tables.len()).sum();
    let rows: u64 = result.manifest.databases.iter().flat_map(|d| &d.tables).map(|t| t.rows).sum();
    if json || ctx.json_logs() {
        print_json(&serde_json::json!({
            "message": "backup complete",
            "kind": "postgres",
            "snapshot": result.snapshot_id.to_hex(),
            "server_version": result.manifest.server_version,
            "databases": result.manifest.databases.iter().map(|d| &d.name).collect::<Vec<_>>(),
            "tables": tables,
            "rows": rows,
            "bytes_processed": s.total_bytes_processed,
            "data_added": s.data_added,
            "data_added_packed": s.data_added_packed,
            "seconds": seconds,
        }));
    } else {
        eprintln!(
            "Dumped {} database(s), {tables} tables, {rows} rows: {} in {seconds:.1}s; added {} ({} stored)",
            result.manifest.databases.len(),
            bytes(s.total_bytes_processed),
            bytes(s.data_added),
            bytes(s.data_added_packed),
        );
        println!("snapshot {} saved", result.snapshot_id.short());
    }
    Ok(exit::SUCCESS)
}

pub async fn restore(ctx: &Context, url: &str, args: RestoreArgs, stop: Arc<Stop>) -> Result<u8> {
    let target = PgTarget::parse(url)?;
    if !args.paths.is_empty() {
        anyhow::bail!(
            "paths select files; for a PostgreSQL restore use --schema and --table (got {:?})",
            args.paths
        );
    }
    let repo = ctx.open().await?;
    let (id, snapshot) = repo.find_snapshot(&args.snapshot).await?;
    let lock = LockGuard::acquire(&repo, false).await?;
    let index = Arc::new(repo.load_index().await?);
    let pg = &args.postgres;
    let opts = RestoreOptions {
        database: pg.database.clone(),
        schemas: pg.schemas.clone(),
        tables: pg.tables.clone(),
        dry_run: args.dry_run,
        overwrite: !matches!(args.overwrite, OverwriteArg::Never),
        no_owner: pg.no_owner,
        globals: pg.globals,
        jobs: pg.jobs.max(1),
        pg_bin: pg.pg_bin.clone(),
        verify: pg.verify,
        ..RestoreOptions::new(target.clone())
    };
    let progress = Arc::new(RestoreProgress::default());
    {
        let p = progress.clone();
        stop.on_stop(move || p.cancel.store(true, Ordering::Relaxed));
    }
    let p = progress.clone();
    let ticker = Ticker::start(ctx.progress && !args.dry_run, "restore", move || {
        (
            p.bytes_done.load(Ordering::Relaxed),
            p.bytes_total.load(Ordering::Relaxed),
            format!(
                "{}/{} tables",
                p.tables_done.load(Ordering::Relaxed),
                p.tables_total.load(Ordering::Relaxed)
            ),
        )
    });
    let started = std::time::Instant::now();
    let result = cairn_postgres::restore(&repo, index, &snapshot, &opts, progress).await;
    ticker.finish();
    lock.release().await?;
    let report = result?;
    let seconds = started.elapsed().as_secs_f64();
    let plan = &report.plan;
    if args.json || ctx.json_logs() {
        print_json(&serde_json::json!({
            "message": if args.dry_run { "restore plan" } else { "restore complete" },
            "snapshot": id.to_hex(),
            "plan": plan,
            "rows": report.rows,
            "bytes": report.bytes,
            "verified_tables": report.verified_tables,
            "seconds": seconds,
            "warnings": report.warnings,
        }));
    } else if args.dry_run {
        println!(
            "would restore database {:?} of snapshot {} into {}{}",
            plan.source_database,
            id.short(),
            plan.target,
            if plan.create_database { " (new database)" } else { " (existing database)" }
        );
        if plan.globals {
            println!("  roles and tablespaces first (globals.sql)");
        }
        println!("  {} schema entries (tables, indexes, constraints, sequences, ...)", plan.schema_entries);
        for t in &plan.tables {
            println!("  table {}: {} rows, {}", t.table, t.rows, bytes(t.bytes));
        }
    } else {
        println!(
            "restored {} tables, {} rows ({}) from snapshot {} into {} in {seconds:.1}s{}",
            plan.tables.len(),
            report.rows,
            bytes(report.bytes),
            id.short(),
            plan.target,
            if report.verified_tables > 0 {
                format!("; content of {} tables verified", report.verified_tables)
            } else {
                String::new()
            }
        );
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(exit::SUCCESS)
}

/// `archive_command`: succeeds only once the file is durably archived (or,
/// with `--spool`, durably spooled while the repository cannot be reached).
pub async fn wal_push(ctx: &Context, args: WalPushArgs) -> Result<u8> {
    let started = std::time::Instant::now();
    let Some(dir) = &args.spool.spool else {
        let repo = ctx.open().await?;
        log_push(&args.path, cairn_postgres::wal::push(&repo, &args.path).await?, started);
        return Ok(exit::SUCCESS);
    };
    let when_full = if args.spool.when_spool_full == "drop" { WhenFull::Drop } else { WhenFull::Fail };
    let spool = Spool::open(dir, args.spool.spool_max_size, when_full)?;
    // Right after a failure, straight into the spool: an outage costs
    // PostgreSQL one retry cycle, not one per segment.
    let resting = spool.failed_recently(spool::RETRY_AFTER) && !spool.entries()?.is_empty();
    let attempt = async {
        if resting {
            anyhow::bail!("the repository failed less than {} s ago", spool::RETRY_AFTER.as_secs());
        }
        let repo = ctx.open().await?;
        let drained = spool.drain(&repo).await.map_err(|(_, e)| e)?;
        if !drained.pushed.is_empty() {
            tracing::info!(files = drained.pushed.len(), "spooled WAL files archived");
        }
        Ok(cairn_postgres::wal::push(&repo, &args.path).await?)
    }
    .await;
    let failure = match attempt {
        Ok(outcome) => {
            log_push(&args.path, outcome, started);
            return Ok(exit::SUCCESS);
        }
        Err(e) => e,
    };
    if let Some(pg) = failure.downcast_ref::<PgError>()
        && !spool::is_repository_failure(pg)
    {
        return Err(failure);
    }
    if !resting {
        spool.note_failure();
    }
    match spool.put(&args.path)? {
        Spooled::Kept { files, bytes: held } => tracing::error!(
            file = %args.path.display(),
            spooled_files = files,
            spooled_bytes = held,
            "WAL file kept in the local spool {}, not archived yet: {failure:#}",
            dir.display()
        ),
        Spooled::Dropped { files, bytes: held } => tracing::error!(
            file = %args.path.display(),
            spooled_files = files,
            spooled_bytes = held,
            "WAL file DROPPED: the spool {} is full and the repository fails ({failure:#}); the WAL archive has a gap \
             from here: take a new base backup once the repository works",
            dir.display()
        ),
    }
    Ok(exit::SUCCESS)
}

fn log_push(path: &std::path::Path, outcome: PushOutcome, started: std::time::Instant) {
    match outcome {
        PushOutcome::Stored { bytes, stored } => {
            tracing::info!(file = %path.display(), bytes, stored, seconds = started.elapsed().as_secs_f64(), "WAL file archived");
        }
        PushOutcome::AlreadyArchived => {
            tracing::info!(file = %path.display(), "WAL file was already archived with the same content");
        }
    }
}

/// `cairn wal drain`: empties a spool into the repository.
async fn wal_drain(ctx: &Context, dir: &std::path::Path, json: bool) -> Result<u8> {
    // The size bound only matters for putting files in.
    let spool = Spool::open(dir, u64::MAX, WhenFull::Fail)?;
    let repo = ctx.open().await?;
    let (report, failure) = match spool.drain(&repo).await {
        Ok(report) => (report, None),
        Err((report, e)) => (report, Some(e)),
    };
    if json || ctx.json_logs() {
        print_json(&serde_json::json!({
            "message": "WAL spool drained",
            "spool": dir,
            "report": report,
            "error": failure.as_ref().map(|e| e.to_string()),
        }));
    } else {
        println!(
            "{} WAL file(s) archived from {}; {} left ({})",
            report.pushed.len(),
            dir.display(),
            report.remaining,
            bytes(report.remaining_bytes)
        );
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(exit::SUCCESS),
    }
}

/// `restore_command`: exit 0 with the file in place; 1 when the archive
/// does not have it (the normal end of recovery); 126 for anything else,
/// which makes PostgreSQL stop recovery instead of ending it early.
pub async fn wal_fetch(ctx: &Context, args: WalFetchArgs) -> Result<u8> {
    let fetched = async {
        let repo = ctx.open().await?;
        Ok::<_, anyhow::Error>(cairn_postgres::wal::fetch(&repo, &args.name, &args.dest).await?)
    }
    .await;
    match fetched {
        Ok(bytes) => {
            tracing::info!(file = %args.name, bytes, "WAL file restored");
            Ok(exit::SUCCESS)
        }
        Err(e) if matches!(e.downcast_ref::<PgError>(), Some(PgError::WalNotFound { .. })) => {
            // PostgreSQL asks for files past the end of the archive (and for
            // history files that never existed) as a matter of course.
            tracing::info!(file = %args.name, "not in the WAL archive");
            Ok(exit::FAILURE)
        }
        Err(e) => Err(StopRecovery(e).into()),
    }
}

pub async fn wal(ctx: &Context, args: WalArgs) -> Result<u8> {
    let (read_data, segment_size_mib, json) = match args.action {
        WalAction::Verify { read_data, segment_size_mib, json } => (read_data, segment_size_mib, json),
        WalAction::Drain { spool, json } => return wal_drain(ctx, &spool, json).await,
    };
    let repo = ctx.open().await?;
    let backups = base_backups(&repo).await?;
    let report = cairn_postgres::wal::verify(&repo, segment_size_mib << 20, read_data, &backups).await?;
    if json || ctx.json_logs() {
        print_json(&serde_json::json!({
            "message": "WAL archive",
            "healthy": report.is_healthy(),
            "report": report,
        }));
    } else {
        println!("{} WAL files, {} archived", report.files, bytes(report.bytes));
        if report.timelines.is_empty() {
            println!("no WAL segments archived yet");
        }
        for t in &report.timelines {
            println!(
                "timeline {}: {} .. {} ({} segments){}",
                t.timeline,
                t.first,
                t.last,
                t.segments,
                if t.gaps.is_empty() { ", contiguous" } else { "" }
            );
            for (from, to) in &t.gaps {
                println!("  GAP: {from} .. {to} missing: point-in-time recovery cannot cross it");
            }
            if !t.history_file {
                println!("  note: no {:08X}.history in the archive", t.timeline);
            }
        }
        if report.recovery_windows.is_empty() {
            println!("no physical base backups in this repository: WAL alone restores nothing");
        }
        for w in &report.recovery_windows {
            match &w.through_segment {
                Some(through) => {
                    let until = w
                        .through_archived_at
                        .map(|t| format!(" (archived {})", t.format("%Y-%m-%d %H:%M:%S UTC")))
                        .unwrap_or_default();
                    let later = if w.later_timelines.is_empty() {
                        String::new()
                    } else {
                        format!("; the archive continues on timeline(s) {:?}", w.later_timelines)
                    };
                    println!(
                        "base backup {} (timeline {}): recoverable from {} through WAL {through}{until}{later}",
                        w.snapshot, w.timeline, w.from_time
                    );
                }
                None => println!(
                    "base backup {} (timeline {}): NOT RECOVERABLE, its first WAL segment {} is not archived",
                    w.snapshot, w.timeline, w.start_segment
                ),
            }
        }
        for d in &report.damaged {
            println!("DAMAGED: {d}");
        }
        for u in &report.unexpected {
            println!("note: unexpected object cairn/wal/{u}");
        }
    }
    if report.is_healthy() {
        Ok(exit::SUCCESS)
    } else {
        let newest_unusable = report.recovery_windows.first().is_some_and(|w| w.through_segment.is_none());
        Err(super::Damage(format!(
            "the WAL archive is broken: {} gap(s), {} damaged file(s){}",
            report.timelines.iter().map(|t| t.gaps.len()).sum::<usize>(),
            report.damaged.len(),
            if newest_unusable { ", the newest base backup cannot be recovered" } else { "" }
        ))
        .into())
    }
}

/// The repository's physical base backups, newest first, from their
/// snapshots' metadata.
async fn base_backups(repo: &cairn_repo::Repository) -> Result<Vec<cairn_postgres::wal::BaseBackupRef>> {
    let (all, _) = repo.snapshots().await?;
    let mut out = Vec::new();
    for (id, snap) in all.into_iter().rev() {
        let Some(meta) = snap.cairn.as_ref().map(|c| &c.metadata) else { continue };
        if meta.get("kind").and_then(|k| k.as_str()) != Some("physical") {
            continue;
        }
        let field = |name: &str| meta.get(name).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let (Some(timeline), Ok(start_lsn)) =
            (meta.get("timeline").and_then(|t| t.as_u64()), parse_lsn(&field("start_lsn")))
        else {
            continue;
        };
        out.push(cairn_postgres::wal::BaseBackupRef {
            snapshot: id.short(),
            timeline: timeline as u32,
            start_lsn,
            end_time: field("end_time"),
        });
    }
    Ok(out)
}

async fn physical_backup(
    ctx: &Context,
    repo: &cairn_repo::Repository,
    args: PostgresArgs,
    target: PgTarget,
    source_name: Option<String>,
    json: bool,
) -> Result<u8> {
    let progress = Arc::new(DumpProgress::default());
    let lease = {
        let p = progress.clone();
        super::acquire_lease(ctx, repo, move || p.cancel.store(true, Ordering::Relaxed)).await?
    };
    let lock = LockGuard::acquire(repo, false).await?;
    let p = progress.clone();
    let ticker = Ticker::start(ctx.progress, "base backup", move || {
        (p.bytes_done.load(Ordering::Relaxed), 0, String::new())
    });
    let opts = BaseBackupOptions {
        target,
        max_rate: args.max_rate,
        tags: args.tags.clone(),
        hostname: args.host.clone(),
        source_name,
        saver: cairn_repo::SaverOptions::default(),
    };
    let result = cairn_postgres::physical::base_backup(repo, opts, progress).await;
    ticker.finish();
    lock.release().await?;
    super::finish_lease(lease).await?;
    let (id, snapshot, manifest) = result?;
    super::record_snapshot(ctx, &id, &snapshot).await;
    let s = snapshot.summary.clone().unwrap_or_default();
    let warnings = snapshot.cairn.as_ref().map(|c| c.warnings.clone()).unwrap_or_default();
    if json || ctx.json_logs() {
        print_json(&serde_json::json!({
            "message": "backup complete",
            "kind": "postgres-physical",
            "snapshot": id.to_hex(),
            "start_lsn": manifest.start_lsn,
            "end_lsn": manifest.end_lsn,
            "timeline": manifest.timeline,
            "files": manifest.files,
            "bytes": manifest.bytes,
            "tablespaces": manifest.tablespaces,
            "bytes_processed": s.total_bytes_processed,
            "data_added": s.data_added,
            "data_added_packed": s.data_added_packed,
            "warnings": warnings,
        }));
    } else {
        eprintln!(
            "Base backup of {} files, {} (WAL {} .. {}); added {} ({} stored)",
            manifest.files,
            bytes(manifest.bytes),
            manifest.start_lsn,
            manifest.end_lsn,
            bytes(s.data_added),
            bytes(s.data_added_packed)
        );
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        println!("snapshot {} saved", id.short());
    }
    Ok(exit::SUCCESS)
}

/// `cairn restore SNAPSHOT --physical --data-dir DIR [--to-time T | ...] [--start]`.
pub async fn restore_physical(ctx: &Context, args: RestoreArgs) -> Result<u8> {
    let pg = &args.postgres;
    let data_dir = pg.data_dir.clone().expect("clap requires --data-dir with --physical");
    let target = match (&pg.to_time, &pg.to_lsn, &pg.to_xid, &pg.to_name) {
        (Some(t), ..) => RecoveryTarget::Time(t.clone()),
        (_, Some(l), ..) => RecoveryTarget::Lsn(l.clone()),
        (_, _, Some(x), _) => RecoveryTarget::Xid(x.clone()),
        (.., Some(n)) => RecoveryTarget::Name(n.clone()),
        _ => RecoveryTarget::Latest,
    };
    let Some(password_file) = ctx.password_file_path() else {
        anyhow::bail!(
            "a physical restore needs the password in a file (CAIRN_PASSWORD_FILE or --password-file): the restored server runs `cairn wal-fetch` and must read it"
        );
    };
    let password_file = std::path::absolute(&password_file)?;
    let location = ctx.location()?;
    let location = if location.contains("://") {
        location
    } else {
        std::path::absolute(&location)?.display().to_string()
    };
    let exe = std::env::current_exe()?;
    let shell_quote = |v: &str| format!("'{}'", v.replace('\'', "'\\''"));
    let restore_command = format!(
        "CAIRN_REPOSITORY={} CAIRN_PASSWORD_FILE={} {} wal-fetch %f %p",
        shell_quote(&location),
        shell_quote(&password_file.display().to_string()),
        shell_quote(&exe.display().to_string())
    );
    let repo = ctx.open().await?;
    let (id, snapshot) = pick_base_backup(&repo, &args.snapshot, &target).await?;
    let lock = LockGuard::acquire(&repo, false).await?;
    let index = Arc::new(repo.load_index().await?);
    let opts = PitrOptions {
        data_dir: data_dir.clone(),
        target: target.clone(),
        restore_command,
        target_action: pg.target_action.clone(),
        port: pg.port,
        keep_archiving: pg.keep_archiving,
        start: pg.start,
        pg_bin: pg.pg_bin.clone(),
        timeout: std::time::Duration::from_secs(pg.recovery_timeout),
        tablespace_map: pg.tablespace_map.clone(),
        tablespaces_in_place: pg.tablespaces_in_place,
        fsync: !args.no_fsync,
    };
    let result = cairn_postgres::physical::restore_physical(&repo, index, &snapshot, &opts).await;
    lock.release().await?;
    let report = result?;
    if args.json || ctx.json_logs() {
        print_json(&serde_json::json!({
            "message": "physical restore complete",
            "snapshot": id.to_hex(),
            "target": format!("{target:?}"),
            "report": report,
        }));
    } else {
        println!(
            "restored base backup {} ({} files, {}) into {}",
            id.short(),
            report.files,
            bytes(report.bytes),
            data_dir.display()
        );
        for t in &report.tablespaces {
            println!(
                "tablespace {} (oid {}): {}",
                if t.name.is_empty() { "?" } else { &t.name },
                t.oid,
                t.directory.display()
            );
        }
        match &report.recovery_stop {
            Some(line) => println!("recovery finished: {line}"),
            None => println!(
                "recovery is configured ({target:?}); start the server (pg_ctl -D {} start) to replay WAL",
                data_dir.display()
            ),
        }
    }
    Ok(exit::SUCCESS)
}

/// `latest` means the newest base backup usable for the target: one that
/// ended before the target time (or began before the target LSN).
async fn pick_base_backup(
    repo: &cairn_repo::Repository,
    spec: &str,
    target: &RecoveryTarget,
) -> Result<(cairn_repo::Id, cairn_repo::Snapshot)> {
    if spec != "latest" {
        return Ok(repo.find_snapshot(spec).await?);
    }
    let target_time = match target {
        RecoveryTarget::Time(t) => Some(parse_pg_time(t)?),
        _ => None,
    };
    let target_lsn = match target {
        RecoveryTarget::Lsn(l) => Some(parse_lsn(l)?),
        _ => None,
    };
    let (all, _) = repo.snapshots().await?;
    for (id, snap) in all.into_iter().rev() {
        let Some(meta) = snap.cairn.as_ref().map(|c| &c.metadata) else { continue };
        if meta.get("kind").and_then(|k| k.as_str()) != Some("physical") {
            continue;
        }
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
        return Ok((id, snap));
    }
    anyhow::bail!(
        "no physical base backup in this repository precedes the target; take one with `cairn backup postgres --physical`, or choose a later target"
    )
}

fn parse_pg_time(t: &str) -> Result<chrono::DateTime<chrono::FixedOffset>> {
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
    anyhow::bail!(
        "cannot read the time {t:?}: give it with a UTC offset, e.g. '2026-11-23 03:00:00+00' or 2026-11-23T03:00:00Z"
    )
}

fn parse_lsn(l: &str) -> Result<u64> {
    let (hi, lo) =
        l.trim().split_once('/').ok_or_else(|| anyhow::anyhow!("{l:?} is not an LSN like 0/3000060"))?;
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

/// `cairn verify SNAPSHOT --against postgresql://…/DB`.
pub async fn verify_against(
    ctx: &Context,
    repo: &cairn_repo::Repository,
    index: &cairn_repo::Index,
    id: cairn_repo::Id,
    snapshot: &cairn_repo::Snapshot,
    url: &str,
    args: &crate::cli::VerifyArgs,
) -> Result<u8> {
    let target = PgTarget::parse(url)?;
    let checks =
        cairn_postgres::compare_database(repo, index, snapshot, &target, args.database.as_deref()).await?;
    let bad: Vec<_> = checks.iter().filter(|c| !c.ok()).collect();
    if args.json || ctx.json_logs() {
        print_json(&serde_json::json!({
            "message": "database compared with snapshot",
            "snapshot": id.to_hex(),
            "target": target.display(),
            "ok": bad.is_empty(),
            "tables": checks,
        }));
    } else {
        for c in &checks {
            let state = match (c.rows, c.ok()) {
                (None, _) => "MISSING".to_string(),
                (_, true) => "ok".to_string(),
                (Some(r), false) if r != c.expected_rows => format!("ROWS {r}, expected {}", c.expected_rows),
                (Some(_), false) => "CONTENT DIFFERS (same row count)".to_string(),
            };
            println!("{:<50} {:>12} rows  {state}", c.table, c.expected_rows);
        }
        println!(
            "{} of {} tables match snapshot {} in {}",
            checks.len() - bad.len(),
            checks.len(),
            id.short(),
            target.display()
        );
    }
    let detail =
        format!("{} of {} tables match in {}", checks.len() - bad.len(), checks.len(), target.display());
    super::record_verification(ctx, &id, "verify-against", bad.is_empty(), &detail).await;
    if bad.is_empty() {
        Ok(exit::SUCCESS)
    } else {
        Err(super::Damage(format!(
            "{} table(s) of {} differ from snapshot {}",
            bad.len(),
            target.display(),
            id.short()
        ))
        .into())
    }
}
