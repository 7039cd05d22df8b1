//! `cairn.yaml`: the repository, its secrets, and named sources.
//!
//! ```yaml
//! repository: /var/backups/cairn          # or ${CAIRN_REPOSITORY}
//! password_file: /etc/cairn/password      # or password: ${CAIRN_PASSWORD}
//! log_format: json
//! host: prod-cluster-1                    # recorded in snapshots (default: this machine's name)
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
//! Each source has `name`, `kind`, and optionally `host` and `tags`; every
//! other key belongs to its kind and is checked by that kind's adapter when
//! the source is used (a `kind: volume` source with `url:` is refused, and
//! so is a misspelt key).
//!
//! `${NAME}` in a value is replaced by the environment variable `NAME`
//! after parsing, inside that value only, so no value can change the
//! document's structure (`$${` writes a literal `${`; an unset variable is an
//! error, never an empty string; see [`cairn_source::config`]). Secrets come from
//! `*_file` keys (mounted Kubernetes Secrets) or interpolation, never literal
//! text in a checked-in file; secret files others can read are warned about.
//! `Debug` output masks the password and the credentials of URLs.

use std::fmt;
use std::path::{Path, PathBuf};

use cairn_store::redact;
use serde::Deserialize;

pub use cairn_source::config::{ConfigError, read_secret_file};

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
    /// The host recorded in snapshots of every source that names none.
    #[serde(default)]
    pub host: Option<String>,
    /// Restore drills (`cairn drill`), one per source; more come from
    /// `policies/drill-*.yaml` beside the file.
    #[serde(default)]
    pub drills: Vec<DrillConfig>,
    /// Where every job's metrics go (`--metrics-textfile`, `--pushgateway` win).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Read from the file apart: each entry's adapter keys stay as written
    /// until the source is used.
    #[serde(skip)]
    pub sources: Vec<SourceConfig>,
    #[serde(skip)]
    pub path: PathBuf,
}

/// One source's restore drill (`drills:` in cairn.yaml or a drill policy).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// The configured source (`sources:` name) whose snapshots are drilled.
    pub source: String,
    /// Which restore point: `latest` (default), `oldest`, `random:7d`.
    #[serde(default)]
    pub pick: Option<String>,
    /// Recovery time objective: restore start to a verified target.
    #[serde(default)]
    pub rto: Option<cairn_source::units::Span>,
    /// Recovery point objective: the restore point's age at drill time.
    #[serde(default)]
    pub rpo: Option<cairn_source::units::Span>,
    /// `cairn restore` flags of the source's kind (e.g. `[--database, app]`).
    #[serde(default)]
    pub restore_flags: Vec<String>,
    /// User assertions: one probe key (`sql`, `file`, `sha256`, `glob`) with
    /// its argument, and `expect` (default `true`).
    #[serde(default, rename = "assert")]
    pub assertions: Vec<std::collections::BTreeMap<String, String>>,
}

/// A drill policy file: `policies/drill-*.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillPolicy {
    pub drills: Vec<DrillConfig>,
}

/// `metrics:` in cairn.yaml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A node-exporter textfile collector file, rewritten after every job.
    #[serde(default)]
    pub textfile: Option<PathBuf>,
    /// A Prometheus Pushgateway (`http://host:9091`), pushed to after every job.
    #[serde(default)]
    pub pushgateway: Option<String>,
}

impl Config {
    /// The drills of the file and of `policies/drill-*.yaml` beside it, in
    /// that order (policy files by name).
    pub fn all_drills(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<DrillConfig>, ConfigError> {
        let mut drills = self.drills.clone();
        let dir = self.path.parent().unwrap_or(Path::new(".")).join("policies");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with("drill-") && (name.ends_with(".yaml") || name.ends_with(".yml"))
            })
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|source| ConfigError::Read { path: file.clone(), source })?;
            let value: serde_yaml::Value = serde_yaml::from_str(&text)
                .map_err(|e| ConfigError::Parse { path: file.clone(), message: e.to_string() })?;
            let policy: DrillPolicy = cairn_source::config::from_value(value, &file, env)?;
            drills.extend(policy.drills);
        }
        Ok(drills)
    }
}

