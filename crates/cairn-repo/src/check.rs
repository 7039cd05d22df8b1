//! `check`: proves the repository is whole, and says what is affected when
//! it is not.
//!
//! Levels:
//! 1. **Structure** (always): every snapshot and index file decrypts and
//!    matches its SHA-256 name; every pack an index names exists with the
//!    size its blobs imply; every tree reachable from a snapshot loads, and
//!    every blob it references is in the index.
//! 2. **Data** (`read_data`): every pack (or a random subset) is read in
//!    full: its SHA-256 must match its name, its header must agree with the
//!    index, and every blob must decrypt and hash to its id.
//!
//! When something is damaged, a final pass walks the snapshots again and
//! names the snapshots and files that reference the damaged objects.
//!
//! Packs no index mentions are reported as notes, not errors: a running or
//! killed backup leaves them, and they are harmless.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cairn_store::{FileType, Handle};
use futures::StreamExt;

use crate::error::{RepoError, Result};
use crate::format::{BlobType, IndexBlob, Snapshot};
use crate::id::Id;
use crate::index::{BlobLocation, Index};
use crate::pack::{expected_pack_size, parse_pack};
use crate::repository::{Repository, decode_blob};
use crate::tree::NodeType;

/// How much pack data to read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    None,
    All,
    /// A random share of packs, in percent (0 < p <= 100).
    Subset(f64),
}

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub read_data: ReadData,
    /// Packs read in parallel.
    pub concurrency: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { read_data: ReadData::None, concurrency: 4 }
    }
}

/// One problem found, with what it breaks.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The damaged or missing object, as a repository path.
    pub object: String,
    pub message: String,
    /// `snapshot <short id>: <path>` for every file or directory affected.
    pub affected: Vec<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)?;
        if !self.affected.is_empty() {
            write!(f, " (affects {})", self.affected.join(", "))?;
        }
        Ok(())
    }
}

/// The outcome of a check.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub problems: Vec<Problem>,
    /// Harmless findings (orphaned packs).
    pub notes: Vec<String>,
    pub snapshots: usize,
    pub index_files: usize,
    pub packs: usize,
    pub trees_checked: usize,
    pub packs_read: usize,
    pub bytes_read: u64,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Progress callback: (packs read so far, packs to read).
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

fn pack_path(id: &Id) -> String {
    Handle::new(FileType::Pack, id.to_hex()).path()
}

