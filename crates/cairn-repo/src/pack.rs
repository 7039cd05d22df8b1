//! Pack files: many encrypted blobs followed by an encrypted header.
//!
//! ```text
//! EncryptedBlob1 || ... || EncryptedBlobN || EncryptedHeader || u32le(len(EncryptedHeader))
//! header entry (uncompressed): type(0|1) || u32le(encrypted length) || id(32)
//! header entry (compressed):   type(2|3) || u32le(encrypted length) || u32le(plaintext length) || id(32)
//! ```
//!
//! A [`PackBuilder`] hashes bytes as it appends them, so finishing a pack does
//! not re-read it to compute the pack id (the SHA-256 of the whole file).

use cairn_crypto::{Key, OVERHEAD};
use sha2::{Digest, Sha256};

use crate::format::BlobType;
use crate::id::Id;

const ENTRY_PLAIN: usize = 1 + 4 + 32;
const ENTRY_COMPRESSED: usize = 1 + 4 + 4 + 32;

/// Where one blob sits inside a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedBlob {
    pub id: Id,
    pub kind: BlobType,
    pub offset: u32,
    /// Encrypted length in the pack.
    pub length: u32,
    /// Plaintext length when the blob is compressed, 0 otherwise.
    pub uncompressed_length: u32,
}

/// Accumulates blobs for one pack.
///
/// The pack starts at a 4 KiB-aligned address inside the buffer, so the
/// local backend can write it with `O_DIRECT`, skipping the page-cache copy
/// that otherwise costs as much CPU as hashing it.
pub struct PackBuilder {
    buf: Vec<u8>,
    /// Where the pack starts in `buf` (alignment padding before it).
    base: usize,
    hasher: Sha256,
    blobs: Vec<PackedBlob>,
}

/// A complete pack, ready to upload.
pub struct FinishedPack {
    pub id: Id,
    /// The pack file's bytes.
    pub bytes: bytes::Bytes,
    pub blobs: Vec<PackedBlob>,
}

/// Alignment the pack bytes start at (the common O_DIRECT requirement).
pub const PACK_ALIGN: usize = 4096;

impl PackBuilder {
    pub fn new(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + PACK_ALIGN);
        let base = (PACK_ALIGN - buf.as_ptr() as usize % PACK_ALIGN) % PACK_ALIGN;
        buf.resize(base, 0);
        PackBuilder { buf, base, hasher: Sha256::new(), blobs: Vec::new() }
    }

    /// Bytes written so far (blobs only).
    pub fn len(&self) -> usize {
        self.buf.len() - self.base
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Encrypts and appends a blob. `stored` is what gets encrypted: either
    /// the plaintext itself, or its zstd compression when `uncompressed_len`
    /// is `Some(plaintext length)`.
    pub fn add(&mut self, key: &Key, id: Id, kind: BlobType, stored: &[u8], uncompressed_len: Option<u32>) {
        let at = self.buf.len();
        key.seal_into(stored, &mut self.buf);
        self.hasher.update(&self.buf[at..]);
        self.blobs.push(PackedBlob {
            id,
            kind,
            offset: (at - self.base) as u32,
            length: (self.buf.len() - at) as u32,
            uncompressed_length: uncompressed_len.unwrap_or(0),
        });
    }

    /// Appends a blob that is already encrypted (copied from another pack by
    /// prune): blobs are sealed independently of their pack, so the bytes
    /// move as they are.
    pub fn add_sealed(&mut self, id: Id, kind: BlobType, sealed: &[u8], uncompressed_length: u32) {
        let at = self.buf.len();
        self.buf.extend_from_slice(sealed);
        self.hasher.update(sealed);
        self.blobs.push(PackedBlob {
            id,
            kind,
            offset: (at - self.base) as u32,
            length: sealed.len() as u32,
            uncompressed_length,
        });
    }

    /// Appends another builder's blobs. Blobs are encrypted independently,
    /// so moving them only shifts their offsets.
    pub fn absorb(&mut self, other: PackBuilder) {
        let shift = self.len() as u32;
        let theirs = &other.buf[other.base..];
        self.hasher.update(theirs);
        self.buf.extend_from_slice(theirs);
        self.blobs.extend(other.blobs.into_iter().map(|b| PackedBlob { offset: b.offset + shift, ..b }));
    }

    /// Appends the encrypted header and its length, and names the pack.
    pub fn finish(mut self, key: &Key) -> FinishedPack {
        let header = encode_header(&self.blobs);
        let start = self.buf.len();
        key.seal_into(&header, &mut self.buf);
        let header_len = (self.buf.len() - start) as u32;
        self.buf.extend_from_slice(&header_len.to_le_bytes());
        self.hasher.update(&self.buf[start..]);
        let id = Id(self.hasher.finalize().into());
        let base = self.base;
        FinishedPack { id, bytes: bytes::Bytes::from(self.buf).slice(base..), blobs: self.blobs }
    }
}

