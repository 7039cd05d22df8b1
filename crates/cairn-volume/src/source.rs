//! The volume source on the adapter contract ([`cairn_source::Source`]).
//!
//! Settings are the flags of `cairn backup volume` and the keys of a
//! `kind: volume` source in `cairn.yaml`. Snapshots are file trees (mode
//! `files`), so their envelope comes from the snapshot summary and their
//! tree stays exactly the backed-up file system. Comparing a directory with
//! a snapshot (`verify --against DIR`, a drill's check of its scratch
//! restore) walks the files a restore would write and compares presence,
//! size and content: each local file is cut with the repository's chunker,
//! so equal content gives the snapshot's chunk ids, without reading the
//! repository's data at all.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use cairn_repo::archive::ChunkDigest;
use cairn_repo::chunker::ChunkerParams;
use cairn_repo::{SaverOptions, SnapshotFilter};
use cairn_source::{
    BackupJob, BackupOutcome, Descriptor, Meter, ObjectCheck, Overwrite as RestoreOverwrite, Reading,
    RestoreJob, RestoreOutcome, RestoreRequest, Source, VerifyJob, VerifyOutcome,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::{
    BackupOptions, BackupProgress, Excludes, Overwrite, ParentChoice, RestoreOptions, RestoreProgress,
    VolumeError,
};

/// `cairn backup volume` flags, and the keys of a `kind: volume` source.
#[derive(Debug, Clone, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VolumeSettings {
    /// Paths to back up.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Exclude paths matching this pattern (repeatable; `*.tmp`, `/abs/dir`, `cache/**`).
    #[arg(short = 'e', long = "exclude")]
    pub exclude: Vec<String>,
    /// Read exclude patterns from a file (one per line, # comments).
    #[arg(long = "exclude-file")]
    pub exclude_file: Vec<PathBuf>,
    /// Do not descend into other file systems.
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Compare against this snapshot instead of the latest of the same source (or host) and paths.
    #[arg(long)]
    #[serde(skip)]
    pub parent: Option<String>,
    /// Read every file, ignoring the parent snapshot.
    #[arg(long)]
    #[serde(skip)]
    pub force: bool,
    /// Do not record extended attributes.
    #[arg(long)]
    pub no_xattrs: bool,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=128))]
    pub pack_size: u32,
}

impl Default for VolumeSettings {
    fn default() -> Self {
        VolumeSettings {
            paths: Vec::new(),
            exclude: Vec::new(),
            exclude_file: Vec::new(),
            one_file_system: false,
            parent: None,
            force: false,
            no_xattrs: false,
            pack_size: 16,
        }
    }
}

/// Restore flags of volume snapshots (the common ones cover them today).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VolumeRestoreSettings {}

/// Directory trees.
#[derive(Debug, Clone, Copy, Default)]
pub struct VolumeSource;

struct BackupMeter(Arc<BackupProgress>);

impl Meter for BackupMeter {
    fn read(&self) -> Reading {
        let files = self.0.files_done.load(Ordering::Relaxed);
        Reading {
            bytes_done: self.0.bytes_done.load(Ordering::Relaxed),
            bytes_total: 0,
            detail: format!("{files} files"),
        }
    }
}

struct RestoreMeter(Arc<RestoreProgress>);

impl Meter for RestoreMeter {
    fn read(&self) -> Reading {
        let p = &self.0;
        Reading::counted([&p.bytes_done, &p.bytes_total], [&p.files_done, &p.files_total], "files")
    }
}

fn volume_filter() -> SnapshotFilter {
    SnapshotFilter { kinds: vec![("volume".into(), String::new())], ..SnapshotFilter::default() }
}

#[async_trait]
impl Source for VolumeSource {
    type Settings = VolumeSettings;
    type RestoreSettings = VolumeRestoreSettings;
    type Error = VolumeError;

    fn descriptor(&self) -> Descriptor {
        Descriptor { kind: "volume", about: "Back up directories and files.", modes: &["files"] }
    }

