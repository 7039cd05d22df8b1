//! Backing up a directory tree.
//!
//! Three kinds of worker cooperate:
//!
//! * **The walker** (one blocking thread) lists directories depth-first in
//!   name order, `lstat`s every entry, applies excludes, and decides per
//!   file: unchanged since the parent snapshot (size, mtime, ctime and inode
//!   equal) → reuse its content list without reading; otherwise → queue it.
//! * **Readers** (a few threads) open queued files, cut them into
//!   content-defined chunks and feed the chunks to the repository's
//!   [`BlobSaver`]. A file whose size, mtime or ctime moves while it is read
//!   is read again; if it keeps changing it is stored as read and reported.
//! * **Assemblers** (async tasks, one per directory) wait for their
//!   children's content lists and subtree ids, then save the directory's tree.
//!
//! The snapshot mirrors absolute paths, as restic's does: backing up
//! `/srv/data` yields a root tree with `srv`, whose subtree holds `data`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_repo::chunker::{Chunker, ChunkerParams, chunk_reader};
use cairn_repo::tree::{Node, NodeType, Tree};
use cairn_repo::{
    BlobSaver, BlobType, CairnSnapshotMeta, Id, Index, RepoError, Repository, SavedBlob, SaverOptions,
    Snapshot, SnapshotSummary, host_and_user,
};
use cairn_store::FileType;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::VolumeError;
use crate::exclude::Excludes;
use crate::meta::{NameCache, node_from_metadata, unchanged};

/// Which snapshot to compare against for change detection.
#[derive(Debug, Clone, Default)]
pub enum ParentChoice {
    /// The newest snapshot from this host with the same paths.
    #[default]
    Auto,
    /// Read every file.
    None,
    Snapshot(Id),
}

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub excludes: Excludes,
    pub one_file_system: bool,
    pub xattrs: bool,
    pub parent: ParentChoice,
    pub tags: Vec<String>,
    pub hostname: Option<String>,
    pub source_name: Option<String>,
    /// Threads reading and chunking files.
    pub readers: usize,
    pub saver: SaverOptions,
    /// How often a file that changes while read is re-read before giving up.
    pub change_retries: u32,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            paths: Vec::new(),
            excludes: Excludes::none(),
            one_file_system: false,
            xattrs: true,
            parent: ParentChoice::Auto,
            tags: Vec::new(),
            hostname: None,
            source_name: None,
            readers: 2,
            saver: SaverOptions::default(),
            change_retries: 2,
        }
    }
}

/// Live counters for progress display.
#[derive(Debug, Default)]
pub struct BackupProgress {
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
    pub dirs_done: AtomicU64,
    pub errors: AtomicU64,
    /// Set by the caller (SIGINT/SIGTERM) to stop early; uploaded packs are
    /// still indexed so the next run reuses them.
    pub cancel: AtomicBool,
}

/// A finished backup.
#[derive(Debug, Clone)]
pub struct BackupResult {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    /// Files that could not be read or kept changing (snapshot is incomplete for them).
    pub warnings: Vec<String>,
    pub parent: Option<Id>,
}

#[derive(Default)]
struct Counts {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs_new: AtomicU64,
    dirs_changed: AtomicU64,
    dirs_unmodified: AtomicU64,
    bytes_processed: AtomicU64,
}

type Reply<T> = oneshot::Receiver<Result<T, VolumeError>>;

/// A file as read: one pending blob id per chunk, and the bytes read.
/// The directory's assembler awaits the ids, so no task is spawned per file.
struct FileDone {
    chunks: ChunkReceivers,
    size: u64,
}

enum Pending {
    Ready(Node),
    File { node: Node, changed: bool, done: Reply<FileDone> },
    Dir { node: Node, previous: Option<Id>, done: Reply<Id> },
}

struct FileJob {
    path: PathBuf,
    reply: oneshot::Sender<Result<FileDone, VolumeError>>,
}

struct Ctx {
    rt: tokio::runtime::Handle,
    repo: Repository,
    index: Arc<Index>,
    saver: Arc<BlobSaver>,
    chunker: Chunker,
    names: NameCache,
    excludes: Excludes,
    xattrs: bool,
    one_file_system: bool,
    change_retries: u32,
    /// Taken (closed) once the walk is over, so readers run dry and exit.
    files: Mutex<Option<flume::Sender<FileJob>>>,
    warnings: Mutex<Vec<String>>,
    counts: Counts,
    progress: Arc<BackupProgress>,
}

