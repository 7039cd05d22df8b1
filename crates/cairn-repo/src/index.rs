//! The in-memory index: for every blob, which pack holds it and where.
//!
//! Built from all `index/` files at open time. restic allows index files to
//! overlap (the same pack listed twice); the first location seen wins, which
//! is harmless because a blob's bytes are the same wherever it is stored.

use std::collections::HashMap;

use crate::format::{BlobType, IndexBlob, IndexFile, IndexPack};
use crate::id::Id;
use crate::pack::PackedBlob;

/// Where to find one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: Id,
    pub offset: u32,
    pub length: u32,
    /// 0 when the blob is stored uncompressed.
    pub uncompressed_length: u32,
}

impl BlobLocation {
    /// Size of the blob's plaintext.
    pub fn plaintext_len(&self) -> u32 {
        if self.uncompressed_length != 0 {
            self.uncompressed_length
        } else {
            self.length - cairn_crypto::OVERHEAD as u32
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    pack: u32,
    offset: u32,
    length: u32,
    uncompressed_length: u32,
}

/// All known blobs.
#[derive(Debug, Default)]
pub struct Index {
    packs: Vec<Id>,
    pack_numbers: HashMap<Id, u32>,
    blobs: HashMap<(Id, BlobType), Entry>,
    /// Index files this was built from.
    pub files: Vec<Id>,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    fn pack_number(&mut self, pack: Id) -> u32 {
        if let Some(n) = self.pack_numbers.get(&pack) {
            return *n;
        }
        let n = self.packs.len() as u32;
        self.packs.push(pack);
        self.pack_numbers.insert(pack, n);
        n
    }

    /// Adds every blob of one pack.
    pub fn add_pack(&mut self, pack: Id, blobs: &[PackedBlob]) {
        let n = self.pack_number(pack);
        for b in blobs {
            self.blobs.entry((b.id, b.kind)).or_insert(Entry {
                pack: n,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            });
        }
    }

    /// Adds the contents of one index file.
    pub fn add_file(&mut self, file_id: Id, file: &IndexFile) {
        for p in &file.packs {
            let blobs: Vec<PackedBlob> = p
                .blobs
                .iter()
                .map(|b| PackedBlob {
                    id: b.id,
                    kind: b.kind,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                })
                .collect();
            self.add_pack(p.id, &blobs);
        }
        self.files.push(file_id);
    }

    pub fn get(&self, id: &Id, kind: BlobType) -> Option<BlobLocation> {
        self.blobs.get(&(*id, kind)).map(|e| BlobLocation {
            pack: self.packs[e.pack as usize],
            offset: e.offset,
            length: e.length,
            uncompressed_length: e.uncompressed_length,
        })
    }

    pub fn contains(&self, id: &Id, kind: BlobType) -> bool {
        self.blobs.contains_key(&(*id, kind))
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    pub fn has_pack(&self, pack: &Id) -> bool {
        self.pack_numbers.contains_key(pack)
    }

    pub fn packs(&self) -> &[Id] {
        &self.packs
    }

    /// Every blob and where it is, in no particular order (stats): a view,
    /// not a copy, of what may be millions of entries.
    pub fn iter(&self) -> impl Iterator<Item = (Id, BlobType, BlobLocation)> + '_ {
        self.blobs.iter().map(|(&(id, kind), e)| {
            (
                id,
                kind,
                BlobLocation {
                    pack: self.packs[e.pack as usize],
                    offset: e.offset,
                    length: e.length,
                    uncompressed_length: e.uncompressed_length,
                },
            )
        })
    }
}

/// Collects newly written packs into an index file.
#[derive(Debug, Default)]
pub struct IndexBuilder {
    packs: Vec<IndexPack>,
}

impl IndexBuilder {
    pub fn add_pack(&mut self, pack: Id, blobs: &[PackedBlob]) {
        self.packs.push(IndexPack {
            id: pack,
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

    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }

    /// Takes the collected packs out as an index file, leaving the builder empty.
    pub fn take(&mut self) -> IndexFile {
        IndexFile { supersedes: Vec::new(), packs: std::mem::take(&mut self.packs) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_overlap() {
        let pack_a = Id::hash(b"a");
        let pack_b = Id::hash(b"b");
        let blob = PackedBlob {
            id: Id::hash(b"blob"),
            kind: BlobType::Data,
            offset: 10,
            length: 100,
            uncompressed_length: 0,
        };
        let mut idx = Index::new();
        idx.add_pack(pack_a, &[blob]);
        idx.add_pack(pack_b, &[PackedBlob { offset: 0, ..blob }]);
        let loc = idx.get(&blob.id, BlobType::Data).unwrap();
        assert_eq!(loc.pack, pack_a);
        assert_eq!(loc.plaintext_len(), 100 - 32);
        assert!(!idx.contains(&blob.id, BlobType::Tree));
        assert_eq!(idx.packs().len(), 2);
        let mut b = IndexBuilder::default();
        b.add_pack(pack_a, &[blob]);
        let file = b.take();
        assert!(b.is_empty());
        let mut idx2 = Index::new();
        idx2.add_file(Id::hash(b"f"), &file);
        assert_eq!(idx2.get(&blob.id, BlobType::Data), Some(loc));
        assert_eq!(idx.iter().collect::<Vec<_>>(), vec![(blob.id, BlobType::Data, loc)]);
    }
}
