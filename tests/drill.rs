//! Restore drills end to end: the real binary, a real repository, the
//! shared PostgreSQL server and throwaway clusters, real scratch targets.
//!
//! Each test points the drills' scratch targets into a directory of its
//! own (`TMPDIR`), so it can tell that every target was torn down.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_testkit::conformance::{
    Harness, Running, assert_terminated, damage_blob_of_file, describe, terminate,
};

const EXE: &str = env!("CARGO_BIN_EXE_cairn");

/// A harness, a scratch root the postgres OS user can use, and a config.
struct Drill {
    h: Harness,
    scratch: PathBuf,
    config: PathBuf,
}

impl Drill {
    fn new(config_body: &str) -> Drill {
        let h = Harness::new(EXE);
        let scratch = h.path("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        cairn_testkit::give_to_postgres(&scratch);
        let config = h.path("cairn.yaml");
        std::fs::write(&config, config_body).unwrap();
        Drill { h, scratch, config }
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.h.command();
        c.env("TMPDIR", &self.scratch).arg("--config").arg(&self.config).args(args);
        c.stdin(std::process::Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.cmd(args).output().expect("running cairn")
    }

    fn backup(&self, source: &str) -> String {
        let out = self.run(&["backup", "--json", "--source", source]);
        assert!(out.status.success(), "backup of {source}: {}", describe(&out));
        cairn_testkit::conformance::last_json(&String::from_utf8_lossy(&out.stdout))["snapshot"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Scratch targets still there.
    fn leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.scratch)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("cairn-scratch-"))
            .collect()
    }
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    cairn_testkit::conformance::last_json(&String::from_utf8_lossy(&out.stdout))
}

/// A small tree with known content.
fn site(dir: &Path) {
    std::fs::create_dir_all(dir.join("img/2026")).unwrap();
    std::fs::write(dir.join("index.html"), b"<h1>hello</h1>\n").unwrap();
    for i in 0..5 {
        std::fs::write(dir.join(format!("img/2026/{i}.jpg")), vec![i as u8; 40_000 + i * 1000]).unwrap();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn volume_config(h: &Harness, site: &Path, extra_assert: &str) -> String {
    format!(
        "repository: {repo}\npassword_file: {pw}\nsources:\n  - name: site\n    kind: volume\n    paths: [{site}]\n\
         drills:\n  - source: site\n    rto: 1h\n    rpo: 1h\n    assert:\n      - file: index.html\n\
         \x20     - sha256: index.html\n        expect: {sha}\n      - glob: \"img/**/*.jpg\"\n        expect: \"= 5\"\n{extra_assert}",
        repo = h.repo().display(),
        pw = h.password_file().display(),
        site = site.display(),
        sha = sha256_hex(b"<h1>hello</h1>\n"),
    )
}

/// A volume and a PostgreSQL database drilled together: both pass, every
/// check is recorded, the numbers are what happened (the snapshots backed
/// up, their ages, the phases adding up to the RTO, the restored counts),
/// the record is in the repository and in `drill history`, the reports
/// and the textfile metrics say the same, and no scratch target is left.
#[test]
fn a_drill_of_a_volume_and_a_postgres_database_passes_with_a_report_that_matches() {
    let pg = cairn_testkit::postgres();
    let db = cairn_testkit::unique_bucket("drill").replace('-', "_");
    pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    pg.psql(
        &db,
        "CREATE TABLE orders (id int PRIMARY KEY, note text, total numeric(10,2), meta jsonb); \
         INSERT INTO orders SELECT g, 'order ' || g, g * 1.5, jsonb_build_object('n', g) FROM generate_series(1, 1234) g; \
         CREATE INDEX ON orders (total);",
    );
    let d = Drill::new("");
    let site_dir = d.h.path("site");
    site(&site_dir);
    let mut cfg = volume_config(&d.h, &site_dir, "");
    cfg = cfg.replace(
        "drills:\n",
        &format!(
            "  - name: appdb\n    kind: postgres\n    url: {}\n    databases: [{db}]\n    globals: false\ndrills:\n",
            pg.url
        ),
    );
    cfg.push_str(
        "  - source: appdb\n    pick: latest\n    rto: 30m\n    assert:\n      - sql: SELECT count(*) FROM orders\n\
         \x20       expect: \"= 1234\"\n      - sql: SELECT sum(total) FROM orders\n        expect: \"= 1142992.5\"\n",
    );
    std::fs::write(&d.config, &cfg).unwrap();
    let site_snap = d.backup("site");
    let db_snap = d.backup("appdb");
    let backed_up = chrono::Utc::now();
    let reports = d.h.path("reports");
    let textfile = d.h.path("metrics/cairn.prom");
    std::fs::create_dir_all(textfile.parent().unwrap()).unwrap();
    let out = d.run(&[
        "drill",
        "--json",
        "--report-dir",
        reports.to_str().unwrap(),
        "--metrics-textfile",
        textfile.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let record = json_of(&out);
    let sources = record["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    let age_bound = (chrono::Utc::now() - backed_up).num_seconds() as f64 + 120.0;
    for (s, snap, name) in [(&sources[0], &site_snap, "site"), (&sources[1], &db_snap, "appdb")] {
        assert_eq!(s["source"], name);
        assert_eq!(s["status"], "passed", "{s}");
        assert_eq!(s["snapshot"].as_str().unwrap(), snap, "the drill took another restore point");
        let rpo = s["rpo_seconds"].as_f64().unwrap();
        assert!((0.0..age_bound).contains(&rpo), "RPO {rpo} is not the snapshot's age");
        let phases = &s["phases"];
        let sum = phases["fetch"].as_f64().unwrap()
            + phases["restore"].as_f64().unwrap()
            + phases["verify"].as_f64().unwrap();
        assert!((s["rto_seconds"].as_f64().unwrap() - sum).abs() < 1e-6, "RTO is not the phases' sum: {s}");
        assert!(phases["restore"].as_f64().unwrap() > 0.0);
        let checks: Vec<(&str, bool)> = s["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["ok"].as_bool().unwrap()))
            .collect();
        assert!(checks.iter().all(|(_, ok)| *ok), "{checks:?}");
        assert_eq!(&checks[..3].iter().map(|c| c.0).collect::<Vec<_>>(), &["manifest", "restore", "verify"]);
        let target = s["target"].as_str().unwrap();
        assert!(target.contains("cairn-scratch-drill-site-") || target.ends_with("/restored"), "{s}");
    }
    assert_eq!(sources[0]["checks"].as_array().unwrap().len(), 6, "3 built-in + 3 assertions");
    assert_eq!(sources[0]["objects"]["files"], 6, "{}", sources[0]);
    assert_eq!(sources[1]["objects"]["rows"], 1234, "{}", sources[1]);
    assert_eq!(sources[1]["rto_target_seconds"], 1800.0);
    assert!(d.leftovers().is_empty(), "scratch targets left: {:?}", d.leftovers());

    // Recorded in the repository (a journal, so it replicates) and in the history.
    let entries = cairn_testkit::conformance::repo_files(d.h.repo(), "cairn/journal/drills");
    assert_eq!(entries.len(), 1, "{entries:?}");
    let history = json_of(&d.run(&["drill", "history", "--json"]));
    assert_eq!(history.as_array().unwrap().len(), 2);
    assert_eq!(history[1]["result"]["snapshot"].as_str().unwrap(), db_snap);
    assert_eq!(history[0]["drill"], record["id"]);

    // The reports say the same.
    let files: Vec<PathBuf> = std::fs::read_dir(&reports).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(files.len(), 3, "{files:?}");
    let json_file = files.iter().find(|p| p.extension().unwrap() == "json").unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(json_file).unwrap()).unwrap();
    assert_eq!(stored, record);
    let md = std::fs::read_to_string(files.iter().find(|p| p.extension().unwrap() == "md").unwrap()).unwrap();
    assert!(md.contains("## site (volume/files)") && md.contains("## appdb (postgres/logical)"), "{md}");
    assert!(md.contains(&format!("| snapshot | {} |", &db_snap[..8])), "{md}");
    let html =
        std::fs::read_to_string(files.iter().find(|p| p.extension().unwrap() == "html").unwrap()).unwrap();
    assert_eq!(html.matches("<table>").count(), 2);
    assert_eq!(html.matches("<svg class=\"chart rto\"").count(), 2);
    assert!(
        !html.contains("<script") && !html.contains("http://") && !html.contains("https://"),
        "not self-contained"
    );

    let prom = std::fs::read_to_string(&textfile).unwrap();
    assert!(prom.contains("cairn_drill_success{task=\"drill\",source=\"site\"} 1"), "{prom}");
    assert!(prom.contains("cairn_drill_success{task=\"drill\",source=\"appdb\"} 1"), "{prom}");
    let rto = sources[1]["rto_seconds"].as_f64().unwrap();
    assert!(
        prom.contains(&format!("cairn_drill_rto_seconds{{task=\"drill\",source=\"appdb\"}} {rto}")),
        "{prom}"
    );

    // A second drill: the charts show both.
    let out = d.run(&["drill", "--json", "--source", "appdb", "--report-dir", reports.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let second = json_of(&out);
    assert_eq!(second["sources"].as_array().unwrap().len(), 1);
    let name = format!("drill-{}", entry_name(&second));
    let html = std::fs::read_to_string(reports.join(format!("{name}.html"))).unwrap();
    let rto_chart = &html[html.find("<svg class=\"chart rto\"").unwrap()..];
    let rto_chart = &rto_chart[..rto_chart.find("</svg>").unwrap()];
    assert_eq!(rto_chart.matches("<circle").count(), 2, "{rto_chart}");
    assert_eq!(
        json_of(&d.run(&["drill", "history", "--json", "--source", "appdb"])).as_array().unwrap().len(),
        2
    );
    assert!(d.leftovers().is_empty());
    pg.psql("postgres", &format!("DROP DATABASE {db}"));
}

/// The journal entry name of a printed record.
fn entry_name(record: &serde_json::Value) -> String {
    let started = chrono::DateTime::parse_from_rfc3339(record["started"].as_str().unwrap()).unwrap();
    format!(
        "{}-{}",
        started.with_timezone(&chrono::Utc).format("%Y%m%dT%H%M%SZ"),
        record["id"].as_str().unwrap()
    )
}

/// A damaged pack fails the drill with exit 7, naming the source, the
/// snapshot and the pack; the target is torn down and the failure recorded.
#[test]
fn a_damaged_pack_fails_the_drill_naming_source_snapshot_and_object() {
    let d = Drill::new("");
    let site_dir = d.h.path("site");
    site(&site_dir);
    std::fs::write(&d.config, volume_config(&d.h, &site_dir, "")).unwrap();
    let snap = d.backup("site");
    let pack = damage_blob_of_file(d.h.repo(), cairn_testkit::conformance::PASSWORD, &snap, "img/2026/3.jpg");
    let out = d.run(&["drill", "--json"]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let record = json_of(&out);
    let s = &record["sources"][0];
    assert_eq!(s["status"], "failed");
    let errors = s["errors"].to_string();
    assert!(errors.contains("source site") && errors.contains(&snap[..8]), "{errors}");
    assert!(errors.contains(&pack.to_hex()[..8]), "the pack is not named: {errors}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&pack.to_hex()[..8]) && stderr.contains("source site"), "{stderr}");
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    let history = json_of(&d.run(&["drill", "history", "--json"]));
    assert_eq!(history[0]["result"]["status"], "failed");
    assert_eq!(history[0]["exit_code"], 7);
}

/// A failing user assertion fails the drill (exit 7) naming it; a leftover
/// of a killed drill of the same source is swept first; a missed target is
/// exit 8 and an unknown probe a usage error (exit 2) before anything runs.
#[test]
fn a_failing_assertion_fails_the_drill_and_leftovers_are_swept() {
    let d = Drill::new("");
    let site_dir = d.h.path("site");
    site(&site_dir);
    let extra = "      - glob: \"**/*.png\"\n        expect: \">= 1\"\n";
    std::fs::write(&d.config, volume_config(&d.h, &site_dir, extra)).unwrap();
    let snap = d.backup("site");
    let leftover = d.scratch.join("cairn-scratch-drill-site-volume-999999-0");
    std::fs::create_dir_all(leftover.join("a")).unwrap();
    let other = d.scratch.join("cairn-scratch-drill-other-volume-999999-0");
    std::fs::create_dir_all(&other).unwrap();
    let out = d.run(&["drill", "--json"]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let s = &json_of(&out)["sources"][0];
    assert_eq!(s["status"], "failed");
    let failed: Vec<&serde_json::Value> =
        s["checks"].as_array().unwrap().iter().filter(|c| c["ok"] == false).collect();
    assert_eq!(failed.len(), 1, "{s}");
    assert_eq!(failed[0]["name"], "assert glob **/*.png");
    assert!(failed[0]["detail"].as_str().unwrap().contains("got \"0\""), "{}", failed[0]);
    assert!(s["errors"].to_string().contains(&snap[..8]));
    assert!(!leftover.exists(), "a killed drill's scratch directory was not swept");
    assert!(other.exists(), "another source's scratch directory was swept");
    std::fs::remove_dir(&other).unwrap();
    assert!(d.leftovers().is_empty());

    // Every check passes, but the restore point is older than its RPO: exit 8.
    let cfg = volume_config(&d.h, &site_dir, "").replace("rpo: 1h", "rpo: 0s");
    std::fs::write(&d.config, cfg).unwrap();
    let out = d.run(&["drill", "--json"]);
    assert_eq!(out.status.code(), Some(8), "{}", describe(&out));
    assert_eq!(json_of(&out)["sources"][0]["status"], "missed");

    // An assertion the kind cannot run: refused before any restore.
    let cfg = volume_config(&d.h, &site_dir, "      - sql: SELECT 1\n");
    std::fs::write(&d.config, cfg).unwrap();
    let out = d.run(&["drill"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no assertion \"sql\"") && stderr.lines().count() == 1, "{stderr}");
    assert_eq!(json_of(&d.run(&["drill", "history", "--json"])).as_array().unwrap().len(), 2);
}

/// SIGTERM while the drill restores: exit 143 within the limit, no lock,
/// and no scratch target left behind.
#[test]
fn sigterm_mid_drill_leaves_no_scratch_target() {
    let d = Drill::new("");
    let site_dir = d.h.path("site");
    site(&site_dir);
    // Enough poorly compressible data that the restore is still writing when the signal comes.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..6 {
        let data: Vec<u8> = (0..(24 << 20))
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(site_dir.join(format!("big-{i}.bin")), data).unwrap();
    }
    std::fs::write(&d.config, volume_config(&d.h, &site_dir, "")).unwrap();
    d.backup("site");
    let mut run = Running::spawn(&mut d.cmd(&["drill", "--json"]));
    let scratch = d.scratch.clone();
    run.wait_for("the restore writing into the scratch target", Duration::from_secs(120), || {
        std::fs::read_dir(&scratch).into_iter().flatten().flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with("cairn-scratch-drill-site-volume-")
                && std::fs::read_dir(e.path()).is_ok_and(|mut r| r.next().is_some())
        })
    });
    let t = terminate(run);
    assert_terminated("drill", &t, Some(d.h.repo()));
    assert!(d.leftovers().is_empty(), "SIGTERM left scratch targets: {:?}", d.leftovers());
    assert!(cairn_testkit::conformance::repo_files(d.h.repo(), "cairn/journal/drills").is_empty());
}
