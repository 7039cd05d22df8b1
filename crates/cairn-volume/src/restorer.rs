//! Restoring a snapshot into a directory.
//!
//! The restore is pack-oriented: all blobs needed from one pack are fetched
//! with one ranged read, then each is decrypted, decompressed and checked
//! against its SHA-256 id *before* it is written to every place that needs
//! it. Packs are processed in parallel.
//!
//! Files are assembled under a hidden temporary name
//! (`.cairn-restore-<pid>-<n>.part`) next to their final place and renamed
//! into place only when every byte has been written and verified, so a
//! failed or interrupted restore never leaves a half-written file where the
//! real one belongs (a failed run removes its `.part` files; a killed one
//! leaves only those). All-zero blocks are skipped rather than written, which
//! keeps sparse files sparse. Hard links within the restored set are
//! recreated as hard links.
//!
//! Durability (unless [`RestoreOptions::fsync`] is off): each file gets its
//! metadata (owner, mode, extended attributes, times) on the open staged
//! file and is fsynced there, by the worker thread that completed it,
//! *before* its rename, so after a crash a restored name never stands over
//! missing data — which `--overwrite if-changed`, trusting size and mtime,
//! would otherwise skip on the next run. When every entry is in place, each
//! directory the restore made or changed (the target, every restored
//! directory, and the parents of directories it created) gets its metadata
//! and an fsync, deepest first, before the restore returns. Symlinks and
//! special files cannot be fsynced; their entries become durable with their
//! directory's. Why per-file fsync and not one `syncfs` at the end: see
//! docs/DESIGN.md, section 7.
//!
//! Paths: a snapshot of a single directory restores *its contents* into the
//! target (`/srv/data/a/b` → `<target>/a/b`); snapshots of several paths
//! restore their full paths under the target, as restic does.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cairn_repo::index::BlobLocation;
use cairn_repo::tree::{Node, NodeType};
use cairn_repo::{BlobType, Id, Index, RepoError, Repository, Snapshot, decode_blob};
use cairn_store::{FileType, Handle, durable};

use crate::VolumeError;
use crate::meta::{apply_file_metadata, apply_metadata};

/// What to do about files that already exist in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Refuse to start if any file to restore already exists.
    #[default]
    Never,
    /// Skip files whose size and mtime already match; replace the rest.
    IfChanged,
    /// Replace every existing file.
    Always,
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub target: PathBuf,
    /// Paths inside the snapshot to restore (empty: everything).
    pub include: Vec<String>,
    pub overwrite: Overwrite,
    /// Plan only: report what would be restored, write nothing.
    pub dry_run: bool,
    /// Packs fetched and decoded at once.
    pub concurrency: usize,
    /// Subtrees written somewhere other than under `target`: each snapshot
    /// path (relative, e.g. `pg_tblspc/16390`) and the absolute directory
    /// that receives it (a PostgreSQL tablespace laid down where its
    /// server will look for it).
    pub relocate: Vec<(String, PathBuf)>,
    /// Snapshot paths (relative, like `include`) never written, with
    /// everything below them: a source's own bookkeeping inside a tree that
    /// is otherwise laid down whole (a base backup's `.cairn/`).
    pub exclude: Vec<String>,
    /// Make everything written durable before returning (see the module
    /// docs). Off only to trade crash safety for speed.
    pub fsync: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            target: PathBuf::new(),
            include: Vec::new(),
            overwrite: Overwrite::Never,
            dry_run: false,
            concurrency: num_cpus::get().max(2) * 2,
            relocate: Vec::new(),
            exclude: Vec::new(),
            fsync: true,
        }
    }
}

/// Live counters for progress display.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub cancel: AtomicBool,
}

/// What a restore did (or, for a dry run, would do).
#[derive(Debug, Clone, Default)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub other: u64,
    pub bytes: u64,
    pub skipped: u64,
    /// Metadata that could not be applied (ownership when not root, ...).
    pub warnings: Vec<String>,
    pub dry_run: bool,
}

/// Files restored together: their plans, and the blob locations they
/// need, are all a restore holds per file at any time, whatever the size
/// of the snapshot.
const BATCH_FILES: usize = 16_384;
/// Blob references per batch: bounds a batch of large files the same way.
const BATCH_BLOBS: usize = 65_536;
/// A unit of work reads at most this many blobs of one pack (or this span
/// of it), so the workers share even the one pack a batch of small files
/// may live in.
const JOB_BLOBS: usize = 1024;
const JOB_SPAN: u64 = 8 << 20;

