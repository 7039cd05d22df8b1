//! The source conformance suite (`cairn_testkit::conformance`) run by every
//! adapter of this build, each with its fixture: volume (a directory tree,
//! compared byte for byte with modes, times and links), PostgreSQL logical
//! (a database on the shared test server, compared by row counts and
//! content digests per table), PostgreSQL physical (a private cluster,
//! since a base backup takes the whole cluster; its restore is started and
//! compared the same way) and Redis logical (a private server, restored
//! into a new one each time, compared by `DEBUG DIGEST`). Restores here
//! skip fsync (`--no-fsync`): these rules are not about durability
//! (tests/volume.rs and tests/postgres_wal.rs trace that), and on a slow
//! disk syncing would double their time.

mod common;

use std::path::{Path, PathBuf};

use cairn_testkit::conformance::{self as rules, Fixture, Harness};
use cairn_testkit::{PgCluster, PgServer, RedisInstance};
use common::*;

fn harness() -> Harness {
    Harness::new(env!("CARGO_BIN_EXE_cairn"))
}

/// Tens of MiB that compress poorly, in files of 8 MiB.
const BIG_FILES: u64 = 12;

// ---------------------------------------------------------------- volume

struct Volume {
    src: PathBuf,
    targets: usize,
}

impl Volume {
    fn new(h: &Harness) -> Volume {
        let src = h.path("src");
        make_tree(&src);
        Volume { src, targets: 0 }
    }
}

impl Fixture for Volume {
    type Target = PathBuf;

    fn name(&self) -> String {
        "volume".into()
    }

    fn backup_args(&self) -> Vec<String> {
        // Small packs: many land while a big backup runs.
        vec!["volume".into(), "--pack-size".into(), "2".into(), self.src.display().to_string()]
    }

    fn change_a_little(&mut self) {
        std::fs::write(self.src.join("docs/changed.txt"), b"one new line\n").unwrap();
        std::fs::write(self.src.join("many/dir0/file0.dat"), pseudo_random(4242, 1000)).unwrap();
    }

    fn make_big(&mut self) {
        for i in 0..BIG_FILES {
            std::fs::write(self.src.join(format!("data/big-{i}.bin")), pseudo_random(9_000 + i, 8 << 20))
                .unwrap();
        }
    }

    fn make_unreachable(&mut self) {
        std::fs::rename(&self.src, self.src.with_extension("gone")).unwrap();
    }

    fn unreachable_names(&self) -> String {
        self.src.display().to_string()
    }

    fn damage_path(&self) -> String {
        "/data/random.bin".into()
    }

    fn new_target(&mut self, h: &Harness) -> PathBuf {
        self.targets += 1;
        h.path(&format!("restore-{}", self.targets))
    }

    fn restore_args(&self, target: &PathBuf) -> Vec<String> {
        vec!["--to".into(), target.display().to_string(), "--no-fsync".into()]
    }

    fn restore_started(&self, target: &PathBuf) -> bool {
        std::fs::read_dir(target).is_ok_and(|mut d| d.next().is_some())
    }

    fn source_digest(&self) -> String {
        format!("{:#?}", snapshot_of(&self.src, true))
    }

    fn target_digest(&self, target: &PathBuf) -> String {
        format!("{:#?}", snapshot_of(target, true))
    }
}

#[test]
fn volume_round_trip_is_identical() {
    let h = harness();
    rules::round_trip_is_identical(&h, &mut Volume::new(&h));
}

#[test]
fn volume_small_change_stores_little() {
    let h = harness();
    rules::a_small_change_stores_little(&h, &mut Volume::new(&h));
}

#[test]
fn volume_kill_9_mid_backup_resumes() {
    let h = harness();
    rules::kill_9_mid_backup_leaves_a_sound_repository_and_the_next_run_reuses_it(&h, &mut Volume::new(&h));
}

#[test]
fn volume_damaged_blob_refuses_restore() {
    let h = harness();
    rules::a_damaged_blob_makes_restore_refuse_and_name_it(&h, &mut Volume::new(&h));
}

#[test]
fn volume_sigterm_mid_backup() {
    let h = harness();
    rules::sigterm_mid_backup_stops_cleanly(&h, &mut Volume::new(&h));
}

#[test]
fn volume_sigterm_mid_restore() {
    let h = harness();
    rules::sigterm_mid_restore_stops_cleanly(&h, &mut Volume::new(&h));
}

#[test]
fn volume_unreachable_source() {
    let h = harness();
    rules::an_unreachable_source_fails_in_one_line(&h, &mut Volume::new(&h));
}

