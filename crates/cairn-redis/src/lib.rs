//! Redis for cairn: backups of a server's RDB, pulled over the replication
//! protocol as a replica would get it and streamed into the repository
//! without touching local disk; restores into a data directory for a new
//! instance; comparison of a live server with a snapshot.
//!
//! * [`sync`]: the replication handshake (`REPLCONF`, `PSYNC`) and the RDB
//!   transfer, on a client of the wire protocol of its own ([`resp`]).
//! * [`rdb`]: an incremental RDB reader that checks the CRC-64 and decodes
//!   every value as the RDB streams past, counting keys per database and
//!   type and digesting their content independently of encoding and order.
//! * [`backup`]: the two joined — the RDB goes to the snapshot and to the
//!   reader at once; a truncated or damaged RDB writes no snapshot.
//! * [`logical`]: the keys `SCAN` finds, read with `DUMP`, written as an
//!   RDB of their own (`--logical`), which then goes the same way.
//! * [`restore`], [`server`]: `dump.rdb` laid down from verified blobs and
//!   read back as it is written, then optionally a `redis-server` on it.
//! * [`restore_live`]: keys `RESTORE`d into a running server from the
//!   RDB's own value bytes, chosen by pattern ([`pattern`]) and database.
//! * [`live`]: a live key space, digested the same way (`DUMP`), against a
//!   snapshot's manifest.
//! * [`scratch`]: throwaway servers for drills.
//! * [`source`]: all of it on the adapter contract.
//!
//! `docs/DESIGN.md` section 14 describes the design and its reasons.

pub mod backup;
pub mod crc64;
mod error;
pub mod live;
pub mod logical;
pub mod manifest;
pub mod pattern;
pub mod rdb;
pub mod resp;
pub mod restore;
pub mod restore_live;
pub mod scratch;
pub mod server;
pub mod source;
pub mod sync;
mod target;

pub use error::RedisError;
pub use source::{RedisRestoreSettings, RedisSettings, RedisSource};
pub use target::{DEFAULT_PORT, RedisTarget, is_redis_url};
