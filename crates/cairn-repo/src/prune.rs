//! Prune: delete the data no snapshot references, and repack packs that
//! are only partly used.
//!
//! The caller holds the **exclusive** repository lock for the whole run
//! (restic's choice): no backup can add a snapshot that counts on a blob
//! while prune decides it is unused, so no grace period is needed, and
//! restic's own prune and backups exclude it in the same way.
//!
//! The run goes plan → repack → index → delete superseded indexes → delete
//! packs, each step complete and durable before the next, so that a
//! process killed at any point leaves a repository every checker accepts,
//! and running prune again finishes the job:
//!
//! 1. **Plan** ([`plan`]): every index file is read one at a time into a
//!    compact, sorted table (per blob its id, pack number, length, type
//!    and a used bit: 40 bytes), every snapshot's trees are walked to mark
//!    the blobs they need, and each pack is classified: fully used (kept),
//!    unused (deleted), partly used (repacked, most wasteful first, while
//!    the unused space left exceeds `--max-unused`), or in no index at all
//!    (left by a killed run; deleted).
//! 2. **Repack**: the used blobs of each repacked pack are read, verified
//!    (authenticated, decompressed, hashed) and copied, still sealed, into
//!    new packs. Killed here: the new packs are in no index (the next
//!    prune deletes them, the next backup may adopt them).
//! 3. **Index**: the kept packs' entries and the new packs are written as
//!    new index files. Killed here: old and new index files overlap, which
//!    restic and cairn accept (a blob may be listed twice).
//! 4. **Delete index files** that existed when the plan was made. Killed
//!    here: every pack still stored is listed by the new index or by an old
//!    one that remains; repacked and unused packs become unindexed.
//! 5. **Delete packs**: unused, repacked and unindexed ones. A pack that
//!    cannot be deleted now (a failed request, S3 Object Lock retention)
//!    is reported as deferred: it is in no index, so the next prune finds
//!    it again.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use cairn_store::{FileType, Handle, PutOptions};
use futures::StreamExt;

use crate::error::{RepoError, Result};
use crate::format::{BlobType, IndexBlob, IndexFile, IndexPack};
use crate::id::Id;
use crate::index::{BlobLocation, Index};
use crate::pack::{PackBuilder, PackedBlob};
use crate::repository::{Repository, decode_blob};

/// How much unused space partly used packs may keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxUnused {
    /// A share of the used data, as restic computes it: `p / (100 - p) * used`.
    Percent(f64),
    Bytes(u64),
    /// Repack nothing; only wholly unused packs are deleted.
    Unlimited,
}

impl MaxUnused {
    fn limit(&self, used: u64) -> u64 {
        match *self {
            MaxUnused::Percent(p) if p >= 100.0 => u64::MAX,
            MaxUnused::Percent(p) => (p / (100.0 - p) * used as f64) as u64,
            MaxUnused::Bytes(b) => b,
            MaxUnused::Unlimited => u64::MAX,
        }
    }
}

/// What [`plan`] is told.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub max_unused: MaxUnused,
    /// Pack bytes to repack at most (None: no limit).
    pub max_repack_bytes: Option<u64>,
    /// Size new packs close at.
    pub pack_size: usize,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { max_unused: MaxUnused::Percent(5.0), max_repack_bytes: None, pack_size: 16 << 20 }
    }
}

/// The steps of [`execute`], named for progress and the test hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Repack,
    Index,
    DeleteIndex,
    DeletePacks,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Repack => "repack",
            Step::Index => "index",
            Step::DeleteIndex => "delete-index",
            Step::DeletePacks => "delete-packs",
        }
    }
}

/// One blob in the plan's table: 40 bytes, so 10 million blobs take 381 MiB.
#[derive(Debug, Clone, Copy)]
struct BlobEntry {
    id: Id,
    /// Pack number; bit 31: tree blob, bit 30: used.
    pack: u32,
    length: u32,
}

const TREE_BIT: u32 = 1 << 31;
const USED_BIT: u32 = 1 << 30;
const PACK_MASK: u32 = USED_BIT - 1;

