//! `cairn backup`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Result, bail};
use cairn_repo::{Id, SaverOptions};
use cairn_volume::{BackupOptions, BackupProgress, Excludes, ParentChoice};

use super::{RepoLock, Stop, print_json};
use crate::cli::{BackupArgs, BackupKind, PostgresArgs, VolumeArgs};
use crate::context::Context;
use crate::exit;
use crate::output::{Ticker, bytes};

pub async fn run(ctx: &Context, args: BackupArgs, stop: Arc<Stop>) -> Result<u8> {
    let code = match (args.kind, args.source) {
        (Some(BackupKind::Volume(v)), _) => volume_backup(ctx, v, None, args.json, stop).await?,
        (Some(BackupKind::Postgres(p)), _) => {
            super::postgres::backup(ctx, p, None, None, args.json, stop).await?
        }
        (None, Some(name)) => {
            let Some(cfg) = &ctx.config else {
                bail!("--source needs a config file: pass --config cairn.yaml (or set CAIRN_CONFIG)");
            };
            let src = cfg.source(&name)?;
            match src.kind.as_str() {
                "volume" => {}
                "postgres" => {
                    let Some(url) = src.url.clone() else {
                        bail!("source {name:?} (kind postgres) needs `url:` in {}", cfg.path.display());
                    };
                    let password = match &src.password_file {
                        Some(p) => Some(crate::config::read_secret_file(p)?),
                        None => None,
                    };
                    let p = PostgresArgs {
                        url,
                        databases: src.databases.clone(),
                        no_globals: !src.globals.unwrap_or(true),
                        jobs: src.jobs.unwrap_or(2),
                        split_large_tables: src.split_large_tables,
                        pg_bin: src.pg_bin.clone(),
                        tags: src.tags.clone(),
                        host: src.host.clone(),
                        physical: src.physical,
                        max_rate: match &src.max_rate {
                            Some(rate) => Some(
                                crate::cli::parse_size(rate)
                                    .map_err(|e| anyhow::anyhow!("source {name:?}: max_rate: {e}"))?,
                            ),
                            None => None,
                        },
                    };
                    let code = super::postgres::backup(ctx, p, password, Some(name), args.json, stop).await?;
                    return finish_with_replicas(ctx, code, args.no_replicate, args.json).await;
                }
                other => bail!(
                    "source {name:?} has kind {other:?}, which this build cannot back up (known kinds: volume, postgres)"
                ),
            }
            let v = VolumeArgs {
                paths: src.paths.clone(),
                exclude: src.exclude.clone(),
                exclude_file: src.exclude_file.clone(),
                one_file_system: src.one_file_system,
                tags: src.tags.clone(),
                host: src.host.clone(),
                pack_size: 16,
                ..VolumeArgs::default()
            };
            volume_backup(ctx, v, Some(name), args.json, stop).await?
        }
        (None, None) => bail!(
            "say what to back up: `cairn backup volume PATH...`, `cairn backup postgres --url URL` or `cairn backup --source NAME`"
        ),
    };
    finish_with_replicas(ctx, code, args.no_replicate, args.json).await
}

/// After a snapshot landed: brings the configured replicas up to date.
async fn finish_with_replicas(ctx: &Context, code: u8, no_replicate: bool, json: bool) -> Result<u8> {
    if !no_replicate {
        let replicas = ctx.replicas(&[]);
        if !replicas.is_empty() {
            let repo = ctx.open().await?;
            for target in replicas {
                // The snapshot is safe in the primary; a replica failure is
                // reported (and fails the run) but loses nothing.
                let keep = cairn_repo::replicate::ExtraKeys::Keep;
                super::replicate::copy_to(ctx, &repo, &target, 8, keep, json).await.map_err(|e| {
                    e.context(format!(
                        "snapshot saved, but replicating to {target} failed; run `cairn replicate` to retry"
                    ))
                })?;
            }
        }
    }
    Ok(code)
}

