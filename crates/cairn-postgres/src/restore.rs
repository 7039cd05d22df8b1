//! `cairn restore SNAPSHOT --to postgresql://…/NEWDB`: a whole database,
//! some schemas, or single tables, into a new or existing database.
//!
//! Order (as `pg_restore` would do it, with cairn loading the rows):
//! globals (optional) → create the database → `pg_restore --section=pre-data`
//! → `COPY … FROM STDIN` per table, every blob verified against its SHA-256
//! on the way → the archive's own data (sequence values, large objects) →
//! `--section=post-data` (indexes, constraints, triggers). Row counts are
//! checked against the manifest as each table lands; `verify` also re-reads
//! every restored table and compares its content digest.
//!
//! Two ways to run that order, chosen by what a failure must leave behind:
//!
//! * **Into a database cairn creates**, tables load on `--jobs` connections
//!   and `pg_restore` builds indexes in parallel; a failure drops the
//!   database again.
//! * **Into a database that exists**, nothing may be lost: the whole restore
//!   (dropping what `--overwrite` replaces included) is one transaction on
//!   one connection, with the schema run from `pg_restore`'s SQL
//!   ([`crate::script`]), committed only when every table is in and
//!   verified. A damaged blob, an unreachable repository or a killed cairn
//!   leaves the target exactly as it was.
//!
//! Partial restores pick entries from the archive's table of contents by
//! the catalog OIDs the manifest recorded for each table (its indexes,
//! constraints, triggers, defaults, owned sequences), plus the comments and
//! grants that depend on them. Foreign keys come along only when both ends
//! are restored.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cairn_repo::archive::ChunkDigest;
use cairn_repo::chunker::ChunkerParams;
use cairn_repo::reader::{READ_AHEAD, SnapshotReader};
use cairn_repo::{Index, Repository, Snapshot};
use futures::{SinkExt, StreamExt};
use sha2::{Digest, Sha256};

use crate::conn::CopyTap;
use crate::dump::run_tool;
use crate::manifest::{DatabaseManifest, MANIFEST_VERSION, Manifest, Segment, TableManifest, quote_ident};
use crate::script::{self, ScriptPart};
use crate::{PgError, PgTarget, PgTools};

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The server and the database to restore into (created if missing).
    pub target: PgTarget,
    /// Which of the snapshot's databases; may be omitted when it holds one.
    pub database: Option<String>,
    /// Restore only these schemas...
    pub schemas: Vec<String>,
    /// ...and/or these tables (`schema.table`, or `table` when unambiguous).
    pub tables: Vec<String>,
    pub dry_run: bool,
    /// Replace what the restore brings when it already exists in the target.
    pub overwrite: bool,
    /// Do not restore ownership and grants (roles may not exist on the target).
    pub no_owner: bool,
    /// Restore roles and tablespaces first (errors for existing ones are reported, not fatal).
    pub globals: bool,
    /// Parallel table loads and index builds.
    pub jobs: usize,
    pub pg_bin: Option<PathBuf>,
    /// After loading, read every restored table back and compare its SHA-256.
    pub verify: bool,
}

impl RestoreOptions {
    pub fn new(target: PgTarget) -> RestoreOptions {
        RestoreOptions {
            target,
            database: None,
            schemas: Vec::new(),
            tables: Vec::new(),
            dry_run: false,
            overwrite: false,
            no_owner: false,
            globals: false,
            jobs: 2,
            pg_bin: None,
            verify: false,
        }
    }
}

/// Live counters for progress display.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    pub tables_total: AtomicU64,
    pub tables_done: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub cancel: AtomicBool,
}

/// What a restore does (all a dry run does is compute this).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestorePlan {
    pub source_database: String,
    pub target: String,
    pub create_database: bool,
    /// Into an existing database: one transaction, committed only when everything is in.
    pub atomic: bool,
    /// Whole database, or only the selected schemas/tables.
    pub partial: bool,
    pub tables: Vec<PlannedTable>,
    /// Archive entries restored by pg_restore (schema objects, sequences, ...).
    pub schema_entries: usize,
    pub globals: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedTable {
    pub table: String,
    pub rows: u64,
    pub bytes: u64,
}

/// A finished restore.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    pub plan: RestorePlan,
    pub rows: u64,
    pub bytes: u64,
    /// Tables whose content hash was re-checked after loading.
    pub verified_tables: usize,
    pub warnings: Vec<String>,
}

/// Reads `manifest.json` of a PostgreSQL logical snapshot.
pub async fn load_manifest(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
) -> Result<Manifest, PgError> {
    let kind = snapshot.cairn.as_ref().map(|c| c.source_kind.as_str()).unwrap_or("restic");
    if kind != "postgres" {
        return Err(PgError::NotPostgres { snapshot: snapshot.tree.short(), kind: kind.into() });
    }
    let data = SnapshotReader::new(repo, index, snapshot).read("manifest.json").await?;
    let manifest: Manifest = serde_json::from_slice(&data)
        .map_err(|e| PgError::BadSnapshot { path: "manifest.json".into(), message: e.to_string() })?;
    if manifest.version > MANIFEST_VERSION {
        return Err(PgError::BadSnapshot {
            path: "manifest.json".into(),
            message: format!(
                "manifest version {} is newer than this cairn understands ({MANIFEST_VERSION}); upgrade cairn",
                manifest.version
            ),
        });
    }
    Ok(manifest)
}

