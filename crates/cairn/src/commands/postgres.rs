//! `cairn backup postgres` and `cairn restore … --to postgresql://…`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use cairn_postgres::{DumpOptions, DumpProgress, PgTarget, RestoreOptions, RestoreProgress};
use cairn_repo::lock::LockGuard;

use super::{Stop, print_json};
use crate::cli::{OverwriteArg, PostgresArgs, RestoreArgs};
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
    let lock = LockGuard::acquire(&repo, false).await?;
    super::backup::clean_abandoned_uploads(&repo, upload_age).await;
    let progress = Arc::new(DumpProgress::default());
    {
        let p = progress.clone();
        stop.on_stop(move || p.cancel.store(true, Ordering::Relaxed));
    }
    let opts = DumpOptions {
        databases: args.databases.clone(),
        globals: !args.no_globals,
        jobs: args.jobs.max(1),
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
    let result = result?;
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
