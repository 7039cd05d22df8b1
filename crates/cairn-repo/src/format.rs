//! The JSON documents of the restic v2 format, and the "unpacked" encoding
//! that wraps them on storage.
//!
//! Field names, order and omission rules follow restic's Go structs, so a
//! document cairn writes decodes in restic unchanged, and restic's documents
//! (including fields cairn does not know) decode here. cairn's own snapshot
//! metadata sits in the `cairn` field, which restic ignores.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::id::Id;

/// The decrypted `config` object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RepoConfig {
    pub version: u32,
    pub id: String,
    /// restic's Rabin polynomial, hex. cairn's chunker is FastCDC, keyed by
    /// a seed derived from this value, so every repository cuts differently.
    pub chunker_polynomial: String,
}

impl RepoConfig {
    /// A fresh version-2 config with a random id and polynomial.
    pub fn new_v2() -> Self {
        // restic validates the polynomial only when its own chunker uses it;
        // an irreducible degree-53 polynomial keeps restic's backups working.
        RepoConfig {
            version: 2,
            id: Id::random().to_hex(),
            chunker_polynomial: random_irreducible_polynomial(),
        }
    }

    /// Seed for the keyed FastCDC gear table.
    pub fn chunker_seed(&self) -> u64 {
        let digest = Id::hash(format!("cairn-fastcdc:{}", self.chunker_polynomial).as_bytes());
        u64::from_le_bytes(digest.0[..8].try_into().expect("8 bytes"))
    }
}

/// Picks a random irreducible polynomial of degree 53 over GF(2), which is
/// what restic's Rabin chunker requires of `chunker_polynomial`.
fn random_irreducible_polynomial() -> String {
    loop {
        let candidate: u64 = (rand::random::<u64>() & ((1u64 << 53) - 1)) | (1u64 << 53) | 1;
        if is_irreducible(candidate) {
            return format!("{candidate:x}");
        }
    }
}

/// Ben-Or's test: p of degree d is irreducible iff gcd(p, x^(2^i) - x) = 1 for i in 1..=d/2.
fn is_irreducible(p: u64) -> bool {
    let degree = 63 - p.leading_zeros();
    let mut x_pow = 2u64; // x
    for _ in 0..degree / 2 {
        x_pow = gf2_mulmod(x_pow, x_pow, p);
        if gf2_gcd(p, x_pow ^ 2) != 1 {
            return false;
        }
    }
    true
}

fn gf2_deg(a: u64) -> i32 {
    63 - a.leading_zeros() as i32
}

fn gf2_mod(mut a: u128, p: u64) -> u64 {
    let dp = gf2_deg(p);
    while a != 0 && (127 - a.leading_zeros() as i32) >= dp {
        let shift = (127 - a.leading_zeros() as i32) - dp;
        a ^= (p as u128) << shift;
    }
    a as u64
}

fn gf2_mulmod(a: u64, b: u64, p: u64) -> u64 {
    let mut r: u128 = 0;
    for i in 0..64 {
        if (b >> i) & 1 == 1 {
            r ^= (a as u128) << i;
        }
    }
    gf2_mod(r, p)
}

fn gf2_gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let r = gf2_mod(a as u128, b);
        a = b;
        b = r;
    }
    a
}

/// A key file (`keys/<id>`), stored as plain JSON. Its `Debug` output
/// leaves out the sealed master key (with the salt and parameters, it is
/// what a password guesser works on).
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyFile {
    pub created: DateTime<FixedOffset>,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub hostname: String,
    pub kdf: String,
    #[serde(rename = "N")]
    pub n: u64,
    pub r: u32,
    pub p: u32,
    /// base64
    pub salt: String,
    /// base64 of the sealed master key JSON
    pub data: String,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile")
            .field("created", &self.created)
            .field("username", &self.username)
            .field("hostname", &self.hostname)
            .field("kdf", &self.kdf)
            .field("n", &self.n)
            .field("r", &self.r)
            .field("p", &self.p)
            .field("salt", &self.salt)
            .field("data", &format_args!("<{} bytes, redacted>", self.data.len()))
            .finish()
    }
}

/// `snapshots/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub time: DateTime<FixedOffset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    pub tree: Id,
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub uid: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub program_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SnapshotSummary>,
    /// cairn's metadata about the source; restic ignores unknown fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cairn: Option<CairnSnapshotMeta>,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// restic 0.17's snapshot summary (older restic ignores it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotSummary {
    pub backup_start: DateTime<FixedOffset>,
    pub backup_end: DateTime<FixedOffset>,
    #[serde(default)]
    pub files_new: u64,
    #[serde(default)]
    pub files_changed: u64,
    #[serde(default)]
    pub files_unmodified: u64,
    #[serde(default)]
    pub dirs_new: u64,
    #[serde(default)]
    pub dirs_changed: u64,
    #[serde(default)]
    pub dirs_unmodified: u64,
    #[serde(default)]
    pub data_blobs: u64,
    #[serde(default)]
    pub tree_blobs: u64,
    #[serde(default)]
    pub data_added: u64,
    #[serde(default)]
    pub data_added_packed: u64,
    #[serde(default)]
    pub total_files_processed: u64,
    #[serde(default)]
    pub total_bytes_processed: u64,
}

