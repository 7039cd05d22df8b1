//! One module per subcommand family; [`run`] dispatches and turns the
//! outcome into an exit code.

mod backup;
mod postgres;
mod replicate;
mod repo;
mod restore;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use cairn_repo::lock::LockGuard;

use crate::cli::{Cli, Command};
use crate::context::Context;
use crate::exit;
use crate::output::init_logging;

/// `wal-fetch` failed for a reason other than "not archived": recovery must
/// stop (exit code 126) rather than end early at the wrong point.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}; recovery must stop here (exit 126), not end early")]
pub struct StopRecovery(pub anyhow::Error);

/// What a command holds on the repository while it works: the repository
/// lock and, for runs that write snapshots, the DynamoDB lease when
/// `lock_table` is configured. Taken with [`RepoLock::for_backup`] or
/// [`RepoLock::acquire`], given back with [`RepoLock::finish`], which also
/// decides how the run ends. While held:
///
/// * every snapshot write of the repository first proves the lock is
///   still held and fresh, and the lease (if any) still ours with a third
///   of it to spare ([`LockGuard::commit_check`],
///   [`cairn_dynamodb::Lease::commit_check`]); either failing refuses the
///   write (exit 11), so a run that stalled is fenced off even if it wakes
///   up just before its commit;
/// * when either is lost (refreshes failing past the bound, the lock file
///   removed, the lease taken over), the command's `cancel` hook is called,
///   so it stops at its next step.
pub struct RepoLock {
    lock: LockGuard,
    lease: Option<cairn_dynamodb::Lease>,
    /// Calls the cancel hook once the lock or the lease is lost.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

/// A command's way to stop early (sets its progress' cancel flag).
pub type CancelHook = Box<dyn Fn() + Send + 'static>;

impl RepoLock {
    /// The lease (if configured), then a shared lock: for runs that write snapshots.
    pub async fn for_backup(
        ctx: &Context,
        repo: &cairn_repo::Repository,
        cancel: impl Fn() + Send + 'static,
    ) -> anyhow::Result<RepoLock> {
        let lease = acquire_lease(ctx).await?;
        Self::take(repo, false, lease, Some(Box::new(cancel))).await
    }

    /// The repository lock alone; `cancel`, when the command has one, stops
    /// it once the lock is lost.
    pub async fn acquire(
        repo: &cairn_repo::Repository,
        exclusive: bool,
        cancel: Option<CancelHook>,
    ) -> anyhow::Result<RepoLock> {
        Self::take(repo, exclusive, None, cancel).await
    }

