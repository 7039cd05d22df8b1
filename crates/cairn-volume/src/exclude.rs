//! Exclude patterns, with restic's meaning.
//!
//! A pattern starting with `/` is anchored at the file-system root; any
//! other pattern matches at any depth (`*.tmp`, `node_modules`,
//! `cache/*.bin`). `*` stays within one path component, `**` crosses
//! components. Excluding a directory excludes everything below it.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// A bad pattern or unreadable exclude file.
#[derive(Debug, thiserror::Error)]
pub enum ExcludeError {
    #[error("invalid exclude pattern {pattern:?}: {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("cannot read exclude file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
}

/// Compiled exclude patterns.
#[derive(Debug, Clone)]
pub struct Excludes {
    set: GlobSet,
    patterns: Vec<String>,
}

fn glob(p: &str) -> Result<Glob, ExcludeError> {
    GlobBuilder::new(p)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| ExcludeError::Pattern { pattern: p.to_string(), reason: e.to_string() })
}

impl Excludes {
    /// Compiles `patterns` plus the patterns listed in `files` (one per line;
    /// blank lines and `#` comments ignored).
    pub fn new(patterns: &[String], files: &[PathBuf]) -> Result<Excludes, ExcludeError> {
        let mut all: Vec<String> = patterns.to_vec();
        for f in files {
            let text = std::fs::read_to_string(f)
                .map_err(|source| ExcludeError::File { path: f.clone(), source })?;
            all.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
        }
        let mut builder = GlobSetBuilder::new();
        for p in &all {
            let p = p.trim_end_matches('/');
            if p.is_empty() {
                continue;
            }
            if p.starts_with('/') {
                builder.add(glob(p)?);
                builder.add(glob(&format!("{p}/**"))?);
            } else {
                builder.add(glob(&format!("**/{p}"))?);
                builder.add(glob(&format!("**/{p}/**"))?);
            }
        }
        let set = builder
            .build()
            .map_err(|e| ExcludeError::Pattern { pattern: all.join(", "), reason: e.to_string() })?;
        Ok(Excludes { set, patterns: all })
    }

    pub fn none() -> Excludes {
        Excludes { set: GlobSet::empty(), patterns: Vec::new() }
    }

    /// Whether the absolute `path` is excluded.
    pub fn is_excluded(&self, path: &Path) -> bool {
        !self.patterns.is_empty() && self.set.is_match(path)
    }

    /// The patterns, as recorded in the snapshot.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restic_style_matching() {
        let ex = Excludes::new(&["*.tmp".into(), "/data/cache".into(), "node_modules".into()], &[]).unwrap();
        assert!(ex.is_excluded(Path::new("/home/a/b.tmp")));
        assert!(!ex.is_excluded(Path::new("/home/a/b.tmpx")));
        assert!(ex.is_excluded(Path::new("/data/cache")));
        assert!(ex.is_excluded(Path::new("/data/cache/x/y")));
        assert!(!ex.is_excluded(Path::new("/other/data/cache")));
        assert!(ex.is_excluded(Path::new("/src/app/node_modules/left-pad/index.js")));
        assert!(!ex.is_excluded(Path::new("/src/app/main.rs")));
    }

    #[test]
    fn exclude_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ex");
        std::fs::write(&f, "# comment\n\n*.log\n").unwrap();
        let ex = Excludes::new(&[], &[f]).unwrap();
        assert!(ex.is_excluded(Path::new("/var/x.log")));
        assert_eq!(ex.patterns(), ["*.log"]);
        assert!(Excludes::new(&[], &[dir.path().join("missing")]).is_err());
    }
}