impl Ctx {
    fn warn(&self, message: String) {
        tracing::warn!("{message}");
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        self.warnings.lock().expect("warnings").push(message);
    }

    fn cancelled(&self) -> bool {
        self.progress.cancel.load(Ordering::Relaxed)
    }

    fn load_tree(&self, id: Option<Id>) -> Option<Tree> {
        let id = id?;
        match self.rt.block_on(self.repo.load_tree(&self.index, &id)) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::debug!(tree = %id.short(), error = %e, "parent tree unreadable; reading files again");
                None
            }
        }
    }
}

/// Lexically normalises an absolute path (`.` and `..` resolved without
/// following symlinks, as the user wrote it).
fn normalize(path: &Path) -> Result<PathBuf, VolumeError> {
    let abs = std::path::absolute(path).map_err(|e| VolumeError::io(path, e))?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Ok(out)
}

fn find<'a>(tree: Option<&'a Tree>, name: &[u8]) -> Option<&'a Node> {
    let tree = tree?;
    tree.nodes.binary_search_by(|n| n.name.as_slice().cmp(name)).ok().map(|i| &tree.nodes[i])
}

/// Runs a backup and writes the snapshot.
pub async fn backup(
    repo: &Repository,
    opts: BackupOptions,
    progress: Arc<BackupProgress>,
) -> Result<BackupResult, VolumeError> {
    let start = chrono::Local::now().fixed_offset();
    if opts.paths.is_empty() {
        return Err(VolumeError::NothingToBackUp);
    }
    let mut paths = Vec::new();
    for p in &opts.paths {
        let abs = normalize(p)?;
        std::fs::symlink_metadata(&abs)
            .map_err(|e| VolumeError::SourceUnreadable { path: abs.clone(), source: e })?;
        paths.push(abs);
    }
    paths.sort();
    paths.dedup();
    let path_strings: Vec<String> = paths.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let (my_host, username) = host_and_user();
    let hostname = opts.hostname.clone().unwrap_or(my_host);

    // Snapshots before the index (read order), so the parent's blobs are indexed.
    let parent = match &opts.parent {
        ParentChoice::None => None,
        ParentChoice::Snapshot(id) => Some((*id, repo.load_json::<Snapshot>(FileType::Snapshot, id).await?)),
        ParentChoice::Auto => {
            // A named source is the same source whichever pod runs it; an
            // unnamed one is known by its host, as restic does it.
            let (all, _) = repo.snapshots().await?;
            all.into_iter().rev().find(|(_, s)| {
                let mut sp = s.paths.clone();
                sp.sort();
                let same_source = match &opts.source_name {
                    Some(name) => s.cairn.as_ref().and_then(|c| c.source_name.as_ref()) == Some(name),
                    None => s.hostname == hostname,
                };
                same_source && sp == path_strings && cairn_repo::kind_and_mode(s).0 == "volume"
            })
        }
    };
    let mut index = repo.load_index().await?;
    // Packs a killed run uploaded but never indexed are reused, not uploaded again.
    let adopted = repo.find_unindexed_packs(&index).await?;
    if !adopted.is_empty() {
        tracing::info!(packs = adopted.len(), "reusing packs left by an interrupted backup");
    }
    for (pack, blobs) in &adopted {
        index.add_pack(*pack, blobs);
    }
    let index = Arc::new(index);
    let saver = Arc::new(BlobSaver::start(repo, index.clone(), opts.saver.clone()));
    saver.adopt_packs(adopted);
    let (file_tx, file_rx) = flume::bounded::<FileJob>(256);
    let ctx = Arc::new(Ctx {
        rt: tokio::runtime::Handle::current(),
        repo: repo.clone(),
        index,
        saver: saver.clone(),
        chunker: Chunker::new(repo.config().chunker_seed(), ChunkerParams::FILES),
        names: NameCache::default(),
        excludes: opts.excludes.clone(),
        xattrs: opts.xattrs,
        one_file_system: opts.one_file_system,
        change_retries: opts.change_retries,
        files: Mutex::new(Some(file_tx)),
        warnings: Mutex::new(Vec::new()),
        counts: Counts::default(),
        progress: progress.clone(),
    });

    let readers: Vec<_> = (0..opts.readers.max(1))
        .map(|i| {
            let ctx = ctx.clone();
            let rx = file_rx.clone();
            std::thread::Builder::new()
                .name(format!("cairn-reader-{i}"))
                .spawn(move || reader_loop(&ctx, rx))
                .expect("spawning a reader thread")
        })
        .collect();
    drop(file_rx);

    let parent_tree_id = parent.as_ref().map(|(_, s)| s.tree);
    let walker_ctx = ctx.clone();
    let walk_paths = paths.clone();
    let root: Result<BoxFuture<'static, Result<Id, VolumeError>>, VolumeError> =
        tokio::task::spawn_blocking(move || walk_roots(&walker_ctx, &walk_paths, parent_tree_id))
            .await
            .expect("walker panicked");
    let tree_result = match root {
        Ok(fut) => fut.await,
        Err(e) => Err(e),
    };
    // Closing the file queue lets readers finish; then drain the pipeline.
    ctx.files.lock().expect("file queue").take();
    tokio::task::spawn_blocking(move || {
        for r in readers {
            let _ = r.join();
        }
    })
    .await
    .expect("reader join panicked");
    let warnings = std::mem::take(&mut *ctx.warnings.lock().expect("warnings"));
    let c = &ctx.counts;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (files_new, files_changed, files_unmodified) =
        (load(&c.files_new), load(&c.files_changed), load(&c.files_unmodified));
    let (dirs_new, dirs_changed, dirs_unmodified) =
        (load(&c.dirs_new), load(&c.dirs_changed), load(&c.dirs_unmodified));
    let bytes_processed = load(&c.bytes_processed);
    drop(ctx);
    let saver = Arc::try_unwrap(saver).map_err(|_| {
        VolumeError::Repo(RepoError::Pipeline("blob saver still in use after the walk".into()))
    })?;
    let finished = saver.finish().await;
    if progress.cancel.load(Ordering::Relaxed) {
        return Err(VolumeError::Interrupted);
    }
    let tree = tree_result?;
    let totals = finished?;

    let summary = SnapshotSummary {
        backup_start: start,
        backup_end: chrono::Local::now().fixed_offset(),
        files_new,
        files_changed,
        files_unmodified,
        dirs_new,
        dirs_changed,
        dirs_unmodified,
        data_blobs: totals.blobs_new - totals.tree_blobs_new,
        tree_blobs: totals.tree_blobs_new,
        data_added: totals.bytes_new,
        data_added_packed: totals.bytes_stored,
        total_files_processed: files_new + files_changed + files_unmodified,
        total_bytes_processed: bytes_processed,
    };
    let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    let snapshot = Snapshot {
        time: start,
        parent: parent.as_ref().map(|(id, _)| *id),
        tree,
        paths: path_strings,
        hostname,
        username,
        uid,
        gid,
        excludes: opts.excludes.patterns().to_vec(),
        tags: opts.tags.clone(),
        original: None,
        program_version: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        summary: Some(summary),
        cairn: Some(CairnSnapshotMeta {
            source_kind: "volume".into(),
            mode: "files".into(),
            source_name: opts.source_name.clone(),
            warnings: warnings.clone(),
            metadata: serde_json::Value::Null,
        }),
    };
    let snapshot_id = repo.save_json(FileType::Snapshot, &snapshot).await?;
    Ok(BackupResult { snapshot_id, snapshot, warnings, parent: parent.map(|(id, _)| id) })
}

