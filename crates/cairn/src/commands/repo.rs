//! Repository-wide commands: init, snapshots, check, stats, key, unlock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use cairn_crypto::KdfParams;
use cairn_repo::check::{CheckOptions, ReadData};
use cairn_repo::lock::remove_locks;
use cairn_repo::tree::NodeType;
use cairn_repo::{BlobType, Id, Repository};
use cairn_store::FileType;

use super::{locked, print_json};
use crate::cli::{CheckArgs, KeyAction, KeyArgs, SnapshotsArgs, StatsArgs, UnlockArgs};
use crate::context::Context;
use crate::exit;
use crate::output::{Ticker, bytes};

pub async fn init(ctx: &Context) -> Result<u8> {
    let backend = ctx.backend().await?;
    let password = ctx.init_password()?;
    if password.is_empty() {
        bail!("an empty password is not allowed");
    }
    let repo = Repository::init(backend, &password).await?;
    if ctx.json() {
        print_json(&serde_json::json!({
            "message": "repository created",
            "repository": repo.location(),
            "id": repo.config().id,
            "version": repo.config().version,
        }));
    } else {
        println!("created repository {} at {}", &repo.config().id[..10], repo.location());
        println!("keep the password safe: without it the data cannot be recovered");
    }
    Ok(exit::SUCCESS)
}

pub async fn snapshots(ctx: &Context, args: SnapshotsArgs) -> Result<u8> {
    if args.from_catalog {
        let Some(catalog) = super::catalog(ctx).await? else {
            anyhow::bail!(
                "--from-catalog needs a catalog: set catalog_table in cairn.yaml or CAIRN_CATALOG_TABLE"
            );
        };
        let entries: Vec<_> = catalog
            .snapshots(&ctx.location()?)
            .await?
            .into_iter()
            .filter(|e| args.filter.tags.iter().all(|t| e.tags.contains(t)))
            .filter(|e| args.filter.hosts.is_empty() || args.filter.hosts.contains(&e.hostname))
            .filter(|e| args.filter.sources.is_empty() || args.filter.sources.contains(&e.source_name))
            .collect();
        if ctx.json() {
            print_json(&serde_json::to_value(&entries)?);
        } else {
            for e in &entries {
                println!(
                    "{}  {}  {:<12} {:<8} {:>12}  {}  {}",
                    &e.snapshot[..8.min(e.snapshot.len())],
                    e.time,
                    e.hostname,
                    e.source_kind,
                    crate::output::bytes(e.size),
                    e.status,
                    e.paths.join(" ")
                );
            }
            println!("{} snapshots (from the catalog)", entries.len());
        }
        return Ok(exit::SUCCESS);
    }
    let repo = ctx.open().await?;
    let (all, damaged) = repo.snapshots().await?;
    for e in &damaged {
        tracing::error!("{e}");
    }
    let filter = args.filter.filter();
    let list: Vec<_> = all.into_iter().filter(|(_, s)| filter.matches(s)).collect();
    if ctx.json() {
        let items: Vec<_> = list
            .iter()
            .map(|(id, s)| {
                let (kind, mode) = cairn_repo::kind_and_mode(s);
                let mut v = serde_json::to_value(s).expect("snapshots serialise");
                v["id"] = serde_json::json!(id.to_hex());
                v["short_id"] = serde_json::json!(id.short());
                v["kind"] = serde_json::json!(kind);
                v["mode"] = serde_json::json!(mode);
                v["source"] = serde_json::json!(s.cairn.as_ref().and_then(|c| c.source_name.clone()));
                v
            })
            .collect();
        println!("{}", serde_json::to_string(&items)?);
    } else {
        println!(
            "{:<10} {:<20} {:<16} {:<14} {:<18} {:<16} {:>10}  Paths",
            "ID", "Time", "Host", "Source", "Kind", "Tags", "Size"
        );
        println!("{}", "-".repeat(120));
        for (id, s) in &list {
            let size = s.summary.as_ref().map(|x| bytes(x.total_bytes_processed)).unwrap_or_default();
            let (kind, mode) = if s.cairn.is_some() {
                cairn_repo::kind_and_mode(s)
            } else {
                ("restic".to_string(), String::new())
            };
            let name = s.cairn.as_ref().and_then(|c| c.source_name.clone()).unwrap_or_else(|| "-".into());
            println!(
                "{:<10} {:<20} {:<16} {:<14} {:<18} {:<16} {:>10}  {}",
                id.short(),
                s.time.format("%Y-%m-%d %H:%M:%S"),
                s.hostname,
                name,
                if mode.is_empty() { kind } else { format!("{kind}/{mode}") },
                s.tags.join(","),
                size,
                s.paths.join(", ")
            );
        }
        println!("{} snapshots", list.len());
    }
    Ok(if damaged.is_empty() { exit::SUCCESS } else { exit::DAMAGED })
}

