//! `cairn backup postgres`: consistent, deduplicating logical backups.
//! The crate documentation describes the approach and the snapshot layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cairn_repo::archive::StreamFile;
use cairn_repo::chunker::ChunkerParams;
use cairn_repo::{Id, SaverOptions, Snapshot};
use cairn_source::{BackupJob, ObjectEntry, SnapshotWriter};
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;
use tokio_postgres::Client;

use crate::manifest::{
    DatabaseManifest, DumpChunking, Extension, MANIFEST_VERSION, Manifest, TableManifest, TablePart,
    file_component,
};
use crate::{PgError, PgTarget, PgTools};

/// Chunk sizes for dump streams: 4 KiB min, 16 KiB average, 64 KiB max.
///
/// A night of scattered row updates touches a few hundred bytes here and
/// there in a table's COPY stream; each touch costs one chunk. At restic's
/// file sizes (1 MiB average) 1000 updates spread over a 500 MB table change
/// nearly every chunk; at 16 KiB they change about 3% of it.
pub const DUMP_CHUNKS: ChunkerParams = ChunkerParams { min: 4 << 10, avg: 16 << 10, max: 64 << 10 };

/// Tables larger than this many heap blocks (32 MiB at PostgreSQL's
/// default 8 KiB blocks) are copied as block ranges spread over the dump's
/// connections. One big table is otherwise one serial stream: one server
/// process producing it and one task cutting it, while the other
/// connections sit idle. Ranges are this size, or larger for tables of more
/// than 256 of them (see [`part_blocks`]). Small ranges keep the connections
/// busy until the end: with 128 MiB ranges one connection still had a
/// range to go when the others ran out of work. Needs PostgreSQL 14 (TID
/// range scans); older servers copy every table whole.
pub const PART_BLOCKS: u64 = 4096;

/// The range size for a table of `blocks` blocks: [`PART_BLOCKS`], or the
/// power of two that keeps the table to about 256 parts. Powers of two keep
/// the boundaries where they were while a table grows, so unchanged ranges
/// deduplicate night over night.
pub fn part_blocks(blocks: u64) -> u64 {
    (blocks / 256).next_power_of_two().max(PART_BLOCKS)
}

/// What to dump and how.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub target: PgTarget,
    /// Databases to dump; empty means the one the URL names, or all.
    pub databases: Vec<String>,
    /// Also dump roles and tablespaces (`pg_dumpall --globals-only`).
    pub globals: bool,
    /// Connections copying tables at once, per database.
    pub jobs: usize,
    /// Directory holding `pg_dump` and `pg_dumpall`.
    pub pg_bin: Option<PathBuf>,
    /// Also copy tables larger than a quarter of `shared_buffers` in block
    /// ranges (see [`split_limit`]).
    pub split_large_tables: bool,
    pub chunks: ChunkerParams,
    pub saver: SaverOptions,
}

impl DumpOptions {
    pub fn new(target: PgTarget) -> DumpOptions {
        DumpOptions {
            target,
            databases: Vec::new(),
            globals: true,
            jobs: 2,
            pg_bin: None,
            split_large_tables: false,
            chunks: DUMP_CHUNKS,
            saver: SaverOptions::default(),
        }
    }
}

/// Live counters for progress display.
#[derive(Debug, Default)]
pub struct DumpProgress {
    pub tables_total: AtomicU64,
    pub tables_done: AtomicU64,
    pub bytes_done: AtomicU64,
    /// Set by the caller (SIGINT/SIGTERM): stop after the tables in flight.
    pub cancel: AtomicBool,
}

/// A finished logical backup.
#[derive(Debug, Clone)]
pub struct DumpResult {
    pub snapshot_id: Id,
    pub snapshot: Snapshot,
    pub manifest: Manifest,
}

struct Ctx {
    archive: Arc<SnapshotWriter>,
    pg_dump: PathBuf,
    jobs: usize,
    progress: Arc<DumpProgress>,
    /// Copy big tables in block ranges (the server can scan TID ranges).
    split_tables: bool,
    split_large_tables: bool,
}