/// Blobs needed from one stretch of a pack, by offset: location, and
/// (file, offset) targets.
type PackBlobs = Vec<(Id, BlobLocation, Vec<(usize, u64)>)>;

struct FilePlan {
    rel: PathBuf,
    node: Node,
    remaining: AtomicUsize,
    /// The staged file is created by whichever worker writes to it first.
    created: std::sync::Once,
}

impl FilePlan {
    fn new(rel: PathBuf, node: Node) -> FilePlan {
        FilePlan { rel, node, remaining: AtomicUsize::new(0), created: std::sync::Once::new() }
    }
}

/// One entry of a restore, in walk order.
enum Planned {
    Dir(PathBuf, Node),
    File(PathBuf, Node),
    /// A further name of a file already planned: (name, first name, node).
    Hardlink(PathBuf, PathBuf, Node),
    Other(PathBuf, Node),
}

fn rel_components(p: &str) -> Vec<Vec<u8>> {
    p.split('/').filter(|c| !c.is_empty() && *c != ".").map(|c| c.as_bytes().to_vec()).collect()
}

/// Where the restore starts: the tree to restore, and the node itself when
/// the snapshot holds a single file.
enum Base {
    Tree(Id),
    Single(Box<Node>),
}

async fn find_base(repo: &Repository, index: &Index, snapshot: &Snapshot) -> Result<Base, VolumeError> {
    if snapshot.paths.len() != 1 {
        return Ok(Base::Tree(snapshot.tree));
    }
    let mut tree_id = snapshot.tree;
    let comps = rel_components(&snapshot.paths[0]);
    for (i, comp) in comps.iter().enumerate() {
        let tree = repo.load_tree(index, &tree_id).await?;
        let Some(node) = tree.nodes.into_iter().find(|n| &n.name == comp) else {
            return Ok(Base::Tree(snapshot.tree));
        };
        match (node.node_type, node.subtree) {
            (NodeType::Dir, Some(sub)) => tree_id = sub,
            _ if i + 1 == comps.len() => return Ok(Base::Single(Box::new(node))),
            _ => return Ok(Base::Tree(snapshot.tree)),
        }
    }
    Ok(Base::Tree(tree_id))
}

/// Relation of a path to the include list.
fn include_state(rel: &[Vec<u8>], includes: &[Vec<Vec<u8>>]) -> (bool, bool) {
    if includes.is_empty() {
        return (true, true);
    }
    let inside = includes.iter().any(|inc| rel.len() >= inc.len() && rel[..inc.len()] == inc[..]);
    let ancestor = includes.iter().any(|inc| inc.len() > rel.len() && inc[..rel.len()] == rel[..]);
    (inside, inside || ancestor)
}

/// The entries a restore writes, pulled one at a time from a depth-first
/// walk of the snapshot's trees: it holds one tree's nodes and the
/// directories still to visit, never the whole snapshot, so a restore's
/// memory does not grow with its file count. The walk is deterministic:
/// a restore walks twice (decide, then write) and sees the same entries.
struct PlanWalk<'a> {
    repo: &'a Repository,
    index: &'a Index,
    includes: Vec<Vec<Vec<u8>>>,
    relocations: Vec<(Vec<Vec<u8>>, PathBuf)>,
    excluded: Vec<Vec<Vec<u8>>>,
    matched: Vec<bool>,
    /// First name of every multiply-linked file seen.
    seen_inodes: HashMap<(u64, u64), PathBuf>,
    single: Option<Box<Node>>,
    stack: Vec<(Id, Vec<Vec<u8>>)>,
    current: Option<(std::vec::IntoIter<Node>, Vec<Vec<u8>>)>,
}

