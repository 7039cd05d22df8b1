//! Scratch directories for drill targets, shared by every adapter.
//!
//! A scratch target's directory is `cairn-scratch-<prefix>-<kind>-<pid>-<n>`
//! under a root (the system's temporary directory unless the adapter is
//! told otherwise): the prefix is the drill's, so a later drill of the same
//! prefix finds what a killed one left ([`leftovers`]) and removes it; the
//! kind keeps adapters from sweeping each other's; the process id and
//! counter make names unique without coordination.

use std::path::{Path, PathBuf};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The name every scratch directory of `prefix` and `kind` starts with.
pub fn name_prefix(prefix: &str, kind: &str) -> String {
    format!("cairn-scratch-{prefix}-{kind}-")
}

/// A new, empty directory under `root` named for `prefix` and `kind`.
pub fn new_dir(root: &Path, prefix: &str, kind: &str) -> Result<PathBuf, BoxError> {
    let start = name_prefix(prefix, kind);
    for n in 0..1000u32 {
        let dir = root.join(format!("{start}{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("creating {}: {e}", dir.display()).into()),
        }
    }
    Err(format!("no free scratch directory name under {}", root.display()).into())
}

/// The scratch directories of `prefix` and `kind` under `root` (none if
/// `root` does not exist).
pub fn leftovers(root: &Path, prefix: &str, kind: &str) -> Result<Vec<PathBuf>, BoxError> {
    let start = name_prefix(prefix, kind);
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("listing {}: {e}", root.display()).into()),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&start) && entry.file_type()?.is_dir() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Removes `dir` and everything in it; one that is already gone is fine.
pub fn remove_dir(dir: &Path) -> Result<(), BoxError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", dir.display()).into()),
    }
}

/// The directory a scratch target's handle names (`{"dir": …}`).
pub fn handle_dir(target: &crate::ScratchTarget) -> Result<PathBuf, BoxError> {
    target
        .handle
        .get("dir")
        .and_then(|d| d.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| "the scratch handle names no directory".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_prefixes_and_kinds_apart() {
        let root = tempfile::tempdir().unwrap();
        let a = new_dir(root.path(), "drill-app", "volume").unwrap();
        let b = new_dir(root.path(), "drill-app", "volume").unwrap();
        let other_kind = new_dir(root.path(), "drill-app", "postgres").unwrap();
        let other_prefix = new_dir(root.path(), "drill-app2", "volume").unwrap();
        assert_ne!(a, b);
        assert_eq!(leftovers(root.path(), "drill-app", "volume").unwrap(), {
            let mut v = vec![a.clone(), b.clone()];
            v.sort();
            v
        });
        assert_eq!(leftovers(root.path(), "drill-app", "postgres").unwrap(), vec![other_kind]);
        assert_eq!(leftovers(root.path(), "drill-app2", "volume").unwrap(), vec![other_prefix]);
        remove_dir(&a).unwrap();
        remove_dir(&a).unwrap();
        assert!(!a.exists());
        assert!(leftovers(&root.path().join("missing"), "x", "volume").unwrap().is_empty());
    }
}
