//! An incremental RDB reader: the file Redis saves and sends to replicas,
//! read once as it streams past, to count and digest what it holds and to
//! prove it whole.
//!
//! Layout (versions 1 to 12): `REDIS` and four digits of version, then
//! opcodes — auxiliary fields (`0xfa`: the server's version, the file's
//! creation time, replication ids), `0xfe` select database, `0xfb` resize
//! hints, `0xfd`/`0xfc` an expiry for the next key, `0xf8`/`0xf9` its idle
//! time or frequency, `0xf7` module data, `0xf5` a function library — and
//! keys, each a value-type byte, the key and the value
//! ([`value::value`]); `0xff` ends the file, followed (from version 5) by
//! the CRC-64 of everything before it, little-endian; zero means the
//! server was told not to compute one (`rdbchecksum no`).
//!
//! [`read_rdb`] returns per database the key count, per type counts and
//! the content digests of [`digest`]; any damage — a bad checksum, a
//! container whose lengths do not fit, the file ending early, bytes after
//! its end — is an error naming the offset. [`read_dump`] reads one
//! `DUMP` payload (a value, the RDB version, a CRC-64) through the same
//! decoder.

pub mod digest;
pub mod encodings;
pub mod input;
pub mod value;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use digest::{DbStats, KeyKind, Sum256, TypeCount, ValueDigest};
pub use input::{Input, Pieces, Received, Whole};

/// The newest RDB version this reader knows (Redis 7.4).
pub const NEWEST_VERSION: u32 = 12;

/// What is wrong with an RDB.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RdbError {
    #[error("the RDB ends early, after {offset} bytes")]
    Truncated { offset: u64 },
    #[error("the RDB is damaged at byte {offset}: {what}")]
    Corrupt { offset: u64, what: String },
    #[error("the RDB's CRC-64 is {actual:016x}, but it records {recorded:016x}: it is damaged")]
    Checksum { recorded: u64, actual: u64 },
    #[error("cannot read the RDB at byte {offset}: {what}")]
    Unsupported { offset: u64, what: String },
    #[error("{0}")]
    Source(String),
}

/// What an RDB holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdbReport {
    pub version: u32,
    /// Auxiliary fields with short printable values (`redis-ver`, `ctime`,
    /// `repl-id`, ...); scripts and binary values are left out.
    pub aux: BTreeMap<String, String>,
    /// By database number; databases without keys are absent.
    pub databases: BTreeMap<u32, DbStats>,
    /// Function libraries (Redis 7).
    pub functions: u64,
    /// Modules' auxiliary data sections.
    pub module_aux: u64,
    /// The recorded CRC-64 (checked); `None` when the server wrote none.
    pub crc64: Option<u64>,
    pub bytes: u64,
}

impl RdbReport {
    /// The Redis version that wrote the RDB.
    pub fn redis_version(&self) -> Option<&str> {
        self.aux.get("redis-ver").map(String::as_str)
    }

    /// When the RDB was made (the fork), in Unix seconds.
    pub fn ctime(&self) -> Option<i64> {
        self.aux.get("ctime").and_then(|t| t.parse().ok())
    }

    pub fn keys(&self) -> u64 {
        self.databases.values().map(|d| d.keys).sum()
    }
}

mod op {
    pub const FUNCTION2: u8 = 0xf5;
    pub const FUNCTION_PRE_GA: u8 = 0xf6;
    pub const MODULE_AUX: u8 = 0xf7;
    pub const IDLE: u8 = 0xf8;
    pub const FREQ: u8 = 0xf9;
    pub const AUX: u8 = 0xfa;
    pub const RESIZEDB: u8 = 0xfb;
    pub const EXPIRETIME_MS: u8 = 0xfc;
    pub const EXPIRETIME: u8 = 0xfd;
    pub const SELECTDB: u8 = 0xfe;
    pub const EOF: u8 = 0xff;
}

/// One key of an RDB, handed to a [`KeyVisitor`].
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub db: u32,
    pub key: Vec<u8>,
    /// Absolute expiry, Unix milliseconds.
    pub expiry_ms: Option<i64>,
    pub value: ValueDigest,
    /// The value type byte and the value's bytes as the RDB holds them,
    /// when the visitor asked for them.
    pub raw: Option<(u8, Vec<u8>)>,
    /// The RDB's version (what a `DUMP` payload of the value records).
    pub rdb_version: u32,
}

impl KeyRecord {
    /// The value as a `DUMP` payload, which `RESTORE` takes: the type byte,
    /// the value, the RDB version (two bytes, little-endian) and the
    /// CRC-64 of all of that (eight bytes, little-endian).
    pub fn dump_payload(&self) -> Option<Vec<u8>> {
        let (t, value) = self.raw.as_ref()?;
        Some(dump_payload(*t, value, self.rdb_version))
    }
}