fn parse_subset(s: &str) -> Result<f64> {
    let n: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| anyhow::anyhow!("--read-data-subset takes a percentage like 10%, not {s:?}"))?;
    if !(n > 0.0 && n <= 100.0) {
        bail!("--read-data-subset must be between 0% and 100%, not {s:?}");
    }
    Ok(n)
}

pub async fn check(ctx: &Context, args: CheckArgs) -> Result<u8> {
    let read_data = match (&args.read_data, &args.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some(s)) => ReadData::Subset(parse_subset(s)?),
        _ => ReadData::None,
    };
    let repo = ctx.open().await?;
    let done = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let (d, t) = (done.clone(), total.clone());
    let ticker = Ticker::start(ctx.progress && read_data != ReadData::None, "check", move || {
        let (d, t) = (d.load(Ordering::Relaxed), t.load(Ordering::Relaxed));
        (d, t, "packs".into())
    });
    let progress: cairn_repo::check::ProgressFn = Arc::new(move |d, t| {
        done.store(d, Ordering::Relaxed);
        total.store(t, Ordering::Relaxed);
    });
    let options = CheckOptions { read_data, ..Default::default() };
    let mut job = cairn_engine::JobReport::start("check");
    let checked = locked(ctx, &repo, false, async {
        Ok(ctx.stop.race(cairn_repo::check::check(&repo, &options, Some(progress))).await?)
    })
    .await;
    ticker.finish();
    let report = checked?;
    job.bytes.read = report.bytes_read;
    job.objects = [
        ("snapshots", report.snapshots as u64),
        ("index_files", report.index_files as u64),
        ("packs", report.packs as u64),
        ("trees", report.trees_checked as u64),
        ("packs_read", report.packs_read as u64),
        ("problems", report.problems.len() as u64),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    job.warnings = report.notes.clone();
    job.details = serde_json::json!({
        "ok": report.is_ok(),
        "problems": report.problems.iter().map(|p| serde_json::json!({
            "object": p.object, "message": p.message, "affected": p.affected,
        })).collect::<Vec<_>>(),
    });
    let mut text = Vec::new();
    job.errors.extend(report.problems.iter().map(|p| format!("damaged: {p}")));
    text.push(format!(
        "checked {} snapshots, {} index files, {} packs, {} trees; read {} packs ({})",
        report.snapshots,
        report.index_files,
        report.packs,
        report.trees_checked,
        report.packs_read,
        bytes(report.bytes_read)
    ));
    if report.is_ok() {
        text.push("no errors were found".into());
    } else {
        job.errors.push(format!(
            "check found {} problem(s); the first: {}",
            report.problems.len(),
            report.problems[0]
        ));
        job.exit_code = exit::DAMAGED;
    }
    job.summary = text.join("\n");
    Ok(super::print_report(ctx, &job.finish()).await)
}

pub async fn stats(ctx: &Context, args: StatsArgs) -> Result<u8> {
    let repo = ctx.open().await?;
    let index = repo.load_index().await?;
    let json = ctx.json();
    if let Some(spec) = args.snapshot {
        let (id, sn) = repo.select_snapshot(&spec, &args.filter.filter()).await?;
        let (mut files, mut dirs, mut size) = (0u64, 0u64, 0u64);
        let mut unique: HashSet<Id> = HashSet::new();
        let mut stack = vec![sn.tree];
        while let Some(t) = stack.pop() {
            for node in repo.load_tree(&index, &t).await?.nodes {
                match node.node_type {
                    NodeType::Dir => {
                        dirs += 1;
                        stack.extend(node.subtree);
                    }
                    NodeType::File => {
                        files += 1;
                        size += node.size;
                        unique.extend(node.content.unwrap_or_default());
                    }
                    _ => {}
                }
            }
        }
        let stored: u64 =
            unique.iter().filter_map(|b| index.get(b, BlobType::Data)).map(|l| l.length as u64).sum();
        if json {
            print_json(&serde_json::json!({"snapshot": id.to_hex(), "files": files, "dirs": dirs,
                "restore_size": size, "unique_blobs": unique.len(), "stored_size": stored}));
        } else {
            println!(
                "snapshot {}: {files} files, {dirs} dirs, restore size {}, {} blobs stored in {}",
                id.short(),
                bytes(size),
                unique.len(),
                bytes(stored)
            );
        }
        return Ok(exit::SUCCESS);
    }
    let snapshots = repo.list_ids(FileType::Snapshot).await?.len();
    let packs = repo.backend().list(FileType::Pack).await?;
    let pack_bytes: u64 = packs.iter().map(|p| p.size).sum();
    let mut counts: HashMap<BlobType, (u64, u64)> = HashMap::new();
    for (_, kind, loc) in index.iter() {
        let e = counts.entry(kind).or_default();
        e.0 += 1;
        e.1 += loc.plaintext_len() as u64;
    }
    let (data_blobs, data_bytes) = counts.get(&BlobType::Data).copied().unwrap_or_default();
    let (tree_blobs, tree_bytes) = counts.get(&BlobType::Tree).copied().unwrap_or_default();
    let ratio = if pack_bytes > 0 { (data_bytes + tree_bytes) as f64 / pack_bytes as f64 } else { 0.0 };
    if json {
        print_json(
            &serde_json::json!({"snapshots": snapshots, "packs": packs.len(), "stored_bytes": pack_bytes,
            "data_blobs": data_blobs, "tree_blobs": tree_blobs, "uncompressed_bytes": data_bytes + tree_bytes,
            "compression_ratio": ratio, "repository_version": repo.config().version}),
        );
    } else {
        println!("repository {} (format version {})", repo.location(), repo.config().version);
        println!("  snapshots:          {snapshots}");
        println!("  packs:              {} ({})", packs.len(), bytes(pack_bytes));
        println!("  blobs:              {data_blobs} data, {tree_blobs} tree");
        println!("  unique data:        {}", bytes(data_bytes + tree_bytes));
        println!("  compression ratio:  {ratio:.2}x");
    }
    Ok(exit::SUCCESS)
}