/// A directory level above (or at) a backup target, to be turned into trees.
#[derive(Default)]
struct VirtualDir {
    children: BTreeMap<Vec<u8>, VirtualEntry>,
}

#[allow(clippy::large_enum_variant)] // a handful per backup, never in bulk
enum VirtualEntry {
    /// An ancestor directory of a target: its own metadata, and what is below.
    Ancestor(Node, VirtualDir),
    Target(Pending),
}

/// Walks every backup path (in the calling blocking thread) and returns the
/// future that resolves to the snapshot's root tree id.
fn walk_roots(
    ctx: &Arc<Ctx>,
    paths: &[PathBuf],
    parent_root: Option<Id>,
) -> Result<BoxFuture<'static, Result<Id, VolumeError>>, VolumeError> {
    let mut root = VirtualDir::default();
    let parent_tree = ctx.load_tree(parent_root);
    for path in paths {
        let names: Vec<OsString> = path.components().skip(1).map(|c| c.as_os_str().to_owned()).collect();
        let mut dir = &mut root;
        let mut prev_tree = parent_tree.clone();
        let mut current = PathBuf::from("/");
        for (i, name) in names.iter().enumerate() {
            current.push(name);
            let key = name.as_bytes().to_vec();
            let meta = std::fs::symlink_metadata(&current)
                .map_err(|e| VolumeError::SourceUnreadable { path: current.clone(), source: e })?;
            let node = node_from_metadata(name, &current, &meta, &ctx.names, ctx.xattrs);
            let previous = find(prev_tree.as_ref(), &key).cloned();
            if i + 1 == names.len() {
                let pending = plan_entry(ctx, &current, node, previous, meta.dev())?;
                dir.children.insert(key, VirtualEntry::Target(pending));
                break;
            }
            prev_tree = ctx.load_tree(previous.as_ref().and_then(|p| p.subtree));
            let mut node = node;
            keep_recorded_atime(&mut node, previous.as_ref());
            let entry = dir
                .children
                .entry(key)
                .or_insert_with(|| VirtualEntry::Ancestor(node, VirtualDir::default()));
            dir = match entry {
                VirtualEntry::Ancestor(_, d) => d,
                // One target is an ancestor of another: the outer walk covers both.
                VirtualEntry::Target(_) => break,
            };
        }
    }
    let ctx = ctx.clone();
    Ok(Box::pin(async move { assemble_virtual(ctx, root).await }))
}

