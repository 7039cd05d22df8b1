//! Prometheus metrics of every job, from its report: a node-exporter
//! textfile and/or a Pushgateway.
//!
//! Every job report (backup, restore, verify, check, drill) becomes samples
//! labelled `task` (the job) and `source` (the configured source name, else
//! the kind, else `all`); docs/DESIGN.md, "Restore drills", lists the names.
//! A failed run never overwrites the time of the last success: that sample
//! is only written on success, and both sinks keep what earlier runs
//! wrote — the textfile by replacing only the samples this run has (the
//! file is rewritten beside and renamed, so the collector never reads half
//! of it), the Pushgateway because a `POST` replaces only the metric names
//! it carries within its group (`job="cairn"`, `task`, `source`).
//! Publishing is best effort: a sink that fails is a warning, never the
//! job's failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::JobReport;
use crate::drill::{DrillRecord, Status};

/// Where metrics go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    pub textfile: Option<PathBuf>,
    /// `http://host:port[/path]` of a Pushgateway.
    pub pushgateway: Option<String>,
}

impl MetricsSettings {
    pub fn is_empty(&self) -> bool {
        self.textfile.is_none() && self.pushgateway.is_none()
    }
}

/// One sample: its metric name, labels beyond the group's, and value.
pub type Sample = (&'static str, Vec<(String, String)>, f64);

/// One group of samples: a task and a source.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub task: String,
    pub source: String,
    /// (name, extra labels, value), in the order written.
    pub samples: Vec<Sample>,
}

/// What each metric is, for the `# HELP` lines.
const HELP: &[(&str, &str, &str)] = &[
    ("cairn_job_last_run_timestamp_seconds", "gauge", "When the job last finished (Unix time)."),
    (
        "cairn_job_last_success_timestamp_seconds",
        "gauge",
        "When the job last finished successfully (Unix time).",
    ),
    ("cairn_job_success", "gauge", "1 if the job's last run succeeded (exit code 0), else 0."),
    ("cairn_job_exit_code", "gauge", "The exit code of the job's last run."),
    ("cairn_job_duration_seconds", "gauge", "How long the job's last run took."),
    ("cairn_job_read_bytes", "gauge", "Bytes the last run read from the source (a restore: wrote)."),
    ("cairn_job_added_bytes", "gauge", "New bytes the last backup added, before compression."),
    ("cairn_job_stored_bytes", "gauge", "Bytes the last backup added to the repository."),
    ("cairn_job_objects", "gauge", "The last run's counts (files, tables, rows, ...), by `what`."),
    ("cairn_drill_success", "gauge", "1 if the source's last drill passed every check and met its targets."),
    (
        "cairn_drill_status",
        "gauge",
        "1 for the status (`passed`, `failed`, `missed`, `not-run`) of the last drill.",
    ),
    (
        "cairn_drill_rto_seconds",
        "gauge",
        "Restore start to a verified target, in the last drill that got there.",
    ),
    ("cairn_drill_rpo_seconds", "gauge", "Age of the restore point the last drill took."),
    ("cairn_drill_rto_target_seconds", "gauge", "The source's RTO target."),
    ("cairn_drill_rpo_target_seconds", "gauge", "The source's RPO target."),
    (
        "cairn_drill_phase_seconds",
        "gauge",
        "Seconds of each phase (fetch, restore, verify) of the last drill.",
    ),
    ("cairn_drill_last_run_timestamp_seconds", "gauge", "When the source was last drilled (Unix time)."),
    (
        "cairn_drill_last_success_timestamp_seconds",
        "gauge",
        "When the source last passed a drill (Unix time).",
    ),
];