/// One named source of the file.
#[derive(Clone)]
pub struct SourceConfig {
    pub name: String,
    pub kind: String,
    pub host: Option<String>,
    pub tags: Vec<String>,
    /// The kind's own keys, as written (not yet interpolated).
    pub keys: serde_yaml::Value,
    /// `retention:` — applied after every successful backup of the source.
    pub retention: Option<Retention>,
}

/// A source's `retention:`: restic's policy keys (`keep_last`, `keep_daily`,
/// `keep_within: 30d`, `keep_tags: [[monthly]]`, …) and `prune: true` to
/// prune after forgetting.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    pub policy: cairn_repo::forget::Policy,
    pub prune: bool,
}

/// `retention: NAME`: the mapping in `policies/NAME.yaml` beside the config file.
fn named_policy(config: &Path, name: &str) -> Result<serde_yaml::Value, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("{name:?} is not a policy name (letters, digits, '-', '_')"));
    }
    let file = config.parent().unwrap_or(Path::new(".")).join("policies").join(format!("{name}.yaml"));
    let text =
        std::fs::read_to_string(&file).map_err(|e| format!("policy {name:?}: {}: {e}", file.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
}

/// The keys every source has, whatever its kind.
#[derive(Deserialize)]
struct CommonKeys {
    name: String,
    kind: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

const COMMON_KEYS: [&str; 4] = ["name", "kind", "host", "tags"];

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
            .field("host", &self.host)
            .field("drills", &self.drills.len())
            .field(
                "metrics",
                &self.metrics.as_ref().map(|m| (&m.textfile, m.pushgateway.as_deref().map(redact))),
            )
            .field("sources", &self.sources)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The kind's keys are shown with every value masked as a free-form string
/// (URLs keep their host, lose their credentials).
impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<(String, String)> = match &self.keys {
            serde_yaml::Value::Mapping(m) => m
                .iter()
                .map(|(k, v)| {
                    let key = k.as_str().unwrap_or("?").to_string();
                    let shown = if key.contains("password") || key.contains("secret") || key.contains("token")
                    {
                        redact::MASK.to_string()
                    } else {
                        redact(serde_yaml::to_string(v).unwrap_or_default().trim_end())
                    };
                    (key, shown)
                })
                .collect(),
            _ => Vec::new(),
        };
        f.debug_struct("SourceConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("tags", &self.tags)
            .field("keys", &keys)
            .finish()
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse(&text, path, &|n| std::env::var(n).ok())
    }

    /// Parses the file's text: the top-level keys and each source's common
    /// keys now (interpolated), each source's own keys when it is used.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse { path: path.into(), message };
        let mut document: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| parse_error(flow_hint(e.to_string(), text)))?;
        if document.is_null() {
            document = serde_yaml::Value::Mapping(Default::default());
        }
        let serde_yaml::Value::Mapping(top) = &mut document else {
            return Err(parse_error(
                "the file must be a mapping of keys (repository:, sources:, ...)".into(),
            ));
        };
        let entries = match top.remove("sources") {
            None | Some(serde_yaml::Value::Null) => Vec::new(),
            Some(serde_yaml::Value::Sequence(entries)) => entries,
            Some(_) => return Err(parse_error("sources: must be a list of sources".into())),
        };
        let mut cfg: Config = cairn_source::config::from_value(document, path, env)?;
        for (i, entry) in entries.into_iter().enumerate() {
            let serde_yaml::Value::Mapping(mut keys) = entry else {
                return Err(parse_error(format!("sources[{i}] must be a mapping (name:, kind:, ...)")));
            };
            let mut common = serde_yaml::Mapping::new();
            for key in COMMON_KEYS {
                if let Some(v) = keys.remove(key) {
                    common.insert(key.into(), v);
                }
            }
            let in_source = |message: String| ConfigError::Parse {
                path: path.into(),
                message: format!("sources[{i}].retention: {message}"),
            };
            let mut retention = keys.remove("retention");
            if let Some(serde_yaml::Value::String(name)) = &retention {
                retention = Some(named_policy(path, name).map_err(in_source)?);
            }
            let retention = match retention {
                None | Some(serde_yaml::Value::Null) => None,
                Some(serde_yaml::Value::Mapping(mut r)) => {
                    let prune = match r.remove("prune") {
                        None => false,
                        Some(serde_yaml::Value::Bool(b)) => b,
                        Some(_) => return Err(in_source("prune: must be true or false".into())),
                    };
                    let policy: cairn_repo::forget::Policy =
                        cairn_source::config::from_value(serde_yaml::Value::Mapping(r), path, env)
                            .map_err(|e| in_source(e.to_string()))?;
                    if policy.is_empty() {
                        return Err(in_source("no keep_* rule: it would keep everything".into()));
                    }
                    Some(Retention { policy, prune })
                }
                Some(_) => {
                    return Err(in_source("must be a mapping (keep_daily: 7, …) or a policy name".into()));
                }
            };
            let common: CommonKeys =
                cairn_source::config::from_value(serde_yaml::Value::Mapping(common), path, env).map_err(
                    |e| match e {
                        ConfigError::Parse { path, message } => {
                            ConfigError::Parse { path, message: format!("sources[{i}]: {message}") }
                        }
                        other => other,
                    },
                )?;
            cfg.sources.push(SourceConfig {
                name: common.name,
                kind: common.kind,
                host: common.host,
                tags: common.tags,
                keys: serde_yaml::Value::Mapping(keys),
                retention,
            });
        }
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

/// A plain `${` cannot stand in a flow collection (`[..]`, `{..}`), where
/// YAML reserves the braces: say how to write it.
fn flow_hint(mut message: String, text: &str) -> String {
    if message.contains("while parsing a flow") && text.contains("${") {
        message.push_str("; inside [...] or {...}, quote a variable: [\"${NAME}\"]");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_masks_secrets() {
        let keys = serde_yaml::from_str(
            "url: postgresql://backup:hunter2@db.internal/app?sslpassword=hunter3\npassword_file: /etc/cairn/pg-password\n",
        )
        .unwrap();
        let source = SourceConfig {
            name: "db".into(),
            kind: "postgres".into(),
            host: None,
            tags: vec![],
            keys,
            retention: None,
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
        assert!(shown.contains("db.internal/app"), "{shown}");
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
        let home = cfg.source("home").unwrap();
        assert_eq!(home.kind, "volume");
        let registry = crate::sources::registry();
        let volume = registry.get("volume").unwrap();
        let env = |_: &str| None;
        let settings = volume.settings_from_config(home.keys.clone(), &f, &env).unwrap();
        let settings = settings.as_any().downcast_ref::<cairn_volume::VolumeSettings>().unwrap();
        assert_eq!(settings.paths, vec![PathBuf::from("/home")]);
        assert!(cfg.source("nope").is_err());
        std::fs::write(&f, "repositry: /r\n").unwrap();
        assert!(matches!(Config::load(&f), Err(ConfigError::Parse { .. })));
        // A key of another kind is refused by the source's own kind.
        let url = serde_yaml::from_str("paths: [/x]\nurl: postgresql://h/db\n").unwrap();
        let refused = volume.settings_from_config(url, &f, &env).unwrap_err().to_string();
        assert!(refused.contains("unknown field `url`"), "{refused}");
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
            // Variables as a CronJob's environment would set them.
            let env = |name: &str| Some(format!("value-of-{name}"));
            let cfg = Config::parse(&block.join("\n"), &path, &env)
                .unwrap_or_else(|e| panic!("{}: embedded cairn.yaml: {e}", path.display()));
            assert!(!cfg.sources.is_empty(), "{}", path.display());
            let registry = crate::sources::registry();
            for src in &cfg.sources {
                let source = registry
                    .get(&src.kind)
                    .unwrap_or_else(|| panic!("{}: kind {}", path.display(), src.kind));
                source
                    .settings_from_config(src.keys.clone(), &path, &env)
                    .unwrap_or_else(|e| panic!("{}: source {}: {e}", path.display(), src.name));
            }
            seen += 1;
        }
        assert!(seen >= 2, "expected the volume and postgres manifests in {}", dir.display());
    }
}
