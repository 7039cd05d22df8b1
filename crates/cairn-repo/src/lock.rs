//! Repository locks, in restic's format and with restic's rules.
//!
//! A lock is a small encrypted JSON document in `locks/`. Many non-exclusive
//! locks may coexist (backups, restores, checks); an exclusive lock (prune,
//! key removal) excludes every other. A lock is stale when its time is more
//! than [`STALE_AFTER`] old, or when it was taken on this host by a process
//! that no longer exists. Holders refresh their lock every
//! [`REFRESH_EVERY`] so long runs never look stale.
//!
//! Taking a lock: look for conflicting locks, write ours, look again (two
//! processes may have raced past the first look), and back out if a
//! conflict appeared. Only an exclusive locker waits [`SETTLE`] before its
//! second look. A conflict always has an exclusive lock on one side: if the
//! other side's lock was written before the exclusive one's second look,
//! that look (made at least `SETTLE` after its own write, so with listings
//! caught up) finds it; if after, the other side's own second look comes
//! later still and finds the exclusive lock. The common non-exclusive
//! lockers (every backup) so start without the pause.
//!
//! Losing a lock: anyone may remove a stale lock (and `cairn unlock
//! --remove-all` removes every lock), after which a prune could delete
//! data this run still counts on. So a holder whose refreshes keep failing
//! retries them promptly, and once none has succeeded for
//! [`LockTiming::lost_after`] (well before `STALE_AFTER`), or as soon as it
//! finds its lock file gone, counts the lock as **lost**: the flag from
//! [`LockGuard::lost_flag`] is set for the command to stop at its next
//! step, and [`LockGuard::commit_check`] refuses the snapshot write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_store::{FileType, Handle, StoreError};
use chrono::{DateTime, FixedOffset};
use tokio::sync::Mutex;

use crate::error::{RepoError, Result};
use crate::format::LockFile;
use crate::id::Id;
use crate::repository::{CommitCheck, Repository, host_and_user, now};

/// A lock older than this is stale (restic uses the same limit).
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a held lock is rewritten with a fresh time.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// A held lock counts as lost when no refresh has succeeded for this long:
/// half of [`STALE_AFTER`], leaving the other half for the command to stop
/// and for clocks that disagree.
pub const LOST_AFTER: Duration = Duration::from_secs(15 * 60);
/// Pause between writing a lock and re-checking for racing writers.
const SETTLE: Duration = Duration::from_millis(150);

/// How a held lock is kept fresh, and when it counts as lost. The defaults
/// are [`REFRESH_EVERY`] and [`LOST_AFTER`]; tests shorten both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTiming {
    /// How often the lock is rewritten. A failed refresh is retried after a
    /// tenth of this (30 s by default).
    pub refresh_every: Duration,
    /// No successful refresh for this long: the lock is lost. Must exceed
    /// `refresh_every` and stay well under [`STALE_AFTER`].
    pub lost_after: Duration,
}

impl Default for LockTiming {
    fn default() -> Self {
        LockTiming { refresh_every: REFRESH_EVERY, lost_after: LOST_AFTER }
    }
}

impl LockTiming {
    fn retry_every(&self) -> Duration {
        self.refresh_every / 10
    }
}

/// A lock held by this process; released by [`LockGuard::release`] (or,
/// best-effort, when dropped).
pub struct LockGuard {
    held: Arc<Held>,
    refresher: tokio::task::JoinHandle<()>,
    released: bool,
}

/// What the guard and its refresher share.
struct Held {
    repo: Repository,
    exclusive: bool,
    timing: LockTiming,
    /// The lock file now in place and the time written in it. Held across
    /// a whole refresh, so nobody looks for the old file while it is being
    /// replaced.
    current: Mutex<(Id, DateTime<FixedOffset>)>,
    lost: Arc<AtomicBool>,
    /// Why the lock was lost, set once with `lost`.
    lost_reason: std::sync::Mutex<Option<String>>,
}

impl Held {
    fn mark_lost(&self, reason: String) {
        let mut slot = self.lost_reason.lock().expect("lost reason");
        if slot.is_none() {
            tracing::error!("the repository lock was lost: {reason}; stopping");
            *slot = Some(reason);
            self.lost.store(true, Ordering::Relaxed);
        }
    }

