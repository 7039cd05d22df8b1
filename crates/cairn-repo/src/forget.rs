//! Retention policies: which snapshots `cairn forget` keeps and which it
//! removes, with restic's rules (restic 0.14's `ApplyPolicy`, the reference
//! the tests run), so a repository shared with restic, or a policy moved
//! from restic, keeps exactly the same snapshots.
//!
//! The rules, per group of snapshots (see [`GroupBy`]):
//!
//! * Snapshots are taken newest first. `--keep-last N` keeps the N newest;
//!   `--keep-hourly/daily/weekly/monthly/yearly N` keep the newest snapshot
//!   of each of the N newest hours (days, ISO weeks, months, years) that
//!   hold one. Buckets are read from the **wall-clock time as recorded**
//!   (the snapshot's own UTC offset), so a snapshot taken at 00:30 +02:00
//!   belongs to that day even if the repository is read in UTC.
//! * `--keep-within D` keeps every snapshot newer than the newest snapshot
//!   (that is not in the future) minus D; `--keep-within-hourly D` and its
//!   siblings keep the newest snapshot of every hour (day, ...) within D.
//!   D is `1y2m3d4h`-style; years, months and days step the calendar in
//!   the newest snapshot's zone (Go's `AddDate`, which normalises Jan 31 +
//!   1 month to Mar 3, not Feb 28), hours are exact.
//! * `--keep-tag a,b` keeps every snapshot carrying all of `a` and `b`.
//! * A snapshot is kept when any rule keeps it; reasons name every rule
//!   that did, with the counters left after it.
//!
//! Where restic reads the newest snapshot's zone as the process's local
//! zone (when the recorded offset is the one the local zone had then),
//! calendar steps across a DST change follow the local zone's rules; this
//! module does the same through [`Zone`]. Exactly equal times within a
//! group are ordered by id (restic leaves their order to its listing).
//! Negative counts and durations, which restic 0.14 accepts with
//! surprising effects (`--keep-last -1` keeps nothing), are refused.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::{Id, Snapshot};

/// restic's retention duration: years, months, days and hours, each
/// applied on its own (`1m` is a calendar month, not 30 days).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepDuration {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl KeepDuration {
    pub fn is_zero(&self) -> bool {
        *self == KeepDuration::default()
    }
}

impl fmt::Display for KeepDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, unit) in [(self.years, 'y'), (self.months, 'm'), (self.days, 'd'), (self.hours, 'h')] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

/// A duration or policy that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

impl FromStr for KeepDuration {
    type Err = PolicyError;

    /// `6y5m234d37h`, any subset in any order; as in restic, a unit given
    /// twice takes the last value.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| PolicyError(format!("invalid duration {s:?}: {why} (e.g. 1y6m, 30d, 36h)"));
        let mut d = KeepDuration::default();
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad("empty"));
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad(if rest.starts_with('-') { "negative" } else { "no number found" }));
            }
            let n: u32 = rest[..digits].parse().map_err(|_| bad("number too large"))?;
            let Some(unit) = rest[digits..].chars().next() else {
                return Err(bad(&format!("no unit found after number {n}")));
            };
            match unit {
                'y' => d.years = n,
                'm' => d.months = n,
                'd' => d.days = n,
                'h' => d.hours = n,
                other => return Err(bad(&format!("invalid unit {other:?} found after number {n}"))),
            }
            rest = &rest[digits + unit.len_utf8()..];
        }
        Ok(d)
    }
}

impl Serialize for KeepDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeepDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What to keep. Zero counts and durations are off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    pub keep_within: KeepDuration,
    pub keep_within_hourly: KeepDuration,
    pub keep_within_daily: KeepDuration,
    pub keep_within_weekly: KeepDuration,
    pub keep_within_monthly: KeepDuration,
    pub keep_within_yearly: KeepDuration,
    /// Each entry is a tag list: a snapshot with all of its tags is kept.
    pub keep_tags: Vec<Vec<String>>,
}

impl Policy {
    /// No rule set: such a policy keeps everything (and `forget` refuses it).
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// Parses one `--keep-tag` value: comma-separated, blanks trimmed.
    pub fn tag_list(text: &str) -> Vec<String> {
        text.split(',').map(|t| t.trim().to_string()).collect()
    }
}

