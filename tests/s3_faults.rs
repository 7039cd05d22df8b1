//! Backups to S3 through a fault-injecting proxy ([`cairn_testkit::FaultProxy`])
//! in front of a real server: throttling and server errors, connections
//! reset mid-upload, slow responses, and a server that stops taking data.
//! Whatever happens, a backup either completes correctly or fails cleanly
//! (one error line, non-zero exit, no snapshot); `check --read-data`, run
//! directly against the server, passes either way; nothing is lost; and the
//! next run reuses what the failed one uploaded and aborts multipart uploads
//! left behind.
//!
//! The faults go through Ceph RGW, which checks SigV4 signatures: the proxy
//! forwards the client's Host header unchanged, so what cairn signed is what
//! the server verifies. Waits between retries are capped
//! (`CAIRN_S3_RETRY_MAX_DELAY`) so the injected failures cost little time.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_testkit::conformance::{Running, assert_terminated, terminate};
use cairn_testkit::{Fault, FaultKind, FaultPolicy, FaultProxy, FaultRule, S3Server};
use common::*;

/// Caps each wait between retries: 6 attempts then cost at most about a second.
const RETRY_MAX_DELAY: &str = "250ms";

/// A repository `s3://<fresh bucket>/repo` on `server`, reachable directly and
/// through a fault proxy.
struct FaultEnv {
    env: Env,
    server: S3Server,
    bucket: String,
    proxy: FaultProxy,
}

impl FaultEnv {
    fn new(server: S3Server) -> FaultEnv {
        let proxy = FaultProxy::start(&server.endpoint, FaultPolicy::none()).expect("fault proxy");
        let env =
            FaultEnv { env: Env::new(), bucket: cairn_testkit::unique_bucket("cairn-faults"), server, proxy };
        env.direct_ok(&["init"]);
        env
    }

    fn url(&self, endpoint: &str) -> String {
        format!("s3://{}/repo?endpoint={endpoint}&region={}", self.bucket, self.server.region)
    }

    fn cmd(&self, endpoint: &str) -> Command {
        let mut c = self.env.cairn_cmd();
        c.env("CAIRN_REPOSITORY", self.url(endpoint))
            .env("CAIRN_S3_RETRY_MAX_DELAY", RETRY_MAX_DELAY)
            .env("AWS_ACCESS_KEY_ID", &self.server.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.server.secret_key)
            .env("AWS_REGION", &self.server.region)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL");
        c
    }

    /// cairn talking to the server directly.
    fn direct(&self) -> Command {
        self.cmd(&self.server.endpoint)
    }

    /// cairn talking to the server through the proxy.
    fn proxied(&self) -> Command {
        self.cmd(self.proxy.endpoint())
    }

    fn direct_ok(&self, args: &[&str]) -> String {
        let out = run_bounded(self.direct().args(args));
        assert!(out.status.success(), "cairn {args:?}: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// A backup of `src` through the proxy that must succeed; its JSON summary.
    fn proxied_backup(&self, src: &Path) -> serde_json::Value {
        let out = run_bounded(self.proxied().args(backup_args(src)));
        assert!(
            out.status.success(),
            "backup through the proxy: {}\n{}",
            describe(&out),
            self.proxy.counts()
        );
        last_json(&out)
    }

    /// The repository is sound and holds `src` exactly, as its latest snapshot.
    fn assert_intact(&self, src: &Path, restore_through_proxy: bool) {
        self.direct_ok(&["check", "--read-data"]);
        let out = self.env.path("out");
        let mut restore = if restore_through_proxy { self.proxied() } else { self.direct() };
        let restored = run_bounded(restore.args(["restore", "latest", "--to", out.to_str().unwrap()]));
        assert!(restored.status.success(), "restore: {}\n{}", describe(&restored), self.proxy.counts());
        assert_same_tree(src, &out, true);
    }

    fn snapshot_count(&self) -> usize {
        let out = self.direct_ok(&["snapshots", "--json"]);
        let list: serde_json::Value =
            serde_json::from_str(out.lines().rev().find(|l| l.starts_with('[')).unwrap())
                .unwrap_or_else(|e| panic!("snapshots --json: {e}: {out}"));
        list.as_array().unwrap().len()
    }
}

fn backup_args(src: &Path) -> Vec<&str> {
    // 1 MiB packs: dozens of uploads, so the faults meet many of them.
    vec!["backup", "--json", "volume", "--pack-size", "1", src.to_str().unwrap()]
}

fn last_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line =
        stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON: {stdout}"));
    serde_json::from_str(line).unwrap()
}

/// Runs a command, killing it (and failing the test) if it hangs: a backup
/// facing a broken server must end, one way or the other.
fn run_bounded(cmd: &mut Command) -> Output {
    const LIMIT: Duration = Duration::from_secs(90);
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Drain the pipes on threads, so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).map(|_| buf)
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            let err = err_reader.join().unwrap().unwrap_or_default();
            panic!("cairn hung for {LIMIT:?}: {cmd:?}\n{}", String::from_utf8_lossy(&err));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap().unwrap(),
        stderr: err_reader.join().unwrap().unwrap(),
    }
}