impl<'a> PlanWalk<'a> {
    async fn new(
        repo: &'a Repository,
        index: &'a Index,
        snapshot: &Snapshot,
        opts: &RestoreOptions,
    ) -> Result<PlanWalk<'a>, VolumeError> {
        let base = find_base(repo, index, snapshot).await?;
        let prefix = snapshot.paths.first().cloned().unwrap_or_default();
        let includes: Vec<Vec<Vec<u8>>> = opts
            .include
            .iter()
            .map(|p| {
                let stripped =
                    if snapshot.paths.len() == 1 && p.starts_with(&prefix) { &p[prefix.len()..] } else { p };
                rel_components(stripped)
            })
            .collect();
        let (single, stack) = match base {
            Base::Single(node) => (Some(node), vec![]),
            Base::Tree(id) => (None, vec![(id, vec![])]),
        };
        Ok(PlanWalk {
            repo,
            index,
            matched: vec![false; includes.len()],
            includes,
            relocations: opts.relocate.iter().map(|(from, to)| (rel_components(from), to.clone())).collect(),
            excluded: opts.exclude.iter().map(|p| rel_components(p)).collect(),
            seen_inodes: HashMap::new(),
            single,
            stack,
            current: None,
        })
    }

    /// The next entry, or `None` when the walk is over.
    async fn next(&mut self) -> Result<Option<Planned>, VolumeError> {
        loop {
            if let Some(node) = self.single.take() {
                let name = node.name.clone();
                if let (_, Some(item)) = self.place(vec![name], *node) {
                    return Ok(Some(item));
                }
                continue;
            }
            if let Some((mut nodes, rel)) = self.current.take() {
                let Some(node) = nodes.next() else { continue };
                let mut child = rel.clone();
                child.push(node.name.clone());
                self.current = Some((nodes, rel));
                let subtree = node.subtree;
                let (descend, item) = self.place(child.clone(), node);
                if descend && let Some(sub) = subtree {
                    self.stack.push((sub, child));
                }
                match item {
                    Some(item) => return Ok(Some(item)),
                    None => continue,
                }
            }
            let Some((tree_id, rel)) = self.stack.pop() else { return Ok(None) };
            let tree = self.repo.load_tree(self.index, &tree_id).await?;
            self.current = Some((tree.nodes.into_iter(), rel));
        }
    }

    /// Decides what becomes of one node: whether to descend into it, and
    /// the entry it makes, if any.
    fn place(&mut self, rel_c: Vec<Vec<u8>>, node: Node) -> (bool, Option<Planned>) {
        let (inside, wanted) = include_state(&rel_c, &self.includes);
        for (i, inc) in self.includes.iter().enumerate() {
            if rel_c.len() >= inc.len() && rel_c[..inc.len()] == inc[..] {
                self.matched[i] = true;
            }
        }
        if !wanted || self.excluded.iter().any(|x| rel_c.len() >= x.len() && rel_c[..x.len()] == x[..]) {
            return (false, None);
        }
        // A relocated path is absolute, and `target.join` of an absolute path is that path.
        let relocated = self
            .relocations
            .iter()
            .find(|(from, _)| rel_c.len() >= from.len() && rel_c[..from.len()] == from[..]);
        let rel: PathBuf = match relocated {
            Some((from, to)) => {
                to.iter().chain(rel_c[from.len()..].iter().map(|c| OsStr::from_bytes(c))).collect()
            }
            None => rel_c.iter().map(|c| OsStr::from_bytes(c)).collect(),
        };
        match node.node_type {
            NodeType::Dir => (true, Some(Planned::Dir(rel, node))),
            _ if !inside => (false, None),
            NodeType::File => {
                if node.links > 1 && node.inode != 0 {
                    if let Some(first) = self.seen_inodes.get(&(node.device_id, node.inode)) {
                        return (false, Some(Planned::Hardlink(rel, first.clone(), node)));
                    }
                    self.seen_inodes.insert((node.device_id, node.inode), rel.clone());
                }
                (false, Some(Planned::File(rel, node)))
            }
            _ => (false, Some(Planned::Other(rel, node))),
        }
    }

    /// After the last entry: an include that matched nothing is an error.
    fn finish(&self, opts: &RestoreOptions) -> Result<(), VolumeError> {
        match self.matched.iter().position(|m| !m) {
            Some(i) => Err(VolumeError::PathNotInSnapshot { path: opts.include[i].clone() }),
            None => Ok(()),
        }
    }
}

/// The files a restore with `include` would write, where (relative to the
/// target) and with what content: what comparing a directory with the
/// snapshot walks.
pub(crate) async fn planned_files(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
    include: &[String],
) -> Result<Vec<(PathBuf, Node)>, VolumeError> {
    let opts = RestoreOptions { include: include.to_vec(), ..RestoreOptions::default() };
    let mut walk = PlanWalk::new(repo, index, snapshot, &opts).await?;
    let (mut files, mut links) = (Vec::new(), Vec::new());
    while let Some(item) = walk.next().await? {
        match item {
            Planned::File(rel, node) => files.push((rel, node)),
            Planned::Hardlink(rel, _, node) => links.push((rel, node)),
            Planned::Dir(..) | Planned::Other(..) => {}
        }
    }
    walk.finish(&opts)?;
    files.extend(links);
    Ok(files)
}

/// What to do with a file about to be restored, given what is at its place.
#[derive(PartialEq)]
enum Existing {
    Write,
    Skip,
    Conflict,
}

