//! Journals: named logs of whole objects that are never deduplicated.
//!
//! Some sources produce logs rather than files: PostgreSQL's WAL segments
//! today, MongoDB oplog slices and Redis AOF files next. Each piece is
//! written once, must be found by its name in one request ("do you have
//! segment X?"), and shares no content with anything else, so packs and an
//! index would only add indirection. A journal keeps each piece (an
//! *entry*) whole, as one object of [`FileType::Journal`]:
//! `cairn/journal/<journal>/<entry>`, outside restic's directories, which
//! restic ignores. PostgreSQL's journal `wal` keeps `cairn/wal/<entry>`,
//! where its archive was written before there were journals
//! ([`cairn_store::journal_dir`]).
//!
//! An entry is sealed like every other object of the repository (`IV ||
//! AES-256-CTR || Poly1305-AES` under the master key) around
//!
//! ```text
//! tag (8 bytes, the journal's) | version (1 byte, 1) | SHA-256 of the content (32) | u64le length | zstd(content)
//! ```
//!
//! The tag names the journal an entry belongs to (PostgreSQL's is
//! `CAIRNWAL`, which its entries carried before journals existed, so old
//! and new entries are the same bytes), so an entry copied into another
//! journal is refused. Compression is zstd level 1: entries are pushed while
//! their source waits (PostgreSQL's archiver, for one), and logs still
//! shrink a lot.
//!
//! What every journal guarantees:
//! * [`Journal::put_new`] is create-only (`If-None-Match` on S3, link into
//!   place on a directory) and returns only once the entry is durable. The
//!   same content again succeeds ([`Put::AlreadyStored`]: sources retry
//!   after crashes); other content is refused with
//!   [`RepoError::JournalConflict`] and the stored entry stays as it was.
//! * [`Journal::get`] authenticates, decompresses and checks the SHA-256
//!   before a byte is handed out; a missing entry
//!   ([`RepoError::JournalEntryNotFound`]) is told apart from a damaged one
//!   ([`RepoError::JournalDamaged`]) and from a store that cannot be
//!   reached ([`RepoError::Store`]), since a source's recovery must stop on
//!   the last two and may end on the first.
//! * No lock is taken: entries are immutable and only ever created.
//! * The storage layer treats every journal alike: the S3 options for
//!   [`FileType::Journal`] (storage class, SSE, Object Lock retention)
//!   apply to all of them, and replication copies and verifies every
//!   journal it lists, with no list of journals to keep up to date.

use std::io::Read;

use bytes::Bytes;
use cairn_crypto::Key;
use cairn_store::{FileType, Handle, ObjectInfo, PutOptions, StoreError};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::error::{RepoError, Result};
use crate::id::Id;
use crate::repository::Repository;

const VERSION: u8 = 1;
const HEADER: usize = 8 + 1 + 32 + 8;
/// The longest entry name: room for any log file name, far below S3's key limit.
const MAX_ENTRY_NAME: usize = 200;
/// Entries read at once by [`Journal::verify`].
const VERIFY_CONCURRENCY: usize = 4;

/// A journal's identity: its name (its directory) and the tag its entries
/// carry, both the source's own. Sources declare theirs as a `const`, where
/// a name that is not 1 to 32 lower-case letters, digits and `-`, starting
/// with a letter, fails the build (and panics anywhere else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalSpec {
    name: &'static str,
    tag: [u8; 8],
}

impl JournalSpec {
    pub const fn new(name: &'static str, tag: [u8; 8]) -> Self {
        let bytes = name.as_bytes();
        assert!(!bytes.is_empty() && bytes.len() <= 32, "a journal name has 1 to 32 characters");
        assert!(bytes[0].is_ascii_lowercase(), "a journal name starts with a lower-case letter");
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            assert!(
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-',
                "a journal name has lower-case letters, digits and '-' only"
            );
            i += 1;
        }
        JournalSpec { name, tag }
    }

    pub const fn name(&self) -> &'static str {
        self.name
    }
}