/// A varied tree plus enough incompressible data for about 20 packs.
fn source(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    make_tree(&src);
    for i in 0..3 {
        std::fs::write(src.join(format!("data/blob{i}.bin")), pseudo_random(7_000 + i, 4 << 20)).unwrap();
    }
    src
}

#[test]
fn throttling_and_server_errors_are_ridden_out() {
    let s3 = FaultEnv::new(cairn_testkit::ceph_rgw());
    let src = source(&s3.env);
    s3.proxy.set_policy(
        FaultPolicy::new(3)
            .rule(FaultRule::new(Fault::SlowDown).method("PUT").probability(0.25))
            .rule(FaultRule::new(Fault::InternalError).method("PUT").probability(0.1))
            .rule(FaultRule::new(Fault::SlowDown).method("GET").probability(0.15))
            .rule(FaultRule::new(Fault::InternalError).method("GET").probability(0.05))
            .rule(FaultRule::new(Fault::SlowDown).method("HEAD").probability(0.15)),
    );
    let summary = s3.proxied_backup(&src);
    assert!(summary["objects"]["files_new"].as_u64().unwrap() > 50, "{summary}");
    // The restore goes through the proxy too: reads are retried as writes are.
    s3.assert_intact(&src, true);

    let counts = s3.proxy.counts();
    assert!(counts.get("PUT", FaultKind::SlowDown) >= 3, "{counts}");
    assert!(counts.get("PUT", FaultKind::InternalError) >= 1, "{counts}");
    assert!(
        counts.get("GET", FaultKind::SlowDown) + counts.get("GET", FaultKind::InternalError) >= 2,
        "{counts}"
    );
    assert!(counts.forwarded("PUT") >= 15, "the backup uploaded little: {counts}");
}

#[test]
fn connections_reset_mid_upload_are_retried() {
    let s3 = FaultEnv::new(cairn_testkit::ceph_rgw());
    let src = source(&s3.env);
    s3.proxy.set_policy(
        FaultPolicy::new(11)
            // Packs are cut off after 64 KiB, small objects after a few bytes.
            .rule(FaultRule::new(Fault::Reset { after_body_bytes: 64 << 10 }).method("PUT").probability(0.3))
            .rule(FaultRule::new(Fault::Reset { after_body_bytes: 0 }).method("GET").probability(0.1)),
    );
    s3.proxied_backup(&src);
    s3.assert_intact(&src, false);
    let counts = s3.proxy.counts();
    assert!(counts.get("PUT", FaultKind::Reset) >= 3, "{counts}");
}

#[test]
fn slow_responses_only_slow_the_backup() {
    let s3 = FaultEnv::new(cairn_testkit::moto());
    let src = source(&s3.env);
    s3.proxy.set_policy(
        FaultPolicy::new(5)
            .rule(FaultRule::new(Fault::Delay(Duration::from_millis(700))).method("PUT").probability(0.3))
            .rule(FaultRule::new(Fault::Delay(Duration::from_millis(300))).probability(0.2)),
    );
    s3.proxied_backup(&src);
    s3.assert_intact(&src, false);
    let counts = s3.proxy.counts();
    assert!(counts.get("PUT", FaultKind::Delay) >= 3, "{counts}");
    assert_eq!(counts.total(FaultKind::SlowDown) + counts.total(FaultKind::Reset), 0, "{counts}");
}

