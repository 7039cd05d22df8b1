//! `verify SNAPSHOT`: read back every byte one snapshot needs and prove it.
//!
//! Unlike `check --read-data`, which proves every pack of the repository,
//! this reads only the blobs one snapshot references (grouped by pack, one
//! ranged read per pack), verifies each against its SHA-256 id, and checks
//! that every file's blobs add up to its recorded size. It is what a
//! restore would read, minus the writing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_store::{FileType, Handle};
use futures::StreamExt;

use crate::error::{RepoError, Result};
use crate::format::{BlobType, Snapshot};
use crate::id::Id;
use crate::index::{BlobLocation, Index};
use crate::repository::{Repository, decode_blob};
use crate::tree::NodeType;

/// Outcome of verifying one snapshot.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub blobs_read: u64,
    pub packs_read: u64,
    /// One line per problem, naming the file affected.
    pub problems: Vec<String>,
}

/// Live counters.
#[derive(Debug, Default)]
pub struct VerifyProgress {
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
}

/// Verifies every tree and data blob `snapshot` references.
pub async fn verify_snapshot(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
    progress: Arc<VerifyProgress>,
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    // blob -> (location, first file needing it)
    let mut needed: HashMap<Id, (BlobLocation, String)> = HashMap::new();
    let mut seen_trees = HashSet::new();
    let mut stack = vec![(snapshot.tree, String::new())];
    while let Some((tree_id, path)) = stack.pop() {
        if !seen_trees.insert(tree_id) {
            continue;
        }
        let tree = match repo.load_tree(index, &tree_id).await {
            Ok(t) => t,
            Err(e) => {
                report.problems.push(format!("{}/: {e}", path));
                continue;
            }
        };
        for node in tree.nodes {
            let child = format!("{path}/{}", node.name_lossy());
            match node.node_type {
                NodeType::Dir => {
                    report.dirs += 1;
                    match node.subtree {
                        Some(sub) => stack.push((sub, child)),
                        None => report.problems.push(format!("{child}: directory without subtree")),
                    }
                }
                NodeType::File => {
                    report.files += 1;
                    let mut total = 0u64;
                    for blob in node.content.as_deref().unwrap_or(&[]) {
                        match index.get(blob, BlobType::Data) {
                            Some(loc) => {
                                total += loc.plaintext_len() as u64;
                                needed.entry(*blob).or_insert((loc, child.clone()));
                            }
                            None => report
                                .problems
                                .push(format!("{child}: data blob {} is not in the index", blob.short())),
                        }
                    }
                    if total != node.size
                        && node
                            .content
                            .as_ref()
                            .is_some_and(|c| c.iter().all(|b| index.contains(b, BlobType::Data)))
                    {
                        report
                            .problems
                            .push(format!("{child}: blobs hold {total} bytes, the file had {}", node.size));
                    }
                    report.bytes += node.size;
                }
                _ => {}
            }
        }
    }
    let mut by_pack: HashMap<Id, Vec<(Id, BlobLocation, String)>> = HashMap::new();
    for (id, (loc, file)) in needed {
        progress.bytes_total.fetch_add(loc.plaintext_len() as u64, Ordering::Relaxed);
        by_pack.entry(loc.pack).or_default().push((id, loc, file));
    }
    let key = repo.key().clone();
    let mut results = futures::stream::iter(by_pack)
        .map(|(pack, blobs)| {
            let key = key.clone();
            let progress = progress.clone();
            async move {
                let start = blobs.iter().map(|b| b.1.offset as u64).min().unwrap_or(0);
                let end = blobs.iter().map(|b| b.1.offset as u64 + b.1.length as u64).max().unwrap_or(0);
                let bytes =
                    repo.backend().get(&Handle::new(FileType::Pack, pack.to_hex()), Some(start..end)).await;
                let bytes = match bytes {
                    Ok(b) => b,
                    Err(e) => {
                        let files: Vec<_> = blobs.iter().map(|b| b.2.clone()).collect();
                        return (
                            blobs.len(),
                            vec![format!("{}: {e} (needed by {})", pack, files.join(", "))],
                        );
                    }
                };
                tokio::task::spawn_blocking(move || {
                    let mut problems = Vec::new();
                    for (id, loc, file) in &blobs {
                        let from = (loc.offset as u64 - start) as usize;
                        let sealed = &bytes[from..from + loc.length as usize];
                        if let Err(e) = decode_blob(&key, sealed, id, loc) {
                            let why = match e {
                                RepoError::Damaged { path, reason } => format!("{path}: {reason}"),
                                other => other.to_string(),
                            };
                            problems.push(format!("{file}: {why}"));
                        }
                        progress.bytes_done.fetch_add(loc.plaintext_len() as u64, Ordering::Relaxed);
                    }
                    (blobs.len(), problems)
                })
                .await
                .expect("blob verification panicked")
            }
        })
        .buffer_unordered(4);
    while let Some((n, problems)) = results.next().await {
        report.packs_read += 1;
        report.blobs_read += n as u64;
        report.problems.extend(problems);
    }
    Ok(report)
}
