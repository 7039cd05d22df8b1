//! `cairn forget` (retention policies, restic's rules: `cairn_repo::forget`)
//! and `cairn prune` (`cairn_repo::prune`), both under the exclusive
//! repository lock when they change anything.

use anyhow::{Result, bail};
use cairn_engine::{EngineError, JobReport};
use cairn_repo::forget::{self, Decision, GroupKey, LocalZone, Policy};
use cairn_repo::prune::{self, Hooks, MaxUnused, PackFate, PruneOptions, Step};
use cairn_repo::{Id, Repository, Snapshot};
use cairn_store::{FileType, Handle};

use super::{locked, print_json};
use crate::cli::{ForgetArgs, PruneArgs, PruneOptionArgs};
use crate::context::Context;
use crate::exit;
use crate::output::bytes;

fn usage(message: impl Into<String>) -> anyhow::Error {
    EngineError::Usage(message.into()).into()
}

/// A snapshot as restic's `forget --json` shows it: the document plus `id`
/// and `short_id`.
fn snapshot_json(id: &Id, snapshot: &Snapshot) -> serde_json::Value {
    let mut v = serde_json::to_value(snapshot).expect("snapshots serialise");
    v["id"] = serde_json::json!(id.to_hex());
    v["short_id"] = serde_json::json!(id.short());
    v
}

/// One group in restic's shape; empty lists are `null`, as restic prints them.
fn group_json(key: &GroupKey, list: &[(Id, Snapshot)], d: &Decision) -> serde_json::Value {
    let some = |v: Vec<serde_json::Value>| if v.is_empty() { serde_json::Value::Null } else { v.into() };
    serde_json::json!({
        "tags": key.tags,
        "host": key.host,
        "paths": key.paths,
        "source": key.source,
        "keep": some(d.keep.iter().map(|&i| snapshot_json(&list[i].0, &list[i].1)).collect()),
        "remove": some(d.remove.iter().map(|&i| snapshot_json(&list[i].0, &list[i].1)).collect()),
        "reasons": some(d.reasons.iter().map(|r| serde_json::json!({
            "snapshot": snapshot_json(&list[r.snapshot].0, &list[r.snapshot].1),
            "matches": r.matches,
            "counters": r.counters,
        })).collect()),
    })
}

fn describe_group(key: &GroupKey) -> String {
    let mut parts = Vec::new();
    if let Some(s) = &key.source {
        parts.push(format!("source {s}"));
    }
    if !key.host.is_empty() {
        parts.push(format!("host {}", key.host));
    }
    if let Some(p) = &key.paths {
        parts.push(format!("paths [{}]", p.join(", ")));
    }
    if let Some(t) = &key.tags {
        parts.push(format!("tags [{}]", t.join(", ")));
    }
    if parts.is_empty() { "all snapshots".into() } else { parts.join(", ") }
}

pub async fn forget(ctx: &Context, args: ForgetArgs) -> Result<u8> {
    let policy = args.policy.policy();
    let group_by: forget::GroupBy = args.group_by.parse().map_err(|e: forget::PolicyError| usage(e.0))?;
    if !args.snapshots.is_empty() && !policy.is_empty() {
        return Err(usage("give either snapshot ids or a --keep-* policy, not both"));
    }
    if args.snapshots.is_empty() && policy.is_empty() {
        return Err(usage(
            "no policy given, so nothing would be forgotten: add --keep-last/--keep-daily/… or snapshot ids",
        ));
    }
    let prune_options = if args.prune { Some(prune_options(&args.prune_options)?) } else { None };
    let repo = ctx.open().await?;
    let removed =
        locked(ctx, &repo, !args.dry_run, forget_locked(ctx, &repo, &args, &policy, group_by)).await?;
    let Some(options) = prune_options else { return Ok(exit::SUCCESS) };
    if removed == 0 && !args.dry_run {
        tracing::info!("no snapshot was removed; not pruning");
        return Ok(exit::SUCCESS);
    }
    let report = run_prune(ctx, &repo, &options, args.dry_run).await?;
    Ok(super::print_report(ctx, &report).await)
}