/// A `DUMP` payload from a value type byte, the value's RDB bytes and the RDB version.
pub fn dump_payload(t: u8, value: &[u8], rdb_version: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 11);
    out.push(t);
    out.extend_from_slice(value);
    out.extend_from_slice(&(rdb_version as u16).to_le_bytes());
    let crc = crate::crc64::crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// An RDB length: 6 bits, 14 bits, 32 or 64 bits big-endian.
pub fn encode_length(out: &mut Vec<u8>, n: u64) {
    match n {
        0..0x40 => out.push(n as u8),
        0x40..0x4000 => out.extend_from_slice(&[0x40 | (n >> 8) as u8, n as u8]),
        0x4000..=0xffff_ffff => {
            out.push(0x80);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(0x81);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// Sees every key of an RDB as [`read_rdb_with`] reads it.
pub trait KeyVisitor {
    /// Whether the value of this key is wanted as it is (for [`KeyRecord::raw`]).
    fn wants_raw(&mut self, _db: u32, _key: &[u8]) -> bool {
        false
    }
    /// A key, read and decoded; an error stops the reading.
    fn key(&mut self, _record: KeyRecord) -> Result<(), RdbError> {
        Ok(())
    }
}

/// A visitor that does nothing.
pub struct NoVisitor;
impl KeyVisitor for NoVisitor {}

/// Reads a whole RDB from `pieces`, counting keys into `keys_read` as it goes.
pub fn read_rdb<P: Pieces>(pieces: P, keys_read: &AtomicU64) -> Result<RdbReport, RdbError> {
    read_rdb_with(pieces, keys_read, &mut NoVisitor)
}

/// [`read_rdb`], handing every key to `visitor` as it is read.
pub fn read_rdb_with<P: Pieces>(
    pieces: P,
    keys_read: &AtomicU64,
    visitor: &mut dyn KeyVisitor,
) -> Result<RdbReport, RdbError> {
    let mut input = Input::new(pieces);
    let magic = input.array::<9>()?;
    if &magic[..5] != b"REDIS" || !magic[5..].iter().all(u8::is_ascii_digit) {
        return Err(RdbError::Corrupt {
            offset: 0,
            what: "it does not start with REDIS and a version".into(),
        });
    }
    let version: u32 = std::str::from_utf8(&magic[5..]).expect("digits").parse().expect("digits");
    if version == 0 || version > NEWEST_VERSION {
        return Err(RdbError::Unsupported {
            offset: 5,
            what: format!(
                "RDB version {version} is newer than this cairn reads ({NEWEST_VERSION}); upgrade cairn"
            ),
        });
    }
    let mut report = RdbReport { version, ..RdbReport::default() };
    let mut db = 0u32;
    let mut expiry: Option<i64> = None;
    let mut reference_ms: Option<i64> = None;
    loop {
        let op = input.u8()?;
        match op {
            op::EOF => break,
            op::AUX => {
                let key = input.string_vec()?;
                let value = input.string_vec()?;
                let key = String::from_utf8_lossy(&key).into_owned();
                if key == "ctime" {
                    reference_ms = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|v| v.parse::<i64>().ok())
                        .map(|s| s * 1000);
                }
                if value.len() <= 256
                    && key != "lua"
                    && value.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
                {
                    report.aux.insert(key, String::from_utf8_lossy(&value).into_owned());
                }
            }
            op::SELECTDB => {
                db = u32::try_from(input.number()?)
                    .map_err(|_| input.corrupt("a database number out of range"))?;
            }
            op::RESIZEDB => {
                input.number()?;
                input.number()?;
            }
            op::EXPIRETIME_MS => expiry = Some(i64::from_le_bytes(input.array()?)),
            op::EXPIRETIME => expiry = Some(i64::from(i32::from_le_bytes(input.array()?)) * 1000),
            op::IDLE => {
                input.number()?;
            }
            op::FREQ => {
                input.u8()?;
            }
            op::MODULE_AUX => {
                input.number()?; // module id
                let when_opcode = input.number()?;
                if when_opcode != 2 {
                    return Err(input.corrupt("module data without its `when` field"));
                }
                input.number()?;
                value::module_values(&mut input, &mut digest::Canon::new())?;
                report.module_aux += 1;
            }
            op::FUNCTION2 => {
                input.string(&mut digest::Canon::new())?;
                report.functions += 1;
            }
            op::FUNCTION_PRE_GA => {
                return Err(RdbError::Unsupported {
                    offset: input.offset(),
                    what: "functions in the format of Redis 7.0 release candidates".into(),
                });
            }
            t if value::is_value_type(t) => {
                let key = input.string_vec()?;
                let raw = visitor.wants_raw(db, &key);
                if raw {
                    input.start_recording();
                }
                let v = value::value(&mut input, t)?;
                let raw = raw.then(|| (t, input.take_recording()));
                let expiry_ms = expiry.take();
                report.databases.entry(db).or_default().add(&key, &v, expiry_ms, reference_ms);
                keys_read.fetch_add(1, Ordering::Relaxed);
                visitor.key(KeyRecord { db, key, expiry_ms, value: v, raw, rdb_version: version })?;
            }
            other => return Err(input.corrupt(format!("unknown opcode {other:#04x}"))),
        }
    }
    let actual = input.checksum();
    if version >= 5 {
        let recorded = u64::from_le_bytes(input.array()?);
        if recorded != 0 && recorded != actual {
            return Err(RdbError::Checksum { recorded, actual });
        }
        report.crc64 = (recorded != 0).then_some(recorded);
    }
    report.bytes = input.offset();
    if !input.at_end()? {
        return Err(RdbError::Corrupt {
            offset: report.bytes,
            what: "bytes follow the end of the RDB".into(),
        });
    }
    Ok(report)
}

/// Reads one `DUMP` payload: a value, the RDB version (two bytes) and the
/// CRC-64 of both (eight bytes).
pub fn read_dump(payload: Bytes) -> Result<ValueDigest, RdbError> {
    if payload.len() < 11 {
        return Err(RdbError::Corrupt {
            offset: 0,
            what: format!("a DUMP payload of {} bytes", payload.len()),
        });
    }
    let body = payload.len() - 10;
    let recorded = u64::from_le_bytes(payload[payload.len() - 8..].try_into().expect("8 bytes"));
    let actual = crate::crc64::crc64(&payload[..payload.len() - 8]);
    if recorded != 0 && recorded != actual {
        return Err(RdbError::Checksum { recorded, actual });
    }
    let mut input = Input::new(Whole(Some(payload.slice(..body))));
    let t = input.u8()?;
    if !value::is_value_type(t) {
        return Err(input.corrupt(format!("unknown value type {t}")));
    }
    let v = value::value(&mut input, t)?;
    if !input.at_end()? {
        return Err(input.corrupt("bytes follow the value"));
    }
    Ok(v)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::value::types;
    use super::*;
    use crate::crc64::crc64;

    use super::value::tests::rdb_string as string;

    /// A small RDB: aux fields, two databases, an expired key, a key with a
    /// TTL, a function, and the checksum.
    pub(crate) fn sample_rdb() -> Vec<u8> {
        let mut r = b"REDIS0010".to_vec();
        for (k, v) in [("redis-ver", "7.0.15"), ("ctime", "1700000000")] {
            r.push(op::AUX);
            r.extend(string(k.as_bytes()));
            r.extend(string(v.as_bytes()));
        }
        r.push(op::AUX);
        r.extend(string(b"redis-bits"));
        r.extend([0xc0, 64]);
        r.push(op::FUNCTION2);
        r.extend(string(b"#!lua name=lib\nredis.register_function('f', function() return 1 end)"));
        r.extend([op::SELECTDB, 0, op::RESIZEDB, 3, 1]);
        r.push(types::STRING);
        r.extend(string(b"plain"));
        r.extend(string(b"value"));
        r.push(op::EXPIRETIME_MS);
        r.extend(1_700_000_000_000i64.to_le_bytes());
        r.push(types::STRING);
        r.extend(string(b"expired"));
        r.extend(string(b"x"));
        r.push(op::EXPIRETIME_MS);
        r.extend(1_800_000_000_000i64.to_le_bytes());
        r.extend([op::IDLE, 5]);
        r.push(types::STRING);
        r.extend(string(b"ttl"));
        r.extend([0xc0, 7]);
        r.extend([op::SELECTDB, 3]);
        r.push(types::SET);
        r.extend(string(b"members"));
        r.push(2);
        r.extend(string(b"m1"));
        r.extend(string(b"m2"));
        r.push(op::EOF);
        let crc = crc64(&r);
        r.extend(crc.to_le_bytes());
        r
    }

    fn read(data: &[u8]) -> Result<RdbReport, RdbError> {
        read_rdb(Whole(Some(Bytes::copy_from_slice(data))), &AtomicU64::new(0))
    }

    #[test]
    fn a_small_rdb_is_counted_per_database_and_type() {
        let rdb = sample_rdb();
        let report = read(&rdb).unwrap();
        assert_eq!(report.version, 10);
        assert_eq!(report.redis_version(), Some("7.0.15"));
        assert_eq!(report.aux.get("redis-bits").map(String::as_str), Some("64"));
        assert_eq!(report.ctime(), Some(1_700_000_000));
        assert_eq!(report.functions, 1);
        assert_eq!(report.bytes, rdb.len() as u64);
        assert_eq!(report.crc64, Some(crc64(&rdb[..rdb.len() - 8])));
        let db0 = &report.databases[&0];
        assert_eq!((db0.keys, db0.volatile, db0.expired), (2, 1, 1));
        assert_eq!(db0.types[&KeyKind::String].keys, 2);
        assert_eq!(db0.first_expiry_ms, Some(1_800_000_000_000));
        assert_eq!(report.databases[&3].types[&KeyKind::Set].keys, 1);
        assert_eq!(report.keys(), 3);
    }

    #[test]
    fn damage_truncation_and_trailing_bytes_are_refused() {
        let rdb = sample_rdb();
        // Every truncation point fails, none panics.
        for cut in 0..rdb.len() {
            assert!(read(&rdb[..cut]).is_err(), "cut at {cut} was accepted");
        }
        assert!(matches!(read(&rdb[..rdb.len() - 3]), Err(RdbError::Truncated { .. })));
        // A flipped byte in a value: the checksum catches what parses.
        let at = rdb.windows(5).position(|w| w == b"value").unwrap();
        let mut flipped = rdb.clone();
        flipped[at] ^= 0x20;
        assert!(matches!(read(&flipped), Err(RdbError::Checksum { .. })));
        // Every single flipped byte is refused.
        for i in 0..rdb.len() {
            let mut d = rdb.clone();
            d[i] ^= 0x01;
            assert!(read(&d).is_err(), "a flipped bit at {i} was accepted");
        }
        let mut longer = rdb.clone();
        longer.push(0);
        assert!(matches!(read(&longer), Err(RdbError::Corrupt { .. })));
        // A zero checksum means the server computed none.
        let mut unchecked = rdb[..rdb.len() - 8].to_vec();
        unchecked.extend([0; 8]);
        assert_eq!(read(&unchecked).unwrap().crc64, None);
    }

    #[test]
    fn values_cut_from_an_rdb_make_dump_payloads_that_decode_alike() {
        struct Collect(Vec<KeyRecord>);
        impl KeyVisitor for Collect {
            fn wants_raw(&mut self, _db: u32, key: &[u8]) -> bool {
                key != b"plain"
            }
            fn key(&mut self, record: KeyRecord) -> Result<(), RdbError> {
                self.0.push(record);
                Ok(())
            }
        }
        let rdb = sample_rdb();
        let mut seen = Collect(Vec::new());
        let report =
            read_rdb_with(Whole(Some(Bytes::from(rdb.clone()))), &AtomicU64::new(0), &mut seen).unwrap();
        assert_eq!(report, read(&rdb).unwrap(), "a visitor changes nothing of the report");
        let keys: Vec<(&[u8], u32, Option<i64>)> =
            seen.0.iter().map(|r| (r.key.as_slice(), r.db, r.expiry_ms)).collect();
        assert_eq!(
            keys,
            [
                (&b"plain"[..], 0, None),
                (b"expired", 0, Some(1_700_000_000_000)),
                (b"ttl", 0, Some(1_800_000_000_000)),
                (b"members", 3, None)
            ]
        );
        assert!(seen.0[0].raw.is_none() && seen.0[0].dump_payload().is_none());
        // The integer-encoded string's bytes are kept as they are, not decoded.
        assert_eq!(seen.0[2].raw, Some((types::STRING, vec![0xc0, 7])));
        for r in &seen.0[1..] {
            let payload = r.dump_payload().unwrap();
            assert_eq!(u16::from_le_bytes([payload[payload.len() - 10], payload[payload.len() - 9]]), 10);
            assert_eq!(read_dump(Bytes::from(payload)).unwrap(), r.value, "{:?}", r.key);
        }
    }

    #[test]
    fn lengths_encode_as_the_reader_reads_them() {
        for n in [0u64, 63, 64, 16383, 16384, 0xffff_ffff, 1 << 32] {
            let mut out = Vec::new();
            encode_length(&mut out, n);
            let mut input = Input::new(Whole(Some(Bytes::from(out))));
            assert_eq!(input.number().unwrap(), n);
            assert!(input.at_end().unwrap());
        }
    }

    #[test]
    fn dump_payloads_decode_like_rdb_values() {
        let mut payload = vec![types::STRING];
        payload.extend(string(b"value"));
        payload.extend(10u16.to_le_bytes());
        let crc = crc64(&payload);
        payload.extend(crc.to_le_bytes());
        let v = read_dump(Bytes::from(payload.clone())).unwrap();
        let mut input = Input::new(Whole(Some(Bytes::from(string(b"value")))));
        assert_eq!(v, value::value(&mut input, types::STRING).unwrap());
        let mut bad = payload.clone();
        bad[3] ^= 1;
        assert!(matches!(read_dump(Bytes::from(bad)), Err(RdbError::Checksum { .. })));
    }
}