#[test]
fn volume_settings() {
    rules::settings_defaults_agree(&cairn_volume::VolumeSource, &["/srv/data"], "paths: [/srv/data]");
    rules::unknown_settings_keys_are_refused(&harness(), "volume", "paths: [/srv/data]");
}

// ---------------------------------------------------------------- PostgreSQL

/// The SQL that makes a table of about 100 MiB of COPY text that compresses
/// poorly (base64 of hashes), for interrupting backups and restores mid-way.
const BIG_TABLE: &str = "CREATE TABLE big AS SELECT i, \
    encode(sha512(i::text::bytea), 'base64') AS pad \
    FROM generate_series(1, 1000000) i";

/// A table of a few MiB: changing three of its rows is a small change.
const BASE_TABLES: &str = "CREATE TABLE items (id int PRIMARY KEY, note text, qty int);
    INSERT INTO items SELECT i, 'item ' || md5(i::text), i % 17 FROM generate_series(1, 150000) i;
    CREATE TABLE shop (id serial PRIMARY KEY, name text NOT NULL);
    INSERT INTO shop (name) SELECT 'shop ' || i FROM generate_series(1, 100) i;
    CREATE VIEW busy AS SELECT * FROM items WHERE qty > 10;";

const SMALL_CHANGE: &str = "UPDATE items SET note = 'changed' WHERE id IN (100, 70000, 140000)";

/// A logical PostgreSQL source: one database on the shared server.
struct Logical {
    pg: PgServer,
    db: String,
    url: String,
}

impl Logical {
    fn new() -> Logical {
        let pg = cairn_testkit::postgres();
        let db = unique_db("conf");
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        pg.psql(&db, BASE_TABLES);
        Logical { url: pg.db_url(&db), pg, db }
    }
}

impl Fixture for Logical {
    type Target = String;

    fn name(&self) -> String {
        "postgres/logical".into()
    }

    fn backup_args(&self) -> Vec<String> {
        vec!["postgres".into(), "--url".into(), self.url.clone()]
    }

    fn change_a_little(&mut self) {
        self.pg.psql(&self.db, SMALL_CHANGE);
    }

    fn make_big(&mut self) {
        self.pg.psql(&self.db, BIG_TABLE);
    }

    fn make_unreachable(&mut self) {
        // A port nothing listens on.
        self.url = format!("postgresql://postgres@127.0.0.1:{}/{}", cairn_testkit::free_port(), self.db);
    }

    fn unreachable_names(&self) -> String {
        self.url.trim_start_matches("postgresql://postgres@").to_string()
    }

    fn damage_path(&self) -> String {
        "/tables/public.items.copy".into()
    }

    fn new_target(&mut self, _h: &Harness) -> String {
        unique_db("conf_copy")
    }

    fn restore_args(&self, target: &String) -> Vec<String> {
        vec!["--to".into(), self.pg.db_url(target)]
    }

    fn restore_started(&self, target: &String) -> bool {
        self.pg.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{target}' AND query LIKE 'COPY % FROM STDIN'"
            ),
        ) != "0"
    }

    fn source_digest(&self) -> String {
        table_digests(&|sql| self.pg.psql(&self.db, sql)).join("\n")
    }

    fn target_digest(&self, target: &String) -> String {
        table_digests(&|sql| self.pg.psql(target, sql)).join("\n")
    }
}

#[test]
fn postgres_logical_round_trip_is_identical() {
    rules::round_trip_is_identical(&harness(), &mut Logical::new());
}

#[test]
fn postgres_logical_small_change_stores_little() {
    rules::a_small_change_stores_little(&harness(), &mut Logical::new());
}

#[test]
fn postgres_logical_kill_9_mid_backup_resumes() {
    rules::kill_9_mid_backup_leaves_a_sound_repository_and_the_next_run_reuses_it(
        &harness(),
        &mut Logical::new(),
    );
}

#[test]
fn postgres_logical_damaged_blob_refuses_restore() {
    rules::a_damaged_blob_makes_restore_refuse_and_name_it(&harness(), &mut Logical::new());
}

#[test]
fn postgres_logical_sigterm_mid_backup() {
    rules::sigterm_mid_backup_stops_cleanly(&harness(), &mut Logical::new());
}

#[test]
fn postgres_logical_sigterm_mid_restore() {
    rules::sigterm_mid_restore_stops_cleanly(&harness(), &mut Logical::new());
}

