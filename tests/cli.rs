//! The rest of the command surface: key management, stats, unlock, SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn keys_can_be_added_listed_changed_and_removed() {
    let env = Env::new();
    env.init();
    let mut add = env.cairn_cmd();
    add.env("CAIRN_NEW_PASSWORD", "second password").args(["key", "add"]);
    assert!(add.output().unwrap().status.success());
    let keys = env.cairn_json(&["key", "list", "--json"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);

    // Both passwords open the repository.
    let mut second = env.cairn_cmd();
    second.env("CAIRN_PASSWORD", "second password").arg("snapshots");
    assert!(second.output().unwrap().status.success());

    // The key in use cannot be removed; the other one can.
    let current = keys.as_array().unwrap().iter().find(|k| k["current"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = keys.as_array().unwrap().iter().find(|k| k["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!env.cairn(&["key", "remove", &current[..8]]).status.success());
    env.cairn_ok(&["key", "remove", &other[..8]]);
    let mut gone = env.cairn_cmd();
    gone.env("CAIRN_PASSWORD", "second password").arg("snapshots");
    assert_eq!(gone.output().unwrap().status.code(), Some(12));

    // passwd swaps the key: the old password stops working, the new one works.
    let mut passwd = env.cairn_cmd();
    passwd.env("CAIRN_NEW_PASSWORD", "third password").args(["key", "passwd"]);
    assert!(passwd.output().unwrap().status.success());
    assert_eq!(env.cairn(&["snapshots"]).status.code(), Some(12));
    let mut third = env.cairn_cmd();
    third.env("CAIRN_PASSWORD", "third password").arg("snapshots");
    assert!(third.output().unwrap().status.success());
    // restic agrees.
    let mut restic = env.restic_cmd();
    restic.env("RESTIC_PASSWORD", "third password").arg("snapshots");
    assert!(restic.output().unwrap().status.success());
}

#[test]
fn stats_report_repository_and_snapshot_sizes() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    env.init();
    env.backup(&src);
    let repo = env.cairn_json(&["stats", "--json"]);
    assert_eq!(repo["snapshots"], 1);
    // The text log compresses: stored bytes are well below the unique bytes.
    assert!(repo["stored_bytes"].as_u64().unwrap() < repo["uncompressed_bytes"].as_u64().unwrap());
    let snap = env.cairn_json(&["stats", "latest", "--json"]);
    assert!(snap["restore_size"].as_u64().unwrap() > 64 << 20, "{snap}");
}

#[test]
fn sigterm_stops_a_backup_cleanly_and_the_next_run_reuses_its_uploads() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        std::fs::write(src.join(format!("f{i}.bin")), pseudo_random(300 + i, 16 << 20)).unwrap();
    }
    env.init();
    let child = env
        .cairn_cmd()
        .args(["backup", "volume", "--pack-size", "2", src.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while repo_files(&env.repo, "data").len() < 3 {
        assert!(Instant::now() < deadline, "no packs appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", describe(&out));
    assert!(env.cairn_json(&["snapshots", "--json"]).as_array().unwrap().is_empty());
    assert!(repo_files(&env.repo, "locks").is_empty(), "the lock was left behind");
    assert!(!repo_files(&env.repo, "index").is_empty(), "uploaded packs were not indexed");
    env.cairn_ok(&["check", "--read-data"]);
    let next = env.cairn_json(&["backup", "--json", "volume", src.to_str().unwrap()]);
    assert!(next["bytes"]["added"].as_u64().unwrap() < 8 * (16 << 20), "{next}");
}

#[test]
fn locks_block_exclusive_commands_and_unlock_clears_stale_ones() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..6 {
        std::fs::write(src.join(format!("f{i}.bin")), pseudo_random(700 + i, 16 << 20)).unwrap();
    }
    env.init();
    let mut add = env.cairn_cmd();
    add.env("CAIRN_NEW_PASSWORD", "spare").args(["key", "add"]);
    assert!(add.output().unwrap().status.success());
    let keys = env.cairn_json(&["key", "list", "--json"]);
    let spare =
        keys.as_array().unwrap().iter().find(|k| k["current"] == false).unwrap()["id"].as_str().unwrap()[..8]
            .to_string();

    let mut child = env
        .cairn_cmd()
        .args(["backup", "volume", "--pack-size", "2", src.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while repo_files(&env.repo, "locks").is_empty() {
        assert!(Instant::now() < deadline, "no lock appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A running backup holds a shared lock: exclusive work must wait. The
    // backup is frozen while it holds it, or a fast machine finishes first.
    let stop = Command::new("kill").args(["-STOP", &child.id().to_string()]).status().unwrap();
    assert!(stop.success());
    let blocked = env.cairn(&["key", "remove", &spare]);
    assert_eq!(blocked.status.code(), Some(11), "{}", describe(&blocked));
    assert!(String::from_utf8_lossy(&blocked.stderr).contains("locked"), "{}", describe(&blocked));

    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(repo_files(&env.repo, "locks").len(), 1, "a killed run leaves its lock");
    let out = env.cairn_ok(&["unlock"]);
    assert!(out.contains("removed 1 stale"), "{out}");
    assert!(repo_files(&env.repo, "locks").is_empty());
    env.cairn_ok(&["key", "remove", &spare]);
}

/// A lock removed under a running backup (`unlock --remove-all`, or a
/// process that judged it stale) no longer protects it from a prune: the
/// backup stops with exit 11, writes no snapshot, and leaves a sound
/// repository.
#[test]
fn a_backup_whose_lock_is_removed_stops_with_exit_11_and_no_snapshot() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..6 {
        std::fs::write(src.join(format!("f{i}.bin")), pseudo_random(900 + i, 16 << 20)).unwrap();
    }
    env.init();
    let child = env
        .cairn_cmd()
        .env("CAIRN_LOCK_REFRESH_INTERVAL", "200ms")
        .args(["backup", "volume", "--pack-size", "2", src.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while repo_files(&env.repo, "locks").is_empty() {
        assert!(Instant::now() < deadline, "no lock appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Frozen while its lock is taken away, so it cannot finish first.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    // One lock, or two if it was frozen in the middle of a refresh.
    let removed = env.cairn_ok(&["unlock", "--remove-all"]);
    assert!(removed.starts_with("removed 1 ") || removed.starts_with("removed 2 "), "{removed}");
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(11), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lock was lost") && stderr.contains("removed by someone else"), "{stderr}");
    assert!(
        env.cairn_json(&["snapshots", "--json"]).as_array().unwrap().is_empty(),
        "a snapshot was written"
    );
    env.cairn_ok(&["check"]);
}
