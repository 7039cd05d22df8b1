//! Replication: keep a second, complete copy of a repository elsewhere
//! (another region, bucket or provider), and prove it is complete.
//!
//! Objects are immutable and named by their SHA-256 (all but `config`), so
//! replicating is copying what the replica lacks, and verifying is comparing
//! names and hashes. The copy order keeps the replica a consistent
//! repository at every moment, by the same invariants as a backup:
//!
//! 1. key files and key revocation records, then `config` (until `config`
//!    exists the replica is not a repository at all; once it does, every
//!    password opens it);
//! 2. packs;
//! 3. index files (they only name packs already copied);
//! 4. journal entries (every journal: PostgreSQL WAL, …), before the
//!    snapshots whose restores need them;
//! 5. snapshots (they only name blobs whose packs and index are copied).
//!
//! Locks are not copied. Objects the primary no longer has (after a prune)
//! stay on the replica: deleting data there is a separate, deliberate act.
//! So do key files: the replica is the copy that must still open when the
//! primary is lost, mistaken or in the wrong hands, and a primary that
//! dropped every key but an attacker's must not lock the owners out of it
//! too. Keys the replica has and the primary lacks are reported; only
//! [`ExtraKeys::RemoveRevoked`], asked for per run, removes those the
//! primary holds an authenticated revocation record for (`cairn key
//! remove` writes one, `cairn/revoked-keys/<id>`), and never the replica's
//! last key.
//!
//! Every byte copied is checked against its name while in transit, so a
//! damaged primary object is reported, never replicated. Objects named by
//! what they are about rather than by their hash (journal entries, key
//! revocations) are authenticated under the master key instead, and
//! verified against the primary's SHA-256.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use cairn_store::{Backend, FileType, Handle, PutOptions, StoreError};
use futures::StreamExt;

use crate::error::{RepoError, Result};
use crate::format::Snapshot;
use crate::id::Id;
use crate::repository::Repository;

/// What to do with key files the replica has and the primary lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExtraKeys {
    /// Keep them all (the default): report them, remove nothing.
    #[default]
    Keep,
    /// Remove those the primary has a revocation record for; keep the rest,
    /// and never remove the replica's last key.
    RemoveRevoked,
}

/// What a replication run did.
#[derive(Debug, Default, Clone)]
pub struct ReplicationReport {
    /// Objects copied, and their bytes, per type (in copy order).
    pub copied: Vec<(FileType, u64, u64)>,
    /// Objects already present on the replica.
    pub already_present: u64,
    /// Key files (ids) the replica has and the primary lacks, kept there.
    pub extra_keys: Vec<String>,
    /// Key files removed from the replica as revoked on the primary.
    pub removed_keys: Vec<String>,
}

/// What `replicate --verify` found.
#[derive(Debug, Default, Clone)]
pub struct VerificationReport {
    pub objects_checked: u64,
    /// Objects whose hash came from the store's own checksum (no download).
    pub checked_by_store_checksum: u64,
    /// Objects the replica lacks.
    pub missing: Vec<ObjectRef>,
    /// Objects the replica holds with other content, and how they differ.
    pub differing: Vec<(ObjectRef, String)>,
    /// Age of the newest primary snapshot the replica lacks (0 when none).
    pub lag: chrono::Duration,
    /// Snapshots on the primary that are not on the replica.
    pub snapshots_missing: usize,
    /// Key files (ids) the replica has and the primary lacks: reported, not
    /// damage (see the module docs).
    pub extra_keys: Vec<String>,
}

/// One repository object, by type and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub kind: FileType,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&handle_for(self.kind, &self.name).path())
    }
}

impl VerificationReport {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.differing.is_empty()
    }
}

/// Journal entries (every journal, listed as one type: PostgreSQL's WAL and
/// whatever other sources keep) go before snapshots: a replica's base
/// backups are only as recoverable as its WAL. Key revocations go with the
/// keys, before any key is removed for one.
const COPY_ORDER: [FileType; 7] = [
    FileType::Key,
    FileType::KeyRevocation,
    FileType::Config,
    FileType::Pack,
    FileType::Index,
    FileType::Journal,
    FileType::Snapshot,
];