/// Runs a check. Errors are returned only when the check itself cannot run
/// (backend unreachable); damage goes into the report.
pub async fn check(
    repo: &Repository,
    opts: &CheckOptions,
    progress: Option<ProgressFn>,
) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    // Snapshots first, then indexes: a snapshot written meanwhile has its
    // index written before it, so we never see a snapshot without its index.
    let (snapshots, snap_errors) = repo.snapshots().await?;
    report.snapshots = snapshots.len();
    for e in snap_errors {
        report.problems.push(problem_from(e));
    }
    let (files, index_errors) = repo.load_index_files().await?;
    report.index_files = files.len();
    for e in index_errors {
        report.problems.push(Problem {
            object: object_of(&e),
            message: format!(
                "{} — blobs listed only there are unreachable until `cairn repair index` rebuilds it",
                message_of(&e)
            ),
            affected: vec![],
        });
    }
    let mut index = Index::new();
    let mut pack_blobs: HashMap<Id, Vec<IndexBlob>> = HashMap::new();
    for (id, file) in files {
        index.add_file(id, &file);
        for p in file.packs {
            pack_blobs.entry(p.id).or_default().extend(p.blobs);
        }
    }
    for blobs in pack_blobs.values_mut() {
        dedup_first_seen(blobs);
    }

    // Packs: present, and of the size their index entries imply.
    let stored: HashMap<Id, u64> = repo
        .backend()
        .list(FileType::Pack)
        .await?
        .into_iter()
        .filter_map(|o| o.name.parse::<Id>().ok().map(|id| (id, o.size)))
        .collect();
    report.packs = pack_blobs.len();
    let mut missing_packs = HashSet::new();
    let mut bad_blobs: HashMap<(Id, BlobType), String> = HashMap::new();
    for (pack, blobs) in &pack_blobs {
        match stored.get(pack) {
            None => {
                missing_packs.insert(*pack);
                report.problems.push(Problem {
                    object: pack_path(pack),
                    message: "pack is listed in the index but missing from the repository".into(),
                    affected: vec![],
                });
                for b in blobs {
                    bad_blobs.insert((b.id, b.kind), pack_path(pack));
                }
            }
            Some(&size) => {
                let expected =
                    expected_pack_size(blobs.iter().map(|b| (b.length, b.uncompressed_length != 0)));
                if size != expected {
                    report.problems.push(Problem {
                        object: pack_path(pack),
                        message: format!("pack is {size} bytes, its index entries imply {expected}"),
                        affected: vec![],
                    });
                }
            }
        }
    }
    let mut orphans: Vec<_> = stored.keys().filter(|p| !pack_blobs.contains_key(p)).collect();
    orphans.sort();
    for p in orphans {
        report.notes.push(format!(
            "{} is not referenced by any index (left by an interrupted or still-running backup; harmless)",
            pack_path(p)
        ));
    }

    // Structure: every reachable tree loads and every referenced blob is indexed.
    let mut seen_trees = HashSet::new();
    let mut structure_problems = Vec::new();
    for (sid, sn) in &snapshots {
        walk_snapshot(repo, &index, sid, sn, &mut seen_trees, &mut |ev| match ev {
            WalkEvent::TreeError { path, tree, error } => {
                structure_problems.push(Problem {
                    object: format!("tree {}", tree.short()),
                    message: message_of(&error),
                    affected: vec![format!("snapshot {}: {}", sid.short(), path)],
                });
            }
            WalkEvent::File { path, content } => {
                for blob in content {
                    if !index.contains(blob, BlobType::Data) {
                        structure_problems.push(Problem {
                            object: format!("data blob {}", blob.short()),
                            message: "referenced but not in any index".into(),
                            affected: vec![format!("snapshot {}: {}", sid.short(), path)],
                        });
                    }
                }
            }
        })
        .await;
    }
    report.trees_checked = seen_trees.len();
    report.problems.extend(structure_problems);

    // Data.
    let mut to_read: Vec<Id> = pack_blobs.keys().filter(|p| !missing_packs.contains(p)).copied().collect();
    to_read.sort();
    match opts.read_data {
        ReadData::None => to_read.clear(),
        ReadData::All => {}
        ReadData::Subset(pct) => {
            use rand::seq::SliceRandom;
            let n = ((to_read.len() as f64) * pct / 100.0).ceil() as usize;
            to_read.shuffle(&mut rand::thread_rng());
            to_read.truncate(n.min(to_read.len()));
        }
    }
    let total = to_read.len() as u64;
    let pack_blobs = Arc::new(pack_blobs);
    let mut results = futures::stream::iter(to_read)
        .map(|pack| {
            let repo = repo.clone();
            let pack_blobs = pack_blobs.clone();
            async move {
                let handle = Handle::new(FileType::Pack, pack.to_hex());
                let bytes = repo.backend().get(&handle, None).await;
                let bytes = match bytes {
                    Ok(b) => b,
                    Err(e) => return (pack, 0, Err(RepoError::from(e))),
                };
                let len = bytes.len() as u64;
                let key = repo.key().clone();
                let verified = tokio::task::spawn_blocking(move || {
                    verify_pack(&key, &pack, &bytes, pack_blobs.get(&pack).map(Vec::as_slice).unwrap_or(&[]))
                })
                .await
                .expect("pack verification panicked");
                (pack, len, Ok(verified))
            }
        })
        .buffer_unordered(opts.concurrency.max(1));
    let mut done = 0u64;
    while let Some((pack, len, result)) = results.next().await {
        done += 1;
        report.packs_read += 1;
        report.bytes_read += len;
        if let Some(p) = &progress {
            p(done, total);
        }
        match result {
            Err(e) => report.problems.push(Problem {
                object: pack_path(&pack),
                message: message_of(&e),
                affected: vec![],
            }),
            Ok(v) => {
                for m in v.pack_messages {
                    report.problems.push(Problem { object: pack_path(&pack), message: m, affected: vec![] });
                }
                for (blob, kind, why) in v.bad_blobs {
                    bad_blobs
                        .insert((blob, kind), format!("{} (blob {}: {why})", pack_path(&pack), blob.short()));
                }
            }
        }
    }

    if !bad_blobs.is_empty() {
        attribute_damage(repo, &index, &snapshots, &bad_blobs, &mut report).await;
    }
    Ok(report)
}