impl BlobEntry {
    fn key(&self) -> (Id, bool) {
        (self.id, self.pack & TREE_BIT != 0)
    }
    fn pack(&self) -> usize {
        (self.pack & PACK_MASK) as usize
    }
    fn used(&self) -> bool {
        self.pack & USED_BIT != 0
    }
}

/// What happens to one pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackFate {
    Keep,
    Repack,
    Delete,
}

/// One indexed pack in the plan.
#[derive(Debug, Clone)]
pub struct PackPlan {
    pub id: Id,
    /// Stored size (from the listing).
    pub size: u64,
    pub used_blobs: u32,
    pub unused_blobs: u32,
    /// Encrypted bytes of used and unused blobs.
    pub used_bytes: u64,
    pub unused_bytes: u64,
    pub tree: bool,
    pub fate: PackFate,
}

/// What a prune would do.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub snapshots: usize,
    pub packs: Vec<PackPlan>,
    /// Stored packs no index lists (a killed run's), with their sizes.
    pub unindexed: Vec<(Id, u64)>,
    /// Index files read (all are superseded by the run).
    pub index_files: Vec<Id>,
    pub blobs: u64,
    pub used_blobs: u64,
    /// Blobs stored more than once (all copies but one count as unused).
    pub duplicate_blobs: u64,
    pub used_bytes: u64,
    pub unused_bytes: u64,
    /// Unused bytes that stay, in kept packs.
    pub unused_after: u64,
    /// Bytes the plan's tables took (blob table, packs, tree index).
    pub memory_bytes: u64,
    table: Vec<BlobEntry>,
    trees: Arc<Index>,
}

impl Plan {
    pub fn count(&self, fate: PackFate) -> usize {
        self.packs.iter().filter(|p| p.fate == fate).count()
    }
    pub fn bytes(&self, fate: PackFate) -> u64 {
        self.packs.iter().filter(|p| p.fate == fate).map(|p| p.size).sum()
    }
    /// Used bytes that repacking rewrites.
    pub fn repack_used_bytes(&self) -> u64 {
        self.packs.iter().filter(|p| p.fate == PackFate::Repack).map(|p| p.used_bytes).sum()
    }
    /// Bytes the run frees (repacked packs less what their used blobs take again).
    pub fn bytes_freed(&self) -> u64 {
        self.bytes(PackFate::Delete)
            + self.unindexed.iter().map(|u| u.1).sum::<u64>()
            + self.bytes(PackFate::Repack).saturating_sub(self.repack_used_bytes())
    }
    /// Nothing to delete or rewrite, and no index to merge.
    pub fn is_noop(&self) -> bool {
        self.packs.iter().all(|p| p.fate == PackFate::Keep) && self.unindexed.is_empty()
    }
}