/// Dumps the chosen databases into one snapshot.
pub async fn dump(
    job: &BackupJob<'_>,
    opts: DumpOptions,
    progress: Arc<DumpProgress>,
) -> Result<DumpResult, PgError> {
    let admin = opts.target.with_database(opts.target.database().unwrap_or("postgres"));
    let client = admin.connect().await?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(PgError::query("reading the server version"))?;
    let server_version: String = row.get(0);
    let server_version_num = row.get::<_, i32>(1) as u32;
    let tools = PgTools::new(opts.pg_bin.clone(), server_version_num);
    let (pg_dump, pg_dump_version) = tools.find_with_version("pg_dump").await?;

    let all: Vec<(String, String, String, String)> = client
        .query(
            "SELECT datname, pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database \
             WHERE datallowconn AND NOT datistemplate ORDER BY datname",
            &[],
        )
        .await
        .map_err(PgError::query("listing databases"))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let wanted: Vec<String> = if !opts.databases.is_empty() {
        opts.databases.clone()
    } else if let Some(db) = opts.target.database() {
        vec![db.to_string()]
    } else {
        all.iter().map(|d| d.0.clone()).collect()
    };
    let mut databases = Vec::new();
    for name in &wanted {
        let Some(d) = all.iter().find(|d| &d.0 == name) else {
            return Err(PgError::NoSuchDatabase {
                name: name.clone(),
                target: admin.display(),
                available: all.iter().map(|d| d.0.as_str()).collect::<Vec<_>>().join(", "),
            });
        };
        databases.push(d.clone());
    }

    let writer = SnapshotWriter::start(job, "postgres", "logical", opts.chunks, opts.saver.clone()).await?;
    writer.set_source_version(format!("PostgreSQL {server_version}"));
    let archive = Arc::new(writer);
    // Roles and tablespaces come from their own process, beside the databases.
    let globals = async {
        if !opts.globals {
            return Ok(None);
        }
        let pg_dumpall = tools.find("pg_dumpall", true).await?;
        let sql = dump_globals(&pg_dumpall, &admin).await?;
        archive.add_bytes("globals.sql", sql).await?;
        Ok::<_, PgError>(Some("globals.sql".to_string()))
    };
    let ctx = Ctx {
        archive: archive.clone(),
        pg_dump,
        jobs: opts.jobs.max(1),
        progress: progress.clone(),
        split_tables: server_version_num >= 140_000,
        split_large_tables: opts.split_large_tables,
    };
    let databases = async {
        let mut manifests = Vec::new();
        for (name, encoding, collate, ctype) in databases {
            let target = opts.target.with_database(&name);
            let mut db = DatabaseManifest {
                name,
                encoding,
                collate,
                ctype,
                size_bytes: 0,
                snapshot_id: String::new(),
                extensions: Vec::new(),
                schema_file: String::new(),
                tables: Vec::new(),
            };
            dump_database(&ctx, &target, &mut db).await?;
            manifests.push(db);
        }
        Ok::<_, PgError>(manifests)
    };
    let (globals, manifests) = futures::future::try_join(globals, databases).await?;
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        server: opts.target.server(),
        server_version,
        server_version_num,
        pg_dump_version,
        globals,
        chunking: Some(DumpChunking { min: opts.chunks.min, avg: opts.chunks.avg, max: opts.chunks.max }),
        databases: manifests,
    };
    drop(ctx);
    let archive = Arc::into_inner(archive).expect("no copy task outlives its database");
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    archive.add_bytes("manifest.json", json).await?;
    let summary = serde_json::json!({
        "kind": "logical",
        "server_version": manifest.server_version,
        "databases": manifest.databases.iter().map(|d| serde_json::json!({
            "name": d.name,
            "size_bytes": d.size_bytes,
            "tables": d.tables.len(),
            "rows": d.tables.iter().map(|t| t.rows).sum::<u64>(),
        })).collect::<Vec<_>>(),
    });
    for db in &manifest.databases {
        archive.add_total("databases", 1);
        for t in &db.tables {
            archive.add_total("tables", 1);
            archive.add_total("rows", t.rows);
            archive.add_object(ObjectEntry {
                kind: "table".into(),
                name: format!("{}.{}", db.name, t.qualified()),
                count: t.rows,
                streams: t.segments().iter().map(|s| s.file.to_string()).collect(),
            });
        }
    }
    let paths = manifest.databases.iter().map(|d| format!("{}/{}", manifest.server, d.name)).collect();
    let (snapshot_id, snapshot) = archive.finish(paths, Vec::new(), summary).await?;
    Ok(DumpResult { snapshot_id, snapshot, manifest })
}