/// Restores one database of a logical snapshot.
///
/// Into a database cairn creates, the load runs in parallel and a failure
/// drops the database again. Into a database that already exists, the whole
/// restore is one transaction on one connection ([`load_atomic`]), so a
/// failure at any point — a damaged blob, an unreachable repository, a row
/// count that does not match, a killed process — leaves the database exactly
/// as it was.
pub async fn restore(
    repo: &Repository,
    index: Arc<Index>,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
    progress: Arc<RestoreProgress>,
) -> Result<RestoreReport, PgError> {
    let manifest = load_manifest(repo, &index, snapshot).await?;
    let db = pick_database(&manifest, opts.database.as_deref())?;
    let digests = StreamDigests::for_manifest(repo, &manifest)?;
    let tables = select_tables(db, &opts.schemas, &opts.tables)?;
    let partial = !opts.schemas.is_empty() || !opts.tables.is_empty();
    let target_db = opts
        .target
        .database()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| PgError::Url {
            url: opts.target.display().into(),
            message: "the target URL must name the database to restore into, e.g. postgresql://host/restored"
                .into(),
        })?
        .to_string();
    let target = opts.target.with_database(&target_db);

    let admin = connect_admin(&opts.target).await?;
    let server_version_num = admin
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(PgError::query("reading the target's server version"))?
        .get::<_, i32>(0) as u32;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&target_db])
        .await
        .map_err(PgError::query("looking for the target database"))?
        .is_some();
    if exists && !opts.overwrite {
        refuse_if_occupied(&target, &target_db, partial.then_some(tables.as_slice())).await?;
    }
    if exists && opts.overwrite && partial {
        refuse_if_views_depend(&target, &tables, &opts.schemas).await?;
    }
    // pg_restore reads archives of its own major version and older.
    let tools = PgTools::new(opts.pg_bin.clone(), server_version_num.max(manifest.server_version_num));
    let pg_restore = tools.find("pg_restore", false).await?;

    let work = tempfile::tempdir().map_err(PgError::io("creating a temporary directory"))?;
    let archive = work.path().join("schema.dump");
    let reader = SnapshotReader::new(repo, &index, snapshot);
    reader.copy_to(&db.schema_file, &archive).await?;
    let toc = read_toc(&pg_restore, &archive, &target).await?;
    let list = if partial { Some(select_entries(&toc, &opts.schemas, &tables)) } else { None };
    let plan = RestorePlan {
        source_database: db.name.clone(),
        target: target.display(),
        create_database: !exists,
        atomic: exists,
        partial,
        tables: tables
            .iter()
            .map(|t| PlannedTable { table: t.qualified(), rows: t.rows, bytes: t.bytes })
            .collect(),
        schema_entries: list.as_ref().map_or(toc.len(), |l| l.len()),
        globals: opts.globals && manifest.globals.is_some(),
    };
    if opts.dry_run {
        return Ok(RestoreReport { plan, rows: 0, bytes: 0, verified_tables: 0, warnings: Vec::new() });
    }

    let mut warnings = Vec::new();
    if plan.globals {
        let psql = tools.find("psql", false).await?;
        let path = work.path().join("globals.sql");
        reader.copy_to(manifest.globals.as_deref().unwrap_or_default(), &path).await?;
        warnings
            .extend(restore_globals(&psql, &path, &opts.target.with_database(admin_db(&admin).await)).await?);
    }
    let list_file = match &list {
        Some(entries) => {
            let path = work.path().join("restore.list");
            let text: String = entries.iter().map(|e| format!("{}\n", e.line)).collect();
            tokio::fs::write(&path, text).await.map_err(PgError::io("writing the restore list"))?;
            Some(path)
        }
        None => None,
    };
    let load = Load {
        reader,
        opts,
        target: &target,
        tables: &tables,
        sections: Sections { pg_restore: &pg_restore, archive: &archive, list: list_file.as_deref(), opts },
        progress: &progress,
        digests: &digests,
    };
    progress.tables_total.store(tables.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(tables.iter().map(|t| t.bytes).sum(), Ordering::Relaxed);
    let loaded = if exists {
        load_atomic(&load).await
    } else {
        create_database(&admin, &target_db, db, &mut warnings).await?;
        let loaded = load_fresh(&load).await;
        if loaded.is_err() {
            // The database is ours and half-filled: leave nothing that looks like a restore.
            if let Err(drop_err) = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&target_db)))
                .await
            {
                tracing::warn!(error = %drop_err, database = %target_db, "could not drop the half-restored database");
            }
        }
        loaded
    };
    let (rows, bytes, verified_tables, more) = loaded?;
    warnings.extend(more);
    tracing::info!(database = %target_db, tables = tables.len(), rows, "restore complete");
    Ok(RestoreReport { plan, rows, bytes, verified_tables, warnings })
}

/// What loading a database needs, whichever way it goes.
struct Load<'a> {
    reader: SnapshotReader<'a>,
    opts: &'a RestoreOptions,
    target: &'a PgTarget,
    tables: &'a [TableManifest],
    sections: Sections<'a>,
    progress: &'a RestoreProgress,
    digests: &'a StreamDigests,
}

/// (rows, bytes, tables verified, warnings) of a finished load.
type Loaded = (u64, u64, usize, Vec<String>);

/// The archive's sections, as `pg_restore` runs or writes them.
struct Sections<'a> {
    pg_restore: &'a Path,
    archive: &'a Path,
    /// The entries of a partial restore (`--use-list`).
    list: Option<&'a Path>,
    opts: &'a RestoreOptions,
}

impl Sections<'_> {
    /// `pg_restore` for one section; `clean` drops what it restores first.
    fn command(&self, section: &str, clean: bool) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.pg_restore);
        cmd.arg(format!("--section={section}")).arg("--exit-on-error").arg("--no-password");
        if let Some(l) = self.list {
            cmd.arg(format!("--use-list={}", l.display()));
        }
        if self.opts.no_owner {
            cmd.arg("--no-owner").arg("--no-privileges");
        }
        if clean {
            cmd.arg("--clean").arg("--if-exists");
        }
        cmd
    }

    /// Runs one section into the target, `jobs` at a time.
    async fn run(&self, section: &str, jobs: usize, target: &PgTarget) -> Result<(), PgError> {
        let mut cmd = self.command(section, false);
        if jobs > 1 {
            cmd.arg(format!("--jobs={jobs}"));
        }
        cmd.arg(format!("--dbname={}", target.conninfo())).arg(self.archive);
        run_tool(cmd, &format!("pg_restore ({section})"), target).await?;
        Ok(())
    }

    /// One section as statements for cairn's own transaction.
    async fn script(
        &self,
        section: &str,
        clean: bool,
        target: &PgTarget,
    ) -> Result<Vec<ScriptPart>, PgError> {
        let mut cmd = self.command(section, clean);
        cmd.arg("--single-transaction").arg("--file=-").arg(self.archive);
        let text = run_tool(cmd, &format!("pg_restore ({section}, as SQL)"), target).await?;
        script::parse(&text, section == "data").map_err(|e| PgError::BadSnapshot {
            path: format!("schema.dump ({section} section)"),
            message: e.to_string(),
        })
    }
}

