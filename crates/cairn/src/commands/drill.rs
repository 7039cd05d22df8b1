//! `cairn drill` and `cairn drill history`: the configured drills turned
//! into the engine's plans, and their records printed and reported.

use anyhow::{Context as _, Result, bail};
use cairn_engine::drill::{Assertion, DrillPlan, DrillRecord, Pick, Status};
use cairn_source::AnySettings;

use crate::cli::{DrillAction, DrillArgs};
use crate::config::DrillConfig;
use crate::context::Context;
use crate::exit;

pub async fn run(ctx: &Context, args: DrillArgs) -> Result<u8> {
    match args.action {
        Some(DrillAction::History { sources }) => history(ctx, &sources).await,
        None => drill(ctx, &args).await,
    }
}

/// The drills to run: those configured, narrowed to `--source`.
fn configured(ctx: &Context, only: &[String]) -> Result<Vec<DrillConfig>> {
    let Some(cfg) = &ctx.config else {
        bail!(
            "cairn drill needs a config file with `drills:` (pass --config cairn.yaml or set CAIRN_CONFIG)"
        );
    };
    let env = |n: &str| std::env::var(n).ok();
    let drills = cfg.all_drills(&env)?;
    if drills.is_empty() {
        bail!(
            "{} configures no drills: add `drills:` (or policies/drill-*.yaml) naming a source",
            cfg.path.display()
        );
    }
    for name in only {
        if !drills.iter().any(|d| &d.source == name) {
            bail!(
                "no drill is configured for source {name:?} (configured: {})",
                drills.iter().map(|d| d.source.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(drills.into_iter().filter(|d| only.is_empty() || only.contains(&d.source)).collect())
}

/// One configured drill as the engine's plan (every key checked).
fn plan(ctx: &Context, drill: &DrillConfig) -> Result<DrillPlan> {
    let cfg = ctx.config.as_ref().expect("checked by configured()");
    let what = || format!("drill of source {:?}", drill.source);
    let src = cfg.source(&drill.source).with_context(what)?;
    let Some(source) = ctx.registry.get(&src.kind) else {
        bail!("{}: this build has no {:?} source", what(), src.kind);
    };
    let env = |n: &str| std::env::var(n).ok();
    let settings = source
        .settings_from_config(src.keys.clone(), &cfg.path, &env)
        .map_err(|e| anyhow::anyhow!("source {:?} (kind {}): {e}", drill.source, src.kind))?;
    let mode = source.mode(&*settings).to_string();
    let pick = Pick::parse(drill.pick.as_deref().unwrap_or("latest"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
    // Restore flags are the adapters' own `cairn restore` flags, parsed as that command would.
    let argv = ["restore", "latest"].into_iter().map(String::from).chain(drill.restore_flags.iter().cloned());
    let restore = ctx
        .registry
        .iter()
        .fold(clap::Command::new("restore").arg(clap::Arg::new("snapshot")), |cmd, s| s.augment_restore(cmd))
        .try_get_matches_from(argv)
        .map_err(|e| {
            let first = e.to_string().lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
            anyhow::anyhow!("{}: restore_flags: {first}", what())
        })?;
    let restore_settings: Vec<(String, Box<dyn AnySettings>)> = ctx
        .registry
        .iter()
        .map(|s| Ok((s.descriptor().kind.to_string(), s.restore_settings_from_args(&restore)?)))
        .collect::<Result<_, clap::Error>>()?;
    let mut assertions = Vec::new();
    for (i, a) in drill.assertions.iter().enumerate() {
        let probes: Vec<(&String, &String)> = a.iter().filter(|(k, _)| k.as_str() != "expect").collect();
        let [(probe, argument)] = probes[..] else {
            bail!(
                "{}: assert[{i}] must name one probe (sql:, file:, sha256:, glob:) and optionally expect:",
                what()
            );
        };
        assertions.push(Assertion {
            probe: probe.clone(),
            argument: argument.clone(),
            expect: a.get("expect").cloned().unwrap_or_else(|| "true".into()),
        });
    }
    Ok(DrillPlan {
        source: drill.source.clone(),
        kind: src.kind.clone(),
        mode,
        pick,
        restore_settings,
        assertions,
        rto: drill.rto.map(|s| s.0),
        rpo: drill.rpo.map(|s| s.0),
    })
}

/// A drill id: short, unique enough per repository, safe in names.
fn new_id() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{:08x}", (nanos as u64 ^ ((std::process::id() as u64) << 32)) & 0xffff_ffff)
}

async fn drill(ctx: &Context, args: &DrillArgs) -> Result<u8> {
    let drills = configured(ctx, &args.sources)?;
    let plans = drills.iter().map(|d| plan(ctx, d)).collect::<Result<Vec<_>>>()?;
    let engine = ctx.engine()?;
    engine.check_drill_plans(&plans)?;
    if let Some(dir) = &args.report_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the report directory {}", dir.display()))?;
    }
    let record = engine.drill(&new_id(), &plans).await?;
    if let Some(dir) = &args.report_dir {
        // The past drills of these sources, this one included, for the charts.
        let past = match engine.open().await {
            Ok(repo) => cairn_engine::drill::history(&repo).await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let mut past: Vec<DrillRecord> = past.into_iter().filter(|r| r.id != record.id).collect();
        past.push(record.clone());
        let written = crate::report::write(dir, &record, &past)?;
        tracing::info!(files = ?written, "drill report written");
    }
    crate::metrics::drill(ctx, &record).await;
    print(ctx, &record);
    Ok(record.exit_code)
}

fn seconds(v: Option<f64>) -> String {
    v.map(crate::report::duration).unwrap_or_else(|| "-".into())
}

fn print(ctx: &Context, record: &DrillRecord) {
    if ctx.json() {
        super::print_json(&serde_json::to_value(record).expect("records serialise"));
    } else {
        println!("drill {} ({} sources, {:.1}s)", record.id, record.sources.len(), record.seconds);
        for s in &record.sources {
            println!(
                "  {:<20} {:<8} snapshot {:<8} RTO {:>8} (fetch {:.1}s, restore {:.1}s, verify {:.1}s)  RPO {:>8}",
                s.source,
                s.status.as_str(),
                s.snapshot.as_deref().map(|i| &i[..8.min(i.len())]).unwrap_or("-"),
                seconds(s.rto_seconds),
                s.phases.fetch,
                s.phases.restore,
                s.phases.verify,
                seconds(s.rpo_seconds)
            );
        }
    }
    if ctx.log_format == crate::output::LogFormat::Text {
        for s in &record.sources {
            for e in &s.errors {
                eprintln!("cairn: drill: {e}");
            }
        }
    }
}

async fn history(ctx: &Context, sources: &[String]) -> Result<u8> {
    let repo = ctx.open().await?;
    let records = cairn_engine::drill::history(&repo).await?;
    let rows: Vec<(&DrillRecord, &cairn_engine::drill::SourceResult)> = records
        .iter()
        .flat_map(|r| r.sources.iter().map(move |s| (r, s)))
        .filter(|(_, s)| sources.is_empty() || sources.contains(&s.source))
        .collect();
    if ctx.json() {
        let value: Vec<serde_json::Value> = rows
            .iter()
            .map(|(r, s)| {
                serde_json::json!({ "drill": r.id, "started": r.started, "exit_code": r.exit_code, "result": s })
            })
            .collect();
        super::print_json(&serde_json::Value::Array(value));
        return Ok(exit::SUCCESS);
    }
    println!(
        "{:<20} {:<10} {:<20} {:<8} {:<9} {:>9} {:>9} {:>9} {:>9}",
        "started", "drill", "source", "snapshot", "status", "RTO", "target", "RPO", "target"
    );
    for (r, s) in &rows {
        println!(
            "{:<20} {:<10} {:<20} {:<8} {:<9} {:>9} {:>9} {:>9} {:>9}",
            r.started.format("%Y-%m-%d %H:%M:%S"),
            r.id,
            s.source,
            s.snapshot.as_deref().map(|i| &i[..8.min(i.len())]).unwrap_or("-"),
            s.status.as_str(),
            seconds(s.rto_seconds),
            seconds(s.rto_target_seconds),
            seconds(s.rpo_seconds),
            seconds(s.rpo_target_seconds)
        );
    }
    let passed = rows.iter().filter(|(_, s)| s.status == Status::Passed).count();
    println!("{} drills of sources, {passed} passed", rows.len());
    Ok(exit::SUCCESS)
}
