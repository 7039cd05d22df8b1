//! Repositories in S3, against real S3 servers started on loopback by the
//! test kit (Ceph RGW for real semantics, moto for a second implementation):
//! round trips, restic reading what cairn wrote to the bucket, restic's
//! `s3:` spellings naming the same bucket, resuming after `kill -9`, and
//! clear errors for bad credentials.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_testkit::S3Server;
use common::*;

/// An environment whose repository is `s3://<fresh bucket>/repo` on `server`.
struct S3Env {
    env: Env,
    server: S3Server,
    bucket: String,
}

impl S3Env {
    fn new(server: S3Server) -> S3Env {
        S3Env { env: Env::new(), bucket: cairn_testkit::unique_bucket("cairn-e2e"), server }
    }

    fn url(&self) -> String {
        format!("s3://{}/repo?endpoint={}&region={}", self.bucket, self.server.endpoint, self.server.region)
    }

    fn aws_env(&self, c: &mut Command) {
        c.env("AWS_ACCESS_KEY_ID", &self.server.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.server.secret_key)
            .env("AWS_REGION", &self.server.region)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL");
    }

    fn cairn_cmd(&self) -> Command {
        let mut c = self.env.cairn_cmd();
        c.env("CAIRN_REPOSITORY", self.url());
        self.aws_env(&mut c);
        c
    }

    fn cairn(&self, args: &[&str]) -> std::process::Output {
        self.cairn_cmd().args(args).output().unwrap()
    }