/// Into a database cairn has just created: schema, then the rows on
/// `--jobs` connections, then the archive's own data and the post-data
/// objects (indexes, constraints) in parallel.
async fn load_fresh(load: &Load<'_>) -> Result<Loaded, PgError> {
    let (target, opts) = (load.target, load.opts);
    if load.sections.list.is_some() {
        let client = target.connect().await?;
        create_schemas(&client, load.tables, &opts.schemas).await?;
    }
    load.sections.run("pre-data", 1, target).await?;
    let (rows, bytes) = load_tables(load).await?;
    load.sections.run("data", 1, target).await?;
    load.sections.run("post-data", opts.jobs, target).await?;
    let verified_tables =
        if opts.verify { verify_tables(target, load.tables, load.digests).await? } else { 0 };
    Ok((rows, bytes, verified_tables, Vec::new()))
}

/// Into a database that exists: everything in one transaction on one
/// connection, committed only once every row is in, every count matched
/// and (with `--verify`) every table re-read and compared. Until then other
/// sessions keep seeing the old data (and wait on the tables being
/// replaced); on any failure the transaction is rolled back, and a killed
/// cairn takes its connection, and so its transaction, with it. The price is
/// one connection: tables load one after another and indexes are built one
/// at a time.
async fn load_atomic(load: &Load<'_>) -> Result<Loaded, PgError> {
    let (target, opts) = (load.target, load.opts);
    let clean = opts.overwrite;
    // Scripts first: a pg_restore that cannot write them fails before anything changes.
    let pre_data = load.sections.script("pre-data", clean, target).await?;
    let data = load.sections.script("data", false, target).await?;
    let post_data = load.sections.script("post-data", false, target).await?;

    let (client, mut tap) = target.connect_tapped().await?;
    // An empty search_path makes every name cairn reads back from the
    // catalog schema-qualified (the scripts set the same).
    client
        .batch_execute("BEGIN; SELECT pg_catalog.set_config('search_path', '', true)")
        .await
        .map_err(PgError::query("starting the restore transaction"))?;
    let result = async {
        if load.sections.list.is_some() {
            create_schemas(&client, load.tables, &opts.schemas).await?;
        }
        let detached = if clean {
            detach_foreign_keys(&client, load.tables, load.sections.list.is_some()).await?
        } else {
            Vec::new()
        };
        run_script(&client, &pre_data, "pre-data").await?;
        let (mut rows, mut bytes) = (0, 0);
        for table in load.tables {
            if load.progress.cancel.load(Ordering::Relaxed) {
                return Err(PgError::Interrupted);
            }
            rows += load_table(load, &client, table).await?;
            bytes += table.bytes;
        }
        run_script(&client, &data, "data").await?;
        run_script(&client, &post_data, "post-data").await?;
        let warnings = reattach_foreign_keys(&client, detached).await?;
        let verified = if opts.verify {
            verify_tables_on(&client, &mut tap, load.tables, load.digests).await?
        } else {
            0
        };
        if load.progress.cancel.load(Ordering::Relaxed) {
            return Err(PgError::Interrupted);
        }
        Ok((rows, bytes, verified, warnings))
    }
    .await;
    match result {
        Ok(loaded) => {
            client.batch_execute("COMMIT").await.map_err(PgError::query("committing the restore"))?;
            Ok(loaded)
        }
        Err(e) => {
            // Dropping the connection would roll back too; saying so is quicker.
            if let Err(rollback) = client.batch_execute("ROLLBACK").await {
                tracing::debug!(error = %rollback, "rollback failed; the connection's end rolls back instead");
            }
            tracing::warn!(database = %target.database().unwrap_or_default(), "restore failed; the target database was left as it was");
            Err(e)
        }
    }
}

/// Runs a script's parts on `client`, inside the caller's transaction.
async fn run_script(
    client: &tokio_postgres::Client,
    parts: &[ScriptPart],
    section: &str,
) -> Result<(), PgError> {
    for part in parts {
        match part {
            ScriptPart::Sql(sql) => client
                .batch_execute(sql)
                .await
                .map_err(PgError::query(format!("restoring the archive's {section} section")))?,
            ScriptPart::Copy { statement, rows } => {
                let what = format!("restoring the archive's {section} section ({statement})");
                let sink =
                    client.copy_in::<_, Bytes>(statement.as_str()).await.map_err(PgError::query(&what))?;
                let mut sink = std::pin::pin!(sink);
                sink.send(Bytes::copy_from_slice(rows.as_bytes())).await.map_err(PgError::query(&what))?;
                sink.as_mut().finish().await.map_err(PgError::query(&what))?;
            }
        }
    }
    Ok(())
}

/// `CREATE SCHEMA IF NOT EXISTS` for the schemas a partial restore writes into.
async fn create_schemas(
    client: &tokio_postgres::Client,
    tables: &[TableManifest],
    schemas: &[String],
) -> Result<(), PgError> {
    let all: BTreeSet<&str> =
        tables.iter().map(|t| t.schema.as_str()).chain(schemas.iter().map(String::as_str)).collect();
    for s in all {
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(s)))
            .await
            .map_err(PgError::query(format!("creating schema {s}")))?;
    }
    Ok(())
}

