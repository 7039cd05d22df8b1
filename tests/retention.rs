//! `cairn forget` decides as restic does: histories written into a cairn
//! repository with `restic backup --time` (ties within an hour or a day,
//! gaps of weeks, several zones, both DST changes, ISO weeks across a year
//! end, tags), then `cairn forget --dry-run --json` and `restic forget
//! --dry-run --json` with the same policy must keep and remove the same
//! snapshots for the same reasons, for many policies.

mod common;

use std::collections::BTreeMap;

use common::*;

/// A history: a host name, the zone its times are written in, and times.
struct History {
    host: &'static str,
    tz: &'static str,
    times: Vec<String>,
}

/// xorshift, so every run generates the same histories.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn stamp(t: chrono::NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn histories() -> Vec<History> {
    use chrono::{Duration, NaiveDate};
    let start = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(0, 0, 0).unwrap();
    let mut rng = Rng(0x5eed_cafe);
    let mut out = Vec::new();
    // Several per hour and per day: ties inside every bucket.
    let mut t = start(2026, 5, 1) + Duration::hours(6);
    let mut dense = Vec::new();
    for _ in 0..24 {
        t += Duration::minutes(7 + rng.next(50) as i64);
        dense.push(stamp(t));
    }
    out.push(History { host: "dense", tz: "UTC", times: dense });
    // Two years with gaps of up to ten weeks.
    let mut t = start(2024, 11, 20);
    let mut sparse = Vec::new();
    for _ in 0..22 {
        t += Duration::days(1 + rng.next(70) as i64) + Duration::seconds(rng.next(86_400) as i64);
        sparse.push(stamp(t));
    }
    out.push(History { host: "sparse", tz: "UTC", times: sparse });
    // Every ~5 hours across both of Berlin's 2026 DST changes, in Berlin time
    // (the zone forget runs in: its calendar steps follow the zone's rules).
    let mut berlin = Vec::new();
    for base in [start(2026, 3, 27), start(2026, 10, 23)] {
        let mut t = base + Duration::minutes(rng.next(60) as i64);
        for _ in 0..14 {
            t += Duration::hours(5) + Duration::minutes(rng.next(30) as i64);
            // Skip wall times that do not exist on the spring change day.
            if t.date() == NaiveDate::from_ymd_opt(2026, 3, 29).unwrap() && t.format("%H").to_string() == "02"
            {
                continue;
            }
            berlin.push(stamp(t));
        }
    }
    out.push(History { host: "berlin", tz: "Europe/Berlin", times: berlin });
    // New York around the year end: ISO week 53 of 2026 runs into 2027,
    // and its offset is not the one forget's zone has.
    let mut t = start(2026, 12, 20) + Duration::hours(22);
    let mut ny = Vec::new();
    for _ in 0..16 {
        t += Duration::hours(11 + rng.next(30) as i64);
        ny.push(stamp(t));
    }
    out.push(History { host: "ny", tz: "America/New_York", times: ny });
    out
}

/// Per group (by host): kept ids, removed ids, and each kept one's reasons.
type Outcome = BTreeMap<String, (Vec<String>, Vec<String>, Vec<String>)>;