fn assemble_virtual(ctx: Arc<Ctx>, dir: VirtualDir) -> BoxFuture<'static, Result<Id, VolumeError>> {
    Box::pin(async move {
        let mut pendings = Vec::new();
        for (_, entry) in dir.children {
            match entry {
                VirtualEntry::Target(p) => pendings.push(p),
                VirtualEntry::Ancestor(node, sub) => {
                    let (tx, rx) = oneshot::channel();
                    let ctx2 = ctx.clone();
                    tokio::spawn(async move {
                        // The result is sent only once this task's share of
                        // the context is gone: the backup unwraps the blob
                        // saver as soon as the root tree arrives.
                        let result = assemble_virtual(ctx2, sub).await;
                        let _ = tx.send(result);
                    });
                    pendings.push(Pending::Dir { node, previous: None, done: rx });
                }
            }
        }
        assemble(&ctx, pendings, false).await
    })
}

/// Our own last backup moved the atime of every file, symlink and directory
/// it read. When nothing else about an entry changed, keeping the recorded
/// atime keeps its tree, and so every parent tree, byte-identical.
fn keep_recorded_atime(node: &mut Node, previous: Option<&Node>) {
    if let Some(p) = previous.filter(|p| {
        p.node_type == node.node_type
            && p.mtime == node.mtime
            && p.ctime == node.ctime
            && p.inode == node.inode
    }) {
        node.atime = p.atime;
    }
}

/// Decides what to do with one entry found by the walker.
fn plan_entry(
    ctx: &Arc<Ctx>,
    path: &Path,
    mut node: Node,
    previous: Option<Node>,
    device: u64,
) -> Result<Pending, VolumeError> {
    keep_recorded_atime(&mut node, previous.as_ref());
    match node.node_type {
        NodeType::Dir => {
            let prev_dir = previous.as_ref().filter(|p| p.node_type == NodeType::Dir);
            if let Some(p) =
                prev_dir.filter(|p| p.mtime == node.mtime && p.ctime == node.ctime && p.inode == node.inode)
            {
                // Listing the directory last time moved its atime.
                node.atime = p.atime;
            }
            let prev_subtree = prev_dir.and_then(|p| p.subtree);
            let done = walk_dir(ctx, path, prev_subtree, device, false);
            Ok(Pending::Dir { node, previous: prev_subtree, done })
        }
        NodeType::File => {
            if let Some(prev) = previous.as_ref().filter(|p| unchanged(&node, p))
                && prev
                    .content
                    .as_ref()
                    .is_some_and(|c| c.iter().all(|id| ctx.index.contains(id, BlobType::Data)))
            {
                node.content = prev.content.clone();
                ctx.counts.files_unmodified.fetch_add(1, Ordering::Relaxed);
                ctx.progress.files_done.fetch_add(1, Ordering::Relaxed);
                ctx.progress.bytes_done.fetch_add(node.size, Ordering::Relaxed);
                ctx.counts.bytes_processed.fetch_add(node.size, Ordering::Relaxed);
                return Ok(Pending::Ready(node));
            }
            let (reply, done) = oneshot::channel();
            let sender = ctx.files.lock().expect("file queue").clone();
            match sender {
                Some(tx) => {
                    if tx.send(FileJob { path: path.to_path_buf(), reply }).is_err() {
                        return Err(VolumeError::Interrupted);
                    }
                }
                None => return Err(VolumeError::Interrupted),
            }
            Ok(Pending::File { node, changed: previous.is_some_and(|p| p.node_type == NodeType::File), done })
        }
        _ => Ok(Pending::Ready(node)),
    }
}

