//! `cairn.yaml`: the repository, its secrets, and named sources.
//!
//! ```yaml
//! repository: /var/backups/cairn          # or ${CAIRN_REPOSITORY}
//! password_file: /etc/cairn/password      # or password: ${CAIRN_PASSWORD}
//! log_format: json
//! lock_table: cairn-leases                # optional DynamoDB leases (see docs/DESIGN.md)
//! lock_wait: 10m
//! replicas:                               # copied to after every backup
//!   - s3://backups-eu-west-1/site?region=eu-west-1
//! sources:
//!   - name: home
//!     kind: volume
//!     paths: [/home]
//!     exclude: ["*.tmp", "node_modules"]
//!     exclude_file: /etc/cairn/home.excludes
//!     one_file_system: true
//!     tags: [nightly]
//!   - name: app-db
//!     kind: postgres
//!     url: postgresql://backup@db.internal:5432   # no password here...
//!     password_file: /etc/cairn/pg-password        # ...but from a mounted secret
//!     databases: [app, billing]                    # default: all
//!     globals: true                                # roles and tablespaces (default)
//!     jobs: 4
//!     split_large_tables: false                    # default; see `cairn backup postgres --help`
//!   - name: app-db-base
//!     kind: postgres
//!     url: postgresql://backup@db.internal:5432
//!     password_file: /etc/cairn/pg-password
//!     physical: true                               # base backup (BASE_BACKUP), tablespaces included
//!     max_rate: 100MiB                             # per second, to spare the primary's disks
//! ```
//!
//! `${NAME}` is replaced by the environment variable `NAME` before parsing
//! (`$${` writes a literal `${`); an unset variable is an error, never an
//! empty string. Secrets come from `*_file` keys (mounted Kubernetes
//! Secrets) or interpolation, never literal text in a checked-in file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: environment variable {name} is not set (referenced as ${{{name}}})")]
    MissingEnv { path: PathBuf, name: String },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: no source named {name:?} (known: {known})")]
    UnknownSource { path: PathBuf, name: String, known: String },
    #[error("cannot read secret file {path}: {source}")]
    Secret { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub repository: Option<String>,
    /// Replica repositories (other regions, buckets or providers), brought
    /// up to date after every successful backup.
    #[serde(default)]
    pub replicas: Vec<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub log_format: Option<String>,
    /// DynamoDB table for repository leases (many CronJobs, one bucket).
    #[serde(default)]
    pub lock_table: Option<String>,
    /// How long a backup waits for a lease another run holds (e.g. `10m`).
    #[serde(default)]
    pub lock_wait: Option<String>,
    /// Lease length without a heartbeat (default 60s).
    #[serde(default)]
    pub lock_lease: Option<String>,
    /// DynamoDB table cataloguing snapshots and verification results.
    #[serde(default)]
    pub catalog_table: Option<String>,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub exclude_file: Vec<PathBuf>,
    #[serde(default)]
    pub one_file_system: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub host: Option<String>,
    /// `postgres`: the server's URL.
    #[serde(default)]
    pub url: Option<String>,
    /// `postgres`: the password, from a mounted secret.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `postgres`: databases to dump (default: all).
    #[serde(default)]
    pub databases: Vec<String>,
    /// `postgres`: also dump roles and tablespaces (default true).
    #[serde(default)]
    pub globals: Option<bool>,
    /// `postgres`: tables copied at once.
    #[serde(default)]
    pub jobs: Option<usize>,
    /// `postgres`: also split tables larger than a quarter of shared_buffers
    /// into block ranges (see `cairn backup postgres --help`).
    #[serde(default)]
    pub split_large_tables: bool,
    /// `postgres`: directory holding the client tools.
    #[serde(default)]
    pub pg_bin: Option<PathBuf>,
    /// `postgres`: physical base backups instead of logical dumps.
    #[serde(default)]
    pub physical: bool,
    /// `postgres` with `physical`: cap on the base backup's rate per second (e.g. `50MiB`).
    #[serde(default)]
    pub max_rate: Option<String>,
}

/// Replaces `${NAME}` with the environment's value.
pub fn interpolate(
    text: &str,
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(t) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = t;
        } else if let Some(t) = tail.strip_prefix("${") {
            let end = t.find('}').ok_or_else(|| ConfigError::Parse {
                path: path.to_path_buf(),
                message: "unterminated ${ in the file".into(),
            })?;
            let name = &t[..end];
            let value = env(name)
                .ok_or_else(|| ConfigError::MissingEnv { path: path.to_path_buf(), name: name.into() })?;
            out.push_str(&value);
            rest = &t[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let text = interpolate(&text, path, |n| std::env::var(n).ok())?;
        let mut cfg: Config = serde_yaml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        cfg.path = path.to_path_buf();
        Ok(cfg)
    }

    pub fn source(&self, name: &str) -> Result<&SourceConfig, ConfigError> {
        self.sources.iter().find(|s| s.name == name).ok_or_else(|| ConfigError::UnknownSource {
            path: self.path.clone(),
            name: name.into(),
            known: self.sources.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// Reads a secret file, dropping one trailing newline (as `echo pw > file` leaves).
pub fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Secret { path: path.into(), source })?;
    Ok(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation() {
        let env = |n: &str| (n == "HOME").then(|| "/root".to_string());
        let p = Path::new("c.yaml");
        assert_eq!(interpolate("a: ${HOME}/x $${LIT} $5", p, env).unwrap(), "a: /root/x ${LIT} $5");
        assert!(matches!(interpolate("${NOPE}", p, env), Err(ConfigError::MissingEnv { .. })));
        assert!(interpolate("${HOME", p, env).is_err());
    }

    #[test]
    fn parses_sources_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cairn.yaml");
        std::fs::write(
            &f,
            "repository: /r\nsources:\n  - name: home\n    kind: volume\n    paths: [/home]\n",
        )
        .unwrap();
        let cfg = Config::load(&f).unwrap();
        assert_eq!(cfg.source("home").unwrap().paths, vec![PathBuf::from("/home")]);
        assert!(cfg.source("nope").is_err());
        std::fs::write(&f, "repositry: /r\n").unwrap();
        assert!(matches!(Config::load(&f), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn secret_files_lose_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(read_secret_file(&f).unwrap(), "s3cret");
    }

    /// The manifests in k8s/ embed cairn.yaml files: they must stay valid.
    #[test]
    fn kubernetes_manifests_embed_valid_configs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../k8s");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let Some(start) = text.find("cairn.yaml: |") else { continue };
            let block: Vec<&str> = text[start..]
                .lines()
                .skip(1)
                .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
                .map(|l| l.get(4..).unwrap_or(""))
                .collect();
            let cfg: Config = serde_yaml::from_str(&block.join("\n"))
                .unwrap_or_else(|e| panic!("{}: embedded cairn.yaml: {e}", path.display()));
            assert!(!cfg.sources.is_empty(), "{}", path.display());
            for src in &cfg.sources {
                assert!(
                    ["volume", "postgres"].contains(&src.kind.as_str()),
                    "{}: kind {}",
                    path.display(),
                    src.kind
                );
                if src.kind == "postgres" {
                    assert!(src.url.is_some(), "{}: {} has no url", path.display(), src.name);
                }
            }
            seen += 1;
        }
        assert!(seen >= 2, "expected the volume and postgres manifests in {}", dir.display());
    }
}
