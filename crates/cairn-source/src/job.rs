//! What the engine hands an adapter for one piece of work, and what the
//! adapter hands back.
//!
//! A job carries the repository only under a lock: [`BackupJob::new`] and
//! [`RestoreJob::new`] take the [`LockGuard`] the engine holds, so an adapter
//! cannot be given a repository nobody locked, and cannot keep it past the
//! job. Every job carries the one [`Cancel`] token of the run (signals, a
//! lost lease or lock) and a [`Progress`] display.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_repo::lock::LockGuard;
use cairn_repo::reader::SnapshotReader;
use cairn_repo::{Id, Index, Repository, Snapshot};
use serde::Serialize;

use crate::{Cancel, Progress};

/// What a new snapshot is labelled with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    /// The host recorded (`host:` in cairn.yaml, `--host`, `CAIRN_HOST`, or this machine's name).
    pub host: String,
    pub tags: Vec<String>,
    /// The source's name in `cairn.yaml`.
    pub source_name: Option<String>,
}

/// One backup: write a snapshot of the source into the repository.
pub struct BackupJob<'a> {
    repo: &'a Repository,
    pub labels: Labels,
    pub cancel: Cancel,
    pub progress: Arc<Progress>,
}

impl<'a> BackupJob<'a> {
    /// A backup under `lock` (which the caller keeps until the job is done).
    pub fn new(
        lock: &'a LockGuard,
        labels: Labels,
        cancel: Cancel,
        progress: Arc<Progress>,
    ) -> BackupJob<'a> {
        BackupJob { repo: lock.repository(), labels, cancel, progress }
    }

    /// The repository, locked for this job.
    pub fn repository(&self) -> &'a Repository {
        self.repo
    }

    /// Runs `hook` when the job is cancelled, for adapters whose inner loops
    /// poll a flag rather than await the token.
    pub fn on_cancel(&self, hook: impl FnOnce() + Send + 'static) {
        on_cancel(&self.cancel, hook);
    }
}

/// Runs `hook` once `cancel` is cancelled (the task ends with the runtime).
pub(crate) fn on_cancel(cancel: &Cancel, hook: impl FnOnce() + Send + 'static) {
    let cancel = cancel.clone();
    tokio::spawn(async move {
        cancel.cancelled().await;
        hook();
    });
}

/// The `objects` counts of an outcome, from name and number pairs.
pub fn counts<const N: usize>(pairs: [(&str, u64); N]) -> BTreeMap<String, u64> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// What a finished backup reports.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    /// The snapshot the backup compared against (only read what changed).
    pub parent: Option<Id>,
    /// What could not be backed up (the snapshot lists them; exit code 3).
    pub warnings: Vec<String>,
    /// Worth saying, but the snapshot is complete (not exit 3): "WAL
    /// archiving is not configured, so this base backup restores to its end".
    pub notes: Vec<String>,
    /// Counts for the report (`files`, `tables`, `rows`, ...).
    pub objects: BTreeMap<String, u64>,
    /// The human summary, a line or two.
    pub summary: String,
    /// Adapter-specific facts for the JSON report's `details`.
    pub details: serde_json::Value,
}

/// What to do with things that already exist in a restore target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overwrite {
    /// Refuse before writing anything.
    #[default]
    Never,
    /// Replace only what differs (sources that can tell; others treat it as `always`).
    IfChanged,
    /// Replace, after the replacing data is verified (never destroying first).
    Always,
}

/// The restore settings common to every source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRequest {
    /// Where to restore (`--to`): a directory, a URL; adapters may take
    /// their target from their own flags instead (`--data-dir`).
    pub target: Option<String>,
    /// Positional selection: paths inside the snapshot.
    pub paths: Vec<String>,
    pub overwrite: Overwrite,
    pub dry_run: bool,
    /// After restoring, compare the target with the snapshot.
    pub verify: bool,
    /// Work done at once (tables loaded, files written).
    pub jobs: usize,
    /// Make what the restore writes durable (fsync) before it reports
    /// success; off only for scratch restores (`--no-fsync`).
    pub fsync: bool,
    /// Start the restored server (a data-directory restore: PostgreSQL's
    /// `--physical`, Redis's `--redis-data-dir`) once its files are in place.
    pub start: bool,
    /// The port a started server listens on (`None`: the adapter's default).
    pub port: Option<u16>,
}