/// The largest table, in blocks, that is copied in block ranges.
///
/// A plain `COPY` of a table larger than a quarter of `shared_buffers`
/// reads it through a small ring of buffers, as pg_dump's does, and leaves
/// the server's cache to its workload. A TID range scan has no such ring:
/// its pages go through `shared_buffers` and evict the working set, and
/// each read costs a buffer replacement (measured: 35% more server CPU for
/// pgbench_accounts, 640 MiB, with `shared_buffers = 512MB`). So only
/// tables a sequential scan would cache anyway are split, unless told
/// otherwise; on the 2-core benchmark the two ways took the same time.
async fn split_limit(ctx: &Ctx, coord: &Client) -> Result<u64, PgError> {
    if !ctx.split_tables {
        return Ok(0);
    }
    if ctx.split_large_tables {
        return Ok(u64::MAX);
    }
    let buffers: i64 = coord
        .query_one("SELECT setting::bigint FROM pg_settings WHERE name = 'shared_buffers'", &[])
        .await
        .map_err(PgError::query("reading shared_buffers"))?
        .get(0);
    Ok(buffers.max(0) as u64 / 4)
}

/// The ordinary tables cairn copies itself: user tables, not temporary, not
/// owned by an extension (those stay in pg_dump's archive, as pg_dump decides).
const TABLES_SQL: &str = "\
SELECT c.oid, n.nspname, c.relname, \
  pg_relation_size(c.oid) / current_setting('block_size')::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind = 'r' AND c.relpersistence <> 't' \
  AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                  AND d.objid = c.oid AND d.deptype = 'e') \
ORDER BY pg_relation_size(c.oid) DESC, n.nspname, c.relname";

/// Catalog objects that belong to a table, for single-table restores.
const DEPENDENTS_SQL: &str = "\
SELECT indrelid, indexrelid FROM pg_index WHERE indrelid = ANY($1) \
UNION ALL SELECT conrelid, oid FROM pg_constraint WHERE conrelid = ANY($1) AND contype <> 'f' \
UNION ALL SELECT tgrelid, oid FROM pg_trigger WHERE tgrelid = ANY($1) AND NOT tgisinternal \
UNION ALL SELECT polrelid, oid FROM pg_policy WHERE polrelid = ANY($1) \
UNION ALL SELECT adrelid, oid FROM pg_attrdef WHERE adrelid = ANY($1) \
UNION ALL SELECT ev_class, oid FROM pg_rewrite WHERE ev_class = ANY($1) AND rulename <> '_RETURN' \
UNION ALL SELECT stxrelid, oid FROM pg_statistic_ext WHERE stxrelid = ANY($1) \
UNION ALL SELECT d.refobjid, d.objid FROM pg_depend d JOIN pg_class s ON s.oid = d.objid \
  WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
    AND d.refobjid = ANY($1) AND d.deptype IN ('a', 'i') AND s.relkind = 'S'";

async fn dump_database(ctx: &Ctx, target: &PgTarget, db: &mut DatabaseManifest) -> Result<(), PgError> {
    let coord = target.connect().await?;
    coord
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(PgError::query("starting the dump transaction"))?;
    let snapshot: String = coord
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(PgError::query("exporting a snapshot"))?
        .get(0);
    db.snapshot_id = snapshot.clone();
    db.size_bytes = coord
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(PgError::query("reading the database size"))?
        .get(0);
    db.extensions = coord
        .query("SELECT extname::text, extversion FROM pg_extension ORDER BY extname", &[])
        .await
        .map_err(PgError::query("listing extensions"))?
        .iter()
        .map(|r| Extension { name: r.get(0), version: r.get(1) })
        .collect();
    let dir = format!("databases/{}", file_component(&db.name));
    let limit = split_limit(ctx, &coord).await?;
    let (tables, blocks) = list_tables(&coord, &dir, limit).await?;
    db.tables = tables;
    // Hold every table against DROP/ALTER until the copies are done, as pg_dump does.
    for batch in db.tables.chunks(500) {
        let names: Vec<String> = batch.iter().map(|t| t.sql_name()).collect();
        coord
            .batch_execute(&format!("LOCK TABLE {} IN ACCESS SHARE MODE", names.join(", ")))
            .await
            .map_err(PgError::query("locking tables for the dump"))?;
    }
    ctx.progress.tables_total.fetch_add(db.tables.len() as u64, Ordering::Relaxed);

    db.schema_file = format!("{dir}/schema.dump");
    let copied: Vec<String> = db.tables.iter().map(|t| t.sql_name()).collect();
    let schema = dump_schema(ctx, target, &snapshot, &copied, &db.schema_file);
    let data = copy_tables(ctx, target, &snapshot, &mut db.tables, &blocks);
    futures::future::try_join(schema, data).await?;
    coord.batch_execute("COMMIT").await.map_err(PgError::query("ending the dump transaction"))?;
    tracing::info!(
        database = %db.name,
        tables = db.tables.len(),
        rows = db.tables.iter().map(|t| t.rows).sum::<u64>(),
        "database dumped"
    );
    Ok(())
}