    fn mode(&self, _settings: &VolumeSettings) -> &'static str {
        "files"
    }

    fn validate(&self, settings: &VolumeSettings) -> Result<(), VolumeError> {
        if settings.paths.is_empty() {
            return Err(VolumeError::NothingToBackUp);
        }
        Excludes::new(&settings.exclude, &settings.exclude_file)?;
        Ok(())
    }

    async fn backup(&self, job: BackupJob<'_>, s: &VolumeSettings) -> Result<BackupOutcome, VolumeError> {
        let repo = job.repository();
        let parent = match (s.force, &s.parent) {
            (true, _) => ParentChoice::None,
            (false, Some(spec)) => {
                ParentChoice::Snapshot(repo.select_snapshot(spec, &volume_filter()).await?.0)
            }
            (false, None) => ParentChoice::Auto,
        };
        let progress = Arc::new(BackupProgress::default());
        {
            let p = progress.clone();
            job.on_cancel(move || p.cancel.store(true, Ordering::Relaxed));
        }
        job.progress.show(Arc::new(BackupMeter(progress.clone())));
        let opts = BackupOptions {
            paths: s.paths.clone(),
            excludes: Excludes::new(&s.exclude, &s.exclude_file)?,
            one_file_system: s.one_file_system,
            xattrs: !s.no_xattrs,
            parent,
            tags: job.labels.tags.clone(),
            hostname: Some(job.labels.host.clone()).filter(|h| !h.is_empty()),
            source_name: job.labels.source_name.clone(),
            saver: SaverOptions { pack_size: s.pack_size as usize * (1 << 20), ..SaverOptions::default() },
            ..BackupOptions::default()
        };
        let result = crate::backup(repo, opts, progress).await?;
        let sum = result.snapshot.summary.clone().unwrap_or_default();
        let objects = [
            ("files", sum.total_files_processed),
            ("files_new", sum.files_new),
            ("files_changed", sum.files_changed),
            ("files_unmodified", sum.files_unmodified),
            ("dirs_new", sum.dirs_new),
            ("dirs_changed", sum.dirs_changed),
            ("dirs_unmodified", sum.dirs_unmodified),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let summary = format!(
            "Files: {} new, {} changed, {} unmodified\nDirs:  {} new, {} changed, {} unmodified",
            sum.files_new,
            sum.files_changed,
            sum.files_unmodified,
            sum.dirs_new,
            sum.dirs_changed,
            sum.dirs_unmodified
        );
        Ok(BackupOutcome {
            snapshot_id: result.snapshot_id,
            parent: result.parent,
            warnings: result.warnings,
            notes: Vec::new(),
            objects,
            summary,
            details: serde_json::json!({ "paths": result.snapshot.paths }),
            snapshot: result.snapshot,
        })
    }

    fn restore_modes(
        &self,
        request: &RestoreRequest,
        _settings: &VolumeRestoreSettings,
    ) -> Vec<&'static str> {
        match &request.target {
            Some(target) if !target.contains("://") => vec!["files"],
            _ => Vec::new(),
        }
    }

    fn restore_hint(&self, _mode: &str) -> String {
        "restore it into a directory: `cairn restore ID --to DIR [PATH...]`".into()
    }

    async fn restore(
        &self,
        job: RestoreJob<'_>,
        _s: &VolumeRestoreSettings,
    ) -> Result<RestoreOutcome, VolumeError> {
        let target = PathBuf::from(job.request.target.clone().unwrap_or_default());
        let opts = RestoreOptions {
            target: target.clone(),
            include: job.request.paths.clone(),
            overwrite: match job.request.overwrite {
                RestoreOverwrite::Never => Overwrite::Never,
                RestoreOverwrite::IfChanged => Overwrite::IfChanged,
                RestoreOverwrite::Always => Overwrite::Always,
            },
            dry_run: job.request.dry_run,
            fsync: job.request.fsync,
            ..RestoreOptions::default()
        };
        let progress = Arc::new(RestoreProgress::default());
        {
            let p = progress.clone();
            job.on_cancel(move || p.cancel.store(true, Ordering::Relaxed));
        }
        job.progress.show(Arc::new(RestoreMeter(progress.clone())));
        let summary =
            crate::restore(job.repository(), job.index.clone(), job.snapshot, &opts, progress).await?;
        let verb = if summary.dry_run { "would restore" } else { "restored" };
        let text = format!(
            "{verb} {} files, {} dirs, {} symlinks from snapshot {} into {}{}",
            summary.files,
            summary.dirs,
            summary.links,
            job.snapshot_id.short(),
            target.display(),
            if summary.skipped > 0 {
                format!("; {} unchanged files skipped", summary.skipped)
            } else {
                String::new()
            }
        );
        Ok(RestoreOutcome {
            target: target.display().to_string(),
            objects: [
                ("files", summary.files),
                ("dirs", summary.dirs),
                ("symlinks", summary.links),
                ("other", summary.other),
                ("skipped", summary.skipped),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            bytes: summary.bytes,
            warnings: summary.warnings,
            summary: text,
            details: serde_json::Value::Null,
        })
    }

    fn verifies(&self, target: &str) -> bool {
        !target.contains("://")
    }

    fn scratch(&self) -> Option<Arc<dyn cairn_source::Scratch>> {
        Some(crate::VolumeScratch::default().arc())
    }

    async fn verify_against(
        &self,
        job: VerifyJob<'_>,
        _s: &VolumeRestoreSettings,
    ) -> Result<VerifyOutcome, VolumeError> {
        let reader = &job.reader;
        let repo = reader.repository();
        let files = crate::restorer::planned_files(repo, reader.index(), job.snapshot, &[]).await?;
        let root = PathBuf::from(&job.target);
        let mut objects = Vec::with_capacity(files.len());
        for (rel, node) in files {
            if job.cancel.is_cancelled() {
                return Err(VolumeError::Interrupted);
            }
            let path = root.join(&rel);
            let actual = match tokio::fs::symlink_metadata(&path).await {
                Ok(m) if m.is_file() => Some(m.len()),
                _ => None,
            };
            let content_matches = match actual {
                Some(size) if size == node.size => {
                    Some(local_digest(repo, &path).await? == node_digest(&node))
                }
                _ => None,
            };
            objects.push(ObjectCheck {
                kind: "file".into(),
                name: rel.display().to_string(),
                expected: node.size,
                actual,
                content_matches,
            });
        }
        Ok(VerifyOutcome { target: root.display().to_string(), objects })
    }
}

/// SHA-256 over a file node's chunk ids: the content digest of what the snapshot holds.
fn node_digest(node: &cairn_repo::tree::Node) -> [u8; 32] {
    let mut digest = Sha256::new();
    for id in node.content.iter().flatten() {
        digest.update(id.0);
    }
    digest.finalize().into()
}

/// The same digest of a local file, cut as a backup would cut it.
async fn local_digest(
    repo: &cairn_repo::Repository,
    path: &std::path::Path,
) -> Result<[u8; 32], VolumeError> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| VolumeError::io(path, e))?;
    let mut digest = ChunkDigest::new(repo, ChunkerParams::FILES);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| VolumeError::io(path, e))?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
    }
    Ok(digest.finish())
}

impl cairn_source::Classify for VolumeError {
    fn class(&self) -> cairn_source::ErrorClass {
        use cairn_source::ErrorClass;
        match self {
            VolumeError::Repo(e) => e.class(),
            VolumeError::Interrupted => ErrorClass::Interrupted,
            _ => ErrorClass::Failure,
        }
    }
}