/// Lists one directory and plans its entries; returns the receiver of its tree id.
fn walk_dir(
    ctx: &Arc<Ctx>,
    path: &Path,
    previous: Option<Id>,
    device: u64,
    skip_contents: bool,
) -> Reply<Id> {
    let mut pendings = Vec::new();
    if !skip_contents && !ctx.cancelled() {
        let parent_tree = ctx.load_tree(previous);
        let mut names: Vec<OsString> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) => {
                ctx.warn(format!("cannot list {}: {e}", path.display()));
                Vec::new()
            }
        };
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            if ctx.cancelled() {
                break;
            }
            let child = path.join(&name);
            if ctx.excludes.is_excluded(&child) {
                continue;
            }
            let meta = match std::fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) => {
                    ctx.warn(format!("cannot stat {}: {e}", child.display()));
                    continue;
                }
            };
            let node = node_from_metadata(&name, &child, &meta, &ctx.names, ctx.xattrs);
            let prev = find(parent_tree.as_ref(), name.as_bytes()).cloned();
            let pending = if node.node_type == NodeType::Dir && ctx.one_file_system && meta.dev() != device {
                // Keep the mount point itself, not what is mounted on it.
                let done = walk_dir(ctx, &child, None, device, true);
                Pending::Dir { node, previous: None, done }
            } else {
                match plan_entry(ctx, &child, node, prev, device) {
                    Ok(p) => p,
                    Err(_) => break,
                }
            };
            pendings.push(pending);
        }
    }
    let (tx, rx) = oneshot::channel();
    let ctx2 = ctx.clone();
    ctx.rt.spawn(async move {
        let result = assemble(&ctx2, pendings, true).await;
        // Before sending (see assemble_virtual): the receiver may be the
        // last step before the blob saver is unwrapped.
        drop(ctx2);
        let _ = tx.send(result);
    });
    ctx.progress.dirs_done.fetch_add(1, Ordering::Relaxed);
    rx
}