fn existing(dest: &Path, node: &Node, overwrite: Overwrite) -> Existing {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dest) else { return Existing::Write };
    match overwrite {
        Overwrite::Never => Existing::Conflict,
        Overwrite::IfChanged
            if meta.is_file()
                && meta.size() == node.size
                && meta.mtime() == node.mtime.timestamp()
                && meta.mtime_nsec() == node.mtime.timestamp_subsec_nanos() as i64 =>
        {
            Existing::Skip
        }
        Overwrite::IfChanged | Overwrite::Always => Existing::Write,
    }
}

/// What the first pass keeps: everything but the files themselves, which
/// the second pass streams through in batches.
struct Plan {
    dirs: Vec<(PathBuf, Node)>,
    hardlinks: Vec<(PathBuf, PathBuf, Node)>,
    others: Vec<(PathBuf, Node)>,
}

/// Restores `snapshot` according to `opts`.
///
/// Two walks of the snapshot: the first decides everything that must be
/// known before anything is written (includes present, no conflicts, every
/// blob indexed, totals for progress) and keeps only directories, links and
/// special files; the second restores the files in batches of
/// [`BATCH_FILES`], freeing each batch's state when it is done.
pub async fn restore(
    repo: &Repository,
    index: Arc<Index>,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
    progress: Arc<RestoreProgress>,
) -> Result<RestoreSummary, VolumeError> {
    let target = &opts.target;
    let mut summary = RestoreSummary { dry_run: opts.dry_run, ..Default::default() };
    let mut plan = Plan { dirs: vec![], hardlinks: vec![], others: vec![] };
    // Overwrite policy, decided before anything is written: the first
    // conflicting file (else link or special file) is the example named.
    let mut conflicts = 0usize;
    let (mut first_file_conflict, mut first_other_conflict) = (None, None);
    let mut conflict = |rel: &Path, is_file: bool| {
        conflicts += 1;
        let slot = if is_file { &mut first_file_conflict } else { &mut first_other_conflict };
        slot.get_or_insert_with(|| rel.display().to_string());
    };
    let mut unindexed = None;
    let mut walk = PlanWalk::new(repo, &index, snapshot, opts).await?;
    while let Some(item) = walk.next().await? {
        match item {
            Planned::Dir(rel, node) => plan.dirs.push((rel, node)),
            Planned::File(rel, node) => match existing(&target.join(&rel), &node, opts.overwrite) {
                Existing::Conflict => conflict(&rel, true),
                Existing::Skip => summary.skipped += 1,
                Existing::Write => {
                    summary.files += 1;
                    summary.bytes += node.size;
                    let content = node.content.as_deref().unwrap_or(&[]);
                    if unindexed.is_none()
                        && let Some(blob) = content.iter().find(|b| !index.contains(b, BlobType::Data))
                    {
                        unindexed = Some(not_indexed(blob, &rel));
                    }
                }
            },
            Planned::Hardlink(rel, first, node) => {
                if opts.overwrite == Overwrite::Never && std::fs::symlink_metadata(target.join(&rel)).is_ok()
                {
                    conflict(&rel, false);
                }
                plan.hardlinks.push((rel, first, node));
            }
            Planned::Other(rel, node) => {
                if opts.overwrite == Overwrite::Never && std::fs::symlink_metadata(target.join(&rel)).is_ok()
                {
                    conflict(&rel, false);
                }
                plan.others.push((rel, node));
            }
        }
    }
    walk.finish(opts)?;
    if let Some(example) = first_file_conflict.or(first_other_conflict) {
        return Err(VolumeError::TargetNotEmpty { target: target.clone(), count: conflicts, example });
    }
    tracing::debug!(files = summary.files, dirs = plan.dirs.len(), "restore: plan ready");

    summary.files += plan.hardlinks.len() as u64;
    summary.dirs = plan.dirs.len() as u64;
    summary.links = plan.others.iter().filter(|(_, n)| n.node_type == NodeType::Symlink).count() as u64;
    summary.other = plan.others.len() as u64 - summary.links;
    progress.files_total.store(summary.files, Ordering::Relaxed);
    progress.bytes_total.store(summary.bytes, Ordering::Relaxed);
    if opts.dry_run {
        return Ok(summary);
    }
    if let Some(e) = unindexed {
        return Err(e);
    }
    restore_into(repo, &index, snapshot, &plan, opts, &progress, &mut summary).await?;
    Ok(summary)
}