    fn lost_error(&self) -> Option<RepoError> {
        let reason = self.lost_reason.lock().expect("lost reason").clone()?;
        Some(RepoError::LockLost { reason })
    }

    /// How long a refresh may still take before the lock counts as lost.
    fn time_left(&self, written: DateTime<FixedOffset>) -> Option<Duration> {
        let age = now().signed_duration_since(written).to_std().unwrap_or_default();
        self.timing.lost_after.checked_sub(age).filter(|left| !left.is_zero())
    }

    /// `last_attempt`: what became of the last refresh, if one was tried.
    fn not_refreshed(&self, written: DateTime<FixedOffset>, last_attempt: Option<&str>) -> String {
        format!(
            "no refresh succeeded for {:?} (since {}){}; others may treat it as stale {} minutes after that",
            self.timing.lost_after,
            written.format("%H:%M:%S"),
            last_attempt.map(|e| format!(", the last attempt {e}")).unwrap_or_default(),
            STALE_AFTER.as_secs() / 60
        )
    }

    fn removed(id: &Id) -> String {
        format!(
            "its file locks/{} was removed by someone else (`cairn unlock --remove-all`, or a process that judged it stale)",
            id.short()
        )
    }

    /// Proves the lock still holds: not lost, refreshed recently enough, and
    /// its file still there.
    async fn confirm(&self) -> Result<()> {
        if let Some(e) = self.lost_error() {
            return Err(e);
        }
        let current = self.current.lock().await;
        let (id, written) = *current;
        if self.time_left(written).is_none() {
            self.mark_lost(self.not_refreshed(written, None));
        } else {
            match self.repo.backend().stat(&Handle::new(FileType::Lock, id.to_hex())).await {
                Ok(_) => return Ok(()),
                Err(StoreError::NotFound { .. }) => self.mark_lost(Self::removed(&id)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.lost_error().expect("just marked lost"))
    }

    /// Writes a fresh lock file in place of the current one. `Ok(false)`:
    /// the current one had disappeared, so the lock is lost.
    async fn refresh(&self) -> Result<bool> {
        let mut current = self.current.lock().await;
        let file = new_lock_file(self.exclusive);
        let new_id = self.repo.save_json(FileType::Lock, &file).await?;
        // Looked for after writing the new one, so a removal any time since
        // the last refresh is noticed.
        let old = Handle::new(FileType::Lock, current.0.to_hex());
        let old_there = match self.repo.backend().stat(&old).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        };
        if !matches!(old_there, Ok(true)) {
            // Not (known to be) still ours: the new file must not outlive this.
            let _ = self.repo.backend().delete(&Handle::new(FileType::Lock, new_id.to_hex())).await;
            return Ok(old_there?);
        }
        *current = (new_id, file.time);
        if let Err(e) = self.repo.backend().delete(&old).await {
            tracing::debug!(lock = %old.path(), error = %e, "could not remove the replaced lock file");
        }
        Ok(true)
    }
}

impl LockFile {
    fn is_stale(&self) -> bool {
        let age = now().signed_duration_since(self.time);
        if age.to_std().map(|a| a > STALE_AFTER).unwrap_or(false) {
            return true;
        }
        let (host, _) = host_and_user();
        if self.hostname == host && self.pid > 0 {
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), None);
            return matches!(alive, Err(nix::errno::Errno::ESRCH));
        }
        false
    }

    fn describe(&self) -> String {
        format!(
            "{} lock by PID {} on {} (user {}) since {}",
            if self.exclusive { "an exclusive" } else { "a" },
            self.pid,
            self.hostname,
            self.username,
            self.time.format("%Y-%m-%d %H:%M:%S %:z")
        )
    }
}

/// Every lock currently in the repository, with its id. Unreadable lock
/// files are skipped: a lock being deleted while listed is normal.
pub async fn list_locks(repo: &Repository) -> Result<Vec<(Id, LockFile)>> {
    let mut out = Vec::new();
    for id in repo.list_ids(FileType::Lock).await? {
        match repo.load_json::<LockFile>(FileType::Lock, &id).await {
            Ok(l) => out.push((id, l)),
            Err(e) => tracing::debug!(lock = %id.short(), error = %e, "skipping unreadable lock"),
        }
    }
    Ok(out)
}

