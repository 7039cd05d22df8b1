//! One module per subcommand family; [`run`] dispatches, prints the result
//! and turns the outcome into an exit code.

mod backup;
mod drill;
mod forget;
mod postgres;
mod replicate;
mod repo;
mod restore;

pub use replicate::Lagging;

use std::sync::Arc;

use cairn_engine::{Hold, JobReport, Stop, StopReason};
use cairn_source::Registry;

use crate::cli::{Cli, Command};
use crate::context::Context;
use crate::exit;
use crate::output::init_logging;

/// `wal-fetch` failed for a reason other than "not archived": recovery must
/// stop (exit code 126) rather than end early at the wrong point.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}; recovery must stop here (exit 126), not end early")]
pub struct StopRecovery(pub anyhow::Error);

/// Damage found by `check` or `wal verify` (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Damage(pub String);

/// The snapshot catalog, when `catalog_table` (or `CAIRN_CATALOG_TABLE`) is set.
pub async fn catalog(ctx: &Context) -> anyhow::Result<Option<cairn_dynamodb::Catalog>> {
    Ok(cairn_engine::open_catalog(&ctx.catalog_table()).await?)
}

/// Runs `work` under the repository lock (exclusive for key changes), with
/// the engine's rules: a lost lock stops the run (exit 11), and the work's
/// own result wins over a failed release.
pub async fn locked<T>(
    ctx: &Context,
    repo: &cairn_repo::Repository,
    exclusive: bool,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let hold = Hold::take(repo, exclusive, None, &ctx.stop).await?;
    let result = work.await;
    let finished = hold.finish(Ok(())).await;
    match (result, finished) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(e)) => Err(e.into()),
        (Err(e), _) => Err(e),
    }
}

/// SIGINT and SIGTERM stop the run (the token every job watches); a second
/// signal ends the process at once.
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
            if stop.is_stopped() && matches!(stop.reason(), Some(StopReason::Signal(_))) {
                std::process::exit(128 + sig);
            }
            stop.stop(StopReason::Signal(sig));
        }
    });
}

/// The job name a command's report carries.
fn job_name(command: &Command) -> &'static str {
    match command {
        Command::Init => "init",
        Command::Backup(_) => "backup",
        Command::Snapshots(_) => "snapshots",
        Command::Ls(_) => "ls",
        Command::Restore(_) => "restore",
        Command::Check(_) => "check",
        Command::Verify(_) => "verify",
        Command::Stats(_) => "stats",
        Command::Key(_) => "key",
        Command::Unlock(_) => "unlock",
        Command::Replicate(_) => "replicate",
        Command::WalPush(_) => "wal-push",
        Command::WalFetch(_) => "wal-fetch",
        Command::Wal(_) => "wal",
        Command::Catalog(_) => "catalog",
        Command::Forget(_) => "forget",
        Command::Prune(_) => "prune",
        Command::Drill(_) => "drill",
    }
}

pub async fn run(cli: Cli, matches: clap::ArgMatches, registry: Registry) -> u8 {
    let stop = Arc::new(Stop::new());
    // From the start: a pod told to stop while it opens a slow bucket or
    // waits for a lease stops at once.
    watch_signals(stop.clone());
    let job = job_name(&cli.command);
    let ctx = match Context::new(&cli.global, registry, stop.clone()) {
        Ok(c) => c,
        Err(e) => {
            init_logging(crate::output::LogFormat::Text, 0, false);
            let json_logs = cli.global.log_format == Some(crate::output::LogFormat::Json);
            return report_error(job, &e, cli.global.json, json_logs, &stop);
        }
    };
    init_logging(ctx.log_format, cli.global.verbose, cli.global.quiet);
    let sub = matches.subcommand().map(|(_, m)| m.clone()).unwrap_or_default();
    let result = match cli.command {
        Command::Init => repo::init(&ctx).await,
        Command::Backup(args) => backup::run(&ctx, args, &sub).await,
        Command::Snapshots(args) => repo::snapshots(&ctx, args).await,
        Command::Ls(args) => restore::ls(&ctx, args).await,
        Command::Restore(args) => restore::restore(&ctx, args, &sub).await,
        Command::Check(args) => repo::check(&ctx, args).await,
        Command::Verify(args) => restore::verify(&ctx, args, &sub).await,
        Command::Stats(args) => repo::stats(&ctx, args).await,
        Command::Key(args) => repo::key(&ctx, args).await,
        Command::Unlock(args) => repo::unlock(&ctx, args).await,
        Command::Replicate(args) => replicate::run(&ctx, args).await,
        Command::WalPush(args) => postgres::wal_push(&ctx, args).await,
        Command::WalFetch(args) => postgres::wal_fetch(&ctx, args).await,
        Command::Wal(args) => postgres::wal(&ctx, args).await,
        Command::Catalog(args) => repo::catalog(&ctx, args).await,
        Command::Forget(args) => forget::forget(&ctx, args).await,
        Command::Prune(args) => forget::prune(&ctx, args).await,
        Command::Drill(args) => drill::run(&ctx, args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => report_error(job, &e, ctx.json(), ctx.log_format == crate::output::LogFormat::Json, &stop),
    }
}

/// Prints the error: as one line on stderr (text logs), and with `--json` or
/// JSON logs as a job report on stdout (with JSON logs that report is the
/// only record, so a CronJob's log holds the error once). Returns its exit code.
fn report_error(job: &'static str, e: &anyhow::Error, json: bool, json_logs: bool, stop: &Stop) -> u8 {
    let code = exit::code_for(e, stop.reason().as_ref());
    let message = format!("{e:#}");
    if !json_logs {
        eprintln!("cairn: {message}");
    }
    if json || json_logs {
        let mut report = JobReport::start(job);
        report.errors.push(message);
        report.exit_code = code;
        print_json(&report.finish().to_json());
    }
    code
}

/// Prints a job's report: one JSON line on stdout with `--json` (or JSON
/// logs), else its summary; with text logs its warnings and errors also go
/// to stderr. Publishes its metrics (every job's report passes here).
/// Returns its exit code.
pub async fn print_report(ctx: &Context, report: &JobReport) -> u8 {
    crate::metrics::job(ctx, report).await;
    if ctx.json() {
        print_json(&report.to_json());
    } else {
        if !report.summary.is_empty() {
            println!("{}", report.summary);
        }
        if report.job == "backup"
            && let Some(id) = &report.snapshot
        {
            println!(
                "snapshot {} saved ({} read, {} new, {} stored)",
                &id[..8],
                crate::output::bytes(report.bytes.read),
                crate::output::bytes(report.bytes.added),
                crate::output::bytes(report.bytes.stored)
            );
        }
    }
    if ctx.log_format == crate::output::LogFormat::Text {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        for e in &report.errors {
            eprintln!("cairn: {e}");
        }
    }
    report.exit_code
}

/// A command that printed its result and still fails (damage found): with
/// `--json` the printed result is the whole output and the failure only its
/// exit code; in text mode the failure is one more line on stderr.
pub fn failed_after_result(ctx: &Context, e: anyhow::Error) -> anyhow::Result<u8> {
    if !ctx.json() {
        return Err(e);
    }
    if ctx.log_format == crate::output::LogFormat::Text {
        eprintln!("cairn: {e:#}");
    }
    Ok(exit::code_for(&e, ctx.stop.reason().as_ref()))
}

/// Prints a JSON value on stdout (command results in `--json` mode).
pub fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string(value).expect("JSON values serialise"));
}