/// Builds the plan. `stop` is asked between steps of the tree walk.
pub async fn plan(
    repo: &Repository,
    options: &PruneOptions,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Plan> {
    // Snapshots before indexes (section 4): every listed snapshot's index is there.
    let (snapshots, damaged) = repo.snapshots().await?;
    if let Some(e) = damaged.into_iter().next() {
        return Err(e);
    }
    let index_ids = repo.list_ids(FileType::Index).await?;
    let stored: HashMap<Id, u64> = repo
        .backend()
        .list(FileType::Pack)
        .await?
        .into_iter()
        .filter_map(|o| Some((o.name.parse::<Id>().ok()?, o.size)))
        .collect();

    let mut pack_ids: Vec<Id> = Vec::new();
    let mut pack_numbers: HashMap<Id, u32> = HashMap::new();
    let mut table: Vec<BlobEntry> = Vec::new();
    let mut trees = Index::new();
    let mut files = futures::stream::iter(index_ids.clone())
        .map(|id| async move { repo.load_json::<IndexFile>(FileType::Index, &id).await })
        .buffer_unordered(4);
    while let Some(file) = files.next().await {
        for p in file?.packs {
            let n = *pack_numbers.entry(p.id).or_insert_with(|| {
                pack_ids.push(p.id);
                (pack_ids.len() - 1) as u32
            });
            let tree_blobs: Vec<PackedBlob> = p
                .blobs
                .iter()
                .filter(|b| b.kind == BlobType::Tree)
                .map(|b| PackedBlob {
                    id: b.id,
                    kind: b.kind,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                })
                .collect();
            if !tree_blobs.is_empty() {
                trees.add_pack(p.id, &tree_blobs);
            }
            table.extend(p.blobs.iter().map(|b| BlobEntry {
                id: b.id,
                pack: n | if b.kind == BlobType::Tree { TREE_BIT } else { 0 },
                length: b.length,
            }));
        }
    }
    if pack_ids.len() as u32 > PACK_MASK {
        return Err(RepoError::Pipeline("too many packs for one prune".into()));
    }
    // One entry per (blob, pack): a pack listed by two index files counts once.
    table.sort_unstable_by(|a, b| a.key().cmp(&b.key()).then(a.pack().cmp(&b.pack())));
    table.dedup_by(|a, b| a.key() == b.key() && a.pack() == b.pack());
    table.shrink_to_fit();

    for id in &pack_ids {
        if !stored.contains_key(id) {
            return Err(RepoError::damaged(
                format!("data/{}/{id}", &id.to_hex()[..2]),
                "the index lists this pack but it is not stored; run `cairn check` before pruning",
            ));
        }
    }

    // Mark what the snapshots use: the first copy of each blob.
    let trees = Arc::new(trees);
    let find =
        |table: &[BlobEntry], id: &Id, tree: bool| table.binary_search_by(|e| e.key().cmp(&(*id, tree))).ok();
    let first = |table: &[BlobEntry], mut at: usize| {
        while at > 0 && table[at - 1].key() == table[at].key() {
            at -= 1;
        }
        at
    };
    let mut stack: Vec<(Id, Id)> = snapshots.iter().map(|(sid, s)| (s.tree, *sid)).collect();
    while let Some((tree, snapshot)) = stack.pop() {
        if stop() {
            return Err(RepoError::Interrupted);
        }
        let Some(at) = find(&table, &tree, true) else {
            return Err(missing("tree", &tree, &snapshot));
        };
        let at = first(&table, at);
        if table[at].used() {
            continue;
        }
        table[at].pack |= USED_BIT;
        for node in repo.load_tree(&trees, &tree).await?.nodes {
            for blob in node.content.iter().flatten() {
                let Some(at) = find(&table, blob, false) else {
                    return Err(missing("data", blob, &snapshot));
                };
                let at = first(&table, at);
                table[at].pack |= USED_BIT;
            }
            if let Some(sub) = node.subtree {
                stack.push((sub, snapshot));
            }
        }
    }

    let mut packs: Vec<PackPlan> = pack_ids
        .iter()
        .map(|id| PackPlan {
            id: *id,
            size: stored[id],
            used_blobs: 0,
            unused_blobs: 0,
            used_bytes: 0,
            unused_bytes: 0,
            tree: false,
            fate: PackFate::Keep,
        })
        .collect();
    let mut plan = Plan { snapshots: snapshots.len(), index_files: index_ids, ..Plan::default() };
    let mut previous: Option<(Id, bool)> = None;
    for e in &table {
        let p = &mut packs[e.pack()];
        p.tree |= e.pack & TREE_BIT != 0;
        if e.used() {
            p.used_blobs += 1;
            p.used_bytes += e.length as u64;
            plan.used_blobs += 1;
        } else {
            p.unused_blobs += 1;
            p.unused_bytes += e.length as u64;
            if previous == Some(e.key()) {
                plan.duplicate_blobs += 1;
            }
        }
        previous = Some(e.key());
    }
    plan.blobs = table.len() as u64;

    // Decide: unused packs go, partly used ones are repacked (tree packs
    // and the most wasteful first) while too much unused space would stay.
    let mut candidates = Vec::new();
    for (i, p) in packs.iter_mut().enumerate() {
        if p.used_blobs == 0 {
            p.fate = PackFate::Delete;
        } else if p.unused_blobs > 0 {
            candidates.push(i);
        }
    }
    plan.used_bytes = packs.iter().map(|p| p.used_bytes).sum();
    plan.unused_bytes = packs.iter().map(|p| p.unused_bytes).sum();
    let limit = options.max_unused.limit(plan.used_bytes);
    let mut unused_left: u64 = candidates.iter().map(|&i| packs[i].unused_bytes).sum();
    candidates.sort_by(|&a, &b| {
        let (a, b) = (&packs[a], &packs[b]);
        b.tree.cmp(&a.tree).then_with(|| {
            // unused/used, highest first, without floating point.
            (b.unused_bytes as u128 * a.used_bytes as u128)
                .cmp(&(a.unused_bytes as u128 * b.used_bytes as u128))
        })
    });
    let mut repack_bytes = 0u64;
    for i in candidates {
        let p = &mut packs[i];
        if options.max_repack_bytes.is_some_and(|max| repack_bytes + p.size > max) {
            continue;
        }
        if unused_left > limit || (p.tree && options.max_unused != MaxUnused::Unlimited) {
            p.fate = PackFate::Repack;
            unused_left -= p.unused_bytes;
            repack_bytes += p.size;
        }
    }
    plan.unused_after = unused_left;
    plan.unindexed =
        stored.iter().filter(|(id, _)| !pack_numbers.contains_key(id)).map(|(i, s)| (*i, *s)).collect();
    plan.unindexed.sort();
    plan.memory_bytes = (table.capacity() * std::mem::size_of::<BlobEntry>()
        + packs.capacity() * std::mem::size_of::<PackPlan>()
        + pack_numbers.capacity() * (std::mem::size_of::<Id>() + 4)
        + trees.blob_count() * 64) as u64;
    plan.packs = packs;
    plan.table = table;
    plan.trees = trees;
    Ok(plan)
}

fn missing(kind: &'static str, blob: &Id, snapshot: &Id) -> RepoError {
    RepoError::damaged(
        format!("snapshots/{snapshot}"),
        format!("it needs {kind} blob {blob}, which no index lists; run `cairn check`; nothing was pruned"),
    )
}

/// What [`execute`] did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub packs_written: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub index_files_written: usize,
    pub index_files_deleted: usize,
    pub packs_deleted: usize,
    pub bytes_deleted: u64,
    /// Objects that could not be deleted now, with why; a later prune retries.
    pub deferred: Vec<String>,
}