/// Counts left in each bucket after a snapshot was looked at (restic's
/// `counters`; zeros are left out of the JSON).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    #[serde(skip_serializing_if = "is_zero")]
    pub last: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub hourly: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub daily: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub weekly: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub monthly: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub yearly: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why one snapshot is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepReason {
    /// Index into the sorted list.
    pub snapshot: usize,
    /// restic's texts: `last snapshot`, `daily snapshot`, `within 2d`,
    /// `daily within 7d`, `has tags [a, b]`.
    pub matches: Vec<String>,
    pub counters: Counters,
}

/// The outcome for one group: indexes into the list as sorted by
/// [`apply`] (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub keep: Vec<usize>,
    pub remove: Vec<usize>,
    /// One per kept snapshot, in the order of `keep`.
    pub reasons: Vec<KeepReason>,
}

/// The zone the process runs in (Go's `time.Local`), as restic uses it
/// when a snapshot's recorded offset is the one that zone had at the time.
pub trait Zone {
    /// The zone's UTC offset at a UTC instant.
    fn offset_at(&self, utc: NaiveDateTime) -> FixedOffset;
}

/// The system's local zone (`TZ`, else `/etc/localtime`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalZone;

impl Zone for LocalZone {
    fn offset_at(&self, utc: NaiveDateTime) -> FixedOffset {
        chrono::Local.offset_from_utc_datetime(&utc).fix()
    }
}

/// A zone with one offset (UTC, or a test's).
#[derive(Debug, Clone, Copy)]
pub struct FixedZone(pub FixedOffset);

impl Zone for FixedZone {
    fn offset_at(&self, _utc: NaiveDateTime) -> FixedOffset {
        self.0
    }
}

type Bucker = fn(&DateTime<FixedOffset>, usize) -> i64;

fn ymdh(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    t.year() as i64 * 1_000_000 + t.month() as i64 * 10_000 + t.day() as i64 * 100 + t.hour() as i64
}
fn ymd(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    t.year() as i64 * 10_000 + t.month() as i64 * 100 + t.day() as i64
}
fn yw(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    let w = t.iso_week();
    w.year() as i64 * 100 + w.week() as i64
}
fn ym(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    t.year() as i64 * 100 + t.month() as i64
}
fn y(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    t.year() as i64
}
fn always(_: &DateTime<FixedOffset>, nr: usize) -> i64 {
    nr as i64
}

/// Go's `time.Date` for a wall-clock time in `zone`: look the offset up as
/// if the wall time were UTC, and once more at the instant that gives when
/// it falls in another period (a DST change in between).
fn resolve_in_zone(zone: &dyn Zone, wall: NaiveDateTime) -> DateTime<Utc> {
    let first = zone.offset_at(wall);
    let utc = wall - chrono::Duration::seconds(first.local_minus_utc() as i64);
    let second = zone.offset_at(utc);
    let offset = if second == first { first } else { second };
    Utc.from_utc_datetime(&(wall - chrono::Duration::seconds(offset.local_minus_utc() as i64)))
}

/// `latest.AddDate(-y, -m, -d).Add(-h hours)`, as Go computes it.
fn cutoff(latest: &DateTime<FixedOffset>, d: &KeepDuration, zone: &dyn Zone) -> DateTime<Utc> {
    let wall = latest.naive_local();
    let months = wall.year() as i64 * 12 + wall.month0() as i64 - d.years as i64 * 12 - d.months as i64;
    let first = NaiveDate::from_ymd_opt(months.div_euclid(12) as i32, months.rem_euclid(12) as u32 + 1, 1)
        .unwrap_or(NaiveDate::MIN);
    // Day overflow rolls into the next month, as Go normalises it.
    let date = first
        .checked_add_signed(chrono::Duration::days(wall.day() as i64 - 1 - d.days as i64))
        .unwrap_or(NaiveDate::MIN);
    let stepped = date.and_time(wall.time());
    let in_local_zone = zone.offset_at(latest.naive_utc()) == *latest.offset();
    let utc = if in_local_zone {
        resolve_in_zone(zone, stepped)
    } else {
        Utc.from_utc_datetime(
            &(stepped - chrono::Duration::seconds(latest.offset().local_minus_utc() as i64)),
        )
    };
    utc - chrono::Duration::hours(d.hours as i64)
}