fn conflict(locks: &[(Id, LockFile)], exclusive: bool, ours: Option<Id>) -> Option<String> {
    locks
        .iter()
        .filter(|(id, _)| Some(*id) != ours)
        .filter(|(_, l)| (exclusive || l.exclusive) && !l.is_stale())
        .map(|(_, l)| l.describe())
        .next()
}

fn new_lock_file(exclusive: bool) -> LockFile {
    let (hostname, username) = host_and_user();
    LockFile {
        time: now(),
        exclusive,
        hostname,
        username,
        pid: std::process::id() as i64,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    }
}

impl LockGuard {
    /// The repository this lock is held on.
    pub fn repository(&self) -> &Repository {
        &self.held.repo
    }

    /// Takes a lock with the default [`LockTiming`], failing with
    /// [`RepoError::Locked`] on conflict.
    pub async fn acquire(repo: &Repository, exclusive: bool) -> Result<LockGuard> {
        Self::acquire_with(repo, exclusive, LockTiming::default()).await
    }

    /// Takes a lock refreshed as `timing` says.
    pub async fn acquire_with(repo: &Repository, exclusive: bool, timing: LockTiming) -> Result<LockGuard> {
        let existing = list_locks(repo).await?;
        // A killed run's lock would block restic's exclusive commands
        // (restic does not skip stale locks there), so clear it on the way.
        for (id, lock) in existing.iter().filter(|(_, l)| l.is_stale()) {
            tracing::info!(lock = %id.short(), "removing stale lock: {}", lock.describe());
            let _ = repo.backend().delete(&Handle::new(FileType::Lock, id.to_hex())).await;
        }
        if let Some(holder) = conflict(&existing, exclusive, None) {
            return Err(RepoError::Locked { holder });
        }
        let file = new_lock_file(exclusive);
        let id = repo.save_json(FileType::Lock, &file).await?;
        if exclusive {
            tokio::time::sleep(SETTLE).await;
        }
        if let Some(holder) = conflict(&list_locks(repo).await?, exclusive, Some(id)) {
            let _ = repo.backend().delete(&Handle::new(FileType::Lock, id.to_hex())).await;
            return Err(RepoError::Locked { holder });
        }
        let held = Arc::new(Held {
            repo: repo.clone(),
            exclusive,
            timing,
            current: Mutex::new((id, file.time)),
            lost: Arc::default(),
            lost_reason: Default::default(),
        });
        let refresher = tokio::spawn(refresh_loop(held.clone()));
        Ok(LockGuard { held, refresher, released: false })
    }

    /// Set once the lock is lost (e.g. to stop a long-running operation).
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        self.held.lost.clone()
    }

    /// [`RepoError::LockLost`] with the reason, once the lock is lost.
    pub fn lost_error(&self) -> Option<RepoError> {
        self.held.lost_error()
    }

    /// A check for [`Repository::add_commit_check`]: right before a snapshot
    /// is written, the lock must not be lost, must have been refreshed within
    /// [`LockTiming::lost_after`], and its file must still exist.
    pub fn commit_check(&self) -> CommitCheck {
        let held = self.held.clone();
        Arc::new(move || {
            let held = held.clone();
            Box::pin(async move { held.confirm().await.map_err(|e| e.to_string()) })
        })
    }

    /// Removes the lock. An error names the lock file, which stays behind.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        // Taken before stopping the refresher, so a refresh under way
        // finishes rather than leaving a new lock file nobody knows of.
        let current = self.held.current.lock().await;
        self.refresher.abort();
        self.held.repo.backend().delete(&Handle::new(FileType::Lock, current.0.to_hex())).await?;
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.refresher.abort();
        if self.released {
            return;
        }
        // Best effort for early returns; `release` is the normal path.
        if let (Ok(rt), Ok(current)) = (tokio::runtime::Handle::try_current(), self.held.current.try_lock()) {
            let backend = self.held.repo.backend().clone();
            let handle = Handle::new(FileType::Lock, current.0.to_hex());
            rt.spawn(async move {
                let _ = backend.delete(&handle).await;
            });
        }
    }
}

