//! Restore drills: prove, on a schedule, that a source's backups restore.
//!
//! For each planned source a drill picks a restore point (the latest, the
//! oldest, or one at random within a window), provisions a scratch target
//! from the adapter ([`cairn_source::Scratch`]), named with the prefix
//! `drill-<source>` (and first sweeps what a killed drill of that prefix
//! left), and runs the engine's own jobs against it, timed:
//!
//! 1. **fetch**: the snapshot's trees are read and its manifest checked
//!    complete, every stream of its recorded size and chunks
//!    ([`crate::Engine::verify`] without reading data);
//! 2. **restore** into the scratch target (every blob verified as it is
//!    read; a damaged pack fails here, naming it);
//! 3. **verify**: the target compared with the snapshot object by object
//!    (counts and content digests, `verify --against`), then the user's
//!    assertions, each a probe the adapter runs on the target (a SQL
//!    query, a file's hash, a glob count) compared with its expectation.
//!
//! The scratch target is torn down whatever happened, SIGTERM included
//! (teardown is not raced against the stop token). RTO is the sum of
//! fetch, restore and verify; RPO is the restore point's age when the drill started; both
//! are compared with the plan's targets. The result is a [`DrillRecord`],
//! stored in the repository's journal [`JOURNAL`] (so it replicates with
//! the repository) and read back by [`history`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_repo::journal::JournalSpec;
use cairn_repo::{Repository, SnapshotFilter};
use cairn_source::{AnySettings, Overwrite, Scratch, ScratchTarget};
use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::{Engine, EngineError, JobReport, RestoreRequest, VerifyRequest, exit};

/// The journal drill records are kept in: `cairn/journal/drills/<entry>`.
pub const JOURNAL: JournalSpec = JournalSpec::new("drills", *b"CAIRNDRL");

/// Version of the [`DrillRecord`] layout.
pub const RECORD_VERSION: u32 = 1;

/// Which restore point a drill takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    Latest,
    Oldest,
    /// A snapshot chosen at random among those at most this old.
    RandomWithin(Duration),
}

impl Pick {
    /// `latest`, `oldest`, or `random` / `random:7d` (default window 30 days).
    pub fn parse(text: &str) -> Result<Pick, String> {
        match text.trim() {
            "latest" => Ok(Pick::Latest),
            "oldest" => Ok(Pick::Oldest),
            "random" => Ok(Pick::RandomWithin(Duration::from_secs(30 * 86_400))),
            other => match other.strip_prefix("random:").or_else(|| other.strip_prefix("random ")) {
                Some(window) => cairn_source::units::parse_duration(window.trim()).map(Pick::RandomWithin),
                None => Err(format!(
                    "pick must be latest, oldest or random[:WINDOW] (e.g. random:7d), not {other:?}"
                )),
            },
        }
    }
}

/// A user assertion: the adapter's probe `probe` run with `argument` on the
/// restored target must give `expect` (see [`expectation_holds`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assertion {
    pub probe: String,
    pub argument: String,
    pub expect: String,
}

/// One source's drill, as configured.
#[derive(Debug)]
pub struct DrillPlan {
    /// The configured source name (its snapshots are those of this name).
    pub source: String,
    pub kind: String,
    /// The mode its backups have (which snapshots qualify).
    pub mode: String,
    pub pick: Pick,
    /// Every adapter's restore settings (the snapshot's kind picks one).
    pub restore_settings: Vec<(String, Box<dyn AnySettings>)>,
    pub assertions: Vec<Assertion>,
    pub rto: Option<Duration>,
    pub rpo: Option<Duration>,
}

/// One check of a source's drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `manifest`, `restore`, `verify`, or `assert <probe> <argument>`.
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// How one source's drill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every check passed and every target was met.
    Passed,
    /// A check failed: the restore point did not restore as recorded.
    Failed,
    /// Every check passed, but RTO or RPO exceeded its target.
    Missed,
    /// The drill could not run (no snapshot, no scratch target, stopped).
    NotRun,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Missed => "missed",
            Status::NotRun => "not-run",
        }
    }
}

/// Seconds each phase took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    pub fetch: f64,
    pub restore: f64,
    pub verify: f64,
}