/// What cairn records about where a snapshot came from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CairnSnapshotMeta {
    /// Source kind: `volume`, `postgres`, ...
    pub source_kind: String,
    /// How the source was taken (`files`, `logical`, `physical`, ...); empty
    /// in snapshots written before modes were recorded (see
    /// [`crate::select::kind_and_mode`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
    /// The source's name in `cairn.yaml`, if it came from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    /// Files that could not be read, or changed while being read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Source-specific facts (row counts, versions, ...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
}

/// `cairn/revoked-keys/<key id>` (cairn only): who removed which key file,
/// and when. Sealed under the master key as plain JSON, so only holders of
/// the repository's key can write one that authenticates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRevocation {
    /// The removed key file's id (also the record's name).
    pub key: String,
    pub time: DateTime<FixedOffset>,
    pub hostname: String,
    pub username: String,
}

/// `locks/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockFile {
    pub time: DateTime<FixedOffset>,
    pub exclusive: bool,
    pub hostname: String,
    pub username: String,
    pub pid: i64,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

/// `index/<id>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<Id>,
    pub packs: Vec<IndexPack>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexPack {
    pub id: Id,
    pub blobs: Vec<IndexBlob>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexBlob {
    pub id: Id,
    #[serde(rename = "type")]
    pub kind: BlobType,
    pub offset: u32,
    pub length: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub uncompressed_length: u32,
}

/// Data blobs hold file contents; tree blobs hold directory listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    Data,
    Tree,
}

impl BlobType {
    pub fn as_str(self) -> &'static str {
        match self {
            BlobType::Data => "data",
            BlobType::Tree => "tree",
        }
    }
}

/// Encodes a document in the v2 unpacked form: `0x02 || zstd(json)`.
pub fn encode_unpacked(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() / 2 + 16);
    out.push(2u8);
    out.extend_from_slice(&zstd::bulk::compress(json, 3).expect("zstd compression of memory cannot fail"));
    out
}

/// Decodes an unpacked plaintext: bare JSON (v1, or v2 without compression)
/// or `0x02 || zstd(json)`.
pub fn decode_unpacked(plain: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    match plain.first() {
        Some(b'{') | Some(b'[') => Ok(std::borrow::Cow::Borrowed(plain)),
        Some(2) => zstd::stream::decode_all(&plain[1..])
            .map(std::borrow::Cow::Owned)
            .map_err(|e| format!("zstd: {e}")),
        Some(v) => Err(format!("unknown encoding version {v}")),
        None => Err("empty document".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_debug_leaves_out_the_sealed_key() {
        let kf = KeyFile {
            created: chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").unwrap(),
            username: "u".into(),
            hostname: "h".into(),
            kdf: "scrypt".into(),
            n: 32768,
            r: 8,
            p: 1,
            salt: "c2FsdA==".into(),
            data: "c2VhbGVkLW1hc3Rlci1rZXk=".into(),
        };
        let shown = format!("{kf:?}");
        assert!(!shown.contains("c2VhbGVkLW1hc3Rlci1rZXk="), "{shown}");
        assert!(shown.contains("redacted") && shown.contains("scrypt"), "{shown}");
    }

    #[test]
    fn generated_polynomials_are_irreducible_degree_53() {
        // x^2+x+1 is irreducible, x^2+1 = (x+1)^2 is not.
        assert!(is_irreducible(0b111));
        assert!(!is_irreducible(0b101));
        let p = u64::from_str_radix(&random_irreducible_polynomial(), 16).unwrap();
        assert_eq!(63 - p.leading_zeros(), 53);
        assert!(is_irreducible(p));
    }

    #[test]
    fn unpacked_round_trip_and_plain_json() {
        let json = br#"{"a":1}"#;
        assert_eq!(&*decode_unpacked(&encode_unpacked(json)).unwrap(), json);
        assert_eq!(&*decode_unpacked(json).unwrap(), json);
        assert!(decode_unpacked(&[7, 1, 2]).is_err());
    }

    #[test]
    fn snapshot_json_matches_restic_shape() {
        let text = r#"{"time":"2015-01-02T18:10:50.895208559+01:00","tree":"2da81727b6585232894cfbb8f8bdab8d1eccd3d8f7c92bc934d62e62e618ffdf","paths":["/tmp/testdata"],"hostname":"kasimir","username":"fd0","uid":1000,"gid":100,"tags":["NL"],"future_field":{"x":1}}"#;
        let sn: Snapshot = serde_json::from_str(text).unwrap();
        assert_eq!(sn.hostname, "kasimir");
        assert_eq!(sn.tags, vec!["NL"]);
        let back = serde_json::to_string(&sn).unwrap();
        assert!(back.starts_with(r#"{"time":"2015-01-02T18:10:50.895208559+01:00","tree":"2da8"#), "{back}");
        assert!(!back.contains("parent"));
    }

    #[test]
    fn index_blob_omits_uncompressed_length_when_zero() {
        let b = IndexBlob {
            id: Id::hash(b"x"),
            kind: BlobType::Data,
            offset: 0,
            length: 38,
            uncompressed_length: 0,
        };
        let s = serde_json::to_string(&b).unwrap();
        assert!(!s.contains("uncompressed_length"));
        assert!(s.contains(r#""type":"data""#));
    }
}
