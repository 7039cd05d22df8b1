//! Snapshots of data that is not a directory on disk: database dumps and
//! the like, produced by a source adapter as byte streams.
//!
//! A [`StreamArchive`] takes named streams (`databases/app/tables/x.copy`),
//! cuts each with the content-defined chunker at the sizes the source
//! chooses, saves the chunks through the shared [`BlobSaver`] pipeline, and
//! at the end writes ordinary restic trees and a snapshot. Nothing about the
//! result is special: `restic restore` lays the streams down as files, and
//! the same dump backed up the next night deduplicates chunk by chunk.
//!
//! Chunks are queued as they are cut and their ids collected later, so one
//! stream keeps every pipeline worker busy; the queue's bound is the
//! backpressure that keeps memory flat when the source is faster than
//! hashing and compression.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, FixedOffset};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::chunker::{Chunker, ChunkerParams};
use crate::tree::{Node, NodeType, Tree, go_mode};
use crate::{
    BlobSaver, BlobType, CairnSnapshotMeta, Id, RepoError, Repository, Result, SaverOptions, SaverStats,
    Snapshot, SnapshotSummary, host_and_user,
};
use cairn_store::FileType;

/// What one stream turned into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFile {
    /// Bytes read from the stream.
    pub size: u64,
    /// The stream's chunk digest (see [`ChunkDigest`]), for sources that
    /// verify restores end to end.
    pub digest: [u8; 32],
    /// Newline bytes in the stream (rows, for line-oriented dumps).
    pub lines: u64,
}

/// Blobs handed to the write pipeline in one message: about this many bytes.
const BATCH_BYTES: usize = 256 << 10;

/// Cuts a stream into chunks at the same places however it arrives in
/// pieces: a cut is final only with the chunker's `max` bytes in view, or
/// at the end of the stream.
///
/// Pieces smaller than a window (a tar reader's blocks, rows) keep the
/// buffer just over a window long, so the buffer is compacted only once
/// [`COMPACT_WINDOWS`] windows have been cut from its front: compacting
/// after every cut would move up to a window (64 KiB) for every ~16 KiB
/// chunk, several times the stream's size.
#[derive(Debug, Clone)]
struct StreamCutter {
    chunker: Chunker,
    chunking: Chunking,
    pending: Vec<u8>,
    /// Where the bytes not yet cut start in `pending`.
    start: usize,
}

/// See [`StreamCutter`]: bytes cut from the front of the buffer, in windows, before it is compacted.
const COMPACT_WINDOWS: usize = 4;

impl StreamCutter {
    fn new(chunker: Chunker, chunking: Chunking) -> StreamCutter {
        let mut cutter = StreamCutter { chunker, chunking, pending: Vec::new(), start: 0 };
        cutter.pending.reserve((COMPACT_WINDOWS + 2) * cutter.window());
        cutter
    }

    fn window(&self) -> usize {
        match self.chunking {
            Chunking::ContentDefined => self.chunker.params().max,
            Chunking::Fixed(size) => size.max(1),
        }
    }

    /// Adds `piece` and passes every chunk that is now final to `emit`.
    fn push(&mut self, piece: &[u8], emit: impl FnMut(&[u8])) {
        self.pending.extend_from_slice(piece);
        self.cut(false, emit);
    }

    /// Ends the stream: the rest goes to `emit`.
    fn finish(&mut self, emit: impl FnMut(&[u8])) {
        self.cut(true, emit);
    }

    fn cut(&mut self, eof: bool, mut emit: impl FnMut(&[u8])) {
        let window = self.window();
        let mut start = self.start;
        while self.pending.len() - start >= window || (eof && start < self.pending.len()) {
            let len = match self.chunking {
                Chunking::ContentDefined => self.chunker.next_cut(&self.pending[start..]),
                Chunking::Fixed(size) => (self.pending.len() - start).min(size.max(1)),
            };
            emit(&self.pending[start..start + len]);
            start += len;
        }
        if start >= COMPACT_WINDOWS * window || start == self.pending.len() {
            self.pending.drain(..start);
            start = 0;
        }
        self.start = start;
    }
}