/// Hooks into a running prune: `stop` is asked between objects (a signal
/// or a lost lock); `step` is called as each step starts.
pub struct Hooks<'a> {
    pub stop: &'a (dyn Fn() -> bool + Sync),
    pub step: &'a (dyn Fn(Step) + Sync),
}

/// Carries the plan out (the caller holds the exclusive lock).
pub async fn execute(
    repo: &Repository,
    plan: &Plan,
    options: &PruneOptions,
    hooks: &Hooks<'_>,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    if plan.is_noop() && plan.index_files.len() <= 1 {
        return Ok(out);
    }
    let check = || if (hooks.stop)() { Err(RepoError::Interrupted) } else { Ok(()) };

    (hooks.step)(Step::Repack);
    let mut new_packs: Vec<(Id, Vec<PackedBlob>)> = Vec::new();
    let mut builders: [Option<PackBuilder>; 2] = [None, None];
    // The used blobs of each repacked pack, from one pass over the table.
    let mut wanted: HashMap<usize, Vec<(Id, bool)>> = HashMap::new();
    for e in plan.table.iter().filter(|e| e.used() && plan.packs[e.pack()].fate == PackFate::Repack) {
        wanted.entry(e.pack()).or_default().push(e.key());
    }
    for (n, p) in plan.packs.iter().enumerate().filter(|(_, p)| p.fate == PackFate::Repack) {
        check()?;
        let handle = Handle::new(FileType::Pack, p.id.to_hex());
        let bytes = repo.backend().get(&handle, None).await?;
        out.bytes_read += bytes.len() as u64;
        if Id::hash(&bytes) != p.id {
            return Err(RepoError::damaged(
                handle.path(),
                "content does not match its SHA-256 name; nothing was pruned",
            ));
        }
        let key = repo.key().clone();
        let used: std::collections::HashSet<(Id, bool)> =
            wanted.remove(&n).unwrap_or_default().into_iter().collect();
        let bytes_for_check = bytes.clone();
        let blobs = tokio::task::spawn_blocking(move || -> Result<Vec<PackedBlob>> {
            let header = crate::pack::parse_pack(&key, &bytes_for_check)
                .map_err(|e| RepoError::damaged(handle.path(), e))?;
            let mut keep = Vec::new();
            let mut used = used;
            for b in header {
                // Each used blob once, even if the pack holds it twice.
                if !used.remove(&(b.id, b.kind == BlobType::Tree)) {
                    continue;
                }
                let sealed = bytes_for_check
                    .get(b.offset as usize..(b.offset + b.length) as usize)
                    .ok_or_else(|| RepoError::damaged(handle.path(), "blob runs past the pack"))?;
                let loc = BlobLocation {
                    pack: Id::default(),
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                };
                decode_blob(&key, sealed, &b.id, &loc)?;
                keep.push(b);
            }
            if let Some((id, _)) = used.into_iter().next() {
                return Err(RepoError::damaged(
                    handle.path(),
                    format!(
                        "the index lists blob {id} in this pack but its header does not; nothing was pruned"
                    ),
                ));
            }
            Ok(keep)
        })
        .await
        .map_err(|e| RepoError::Pipeline(format!("repack panicked: {e}")))??;
        for b in blobs {
            let slot = &mut builders[(b.kind == BlobType::Tree) as usize];
            let builder = slot.get_or_insert_with(|| PackBuilder::new(options.pack_size + (1 << 20)));
            builder.add_sealed(
                b.id,
                b.kind,
                &bytes[b.offset as usize..(b.offset + b.length) as usize],
                b.uncompressed_length,
            );
            if builder.len() >= options.pack_size {
                let full = slot.take().expect("just filled");
                new_packs.push(upload(repo, full, &mut out).await?);
            }
        }
    }
    for slot in &mut builders {
        if let Some(b) = slot.take().filter(|b| !b.is_empty()) {
            check()?;
            new_packs.push(upload(repo, b, &mut out).await?);
        }
    }

    check()?;
    (hooks.step)(Step::Index);
    let keep: HashMap<Id, ()> =
        plan.packs.iter().filter(|p| p.fate == PackFate::Keep).map(|p| (p.id, ())).collect();
    let mut written: HashMap<Id, ()> = HashMap::new();
    let mut pending = IndexFile::default();
    let mut pending_blobs = 0usize;
    let mut new_index_files = Vec::new();
    for id in &plan.index_files {
        check()?;
        let file: IndexFile = repo.load_json(FileType::Index, id).await?;
        for p in file.packs {
            if keep.contains_key(&p.id) && written.insert(p.id, ()).is_none() {
                pending_blobs += p.blobs.len();
                pending.packs.push(p);
            }
        }
        if pending_blobs >= INDEX_FILE_BLOBS {
            new_index_files.push(repo.save_json(FileType::Index, &std::mem::take(&mut pending)).await?);
            pending_blobs = 0;
        }
    }
    for (id, blobs) in &new_packs {
        pending.packs.push(IndexPack {
            id: *id,
            blobs: blobs
                .iter()
                .map(|b| IndexBlob {
                    id: b.id,
                    kind: b.kind,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                })
                .collect(),
        });
    }
    if !pending.packs.is_empty() {
        new_index_files.push(repo.save_json(FileType::Index, &pending).await?);
    }
    out.index_files_written = new_index_files.len();

    check()?;
    (hooks.step)(Step::DeleteIndex);
    for id in plan.index_files.iter().filter(|id| !new_index_files.contains(id)) {
        check()?;
        match repo.backend().delete(&Handle::new(FileType::Index, id.to_hex())).await {
            Ok(()) => out.index_files_deleted += 1,
            Err(cairn_store::StoreError::NotFound { .. }) => {}
            Err(e) => out.deferred.push(format!("index/{id}: {e}")),
        }
    }
    if !out.deferred.is_empty() {
        // Packs an undeleted index still lists must stay.
        return Ok(out);
    }

    check()?;
    (hooks.step)(Step::DeletePacks);
    let doomed: Vec<(Id, u64)> = plan
        .packs
        .iter()
        .filter(|p| p.fate != PackFate::Keep)
        .map(|p| (p.id, p.size))
        .chain(plan.unindexed.iter().copied())
        .collect();
    let mut deletes = futures::stream::iter(doomed)
        .map(|(id, size)| async move {
            let r = repo.backend().delete(&Handle::new(FileType::Pack, id.to_hex())).await;
            (id, size, r)
        })
        .buffer_unordered(8);
    while let Some((id, size, r)) = deletes.next().await {
        match r {
            Ok(()) | Err(cairn_store::StoreError::NotFound { .. }) => {
                out.packs_deleted += 1;
                out.bytes_deleted += size;
            }
            Err(e) => out.deferred.push(format!("data/{}/{id}: {e}", &id.to_hex()[..2])),
        }
        if (hooks.stop)() {
            break;
        }
    }
    Ok(out)
}

