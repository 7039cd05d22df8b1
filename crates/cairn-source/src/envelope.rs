//! The manifest envelope: what a source snapshot holds, in a form anyone can
//! check without knowing the adapter.
//!
//! Stream-shaped snapshots (database dumps, base backups) carry it as the
//! file [`ENVELOPE_PATH`] of their tree, written last by
//! [`crate::SnapshotWriter`]: kind and mode, the source's name and version,
//! every listed stream with its size and chunk digest, and per object (a
//! table, a collection, a key space) its counts. A volume snapshot's tree is
//! the user's file system, so it stays untouched (`restic restore` must lay
//! down exactly the files that were backed up): its envelope is derived
//! from the snapshot's own summary, as is that of a snapshot restic wrote.
//! Adapters whose older snapshots predate the envelope derive one from
//! their own manifest ([`crate::Source::legacy_envelope`]).
//!
//! A stream's digest is its chunk digest (`cairn_repo::archive::ChunkDigest`):
//! SHA-256 over the ids of its chunks in order. The file node of the stream
//! lists exactly those ids, so [`check_envelope`] proves a snapshot complete
//! and as dumped by reading only trees; reading the blobs too proves every
//! byte.

use std::collections::BTreeMap;

use cairn_repo::reader::SnapshotReader;
use cairn_repo::{RepoError, Snapshot};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where stream-shaped snapshots keep their envelope.
pub const ENVELOPE_PATH: &str = ".cairn/manifest.json";
/// The envelope format this cairn writes; it reads this and older.
pub const ENVELOPE_VERSION: u32 = 1;

/// The typed, versioned manifest of a source snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    /// The adapter: `volume`, `postgres`, ...
    pub kind: String,
    /// How the adapter took it: `files`, `logical`, `physical`, ...
    pub mode: String,
    /// The source's name in `cairn.yaml`, when it came from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    /// What was backed up, as the source reports itself (`PostgreSQL 15.18`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    /// Chunk sizes of the streams (min/avg/max bytes), to cut a live
    /// target's data the same way when comparing it with the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunking: Option<[usize; 3]>,
    /// Every listed stream (file-tree modes list none: the tree is the list).
    #[serde(default)]
    pub streams: Vec<StreamEntry>,
    /// Per object facts: a table's rows, a collection's documents.
    #[serde(default)]
    pub objects: Vec<ObjectEntry>,
    /// Totals by what is counted (`files`, `bytes`, `tables`, `rows`).
    #[serde(default)]
    pub totals: BTreeMap<String, u64>,
}

/// One stream of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEntry {
    /// `/`-separated, relative to the snapshot root.
    pub path: String,
    pub size: u64,
    /// Chunk digest, hex.
    pub digest: String,
}

/// One object of the source (a table, a collection, a key space).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// What it is: `table`, `collection`, `database`, ...
    pub kind: String,
    /// Its full name (`app.public.orders`).
    pub name: String,
    /// Rows, documents, keys.
    pub count: u64,
    /// The streams holding it, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<String>,
}

impl Envelope {
    pub fn new(kind: &str, mode: &str) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            kind: kind.into(),
            mode: mode.into(),
            source_name: None,
            source_version: None,
            chunking: None,
            streams: Vec::new(),
            objects: Vec::new(),
            totals: BTreeMap::new(),
        }
    }

    /// The envelope of a file-tree snapshot (a volume's, or one restic
    /// wrote), from the snapshot's summary.
    pub fn of_file_tree(snapshot: &Snapshot) -> Envelope {
        let (kind, mode) = cairn_repo::select::kind_and_mode(snapshot);
        let mut envelope = Envelope::new(&kind, &mode);
        envelope.source_name = snapshot.cairn.as_ref().and_then(|c| c.source_name.clone());
        if let Some(s) = &snapshot.summary {
            envelope.totals.insert("files".into(), s.total_files_processed);
            envelope.totals.insert("bytes".into(), s.total_bytes_processed);
        }
        envelope
    }

    /// Reads the envelope a stream-shaped snapshot carries; `None` when it
    /// has none (a file tree, or a snapshot from before envelopes).
    pub async fn read(reader: &SnapshotReader<'_>) -> Result<Option<Envelope>, RepoError> {
        if reader.entry(ENVELOPE_PATH).await?.is_none() {
            return Ok(None);
        }
        let data = reader.read(ENVELOPE_PATH).await?;
        let envelope: Envelope = serde_json::from_slice(&data).map_err(|e| RepoError::SnapshotFile {
            path: ENVELOPE_PATH.into(),
            problem: format!("is not valid: {e}"),
        })?;
        if envelope.version > ENVELOPE_VERSION {
            return Err(RepoError::SnapshotFile {
                path: ENVELOPE_PATH.into(),
                problem: format!(
                    "has version {}, newer than this cairn reads ({ENVELOPE_VERSION}); upgrade cairn",
                    envelope.version
                ),
            });
        }
        Ok(Some(envelope))
    }

    pub fn total(&self, what: &str) -> u64 {
        self.totals.get(what).copied().unwrap_or(0)
    }
}

/// What [`check_envelope`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EnvelopeCheck {
    pub streams: usize,
    pub bytes: u64,
    /// Streams missing, of another size, or with other chunks than recorded.
    pub problems: Vec<String>,
}

impl EnvelopeCheck {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every stream the envelope lists against the snapshot's tree:
/// present, the recorded size, and made of the recorded chunks. With
/// `read_data`, every blob is read and verified too.
pub async fn check_envelope(
    reader: &SnapshotReader<'_>,
    envelope: &Envelope,
    read_data: bool,
) -> Result<EnvelopeCheck, RepoError> {
    let mut check = EnvelopeCheck::default();
    for stream in &envelope.streams {
        check.streams += 1;
        let Some(node) = reader.entry(&stream.path).await? else {
            check.problems.push(format!("{}: missing", stream.path));
            continue;
        };
        if node.size != stream.size {
            check
                .problems
                .push(format!("{}: {} bytes, the manifest says {}", stream.path, node.size, stream.size));
            continue;
        }
        let mut digest = Sha256::new();
        for id in node.content.iter().flatten() {
            digest.update(id.0);
        }
        if hex::encode(digest.finalize()) != stream.digest {
            check.problems.push(format!("{}: not the chunks the manifest records", stream.path));
            continue;
        }
        if read_data {
            use futures::TryStreamExt;
            let mut blobs = std::pin::pin!(reader.stream(&node, cairn_repo::reader::READ_AHEAD));
            while let Some(piece) = blobs.try_next().await? {
                check.bytes += piece.len() as u64;
            }
        } else {
            check.bytes += node.size;
        }
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_tolerate_missing_optional_fields() {
        let mut e = Envelope::new("postgres", "logical");
        e.streams.push(StreamEntry { path: "a/b.copy".into(), size: 3, digest: "00".into() });
        e.objects.push(ObjectEntry {
            kind: "table".into(),
            name: "db.s.t".into(),
            count: 2,
            streams: vec![],
        });
        e.totals.insert("rows".into(), 2);
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), e);
        let minimal: Envelope = serde_json::from_str(r#"{"version":1,"kind":"x","mode":"y"}"#).unwrap();
        assert_eq!(minimal, Envelope::new("x", "y"));
        assert_eq!(minimal.total("rows"), 0);
    }
}