/// The tables to copy and each one's size in heap blocks (at listing time:
/// the last part of a split table is open-ended, so growth is not lost).
/// Tables over [`PART_BLOCKS`] and at most `split_limit` blocks get their parts.
async fn list_tables(
    coord: &Client,
    dir: &str,
    split_limit: u64,
) -> Result<(Vec<TableManifest>, Vec<u64>), PgError> {
    let rows = coord.query(TABLES_SQL, &[]).await.map_err(PgError::query("listing tables"))?;
    let blocks: Vec<u64> = rows.iter().map(|r| r.get::<_, i64>(3).max(0) as u64).collect();
    let mut tables: Vec<TableManifest> = rows
        .iter()
        .zip(&blocks)
        .map(|(r, &blocks)| {
            let (schema, name): (String, String) = (r.get(1), r.get(2));
            let stem = format!("{dir}/tables/{}.{}", file_component(&schema), file_component(&name));
            let parts = if blocks <= split_limit { table_parts(&stem, blocks) } else { Vec::new() };
            TableManifest {
                file: if parts.is_empty() { format!("{stem}.copy") } else { String::new() },
                parts,
                schema,
                name,
                oid: r.get(0),
                columns: Vec::new(),
                rows: 0,
                bytes: 0,
                sha256: String::new(),
                digest: String::new(),
                dependents: Vec::new(),
                foreign_keys: Vec::new(),
            }
        })
        .collect();
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    let by_oid: HashMap<u32, usize> = tables.iter().enumerate().map(|(i, t)| (t.oid, i)).collect();
    let columns = coord
        .query(
            "SELECT attrelid, attname::text FROM pg_attribute WHERE attrelid = ANY($1) AND attnum > 0 \
             AND NOT attisdropped AND attgenerated = '' ORDER BY attrelid, attnum",
            &[&oids],
        )
        .await
        .map_err(PgError::query("listing columns"))?;
    for r in columns {
        tables[by_oid[&r.get::<_, u32>(0)]].columns.push(r.get(1));
    }
    for r in
        coord.query(DEPENDENTS_SQL, &[&oids]).await.map_err(PgError::query("listing table dependents"))?
    {
        tables[by_oid[&r.get::<_, u32>(0)]].dependents.push(r.get(1));
    }
    let fks = coord
        .query(
            "SELECT conrelid, oid, confrelid FROM pg_constraint WHERE contype = 'f' AND conrelid = ANY($1)",
            &[&oids],
        )
        .await
        .map_err(PgError::query("listing foreign keys"))?;
    for r in fks {
        tables[by_oid[&r.get::<_, u32>(0)]].foreign_keys.push((r.get(1), r.get(2)));
    }
    Ok((tables, blocks))
}

/// Block ranges of [`part_blocks`] for a table of `blocks` blocks; none
/// for a table that fits in one. The boundaries depend only on block
/// numbers, so a table that changed a little cuts the same way the next
/// night and its unchanged parts deduplicate whole.
fn table_parts(stem: &str, blocks: u64) -> Vec<TablePart> {
    let size = part_blocks(blocks);
    if blocks <= size {
        return Vec::new();
    }
    let count = blocks.div_ceil(size);
    (0..count)
        .map(|k| TablePart {
            file: format!("{stem}.part{:04}.copy", k + 1),
            first_block: (k * size) as u32,
            end_block: (k + 1 < count).then(|| ((k + 1) * size) as u32),
            rows: 0,
            bytes: 0,
            digest: String::new(),
        })
        .collect()
}

