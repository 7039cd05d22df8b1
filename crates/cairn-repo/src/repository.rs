//! Opening, creating and reading a repository.
//!
//! [`Repository`] is an opened repository: config decrypted, master key in
//! hand. Reading blobs needs the index as well, so that is a separate step
//! ([`Repository::load_index`]) producing an [`Index`] callers pass along;
//! nothing can read a blob without having loaded one.
//!
//! Every object read is verified twice: its SHA-256 against its name (so
//! damage is named precisely, before decryption), then its MAC. Blobs are
//! additionally checked against their plaintext SHA-256 after decompression.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use cairn_crypto::{KdfParams, Key, MasterKeyJson};
use cairn_store::{Backend, FileType, Handle, PutOptions, StoreError};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{RepoError, Result};
use crate::format::{
    BlobType, IndexFile, KeyFile, KeyRevocation, RepoConfig, Snapshot, decode_unpacked, encode_unpacked,
};
use crate::id::Id;
use crate::index::{BlobLocation, Index};
use crate::tree::Tree;

/// How many objects to fetch at once when loading snapshots or indexes.
const LOAD_CONCURRENCY: usize = 8;

/// An opened repository.
#[derive(Clone)]
pub struct Repository {
    backend: Arc<dyn Backend>,
    key: Arc<Key>,
    key_id: Id,
    config: RepoConfig,
    tree_packs: Arc<std::sync::Mutex<TreePackCache>>,
    /// Held while a tree pack is fetched, so concurrent readers of the same
    /// pack wait for one download instead of each starting their own.
    tree_fetch: Arc<tokio::sync::Mutex<()>>,
    /// Asked right before any snapshot is written (shared by clones).
    commit_checks: Arc<std::sync::Mutex<Vec<CommitCheck>>>,
}

/// A last word before a snapshot is written, from outside the repository
/// (the repository lock still held and fresh, a DynamoDB lease still held
/// with time to spare): an error stops the write and the run, with every
/// pack and index already durable and no snapshot naming them.
pub type CommitCheck =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, std::result::Result<(), String>> + Send + Sync>;

/// Whole tree packs, kept after their first tree was read. Walking a
/// snapshot reads thousands of small tree blobs that sit together in a few
/// packs: one request per pack instead of one per tree is what makes
/// change detection and restore planning fast on object stores (each
/// request there costs tens of milliseconds). Blobs are still verified on
/// every read.
#[derive(Default)]
struct TreePackCache {
    packs: std::collections::HashMap<Id, bytes::Bytes>,
    order: std::collections::VecDeque<Id>,
    bytes: usize,
}

impl TreePackCache {
    /// At most this much pack data is kept.
    const LIMIT: usize = 96 << 20;

    fn insert(&mut self, id: Id, data: bytes::Bytes) {
        if self.packs.contains_key(&id) {
            return;
        }
        self.bytes += data.len();
        self.packs.insert(id, data);
        self.order.push_back(id);
        while self.bytes > Self::LIMIT && self.order.len() > 1 {
            if let Some(old) = self.order.pop_front()
                && let Some(d) = self.packs.remove(&old)
            {
                self.bytes -= d.len();
            }
        }
    }
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").field("location", &self.backend.location()).finish()
    }
}

/// The host and user recorded in key files, locks and snapshots.
pub fn host_and_user() -> (String, String) {
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();
    (host, user)
}

pub(crate) fn now() -> chrono::DateTime<chrono::FixedOffset> {
    chrono::Local::now().fixed_offset()
}

/// A key file, listed.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub id: Id,
    pub username: String,
    pub hostname: String,
    pub created: chrono::DateTime<chrono::FixedOffset>,
    /// Whether this is the key the repository was opened with.
    pub current: bool,
}

impl Repository {
    /// A repository whose master key has been unlocked, with empty caches.
    fn opened(backend: Arc<dyn Backend>, master: Key, key_id: Id, config: RepoConfig) -> Repository {
        Repository {
            backend,
            key: Arc::new(master),
            key_id,
            config,
            tree_packs: Default::default(),
            tree_fetch: Default::default(),
            commit_checks: Default::default(),
        }
    }