fn unix(t: chrono::DateTime<chrono::FixedOffset>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// The samples of one job's report.
pub fn job_samples(report: &JobReport) -> Group {
    let source = report.source.clone().or_else(|| report.kind.clone()).unwrap_or_else(|| "all".into());
    let ok = report.exit_code == crate::exit::SUCCESS;
    let mut samples = vec![
        ("cairn_job_last_run_timestamp_seconds", vec![], unix(report.finished)),
        ("cairn_job_success", vec![], if ok { 1.0 } else { 0.0 }),
        ("cairn_job_exit_code", vec![], report.exit_code as f64),
        ("cairn_job_duration_seconds", vec![], report.seconds),
        ("cairn_job_read_bytes", vec![], report.bytes.read as f64),
        ("cairn_job_added_bytes", vec![], report.bytes.added as f64),
        ("cairn_job_stored_bytes", vec![], report.bytes.stored as f64),
    ];
    if ok {
        samples.push(("cairn_job_last_success_timestamp_seconds", vec![], unix(report.finished)));
    }
    for (what, n) in &report.objects {
        samples.push(("cairn_job_objects", vec![("what".into(), what.clone())], *n as f64));
    }
    Group { task: report.job.to_string(), source, samples }
}

/// The samples of a drill: one group per source, plus the drill's own job samples.
pub fn drill_samples(record: &DrillRecord) -> Vec<Group> {
    let mut groups = Vec::new();
    for s in &record.sources {
        let passed = s.status == Status::Passed;
        let mut samples = vec![
            ("cairn_drill_success", vec![], if passed { 1.0 } else { 0.0 }),
            ("cairn_drill_last_run_timestamp_seconds", vec![], unix(record.finished)),
        ];
        for status in [Status::Passed, Status::Failed, Status::Missed, Status::NotRun] {
            let v = if s.status == status { 1.0 } else { 0.0 };
            samples.push(("cairn_drill_status", vec![("status".into(), status.as_str().into())], v));
        }
        if passed {
            samples.push(("cairn_drill_last_success_timestamp_seconds", vec![], unix(record.finished)));
        }
        for (name, v) in [
            ("cairn_drill_rto_seconds", s.rto_seconds),
            ("cairn_drill_rpo_seconds", s.rpo_seconds),
            ("cairn_drill_rto_target_seconds", s.rto_target_seconds),
            ("cairn_drill_rpo_target_seconds", s.rpo_target_seconds),
        ] {
            if let Some(v) = v {
                samples.push((name, vec![], v));
            }
        }
        for (phase, v) in
            [("fetch", s.phases.fetch), ("restore", s.phases.restore), ("verify", s.phases.verify)]
        {
            samples.push(("cairn_drill_phase_seconds", vec![("phase".into(), phase.into())], v));
        }
        let ok = s.status == Status::Passed;
        samples.push(("cairn_job_last_run_timestamp_seconds", vec![], unix(record.finished)));
        samples.push(("cairn_job_success", vec![], if ok { 1.0 } else { 0.0 }));
        samples.push((
            "cairn_job_duration_seconds",
            vec![],
            s.phases.fetch + s.phases.restore + s.phases.verify,
        ));
        samples.push(("cairn_job_read_bytes", vec![], s.bytes_restored as f64));
        if ok {
            samples.push(("cairn_job_last_success_timestamp_seconds", vec![], unix(record.finished)));
        }
        groups.push(Group { task: "drill".into(), source: s.source.clone(), samples });
    }
    groups
}

fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n").replace('"', "\\\"")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

/// `name{labels}` of a sample, the key the textfile merges by.
fn series(name: &str, group: &Group, extra: &[(String, String)], with_group: bool) -> String {
    let mut labels: Vec<(String, String)> = Vec::new();
    if with_group {
        labels.push(("task".into(), group.task.clone()));
        labels.push(("source".into(), group.source.clone()));
    }
    labels.extend(extra.iter().cloned());
    if labels.is_empty() {
        return name.to_string();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label_value(v))).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// Prometheus text exposition of `series → value` lines, with HELP/TYPE per name.
fn exposition(lines: &BTreeMap<String, String>) -> String {
    let mut by_name: BTreeMap<&str, Vec<(&String, &String)>> = BTreeMap::new();
    for (key, value) in lines {
        let name = key.split('{').next().unwrap_or(key);
        by_name.entry(name).or_default().push((key, value));
    }
    let mut text = String::new();
    for (name, samples) in by_name {
        let (kind, help) = HELP
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|(_, k, h)| (*k, *h))
            .unwrap_or(("gauge", "cairn metric."));
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (key, value) in samples {
            let _ = writeln!(text, "{key} {value}");
        }
    }
    text
}