/// Decides, prints and (unless a dry run) deletes; returns how many snapshots went.
async fn forget_locked(
    ctx: &Context,
    repo: &Repository,
    args: &ForgetArgs,
    policy: &Policy,
    group_by: forget::GroupBy,
) -> Result<usize> {
    let filter = args.filter.filter();
    let mut doomed: Vec<Id> = Vec::new();
    if !args.snapshots.is_empty() {
        for spec in &args.snapshots {
            let (id, _) = repo.select_snapshot(spec, &filter).await?;
            if !doomed.contains(&id) {
                doomed.push(id);
            }
        }
        if !ctx.json() {
            for id in &doomed {
                println!(
                    "{} snapshot {}",
                    if args.dry_run { "would remove" } else { "removing" },
                    id.short()
                );
            }
        }
    } else {
        let (all, damaged) = repo.snapshots().await?;
        for e in &damaged {
            tracing::warn!("{e}; it is left alone");
        }
        let admitted: Vec<_> = all.into_iter().filter(|(_, s)| filter.matches(s)).collect();
        let now = chrono::Utc::now();
        let mut groups_json = Vec::new();
        for (key, mut list) in forget::group(admitted, group_by) {
            let decision = forget::apply(&mut list, policy, now, &LocalZone);
            if ctx.json() {
                groups_json.push(group_json(&key, &list, &decision));
            } else {
                println!("snapshots for {}:", describe_group(&key));
                println!("keep {} snapshots:", decision.keep.len());
                for r in &decision.reasons {
                    let (id, s) = &list[r.snapshot];
                    println!(
                        "  {}  {}  {}",
                        id.short(),
                        s.time.format("%Y-%m-%d %H:%M:%S %:z"),
                        r.matches.join(", ")
                    );
                }
                if !decision.remove.is_empty() {
                    println!("remove {} snapshots:", decision.remove.len());
                    for &i in &decision.remove {
                        let (id, s) = &list[i];
                        println!("  {}  {}", id.short(), s.time.format("%Y-%m-%d %H:%M:%S %:z"));
                    }
                }
                println!();
            }
            doomed.extend(decision.remove.iter().map(|&i| list[i].0));
        }
        if ctx.json() {
            print_json(&serde_json::Value::Array(groups_json));
        }
    }
    if args.dry_run {
        if !ctx.json() {
            println!("would remove {} snapshots (dry run)", doomed.len());
        }
        return Ok(doomed.len());
    }
    let mut failed = Vec::new();
    for id in &doomed {
        if ctx.stop.is_stopped() {
            bail!(cairn_repo::RepoError::Interrupted);
        }
        match repo.backend().delete(&Handle::new(FileType::Snapshot, id.to_hex())).await {
            Ok(()) | Err(cairn_store::StoreError::NotFound { .. }) => {}
            Err(e) => failed.push(format!("{}: {e}", id.short())),
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} snapshots could not be removed; the first: {}",
            failed.len(),
            doomed.len(),
            failed[0]
        );
    }
    if !ctx.json() {
        println!("removed {} snapshots", doomed.len());
    }
    Ok(doomed.len())
}

/// A source's `retention:` after its backup: forget among that source's
/// snapshots (one group), then prune if asked; the facts for the report.
pub async fn after_backup(
    ctx: &Context,
    source: &str,
    retention: &crate::config::Retention,
) -> Result<serde_json::Value> {
    let repo = ctx.open().await?;
    let filter = cairn_repo::SnapshotFilter { sources: vec![source.to_string()], ..Default::default() };
    let removed = locked(ctx, &repo, true, async {
        let (all, _) = repo.snapshots().await?;
        let mut list: Vec<_> = all.into_iter().filter(|(_, s)| filter.matches(s)).collect();
        let decision = forget::apply(&mut list, &retention.policy, chrono::Utc::now(), &LocalZone);
        let mut removed = Vec::new();
        for &i in &decision.remove {
            let id = list[i].0;
            repo.backend().delete(&Handle::new(FileType::Snapshot, id.to_hex())).await?;
            removed.push(id.to_hex());
        }
        Ok(removed)
    })
    .await?;
    tracing::info!(source, removed = removed.len(), "retention applied");
    let mut details = serde_json::json!({ "removed": removed });
    if retention.prune && !removed.is_empty() {
        let report = run_prune(ctx, &repo, &PruneOptions::default(), false).await?;
        details["prune"] = serde_json::json!({ "objects": report.objects, "details": report.details, "warnings": report.warnings });
    }
    Ok(details)
}

fn prune_options(args: &PruneOptionArgs) -> Result<PruneOptions> {
    let text = args.max_unused.trim();
    let max_unused = if text == "unlimited" {
        MaxUnused::Unlimited
    } else if let Some(p) = text.strip_suffix('%') {
        match p.trim().parse::<f64>() {
            Ok(p) if (0.0..=100.0).contains(&p) => MaxUnused::Percent(p),
            _ => {
                return Err(usage(format!(
                    "--max-unused {text:?}: a percentage from 0% to 100%, a size or `unlimited`"
                )));
            }
        }
    } else {
        MaxUnused::Bytes(
            cairn_source::units::parse_size(text).map_err(|e| usage(format!("--max-unused: {e}")))?,
        )
    };
    Ok(PruneOptions { max_unused, max_repack_bytes: args.max_repack_size, ..PruneOptions::default() })
}

