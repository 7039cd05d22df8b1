//! Volume backups through the CLI: round trips with metadata, incremental
//! runs, excludes, partial restores, overwrite policy, config files.

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;

#[test]
fn round_trip_keeps_content_metadata_links_and_holes() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    env.init();
    let id = env.backup(&src);
    let out = env.path("out");
    env.cairn_ok(&["restore", &id[..12], "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &out, true);

    // The hard link is a hard link again.
    let a = std::fs::metadata(out.join("small.txt")).unwrap();
    let b = std::fs::metadata(out.join("docs/hardlink-to-small")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link restored as a copy");
    // The 64 MiB sparse file occupies about as little as the original.
    let sparse = std::fs::metadata(out.join("data/sparse.img")).unwrap();
    assert_eq!(sparse.len(), 64 << 20);
    assert!(sparse.blocks() * 512 < 4 << 20, "sparse file was filled: {} blocks", sparse.blocks());
    // Directory mtimes are restored too.
    let dm = |p: &std::path::Path| std::fs::metadata(p).unwrap().mtime();
    assert_eq!(dm(&src.join("many/dir1")), dm(&out.join("many/dir1")));
    env.cairn_ok(&["verify", &id]);
}

/// A restore is durable before it says so: each file's data and metadata
/// fsynced before its rename, each directory it made or changed (and the
/// parent of the first one it made) fsynced after its entries, all before
/// the success line — into a new target and over an existing one.
/// `--no-fsync` and `CAIRN_RESTORE_NO_FSYNC=1` sync nothing they restored,
/// and restore the same tree.
#[test]
fn restores_are_durable_before_they_report_success() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    env.init();
    env.backup(&src);

    let restored = env.path("restored");
    let target = restored.join("deeper");
    let restore = |extra: &[&str]| {
        let mut cmd = env.cairn_cmd();
        cmd.args(["restore", "latest", "--to", target.to_str().unwrap()]).args(extra);
        cmd
    };
    strace::assert_durable(&restore(&[]), &env.path("new.trace"), &restored, Some("restored "));
    assert_same_tree(&src, &target, true);
    strace::assert_durable(
        &restore(&["--overwrite", "always"]),
        &env.path("over.trace"),
        &restored,
        Some("restored "),
    );
    assert_same_tree(&src, &target, true);

    for how in ["flag", "env"] {
        let fast = env.path(&format!("fast-{how}"));
        let mut cmd = env.cairn_cmd();
        cmd.args(["restore", "latest", "--to", fast.to_str().unwrap()]);
        match how {
            "flag" => cmd.arg("--no-fsync"),
            _ => cmd.env("CAIRN_RESTORE_NO_FSYNC", "1"),
        };
        let (out, trace) = strace::traced(&cmd, &env.path(&format!("{how}.trace")));
        assert!(out.status.success(), "{}", describe(&out));
        let synced = trace.syncs_under(&fast);
        assert!(synced.is_empty(), "--no-fsync ({how}) synced {} paths, e.g. {:?}", synced.len(), synced[0]);
        assert_same_tree(&src, &fast, true);
    }
}

#[test]
fn unchanged_files_are_not_read_again_and_changes_are_found() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    env.init();
    let first = env.cairn_json(&["backup", "--json", "volume", src.to_str().unwrap()]);
    let total = first["objects"]["files_new"].as_u64().unwrap();
    assert!(total > 50);

    let second = env.cairn_json(&["backup", "--json", "volume", src.to_str().unwrap()]);
    assert_eq!(second["objects"]["files_unmodified"].as_u64().unwrap(), total, "{second}");
    assert_eq!(
        second["objects"]["files_new"].as_u64().unwrap()
            + second["objects"]["files_changed"].as_u64().unwrap(),
        0
    );
    assert_eq!(
        second["objects"]["dirs_new"].as_u64().unwrap() + second["objects"]["dirs_changed"].as_u64().unwrap(),
        0,
        "{second}"
    );
    // Only the trees of the path's ancestors (whose mtimes others change) may be new.
    assert!(second["bytes"]["added"].as_u64().unwrap() < 2048, "{second}");
    assert_eq!(second["parent"].as_str(), first["snapshot"].as_str());

    std::fs::write(src.join("docs/readme.md"), b"rewritten").unwrap();
    std::fs::write(src.join("new-file.txt"), b"brand new").unwrap();
    let third = env.cairn_json(&["backup", "--json", "volume", src.to_str().unwrap()]);
    assert_eq!(third["objects"]["files_changed"].as_u64().unwrap(), 1, "{third}");
    assert_eq!(third["objects"]["files_new"].as_u64().unwrap(), 1, "{third}");
    // Only the two small files' bytes (plus trees) are new.
    assert!(third["bytes"]["added"].as_u64().unwrap() < 64 << 10, "{third}");

    // --force reads everything again but stores nothing new.
    let forced = env.cairn_json(&["backup", "--json", "volume", "--force", src.to_str().unwrap()]);
    assert_eq!(forced["objects"]["files_unmodified"].as_u64().unwrap(), 0);
    // Without a parent, atimes moved by the last read make new trees; no file data is new.
    assert!(forced["bytes"]["added"].as_u64().unwrap() < 64 << 10, "{forced}");
}

