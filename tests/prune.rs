//! `cairn prune`: after `forget`, what no kept snapshot references is
//! deleted and partly used packs are repacked, and restic checks and
//! restores the result; restic's prune on a cairn repository leaves one
//! cairn checks; `kill -9` before every step leaves a repository both tools
//! accept and a re-run finishes the job; backups racing a prune never end
//! up referencing deleted data.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;

use common::*;

/// The source tree of night `n`, built from scratch: files every night
/// shares, and files of the last two nights only (so forgetting old
/// nights leaves their blobs unused inside packs that also hold shared ones).
fn night_tree(root: &Path, n: u64) {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root.join("shared")).unwrap();
    std::fs::create_dir_all(root.join("nightly")).unwrap();
    for k in 0..12 {
        std::fs::write(root.join(format!("shared/s{k}")), pseudo_random(1000 + k, 40_000)).unwrap();
    }
    for night in n.saturating_sub(1).max(1)..=n {
        for k in 0..12 {
            std::fs::write(
                root.join(format!("nightly/n{night}-{k}")),
                pseudo_random(night * 100 + k, 60_000),
            )
            .unwrap();
        }
    }
    std::fs::write(root.join("night.txt"), format!("night {n}\n")).unwrap();
}

/// Backs up nights 1..=nights (small packs, so blobs of several nights
/// share packs) and returns the snapshot ids, oldest first.
fn nightly_backups(env: &Env, nights: u64) -> Vec<String> {
    let src = env.path("src");
    (1..=nights)
        .map(|n| {
            night_tree(&src, n);
            let v =
                env.cairn_json(&["backup", "--json", "volume", "--pack-size", "1", src.to_str().unwrap()]);
            v["snapshot"].as_str().unwrap().to_string()
        })
        .collect()
}

fn snapshot_ids(env: &Env) -> Vec<String> {
    let v = env.cairn_json(&["snapshots", "--json"]);
    v.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

/// Both checkers, reading every byte.
fn both_checks_pass(env: &Env) {
    // cairn first: it clears a killed run's stale lock, which restic 0.14 would trip over.
    env.cairn_ok(&["check", "--read-data"]);
    let restic = env.restic_ok(&["check", "--read-data"]);
    assert!(restic.contains("no errors were found"), "{restic}");
}

/// Restores snapshot `id` (night `n`) with cairn and compares it with the night's tree.
fn restores_identically(env: &Env, id: &str, n: u64, name: &str) {
    let expected = env.path(&format!("expected-{name}"));
    night_tree(&expected, n);
    let out = env.path(&format!("restore-{name}"));
    env.cairn_ok(&["restore", id, "--to", out.to_str().unwrap(), "--no-fsync"]);
    assert_same_tree(&expected, &out, false);
}

fn prune_report(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["prune", "--json"];
    all.extend_from_slice(args);
    env.cairn_json(&all)
}

fn packs_on_disk(env: &Env) -> usize {
    walk_count(&env.repo.join("data"))
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { walk_count(&p) } else { 1 })
        .sum()
}

#[test]
fn forget_then_prune_frees_space_and_every_kept_snapshot_restores() {
    let env = Env::new();
    env.init();
    let ids = nightly_backups(&env, 5);
    let before = packs_on_disk(&env);

    // The plan first: it changes nothing.
    env.cairn_ok(&["forget", "--keep-last", "2"]);
    let plan = prune_report(&env, &["--dry-run"]);
    assert_eq!(plan["job"], "prune");
    assert_eq!(plan["dry_run"], true);
    let to_delete = plan["objects"]["packs_delete"].as_u64().unwrap();
    let to_repack = plan["objects"]["packs_repack"].as_u64().unwrap();
    assert!(to_delete > 0 && to_repack > 0, "{plan}");
    assert!(plan["details"]["bytes_freed"].as_u64().unwrap() > 0, "{plan}");
    assert!(plan["details"]["plan_memory_bytes"].as_u64().unwrap() > 0, "{plan}");
    assert_eq!(packs_on_disk(&env), before);

    let done = prune_report(&env, &[]);
    assert_eq!(done["exit_code"], 0, "{done}");
    assert_eq!(done["objects"]["packs_deleted"].as_u64().unwrap(), to_delete + to_repack, "{done}");
    assert!(done["objects"]["packs_written"].as_u64().unwrap() > 0, "{done}");
    assert!(packs_on_disk(&env) < before);
    both_checks_pass(&env);
    assert_eq!(snapshot_ids(&env), ids[3..].to_vec());
    restores_identically(&env, &ids[3], 4, "night4");
    restores_identically(&env, &ids[4], 5, "night5");
    // restic restores the newest too, byte for byte.
    let out = env.path("restic-restore");
    env.restic_ok(&["restore", &ids[4][..8], "--target", out.to_str().unwrap()]);
    let expected = env.path("expected-night5");
    assert_same_tree(&expected, &out.join(env.path("src").strip_prefix("/").unwrap()), false);

    // Nothing is left to do; the next night still deduplicates against what stayed.
    let again = prune_report(&env, &["--dry-run"]);
    assert_eq!(again["objects"]["packs_delete"], 0, "{again}");
    assert_eq!(again["objects"]["packs_repack"], 0, "{again}");
    let more = nightly_backups(&env, 1);
    assert_eq!(more.len(), 1);
    both_checks_pass(&env);
}