    /// Creates a new repository (format version 2) protected by `password`.
    pub async fn init(backend: Arc<dyn Backend>, password: &str) -> Result<Repository> {
        Self::init_with(backend, password, KdfParams::DEFAULT).await
    }

    /// Like [`Repository::init`] with explicit scrypt parameters (tests use cheap ones).
    pub async fn init_with(backend: Arc<dyn Backend>, password: &str, kdf: KdfParams) -> Result<Repository> {
        let location = backend.location();
        if backend.exists(&Handle::config()).await? {
            return Err(RepoError::AlreadyInitialized { location });
        }
        match backend.create().await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { .. }) => return Err(RepoError::AlreadyInitialized { location }),
            Err(e) => return Err(e.into()),
        }
        let master = Key::random();
        let config = RepoConfig::new_v2();
        // Key first, config last: a repository without config is not a
        // repository yet, so a crash in between leaves nothing half-made that
        // `open` would accept.
        let key_id = write_key_file(backend.as_ref(), &master, password, kdf).await?;
        let plain = serde_json::to_vec(&config).expect("config serialises");
        let sealed = master.seal(&plain);
        match backend.put(&Handle::config(), sealed.into(), PutOptions::create_new()).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                let _ = backend.delete(&Handle::new(FileType::Key, key_id.to_hex())).await;
                return Err(RepoError::AlreadyInitialized { location });
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Repository::opened(backend, master, key_id, config))
    }

    /// Opens an existing repository with `password`.
    pub async fn open(backend: Arc<dyn Backend>, password: &str) -> Result<Repository> {
        let location = backend.location();
        let sealed_config = match backend.get(&Handle::config(), None).await {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => return Err(RepoError::NotARepository { location }),
            Err(e) => return Err(e.into()),
        };
        let keys = backend.list(FileType::Key).await?;
        let mut damaged = Vec::new();
        for info in keys {
            let handle = Handle::new(FileType::Key, info.name.clone());
            let Ok(key_id) = info.name.parse::<Id>() else { continue };
            let raw = backend.get(&handle, None).await?;
            if Id::hash(&raw) != key_id {
                damaged.push(handle.path());
                continue;
            }
            let Ok(key_file) = serde_json::from_slice::<KeyFile>(&raw) else {
                damaged.push(handle.path());
                continue;
            };
            let password = password.to_string();
            let opened = tokio::task::spawn_blocking(move || open_key_file(&key_file, &password))
                .await
                .expect("key derivation panicked");
            let master = match opened {
                Ok(Some(k)) => k,
                Ok(None) => continue,
                Err(_) => {
                    damaged.push(handle.path());
                    continue;
                }
            };
            let plain = master
                .open(&sealed_config)
                .map_err(|_| RepoError::damaged("config", "failed authentication with the master key"))?;
            let config: RepoConfig =
                serde_json::from_slice(&plain).map_err(|e| RepoError::damaged("config", e))?;
            if config.version != 1 && config.version != 2 {
                return Err(RepoError::UnsupportedVersion(config.version));
            }
            return Ok(Repository::opened(backend, master, key_id, config));
        }
        if let Some(path) = damaged.first() {
            return Err(RepoError::damaged(
                path.clone(),
                format!(
                    "key file does not match its SHA-256 name or is malformed ({} damaged key file(s)); \
                     if you have another password for this repository, use it",
                    damaged.len()
                ),
            ));
        }
        Err(RepoError::WrongPassword { location })
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn key(&self) -> &Arc<Key> {
        &self.key
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// The id of the key file that opened this repository.
    pub fn key_id(&self) -> Id {
        self.key_id
    }

    /// Encrypts, compresses and stores a JSON document; returns its id.
    pub async fn save_json<T: Serialize>(&self, kind: FileType, value: &T) -> Result<Id> {
        if kind == FileType::Snapshot {
            let checks = self.commit_checks.lock().expect("commit check lock").clone();
            for check in checks {
                check().await.map_err(RepoError::CommitRefused)?;
            }
        }
        let json = serde_json::to_vec(value).expect("repository documents serialise");
        let plain = if self.config.version >= 2 { encode_unpacked(&json) } else { json };
        let sealed = self.key.seal(&plain);
        let id = Id::hash(&sealed);
        let opts = PutOptions { sha256: Some(id.0), ..PutOptions::default() };
        self.backend.put(&Handle::new(kind, id.to_hex()), Bytes::from(sealed), opts).await?;
        Ok(id)
    }

    /// Adds a check every snapshot write of this repository (and its clones)
    /// must pass first; with several, all must pass. See [`CommitCheck`].
    pub fn add_commit_check(&self, check: CommitCheck) {
        self.commit_checks.lock().expect("commit check lock").push(check);
    }

    /// Loads and verifies a JSON document.
    pub async fn load_json<T: DeserializeOwned>(&self, kind: FileType, id: &Id) -> Result<T> {
        let handle = Handle::new(kind, id.to_hex());
        let raw = self.backend.get(&handle, None).await?;
        self.decode_json(&handle, id, &raw)
    }

    pub(crate) fn decode_json<T: DeserializeOwned>(&self, handle: &Handle, id: &Id, raw: &[u8]) -> Result<T> {
        if Id::hash(raw) != *id {
            return Err(RepoError::damaged(handle.path(), "content does not match its SHA-256 name"));
        }
        let plain = self
            .key
            .open(raw)
            .map_err(|_| RepoError::damaged(handle.path(), "failed authentication (MAC mismatch)"))?;
        let json = decode_unpacked(&plain).map_err(|e| RepoError::damaged(handle.path(), e))?;
        serde_json::from_slice(&json)
            .map_err(|e| RepoError::damaged(handle.path(), format!("invalid JSON: {e}")))
    }

    /// Ids of all objects of one type (names that are not ids are skipped:
    /// they are another tool's temporary files).
    pub async fn list_ids(&self, kind: FileType) -> Result<Vec<Id>> {
        Ok(self.backend.list(kind).await?.into_iter().filter_map(|o| o.name.parse().ok()).collect())
    }

    /// All snapshots, oldest first. Damaged snapshot files are returned as errors
    /// in the second list rather than failing the whole listing.
    pub async fn snapshots(&self) -> Result<(Vec<(Id, Snapshot)>, Vec<RepoError>)> {
        let ids = self.list_ids(FileType::Snapshot).await?;
        let results: Vec<_> = futures::stream::iter(ids)
            .map(|id| async move { (id, self.load_json::<Snapshot>(FileType::Snapshot, &id).await) })
            .buffer_unordered(LOAD_CONCURRENCY)
            .collect()
            .await;
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for (id, r) in results {
            match r {
                Ok(sn) => ok.push((id, sn)),
                Err(e @ RepoError::Damaged { .. }) => errors.push(e),
                Err(e) => return Err(e),
            }
        }
        ok.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok((ok, errors))
    }

    /// Resolves `latest`, a full id or a unique id prefix.
    pub async fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        if spec == "latest" {
            let (mut all, errors) = self.snapshots().await?;
            if all.is_empty()
                && let Some(e) = errors.into_iter().next()
            {
                return Err(e);
            }
            return all.pop().ok_or_else(|| RepoError::SnapshotNotFound { spec: spec.into() });
        }
        let spec_lc = spec.to_ascii_lowercase();
        if spec_lc.is_empty() || !spec_lc.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(RepoError::SnapshotNotFound { spec: spec.into() });
        }
        let matches: Vec<Id> = self
            .list_ids(FileType::Snapshot)
            .await?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&spec_lc))
            .collect();
        match matches.as_slice() {
            [] => Err(RepoError::SnapshotNotFound { spec: spec.into() }),
            [id] => Ok((*id, self.load_json(FileType::Snapshot, id).await?)),
            many => Err(RepoError::AmbiguousSnapshot { spec: spec.into(), count: many.len() }),
        }
    }

    /// Loads every index file. Fails on the first damaged one; `check` uses
    /// [`Repository::load_index_tolerant`] to report them all instead.
    pub async fn load_index(&self) -> Result<Index> {
        let (index, errors) = self.load_index_tolerant().await?;
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(index),
        }
    }

    /// Loads every readable index file, returning damaged ones as errors.
    pub async fn load_index_tolerant(&self) -> Result<(Index, Vec<RepoError>)> {
        let (files, errors) = self.load_index_files().await?;
        let mut index = Index::new();
        for (id, file) in &files {
            index.add_file(*id, file);
        }
        Ok((index, errors))
    }

    /// Loads every readable index file as written (`check` needs each pack's
    /// full blob list, which the merged [`Index`] does not keep).
    pub async fn load_index_files(&self) -> Result<(Vec<(Id, IndexFile)>, Vec<RepoError>)> {
        let ids = self.list_ids(FileType::Index).await?;
        let mut stream = futures::stream::iter(ids)
            .map(|id| async move { (id, self.load_json::<IndexFile>(FileType::Index, &id).await) })
            .buffer_unordered(LOAD_CONCURRENCY);
        let mut files = Vec::new();
        let mut errors = Vec::new();
        while let Some((id, r)) = stream.next().await {
            match r {
                Ok(file) => files.push((id, file)),
                Err(e @ RepoError::Damaged { .. }) => errors.push(e),
                Err(e) => return Err(e),
            }
        }
        Ok((files, errors))
    }

    /// Packs that exist but that no index lists: what a killed backup
    /// leaves. Each is read whole and verified (SHA-256 against its name,
    /// authenticated header) before it is offered for reuse; damaged ones are
    /// skipped with a warning. Packs a concurrent backup has uploaded but
    /// not indexed yet are found too; indexing them twice is harmless.
    pub async fn find_unindexed_packs(
        &self,
        index: &Index,
    ) -> Result<Vec<(Id, Vec<crate::pack::PackedBlob>)>> {
        let orphans: Vec<Id> =
            self.list_ids(FileType::Pack).await?.into_iter().filter(|p| !index.has_pack(p)).collect();
        let mut found = Vec::new();
        for pack in orphans {
            let handle = Handle::new(FileType::Pack, pack.to_hex());
            let bytes = match self.backend.get(&handle, None).await {
                Ok(b) => b,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let key = self.key.clone();
            let parsed = tokio::task::spawn_blocking(move || {
                if Id::hash(&bytes) != pack {
                    return Err("content does not match its SHA-256 name".to_string());
                }
                crate::pack::parse_pack(&key, &bytes).map_err(|e| e.to_string())
            })
            .await
            .expect("pack verification panicked");
            match parsed {
                Ok(blobs) => found.push((pack, blobs)),
                Err(why) => tracing::warn!(pack = %handle.path(), "unindexed pack not reused: {why}"),
            }
        }
        Ok(found)
    }

    /// Reads one blob, verified against its id.
    pub async fn read_blob(&self, index: &Index, kind: BlobType, id: &Id) -> Result<Vec<u8>> {
        let loc = index.get(id, kind).ok_or(RepoError::BlobNotFound { kind: kind.as_str(), id: *id })?;
        let handle = Handle::new(FileType::Pack, loc.pack.to_hex());
        let range = loc.offset as u64..loc.offset as u64 + loc.length as u64;
        if kind == BlobType::Tree {
            let cached = || self.tree_packs.lock().expect("tree cache").packs.get(&loc.pack).cloned();
            let pack = match cached() {
                Some(p) => p,
                None => {
                    let _fetching = self.tree_fetch.lock().await;
                    match cached() {
                        Some(p) => p,
                        None => {
                            let p = self.backend.get(&handle, None).await?;
                            self.tree_packs.lock().expect("tree cache").insert(loc.pack, p.clone());
                            p
                        }
                    }
                }
            };
            let Some(sealed) = pack.get(range.start as usize..range.end as usize) else {
                return Err(RepoError::damaged(
                    handle.path(),
                    format!("pack is too short to hold tree {id}"),
                ));
            };
            return decode_blob(&self.key, sealed, id, &loc);
        }
        let sealed = self.backend.get(&handle, Some(range)).await?;
        decode_blob(&self.key, &sealed, id, &loc)
    }

    /// Reads and parses a tree.
    pub async fn load_tree(&self, index: &Index, id: &Id) -> Result<Tree> {
        let data = self.read_blob(index, BlobType::Tree, id).await?;
        Tree::from_blob(&data)
            .map_err(|e| RepoError::damaged(format!("tree {id}"), format!("invalid JSON: {e}")))
    }

    /// Lists key files.
    pub async fn keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for id in self.list_ids(FileType::Key).await? {
            let raw = self.backend.get(&Handle::new(FileType::Key, id.to_hex()), None).await?;
            let kf: KeyFile = serde_json::from_slice(&raw)
                .map_err(|e| RepoError::damaged(format!("keys/{id}"), format!("invalid JSON: {e}")))?;
            out.push(KeyInfo {
                id,
                username: kf.username,
                hostname: kf.hostname,
                created: kf.created,
                current: id == self.key_id,
            });
        }
        out.sort_by_key(|k| k.created);
        Ok(out)
    }

    /// Adds a key file for another password; returns its id.
    pub async fn add_key(&self, password: &str, kdf: KdfParams) -> Result<Id> {
        write_key_file(self.backend.as_ref(), &self.key, password, kdf).await
    }

    /// Removes a key file, recording the revocation first. Refuses to remove
    /// the key in use (which would also guard against removing the last one).
    pub async fn remove_key(&self, id: &Id) -> Result<()> {
        if *id == self.key_id {
            return Err(RepoError::damaged(
                format!("keys/{id}"),
                "is the key this command was opened with; open with another password to remove it",
            ));
        }
        let handle = Handle::new(FileType::Key, id.to_hex());
        if !self.backend.exists(&handle).await? {
            return Err(StoreError::NotFound { path: handle.path() }.into());
        }
        self.revoke_key(id).await
    }

    /// Replaces the current key with one for `new_password`: the new key is
    /// written before the old one is revoked, so a crash leaves both usable.
    pub async fn change_password(&mut self, new_password: &str, kdf: KdfParams) -> Result<Id> {
        let new_id = self.add_key(new_password, kdf).await?;
        let old = self.key_id;
        self.key_id = new_id;
        self.revoke_key(&old).await?;
        Ok(new_id)
    }

    /// Records that key file `id` is revoked (`cairn/revoked-keys/<id>`),
    /// then deletes it. The record comes first: a key gone without a record
    /// is one replication never removes from a replica, so a crash in
    /// between errs on the side of keeping the password working there.
    async fn revoke_key(&self, id: &Id) -> Result<()> {
        let (hostname, username) = host_and_user();
        let record = KeyRevocation { key: id.to_hex(), time: now(), hostname, username };
        let sealed = self.key.seal(&serde_json::to_vec(&record).expect("revocations serialise"));
        let opts = PutOptions { sha256: Some(Id::hash(&sealed).0), ..PutOptions::default() };
        self.backend
            .put(&Handle::new(FileType::KeyRevocation, id.to_hex()), Bytes::from(sealed), opts)
            .await?;
        self.backend.delete(&Handle::new(FileType::Key, id.to_hex())).await?;
        Ok(())
    }

    /// The key revocation records of this repository, by key id. A record
    /// that fails authentication, or names another key than its own name,
    /// proves nothing: it is left out with a warning.
    pub async fn key_revocations(&self) -> Result<HashMap<Id, KeyRevocation>> {
        let mut out = HashMap::new();
        for info in self.backend.list(FileType::KeyRevocation).await? {
            let Ok(id) = info.name.parse::<Id>() else { continue };
            let handle = Handle::new(FileType::KeyRevocation, info.name.clone());
            let sealed = self.backend.get(&handle, None).await?;
            let record = self
                .key
                .open(&sealed)
                .ok()
                .and_then(|plain| serde_json::from_slice::<KeyRevocation>(&plain).ok())
                .filter(|r| r.key == info.name);
            match record {
                Some(r) => {
                    out.insert(id, r);
                }
                None => {
                    tracing::warn!(record = %handle.path(), "key revocation record fails authentication; ignored")
                }
            }
        }
        Ok(out)
    }
}