/// Replacing a table drops it, and PostgreSQL will not drop a table a view
/// depends on. Views the partial restore brings back itself are fine; any
/// other is named, before anything is changed.
async fn refuse_if_views_depend(
    target: &PgTarget,
    tables: &[TableManifest],
    schemas: &[String],
) -> Result<(), PgError> {
    let client = target.connect().await?;
    let names: Vec<String> = tables.iter().map(|t| t.sql_name()).collect();
    let rows = client
        .query(
            "WITH replaced AS (SELECT to_regclass(n)::oid AS oid FROM unnest($1::text[]) n WHERE to_regclass(n) IS NOT NULL) \
             SELECT DISTINCT v.oid::regclass::text, d.refobjid::regclass::text \
             FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class \
             JOIN pg_namespace n ON n.oid = v.relnamespace \
             WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass \
               AND d.refobjid IN (SELECT oid FROM replaced) AND v.oid <> d.refobjid \
               AND v.oid NOT IN (SELECT oid FROM replaced) AND NOT (n.nspname::text = ANY($2)) \
             ORDER BY 1",
            &[&names, &schemas],
        )
        .await
        .map_err(PgError::query("looking for views on the tables to replace"))?;
    if rows.is_empty() {
        return Ok(());
    }
    let pairs: Vec<String> = rows
        .iter()
        .map(|r| format!("view {} uses {}", r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    Err(PgError::TargetNotEmpty {
        database: target.database().unwrap_or_default().to_string(),
        what: format!(
            "views on the tables to replace ({}), which --overwrite would have to drop; restore into a new database and copy the rows back, or drop the views first",
            pairs.join(", ")
        ),
    })
}

/// A foreign key of a table the restore leaves alone, pointing at one it replaces.
struct DetachedKey {
    table: String,
    name: String,
    definition: String,
}

/// Before replacing tables: drops every foreign key that points at them
/// (they could not be dropped otherwise) or leaves them. Keys between
/// replaced tables come back from the archive; the others (tables kept in
/// the target pointing at replaced ones, and in a partial restore replaced
/// tables pointing at kept ones) are returned, to be re-created once the
/// data is back. Runs inside the restore's transaction, under an empty
/// search_path, so every name it keeps is schema-qualified.
async fn detach_foreign_keys(
    client: &tokio_postgres::Client,
    tables: &[TableManifest],
    partial: bool,
) -> Result<Vec<DetachedKey>, PgError> {
    let names: Vec<String> = tables.iter().map(|t| t.sql_name()).collect();
    let rows = client
        .query(
            "WITH replaced AS (SELECT to_regclass(n)::oid AS oid FROM unnest($1::text[]) n WHERE to_regclass(n) IS NOT NULL) \
             SELECT c.conrelid::regclass::text, quote_ident(c.conname), pg_get_constraintdef(c.oid), \
                    c.conrelid IN (SELECT oid FROM replaced), c.confrelid IN (SELECT oid FROM replaced) \
             FROM pg_constraint c WHERE c.contype = 'f' \
               AND (c.confrelid IN (SELECT oid FROM replaced) OR c.conrelid IN (SELECT oid FROM replaced))",
            &[&names],
        )
        .await
        .map_err(PgError::query("listing foreign keys that point at the tables to replace"))?;
    let mut kept = Vec::new();
    for r in rows {
        let key = DetachedKey { table: r.get(0), name: r.get(1), definition: r.get(2) };
        client
            .batch_execute(&format!("ALTER TABLE {} DROP CONSTRAINT {}", key.table, key.name))
            .await
            .map_err(PgError::query(format!("dropping foreign key {} on {}", key.name, key.table)))?;
        let (from_replaced, to_replaced): (bool, bool) = (r.get(3), r.get(4));
        // Keys between replaced tables come back with them; a full restore
        // also brings back the keys of its tables (the archive has them all).
        if !from_replaced || (partial && !to_replaced) {
            kept.push(key);
        }
    }
    Ok(kept)
}

/// Re-creates the foreign keys [`detach_foreign_keys`] set aside; one the
/// restored data no longer satisfies becomes a warning, not a failure (its
/// savepoint keeps the failed attempt from aborting the restore's
/// transaction).
async fn reattach_foreign_keys(
    client: &tokio_postgres::Client,
    keys: Vec<DetachedKey>,
) -> Result<Vec<String>, PgError> {
    let mut warnings = Vec::new();
    for key in keys {
        let sql = format!("ALTER TABLE {} ADD CONSTRAINT {} {}", key.table, key.name, key.definition);
        let savepoint = |sql: &'static str| async move {
            client.batch_execute(sql).await.map_err(PgError::query("re-creating foreign keys"))
        };
        savepoint("SAVEPOINT cairn_foreign_key").await?;
        match client.batch_execute(&sql).await {
            Ok(()) => savepoint("RELEASE SAVEPOINT cairn_foreign_key").await?,
            Err(e) => {
                savepoint("ROLLBACK TO SAVEPOINT cairn_foreign_key").await?;
                let message =
                    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
                warnings.push(format!(
                    "foreign key {} on {} could not be re-created ({message}); fix the rows, then run: {sql}",
                    key.name, key.table
                ));
            }
        }
    }
    Ok(warnings)
}

fn pick_database<'a>(manifest: &'a Manifest, wanted: Option<&str>) -> Result<&'a DatabaseManifest, PgError> {
    let names = || manifest.databases.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ");
    match wanted {
        Some(name) => manifest
            .database(name)
            .ok_or_else(|| PgError::NotInSnapshot { what: format!("database {name:?}"), available: names() }),
        None if manifest.databases.len() == 1 => Ok(&manifest.databases[0]),
        None => Err(PgError::NotInSnapshot {
            what: "no --database was given, and more than one database".into(),
            available: names(),
        }),
    }
}

