//! Opening repository locations (the primary and replicas alike).

use std::sync::Arc;
use std::time::Duration;

use cairn_store::{Backend, LocalBackend, Location, RetryBackend, RetryPolicy, StoreError};

use crate::EngineError;

/// Opens any location [`Location`] accepts: a local directory, or S3
/// wrapped in the retry policy.
pub async fn open_backend(location: &str) -> Result<Arc<dyn Backend>, EngineError> {
    match Location::parse(location)? {
        Location::Local(path) => Ok(Arc::new(LocalBackend::new(path))),
        Location::S3(url) => {
            let s3 = cairn_store_s3::S3Backend::from_url(&url).await.map_err(StoreError::from)?;
            Ok(Arc::new(RetryBackend::new(s3, s3_retry_policy()?)))
        }
    }
}

pub(crate) fn env_duration(name: &str) -> Result<Option<Duration>, EngineError> {
    match std::env::var(name).ok().filter(|v| !v.is_empty()) {
        Some(value) => cairn_source::units::parse_duration(&value)
            .map(Some)
            .map_err(|e| EngineError::Settings(format!("{name}: {e}"))),
        None => Ok(None),
    }
}

/// The retry policy for S3 requests: the default, with every wait capped at
/// `CAIRN_S3_RETRY_MAX_DELAY` when set (`500ms`, `2s`, …). Lower it where
/// waiting out a long outage is pointless (tests that inject faults, or a
/// run that is better retried whole); the number of attempts stays.
fn s3_retry_policy() -> Result<RetryPolicy, EngineError> {
    let mut policy = RetryPolicy::default();
    if let Some(max) = env_duration("CAIRN_S3_RETRY_MAX_DELAY")? {
        policy.max_backoff = max;
        policy.initial_backoff = policy.initial_backoff.min(max);
    }
    Ok(policy)
}

/// How old an unfinished S3 multipart upload must be before a backup aborts
/// it as abandoned: `CAIRN_S3_ABANDONED_UPLOAD_AGE` (`24h` unless set). Far
/// longer than any single upload takes, so a concurrent run's uploads are
/// never touched.
pub fn abandoned_upload_age() -> Result<Duration, EngineError> {
    Ok(env_duration("CAIRN_S3_ABANDONED_UPLOAD_AGE")?.unwrap_or(Duration::from_secs(24 * 3600)))
}
