//! Content digests of a key space that do not depend on how Redis happened
//! to store it.
//!
//! The same data can be serialised in many ways: a hash as a listpack or as
//! a hash table (whose order depends on the process's random hash seed), an
//! integer as text or as an integer encoding, a string LZF-compressed or
//! not, a set as an intset or a table. Comparing an RDB with a live server
//! (or a restored one) byte for byte would therefore fail for data that is
//! the same. Instead every value is decoded and hashed in a canonical form:
//!
//! * an element is its bytes (integers as their decimal text), prefixed with
//!   its length;
//! * ordered values (strings, lists, streams, module values) hash their
//!   elements in order;
//! * unordered ones (sets, hashes, sorted sets) hash each member (with its
//!   value or score) alone and add the hashes up modulo 2^256, so any order
//!   gives the same sum;
//! * a key's hash covers its name, type, value and absolute expiry time;
//!   a database's digest is the sum of its keys' hashes, again independent
//!   of order.
//!
//! The backup computes this from the RDB stream, `verify --against` from
//! `DUMP` payloads of the live server, through the same decoder.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::input::ByteSink;

/// The types of Redis values, as `TYPE` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    String,
    List,
    Set,
    Zset,
    Hash,
    Stream,
    Module,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::String => "string",
            KeyKind::List => "list",
            KeyKind::Set => "set",
            KeyKind::Zset => "zset",
            KeyKind::Hash => "hash",
            KeyKind::Stream => "stream",
            KeyKind::Module => "module",
        }
    }
}

/// A 256-bit sum of hashes (little-endian limbs), so that adding the same
/// set of hashes in any order gives the same value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum256([u64; 4]);

impl Sum256 {
    pub fn add(&mut self, hash: &[u8; 32]) {
        let mut carry = false;
        for (i, limb) in self.0.iter_mut().enumerate() {
            let v = u64::from_le_bytes(hash[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            let (s1, c1) = limb.overflowing_add(v);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *limb = s2;
            carry = c1 || c2;
        }
    }

    pub fn bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, limb) in self.0.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes())
    }

    pub fn from_hex(text: &str) -> Option<Sum256> {
        let bytes: [u8; 32] = hex::decode(text).ok()?.try_into().ok()?;
        let mut s = Sum256::default();
        s.add(&bytes);
        Some(s)
    }
}

impl Serialize for Sum256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sum256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sum256, D::Error> {
        let text = String::deserialize(d)?;
        Sum256::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not a 256-bit hex digest: {text:?}")))
    }
}

/// A canonical hash of a sequence of elements (each length-prefixed) and
/// numbers; also a [`ByteSink`], so strings stream into it.
#[derive(Clone, Default)]
pub struct Canon {
    hash: Sha256,
    /// Elements fed (strings and numbers).
    pub count: u64,
}

impl Canon {
    pub fn new() -> Canon {
        Canon::default()
    }

    /// One element whole.
    pub fn elem(&mut self, bytes: &[u8]) {
        self.begin(bytes.len() as u64);
        self.bytes(bytes);
    }

    /// A number (a count, an id, a time), as its eight little-endian bytes.
    pub fn num(&mut self, v: u64) {
        self.elem(&v.to_le_bytes());
    }

    pub fn finish(self) -> [u8; 32] {
        self.hash.finalize().into()
    }
}

impl ByteSink for Canon {
    fn begin(&mut self, len: u64) {
        self.count += 1;
        self.hash.update(len.to_le_bytes());
    }

    fn bytes(&mut self, data: &[u8]) {
        self.hash.update(data);
    }
}

/// The order-independent hash of a collection: the sum of its members' hashes.
#[derive(Debug, Clone, Default)]
pub struct Unordered {
    sum: Sum256,
    pub count: u64,
}

impl Unordered {
    pub fn add(&mut self, member: Canon) {
        self.sum.add(&member.finish());
        self.count += 1;
    }

    pub fn bytes(&self) -> [u8; 32] {
        self.sum.bytes()
    }
}

/// What a value decodes to: its type and canonical hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueDigest {
    pub kind: KeyKind,
    /// Elements (list items, set members, hash fields, stream entries; 1 for a string).
    pub count: u64,
    pub hash: [u8; 32],
}

impl ValueDigest {
    pub fn new(kind: KeyKind, count: u64, inner: &[u8; 32]) -> ValueDigest {
        let mut h = Sha256::new();
        h.update(kind.name().as_bytes());
        h.update(count.to_le_bytes());
        h.update(inner);
        ValueDigest { kind, count, hash: h.finalize().into() }
    }
}

