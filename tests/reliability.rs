//! No data loss, ever: damage is found and named, bad input fails cleanly
//! with the documented exit codes, and killed or concurrent runs leave a
//! repository that both cairn and restic accept.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A repository with one snapshot of a small tree holding a distinctive file.
fn repo_with_one_snapshot() -> (Env, std::path::PathBuf) {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/precious.bin"), pseudo_random(7, 3 << 20)).unwrap();
    std::fs::write(src.join("note.txt"), b"a small note").unwrap();
    env.init();
    env.backup(&src);
    (env, src)
}

#[test]
fn flipped_byte_in_a_pack_is_named_and_restore_refuses_it() {
    let (env, _src) = repo_with_one_snapshot();
    // The biggest pack holds precious.bin's blobs.
    let pack = repo_files(&env.repo, "data")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    flip_byte(&pack, 1000);
    let pack_name = pack.file_name().unwrap().to_str().unwrap().to_string();

    let check = env.cairn(&["check", "--read-data"]);
    assert_eq!(check.status.code(), Some(4), "{}", describe(&check));
    let text = stderr(&check);
    assert!(text.contains(&pack_name), "check must name the pack: {text}");
    assert!(text.contains("/sub/precious.bin"), "check must name the affected file: {text}");
    assert!(text.contains("snapshot "), "check must name the snapshot: {text}");

    // Without --read-data the structure is fine: damage inside a pack needs reading.
    assert_eq!(env.cairn(&["check"]).status.code(), Some(0));

    let out = env.path("out");
    let restore = env.cairn(&["restore", "latest", "--to", out.to_str().unwrap()]);
    assert_eq!(restore.status.code(), Some(4), "{}", describe(&restore));
    assert!(stderr(&restore).contains(&pack_name), "{}", describe(&restore));
    assert!(!out.join("sub/precious.bin").exists(), "a damaged file was written to the target");
    let leftovers: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.iter().all(|n| !n.to_string_lossy().starts_with(".cairn-restore")), "{leftovers:?}");

    let verify = env.cairn(&["verify", "latest"]);
    assert_eq!(verify.status.code(), Some(4), "{}", describe(&verify));
}

#[test]
fn flipped_byte_in_index_snapshot_or_key_is_named() {
    for dir in ["index", "snapshots", "keys"] {
        let (env, _) = repo_with_one_snapshot();
        let file = repo_files(&env.repo, dir).into_iter().next().unwrap();
        flip_byte(&file, 40);
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        let check = env.cairn(&["check", "--read-data"]);
        assert_ne!(check.status.code(), Some(0), "{dir}: {}", describe(&check));
        assert!(stderr(&check).contains(&name), "{dir}: check must name {name}: {}", describe(&check));
        let out = env.path("out");
        let restore = env.cairn(&["restore", "latest", "--to", out.to_str().unwrap()]);
        assert_ne!(restore.status.code(), Some(0), "{dir}: {}", describe(&restore));
        assert!(!out.join("sub/precious.bin").exists(), "{dir}");
    }
}

#[test]
fn bad_input_fails_with_one_clear_line_and_documented_codes() {
    let (env, _src) = repo_with_one_snapshot();

    let mut wrong = env.cairn_cmd();
    wrong.env("CAIRN_PASSWORD", "not the password").arg("snapshots");
    let out = wrong.output().unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", describe(&out));
    assert!(stderr(&out).contains("wrong password"));
    assert_eq!(stderr(&out).trim().lines().count(), 1, "one line: {}", stderr(&out));

    let mut missing = env.cairn_cmd();
    missing.env("CAIRN_REPOSITORY", env.path("nowhere")).arg("snapshots");
    let out = missing.output().unwrap();
    assert_eq!(out.status.code(), Some(10), "{}", describe(&out));
    assert!(stderr(&out).contains("cairn init"), "{}", stderr(&out));

    let not_repo = env.path("src");
    let mut plain_dir = env.cairn_cmd();
    plain_dir.env("CAIRN_REPOSITORY", &not_repo).arg("snapshots");
    assert_eq!(plain_dir.output().unwrap().status.code(), Some(10));

    let twice = env.cairn(&["init"]);
    assert_eq!(twice.status.code(), Some(1));
    assert!(stderr(&twice).contains("already holds a repository"));

    let bad_snapshot = env.cairn(&["restore", "deadbeef", "--to", env.path("x").to_str().unwrap()]);
    assert_eq!(bad_snapshot.status.code(), Some(1));
    assert!(stderr(&bad_snapshot).contains("cairn snapshots"), "{}", describe(&bad_snapshot));
    assert!(!env.path("x").exists(), "a failed restore created its target");

    let no_source = env.cairn(&["backup", "volume", env.path("no-such-dir").to_str().unwrap()]);
    assert_eq!(no_source.status.code(), Some(1));
    assert!(stderr(&no_source).contains("no-such-dir"));
    assert_eq!(env.cairn_json(&["snapshots", "--json"]).as_array().unwrap().len(), 1, "nothing half-written");

    let mut no_password = env.cairn_cmd();
    no_password.env_remove("CAIRN_PASSWORD").arg("snapshots").stdin(Stdio::null());
    let out = no_password.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("CAIRN_PASSWORD_FILE"));
}