/// What [`StreamArchive::add_stream_with`] gathers from a stream's chunks.
struct Collected<'a> {
    saver: &'a BlobSaver,
    content: Vec<Id>,
    digest: Sha256,
    batch: Vec<(Id, Vec<u8>)>,
    batch_bytes: usize,
    /// Newlines seen, counted per chunk rather than per (row-sized) piece.
    lines: u64,
}

impl Collected<'_> {
    fn take(&mut self, chunk: &[u8]) {
        self.lines += memchr_count(b'\n', chunk);
        let id = Id::hash(chunk);
        self.digest.update(id.0);
        self.content.push(id);
        self.batch_bytes += chunk.len();
        let mut buffer = self.saver.buffer();
        buffer.extend_from_slice(chunk);
        self.batch.push((id, buffer));
    }

    fn take_batch(&mut self) -> Vec<(Id, Vec<u8>)> {
        self.batch_bytes = 0;
        std::mem::take(&mut self.batch)
    }
}

/// A stream's chunk digest: SHA-256 over the ids (SHA-256) of its chunks,
/// in order, as the archive cut them. It identifies the content as surely
/// as a SHA-256 of the bytes, and costs a backup nothing, because the
/// chunk ids are computed anyway; checking a copy of the data against it
/// (a restored table read back) cuts that copy with the same chunker.
#[derive(Debug, Clone)]
pub struct ChunkDigest {
    cutter: StreamCutter,
    hasher: Sha256,
}

impl ChunkDigest {
    /// A digest matching what [`StreamArchive`] computes for streams of
    /// `repo` cut with `params` (content-defined).
    pub fn new(repo: &Repository, params: ChunkerParams) -> ChunkDigest {
        let chunker = Chunker::new(repo.config().chunker_seed(), params);
        ChunkDigest { cutter: StreamCutter::new(chunker, Chunking::ContentDefined), hasher: Sha256::new() }
    }

    pub fn update(&mut self, piece: &[u8]) {
        let hasher = &mut self.hasher;
        self.cutter.push(piece, |chunk| hasher.update(Id::hash(chunk).0));
    }

    pub fn finish(mut self) -> [u8; 32] {
        let hasher = &mut self.hasher;
        self.cutter.finish(|chunk| hasher.update(Id::hash(chunk).0));
        self.hasher.finalize().into()
    }
}

/// How a stream is cut into blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chunking {
    /// The archive's content-defined chunker (the sizes given to [`StreamArchive::start`]).
    #[default]
    ContentDefined,
    /// Fixed-size blobs at offsets that are multiples of the size: for files
    /// changed in place in fixed pages (database relation files), where a
    /// changed page should cost that page's blob and nothing more.
    Fixed(usize),
}

/// File system metadata for an entry, when the source has some (a tar
/// stream does); entries without it get the backup time, mode 0640 (0750
/// for directories) and the backing-up user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Permission bits (`0o600`); the type comes from the entry kind.
    pub permissions: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: DateTime<FixedOffset>,
}

/// The snapshot-level facts a source supplies when it finishes.
#[derive(Debug, Clone, Default)]
pub struct SnapshotInfo {
    /// What the snapshot is of, shown by `snapshots` (restic's `paths`).
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub hostname: Option<String>,
    pub source_kind: String,
    /// How the source was taken (`logical`, `physical`, ...).
    pub mode: String,
    pub source_name: Option<String>,
    pub warnings: Vec<String>,
    /// Source-specific facts stored in the snapshot's `cairn.metadata`.
    pub metadata: serde_json::Value,
}

/// Builds one snapshot out of named byte streams.
pub struct StreamArchive {
    repo: Repository,
    saver: Arc<BlobSaver>,
    chunker: Chunker,
    started: DateTime<FixedOffset>,
    files: Mutex<BTreeMap<String, Node>>,
    dirs: Mutex<BTreeMap<String, EntryMeta>>,
    bytes_processed: AtomicU64,
}

impl std::fmt::Debug for StreamArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamArchive").field("repo", &self.repo).finish_non_exhaustive()
    }
}