/// Drops later entries for a blob (same id, same offset) already listed
/// for the pack, keeping the first one seen and the order of the rest:
/// overlapping index files list the same pack more than once. Sorting keeps
/// this O(n log n) where a pack holds hundreds of thousands of small blobs.
fn dedup_first_seen(blobs: &mut Vec<IndexBlob>) {
    if blobs.len() < 2 {
        return;
    }
    let mut order: Vec<usize> = (0..blobs.len()).collect();
    // Stable: among equal keys, the first seen comes first.
    order.sort_by_key(|&i| (blobs[i].offset, blobs[i].id));
    let mut keep = vec![true; blobs.len()];
    for pair in order.windows(2) {
        let (a, b) = (&blobs[pair[0]], &blobs[pair[1]]);
        if a.offset == b.offset && a.id == b.id {
            keep[pair[1]] = false;
        }
    }
    let mut i = 0;
    blobs.retain(|_| {
        i += 1;
        keep[i - 1]
    });
}

struct PackVerdict {
    pack_messages: Vec<String>,
    bad_blobs: Vec<(Id, BlobType, String)>,
}

fn verify_pack(key: &cairn_crypto::Key, pack: &Id, bytes: &[u8], indexed: &[IndexBlob]) -> PackVerdict {
    let mut v = PackVerdict { pack_messages: vec![], bad_blobs: vec![] };
    if Id::hash(bytes) != *pack {
        v.pack_messages.push("pack content does not match its SHA-256 name".into());
    }
    match parse_pack(key, bytes) {
        Err(e) => v.pack_messages.push(format!("pack header: {e}")),
        Ok(header) => {
            let in_header: HashSet<(Id, u32, u32)> =
                header.iter().map(|h| (h.id, h.offset, h.length)).collect();
            for b in indexed {
                if !in_header.contains(&(b.id, b.offset, b.length)) {
                    v.pack_messages
                        .push(format!("index lists blob {} that the pack header does not", b.id.short()));
                }
            }
        }
    }
    for b in indexed {
        let end = b.offset as usize + b.length as usize;
        let loc = BlobLocation {
            pack: *pack,
            offset: b.offset,
            length: b.length,
            uncompressed_length: b.uncompressed_length,
        };
        let result = match bytes.get(b.offset as usize..end) {
            Some(sealed) => decode_blob(key, sealed, &b.id, &loc).map(|_| ()),
            None => Err(RepoError::damaged(pack_path(pack), "blob lies past the end of the pack")),
        };
        if let Err(e) = result {
            let why = match &e {
                RepoError::Damaged { reason, .. } => reason.clone(),
                other => other.to_string(),
            };
            v.bad_blobs.push((b.id, b.kind, why));
        }
    }
    v
}

/// Walks all snapshots again and turns damaged blobs into problems naming
/// the files and directories that need them.
async fn attribute_damage(
    repo: &Repository,
    index: &Index,
    snapshots: &[(Id, Snapshot)],
    bad: &HashMap<(Id, BlobType), String>,
    report: &mut CheckReport,
) {
    let mut affected: HashMap<(Id, BlobType), Vec<String>> = HashMap::new();
    for (sid, sn) in snapshots {
        // Trees are revisited per snapshot so every snapshot is named.
        let mut seen = HashSet::new();
        let mut tree_paths: Vec<(Id, String)> = Vec::new();
        walk_snapshot_with_trees(repo, index, sid, sn, &mut seen, &mut tree_paths, &mut |ev| {
            if let WalkEvent::File { path, content } = ev {
                for blob in content {
                    if bad.contains_key(&(*blob, BlobType::Data)) {
                        affected
                            .entry((*blob, BlobType::Data))
                            .or_default()
                            .push(format!("snapshot {}: {path}", sid.short()));
                    }
                }
            }
        })
        .await;
        for (tree, path) in tree_paths {
            if bad.contains_key(&(tree, BlobType::Tree)) {
                affected
                    .entry((tree, BlobType::Tree))
                    .or_default()
                    .push(format!("snapshot {}: {path}/", sid.short()));
            }
        }
    }
    let mut keys: Vec<_> = bad.keys().collect();
    keys.sort();
    for key in keys {
        let mut who = affected.remove(key).unwrap_or_default();
        who.dedup();
        report.problems.push(Problem {
            object: bad[key].clone(),
            message: format!(
                "{} blob {} is damaged or missing{}",
                key.1.as_str(),
                key.0.short(),
                if who.is_empty() { " (no snapshot uses it)" } else { "" }
            ),
            affected: who,
        });
    }
}