fn not_indexed(blob: &Id, rel: &Path) -> VolumeError {
    VolumeError::Repo(RepoError::Damaged {
        path: format!("data blob {}", blob.short()),
        reason: format!("not in any index; needed by {}", rel.display()),
    })
}

/// Per pack, per blob: where the blob is stored and every (file of the batch,
/// offset in that file) it is written to.
type BlobTargets = HashMap<Id, HashMap<Id, (BlobLocation, Vec<(usize, u64)>)>>;

/// Restores one batch of files: which blob goes where, then the workers.
/// On failure the batch's partial files are removed; complete files stay.
fn restore_batch(
    repo: &Repository,
    index: &Index,
    files: &[FilePlan],
    writer: &Writer<'_>,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<(), VolumeError> {
    let mut by_pack: BlobTargets = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        let mut offset = 0u64;
        let content = f.node.content.as_deref().unwrap_or(&[]);
        for blob in content {
            let loc = index.get(blob, BlobType::Data).ok_or_else(|| not_indexed(blob, &f.rel))?;
            by_pack.entry(loc.pack).or_default().entry(*blob).or_insert((loc, vec![])).1.push((i, offset));
            offset += loc.plaintext_len() as u64;
        }
        // An empty file still has one step to go: being created.
        f.remaining.store(content.len().max(1), Ordering::Relaxed);
    }
    let mut packs: Vec<_> = by_pack.into_iter().collect();
    packs.sort_by_key(|(id, _)| *id);
    let mut jobs: Vec<Job> = (0..files.len())
        .filter(|&i| files[i].node.content.as_ref().is_none_or(|c| c.is_empty()))
        .map(Job::Empty)
        .collect();
    for (pack, blobs) in packs {
        let mut blobs: PackBlobs = blobs.into_iter().map(|(id, (loc, targets))| (id, loc, targets)).collect();
        blobs.sort_by_key(|(_, loc, _)| loc.offset);
        let mut stretch: PackBlobs = Vec::new();
        for blob in blobs {
            let span =
                stretch.first().map(|(_, first, _)| (blob.1.offset + blob.1.length - first.offset) as u64);
            if stretch.len() == JOB_BLOBS || span.is_some_and(|s| s > JOB_SPAN) {
                jobs.push(Job::Pack(pack, std::mem::take(&mut stretch)));
            }
            stretch.push(blob);
        }
        if !stretch.is_empty() {
            jobs.push(Job::Pack(pack, stretch));
        }
    }
    let result = write_files(repo, jobs, writer, opts.concurrency.max(1), progress);
    if result.is_err() {
        for (i, f) in files.iter().enumerate() {
            if f.created.is_completed() && f.remaining.load(Ordering::Relaxed) > 0 {
                let _ = std::fs::remove_file(writer.staged(i));
            }
        }
    }
    result
}
/// derived from the real name, which may already be 255 bytes long.
fn staged_path(target: &Path, f: &FilePlan, index: usize) -> PathBuf {
    let dest = target.join(&f.rel);
    let dir = dest.parent().unwrap_or(target);
    dir.join(format!(".cairn-restore-{}-{index}.part", std::process::id()))
}

/// Writes one batch of files.
struct Writer<'a> {
    files: &'a [FilePlan],
    /// The number of the batch's first file in the restore, so staged names
    /// stay unique across batches.
    first: usize,
    target: &'a Path,
    is_root: bool,
    fsync: bool,
    warnings: &'a Mutex<Vec<String>>,
    progress: &'a RestoreProgress,
}