impl StreamArchive {
    /// Loads the index (adopting packs an interrupted run left unindexed, as
    /// volume backups do) and starts the write pipeline.
    pub async fn start(
        repo: &Repository,
        params: ChunkerParams,
        opts: SaverOptions,
    ) -> Result<StreamArchive> {
        let started = chrono::Local::now().fixed_offset();
        let mut index = repo.load_index().await?;
        let adopted = repo.find_unindexed_packs(&index).await?;
        if !adopted.is_empty() {
            tracing::info!(packs = adopted.len(), "reusing packs left by an interrupted backup");
        }
        for (pack, blobs) in &adopted {
            index.add_pack(*pack, blobs);
        }
        let saver = BlobSaver::start(repo, Arc::new(index), opts);
        saver.adopt_packs(adopted);
        Ok(StreamArchive {
            repo: repo.clone(),
            saver: Arc::new(saver),
            chunker: Chunker::new(repo.config().chunker_seed(), params),
            started,
            files: Mutex::new(BTreeMap::new()),
            dirs: Mutex::new(BTreeMap::new()),
            bytes_processed: AtomicU64::new(0),
        })
    }

    /// Live pipeline counters, for progress display.
    pub fn stats(&self) -> Arc<SaverStats> {
        self.saver.stats()
    }