/// Waits for a directory's children and saves its tree.
async fn assemble(ctx: &Ctx, pendings: Vec<Pending>, count_dir: bool) -> Result<Id, VolumeError> {
    let mut tree = Tree::default();
    let mut changed = false;
    for p in pendings {
        match p {
            Pending::Ready(node) => tree.nodes.push(node),
            Pending::File { mut node, changed: was_there, done } => match done.await {
                Ok(Ok(f)) => {
                    let mut content = Vec::with_capacity(f.chunks.len());
                    for rx in f.chunks {
                        content.push(rx.await.map_err(|_| VolumeError::Interrupted)??.id);
                    }
                    node.content = Some(content);
                    node.size = f.size;
                    let counter = if was_there { &ctx.counts.files_changed } else { &ctx.counts.files_new };
                    counter.fetch_add(1, Ordering::Relaxed);
                    changed = true;
                    tree.nodes.push(node);
                }
                Ok(Err(VolumeError::FileUnreadable { path, message })) => {
                    ctx.warn(format!("{}: {message}; not in this snapshot", path.display()));
                    changed = true;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(VolumeError::Interrupted),
            },
            Pending::Dir { mut node, previous, done } => {
                let id = done.await.map_err(|_| VolumeError::Interrupted)??;
                changed |= previous != Some(id);
                node.subtree = Some(id);
                tree.nodes.push(node);
            }
        }
    }
    if ctx.cancelled() {
        return Err(VolumeError::Interrupted);
    }
    let saved: SavedBlob = ctx.saver.save_async(tree.to_blob(), BlobType::Tree).await?;
    if count_dir {
        let counter = if !changed && !saved.new {
            &ctx.counts.dirs_unmodified
        } else if saved.new {
            &ctx.counts.dirs_new
        } else {
            &ctx.counts.dirs_changed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    Ok(saved.id)
}

fn reader_loop(ctx: &Arc<Ctx>, jobs: flume::Receiver<FileJob>) {
    // One buffer per reader thread for every file it reads: allocating (and
    // zeroing) a max-chunk-sized buffer per file would dominate small files.
    let mut buffer = Vec::new();
    for job in jobs.iter() {
        if ctx.cancelled() {
            continue; // dropping the reply tells the assembler we stopped
        }
        match read_file(ctx, &job.path, &mut buffer) {
            Ok((chunks, size)) => {
                ctx.progress.files_done.fetch_add(1, Ordering::Relaxed);
                ctx.counts.bytes_processed.fetch_add(size, Ordering::Relaxed);
                let _ = job.reply.send(Ok(FileDone { chunks, size }));
            }
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
}

type ChunkReceivers = Vec<oneshot::Receiver<Result<SavedBlob, RepoError>>>;

/// Reads a file no bigger than one minimum chunk straight into the buffer
/// that becomes its blob (no copy). Should it have grown meanwhile, the
/// bytes read are cut exactly as the streaming path would cut them.
fn read_small(
    ctx: &Ctx,
    mut file: &std::fs::File,
    expected: u64,
    receivers: &mut ChunkReceivers,
) -> std::io::Result<u64> {
    use std::io::Read;
    let mut data = Vec::with_capacity(expected as usize + 1);
    file.read_to_end(&mut data)?;
    let size = data.len() as u64;
    ctx.progress.bytes_done.fetch_add(size, Ordering::Relaxed);
    if data.len() <= ctx.chunker.params().min {
        if !data.is_empty() {
            receivers.push(ctx.saver.save(data, BlobType::Data));
        }
        return Ok(size);
    }
    let mut rest = &data[..];
    while !rest.is_empty() {
        let cut = ctx.chunker.next_cut(rest);
        receivers.push(ctx.saver.save(rest[..cut].to_vec(), BlobType::Data));
        rest = &rest[cut..];
    }
    Ok(size)
}

/// Reads and chunks one file, re-reading it if it changes underneath us.
fn read_file(ctx: &Ctx, path: &Path, buffer: &mut Vec<u8>) -> Result<(ChunkReceivers, u64), VolumeError> {
    let unreadable =
        |e: std::io::Error| VolumeError::FileUnreadable { path: path.to_path_buf(), message: e.to_string() };
    let mut attempt = 0;
    loop {
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let before = file.metadata().map_err(unreadable)?;
        let mut receivers = Vec::new();
        let read = if before.size() <= ctx.chunker.params().min as u64 {
            read_small(ctx, &file, before.size(), &mut receivers)
        } else {
            chunk_reader(&ctx.chunker, buffer, &file, |chunk| {
                if ctx.cancelled() {
                    return Err(std::io::Error::other("interrupted"));
                }
                ctx.progress.bytes_done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                receivers.push(ctx.saver.save(chunk.to_vec(), BlobType::Data));
                Ok(())
            })
        };
        if ctx.cancelled() {
            return Err(VolumeError::Interrupted);
        }
        let size = read.map_err(unreadable)?;
        let after = file.metadata().map_err(unreadable)?;
        let stable = before.size() == after.size()
            && before.mtime() == after.mtime()
            && before.mtime_nsec() == after.mtime_nsec()
            && before.ctime() == after.ctime()
            && before.ctime_nsec() == after.ctime_nsec()
            && size == after.size();
        if stable {
            return Ok((receivers, size));
        }
        if attempt >= ctx.change_retries {
            ctx.warn(format!(
                "{} changed while being read ({} attempts); stored as read, it may mix old and new content",
                path.display(),
                attempt + 1
            ));
            return Ok((receivers, size));
        }
        attempt += 1;
        tracing::info!(path = %path.display(), attempt, "file changed while being read; reading it again");
        std::thread::sleep(Duration::from_millis(50));
    }
}