#[test]
fn excludes_and_exclude_files_leave_paths_out() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    let exclude_file = env.path("excludes.txt");
    std::fs::write(&exclude_file, "# generated data\n*.bin\n").unwrap();
    env.init();
    env.cairn_ok(&[
        "backup",
        "volume",
        "--exclude",
        "*.log",
        "--exclude",
        "many",
        "--exclude-file",
        exclude_file.to_str().unwrap(),
        src.to_str().unwrap(),
    ]);
    let listing = env.cairn_ok(&["ls", "latest"]);
    assert!(listing.contains("/docs/readme.md"), "{listing}");
    assert!(!listing.contains(".log"), "{listing}");
    assert!(!listing.contains(".bin"), "{listing}");
    assert!(!listing.contains("/many"), "{listing}");
    let snaps = env.cairn_json(&["snapshots", "--json"]);
    assert_eq!(snaps[0]["excludes"].as_array().unwrap().len(), 3);
}

#[test]
fn partial_restore_dry_run_and_overwrite_policy() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    env.init();
    env.backup(&src);
    let out = env.path("out");
    let target = out.to_str().unwrap();

    let plan = env.cairn_json(&["restore", "latest", "--to", target, "--dry-run", "--json", "docs"]);
    assert_eq!(plan["dry_run"], true);
    assert!(!out.exists(), "a dry run wrote to the target");

    env.cairn_ok(&["restore", "latest", "--to", target, "docs", "small.txt"]);
    assert!(out.join("docs/readme.md").is_file());
    assert!(out.join("small.txt").is_file());
    assert!(!out.join("data").exists(), "restored more than asked");

    let missing = env.cairn(&["restore", "latest", "--to", target, "no/such/path"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not in the snapshot"),
        "{}",
        describe(&missing)
    );

    // Existing files: refused by default, without touching anything.
    std::fs::write(out.join("small.txt"), b"local edit").unwrap();
    let refused = env.cairn(&["restore", "latest", "--to", target]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--overwrite"), "{}", describe(&refused));
    assert_eq!(std::fs::read(out.join("small.txt")).unwrap(), b"local edit");
    assert!(!out.join("data").exists());

    // if-changed restores only what differs; always replaces everything.
    let r = env.cairn_json(&["restore", "latest", "--to", target, "--overwrite", "if-changed", "--json"]);
    assert!(r["objects"]["skipped"].as_u64().unwrap() >= 1, "{r}");
    assert_same_tree(&src, &out, true);
    std::fs::write(out.join("docs/readme.md"), b"x").unwrap();
    env.cairn_ok(&["restore", "latest", "--to", target, "--overwrite", "always"]);
    assert_same_tree(&src, &out, true);
}

#[test]
fn config_file_names_repository_password_and_sources() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    let pw = env.path("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let cfg = env.path("cairn.yaml");
    std::fs::write(
        &cfg,
        format!(
            "repository: ${{TEST_REPO_DIR}}/repo\npassword_file: {}\nsources:\n  - name: site\n    kind: volume\n    paths: [{}]\n    exclude: ['*.log']\n    tags: [nightly]\n",
            pw.display(),
            src.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut c = env.cairn_cmd();
        c.env_remove("CAIRN_REPOSITORY").env_remove("CAIRN_PASSWORD").env("TEST_REPO_DIR", env.dir.path());
        c.arg("--config").arg(&cfg).args(args).output().unwrap()
    };
    assert!(run(&["init"]).status.success());
    let out = run(&["backup", "--source", "site", "--log-format", "json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(stdout.contains("\"job\":\"backup\""), "{stdout}");
    let snaps = env.cairn_json(&["snapshots", "--json"]);
    assert_eq!(snaps[0]["tags"][0], "nightly");
    assert_eq!(snaps[0]["cairn"]["source_name"], "site");

    let unknown = run(&["backup", "--source", "nope"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no source named"));

    let mut c = env.cairn_cmd();
    c.env_remove("CAIRN_REPOSITORY").arg("--config").arg(&cfg).arg("snapshots");
    let missing_env = c.output().unwrap();
    assert!(
        String::from_utf8_lossy(&missing_env.stderr).contains("TEST_REPO_DIR"),
        "{}",
        describe(&missing_env)
    );
}

#[test]
fn one_file_system_keeps_mount_points_but_not_what_is_mounted() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("mnt")).unwrap();
    std::fs::write(src.join("local.txt"), b"on the source file system").unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4M", "tmpfs", src.join("mnt").to_str().unwrap()])
        .status()
        .expect("mount is needed for this test (run the suite as root)");
    assert!(mounted.success(), "cannot mount a tmpfs: this test needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(src.join("mnt"));
    std::fs::write(src.join("mnt/other-fs.txt"), b"on another file system").unwrap();
    env.init();
    env.cairn_ok(&["backup", "volume", "--one-file-system", src.to_str().unwrap()]);
    let listing = env.cairn_ok(&["ls", "latest"]);
    assert!(listing.contains("/src/local.txt"), "{listing}");
    assert!(listing.contains("/src/mnt\n"), "the mount point itself is kept: {listing}");
    assert!(!listing.contains("other-fs.txt"), "{listing}");
    env.cairn_ok(&["backup", "volume", src.to_str().unwrap()]);
    assert!(env.cairn_ok(&["ls", "latest"]).contains("other-fs.txt"), "without the flag it is crossed");
}

#[test]
fn a_file_that_keeps_changing_while_read_is_reported_not_silently_stored() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("stable.txt"), b"stable").unwrap();
    let busy = src.join("busy.log");
    std::fs::write(&busy, pseudo_random(3, 32 << 20)).unwrap();
    env.init();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let busy = busy.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&busy).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"another line of log\n").unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    let out = env.cairn(&["backup", "--json", "volume", src.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let result: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let warnings = result["warnings"].to_string();
    assert!(warnings.contains("busy.log") && warnings.contains("changed while being read"), "{warnings}");
    // The snapshot records the warning for later readers too.
    let snaps = env.cairn_json(&["snapshots", "--json"]);
    assert!(snaps[0]["cairn"]["warnings"].to_string().contains("busy.log"));
}

/// `cairn backup ARGS` as if on a machine called `hostname` (a CronJob's
/// pod gets a new name every night): a UTS namespace of its own.
fn backup_as_host(env: &Env, hostname: &str, args: &[&str]) -> serde_json::Value {
    let cairn = env.cairn_cmd();
    let mut c = std::process::Command::new("unshare");
    c.args(["--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\"", hostname]).arg(cairn.get_program());
    c.args(["backup", "--json"]).args(args);
    for (k, v) in cairn.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let out = c.output().expect("unshare (util-linux) is needed; the tests run as root");
    assert!(out.status.success(), "backup as {hostname}: {}", describe(&out));
    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
}

/// Tonight's pod has another name than last night's: a named source (with
/// or without `host:`), or an ad-hoc backup given `--host`, still finds its
/// parent, so the second run reads only the file that changed.
#[test]
fn a_backup_run_under_a_new_hostname_finds_its_parent() {
    for (case, source_keys, args) in [
        ("named source with host:", "    host: nightly\n", vec!["--source", "site"]),
        ("named source without host:", "", vec!["--source", "site"]),
        ("ad-hoc backup with --host", "", vec!["--host", "nightly", "volume"]),
    ] {
        let env = Env::new();
        env.init();
        let src = env.path("src");
        make_tree(&src);
        let config = env.path("cairn.yaml");
        std::fs::write(
            &config,
            format!(
                "sources:\n  - name: site\n    kind: volume\n    paths: [{}]\n{source_keys}",
                src.display()
            ),
        )
        .unwrap();
        let mut args: Vec<&str> = args.clone();
        if args.last() == Some(&"volume") {
            args.push(src.to_str().unwrap());
        }
        args.splice(0..0, ["--config", config.to_str().unwrap()]);
        let first = backup_as_host(&env, "pod-a-1", &args);
        std::fs::write(src.join("many/dir1/file1.dat"), b"changed tonight\n").unwrap();
        let second = backup_as_host(&env, "pod-b-2", &args);
        assert_eq!(second["parent"], first["snapshot"], "{case}: {second}");
        let files = second["objects"]["files"].as_u64().unwrap();
        assert_eq!(second["objects"]["files_changed"], 1, "{case}: {second}");
        assert_eq!(
            second["objects"]["files_unmodified"],
            files - 1,
            "{case}: only the change is read: {second}"
        );
        let hosts: Vec<String> = env
            .cairn_json(&["snapshots", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["hostname"].as_str().unwrap().to_string())
            .collect();
        let expected = if source_keys.is_empty() && args.contains(&"--source") {
            vec!["pod-a-1", "pod-b-2"]
        } else {
            vec!["nightly", "nightly"]
        };
        assert_eq!(hosts, expected, "{case}");
    }
}
