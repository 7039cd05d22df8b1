//! Backup, restore and verify jobs: the lifecycle around the adapters.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cairn_repo::reader::SnapshotReader;
use cairn_repo::verify::{VerifyProgress, verify_snapshot};
use cairn_repo::{Id, RepoError, Repository, Snapshot, SnapshotFilter, kind_and_mode};
use cairn_source::{
    AnySettings, BackupJob, Classify, DynSource, Labels, Meter, Progress, Reading, Registry,
    RepositoryAccess, RestoreJob, VerifyJob, check_envelope,
};
use cairn_store::DisplaySafe;

use crate::lifecycle::{self, LeaseSettings};
use crate::{EngineError, JobReport, Stop, exit};

/// Where the repository is and how every job treats it.
#[derive(Clone)]
pub struct EngineSettings {
    pub location: String,
    pub password: String,
    /// The file the password came from, if it did (a restored server reads it).
    pub password_file: Option<PathBuf>,
    pub lease: Option<LeaseSettings>,
    pub catalog_table: Option<String>,
    /// Brought up to date after every backup that asks for it.
    pub replicas: Vec<DisplaySafe>,
}

impl std::fmt::Debug for EngineSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineSettings")
            .field("location", &DisplaySafe::new(self.location.clone()))
            .field("password", &"***")
            .field("lease", &self.lease)
            .field("catalog_table", &self.catalog_table)
            .field("replicas", &self.replicas)
            .finish()
    }
}

/// One backup of one source.
#[derive(Debug)]
pub struct BackupRequest {
    pub kind: String,
    pub source_name: Option<String>,
    pub settings: Box<dyn AnySettings>,
    pub tags: Vec<String>,
    /// The host to record; `None` for this machine's name.
    pub host: Option<String>,
    /// Bring the replicas up to date afterwards.
    pub replicate: bool,
}

/// One restore: which snapshot (within the filter), where, and every
/// adapter's restore settings (the snapshot's kind decides which is used).
#[derive(Debug)]
pub struct RestoreRequest {
    pub snapshot: String,
    pub filter: SnapshotFilter,
    pub request: cairn_source::RestoreRequest,
    pub settings: Vec<(String, Box<dyn AnySettings>)>,
}

/// One verification: read the snapshot back, or compare a live target with it.
#[derive(Debug)]
pub struct VerifyRequest {
    pub snapshot: String,
    pub filter: SnapshotFilter,
    pub against: Option<String>,
    pub settings: Vec<(String, Box<dyn AnySettings>)>,
    /// Without `against`: also read and verify every blob (`cairn verify`);
    /// without it only the trees are read, proving the manifest complete
    /// and every stream made of its recorded chunks (a drill's first
    /// check, before its restore reads every blob anyway).
    pub read_data: bool,
}

/// Runs jobs against one repository.
pub struct Engine {
    pub(crate) settings: EngineSettings,
    pub(crate) registry: Registry,
    pub(crate) stop: Arc<Stop>,
    pub(crate) progress: Arc<Progress>,
}

impl Engine {
    pub fn new(settings: EngineSettings, registry: Registry, stop: Arc<Stop>) -> Engine {
        Engine { settings, registry, stop, progress: Arc::new(Progress::default()) }
    }

