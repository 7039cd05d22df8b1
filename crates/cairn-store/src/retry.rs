//! Retrying transient storage errors, once, in one place.
//!
//! Backends report failures and say whether a retry could help
//! ([`StoreError::is_transient`]); they never retry themselves (the S3
//! backend even switches the AWS SDK's own retries off). [`RetryBackend`]
//! wraps any [`Backend`] and repeats a call that failed transiently, waiting
//! between attempts with capped exponential backoff and **full jitter**
//! (a uniformly random wait between zero and the backoff), so that many
//! clients throttled at the same moment do not come back in lockstep.
//! Permanent errors (not found, permission denied, …) are returned at once.
//!
//! Every call the trait offers is safe to repeat: objects are immutable and
//! content-addressed, so an overwrite that is repeated writes the same bytes,
//! and deleting an absent object succeeds. The one exception is a
//! [`PutMode::CreateNew`] write: when an attempt fails transiently, the
//! request may still have reached the store and created the object, and the
//! next attempt then fails with [`StoreError::AlreadyExists`] — against our
//! own write. So after a transient failure, an `AlreadyExists` is checked:
//! the object is read back, and if its bytes are exactly the bytes we were
//! writing the write counts as ours and succeeds. Create-new objects (locks,
//! the config, keys) embed random nonces and timestamps, so another writer's
//! object never has the same bytes by chance; if the bytes differ, someone
//! else won and `AlreadyExists` is returned as usual.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;

use crate::{Backend, FileType, Handle, ObjectInfo, PutMode, PutOptions, StoreError};

/// How often and how patiently to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Upper bound of the wait before the first retry.
    pub initial_backoff: Duration,
    /// Upper bound of any single wait.
    pub max_backoff: Duration,
    /// Growth of the bound from one retry to the next.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    /// Six attempts, waits bounded by 0.2 s, 0.6 s, 1.8 s, 5.4 s and 16.2 s
    /// (about 12 s in all on average, 24 s at most): rides out a throttling
    /// burst or a gateway restart without hiding an outage for long.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
            multiplier: 3.0,
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn none() -> Self {
        RetryPolicy { max_attempts: 1, ..RetryPolicy::default() }
    }

    /// The upper bound of the wait after failed attempt number `attempt`
    /// (1-based): `initial * multiplier^(attempt-1)`, capped at `max_backoff`.
    pub fn backoff_cap(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        // Also tames an infinite product from extreme settings.
        Duration::try_from_secs_f64(secs).map_or(self.max_backoff, |d| d.min(self.max_backoff))
    }

    /// The wait after failed attempt number `attempt`: uniform in `[0, cap]`
    /// ("full jitter").
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.backoff_cap(attempt);
        if cap.is_zero() {
            return cap;
        }
        let secs = cap.as_secs_f64() * rand::thread_rng().r#gen::<f64>();
        Duration::try_from_secs_f64(secs).map_or(cap, |d| d.min(cap))
    }
}

/// A [`Backend`] that retries its inner backend's transient failures
/// according to a [`RetryPolicy`]. See the module docs.
pub struct RetryBackend<B> {
    inner: B,
    policy: RetryPolicy,
}