    async fn take(
        repo: &cairn_repo::Repository,
        exclusive: bool,
        lease: Option<cairn_dynamodb::Lease>,
        cancel: Option<CancelHook>,
    ) -> anyhow::Result<RepoLock> {
        let lock = LockGuard::acquire_with(repo, exclusive, crate::context::lock_timing()?).await?;
        repo.add_commit_check(lock.commit_check());
        let mut lost = vec![lock.lost_flag()];
        if let Some(lease) = &lease {
            let check = lease.commit_check();
            repo.add_commit_check(Arc::new(move || {
                let check = check.clone();
                Box::pin(async move { check.confirm().await.map_err(|e| e.to_string()) })
            }));
            lost.push(lease.lost_flag());
        }
        let watcher = cancel.map(|cancel| {
            tokio::spawn(async move {
                while !lost.iter().any(|flag| flag.load(Ordering::Relaxed)) {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                cancel();
            })
        });
        Ok(RepoLock { lock, lease, watcher })
    }

    /// Gives the lock (and lease) back and returns the run's outcome. The
    /// command's own result wins over a failed release, which is only a
    /// warning (a saved snapshot stays saved, an error keeps its exit
    /// code). A lost lock or lease fails a run that did not finish: it is
    /// why a cancelled run stopped (exit 11), and it makes any other error
    /// suspect (named together with it). A run that finished before the
    /// loss stands, with a warning.
    pub async fn finish<T>(self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
        let mut lost: Option<anyhow::Error> = self.lock.lost_error().map(Into::into);
        let lease_lost = match &self.lease {
            Some(lease) if lease.is_lost() => lease.check().await.err(),
            _ => None,
        };
        if let Err(e) = self.lock.release().await {
            tracing::warn!(
                error = %e,
                "could not remove the repository lock: it goes stale {} minutes after its last refresh, \
                 and `cairn unlock` on this host removes it as soon as this process has ended",
                cairn_repo::lock::STALE_AFTER.as_secs() / 60
            );
        }
        match (self.lease, lease_lost) {
            (_, Some(e)) => lost = lost.or(Some(e.into())),
            (Some(lease), None) => {
                if let Err(e) = lease.release().await {
                    tracing::warn!(
                        error = %e,
                        "could not release the DynamoDB lease: it expires by itself once its lock_lease runs out"
                    );
                }
            }
            (None, None) => {}
        }
        match (result, lost) {
            (result, None) => result,
            (Ok(value), Some(lost)) => {
                tracing::warn!(
                    error = %format!("{lost:#}"),
                    "the lock was lost only after the command had finished; its result stands"
                );
                Ok(value)
            }
            (Err(e), Some(lost)) if matches!(exit::code_for(&e), exit::INTERRUPTED | exit::LOCKED) => {
                Err(lost)
            }
            (Err(e), Some(lost)) => Err(lost.context(format!("{e:#}"))),
        }
    }
}

/// The DynamoDB lease on the repository, when `lock_table` is configured
/// (`CAIRN_LOCK_TABLE` or cairn.yaml): taken before the repository lock,
/// held by a heartbeat for the whole run.
async fn acquire_lease(ctx: &Context) -> anyhow::Result<Option<cairn_dynamodb::Lease>> {
    let cfg = ctx.config.as_ref();
    let Some(table) = std::env::var("CAIRN_LOCK_TABLE")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| cfg.and_then(|c| c.lock_table.clone()))
    else {
        return Ok(None);
    };
    let duration =
        |env: &str, from_cfg: Option<String>, default: std::time::Duration| match std::env::var(env)
            .ok()
            .filter(|v| !v.is_empty())
            .or(from_cfg)
        {
            Some(v) => crate::cli::parse_duration(&v).map_err(|e| anyhow::anyhow!("{env}: {e}")),
            None => Ok(default),
        };
    let config = cairn_dynamodb::LeaseConfig {
        wait: duration("CAIRN_LOCK_WAIT", cfg.and_then(|c| c.lock_wait.clone()), std::time::Duration::ZERO)?,
        lease: duration(
            "CAIRN_LOCK_LEASE",
            cfg.and_then(|c| c.lock_lease.clone()),
            std::time::Duration::from_secs(60),
        )?,
        ..cairn_dynamodb::LeaseConfig::new(table)
    };
    let (host, user) = cairn_repo::host_and_user();
    let owner = format!("{user}@{host}/{}", std::process::id());
    Ok(Some(cairn_dynamodb::Lease::acquire(&config, &ctx.location()?, &owner).await?))
}

/// The snapshot catalog, when `catalog_table` (or `CAIRN_CATALOG_TABLE`) is set.
pub async fn catalog(ctx: &Context) -> anyhow::Result<Option<cairn_dynamodb::Catalog>> {
    let Some(table) = std::env::var("CAIRN_CATALOG_TABLE")
        .ok()
        .filter(|t| !t.is_empty())
        .or_else(|| ctx.config.as_ref().and_then(|c| c.catalog_table.clone()))
    else {
        return Ok(None);
    };
    let client = cairn_dynamodb::client(None, None).await;
    Ok(Some(cairn_dynamodb::Catalog::open(client, &table).await?))
}

/// The catalog's view of a snapshot.
pub fn catalog_entry(
    location: &str,
    id: &cairn_repo::Id,
    snap: &cairn_repo::Snapshot,
) -> cairn_dynamodb::CatalogEntry {
    let meta = snap.cairn.as_ref();
    let summary = snap.summary.clone().unwrap_or_default();
    cairn_dynamodb::CatalogEntry {
        repository: location.to_string(),
        snapshot: id.to_hex(),
        time: snap.time.to_rfc3339(),
        hostname: snap.hostname.clone(),
        source_kind: meta.map(|m| m.source_kind.clone()).unwrap_or_else(|| "restic".into()),
        source_name: meta.and_then(|m| m.source_name.clone()).unwrap_or_default(),
        paths: snap.paths.clone(),
        tags: snap.tags.clone(),
        size: summary.total_bytes_processed,
        added: summary.data_added_packed,
        status: if meta.is_some_and(|m| !m.warnings.is_empty()) {
            "partial".into()
        } else {
            "complete".into()
        },
    }
}

/// After a snapshot landed: records it in the catalog, if there is one. The
/// repository is the truth, so a failure here is a warning, not a failed backup.
pub async fn record_snapshot(ctx: &Context, id: &cairn_repo::Id, snap: &cairn_repo::Snapshot) {
    let recorded = async {
        if let Some(catalog) = catalog(ctx).await? {
            catalog.put_snapshot(&catalog_entry(&ctx.location()?, id, snap)).await?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %format!("{e:#}"), "snapshot saved, but the catalog could not record it; run `cairn catalog rebuild`");
    }
}

/// Records a verification result in the catalog, if there is one (warning on failure).
pub async fn record_verification(ctx: &Context, id: &cairn_repo::Id, kind: &str, ok: bool, detail: &str) {
    let recorded = async {
        if let Some(catalog) = catalog(ctx).await? {
            let v = cairn_dynamodb::Verification {
                repository: ctx.location()?,
                snapshot: id.to_hex(),
                time: chrono::Utc::now().to_rfc3339(),
                kind: kind.into(),
                ok,
                detail: detail.into(),
            };
            catalog.put_verification(&v).await?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %format!("{e:#}"), "the catalog could not record the verification result");
    }
}

/// Damage found by `check` or `verify` (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Damage(pub String);

/// Which signal asked us to stop (0 = none); shared with long commands so
/// they can stop cleanly and pick the right exit code.
#[derive(Default)]
pub struct Stop {
    signal: AtomicU8,
    hooks: std::sync::Mutex<Vec<Box<dyn Fn() + Send>>>,
}

impl Stop {
    /// Runs `hook` when a stop signal arrives (e.g. to set a cancel flag).
    pub fn on_stop(&self, hook: impl Fn() + Send + 'static) {
        self.hooks.lock().expect("stop hooks").push(Box::new(hook));
    }