/// One source's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceResult {
    pub source: String,
    pub kind: String,
    pub mode: String,
    pub status: Status,
    pub snapshot: Option<String>,
    pub snapshot_time: Option<DateTime<FixedOffset>>,
    /// The scratch target (credentials masked).
    pub target: Option<String>,
    /// Seconds from the restore's start to a verified target (fetch + restore + verify).
    pub rto_seconds: Option<f64>,
    /// Age of the restore point, in seconds, when the drill started.
    pub rpo_seconds: Option<f64>,
    pub rto_target_seconds: Option<f64>,
    pub rpo_target_seconds: Option<f64>,
    pub phases: Phases,
    /// Bytes the restore wrote.
    pub bytes_restored: u64,
    /// The restore's counts (files, tables, rows, ...).
    pub objects: std::collections::BTreeMap<String, u64>,
    pub checks: Vec<Check>,
    pub errors: Vec<String>,
}

impl SourceResult {
    fn new(plan: &DrillPlan) -> SourceResult {
        SourceResult {
            source: plan.source.clone(),
            kind: plan.kind.clone(),
            mode: plan.mode.clone(),
            status: Status::NotRun,
            snapshot: None,
            snapshot_time: None,
            target: None,
            rto_seconds: None,
            rpo_seconds: None,
            rto_target_seconds: plan.rto.map(|d| d.as_secs_f64()),
            rpo_target_seconds: plan.rpo.map(|d| d.as_secs_f64()),
            phases: Phases::default(),
            bytes_restored: 0,
            objects: Default::default(),
            checks: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// "source app-db, snapshot 4bbff39c": how failures name what they are about.
    fn naming(&self) -> String {
        match &self.snapshot {
            Some(id) => format!("source {}, snapshot {}", self.source, &id[..8.min(id.len())]),
            None => format!("source {}", self.source),
        }
    }
}

/// A whole drill: every source's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    pub version: u32,
    pub id: String,
    pub host: String,
    pub started: DateTime<FixedOffset>,
    pub finished: DateTime<FixedOffset>,
    pub seconds: f64,
    pub exit_code: u8,
    pub sources: Vec<SourceResult>,
}

impl DrillRecord {
    /// The journal entry name: sortable by start time, unique by id.
    pub fn entry_name(&self) -> String {
        format!("{}-{}", self.started.with_timezone(&chrono::Utc).format("%Y%m%dT%H%M%SZ"), self.id)
    }

