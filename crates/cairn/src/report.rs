//! Drill reports for people and machines: JSON (the record as stored),
//! Markdown, and one self-contained HTML page (no scripts, no external
//! resources: a table per source and inline SVG charts of RTO and RPO over
//! past drills, against their targets).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use cairn_engine::drill::{DrillRecord, SourceResult};

/// Writes `drill-<entry>.json`, `.md` and `.html` into `dir`; returns their paths.
pub fn write(dir: &Path, record: &DrillRecord, history: &[DrillRecord]) -> Result<Vec<PathBuf>> {
    let base = format!("drill-{}", record.entry_name());
    let files = [
        (format!("{base}.json"), serde_json::to_string_pretty(record).expect("records serialise") + "\n"),
        (format!("{base}.md"), markdown(record)),
        (format!("{base}.html"), html(record, history)),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        // Beside, then renamed: a reader never sees half a report.
        let part =
            dir.join(format!(".{}.part", path.file_name().and_then(|n| n.to_str()).unwrap_or("report")));
        std::fs::write(&part, text).with_context(|| format!("writing {}", part.display()))?;
        std::fs::rename(&part, &path).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// `95.2s`, `14m 3s`, `26h 5m`, `3d 4h`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m {}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else if s < 172_800.0 {
        format!("{}h {}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    } else {
        format!("{}d {}h", (s / 86_400.0) as u64, ((s % 86_400.0) / 3600.0) as u64)
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(duration).unwrap_or_else(|| "-".into())
}

fn short(id: &Option<String>) -> String {
    id.as_deref().map(|i| i[..8.min(i.len())].to_string()).unwrap_or_else(|| "-".into())
}

/// The rows of a source's table: what, value, target.
fn rows(s: &SourceResult) -> Vec<(String, String, String)> {
    let mut rows = vec![
        ("status".into(), s.status.as_str().into(), String::new()),
        ("snapshot".into(), short(&s.snapshot), s.snapshot_time.map(|t| t.to_rfc3339()).unwrap_or_default()),
        ("RTO".into(), opt(s.rto_seconds), opt(s.rto_target_seconds)),
        ("RPO".into(), opt(s.rpo_seconds), opt(s.rpo_target_seconds)),
        ("fetch".into(), duration(s.phases.fetch), String::new()),
        ("restore".into(), duration(s.phases.restore), String::new()),
        ("verify".into(), duration(s.phases.verify), String::new()),
        ("bytes restored".into(), s.bytes_restored.to_string(), String::new()),
    ];
    for (k, v) in &s.objects {
        rows.push((k.clone(), v.to_string(), String::new()));
    }
    for c in &s.checks {
        rows.push((
            format!("check: {}", c.name),
            if c.ok { "ok" } else { "FAILED" }.into(),
            c.detail.clone(),
        ));
    }
    rows
}

pub fn markdown(record: &DrillRecord) -> String {
    let mut md = format!(
        "# cairn drill {}\n\nStarted {} on {}, {:.1}s, exit code {} ({}).\n",
        record.id,
        record.started.to_rfc3339(),
        record.host,
        record.seconds,
        record.exit_code,
        if record.passed() { "passed" } else { "not passed" }
    );
    for s in &record.sources {
        let _ = write!(
            md,
            "\n## {} ({}/{})\n\n| | value | target / detail |\n|---|---|---|\n",
            s.source, s.kind, s.mode
        );
        for (k, v, t) in rows(s) {
            let _ = writeln!(md, "| {} | {} | {} |", k, v.replace('|', "\\|"), t.replace('|', "\\|"));
        }
        for e in &s.errors {
            let _ = writeln!(md, "\n* {e}");
        }
    }
    md
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An SVG line chart of `points` (one per past drill, oldest first), with
/// the target as a dashed line.
fn chart(
    title: &str,
    class: &str,
    points: &[Option<f64>],
    target: Option<f64>,
    scale: f64,
    unit: &str,
) -> String {
    let (w, h, left, bottom, top) = (480.0, 180.0, 56.0, 24.0, 24.0);
    let values: Vec<f64> = points.iter().flatten().map(|v| v / scale).collect();
    let max = values.iter().copied().chain(target.map(|t| t / scale)).fold(0.0f64, f64::max).max(1e-9) * 1.15;
    let x = |i: usize| {
        left + (w - left - 12.0) * if points.len() > 1 { i as f64 / (points.len() - 1) as f64 } else { 0.5 }
    };
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v / max);
    let mut svg = format!(
        "<svg class=\"chart {class}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\">\
         <text x=\"{left}\" y=\"16\" class=\"title\">{}</text>\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" class=\"axis\"/><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" class=\"axis\"/>\
         <text x=\"4\" y=\"{}\" class=\"tick\">{:.1}{unit}</text><text x=\"4\" y=\"{}\" class=\"tick\">0</text>",
        esc(title),
        esc(title),
        h - bottom,
        w - 12.0,
        h - bottom,
        h - bottom,
        top + 4.0,
        max,
        h - bottom
    );
    if let Some(t) = target {
        let _ = write!(
            svg,
            "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" class=\"target\"/><text x=\"{2}\" y=\"{3:.1}\" class=\"tick\">target {4:.1}{unit}</text>",
            y(t / scale),
            w - 12.0,
            w - 110.0,
            y(t / scale) - 4.0,
            t / scale
        );
    }
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i), y(v / scale))))
        .collect();
    if !path.is_empty() {
        let _ = write!(svg, "<polyline class=\"series\" points=\"{}\"/>", path.join(" "));
        for p in &path {
            let (px, py) = p.split_once(',').expect("x,y");
            let _ = write!(svg, "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" class=\"point\"/>");
        }
    }
    svg.push_str("</svg>");
    svg
}