/// Objects named by the SHA-256 of their bytes; the others (`config`, and
/// cairn's own journal entries and key revocations, named by what they are
/// about) are compared with the primary's copy instead.
fn named_by_hash(kind: FileType) -> bool {
    !matches!(kind, FileType::Config | FileType::Journal | FileType::KeyRevocation)
}

/// Objects copied server-side by this process (reported by `replicate --json`).
pub static SERVER_SIDE_COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn names_and_sizes(backend: &dyn Backend, kind: FileType) -> Result<HashMap<String, u64>> {
    Ok(backend.list(kind).await?.into_iter().map(|o| (o.name, o.size)).collect())
}

fn handle_for(kind: FileType, name: &str) -> Handle {
    Handle::new(kind, name.to_string())
}

/// Copies to `replica` whatever it lacks of `primary`, in the safe order;
/// `extra_keys` says what becomes of keys only the replica has.
pub async fn replicate(
    primary: &Repository,
    replica: Arc<dyn Backend>,
    concurrency: usize,
    extra_keys: ExtraKeys,
) -> Result<ReplicationReport> {
    let source = primary.backend().clone();
    // Refuse to mix two different repositories in one place.
    match replica.get(&Handle::config(), None).await {
        Ok(theirs) => {
            let ours = source.get(&Handle::config(), None).await?;
            if theirs != ours {
                return Err(RepoError::damaged(
                    format!("{}/config", replica.location()),
                    "the replica location holds a different repository; pick an empty location",
                ));
            }
        }
        Err(StoreError::NotFound { .. }) => {
            // A new replica (or one whose first copy stopped before its
            // config): make the location (directories, bucket) ready.
            replica.create().await.or_else(|e| match e {
                StoreError::AlreadyExists { .. } => Ok(()),
                e => Err(e),
            })?;
        }
        Err(e) => return Err(e.into()),
    }

    let mut report = ReplicationReport::default();
    for kind in COPY_ORDER {
        let ours = names_and_sizes(source.as_ref(), kind).await?;
        let theirs = names_and_sizes(replica.as_ref(), kind).await?;
        let mut todo: Vec<(String, u64)> =
            ours.into_iter().filter(|(name, size)| theirs.get(name) != Some(size)).collect();
        report.already_present += theirs.len() as u64;
        todo.sort();
        let mut copied = (0u64, 0u64);
        let mut results = futures::stream::iter(todo)
            .map(|(name, _)| {
                let (source, replica, key) = (source.clone(), replica.clone(), primary.key().clone());
                async move { copy_object(source.as_ref(), replica.as_ref(), key.as_ref(), kind, &name).await }
            })
            .buffer_unordered(concurrency.max(1));
        while let Some(r) = results.next().await {
            let bytes = r?;
            copied.0 += 1;
            copied.1 += bytes;
        }
        drop(results);
        if kind == FileType::KeyRevocation {
            (report.extra_keys, report.removed_keys) =
                settle_extra_keys(primary, replica.as_ref(), extra_keys).await?;
        }
        if copied.0 > 0 {
            tracing::info!(kind = kind.noun(), objects = copied.0, bytes = copied.1, "replicated");
        }
        report.copied.push((kind, copied.0, copied.1));
    }
    Ok(report)
}

/// Key files (ids) the replica has and the primary lacks, sorted.
async fn keys_only_on(replica: &dyn Backend, primary: &dyn Backend) -> Result<Vec<String>> {
    let ours: HashSet<String> = primary.list(FileType::Key).await?.into_iter().map(|o| o.name).collect();
    let mut extra: Vec<String> = replica
        .list(FileType::Key)
        .await?
        .into_iter()
        .map(|o| o.name)
        .filter(|n| !ours.contains(n))
        .collect();
    extra.sort();
    Ok(extra)
}