impl<B: Backend> RetryBackend<B> {
    pub fn new(inner: B, policy: RetryPolicy) -> Self {
        RetryBackend { inner, policy }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Runs `op` until it succeeds, fails permanently, or the attempts run out.
    async fn retry<T, F, Fut>(
        &self,
        what: &str,
        object: &(dyn fmt::Display + Sync),
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.policy.max_attempts => {
                    self.wait(what, object, attempt, &e).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn wait(&self, what: &str, object: &(dyn fmt::Display + Sync), attempt: u32, error: &StoreError) {
        let delay = self.policy.backoff(attempt);
        tracing::warn!(
            operation = what,
            object = %object,
            attempt,
            max_attempts = self.policy.max_attempts,
            delay_ms = delay.as_millis() as u64,
            error = %error,
            "transient storage error; retrying"
        );
        tokio::time::sleep(delay).await;
    }

    /// A create-new write, where an `AlreadyExists` after a transient failure
    /// may be our own earlier attempt (see the module docs).
    async fn put_create_new(&self, handle: &Handle, data: Bytes, opts: PutOptions) -> Result<(), StoreError> {
        let mut attempt = 1;
        let mut maybe_landed = false;
        loop {
            let err = match self.inner.put(handle, data.clone(), opts).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if matches!(err, StoreError::AlreadyExists { .. }) && maybe_landed {
                match self.retry("get", handle, || self.inner.get(handle, None)).await {
                    Ok(stored) if stored == data => {
                        tracing::info!(
                            object = %handle,
                            "create-new write found its own bytes after a transient failure; \
                             the earlier attempt had succeeded"
                        );
                        return Ok(());
                    }
                    Ok(_) => return Err(err),
                    // Gone again (a stale lock removed meanwhile): the name is
                    // free, so another attempt may create it.
                    Err(StoreError::NotFound { .. }) if attempt < self.policy.max_attempts => {
                        attempt += 1;
                        continue;
                    }
                    Err(StoreError::NotFound { .. }) => return Err(err),
                    Err(e) => return Err(e),
                }
            }
            if !err.is_transient() || attempt >= self.policy.max_attempts {
                return Err(err);
            }
            maybe_landed = true;
            self.wait("put", handle, attempt, &err).await;
            attempt += 1;
        }
    }
}

impl<B: fmt::Debug> fmt::Debug for RetryBackend<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBackend").field("inner", &self.inner).field("policy", &self.policy).finish()
    }
}

#[async_trait]
impl<B: Backend> Backend for RetryBackend<B> {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn create(&self) -> Result<(), StoreError> {
        let location = self.inner.location();
        self.retry("create", &location, || self.inner.create()).await
    }

    async fn get(&self, handle: &Handle, range: Option<Range<u64>>) -> Result<Bytes, StoreError> {
        self.retry("get", handle, || self.inner.get(handle, range.clone())).await
    }

    async fn put(&self, handle: &Handle, data: Bytes, opts: PutOptions) -> Result<(), StoreError> {
        match opts.mode {
            PutMode::CreateNew => self.put_create_new(handle, data, opts).await,
            PutMode::Overwrite => {
                self.retry("put", handle, || self.inner.put(handle, data.clone(), opts)).await
            }
        }
    }

    async fn stat(&self, handle: &Handle) -> Result<ObjectInfo, StoreError> {
        self.retry("stat", handle, || self.inner.stat(handle)).await
    }

    async fn list(&self, kind: FileType) -> Result<Vec<ObjectInfo>, StoreError> {
        let what = match kind {
            FileType::Config => "config".to_string(),
            FileType::Journal => "journals".to_string(),
            kind => format!("{}/", kind.dir()),
        };
        self.retry("list", &what, || self.inner.list(kind)).await
    }

    async fn delete(&self, handle: &Handle) -> Result<(), StoreError> {
        self.retry("delete", handle, || self.inner.delete(handle)).await
    }

    async fn exists(&self, handle: &Handle) -> Result<bool, StoreError> {
        self.retry("stat", handle, || self.inner.exists(handle)).await
    }

    fn copy_source(&self, handle: &Handle) -> Option<crate::CopySource> {
        self.inner.copy_source(handle)
    }

    async fn copy_from(
        &self,
        source: &crate::CopySource,
        handle: &Handle,
    ) -> Result<Option<Option<[u8; 32]>>, StoreError> {
        self.retry("copy", handle, || self.inner.copy_from(source, handle)).await
    }

    async fn stored_sha256(&self, handle: &Handle) -> Result<Option<[u8; 32]>, StoreError> {
        self.retry("checksum", handle, || self.inner.stored_sha256(handle)).await
    }

    async fn clean_abandoned_uploads(&self, older_than: Duration) -> Result<usize, StoreError> {
        // Each attempt lists afresh: what an earlier, failed attempt aborted
        // is simply gone (and not counted again).
        let location = self.inner.location();
        self.retry("abort abandoned uploads", &location, || self.inner.clean_abandoned_uploads(older_than))
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::{LocalBackend, conformance};

    /// What the flaky backend does on its next call.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        /// Fail transiently without touching the store.
        Transient,
        /// Perform the call, then report a transient failure anyway (a
        /// response lost on the way back).
        TransientAfter,
        /// Fail permanently.
        Denied,
    }