pub async fn prune(ctx: &Context, args: PruneArgs) -> Result<u8> {
    let options = prune_options(&args.options)?;
    let repo = ctx.open().await?;
    let report = run_prune(ctx, &repo, &options, args.dry_run).await?;
    Ok(super::print_report(ctx, &report).await)
}

/// `CAIRN_TEST_PRUNE_PAUSE=STEP` (tests only): stop before STEP (`repack`,
/// `index`, `delete-index`, `delete-packs`), say so on stderr and wait to
/// be killed, so tests can kill prune at every step.
fn pause_hook(step: Step) {
    if std::env::var("CAIRN_TEST_PRUNE_PAUSE").is_ok_and(|v| v == step.name()) {
        eprintln!("prune: paused before {} (CAIRN_TEST_PRUNE_PAUSE)", step.name());
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Plans and (unless a dry run) prunes under the exclusive lock; the report.
pub async fn run_prune(
    ctx: &Context,
    repo: &Repository,
    options: &PruneOptions,
    dry_run: bool,
) -> Result<JobReport> {
    let mut job = JobReport::start("prune");
    job.dry_run = dry_run;
    let stop = ctx.stop.clone();
    let is_stopped = move || stop.is_stopped();
    let (plan, outcome) = locked(ctx, repo, !dry_run, async {
        let plan = ctx
            .stop
            .race(async { Ok::<_, EngineError>(prune::plan(repo, options, &is_stopped).await?) })
            .await?;
        let outcome = if dry_run {
            None
        } else {
            let hooks = Hooks {
                stop: &is_stopped,
                step: &|s| {
                    tracing::info!(step = s.name(), "prune");
                    pause_hook(s);
                },
            };
            Some(prune::execute(repo, &plan, options, &hooks).await?)
        };
        Ok((plan, outcome))
    })
    .await?;
    let freed = outcome
        .as_ref()
        .map(|o| o.bytes_deleted.saturating_sub(o.bytes_written))
        .unwrap_or(plan.bytes_freed());
    job.objects = [
        ("snapshots", plan.snapshots as u64),
        ("packs", plan.packs.len() as u64),
        ("packs_delete", plan.count(PackFate::Delete) as u64),
        ("packs_repack", plan.count(PackFate::Repack) as u64),
        ("packs_keep", plan.count(PackFate::Keep) as u64),
        ("packs_unindexed", plan.unindexed.len() as u64),
        ("blobs", plan.blobs),
        ("blobs_used", plan.used_blobs),
        ("blobs_duplicate", plan.duplicate_blobs),
        ("index_files", plan.index_files.len() as u64),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(o) = &outcome {
        job.bytes.read = o.bytes_read;
        job.bytes.stored = o.bytes_written;
        for (k, v) in [
            ("packs_written", o.packs_written),
            ("packs_deleted", o.packs_deleted),
            ("index_files_written", o.index_files_written),
            ("index_files_deleted", o.index_files_deleted),
            ("deferred", o.deferred.len()),
        ] {
            job.objects.insert(k.into(), v as u64);
        }
        job.warnings
            .extend(o.deferred.iter().map(|d| format!("not deleted yet (a later prune retries): {d}")));
    }
    job.details = serde_json::json!({
        "used_bytes": plan.used_bytes,
        "unused_bytes": plan.unused_bytes,
        "unused_after": plan.unused_after,
        "delete_bytes": plan.bytes(PackFate::Delete) + plan.unindexed.iter().map(|u| u.1).sum::<u64>(),
        "repack_bytes": plan.bytes(PackFate::Repack),
        "repack_used_bytes": plan.repack_used_bytes(),
        "bytes_freed": freed,
        "plan_memory_bytes": plan.memory_bytes,
        "delete": plan.packs.iter().filter(|p| p.fate == PackFate::Delete).map(|p| p.id.to_hex())
            .chain(plan.unindexed.iter().map(|u| u.0.to_hex())).collect::<Vec<_>>(),
        "repack": plan.packs.iter().filter(|p| p.fate == PackFate::Repack).map(|p| p.id.to_hex()).collect::<Vec<_>>(),
    });
    job.summary = format!(
        "{} snapshots, {} packs ({} used, {} unused in them)\n{} {} packs, repack {} packs ({} of used data), {} unindexed packs; {} {}{}",
        plan.snapshots,
        plan.packs.len(),
        bytes(plan.used_bytes),
        bytes(plan.unused_bytes),
        if dry_run { "would delete" } else { "deleted" },
        plan.count(PackFate::Delete),
        plan.count(PackFate::Repack),
        bytes(plan.repack_used_bytes()),
        plan.unindexed.len(),
        if dry_run { "would free" } else { "freed" },
        bytes(freed),
        if dry_run {
            " (dry run: nothing changed)".to_string()
        } else {
            format!("; {} unused bytes remain", bytes(plan.unused_after))
        },
    );
    Ok(job.finish())
}