#[test]
fn a_server_that_stops_taking_data_fails_the_backup_cleanly_and_the_next_run_resumes() {
    let s3 = FaultEnv::new(cairn_testkit::ceph_rgw());
    let src = source(&s3.env);
    // The server takes a few packs, then refuses every further one for good.
    s3.proxy.set_policy(
        FaultPolicy::new(1)
            .rule(FaultRule::new(Fault::SlowDown).method("PUT").path_contains("/data/").skip_first(6)),
    );
    let started = Instant::now();
    let failed = run_bounded(s3.proxied().args(backup_args(&src)));
    let counts = s3.proxy.counts();
    assert!(!failed.status.success(), "the backup succeeded against a failing server:\n{counts}");
    assert_ne!(failed.status.code(), Some(101), "a panic is not a clean failure: {}", describe(&failed));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Retry warnings (log lines) precede it; the error itself is one line,
    // the last, naming the object and the cause.
    let (logs, errors): (Vec<&str>, Vec<&str>) =
        stderr.lines().filter(|l| !l.trim().is_empty()).partition(|l| l.trim_start().starts_with("WARN"));
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(errors[0].starts_with("cairn: ") && errors[0].contains("/repo/data/"), "{stderr}");
    assert!(errors[0].contains("503 SlowDown"), "{stderr}");
    assert!(stderr.trim_end().ends_with(errors[0]), "the error comes last: {stderr}");
    assert!(logs.len() >= 5, "retries are logged: {stderr}");
    // Retries gave up; waits are capped, so this is quick.
    assert!(counts.get("PUT", FaultKind::SlowDown) >= 6, "{counts}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());

    assert_eq!(s3.snapshot_count(), 0, "a failed backup wrote a snapshot");
    s3.direct_ok(&["check", "--read-data"]);

    // A multipart upload a killed run left behind, long ago as far as the
    // next run is concerned (age 0).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sdk = runtime.block_on(s3_backend(&s3));
    runtime.block_on(async {
        let key = format!("repo/data/ef/{}", "ef".repeat(32));
        sdk.client().create_multipart_upload().bucket(&s3.bucket).key(key).send().await.unwrap();
    });
    let pending = || {
        runtime.block_on(async {
            let out = sdk.client().list_multipart_uploads().bucket(&s3.bucket).send().await.unwrap();
            out.uploads().len()
        })
    };
    assert_eq!(pending(), 1);

    // The server is back: the next run completes and uploads only what is missing.
    s3.proxy.set_policy(FaultPolicy::none());
    let out = run_bounded(s3.proxied().env("CAIRN_S3_ABANDONED_UPLOAD_AGE", "0s").args(backup_args(&src)));
    assert!(out.status.success(), "{}", describe(&out));
    let resumed = last_json(&out);
    assert_eq!(pending(), 0, "the abandoned multipart upload was not aborted");
    assert_eq!(s3.snapshot_count(), 1);
    // The six packs (about 1 MiB each) that landed before the failure were
    // reused: the repository holds more than this run uploaded.
    let stats: serde_json::Value = serde_json::from_str(s3.direct_ok(&["stats", "--json"]).trim()).unwrap();
    let stored = stats["stored_bytes"].as_u64().unwrap();
    let uploaded = resumed["bytes"]["stored"].as_u64().unwrap();
    assert!(uploaded + (5 << 20) < stored, "nothing reused: uploaded {uploaded} of {stored}: {resumed}");
    s3.assert_intact(&src, false);
}

/// The S3 backend for the test's repository, for its SDK client: to do what
/// cairn itself never does (leave a multipart upload behind).
async fn s3_backend(s3: &FaultEnv) -> cairn_store_s3::S3Backend {
    let mut config = cairn_store_s3::S3Config::new(&s3.bucket, "repo");
    config.region = Some(s3.server.region.clone());
    config.endpoint = Some(s3.server.endpoint.clone());
    config.credentials =
        Some(cairn_store_s3::S3Credentials::new(&s3.server.access_key, &s3.server.secret_key));
    cairn_store_s3::S3Backend::new(config).await.unwrap()
}

/// The server refuses to delete lock files, so every run ends with a failed
/// lock release. That must not turn a saved snapshot into a failure, nor
/// hide a failed backup's own error and exit code; the warning says how
/// the lock goes away.
#[test]
fn a_failed_lock_release_neither_fails_a_saved_backup_nor_hides_a_real_error() {
    let s3 = FaultEnv::new(cairn_testkit::moto());
    let src = s3.env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), pseudo_random(31, 3 << 20)).unwrap();
    s3.proxy.set_policy(
        FaultPolicy::new(1)
            .rule(FaultRule::new(Fault::InternalError).method("DELETE").path_contains("/locks/")),
    );

    let saved = run_bounded(s3.proxied().args(backup_args(&src)));
    assert_eq!(saved.status.code(), Some(0), "{}\n{}", describe(&saved), s3.proxy.counts());
    let stderr = String::from_utf8_lossy(&saved.stderr);
    assert!(
        stderr.contains("could not remove the repository lock") && stderr.contains("cairn unlock"),
        "{stderr}"
    );
    assert_eq!(last_json(&saved)["job"], "backup");
    assert_eq!(s3.snapshot_count(), 1);
    assert!(s3.proxy.counts().get("DELETE", FaultKind::InternalError) >= 2, "{}", s3.proxy.counts());
    // What the warning promises: the lock is there, and `cairn unlock` removes it.
    let unlocked = s3.direct_ok(&["unlock"]);
    assert!(unlocked.contains("removed 1 stale"), "{unlocked}");

    // A damaged index fails the next backup (exit 4); the lock release
    // fails after it, and must not take the error's place.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backend = runtime.block_on(s3_backend(&s3));
    runtime.block_on(async {
        use cairn_store::{Backend, FileType, Handle, PutOptions};
        let index = backend.list(FileType::Index).await.unwrap().pop().unwrap();
        let handle = Handle::new(FileType::Index, index.name);
        let mut bytes = backend.get(&handle, None).await.unwrap().to_vec();
        bytes[40] ^= 1;
        backend.put(&handle, bytes.into(), PutOptions::default()).await.unwrap();
    });
    let failed = run_bounded(s3.proxied().args(backup_args(&src)));
    assert_eq!(failed.status.code(), Some(4), "{}", describe(&failed));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    let error = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(error.starts_with("cairn: damaged repository object") && error.contains("index/"), "{stderr}");
    assert!(stderr.contains("could not remove the repository lock"), "{stderr}");
    assert_eq!(s3.snapshot_count(), 1, "the failed backup wrote a snapshot");
}

