//! Per-object S3 options end to end, against real servers: S3 Object Lock on
//! Ceph RGW (it implements GetObjectRetention and refuses to delete retained
//! versions, as AWS does); storage classes with SSE-KMS on Ceph RGW (the test
//! server defines `STANDARD_IA` and `GLACIER_IR` and has a KMS key, see
//! `scripts/test-servers.sh`) and with SSE-S3 on moto (Ceph RGW 16 has no
//! SSE-S3 backend: it accepts `AES256` but neither encrypts with it nor
//! reports it, and later releases need Vault for one), each checked in what
//! HeadObject reports; and clear refusals of bad options.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use cairn_store::{Backend, FileType, Handle, PutOptions};
use cairn_store_s3::{S3Backend, S3Config, S3Credentials};
use cairn_testkit::S3Server;
use common::*;

/// A repository `s3://<fresh bucket>/repo?…<options>` on `server`.
struct S3Env {
    env: Env,
    server: S3Server,
    bucket: String,
    options: String,
    rt: tokio::runtime::Runtime,
}

impl S3Env {
    fn new(server: S3Server, options: &str) -> S3Env {
        S3Env {
            env: Env::new(),
            bucket: cairn_testkit::unique_bucket("cairn-opts"),
            server,
            options: options.to_string(),
            rt: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    fn url(&self) -> String {
        format!(
            "s3://{}/repo?endpoint={}&region={}{}",
            self.bucket, self.server.endpoint, self.server.region, self.options
        )
    }

    fn cairn_cmd(&self) -> Command {
        let mut c = self.env.cairn_cmd();
        c.env("CAIRN_REPOSITORY", self.url())
            .env("AWS_ACCESS_KEY_ID", &self.server.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.server.secret_key)
            .env("AWS_REGION", &self.server.region)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL");
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

    /// The repository's backend, configured as cairn configures it from the URL.
    fn backend(&self) -> S3Backend {
        let mut config = S3Config::from_url(&self.url()).unwrap();
        config.credentials = Some(S3Credentials::new(&self.server.access_key, &self.server.secret_key));
        self.rt.block_on(S3Backend::new(config)).unwrap()
    }

    /// Every key in the bucket under `repo/<dir>`.
    fn keys(&self, be: &S3Backend, dir: &str) -> Vec<String> {
        let out = self
            .rt
            .block_on(be.client().list_objects_v2().bucket(&self.bucket).prefix(format!("repo/{dir}")).send())
            .unwrap();
        assert!(!out.is_truncated().unwrap_or(false), "more keys than one page");
        out.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
    }

    /// Every version and delete marker under `repo/<dir>`.
    fn versions(&self, be: &S3Backend, dir: &str) -> usize {
        let out = self
            .rt
            .block_on(
                be.client().list_object_versions().bucket(&self.bucket).prefix(format!("repo/{dir}")).send(),
            )
            .unwrap();
        out.versions().len() + out.delete_markers().len()
    }

    /// (mode, retain-until) of the current version of `key`; `None` if it has no retention.
    fn retention(&self, be: &S3Backend, key: &str) -> Option<(String, SystemTime)> {
        let out =
            self.rt.block_on(be.client().get_object_retention().bucket(&self.bucket).key(key).send()).ok()?;
        let r = out.retention()?;
        Some((r.mode()?.as_str().to_owned(), SystemTime::try_from(*r.retain_until_date()?).unwrap()))
    }
}

fn assert_retained_for_a_day(s3: &S3Env, be: &S3Backend, key: &str) {
    let (mode, until) = s3.retention(be, key).unwrap_or_else(|| panic!("{key} has no retention"));
    assert_eq!(mode, "GOVERNANCE", "{key}");
    let a_day = SystemTime::now() + Duration::from_secs(86_400);
    // Uploaded during this test, minutes ago at most.
    let early = a_day.duration_since(until).unwrap_or_default();
    let late = until.duration_since(a_day).unwrap_or_default();
    assert!(
        early < Duration::from_secs(900) && late < Duration::from_secs(5),
        "{key} retained until {until:?}"
    );
}

#[test]
fn object_lock_on_ceph_rgw_retains_content_but_not_locks() {
    let s3 = S3Env::new(cairn_testkit::ceph_rgw(), "&object_lock=GOVERNANCE:1d");
    let src = s3.env.path("src");
    make_tree(&src);
    s3.cairn_ok(&["init"]);
    s3.cairn_ok(&["backup", "volume", src.to_str().unwrap()]);
    let be = s3.backend();

    // Every immutable object is retained for a day from its upload.
    let mut kinds = Vec::new();
    for dir in ["config", "keys/", "data/", "index/", "snapshots/"] {
        let keys = s3.keys(&be, dir);
        assert!(!keys.is_empty(), "nothing in {dir}");
        for key in &keys {
            assert_retained_for_a_day(&s3, &be, key);
        }
        kinds.push((dir, keys.len()));
    }
    // The backup's lock is gone, every version of it: a plain DeleteObject
    // would have left it in the (versioned) bucket behind a delete marker.
    assert!(s3.keys(&be, "locks/").is_empty());
    assert_eq!(s3.versions(&be, "locks/"), 0, "lock versions or delete markers left behind");

    // A pack cannot be deleted: not with the SDK (without governance bypass)…
    let pack = s3.keys(&be, "data/").remove(0);
    let head = s3.rt.block_on(be.client().head_object().bucket(&s3.bucket).key(&pack).send()).unwrap();
    let version = head.version_id().expect("a versioned bucket").to_owned();
    let err = s3
        .rt
        .block_on(be.client().delete_object().bucket(&s3.bucket).key(&pack).version_id(&version).send())
        .expect_err("deleting a retained pack version succeeded");
    assert_eq!(aws_sdk_s3::error::ProvideErrorMetadata::code(&err), Some("AccessDenied"), "{err:?}");
    // …nor through cairn's backend, which says why and until when.
    let name = pack.rsplit('/').next().unwrap();
    let handle = Handle::new(FileType::Pack, name);
    let err = s3.rt.block_on(be.delete(&handle)).expect_err("cairn deleted a retained pack");
    let msg = err.to_string();
    assert!(
        msg.contains(&pack)
            && msg.contains("protected by S3 Object Lock (GOVERNANCE mode) until 20")
            && msg.contains("it can be deleted after that"),
        "{msg}"
    );
    assert!(!err.is_transient());
    assert!(s3.rt.block_on(be.exists(&handle)).unwrap(), "the pack is gone");

    // A multipart upload is retained too (Ceph RGW ignores the headers of
    // CreateMultipartUpload; the backend sets the retention afterwards).
    let mut config = be.config().clone();
    config.multipart_threshold = 5 << 20;
    config.part_size = 5 << 20;
    let small_parts = s3.rt.block_on(S3Backend::new(config)).unwrap();
    let wal = Handle::journal("wal", "000000010000000000000001");
    s3.rt.block_on(small_parts.put(&wal, pseudo_random(5, 11 << 20).into(), PutOptions::default())).unwrap();
    assert_retained_for_a_day(&s3, &be, &be.key(&wal));
    // So is an entry of any other journal.
    let oplog = Handle::journal("oplog", "0000000001-0000000002.oplog");
    s3.rt.block_on(be.put(&oplog, b"slice".to_vec().into(), PutOptions::create_new())).unwrap();
    assert_retained_for_a_day(&s3, &be, &be.key(&oplog));

    // A lock file is never retained, and deleting it removes it entirely.
    let lock = Handle::new(FileType::Lock, "ab".repeat(32));
    s3.rt.block_on(be.put(&lock, b"not a real lock".to_vec().into(), PutOptions::create_new())).unwrap();
    assert_eq!(s3.retention(&be, &be.key(&lock)), None);
    s3.rt.block_on(be.delete(&lock)).unwrap();
    assert_eq!(s3.versions(&be, "locks/"), 0);

    // `cairn unlock` removes the lock a killed backup left.
    let big = s3.env.path("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..4 {
        std::fs::write(big.join(format!("f{i}.bin")), pseudo_random(70 + i, 16 << 20)).unwrap();
    }
    let mut child = s3
        .cairn_cmd()
        .args(["backup", "volume", "--pack-size", "2", big.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while s3.keys(&be, "locks/").is_empty() {
        assert!(Instant::now() < deadline, "the backup took no lock");
        assert!(child.try_wait().unwrap().is_none(), "the backup finished before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = s3.keys(&be, "locks/");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(s3.retention(&be, &left[0]), None, "a lock file is retained");
    let out = s3.cairn_ok(&["unlock"]);
    assert!(out.contains("removed 1 stale lock"), "{out}");
    assert!(s3.keys(&be, "locks/").is_empty());
    assert_eq!(s3.versions(&be, "locks/"), 0);

    s3.cairn_ok(&["check", "--read-data"]);
    let out = s3.env.path("out");
    s3.cairn_ok(&["restore", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &out, true);
    eprintln!("retained objects checked: {kinds:?}");
}

#[test]
fn init_with_object_lock_refuses_a_bucket_without_it() {
    let s3 = S3Env::new(cairn_testkit::ceph_rgw(), "&object_lock=COMPLIANCE:1h");
    let be = s3.backend();
    s3.rt.block_on(be.client().create_bucket().bucket(&s3.bucket).send()).unwrap();
    let out = s3.cairn(&["init"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("s3://{}", s3.bucket)), "{err}");
    assert!(err.contains("does not have S3 Object Lock enabled"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // A retained upload into it (a repository made before `object_lock` was
    // added to its location) is refused with the same explanation.
    let index = Handle::new(FileType::Index, "ab".repeat(32));
    let err = s3.rt.block_on(be.put(&index, b"index".to_vec().into(), PutOptions::default())).unwrap_err();
    assert!(err.to_string().contains("does not have S3 Object Lock enabled"), "{err}");
    assert!(s3.keys(&be, "").is_empty(), "init wrote to the bucket anyway");
}

/// Backs up to `server` with `storage_class=STANDARD_IA&pack_storage_class=GLACIER_IR`
/// and the SSE options `sse`, then checks on every object what the server
/// reports in HeadObject: the class of its kind, and `want_sse` (the
/// algorithm, and the KMS key id the server says it used). A WAL file
/// uploaded in parts checks CreateMultipartUpload too. The repository must
/// then check with `--read-data` and restore the tree.
fn storage_classes_and_sse(server: S3Server, sse: &str, want_sse: (&str, Option<&str>)) {
    let s3 = S3Env::new(server, &format!("&storage_class=STANDARD_IA&pack_storage_class=GLACIER_IR{sse}"));
    let src = s3.env.path("src");
    make_tree(&src);
    s3.cairn_ok(&["init"]);
    s3.cairn_ok(&["backup", "volume", src.to_str().unwrap()]);
    let be = s3.backend();
    let lock = Handle::new(FileType::Lock, "cd".repeat(32));
    s3.rt.block_on(be.put(&lock, b"lock".to_vec().into(), PutOptions::create_new())).unwrap();
    let mut config = be.config().clone();
    config.multipart_threshold = 5 << 20;
    config.part_size = 5 << 20;
    let small_parts = s3.rt.block_on(S3Backend::new(config)).unwrap();
    let wal = Handle::journal("wal", "000000010000000000000001");
    let wal_data = pseudo_random(9, 11 << 20);
    s3.rt.block_on(small_parts.put(&wal, wal_data.clone().into(), PutOptions::default())).unwrap();
    // Every journal's entries get the same options as PostgreSQL's.
    let oplog = Handle::journal("oplog", "0000000001-0000000002.oplog");
    s3.rt.block_on(be.put(&oplog, pseudo_random(10, 1 << 10).into(), PutOptions::create_new())).unwrap();

    for (dir, want_class) in [
        ("data/", Some("GLACIER_IR")),
        ("index/", Some("STANDARD_IA")),
        ("snapshots/", Some("STANDARD_IA")),
        ("cairn/wal/", Some("STANDARD_IA")),
        ("cairn/journal/oplog/", Some("STANDARD_IA")),
        ("config", None),
        ("keys/", None),
        ("locks/", None),
    ] {
        let keys = s3.keys(&be, dir);
        assert!(!keys.is_empty(), "nothing in {dir}");
        for key in keys {
            let head = s3.rt.block_on(be.client().head_object().bucket(&s3.bucket).key(&key).send()).unwrap();
            // Both servers report an object stored without a class header
            // as no class at all, and may report STANDARD by name.
            let class = head.storage_class().map(|c| c.as_str()).filter(|c| *c != "STANDARD");
            assert_eq!(class, want_class, "storage class of {key}");
            let got_sse = (head.server_side_encryption().map(|e| e.as_str()), head.ssekms_key_id());
            assert_eq!(got_sse, (Some(want_sse.0), want_sse.1), "server-side encryption of {key}");
        }
    }
    // The multipart object decrypts to what was uploaded.
    let back = s3.rt.block_on(be.get(&wal, None)).unwrap();
    assert!(back[..] == wal_data[..], "the WAL file read back differs from what was uploaded");

    s3.cairn_ok(&["check", "--read-data"]);
    let out = s3.env.path("out");
    s3.cairn_ok(&["restore", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &out, true);
}

#[test]
fn storage_classes_and_sse_s3_on_moto() {
    storage_classes_and_sse(cairn_testkit::moto(), "&sse=AES256", ("AES256", None));
}

/// The test RGW knows STANDARD_IA and GLACIER_IR and one KMS key, and
/// reports the SSE-KMS headers from what it stored with each object, so
/// this shows RGW encrypted every object, multipart included, with that key.
#[test]
fn storage_classes_and_sse_kms_on_ceph_rgw() {
    let key = cairn_testkit::RGW_KMS_KEY_ID;
    storage_classes_and_sse(
        cairn_testkit::ceph_rgw(),
        &format!("&sse=aws:kms&sse_kms_key_id={key}"),
        ("aws:kms", Some(key)),
    );
}

#[test]
fn bad_options_are_refused_in_one_line() {
    let s3 = S3Env::new(cairn_testkit::moto(), "");
    for (options, want) in [
        ("&storage_class=COLD", "unknown storage class \"COLD\""),
        ("&pack_storage_class=DEEP_ARCHIVE", "restore request"),
        ("&sse=aws:kms&sse=des", "sse must be AES256 or aws:kms"),
        ("&object_lock=GOVERNANCE:30x", "bad duration \"30x\""),
        ("&object_lock=FOREVER:30d", "unknown mode"),
        ("&objectlock=GOVERNANCE:30d", "unknown parameter \"objectlock\""),
    ] {
        let mut c = s3.cairn_cmd();
        c.env("CAIRN_REPOSITORY", format!("{}{options}", s3.url()));
        let out = c.arg("init").output().unwrap();
        assert!(!out.status.success(), "{options}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{options}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{options}: one line: {err}");
    }
}
