//! A cairn repository is a restic repository: the real restic reads, checks
//! and restores what cairn writes, cairn reads what restic writes, and both
//! can keep adding snapshots to one repository.

mod common;

use common::*;

#[test]
fn cairn_repository_passes_restic_check_and_restores_identically() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    env.init();
    env.backup(&src);
    // A second, incremental snapshot with a change, so restic sees a parent chain.
    std::fs::write(src.join("small.txt"), b"changed\n").unwrap();
    env.backup(&src);

    let check = env.restic_ok(&["check", "--read-data"]);
    assert!(check.contains("no errors were found"), "{check}");

    let out = env.path("restic-restore");
    env.restic_ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    // restic restores the absolute path below the target.
    let restored = out.join(src.strip_prefix("/").unwrap());
    assert_same_tree(&src, &restored, true);
}

#[test]
fn restic_repository_is_listed_checked_and_restored_by_cairn() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    env.restic_ok(&["init", "--repository-version", "2"]);
    env.restic_ok(&["backup", src.to_str().unwrap()]);

    let snaps = env.cairn_json(&["snapshots", "--json"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    env.cairn_ok(&["check", "--read-data"]);
    let id = snaps[0]["id"].as_str().unwrap();
    env.cairn_ok(&["verify", id]);
    let out = env.path("cairn-restore");
    env.cairn_ok(&["restore", &id[..8], "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &out, true);
}

#[test]
fn both_tools_add_snapshots_to_one_repository_alternately() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    env.init();
    for round in 0..2 {
        std::fs::write(src.join(format!("round-{round}-cairn.txt")), format!("cairn {round}")).unwrap();
        env.backup(&src);
        std::fs::write(src.join(format!("round-{round}-restic.txt")), format!("restic {round}")).unwrap();
        env.restic_ok(&["backup", src.to_str().unwrap()]);
    }
    assert!(env.restic_ok(&["check", "--read-data"]).contains("no errors were found"));
    env.cairn_ok(&["check", "--read-data"]);
    let snaps = env.cairn_json(&["snapshots", "--json"]);
    assert_eq!(snaps.as_array().unwrap().len(), 4);

    // The newest snapshot is restic's; cairn restores it, restic restores cairn's.
    let out = env.path("by-cairn");
    env.cairn_ok(&["restore", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &out, true);

    let cairn_snap = snaps.as_array().unwrap()[2]["id"].as_str().unwrap().to_string();
    let out2 = env.path("by-restic");
    env.restic_ok(&["restore", &cairn_snap, "--target", out2.to_str().unwrap()]);
    let restored = out2.join(src.strip_prefix("/").unwrap());
    assert!(restored.join("round-1-cairn.txt").exists());
    assert!(!restored.join("round-1-restic.txt").exists());
}
