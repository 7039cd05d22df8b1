//! `manifest.json`: what a logical snapshot holds, captured in the same MVCC
//! snapshot as the data. Restores use it to find files and to check row
//! counts; verification compares a restored database against it.

use serde::{Deserialize, Serialize};

/// Bumped when the layout changes incompatibly; readers refuse newer ones.
/// Version 2 added [`TableManifest::parts`]: a version-1 reader would look
/// only at `file` and miss the rows of a table copied in block ranges.
pub const MANIFEST_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// `postgresql://host:port` (never a password).
    pub server: String,
    /// `SHOW server_version`, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub server_version: String,
    pub server_version_num: u32,
    /// The `pg_dump --version` line that wrote the schema archives.
    pub pg_dump_version: String,
    /// Path of the globals file in the snapshot, if globals were dumped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub globals: Option<String>,
    /// The chunk sizes COPY streams were cut with: their digests are chunk
    /// digests (`cairn_repo::archive::ChunkDigest`) at these sizes. `None`
    /// in version-1 manifests, whose tables carry a plain `sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunking: Option<DumpChunking>,
    pub databases: Vec<DatabaseManifest>,
}

/// Chunk sizes, in bytes (see `cairn_repo::chunker::ChunkerParams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpChunking {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseManifest {
    pub name: String,
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    /// `pg_database_size` at dump time.
    pub size_bytes: i64,
    /// The exported snapshot every part of this database was read in.
    pub snapshot_id: String,
    pub extensions: Vec<Extension>,
    /// Path of the `pg_dump` archive (schema, sequence values, large
    /// objects, rows of tables not listed below).
    pub schema_file: String,
    pub tables: Vec<TableManifest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extension {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableManifest {
    pub schema: String,
    pub name: String,
    pub oid: u32,
    /// Path of the COPY stream in the snapshot; empty when the table was
    /// copied in [`parts`](Self::parts).
    pub file: String,
    /// Columns in COPY order (generated and dropped columns excluded).
    pub columns: Vec<String>,
    /// Exact row count in the dump's snapshot.
    pub rows: u64,
    pub bytes: u64,
    /// Version 1: SHA-256 (hex) of the COPY text stream.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// Chunk digest (hex) of the COPY text stream (see
    /// [`Manifest::chunking`]); empty when the table was copied in parts
    /// (each part has its own).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Catalog objects restored with the table when it is restored alone:
    /// indexes, constraints, triggers, policies, defaults, rules, extended
    /// statistics and owned sequences (their OIDs in the source database).
    #[serde(default)]
    pub dependents: Vec<u32>,
    /// Foreign keys of this table: constraint OID and the table it references.
    /// A partial restore keeps a foreign key only when it restores both ends.
    #[serde(default)]
    pub foreign_keys: Vec<(u32, u32)>,
    /// A large table copied as consecutive block ranges on several
    /// connections at once. Concatenated in order, the parts are the
    /// table's COPY stream in physical order: restores load them that way,
    /// so a restored table reads back part by part with the same hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<TablePart>,
}

/// One block range of a table copied in parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TablePart {
    /// Path of this range's COPY stream in the snapshot.
    pub file: String,
    /// First heap block of the range.
    pub first_block: u32,
    /// The block after the range; `None` for the last part, which takes
    /// everything from `first_block` on (the table may have grown).
    pub end_block: Option<u32>,
    pub rows: u64,
    pub bytes: u64,
    /// Chunk digest (hex) of this part's COPY text.
    pub digest: String,
}

/// A stretch of a table's COPY stream with its own file, row count and
/// digest: the whole stream, or one part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    pub file: &'a str,
    pub rows: u64,
    /// Hex; a chunk digest, or a SHA-256 in version-1 manifests.
    pub digest: &'a str,
}

impl TableManifest {
    /// `schema.table` as users type it (quoting only when needed).
    pub fn qualified(&self) -> String {
        format!("{}.{}", display_ident(&self.schema), display_ident(&self.name))
    }