    pub fn exit_code(&self) -> Option<u8> {
        match self.signal.load(Ordering::Relaxed) {
            0 => None,
            15 => Some(exit::TERMINATED),
            _ => Some(exit::INTERRUPTED),
        }
    }

    fn trigger(&self, signal: u8) {
        if self.signal.swap(signal, Ordering::Relaxed) != 0 {
            // Second signal: the user means it.
            std::process::exit(i32::from(128 + signal));
        }
        tracing::warn!(signal, "stopping: finishing in-flight uploads so the next run can reuse them");
        for h in self.hooks.lock().expect("stop hooks").iter() {
            h();
        }
    }
}

fn watch_signals(stop: Arc<Stop>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
            return;
        };
        loop {
            let sig = tokio::select! {
                _ = int.recv() => 2,
                _ = term.recv() => 15,
            };
            stop.trigger(sig);
        }
    });
}

pub async fn run(cli: Cli) -> u8 {
    let ctx = match Context::new(&cli.global) {
        Ok(c) => c,
        Err(e) => {
            init_logging(crate::output::LogFormat::Text, 0, false);
            return report_error(&e, false);
        }
    };
    init_logging(ctx.log_format, cli.global.verbose, cli.global.quiet);
    let stop = Arc::new(Stop::default());
    watch_signals(stop.clone());
    let result = match cli.command {
        Command::Init => repo::init(&ctx).await,
        Command::Backup(args) => backup::run(&ctx, args, stop.clone()).await,
        Command::Snapshots(args) => repo::snapshots(&ctx, args).await,
        Command::Ls(args) => restore::ls(&ctx, args).await,
        Command::Restore(args) => restore::restore(&ctx, args, stop.clone()).await,
        Command::Check(args) => repo::check(&ctx, args).await,
        Command::Verify(args) => restore::verify(&ctx, args).await,
        Command::Stats(args) => repo::stats(&ctx, args).await,
        Command::Key(args) => repo::key(&ctx, args).await,
        Command::Unlock(args) => repo::unlock(&ctx, args).await,
        Command::Replicate(args) => replicate::run(&ctx, args).await,
        Command::WalPush(args) => postgres::wal_push(&ctx, args).await,
        Command::WalFetch(args) => postgres::wal_fetch(&ctx, args).await,
        Command::Wal(args) => postgres::wal(&ctx, args).await,
        Command::Catalog(args) => repo::catalog(&ctx, args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => match stop.exit_code() {
            Some(code) => {
                report_error(&e, ctx.json_logs());
                code
            }
            None => report_error(&e, ctx.json_logs()),
        },
    }
}

/// Prints the error as one line (or one JSON object) and returns its exit code.
fn report_error(e: &anyhow::Error, json: bool) -> u8 {
    let code = exit::code_for(e);
    let message = format!("{e:#}");
    if json {
        println!("{}", serde_json::json!({"level": "ERROR", "message": message, "exit_code": code}));
    } else {
        eprintln!("cairn: {message}");
    }
    code
}

/// Prints a JSON value on stdout (command results in `--json` mode).
pub fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string(value).expect("JSON values serialise"));
}