/// Durable by default: a restore that skips fsync must say so.
impl Default for RestoreRequest {
    fn default() -> Self {
        RestoreRequest {
            target: None,
            paths: Vec::new(),
            overwrite: Overwrite::Never,
            dry_run: false,
            verify: false,
            jobs: 2,
            fsync: true,
            start: false,
            port: None,
        }
    }
}

/// How a restored server reaches this repository on its own (a PostgreSQL
/// server recovering from WAL runs `cairn wal-fetch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryAccess {
    /// The repository location, absolute.
    pub location: String,
    /// The password file, when the password comes from one.
    pub password_file: Option<std::path::PathBuf>,
    /// This cairn binary.
    pub exe: std::path::PathBuf,
}

/// One restore (or, with `dry_run`, its plan).
pub struct RestoreJob<'a> {
    pub reader: SnapshotReader<'a>,
    pub index: Arc<Index>,
    pub snapshot_id: Id,
    pub snapshot: &'a Snapshot,
    pub request: RestoreRequest,
    pub access: RepositoryAccess,
    pub cancel: Cancel,
    pub progress: Arc<Progress>,
}

impl<'a> RestoreJob<'a> {
    /// A restore under `lock`, reading through `index`.
    #[allow(clippy::too_many_arguments)] // every field is the job's; a builder would only rename them
    pub fn new(
        lock: &'a LockGuard,
        index: &'a Arc<Index>,
        snapshot_id: Id,
        snapshot: &'a Snapshot,
        request: RestoreRequest,
        access: RepositoryAccess,
        cancel: Cancel,
        progress: Arc<Progress>,
    ) -> RestoreJob<'a> {
        RestoreJob {
            reader: SnapshotReader::new(lock.repository(), index, snapshot),
            index: index.clone(),
            snapshot_id,
            snapshot,
            request,
            access,
            cancel,
            progress,
        }
    }

    pub fn repository(&self) -> &'a Repository {
        self.reader.repository()
    }

    /// See [`BackupJob::on_cancel`].
    pub fn on_cancel(&self, hook: impl FnOnce() + Send + 'static) {
        on_cancel(&self.cancel, hook);
    }
}

/// What a finished restore (or its plan) reports.
#[derive(Debug, Clone, Default)]
pub struct RestoreOutcome {
    /// The target, as it should be shown (no secrets).
    pub target: String,
    pub objects: BTreeMap<String, u64>,
    pub bytes: u64,
    pub warnings: Vec<String>,
    pub summary: String,
    /// The plan (always for a dry run) and other facts.
    pub details: serde_json::Value,
}

/// One comparison of a live target with a snapshot.
pub struct VerifyJob<'a> {
    pub reader: SnapshotReader<'a>,
    pub snapshot_id: Id,
    pub snapshot: &'a Snapshot,
    /// The live target (`--against`).
    pub target: String,
    pub cancel: Cancel,
}

impl<'a> VerifyJob<'a> {
    pub fn new(
        repo: &'a Repository,
        index: &'a Index,
        snapshot_id: Id,
        snapshot: &'a Snapshot,
        target: String,
        cancel: Cancel,
    ) -> VerifyJob<'a> {
        VerifyJob {
            reader: SnapshotReader::new(repo, index, snapshot),
            snapshot_id,
            snapshot,
            target,
            cancel,
        }
    }
}

/// One object of a live target compared with the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectCheck {
    /// `table`, `file`, `collection`, ...
    pub kind: String,
    pub name: String,
    /// Rows, bytes, documents in the snapshot.
    pub expected: u64,
    /// In the target; `None` when the object is missing there.
    pub actual: Option<u64>,
    /// Whether the content digests agree (`None` when not compared).
    pub content_matches: Option<bool>,
}

impl ObjectCheck {
    pub fn ok(&self) -> bool {
        self.actual == Some(self.expected) && self.content_matches != Some(false)
    }
}

/// What a comparison found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyOutcome {
    pub target: String,
    pub objects: Vec<ObjectCheck>,
}

impl VerifyOutcome {
    pub fn ok(&self) -> bool {
        self.objects.iter().all(ObjectCheck::ok)
    }

    pub fn differences(&self) -> impl Iterator<Item = &ObjectCheck> {
        self.objects.iter().filter(|o| !o.ok())
    }
}