impl Writer<'_> {
    fn staged(&self, file: usize) -> PathBuf {
        staged_path(self.target, &self.files[file], self.first + file)
    }

    /// Creates the staged file at its final length (so skipped zero blocks
    /// are holes), once, on first use.
    fn create_staged(&self, file: usize) -> Result<(), VolumeError> {
        let mut result = Ok(());
        let f = &self.files[file];
        f.created.call_once(|| {
            let path = self.staged(file);
            result = std::fs::File::create(&path)
                .and_then(|fh| fh.set_len(f.node.size))
                .map_err(|e| VolumeError::io(&self.target.join(&f.rel), e));
        });
        result
    }

    /// Finishes a staged file whose bytes are all written: metadata on the
    /// open file, fsync (so data and metadata are durable before the name
    /// is), then the rename into place.
    fn complete(&self, file: usize, fh: std::fs::File) -> Result<(), VolumeError> {
        let f = &self.files[file];
        let dest = self.target.join(&f.rel);
        if let Err(w) = apply_file_metadata(&fh, &f.node, self.is_root) {
            self.warnings.lock().expect("warnings").push(format!("{}: {w}", dest.display()));
        }
        if self.fsync {
            fh.sync_all().map_err(|e| VolumeError::NotDurable { path: dest.clone(), source: e })?;
        }
        drop(fh);
        if let Ok(meta) = std::fs::symlink_metadata(&dest)
            && meta.is_dir()
        {
            std::fs::remove_dir_all(&dest).map_err(|e| VolumeError::io(&dest, e))?;
        }
        std::fs::rename(self.staged(file), &dest).map_err(|e| VolumeError::io(&dest, e))?;
        f.remaining.store(0, Ordering::Release);
        self.progress.files_done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes a file that is exactly one blob (or empty): create, write,
    /// complete. Half the system calls of the general path, and most files
    /// in most trees are this small.
    fn write_single_blob_file(
        &self,
        file: usize,
        data: &[u8],
        runs: &[(usize, usize)],
    ) -> Result<(), VolumeError> {
        let f = &self.files[file];
        f.created.call_once(|| {}); // from here on, a failure cleans this file up
        let dest = self.target.join(&f.rel);
        let fh = std::fs::File::create(self.staged(file)).map_err(|e| VolumeError::io(&dest, e))?;
        for &(from, to) in runs {
            fh.write_all_at(&data[from..to], from as u64).map_err(|e| VolumeError::io(&dest, e))?;
        }
        if runs.last().is_none_or(|&(_, to)| to as u64 != f.node.size) {
            fh.set_len(f.node.size).map_err(|e| VolumeError::io(&dest, e))?;
        }
        self.complete(file, fh)?;
        self.progress.bytes_done.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn write_blob(&self, data: &[u8], targets: &[(usize, u64)]) -> Result<(), VolumeError> {
        let runs = nonzero_runs(data);
        for &(file, offset) in targets {
            if self.files[file].node.content.as_ref().is_some_and(|c| c.len() == 1) {
                self.write_single_blob_file(file, data, &runs)?;
                continue;
            }
            self.create_staged(file)?;
            let dest = self.target.join(&self.files[file].rel);
            let open = || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(self.staged(file))
                    .map_err(|e| VolumeError::io(&dest, e))
            };
            // An all-zero blob is a hole already: no need to open the file for it.
            let fh = if runs.is_empty() { None } else { Some(open()?) };
            if let Some(fh) = &fh {
                for &(from, to) in &runs {
                    fh.write_all_at(&data[from..to], offset + from as u64)
                        .map_err(|e| VolumeError::io(&dest, e))?;
                }
            }
            self.progress.bytes_done.fetch_add(data.len() as u64, Ordering::Relaxed);
            if self.files[file].remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                let fh = match fh {
                    Some(fh) => fh,
                    None => open()?,
                };
                self.complete(file, fh)?;
            }
        }
        Ok(())
    }
}

/// Byte ranges of `data` to write, leaving out aligned all-zero 4 KiB
/// blocks: staged files are created at their full length, so skipped
/// blocks read back as zeros and stay holes (sparse files stay sparse).
fn nonzero_runs(data: &[u8]) -> Vec<(usize, usize)> {
    const BLOCK: usize = 4096;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, block) in data.chunks(BLOCK).enumerate() {
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        let (from, to) = (i * BLOCK, i * BLOCK + block.len());
        match runs.last_mut() {
            Some(last) if last.1 == from => last.1 = to,
            _ => runs.push((from, to)),
        }
    }
    runs
}

/// One unit of work for the restore's worker threads.
enum Job {
    /// Fetch a stretch of a pack and write its blobs.
    Pack(Id, PackBlobs),
    /// Create an empty file.
    Empty(usize),
}