/// Lock refreshes that keep failing: well before the lock could look stale
/// to others (and be removed under a prune), the backup stops with exit 11
/// and no snapshot, and the repository checks clean.
#[test]
fn a_backup_whose_lock_refreshes_keep_failing_stops_before_the_lock_goes_stale() {
    let s3 = FaultEnv::new(cairn_testkit::moto());
    let src = source(&s3.env);
    // The lock is taken; every rewrite of it then fails, while slow pack
    // uploads keep the backup going for several seconds.
    s3.proxy.set_policy(
        FaultPolicy::new(1)
            .rule(FaultRule::new(Fault::InternalError).method("PUT").path_contains("/locks/").skip_first(1))
            .rule(FaultRule::new(Fault::Delay(Duration::from_secs(1))).method("PUT").path_contains("/data/")),
    );
    let started = Instant::now();
    let out = run_bounded(
        s3.proxied()
            .env("CAIRN_LOCK_REFRESH_INTERVAL", "300ms")
            .env("CAIRN_LOCK_LOST_AFTER", "2s")
            .args(backup_args(&src)),
    );
    let counts = s3.proxy.counts();
    assert_eq!(out.status.code(), Some(11), "{}\n{counts}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(error.contains("lock was lost") && error.contains("no refresh succeeded"), "{stderr}");
    assert!(
        stderr.contains("could not refresh the repository lock"),
        "refresh failures are logged: {stderr}"
    );
    assert!(counts.get("PUT", FaultKind::InternalError) >= 2, "{counts}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    assert_eq!(s3.snapshot_count(), 0, "a backup without a valid lock wrote a snapshot");
    s3.direct_ok(&["check"]);
}

// ------------------------------------------------------------ SIGTERM

/// Every long command stops on SIGTERM, also while it waits on a slow
/// store: exit 143 within 10 s, and no lock of it left in the repository.
/// The store holds back the responses `delayed` names for two minutes, so
/// the command is surely still running when the signal comes (the proxy
/// counts the held request: the sign to wait for).
fn sigterm_while_the_store_is_slow(s3: &FaultEnv, what: &str, mut cmd: Command, delayed: FaultRule) {
    s3.proxy.set_policy(FaultPolicy::new(1).rule(delayed));
    let mut run = Running::spawn(&mut cmd);
    run.wait_for("the slow request", Duration::from_secs(60), || {
        s3.proxy.counts().total(FaultKind::Delay) > 0
    });
    let t = terminate(run);
    assert_terminated(what, &t, None);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let locks = runtime.block_on(async {
        use cairn_store::{Backend, FileType};
        s3_backend(s3).await.list(FileType::Lock).await.unwrap().len()
    });
    assert_eq!(locks, 0, "{what} left its lock behind");
    s3.proxy.set_policy(FaultPolicy::none());
}

fn held_back(method: &str, path: &str) -> FaultRule {
    FaultRule::new(Fault::Delay(Duration::from_secs(120))).method(method).path_contains(path)
}

/// A repository with one small snapshot.
fn with_a_snapshot() -> FaultEnv {
    let s3 = FaultEnv::new(cairn_testkit::moto());
    let src = s3.env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), pseudo_random(77, 2 << 20)).unwrap();
    s3.direct_ok(&["backup", "volume", "--pack-size", "1", src.to_str().unwrap()]);
    s3
}