#[test]
fn postgres_logical_unreachable_source() {
    rules::an_unreachable_source_fails_in_one_line(&harness(), &mut Logical::new());
}

#[test]
fn postgres_settings() {
    let url = "postgresql://postgres@db.internal/app";
    rules::settings_defaults_agree(&cairn_postgres::PostgresSource, &["--url", url], &format!("url: {url}"));
    rules::unknown_settings_keys_are_refused(&harness(), "postgres", &format!("url: {url}"));
}

/// A physical PostgreSQL source: a private cluster (a base backup takes
/// every database of a cluster, and the shared server holds every test's).
struct Physical {
    cluster: PgCluster,
    bin: PathBuf,
    port: u16,
}

/// A data directory a physical restore lays down and starts; the server is
/// stopped when the target is dropped.
struct DataDir {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = cairn_testkit::as_postgres_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn psql_at(bin: &Path, port: u16, sql: &str) -> String {
    let out = std::process::Command::new(bin.join("psql"))
        .args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .arg("-p")
        .arg(port.to_string())
        .args(["-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "psql -p {port} -c {sql:?}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

impl Physical {
    fn new(h: &Harness) -> Physical {
        let cluster = PgCluster::start(&h.path("pg/data"), "");
        cluster.psql("postgres", BASE_TABLES);
        // Settled pages (hint bits set, tuples frozen): the next backup's
        // changes are the test's, not the first reads'.
        cluster.psql("postgres", "VACUUM FREEZE");
        Physical { bin: cluster.bin.clone(), port: cluster.port, cluster }
    }
}

impl Fixture for Physical {
    type Target = DataDir;

    fn name(&self) -> String {
        "postgres/physical".into()
    }

    fn backup_args(&self) -> Vec<String> {
        vec!["postgres".into(), "--physical".into(), "--url".into(), self.cluster.url("postgres")]
    }

    fn change_a_little(&mut self) {
        self.cluster.psql("postgres", SMALL_CHANGE);
    }

    fn make_big(&mut self) {
        self.cluster.psql("postgres", BIG_TABLE);
    }

    fn make_unreachable(&mut self) {
        self.cluster.stop();
    }

    fn unreachable_names(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn damage_path(&self) -> String {
        format!("/{}", self.cluster.psql("postgres", "SELECT pg_relation_filepath('items')"))
    }

    fn new_target(&mut self, h: &Harness) -> DataDir {
        // The restored server reads the repository and the password file
        // (its restore_command is `cairn wal-fetch`) as the postgres user.
        cairn_testkit::give_to_postgres(h.dir());
        let port = cairn_testkit::free_port();
        DataDir { dir: h.path(&format!("pg/restored-{port}")), port, bin: self.bin.clone() }
    }

    fn restore_args(&self, target: &DataDir) -> Vec<String> {
        let dir = target.dir.display().to_string();
        let port = target.port.to_string();
        ["--physical", "--data-dir", &dir, "--start", "--port", &port, "--no-fsync"]
            .map(String::from)
            .to_vec()
    }

    fn restore_started(&self, target: &DataDir) -> bool {
        std::fs::read_dir(&target.dir).is_ok_and(|mut d| d.next().is_some())
    }

    fn source_digest(&self) -> String {
        table_digests(&|sql| psql_at(&self.bin, self.port, sql)).join("\n")
    }

    fn target_digest(&self, target: &DataDir) -> String {
        table_digests(&|sql| psql_at(&self.bin, target.port, sql)).join("\n")
    }
}

#[test]
fn postgres_physical_round_trip_is_identical() {
    let h = harness();
    rules::round_trip_is_identical(&h, &mut Physical::new(&h));
}

#[test]
fn postgres_physical_small_change_stores_little() {
    let h = harness();
    rules::a_small_change_stores_little(&h, &mut Physical::new(&h));
}

#[test]
fn postgres_physical_kill_9_mid_backup_resumes() {
    let h = harness();
    rules::kill_9_mid_backup_leaves_a_sound_repository_and_the_next_run_reuses_it(&h, &mut Physical::new(&h));
}

#[test]
fn postgres_physical_damaged_blob_refuses_restore() {
    let h = harness();
    rules::a_damaged_blob_makes_restore_refuse_and_name_it(&h, &mut Physical::new(&h));
}

#[test]
fn postgres_physical_sigterm_mid_backup() {
    let h = harness();
    rules::sigterm_mid_backup_stops_cleanly(&h, &mut Physical::new(&h));
}

#[test]
fn postgres_physical_sigterm_mid_restore() {
    let h = harness();
    rules::sigterm_mid_restore_stops_cleanly(&h, &mut Physical::new(&h));
}

#[test]
fn postgres_physical_unreachable_source() {
    let h = harness();
    rules::an_unreachable_source_fails_in_one_line(&h, &mut Physical::new(&h));
}

// ------------------------------------------------------------ redis logical

/// A logical Redis source (SCAN + DUMP): a private server; restores go into
/// a new empty server each (`--to redis://…`), compared by `DEBUG DIGEST`.
struct RedisLogical {
    src: RedisInstance,
    url: String,
    targets: usize,
}

impl RedisLogical {
    fn new(h: &Harness) -> RedisLogical {
        let src = RedisInstance::start(&h.path("redis-src"), &[]);
        src.pipe((0..20_000u64).map(|i| redis_set(&format!("key:{i}"), &pseudo_random(i, 200))));
        RedisLogical { url: src.url(), src, targets: 0 }
    }
}

fn redis_set(key: &str, value: &[u8]) -> Vec<Vec<u8>> {
    vec![b"SET".to_vec(), key.as_bytes().to_vec(), value.to_vec()]
}

impl Fixture for RedisLogical {
    type Target = RedisInstance;

    fn name(&self) -> String {
        "redis/logical".into()
    }

    fn backup_args(&self) -> Vec<String> {
        vec!["redis".into(), "--url".into(), self.url.clone(), "--logical".into()]
    }

    fn change_a_little(&mut self) {
        self.src.pipe((0..3u64).map(|i| redis_set(&format!("key:{}", i * 6007), b"changed")));
    }

    fn make_big(&mut self) {
        self.src.pipe((0..96u64).map(|i| redis_set(&format!("big:{i}"), &pseudo_random(7_000 + i, 1 << 20))));
    }

    fn make_unreachable(&mut self) {
        self.url = format!("redis://127.0.0.1:{}", cairn_testkit::free_port());
    }

    fn unreachable_names(&self) -> String {
        self.url.trim_start_matches("redis://").to_string()
    }

    fn damage_path(&self) -> String {
        "dump.rdb".into()
    }

    fn new_target(&mut self, h: &Harness) -> RedisInstance {
        self.targets += 1;
        RedisInstance::start(&h.path(&format!("redis-target-{}", self.targets)), &[])
    }

    fn restore_args(&self, target: &RedisInstance) -> Vec<String> {
        vec!["--to".into(), target.url()]
    }

    fn restore_started(&self, target: &RedisInstance) -> bool {
        target.cli(&["DBSIZE"]) != "0"
    }

    fn source_digest(&self) -> String {
        self.src.cli(&["DEBUG", "DIGEST"])
    }

    fn target_digest(&self, target: &RedisInstance) -> String {
        target.cli(&["DEBUG", "DIGEST"])
    }
}

#[test]
fn redis_logical_round_trip_is_identical() {
    let h = harness();
    rules::round_trip_is_identical(&h, &mut RedisLogical::new(&h));
}

#[test]
fn redis_logical_small_change_stores_little() {
    let h = harness();
    rules::a_small_change_stores_little(&h, &mut RedisLogical::new(&h));
}

#[test]
fn redis_logical_kill_9_mid_backup_resumes() {
    let h = harness();
    rules::kill_9_mid_backup_leaves_a_sound_repository_and_the_next_run_reuses_it(
        &h,
        &mut RedisLogical::new(&h),
    );
}

#[test]
fn redis_logical_damaged_blob_refuses_restore() {
    let h = harness();
    rules::a_damaged_blob_makes_restore_refuse_and_name_it(&h, &mut RedisLogical::new(&h));
}

#[test]
fn redis_logical_sigterm_mid_backup() {
    let h = harness();
    rules::sigterm_mid_backup_stops_cleanly(&h, &mut RedisLogical::new(&h));
}

#[test]
fn redis_logical_sigterm_mid_restore() {
    let h = harness();
    rules::sigterm_mid_restore_stops_cleanly(&h, &mut RedisLogical::new(&h));
}

#[test]
fn redis_logical_unreachable_source() {
    let h = harness();
    rules::an_unreachable_source_fails_in_one_line(&h, &mut RedisLogical::new(&h));
}

#[test]
fn redis_settings() {
    let url = "redis://cache.internal:6379";
    rules::settings_defaults_agree(&cairn_redis::RedisSource, &["--url", url], &format!("url: {url}"));
    rules::unknown_settings_keys_are_refused(&harness(), "redis", &format!("url: {url}"));
}