/// Runs the jobs on `threads` plain threads: each reads a pack (through
/// the async backend) and then decrypts, verifies and writes it, so
/// reading, CPU work and the fsyncs of completed files overlap across
/// packs. Stops at the first error or when cancelled.
fn write_files(
    repo: &Repository,
    jobs: Vec<Job>,
    writer: &Writer<'_>,
    threads: usize,
    progress: &RestoreProgress,
) -> Result<(), VolumeError> {
    let rt = tokio::runtime::Handle::current();
    let key = repo.key().clone();
    let queue = Mutex::new(jobs.into_iter());
    let failure: Mutex<Option<VolumeError>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let work = |job: Job| -> Result<(), VolumeError> {
        let (pack, blobs) = match job {
            Job::Pack(pack, blobs) => (pack, blobs),
            Job::Empty(file) => return writer.write_single_blob_file(file, &[], &[]),
        };
        let start = blobs.iter().map(|(_, l, _)| l.offset as u64).min().unwrap_or(0);
        let end = blobs.iter().map(|(_, l, _)| l.offset as u64 + l.length as u64).max().unwrap_or(0);
        let handle = Handle::new(FileType::Pack, pack.to_hex());
        let bytes = rt.block_on(repo.backend().get(&handle, Some(start..end))).map_err(RepoError::from)?;
        for (id, loc, targets) in &blobs {
            let from = (loc.offset as u64 - start) as usize;
            let plain = decode_blob(&key, &bytes[from..from + loc.length as usize], id, loc)?;
            writer.write_blob(&plain, targets)?;
        }
        Ok(())
    };
    // block_in_place lets the scoped threads borrow the plan; the runtime
    // keeps serving I/O on its other workers meanwhile.
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        if progress.cancel.load(Ordering::Relaxed) {
                            failure.lock().expect("failure").get_or_insert(VolumeError::Interrupted);
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                        let Some(job) = queue.lock().expect("queue").next() else { break };
                        if let Err(e) = work(job) {
                            failure.lock().expect("failure").get_or_insert(e);
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                });
            }
        })
    });
    match failure.into_inner().expect("failure") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn restore_into(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
    plan: &Plan,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
    summary: &mut RestoreSummary,
) -> Result<(), VolumeError> {
    let target = opts.target.as_path();
    let is_root = nix::unistd::geteuid().is_root();
    // Directories this run made: the entries naming them are changes to their parents.
    let mut created = Vec::new();
    create_dirs(target, &mut created).map_err(|e| VolumeError::io(target, e))?;
    for (rel, _) in &plan.dirs {
        let dir = target.join(rel);
        if let Ok(m) = std::fs::symlink_metadata(&dir)
            && !m.is_dir()
        {
            std::fs::remove_file(&dir).map_err(|e| VolumeError::io(&dir, e))?;
        }
        create_dirs(&dir, &mut created).map_err(|e| VolumeError::io(&dir, e))?;
    }
    let warnings = Mutex::new(Vec::new());
    tracing::debug!(files = summary.files, "restore: directories made, fetching packs");

    // The second walk: the files again, a batch at a time.
    let mut walk = PlanWalk::new(repo, index, snapshot, opts).await?;
    let mut batch: Vec<FilePlan> = Vec::new();
    let (mut batch_blobs, mut first) = (0usize, 0usize);
    loop {
        let item = walk.next().await?;
        let end = item.is_none();
        if let Some(Planned::File(rel, node)) = item {
            // Skipped in the first walk, skipped now: nothing restored since named it.
            if opts.overwrite == Overwrite::IfChanged
                && existing(&target.join(&rel), &node, opts.overwrite) == Existing::Skip
            {
                continue;
            }
            batch_blobs += node.content.as_ref().map_or(0, Vec::len);
            batch.push(FilePlan::new(rel, node));
        }
        if !batch.is_empty() && (end || batch.len() >= BATCH_FILES || batch_blobs >= BATCH_BLOBS) {
            let writer = Writer {
                files: &batch,
                first,
                target,
                is_root,
                fsync: opts.fsync,
                warnings: &warnings,
                progress,
            };
            restore_batch(repo, index, &batch, &writer, opts, progress)?;
            first += batch.len();
            batch.clear();
            batch_blobs = 0;
        }
        if end {
            break;
        }
    }
    tracing::debug!("restore: file contents written");

    for (rel, first, _) in &plan.hardlinks {
        let dest = target.join(rel);
        if opts.overwrite != Overwrite::Never {
            let _ = std::fs::remove_file(&dest);
        }
        std::fs::hard_link(target.join(first), &dest).map_err(|e| VolumeError::io(&dest, e))?;
        progress.files_done.fetch_add(1, Ordering::Relaxed);
    }
    for (rel, node) in &plan.others {
        let dest = target.join(rel);
        if opts.overwrite != Overwrite::Never {
            let _ = std::fs::remove_file(&dest);
        }
        let made = match node.node_type {
            NodeType::Symlink => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&node.link_target_bytes()), &dest)
                    .map_err(|e| e.to_string())
            }
            NodeType::Fifo => nix::unistd::mkfifo(&dest, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| e.to_string()),
            NodeType::Chardev | NodeType::Dev if is_root => {
                let kind = if node.node_type == NodeType::Chardev {
                    nix::sys::stat::SFlag::S_IFCHR
                } else {
                    nix::sys::stat::SFlag::S_IFBLK
                };
                nix::sys::stat::mknod(
                    &dest,
                    kind,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    node.device as _,
                )
                .map_err(|e| e.to_string())
            }
            _ => Err("not restorable here".to_string()),
        };
        match made {
            Ok(()) => {
                if let Err(w) = apply_metadata(&dest, node, is_root) {
                    warnings.lock().expect("warnings").push(w);
                }
            }
            Err(e) => warnings.lock().expect("warnings").push(format!("{}: {e}", dest.display())),
        }
    }
    // Directories last and deepest first, so their mtimes and read-only
    // modes stick and each is durable before the entry naming it.
    let mut dirs: HashMap<PathBuf, Option<&Node>> = HashMap::new();
    if opts.fsync {
        for dir in &created {
            dirs.insert(durable::parent_dir(dir).to_path_buf(), None);
            dirs.insert(dir.clone(), None);
        }
        dirs.insert(target.to_path_buf(), None);
    }
    for (rel, node) in &plan.dirs {
        dirs.insert(target.join(rel), Some(node));
    }
    let mut dirs: Vec<_> = dirs.into_iter().collect();
    // Absolute depths: `--to out` has the parent `.`, of the same relative depth.
    dirs.sort_by_cached_key(|(dir, _)| {
        std::cmp::Reverse(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()).components().count())
    });
    // Metadata goes on through open descriptors, fsynced afterwards in the
    // same order a batch at a time: on a journalling file system the first
    // fsync commits the whole batch's changes, where syncing each directory
    // right after changing it costs a commit per directory. (Descriptors
    // opened before the mode is set still sync a directory we may not read.)
    const SYNC_BATCH: usize = 256;
    let mut unsynced: Vec<(PathBuf, std::fs::File)> = Vec::new();
    let sync = |unsynced: &mut Vec<(PathBuf, std::fs::File)>| {
        unsynced.drain(..).try_for_each(|(dir, fh)| {
            fh.sync_all().map_err(|e| VolumeError::NotDurable { path: dir, source: e })
        })
    };
    for (dir, node) in dirs {
        let fh = std::fs::File::open(&dir).map_err(|e| VolumeError::io(&dir, e))?;
        if let Some(node) = node
            && let Err(w) = apply_file_metadata(&fh, node, is_root)
        {
            warnings.lock().expect("warnings").push(format!("{}: {w}", dir.display()));
        }
        if opts.fsync {
            unsynced.push((dir, fh));
            if unsynced.len() == SYNC_BATCH {
                sync(&mut unsynced)?;
            }
        }
    }
    sync(&mut unsynced)?;
    summary.warnings = warnings.into_inner().expect("warnings");
    Ok(())
}