    /// Stores everything `stream` yields as the file at `path` (`/`-separated,
    /// relative to the snapshot root). Each path may be added once.
    pub async fn add_stream<S, E>(&self, path: &str, stream: S) -> Result<StreamFile>
    where
        S: Stream<Item = std::result::Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        self.add_stream_with(path, stream, None, Chunking::ContentDefined).await
    }

    /// [`add_stream`](Self::add_stream) with the entry's own metadata and a chunking choice.
    pub async fn add_stream_with<S, E>(
        &self,
        path: &str,
        stream: S,
        meta: Option<EntryMeta>,
        chunking: Chunking,
    ) -> Result<StreamFile>
    where
        S: Stream<Item = std::result::Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let mut stream = std::pin::pin!(stream);
        let mut cutter = StreamCutter::new(self.chunker.clone(), chunking);
        // Chunks are hashed here, on the producer's task: the ids make the
        // file's content list and its digest, known blobs never leave this
        // thread, and new ones travel to the pipeline in batches.
        let mut out = Collected {
            saver: &self.saver,
            content: Vec::new(),
            digest: Sha256::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            lines: 0,
        };
        let mut size = 0u64;
        loop {
            match stream.next().await {
                Some(piece) => {
                    let piece = piece
                        .map_err(|e| RepoError::Pipeline(format!("reading the stream for {path}: {e}")))?;
                    size += piece.len() as u64;
                    cutter.push(&piece, |chunk| out.take(chunk));
                }
                None => {
                    cutter.finish(|chunk| out.take(chunk));
                    break;
                }
            }
            if out.batch_bytes >= BATCH_BYTES {
                self.saver.queue_hashed_async(out.take_batch(), BlobType::Data).await?;
            }
        }
        self.saver.queue_hashed_async(out.take_batch(), BlobType::Data).await?;
        let Collected { content, digest, lines, .. } = out;
        self.bytes_processed.fetch_add(size, Ordering::Relaxed);
        self.insert_file(path, size, content, meta)?;
        Ok(StreamFile { size, digest: digest.finalize().into(), lines })
    }

    /// Stores a small in-memory document (a manifest, a schema) as a file.
    pub async fn add_bytes(&self, path: &str, data: Vec<u8>) -> Result<StreamFile> {
        let piece: std::result::Result<Bytes, std::convert::Infallible> = Ok(Bytes::from(data));
        self.add_stream(path, futures::stream::iter([piece])).await
    }

    /// Records a directory (so empty ones exist in the snapshot) and its metadata.
    pub fn add_dir(&self, path: &str, meta: EntryMeta) {
        let path = path.trim_end_matches('/');
        if !path.is_empty() {
            self.dirs.lock().expect("dirs lock").insert(path.to_string(), meta);
        }
    }

    fn insert_file(&self, path: &str, size: u64, content: Vec<Id>, meta: Option<EntryMeta>) -> Result<()> {
        let name = path.rsplit('/').next().unwrap_or(path);
        let mut node = Node { size, content: Some(content), ..self.node(name, NodeType::File, 0o100640) };
        if let Some(m) = meta {
            apply_meta(&mut node, &m, 0o100000);
        }
        let mut files = self.files.lock().expect("files lock");
        if files.insert(path.to_string(), node).is_some() {
            return Err(RepoError::Pipeline(format!("{path} was added to the snapshot twice")));
        }
        Ok(())
    }

    fn node(&self, name: &str, node_type: NodeType, st_mode: u32) -> Node {
        let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        Node {
            name: name.as_bytes().to_vec(),
            node_type,
            mode: go_mode::from_unix(st_mode),
            mtime: self.started,
            atime: self.started,
            ctime: self.started,
            uid,
            gid,
            user: String::new(),
            group: String::new(),
            inode: 0,
            device_id: 0,
            size: 0,
            links: 1,
            linktarget: String::new(),
            linktarget_raw: None,
            extended_attributes: Vec::new(),
            device: 0,
            content: None,
            subtree: None,
            error: String::new(),
        }
    }

    /// Saves the directory trees, waits until every blob and index file is
    /// durable, then writes the snapshot (in that order, so a crash leaves no
    /// snapshot pointing at missing data).
    pub async fn finish(self, info: SnapshotInfo) -> Result<(Id, Snapshot)> {
        let files = std::mem::take(&mut *self.files.lock().expect("files lock"));
        let dirs = std::mem::take(&mut *self.dirs.lock().expect("dirs lock"));
        let tree = self.save_dir(&files, &dirs, "").await?;
        let StreamArchive { repo, saver, bytes_processed, started, .. } = self;
        let saver = Arc::try_unwrap(saver)
            .map_err(|_| RepoError::Pipeline("blob saver still in use at the end of the backup".into()))?;
        let totals = saver.finish().await?;
        let (hostname, username) = host_and_user();
        let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        let summary = SnapshotSummary {
            backup_start: started,
            backup_end: chrono::Local::now().fixed_offset(),
            files_new: files.len() as u64,
            data_blobs: totals.blobs_new - totals.tree_blobs_new,
            tree_blobs: totals.tree_blobs_new,
            data_added: totals.bytes_new,
            data_added_packed: totals.bytes_stored,
            total_files_processed: files.len() as u64,
            total_bytes_processed: bytes_processed.load(Ordering::Relaxed),
            ..SnapshotSummary::default()
        };
        let snapshot = Snapshot {
            time: started,
            parent: None,
            tree,
            paths: info.paths,
            hostname: info.hostname.unwrap_or(hostname),
            username,
            uid,
            gid,
            excludes: Vec::new(),
            tags: info.tags,
            original: None,
            program_version: format!("cairn {}", env!("CARGO_PKG_VERSION")),
            summary: Some(summary),
            cairn: Some(CairnSnapshotMeta {
                source_kind: info.source_kind,
                mode: info.mode,
                source_name: info.source_name,
                warnings: info.warnings,
                metadata: info.metadata,
            }),
        };
        let id = repo.save_json(FileType::Snapshot, &snapshot).await?;
        Ok((id, snapshot))
    }

    /// Saves the tree for directory `prefix` (`""` is the root) and, first,
    /// every directory below it.
    fn save_dir<'a>(
        &'a self,
        files: &'a BTreeMap<String, Node>,
        dirs: &'a BTreeMap<String, EntryMeta>,
        prefix: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Id>> {
        Box::pin(async move {
            let mut tree = Tree::default();
            let mut subdirs: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
            let below = files.range(prefix.to_string()..).take_while(|(p, _)| p.starts_with(prefix));
            for (path, node) in below {
                match path[prefix.len()..].split_once('/') {
                    None => tree.nodes.push(node.clone()),
                    Some((dir, _)) => {
                        subdirs.insert(dir);
                    }
                }
            }
            let dirs_below = dirs.range(prefix.to_string()..).take_while(|(p, _)| p.starts_with(prefix));
            for (path, _) in dirs_below {
                let rest = &path[prefix.len()..];
                subdirs.insert(rest.split_once('/').map_or(rest, |(d, _)| d));
            }
            for dir in subdirs {
                let sub_prefix = format!("{prefix}{dir}/");
                let subtree = self.save_dir(files, dirs, &sub_prefix).await?;
                let mut node = Node { subtree: Some(subtree), ..self.node(dir, NodeType::Dir, 0o040750) };
                if let Some(m) = dirs.get(&format!("{prefix}{dir}")) {
                    apply_meta(&mut node, m, 0o040000);
                }
                tree.nodes.push(node);
            }
            tree.nodes.sort_by(|a, b| a.name.cmp(&b.name));
            let saved = self.saver.save_async(tree.to_blob(), BlobType::Tree).await?;
            Ok(saved.id)
        })
    }
}