/// Reports the keys only the replica has and, when asked, removes those the
/// primary revoked; returns (kept, removed).
async fn settle_extra_keys(
    primary: &Repository,
    replica: &dyn Backend,
    policy: ExtraKeys,
) -> Result<(Vec<String>, Vec<String>)> {
    let extra = keys_only_on(replica, primary.backend().as_ref()).await?;
    if extra.is_empty() {
        return Ok((extra, Vec::new()));
    }
    let revocations = primary.key_revocations().await?;
    let revoked = |name: &String| name.parse::<Id>().is_ok_and(|id| revocations.contains_key(&id));
    let (mut remove, mut keep): (Vec<String>, Vec<String>) = match policy {
        ExtraKeys::Keep => (Vec::new(), extra),
        ExtraKeys::RemoveRevoked => extra.into_iter().partition(|name| revoked(name)),
    };
    // The primary's keys were copied just before, so some key always stays;
    // should the listings say otherwise, keeping every key is the safe side.
    if !remove.is_empty() && replica.list(FileType::Key).await?.len() <= remove.len() {
        tracing::warn!("not removing revoked keys: the replica would be left without any key");
        keep.append(&mut remove);
        keep.sort();
    }
    for name in &remove {
        replica.delete(&handle_for(FileType::Key, name)).await?;
        let r = &revocations[&name.parse::<Id>().expect("revoked keys have id names")];
        tracing::info!(
            key = %name,
            "removed from the replica a key revoked on the primary by {}@{} at {}",
            r.username,
            r.hostname,
            r.time.format("%Y-%m-%d %H:%M:%S %:z")
        );
    }
    if !keep.is_empty() {
        let (revoked_kept, unrecorded): (Vec<&String>, Vec<&String>) = keep.iter().partition(|n| revoked(n));
        let short =
            |names: &[&String]| names.iter().map(|n| &n[..n.len().min(8)]).collect::<Vec<_>>().join(", ");
        if !revoked_kept.is_empty() {
            tracing::warn!(
                "the replica keeps key(s) {} that the primary revoked; `cairn replicate --remove-revoked-keys` removes them",
                short(&revoked_kept)
            );
        }
        if !unrecorded.is_empty() {
            tracing::warn!(
                "the replica keeps key(s) {} that the primary lacks without a revocation record; if they should go, \
                 remove them on the replica with `cairn key remove`",
                short(&unrecorded)
            );
        }
    }
    Ok((keep, remove))
}

/// Copies one object, checking it against its name on the way.
async fn copy_object(
    source: &dyn Backend,
    replica: &dyn Backend,
    key: &cairn_crypto::Key,
    kind: FileType,
    name: &str,
) -> Result<u64> {
    let handle = handle_for(kind, name);
    // Hash-named objects on the same service are copied server-side; the
    // copy's checksum (or a read-back) proves it against its name.
    if matches!(kind, FileType::Pack | FileType::Index | FileType::Snapshot)
        && let Some(src) = source.copy_source(&handle)
        && let Some(sum) = replica.copy_from(&src, &handle).await?
    {
        let sum = match sum {
            Some(sum) => Id(sum),
            None => {
                let data = replica.get(&handle, None).await?;
                tokio::task::spawn_blocking(move || Id::hash(&data)).await.expect("hashing panicked")
            }
        };
        if sum.to_hex() != name {
            let _ = replica.delete(&handle).await;
            return Err(RepoError::damaged(
                handle.path(),
                "content does not match its SHA-256 name on the primary; not replicated (run `cairn check`)",
            ));
        }
        SERVER_SIDE_COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Ok(replica.stat(&handle).await?.size);
    }
    let data: Bytes = source.get(&handle, None).await?;
    let mut opts = PutOptions::default();
    if matches!(kind, FileType::Journal | FileType::KeyRevocation) {
        // Named by what it is about, not by hash: authenticate it instead.
        let (checked, hash) = tokio::task::spawn_blocking({
            let (data, key) = (data.clone(), key.clone());
            move || (key.open(&data).map(|_| ()), Id::hash(&data))
        })
        .await
        .expect("checking panicked");
        if checked.is_err() {
            return Err(RepoError::damaged(
                handle.path(),
                "fails authentication on the primary; not replicated",
            ));
        }
        opts.sha256 = Some(hash.0);
    } else if kind != FileType::Config {
        let hash = tokio::task::spawn_blocking({
            let data = data.clone();
            move || Id::hash(&data)
        })
        .await
        .expect("hashing panicked");
        if hash.to_hex() != name {
            return Err(RepoError::damaged(
                handle.path(),
                "content does not match its SHA-256 name on the primary; not replicated (run `cairn check`)",
            ));
        }
        opts.sha256 = Some(hash.0);
    }
    let len = data.len() as u64;
    replica.put(&handle, data, opts).await?;
    Ok(len)
}