/// Decrypts a key file with `password`. `Ok(None)` means wrong password.
fn open_key_file(kf: &KeyFile, password: &str) -> std::result::Result<Option<Key>, String> {
    if kf.kdf != "scrypt" {
        return Err(format!("unknown kdf {}", kf.kdf));
    }
    let salt = B64.decode(&kf.salt).map_err(|e| e.to_string())?;
    let data = B64.decode(&kf.data).map_err(|e| e.to_string())?;
    let user_key = KdfParams { n: kf.n, r: kf.r, p: kf.p }
        .derive(password.as_bytes(), &salt)
        .map_err(|e| e.to_string())?;
    let Ok(plain) = user_key.open(&data) else { return Ok(None) };
    let json: MasterKeyJson = serde_json::from_slice(&plain).map_err(|e| e.to_string())?;
    Key::from_json(&json).map(Some).ok_or_else(|| "master key has bad lengths".to_string())
}

async fn write_key_file(backend: &dyn Backend, master: &Key, password: &str, kdf: KdfParams) -> Result<Id> {
    let salt = cairn_crypto::random_salt();
    let password = password.to_string();
    let master_json = serde_json::to_vec(&master.to_json()).expect("master key serialises");
    let (salt, sealed) = tokio::task::spawn_blocking(move || {
        let user_key = kdf.derive(password.as_bytes(), &salt).expect("default kdf parameters are valid");
        let sealed = user_key.seal(&master_json);
        (salt, sealed)
    })
    .await
    .expect("key derivation panicked");
    let (hostname, username) = host_and_user();
    let kf = KeyFile {
        created: now(),
        username,
        hostname,
        kdf: "scrypt".into(),
        n: kdf.n,
        r: kdf.r,
        p: kdf.p,
        salt: B64.encode(salt),
        data: B64.encode(sealed),
    };
    let raw = serde_json::to_vec(&kf).expect("key file serialises");
    let id = Id::hash(&raw);
    let opts = PutOptions { sha256: Some(id.0), ..PutOptions::create_new() };
    backend.put(&Handle::new(FileType::Key, id.to_hex()), Bytes::from(raw), opts).await?;
    Ok(id)
}