/// One COPY a dump worker runs: a whole table, or one block range of it.
struct CopyJob {
    table: usize,
    part: Option<usize>,
    sql: String,
    file: String,
    /// The table, and the part if any, for messages.
    what: String,
}

/// Copies every table on `ctx.jobs` connections that share the exported
/// snapshot, big tables' parts and the largest tables first. Each
/// connection runs as its own task, so the streams are cut, hashed and
/// queued on different threads. Fills in rows, bytes and digests of every
/// table and part.
async fn copy_tables(
    ctx: &Ctx,
    target: &PgTarget,
    snapshot: &str,
    tables: &mut [TableManifest],
    blocks: &[u64],
) -> Result<(), PgError> {
    let mut jobs = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        if table.parts.is_empty() {
            jobs.push((
                blocks[i],
                CopyJob {
                    table: i,
                    part: None,
                    sql: table.copy_sql("TO STDOUT"),
                    file: table.file.clone(),
                    what: table.qualified(),
                },
            ));
        }
        for (k, part) in table.parts.iter().enumerate() {
            let blocks =
                part.end_block.map_or(blocks[i].saturating_sub(u64::from(part.first_block)), |end| {
                    u64::from(end - part.first_block)
                });
            jobs.push((
                blocks,
                CopyJob {
                    table: i,
                    part: Some(k),
                    sql: table.copy_part_sql(part),
                    file: part.file.clone(),
                    what: format!("{} (part {} of {})", table.qualified(), k + 1, table.parts.len()),
                },
            ));
        }
    }
    // Largest first, so the last job to finish is a small one.
    jobs.sort_by_key(|(blocks, _)| std::cmp::Reverse(*blocks));
    let jobs: Vec<CopyJob> = jobs.into_iter().map(|(_, job)| job).collect();
    let remaining: Vec<AtomicUsize> = tables.iter().map(|t| AtomicUsize::new(t.parts.len().max(1))).collect();
    let shared = Arc::new(CopyShared {
        next: AtomicUsize::new(0),
        results: Mutex::new(vec![None; jobs.len()]),
        jobs,
        remaining,
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..ctx.jobs.min(shared.jobs.len()).max(1) {
        workers.spawn(copy_worker(
            ctx.archive.clone(),
            ctx.progress.clone(),
            target.clone(),
            snapshot.to_string(),
            shared.clone(),
        ));
    }
    // The first failure ends the dump; dropping the set cancels the others.
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(result) => result?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Err(PgError::Interrupted),
        }
    }
    let shared = Arc::into_inner(shared).expect("copy tasks finished");
    let results = shared.results.into_inner().expect("results");
    for (job, file) in shared.jobs.iter().zip(results) {
        let file = file.expect("every job ran");
        let table = &mut tables[job.table];
        table.rows += file.lines;
        table.bytes += file.size;
        match job.part {
            None => table.digest = hex::encode(file.digest),
            Some(k) => {
                let part = &mut table.parts[k];
                part.rows = file.lines;
                part.bytes = file.size;
                part.digest = hex::encode(file.digest);
            }
        }
    }
    Ok(())
}

/// The work list of [`copy_tables`], shared by its tasks.
struct CopyShared {
    jobs: Vec<CopyJob>,
    next: AtomicUsize,
    results: Mutex<Vec<Option<StreamFile>>>,
    /// Per table: jobs not finished yet (progress counts whole tables).
    remaining: Vec<AtomicUsize>,
}

