//! `cairn backup postgres`: consistent, deduplicating logical backups.
//! The crate documentation describes the approach and the snapshot layout.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cairn_repo::archive::{SnapshotInfo, StreamArchive};
use cairn_repo::chunker::ChunkerParams;
use cairn_repo::{Id, Repository, SaverOptions, Snapshot};
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;
use tokio_postgres::Client;

use crate::manifest::{
    DatabaseManifest, Extension, MANIFEST_VERSION, Manifest, TableManifest, file_component, quote_ident,
};
use crate::{PgError, PgTarget, PgTools};

/// Chunk sizes for dump streams: 4 KiB min, 16 KiB average, 64 KiB max.
///
/// A night of scattered row updates touches a few hundred bytes here and
/// there in a table's COPY stream; each touch costs one chunk. At restic's
/// file sizes (1 MiB average) 1000 updates spread over a 500 MB table change
/// nearly every chunk; at 16 KiB they change about 3% of it.
pub const DUMP_CHUNKS: ChunkerParams = ChunkerParams { min: 4 << 10, avg: 16 << 10, max: 64 << 10 };

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
    pub tags: Vec<String>,
    pub hostname: Option<String>,
    pub source_name: Option<String>,
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
            tags: Vec::new(),
            hostname: None,
            source_name: None,
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

struct Ctx<'a> {
    archive: &'a StreamArchive,
    pg_dump: PathBuf,
    jobs: usize,
    progress: Arc<DumpProgress>,
}

/// Dumps the chosen databases into one snapshot.
pub async fn dump(
    repo: &Repository,
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
    let pg_dump = tools.find("pg_dump", true).await?;
    let pg_dump_version = version_line(&pg_dump).await?;

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

    let archive = StreamArchive::start(repo, opts.chunks, opts.saver.clone()).await?;
    let globals = if opts.globals {
        let pg_dumpall = tools.find("pg_dumpall", true).await?;
        let sql = dump_globals(&pg_dumpall, &admin).await?;
        archive.add_bytes("globals.sql", sql).await?;
        Some("globals.sql".to_string())
    } else {
        None
    };
    let ctx = Ctx { archive: &archive, pg_dump, jobs: opts.jobs.max(1), progress: progress.clone() };
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
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        server: opts.target.server(),
        server_version,
        server_version_num,
        pg_dump_version,
        globals,
        databases: manifests,
    };
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
    let (snapshot_id, snapshot) = archive
        .finish(SnapshotInfo {
            paths: manifest.databases.iter().map(|d| format!("{}/{}", manifest.server, d.name)).collect(),
            tags: opts.tags,
            hostname: opts.hostname,
            source_kind: "postgres".into(),
            source_name: opts.source_name,
            warnings: Vec::new(),
            metadata: summary,
        })
        .await?;
    Ok(DumpResult { snapshot_id, snapshot, manifest })
}

/// The ordinary tables cairn copies itself: user tables, not temporary, not
/// owned by an extension (those stay in pg_dump's archive, as pg_dump decides).
const TABLES_SQL: &str = "\
SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
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

async fn dump_database(ctx: &Ctx<'_>, target: &PgTarget, db: &mut DatabaseManifest) -> Result<(), PgError> {
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
    db.tables = list_tables(&coord, &dir).await?;
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
    let schema = dump_schema(ctx, target, &snapshot, &db.tables, &db.schema_file);
    let data = copy_tables(ctx, target, &snapshot, &db.tables);
    let ((), results) = futures::future::try_join(schema, data).await?;
    for (table, (rows, bytes, sha)) in db.tables.iter_mut().zip(results) {
        table.rows = rows;
        table.bytes = bytes;
        table.sha256 = sha;
    }
    coord.batch_execute("COMMIT").await.map_err(PgError::query("ending the dump transaction"))?;
    tracing::info!(
        database = %db.name,
        tables = db.tables.len(),
        rows = db.tables.iter().map(|t| t.rows).sum::<u64>(),
        "database dumped"
    );
    Ok(())
}

async fn list_tables(coord: &Client, dir: &str) -> Result<Vec<TableManifest>, PgError> {
    let rows = coord.query(TABLES_SQL, &[]).await.map_err(PgError::query("listing tables"))?;
    let mut tables: Vec<TableManifest> = rows
        .iter()
        .map(|r| {
            let (schema, name): (String, String) = (r.get(1), r.get(2));
            TableManifest {
                file: format!("{dir}/tables/{}.{}.copy", file_component(&schema), file_component(&name)),
                schema,
                name,
                oid: r.get(0),
                columns: Vec::new(),
                rows: 0,
                bytes: 0,
                sha256: String::new(),
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
    Ok(tables)
}

/// Copies every table on `ctx.jobs` connections that share the exported
/// snapshot, largest tables first. Returns (rows, bytes, sha256) per table,
/// in the order of `tables`.
async fn copy_tables(
    ctx: &Ctx<'_>,
    target: &PgTarget,
    snapshot: &str,
    tables: &[TableManifest],
) -> Result<Vec<(u64, u64, String)>, PgError> {
    let queue = Mutex::new((0..tables.len()).collect::<VecDeque<_>>());
    let results = Mutex::new(vec![(0u64, 0u64, String::new()); tables.len()]);
    let worker = || async {
        let client = target.connect().await?;
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'; \
                 SET LOCAL row_security = off; SET LOCAL statement_timeout = 0"
            ))
            .await
            .map_err(PgError::query("joining the dump's snapshot"))?;
        loop {
            if ctx.progress.cancel.load(Ordering::Relaxed) {
                return Err(PgError::Interrupted);
            }
            let Some(i) = queue.lock().expect("queue").pop_front() else { break };
            let table = &tables[i];
            let sql = table.copy_sql("TO STDOUT");
            let stream = client
                .copy_out(sql.as_str())
                .await
                .map_err(PgError::query(format!("copying {}", table.qualified())))?;
            let progress = &ctx.progress;
            let stream = stream.inspect_ok(|b: &Bytes| {
                progress.bytes_done.fetch_add(b.len() as u64, Ordering::Relaxed);
            });
            let file = ctx.archive.add_stream(&table.file, stream).await?;
            results.lock().expect("results")[i] = (file.lines, file.size, hex::encode(file.sha256));
            ctx.progress.tables_done.fetch_add(1, Ordering::Relaxed);
        }
        client.batch_execute("COMMIT").await.map_err(PgError::query("ending a copy transaction"))?;
        Ok::<(), PgError>(())
    };
    let workers = ctx.jobs.min(tables.len()).max(1);
    futures::future::try_join_all((0..workers).map(|_| worker())).await?;
    Ok(results.into_inner().expect("results"))
}

/// `pg_dump` of everything but the rows cairn copies itself, in the same snapshot.
async fn dump_schema(
    ctx: &Ctx<'_>,
    target: &PgTarget,
    snapshot: &str,
    tables: &[TableManifest],
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
    for t in tables {
        cmd.arg(format!("--exclude-table-data={}.{}", quote_ident(&t.schema), quote_ident(&t.name)));
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
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
        return Err(PgError::ToolFailed { tool: tool.into(), status: out.status.to_string(), stderr: tail });
    }
    Ok(out.stdout)
}

async fn version_line(path: &Path) -> Result<String, PgError> {
    let out = tokio::process::Command::new(path)
        .arg("--version")
        .output()
        .await
        .map_err(PgError::io(format!("running {} --version", path.display())))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
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