/// Decrypts, decompresses and verifies one blob read from a pack.
pub fn decode_blob(key: &Key, sealed: &[u8], id: &Id, loc: &BlobLocation) -> Result<Vec<u8>> {
    let where_ = || format!("data/{}/{} (blob {})", &loc.pack.to_hex()[..2], loc.pack, id.short());
    let plain = key.open(sealed).map_err(|_| RepoError::damaged(where_(), "blob failed authentication"))?;
    let plain = if loc.uncompressed_length != 0 {
        thread_local! {
            // A decompression context per thread: creating one per blob shows up in profiles.
            static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                const { std::cell::RefCell::new(None) };
        }
        DECOMPRESSOR
            .with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = Some(zstd::bulk::Decompressor::new()?);
                }
                slot.as_mut().expect("just set").decompress(&plain, loc.uncompressed_length as usize)
            })
            .map_err(|e| RepoError::damaged(where_(), format!("blob does not decompress: {e}")))?
    } else {
        plain
    };
    if Id::hash(&plain) != *id {
        return Err(RepoError::damaged(where_(), "blob content does not match its SHA-256 id"));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::LocalBackend;

    const CHEAP: KdfParams = KdfParams { n: 1 << 10, r: 8, p: 1 };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn removed_keys_leave_authenticated_revocation_records() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_with(Arc::new(LocalBackend::new(dir.path())), "pw", CHEAP).await.unwrap();
        let spare = repo.add_key("spare", CHEAP).await.unwrap();
        let other = repo.add_key("other", CHEAP).await.unwrap();
        repo.remove_key(&spare).await.unwrap();
        assert!(!repo.backend().exists(&Handle::new(FileType::Key, spare.to_hex())).await.unwrap());
        let records = repo.key_revocations().await.unwrap();
        assert_eq!(records.keys().collect::<Vec<_>>(), [&spare]);
        assert_eq!(records[&spare].key, spare.to_hex());

        // A record renamed to revoke another key proves nothing, nor does garbage.
        let sealed =
            repo.backend().get(&Handle::new(FileType::KeyRevocation, spare.to_hex()), None).await.unwrap();
        let put = |name: String, data: Bytes| {
            let backend = repo.backend().clone();
            async move {
                backend
                    .put(&Handle::new(FileType::KeyRevocation, name), data, PutOptions::default())
                    .await
                    .unwrap()
            }
        };
        put(other.to_hex(), sealed).await;
        put("ab".repeat(32), Bytes::from_static(b"not sealed")).await;
        assert_eq!(repo.key_revocations().await.unwrap().keys().collect::<Vec<_>>(), [&spare]);
    }
}