/// One key's hash: its name, value and expiry (absolute, in milliseconds).
/// The database is not part of it, so a database can be compared where it
/// was moved.
pub fn key_hash(key: &[u8], value: &ValueDigest, expiry_ms: Option<i64>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cairn redis key v1");
    h.update((key.len() as u64).to_le_bytes());
    h.update(key);
    match expiry_ms {
        Some(t) => {
            h.update([1]);
            h.update(t.to_le_bytes());
        }
        None => h.update([0]),
    }
    h.update(value.hash);
    h.finalize().into()
}

/// Keys of one type in one database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCount {
    pub keys: u64,
    /// Of those, the keys with a time to live.
    pub volatile: u64,
}

/// What one database holds, counted and digested.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbStats {
    /// Keys not yet expired at the reference time (the RDB's creation).
    pub keys: u64,
    /// Of those, the keys with a time to live.
    pub volatile: u64,
    /// Keys past their expiry at the reference time: a server loading the
    /// RDB drops them, so they are neither counted nor digested.
    #[serde(default)]
    pub expired: u64,
    pub types: BTreeMap<KeyKind, TypeCount>,
    /// Sum of the hashes of every counted key.
    pub digest: Sum256,
    /// Sum of the hashes of the keys without a time to live (a comparison
    /// made after some keys may have expired can still check these).
    pub persistent_digest: Sum256,
    /// The earliest expiry (Unix milliseconds) among the counted keys:
    /// until then, nothing can have expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_expiry_ms: Option<i64>,
}

impl DbStats {
    /// Counts one key. `reference_ms` is the time the data is as of (keys
    /// that expired before it are dropped by a server loading the RDB).
    pub fn add(
        &mut self,
        key: &[u8],
        value: &ValueDigest,
        expiry_ms: Option<i64>,
        reference_ms: Option<i64>,
    ) {
        if let (Some(e), Some(r)) = (expiry_ms, reference_ms)
            && e <= r
        {
            self.expired += 1;
            return;
        }
        let hash = key_hash(key, value, expiry_ms);
        self.keys += 1;
        self.digest.add(&hash);
        let t = self.types.entry(value.kind).or_default();
        t.keys += 1;
        match expiry_ms {
            Some(e) => {
                self.volatile += 1;
                t.volatile += 1;
                self.first_expiry_ms = Some(self.first_expiry_ms.map_or(e, |f| f.min(e)));
            }
            None => self.persistent_digest.add(&hash),
        }
    }

    pub fn persistent(&self) -> u64 {
        self.keys - self.volatile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_do_not_depend_on_order_and_carry_across_limbs() {
        let a = [0xffu8; 32];
        let mut b = [0u8; 32];
        b[0] = 1;
        let c: [u8; 32] = Sha256::digest(b"c").into();
        let mut x = Sum256::default();
        for h in [&a, &b, &c] {
            x.add(h);
        }
        let mut y = Sum256::default();
        for h in [&c, &a, &b] {
            y.add(h);
        }
        assert_eq!(x, y);
        // 0xff..ff + 1 wraps to 0, so the sum is c.
        assert_eq!(x.bytes(), c);
        assert_eq!(Sum256::from_hex(&x.to_hex()), Some(x));
    }

    #[test]
    fn database_stats_split_expired_volatile_and_persistent_keys() {
        let v = ValueDigest::new(KeyKind::String, 1, &[7; 32]);
        let mut db = DbStats::default();
        db.add(b"gone", &v, Some(1_000), Some(2_000));
        db.add(b"ttl", &v, Some(9_000), Some(2_000));
        db.add(b"ttl2", &v, Some(5_000), Some(2_000));
        db.add(b"kept", &v, None, Some(2_000));
        assert_eq!((db.keys, db.volatile, db.expired, db.persistent()), (3, 2, 1, 1));
        assert_eq!(db.first_expiry_ms, Some(5_000));
        assert_eq!(db.types[&KeyKind::String], TypeCount { keys: 3, volatile: 2 });
        let mut only = Sum256::default();
        only.add(&key_hash(b"kept", &v, None));
        assert_eq!(db.persistent_digest, only);
        let json = serde_json::to_string(&db).unwrap();
        assert_eq!(serde_json::from_str::<DbStats>(&json).unwrap(), db);
    }
}
