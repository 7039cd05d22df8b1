//! `cairn restore`, `cairn ls`, `cairn verify`: reading snapshots back.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use cairn_repo::lock::LockGuard;
use cairn_repo::tree::NodeType;
use cairn_repo::verify::{VerifyProgress, verify_snapshot};
use cairn_volume::{Overwrite, RestoreOptions, RestoreProgress};

use super::{Damage, Stop, print_json};
use crate::cli::{LsArgs, OverwriteArg, RestoreArgs, VerifyArgs};
use crate::context::Context;
use crate::exit;
use crate::output::{Ticker, bytes};

pub async fn restore(ctx: &Context, args: RestoreArgs, stop: Arc<Stop>) -> Result<u8> {
    if args.postgres.physical {
        return super::postgres::restore_physical(ctx, args).await;
    }
    let to = args.to.clone().unwrap_or_default();
    if let Some(url) = to.to_str().filter(|t| t.starts_with("postgres://") || t.starts_with("postgresql://"))
    {
        let url = url.to_string();
        return super::postgres::restore(ctx, &url, args, stop).await;
    }
    let repo = ctx.open().await?;
    let (id, snapshot) = repo.find_snapshot(&args.snapshot).await?;
    let lock = LockGuard::acquire(&repo, false).await?;
    let index = Arc::new(repo.load_index().await?);
    let opts = RestoreOptions {
        target: to.clone(),
        include: args.paths.clone(),
        overwrite: match args.overwrite {
            OverwriteArg::Never => Overwrite::Never,
            OverwriteArg::IfChanged => Overwrite::IfChanged,
            OverwriteArg::Always => Overwrite::Always,
        },
        dry_run: args.dry_run,
        fsync: !args.no_fsync,
        ..RestoreOptions::default()
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
                "{}/{} files",
                p.files_done.load(Ordering::Relaxed),
                p.files_total.load(Ordering::Relaxed)
            ),
        )
    });
    let started = std::time::Instant::now();
    let result = cairn_volume::restore(&repo, index, &snapshot, &opts, progress).await;
    ticker.finish();
    lock.release().await?;
    let summary = result?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json || ctx.json_logs() {
        print_json(&serde_json::json!({
            "message": if summary.dry_run { "restore plan" } else { "restore complete" },
            "snapshot": id.to_hex(),
            "target": to,
            "dry_run": summary.dry_run,
            "files": summary.files,
            "dirs": summary.dirs,
            "symlinks": summary.links,
            "other": summary.other,
            "bytes": summary.bytes,
            "skipped": summary.skipped,
            "seconds": seconds,
            "warnings": summary.warnings,
        }));
    } else {
        let verb = if summary.dry_run { "would restore" } else { "restored" };
        println!(
            "{verb} {} files, {} dirs, {} symlinks ({}) from snapshot {} into {}{}",
            summary.files,
            summary.dirs,
            summary.links,
            bytes(summary.bytes),
            id.short(),
            to.display(),
            if summary.skipped > 0 {
                format!("; {} unchanged files skipped", summary.skipped)
            } else {
                String::new()
            }
        );
        for w in &summary.warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(exit::SUCCESS)
}

