//! PostgreSQL's WAL archive: `cairn wal-push`, `wal-fetch`, `wal verify`
//! and `wal drain` (backups and restores are engine jobs of the postgres
//! source).

use anyhow::Result;
use cairn_postgres::PgError;
use cairn_postgres::wal::PushOutcome;
use cairn_postgres::wal::spool::{self, Spool, Spooled, WhenFull};

use super::{StopRecovery, print_json};
use crate::cli::{WalAction, WalArgs, WalFetchArgs, WalPushArgs};
use crate::context::Context;
use crate::exit;
use crate::output::bytes;

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
async fn wal_drain(ctx: &Context, dir: &std::path::Path) -> Result<u8> {
    // The size bound only matters for putting files in.
    let spool = Spool::open(dir, u64::MAX, WhenFull::Fail)?;
    let repo = ctx.open().await?;
    // Each file is pushed create-new and only then removed from the spool,
    // so giving up halfway loses nothing.
    let stop = ctx.stop.token();
    let drained = tokio::select! {
        drained = spool.drain(&repo) => drained,
        _ = stop.cancelled() => return Err(cairn_engine::EngineError::Interrupted.into()),
    };
    let (report, failure) = match drained {
        Ok(report) => (report, None),
        Err((report, e)) => (report, Some(e)),
    };
    if ctx.json() {
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
    let (read_data, segment_size_mib) = match args.action {
        WalAction::Verify { read_data, segment_size_mib } => (read_data, segment_size_mib),
        WalAction::Drain { spool } => return wal_drain(ctx, &spool).await,
    };
    let repo = ctx.open().await?;
    let backups = base_backups(&repo).await?;
    let report = cairn_postgres::wal::verify(&repo, segment_size_mib << 20, read_data, &backups).await?;
    if ctx.json() {
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
        let dir = repo.journal(cairn_postgres::wal::JOURNAL).dir();
        for u in &report.unexpected {
            println!("note: unexpected object {dir}/{u}");
        }
    }
    if report.is_healthy() {
        Ok(exit::SUCCESS)
    } else {
        let newest_unusable = report.recovery_windows.first().is_some_and(|w| w.through_segment.is_none());
        super::failed_after_result(
            ctx,
            super::Damage(format!(
                "the WAL archive is broken: {} gap(s), {} damaged file(s){}",
                report.timelines.iter().map(|t| t.gaps.len()).sum::<usize>(),
                report.damaged.len(),
                if newest_unusable { ", the newest base backup cannot be recovered" } else { "" }
            ))
            .into(),
        )
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
        let (Some(timeline), Ok(start_lsn)) = (
            meta.get("timeline").and_then(|t| t.as_u64()),
            cairn_postgres::source::parse_lsn(&field("start_lsn")),
        ) else {
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
