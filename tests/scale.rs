//! Guards against super-linear costs creeping back (see bench/scale.sh for
//! the real scaling bench): on a tree of many tiny files, `check
//! --read-data` must cost less CPU than the backup that wrote the
//! repository, and backup, check, ls and restore must each stay under a
//! memory ceiling.
//!
//! Why these bounds fail on a regression and not on a slow machine: both
//! sides of the CPU comparison are measured in the same run on the same
//! data, and a linear check costs a fraction of a backup (no chunking, no
//! compression; 0.35× here), where the quadratic check this replaced cost
//! 6.4× the backup at 60,000 blobs (722 against 113 ticks) and grew from there. CPU
//! time, not wall time, so other work on the machine does not count. The
//! memory ceiling is the one teams give a backup pod, halved.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Env, describe};

const FILES: usize = 60_000;
const PER_DIR: usize = 1_000;
const RSS_CEILING_KIB: u64 = 256 * 1024;

/// CPU seconds used by this process's waited-for children so far
/// (`cutime + cstime` of /proc/self/stat, in clock ticks).
fn children_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("reading /proc/self/stat");
    let after = &stat[stat.rfind(')').expect("a comm field") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // After the comm: field 3 (state) is index 0, so cutime (16) and cstime (17) are 13 and 14.
    fields[13].parse::<u64>().expect("cutime") + fields[14].parse::<u64>().expect("cstime")
}

/// Runs `cmd` to completion; returns its CPU ticks and its peak RSS in KiB
/// (VmHWM, sampled while it runs: a high-water mark, so the last sample is
/// the peak up to a few milliseconds before the exit).
fn measured(mut cmd: Command, what: &str) -> (u64, u64) {
    let before = children_cpu_ticks();
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawning cairn");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path)
            && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            peak = peak.max(kib);
        }
        if child.try_wait().expect("waiting for cairn").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().expect("collecting cairn's output");
    assert!(out.status.success(), "cairn {what} failed: {}", describe(&out));
    assert!(peak > 0, "no RSS sample for cairn {what}");
    (children_cpu_ticks() - before, peak)
}

fn make_tiny_files(root: &Path) {
    for i in 0..FILES {
        let dir = root.join(format!("d{:03}", i / PER_DIR));
        if i % PER_DIR == 0 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        // Unique content: one data blob per file, all in a handful of packs.
        std::fs::write(dir.join(format!("f{i:06}")), format!("file {i}\n")).unwrap();
    }
}

#[test]
fn check_is_linear_and_commands_stay_under_the_memory_ceiling() {
    let env = Env::new();
    let src = env.path("src");
    make_tiny_files(&src);
    env.init();

    let mut backup = env.cairn_cmd();
    backup.args(["backup", "volume", src.to_str().unwrap()]);
    let (backup_cpu, backup_rss) = measured(backup, "backup");

    let mut check = env.cairn_cmd();
    check.args(["check", "--read-data"]);
    let (check_cpu, check_rss) = measured(check, "check --read-data");
    eprintln!("{FILES} files: backup {backup_cpu} ticks, check --read-data {check_cpu} ticks");
    assert!(
        check_cpu <= backup_cpu.max(10),
        "check --read-data used {check_cpu} CPU ticks for {FILES} blobs, more than the backup that wrote \
         them ({backup_cpu}): something in check grows faster than the repository"
    );

    let mut ls = env.cairn_cmd();
    ls.args(["ls", "latest"]);
    let (_, ls_rss) = measured(ls, "ls");

    let target = env.path("restored");
    let mut restore = env.cairn_cmd();
    restore.args(["restore", "latest", "--no-fsync", "--to", target.to_str().unwrap()]);
    let (_, restore_rss) = measured(restore, "restore");
    let restored = std::fs::read_dir(&target).unwrap().count();
    assert!(restored > 0, "nothing restored");
    let last = FILES - 1;
    let sample = walkdir_find(&target, &format!("f{last:06}")).expect("the last file restored");
    assert_eq!(std::fs::read_to_string(sample).unwrap(), format!("file {last}\n"));

    for (what, rss) in
        [("backup", backup_rss), ("check", check_rss), ("ls", ls_rss), ("restore", restore_rss)]
    {
        eprintln!("{what}: peak RSS {} MiB", rss / 1024);
        assert!(rss < RSS_CEILING_KIB, "{what} of {FILES} files peaked at {} MiB", rss / 1024);
    }
}

/// The first path under `root` whose file name is `name`.
fn walkdir_find(root: &Path, name: &str) -> Option<std::path::PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if entry.file_name() == name {
                return Some(path);
            }
            if entry.file_type().ok()?.is_dir() {
                stack.push(path);
            }
        }
    }
    None
}