fn select_tables(
    db: &DatabaseManifest,
    schemas: &[String],
    wanted: &[String],
) -> Result<Vec<TableManifest>, PgError> {
    if schemas.is_empty() && wanted.is_empty() {
        return Ok(db.tables.clone());
    }
    let available = || {
        let mut names: Vec<String> = db.tables.iter().map(|t| t.qualified()).collect();
        names.sort();
        if names.len() > 20 {
            let more = names.len() - 20;
            names.truncate(20);
            names.push(format!("and {more} more"));
        }
        names.join(", ")
    };
    let mut picked: BTreeSet<usize> = BTreeSet::new();
    for s in schemas {
        let before = picked.len();
        picked.extend(db.tables.iter().enumerate().filter(|(_, t)| &t.schema == s).map(|(i, _)| i));
        if picked.len() == before && !db.tables.iter().any(|t| &t.schema == s) {
            let mut all: Vec<&str> = db.tables.iter().map(|t| t.schema.as_str()).collect();
            all.sort();
            all.dedup();
            return Err(PgError::NotInSnapshot { what: format!("schema {s:?}"), available: all.join(", ") });
        }
    }
    for spec in wanted {
        let matches: Vec<usize> = db
            .tables
            .iter()
            .enumerate()
            .filter(|(_, t)| match spec.split_once('.') {
                Some((s, n)) => (t.schema == s && t.name == n) || t.qualified() == *spec,
                None => t.name == *spec,
            })
            .map(|(i, _)| i)
            .collect();
        match matches.as_slice() {
            [] => {
                return Err(PgError::NotInSnapshot {
                    what: format!("table {spec:?}"),
                    available: available(),
                });
            }
            [i] => {
                picked.insert(*i);
            }
            _ => {
                return Err(PgError::NotInSnapshot {
                    what: format!("table {spec:?} is ambiguous: name its schema; it"),
                    available: matches
                        .iter()
                        .map(|i| db.tables[*i].qualified())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    Ok(picked.into_iter().map(|i| db.tables[i].clone()).collect())
}

async fn connect_admin(target: &PgTarget) -> Result<tokio_postgres::Client, PgError> {
    match target.with_database("postgres").connect().await {
        Ok(c) => Ok(c),
        Err(PgError::Connect { message, .. }) if message.contains("does not exist") => {
            target.with_database("template1").connect().await
        }
        Err(e) => Err(e),
    }
}

async fn admin_db(admin: &tokio_postgres::Client) -> &'static str {
    match admin.query_one("SELECT current_database()::text", &[]).await {
        Ok(r) if r.get::<_, String>(0) == "template1" => "template1",
        _ => "postgres",
    }
}

/// Refuses to restore over existing data: any user table for a full
/// restore, or any of the selected tables for a partial one.
async fn refuse_if_occupied(
    target: &PgTarget,
    database: &str,
    selected: Option<&[TableManifest]>,
) -> Result<(), PgError> {
    let client = target.connect().await?;
    let found: Vec<String> = match selected {
        None => client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
                 AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1 LIMIT 5",
                &[],
            )
            .await
            .map_err(PgError::query("inspecting the target database"))?
            .iter()
            .map(|r| r.get(0))
            .collect(),
        Some(tables) => {
            let mut found = Vec::new();
            for t in tables {
                let row = client
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t.sql_name()])
                    .await
                    .map_err(PgError::query("inspecting the target database"))?;
                if row.get::<_, bool>(0) {
                    found.push(t.qualified());
                }
            }
            found
        }
    };
    if found.is_empty() {
        return Ok(());
    }
    let what = match selected {
        None => format!("tables ({}{})", found.join(", "), if found.len() == 5 { ", ..." } else { "" }),
        Some(_) => format!("the table(s) {}", found.join(", ")),
    };
    Err(PgError::TargetNotEmpty { database: database.into(), what })
}

async fn create_database(
    admin: &tokio_postgres::Client,
    name: &str,
    db: &DatabaseManifest,
    warnings: &mut Vec<String>,
) -> Result<(), PgError> {
    let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let with_locale = format!(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        quote_ident(name),
        literal(&db.encoding),
        literal(&db.collate),
        literal(&db.ctype)
    );
    if let Err(e) = admin.batch_execute(&with_locale).await {
        // The source's locale may not exist on this machine; the data does not depend on it.
        let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
        warnings.push(format!(
            "could not create {name} with the source's encoding/locale ({message}); used the server's defaults"
        ));
        admin
            .batch_execute(&format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name)))
            .await
            .map_err(PgError::query(format!("creating database {name}")))?;
    }
    Ok(())
}

async fn restore_globals(psql: &Path, file: &Path, admin: &PgTarget) -> Result<Vec<String>, PgError> {
    let mut cmd = tokio::process::Command::new(psql);
    cmd.arg("-X").arg("-q").arg("-v").arg("ON_ERROR_STOP=0").arg("-f").arg(file);
    cmd.arg(format!("--dbname={}", admin.conninfo()));
    admin.prepare_tool(&mut cmd);
    let out = cmd.output().await.map_err(PgError::io("running psql for the globals"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ok(stderr
        .lines()
        .filter(|l| l.contains("ERROR:"))
        .map(|l| format!("globals: {}", l.split("ERROR:").nth(1).unwrap_or(l).trim()))
        .collect())
}

/// One entry of `pg_restore --list`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TocEntry {
    pub id: u32,
    pub oid: u32,
    pub desc: String,
    /// The object's schema (`-` for objects outside any).
    pub namespace: String,
    pub depends: Vec<u32>,
    pub line: String,
}

async fn read_toc(pg_restore: &Path, archive: &Path, target: &PgTarget) -> Result<Vec<TocEntry>, PgError> {
    let mut cmd = tokio::process::Command::new(pg_restore);
    cmd.arg("--list").arg("--verbose").arg(archive);
    let out = run_tool(cmd, "pg_restore --list", target).await?;
    Ok(parse_toc(&String::from_utf8_lossy(&out)))
}

/// Parses `pg_restore --list --verbose`: `ID; TABLEOID OID DESC …` lines,
/// each optionally followed by `;\tdepends on: ID ID …`.
pub(crate) fn parse_toc(text: &str) -> Vec<TocEntry> {
    const DESCS: &[&str] = &[
        "FK CONSTRAINT",
        "SEQUENCE OWNED BY",
        "SEQUENCE SET",
        "TABLE DATA",
        "ROW SECURITY",
        "DEFAULT ACL",
        "MATERIALIZED VIEW DATA",
        "MATERIALIZED VIEW",
        "LARGE OBJECT",
        "BLOB",
        "BLOBS",
        "TABLE ATTACH",
        "INDEX ATTACH",
    ];
    let mut entries: Vec<TocEntry> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(';') {
            if let (Some(deps), Some(last)) =
                (rest.trim_start().strip_prefix("depends on:"), entries.last_mut())
            {
                last.depends.extend(deps.split_whitespace().filter_map(|d| d.parse::<u32>().ok()));
            }
            continue;
        }
        let Some((id, rest)) = line.split_once(';') else { continue };
        let Ok(id) = id.trim().parse() else { continue };
        let mut words = rest.split_whitespace();
        let (Some(_tableoid), Some(oid)) = (words.next(), words.next()) else { continue };
        let tail: Vec<&str> = words.collect();
        let joined = tail.join(" ");
        let desc = DESCS
            .iter()
            .find(|d| joined.starts_with(&format!("{d} ")) || joined == **d)
            .map(|d| d.to_string())
            .unwrap_or_else(|| tail.first().copied().unwrap_or_default().to_string());
        let namespace = tail.get(desc.split(' ').count()).copied().unwrap_or("-").to_string();
        entries.push(TocEntry {
            id,
            oid: oid.parse().unwrap_or(0),
            desc,
            namespace,
            depends: Vec::new(),
            line: line.to_string(),
        });
    }
    entries
}

