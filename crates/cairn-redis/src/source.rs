//! The Redis source on the adapter contract ([`cairn_source::Source`]).
//!
//! Two modes: `physical`, the server's RDB pulled over the replication
//! protocol ([`crate::backup`]), and `logical`, the keys read with `DUMP`
//! and written as an RDB of their own ([`crate::logical`]). Both snapshots
//! restore into a data directory for a new instance (`--redis-data-dir DIR
//! [--start --port P]`, [`crate::restore`]) or into a running server (`--to
//! redis://…`, [`crate::restore_live`]), and compare with a live server
//! (`verify --against redis://…`, [`crate::live`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use cairn_source::units::human_bytes;
use cairn_source::{
    BackupJob, BackupOutcome, Descriptor, Meter, Reading, RestoreJob, RestoreOutcome, RestoreRequest,
    Scratch, Source, VerifyJob, VerifyOutcome, counts,
};

use crate::backup::BackupProgress;
use crate::resp::Conn;
use crate::restore::RestoreOptions;
use crate::target::is_redis_url;
use crate::{RedisError, RedisTarget, live};

/// `cairn backup redis` flags, and the keys of a `kind: redis` source.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// Server to back up, a primary or a replica: redis://[USER@]HOST[:PORT].
    /// The user needs `+psync +replconf` (ACL); the password comes from
    /// --redis-password-file (or the URL, which is discouraged).
    #[arg(long, env = "CAIRN_REDIS_URL", hide_env_values = true)]
    pub url: String,
    /// File holding the password of the URL's user (a mounted secret); `password_file:` in cairn.yaml.
    // Its own id: the field's name is the global --password-file's (the repository's).
    #[arg(long = "redis-password-file", id = "redis_password_file", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Read the keys with SCAN + DUMP + PEXPIRETIME instead of pulling the
    /// server's RDB (mode redis/logical): for part of the key space, or a
    /// user without +psync. Not a point in time: each key is as it was read.
    /// The user needs `+scan +dump +pexpiretime +select +info +time ~*`.
    #[arg(long)]
    pub logical: bool,
    /// With --logical: only keys matching this Redis glob pattern (SCAN MATCH).
    #[arg(long = "match", value_name = "PATTERN", requires = "logical")]
    #[serde(rename = "match")]
    pub pattern: Option<String>,
    /// With --logical: only this database (default: every database holding keys).
    #[arg(long, value_name = "N", requires = "logical")]
    pub db: Option<u32>,
}

impl RedisSettings {
    fn target(&self) -> Result<RedisTarget, RedisError> {
        if self.url.is_empty() {
            return Err(RedisError::Settings(
                "no server given: pass --url redis://HOST:PORT (or `url:` in the source's cairn.yaml entry)"
                    .into(),
            ));
        }
        RedisTarget::parse(&self.url)?.with_password_file(self.password_file.as_deref())
    }
}

/// `cairn restore` / `cairn verify` flags for Redis snapshots.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Redis restore")]
pub struct RedisRestoreSettings {
    /// Lay the snapshot's dump.rdb down in this directory (created if
    /// missing) for a new Redis instance; with --start, start redis-server
    /// on it (127.0.0.1, --port, default 6379).
    #[arg(long, value_name = "DIR")]
    pub redis_data_dir: Option<PathBuf>,
    /// The redis-server --start runs (default: redis-server from PATH).
    #[arg(long, env = "CAIRN_REDIS_SERVER", value_name = "PATH")]
    pub redis_server: Option<PathBuf>,
    /// For --to / verify --against redis://USER@HOST:PORT: the file holding that user's password.
    #[arg(long = "redis-password-file", value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// With --to redis://…: restore only keys matching this Redis glob
    /// pattern (`user:*`, `h?llo`, `[ab]*`); repeat for several.
    #[arg(long = "match", value_name = "PATTERN")]
    pub matches: Vec<String>,
    /// With --to redis://…: restore database FROM into database TO (e.g.
    /// 0=3); repeat for several; unmapped databases keep their number.
    #[arg(long = "db-map", value_name = "FROM=TO")]
    pub db_map: Vec<String>,
    /// With --to redis://…: replace keys the server already holds (after
    /// every key has been read and verified); without it such keys stop
    /// the restore before anything is written.
    #[arg(long)]
    pub replace: bool,
}