pub fn html(record: &DrillRecord, history: &[DrillRecord]) -> String {
    let mut body = String::new();
    for s in &record.sources {
        let _ = write!(
            body,
            "<section class=\"source\" data-source=\"{0}\"><h2>{0} <small>{1}/{2}</small> <span class=\"status {3}\">{3}</span></h2>\
             <table><thead><tr><th></th><th>value</th><th>target / detail</th></tr></thead><tbody>",
            esc(&s.source),
            esc(&s.kind),
            esc(&s.mode),
            s.status.as_str()
        );
        for (k, v, t) in rows(s) {
            let _ = write!(body, "<tr><th>{}</th><td>{}</td><td>{}</td></tr>", esc(&k), esc(&v), esc(&t));
        }
        body.push_str("</tbody></table>");
        for e in &s.errors {
            let _ = write!(body, "<p class=\"error\">{}</p>", esc(e));
        }
        let past: Vec<&SourceResult> =
            history.iter().flat_map(|r| r.sources.iter()).filter(|p| p.source == s.source).collect();
        let rto: Vec<Option<f64>> = past.iter().map(|p| p.rto_seconds).collect();
        let rpo: Vec<Option<f64>> = past.iter().map(|p| p.rpo_seconds).collect();
        let _ = write!(
            body,
            "<div class=\"charts\">{}{}</div><p class=\"note\">{} drills of this source; dashed: target.</p></section>",
            chart(&format!("RTO of {} (seconds)", s.source), "rto", &rto, s.rto_target_seconds, 1.0, "s"),
            chart(&format!("RPO of {} (hours)", s.source), "rpo", &rpo, s.rpo_target_seconds, 3600.0, "h"),
            past.len()
        );
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>cairn drill {id}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:.5em 0}}\
         th,td{{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}}thead th{{background:#f4f4f4}}\
         .status{{padding:.1em .5em;border-radius:.3em;font-size:.7em;color:#fff;background:#888}}\
         .status.passed{{background:#2a7d2a}}.status.failed{{background:#b22}}.status.missed{{background:#c80}}\
         .error{{color:#b22}}.charts{{display:flex;gap:1em;flex-wrap:wrap}}.axis{{stroke:#888}}\
         .target{{stroke:#b22;stroke-dasharray:5 4}}.series{{fill:none;stroke:#2563eb;stroke-width:2}}\
         .point{{fill:#2563eb}}.title{{font-size:12px;font-weight:600}}.tick{{font-size:10px;fill:#555}}.note{{color:#666;font-size:.8em}}\
         </style></head><body><h1>cairn drill {id}</h1><p>Started {started} on {host}, {secs:.1}s, exit code {code} \
         (<strong>{verdict}</strong>).</p>{body}</body></html>\n",
        id = esc(&record.id),
        started = esc(&record.started.to_rfc3339()),
        host = esc(&record.host),
        secs = record.seconds,
        code = record.exit_code,
        verdict = if record.passed() { "passed" } else { "not passed" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(5.25), "5.2s");
        assert_eq!(duration(843.0), "14m 3s");
        assert_eq!(duration(93_900.0), "26h 5m");
        assert_eq!(duration(273_600.0), "3d 4h");
    }

    #[test]
    fn charts_mark_every_drill_and_the_target() {
        let svg = chart("RTO", "rto", &[Some(10.0), None, Some(20.0)], Some(30.0), 1.0, "s");
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("class=\"target\""));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