/// Sorts `list` newest first (equal times by id) and decides, for `now`.
pub fn apply(list: &mut [(Id, Snapshot)], policy: &Policy, now: DateTime<Utc>, zone: &dyn Zone) -> Decision {
    list.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(a.0.cmp(&b.0)));
    let mut decision = Decision::default();
    if policy.is_empty() {
        for i in 0..list.len() {
            decision.keep.push(i);
            decision.reasons.push(KeepReason {
                snapshot: i,
                matches: vec!["policy is empty".into()],
                counters: Counters::default(),
            });
        }
        return decision;
    }
    if list.is_empty() {
        return decision;
    }
    struct Bucket {
        count: u32,
        bucker: Bucker,
        last: Option<i64>,
        reason: &'static str,
    }
    let bucket = |count, bucker, reason| Bucket { count, bucker, last: None, reason };
    let mut buckets = [
        bucket(policy.keep_last, always as Bucker, "last snapshot"),
        bucket(policy.keep_hourly, ymdh, "hourly snapshot"),
        bucket(policy.keep_daily, ymd, "daily snapshot"),
        bucket(policy.keep_weekly, yw, "weekly snapshot"),
        bucket(policy.keep_monthly, ym, "monthly snapshot"),
        bucket(policy.keep_yearly, y, "yearly snapshot"),
    ];
    struct WithinBucket {
        within: KeepDuration,
        bucker: Bucker,
        last: Option<i64>,
        reason: &'static str,
    }
    let within = |within, bucker, reason| WithinBucket { within, bucker, last: None, reason };
    let mut within_buckets = [
        within(policy.keep_within_hourly, ymdh as Bucker, "hourly within"),
        within(policy.keep_within_daily, ymd, "daily within"),
        within(policy.keep_within_weekly, yw, "weekly within"),
        within(policy.keep_within_monthly, ym, "monthly within"),
        within(policy.keep_within_yearly, y, "yearly within"),
    ];
    // The newest snapshot not in the future; none means every cutoff lies
    // before any snapshot (restic's zero time).
    let latest = list.iter().map(|(_, s)| s.time).filter(|t| t.with_timezone(&Utc) < now).max();
    let is_within = |t: &DateTime<FixedOffset>, d: &KeepDuration| match &latest {
        Some(latest) => t.with_timezone(&Utc) > cutoff(latest, d, zone),
        None => true,
    };

    for (nr, (_, snapshot)) in list.iter().enumerate() {
        let mut matches = Vec::new();
        for tags in &policy.keep_tags {
            if has_tags(snapshot, tags) {
                matches.push(format!("has tags [{}]", tags.join(", ")));
            }
        }
        if !policy.keep_within.is_zero() && is_within(&snapshot.time, &policy.keep_within) {
            matches.push(format!("within {}", policy.keep_within));
        }
        for b in buckets.iter_mut().filter(|b| b.count > 0) {
            let value = (b.bucker)(&snapshot.time, nr);
            if b.last != Some(value) {
                b.last = Some(value);
                b.count -= 1;
                matches.push(b.reason.to_string());
            }
        }
        for b in within_buckets.iter_mut().filter(|b| !b.within.is_zero()) {
            if is_within(&snapshot.time, &b.within) {
                let value = (b.bucker)(&snapshot.time, nr);
                if b.last != Some(value) {
                    b.last = Some(value);
                    matches.push(format!("{} {}", b.reason, b.within));
                }
            }
        }
        if matches.is_empty() {
            decision.remove.push(nr);
        } else {
            decision.keep.push(nr);
            decision.reasons.push(KeepReason {
                snapshot: nr,
                matches,
                counters: Counters {
                    last: buckets[0].count,
                    hourly: buckets[1].count,
                    daily: buckets[2].count,
                    weekly: buckets[3].count,
                    monthly: buckets[4].count,
                    yearly: buckets[5].count,
                },
            });
        }
    }
    decision
}

/// restic's `HasTags`: every tag present; an empty tag matches a snapshot
/// without tags.
fn has_tags(snapshot: &Snapshot, tags: &[String]) -> bool {
    for tag in tags {
        if tag.is_empty() && snapshot.tags.is_empty() {
            return true;
        }
        if !snapshot.tags.contains(tag) {
            return false;
        }
    }
    true
}