fn apply_meta(node: &mut Node, m: &EntryMeta, type_bits: u32) {
    node.mode = go_mode::from_unix(type_bits | (m.permissions & 0o7777));
    node.uid = m.uid;
    node.gid = m.gid;
    node.mtime = m.mtime;
    node.ctime = m.mtime;
    node.atime = m.mtime;
}

fn memchr_count(needle: u8, haystack: &[u8]) -> u64 {
    memchr::memchr_iter(needle, haystack).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::LocalBackend;

    fn pieces(data: &[u8], step: usize) -> impl Stream<Item = std::result::Result<Bytes, String>> + '_ {
        futures::stream::iter(data.chunks(step).map(|c| Ok(Bytes::copy_from_slice(c))))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_become_files_that_read_back_and_deduplicate() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(LocalBackend::new(dir.path()));
        let repo = Repository::init_with(backend, "pw", cairn_crypto::KdfParams { n: 1 << 10, r: 8, p: 1 })
            .await
            .unwrap();
        let mut data = Vec::new();
        let mut x = 7u64;
        for i in 0..200_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            data.extend_from_slice(format!("{i}\t{}\n", x >> 20).as_bytes());
        }
        let params = ChunkerParams::new(1 << 12, 1 << 14, 1 << 16);
        let archive = StreamArchive::start(&repo, params, SaverOptions::default()).await.unwrap();
        let a = archive.add_stream("db/tables/a.copy", pieces(&data, 10_007)).await.unwrap();
        archive.add_bytes("manifest.json", b"{}".to_vec()).await.unwrap();
        assert_eq!(a.lines, 200_000);
        assert_eq!(a.size, data.len() as u64);
        // The digest is the same whatever pieces the data comes in, and
        // changes with the data.
        let digest_of = |data: &[u8], step: usize| {
            let mut d = ChunkDigest::new(&repo, params);
            data.chunks(step).for_each(|piece| d.update(piece));
            d.finish()
        };
        assert_eq!(a.digest, digest_of(&data, 10_007));
        assert_eq!(a.digest, digest_of(&data, 1 << 20));
        assert_eq!(a.digest, digest_of(&data, 333));
        assert_ne!(a.digest, digest_of(&data[1..], 10_007));
        let (_, snap) = archive
            .finish(SnapshotInfo {
                paths: vec!["test".into()],
                source_kind: "test".into(),
                ..Default::default()
            })
            .await
            .unwrap();

        let index = repo.load_index().await.unwrap();
        let root = repo.load_tree(&index, &snap.tree).await.unwrap();
        let names: Vec<_> = root.nodes.iter().map(|n| n.name_lossy()).collect();
        assert_eq!(names, ["db", "manifest.json"]);
        let db = repo.load_tree(&index, root.nodes[0].subtree.as_ref().unwrap()).await.unwrap();
        let tables = repo.load_tree(&index, db.nodes[0].subtree.as_ref().unwrap()).await.unwrap();
        let file = &tables.nodes[0];
        assert_eq!(file.name_lossy(), "a.copy");
        let mut back = Vec::new();
        for id in file.content.as_ref().unwrap() {
            back.extend(repo.read_blob(&index, BlobType::Data, id).await.unwrap());
        }
        assert!(back == data, "content read back differs");
        let chunks = file.content.as_ref().unwrap().len();
        assert!(chunks > 100, "16 KiB chunks expected, got {chunks} for {} bytes", data.len());

        // One changed line in the middle: only the chunks around it are new.
        let mut next = data.clone();
        let mid = next.len() / 2;
        next[mid] = if next[mid] == b'1' { b'2' } else { b'1' };
        let archive = StreamArchive::start(&repo, params, SaverOptions::default()).await.unwrap();
        archive.add_stream("db/tables/a.copy", pieces(&next, 65_536)).await.unwrap();
        let stats = archive.stats();
        archive
            .finish(SnapshotInfo {
                paths: vec!["test".into()],
                source_kind: "test".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let new_data_blobs =
            stats.blobs_new.load(Ordering::Relaxed) - stats.tree_blobs_new.load(Ordering::Relaxed);
        assert!(new_data_blobs <= 2, "{new_data_blobs} data blobs stored for a one-byte change");
    }
}