enum WalkEvent<'a> {
    File { path: &'a str, content: &'a [Id] },
    TreeError { path: String, tree: Id, error: RepoError },
}

async fn walk_snapshot(
    repo: &Repository,
    index: &Index,
    sid: &Id,
    sn: &Snapshot,
    seen: &mut HashSet<Id>,
    visit: &mut (dyn FnMut(WalkEvent<'_>) + Send),
) {
    let mut ignored = Vec::new();
    walk_snapshot_with_trees(repo, index, sid, sn, seen, &mut ignored, visit).await
}

/// Depth-first walk over a snapshot's trees, skipping trees already in `seen`.
async fn walk_snapshot_with_trees(
    repo: &Repository,
    index: &Index,
    _sid: &Id,
    sn: &Snapshot,
    seen: &mut HashSet<Id>,
    tree_paths: &mut Vec<(Id, String)>,
    visit: &mut (dyn FnMut(WalkEvent<'_>) + Send),
) {
    let mut stack = vec![(sn.tree, String::new())];
    while let Some((tree_id, path)) = stack.pop() {
        tree_paths.push((tree_id, if path.is_empty() { "/".into() } else { path.clone() }));
        if !seen.insert(tree_id) {
            continue;
        }
        let tree = match repo.load_tree(index, &tree_id).await {
            Ok(t) => t,
            Err(error) => {
                visit(WalkEvent::TreeError {
                    path: if path.is_empty() { "/".into() } else { path },
                    tree: tree_id,
                    error,
                });
                continue;
            }
        };
        for node in &tree.nodes {
            let child = format!("{path}/{}", node.name_lossy());
            match node.node_type {
                NodeType::Dir => match node.subtree {
                    Some(sub) => stack.push((sub, child)),
                    None => visit(WalkEvent::TreeError {
                        path: child,
                        tree: tree_id,
                        error: RepoError::damaged(
                            format!("tree {}", tree_id.short()),
                            "directory node has no subtree",
                        ),
                    }),
                },
                NodeType::File => {
                    visit(WalkEvent::File { path: &child, content: node.content.as_deref().unwrap_or(&[]) })
                }
                _ => {}
            }
        }
    }
}

fn object_of(e: &RepoError) -> String {
    match e {
        RepoError::Damaged { path, .. } => path.clone(),
        other => other.to_string(),
    }
}

fn message_of(e: &RepoError) -> String {
    match e {
        RepoError::Damaged { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

fn problem_from(e: RepoError) -> Problem {
    Problem { object: object_of(&e), message: message_of(&e), affected: vec![] }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(seed: &[u8], offset: u32, length: u32) -> IndexBlob {
        IndexBlob { id: Id::hash(seed), kind: BlobType::Data, offset, length, uncompressed_length: 0 }
    }

    #[test]
    fn duplicates_go_and_the_first_seen_order_stays() {
        let mut blobs = vec![
            blob(b"c", 200, 10),
            blob(b"a", 0, 10),
            blob(b"c", 200, 99), // same blob at the same place again: the first one wins
            blob(b"b", 100, 10),
            blob(b"a", 0, 10),
            blob(b"a", 300, 10), // the same id elsewhere in the pack is another entry
            blob(b"c", 200, 10),
        ];
        dedup_first_seen(&mut blobs);
        assert_eq!(
            blobs,
            vec![blob(b"c", 200, 10), blob(b"a", 0, 10), blob(b"b", 100, 10), blob(b"a", 300, 10)]
        );
        let mut one = vec![blob(b"x", 0, 1)];
        dedup_first_seen(&mut one);
        assert_eq!(one.len(), 1);
    }
}