/// The archive entries a partial restore needs: everything of the chosen
/// schemas, each chosen table's own objects, and the comments, grants and
/// sequence values hanging off them. Never the schemas themselves (created
/// beforehand if missing) and never foreign keys to tables left out.
pub(crate) fn select_entries(
    toc: &[TocEntry],
    schemas: &[String],
    tables: &[TableManifest],
) -> Vec<TocEntry> {
    let table_oids: HashSet<u32> = tables.iter().map(|t| t.oid).collect();
    let mut wanted: HashSet<u32> = table_oids.clone();
    wanted.extend(tables.iter().flat_map(|t| t.dependents.iter().copied()));
    let mut dropped_fks: HashSet<u32> = HashSet::new();
    for t in tables {
        for (fk, referenced) in &t.foreign_keys {
            if table_oids.contains(referenced) {
                wanted.insert(*fk);
            } else {
                dropped_fks.insert(*fk);
            }
        }
    }
    let mut kept: HashSet<u32> = HashSet::new();
    for e in toc {
        let by_oid = e.oid != 0 && wanted.contains(&e.oid);
        let in_schema = schemas.contains(&e.namespace);
        if (by_oid || in_schema) && e.desc != "SCHEMA" && !dropped_fks.contains(&e.oid) {
            kept.insert(e.id);
        }
    }
    // Entries with no catalog identity of their own (comments, grants,
    // sequence values, table data) follow what they depend on.
    loop {
        let before = kept.len();
        for e in toc {
            let attached = matches!(
                e.desc.as_str(),
                "COMMENT" | "ACL" | "SEQUENCE SET" | "SEQUENCE OWNED BY" | "TABLE DATA" | "SECURITY LABEL"
            );
            if attached && !kept.contains(&e.id) && e.depends.iter().any(|d| kept.contains(d)) {
                kept.insert(e.id);
            }
        }
        if kept.len() == before {
            break;
        }
    }
    toc.iter().filter(|e| kept.contains(&e.id)).cloned().collect()
}

/// Streams each table's COPY file into the target on `--jobs` connections
/// of their own, largest tables first. Returns (rows, bytes).
async fn load_tables(load: &Load<'_>) -> Result<(u64, u64), PgError> {
    let mut order: Vec<&TableManifest> = load.tables.iter().collect();
    order.sort_by_key(|t| std::cmp::Reverse(t.bytes));
    let queue = Mutex::new(order.into_iter());
    let totals = Mutex::new((0u64, 0u64));
    let worker = || async {
        let client = load.target.connect().await?;
        client
            .batch_execute("SET synchronous_commit = off; SET statement_timeout = 0")
            .await
            .map_err(PgError::query("preparing a load connection"))?;
        loop {
            if load.progress.cancel.load(Ordering::Relaxed) {
                return Err(PgError::Interrupted);
            }
            let Some(table) = queue.lock().expect("queue").next() else { break };
            let rows = load_table(load, &client, table).await?;
            let mut t = totals.lock().expect("totals");
            t.0 += rows;
            t.1 += table.bytes;
        }
        Ok::<(), PgError>(())
    };
    let workers = load.opts.jobs.max(1).min(load.tables.len().max(1));
    futures::future::try_join_all((0..workers).map(|_| worker())).await?;
    Ok(totals.into_inner().expect("totals"))
}

/// One table's COPY file (its parts one after another) into `client`, every
/// blob verified before it is sent; the row count must match the manifest.
async fn load_table(
    load: &Load<'_>,
    client: &tokio_postgres::Client,
    table: &TableManifest,
) -> Result<u64, PgError> {
    let (reader, progress) = (load.reader, load.progress);
    let mut nodes = Vec::new();
    for segment in table.segments() {
        nodes.push(reader.file(segment.file).await?);
    }
    let what = format!("loading {}", table.qualified());
    let sql = table.copy_sql("FROM STDIN");
    let sink = client.copy_in::<_, Bytes>(sql.as_str()).await.map_err(PgError::query(&what))?;
    let mut sink = std::pin::pin!(sink);
    // Parts go in one after another, so the table's rows land in the order
    // they were dumped and verification can re-read them part by part.
    for node in &nodes {
        let mut blobs = std::pin::pin!(reader.stream(node, READ_AHEAD));
        while let Some(piece) = blobs.next().await {
            let piece = piece?;
            progress.bytes_done.fetch_add(piece.len() as u64, Ordering::Relaxed);
            sink.send(piece).await.map_err(PgError::query(&what))?;
        }
    }
    let rows = sink.as_mut().finish().await.map_err(PgError::query(&what))?;
    if rows != table.rows {
        return Err(PgError::RowCountMismatch {
            table: table.qualified(),
            restored: rows,
            expected: table.rows,
        });
    }
    progress.tables_done.fetch_add(1, Ordering::Relaxed);
    Ok(rows)
}

/// One table of a database compared with a logical snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableCheck {
    pub table: String,
    pub expected_rows: u64,
    /// `None` when the table is missing.
    pub rows: Option<u64>,
    /// The content (COPY text, in physical order) hashes to the snapshot's SHA-256.
    pub content_matches: bool,
}

impl TableCheck {
    pub fn ok(&self) -> bool {
        self.rows == Some(self.expected_rows) && self.content_matches
    }
}

