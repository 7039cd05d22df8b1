//! Writing a stream-shaped snapshot: named byte streams through the shared
//! pipeline, and the envelope that lists them.
//!
//! A thin layer over [`StreamArchive`]: every stream added is recorded in
//! the [`Envelope`] (path, size, chunk digest) unless the writer was started
//! for a file tree (a base backup's thousands of files, where the tree is
//! the list), and [`SnapshotWriter::finish`] writes the envelope at
//! [`crate::ENVELOPE_PATH`] before the trees, the index and the snapshot
//! (which the repository writes last, behind its commit checks).

use std::sync::Mutex;

use bytes::Bytes;
use cairn_repo::archive::{Chunking, EntryMeta, SnapshotInfo, StreamArchive, StreamFile};
use cairn_repo::chunker::ChunkerParams;
use cairn_repo::{Id, RepoError, SaverOptions, Snapshot};
use futures::Stream;

use crate::{BackupJob, ENVELOPE_PATH, Envelope, Labels, ObjectEntry, StreamEntry};

/// Builds one source snapshot.
pub struct SnapshotWriter {
    archive: StreamArchive,
    envelope: Mutex<Envelope>,
    labels: Labels,
    list_streams: bool,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter").field("labels", &self.labels).finish_non_exhaustive()
    }
}

impl SnapshotWriter {
    /// Starts a snapshot of `kind`/`mode`, cutting streams at `chunking`.
    pub async fn start(
        job: &BackupJob<'_>,
        kind: &str,
        mode: &str,
        chunking: ChunkerParams,
        saver: SaverOptions,
    ) -> Result<SnapshotWriter, RepoError> {
        let archive = StreamArchive::start(job.repository(), chunking, saver).await?;
        let mut envelope = Envelope::new(kind, mode);
        envelope.source_name = job.labels.source_name.clone();
        envelope.chunking = Some([chunking.min, chunking.avg, chunking.max]);
        Ok(SnapshotWriter {
            archive,
            envelope: Mutex::new(envelope),
            labels: job.labels.clone(),
            list_streams: true,
        })
    }

    /// Does not list each stream in the envelope (file-tree modes).
    pub fn without_stream_list(mut self) -> SnapshotWriter {
        self.list_streams = false;
        self
    }

    /// The pipeline's counters, for progress display.
    pub fn stats(&self) -> std::sync::Arc<cairn_repo::SaverStats> {
        self.archive.stats()
    }

    /// Stores everything `stream` yields as the file at `path`.
    pub async fn add_stream<S, E>(&self, path: &str, stream: S) -> Result<StreamFile, RepoError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        self.add_stream_with(path, stream, None, Chunking::ContentDefined).await
    }

    /// [`add_stream`](Self::add_stream) with the entry's metadata and chunking.
    pub async fn add_stream_with<S, E>(
        &self,
        path: &str,
        stream: S,
        meta: Option<EntryMeta>,
        chunking: Chunking,
    ) -> Result<StreamFile, RepoError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let file = self.archive.add_stream_with(path, stream, meta, chunking).await?;
        self.record(path, &file);
        Ok(file)
    }

    /// Stores a small in-memory document.
    pub async fn add_bytes(&self, path: &str, data: Vec<u8>) -> Result<StreamFile, RepoError> {
        let file = self.archive.add_bytes(path, data).await?;
        self.record(path, &file);
        Ok(file)
    }

    pub fn add_dir(&self, path: &str, meta: EntryMeta) {
        self.archive.add_dir(path, meta);
    }

    fn record(&self, path: &str, file: &StreamFile) {
        let mut envelope = self.envelope.lock().expect("envelope");
        *envelope.totals.entry("bytes".into()).or_default() += file.size;
        *envelope.totals.entry("files".into()).or_default() += 1;
        if self.list_streams {
            envelope.streams.push(StreamEntry {
                path: path.to_string(),
                size: file.size,
                digest: hex::encode(file.digest),
            });
        }
    }

    /// What the source reports itself as (`PostgreSQL 15.18`).
    pub fn set_source_version(&self, version: impl Into<String>) {
        self.envelope.lock().expect("envelope").source_version = Some(version.into());
    }

    /// One object of the source, with its count and streams.
    pub fn add_object(&self, object: ObjectEntry) {
        self.envelope.lock().expect("envelope").objects.push(object);
    }

    /// Adds to a total (`tables`, `rows`).
    pub fn add_total(&self, what: &str, n: u64) {
        *self.envelope.lock().expect("envelope").totals.entry(what.into()).or_default() += n;
    }

    /// Writes the envelope, then the trees, the index and the snapshot.
    /// `paths` is what `cairn snapshots` shows the snapshot to be of.
    pub async fn finish(
        self,
        paths: Vec<String>,
        warnings: Vec<String>,
        metadata: serde_json::Value,
    ) -> Result<(Id, Snapshot), RepoError> {
        let envelope = self.envelope.into_inner().expect("envelope");
        // Its own file is not one of the streams it lists.
        let json = serde_json::to_vec_pretty(&envelope).expect("envelopes serialise");
        self.archive.add_bytes(ENVELOPE_PATH, json).await?;
        let info = SnapshotInfo {
            paths,
            tags: self.labels.tags.clone(),
            hostname: Some(self.labels.host.clone()).filter(|h| !h.is_empty()),
            source_kind: envelope.kind.clone(),
            mode: envelope.mode.clone(),
            source_name: self.labels.source_name.clone(),
            warnings,
            metadata,
        };
        self.archive.finish(info).await
    }
}
