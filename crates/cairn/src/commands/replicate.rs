//! `cairn replicate`, and replication after a backup.

use anyhow::{Result, bail};
use cairn_repo::Repository;
use cairn_repo::replicate::{ExtraKeys, repair_replica, replicate, verify_replica};
use cairn_store::DisplaySafe;

use super::{Damage, print_json};
use crate::cli::ReplicateArgs;
use crate::context::{Context, backend_for};
use crate::exit;
use crate::output::bytes;

pub async fn run(ctx: &Context, args: ReplicateArgs) -> Result<u8> {
    let targets = ctx.replicas(&args.to);
    if targets.is_empty() {
        bail!("no replica given: pass --to URL, or list `replicas:` in cairn.yaml");
    }
    let repo = ctx.open().await?;
    let mut failures = Vec::new();
    let mut lagging = Vec::new();
    for target in &targets {
        if args.verify {
            match verify_one(ctx, &repo, target, &args).await {
                Ok(()) => {}
                Err(e) if e.downcast_ref::<Lagging>().is_some() => lagging.push(format!("{target}: {e:#}")),
                Err(e) => failures.push(format!("{target}: {e:#}")),
            }
        } else {
            let extra_keys =
                if args.remove_revoked_keys { ExtraKeys::RemoveRevoked } else { ExtraKeys::Keep };
            copy_to(ctx, &repo, target, args.concurrency, extra_keys).await?;
        }
    }
    if !failures.is_empty() {
        failures.extend(lagging);
        return super::failed_after_result(ctx, Damage(failures.join("; ")).into());
    }
    if !lagging.is_empty() {
        return super::failed_after_result(ctx, Lagging(lagging.join("; ")).into());
    }
    Ok(exit::SUCCESS)
}

/// A complete replica that lags more than `--max-lag` (exit 6, not damage).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Lagging(pub String);

/// Brings one replica up to date.
pub async fn copy_to(
    ctx: &Context,
    repo: &Repository,
    target: &DisplaySafe,
    concurrency: usize,
    extra_keys: ExtraKeys,
) -> Result<()> {
    let replica = backend_for(target.expose()).await?;
    let started = std::time::Instant::now();
    let copies_before = cairn_repo::replicate::SERVER_SIDE_COPIES.load(std::sync::atomic::Ordering::Relaxed);
    let report = ctx.stop.race(replicate(repo, replica, concurrency, extra_keys)).await?;
    let server_side =
        cairn_repo::replicate::SERVER_SIDE_COPIES.load(std::sync::atomic::Ordering::Relaxed) - copies_before;
    let (objects, total): (u64, u64) = report.copied.iter().fold((0, 0), |a, (_, n, b)| (a.0 + n, a.1 + b));
    if ctx.json() {
        print_json(&serde_json::json!({
            "message": "replication complete",
            "replica": target.to_string(),
            "objects_copied": objects,
            "bytes_copied": total,
            "already_present": report.already_present,
            "server_side_copies": server_side,
            "extra_keys": report.extra_keys,
            "removed_keys": report.removed_keys,
            "seconds": started.elapsed().as_secs_f64(),
        }));
    } else {
        println!(
            "replica {target}: copied {objects} objects ({}), {} already there{}{}",
            bytes(total),
            report.already_present,
            if report.removed_keys.is_empty() {
                String::new()
            } else {
                format!("; removed revoked keys {}", short_ids(&report.removed_keys))
            },
            if report.extra_keys.is_empty() {
                String::new()
            } else {
                format!("; kept keys the primary lacks: {}", short_ids(&report.extra_keys))
            }
        );
    }
    Ok(())
}

/// Key ids as `cairn key list` shows them.
fn short_ids(ids: &[String]) -> String {
    ids.iter().map(|id| &id[..id.len().min(8)]).collect::<Vec<_>>().join(", ")
}

async fn verify_one(
    ctx: &Context,
    repo: &Repository,
    target: &DisplaySafe,
    args: &ReplicateArgs,
) -> Result<()> {
    let replica = backend_for(target.expose()).await?;
    let mut report = ctx.stop.race(verify_replica(repo, replica.clone(), args.concurrency)).await?;
    if args.repair && !report.is_complete() {
        let fixed = ctx.stop.race(repair_replica(repo, replica.clone(), &report)).await?;
        tracing::warn!(
            replica = %target,
            objects = fixed,
            "repaired missing or damaged objects on the replica"
        );
        report = ctx.stop.race(verify_replica(repo, replica, args.concurrency)).await?;
    }
    let lag_secs = report.lag.num_seconds().max(0);
    if ctx.json() {
        print_json(&serde_json::json!({
            "message": "replica verified",
            "replica": target.to_string(),
            "complete": report.is_complete(),
            "objects_checked": report.objects_checked,
            "checked_by_store_checksum": report.checked_by_store_checksum,
            "missing": report.missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "differing": report.differing.iter().map(|(o, why)| format!("{o} ({why})")).collect::<Vec<_>>(),
            "snapshots_missing": report.snapshots_missing,
            "extra_keys": report.extra_keys,
            "lag_seconds": lag_secs,
        }));
    } else {
        for m in &report.missing {
            eprintln!("missing on replica: {m}");
        }
        for (o, why) in &report.differing {
            eprintln!("differs on replica: {o} ({why})");
        }
        for key in &report.extra_keys {
            eprintln!("note: key only on the replica (not damage): keys/{key}");
        }
        println!(
            "replica {target}: {} objects checked ({} by the store's checksum), {} missing, {} differing, {} snapshots behind, lag {}s",
            report.objects_checked,
            report.checked_by_store_checksum,
            report.missing.len(),
            report.differing.len(),
            report.snapshots_missing,
            lag_secs
        );
    }
    if !report.is_complete() {
        bail!("{} objects missing and {} differing", report.missing.len(), report.differing.len());
    }
    if let Some(max) = args.max_lag
        && lag_secs as u64 > max.as_secs()
    {
        return Err(
            Lagging(format!("replication lag {lag_secs}s exceeds --max-lag {}s", max.as_secs())).into()
        );
    }
    Ok(())
}