fn encode_header(blobs: &[PackedBlob]) -> Vec<u8> {
    let mut header = Vec::with_capacity(blobs.len() * ENTRY_COMPRESSED);
    for b in blobs {
        let compressed = b.uncompressed_length != 0;
        let type_byte = match (b.kind, compressed) {
            (BlobType::Data, false) => 0u8,
            (BlobType::Tree, false) => 1,
            (BlobType::Data, true) => 2,
            (BlobType::Tree, true) => 3,
        };
        header.push(type_byte);
        header.extend_from_slice(&b.length.to_le_bytes());
        if compressed {
            header.extend_from_slice(&b.uncompressed_length.to_le_bytes());
        }
        header.extend_from_slice(&b.id.0);
    }
    header
}

/// The size a pack holding exactly `blobs` must have; `check` compares it
/// with the stored size to find truncated or padded packs.
pub fn expected_pack_size<'a>(blobs: impl IntoIterator<Item = (u32, bool)> + 'a) -> u64 {
    let mut size = OVERHEAD as u64 + 4;
    for (length, compressed) in blobs {
        size += length as u64 + if compressed { ENTRY_COMPRESSED } else { ENTRY_PLAIN } as u64;
    }
    size
}

/// Why a pack header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PackHeaderError {
    #[error("pack is too short ({0} bytes)")]
    TooShort(u64),
    #[error("header length {0} does not fit the pack")]
    BadLength(u32),
    #[error("header failed authentication")]
    Authentication,
    #[error("header entry has unknown type {0}")]
    BadType(u8),
    #[error("header is truncated")]
    Truncated,
    #[error("blob offsets run past the header")]
    Overlap,
}

/// The header length stored in a pack's last four bytes.
pub fn header_length_from_trailer(trailer: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*trailer)
}

/// Decrypts and parses a pack header (`sealed` = the encrypted header bytes).
/// Offsets are computed from the entry lengths, as restic does.
pub fn parse_header(
    key: &Key,
    sealed: &[u8],
    header_offset: u64,
) -> Result<Vec<PackedBlob>, PackHeaderError> {
    let header = key.open(sealed).map_err(|_| PackHeaderError::Authentication)?;
    let mut blobs = Vec::new();
    let mut pos = 0usize;
    let mut offset = 0u64;
    while pos < header.len() {
        let t = header[pos];
        let (kind, compressed) = match t {
            0 => (BlobType::Data, false),
            1 => (BlobType::Tree, false),
            2 => (BlobType::Data, true),
            3 => (BlobType::Tree, true),
            other => return Err(PackHeaderError::BadType(other)),
        };
        let need = if compressed { ENTRY_COMPRESSED } else { ENTRY_PLAIN };
        if pos + need > header.len() {
            return Err(PackHeaderError::Truncated);
        }
        let length = u32::from_le_bytes(header[pos + 1..pos + 5].try_into().expect("4 bytes"));
        let (uncompressed_length, id_at) = if compressed {
            (u32::from_le_bytes(header[pos + 5..pos + 9].try_into().expect("4 bytes")), pos + 9)
        } else {
            (0, pos + 5)
        };
        let id = Id(header[id_at..id_at + 32].try_into().expect("32 bytes"));
        blobs.push(PackedBlob { id, kind, offset: offset as u32, length, uncompressed_length });
        offset += length as u64;
        pos += need;
    }
    if offset > header_offset {
        return Err(PackHeaderError::Overlap);
    }
    Ok(blobs)
}