    /// The running job's progress, for display.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn stop(&self) -> &Arc<Stop> {
        &self.stop
    }

    /// Opens the repository (given up on at once if the run is stopped).
    pub async fn open(&self) -> Result<Repository, EngineError> {
        let backend = self.stop.race(crate::open_backend(&self.settings.location)).await?;
        self.stop.race(Repository::open(backend, &self.settings.password)).await
    }

    pub(crate) fn source(&self, kind: &str) -> Result<&Arc<dyn DynSource>, EngineError> {
        self.registry.get(kind).ok_or_else(|| {
            EngineError::Usage(format!(
                "this build of cairn has no {kind:?} source (it has: {})",
                self.registry.kinds().join(", ")
            ))
        })
    }

    /// The report of a job that failed with `error`.
    fn failed(&self, report: &mut JobReport, error: &EngineError) {
        report.errors.push(crate::error::render(error));
        report.exit_code = exit::code_for(error.class(), self.stop.reason().as_ref());
    }

    /// Backs one source up: the whole lifecycle, ending in one report.
    pub async fn backup(&self, req: BackupRequest) -> JobReport {
        let mut report = JobReport::start("backup");
        report.source = req.source_name.clone();
        report.kind = Some(req.kind.clone());
        if let Err(e) = self.run_backup(&req, &mut report).await {
            self.failed(&mut report, &e);
        }
        report.finish()
    }

    async fn run_backup(&self, req: &BackupRequest, report: &mut JobReport) -> Result<(), EngineError> {
        let source = self.source(&req.kind)?;
        report.mode = Some(source.mode(&*req.settings).to_string());
        source.validate(&*req.settings)?;
        let upload_age = crate::abandoned_upload_age()?;
        let repo = self.open().await?;
        let lease = self.settings.lease.as_ref().map(|l| (l, self.settings.location.as_str()));
        let hold = lifecycle::Hold::take(&repo, false, lease, &self.stop).await?;
        clean_abandoned_uploads(&repo, upload_age).await;
        let labels = Labels {
            host: req.host.clone().unwrap_or_else(|| cairn_repo::host_and_user().0),
            tags: req.tags.clone(),
            source_name: req.source_name.clone(),
        };
        tracing::info!(kind = %req.kind, repository = %repo.location(), "backup started");
        let job = BackupJob::new(hold.lock(), labels, self.stop.token(), self.progress.clone());
        let outcome = source.backup(job, &*req.settings).await.map_err(EngineError::from);
        let outcome = hold.finish(outcome).await?;
        let summary = outcome.snapshot.summary.clone().unwrap_or_default();
        report.snapshot = Some(outcome.snapshot_id.to_hex());
        report.parent = outcome.parent.map(|p| p.to_hex());
        report.bytes.read = summary.total_bytes_processed;
        report.bytes.added = summary.data_added;
        report.bytes.stored = summary.data_added_packed;
        report.objects = outcome.objects.clone();
        report.warnings.extend(outcome.warnings.iter().cloned());
        report.warnings.extend(outcome.notes.iter().cloned());
        report.summary = outcome.summary.clone();
        report.details = outcome.details.clone();
        if !outcome.warnings.is_empty() {
            report.exit_code = exit::PARTIAL;
        }
        lifecycle::record_snapshot(
            &self.settings.catalog_table,
            &self.settings.location,
            &outcome.snapshot_id,
            &outcome.snapshot,
        )
        .await;
        if req.replicate {
            for replica in &self.settings.replicas {
                match lifecycle::replicate_to(&repo, replica, 8, &self.stop).await {
                    Ok((objects, bytes)) => {
                        tracing::info!(replica = %replica, objects, bytes, "replica brought up to date");
                    }
                    Err(e) => {
                        // The snapshot is safe in the primary: report, lose nothing.
                        report.errors.push(format!(
                            "snapshot saved, but replicating to {replica} failed: {e}; run `cairn replicate` to retry"
                        ));
                        report.exit_code = exit::REPLICA_FAILED;
                    }
                }
            }
        }
        Ok(())
    }

    /// The snapshot `spec` names within `filter`; `latest` as the adapter
    /// of the request's kind understands it.
    async fn resolve(
        &self,
        repo: &Repository,
        spec: &str,
        filter: &SnapshotFilter,
        settings: &[(String, Box<dyn AnySettings>)],
    ) -> Result<(Id, Snapshot), EngineError> {
        let kinds: std::collections::BTreeSet<&str> = filter.kinds.iter().map(|(k, _)| k.as_str()).collect();
        if spec == "latest" {
            let candidates = self.stop.race(repo.select_snapshots(filter)).await?;
            let chosen = match (kinds.iter().next(), kinds.len()) {
                (Some(kind), 1) => {
                    let (_, s) = settings.iter().find(|(k, _)| k == kind).expect("settings for every kind");
                    self.source(kind)?.pick_latest(&candidates, &**s)?
                }
                _ => candidates.len().checked_sub(1),
            };
            return match chosen {
                Some(i) => Ok(candidates[i].clone()),
                None => Err(RepoError::SnapshotNotFound {
                    spec: format!("latest {}", filter.describe()).trim().to_string(),
                }
                .into()),
            };
        }
        match self.stop.race(repo.select_snapshot(spec, filter)).await {
            Err(EngineError::Repo(RepoError::SnapshotExcluded { id, kind, mode, filter })) => {
                let hint = match self.registry.get(&kind) {
                    Some(source) => source.restore_hint(&mode),
                    None => format!("this build of cairn has no {kind} source"),
                };
                let what = if mode.is_empty() { kind } else { format!("{kind}/{mode}") };
                Err(EngineError::Usage(format!(
                    "snapshot {} is a {what} snapshot, but this command takes snapshots {filter}; {hint}",
                    id.short()
                )))
            }
            other => other,
        }
    }

    fn settings_of<'a>(
        settings: &'a [(String, Box<dyn AnySettings>)],
        kind: &str,
    ) -> Result<&'a dyn AnySettings, EngineError> {
        settings
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, s)| &**s)
            .ok_or_else(|| EngineError::Usage(format!("no settings for {kind} snapshots")))
    }

    /// How a restored server reaches this repository on its own.
    fn access(&self) -> RepositoryAccess {
        let location = match cairn_store::Location::parse(&self.settings.location) {
            Ok(cairn_store::Location::Local(path)) => std::path::absolute(&path)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| self.settings.location.clone()),
            _ => self.settings.location.clone(),
        };
        RepositoryAccess {
            location,
            password_file: self
                .settings
                .password_file
                .as_ref()
                .map(|f| std::path::absolute(f).unwrap_or(f.clone())),
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("cairn")),
        }
    }

    /// Restores (or plans, for a dry run) one snapshot.
    pub async fn restore(&self, req: RestoreRequest) -> JobReport {
        let mut report = JobReport::start("restore");
        report.dry_run = req.request.dry_run;
        report.target = req.request.target.as_deref().map(|t| DisplaySafe::new(t).to_string());
        if let Err(e) = self.run_restore(&req, &mut report).await {
            self.failed(&mut report, &e);
        }
        report.finish()
    }

    async fn run_restore(&self, req: &RestoreRequest, report: &mut JobReport) -> Result<(), EngineError> {
        let mut kinds = Vec::new();
        for (kind, settings) in &req.settings {
            for mode in self.source(kind)?.restore_modes(&req.request, &**settings) {
                kinds.push((kind.clone(), mode.to_string()));
            }
        }
        // Bad input fails before the repository is opened, whatever it holds.
        for (kind, settings) in &req.settings {
            let source = self.source(kind)?;
            if !source.restore_modes(&req.request, &**settings).is_empty() {
                source.validate_restore(&req.request, &**settings)?;
            }
        }
        if kinds.is_empty() {
            return Err(EngineError::Usage(match &req.request.target {
                Some(t) => format!(
                    "no source restores into {}: give a directory, or a database URL such as postgresql://HOST/NEWDB",
                    DisplaySafe::new(t.clone())
                ),
                None => "say where to restore: --to DIR, --to postgresql://HOST/NEWDB, --physical --data-dir DIR, or --redis-data-dir DIR".into(),
            }));
        }
        let repo = self.open().await?;
        let filter = SnapshotFilter { kinds, ..req.filter.clone() };
        let (id, snapshot) = self.resolve(&repo, &req.snapshot, &filter, &req.settings).await?;
        report.about(&id, &snapshot);
        let kind = kind_and_mode(&snapshot).0;
        let source = self.source(&kind)?;
        let settings = Self::settings_of(&req.settings, &kind)?;
        let hold = lifecycle::Hold::take(&repo, false, None, &self.stop).await?;
        let outcome = self.restore_held(req, &repo, &hold, source, settings, id, &snapshot).await;
        let outcome = hold.finish(outcome).await?;
        report.target = Some(outcome.target.clone());
        report.bytes.read = outcome.bytes;
        report.objects = outcome.objects;
        report.warnings = outcome.warnings;
        report.summary = outcome.summary;
        report.details = outcome.details;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)] // the job's parts, once; a struct would only rename them
    async fn restore_held(
        &self,
        req: &RestoreRequest,
        repo: &Repository,
        hold: &lifecycle::Hold,
        source: &Arc<dyn DynSource>,
        settings: &dyn AnySettings,
        id: Id,
        snapshot: &Snapshot,
    ) -> Result<cairn_source::RestoreOutcome, EngineError> {
        let index = Arc::new(self.stop.race(repo.load_index()).await?);
        let job = RestoreJob::new(
            hold.lock(),
            &index,
            id,
            snapshot,
            req.request.clone(),
            self.access(),
            self.stop.token(),
            self.progress.clone(),
        );
        Ok(source.restore(job, settings).await?)
    }

    /// Reads a snapshot back (every blob verified, its envelope checked), or
    /// compares a live target with it.
    pub async fn verify(&self, req: VerifyRequest) -> JobReport {
        let mut report = JobReport::start("verify");
        report.target = req.against.as_deref().map(|t| DisplaySafe::new(t).to_string());
        if let Err(e) = self.run_verify(&req, &mut report).await {
            self.failed(&mut report, &e);
        }
        report.finish()
    }

    async fn run_verify(&self, req: &VerifyRequest, report: &mut JobReport) -> Result<(), EngineError> {
        let mut filter = req.filter.clone();
        if let Some(target) = &req.against {
            filter.kinds = self
                .registry
                .iter()
                .filter(|s| s.verifies(target))
                .map(|s| (s.descriptor().kind.to_string(), String::new()))
                .collect();
            if filter.kinds.is_empty() {
                return Err(EngineError::Usage(format!(
                    "no source compares {} with a snapshot: give a directory, a database URL or a redis:// URL",
                    DisplaySafe::new(target.clone())
                )));
            }
        }
        let repo = self.open().await?;
        let (id, snapshot) = self.resolve(&repo, &req.snapshot, &filter, &req.settings).await?;
        report.about(&id, &snapshot);
        let kind = kind_and_mode(&snapshot).0;
        let source = self.source(&kind)?;
        let hold = lifecycle::Hold::take(&repo, false, None, &self.stop).await?;
        let result = self.verify_held(req, report, &repo, source, id, &snapshot, &kind).await;
        hold.finish(result).await
    }

    #[allow(clippy::too_many_arguments)] // the job's parts, once; a struct would only rename them
    async fn verify_held(
        &self,
        req: &VerifyRequest,
        report: &mut JobReport,
        repo: &Repository,
        source: &Arc<dyn DynSource>,
        id: Id,
        snapshot: &Snapshot,
        kind: &str,
    ) -> Result<(), EngineError> {
        let index = self.stop.race(repo.load_index()).await?;
        let catalog = &self.settings.catalog_table;
        let location = &self.settings.location;
        if let Some(target) = &req.against {
            let settings = Self::settings_of(&req.settings, kind)?;
            let job = VerifyJob::new(repo, &index, id, snapshot, target.clone(), self.stop.token());
            // A comparison only reads: giving it up half way is safe.
            let outcome = self.stop.race(source.verify_against(job, settings)).await?;
            let differing = outcome.differences().count() as u64;
            report.target = Some(outcome.target.clone());
            report.objects.insert("objects".into(), outcome.objects.len() as u64);
            report.objects.insert("differing".into(), differing);
            report.summary = outcome
                .objects
                .iter()
                .map(|o| {
                    let (unit, what) = count_unit(&o.kind);
                    let state = match (o.actual, o.ok()) {
                        (None, _) => "MISSING".to_string(),
                        (_, true) => "ok".to_string(),
                        (Some(a), false) if a != o.expected => format!("{what} {a}, expected {}", o.expected),
                        (Some(_), false) => "CONTENT DIFFERS (same count)".to_string(),
                    };
                    format!("{:<50} {:>12} {unit}  {state}", o.name, o.expected)
                })
                .chain([format!(
                    "{} of {} objects match snapshot {} in {}",
                    outcome.objects.len() as u64 - differing,
                    outcome.objects.len(),
                    id.short(),
                    outcome.target
                )])
                .collect::<Vec<_>>()
                .join("\n");
            report.details = serde_json::json!({ "objects": outcome.objects });
            let detail = format!(
                "{} of {} objects match in {}",
                outcome.objects.len() as u64 - differing,
                outcome.objects.len(),
                outcome.target
            );
            lifecycle::record_verification(catalog, location, &id, "verify-against", differing == 0, &detail)
                .await;
            if differing > 0 {
                return Err(EngineError::Damage(format!(
                    "{differing} object(s) of {} differ from snapshot {}",
                    outcome.target,
                    id.short()
                )));
            }
            return Ok(());
        }
        let reader = SnapshotReader::new(repo, &index, snapshot);
        let envelope = self.stop.race(source.envelope(&reader, snapshot)).await?;
        let streams = self.stop.race(check_envelope(&reader, &envelope, false)).await?;
        if !req.read_data {
            report.objects = [("streams".to_string(), streams.streams as u64)].into_iter().collect();
            report.summary = format!(
                "snapshot {}: {} streams as its manifest records (trees read, data not)",
                id.short(),
                streams.streams
            );
            report.details = serde_json::json!({ "ok": streams.problems.is_empty(), "problems": streams.problems, "envelope": envelope.totals });
            if !streams.problems.is_empty() {
                for p in &streams.problems {
                    tracing::error!("damaged: {p}");
                }
                return Err(EngineError::Damage(format!(
                    "snapshot {}: its manifest is not complete: {}",
                    id.short(),
                    streams.problems.join("; ")
                )));
            }
            return Ok(());
        }
        let progress = Arc::new(VerifyProgress::default());
        self.progress.show(Arc::new(VerifyMeter(progress.clone())));
        let read = self.stop.race(verify_snapshot(repo, &index, snapshot, progress)).await?;
        let mut problems = streams.problems.clone();
        problems.extend(read.problems.iter().cloned());
        report.bytes.read = read.bytes;
        report.objects = [
            ("files", read.files),
            ("dirs", read.dirs),
            ("blobs_read", read.blobs_read),
            ("packs_read", read.packs_read),
            ("streams", streams.streams as u64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        report.summary = format!(
            "snapshot {}: {} files, {} dirs, {} streams as its manifest records — {} blobs from {} packs read and verified",
            id.short(),
            read.files,
            read.dirs,
            streams.streams,
            read.blobs_read,
            read.packs_read
        );
        report.details = serde_json::json!({ "ok": problems.is_empty(), "problems": problems, "envelope": envelope.totals });
        let detail = format!("{} blobs read; {} problems", read.blobs_read, problems.len());
        lifecycle::record_verification(catalog, location, &id, "verify", problems.is_empty(), &detail).await;
        if !problems.is_empty() {
            for p in &problems {
                tracing::error!("damaged: {p}");
            }
            return Err(EngineError::Damage(format!(
                "snapshot {} has {} damaged or missing parts",
                id.short(),
                problems.len()
            )));
        }
        Ok(())
    }
}

/// What an object's count counts, for the verification summary: a table's
/// rows, a file's bytes; other kinds count what they are named for (`keys`).
fn count_unit(kind: &str) -> (&str, &'static str) {
    match kind {
        "table" => ("rows", "ROWS"),
        "file" => ("bytes", "SIZE"),
        other => (other, "COUNT"),
    }
}

struct VerifyMeter(Arc<VerifyProgress>);

impl Meter for VerifyMeter {
    fn read(&self) -> Reading {
        Reading {
            bytes_done: self.0.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.0.bytes_total.load(Ordering::Relaxed),
            detail: String::new(),
        }
    }
}

/// Aborts multipart uploads that an interrupted run left behind (they cost
/// storage and no listing shows them). A failure does not fail the backup.
async fn clean_abandoned_uploads(repo: &Repository, age: std::time::Duration) {
    match repo.backend().clean_abandoned_uploads(age).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(aborted = n, "aborted multipart uploads abandoned by earlier runs"),
        Err(e) => {
            tracing::warn!(error = %e, "could not abort abandoned multipart uploads; the next backup tries again")
        }
    }
}
