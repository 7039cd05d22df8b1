//! The write pipeline: blobs in, packs and index files out.
//!
//! ```text
//! callers ──(bounded queue)──▶ N worker threads ──▶ uploader (async) ──▶ backend
//!            save / save_async   hash, dedup,         bounded parallel puts,
//!                                compress, encrypt,   then index files for
//!                                append to own pack   uploaded packs only
//! ```
//!
//! Each worker thread owns one data pack and one tree pack under
//! construction, so the CPU-heavy steps (SHA-256, zstd, AES, Poly1305) run
//! on all cores without sharing buffers. A blob already in the repository
//! index, or already claimed by another worker in this run, is not stored
//! again.
//!
//! Crash safety comes from ordering: an index file only ever names packs
//! whose upload has completed, and the snapshot (written by the caller after
//! [`BlobSaver::finish`]) only names blobs whose index is written. Index
//! files are flushed every few packs, so a run killed half-way leaves packs
//! that the next run's index already knows about and does not upload again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_store::{FileType, Handle, PutOptions};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;

use crate::error::{RepoError, Result};
use crate::format::BlobType;
use crate::id::Id;
use crate::index::{Index, IndexBuilder};
use crate::pack::{FinishedPack, PackBuilder};
use crate::repository::Repository;

/// Tuning for the pipeline.
#[derive(Debug, Clone)]
pub struct SaverOptions {
    /// Worker threads doing hashing, compression and encryption.
    pub workers: usize,
    /// A pack is closed once its blobs reach this many bytes.
    pub pack_size: usize,
    /// zstd level for blobs (restic's "auto" is close to level 3).
    pub compression_level: i32,
    /// Uploads in flight at once.
    pub max_uploads: usize,
    /// Write an index file after this many uploaded packs...
    pub index_flush_packs: usize,
    /// ...or after this much time with at least one pack waiting.
    pub index_flush_interval: Duration,
}

impl Default for SaverOptions {
    fn default() -> Self {
        SaverOptions {
            workers: num_cpus::get().max(1),
            pack_size: 16 << 20,
            compression_level: 3,
            max_uploads: 4,
            index_flush_packs: 8,
            index_flush_interval: Duration::from_secs(30),
        }
    }
}

/// The outcome of saving one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedBlob {
    pub id: Id,
    /// Plaintext size.
    pub size: u64,
    /// Whether this run stored it (false: deduplicated).
    pub new: bool,
}

/// Counters, readable while the pipeline runs (for progress bars).
#[derive(Debug, Default)]
pub struct SaverStats {
    pub blobs_seen: AtomicU64,
    pub bytes_seen: AtomicU64,
    pub blobs_new: AtomicU64,
    pub tree_blobs_new: AtomicU64,
    pub bytes_new: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub packs_uploaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
}

/// Totals after [`BlobSaver::finish`].
#[derive(Debug, Clone, Default)]
pub struct SaverSummary {
    pub blobs_new: u64,
    pub tree_blobs_new: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
    pub packs_uploaded: u64,
    pub index_files: Vec<Id>,
}

enum Job {
    /// One blob; the worker hashes it and replies with the outcome.
    One { data: Vec<u8>, kind: BlobType, reply: oneshot::Sender<Result<SavedBlob>> },
    /// Blobs their producer hashed and found missing from the index: no
    /// reply, a failure surfaces at [`BlobSaver::finish`]. One message for
    /// many small blobs keeps thread wake-ups off the per-blob path.
    Hashed { blobs: Vec<(Id, Vec<u8>)>, kind: BlobType },
}

struct Shared {
    repo: Repository,
    index: Arc<Index>,
    in_flight: Mutex<HashSet<(Id, BlobType)>>,
    stats: Arc<SaverStats>,
    failure: Mutex<Option<String>>,
    opts: SaverOptions,
    /// Partial packs of workers that have finished, merged by the last one
    /// so a small backup makes one data pack and one tree pack, not one per worker.
    leftovers: Mutex<(Option<PackBuilder>, Option<PackBuilder>)>,
    workers_running: std::sync::atomic::AtomicUsize,
    /// Packs found in the repository but in no index, adopted by this run.
    adopted: Mutex<Vec<(Id, Vec<crate::pack::PackedBlob>)>>,
    /// Blob buffers workers are done with, for producers to fill again
    /// ([`BlobSaver::buffer`]). A buffer allocated on a producer's thread
    /// and freed on a worker's goes back to the allocator the slow way, and
    /// the producer's next one comes from freshly zeroed pages: recycling
    /// took a tenth off a database dump's CPU time.
    spare_buffers: Mutex<Vec<Vec<u8>>>,
}

