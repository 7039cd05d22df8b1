//! The one report every job ends with.
//!
//! Its shape is a contract: drills, metrics and alerting read it, so fields
//! are only ever added. Printed as one JSON line on stdout with `--json`
//! (`docs/DESIGN.md`, "The job report", has an example); as text otherwise.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset};
use serde::Serialize;

/// Bytes a job moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ByteCounts {
    /// Read from the source (backup) or written to the target (restore).
    pub read: u64,
    /// New data the repository did not have (before compression).
    pub added: u64,
    /// What that cost in the repository (after compression and encryption).
    pub stored: u64,
}

/// The report of one job.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// `backup`, `restore`, `verify`, ...
    pub job: &'static str,
    /// The configured source name, when there is one.
    pub source: Option<String>,
    pub kind: Option<String>,
    pub mode: Option<String>,
    pub snapshot: Option<String>,
    pub parent: Option<String>,
    /// Where a restore or verification went (credentials masked).
    pub target: Option<String>,
    pub dry_run: bool,
    pub started: DateTime<FixedOffset>,
    pub finished: DateTime<FixedOffset>,
    pub seconds: f64,
    pub bytes: ByteCounts,
    /// Counts by what is counted (`files`, `tables`, `rows`, ...).
    pub objects: BTreeMap<String, u64>,
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
    pub exit_code: u8,
    /// The human summary.
    #[serde(skip)]
    pub summary: String,
    /// Source-specific facts.
    pub details: serde_json::Value,
}

impl JobReport {
    pub fn start(job: &'static str) -> JobReport {
        let now = chrono::Local::now().fixed_offset();
        JobReport {
            job,
            source: None,
            kind: None,
            mode: None,
            snapshot: None,
            parent: None,
            target: None,
            dry_run: false,
            started: now,
            finished: now,
            seconds: 0.0,
            bytes: ByteCounts::default(),
            objects: BTreeMap::new(),
            warnings: Vec::new(),
            errors: Vec::new(),
            exit_code: crate::exit::SUCCESS,
            summary: String::new(),
            details: serde_json::Value::Null,
        }
    }

    /// Names the snapshot the job acts on: its id, kind, mode and source.
    pub fn about(&mut self, id: &cairn_repo::Id, snapshot: &cairn_repo::Snapshot) {
        let (kind, mode) = cairn_repo::kind_and_mode(snapshot);
        self.snapshot = Some(id.to_hex());
        self.kind = Some(kind);
        self.mode = Some(mode);
        self.source = snapshot.cairn.as_ref().and_then(|c| c.source_name.clone());
    }

    /// Stamps the end time.
    pub fn finish(mut self) -> JobReport {
        self.finished = chrono::Local::now().fixed_offset();
        self.seconds = (self.finished - self.started).num_milliseconds() as f64 / 1000.0;
        self
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("reports serialise")
    }
}