    /// A local backend that fails on command, counting calls.
    #[derive(Debug)]
    struct Flaky {
        inner: LocalBackend,
        faults: Mutex<VecDeque<Fault>>,
        calls: AtomicU32,
    }

    impl Flaky {
        fn new(dir: &std::path::Path, faults: &[Fault]) -> Self {
            Flaky {
                inner: LocalBackend::new(dir),
                faults: Mutex::new(faults.iter().copied().collect()),
                calls: AtomicU32::new(0),
            }
        }

        fn next_fault(&self) -> Option<Fault> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.faults.lock().unwrap().pop_front()
        }

        fn calls(&self) -> u32 {
            self.calls.load(Ordering::SeqCst)
        }

        async fn wrap<T>(
            &self,
            path: &str,
            call: impl Future<Output = Result<T, StoreError>>,
        ) -> Result<T, StoreError> {
            let transient =
                || StoreError::Transient { path: path.to_string(), message: "503 SlowDown".into() };
            match self.next_fault() {
                None => call.await,
                Some(Fault::Transient) => Err(transient()),
                Some(Fault::TransientAfter) => {
                    call.await?;
                    Err(transient())
                }
                Some(Fault::Denied) => Err(StoreError::PermissionDenied { path: path.to_string() }),
            }
        }
    }