/// Proves the replica holds every object of the primary, byte for byte
/// (by SHA-256: the store's own checksum where it keeps one, otherwise by
/// reading the object), and measures how far behind it is.
pub async fn verify_replica(
    primary: &Repository,
    replica: Arc<dyn Backend>,
    concurrency: usize,
) -> Result<VerificationReport> {
    let source = primary.backend().clone();
    let mut report = VerificationReport::default();
    for kind in COPY_ORDER {
        let ours = names_and_sizes(source.as_ref(), kind).await?;
        let theirs = names_and_sizes(replica.as_ref(), kind).await?;
        let mut present = Vec::new();
        for (name, size) in &ours {
            let object = ObjectRef { kind, name: name.clone() };
            match theirs.get(name) {
                None => report.missing.push(object),
                Some(s) if s != size => report.differing.push((object, format!("{s} bytes, primary {size}"))),
                Some(_) => present.push(name.clone()),
            }
        }
        if kind == FileType::Config {
            for name in present {
                report.objects_checked += 1;
                let h = handle_for(kind, &name);
                if source.get(&h, None).await? != replica.get(&h, None).await? {
                    report.differing.push((ObjectRef { kind, name }, "different bytes".into()));
                }
            }
            continue;
        }
        let mut checks = futures::stream::iter(present)
            .map(|name| {
                let (replica, source) = (replica.clone(), source.clone());
                async move {
                    let h = handle_for(kind, &name);
                    let (hash, by_store) = object_sha256(replica.as_ref(), &h).await?;
                    let same = if named_by_hash(kind) {
                        hash.to_hex() == name
                    } else {
                        object_sha256(source.as_ref(), &h).await?.0 == hash
                    };
                    Ok::<_, RepoError>((ObjectRef { kind, name }, same, by_store))
                }
            })
            .buffer_unordered(concurrency.max(1));
        while let Some(r) = checks.next().await {
            let (object, same, by_store) = r?;
            report.objects_checked += 1;
            if by_store {
                report.checked_by_store_checksum += 1;
            }
            if !same {
                report.differing.push((object, "content does not match its SHA-256 name".into()));
            }
        }
    }
    // Lag: the newest primary snapshot the replica does not have.
    let replica_snapshots: std::collections::HashSet<String> =
        replica.list(FileType::Snapshot).await?.into_iter().map(|o| o.name).collect();
    let (snapshots, _) = primary.snapshots().await?;
    let lacking: Vec<&(Id, Snapshot)> =
        snapshots.iter().filter(|(id, _)| !replica_snapshots.contains(&id.to_hex())).collect();
    report.snapshots_missing = lacking.len();
    if let Some((_, newest)) = lacking.iter().max_by_key(|(_, s)| s.time) {
        report.lag = crate::repository::now().signed_duration_since(newest.time);
    }
    report.extra_keys = keys_only_on(replica.as_ref(), source.as_ref()).await?;
    Ok(report)
}

/// An object's SHA-256: the store's own checksum when it keeps one (true), else read and hashed.
async fn object_sha256(backend: &dyn Backend, handle: &Handle) -> Result<(Id, bool)> {
    Ok(match backend.stored_sha256(handle).await? {
        Some(sum) => (Id(sum), true),
        None => {
            let data = backend.get(handle, None).await?;
            (tokio::task::spawn_blocking(move || Id::hash(&data)).await.expect("hashing"), false)
        }
    })
}

