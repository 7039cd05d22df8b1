//! `cairn backup <kind> …` and `cairn backup --source NAME`.

use anyhow::{Result, bail};
use cairn_engine::BackupRequest;

use super::print_report;
use crate::cli::BackupArgs;
use crate::context::Context;
use crate::output::Ticker;

pub async fn run(ctx: &Context, args: BackupArgs, matches: &clap::ArgMatches) -> Result<u8> {
    let registry = &ctx.registry;
    let file_host = ctx.config.as_ref().and_then(|c| c.host.clone());
    let retention =
        args.source.as_ref().and_then(|name| ctx.config.as_ref()?.source(name).ok()?.retention.clone());
    let (kind, settings, source_name, source_host, mut tags) = match (matches.subcommand(), &args.source) {
        (Some((kind, flags)), None) => {
            let source = registry.get(kind).expect("clap only offers registered kinds");
            (kind.to_string(), source.settings_from_args(flags)?, None, None, Vec::new())
        }
        (None, Some(name)) => {
            let Some(cfg) = &ctx.config else {
                bail!("--source needs a config file: pass --config cairn.yaml (or set CAIRN_CONFIG)");
            };
            let src = cfg.source(name)?;
            let Some(source) = registry.get(&src.kind) else {
                bail!(
                    "source {name:?} in {} has kind {:?}, which this build cannot back up (known kinds: {})",
                    cfg.path.display(),
                    src.kind,
                    registry.kinds().join(", ")
                );
            };
            let env = |n: &str| std::env::var(n).ok();
            let settings = source.settings_from_config(src.keys.clone(), &cfg.path, &env).map_err(|e| {
                anyhow::anyhow!(
                    "source {name:?} (kind {}): {}",
                    src.kind,
                    e.to_string().replace("config file ", "in ")
                )
            })?;
            (src.kind.clone(), settings, Some(name.clone()), src.host.clone(), src.tags.clone())
        }
        (Some(_), Some(name)) => {
            bail!("give either --source {name} or a kind with its flags, not both")
        }
        (None, None) => bail!(
            "say what to back up: `cairn backup {} …` or `cairn backup --source NAME` (see `cairn backup --help`)",
            registry.kinds().join("|")
        ),
    };
    tags.extend(args.tags.iter().cloned());
    let engine = ctx.engine()?;
    let ticker = Ticker::job(ctx.progress, "backup", engine.progress());
    let mut report = engine
        .backup(BackupRequest {
            kind,
            source_name: source_name.clone(),
            settings,
            tags,
            host: args.host.clone().or(source_host).or(file_host),
            replicate: !args.no_replicate,
        })
        .await;
    ticker.finish();
    if let (Some(retention), Some(name), true) =
        (retention, source_name, matches!(report.exit_code, crate::exit::SUCCESS | crate::exit::PARTIAL))
    {
        match super::forget::after_backup(ctx, &name, &retention).await {
            Ok(details) => report.details["retention"] = details,
            Err(e) => {
                report.errors.push(format!(
                    "the snapshot is saved, but applying the source's retention failed: {e:#}"
                ));
                report.exit_code =
                    crate::exit::code_for(&e, ctx.stop.reason().as_ref()).max(crate::exit::FAILURE);
            }
        }
    }
    Ok(print_report(ctx, &report).await)
}
