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
//! `${NAME}` in a value is replaced by the environment variable `NAME`
//! after parsing, inside that value only, so no value can change the
//! document's structure (`$${` writes a literal `${`; an unset variable is an
//! error, never an empty string; see [`interpolate`]). Secrets come from
//! `*_file` keys (mounted Kubernetes Secrets) or interpolation, never literal
//! text in a checked-in file; secret files others can read are warned about.
//! `Debug` output masks the password and the credentials of URLs.

mod interpolate;

use std::collections::BTreeSet;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cairn_store::redact;
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

#[derive(Clone, Default, Deserialize)]
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

#[derive(Clone, Deserialize)]
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

/// Shows every setting but the password, and locations with their
/// credentials masked. Fields left out here are not shown at all.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("repository", &self.repository.as_deref().map(redact))
            .field("replicas", &self.replicas.iter().map(|r| redact(r)).collect::<Vec<_>>())
            .field("password", &self.password.as_ref().map(|_| redact::MASK))
            .field("password_file", &self.password_file)
            .field("log_format", &self.log_format)
            .field("lock_table", &self.lock_table)
            .field("lock_wait", &self.lock_wait)
            .field("lock_lease", &self.lock_lease)
            .field("catalog_table", &self.catalog_table)
            .field("sources", &self.sources)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("paths", &self.paths)
            .field("url", &self.url.as_deref().map(redact))
            .field("password_file", &self.password_file)
            .field("databases", &self.databases)
            .field("physical", &self.physical)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut cfg: Config = interpolate::from_str(&text, path, &|n| std::env::var(n).ok())?;
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

/// Reads a secret file (every password file: `--password-file`,
/// `--new-password-file`, `password_file:` of the config and of a source),
/// dropping one trailing newline (as `echo pw > file` leaves).
pub fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Secret { path: path.into(), source })?;
    if let Ok(meta) = std::fs::metadata(path)
        && let Some(readers) = other_readers(meta.mode(), meta.uid())
    {
        warn_once(path, readers);
    }
    Ok(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string())
}

/// Who besides its owner can read a file of this mode and owner, if anyone
/// should not. As libpq judges private keys: a group may read a file only
/// when root owns it, which is how Kubernetes shares a secret volume with a
/// pod's `fsGroup` (it adds group read to whatever `defaultMode` says).
fn other_readers(mode: u32, owner: u32) -> Option<&'static str> {
    match (mode & 0o040 != 0 && owner != 0, mode & 0o004 != 0) {
        (true, true) => Some("its group and everyone else"),
        (false, true) => Some("everyone"),
        (true, false) => Some("its group"),
        (false, false) => None,
    }
}

/// One warning per file per run, however often the file is read.
fn warn_once(path: &Path, readers: &str) {
    static WARNED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if WARNED.lock().unwrap_or_else(|e| e.into_inner()).insert(key) {
        tracing::warn!(
            file = %path.display(),
            "password file {} can be read by {readers}; run `chmod 600 {}` (in Kubernetes, mount the secret \
             with defaultMode: 0400)",
            path.display(),
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_masks_secrets() {
        let source = SourceConfig {
            name: "db".into(),
            kind: "postgres".into(),
            paths: vec![],
            exclude: vec![],
            exclude_file: vec![],
            one_file_system: false,
            tags: vec![],
            host: None,
            url: Some("postgresql://backup:hunter2@db.internal/app?sslpassword=hunter3".into()),
            password_file: Some("/etc/cairn/pg-password".into()),
            databases: vec![],
            globals: None,
            jobs: None,
            split_large_tables: false,
            pg_bin: None,
            physical: false,
            max_rate: None,
        };
        let cfg = Config {
            repository: Some("s3:https://AKIA:hunter4@host/bucket".into()),
            replicas: vec!["rest:https://u:hunter5@host/".into()],
            password: Some("hunter6".into()),
            sources: vec![source],
            ..Config::default()
        };
        let shown = format!("{cfg:?}");
        for secret in ["hunter2", "hunter3", "hunter4", "hunter5", "hunter6"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("db.internal/app") && shown.contains("/etc/cairn/pg-password"), "{shown}");
    }

    #[test]
    fn secret_files_others_can_read_are_told_apart() {
        assert_eq!(other_readers(0o100600, 1000), None);
        assert_eq!(other_readers(0o100400, 0), None);
        assert_eq!(other_readers(0o100440, 0), None, "root-owned, shared with a group (fsGroup)");
        assert_eq!(other_readers(0o100640, 1000), Some("its group"));
        assert_eq!(other_readers(0o100644, 1000), Some("its group and everyone else"));
        assert_eq!(other_readers(0o100604, 0), Some("everyone"));
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