    fn cairn_ok(&self, args: &[&str]) -> String {
        let out = self.cairn(args);
        assert!(out.status.success(), "cairn {args:?}: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    fn cairn_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cairn_ok(args);
        serde_json::from_str(out.lines().rev().find(|l| l.starts_with('{') || l.starts_with('[')).unwrap())
            .unwrap()
    }

    /// The repository in restic's spelling, `s3:http://host:port/bucket/repo`.
    fn restic_location(&self) -> String {
        format!("s3:{}/{}/repo", self.server.endpoint.trim_end_matches('/'), self.bucket)
    }

    fn restic_ok(&self, args: &[&str]) -> String {
        let mut c = self.env.restic_cmd();
        c.env("RESTIC_REPOSITORY", self.restic_location());
        self.aws_env(&mut c);
        let out = c.args(args).output().unwrap();
        assert!(out.status.success(), "restic {args:?}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn ceph_rgw_round_trip_and_restic_reads_the_bucket() {
    let s3 = S3Env::new(cairn_testkit::ceph_rgw());
    let src = s3.env.path("src");
    make_tree(&src);
    s3.cairn_ok(&["init"]);
    let first = s3.cairn_json(&["backup", "--json", "volume", src.to_str().unwrap()]);
    assert!(first["objects"]["files_new"].as_u64().unwrap() > 50);
    std::fs::write(src.join("small.txt"), b"changed").unwrap();
    let second = s3.cairn_json(&["backup", "--json", "volume", src.to_str().unwrap()]);
    // small.txt and its hard link
    assert_eq!(second["objects"]["files_changed"], 2, "{second}");

    let out = s3.env.path("out");
    s3.cairn_ok(&["restore", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &out, true);
    s3.cairn_ok(&["check", "--read-data"]);
    s3.cairn_ok(&["verify", "latest"]);

    assert!(s3.restic_ok(&["check", "--read-data"]).contains("no errors were found"));
    let by_restic = s3.env.path("by-restic");
    s3.restic_ok(&["restore", "latest", "--target", by_restic.to_str().unwrap()]);
    assert_same_tree(&src, &by_restic.join(src.strip_prefix("/").unwrap()), true);
}

/// restic's spellings (`s3:http://host:port/bucket/prefix`, and
/// `s3:bucket/prefix` on the default endpoint) name the same repository as
/// cairn's `s3://bucket/prefix?endpoint=…`, for cairn and for restic, and
/// never become a local directory (`./s3:bucket`) as they once did.
#[test]
fn restic_s3_spellings_name_the_same_repository() {
    let s3 = S3Env::new(cairn_testkit::ceph_rgw());
    let endpoint = s3.server.endpoint.trim_end_matches('/').to_string();
    let restic_form = s3.restic_location();
    let bucket_form = format!("s3:{}/repo", s3.bucket);
    let cwd = s3.env.path("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let src = s3.env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"named three ways").unwrap();
    let run = |location: &str, args: &[&str]| {
        let mut c = s3.cairn_cmd();
        // `s3:bucket/…` names no host: the default endpoint, AWS_ENDPOINT_URL here.
        c.env("CAIRN_REPOSITORY", location).env("AWS_ENDPOINT_URL", &endpoint).current_dir(&cwd);
        let out = c.args(args).output().unwrap();
        assert!(out.status.success(), "{location}: cairn {args:?}: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let snapshot_ids = |listing: &str| -> Vec<String> {
        let list: serde_json::Value = serde_json::from_str(listing.trim()).unwrap();
        list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
    };

    run(&restic_form, &["init"]);
    let backup: serde_json::Value = serde_json::from_str(
        run(&restic_form, &["backup", "--json", "volume", src.to_str().unwrap()]).trim(),
    )
    .unwrap();
    let id = backup["snapshot"].as_str().unwrap().to_string();
    for location in [&s3.url(), &bucket_form] {
        assert_eq!(
            snapshot_ids(&run(location, &["snapshots", "--json"])),
            std::slice::from_ref(&id),
            "{location}"
        );
    }
    // restic, given the same text.
    assert_eq!(snapshot_ids(&s3.restic_ok(&["snapshots", "--json"])), [id]);
    assert!(s3.restic_ok(&["check"]).contains("no errors were found"));
    let left: Vec<_> = std::fs::read_dir(&cwd).unwrap().collect();
    assert!(left.is_empty(), "an s3: location became a local directory: {left:?}");
}

#[test]
fn moto_round_trip() {
    let s3 = S3Env::new(cairn_testkit::moto());
    let src = s3.env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), pseudo_random(1, 3 << 20)).unwrap();
    std::fs::write(src.join("b.txt"), b"hello").unwrap();
    s3.cairn_ok(&["init"]);
    s3.cairn_ok(&["backup", "volume", src.to_str().unwrap()]);
    let out = s3.env.path("out");
    s3.cairn_ok(&["restore", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &out, false);
    s3.cairn_ok(&["check", "--read-data"]);
}

#[test]
fn bad_credentials_and_missing_buckets_fail_clearly() {
    let s3 = S3Env::new(cairn_testkit::ceph_rgw());
    let mut wrong = s3.cairn_cmd();
    wrong.env("AWS_SECRET_ACCESS_KEY", "not-the-secret").arg("init");
    let out = wrong.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("credentials"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // A bucket that does not exist is not a repository (exit 10), not a crash.
    let missing = s3.cairn(&["snapshots"]);
    assert_eq!(missing.status.code(), Some(10), "{}", describe(&missing));
}

#[test]
fn kill_9_mid_backup_to_s3_resumes_without_uploading_again() {
    let s3 = S3Env::new(cairn_testkit::ceph_rgw());
    let src = s3.env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..6 {
        std::fs::write(src.join(format!("f{i}.bin")), pseudo_random(900 + i, 16 << 20)).unwrap();
    }
    s3.cairn_ok(&["init"]);
    let mut child = s3
        .cairn_cmd()
        .args(["backup", "volume", "--pack-size", "2", src.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill once some packs are indexed (an index file appears).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let listed = s3.cairn_cmd().args(["stats", "--json"]).output().unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap_or_default();
        if stats["packs"].as_u64().unwrap_or(0) >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "no packs appeared");
        assert!(child.try_wait().unwrap().is_none(), "the backup finished before it could be killed");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    s3.cairn_ok(&["check", "--read-data"]);
    let resumed = s3.cairn_json(&["backup", "--json", "volume", "--pack-size", "2", src.to_str().unwrap()]);
    assert!(resumed["bytes"]["added"].as_u64().unwrap() < 6 * (16 << 20), "nothing reused: {resumed}");
    let out = s3.env.path("out");
    s3.cairn_ok(&["restore", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &out, false);
}