/// Rewrites the lock every `refresh_every`, failed attempts again every
/// tenth of that, until the lock is lost (no success within `lost_after`,
/// or its file gone), which ends the loop.
async fn refresh_loop(held: Arc<Held>) {
    let mut wait = held.timing.refresh_every;
    let mut last_error: Option<String> = None;
    loop {
        let written = held.current.lock().await.1;
        let Some(left) = held.time_left(written) else {
            held.mark_lost(held.not_refreshed(written, last_error.as_deref()));
            return;
        };
        // Wake up by the deadline even between attempts: a process that was
        // paused (SIGSTOP, a frozen VM) must find out as soon as it runs.
        tokio::time::sleep(wait.min(left)).await;
        let Some(left) = held.time_left(written) else {
            held.mark_lost(held.not_refreshed(written, last_error.as_deref()));
            return;
        };
        match tokio::time::timeout(left, held.refresh()).await {
            Ok(Ok(true)) => {
                wait = held.timing.refresh_every;
                last_error = None;
            }
            Ok(Ok(false)) => {
                let id = held.current.lock().await.0;
                held.mark_lost(Held::removed(&id));
                return;
            }
            Ok(Err(e)) => {
                wait = held.timing.retry_every();
                tracing::warn!(
                    error = %e,
                    "could not refresh the repository lock; retrying in {:?}",
                    wait
                );
                last_error = Some(format!("failed: {e}"));
            }
            Err(_) => {
                let reason = held.not_refreshed(written, Some("did not finish in time"));
                held.mark_lost(reason);
                return;
            }
        }
    }
}

/// Removes stale locks (or all locks with `all`); returns how many.
pub async fn remove_locks(repo: &Repository, all: bool) -> Result<usize> {
    let mut removed = 0;
    for (id, lock) in list_locks(repo).await? {
        if all || lock.is_stale() {
            repo.backend().delete(&Handle::new(FileType::Lock, id.to_hex())).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::LocalBackend;

    async fn repo(dir: &std::path::Path) -> Repository {
        let backend = Arc::new(LocalBackend::new(dir));
        Repository::init_with(backend, "pw", cairn_crypto::KdfParams { n: 1 << 10, r: 8, p: 1 })
            .await
            .unwrap()
    }

    const FAST: LockTiming =
        LockTiming { refresh_every: Duration::from_millis(50), lost_after: Duration::from_secs(20) };

    async fn until(what: &str, cond: impl AsyncFn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !cond().await {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refreshes_replace_the_lock_file_and_release_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let lock = LockGuard::acquire_with(&repo, false, FAST).await.unwrap();
        let first = repo.list_ids(FileType::Lock).await.unwrap();
        assert_eq!(first.len(), 1);
        until("the lock is rewritten", async || {
            let now = repo.list_ids(FileType::Lock).await.unwrap();
            now.len() == 1 && now != first
        })
        .await;
        assert!(lock.lost_error().is_none());
        lock.release().await.unwrap();
        assert!(repo.list_ids(FileType::Lock).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removed_lock_is_lost_and_refuses_the_snapshot_write() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path()).await;
        let lock = LockGuard::acquire_with(&repo, false, FAST).await.unwrap();
        repo.add_commit_check(lock.commit_check());
        repo.save_json(FileType::Snapshot, &serde_json::json!({"n": 1})).await.unwrap();

        assert_eq!(remove_locks(&repo, true).await.unwrap(), 1);
        let refused = repo.save_json(FileType::Snapshot, &serde_json::json!({"n": 2})).await.unwrap_err();
        assert!(
            matches!(&refused, RepoError::CommitRefused(why) if why.contains("removed by someone else")),
            "{refused}"
        );
        let lost = lock.lost_flag();
        until("the lock counts as lost", async || lost.load(Ordering::Relaxed)).await;
        assert!(matches!(lock.lost_error(), Some(RepoError::LockLost { .. })));
        assert_eq!(repo.list_ids(FileType::Snapshot).await.unwrap().len(), 1);
        // The refresher gave up and wrote nothing more.
        tokio::time::sleep(FAST.refresh_every * 3).await;
        assert!(repo.list_ids(FileType::Lock).await.unwrap().is_empty());
        lock.release().await.unwrap();
    }
}