#[test]
fn max_unused_unlimited_only_deletes_wholly_unused_packs_and_forget_prune_runs_both() {
    let env = Env::new();
    env.init();
    nightly_backups(&env, 4);
    let report =
        env.cairn_json(&["forget", "--json", "--keep-last", "1", "--prune", "--max-unused", "unlimited"]);
    // With --json, forget prints its groups and prune its report: the last line is prune's.
    assert_eq!(report["job"], "prune", "{report}");
    assert_eq!(report["objects"]["packs_repack"], 0, "{report}");
    assert!(report["objects"]["packs_deleted"].as_u64().unwrap() > 0, "{report}");
    assert!(report["details"]["unused_after"].as_u64().unwrap() > 0, "{report}");
    both_checks_pass(&env);
    let bad = env.cairn(&["prune", "--max-unused", "150%"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
}

#[test]
fn restic_prune_on_a_cairn_repository_leaves_one_cairn_checks() {
    let env = Env::new();
    env.init();
    let ids = nightly_backups(&env, 4);
    let out = env.restic_ok(&["forget", "--keep-last", "1", "--prune"]);
    assert!(out.contains("remove"), "{out}");
    env.cairn_ok(&["check", "--read-data"]);
    assert_eq!(snapshot_ids(&env), vec![ids[3].clone()]);
    restores_identically(&env, &ids[3], 4, "after-restic-prune");
}

#[test]
fn kill_9_before_every_step_leaves_a_checkable_repository_and_a_rerun_finishes() {
    for step in ["repack", "index", "delete-index", "delete-packs"] {
        let env = Env::new();
        env.init();
        let ids = nightly_backups(&env, 4);
        env.cairn_ok(&["forget", "--keep-last", "1"]);
        let mut child = env
            .cairn_cmd()
            .args(["prune"])
            .env("CAIRN_TEST_PRUNE_PAUSE", step)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut seen = Vec::new();
        for line in stderr.lines() {
            let line = line.unwrap();
            let paused = line.contains(&format!("paused before {step}"));
            seen.push(line);
            if paused {
                break;
            }
        }
        assert!(
            seen.last().is_some_and(|l| l.contains("paused before")),
            "{step}: prune never paused: {seen:?}"
        );
        child.kill().unwrap();
        child.wait().unwrap();

        both_checks_pass(&env);
        restores_identically(&env, &ids[3], 4, &format!("killed-{step}"));
        let rerun = prune_report(&env, &[]);
        assert_eq!(rerun["exit_code"], 0, "{step}: {rerun}");
        let after = prune_report(&env, &["--dry-run"]);
        assert_eq!(after["objects"]["packs_delete"], 0, "{step}: {after}");
        assert_eq!(after["objects"]["packs_repack"], 0, "{step}: {after}");
        assert_eq!(after["objects"]["packs_unindexed"], 0, "{step}: {after}");
        both_checks_pass(&env);
        restores_identically(&env, &ids[3], 4, &format!("rerun-{step}"));
    }
}

#[test]
fn backups_racing_a_prune_either_wait_their_turn_or_succeed_and_check_passes() {
    let env = Env::new();
    env.init();
    nightly_backups(&env, 4);
    env.cairn_ok(&["forget", "--keep-last", "1"]);

    // While prune holds the exclusive lock (paused before deleting), a
    // backup is refused with exit 11 and writes no snapshot.
    let mut child = env
        .cairn_cmd()
        .args(["prune"])
        .env("CAIRN_TEST_PRUNE_PAUSE", "delete-packs")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    assert!(stderr.lines().map_while(Result::ok).any(|l| l.contains("paused before delete-packs")));
    let src = env.path("src");
    night_tree(&src, 5);
    let refused = env.cairn(&["backup", "volume", src.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(11), "{}", describe(&refused));
    assert_eq!(snapshot_ids(&env).len(), 1);
    child.kill().unwrap();
    child.wait().unwrap();

    // Prunes and backups started together: each backup succeeds or is
    // refused (and retried, as a CronJob would), never saved against data
    // prune deletes.
    let pruner = {
        let mut c = env.cairn_cmd();
        c.args(["prune"]);
        std::thread::spawn(move || c.output().unwrap())
    };
    let mut saved = Vec::new();
    for n in 6..9 {
        night_tree(&src, n);
        loop {
            let out = env.cairn(&["backup", "--json", "volume", "--pack-size", "1", src.to_str().unwrap()]);
            match out.status.code() {
                Some(0) => {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    saved.push((v["snapshot"].as_str().unwrap().to_string(), n));
                    break;
                }
                Some(11) => std::thread::sleep(std::time::Duration::from_millis(200)),
                other => panic!("backup exited {other:?}: {}", describe(&out)),
            }
        }
    }
    let pruned = pruner.join().unwrap();
    assert!(pruned.status.success() || pruned.status.code() == Some(11), "prune: {}", describe(&pruned));
    env.cairn_ok(&["prune"]);
    both_checks_pass(&env);
    for (id, n) in saved {
        restores_identically(&env, &id, n, &format!("raced-{n}"));
    }
}

#[test]
fn a_sources_retention_is_applied_after_each_backup_and_prunes() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    let config = env.path("cairn.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  - name: site\n    kind: volume\n    paths: [\"{}\"]\n    pack_size: 1\n    retention:\n      keep_last: 2\n      prune: true\n",
            src.display()
        ),
    )
    .unwrap();
    let mut ids = Vec::new();
    for n in 1..=4 {
        night_tree(&src, n);
        let v =
            env.cairn_json(&["--config", config.to_str().unwrap(), "backup", "--json", "--source", "site"]);
        assert_eq!(v["exit_code"], 0, "{v}");
        ids.push(v["snapshot"].as_str().unwrap().to_string());
        if n >= 3 {
            assert_eq!(v["details"]["retention"]["removed"], serde_json::json!([ids[n as usize - 3]]), "{v}");
            assert!(v["details"]["retention"]["prune"]["objects"]["packs"].as_u64().unwrap() > 0, "{v}");
        }
    }
    assert_eq!(snapshot_ids(&env), ids[2..].to_vec());
    both_checks_pass(&env);
    restores_identically(&env, &ids[3], 4, "retained");
    // The shipped policies parse, and a named one is found beside cairn.yaml.
    std::fs::create_dir_all(env.path("policies")).unwrap();
    for name in ["nightly", "hourly"] {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../policies/{name}.yaml"));
        std::fs::copy(shipped, env.path(&format!("policies/{name}.yaml"))).unwrap();
        std::fs::write(
            &config,
            format!(
                "sources:\n  - name: site\n    kind: volume\n    paths: [\"{}\"]\n    retention: {name}\n",
                src.display()
            ),
        )
        .unwrap();
        let v =
            env.cairn_json(&["--config", config.to_str().unwrap(), "backup", "--json", "--source", "site"]);
        assert_eq!(v["exit_code"], 0, "{v}");
        assert!(v["details"]["retention"]["removed"].is_array(), "{v}");
    }
    both_checks_pass(&env);
    // A policy that keeps everything is refused when the file is read.
    std::fs::write(
        &config,
        "sources:\n  - name: site\n    kind: volume\n    paths: [/x]\n    retention: {prune: true}\n",
    )
    .unwrap();
    let out = env.cairn(&["--config", config.to_str().unwrap(), "backup", "--source", "site"]);
    assert!(!out.status.success() && describe(&out).contains("retention"), "{}", describe(&out));
}
