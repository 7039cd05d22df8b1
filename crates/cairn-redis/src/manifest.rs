//! What a Redis snapshot holds besides the RDB: `redis.json`, written by
//! the backup from what the RDB reader found, read by restores (to check
//! the RDB they lay down reads back exactly so) and by `verify --against`.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use cairn_repo::reader::SnapshotReader;

use crate::RedisError;
use crate::rdb::{DbStats, RdbReport};

/// The RDB's path in the snapshot: `restic restore` lays down a file a
/// Redis server loads as it is.
pub const RDB_FILE: &str = "dump.rdb";
/// The manifest's path in the snapshot.
pub const MANIFEST_FILE: &str = "redis.json";

/// How the RDB was obtained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    /// The primary's replication id and offset the RDB is as of.
    pub id: Option<String>,
    pub offset: Option<u64>,
    /// Streamed from the server's fork (`repl-diskless-sync yes`) rather
    /// than saved to its disk first.
    pub diskless: bool,
    /// The server knew `REPLCONF rdb-only` (Redis 7).
    pub rdb_only: bool,
}

/// `redis.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisManifest {
    pub version: u32,
    /// `host:port` backed up.
    pub server: String,
    pub redis_version: Option<String>,
    pub rdb_version: u32,
    pub rdb_bytes: u64,
    /// The CRC-64 the RDB records (checked), hex; `None` if the server wrote none.
    pub crc64: Option<String>,
    /// When the server made the RDB (its fork), Unix seconds.
    pub ctime: Option<i64>,
    pub replication: Replication,
    pub functions: u64,
    pub module_aux: u64,
    /// By database number.
    pub databases: BTreeMap<u32, DbStats>,
    pub started: DateTime<FixedOffset>,
    pub finished: DateTime<FixedOffset>,
    /// A logical backup's selection (`--logical`); `None` for the server's own RDB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical: Option<LogicalScope>,
}

/// What a logical backup read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalScope {
    /// The `SCAN MATCH` pattern; `None`: every key.
    pub pattern: Option<String>,
    /// The one database read; `None`: every database holding keys.
    pub db: Option<u32>,
}

impl RedisManifest {
    pub const VERSION: u32 = 1;

    /// The manifest of a snapshot; one this cairn is too old for is refused.
    pub async fn read(reader: &SnapshotReader<'_>) -> Result<RedisManifest, RedisError> {
        let bytes = reader.read(MANIFEST_FILE).await?;
        let manifest: RedisManifest = serde_json::from_slice(&bytes).map_err(|e| {
            RedisError::DamagedSnapshot { path: MANIFEST_FILE.into(), message: e.to_string() }
        })?;
        if manifest.version > Self::VERSION {
            return Err(RedisError::Usage(format!(
                "the snapshot's {MANIFEST_FILE} has version {}, newer than this cairn reads; upgrade cairn",
                manifest.version
            )));
        }
        Ok(manifest)
    }

    pub fn new(
        server: String,
        report: &RdbReport,
        replication: Replication,
        started: DateTime<FixedOffset>,
    ) -> RedisManifest {
        RedisManifest {
            version: Self::VERSION,
            server,
            redis_version: report.redis_version().map(str::to_string),
            rdb_version: report.version,
            rdb_bytes: report.bytes,
            crc64: report.crc64.map(|c| format!("{c:016x}")),
            ctime: report.ctime(),
            replication,
            functions: report.functions,
            module_aux: report.module_aux,
            databases: report.databases.clone(),
            started,
            finished: chrono::Local::now().fixed_offset(),
            logical: None,
        }
    }

    pub fn keys(&self) -> u64 {
        self.databases.values().map(|d| d.keys).sum()
    }

    /// What differs between this manifest and an RDB read back, if anything.
    pub fn differences(&self, report: &RdbReport) -> Vec<String> {
        let mut out = Vec::new();
        if report.bytes != self.rdb_bytes {
            out.push(format!("{} bytes, the manifest records {}", report.bytes, self.rdb_bytes));
        }
        let crc = report.crc64.map(|c| format!("{c:016x}"));
        if crc != self.crc64 {
            out.push(format!("CRC-64 {crc:?}, the manifest records {:?}", self.crc64));
        }
        for db in self.databases.keys().chain(report.databases.keys()) {
            match (self.databases.get(db), report.databases.get(db)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b)) => out.push(format!(
                    "database {db}: {} keys (digest {}), the manifest records {} (digest {})",
                    b.keys,
                    b.digest.to_hex(),
                    a.keys,
                    a.digest.to_hex()
                )),
                (Some(a), None) => out.push(format!("database {db} is missing ({} keys recorded)", a.keys)),
                (None, Some(b)) => {
                    out.push(format!("database {db} ({} keys) is not in the manifest", b.keys))
                }
                (None, None) => {}
            }
        }
        out.dedup();
        out
    }
}
