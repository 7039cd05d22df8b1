//! WAL archiving with a real PostgreSQL server: `cairn wal-push` as its
//! `archive_command`, `cairn wal-fetch` and `cairn wal verify` on what it
//! archived. Each test runs a private cluster (its own archive_command).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_testkit::PgCluster;
use common::*;

/// Switches WAL `n` times (with some writes between) and waits until the
/// archiver has shipped everything; fails on any archiver failure.
fn make_and_archive_wal(pg: &PgCluster, n: usize) -> u64 {
    pg.psql("postgres", "CREATE TABLE IF NOT EXISTS t (i int, pad text)");
    for _ in 0..n {
        pg.psql("postgres", "INSERT INTO t SELECT i, repeat('x', 200) FROM generate_series(1, 2000) i");
        pg.psql("postgres", "SELECT pg_switch_wal()");
    }
    let target: u64 =
        pg.psql("postgres", "SELECT archived_count FROM pg_stat_archiver").parse::<u64>().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = pg.psql(
            "postgres",
            "SELECT archived_count, failed_count, coalesce(last_archived_wal, '') , \
             pg_walfile_name(pg_current_wal_lsn()) FROM pg_stat_archiver",
        );
        let f: Vec<&str> = row.split('|').collect();
        assert_eq!(f[1], "0", "the archiver failed; server log:\n{}", pg.log_text());
        let archived: u64 = f[0].parse().unwrap();
        // Everything before the current segment is archived.
        if archived >= target && f[2] < f[3] && archived as usize >= n {
            return archived;
        }
        assert!(Instant::now() < deadline, "archiving did not catch up: {row}\n{}", pg.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wal_objects(repo: &Path) -> Vec<std::path::PathBuf> {
    let Ok(dir) = std::fs::read_dir(repo.join("cairn/wal")) else { return Vec::new() };
    let mut v: Vec<_> = dir.map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn archive_command_pushes_and_wal_fetch_returns_identical_segments() {
    let env = Env::new();
    let pg = archiving_cluster(&env);
    let archived = make_and_archive_wal(&pg, 3);
    assert!(archived >= 3);

    let objects = wal_objects(&env.repo);
    assert!(objects.len() as u64 >= archived, "{objects:?}");
    let report = env.cairn_json(&["wal", "verify", "--read-data", "--json"]);
    assert_eq!(report["healthy"], true, "{report}");
    let timeline = &report["report"]["timelines"][0];
    assert_eq!(timeline["timeline"], 1);
    assert!(timeline["segments"].as_u64().unwrap() >= 3, "{report}");

    // Every archived segment still in pg_wal comes back byte for byte.
    let mut compared = 0;
    for obj in &objects {
        let name = obj.file_name().unwrap().to_str().unwrap();
        let original = pg.data_dir.join("pg_wal").join(name);
        if name.len() != 24 || !original.exists() {
            continue;
        }
        let dest = env.path(&format!("fetched-{name}"));
        env.cairn_ok(&["wal-fetch", name, dest.to_str().unwrap()]);
        assert!(std::fs::read(&dest).unwrap() == std::fs::read(&original).unwrap(), "{name} differs");
        compared += 1;
    }
    assert!(compared >= 2, "too few segments left in pg_wal to compare ({compared})");
    // Compressed and encrypted: a WAL segment of mostly repeated rows shrinks.
    let stored: u64 = objects.iter().map(|o| std::fs::metadata(o).unwrap().len()).sum();
    assert!(stored < archived * (16 << 20) / 2, "{stored} bytes stored for {archived} segments");

    // The WAL archive is replicated with the rest, and verified by SHA-256.
    let replica = env.path("replica");
    let replica_s = replica.to_str().unwrap();
    env.cairn_ok(&["replicate", "--to", replica_s]);
    let verified = env.cairn_json(&["replicate", "--verify", "--json", "--to", replica_s]);
    assert_eq!(verified["complete"], true, "{verified}");
    let name =
        objects.iter().map(|o| o.file_name().unwrap().to_str().unwrap()).find(|n| n.len() == 24).unwrap();
    let from_replica = env.path("from-replica");
    let out = env
        .cairn_cmd()
        .env("CAIRN_REPOSITORY", &replica)
        .args(["wal-fetch", name, from_replica.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let primary_copy = env.path("from-primary");
    env.cairn_ok(&["wal-fetch", name, primary_copy.to_str().unwrap()]);
    assert!(std::fs::read(&from_replica).unwrap() == std::fs::read(&primary_copy).unwrap());
    flip_byte(&replica.join("cairn/wal").join(name), 100);
    let out = env.cairn(&["replicate", "--verify", "--to", replica_s]);
    assert_eq!(out.status.code(), Some(4), "a damaged WAL copy on the replica is found: {}", describe(&out));
    env.cairn_ok(&["replicate", "--verify", "--repair", "--to", replica_s]);
    let verified = env.cairn_json(&["replicate", "--verify", "--json", "--to", replica_s]);
    assert_eq!(verified["complete"], true, "{verified}");
}

#[test]
fn pushes_are_idempotent_conflicts_and_damage_are_loud() {
    let env = Env::new();
    let pg = archiving_cluster(&env);
    make_and_archive_wal(&pg, 2);
    let first = wal_objects(&env.repo).into_iter().find(|p| p.file_name().unwrap().len() == 24).unwrap();
    let name = first.file_name().unwrap().to_str().unwrap().to_string();

    // The same segment again (PostgreSQL retries after a crash): success.
    let copy_dir = env.path("again");
    std::fs::create_dir_all(&copy_dir).unwrap();
    let same = copy_dir.join(&name);
    env.cairn_ok(&["wal-fetch", &name, same.to_str().unwrap()]);
    env.cairn_ok(&["wal-push", same.to_str().unwrap()]);
    // Different content under the same name: refused, archive unchanged.
    let mut bytes = std::fs::read(&same).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&same, &bytes).unwrap();
    let before = std::fs::read(&first).unwrap();
    let out = env.cairn(&["wal-push", same.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("different content"), "{}", describe(&out));
    assert_eq!(std::fs::read(&first).unwrap(), before);

    // Not archived: exit 1, the normal answer past the end of the archive.
    let dest = env.path("missing");
    let out = env.cairn(&["wal-fetch", "0000000100000000000000FF", dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(!dest.exists());
    let out = env.cairn(&["wal-fetch", "../../etc/passwd", dest.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));

    // A damaged object: wal-fetch exits 126 (PostgreSQL stops recovery
    // instead of ending it there), nothing is written; verify names it.
    flip_byte(&first, 200);
    let out = env.cairn(&["wal-fetch", &name, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(126), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"), "{}", describe(&out));
    assert!(!dest.exists(), "no bytes of a damaged segment are handed out");
    let out = env.cairn(&["wal", "verify", "--read-data"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&name), "{}", describe(&out));

    // An unreachable repository is not "missing": 126 again; and wal-push fails fast.
    let out = env
        .cairn_cmd()
        .env("CAIRN_REPOSITORY", env.path("nowhere"))
        .args(["wal-fetch", &name, dest.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", describe(&out));
    let started = Instant::now();
    let out = env
        .cairn_cmd()
        .env("CAIRN_REPOSITORY", env.path("nowhere"))
        .args(["wal-push", same.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(10), "{}", describe(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The newest physical base backup's end time, from `snapshots --json`.
fn base_end_time(env: &Env) -> serde_json::Value {
    let snaps = env.cairn_json(&["snapshots", "--json"]);
    let newest = snaps.as_array().unwrap().last().unwrap().clone();
    newest["cairn"]["metadata"]["end_time"].clone()
}

#[test]
fn wal_verify_reports_a_gap_in_the_chain() {
    let env = Env::new();
    let pg = archiving_cluster(&env);
    make_and_archive_wal(&pg, 4);
    let segments: Vec<_> =
        wal_objects(&env.repo).into_iter().filter(|p| p.file_name().unwrap().len() == 24).collect();
    assert!(segments.len() >= 3, "{segments:?}");
    let hole = &segments[1];
    std::fs::remove_file(hole).unwrap();
    let out = env.cairn(&["wal", "verify"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let missing = hole.file_name().unwrap().to_str().unwrap();
    assert!(text.contains("GAP") && text.contains(missing), "{text}");
    assert!(text.contains("no physical base backups"), "{text}");

    // A base backup whose first WAL segment is not archived cannot be recovered.
    env.cairn_ok(&["backup", "postgres", "--physical", "--url", &pg.url("postgres")]);
    archive_everything(&pg);
    // (The gap made earlier is still there, so this exits 4 as well.)
    let out = env.cairn(&["wal", "verify", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let start = report["report"]["recovery_windows"][0]["start_segment"].as_str().unwrap().to_string();
    assert!(report["report"]["recovery_windows"][0]["through_segment"].is_string(), "{report}");
    std::fs::remove_file(env.repo.join("cairn/wal").join(&start)).unwrap();
    let out = env.cairn(&["wal", "verify"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NOT RECOVERABLE") && text.contains(&start), "{text}");
}

/// The DBA's scenario: rows are inserted, the time is noted, the rows are
/// deleted; a physical restore to the noted time brings them back.
#[test]
fn point_in_time_restore_brings_deleted_rows_back() {
    let env = Env::new();
    let pg = archiving_cluster(&env);
    pg.psql("postgres", "CREATE TABLE orders (id int PRIMARY KEY, note text)");
    pg.psql("postgres", "INSERT INTO orders SELECT i, 'before backup' FROM generate_series(1, 1000) i");
    let base = env.cairn_json(&["backup", "--json", "postgres", "--physical", "--url", &pg.url("postgres")]);
    assert_eq!(base["mode"], "physical", "{base}");
    assert!(base["warnings"].as_array().unwrap().is_empty(), "archiving is configured: {base}");

    pg.psql("postgres", "INSERT INTO orders SELECT i, 'after backup' FROM generate_series(1001, 1500) i");
    std::thread::sleep(Duration::from_millis(1100));
    let noted = pg.psql("postgres", "SELECT to_char(now(), 'YYYY-MM-DD HH24:MI:SS.US+00') FROM (SELECT set_config('timezone', 'UTC', false)) s");
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("postgres", "DELETE FROM orders");
    pg.psql("postgres", "INSERT INTO orders VALUES (9999, 'after the accident')");
    archive_everything(&pg);

    // The archive covers the base backup up to the accident and past it.
    let report = env.cairn_json(&["wal", "verify", "--json"]);
    let window = &report["report"]["recovery_windows"][0];
    assert_eq!(window["from_time"], base_end_time(&env), "{report}");
    let through = window["through_segment"].as_str().expect("the base backup is recoverable");
    assert!(through >= window["start_segment"].as_str().unwrap(), "{report}");
    let archived =
        chrono::DateTime::parse_from_rfc3339(window["through_archived_at"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now() - archived.to_utc()).num_seconds() < 120, "{report}");

    let (out, copy) = restore_latest(&env, &env.path("pg/restored"), &["--to-time", &noted, "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let stop = report["details"]["report"]["recovery_stop"].as_str().unwrap_or_default();
    assert!(stop.contains("recovery stopping before"), "{report}");
    let psql = |sql: &str| copy.psql("postgres", sql);
    assert_eq!(psql("SELECT count(*) FROM orders"), "1500", "rows as of the noted time");
    assert_eq!(psql("SELECT count(*) FROM orders WHERE id = 9999"), "0");
    assert_eq!(psql("SELECT pg_is_in_recovery()"), "f", "promoted at the target");
    drop(copy);
}

/// cairn with the password in a file the restored server can read too.
fn with_password_file(env: &Env) -> std::process::Command {
    let mut c = env.cairn_cmd();
    c.env_remove("CAIRN_PASSWORD").env("CAIRN_PASSWORD_FILE", env.path("password"));
    c
}

/// `cairn restore latest --physical --data-dir DIR --start` on a free port,
/// with `extra` arguments; the server, stopped when the test ends, whether
/// or not the restore succeeded.
fn restore_latest(env: &Env, data_dir: &Path, extra: &[&str]) -> (std::process::Output, RestoredServer) {
    let port = cairn_testkit::free_port().to_string();
    let out = with_password_file(env)
        .args(["restore", "latest", "--physical", "--data-dir", data_dir.to_str().unwrap()])
        .args(["--start", "--port", &port])
        .args(extra)
        .output()
        .unwrap();
    let server =
        RestoredServer { data_dir: data_dir.to_path_buf(), bin: cairn_testkit::postgres().bin, port };
    (out, server)
}

/// Stops a restored server when the test ends.
struct RestoredServer {
    data_dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    port: String,
}

impl RestoredServer {
    /// `psql -At -c SQL` against `database` on the restored server.
    fn psql(&self, database: &str, sql: &str) -> String {
        let out = std::process::Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-At",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &self.port,
                "-d",
                database,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RestoredServer {
    fn drop(&mut self) {
        let _ = cairn_testkit::as_postgres_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// A damaged WAL segment stops recovery with a clear error; it is never
/// skipped (which would silently end recovery before the target).
#[test]
fn damaged_wal_stops_recovery_instead_of_skipping_it() {
    let env = Env::new();
    let pg = archiving_cluster(&env);
    pg.psql("postgres", "CREATE TABLE t2 (i int)");
    env.cairn_ok(&["backup", "postgres", "--physical", "--url", &pg.url("postgres")]);
    let before: Vec<_> = wal_objects(&env.repo);
    for _ in 0..3 {
        pg.psql("postgres", "INSERT INTO t2 SELECT generate_series(1, 5000)");
        pg.psql("postgres", "SELECT pg_switch_wal()");
    }
    archive_everything(&pg);
    let after: Vec<_> = wal_objects(&env.repo)
        .into_iter()
        .filter(|p| !before.contains(p) && p.file_name().unwrap().len() == 24)
        .collect();
    assert!(!after.is_empty());
    // The newest segment: recovery to the end of the archive must read it.
    let victim = after.last().unwrap().clone();
    flip_byte(&victim, 300);

    let restored = env.path("pg/restored");
    let (out, _copy) = restore_latest(&env, &restored, &["--recovery-timeout", "120"]);
    let log = std::fs::read_to_string(restored.join("log/cairn-recovery.log")).unwrap_or_default();
    assert_ne!(out.status.code(), Some(0), "{}\nflipped {}\n{log}", describe(&out), victim.display());
    let err = String::from_utf8_lossy(&out.stderr);
    let damaged = victim.file_name().unwrap().to_str().unwrap();
    let log = std::fs::read_to_string(restored.join("log/cairn-recovery.log")).unwrap_or_default();
    assert!(
        log.contains(damaged) && log.contains("damaged"),
        "the server log names the damaged segment:\n{log}\n{err}"
    );
    assert!(err.contains("recovery"), "{err}");
}

/// Restore after an earlier failover: the archive holds timeline 1 and,
/// from a promoted copy, timeline 2 with its history file; recovery from
/// the old base backup follows the history onto timeline 2.
#[test]
fn recovery_follows_a_timeline_switch_in_the_archive() {
    let env = Env::new();
    let old_primary = archiving_cluster(&env);
    old_primary.psql("postgres", "CREATE TABLE events (id int, phase text)");
    old_primary.psql("postgres", "INSERT INTO events SELECT i, 'timeline 1' FROM generate_series(1, 100) i");
    env.cairn_ok(&["backup", "postgres", "--physical", "--url", &old_primary.url("postgres")]);
    old_primary.psql(
        "postgres",
        "INSERT INTO events SELECT i, 'timeline 1 after backup' FROM generate_series(101, 150) i",
    );
    archive_everything(&old_primary);

    // Failover: a copy recovered from the archive is promoted (timeline 2)
    // and keeps archiving into the same repository; the old primary is gone.
    let promoted_dir = env.path("pg/promoted");
    let port = cairn_testkit::free_port();
    let out = with_password_file(&env)
        .args(["restore", "latest", "--physical", "--data-dir", promoted_dir.to_str().unwrap()])
        .args(["--start", "--keep-archiving", "--port", &port.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    drop(old_primary);
    let promoted = cairn_testkit::PgCluster {
        data_dir: promoted_dir.clone(),
        port,
        bin: cairn_testkit::postgres().bin,
        log: promoted_dir.join("log/cairn-recovery.log"),
    };
    assert_eq!(promoted.psql("postgres", "SELECT timeline_id FROM pg_control_checkpoint()"), "2");
    promoted.psql("postgres", "INSERT INTO events SELECT i, 'timeline 2' FROM generate_series(151, 175) i");
    archive_everything(&promoted);
    let report = env.cairn_json(&["wal", "verify", "--json"]);
    let timelines: Vec<u64> = report["report"]["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timeline"].as_u64().unwrap())
        .collect();
    assert!(timelines.contains(&1) && timelines.contains(&2), "{report}");
    assert!(env.repo.join("cairn/wal/00000002.history").exists(), "the history file is archived");
    drop(promoted);

    // The old base backup (timeline 1) recovers onto timeline 2's end.
    let (out, copy) = restore_latest(&env, &env.path("pg/restored"), &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        copy.psql("postgres", "SELECT count(*), count(*) FILTER (WHERE phase = 'timeline 2') FROM events"),
        "175|25"
    );
}

/// Tablespaces outside the data directory are backed up through cairn's
/// own replication connection (here logging in with SCRAM and with MD5
/// passwords) and come back where the DBA puts them: mapped to a new
/// directory, or inside the data directory. A restore that would land on
/// the original, still used, directory is refused before anything is written.
#[test]
fn tablespaces_come_back_mapped_or_in_place() {
    let env = Env::new();
    let pg = archiving_cluster(&env);
    let original = env.path("pg/ts-original");
    std::fs::create_dir_all(&original).unwrap();
    cairn_testkit::give_to_postgres(&original);
    pg.psql("postgres", &format!("CREATE TABLESPACE fast LOCATION '{}'", original.display()));
    pg.psql("postgres", "CREATE TABLE hot (id int PRIMARY KEY, pad text) TABLESPACE fast");
    pg.psql("postgres", "INSERT INTO hot SELECT i, repeat('h', 100) FROM generate_series(1, 20000) i");
    pg.psql("postgres", "CREATE DATABASE shop TABLESPACE fast");
    pg.psql("shop", "CREATE TABLE orders AS SELECT generate_series(1, 3000) AS id");
    let oid = pg.psql("postgres", "SELECT oid FROM pg_tablespace WHERE spcname = 'fast'");

    pg.psql("postgres", "SET password_encryption = 'scram-sha-256'; CREATE ROLE backup_scram LOGIN REPLICATION PASSWORD 'scram-secret'");
    pg.psql(
        "postgres",
        "SET password_encryption = 'md5'; CREATE ROLE backup_md5 LOGIN REPLICATION PASSWORD 'md5-secret'",
    );
    for role in ["backup_scram", "backup_md5"] {
        pg.psql("postgres", &format!("GRANT EXECUTE ON FUNCTION pg_control_system() TO {role}"));
    }
    pg.prepend_hba(
        "host all backup_scram 127.0.0.1/32 scram-sha-256\nhost replication backup_scram 127.0.0.1/32 scram-sha-256\n\
         host all backup_md5 127.0.0.1/32 md5\nhost replication backup_md5 127.0.0.1/32 md5\n",
    );
    let url =
        |user: &str, password: &str| format!("postgresql://{user}:{password}@127.0.0.1:{}/postgres", pg.port);

    let out = env.cairn(&["backup", "postgres", "--physical", "--url", &url("backup_scram", "wrong")]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password authentication failed") && stderr.contains("check the user and password"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong"), "the password is never echoed: {stderr}");

    let md5 = env.cairn_json(&[
        "backup",
        "--json",
        "postgres",
        "--physical",
        "--url",
        &url("backup_md5", "md5-secret"),
    ]);
    assert_eq!(md5["mode"], "physical", "{md5}");
    let scram = env.cairn_json(&[
        "backup",
        "--json",
        "postgres",
        "--physical",
        "--url",
        &url("backup_scram", "scram-secret"),
    ]);
    assert_eq!(scram["mode"], "physical", "{scram}");
    // The tablespace's relation files are in the snapshot under pg_tblspc/<oid>/.
    let listing = env.cairn_ok(&["ls", "latest"]);
    assert!(listing.lines().any(|l| l.contains(&format!("pg_tblspc/{oid}/PG_"))), "{listing}");
    pg.psql("postgres", "INSERT INTO hot SELECT i, 'after' FROM generate_series(20001, 20500) i");
    archive_everything(&pg);

    // The original directory is in use: refused, with the way out, and nothing written.
    let refused = env.path("pg/refused");
    let out = with_password_file(&env)
        .args(["restore", "latest", "--physical", "--data-dir", refused.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not empty") && stderr.contains("--tablespace-map fast=/NEW/DIR"), "{stderr}");
    assert!(std::fs::read_dir(&refused).map(|mut d| d.next().is_none()).unwrap_or(true), "nothing written");
    let out = with_password_file(&env)
        .args(["restore", "latest", "--physical", "--tablespace-map", "nosuch=/tmp/x"])
        .args(["--data-dir", refused.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fast (oid"), "{}", describe(&out));

    let moved = env.path("pg/ts-moved");
    let mapped = env.path("pg/mapped");
    let (out, server) =
        restore_latest(&env, &mapped, &["--tablespace-map", &format!("fast={}", moved.display())]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(std::fs::read_link(mapped.join("pg_tblspc").join(&oid)).unwrap(), moved);
    assert_eq!(server.psql("postgres", "SELECT count(*) FROM hot"), "20500", "replayed past the backup");
    assert_eq!(server.psql("shop", "SELECT count(*) FROM orders"), "3000");
    assert_eq!(
        server
            .psql("postgres", "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'fast'"),
        moved.display().to_string()
    );
    drop(server);

    let inside = env.path("pg/in-place");
    let (out, server) = restore_latest(&env, &inside, &["--tablespaces-in-place"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(std::fs::symlink_metadata(inside.join("pg_tblspc").join(&oid)).unwrap().is_dir());
    assert_eq!(server.psql("postgres", "SELECT count(*) FROM hot"), "20500");
    assert_eq!(server.psql("shop", "SELECT count(*) FROM orders"), "3000");
    drop(server);
}

/// A physical restore is durable before it reports success: every file and
/// directory of the data directory and of a tablespace mapped to a new
/// directory, the recovery settings, the tablespace link and the
/// directories the restore made.
#[test]
fn a_physical_restore_is_durable_before_it_reports_success() {
    let env = Env::new();
    let pg = archiving_cluster(&env);
    let original = env.path("pg/ts-original");
    std::fs::create_dir_all(&original).unwrap();
    cairn_testkit::give_to_postgres(&original);
    pg.psql("postgres", &format!("CREATE TABLESPACE fast LOCATION '{}'", original.display()));
    pg.psql("postgres", "CREATE TABLE hot TABLESPACE fast AS SELECT generate_series(1, 1000) AS id");
    env.cairn_ok(&["backup", "postgres", "--physical", "--url", &pg.url("postgres")]);

    let restored = env.path("pg/restored");
    let data_dir = restored.join("data");
    let moved = restored.join("ts/fast");
    let mut cmd = with_password_file(&env);
    cmd.args(["restore", "latest", "--physical", "--data-dir", data_dir.to_str().unwrap()])
        .args(["--tablespace-map", &format!("fast={}", moved.display())]);
    strace::assert_durable(&cmd, &env.path("physical.trace"), &restored, Some("restored base backup"));
    assert!(data_dir.join("recovery.signal").is_file());
    let oid = pg.psql("postgres", "SELECT oid FROM pg_tablespace WHERE spcname = 'fast'");
    assert_eq!(std::fs::read_link(data_dir.join("pg_tblspc").join(&oid)).unwrap(), moved);
}

/// `wal-fetch` hands PostgreSQL a durable file: written under a temporary
/// name, fsynced, renamed into place, and the directory fsynced.
#[test]
fn wal_fetch_writes_the_segment_durably() {
    let env = Env::new();
    env.init();
    let name = "000000010000000000000007";
    let segment = env.path("archived").join(name);
    std::fs::create_dir_all(segment.parent().unwrap()).unwrap();
    let content = pseudo_random(7, 1 << 20);
    std::fs::write(&segment, &content).unwrap();
    env.cairn_ok(&["wal-push", segment.to_str().unwrap()]);

    let pg_wal = env.path("restored/pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    let mut cmd = env.cairn_cmd();
    cmd.args(["wal-fetch", name, pg_wal.join("RECOVERYXLOG").to_str().unwrap()]);
    strace::assert_durable(&cmd, &env.path("fetch.trace"), &pg_wal, None);
    assert_eq!(std::fs::read(pg_wal.join("RECOVERYXLOG")).unwrap(), content);
}

/// With `--spool`, a `wal-push` that cannot reach the repository keeps the
/// file durably in the spool and succeeds; the spool is bounded (fail, or
/// drop with an error, when full); `cairn wal drain` and later pushes empty
/// it into the repository, byte for byte.
#[test]
fn wal_push_spools_while_the_repository_is_away() {
    let env = Env::new();
    env.init();
    let pg_wal = env.path("pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    let segment = |n: u8| {
        let path = pg_wal.join(format!("0000000100000000000000{n:02X}"));
        let content: Vec<u8> =
            (0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ n).collect();
        std::fs::write(&path, content).unwrap();
        path
    };
    let (first, second, third) = (segment(1), segment(2), segment(3));
    let spool = env.path("spool");
    let push = |file: &Path, extra: &[&str]| {
        let mut args = vec!["wal-push", file.to_str().unwrap(), "--spool", spool.to_str().unwrap()];
        args.extend(["--spool-max-size", "2MiB"]);
        args.extend(extra);
        env.cairn(&args)
    };
    let spooled = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    };

    let away = env.path("repo-away");
    std::fs::rename(&env.repo, &away).unwrap();
    let out = push(&first, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kept in the local spool"), "{}", describe(&out));
    let out = push(&second, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(spooled(), ["000000010000000000000001", "000000010000000000000002"]);
    // Full: PostgreSQL is told to keep the file, or it is dropped loudly.
    let out = push(&third, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is full"), "{}", describe(&out));
    let out = push(&third, &["--when-spool-full", "drop"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DROPPED"), "{}", describe(&out));
    assert_eq!(spooled().len(), 2);
    let out = env.cairn(&["wal", "drain", "--spool", spool.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "the repository is still away: {}", describe(&out));

    std::fs::rename(&away, &env.repo).unwrap();
    let drained = env.cairn_json(&["wal", "drain", "--spool", spool.to_str().unwrap(), "--json"]);
    assert_eq!(drained["report"]["pushed"].as_array().unwrap().len(), 2, "{drained}");
    assert_eq!(drained["report"]["remaining"], 0, "{drained}");
    assert!(spooled().is_empty());
    for file in [&first, &second] {
        let back = env.path("fetched");
        let name = file.file_name().unwrap().to_str().unwrap();
        env.cairn_ok(&["wal-fetch", name, back.to_str().unwrap()]);
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(file).unwrap(), "{name} came back intact");
    }
    // An empty spool does not hold pushes back after the outage.
    let out = push(&third, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(spooled().is_empty(), "archived, not spooled");
    let back = env.path("fetched-third");
    env.cairn_ok(&["wal-fetch", "000000010000000000000003", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&third).unwrap());
}

/// A real server archiving through the spool: while the repository is
/// away its archiver keeps succeeding (pg_wal does not grow), and once the
/// spool is drained the archive is whole again.
#[test]
fn a_server_keeps_archiving_through_the_spool() {
    let env = Env::new();
    let spool = env.path("spool");
    let pg = archiving_cluster_with(&env, &format!("--spool '{}'", spool.display()));
    make_and_archive_wal(&pg, 1);
    let away = env.path("repo-away");
    std::fs::rename(&env.repo, &away).unwrap();
    make_and_archive_wal(&pg, 3);
    archive_everything(&pg); // and waits until the archiver is done: it never failed
    let held = std::fs::read_dir(&spool)
        .unwrap()
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
        .count();
    assert!(held >= 3, "{held} files spooled");
    std::fs::rename(&away, &env.repo).unwrap();
    let drained = env.cairn_json(&["wal", "drain", "--spool", spool.to_str().unwrap(), "--json"]);
    assert_eq!(drained["report"]["remaining"], 0, "{drained}");
    let report = env.cairn_json(&["wal", "verify", "--read-data", "--json"]);
    let timeline = &report["report"]["timelines"][0];
    assert_eq!(timeline["gaps"].as_array().unwrap().len(), 0, "{report}");
    assert!(timeline["segments"].as_u64().unwrap() >= 4, "{report}");
}

/// `--max-rate` has the server pace the base backup: it takes at least as
/// long as its size at that rate. A rate PostgreSQL would refuse is refused
/// up front.
#[test]
fn a_capped_base_backup_keeps_to_its_rate() {
    let env = Env::new();
    let pg = archiving_cluster(&env);
    pg.psql(
        "postgres",
        "CREATE TABLE filler AS SELECT i, repeat('f', 200) AS pad FROM generate_series(1, 40000) i",
    );
    let out =
        env.cairn(&["backup", "postgres", "--physical", "--max-rate", "16KiB", "--url", &pg.url("postgres")]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("32KiB to 1GiB"), "{}", describe(&out));

    let rate: u64 = 16 << 20;
    let started = Instant::now();
    let backup = env.cairn_json(&[
        "backup",
        "--json",
        "postgres",
        "--physical",
        "--max-rate",
        "16MiB",
        "--url",
        &pg.url("postgres"),
    ]);
    let elapsed = started.elapsed().as_secs_f64();
    let sent = backup["details"]["bytes"].as_u64().unwrap();
    assert!(sent > 30 << 20, "{backup}");
    // The server's throttle works on samples; allow it a tenth.
    let floor = sent as f64 / rate as f64 * 0.9;
    assert!(elapsed >= floor, "{sent} bytes in {elapsed:.2} s, faster than 16 MiB/s");
}

/// The first `wal-push` into a repository creates `cairn/` and `cairn/wal/`;
/// the segment is durable only once those new directories are too, each
/// named durably in its parent, before `wal-push` reports success.
#[test]
fn the_first_push_makes_the_new_archive_directories_durable() {
    let env = Env::new();
    env.init();
    assert!(!env.repo.join("cairn").exists());
    let segment = env.path("pg_wal").join("000000010000000000000001");
    std::fs::create_dir_all(segment.parent().unwrap()).unwrap();
    std::fs::write(&segment, pseudo_random(1, 1 << 16)).unwrap();
    let mut cmd = env.cairn_cmd();
    cmd.args(["wal-push", segment.to_str().unwrap()]);
    // (The temporary file in `tmp/` needs no durable name: it is linked into place.)
    strace::assert_durable(&cmd, &env.path("push.trace"), &env.repo.join("cairn"), None);
    assert!(env.repo.join("cairn/wal/000000010000000000000001").is_file());
}