/// Buffers kept in [`Shared::spare_buffers`] at most.
const SPARE_BUFFERS: usize = 256;
/// Buffers larger than this are not kept (file chunks are up to 8 MiB).
const SPARE_BUFFER_MAX: usize = 256 << 10;

impl Shared {
    fn fail(&self, message: String) {
        let mut f = self.failure.lock().expect("failure lock");
        if f.is_none() {
            *f = Some(message);
        }
    }

    fn failed(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }
}

/// A running pipeline. Clone-free: share it behind an `Arc` if several
/// producers feed it; `finish` needs the last reference.
pub struct BlobSaver {
    jobs: flume::Sender<Job>,
    shared: Arc<Shared>,
    workers: Vec<std::thread::JoinHandle<()>>,
    uploader: tokio::task::JoinHandle<Result<Vec<Id>>>,
}

impl BlobSaver {
    /// Starts worker threads and the uploader. Must be called inside a Tokio runtime.
    pub fn start(repo: &Repository, index: Arc<Index>, opts: SaverOptions) -> BlobSaver {
        let (job_tx, job_rx) = flume::bounded::<Job>(opts.workers * 4);
        let (pack_tx, pack_rx) = tokio::sync::mpsc::channel::<FinishedPack>(opts.workers.max(2));
        let shared = Arc::new(Shared {
            repo: repo.clone(),
            index,
            in_flight: Mutex::new(HashSet::new()),
            stats: Arc::new(SaverStats::default()),
            failure: Mutex::new(None),
            opts: opts.clone(),
            leftovers: Mutex::new((None, None)),
            workers_running: std::sync::atomic::AtomicUsize::new(opts.workers),
            adopted: Mutex::new(Vec::new()),
            spare_buffers: Mutex::new(Vec::new()),
        });
        let workers = (0..opts.workers)
            .map(|i| {
                let rx = job_rx.clone();
                let tx = pack_tx.clone();
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("cairn-saver-{i}"))
                    .spawn(move || worker_loop(&shared, rx, tx))
                    .expect("spawning a worker thread")
            })
            .collect();
        drop(pack_tx);
        let uploader = tokio::spawn(upload_loop(shared.clone(), pack_rx));
        BlobSaver { jobs: job_tx, shared, workers, uploader }
    }

    /// Records packs that exist in the repository but in no index (left by
    /// a killed run); they go into this run's first index file, so their
    /// blobs are reused now and findable later.
    pub fn adopt_packs(&self, packs: Vec<(Id, Vec<crate::pack::PackedBlob>)>) {
        self.shared.adopted.lock().expect("adopted lock").extend(packs);
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<SaverStats> {
        self.shared.stats.clone()
    }

    /// Queues a blob from a synchronous thread (blocks while the queue is
    /// full, which is the pipeline's backpressure). Await the receiver for
    /// the blob's id.
    pub fn save(&self, data: Vec<u8>, kind: BlobType) -> oneshot::Receiver<Result<SavedBlob>> {
        let (reply, rx) = oneshot::channel();
        if let Err(flume::SendError(Job::One { reply, .. })) = self.jobs.send(Job::One { data, kind, reply })
        {
            let _ = reply.send(Err(RepoError::Pipeline("pipeline already finished".into())));
        }
        rx
    }

    /// Queues a blob from async code.
    pub async fn save_async(&self, data: Vec<u8>, kind: BlobType) -> Result<SavedBlob> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send_async(Job::One { data, kind, reply })
            .await
            .map_err(|_| RepoError::Pipeline("pipeline already finished".into()))?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// Queues a blob from async code without waiting for it to be saved,
    /// so one producer can keep every worker busy. Waits only while the
    /// queue is full.
    pub async fn queue_async(
        &self,
        data: Vec<u8>,
        kind: BlobType,
    ) -> Result<oneshot::Receiver<Result<SavedBlob>>> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send_async(Job::One { data, kind, reply })
            .await
            .map_err(|_| RepoError::Pipeline("pipeline already finished".into()))?;
        Ok(rx)
    }

    /// An empty buffer to fill with a blob for [`queue_hashed_async`](Self::queue_hashed_async),
    /// recycled from blobs already stored when there is one.
    pub fn buffer(&self) -> Vec<u8> {
        self.shared.spare_buffers.lock().expect("buffers lock").pop().unwrap_or_default()
    }

    /// Queues blobs whose ids the caller computed ([`Id::hash`] of each),
    /// without waiting for them. Blobs the repository already has are
    /// counted and dropped here, on the caller's thread; the rest go to a
    /// worker as one message. Errors show up at [`finish`](Self::finish)
    /// (and in [`failure`](Self::failure)); waits only while the queue is full.
    pub async fn queue_hashed_async(&self, mut blobs: Vec<(Id, Vec<u8>)>, kind: BlobType) -> Result<()> {
        let stats = &self.shared.stats;
        stats.blobs_seen.fetch_add(blobs.len() as u64, Ordering::Relaxed);
        stats.bytes_seen.fetch_add(blobs.iter().map(|(_, b)| b.len() as u64).sum(), Ordering::Relaxed);
        blobs.retain(|(id, _)| !self.shared.index.contains(id, kind));
        if blobs.is_empty() {
            return Ok(());
        }
        self.jobs.send_async(Job::Hashed { blobs, kind }).await.map_err(|_| {
            RepoError::Pipeline(self.shared.failed().unwrap_or_else(|| "pipeline already finished".into()))
        })
    }

    fn stopped(&self) -> RepoError {
        RepoError::Pipeline(self.shared.failed().unwrap_or_else(|| "worker stopped".into()))
    }

    /// The first failure, if the pipeline has failed.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed()
    }

    /// Flushes partial packs, waits for every upload and writes the final
    /// index file. Only after this returns `Ok` may a snapshot reference the
    /// saved blobs.
    pub async fn finish(self) -> Result<SaverSummary> {
        let BlobSaver { jobs, shared, workers, uploader } = self;
        drop(jobs);
        tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await
        .map_err(|e| RepoError::Pipeline(format!("worker panicked: {e}")))?;
        let index_files =
            uploader.await.map_err(|e| RepoError::Pipeline(format!("uploader panicked: {e}")))??;
        if let Some(f) = shared.failed() {
            return Err(RepoError::Pipeline(f));
        }
        let s = &shared.stats;
        Ok(SaverSummary {
            blobs_new: s.blobs_new.load(Ordering::Relaxed),
            tree_blobs_new: s.tree_blobs_new.load(Ordering::Relaxed),
            bytes_new: s.bytes_new.load(Ordering::Relaxed),
            bytes_stored: s.bytes_stored.load(Ordering::Relaxed),
            packs_uploaded: s.packs_uploaded.load(Ordering::Relaxed),
            index_files,
        })
    }
}

