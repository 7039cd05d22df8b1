//! Scratch targets for restore drills: an empty directory named
//! `cairn-scratch-<prefix>-volume-<pid>-<n>` ([`cairn_source::scratch`])
//! in the system's temporary directory (or a root of the caller's), and
//! the probes a drill's assertions run on what was restored there: `file`
//! (present: `true`/`false`), `sha256` (a file's hash) and `glob` (how many
//! files and directories match a pattern). Paths are relative to the
//! restored tree, as the backed-up directory's contents are laid down at
//! the target's top.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use cairn_repo::Snapshot;
use cairn_source::{Scratch, ScratchTarget, scratch};
use sha2::{Digest, Sha256};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const KIND: &str = "volume";

/// Scratch directories for volume drills.
#[derive(Debug, Clone, Default)]
pub struct VolumeScratch {
    /// Where the directories go (default: the system's temporary directory).
    pub root: Option<PathBuf>,
}

impl VolumeScratch {
    fn root(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(std::env::temp_dir)
    }

    pub fn arc(self) -> Arc<dyn Scratch> {
        Arc::new(self)
    }
}

/// `relative` inside `root`, refusing anything that would leave it.
fn inside(root: &Path, relative: &str) -> Result<PathBuf, BoxError> {
    let rel = Path::new(relative.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("the path {relative:?} must stay inside the restored tree (no `..`)").into());
    }
    Ok(root.join(rel))
}

fn sha256_of(path: &Path) -> Result<String, BoxError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut digest = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if n == 0 {
            return Ok(hex::encode(digest.finalize()));
        }
        digest.update(&buf[..n]);
    }
}

/// How many entries below `root` (files, directories, links) match `pattern`
/// (a glob over the path relative to `root`, `**` crossing directories).
fn glob_count(root: &Path, pattern: &str) -> Result<u64, BoxError> {
    let matcher = globset::GlobBuilder::new(pattern.trim_start_matches('/'))
        .literal_separator(true)
        .build()
        .map_err(|e| format!("the glob {pattern:?}: {e}"))?
        .compile_matcher();
    let mut count = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| format!("listing {}: {e}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            if matcher.is_match(path.strip_prefix(root).expect("below the root")) {
                count += 1;
            }
            if entry.file_type()?.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(count)
}

#[async_trait]
impl Scratch for VolumeScratch {
    async fn provision(&self, prefix: &str, _snapshot: &Snapshot) -> Result<ScratchTarget, BoxError> {
        let dir = scratch::new_dir(&self.root(), prefix, KIND)?;
        Ok(ScratchTarget { target: dir.display().to_string(), handle: serde_json::json!({ "dir": dir }) })
    }

    async fn teardown(&self, target: &ScratchTarget) -> Result<(), BoxError> {
        let dir = scratch::handle_dir(target)?;
        tokio::task::spawn_blocking(move || scratch::remove_dir(&dir)).await?
    }

    async fn sweep(&self, prefix: &str) -> Result<usize, BoxError> {
        let leftovers = scratch::leftovers(&self.root(), prefix, KIND)?;
        let n = leftovers.len();
        tokio::task::spawn_blocking(move || leftovers.iter().try_for_each(|d| scratch::remove_dir(d)))
            .await??;
        Ok(n)
    }

    fn probes(&self) -> &'static [&'static str] {
        &["file", "sha256", "glob"]
    }

    async fn probe(&self, target: &ScratchTarget, probe: &str, argument: &str) -> Result<String, BoxError> {
        let root = PathBuf::from(&target.target);
        let probe = probe.to_string();
        let argument = argument.to_string();
        tokio::task::spawn_blocking(move || match probe.as_str() {
            "file" => Ok(inside(&root, &argument)?.symlink_metadata().is_ok().to_string()),
            "sha256" => sha256_of(&inside(&root, &argument)?),
            "glob" => Ok(glob_count(&root, &argument)?.to_string()),
            other => Err(format!("volume targets have no probe {other:?}").into()),
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        serde_json::from_value(serde_json::json!({
            "time": "2026-01-01T00:00:00Z", "tree": "00".repeat(32), "paths": [], "hostname": "h",
            "username": "u"
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn directories_are_provisioned_probed_torn_down_and_swept() {
        let root = tempfile::tempdir().unwrap();
        let scratch = VolumeScratch { root: Some(root.path().to_path_buf()) };
        let target = scratch.provision("drill-site", &snapshot()).await.unwrap();
        let dir = PathBuf::from(&target.target);
        assert!(dir.is_dir() && std::fs::read_dir(&dir).unwrap().next().is_none(), "not a new, empty dir");
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/x.txt"), b"hello").unwrap();
        std::fs::write(dir.join("a/y.txt"), b"").unwrap();
        let probe = |p: &'static str, a: &'static str| {
            let (scratch, target) = (scratch.clone(), target.clone());
            async move { scratch.probe(&target, p, a).await }
        };
        assert_eq!(probe("file", "a/b/x.txt").await.unwrap(), "true");
        assert_eq!(probe("file", "a/missing").await.unwrap(), "false");
        assert_eq!(
            probe("sha256", "a/b/x.txt").await.unwrap(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(probe("glob", "**/*.txt").await.unwrap(), "2");
        assert_eq!(probe("glob", "a/*.txt").await.unwrap(), "1");
        assert!(probe("file", "../etc/passwd").await.unwrap_err().to_string().contains("inside"));
        assert!(probe("sha256", "a/missing").await.is_err());
        scratch.teardown(&target).await.unwrap();
        assert!(!dir.exists());

        let leftover = scratch.provision("drill-site", &snapshot()).await.unwrap();
        let other = scratch.provision("drill-other", &snapshot()).await.unwrap();
        assert_eq!(scratch.sweep("drill-site").await.unwrap(), 1);
        assert!(!Path::new(&leftover.target).exists());
        assert!(Path::new(&other.target).exists(), "another drill's directory was swept");
        scratch.teardown(&other).await.unwrap();
    }
}
