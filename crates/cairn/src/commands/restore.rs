//! `cairn restore`, `cairn ls`, `cairn verify`: reading snapshots back.
//! Restore and verify are engine jobs; the snapshot's kind picks the adapter.

use std::io::Write;

use anyhow::Result;
use cairn_engine::{RestoreRequest, VerifyRequest};
use cairn_repo::tree::NodeType;
use cairn_source::Overwrite;

use super::print_report;
use crate::cli::{LsArgs, OverwriteArg, RestoreArgs, VerifyArgs};
use crate::context::Context;
use crate::exit;
use crate::output::Ticker;

pub async fn restore(ctx: &Context, args: RestoreArgs, matches: &clap::ArgMatches) -> Result<u8> {
    let settings = adapter_settings(ctx, matches)?;
    let request = cairn_source::RestoreRequest {
        target: args.to.clone(),
        paths: args.paths.clone(),
        overwrite: match args.overwrite {
            OverwriteArg::Never => Overwrite::Never,
            OverwriteArg::IfChanged => Overwrite::IfChanged,
            OverwriteArg::Always => Overwrite::Always,
        },
        dry_run: args.dry_run,
        verify: args.verify,
        jobs: args.jobs.max(1),
        fsync: !args.no_fsync,
        start: args.start,
        port: args.port,
    };
    let engine = ctx.engine()?;
    let ticker = Ticker::job(ctx.progress && !args.dry_run, "restore", engine.progress());
    let report = engine
        .restore(RestoreRequest {
            snapshot: args.snapshot.clone(),
            filter: args.filter.filter(),
            request,
            settings,
        })
        .await;
    ticker.finish();
    Ok(print_report(ctx, &report).await)
}

/// Every adapter's `cairn restore`/`verify` flags, by kind.
fn adapter_settings(
    ctx: &Context,
    matches: &clap::ArgMatches,
) -> Result<Vec<(String, Box<dyn cairn_source::AnySettings>)>> {
    ctx.registry
        .iter()
        .map(|s| Ok((s.descriptor().kind.to_string(), s.restore_settings_from_args(matches)?)))
        .collect()
}

pub async fn ls(ctx: &Context, args: LsArgs) -> Result<u8> {
    let repo = ctx.open().await?;
    let (_, snapshot) = repo.select_snapshot(&args.snapshot, &args.filter.filter()).await?;
    let index = repo.load_index().await?;
    let filter = args.path.as_ref().map(|p| {
        if p.starts_with('/') || snapshot.paths.len() != 1 {
            format!("/{}", p.trim_matches('/'))
        } else {
            format!("{}/{}", snapshot.paths[0].trim_end_matches('/'), p.trim_matches('/'))
        }
    });
    // Streamed in path order without holding the listing: a directory's
    // entries and subtrees are sorted by name, a subtree's key being its
    // name and a slash, which is where its paths fall among its siblings
    // (`a` < `a.txt` < `a/…`); the walk holds one directory's entries per
    // level, not the snapshot's.
    enum Unit {
        Entry(String, Box<cairn_repo::tree::Node>),
        Subtree(cairn_repo::Id, String),
    }
    let units = |tree: cairn_repo::tree::Tree, path: &str| -> Vec<Unit> {
        let mut keyed = Vec::new();
        for node in tree.nodes {
            let name = node.name_lossy();
            let child = format!("{path}/{name}");
            let relevant = match &filter {
                None => true,
                Some(f) => {
                    child == *f || child.starts_with(&format!("{f}/")) || f.starts_with(&format!("{child}/"))
                }
            };
            if !relevant {
                continue;
            }
            if let (NodeType::Dir, Some(sub)) = (node.node_type, node.subtree) {
                keyed.push((format!("{name}/"), Unit::Subtree(sub, child.clone())));
            }
            let shown = filter.as_ref().is_none_or(|f| child == *f || child.starts_with(&format!("{f}/")));
            if shown {
                keyed.push((name, Unit::Entry(child, Box::new(node))));
            }
        }
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        keyed.into_iter().map(|(_, u)| u).collect()
    };
    let mut matched = filter.is_none();
    // `cairn ls … | head` closes the pipe early: that ends the listing, quietly.
    // Buffered (a line per file), and Send: the walk awaits between lines.
    let mut stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
    let root = repo.load_tree(&index, &snapshot.tree).await?;
    let mut stack = vec![units(root, "").into_iter()];
    while let Some(level) = stack.last_mut() {
        let Some(unit) = level.next() else {
            stack.pop();
            continue;
        };
        let (path, node) = match unit {
            Unit::Subtree(sub, path) => {
                let tree = repo.load_tree(&index, &sub).await?;
                stack.push(units(tree, &path).into_iter());
                continue;
            }
            Unit::Entry(path, node) => (path, node),
        };
        matched = true;
        let line = if ctx.json() {
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
    match stdout.flush() {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(exit::SUCCESS),
        Err(e) => return Err(e.into()),
    }
    if !matched {
        anyhow::bail!("path {:?} is not in snapshot {}", args.path.unwrap_or_default(), args.snapshot);
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

pub async fn verify(ctx: &Context, args: VerifyArgs, matches: &clap::ArgMatches) -> Result<u8> {
    let settings = adapter_settings(ctx, matches)?;
    let engine = ctx.engine()?;
    let ticker = Ticker::job(ctx.progress, "verify", engine.progress());
    let report = engine
        .verify(VerifyRequest {
            snapshot: args.snapshot.clone(),
            filter: args.filter.filter(),
            against: args.against.clone(),
            settings,
            read_data: true,
        })
        .await;
    ticker.finish();
    Ok(print_report(ctx, &report).await)
}