#[test]
fn sigterm_stops_a_backup_that_is_still_opening_the_repository() {
    let s3 = FaultEnv::new(cairn_testkit::moto());
    let src = source(&s3.env);
    let mut cmd = s3.proxied();
    cmd.args(["backup", "volume", src.to_str().unwrap()]);
    sigterm_while_the_store_is_slow(
        &s3,
        "backup opening the repository",
        cmd,
        held_back("GET", "/repo/keys/"),
    );
    assert_eq!(s3.snapshot_count(), 0);
}

#[test]
fn sigterm_stops_check_read_data() {
    let s3 = with_a_snapshot();
    let mut cmd = s3.proxied();
    cmd.args(["check", "--read-data"]);
    sigterm_while_the_store_is_slow(&s3, "check --read-data", cmd, held_back("GET", "/repo/data/"));
}

#[test]
fn sigterm_stops_verify() {
    let s3 = with_a_snapshot();
    let mut cmd = s3.proxied();
    cmd.args(["verify", "latest"]);
    sigterm_while_the_store_is_slow(&s3, "verify", cmd, held_back("GET", "/repo/data/"));
}

#[test]
fn sigterm_stops_replicate() {
    let s3 = with_a_snapshot();
    // The replica is another bucket behind the proxy; the primary is read directly.
    let replica = format!(
        "s3://{}/replica?endpoint={}&region={}",
        cairn_testkit::unique_bucket("cairn-replica"),
        s3.proxy.endpoint(),
        s3.server.region
    );
    let mut cmd = s3.direct();
    cmd.args(["replicate", "--to", &replica]);
    sigterm_while_the_store_is_slow(&s3, "replicate", cmd, held_back("PUT", "/replica/data/"));
}

#[test]
fn sigterm_stops_wal_drain_and_the_spool_keeps_its_files() {
    let s3 = FaultEnv::new(cairn_testkit::moto());
    let segment = s3.env.path("000000010000000000000001");
    std::fs::write(&segment, pseudo_random(5, 1 << 20)).unwrap();
    let spool = s3.env.path("spool");
    // Spooled while the repository is away.
    let mut push = s3.env.cairn_cmd();
    push.env("CAIRN_REPOSITORY", s3.env.path("nowhere"));
    push.args(["wal-push", segment.to_str().unwrap(), "--spool", spool.to_str().unwrap()]);
    let out = push.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let spooled = || {
        std::fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    };
    assert_eq!(spooled(), 1);
    let mut cmd = s3.proxied();
    cmd.args(["wal", "drain", "--spool", spool.to_str().unwrap()]);
    sigterm_while_the_store_is_slow(&s3, "wal drain", cmd, held_back("PUT", "/repo/cairn/wal/"));
    assert_eq!(spooled(), 1, "a file left the spool before it was archived");
}