pub async fn key(ctx: &Context, args: KeyArgs) -> Result<u8> {
    let mut repo = ctx.open().await?;
    match args.action {
        KeyAction::List => {
            let keys = repo.keys().await?;
            if ctx.json() {
                let v: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({"id": k.id.to_hex(), "current": k.current, "username": k.username,
                        "hostname": k.hostname, "created": k.created})
                    })
                    .collect();
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!(" {:<10} {:<12} {:<16} Created", "ID", "User", "Host");
                for k in keys {
                    println!(
                        "{}{:<10} {:<12} {:<16} {}",
                        if k.current { "*" } else { " " },
                        k.id.short(),
                        k.username,
                        k.hostname,
                        k.created.format("%Y-%m-%d %H:%M:%S")
                    );
                }
            }
        }
        KeyAction::Add(a) => {
            let pw = ctx.new_password(a.new_password_file.as_ref(), "CAIRN_NEW_PASSWORD")?;
            let id = repo.add_key(&pw, KdfParams::DEFAULT).await?;
            println!("added key {}", id.short());
        }
        KeyAction::Remove { id } => {
            let keys = repo.keys().await?;
            let matches: Vec<_> =
                keys.iter().filter(|k| k.id.to_hex().starts_with(&id.to_ascii_lowercase())).collect();
            let key = match matches.as_slice() {
                [k] => k.id,
                [] => bail!("no key matches {id:?}; run `cairn key list`"),
                _ => bail!("key prefix {id:?} is ambiguous; give more digits"),
            };
            locked(ctx, &repo, true, async { Ok(repo.remove_key(&key).await?) }).await?;
            println!("removed key {} (revocation recorded in cairn/revoked-keys/)", key.short());
        }
        KeyAction::Passwd(a) => {
            let pw = ctx.new_password(a.new_password_file.as_ref(), "CAIRN_NEW_PASSWORD")?;
            let new_key = locked(ctx, &repo.clone(), true, async {
                Ok(repo.change_password(&pw, KdfParams::DEFAULT).await?)
            })
            .await?;
            println!("password changed (new key {})", new_key.short());
        }
    }
    Ok(exit::SUCCESS)
}

pub async fn unlock(ctx: &Context, args: UnlockArgs) -> Result<u8> {
    let repo = ctx.open().await?;
    let n = remove_locks(&repo, args.remove_all).await?;
    println!("removed {n} {}lock(s)", if args.remove_all { "" } else { "stale " });
    Ok(exit::SUCCESS)
}

/// `cairn catalog rebuild`: the catalog's snapshot items, recreated from the repository.
pub async fn catalog(ctx: &Context, args: crate::cli::CatalogArgs) -> Result<u8> {
    let crate::cli::CatalogAction::Rebuild = args.action;
    let Some(catalog) = super::catalog(ctx).await? else {
        anyhow::bail!("no catalog configured: set catalog_table in cairn.yaml or CAIRN_CATALOG_TABLE");
    };
    let repo = ctx.open().await?;
    let location = ctx.location()?;
    let (all, damaged) = repo.snapshots().await?;
    let removed = catalog.clear_snapshots(&location).await?;
    for (id, snap) in &all {
        catalog.put_snapshot(&cairn_engine::catalog_entry(&location, id, snap)).await?;
    }
    if ctx.json() {
        print_json(&serde_json::json!({
            "message": "catalog rebuilt",
            "removed": removed,
            "written": all.len(),
            "unreadable_snapshots": damaged.len(),
        }));
    } else {
        println!("catalog rebuilt: {} snapshot items written ({removed} old ones removed)", all.len());
        for e in &damaged {
            eprintln!("warning: not catalogued: {e}");
        }
    }
    Ok(exit::SUCCESS)
}