/// Reads the header of a complete pack held in memory.
pub fn parse_pack(key: &Key, pack: &[u8]) -> Result<Vec<PackedBlob>, PackHeaderError> {
    let size = pack.len() as u64;
    if size < 4 + OVERHEAD as u64 {
        return Err(PackHeaderError::TooShort(size));
    }
    let header_len = header_length_from_trailer(pack[pack.len() - 4..].try_into().expect("4 bytes"));
    if header_len as u64 + 4 > size || (header_len as usize) < OVERHEAD {
        return Err(PackHeaderError::BadLength(header_len));
    }
    let start = pack.len() - 4 - header_len as usize;
    parse_header(key, &pack[start..pack.len() - 4], start as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_then_parse_pack() {
        let key = Key::random();
        let mut pb = PackBuilder::new(1024);
        assert_eq!(pb.len(), 0);
        let a = b"hello world".to_vec();
        let b = zstd::bulk::compress(&[7u8; 4000], 3).unwrap();
        pb.add(&key, Id::hash(&a), BlobType::Data, &a, None);
        pb.add(&key, Id::hash(&[7u8; 4000]), BlobType::Data, &b, Some(4000));
        let pack = pb.finish(&key);
        assert_eq!(pack.bytes.as_ptr() as usize % PACK_ALIGN, 0, "pack bytes start aligned");
        assert_eq!(pack.id, Id::hash(&pack.bytes));
        let parsed = parse_pack(&key, &pack.bytes).unwrap();
        assert_eq!(parsed, pack.blobs);
        assert_eq!(
            expected_pack_size(parsed.iter().map(|b| (b.length, b.uncompressed_length != 0))),
            pack.bytes.len() as u64
        );
        let blob = &parsed[1];
        let sealed = &pack.bytes[blob.offset as usize..(blob.offset + blob.length) as usize];
        let plain = zstd::bulk::decompress(&key.open(sealed).unwrap(), 4000).unwrap();
        assert_eq!(plain, vec![7u8; 4000]);
    }

    #[test]
    fn absorbed_packs_parse_as_one() {
        let key = Key::random();
        let mut a = PackBuilder::new(0);
        a.add(&key, Id::hash(b"one"), BlobType::Data, b"one", None);
        let mut b = PackBuilder::new(0);
        b.add(&key, Id::hash(b"two"), BlobType::Data, b"two", None);
        a.absorb(b);
        let pack = a.finish(&key);
        assert_eq!(pack.id, Id::hash(&pack.bytes));
        let parsed = parse_pack(&key, &pack.bytes).unwrap();
        assert_eq!(parsed.len(), 2);
        let second = &parsed[1];
        let sealed = &pack.bytes[second.offset as usize..(second.offset + second.length) as usize];
        assert_eq!(key.open(sealed).unwrap(), b"two");
    }

    #[test]
    fn damaged_header_is_detected() {
        let key = Key::random();
        let mut pb = PackBuilder::new(64);
        pb.add(&key, Id::hash(b"x"), BlobType::Tree, b"x", None);
        let mut bytes = pb.finish(&key).bytes.to_vec();
        let n = bytes.len();
        bytes[n - 10] ^= 1;
        assert!(matches!(parse_pack(&key, &bytes), Err(PackHeaderError::Authentication)));
    }
}