/// What snapshots are grouped by before a policy is applied to each group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
    /// cairn's source name (`cairn.yaml`'s `name:`).
    pub source: bool,
}

impl Default for GroupBy {
    /// restic's default: `host,paths`.
    fn default() -> Self {
        GroupBy { host: true, paths: true, tags: false, source: false }
    }
}

impl FromStr for GroupBy {
    type Err = PolicyError;

    /// `host,paths,tags,source` in any combination; `""` puts every
    /// snapshot in one group.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut g = GroupBy { host: false, paths: false, tags: false, source: false };
        for part in s.split(',') {
            match part.trim() {
                "host" | "hosts" => g.host = true,
                "path" | "paths" => g.paths = true,
                "tag" | "tags" => g.tags = true,
                "source" | "sources" => g.source = true,
                "" => {}
                other => {
                    return Err(PolicyError(format!(
                        "unknown grouping option {other:?} (use host, paths, tags, source, separated by commas)"
                    )));
                }
            }
        }
        Ok(g)
    }
}

/// One group's key, in restic's JSON shape (`tags` and `paths` null when
/// not grouped by, `host` empty), plus cairn's `source`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    pub host: String,
    pub paths: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub source: Option<String>,
}

/// Splits snapshots into groups, in key order.
pub fn group(snapshots: Vec<(Id, Snapshot)>, by: GroupBy) -> BTreeMap<GroupKey, Vec<(Id, Snapshot)>> {
    let mut groups: BTreeMap<GroupKey, Vec<(Id, Snapshot)>> = BTreeMap::new();
    for (id, snapshot) in snapshots {
        let sorted = |v: &Vec<String>| {
            let mut v = v.clone();
            v.sort();
            v
        };
        let key = GroupKey {
            host: if by.host { snapshot.hostname.clone() } else { String::new() },
            paths: by.paths.then(|| sorted(&snapshot.paths)),
            tags: (by.tags && !snapshot.tags.is_empty()).then(|| sorted(&snapshot.tags)),
            source: if by.source {
                snapshot.cairn.as_ref().and_then(|c| c.source_name.clone())
            } else {
                None
            },
        };
        groups.entry(key).or_default().push((id, snapshot));
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(text).unwrap()
    }

    fn snap(n: u8, time: &str, tags: &[&str]) -> (Id, Snapshot) {
        let s = Snapshot {
            time: at(time),
            parent: None,
            tree: Id::hash(b"tree"),
            paths: vec!["/data".into()],
            hostname: "h".into(),
            username: String::new(),
            uid: 0,
            gid: 0,
            excludes: vec![],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            original: None,
            program_version: String::new(),
            summary: None,
            cairn: None,
        };
        (Id([n; 32]), s)
    }

    const UTC: FixedZone = FixedZone(FixedOffset::east_opt(0).unwrap());

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
    }

    /// The ids (by their fill byte) kept, newest first.
    fn kept(list: &mut [(Id, Snapshot)], policy: &Policy, zone: &dyn Zone) -> Vec<u8> {
        let d = apply(list, policy, now(), zone);
        assert_eq!(d.keep.len() + d.remove.len(), list.len());
        d.keep.iter().map(|&i| list[i].0.0[0]).collect()
    }

    #[test]
    fn durations_parse_and_print_as_restic_does() {
        let d: KeepDuration = "1y2m3d4h".parse().unwrap();
        assert_eq!(d, KeepDuration { years: 1, months: 2, days: 3, hours: 4 });
        assert_eq!(d.to_string(), "1y2m3d4h");
        assert_eq!("36h".parse::<KeepDuration>().unwrap().to_string(), "36h");
        // A unit given twice takes the last value, as restic's parser does.
        assert_eq!("2d5d".parse::<KeepDuration>().unwrap().days, 5);
        for bad in ["", "5", "3w", "-1d", "d", "1d 2x"] {
            assert!(bad.parse::<KeepDuration>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keep_last_and_daily_with_ties_in_a_day_and_gaps() {
        let mut list = vec![
            snap(1, "2026-01-01T10:00:00Z", &[]),
            snap(2, "2026-01-01T11:00:00Z", &[]),
            snap(3, "2026-01-03T09:00:00Z", &[]), // Jan 2 is a gap
            snap(4, "2026-01-03T23:59:59Z", &[]),
            snap(5, "2026-01-04T00:00:00Z", &[]),
        ];
        let daily = Policy { keep_daily: 3, ..Policy::default() };
        // The newest of each of the three newest days that have one.
        assert_eq!(kept(&mut list, &daily, &UTC), vec![5, 4, 2]);
        let last = Policy { keep_last: 2, ..Policy::default() };
        assert_eq!(kept(&mut list, &last, &UTC), vec![5, 4]);
        let both = Policy { keep_last: 1, keep_daily: 2, ..Policy::default() };
        let d = apply(&mut list, &both, now(), &UTC);
        assert_eq!(d.reasons[0].matches, vec!["last snapshot", "daily snapshot"]);
        assert_eq!(d.reasons[0].counters, Counters { daily: 1, ..Counters::default() });
        assert_eq!(d.reasons[1].matches, vec!["daily snapshot"]);
    }

    #[test]
    fn buckets_use_the_recorded_local_time_not_utc() {
        // 23:30 UTC on Jan 1 is 00:30 on Jan 2 at +01:00.
        let mut list =
            vec![snap(1, "2026-01-02T00:30:00+01:00", &[]), snap(2, "2026-01-01T22:00:00+00:00", &[])];
        let daily = Policy { keep_daily: 5, ..Policy::default() };
        assert_eq!(kept(&mut list, &daily, &UTC), vec![1, 2]);
        // Read as UTC both would be Jan 1 and only one kept.
        let mut utc =
            vec![snap(1, "2026-01-01T23:30:00+00:00", &[]), snap(2, "2026-01-01T22:00:00+00:00", &[])];
        assert_eq!(kept(&mut utc, &daily, &UTC), vec![1]);
    }

    #[test]
    fn weeks_are_iso_weeks_across_the_year_end() {
        // 2026-12-31 (Thursday) and 2027-01-03 (Sunday) are both in ISO week 2026-53.
        let mut list = vec![snap(1, "2026-12-31T12:00:00Z", &[]), snap(2, "2027-01-03T12:00:00Z", &[])];
        let weekly = Policy { keep_weekly: 5, ..Policy::default() };
        assert_eq!(kept(&mut list, &weekly, &UTC), vec![2]);
        let yearly = Policy { keep_yearly: 5, ..Policy::default() };
        assert_eq!(kept(&mut list, &yearly, &UTC), vec![2, 1]);
    }

    #[test]
    fn within_counts_from_the_newest_snapshot_not_now_and_skips_future_ones() {
        let mut list = vec![
            snap(1, "2026-01-01T00:00:00Z", &[]),
            snap(2, "2026-01-02T00:00:01Z", &[]),
            snap(3, "2026-01-03T00:00:00Z", &[]),
            snap(9, "2031-01-01T00:00:00Z", &[]), // after "now": not the newest for within
        ];
        let p = Policy { keep_within: "1d".parse().unwrap(), ..Policy::default() };
        // Strictly newer than Jan 2 00:00:00.
        assert_eq!(kept(&mut list, &p, &UTC), vec![9, 3, 2]);
        let d = apply(&mut list, &p, now(), &UTC);
        assert_eq!(d.reasons[1].matches, vec!["within 1d"]);
    }

    #[test]
    fn months_step_the_calendar_as_go_normalises_it() {
        // Mar 31 minus 1 month is "Feb 31", which Go normalises to Mar 3.
        let latest = at("2026-03-31T12:00:00Z");
        let c = cutoff(&latest, &"1m".parse().unwrap(), &UTC);
        assert_eq!(c, Utc.with_ymd_and_hms(2026, 3, 3, 12, 0, 0).unwrap());
        let c = cutoff(&latest, &"1y2h".parse().unwrap(), &UTC);
        assert_eq!(c, Utc.with_ymd_and_hms(2025, 3, 31, 10, 0, 0).unwrap());
    }

    /// A zone like Europe/Berlin around the 2026-03-29 change (01:00 UTC).
    struct Berlin;
    impl Zone for Berlin {
        fn offset_at(&self, utc: NaiveDateTime) -> FixedOffset {
            let change = NaiveDate::from_ymd_opt(2026, 3, 29).unwrap().and_hms_opt(1, 0, 0).unwrap();
            FixedOffset::east_opt(if utc >= change { 7200 } else { 3600 }).unwrap()
        }
    }

    #[test]
    fn calendar_steps_across_dst_follow_the_local_zone_when_the_offset_is_its_own() {
        // Noon on Mar 30 (+02:00) minus 2 days is noon on Mar 28 (+01:00) = 11:00 UTC.
        let latest = at("2026-03-30T12:00:00+02:00");
        let two_days = "2d".parse().unwrap();
        assert_eq!(cutoff(&latest, &two_days, &Berlin), Utc.with_ymd_and_hms(2026, 3, 28, 11, 0, 0).unwrap());
        // The same offset read in another zone stays fixed: 10:00 UTC.
        assert_eq!(cutoff(&latest, &two_days, &UTC), Utc.with_ymd_and_hms(2026, 3, 28, 10, 0, 0).unwrap());
        let mut list =
            vec![snap(1, "2026-03-28T11:30:00+01:00", &[]), snap(2, "2026-03-30T12:00:00+02:00", &[])];
        let p = Policy { keep_within: two_days, ..Policy::default() };
        assert_eq!(kept(&mut list, &p, &Berlin), vec![2]);
        assert_eq!(kept(&mut list, &p, &UTC), vec![2, 1]);
    }

    #[test]
    fn within_buckets_keep_the_newest_of_each_period_inside_the_window() {
        let mut list = vec![
            snap(1, "2026-01-01T08:00:00Z", &[]),
            snap(2, "2026-01-02T08:00:00Z", &[]),
            snap(3, "2026-01-02T09:00:00Z", &[]),
            snap(4, "2026-01-03T08:00:00Z", &[]),
        ];
        let p = Policy { keep_within_daily: "2d".parse().unwrap(), ..Policy::default() };
        let d = apply(&mut list, &p, now(), &UTC);
        let ids: Vec<u8> = d.keep.iter().map(|&i| list[i].0.0[0]).collect();
        assert_eq!(ids, vec![4, 3]);
        assert_eq!(d.reasons[0].matches, vec!["daily within 2d"]);
    }

    #[test]
    fn tags_keep_whole_lists_and_empty_policies_keep_everything() {
        let mut list = vec![
            snap(1, "2026-01-01T00:00:00Z", &["a", "b"]),
            snap(2, "2026-01-02T00:00:00Z", &["a"]),
            snap(3, "2026-01-03T00:00:00Z", &[]),
        ];
        let p =
            Policy { keep_tags: vec![Policy::tag_list("a, b"), Policy::tag_list("")], ..Policy::default() };
        let d = apply(&mut list, &p, now(), &UTC);
        let ids: Vec<u8> = d.keep.iter().map(|&i| list[i].0.0[0]).collect();
        assert_eq!(ids, vec![3, 1]);
        assert_eq!(d.reasons[1].matches, vec!["has tags [a, b]"]);
        assert_eq!(kept(&mut list, &Policy::default(), &UTC), vec![3, 2, 1]);
    }

    #[test]
    fn groups_follow_host_paths_tags_and_source() {
        let mut a = snap(1, "2026-01-01T00:00:00Z", &["x", "a"]);
        a.1.paths = vec!["/b".into(), "/a".into()];
        let mut b = snap(2, "2026-01-01T00:00:00Z", &[]);
        b.1.hostname = "other".into();
        b.1.cairn = Some(crate::CairnSnapshotMeta { source_name: Some("db".into()), ..Default::default() });
        let all = vec![a, b];
        let groups = group(all.clone(), GroupBy::default());
        assert_eq!(groups.len(), 2);
        let key = groups.keys().next().unwrap();
        assert_eq!(key.paths.as_deref(), Some(&["/a".to_string(), "/b".to_string()][..]));
        assert_eq!(key.tags, None);
        assert_eq!(group(all.clone(), "".parse().unwrap()).len(), 1);
        let by_tags = group(all.clone(), "tags".parse().unwrap());
        assert!(by_tags.keys().any(|k| k.tags == Some(vec!["a".into(), "x".into()])));
        let by_source = group(all, "source".parse().unwrap());
        assert!(by_source.keys().any(|k| k.source.as_deref() == Some("db")));
        assert!("host,color".parse::<GroupBy>().is_err());
    }
}