/// Compares a live database (a restore, a drill's scratch copy) with one
/// database of a logical snapshot: every table's row count and content hash.
/// Content hashes match for a database loaded from the snapshot and not
/// changed since (row order is physical order); row counts are the stable
/// check for anything else.
pub async fn compare_database(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
    target: &PgTarget,
    database: Option<&str>,
) -> Result<Vec<TableCheck>, PgError> {
    let manifest = load_manifest(repo, index, snapshot).await?;
    let db = pick_database(&manifest, database)?;
    let digests = StreamDigests::for_manifest(repo, &manifest)?;
    let (client, mut tap) = target.connect_tapped().await?;
    client
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL synchronize_seqscans = off",
        )
        .await
        .map_err(PgError::query("preparing verification"))?;
    let mut checks = Vec::with_capacity(db.tables.len());
    for table in &db.tables {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.sql_name()])
            .await
            .map_err(PgError::query("looking up a table"))?
            .get(0);
        let (rows, content_matches) = if exists {
            let (rows, matches) = read_table(&client, &mut tap, table, &digests).await?;
            (Some(rows), matches)
        } else {
            (None, false)
        };
        checks.push(TableCheck {
            table: table.qualified(),
            expected_rows: table.rows,
            rows,
            content_matches,
        });
    }
    Ok(checks)
}

/// COPY a table out: its row count, and whether the text hashes to the
/// snapshot's SHA-256 segment by segment (a table dumped in parts is cut
/// where the parts ended, by their row counts).
async fn read_table(
    client: &tokio_postgres::Client,
    tap: &mut CopyTap,
    table: &TableManifest,
    digests: &StreamDigests,
) -> Result<(u64, bool), PgError> {
    let sql = table.copy_sql("TO STDOUT");
    let what = format!("re-reading {}", table.qualified());
    let mut hasher = SegmentHasher::new(table.segments(), digests);
    tap.copy_out(client, &sql, &what, |rows| async {
        let mut rows = rows;
        while let Some(batch) = rows.next().await {
            hasher.update(&batch.map_err(PgError::io(what.as_str()))?);
        }
        Ok(())
    })
    .await?;
    Ok(hasher.finish())
}

/// Hashes a COPY text stream in the segments a manifest describes: each
/// segment's rows (lines) go to their own SHA-256, compared with the
/// segment's when it is complete. Rows past the last segment make the
/// content differ; the row count says by how much.
struct SegmentHasher<'a> {
    segments: std::vec::IntoIter<Segment<'a>>,
    digests: &'a StreamDigests,
    current: Option<(Segment<'a>, Digester, u64)>,
    rows: u64,
    matches: bool,
}

impl<'a> SegmentHasher<'a> {
    fn new(segments: Vec<Segment<'a>>, digests: &'a StreamDigests) -> Self {
        let mut hasher =
            SegmentHasher { segments: segments.into_iter(), digests, current: None, rows: 0, matches: true };
        hasher.advance();
        hasher
    }

    /// Closes the segment in progress (if any) and opens the next.
    fn advance(&mut self) {
        if let Some((segment, digester, _)) = self.current.take() {
            self.matches &= digester.finish() == segment.digest;
        }
        self.current = self.segments.next().map(|s| (s, self.digests.start(), 0));
    }

    fn update(&mut self, mut piece: &[u8]) {
        while !piece.is_empty() {
            // Empty segments (a part whose blocks held no live rows) end at once.
            while self.current.as_ref().is_some_and(|(s, _, rows)| *rows == s.rows && s.rows == 0) {
                self.advance();
            }
            let Some((segment, digester, rows)) = self.current.as_mut() else {
                self.rows += memchr::memchr_iter(b'\n', piece).count() as u64;
                self.matches = false;
                return;
            };
            let wanted = (segment.rows - *rows) as usize;
            let (take, complete) = match memchr::memchr_iter(b'\n', piece).nth(wanted.saturating_sub(1)) {
                Some(end) if wanted > 0 => (end + 1, true),
                _ => (piece.len(), false),
            };
            let taken = &piece[..take];
            digester.update(taken);
            let lines =
                if complete { wanted as u64 } else { memchr::memchr_iter(b'\n', taken).count() as u64 };
            *rows += lines;
            self.rows += lines;
            piece = &piece[take..];
            if complete {
                self.advance();
            }
        }
    }

    /// (rows seen, every segment complete and matching).
    fn finish(mut self) -> (u64, bool) {
        while self.current.is_some() {
            let complete = self.current.as_ref().is_some_and(|(s, _, rows)| *rows == s.rows);
            self.matches &= complete;
            self.advance();
        }
        (self.rows, self.matches)
    }
}

/// How a manifest's stream digests were made, to remake them over a table
/// read back from a database.
#[derive(Debug, Clone)]
pub(crate) enum StreamDigests {
    /// Version-1 manifests: SHA-256 of the bytes.
    Sha256,
    /// Chunk digests; this one, still empty, is cloned for every segment.
    Chunks(Box<ChunkDigest>),
}

impl StreamDigests {
    pub(crate) fn for_manifest(repo: &Repository, manifest: &Manifest) -> Result<StreamDigests, PgError> {
        let Some(c) = manifest.chunking else { return Ok(StreamDigests::Sha256) };
        let valid =
            c.min >= 64 && c.min <= c.avg && c.avg <= c.max && c.avg.is_power_of_two() && c.avg <= 1 << 48;
        if !valid {
            return Err(PgError::BadSnapshot {
                path: "manifest.json".into(),
                message: format!("chunk sizes {}/{}/{} are not valid", c.min, c.avg, c.max),
            });
        }
        let params = ChunkerParams::new(c.min, c.avg, c.max);
        Ok(StreamDigests::Chunks(Box::new(ChunkDigest::new(repo, params))))
    }

    fn start(&self) -> Digester {
        match self {
            StreamDigests::Sha256 => Digester::Sha256(Sha256::new()),
            StreamDigests::Chunks(empty) => Digester::Chunks(empty.clone()),
        }
    }
}

enum Digester {
    Sha256(Sha256),
    Chunks(Box<ChunkDigest>),
}

impl Digester {
    fn update(&mut self, piece: &[u8]) {
        match self {
            Digester::Sha256(h) => h.update(piece),
            Digester::Chunks(d) => d.update(piece),
        }
    }

    /// The digest, in hex.
    fn finish(self) -> String {
        match self {
            Digester::Sha256(h) => hex::encode(h.finalize()),
            Digester::Chunks(d) => hex::encode(d.finish()),
        }
    }
}

/// Re-reads every restored table and compares row count and SHA-256 with the manifest.
async fn verify_tables(
    target: &PgTarget,
    tables: &[TableManifest],
    digests: &StreamDigests,
) -> Result<usize, PgError> {
    let (client, mut tap) = target.connect_tapped().await?;
    verify_tables_on(&client, &mut tap, tables, digests).await
}