/// Blobs per new index file (restic's files hold about as many).
const INDEX_FILE_BLOBS: usize = 50_000;

async fn upload(repo: &Repository, builder: PackBuilder, out: &mut Outcome) -> Result<(Id, Vec<PackedBlob>)> {
    let pack = builder.finish(repo.key());
    let opts = PutOptions { sha256: Some(pack.id.0), ..PutOptions::default() };
    out.bytes_written += pack.bytes.len() as u64;
    repo.backend()
        .put(&Handle::new(FileType::Pack, pack.id.to_hex()), Bytes::clone(&pack.bytes), opts)
        .await?;
    out.packs_written += 1;
    Ok((pack.id, pack.blobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_entries_stay_compact() {
        assert_eq!(std::mem::size_of::<BlobEntry>(), 40);
    }

    /// How the plan's memory scales: `CAIRN_PLAN_BLOBS=1000000 cargo test
    /// -p cairn-repo --lib plan_memory -- --ignored --nocapture` writes that
    /// many index entries (1000 per pack, packs stored empty), plans, and
    /// prints the plan's own count and the process's peak RSS.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check"]
    async fn plan_memory() {
        let blobs: usize =
            std::env::var("CAIRN_PLAN_BLOBS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(cairn_store::LocalBackend::new(dir.path()));
        let cheap = cairn_crypto::KdfParams { n: 1 << 10, r: 8, p: 1 };
        let repo = Repository::init_with(backend, "pw", cheap).await.unwrap();
        let mut n = 0u64;
        let mut file = IndexFile::default();
        while (n as usize) < blobs {
            let pack = Id::hash(&n.to_le_bytes());
            let entries = (0..1000)
                .map(|i| IndexBlob {
                    id: Id::hash(&(n + i).to_be_bytes()),
                    kind: BlobType::Data,
                    offset: i as u32 * 1000,
                    length: 1000,
                    uncompressed_length: 0,
                })
                .collect();
            n += 1000;
            file.packs.push(IndexPack { id: pack, blobs: entries });
            repo.backend()
                .put(&Handle::new(FileType::Pack, pack.to_hex()), Bytes::new(), PutOptions::default())
                .await
                .unwrap();
            if file.packs.len() == 50 {
                repo.save_json(FileType::Index, &std::mem::take(&mut file)).await.unwrap();
            }
        }
        if !file.packs.is_empty() {
            repo.save_json(FileType::Index, &file).await.unwrap();
        }
        let before = peak_rss_kib();
        let plan = plan(&repo, &PruneOptions::default(), &|| false).await.unwrap();
        assert_eq!(plan.blobs, n);
        println!(
            "blobs {n}: plan tables {} MiB ({} B/blob); peak RSS {} MiB before planning, {} MiB after",
            plan.memory_bytes >> 20,
            plan.memory_bytes / n,
            before >> 10,
            peak_rss_kib() >> 10
        );
    }

    fn peak_rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn max_unused_is_a_share_of_the_used_data() {
        assert_eq!(MaxUnused::Percent(5.0).limit(95_000), 5_000);
        assert_eq!(MaxUnused::Percent(0.0).limit(1000), 0);
        assert_eq!(MaxUnused::Bytes(7).limit(1000), 7);
        assert_eq!(MaxUnused::Unlimited.limit(1), u64::MAX);
        assert_eq!(MaxUnused::Percent(100.0).limit(1), u64::MAX);
    }
}