    pub fn passed(&self) -> bool {
        self.exit_code == exit::SUCCESS
    }
}

/// The exit code of a drill whose sources ended so: a failed check first
/// (a backup that does not restore), then a drill that could not run, then
/// a missed target.
pub fn exit_code(sources: &[SourceResult]) -> u8 {
    let any = |s: Status| sources.iter().any(|r| r.status == s);
    if any(Status::Failed) {
        exit::DRILL_FAILED
    } else if any(Status::NotRun) {
        exit::DRILL_NOT_RUN
    } else if any(Status::Missed) {
        exit::DRILL_MISSED
    } else {
        exit::SUCCESS
    }
}

/// Whether `observed` meets `expect`: `= N`, `!= N`, `>= N`, `<= N`, `> N`,
/// `< N` compare numbers; any other text must equal `observed` exactly
/// (surrounding blanks ignored).
pub fn expectation_holds(expect: &str, observed: &str) -> bool {
    let expect = expect.trim();
    let observed = observed.trim();
    for op in [">=", "<=", "!=", "=", ">", "<"] {
        if let Some(rest) = expect.strip_prefix(op) {
            let (Ok(want), Ok(got)) = (rest.trim().parse::<f64>(), observed.parse::<f64>()) else {
                return op == "!=" && rest.trim() != observed || op == "=" && rest.trim() == observed;
            };
            return match op {
                ">=" => got >= want,
                "<=" => got <= want,
                "!=" => got != want,
                "=" => got == want,
                ">" => got > want,
                _ => got < want,
            };
        }
    }
    expect == observed
}

/// A name part made of `[a-z0-9-]` only (scratch names, entry names).
fn slug(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    s.trim_matches('-').chars().take(40).collect()
}

/// The scratch prefix of a source's drills.
pub fn scratch_prefix(source: &str) -> String {
    format!("drill-{}", slug(source))
}

/// A random index below `n` (no cryptographic strength needed: which snapshot to try).
fn random_below(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    (h.finish() % n.max(1) as u64) as usize
}

impl Engine {
    /// Checks plans before anything runs: every kind is known, has scratch
    /// targets, and offers the probes its assertions name.
    pub fn check_drill_plans(&self, plans: &[DrillPlan]) -> Result<(), EngineError> {
        for plan in plans {
            let source = self.source(&plan.kind)?;
            let Some(scratch) = source.scratch() else {
                return Err(EngineError::Usage(format!(
                    "source {}: {} sources have no scratch targets, so they cannot be drilled yet",
                    plan.source, plan.kind
                )));
            };
            for a in &plan.assertions {
                if !scratch.probes().contains(&a.probe.as_str()) {
                    return Err(EngineError::Usage(format!(
                        "source {}: {} targets have no assertion {:?} (they have: {})",
                        plan.source,
                        plan.kind,
                        a.probe,
                        scratch.probes().join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// Runs a drill of every plan, one after the other, and stores its
    /// record in the repository (unless the run was stopped).
    pub async fn drill(&self, id: &str, plans: &[DrillPlan]) -> Result<DrillRecord, EngineError> {
        self.check_drill_plans(plans)?;
        let started = chrono::Local::now().fixed_offset();
        let clock = Instant::now();
        let mut sources = Vec::with_capacity(plans.len());
        for plan in plans {
            if self.stop.is_stopped() {
                let mut result = SourceResult::new(plan);
                result.errors.push("the drill was stopped before this source".into());
                sources.push(result);
                continue;
            }
            let result = self.drill_source(plan, started).await;
            sources.push(result);
        }
        let exit_code = match self.stop.reason() {
            Some(reason) => exit::code_for(cairn_source::ErrorClass::Interrupted, Some(&reason)),
            None => exit_code(&sources),
        };
        let record = DrillRecord {
            version: RECORD_VERSION,
            id: id.to_string(),
            host: cairn_repo::host_and_user().0,
            started,
            finished: chrono::Local::now().fixed_offset(),
            seconds: clock.elapsed().as_secs_f64(),
            exit_code,
            sources,
        };
        if !self.stop.is_stopped() {
            let repo = self.open().await?;
            store_record(&repo, &record).await?;
        }
        Ok(record)
    }

    async fn drill_source(&self, plan: &DrillPlan, started: DateTime<FixedOffset>) -> SourceResult {
        let mut result = SourceResult::new(plan);
        let scratch = self
            .source(&plan.kind)
            .ok()
            .and_then(|s| s.scratch())
            .expect("plans are checked before they run");
        let prefix = scratch_prefix(&plan.source);
        match scratch.sweep(&prefix).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(source = %plan.source, removed = n, "removed scratch targets of earlier, killed drills")
            }
            Err(e) => {
                tracing::warn!(source = %plan.source, error = %e, "could not sweep earlier drills' scratch targets")
            }
        }
        let filter = SnapshotFilter {
            sources: vec![plan.source.clone()],
            kinds: vec![(plan.kind.clone(), plan.mode.clone())],
            ..Default::default()
        };
        let (id, snapshot) = match self.pick(plan, &filter).await {
            Ok(chosen) => chosen,
            Err(e) => {
                result.errors.push(format!("{}: no restore point: {}", result.naming(), crate::render(&e)));
                return result;
            }
        };
        result.snapshot = Some(id.to_hex());
        result.snapshot_time = Some(snapshot.time);
        result.rpo_seconds = Some(((started - snapshot.time).num_milliseconds() as f64 / 1000.0).max(0.0));
        let target = match scratch.provision(&prefix, &snapshot).await {
            Ok(t) => t,
            Err(e) => {
                result.errors.push(format!("{}: no scratch target: {e}", result.naming()));
                return result;
            }
        };
        result.target = Some(cairn_store::DisplaySafe::new(target.target.clone()).to_string());
        tracing::info!(source = %plan.source, snapshot = %id.short(), target = %result.target.as_deref().unwrap_or(""), "drill started");
        self.drill_on(plan, &filter, &scratch, &target, &mut result).await;
        // Whatever happened, SIGTERM included: the target goes.
        if let Err(e) = scratch.teardown(&target).await {
            result.errors.push(format!("{}: tearing down the scratch target failed: {e}", result.naming()));
        }
        result
    }

    async fn pick(
        &self,
        plan: &DrillPlan,
        filter: &SnapshotFilter,
    ) -> Result<(cairn_repo::Id, cairn_repo::Snapshot), EngineError> {
        let repo = self.open().await?;
        let mut candidates = self.stop.race(repo.select_snapshots(filter)).await?;
        candidates.sort_by_key(|(_, s)| s.time);
        let none = || EngineError::Usage(format!("no snapshot {}", filter.describe()));
        match &plan.pick {
            Pick::Latest => candidates.pop().ok_or_else(none),
            Pick::Oldest => candidates.into_iter().next().ok_or_else(none),
            Pick::RandomWithin(window) => {
                let since = chrono::Local::now().fixed_offset()
                    - chrono::Duration::from_std(*window).unwrap_or(chrono::Duration::MAX);
                let mut recent: Vec<_> = candidates.into_iter().filter(|(_, s)| s.time >= since).collect();
                if recent.is_empty() {
                    return Err(none());
                }
                let i = random_below(recent.len());
                Ok(recent.swap_remove(i))
            }
        }
    }

    /// The timed checks on a provisioned target.
    async fn drill_on(
        &self,
        plan: &DrillPlan,
        filter: &SnapshotFilter,
        scratch: &Arc<dyn Scratch>,
        target: &ScratchTarget,
        result: &mut SourceResult,
    ) {
        let snapshot = result.snapshot.clone().expect("picked");
        let settings_of = |_: ()| -> Vec<(String, Box<dyn AnySettings>)> {
            plan.restore_settings.iter().map(|(k, s)| (k.clone(), (**s).clone_boxed())).collect()
        };

        let phase = Instant::now();
        let report = self
            .verify(VerifyRequest {
                snapshot: snapshot.clone(),
                filter: filter.clone(),
                against: None,
                settings: settings_of(()),
                read_data: false,
            })
            .await;
        result.phases.fetch = phase.elapsed().as_secs_f64();
        if !self.judge(result, "manifest", &report) {
            return;
        }

        let phase = Instant::now();
        let report = self
            .restore(RestoreRequest {
                snapshot: snapshot.clone(),
                filter: filter.clone(),
                request: cairn_source::RestoreRequest {
                    target: Some(target.target.clone()),
                    paths: Vec::new(),
                    overwrite: Overwrite::Never,
                    dry_run: false,
                    verify: false,
                    jobs: 2,
                    fsync: true,
                    start: false,
                    port: None,
                },
                settings: settings_of(()),
            })
            .await;
        result.phases.restore = phase.elapsed().as_secs_f64();
        result.bytes_restored = report.bytes.read;
        result.objects = report.objects.clone();
        if !self.judge(result, "restore", &report) {
            return;
        }

        let phase = Instant::now();
        let report = self
            .verify(VerifyRequest {
                snapshot,
                filter: filter.clone(),
                against: Some(target.target.clone()),
                settings: settings_of(()),
                read_data: false,
            })
            .await;
        let mut ok = self.judge(result, "verify", &report);
        for a in &plan.assertions {
            if !ok || self.stop.is_stopped() {
                break;
            }
            let name = format!("assert {} {}", a.probe, a.argument);
            let check = match scratch.probe(target, &a.probe, &a.argument).await {
                Ok(observed) if expectation_holds(&a.expect, &observed) => {
                    Check { name, ok: true, detail: format!("{observed:?} as expected ({})", a.expect) }
                }
                Ok(observed) => {
                    Check { name, ok: false, detail: format!("got {observed:?}, expected {}", a.expect) }
                }
                Err(e) => Check { name, ok: false, detail: format!("could not run: {e}") },
            };
            if !check.ok {
                result.errors.push(format!("{}: {} failed: {}", result.naming(), check.name, check.detail));
                result.status = Status::Failed;
                ok = false;
            }
            result.checks.push(check);
        }
        result.phases.verify = phase.elapsed().as_secs_f64();
        if !ok {
            return;
        }
        let rto = result.phases.fetch + result.phases.restore + result.phases.verify;
        result.rto_seconds = Some(rto);
        let missed_rto = result.rto_target_seconds.is_some_and(|t| rto > t);
        let missed_rpo = result.rpo_target_seconds.zip(result.rpo_seconds).is_some_and(|(t, rpo)| rpo > t);
        if missed_rto {
            result.errors.push(format!(
                "{}: RTO {rto:.1}s exceeds its target of {:.0}s",
                result.naming(),
                result.rto_target_seconds.unwrap_or_default()
            ));
        }
        if missed_rpo {
            result.errors.push(format!(
                "{}: RPO {:.0}s (the restore point's age) exceeds its target of {:.0}s",
                result.naming(),
                result.rpo_seconds.unwrap_or_default(),
                result.rpo_target_seconds.unwrap_or_default()
            ));
        }
        result.status = if missed_rto || missed_rpo { Status::Missed } else { Status::Passed };
    }

    /// Records a job of the drill as a check; false (and the status set) if it failed.
    fn judge(&self, result: &mut SourceResult, name: &str, report: &JobReport) -> bool {
        let ok = report.exit_code == exit::SUCCESS;
        let detail = if ok {
            report.summary.lines().last().unwrap_or("").to_string()
        } else {
            report.errors.join("; ")
        };
        if !ok {
            let stopped = self.stop.is_stopped();
            result.status = if stopped { Status::NotRun } else { Status::Failed };
            let what = if stopped { "stopped during" } else { "failed at" };
            result.errors.push(format!("{}: {what} {name}: {detail}", result.naming()));
            if name == "verify" {
                // The objects that differ, by name: what to look at first.
                if let Some(objects) = report.details.get("objects").and_then(|o| o.as_array()) {
                    for o in objects.iter().filter(|o| o.get("ok").and_then(|v| v.as_bool()) == Some(false)) {
                        result.errors.push(format!(
                            "{}: object {} differs",
                            result.naming(),
                            o.get("name").and_then(|n| n.as_str()).unwrap_or("?")
                        ));
                    }
                }
            }
        }
        result.checks.push(Check { name: name.to_string(), ok, detail });
        ok
    }
}

/// Stores `record` as an entry of the journal [`JOURNAL`].
pub async fn store_record(repo: &Repository, record: &DrillRecord) -> Result<(), EngineError> {
    let bytes = serde_json::to_vec(record).expect("drill records serialise");
    repo.journal(JOURNAL).put_new(&record.entry_name(), &bytes).await?;
    Ok(())
}

/// Every stored drill record, oldest first; entries that cannot be read
/// are reported as warnings, not fatal (one damaged record must not hide
/// the others).
pub async fn history(repo: &Repository) -> Result<Vec<DrillRecord>, EngineError> {
    let journal = repo.journal(JOURNAL);
    let mut records = Vec::new();
    for entry in journal.list().await? {
        let name = entry.name.clone();
        match journal.get(&name).await {
            Ok(bytes) => match serde_json::from_slice::<DrillRecord>(&bytes) {
                Ok(r) => records.push(r),
                Err(e) => tracing::warn!(entry = %name, error = %e, "a drill record cannot be read; skipped"),
            },
            Err(e) => tracing::warn!(entry = %name, error = %e, "a drill record cannot be read; skipped"),
        }
    }
    records.sort_by_key(|r| r.started);
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_parse() {
        assert_eq!(Pick::parse("latest").unwrap(), Pick::Latest);
        assert_eq!(Pick::parse("oldest").unwrap(), Pick::Oldest);
        assert_eq!(Pick::parse("random:7d").unwrap(), Pick::RandomWithin(Duration::from_secs(7 * 86_400)));
        assert_eq!(Pick::parse("random").unwrap(), Pick::RandomWithin(Duration::from_secs(30 * 86_400)));
        assert!(Pick::parse("newest").is_err());
    }

    #[test]
    fn expectations() {
        assert!(expectation_holds(">= 10", "12"));
        assert!(!expectation_holds(">= 10", "9"));
        assert!(expectation_holds("= 3", "3.0"));
        assert!(expectation_holds("42", " 42 "));
        assert!(!expectation_holds("42", "43"));
        assert!(expectation_holds("hash", "hash"));
        assert!(expectation_holds("!= 0", "5"));
        assert!(!expectation_holds("< 5", "five"));
        assert!(expectation_holds("= abc", "abc"));
        assert!(expectation_holds("true", "true"));
    }

    fn result(status: Status) -> SourceResult {
        let plan = DrillPlan {
            source: "s".into(),
            kind: "volume".into(),
            mode: "files".into(),
            pick: Pick::Latest,
            restore_settings: Vec::new(),
            assertions: Vec::new(),
            rto: None,
            rpo: None,
        };
        SourceResult { status, ..SourceResult::new(&plan) }
    }

    #[test]
    fn the_worst_source_decides_the_exit_code() {
        use Status::*;
        assert_eq!(exit_code(&[result(Passed)]), exit::SUCCESS);
        assert_eq!(exit_code(&[result(Passed), result(Missed)]), exit::DRILL_MISSED);
        assert_eq!(exit_code(&[result(Missed), result(NotRun)]), exit::DRILL_NOT_RUN);
        assert_eq!(exit_code(&[result(NotRun), result(Failed), result(Missed)]), exit::DRILL_FAILED);
    }

    #[test]
    fn scratch_prefixes_are_safe_names() {
        assert_eq!(scratch_prefix("App DB/1"), "drill-app-db-1");
    }
}
