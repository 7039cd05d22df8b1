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

use std::sync::Arc;
use std::time::Duration;

use cairn_store::{FileType, Handle};
use tokio::sync::Mutex;

use crate::error::{RepoError, Result};
use crate::format::LockFile;
use crate::id::Id;
use crate::repository::{Repository, host_and_user, now};

/// A lock older than this is stale (restic uses the same limit).
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a held lock is rewritten with a fresh time.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// Pause between writing a lock and re-checking for racing writers.
const SETTLE: Duration = Duration::from_millis(150);

/// A lock held by this process; released by [`LockGuard::release`] (or,
/// best-effort, when dropped).
pub struct LockGuard {
    repo: Repository,
    current: Arc<Mutex<Id>>,
    refresher: tokio::task::JoinHandle<()>,
    released: bool,
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
        &self.repo
    }

    /// Takes a lock, failing with [`RepoError::Locked`] on conflict.
    pub async fn acquire(repo: &Repository, exclusive: bool) -> Result<LockGuard> {
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
        let id = repo.save_json(FileType::Lock, &new_lock_file(exclusive)).await?;
        if exclusive {
            tokio::time::sleep(SETTLE).await;
        }
        if let Some(holder) = conflict(&list_locks(repo).await?, exclusive, Some(id)) {
            let _ = repo.backend().delete(&Handle::new(FileType::Lock, id.to_hex())).await;
            return Err(RepoError::Locked { holder });
        }
        let current = Arc::new(Mutex::new(id));
        let refresher = tokio::spawn(refresh_loop(repo.clone(), current.clone(), exclusive));
        Ok(LockGuard { repo: repo.clone(), current, refresher, released: false })
    }

    /// Removes the lock.
    pub async fn release(mut self) -> Result<()> {
        self.refresher.abort();
        self.released = true;
        let id = *self.current.lock().await;
        self.repo.backend().delete(&Handle::new(FileType::Lock, id.to_hex())).await?;
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
        if let (Ok(rt), Ok(id)) = (tokio::runtime::Handle::try_current(), self.current.try_lock()) {
            let backend = self.repo.backend().clone();
            let handle = Handle::new(FileType::Lock, id.to_hex());
            rt.spawn(async move {
                let _ = backend.delete(&handle).await;
            });
        }
    }
}

async fn refresh_loop(repo: Repository, current: Arc<Mutex<Id>>, exclusive: bool) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        match repo.save_json(FileType::Lock, &new_lock_file(exclusive)).await {
            Ok(new_id) => {
                let mut cur = current.lock().await;
                let old = std::mem::replace(&mut *cur, new_id);
                let _ = repo.backend().delete(&Handle::new(FileType::Lock, old.to_hex())).await;
            }
            Err(e) => tracing::warn!(error = %e, "could not refresh the repository lock"),
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
