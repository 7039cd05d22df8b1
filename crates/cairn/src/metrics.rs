//! Where every job's metrics go: `--metrics-textfile` / `--pushgateway`
//! (or their environment variables), else `metrics:` in cairn.yaml. The
//! samples themselves are the engine's ([`cairn_engine::metrics`]).

use cairn_engine::JobReport;
use cairn_engine::drill::DrillRecord;
use cairn_engine::metrics::{MetricsSettings, drill_samples, job_samples, publish};

use crate::context::Context;

/// The sinks of this run.
pub fn settings(ctx: &Context) -> MetricsSettings {
    let file = ctx.config.as_ref().and_then(|c| c.metrics.clone()).unwrap_or_default();
    MetricsSettings {
        textfile: ctx.metrics.textfile.clone().or(file.textfile),
        pushgateway: ctx.metrics.pushgateway.clone().or(file.pushgateway),
    }
}

/// Publishes one job's report (every job's report passes here).
pub async fn job(ctx: &Context, report: &JobReport) {
    let settings = settings(ctx);
    if !settings.is_empty() {
        publish(&settings, &[job_samples(report)]).await;
    }
}

/// Publishes a drill: per source its results and its job samples.
pub async fn drill(ctx: &Context, record: &DrillRecord) {
    let settings = settings(ctx);
    if !settings.is_empty() {
        publish(&settings, &drill_samples(record)).await;
    }
}
