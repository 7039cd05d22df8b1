//! The steps around an adapter's work: lease, lock release, catalog,
//! replication. Each is one function here, used by every job.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_dynamodb::{Catalog, CatalogEntry, Lease, LeaseConfig, Verification};
use cairn_repo::lock::{LockGuard, LockTiming, STALE_AFTER};
use cairn_repo::{Id, Repository, Snapshot};
use cairn_source::{Classify, ErrorClass};
use cairn_store::DisplaySafe;

use crate::{EngineError, Stop, StopReason};

/// DynamoDB lease settings (`lock_table`, `lock_wait`, `lock_lease`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    pub table: String,
    pub wait: Duration,
    pub lease: Duration,
}

/// What a job holds on the repository while it works: the repository lock
/// and, for runs that write snapshots, the DynamoDB lease when one is
/// configured. While held:
///
/// * every snapshot write first proves the lock is still held and fresh,
///   and the lease (if any) still ours with a third of it to spare
///   ([`LockGuard::commit_check`], [`Lease::commit_check`]); either failing
///   refuses the write (exit 11), so a run that stalled is fenced off even
///   if it wakes up just before its commit;
/// * when either is lost (refreshes failing past the bound, the lock file
///   removed, the lease taken over), the run is stopped
///   ([`StopReason::Lost`]): adapters stop at their next step.
pub struct Hold {
    lock: LockGuard,
    lease: Option<Lease>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Hold {
    /// The lease (when `lease` is given), then the lock.
    pub async fn take(
        repo: &Repository,
        exclusive: bool,
        lease: Option<(&LeaseSettings, &str)>,
        stop: &Arc<Stop>,
    ) -> Result<Hold, EngineError> {
        let lease = match lease {
            Some((settings, location)) => Some(acquire_lease(settings, location, stop).await?),
            None => None,
        };
        let lock = match stop.race(LockGuard::acquire_with(repo, exclusive, lock_timing()?)).await {
            Ok(lock) => lock,
            Err(e) => {
                if let Some(lease) = lease
                    && let Err(release) = lease.release().await
                {
                    tracing::warn!(error = %release, "could not release the DynamoDB lease: it expires by itself");
                }
                return Err(e);
            }
        };
        repo.add_commit_check(lock.commit_check());
        let mut lost = vec![("the repository lock", lock.lost_flag())];
        if let Some(lease) = &lease {
            let check = lease.commit_check();
            repo.add_commit_check(Arc::new(move || {
                let check = check.clone();
                Box::pin(async move { check.confirm().await.map_err(|e| e.to_string()) })
            }));
            lost.push(("the DynamoDB lease", lease.lost_flag()));
        }
        let stop = stop.clone();
        let watcher = tokio::spawn(async move {
            loop {
                if let Some((what, _)) = lost.iter().find(|(_, flag)| flag.load(Ordering::Relaxed)) {
                    stop.stop(StopReason::Lost(format!("{what} was lost")));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Ok(Hold { lock, lease, watcher })
    }

    pub fn lock(&self) -> &LockGuard {
        &self.lock
    }

    /// Gives the lock (and lease) back and returns the run's outcome. The
    /// job's own result wins over a failed release, which is only a
    /// warning (a saved snapshot stays saved, an error keeps its exit
    /// code). A lost lock or lease fails a run that did not finish: it is
    /// why a stopped run stopped (exit 11), and it makes any other error
    /// suspect (named with it). A run that finished before the loss stands,
    /// with a warning.
    pub async fn finish<T>(self, result: Result<T, EngineError>) -> Result<T, EngineError> {
        self.watcher.abort();
        let mut lost: Option<EngineError> = self.lock.lost_error().map(Into::into);
        let lease_lost = match &self.lease {
            Some(lease) if lease.is_lost() => lease.check().await.err(),
            _ => None,
        };
        if let Err(e) = self.lock.release().await {
            tracing::warn!(
                error = %e,
                "could not remove the repository lock: it goes stale {} minutes after its last refresh, \
                 and `cairn unlock` on this host removes it as soon as this process has ended",
                cairn_repo::lock::STALE_AFTER.as_secs() / 60
            );
        }
        match (self.lease, lease_lost) {
            (_, Some(e)) => lost = lost.or(Some(e.into())),
            (Some(lease), None) => {
                if let Err(e) = lease.release().await {
                    tracing::warn!(error = %e, "could not release the DynamoDB lease: it expires by itself once its lock_lease runs out");
                }
            }
            (None, None) => {}
        }
        match (result, lost) {
            (result, None) => result,
            (Ok(value), Some(lost)) => {
                tracing::warn!(error = %lost, "the lock was lost only after the job had finished; its result stands");
                Ok(value)
            }
            (Err(e), Some(lost)) if matches!(e.class(), ErrorClass::Interrupted | ErrorClass::Locked) => {
                Err(lost)
            }
            (Err(e), Some(lost)) => Err(EngineError::Settings(format!("{lost}; and then: {e}"))),
        }
    }
}

/// Takes the lease on the repository (waiting up to its `wait`, given up on
/// at once if the run is stopped).
async fn acquire_lease(
    settings: &LeaseSettings,
    location: &str,
    stop: &Arc<Stop>,
) -> Result<Lease, EngineError> {
    let config = LeaseConfig {
        wait: settings.wait,
        lease: settings.lease,
        ..LeaseConfig::new(settings.table.clone())
    };
    let (host, user) = cairn_repo::host_and_user();
    let owner = format!("{user}@{host}/{}", std::process::id());
    stop.race(Lease::acquire(&config, location, &owner)).await
}

/// How held repository locks are refreshed and when they count as lost:
/// `CAIRN_LOCK_REFRESH_INTERVAL` (5m unless set; failed refreshes are
/// retried after a tenth of it) and `CAIRN_LOCK_LOST_AFTER` (15m). Test and
/// operations knobs: the lost bound must exceed the interval and stay
/// under the 30 minutes after which others treat a lock as stale.
pub fn lock_timing() -> Result<LockTiming, EngineError> {
    let defaults = LockTiming::default();
    let timing = LockTiming {
        refresh_every: crate::open::env_duration("CAIRN_LOCK_REFRESH_INTERVAL")?
            .unwrap_or(defaults.refresh_every),
        lost_after: crate::open::env_duration("CAIRN_LOCK_LOST_AFTER")?.unwrap_or(defaults.lost_after),
    };
    if timing.refresh_every.is_zero()
        || timing.lost_after <= timing.refresh_every
        || timing.lost_after >= STALE_AFTER
    {
        return Err(EngineError::Settings(format!(
            "CAIRN_LOCK_LOST_AFTER ({:?}) must be longer than CAIRN_LOCK_REFRESH_INTERVAL ({:?}) and shorter than {} minutes",
            timing.lost_after,
            timing.refresh_every,
            STALE_AFTER.as_secs() / 60
        )));
    }
    Ok(timing)
}

/// The catalog's view of a snapshot.
pub fn catalog_entry(location: &str, id: &Id, snap: &Snapshot) -> CatalogEntry {
    let meta = snap.cairn.as_ref();
    let summary = snap.summary.clone().unwrap_or_default();
    CatalogEntry {
        repository: location.to_string(),
        snapshot: id.to_hex(),
        time: snap.time.to_rfc3339(),
        hostname: snap.hostname.clone(),
        source_kind: meta.map(|m| m.source_kind.clone()).unwrap_or_else(|| "restic".into()),
        source_name: meta.and_then(|m| m.source_name.clone()).unwrap_or_default(),
        paths: snap.paths.clone(),
        tags: snap.tags.clone(),
        size: summary.total_bytes_processed,
        added: summary.data_added_packed,
        status: if meta.is_some_and(|m| !m.warnings.is_empty()) {
            "partial".into()
        } else {
            "complete".into()
        },
    }
}

pub async fn open_catalog(table: &Option<String>) -> Result<Option<Catalog>, EngineError> {
    let Some(table) = table else { return Ok(None) };
    let client = cairn_dynamodb::client(None, None).await;
    Ok(Some(Catalog::open(client, table).await?))
}

/// Records a new snapshot in the catalog, if there is one. The repository
/// is the truth, so a failure is a warning, never a failed backup.
pub(crate) async fn record_snapshot(table: &Option<String>, location: &str, id: &Id, snap: &Snapshot) {
    let recorded = async {
        if let Some(catalog) = open_catalog(table).await? {
            catalog.put_snapshot(&catalog_entry(location, id, snap)).await?;
        }
        Ok::<_, EngineError>(())
    }
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "snapshot saved, but the catalog could not record it; run `cairn catalog rebuild`");
    }
}

/// Records a verification result in the catalog, if there is one.
pub(crate) async fn record_verification(
    table: &Option<String>,
    location: &str,
    id: &Id,
    kind: &str,
    ok: bool,
    detail: &str,
) {
    let recorded = async {
        if let Some(catalog) = open_catalog(table).await? {
            let v = Verification {
                repository: location.to_string(),
                snapshot: id.to_hex(),
                time: chrono::Utc::now().to_rfc3339(),
                kind: kind.into(),
                ok,
                detail: detail.into(),
            };
            catalog.put_verification(&v).await?;
        }
        Ok::<_, EngineError>(())
    }
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "the catalog could not record the verification result");
    }
}

/// Brings one replica up to date; returns (objects, bytes) copied.
pub(crate) async fn replicate_to(
    repo: &Repository,
    replica: &DisplaySafe,
    concurrency: usize,
    stop: &Stop,
) -> Result<(u64, u64), EngineError> {
    let backend = stop.race(crate::open_backend(replica.expose())).await?;
    let report = stop
        .race(cairn_repo::replicate::replicate(
            repo,
            backend,
            concurrency,
            cairn_repo::replicate::ExtraKeys::Keep,
        ))
        .await?;
    Ok(report.copied.iter().fold((0, 0), |a, (_, n, b)| (a.0 + n, a.1 + b)))
}