async fn copy_worker(
    archive: Arc<SnapshotWriter>,
    progress: Arc<DumpProgress>,
    target: PgTarget,
    snapshot: String,
    shared: Arc<CopyShared>,
) -> Result<(), PgError> {
    let (client, mut tap) = target.connect_tapped().await?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'; \
             SET LOCAL row_security = off; SET LOCAL statement_timeout = 0"
        ))
        .await
        .map_err(PgError::query("joining the dump's snapshot"))?;
    loop {
        if progress.cancel.load(Ordering::Relaxed) {
            return Err(PgError::Interrupted);
        }
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = shared.jobs.get(i) else { break };
        let what = format!("copying {}", job.what);
        // Progress is counted locally and published per MiB: a shared
        // counter bumped by every connection for every batch would bounce
        // its cache line between cores.
        let unpublished = AtomicU64::new(0);
        let file = tap
            .copy_out(&client, job.sql.as_str(), &what, |rows| async {
                let rows = rows.inspect_ok(|b: &Bytes| {
                    let n = unpublished.fetch_add(b.len() as u64, Ordering::Relaxed) + b.len() as u64;
                    if n >= 1 << 20 {
                        unpublished.fetch_sub(n, Ordering::Relaxed);
                        progress.bytes_done.fetch_add(n, Ordering::Relaxed);
                    }
                });
                Ok(archive.add_stream(&job.file, rows).await?)
            })
            .await?;
        progress.bytes_done.fetch_add(unpublished.into_inner(), Ordering::Relaxed);
        shared.results.lock().expect("results")[i] = Some(file);
        if shared.remaining[job.table].fetch_sub(1, Ordering::Relaxed) == 1 {
            progress.tables_done.fetch_add(1, Ordering::Relaxed);
        }
    }
    client.batch_execute("COMMIT").await.map_err(PgError::query("ending a copy transaction"))?;
    Ok(())
}

/// `pg_dump` of everything but the rows cairn copies itself, in the same snapshot.
async fn dump_schema(
    ctx: &Ctx,
    target: &PgTarget,
    snapshot: &str,
    copied_tables: &[String],
    path: &str,
) -> Result<(), PgError> {
    let dir = tempfile::tempdir().map_err(PgError::io("creating a temporary directory for pg_dump"))?;
    let out = dir.path().join("schema.dump");
    let mut cmd = tokio::process::Command::new(&ctx.pg_dump);
    cmd.arg("--format=custom")
        .arg("--compress=0")
        .arg("--no-sync")
        .arg(format!("--snapshot={snapshot}"))
        .arg(format!("--file={}", out.display()));
    for name in copied_tables {
        cmd.arg(format!("--exclude-table-data={name}"));
    }
    cmd.arg(format!("--dbname={}", target.conninfo()));
    run_tool(cmd, "pg_dump", target).await?;
    let file = tokio::fs::File::open(&out).await.map_err(PgError::io("opening pg_dump's output"))?;
    ctx.archive.add_stream(path, read_stream(file)).await?;
    Ok(())
}

async fn dump_globals(pg_dumpall: &Path, admin: &PgTarget) -> Result<Vec<u8>, PgError> {
    let run = |no_passwords: bool| {
        let mut cmd = tokio::process::Command::new(pg_dumpall);
        cmd.arg("--globals-only").arg(format!("--dbname={}", admin.conninfo()));
        if no_passwords {
            // Reading role passwords needs superuser; the roles themselves do not.
            cmd.arg("--no-role-passwords");
        }
        run_tool(cmd, "pg_dumpall", admin)
    };
    match run(false).await {
        Ok(out) => Ok(out),
        Err(PgError::ToolFailed { stderr, .. }) if stderr.contains("permission denied") => {
            tracing::warn!("not allowed to read role passwords; dumping roles without them");
            run(true).await
        }
        Err(e) => Err(e),
    }
}

/// Runs a client tool against `target`; returns its stdout, or its stderr as the error.
pub(crate) async fn run_tool(
    mut cmd: tokio::process::Command,
    tool: &str,
    target: &PgTarget,
) -> Result<Vec<u8>, PgError> {
    target.prepare_tool(&mut cmd);
    cmd.kill_on_drop(true);
    let out = cmd.output().await.map_err(PgError::io(format!("running {tool}")))?;
    if !out.status.success() {
        // The tools never see the password (it is in their environment),
        // but what they echo of a connection string is redacted all the same.
        let stderr = cairn_store::redact(&String::from_utf8_lossy(&out.stderr));
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
        return Err(PgError::ToolFailed { tool: tool.into(), status: out.status.to_string(), stderr: tail });
    }
    Ok(out.stdout)
}

/// A file as a stream of 1 MiB pieces.
pub(crate) fn read_stream(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 1 << 20];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), file)))
    })
}