/// Redis servers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisSource;

struct BackupMeter(Arc<BackupProgress>);

impl Meter for BackupMeter {
    fn read(&self) -> Reading {
        Reading {
            bytes_done: self.0.bytes.load(Ordering::Relaxed),
            bytes_total: self.0.total.load(Ordering::Relaxed),
            detail: format!("{} keys", self.0.keys.load(Ordering::Relaxed)),
        }
    }
}

const NO_TARGET: &str =
    "name the target: --to redis://HOST:PORT (a running server) or --redis-data-dir DIR (a new instance)";

/// `restore --to redis://…`.
async fn restore_live(
    job: &RestoreJob<'_>,
    s: &RedisRestoreSettings,
    to: &str,
) -> Result<RestoreOutcome, RedisError> {
    let target = RedisTarget::parse(to)?.with_password_file(s.redis_password_file.as_deref())?;
    let opts = crate::restore_live::LiveOptions {
        target: target.clone(),
        patterns: s.matches.iter().map(|p| p.as_bytes().to_vec()).collect(),
        db_map: crate::restore_live::parse_db_map(&s.db_map)?,
        replace: s.replace || job.request.overwrite == cairn_source::Overwrite::Always,
    };
    let plan = crate::restore_live::restore(job, &opts).await?;
    let dbs: Vec<String> = plan.databases.iter().map(|(db, n)| format!("db{db} {n}")).collect();
    let dbs = if dbs.is_empty() { "no keys".to_string() } else { dbs.join(", ") };
    let mut lines = Vec::new();
    if job.request.dry_run {
        lines.push(format!(
            "would restore {} keys of snapshot {} into {} ({dbs}){}",
            plan.keys,
            job.snapshot_id.short(),
            target.display(),
            match (plan.existing, opts.replace) {
                (0, _) => String::new(),
                (n, true) => format!(", replacing {n} it holds"),
                (n, false) => format!(
                    "; it already holds {n} of them ({}), so without --replace the restore would stop before writing",
                    plan.existing_named.iter().map(|(db, k)| format!("db{db} {k}")).collect::<Vec<_>>().join(", ")
                ),
            }
        ));
    } else {
        lines.push(format!(
            "restored {} keys of snapshot {} into {} ({dbs}){}; the snapshot's RDB was verified whole first",
            plan.restored,
            job.snapshot_id.short(),
            target.display(),
            if plan.existing > 0 { format!(", {} of them replaced", plan.existing) } else { String::new() }
        ));
    }
    if plan.expired > 0 {
        lines.push(format!("  {} matching keys had expired and were left out", plan.expired));
    }
    Ok(RestoreOutcome {
        target: target.display(),
        objects: counts([
            ("databases", plan.databases.len() as u64),
            ("keys", plan.keys),
            ("restored", plan.restored),
            ("replaced", if opts.replace { plan.existing } else { 0 }),
            ("expired", plan.expired),
        ]),
        bytes: plan.payload_bytes,
        warnings: Vec::new(),
        summary: lines.join("\n"),
        details: serde_json::json!({ "plan": plan }),
    })
}

#[async_trait]
impl Source for RedisSource {
    type Settings = RedisSettings;
    type RestoreSettings = RedisRestoreSettings;
    type Error = RedisError;

    fn descriptor(&self) -> Descriptor {
        Descriptor {
            kind: "redis",
            about: "Redis: the RDB, streamed over the replication protocol from a primary or a replica.",
            modes: &["physical", "logical"],
        }
    }

