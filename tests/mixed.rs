//! One repository holding every kind of snapshot, as a real deployment's
//! does: volume snapshots from two hosts, and nightly logical and physical
//! backups of one PostgreSQL server. Snapshot arguments resolve within the
//! command's kinds and the `--source/--host/--tag/--path` filters
//! (docs/DESIGN.md §12.2), a snapshot of the wrong kind is a usage error
//! that names the right command, and `snapshots --json` says what each is.

mod common;

use common::*;

/// The snapshot a restore picked (from its `--json` report).
fn picked(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["restore", "--json"];
    all.extend_from_slice(args);
    let report = env.cairn_json(&all);
    report["snapshot"].as_str().unwrap_or_else(|| panic!("{report}")).to_string()
}

fn ids(list: &serde_json::Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn latest_and_filters_resolve_within_kinds_in_a_mixed_repository() {
    let env = Env::new();
    env.init();
    let password_file = env.path("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let pg = cairn_testkit::PgCluster::start(&env.path("pg/data"), "");
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 500)",
    );
    let (site_a, site_b) = (env.path("site-a"), env.path("site-b"));
    for (dir, file) in [(&site_a, "a.txt"), (&site_b, "b.txt")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), file).unwrap();
    }
    let config = env.path("cairn.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:
  - name: site
    kind: volume
    host: web-1
    tags: [web]
    paths: [{}]
  - name: app-db
    kind: postgres
    url: {}
  - name: app-db-base
    kind: postgres
    url: {}
    physical: true
",
            site_a.display(),
            pg.url("app"),
            pg.url("postgres")
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let backup = |args: &[&str]| {
        let mut all = vec!["--config", cfg, "backup", "--json"];
        all.extend_from_slice(args);
        env.cairn_json(&all)["snapshot"].as_str().unwrap().to_string()
    };
    // Oldest first: the named volume, an ad-hoc one from another host, the
    // nightly logical backup and, last, the nightly base backup.
    let site = backup(&["--source", "site"]);
    let batch = backup(&["--host", "web-2", "--tag", "batch", "volume", site_b.to_str().unwrap()]);
    let logical = backup(&["--source", "app-db"]);
    let physical = backup(&["--source", "app-db-base"]);

    // What each snapshot is.
    let list = env.cairn_json(&["snapshots", "--json"]);
    assert_eq!(ids(&list), [site.as_str(), &batch, &logical, &physical]);
    let shown: Vec<(String, String, String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let field = |k: &str| s[k].as_str().unwrap_or("-").to_string();
            (field("source"), field("kind"), field("mode"), field("hostname"))
        })
        .collect();
    let hostname = nix_hostname();
    let expected = [
        ("site", "volume", "files", "web-1"),
        ("-", "volume", "files", "web-2"),
        ("app-db", "postgres", "logical", hostname.as_str()),
        ("app-db-base", "postgres", "physical", hostname.as_str()),
    ]
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()));
    assert_eq!(shown, expected);
    // `snapshots` filters as snapshot arguments do.
    let filtered = |args: &[&str]| ids(&env.cairn_json(&[&["snapshots", "--json"][..], args].concat()));
    assert_eq!(filtered(&["--source", "app-db"]), [logical.as_str()]);
    assert_eq!(filtered(&["--host", "web-2"]), [batch.as_str()]);
    assert_eq!(filtered(&["--tag", "web"]), [site.as_str()]);
    assert_eq!(filtered(&["--path", site_a.to_str().unwrap()]), [site.as_str()]);

    // `latest` is the newest snapshot the target restores, whatever came after.
    let out = env.path("out");
    let dir = out.to_str().unwrap();
    assert_eq!(picked(&env, &["latest", "--to", dir, "--dry-run"]), batch);
    for filter in
        [["--host", "web-1"], ["--source", "site"], ["--tag", "web"], ["--path", site_a.to_str().unwrap()]]
    {
        assert_eq!(
            picked(&env, &[&["latest", "--to", dir, "--dry-run"][..], &filter].concat()),
            site,
            "{filter:?}"
        );
    }
    let copy = pg.url("copy");
    assert_eq!(
        picked(&env, &["latest", "--to", &copy, "--dry-run"]),
        logical,
        "logical, not the newer base backup"
    );
    let data_dir = env.path("pg/restored");
    let data = data_dir.to_str().unwrap();
    let mut physical_restore = env.cairn_cmd();
    physical_restore.env_remove("CAIRN_PASSWORD").env("CAIRN_PASSWORD_FILE", &password_file).args([
        "restore",
        "--json",
        "latest",
        "--physical",
        "--data-dir",
        data,
        "--dry-run",
    ]);
    let out_physical = physical_restore.output().unwrap();
    assert!(out_physical.status.success(), "{}", describe(&out_physical));
    let report = cairn_testkit::conformance::last_json(&String::from_utf8_lossy(&out_physical.stdout));
    assert_eq!(report["snapshot"], physical.as_str(), "{report}");
    // A filter no snapshot of the kind meets finds none, rather than another kind.
    let none = env.cairn(&["restore", "latest", "--to", &copy, "--source", "site"]);
    assert_eq!(none.status.code(), Some(1), "{}", describe(&none));
    assert!(String::from_utf8_lossy(&none.stderr).contains("postgres/logical"), "{}", describe(&none));

    // The real restores: the named site's files, the logical dump's rows.
    env.cairn_ok(&["restore", "latest", "--source", "site", "--to", dir]);
    assert_same_tree(&site_a, &out, false);
    env.cairn_ok(&["restore", "latest", "--to", &copy]);
    assert_eq!(pg.psql("copy", "SELECT count(*) FROM orders"), "500");

    // The wrong kind for the target: exit 2, naming the command that restores it.
    let elsewhere = pg.url("elsewhere");
    for (snapshot, args, names) in [
        (&physical, vec!["--to", elsewhere.as_str()], "--physical --data-dir"),
        (&site, vec!["--to", elsewhere.as_str()], "--to DIR"),
        (&logical, vec!["--to", env.path("out2").to_str().unwrap()], "--to postgresql://"),
        (&logical, vec!["--physical", "--data-dir", data], "--to postgresql://"),
        (&batch, vec!["--physical", "--data-dir", data], "--to DIR"),
    ] {
        let out = env.cairn(&[&["restore", &snapshot[..8]][..], &args].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(names) && stderr.contains(&snapshot[..8]),
            "{args:?} must name {names}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    assert!(!env.path("out2").exists() && !data_dir.exists(), "a refused restore wrote something");
}

/// This machine's name, as snapshots record it by default.
fn nix_hostname() -> String {
    let out = std::process::Command::new("hostname").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