/// Compresses `data` unless it looks incompressible. Random data (media,
/// encrypted or already-compressed files) would cost a full zstd pass for
/// nothing, so a cheap byte-entropy estimate over a sample decides first.
fn maybe_compress(compressor: &mut zstd::bulk::Compressor<'_>, data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < 64 || looks_incompressible(data) {
        return None;
    }
    let c = compressor.compress(data).ok()?;
    (c.len() < data.len()).then_some(c)
}

/// Shannon entropy of 4 KiB from the middle of `data`, against a threshold
/// of 7.9 bits per byte. Text and most structured data sit far below (2–6
/// bits); random and compressed data sit at 7.95 or more (the estimate from
/// 4096 bytes reads about 0.05 bits low for random data, still above).
/// The sample stays small because dump streams are cut into 16 KiB blobs:
/// counting every byte of those cost more than a tenth of a database backup.
fn looks_incompressible(data: &[u8]) -> bool {
    const SAMPLE: usize = 4 << 10;
    if data.len() < SAMPLE {
        // Too short for a meaningful estimate; let zstd decide.
        return false;
    }
    let mid = data.len() / 2;
    let sample = &data[mid - SAMPLE / 2..mid + SAMPLE / 2];
    // Four tables, so consecutive equal bytes do not wait on each other's
    // increments.
    let mut counts = [[0u32; 256]; 4];
    for quad in sample.chunks_exact(4) {
        for (table, &b) in counts.iter_mut().zip(quad) {
            table[b as usize] += 1;
        }
    }
    let n = SAMPLE as f64;
    let entropy: f64 = (0..256)
        .map(|b| counts.iter().map(|t| t[b]).sum::<u32>())
        .filter(|&c| c > 0)
        .map(|c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    entropy > 7.9
}

fn worker_loop(shared: &Shared, jobs: flume::Receiver<Job>, packs: tokio::sync::mpsc::Sender<FinishedPack>) {
    let key = shared.repo.key().clone();
    let cap = shared.opts.pack_size + (1 << 20);
    let mut data_pack = PackBuilder::new(0);
    let mut tree_pack = PackBuilder::new(0);
    let mut compressor =
        zstd::bulk::Compressor::new(shared.opts.compression_level).expect("zstd level is valid");
    let stats = &shared.stats;
    // Stores one blob unless it is known or claimed; returns whether it was new.
    let mut store = |id: Id, data: &[u8], kind: BlobType| -> bool {
        let new = !shared.index.contains(&id, kind)
            && shared.in_flight.lock().expect("in-flight lock").insert((id, kind));
        if !new {
            return false;
        }
        let pack = match kind {
            BlobType::Data => &mut data_pack,
            BlobType::Tree => &mut tree_pack,
        };
        if pack.is_empty() {
            *pack = PackBuilder::new(cap);
        }
        let before = pack.len();
        match maybe_compress(&mut compressor, data) {
            Some(c) => pack.add(&key, id, kind, &c, Some(data.len() as u32)),
            None => pack.add(&key, id, kind, data, None),
        }
        stats.blobs_new.fetch_add(1, Ordering::Relaxed);
        if kind == BlobType::Tree {
            stats.tree_blobs_new.fetch_add(1, Ordering::Relaxed);
        }
        stats.bytes_new.fetch_add(data.len() as u64, Ordering::Relaxed);
        stats.bytes_stored.fetch_add((pack.len() - before) as u64, Ordering::Relaxed);
        if pack.len() >= shared.opts.pack_size {
            let full = std::mem::replace(pack, PackBuilder::new(0)).finish(&key);
            if packs.blocking_send(full).is_err() {
                shared.fail("uploader stopped".into());
            }
        }
        true
    };
    for job in jobs.iter() {
        match job {
            Job::One { data, kind, reply } => {
                if let Some(f) = shared.failed() {
                    let _ = reply.send(Err(RepoError::Pipeline(f)));
                    continue;
                }
                let id = Id::hash(&data);
                let size = data.len() as u64;
                stats.blobs_seen.fetch_add(1, Ordering::Relaxed);
                stats.bytes_seen.fetch_add(size, Ordering::Relaxed);
                let new = store(id, &data, kind);
                drop(data);
                let _ = reply.send(Ok(SavedBlob { id, size, new }));
            }
            Job::Hashed { blobs, kind } => {
                if shared.failed().is_some() {
                    continue;
                }
                for (id, mut data) in blobs {
                    debug_assert_eq!(id, Id::hash(&data), "queue_hashed_async got a wrong id");
                    store(id, &data, kind);
                    if data.capacity() <= SPARE_BUFFER_MAX {
                        let mut spare = shared.spare_buffers.lock().expect("buffers lock");
                        if spare.len() < SPARE_BUFFERS {
                            data.clear();
                            spare.push(data);
                        }
                    }
                }
            }
        }
    }
    let last = {
        let mut guard = shared.leftovers.lock().expect("leftovers lock");
        let (data_left, tree_left) = &mut *guard;
        for (slot, pack) in [(data_left, data_pack), (tree_left, tree_pack)] {
            if pack.is_empty() {
                continue;
            }
            match slot {
                Some(existing) => existing.absorb(pack),
                None => *slot = Some(pack),
            }
        }
        shared.workers_running.fetch_sub(1, Ordering::AcqRel) == 1
    };
    if last {
        let (data, tree) = std::mem::take(&mut *shared.leftovers.lock().expect("leftovers lock"));
        for pack in [data, tree].into_iter().flatten() {
            if packs.blocking_send(pack.finish(&key)).is_err() {
                shared.fail("uploader stopped".into());
            }
        }
    }
}

async fn upload_loop(
    shared: Arc<Shared>,
    mut packs: tokio::sync::mpsc::Receiver<FinishedPack>,
) -> Result<Vec<Id>> {
    let limit = Arc::new(Semaphore::new(shared.opts.max_uploads.max(1)));
    let pending = Arc::new(Mutex::new(IndexBuilder::default()));
    let mut uploads = JoinSet::new();
    let mut index_files = Vec::new();
    let mut last_flush = Instant::now();
    let mut first_error: Option<RepoError> = None;
    let adopt = |pending: &Mutex<IndexBuilder>| {
        for (id, blobs) in shared.adopted.lock().expect("adopted lock").drain(..) {
            pending.lock().expect("index lock").add_pack(id, &blobs);
        }
    };

    loop {
        tokio::select! {
            pack = packs.recv() => {
                let Some(pack) = pack else { break };
                let permit = limit.clone().acquire_owned().await.expect("semaphore open");
                let shared = shared.clone();
                let pending = pending.clone();
                uploads.spawn(async move {
                    let _permit = permit;
                    let handle = Handle::new(FileType::Pack, pack.id.to_hex());
                    let size = pack.bytes.len() as u64;
                    let opts = PutOptions { sha256: Some(pack.id.0), ..PutOptions::default() };
                    shared.repo.backend().put(&handle, pack.bytes, opts).await?;
                    shared.stats.packs_uploaded.fetch_add(1, Ordering::Relaxed);
                    shared.stats.bytes_uploaded.fetch_add(size, Ordering::Relaxed);
                    pending.lock().expect("index lock").add_pack(pack.id, &pack.blobs);
                    tracing::debug!(pack = %pack.id.short(), size, "pack uploaded");
                    Ok::<(), RepoError>(())
                });
            }
            Some(done) = uploads.join_next(), if !uploads.is_empty() => {
                if let Err(e) = flatten(done) {
                    shared.fail(e.to_string());
                    first_error.get_or_insert(e);
                }
            }
        }
        let due = {
            let p = pending.lock().expect("index lock");
            p.pack_count() >= shared.opts.index_flush_packs
                || (!p.is_empty() && last_flush.elapsed() >= shared.opts.index_flush_interval)
        };
        if due && first_error.is_none() {
            adopt(&pending);
            let file = pending.lock().expect("index lock").take();
            index_files.push(shared.repo.save_json(FileType::Index, &file).await?);
            last_flush = Instant::now();
        }
    }
    while let Some(done) = uploads.join_next().await {
        if let Err(e) = flatten(done) {
            shared.fail(e.to_string());
            first_error.get_or_insert(e);
        }
    }
    // Even after a failure, index what did land so the next run reuses it.
    adopt(&pending);
    let file = pending.lock().expect("index lock").take();
    if !file.packs.is_empty() {
        index_files.push(shared.repo.save_json(FileType::Index, &file).await?);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(index_files),
    }
}

fn flatten(r: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    r.map_err(|e| RepoError::Pipeline(format!("upload task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_estimate_separates_text_from_random() {
        let text = "2026-11-23 INFO request served in 12ms path=/api/v1/items\n".repeat(2000);
        assert!(!looks_incompressible(text.as_bytes()));
        let mut x = 0x9E3779B97F4A7C15u64;
        let random: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(looks_incompressible(&random));
        // Blob sizes of dump streams: the smallest sample still tells.
        for len in [4096, 5000, 16 << 10] {
            assert!(looks_incompressible(&random[..len]), "{len} random bytes");
            assert!(!looks_incompressible(&text.as_bytes()[..len]), "{len} bytes of text");
        }
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        assert!(maybe_compress(&mut c, &random).is_none());
        assert!(maybe_compress(&mut c, text.as_bytes()).unwrap().len() < text.len() / 10);
        // Short inputs are left to zstd.
        assert!(maybe_compress(&mut c, &[b'a'; 1000]).is_some());
    }
}