pub async fn ls(ctx: &Context, args: LsArgs) -> Result<u8> {
    let repo = ctx.open().await?;
    let (_, snapshot) = repo.find_snapshot(&args.snapshot).await?;
    let index = repo.load_index().await?;
    let filter = args.path.as_ref().map(|p| {
        if p.starts_with('/') || snapshot.paths.len() != 1 {
            format!("/{}", p.trim_matches('/'))
        } else {
            format!("{}/{}", snapshot.paths[0].trim_end_matches('/'), p.trim_matches('/'))
        }
    });
    let mut stack = vec![(snapshot.tree, String::new())];
    let mut out = Vec::new();
    let mut matched = filter.is_none();
    while let Some((tree_id, path)) = stack.pop() {
        let tree = repo.load_tree(&index, &tree_id).await?;
        for node in tree.nodes.iter().rev() {
            let child = format!("{path}/{}", node.name_lossy());
            let relevant = match &filter {
                None => true,
                Some(f) => {
                    child == *f || child.starts_with(&format!("{f}/")) || f.starts_with(&format!("{child}/"))
                }
            };
            if !relevant {
                continue;
            }
            let shown = filter.as_ref().is_none_or(|f| child == *f || child.starts_with(&format!("{f}/")));
            if shown {
                matched = true;
                out.push((child.clone(), node.clone()));
            }
            if let (NodeType::Dir, Some(sub)) = (node.node_type, node.subtree) {
                stack.push((sub, child));
            }
        }
    }
    if !matched {
        anyhow::bail!("path {:?} is not in snapshot {}", args.path.unwrap_or_default(), args.snapshot);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    // `cairn ls … | head` closes the pipe early: that ends the listing, quietly.
    let mut stdout = std::io::stdout().lock();
    for (path, node) in out {
        let line = if args.json {
            serde_json::json!({
                "path": path,
                "type": node.node_type,
                "size": node.size,
                "mode": node.mode,
                "mtime": node.mtime,
                "uid": node.uid,
                "gid": node.gid,
            })
            .to_string()
        } else if args.long {
            let owner = if node.user.is_empty() { node.uid.to_string() } else { node.user.clone() };
            let group = if node.group.is_empty() { node.gid.to_string() } else { node.group.clone() };
            format!(
                "{} {:>8} {:>8} {:>12} {} {}",
                mode_string(node.node_type, node.mode),
                owner,
                group,
                node.size,
                node.mtime.format("%Y-%m-%d %H:%M:%S"),
                path
            )
        } else {
            path
        };
        match writeln!(stdout, "{line}") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(exit::SUCCESS),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(exit::SUCCESS)
}

fn mode_string(t: NodeType, mode: u32) -> String {
    let kind = match t {
        NodeType::Dir => 'd',
        NodeType::Symlink => 'l',
        NodeType::Fifo => 'p',
        NodeType::Socket => 's',
        NodeType::Chardev => 'c',
        NodeType::Dev => 'b',
        _ => '-',
    };
    let mut s = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

pub async fn verify(ctx: &Context, args: VerifyArgs) -> Result<u8> {
    let repo = ctx.open().await?;
    let (id, snapshot) = repo.find_snapshot(&args.snapshot).await?;
    let index = repo.load_index().await?;
    if let Some(url) = &args.against {
        return super::postgres::verify_against(ctx, &repo, &index, id, &snapshot, url, &args).await;
    }
    let progress = Arc::new(VerifyProgress::default());
    let p = progress.clone();
    let ticker = Ticker::start(ctx.progress, "verify", move || {
        (p.bytes_done.load(Ordering::Relaxed), p.bytes_total.load(Ordering::Relaxed), String::new())
    });
    let report = verify_snapshot(&repo, &index, &snapshot, progress).await?;
    ticker.finish();
    let detail = format!("{} blobs read; {} problems", report.blobs_read, report.problems.len());
    super::record_verification(ctx, &id, "verify", report.problems.is_empty(), &detail).await;
    if args.json || ctx.json_logs() {
        print_json(&serde_json::json!({
            "message": "verify complete",
            "snapshot": id.to_hex(),
            "ok": report.problems.is_empty(),
            "files": report.files,
            "dirs": report.dirs,
            "bytes": report.bytes,
            "blobs_read": report.blobs_read,
            "packs_read": report.packs_read,
            "problems": report.problems,
        }));
    } else {
        for p in &report.problems {
            eprintln!("damaged: {p}");
        }
        println!(
            "snapshot {}: {} files, {} dirs, {} — {} blobs from {} packs read and verified",
            id.short(),
            report.files,
            report.dirs,
            bytes(report.bytes),
            report.blobs_read,
            report.packs_read
        );
    }
    if report.problems.is_empty() {
        Ok(exit::SUCCESS)
    } else {
        Err(Damage(format!("snapshot {} has {} damaged or missing parts", id.short(), report.problems.len()))
            .into())
    }
}
