//! Cross-region replication: copies that stay consistent, verification that
//! catches what is missing or altered, lag, and restoring from the replica
//! once the primary is gone.

mod common;

use common::*;

/// Environment variables that let cairn reach the test S3 server.
fn with_s3(cmd: &mut std::process::Command, server: &cairn_testkit::S3Server) {
    cmd.env("AWS_ACCESS_KEY_ID", &server.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &server.secret_key)
        .env("AWS_REGION", &server.region)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL");
}

fn s3_url(server: &cairn_testkit::S3Server, prefix: &str) -> String {
    format!(
        "s3://{}/{prefix}?endpoint={}&region={}",
        cairn_testkit::unique_bucket("cairn-repl"),
        server.endpoint,
        server.region
    )
}

#[test]
fn replica_in_another_store_is_complete_and_restorable_without_the_primary() {
    let moto = cairn_testkit::moto();
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    let replica = s3_url(&moto, "eu-replica");
    let local_replica = env.path("replica-dir").display().to_string();
    let run = |args: &[&str]| {
        let mut c = env.cairn_cmd();
        with_s3(&mut c, &moto);
        c.args(args).output().unwrap()
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(out.status.success(), "cairn {args:?}: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    env.init();
    env.backup(&src);
    ok(&["replicate", "--to", &replica, "--to", &local_replica]);
    let verified = ok(&["replicate", "--verify", "--json", "--to", &replica]);
    assert!(verified.contains("\"complete\":true"), "{verified}");

    // A second backup, replicated incrementally.
    std::fs::write(src.join("after.txt"), b"second night").unwrap();
    env.backup(&src);
    let second = ok(&["replicate", "--json", "--to", &replica, "--to", &local_replica]);
    let v: serde_json::Value = serde_json::from_str(second.lines().next().unwrap()).unwrap();
    assert!(v["already_present"].as_u64().unwrap() > 0, "{v}");
    assert!(v["bytes_copied"].as_u64().unwrap() < 1 << 20, "only the new night is copied: {v}");

    // The primary disappears; both replicas restore the latest snapshot.
    std::fs::remove_dir_all(&env.repo).unwrap();
    for (i, location) in [&replica, &local_replica].into_iter().enumerate() {
        let out_dir = env.path(&format!("restored-{i}"));
        let mut c = env.cairn_cmd();
        with_s3(&mut c, &moto);
        c.env("CAIRN_REPOSITORY", location).args(["restore", "latest", "--to", out_dir.to_str().unwrap()]);
        let out = c.output().unwrap();
        assert!(out.status.success(), "restore from {location}: {}", describe(&out));
        assert_same_tree(&src, &out_dir, true);
        let mut check = env.cairn_cmd();
        with_s3(&mut check, &moto);
        check.env("CAIRN_REPOSITORY", location).args(["check", "--read-data"]);
        assert!(check.output().unwrap().status.success());
    }
}

#[test]
fn verify_finds_missing_and_altered_objects_and_measures_lag() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    let replica = env.path("replica");
    let target = replica.to_str().unwrap();
    env.init();
    env.backup(&src);
    env.cairn_ok(&["replicate", "--to", target]);
    env.cairn_ok(&["replicate", "--verify", "--to", target, "--max-lag", "1h"]);

    // A missing pack and an altered index file are both named.
    let pack = repo_files(&replica, "data").pop().unwrap();
    std::fs::remove_file(&pack).unwrap();
    let index = repo_files(&replica, "index").pop().unwrap();
    flip_byte(&index, 50);
    let out = env.cairn(&["replicate", "--verify", "--to", target]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(pack.file_name().unwrap().to_str().unwrap()), "{err}");
    assert!(err.contains(index.file_name().unwrap().to_str().unwrap()), "{err}");
    // A plain replicate restores the missing pack; --repair also replaces
    // the altered index file (same size, so only hashing finds it).
    env.cairn_ok(&["replicate", "--to", target]);
    assert!(pack.exists());
    assert_eq!(env.cairn(&["replicate", "--verify", "--to", target]).status.code(), Some(4));
    env.cairn_ok(&["replicate", "--verify", "--repair", "--to", target]);
    env.cairn_ok(&["replicate", "--verify", "--to", target]);

    // A snapshot not yet replicated is lag; --max-lag turns it into a failure.
    env.backup(&src);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let lagging = env.cairn(&["replicate", "--verify", "--json", "--to", target, "--max-lag", "0s"]);
    assert_eq!(lagging.status.code(), Some(4), "{}", describe(&lagging));
    assert!(
        String::from_utf8_lossy(&lagging.stdout).contains("\"snapshots_missing\":1"),
        "{}",
        describe(&lagging)
    );
}

#[test]
fn replicas_in_the_config_are_updated_after_every_backup() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha").unwrap();
    let replica = env.path("replica");
    let cfg = env.path("cairn.yaml");
    std::fs::write(&cfg, format!("replicas:\n  - {}\n", replica.display())).unwrap();
    env.init();
    let run = |args: &[&str]| {
        let mut c = env.cairn_cmd();
        c.arg("--config").arg(&cfg).args(args);
        c.output().unwrap()
    };
    let out = run(&["backup", "volume", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(repo_files(&replica, "snapshots").len(), 1);
    let skipped = run(&["backup", "--no-replicate", "volume", src.to_str().unwrap()]);
    assert!(skipped.status.success());
    assert_eq!(repo_files(&replica, "snapshots").len(), 1, "--no-replicate still replicated");

    // A replica in the way of a different repository is refused, not mixed.
    let other = env.path("other");
    let mut init_other = env.cairn_cmd();
    init_other.env("CAIRN_REPOSITORY", &other).arg("init");
    assert!(init_other.output().unwrap().status.success());
    let refused = env.cairn(&["replicate", "--to", other.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("different repository"),
        "{}",
        describe(&refused)
    );
}

#[test]
fn ceph_rgw_primary_replicates_to_moto() {
    let rgw = cairn_testkit::ceph_rgw();
    let moto = cairn_testkit::moto();
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), pseudo_random(5, 6 << 20)).unwrap();
    let primary = s3_url(&rgw, "primary");
    let replica = s3_url(&moto, "replica");
    // One set of credentials per store: the URL picks the endpoint, and both
    // test servers accept their own keys; moto accepts any.
    let run = |args: &[&str]| {
        let mut c = env.cairn_cmd();
        with_s3(&mut c, &rgw);
        c.env("CAIRN_REPOSITORY", &primary).args(args);
        let out = c.output().unwrap();
        assert!(out.status.success(), "cairn {args:?}: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["init"]);
    run(&["backup", "volume", src.to_str().unwrap()]);
    run(&["replicate", "--to", &replica]);
    run(&["replicate", "--verify", "--to", &replica]);
}

/// Two buckets on one S3 service: objects are copied server-side (no bytes
/// through this host), each proven against its name; the replica verifies
/// and restores.
#[test]
fn replica_on_the_same_service_is_copied_server_side() {
    let rgw = cairn_testkit::ceph_rgw();
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    let primary = s3_url(&rgw, "primary");
    let replica = s3_url(&rgw, "replica");
    let run = |args: &[&str]| {
        let mut c = env.cairn_cmd();
        with_s3(&mut c, &rgw);
        c.env("CAIRN_REPOSITORY", &primary).args(args).output().unwrap()
    };
    let ok = |args: &[&str]| {
        let out = run(args);
        assert!(out.status.success(), "cairn {args:?}: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    ok(&["init"]);
    ok(&["backup", "volume", src.to_str().unwrap()]);
    let copied: serde_json::Value =
        serde_json::from_str(ok(&["replicate", "--json", "--to", &replica]).lines().next().unwrap()).unwrap();
    let objects = copied["objects_copied"].as_u64().unwrap();
    let server_side = copied["server_side_copies"].as_u64().unwrap();
    assert!(
        server_side > 0 && server_side < objects,
        "packs, indexes and snapshots go server-side, keys and config do not: {copied}"
    );
    let verified = ok(&["replicate", "--verify", "--json", "--to", &replica]);
    assert!(verified.contains("\"complete\":true"), "{verified}");
    let restored = env.path("restored");
    let mut c = env.cairn_cmd();
    with_s3(&mut c, &rgw);
    let out = c
        .env("CAIRN_REPOSITORY", &replica)
        .args(["restore", "latest", "--to", restored.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_same_tree(&src, &restored, true);
}

/// Keys the primary no longer has stay on the replica unless they were
/// revoked there and the run asks for it: a mistaken or compromised primary
/// must not lock the owners out of their disaster-recovery copy.
#[test]
fn replicas_keep_removed_keys_unless_revoked_ones_are_removed_on_request() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha").unwrap();
    let replica = env.path("replica");
    let target = replica.to_str().unwrap();
    env.init();
    let add_key = |location: &std::path::Path, password: &str| {
        let mut add = env.cairn_cmd();
        add.env("CAIRN_REPOSITORY", location).env("CAIRN_NEW_PASSWORD", password).args(["key", "add"]);
        let out = add.output().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        let line = String::from_utf8(out.stdout).unwrap();
        line.trim().strip_prefix("added key ").unwrap().to_string()
    };
    let spare_short = add_key(&env.repo, "spare");
    env.backup(&src);
    env.cairn_ok(&["replicate", "--to", target]);
    // A password the owners keep for the replica alone.
    let dr_only_short = add_key(&replica, "dr-only");
    let full_id = |location: &std::path::Path, short: &str| -> String {
        let mut list = env.cairn_cmd();
        list.env("CAIRN_REPOSITORY", location).args(["key", "list", "--json"]);
        let keys: serde_json::Value = serde_json::from_slice(&list.output().unwrap().stdout).unwrap();
        let key = keys.as_array().unwrap().iter().find(|k| k["id"].as_str().unwrap().starts_with(short));
        key.unwrap()["id"].as_str().unwrap().to_string()
    };
    let spare = full_id(&env.repo, &spare_short);
    let dr_only = full_id(&replica, &dr_only_short);
    let opens_replica = |password: &str| {
        let mut c = env.cairn_cmd();
        c.env("CAIRN_REPOSITORY", &replica).env("CAIRN_PASSWORD", password).args(["snapshots"]);
        c.output().unwrap().status.code()
    };
    let replicate = |extra: &[&str]| -> (serde_json::Value, String) {
        let out = env.cairn(&[&["replicate", "--json", "--to", target], extra].concat());
        assert!(out.status.success(), "{}", describe(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout.lines().find(|l| l.starts_with('{')).unwrap();
        (serde_json::from_str(line).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect()
    };

    // Removed on the primary (which records the revocation): reported, kept.
    env.cairn_ok(&["key", "remove", &spare_short]);
    assert_eq!(repo_files(&env.repo, "cairn/revoked-keys").len(), 1, "no revocation record");
    let (report, log) = replicate(&[]);
    let mut both = vec![spare.clone(), dr_only.clone()];
    both.sort();
    assert_eq!(ids(&report["extra_keys"]), both, "{report}");
    assert!(ids(&report["removed_keys"]).is_empty(), "{report}");
    assert!(log.contains(&spare[..8]) && log.contains(&dr_only[..8]), "the warning names the keys: {log}");
    assert_eq!(opens_replica("spare"), Some(0), "the replica must still open with the removed password");
    assert!(replica.join("cairn/revoked-keys").join(&spare).is_file(), "the revocation was not replicated");

    // Extra keys are reported by --verify, and are not damage.
    let out = env.cairn(&["replicate", "--verify", "--json", "--to", target]);
    assert!(out.status.success(), "{}", describe(&out));
    let verified: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(verified["complete"], true, "{verified}");
    assert_eq!(ids(&verified["extra_keys"]), both, "{verified}");

    // Asked for: the revoked key goes; the one without a record stays.
    let (report, _) = replicate(&["--remove-revoked-keys"]);
    assert_eq!(ids(&report["removed_keys"]), std::slice::from_ref(&spare), "{report}");
    assert_eq!(ids(&report["extra_keys"]), std::slice::from_ref(&dr_only), "{report}");
    assert_eq!(opens_replica("spare"), Some(12), "the revoked password still opens the replica");
    assert_eq!(opens_replica("dr-only"), Some(0));
    assert_eq!(opens_replica(PASSWORD), Some(0));
    let (again, _) = replicate(&["--remove-revoked-keys"]);
    assert_eq!(ids(&again["extra_keys"]), [dr_only], "{again}");
    assert!(ids(&again["removed_keys"]).is_empty(), "{again}");
}