/// `create_dir_all` that records, outermost first, each directory it made.
fn create_dirs(dir: &Path, created: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut next = Some(dir);
    while let Some(d) = next.filter(|d| !d.as_os_str().is_empty() && std::fs::symlink_metadata(d).is_err()) {
        missing.push(d);
        next = d.parent();
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => created.push(d.to_path_buf()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{create_dirs, nonzero_runs};

    #[test]
    fn made_directories_are_recorded_outermost_first_and_only_once() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        let mut created = Vec::new();
        create_dirs(&deep, &mut created).unwrap();
        assert!(deep.is_dir());
        assert_eq!(created, ["a", "a/b", "a/b/c"].map(|p| tmp.path().join(p)));
        create_dirs(&tmp.path().join("a/b/d"), &mut created).unwrap();
        assert_eq!(created.last().unwrap(), &tmp.path().join("a/b/d"), "only the new one");
        assert_eq!(created.len(), 4);
        std::fs::write(tmp.path().join("file"), b"x").unwrap();
        assert!(create_dirs(&tmp.path().join("file/sub"), &mut created).is_err(), "a file in the way");
    }

    #[test]
    fn zero_blocks_are_skipped_and_runs_merged() {
        let mut data = vec![0u8; 5 * 4096 + 100];
        data[10] = 1; // block 0
        data[4096 + 5] = 1; // block 1, merges with block 0
        data[4 * 4096] = 1; // block 4
        data[5 * 4096 + 99] = 1; // the short tail
        assert_eq!(nonzero_runs(&data), vec![(0, 8192), (4 * 4096, 5 * 4096 + 100)]);
        assert!(nonzero_runs(&[0u8; 10000]).is_empty());
        assert_eq!(nonzero_runs(b"abc"), vec![(0, 3)]);
    }
}