fn outcome(json: &serde_json::Value) -> Outcome {
    let ids = |v: &serde_json::Value| -> Vec<String> {
        let mut ids: Vec<String> =
            v.as_array().into_iter().flatten().map(|s| s["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    let mut out = Outcome::new();
    for g in json.as_array().expect("an array of groups") {
        let key = format!("{}|{}|{}", g["host"], g["paths"], g["tags"]);
        let mut reasons: Vec<String> = g["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!("{} {} {}", r["snapshot"]["time"].as_str().unwrap(), r["matches"], r["counters"])
            })
            .collect();
        reasons.sort();
        out.insert(key, (ids(&g["keep"]), ids(&g["remove"]), reasons));
    }
    out
}

#[test]
fn forget_keeps_and_removes_what_restic_does_for_many_policies() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut count = 0;
    for h in histories() {
        for (i, time) in h.times.iter().enumerate() {
            std::fs::write(src.join("f"), format!("{} {i}", h.host)).unwrap();
            let mut args = vec!["backup", "-q", "--host", h.host, "--time", time];
            let tag = ["daily", "weekly", "monthly"][i % 3];
            if i % 4 == 0 {
                args.extend(["--tag", tag]);
            }
            if i % 7 == 0 {
                args.extend(["--tag", "keep"]);
            }
            args.push(src.to_str().unwrap());
            let out = env.restic_cmd().env("TZ", h.tz).args(&args).output().unwrap();
            assert!(out.status.success(), "restic backup: {}", describe(&out));
            count += 1;
        }
    }
    let snaps = env.cairn_json(&["snapshots", "--json"]);
    assert_eq!(snaps.as_array().unwrap().len(), count);

    let policies: &[&[&str]] = &[
        &["--keep-last", "1"],
        &["--keep-last", "5"],
        &["--keep-last", "500"],
        &["--keep-hourly", "6"],
        &["--keep-daily", "4"],
        &["--keep-weekly", "3"],
        &["--keep-monthly", "5"],
        &["--keep-yearly", "2"],
        &["--keep-last", "2", "--keep-daily", "3", "--keep-weekly", "2", "--keep-monthly", "2"],
        &["--keep-hourly", "3", "--keep-daily", "2", "--keep-yearly", "5"],
        &["--keep-within", "2d"],
        &["--keep-within", "1m"],
        &["--keep-within", "36h"],
        &["--keep-within", "1y2m3d4h"],
        &["--keep-within-hourly", "12h"],
        &["--keep-within-daily", "3d"],
        &["--keep-within-weekly", "1m"],
        &["--keep-within-monthly", "1y"],
        &["--keep-within-yearly", "3y"],
        &["--keep-within-daily", "2d", "--keep-within-weekly", "2m", "--keep-last", "1"],
        &["--keep-tag", "keep"],
        &["--keep-tag", "daily,keep", "--keep-tag", "monthly", "--keep-last", "1"],
        &["--keep-daily", "2", "--group-by", "host,tags"],
        &["--keep-weekly", "4", "--group-by", ""],
        &["--keep-last", "3", "--group-by", "tags"],
    ];
    for policy in policies {
        let mut args = vec!["forget", "--dry-run", "--json"];
        args.extend_from_slice(policy);
        // Both run in Berlin's zone: the berlin history's calendar steps
        // follow its DST rules, the others keep their recorded offsets.
        let restic = env.restic_cmd().env("TZ", "Europe/Berlin").args(&args).output().unwrap();
        assert!(restic.status.success(), "restic {args:?}: {}", describe(&restic));
        let restic: serde_json::Value = serde_json::from_slice(&restic.stdout).unwrap();
        let cairn = env.cairn_cmd().env("TZ", "Europe/Berlin").args(&args).output().unwrap();
        assert!(cairn.status.success(), "cairn {args:?}: {}", describe(&cairn));
        let cairn: serde_json::Value = serde_json::from_slice(&cairn.stdout).unwrap();
        let (expected, actual) = (outcome(&restic), outcome(&cairn));
        assert_eq!(
            expected.keys().collect::<Vec<_>>(),
            actual.keys().collect::<Vec<_>>(),
            "groups for {policy:?}"
        );
        for (group, want) in &expected {
            assert_eq!(&actual[group], want, "policy {policy:?}, group {group}");
        }
        let removed: usize = expected.values().map(|v| v.1.len()).sum();
        let kept: usize = expected.values().map(|v| v.0.len()).sum();
        assert_eq!(removed + kept, count, "{policy:?}");
    }
    // Nothing was removed by the dry runs.
    assert_eq!(env.cairn_json(&["snapshots", "--json"]).as_array().unwrap().len(), count);
}

#[test]
fn forget_removes_by_policy_or_id_and_refuses_bad_input() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for day in 1..=4 {
        std::fs::write(src.join("f"), format!("{day}")).unwrap();
        env.restic_ok(&[
            "backup",
            "-q",
            "--time",
            &format!("2026-02-0{day} 12:00:00"),
            src.to_str().unwrap(),
        ]);
    }
    let ids = |env: &Env| -> Vec<String> {
        env.cairn_json(&["snapshots", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = ids(&env);
    assert_eq!(all.len(), 4);

    // Refusals: exit 2, one line, nothing removed.
    for bad in [
        vec!["forget"],
        vec!["forget", "--keep-last", "-1"],
        vec!["forget", "--keep-within", "3w"],
        vec!["forget", "--keep-last", "1", &all[0][..8]],
        vec!["forget", "--keep-last", "1", "--group-by", "color"],
    ] {
        let out = env.cairn(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", describe(&out));
    }
    assert_eq!(ids(&env).len(), 4);

    env.cairn_ok(&["forget", &all[0][..8]]);
    assert_eq!(ids(&env), all[1..].to_vec());
    let text = env.cairn_ok(&["forget", "--keep-last", "2"]);
    assert!(text.contains("removed 1 snapshots"), "{text}");
    assert_eq!(ids(&env), all[2..].to_vec());
    let check = env.restic_ok(&["check"]);
    assert!(check.contains("no errors were found"), "{check}");
}