    /// `"schema"."table"` for SQL.
    pub fn sql_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The `COPY` column list.
    pub fn sql_columns(&self) -> String {
        self.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
    }

    /// `COPY "s"."t" (cols) <direction>` (`TO STDOUT`, `FROM STDIN`); a
    /// table without columns takes no column list.
    pub fn copy_sql(&self, direction: &str) -> String {
        if self.columns.is_empty() {
            format!("COPY {} {direction}", self.sql_name())
        } else {
            format!("COPY {} ({}) {direction}", self.sql_name(), self.sql_columns())
        }
    }

    /// `COPY (SELECT … FROM ONLY t WHERE ctid in range) TO STDOUT` for one
    /// part: the same text, row for row, as that stretch of the table's
    /// own COPY. `ONLY`, because COPY of a table leaves out its inheritance
    /// children and a SELECT would not. PostgreSQL 14 and later answer the
    /// `ctid` bounds with a TID range scan that reads only those blocks.
    pub fn copy_part_sql(&self, part: &TablePart) -> String {
        let columns = if self.columns.is_empty() { String::new() } else { self.sql_columns() };
        let mut sql = format!(
            "COPY (SELECT {columns} FROM ONLY {} WHERE ctid >= '({},0)'::tid",
            self.sql_name(),
            part.first_block
        );
        if let Some(end) = part.end_block {
            sql.push_str(&format!(" AND ctid < '({end},0)'::tid"));
        }
        sql.push_str(") TO STDOUT");
        sql
    }

    /// The table's COPY stream as stored: its parts in order, or the one file.
    pub fn segments(&self) -> Vec<Segment<'_>> {
        if self.parts.is_empty() {
            let digest = if self.digest.is_empty() { &self.sha256 } else { &self.digest };
            vec![Segment { file: &self.file, rows: self.rows, digest }]
        } else {
            self.parts.iter().map(|p| Segment { file: &p.file, rows: p.rows, digest: &p.digest }).collect()
        }
    }
}

impl Manifest {
    pub fn database(&self, name: &str) -> Option<&DatabaseManifest> {
        self.databases.iter().find(|d| d.name == name)
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn display_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { name.to_string() } else { quote_ident(name) }
}

/// A file name for a database or table in the snapshot tree: bytes outside
/// `[A-Za-z0-9_-]` are percent-encoded, so names with `/`, `.` or spaces
/// can neither escape their directory nor collide.
pub fn file_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_and_encoded_safely() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(file_component("public"), "public");
        assert_eq!(file_component("a.b/c d"), "a%2Eb%2Fc%20d");
        assert_ne!(
            format!("{}.{}", file_component("a.b"), file_component("c")),
            format!("{}.{}", file_component("a"), file_component("b.c"))
        );
        let t = TableManifest {
            schema: "Sales".into(),
            name: "orders".into(),
            oid: 1,
            file: String::new(),
            columns: vec!["id".into(), "Total".into()],
            rows: 0,
            bytes: 0,
            sha256: String::new(),
            digest: String::new(),
            dependents: vec![],
            foreign_keys: vec![],
            parts: vec![],
        };
        assert_eq!(t.qualified(), r#""Sales".orders"#);
        assert_eq!(t.sql_name(), r#""Sales"."orders""#);
        assert_eq!(t.sql_columns(), r#""id", "Total""#);
        let part = |first_block, end_block| TablePart {
            file: String::new(),
            first_block,
            end_block,
            rows: 0,
            bytes: 0,
            digest: String::new(),
        };
        assert_eq!(
            t.copy_part_sql(&part(0, Some(16384))),
            r#"COPY (SELECT "id", "Total" FROM ONLY "Sales"."orders" WHERE ctid >= '(0,0)'::tid AND ctid < '(16384,0)'::tid) TO STDOUT"#
        );
        assert_eq!(
            t.copy_part_sql(&part(16384, None)),
            r#"COPY (SELECT "id", "Total" FROM ONLY "Sales"."orders" WHERE ctid >= '(16384,0)'::tid) TO STDOUT"#
        );
    }
}