/// Aborts multipart uploads that an earlier, interrupted run left in the
/// repository, started more than `age` ago (they cost storage and no listing
/// shows them). A failure does not fail the backup: the next run tries again.
pub(super) async fn clean_abandoned_uploads(repo: &cairn_repo::Repository, age: std::time::Duration) {
    match repo.backend().clean_abandoned_uploads(age).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(aborted = n, "aborted multipart uploads abandoned by earlier runs"),
        Err(e) => tracing::warn!(
            error = %e,
            "could not abort abandoned multipart uploads; the next backup tries again"
        ),
    }
}

async fn volume_backup(
    ctx: &Context,
    args: VolumeArgs,
    source_name: Option<String>,
    json: bool,
    stop: Arc<Stop>,
) -> Result<u8> {
    let excludes = Excludes::new(&args.exclude, &args.exclude_file)?;
    let upload_age = crate::context::abandoned_upload_age()?;
    let repo = ctx.open().await?;
    let parent = match (args.force, &args.parent) {
        (true, _) => ParentChoice::None,
        (false, Some(spec)) => ParentChoice::Snapshot(repo.find_snapshot(spec).await?.0),
        (false, None) => ParentChoice::Auto,
    };
    let progress = Arc::new(BackupProgress::default());
    let lock = {
        let p = progress.clone();
        RepoLock::for_backup(ctx, &repo, move || p.cancel.store(true, Ordering::Relaxed)).await?
    };
    clean_abandoned_uploads(&repo, upload_age).await;
    {
        let p = progress.clone();
        stop.on_stop(move || p.cancel.store(true, Ordering::Relaxed));
    }
    let opts = BackupOptions {
        paths: args.paths.clone(),
        excludes,
        one_file_system: args.one_file_system,
        xattrs: !args.no_xattrs,
        parent,
        tags: args.tags.clone(),
        hostname: args.host.clone(),
        source_name,
        saver: SaverOptions { pack_size: args.pack_size as usize * (1 << 20), ..SaverOptions::default() },
        ..BackupOptions::default()
    };
    let p = progress.clone();
    let ticker = Ticker::start(ctx.progress, "backup", move || {
        let files = p.files_done.load(Ordering::Relaxed);
        (p.bytes_done.load(Ordering::Relaxed), 0, format!("{files} files"))
    });
    tracing::info!(paths = ?args.paths, repository = %repo.location(), "backup started");
    let result = cairn_volume::backup(&repo, opts, progress.clone()).await;
    ticker.finish();
    let result = lock.finish(result.map_err(Into::into)).await?;
    super::record_snapshot(ctx, &result.snapshot_id, &result.snapshot).await;
    let s = result.snapshot.summary.clone().unwrap_or_default();
    let seconds = (s.backup_end - s.backup_start).num_milliseconds() as f64 / 1000.0;
    if json || ctx.json_logs() {
        print_json(&serde_json::json!({
            "message": "backup complete",
            "snapshot": result.snapshot_id.to_hex(),
            "parent": result.parent.map(|p: Id| p.to_hex()),
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unmodified": s.files_unmodified,
            "dirs_new": s.dirs_new,
            "dirs_changed": s.dirs_changed,
            "dirs_unmodified": s.dirs_unmodified,
            "bytes_processed": s.total_bytes_processed,
            "data_added": s.data_added,
            "data_added_packed": s.data_added_packed,
            "seconds": seconds,
            "warnings": result.warnings,
        }));
    } else {
        eprintln!(
            "Files: {} new, {} changed, {} unmodified\nDirs:  {} new, {} changed, {} unmodified\n\
             Processed {} in {seconds:.1}s; added {} ({} stored)",
            s.files_new,
            s.files_changed,
            s.files_unmodified,
            s.dirs_new,
            s.dirs_changed,
            s.dirs_unmodified,
            bytes(s.total_bytes_processed),
            bytes(s.data_added),
            bytes(s.data_added_packed),
        );
        for w in &result.warnings {
            eprintln!("warning: {w}");
        }
        println!("snapshot {} saved", result.snapshot_id.short());
    }
    Ok(if result.warnings.is_empty() { exit::SUCCESS } else { exit::PARTIAL })
}