/// Copies again what a verification found missing or different, in the
/// safe order (keys, key revocations, config, packs, indexes, journals, snapshots).
pub async fn repair_replica(
    primary: &Repository,
    replica: Arc<dyn Backend>,
    report: &VerificationReport,
) -> Result<u64> {
    let source = primary.backend().clone();
    let mut todo: Vec<&ObjectRef> =
        report.missing.iter().chain(report.differing.iter().map(|(o, _)| o)).collect();
    todo.sort_by_key(|o| COPY_ORDER.iter().position(|k| *k == o.kind));
    let mut repaired = 0;
    for object in todo {
        copy_object(source.as_ref(), replica.as_ref(), primary.key(), object.kind, &object.name).await?;
        repaired += 1;
    }
    Ok(repaired)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use cairn_crypto::KdfParams;
    use cairn_store::LocalBackend;

    use super::*;
    use crate::journal::JournalSpec;

    const CHEAP: KdfParams = KdfParams { n: 1 << 10, r: 8, p: 1 };

    fn flip_last_byte(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        let at = bytes.len() - 1;
        bytes[at] ^= 1;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// Replication knows no journal by name: one it has never heard of is
    /// copied, verified, repaired and guarded like PostgreSQL's WAL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_journal_is_replicated_and_verified() {
        let (primary_dir, replica_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let primary = Repository::init_with(Arc::new(LocalBackend::new(primary_dir.path())), "pw", CHEAP)
            .await
            .unwrap();
        let wal = primary.journal(JournalSpec::new("wal", *b"CAIRNWAL"));
        let aof = primary.journal(JournalSpec::new("aof", *b"TESTAOF1"));
        wal.put_new("000000010000000000000001", b"segment").await.unwrap();
        aof.put_new("appendonly.aof.1.incr.aof", b"SET k v").await.unwrap();
        aof.put_new("appendonly.aof.2.incr.aof", b"DEL k").await.unwrap();
        let replica: Arc<dyn Backend> = Arc::new(LocalBackend::new(replica_dir.path()));

        let report = replicate(&primary, replica.clone(), 2, ExtraKeys::Keep).await.unwrap();
        let journals = report.copied.iter().find(|(kind, ..)| *kind == FileType::Journal).unwrap();
        assert_eq!(journals.1, 3, "{report:?}");
        let on_replica = replica_dir.path().join("cairn/journal/aof/appendonly.aof.2.incr.aof");
        assert!(replica_dir.path().join("cairn/wal/000000010000000000000001").is_file());
        assert!(on_replica.is_file());
        let copy = Repository::open(replica.clone(), "pw").await.unwrap();
        let aof_copy = copy.journal(JournalSpec::new("aof", *b"TESTAOF1"));
        assert_eq!(aof_copy.get("appendonly.aof.2.incr.aof").await.unwrap(), b"DEL k");
        let verified = verify_replica(&primary, replica.clone(), 2).await.unwrap();
        assert!(verified.is_complete(), "{verified:?}");

        // A damaged copy on the replica is found and repaired.
        flip_last_byte(&on_replica);
        let verified = verify_replica(&primary, replica.clone(), 2).await.unwrap();
        let differing: Vec<String> = verified.differing.iter().map(|(o, _)| o.to_string()).collect();
        assert_eq!(differing, ["cairn/journal/aof/appendonly.aof.2.incr.aof"]);
        assert_eq!(repair_replica(&primary, replica.clone(), &verified).await.unwrap(), 1);
        assert!(verify_replica(&primary, replica.clone(), 2).await.unwrap().is_complete());

        // A damaged entry on the primary is refused, not copied.
        aof.put_new("appendonly.aof.3.incr.aof", b"SET k w").await.unwrap();
        flip_last_byte(&primary_dir.path().join("cairn/journal/aof/appendonly.aof.3.incr.aof"));
        let err = replicate(&primary, replica.clone(), 2, ExtraKeys::Keep).await.unwrap_err();
        assert!(
            matches!(&err, RepoError::Damaged { path, .. } if path == "cairn/journal/aof/appendonly.aof.3.incr.aof"),
            "{err:?}"
        );
        assert!(err.to_string().contains("fails authentication on the primary"), "{err}");
        assert!(!replica_dir.path().join("cairn/journal/aof/appendonly.aof.3.incr.aof").exists());
    }
}