/// What [`Journal::put_new`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Written: `bytes` of content took `stored` bytes in the repository.
    Stored { bytes: u64, stored: u64 },
    /// The journal already held this entry with identical content.
    AlreadyStored,
}

/// An entry that failed its check in [`Journal::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedEntry {
    pub entry: String,
    pub reason: String,
}

/// One journal of a repository; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Journal<'r> {
    repo: &'r Repository,
    spec: JournalSpec,
}

impl Repository {
    /// The journal `spec` of this repository (it exists once it has an entry).
    pub fn journal(&self, spec: JournalSpec) -> Journal<'_> {
        Journal { repo: self, spec }
    }
}

impl Journal<'_> {
    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    /// The directory holding the entries, relative to the repository root.
    pub fn dir(&self) -> String {
        cairn_store::journal_dir(self.spec.name)
    }

    fn handle(&self, entry: &str) -> Handle {
        Handle::journal(self.spec.name, entry)
    }

    /// Entry names are single path components the store keeps as they are
    /// and listings show (the local backend hides names starting with `.`).
    fn check_name(&self, entry: &str) -> Result<()> {
        let valid = !entry.is_empty()
            && entry.len() <= MAX_ENTRY_NAME
            && !entry.starts_with('.')
            && entry.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(())
        } else {
            Err(RepoError::BadJournalEntry { journal: self.spec.name, entry: entry.to_string() })
        }
    }

    fn seal(&self, content: &[u8]) -> Vec<u8> {
        let sha: [u8; 32] = Sha256::digest(content).into();
        let compressed = zstd::bulk::compress(content, 1).expect("zstd compression of memory cannot fail");
        let mut plain = Vec::with_capacity(HEADER + compressed.len());
        plain.extend_from_slice(&self.spec.tag);
        plain.push(VERSION);
        plain.extend_from_slice(&sha);
        plain.extend_from_slice(&(content.len() as u64).to_le_bytes());
        plain.extend_from_slice(&compressed);
        self.repo.key().seal(&plain)
    }

    /// Stores `content` as `entry`, create-only (see the module docs).
    pub async fn put_new(&self, entry: &str, content: &[u8]) -> Result<Put> {
        self.check_name(entry)?;
        // Sealed in place: one entry, and its writer waits for it anyway.
        let sealed = self.seal(content);
        let stored = sealed.len() as u64;
        let opts = PutOptions { sha256: Some(Id::hash(&sealed).0), ..PutOptions::create_new() };
        match self.repo.backend().put(&self.handle(entry), Bytes::from(sealed), opts).await {
            Ok(()) => Ok(Put::Stored { bytes: content.len() as u64, stored }),
            Err(StoreError::AlreadyExists { .. }) => {
                if self.get(entry).await? == content {
                    Ok(Put::AlreadyStored)
                } else {
                    Err(RepoError::JournalConflict { journal: self.spec.name, entry: entry.to_string() })
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The content of `entry`, verified (see the module docs).
    pub async fn get(&self, entry: &str) -> Result<Vec<u8>> {
        self.check_name(entry)?;
        let sealed = match self.repo.backend().get(&self.handle(entry), None).await {
            Ok(sealed) => sealed,
            Err(StoreError::NotFound { .. }) => {
                return Err(RepoError::JournalEntryNotFound {
                    journal: self.spec.name,
                    entry: entry.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        // Decompressing and hashing a large entry is CPU work (verify opens
        // several at once); keep it off the async workers.
        let (spec, key, entry) = (self.spec, self.repo.key().clone(), entry.to_string());
        tokio::task::spawn_blocking(move || open(spec, &key, &entry, &sealed))
            .await
            .expect("opening a journal entry panicked")
    }

    /// The journal's entries (names relative to the journal), sorted by
    /// name, with their stored sizes and write times where the store keeps
    /// them.
    pub async fn list(&self) -> Result<Vec<ObjectInfo>> {
        let prefix = format!("{}/", self.spec.name);
        let mut entries: Vec<ObjectInfo> = self
            .repo
            .backend()
            .list(FileType::Journal)
            .await?
            .into_iter()
            .filter_map(|o| Some(ObjectInfo { name: o.name.strip_prefix(&prefix)?.to_string(), ..o }))
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Reads and checks each of `entries` as [`Journal::get`] does; returns
    /// those that are damaged, in the order given. An entry that is missing
    /// or a store that fails ends the verification with that error.
    pub async fn verify<I, S>(&self, entries: I) -> Result<Vec<DamagedEntry>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names: Vec<String> = entries.into_iter().map(|e| e.as_ref().to_string()).collect();
        let mut checks = futures::stream::iter(names)
            .map(|entry| async move {
                match self.get(&entry).await {
                    Ok(_) => Ok(None),
                    Err(RepoError::JournalDamaged { reason, .. }) => Ok(Some(DamagedEntry { entry, reason })),
                    Err(e) => Err(e),
                }
            })
            .buffered(VERIFY_CONCURRENCY);
        let mut damaged = Vec::new();
        while let Some(checked) = checks.next().await {
            damaged.extend(checked?);
        }
        Ok(damaged)
    }
}

/// Opens a stored entry of `spec`: authenticates, decompresses, checks the SHA-256.
fn open(spec: JournalSpec, key: &Key, entry: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let damaged = |reason: String| RepoError::JournalDamaged {
        journal: spec.name,
        entry: entry.to_string(),
        path: Handle::journal(spec.name, entry).path(),
        reason,
    };
    let plain = key.open(sealed).map_err(|e| damaged(format!("authentication failed ({e})")))?;
    if plain.len() < HEADER || plain[..8] != spec.tag {
        return Err(damaged(format!("not an entry of the {} journal", spec.name)));
    }
    if plain[8] != VERSION {
        return Err(damaged(format!(
            "format version {} is not supported by this cairn; upgrade it",
            plain[8]
        )));
    }
    let len = u64::from_le_bytes(plain[41..49].try_into().expect("8 bytes"));
    let mut content = Vec::with_capacity(len.min(1 << 30) as usize);
    // One byte more than the header promises is enough to tell it lied.
    zstd::stream::read::Decoder::new(&plain[HEADER..])
        .and_then(|d| d.take(len + 1).read_to_end(&mut content))
        .map_err(|e| damaged(format!("cannot decompress ({e})")))?;
    if content.len() as u64 != len || <[u8; 32]>::from(Sha256::digest(&content)) != plain[9..41] {
        return Err(damaged("content does not match its SHA-256".into()));
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::sync::Arc;

    use cairn_crypto::KdfParams;
    use cairn_store::LocalBackend;

    use super::*;

    const CHEAP: KdfParams = KdfParams { n: 1 << 10, r: 8, p: 1 };
    const WAL: JournalSpec = JournalSpec::new("wal", *b"CAIRNWAL");
    const OPLOG: JournalSpec = JournalSpec::new("oplog", *b"TESTOPLG");

    async fn repository(dir: &Path) -> Repository {
        Repository::init_with(Arc::new(LocalBackend::new(dir)), "pw", CHEAP).await.unwrap()
    }

    /// Replaces a stored object's bytes (objects are written read-only).
    fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = std::fs::read(path).unwrap();
        change(&mut bytes);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// An entry sealed by hand from the documented layout, so the tests do
    /// not depend on the code under test to build one.
    fn sealed_by_hand(
        repo: &Repository,
        tag: &[u8; 8],
        version: u8,
        sha_of: &[u8],
        content: &[u8],
    ) -> Vec<u8> {
        let mut plain = tag.to_vec();
        plain.push(version);
        plain.extend_from_slice(&Sha256::digest(sha_of));
        plain.extend_from_slice(&(content.len() as u64).to_le_bytes());
        plain.extend_from_slice(&zstd::bulk::compress(content, 1).unwrap());
        repo.key().seal(&plain)
    }

    fn damage_reason(result: Result<Vec<u8>>) -> String {
        match result {
            Err(RepoError::JournalDamaged { reason, .. }) => reason,
            other => panic!("expected damage, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn put_new_is_create_only_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path()).await;
        let oplog = repo.journal(OPLOG);
        let content = b"one slice of a log ".repeat(1000);
        let put = oplog.put_new("0001", &content).await.unwrap();
        let Put::Stored { bytes, stored } = put else { panic!("{put:?}") };
        assert_eq!(bytes, content.len() as u64);
        assert!(stored < bytes / 10, "compressed: {stored} of {bytes} bytes");
        let path = dir.path().join("cairn/journal/oplog/0001");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), stored);

        // The same content again (a retry after a crash): success, nothing written.
        let before = std::fs::read(&path).unwrap();
        assert_eq!(oplog.put_new("0001", &content).await.unwrap(), Put::AlreadyStored);
        assert_eq!(std::fs::read(&path).unwrap(), before);

        // Other content under the name: refused, the entry stays as it was.
        let err = oplog.put_new("0001", b"something else").await.unwrap_err();
        assert!(
            matches!(&err, RepoError::JournalConflict { journal: "oplog", entry } if entry == "0001"),
            "{err:?}"
        );
        assert!(err.to_string().contains("different content"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(oplog.get("0001").await.unwrap(), content);

        // Names are single, visible path components.
        for bad in ["", ".hidden", "a/b", "..", "x y", &"n".repeat(201)] {
            let err = oplog.put_new(bad, b"x").await.unwrap_err();
            assert!(matches!(err, RepoError::BadJournalEntry { .. }), "{bad:?}: {err:?}");
            assert!(matches!(oplog.get(bad).await, Err(RepoError::BadJournalEntry { .. })), "{bad:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn get_refuses_damage_and_tells_missing_apart() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path()).await;
        let (wal, oplog) = (repo.journal(WAL), repo.journal(OPLOG));
        let content = b"000000010000000000000001 ".repeat(2000);
        wal.put_new("000000010000000000000001", &content).await.unwrap();
        let path = dir.path().join("cairn/wal/000000010000000000000001");
        let good = std::fs::read(&path).unwrap();

        let err = wal.get("000000010000000000000002").await.unwrap_err();
        assert!(matches!(err, RepoError::JournalEntryNotFound { journal: "wal", .. }), "{err:?}");

        // Any flipped bit fails authentication; nothing is handed out.
        rewrite(&path, |b| b[100] ^= 1);
        let err = wal.get("000000010000000000000001").await.unwrap_err();
        assert!(err.to_string().contains("cairn/wal/000000010000000000000001"), "{err}");
        assert!(damage_reason(Err(err)).contains("authentication failed"));

        // An authentic entry of another journal, moved here, is not this journal's.
        oplog.put_new("0001", &content).await.unwrap();
        let moved = std::fs::read(dir.path().join("cairn/journal/oplog/0001")).unwrap();
        rewrite(&path, |b| *b = moved);
        let reason = damage_reason(wal.get("000000010000000000000001").await);
        assert!(reason.contains("not an entry of the wal journal"), "{reason}");

        // Authentic, but the content is not what its header says.
        let sealed = sealed_by_hand(&repo, b"CAIRNWAL", 1, b"other bytes", &content);
        rewrite(&path, |b| *b = sealed);
        let reason = damage_reason(wal.get("000000010000000000000001").await);
        assert!(reason.contains("does not match its SHA-256"), "{reason}");
        // A newer format is refused with what to do.
        let sealed = sealed_by_hand(&repo, b"CAIRNWAL", 2, &content, &content);
        rewrite(&path, |b| *b = sealed);
        let reason = damage_reason(wal.get("000000010000000000000001").await);
        assert!(reason.contains("upgrade"), "{reason}");

        rewrite(&path, |b| *b = good);
        assert_eq!(wal.get("000000010000000000000001").await.unwrap(), content);
    }

    /// WAL archived before journals existed is read as it is, and what the
    /// `wal` journal writes is that same format (older cairn binaries read it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_written_before_journals_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path()).await;
        let content = b"a WAL segment archived by an older cairn".repeat(500);
        std::fs::create_dir_all(dir.path().join("cairn/wal")).unwrap();
        let old = sealed_by_hand(&repo, b"CAIRNWAL", 1, &content, &content);
        std::fs::write(dir.path().join("cairn/wal/00000001.history"), old).unwrap();
        let wal = repo.journal(WAL);
        assert_eq!(wal.get("00000001.history").await.unwrap(), content);

        wal.put_new("000000010000000000000001", &content).await.unwrap();
        let sealed = std::fs::read(dir.path().join("cairn/wal/000000010000000000000001")).unwrap();
        let plain = repo.key().open(&sealed).unwrap();
        assert_eq!(&plain[..9], b"CAIRNWAL\x01");
        assert_eq!(plain[9..41], Sha256::digest(&content)[..]);
        assert_eq!(plain[41..49], (content.len() as u64).to_le_bytes());
        assert_eq!(zstd::stream::decode_all(&plain[49..]).unwrap(), content);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_journal_lists_its_own_entries() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path()).await;
        let (wal, oplog) = (repo.journal(WAL), repo.journal(OPLOG));
        assert!(wal.list().await.unwrap().is_empty(), "no journal before its first entry");
        for name in ["000000010000000000000002", "000000010000000000000001", "00000002.history"] {
            wal.put_new(name, name.as_bytes()).await.unwrap();
        }
        for name in ["0002", "0001"] {
            oplog.put_new(name, &name.as_bytes().repeat(100)).await.unwrap();
        }
        let names = |entries: Vec<ObjectInfo>| entries.into_iter().map(|o| o.name).collect::<Vec<_>>();
        assert_eq!(
            names(wal.list().await.unwrap()),
            ["000000010000000000000001", "000000010000000000000002", "00000002.history"]
        );
        let listed = oplog.list().await.unwrap();
        let on_disk = std::fs::metadata(dir.path().join("cairn/journal/oplog/0001")).unwrap();
        assert_eq!((listed[0].size, listed[0].modified), (on_disk.len(), on_disk.modified().ok()));
        assert_eq!(names(listed), ["0001", "0002"]);
        assert_eq!((wal.dir(), oplog.dir()), ("cairn/wal".to_string(), "cairn/journal/oplog".to_string()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_names_the_damaged_entries() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repository(dir.path()).await;
        let oplog = repo.journal(OPLOG);
        let names: Vec<String> = (1..=6).map(|i| format!("{i:04}")).collect();
        for name in &names {
            oplog.put_new(name, &name.as_bytes().repeat(5000)).await.unwrap();
        }
        assert_eq!(oplog.verify(&names).await.unwrap(), []);
        for damaged in ["0002", "0005"] {
            rewrite(&dir.path().join("cairn/journal/oplog").join(damaged), |b| {
                let at = b.len() - 1;
                b[at] ^= 0x80
            });
        }
        let found = oplog.verify(&names).await.unwrap();
        assert_eq!(found.iter().map(|d| d.entry.as_str()).collect::<Vec<_>>(), ["0002", "0005"]);
        assert!(found.iter().all(|d| d.reason.contains("authentication failed")), "{found:?}");
        // An entry that is not there is not "damaged": the caller listed wrong.
        let err = oplog.verify(["0001", "0009"]).await.unwrap_err();
        assert!(matches!(err, RepoError::JournalEntryNotFound { .. }), "{err:?}");
    }

    #[test]
    #[should_panic(expected = "lower-case letters, digits and '-' only")]
    fn journal_names_are_checked() {
        let _ = JournalSpec::new("wal/../keys", *b"CAIRNBAD");
    }
}