    #[async_trait]
    impl Backend for Flaky {
        fn location(&self) -> String {
            self.inner.location()
        }
        async fn create(&self) -> Result<(), StoreError> {
            self.wrap("create", self.inner.create()).await
        }
        async fn get(&self, h: &Handle, range: Option<Range<u64>>) -> Result<Bytes, StoreError> {
            self.wrap(&h.path(), self.inner.get(h, range)).await
        }
        async fn put(&self, h: &Handle, data: Bytes, opts: PutOptions) -> Result<(), StoreError> {
            self.wrap(&h.path(), self.inner.put(h, data, opts)).await
        }
        async fn stat(&self, h: &Handle) -> Result<ObjectInfo, StoreError> {
            self.wrap(&h.path(), self.inner.stat(h)).await
        }
        async fn list(&self, kind: FileType) -> Result<Vec<ObjectInfo>, StoreError> {
            self.wrap(kind.dir(), self.inner.list(kind)).await
        }
        async fn delete(&self, h: &Handle) -> Result<(), StoreError> {
            self.wrap(&h.path(), self.inner.delete(h)).await
        }
    }

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            multiplier: 2.0,
        }
    }

    fn lock() -> Handle {
        Handle::new(FileType::Lock, "ab".repeat(32))
    }

    async fn repo(dir: &std::path::Path) -> Flaky {
        let be = Flaky::new(dir, &[]);
        be.create().await.unwrap();
        be.calls.store(0, Ordering::SeqCst);
        be
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = repo(dir.path()).await;
        flaky.faults.lock().unwrap().extend([Fault::Transient, Fault::Transient, Fault::Transient]);
        let be = RetryBackend::new(flaky, fast(6));
        be.put(&lock(), Bytes::from_static(b"hello"), PutOptions::default()).await.unwrap();
        assert_eq!(be.inner().calls(), 4);
        assert_eq!(be.get(&lock(), None).await.unwrap(), &b"hello"[..]);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = repo(dir.path()).await;
        flaky.faults.lock().unwrap().extend([Fault::Denied, Fault::Transient]);
        let be = RetryBackend::new(flaky, fast(6));
        let err = be.stat(&lock()).await.unwrap_err();
        assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err:?}");
        assert_eq!(be.inner().calls(), 1);
        // Not found is permanent too.
        assert!(be.get(&lock(), None).await.unwrap_err().is_not_found());
        assert_eq!(be.inner().calls(), 3, "one transient failure, then a not-found");
    }

    #[tokio::test]
    async fn attempts_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = repo(dir.path()).await;
        flaky.faults.lock().unwrap().extend([Fault::Transient; 10]);
        let be = RetryBackend::new(flaky, fast(3));
        let err = be.list(FileType::Snapshot).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert_eq!(be.inner().calls(), 3);
    }

    #[tokio::test]
    async fn create_new_that_landed_before_a_transient_failure_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = repo(dir.path()).await;
        // The first attempt writes the object but its response is lost; the
        // retry meets our own object.
        flaky.faults.lock().unwrap().push_back(Fault::TransientAfter);
        let be = RetryBackend::new(flaky, fast(6));
        be.put(&lock(), Bytes::from_static(b"mine"), PutOptions::create_new()).await.unwrap();
        assert_eq!(be.get(&lock(), None).await.unwrap(), &b"mine"[..]);
    }

    #[tokio::test]
    async fn create_new_lost_to_another_writer_is_already_exists() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = repo(dir.path()).await;
        flaky.inner.put(&lock(), Bytes::from_static(b"theirs"), PutOptions::create_new()).await.unwrap();
        flaky.faults.lock().unwrap().push_back(Fault::Transient);
        let be = RetryBackend::new(flaky, fast(6));
        let err = be.put(&lock(), Bytes::from_static(b"mine"), PutOptions::create_new()).await.unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
        assert_eq!(be.get(&lock(), None).await.unwrap(), &b"theirs"[..]);
    }

    #[tokio::test]
    async fn create_new_without_a_transient_failure_is_plain_already_exists() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = repo(dir.path()).await;
        flaky.inner.put(&lock(), Bytes::from_static(b"same"), PutOptions::create_new()).await.unwrap();
        let be = RetryBackend::new(flaky, fast(6));
        // Even identical bytes: with no failed attempt of ours, the object is
        // someone else's, and create-new must refuse.
        let err = be.put(&lock(), Bytes::from_static(b"same"), PutOptions::create_new()).await.unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
        assert_eq!(be.inner().calls(), 1, "no read-back without an earlier transient failure");
    }

    #[tokio::test]
    async fn create_new_gives_up_after_max_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = repo(dir.path()).await;
        flaky.faults.lock().unwrap().extend([Fault::Transient; 10]);
        let be = RetryBackend::new(flaky, fast(4));
        let err = be.put(&lock(), Bytes::from_static(b"x"), PutOptions::create_new()).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert_eq!(be.inner().calls(), 4);
        assert!(!be.inner().inner.exists(&lock()).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrapped_backend_passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let be = RetryBackend::new(LocalBackend::new(dir.path().join("repo")), fast(3));
        conformance::run_all(&be).await;
        conformance::create_new_race(std::sync::Arc::new(be)).await;
    }

    #[test]
    fn backoff_grows_exponentially_with_full_jitter_and_a_cap() {
        let p = RetryPolicy { multiplier: 2.0, ..RetryPolicy::default() };
        assert_eq!(p.backoff_cap(1), Duration::from_millis(200));
        assert_eq!(p.backoff_cap(2), Duration::from_millis(400));
        assert_eq!(p.backoff_cap(5), Duration::from_millis(3200));
        assert_eq!(p.backoff_cap(10), Duration::from_secs(20));
        assert_eq!(p.backoff_cap(u32::MAX), Duration::from_secs(20));
        let extreme = RetryPolicy { multiplier: f64::MAX, max_backoff: Duration::MAX, ..p.clone() };
        assert_eq!(extreme.backoff_cap(3), Duration::MAX);
        assert!(extreme.backoff(3) <= Duration::MAX);
        for attempt in 1..8 {
            for _ in 0..100 {
                assert!(p.backoff(attempt) <= p.backoff_cap(attempt));
            }
        }
        // Full jitter: waits spread over the whole range, not around the cap.
        let waits: Vec<_> = (0..200).map(|_| p.backoff(3)).collect();
        assert!(waits.iter().any(|w| *w < Duration::from_millis(200)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(600)));
    }
}