#[test]
fn kill_9_mid_backup_leaves_a_consistent_repository_and_the_next_run_resumes() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        std::fs::write(src.join(format!("big-{i}.bin")), pseudo_random(1000 + i, 16 << 20)).unwrap();
    }
    env.init();
    let mut child = env
        .cairn_cmd()
        .args(["backup", "volume", "--pack-size", "2", src.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until an index file shows packs have landed, then kill without warning.
    let deadline = Instant::now() + Duration::from_secs(120);
    while repo_files(&env.repo, "index").is_empty() {
        assert!(Instant::now() < deadline, "no index file appeared");
        assert!(child.try_wait().unwrap().is_none(), "backup finished before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(env.cairn_json(&["snapshots", "--json"]).as_array().unwrap().is_empty());

    env.cairn_ok(&["check", "--read-data"]);
    let restic = env.restic_ok(&["check", "--read-data"]);
    assert!(restic.contains("no errors were found"), "{restic}");

    let resumed = env.cairn_json(&["backup", "--json", "volume", "--pack-size", "2", src.to_str().unwrap()]);
    let total = 8u64 * (16 << 20);
    let added = resumed["bytes"]["added"].as_u64().unwrap();
    assert!(added < total, "nothing was reused: {resumed}");
    env.cairn_ok(&["check", "--read-data"]);
    let out = env.path("out");
    env.cairn_ok(&["restore", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &out, false);
}

#[test]
fn concurrent_backups_and_a_backup_during_check_are_safe() {
    let env = Env::new();
    let a = env.path("a");
    let b = env.path("b");
    make_tree(&a);
    std::fs::create_dir_all(&b).unwrap();
    for i in 0..6 {
        std::fs::write(b.join(format!("f{i}")), pseudo_random(50 + i, 3 << 20)).unwrap();
    }
    env.init();
    let spawn = |args: &[&str]| {
        env.cairn_cmd().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let first = spawn(&["backup", "volume", a.to_str().unwrap()]);
    let second = spawn(&["backup", "volume", b.to_str().unwrap()]);
    for c in [first, second] {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    }
    std::fs::write(b.join("extra"), pseudo_random(99, 1 << 20)).unwrap();
    let check = spawn(&["check", "--read-data"]);
    let backup = spawn(&["backup", "volume", b.to_str().unwrap()]);
    for c in [check, backup] {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", describe(&out));
    }
    assert_eq!(env.cairn_json(&["snapshots", "--json"]).as_array().unwrap().len(), 3);
    env.cairn_ok(&["check", "--read-data"]);
    assert!(env.restic_ok(&["check", "--read-data"]).contains("no errors were found"));
}

#[test]
fn full_disk_fails_cleanly_and_leaves_the_repository_consistent() {
    let env = Env::new();
    let mnt = env.path("small-disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6M", "tmpfs", mnt.to_str().unwrap()])
        .status()
        .expect("mount is needed for the full-disk test (run the suite as root)");
    assert!(mounted.success(), "cannot mount a tmpfs: the full-disk test needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let repo = mnt.join("repo");
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("fits.txt"), b"small").unwrap();
    let cmd = |args: &[&str]| {
        let mut c = env.cairn_cmd();
        c.env("CAIRN_REPOSITORY", &repo).args(args);
        c.output().unwrap()
    };
    assert!(cmd(&["init"]).status.success());
    assert!(cmd(&["backup", "volume", src.to_str().unwrap()]).status.success());
    std::fs::write(src.join("too-big.bin"), pseudo_random(5, 12 << 20)).unwrap();
    let out = cmd(&["backup", "volume", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let msg = stderr(&out);
    assert!(msg.contains("no space left"), "{msg}");
    assert_eq!(msg.trim().lines().count(), 1, "one line: {msg}");
    // Only the first snapshot exists, and the repository is still whole.
    let snaps = cmd(&["snapshots", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&snaps.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let check = cmd(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", describe(&check));
    let tmp_left = std::fs::read_dir(repo.join("tmp")).unwrap().count();
    assert_eq!(tmp_left, 0, "temporary files left behind");
}

#[test]
fn unreadable_source_file_is_reported_and_the_rest_is_saved() {
    // Root reads everything, so drop to `nobody` for this run.
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("readable.txt"), b"fine").unwrap();
    std::fs::write(src.join("secret.txt"), b"hidden").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(src.join("secret.txt"), std::fs::Permissions::from_mode(0o000)).unwrap();
    for p in [env.dir.path(), src.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let as_nobody = |args: &[&str]| {
        let setpriv = which("setpriv").expect("setpriv (util-linux) is needed");
        let c = env.cairn_cmd();
        let prog = c.get_program().to_owned();
        let mut s = std::process::Command::new(setpriv);
        s.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(prog).args(args);
        for (k, v) in c.get_envs() {
            if let Some(v) = v {
                s.env(k, v);
            }
        }
        s.env("HOME", env.dir.path());
        s.output().unwrap()
    };
    let init = as_nobody(&["init"]);
    assert!(init.status.success(), "{}", describe(&init));
    let out = as_nobody(&["backup", "--json", "volume", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("secret.txt"), "{text}");
    let listing = as_nobody(&["ls", "latest"]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("readable.txt") && !listing.contains("secret.txt"), "{listing}");
}
