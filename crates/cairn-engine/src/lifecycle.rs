//! The steps around an adapter's work: lease, lock release, catalog,
//! replication. Each is one function here, used by every job.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_dynamodb::{Catalog, CatalogEntry, Lease, LeaseConfig, Verification};
use cairn_repo::lock::LockGuard;
use cairn_repo::{Id, Repository, Snapshot};
use cairn_store::DisplaySafe;

use crate::{EngineError, Stop, StopReason};

/// DynamoDB lease settings (`lock_table`, `lock_wait`, `lock_lease`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    pub table: String,
    pub wait: Duration,
    pub lease: Duration,
}

/// Takes the lease on the repository. Its heartbeat runs for the whole job;
/// when it is lost (another run took over after this one stalled) the run
/// is stopped, and the snapshot write itself is refused unless the lease
/// still holds with a third of it to spare ([`Lease::commit_check`]).
pub(crate) async fn acquire_lease(
    settings: &LeaseSettings,
    location: &str,
    repo: &Repository,
    stop: &Arc<Stop>,
) -> Result<Lease, EngineError> {
    let config = LeaseConfig { wait: settings.wait, lease: settings.lease, ..LeaseConfig::new(settings.table.clone()) };
    let (host, user) = cairn_repo::host_and_user();
    let owner = format!("{user}@{host}/{}", std::process::id());
    let lease = stop.race(Lease::acquire(&config, location, &owner)).await?;
    let check = lease.commit_check();
    repo.set_commit_check(Arc::new(move || {
        let check = check.clone();
        Box::pin(async move { check.confirm().await.map_err(|e| e.to_string()) })
    }));
    let lost = lease.lost_flag();
    let stop = stop.clone();
    let token = stop.token();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if lost.load(Ordering::Relaxed) {
                stop.stop(StopReason::Lost("the DynamoDB lease was taken over by another run".into()));
                return;
            }
        }
    });
    Ok(lease)
}

/// Ends a job's hold on the repository. The job's own result wins: a
/// release that fails after a failed job is a warning; after a successful
/// one too (the lock goes stale in 30 minutes, or `cairn unlock` removes
/// it). A lost lease fails the run.
pub(crate) async fn release(lock: LockGuard, lease: Option<Lease>) -> Result<(), EngineError> {
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "could not remove this run's lock; it goes stale in 30 minutes, or run `cairn unlock`");
    }
    if let Some(lease) = lease {
        if lease.is_lost() {
            lease.check().await?;
        }
        if let Err(e) = lease.release().await {
            tracing::warn!(error = %e, "could not release the DynamoDB lease; it expires on its own");
        }
    }
    Ok(())
}

/// The catalog's view of a snapshot.
pub(crate) fn catalog_entry(location: &str, id: &Id, snap: &Snapshot) -> CatalogEntry {
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
        status: if meta.is_some_and(|m| !m.warnings.is_empty()) { "partial".into() } else { "complete".into() },
    }
}

pub(crate) async fn open_catalog(table: &Option<String>) -> Result<Option<Catalog>, EngineError> {
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
    let report = stop.race(cairn_repo::replicate::replicate(repo, backend, concurrency)).await?;
    Ok(report.copied.iter().fold((0, 0), |a, (_, n, b)| (a.0 + n, a.1 + b)))
}