/// The samples of a textfile (comments dropped), by series.
fn parse_textfile(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// Merges `groups` into the textfile at `path` (made if missing).
pub fn write_textfile(path: &Path, groups: &[Group]) -> std::io::Result<()> {
    let mut lines = match std::fs::read_to_string(path) {
        Ok(text) => parse_textfile(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e),
    };
    for g in groups {
        for (name, extra, value) in &g.samples {
            lines.insert(series(name, g, extra, true), number(*value));
        }
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("cairn.prom");
    // node-exporter reads only `*.prom`: the part file is not one.
    let part = path.with_file_name(format!(".{name}.{}.part", std::process::id()));
    std::fs::write(&part, exposition(&lines))?;
    std::fs::rename(&part, path)
}

/// The body a Pushgateway gets for `group` (its labels come from the URL).
pub fn push_body(group: &Group) -> String {
    let lines: BTreeMap<String, String> = group
        .samples
        .iter()
        .map(|(name, extra, value)| (series(name, group, extra, false), number(*value)))
        .collect();
    exposition(&lines)
}

fn path_segment(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// POSTs `group` to the Pushgateway at `url` (plain `http://`).
pub async fn push(url: &str, group: &Group) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("the Pushgateway URL must start with http:// ({})", cairn_store::redact(url))
    })?;
    let (authority, base) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{}", p.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let address = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    let body = push_body(group);
    let path = format!(
        "{}/metrics/job/cairn/task/{}/source/{}",
        base.trim_end_matches('/'),
        path_segment(&group.task),
        path_segment(&group.source)
    );
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&address).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("the Pushgateway at {address} did not answer within 10s"))?
        .map_err(|e| format!("pushing to {address}: {e}"))?;
    let status = String::from_utf8_lossy(&response).lines().next().unwrap_or("").to_string();
    match status.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        _ => Err(format!("the Pushgateway at {address} answered {status:?}")),
    }
}

/// Sends `groups` wherever `settings` say; failures are logged as warnings.
pub async fn publish(settings: &MetricsSettings, groups: &[Group]) {
    if let Some(path) = &settings.textfile
        && let Err(e) = write_textfile(path, groups)
    {
        tracing::warn!(file = %path.display(), error = %e, "could not write the metrics textfile");
    }
    if let Some(url) = &settings.pushgateway {
        for g in groups {
            if let Err(e) = push(url, g).await {
                tracing::warn!(error = %e, "could not push metrics to the Pushgateway");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ok: bool) -> JobReport {
        let mut r = JobReport::start("backup");
        r.source = Some("site".into());
        r.kind = Some("volume".into());
        r.bytes.read = 1024;
        r.objects.insert("files".into(), 3);
        if !ok {
            r.exit_code = 1;
        }
        r.finish()
    }

    #[test]
    fn a_failed_run_keeps_the_last_success_in_the_textfile() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cairn.prom");
        let good = report(true);
        write_textfile(&file, &[job_samples(&good)]).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let success = format!(
            "cairn_job_last_success_timestamp_seconds{{task=\"backup\",source=\"site\"}} {}",
            number(unix(good.finished))
        );
        assert!(text.contains(&success), "{text}");
        assert!(
            text.contains("cairn_job_objects{task=\"backup\",source=\"site\",what=\"files\"} 3"),
            "{text}"
        );
        assert!(text.contains("# TYPE cairn_job_success gauge"));
        write_textfile(&file, &[job_samples(&report(false))]).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(&success), "the last success was lost: {text}");
        assert!(text.contains("cairn_job_success{task=\"backup\",source=\"site\"} 0"), "{text}");
        assert_eq!(text.matches("# TYPE cairn_job_success gauge").count(), 1);
        assert!(std::fs::read_dir(dir.path()).unwrap().count() == 1, "a part file was left");
    }

    #[test]
    fn push_bodies_leave_the_group_labels_to_the_url() {
        let body = push_body(&job_samples(&report(true)));
        assert!(body.contains("\ncairn_job_success 1\n"), "{body}");
        assert!(body.contains("cairn_job_objects{what=\"files\"} 3"), "{body}");
        assert_eq!(path_segment("app db/1"), "app%20db%2F1");
    }
}