/// [`verify_tables`] on a given connection (inside the restore's own
/// transaction, for a restore into an existing database).
async fn verify_tables_on(
    client: &tokio_postgres::Client,
    tap: &mut CopyTap,
    tables: &[TableManifest],
    digests: &StreamDigests,
) -> Result<usize, PgError> {
    client
        .batch_execute("SET synchronize_seqscans = off")
        .await
        .map_err(PgError::query("preparing verification"))?;
    for table in tables {
        let (rows, matches) = read_table(client, tap, table, digests).await?;
        if rows != table.rows {
            return Err(PgError::RowCountMismatch {
                table: table.qualified(),
                restored: rows,
                expected: table.rows,
            });
        }
        if !matches {
            let which = if table.parts.is_empty() {
                "the table's".to_string()
            } else {
                format!("one of its {} parts'", table.parts.len())
            };
            return Err(PgError::ContentMismatch {
                table: table.qualified(),
                detail: format!("{which} COPY text hashes differently"),
            });
        }
    }
    Ok(tables.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOC: &str = "\
;
; Archive created at 2026-11-23 10:00:00 UTC
;
215; 1259 16390 TABLE public accounts postgres
;\tdepends on: 5
216; 1259 16389 SEQUENCE public accounts_id_seq postgres
;\tdepends on: 5
3350; 0 0 SEQUENCE OWNED BY public accounts_id_seq postgres
;\tdepends on: 216 215
217; 1259 16400 TABLE public other postgres
3200; 2604 16393 DEFAULT public accounts id postgres
;\tdepends on: 216 215
3360; 0 0 COMMENT public TABLE accounts postgres
;\tdepends on: 215
3370; 0 16389 SEQUENCE SET public accounts_id_seq postgres
;\tdepends on: 216
3190; 2606 16395 CONSTRAINT public accounts accounts_pkey postgres
;\tdepends on: 215
3199; 2606 16410 FK CONSTRAINT public accounts accounts_other_fk postgres
;\tdepends on: 215 217
6; 2615 2200 SCHEMA - public postgres
";

    fn table(oid: u32, dependents: Vec<u32>, fks: Vec<(u32, u32)>) -> TableManifest {
        TableManifest {
            schema: "public".into(),
            name: "accounts".into(),
            oid,
            file: String::new(),
            columns: vec![],
            rows: 0,
            bytes: 0,
            sha256: String::new(),
            digest: String::new(),
            dependents,
            foreign_keys: fks,
            parts: vec![],
        }
    }

    fn sha(text: &[u8]) -> String {
        hex::encode(Sha256::digest(text))
    }

    /// Feeds `text` to a hasher over `segments` in pieces of `step` bytes.
    fn hash_in_pieces(segments: &[(u64, String)], text: &[u8], step: usize) -> (u64, bool) {
        let segments =
            segments.iter().map(|(rows, sha)| Segment { file: "", rows: *rows, digest: sha }).collect();
        let mut hasher = SegmentHasher::new(segments, &StreamDigests::Sha256);
        for piece in text.chunks(step) {
            hasher.update(piece);
        }
        hasher.finish()
    }

    #[test]
    fn segment_hashes_follow_part_boundaries_whatever_the_pieces() {
        let (a, b, c) = (&b"1\tx\n2\ty\n"[..], &b""[..], &b"3\tz\n4\tw\n5\tv\n"[..]);
        let whole = [a, b, c].concat();
        let segments = vec![(2, sha(a)), (0, sha(b)), (3, sha(c))];
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(hash_in_pieces(&segments, &whole, step), (5, true), "pieces of {step}");
        }
        // A row moved across a part boundary: same rows, different parts.
        let moved = vec![(1, sha(&a[..4])), (0, sha(b)), (4, sha(&[&a[4..], c].concat()))];
        assert_eq!(hash_in_pieces(&moved, &whole, 3), (5, true));
        let wrong = vec![(2, sha(a)), (0, sha(b)), (3, sha(a))];
        assert_eq!(hash_in_pieces(&wrong, &whole, 3), (5, false));
        // Rows missing or extra.
        assert_eq!(hash_in_pieces(&segments, &whole[..whole.len() - 4], 5), (4, false));
        let extra = [&whole[..], b"6\tu\n"].concat();
        assert_eq!(hash_in_pieces(&segments, &extra, 5), (6, false));
        // A table dumped whole is one segment.
        assert_eq!(hash_in_pieces(&[(5, sha(&whole))], &whole, 4), (5, true));
        assert_eq!(hash_in_pieces(&[(0, sha(b""))], b"", 4), (0, true));
    }

    #[test]
    fn toc_lines_parse_with_multiword_kinds_and_dependencies() {
        let toc = parse_toc(TOC);
        assert_eq!(toc.len(), 10);
        assert_eq!(toc[0].id, 215);
        assert_eq!(toc[0].oid, 16390);
        assert_eq!(toc[0].depends, [5]);
        assert_eq!(toc[2].desc, "SEQUENCE OWNED BY");
        assert_eq!(toc[8].desc, "FK CONSTRAINT");
        assert_eq!(toc[6].desc, "SEQUENCE SET");
        assert_eq!(toc[6].namespace, "public");
        assert_eq!(toc[9].namespace, "-");
    }

    #[test]
    fn one_table_brings_its_objects_but_not_foreign_keys_to_tables_left_out() {
        let toc = parse_toc(TOC);
        let t = table(16390, vec![16389, 16393, 16395], vec![(16410, 16400)]);
        let ids: Vec<u32> = select_entries(&toc, &[], &[t]).iter().map(|e| e.id).collect();
        assert_eq!(ids, [215, 216, 3350, 3200, 3360, 3370, 3190]);

        let mut other = table(16400, vec![], vec![]);
        other.name = "other".into();
        let t = table(16390, vec![16389, 16393, 16395], vec![(16410, 16400)]);
        let ids: Vec<u32> = select_entries(&toc, &[], &[t, other]).iter().map(|e| e.id).collect();
        assert!(ids.contains(&3199) && ids.contains(&217), "{ids:?}");
        assert!(!ids.contains(&6), "the schema itself is never in a partial restore list");
    }
}