    fn mode(&self, settings: &RedisSettings) -> &'static str {
        if settings.logical { "logical" } else { "physical" }
    }

    fn validate(&self, settings: &RedisSettings) -> Result<(), RedisError> {
        if !settings.logical && (settings.pattern.is_some() || settings.db.is_some()) {
            return Err(RedisError::Settings(
                "match and db select keys of a logical backup: add logical (--logical)".into(),
            ));
        }
        settings.target().map(|_| ())
    }

    async fn backup(&self, job: BackupJob<'_>, s: &RedisSettings) -> Result<BackupOutcome, RedisError> {
        let target = s.target()?;
        let progress = Arc::new(BackupProgress::default());
        job.progress.show(Arc::new(BackupMeter(progress.clone())));
        tracing::info!(server = %target.display(), "Redis backup started");
        let result = if s.logical {
            let scope = crate::manifest::LogicalScope { pattern: s.pattern.clone(), db: s.db };
            crate::backup::backup_logical(&job, &target, progress, scope).await?
        } else {
            crate::backup::backup(&job, &target, progress).await?
        };
        let m = &result.manifest;
        let expires: u64 = m.databases.values().map(|d| d.volatile).sum();
        let mut lines = vec![format!(
            "{} of {} from {} (Redis {}, RDB version {}): {} keys in {} database(s), {expires} with a TTL",
            if m.logical.is_some() { "Keys read with DUMP, as an RDB" } else { "RDB" },
            human_bytes(m.rdb_bytes),
            m.server,
            m.redis_version.as_deref().unwrap_or("?"),
            m.rdb_version,
            m.keys(),
            m.databases.len(),
        )];
        for (db, stats) in &m.databases {
            let types: Vec<String> =
                stats.types.iter().map(|(k, t)| format!("{} {}", t.keys, k.name())).collect();
            lines.push(format!("  db{db}: {} keys ({})", stats.keys, types.join(", ")));
        }
        Ok(BackupOutcome {
            snapshot_id: result.snapshot_id,
            parent: None,
            warnings: Vec::new(),
            notes: Vec::new(),
            objects: counts([
                ("databases", m.databases.len() as u64),
                ("keys", m.keys()),
                ("expires", expires),
                ("functions", m.functions),
            ]),
            summary: lines.join("\n"),
            details: serde_json::json!({
                "server": m.server,
                "redis_version": m.redis_version,
                "rdb_version": m.rdb_version,
                "rdb_bytes": m.rdb_bytes,
                "crc64": m.crc64,
                "replication": m.replication,
                "databases": m.databases,
                "logical": m.logical,
            }),
            snapshot: result.snapshot,
        })
    }

    fn restore_modes(&self, request: &RestoreRequest, settings: &RedisRestoreSettings) -> Vec<&'static str> {
        let to_redis = request.target.as_deref().is_some_and(is_redis_url);
        if settings.redis_data_dir.is_some() || to_redis { vec!["physical", "logical"] } else { Vec::new() }
    }

    fn validate_restore(
        &self,
        request: &RestoreRequest,
        settings: &RedisRestoreSettings,
    ) -> Result<(), RedisError> {
        let live_only = !settings.matches.is_empty() || !settings.db_map.is_empty() || settings.replace;
        match (&request.target, &settings.redis_data_dir) {
            (Some(t), None) if is_redis_url(t) => {
                crate::restore_live::parse_db_map(&settings.db_map)?;
                RedisTarget::parse(t)?;
                if request.verify || request.start {
                    return Err(RedisError::Usage(
                        "--verify and --start are for --redis-data-dir; after a live restore compare with `cairn verify ID --against redis://…`".into(),
                    ));
                }
                Ok(())
            }
            _ if live_only => Err(RedisError::Usage(
                "--match, --db-map and --replace select and place keys of a live restore: use them with --to redis://HOST:PORT".into(),
            )),
            (Some(_), Some(_)) => {
                Err(RedisError::Usage("--redis-data-dir names where the RDB goes; leave out --to".into()))
            }
            (None, Some(_)) if request.verify && !request.start => Err(RedisError::Usage(
                "--verify compares the started server with the snapshot: add --start (the RDB itself is always checked as it is written)".into(),
            )),
            _ if !request.paths.is_empty() => Err(RedisError::Usage(format!(
                "a Redis snapshot restores whole; paths select files of directory snapshots (got {:?})",
                request.paths
            ))),
            _ => Ok(()),
        }
    }

    fn restore_hint(&self, _mode: &str) -> String {
        "restore it into a running server (`cairn restore ID --to redis://HOST:PORT [--match PATTERN] [--db-map 0=3]`) or into a data directory for a new instance (`cairn restore ID --redis-data-dir DIR [--start --port P]`)"
            .into()
    }

    async fn restore(
        &self,
        job: RestoreJob<'_>,
        s: &RedisRestoreSettings,
    ) -> Result<RestoreOutcome, RedisError> {
        if let Some(to) = job.request.target.as_deref().filter(|t| is_redis_url(t)) {
            return restore_live(&job, s, to).await;
        }
        let Some(data_dir) = s.redis_data_dir.clone() else {
            return Err(RedisError::Usage(NO_TARGET.into()));
        };
        let opts = RestoreOptions { data_dir: data_dir.clone(), redis_server: s.redis_server.clone() };
        let done = crate::restore::restore(&job, &opts).await?;
        let plan = &done.plan;
        let target = data_dir.display().to_string();
        let mut lines = Vec::new();
        if job.request.dry_run {
            lines.push(format!(
                "would restore the RDB of snapshot {} ({}, {} keys in {} database(s), Redis {}) as {}/dump.rdb{}",
                job.snapshot_id.short(),
                human_bytes(plan.rdb_bytes),
                plan.keys,
                plan.databases,
                plan.redis_version.as_deref().unwrap_or("?"),
                target,
                if plan.replaces { ", replacing the dump.rdb there once the new one is checked" } else { "" }
            ));
            if let Some(port) = plan.start {
                lines.push(format!("  then start redis-server on 127.0.0.1:{port}"));
            }
        } else {
            lines.push(format!(
                "restored the RDB of snapshot {} ({}, {} keys in {} database(s)) as {}/dump.rdb; its CRC-64, key counts and digests match the snapshot",
                job.snapshot_id.short(),
                human_bytes(plan.rdb_bytes),
                plan.keys,
                plan.databases,
                target
            ));
            match &done.server {
                Some(server) => {
                    let loaded: Vec<String> = done.loaded.iter().map(|(db, n)| format!("db{db} {n} keys")).collect();
                    lines.push(format!(
                        "redis-server (pid {}) serves it on 127.0.0.1:{}: {}{}",
                        server.pid,
                        server.port,
                        if loaded.is_empty() { "no keys".into() } else { loaded.join(", ") },
                        if done.checks.is_empty() { String::new() } else { format!("; {} objects verified", done.checks.len()) }
                    ));
                    lines.push("the RDB holds no ACL users or configuration: the server runs with the default user and settings".into());
                }
                None => lines.push(format!(
                    "start a server on it: redis-server --dir {target} --dbfilename dump.rdb (as the user that will own the data)"
                )),
            }
        }
        Ok(RestoreOutcome {
            target,
            objects: counts([
                ("databases", plan.databases as u64),
                ("keys", plan.keys),
                ("verified_objects", done.checks.len() as u64),
            ]),
            bytes: if job.request.dry_run { 0 } else { plan.rdb_bytes },
            warnings: Vec::new(),
            summary: lines.join("\n"),
            details: serde_json::json!({
                "plan": plan,
                "server": done.server.as_ref().map(|s| serde_json::json!({ "pid": s.pid, "port": s.port })),
                "checks": done.checks,
            }),
        })
    }

    fn verifies(&self, target: &str) -> bool {
        is_redis_url(target)
    }

    async fn verify_against(
        &self,
        job: VerifyJob<'_>,
        s: &RedisRestoreSettings,
    ) -> Result<VerifyOutcome, RedisError> {
        let target = RedisTarget::parse(&job.target)?.with_password_file(s.redis_password_file.as_deref())?;
        let manifest = crate::manifest::RedisManifest::read(&job.reader).await?;
        let mut conn = Conn::open(&target).await?;
        let reference = manifest.ctime.map(|s| s * 1000);
        let keyspace =
            live::read_keyspace(&mut conn, manifest.databases.keys().copied(), reference, &job.cancel)
                .await?;
        Ok(VerifyOutcome { target: target.display(), objects: live::compare(&manifest, &keyspace) })
    }

    fn scratch(&self) -> Option<Arc<dyn Scratch>> {
        Some(crate::scratch::RedisScratch::default().arc())
    }
}
