//! The runbooks are executable: their shell blocks run here, in order,
//! against a real repository, so a procedure someone follows at 3 a.m.
//! cannot silently rot.

mod common;

use common::*;

/// The ```sh blocks of a Markdown file, in order.
fn shell_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(current.take().unwrap()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Runs a runbook's blocks as one script, with the runbook's example paths
/// replaced by scratch ones.
fn run_runbook(name: &str, replacements: &[(&str, String)]) -> std::process::Output {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runbooks").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut script = shell_blocks(&text).join("\n");
    assert!(!script.trim().is_empty(), "{name} has no shell blocks");
    for (from, to) in replacements {
        assert!(script.contains(from), "{name} no longer mentions {from}");
        script = script.replace(from, to);
    }
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_cairn")).parent().unwrap().to_path_buf();
    let path_var = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &script]).env("PATH", path_var);
    for (k, _) in std::env::vars() {
        if k.starts_with("CAIRN_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().unwrap()
}

#[test]
fn volume_restore_runbook_works_as_written() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    std::fs::create_dir_all(src.join("reports/2026-11")).unwrap();
    std::fs::write(src.join("reports/2026-11/summary.csv"), b"day,orders\n1,42\n").unwrap();
    env.init();
    env.backup(&src);
    let password_file = env.path("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let restore_to = env.path("restore");
    let out = run_runbook(
        "volume-restore.md",
        &[
            ("/var/backups/cairn", env.repo.display().to_string()),
            ("/etc/cairn/password", password_file.display().to_string()),
            ("/restore/data", restore_to.display().to_string()),
        ],
    );
    assert!(out.status.success(), "runbook failed: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("restores agree"), "{}", describe(&out));
    assert_same_tree(&src, &restore_to.join("full"), true);
    assert!(restore_to.join("partial/reports/2026-11/summary.csv").is_file());
    assert!(!restore_to.join("partial/data").exists());
}

/// Runs the table-restore runbook against the server at `server_url`
/// (`psql(database, sql)` reaches it): a logical backup of a fresh `app`
/// database, then `after_backup` (more backups), then the accident, then
/// the runbook with `SNAP=latest`.
fn table_restore_runbook(
    env: &Env,
    server_url: &str,
    psql: &dyn Fn(&str, &str) -> String,
    after_backup: &dyn Fn(),
) {
    let suffix = cairn_testkit::unique_bucket("rb").replace('-', "_");
    let (app, side) = (format!("app_{suffix}"), format!("side_{suffix}"));
    psql("postgres", &format!("CREATE DATABASE {app}"));
    psql(
        &app,
        "CREATE SCHEMA shop;
         CREATE TABLE shop.orders (id int PRIMARY KEY, note text);
         INSERT INTO shop.orders SELECT i, 'order ' || i FROM generate_series(1, 1000) i;
         CREATE TABLE shop.lines (order_id int REFERENCES shop.orders(id), qty int);
         INSERT INTO shop.lines SELECT i, 1 FROM generate_series(1, 100) i;",
    );
    let out = env.cairn(&["backup", "postgres", "--url", &format!("{server_url}/{app}")]);
    assert!(out.status.success(), "{}", describe(&out));
    after_backup();
    // The accident: most orders gone, one changed after the backup.
    psql(
        &app,
        "DELETE FROM shop.orders WHERE id > 100; UPDATE shop.orders SET note = 'changed' WHERE id = 1",
    );

    let password_file = env.path("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let out = run_runbook(
        "postgres-restore-table.md",
        &[
            ("/var/backups/cairn", env.repo.display().to_string()),
            ("/etc/cairn/password", password_file.display().to_string()),
            ("postgresql://postgres@db.internal:5432", server_url.to_string()),
            ("orders_restored", side.clone()),
            ("\"$PGURL/app\"", format!("\"$PGURL/{app}\"")),
        ],
    );
    assert!(out.status.success(), "runbook failed: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("table restore finished"), "{}", describe(&out));
    // Step 5 replaced the table with the backup's state; the foreign key of
    // the table left alone was set aside and re-created.
    assert_eq!(psql(&app, "SELECT count(*) FROM shop.orders"), "1000");
    assert_eq!(psql(&app, "SELECT note FROM shop.orders WHERE id = 1"), "order 1");
    assert_eq!(psql(&app, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"), "1");
    let gone = psql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{side}'"));
    assert_eq!(gone, "0", "the side database was dropped at the end");
}

#[test]
fn postgres_table_restore_runbook_works_as_written() {
    let pg = cairn_testkit::postgres();
    let env = Env::new();
    env.init();
    table_restore_runbook(&env, &pg.url, &|db, sql| pg.psql(db, sql), &|| {});
}

/// `k8s/cronjob-postgres.yaml` takes nightly logical and physical backups
/// into one repository: the runbook's `SNAP=latest` still means the
/// newest logical backup when a base backup landed after it.
#[test]
fn postgres_table_restore_runbook_works_beside_nightly_base_backups() {
    let env = Env::new();
    env.init();
    // A base backup takes the whole cluster: a private one, not the shared server.
    let pg = cairn_testkit::PgCluster::start(&env.path("pg/data"), "");
    let server = format!("postgresql://postgres@127.0.0.1:{}", pg.port);
    table_restore_runbook(&env, &server, &|db, sql| pg.psql(db, sql), &|| {
        let base =
            env.cairn_json(&["backup", "--json", "postgres", "--physical", "--url", &pg.url("postgres")]);
        assert_eq!(base["mode"], "physical", "{base}");
    });
    let modes: Vec<String> = env
        .cairn_json(&["snapshots", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["mode"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(modes, ["logical", "physical"], "the base backup is the newest snapshot");
}

#[test]
fn postgres_wal_archiving_runbook_works_as_written() {
    let env = Env::new();
    env.init();
    let password_file = env.path("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    cairn_testkit::give_to_postgres(env.dir.path());
    let pg = cairn_testkit::PgCluster::start(&env.path("pg/data"), "");
    let out = run_runbook(
        "postgres-wal-archiving.md",
        &[
            ("/var/backups/cairn", env.repo.display().to_string()),
            ("/etc/cairn/password", password_file.display().to_string()),
            (
                "postgresql://postgres@db.internal:5432",
                format!("postgresql://postgres@127.0.0.1:{}", pg.port),
            ),
            ("/var/lib/postgresql/15/main", pg.data_dir.display().to_string()),
            ("/usr/lib/postgresql/15/bin", pg.bin.display().to_string()),
            ("/var/lib/postgresql/cairn-spool", env.path("spool").display().to_string()),
        ],
    );
    assert!(out.status.success(), "runbook failed: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("archiving is set up"), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 left"),
        "the spool is empty: {}",
        describe(&out)
    );
    assert!(pg.psql("postgres", "SHOW archive_command").contains("--spool"));
    let archived: u64 = pg.psql("postgres", "SELECT archived_count FROM pg_stat_archiver").parse().unwrap();
    assert!(archived > 0, "{}", describe(&out));
    assert_eq!(pg.psql("postgres", "SELECT failed_count FROM pg_stat_archiver"), "0");
    let snaps = env.cairn_json(&["snapshots", "--json"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "one base backup: {snaps}");
}

#[test]
fn postgres_pitr_runbook_works_as_written() {
    let env = Env::new();
    let pg = archiving_cluster(&env);
    // The orders live in a tablespace, whose directory the production server keeps using.
    let tablespace = env.path("pg/ts-orders");
    std::fs::create_dir_all(&tablespace).unwrap();
    cairn_testkit::give_to_postgres(&tablespace);
    pg.psql("postgres", &format!("CREATE TABLESPACE orders_ts LOCATION '{}'", tablespace.display()));
    pg.psql(
        "postgres",
        "CREATE SCHEMA shop; CREATE TABLE shop.orders (id int PRIMARY KEY) TABLESPACE orders_ts;
         INSERT INTO shop.orders SELECT generate_series(1, 1000)",
    );
    env.cairn_ok(&["backup", "postgres", "--physical", "--url", &pg.url("postgres")]);
    pg.psql("postgres", "INSERT INTO shop.orders SELECT generate_series(1001, 1234)");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let target =
        pg.psql("postgres", "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    pg.psql("postgres", "DROP TABLE shop.orders");
    archive_everything(&pg);

    let restore_dir = env.path("pg/restored");
    let out = run_runbook(
        "postgres-pitr.md",
        &[
            ("/var/backups/cairn", env.repo.display().to_string()),
            ("/etc/cairn/password", env.path("password").display().to_string()),
            ("/usr/lib/postgresql/15/bin", pg.bin.display().to_string()),
            ("/srv/pg-restore", restore_dir.display().to_string()),
            ("RESTORE_PORT=5433", format!("RESTORE_PORT={}", cairn_testkit::free_port())),
            ("2026-11-23 02:59:00+00", target),
        ],
    );
    assert!(out.status.success(), "runbook failed: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("recovery stopping before"), "{}", describe(&out));
    assert!(
        stdout.lines().any(|l| l.trim() == "1234"),
        "the dropped table is back with its rows: {}",
        describe(&out)
    );
    assert!(stdout.contains("point-in-time restore finished"), "{}", describe(&out));
}
