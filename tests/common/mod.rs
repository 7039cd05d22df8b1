//! Shared helpers for the end-to-end tests: run the real `cairn` binary and
//! the real `restic` against scratch repositories, build varied source
//! trees, and compare trees byte for byte.
#![allow(dead_code, unused_imports)] // each test file uses a different subset

pub mod strace;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub use cairn_testkit::conformance::{PASSWORD, describe, flip_byte, repo_files};

/// A scratch area with one repository.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new().prefix("cairn-e2e-").tempdir().expect("temp dir");
        let repo = dir.path().join("repo");
        Env { dir, repo }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cairn_cmd(&self) -> Command {
        let mut c = cairn_testkit::conformance::cairn_command(Path::new(env!("CARGO_BIN_EXE_cairn")));
        c.env("CAIRN_REPOSITORY", &self.repo).env("CAIRN_PASSWORD", PASSWORD);
        c
    }

    pub fn cairn(&self, args: &[&str]) -> Output {
        self.cairn_cmd().args(args).output().expect("running cairn")
    }

    /// Runs cairn and panics (showing its output) unless it exits 0.
    pub fn cairn_ok(&self, args: &[&str]) -> String {
        let out = self.cairn(args);
        assert!(out.status.success(), "cairn {args:?} failed: {}", describe(&out));
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs cairn with `--json` semantics and parses the last stdout line.
    pub fn cairn_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cairn_ok(args);
        let line = out.lines().rev().find(|l| l.starts_with('{') || l.starts_with('[')).expect("a JSON line");
        serde_json::from_str(line).expect("valid JSON")
    }

    pub fn restic_cmd(&self) -> Command {
        let restic = which("restic").expect("restic is not installed: run scripts/install-test-deps.sh");
        let mut c = Command::new(restic);
        c.env("RESTIC_REPOSITORY", &self.repo)
            .env("RESTIC_PASSWORD", PASSWORD)
            .env("RESTIC_CACHE_DIR", self.dir.path().join("restic-cache"))
            .env_remove("RESTIC_PASSWORD_FILE");
        c
    }

    pub fn restic_ok(&self, args: &[&str]) -> String {
        let out = self.restic_cmd().args(args).output().expect("running restic");
        assert!(out.status.success(), "restic {args:?} failed: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn init(&self) {
        self.cairn_ok(&["init"]);
    }

    /// Backs up `path` and returns the new snapshot id (full hex).
    pub fn backup(&self, path: &Path) -> String {
        let v = self.cairn_json(&["backup", "--json", "volume", path.to_str().unwrap()]);
        v["snapshot"].as_str().expect("snapshot id").to_string()
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Deterministic pseudo-random bytes (xorshift), so trees are reproducible.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Builds a tree exercising what a volume backup must keep: nested dirs,
/// empty and large files, odd names, symlinks, a hard link, a sparse file,
/// modes and old mtimes.
pub fn make_tree(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    };
    w("empty.txt", b"");
    w("small.txt", b"hello cairn\n");
    w("docs/readme.md", "# Notes\n\nline\n".repeat(200).as_bytes());
    w("data/random.bin", &pseudo_random(1, 5 << 20));
    w(
        "data/text.log",
        "2026-11-23 INFO request served in 12ms path=/api/v1/items\n".repeat(60_000).as_bytes(),
    );
    w("data/copy.bin", &pseudo_random(1, 5 << 20));
    for i in 0..50 {
        w(&format!("many/dir{}/file{i}.dat", i % 5), &pseudo_random(100 + i, 1000 + (i as usize) * 37));
    }
    w("odd names/with space.txt", b"space");
    w("odd names/quote\"and\\backslash", b"quote");
    w("odd names/caf\u{e9} \u{65e5}\u{672c}.txt", b"unicode");
    w("odd names/tab\there", b"tab");
    std::os::unix::fs::symlink("../small.txt", root.join("docs/link-to-small")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    std::fs::hard_link(root.join("small.txt"), root.join("docs/hardlink-to-small")).unwrap();
    let sparse = std::fs::File::create(root.join("data/sparse.img")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"middle", 32 << 20).unwrap();
    drop(sparse);
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::set_permissions(root.join("small.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    w("bin/run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(root.join("bin/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let old = filetime::FileTime::from_unix_time(1_500_000_000, 123_456_789);
    filetime::set_file_mtime(root.join("docs/readme.md"), old).unwrap();
}

/// What a tree holds, per relative path: type, content hash or link target, mode, mtime.
pub fn snapshot_of(root: &Path, with_times: bool) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.mode() & 0o7777;
            let desc = if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o}")
            } else if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else {
                let data = std::fs::read(&path).unwrap();
                let mtime = if with_times {
                    format!(" mtime {}.{}", meta.mtime(), meta.mtime_nsec())
                } else {
                    String::new()
                };
                format!("file {mode:o} {} bytes fnv {:016x}{mtime}", data.len(), fnv(&data))
            };
            out.insert(rel, desc);
        }
    }
    out
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// Asserts two trees hold the same entries with the same content.
pub fn assert_same_tree(expected: &Path, actual: &Path, with_times: bool) {
    let a = snapshot_of(expected, with_times);
    let b = snapshot_of(actual, with_times);
    if a != b {
        let mut diff = String::new();
        for (k, v) in &a {
            match b.get(k) {
                None => diff.push_str(&format!("missing: {} ({v})\n", k.display())),
                Some(w) if w != v => diff.push_str(&format!("differs: {}: {v} vs {w}\n", k.display())),
                _ => {}
            }
        }
        for k in b.keys().filter(|k| !a.contains_key(*k)) {
            diff.push_str(&format!("extra: {}\n", k.display()));
        }
        panic!("trees differ ({} vs {}):\n{diff}", expected.display(), actual.display());
    }
}

/// A fresh database name on the shared PostgreSQL server.
pub fn unique_db(prefix: &str) -> String {
    cairn_testkit::unique_bucket(prefix).replace('-', "_")
}

/// Row count and an order-independent content digest of every user table
/// of one database, through `psql` (a query on that database).
pub fn table_digests(psql: &dyn Fn(&str) -> String) -> Vec<String> {
    let tables = psql(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    );
    tables
        .lines()
        .map(|t| {
            let digest = psql(&format!(
                "SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x"
            ));
            format!("{t} {digest}")
        })
        .collect()
}

/// A cluster archiving into `env`'s repository through the real binary.
pub fn archiving_cluster(env: &Env) -> cairn_testkit::PgCluster {
    archiving_cluster_with(env, "")
}

/// [`archiving_cluster`] with `extra` arguments for `wal-push`.
pub fn archiving_cluster_with(env: &Env, extra: &str) -> cairn_testkit::PgCluster {
    env.init();
    let password_file = env.path("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    cairn_testkit::give_to_postgres(env.dir.path());
    let archive_command = format!(
        "CAIRN_REPOSITORY='{}' CAIRN_PASSWORD_FILE='{}' '{}' wal-push %p {extra}",
        env.repo.display(),
        password_file.display(),
        env!("CARGO_BIN_EXE_cairn")
    );
    cairn_testkit::PgCluster::start(
        &env.path("pg/data"),
        &format!(
            "archive_mode = on\narchive_command = '{}'\nwal_keep_size = 256MB\n",
            archive_command.replace('\'', "''")
        ),
    )
}

/// Waits until every WAL file up to the current one has been archived.
pub fn archive_everything(pg: &cairn_testkit::PgCluster) {
    let needed = pg.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("postgres", "SELECT pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = pg.psql(
            "postgres",
            "SELECT failed_count, coalesce(last_archived_wal, ''), pg_walfile_name(pg_current_wal_lsn()) FROM pg_stat_archiver",
        );
        let f: Vec<&str> = row.split('|').collect();
        assert_eq!(f[0], "0", "the archiver failed; server log:\n{}", pg.log_text());
        if f[1] >= needed.as_str() {
            return;
        }
        assert!(Instant::now() < deadline, "archiving did not catch up: {row}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Flips a byte inside one data blob of a snapshot file: the middle blob of
/// the first file whose path ends with `suffix` (again: back).
pub fn damage_blob_of_file(env: &Env, snapshot: &str, suffix: &str) {
    cairn_testkit::conformance::damage_blob_of_file(&env.repo, PASSWORD, snapshot, suffix);
}
