//! Resolved settings: flags, environment and `cairn.yaml` merged once, with
//! flags winning over the environment and the environment over the file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use cairn_engine::{Engine, EngineSettings, LeaseSettings, Stop};
use cairn_repo::Repository;
use cairn_source::Registry;
use cairn_store::{Backend, DisplaySafe};

use crate::cli::GlobalArgs;
use crate::config::{Config, read_secret_file};
use crate::output::{LogFormat, progress_enabled};

pub struct Context {
    pub config: Option<Config>,
    repo: Option<String>,
    password_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub progress: bool,
    /// `--json`: the command's result as one JSON line on stdout.
    pub json: bool,
    pub registry: Registry,
    pub stop: Arc<Stop>,
    /// The metrics sinks given on the command line (cairn.yaml's apply otherwise).
    pub metrics: cairn_engine::metrics::MetricsSettings,
}

impl Context {
    pub fn new(global: &GlobalArgs, registry: Registry, stop: Arc<Stop>) -> Result<Context> {
        let config = global.config.as_deref().map(Config::load).transpose()?;
        let file_format = config.as_ref().and_then(|c| c.log_format.as_deref()).map(|f| match f {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            other => Err(anyhow::anyhow!("config: log_format must be text or json, not {other:?}")),
        });
        let log_format = match (global.log_format, file_format) {
            (Some(f), _) => f,
            (None, Some(f)) => f?,
            (None, None) => LogFormat::Text,
        };
        let repo = global.repo.clone().or_else(|| config.as_ref().and_then(|c| c.repository.clone()));
        Ok(Context {
            progress: progress_enabled(log_format, global.quiet, global.no_progress),
            password_file: global.password_file.clone(),
            config,
            repo,
            log_format,
            json: global.json,
            registry,
            stop,
            metrics: cairn_engine::metrics::MetricsSettings {
                textfile: global.metrics_textfile.clone(),
                pushgateway: global.pushgateway.clone(),
            },
        })
    }

    /// Whether results are printed as JSON: `--json`, or JSON logs (a
    /// CronJob's output is machine-read).
    pub fn json(&self) -> bool {
        self.json || self.log_format == LogFormat::Json
    }

    pub fn location(&self) -> Result<String> {
        match &self.repo {
            Some(r) if !r.is_empty() => Ok(r.clone()),
            _ => bail!(
                "no repository given: pass --repo, set CAIRN_REPOSITORY, or set `repository:` in cairn.yaml"
            ),
        }
    }

    /// The backend the repository location names (see [`backend_for`]).
    pub async fn backend(&self) -> Result<Arc<dyn Backend>> {
        backend_for(&self.location()?).await
    }

    /// Replica locations: `--to` flags if given, else `replicas:` in
    /// cairn.yaml; shown with their credentials masked.
    pub fn replicas(&self, flags: &[String]) -> Vec<DisplaySafe> {
        let given = if flags.is_empty() {
            self.config.as_ref().map(|c| c.replicas.clone()).unwrap_or_default()
        } else {
            flags.to_vec()
        };
        given.into_iter().map(DisplaySafe::from).collect()
    }
}

/// Opens any repository location (see [`cairn_engine::open_backend`]).
pub async fn backend_for(location: &str) -> Result<Arc<dyn Backend>> {
    Ok(cairn_engine::open_backend(location).await?)
}

impl Context {
    /// The password from settings alone: --password-file / CAIRN_PASSWORD_FILE,
    /// then CAIRN_PASSWORD, then the config file.
    fn configured_password(&self) -> Option<Result<String>> {
        if let Some(f) = &self.password_file {
            return Some(read_secret_file(f).map_err(Into::into));
        }
        if let Ok(p) = std::env::var("CAIRN_PASSWORD") {
            return Some(Ok(p));
        }
        let c = self.config.as_ref()?;
        if let Some(f) = &c.password_file {
            return Some(read_secret_file(f).map_err(Into::into));
        }
        c.password.clone().map(Ok)
    }

    /// The repository password: as configured, else a prompt on a terminal.
    pub fn password(&self) -> Result<String> {
        if let Some(p) = self.configured_password() {
            return p;
        }
        if std::io::stdin().is_terminal() {
            return rpassword::prompt_password("repository password: ").context("reading the password");
        }
        bail!(
            "no repository password: set CAIRN_PASSWORD_FILE (or CAIRN_PASSWORD), or password_file in cairn.yaml"
        )
    }

    /// The password for a new repository: as configured, else prompted twice.
    pub fn init_password(&self) -> Result<String> {
        match self.configured_password() {
            Some(p) => p,
            None => self.new_password(None, "CAIRN_PASSWORD"),
        }
    }

    /// A new password for `init` and `key add/passwd`: from `file`, else
    /// `env_var`, else prompted twice.
    pub fn new_password(&self, file: Option<&PathBuf>, env_var: &str) -> Result<String> {
        if let Some(f) = file {
            return Ok(read_secret_file(f)?);
        }
        if let Ok(p) = std::env::var(env_var) {
            return Ok(p);
        }
        if std::io::stdin().is_terminal() {
            let a = rpassword::prompt_password("new password: ")?;
            let b = rpassword::prompt_password("repeat new password: ")?;
            if a != b {
                bail!("the passwords do not match");
            }
            if a.is_empty() {
                bail!("an empty password is not allowed");
            }
            return Ok(a);
        }
        bail!("no new password: set {env_var} or pass --new-password-file")
    }

    /// The password file, when the password comes from one (a restored
    /// PostgreSQL server's restore_command needs a path it can read).
    pub fn password_file_path(&self) -> Option<PathBuf> {
        if let Some(f) = &self.password_file {
            return Some(f.clone());
        }
        if std::env::var("CAIRN_PASSWORD").is_ok() {
            return None;
        }
        self.config.as_ref().and_then(|c| c.password_file.clone())
    }

    /// Opens the repository (given up on at once when the run is stopped).
    pub async fn open(&self) -> Result<Repository> {
        Ok(self.engine()?.open().await?)
    }

    /// A value from the environment, else from cairn.yaml.
    fn setting(&self, env: &str, from_file: impl Fn(&Config) -> Option<String>) -> Option<String> {
        std::env::var(env).ok().filter(|v| !v.is_empty()).or_else(|| self.config.as_ref().and_then(from_file))
    }

    fn duration_setting(
        &self,
        env: &str,
        from_file: impl Fn(&Config) -> Option<String>,
        default: std::time::Duration,
    ) -> Result<std::time::Duration> {
        match self.setting(env, from_file) {
            Some(v) => cairn_source::units::parse_duration(&v).map_err(|e| anyhow::anyhow!("{env}: {e}")),
            None => Ok(default),
        }
    }

    /// The DynamoDB lease, when `lock_table` (or `CAIRN_LOCK_TABLE`) is set.
    fn lease_settings(&self) -> Result<Option<LeaseSettings>> {
        let Some(table) = self.setting("CAIRN_LOCK_TABLE", |c| c.lock_table.clone()) else { return Ok(None) };
        Ok(Some(LeaseSettings {
            table,
            wait: self.duration_setting(
                "CAIRN_LOCK_WAIT",
                |c| c.lock_wait.clone(),
                std::time::Duration::ZERO,
            )?,
            lease: self.duration_setting(
                "CAIRN_LOCK_LEASE",
                |c| c.lock_lease.clone(),
                std::time::Duration::from_secs(60),
            )?,
        }))
    }

    /// The snapshot catalog table, when `catalog_table` (or `CAIRN_CATALOG_TABLE`) is set.
    pub fn catalog_table(&self) -> Option<String> {
        self.setting("CAIRN_CATALOG_TABLE", |c| c.catalog_table.clone())
    }

    /// The engine for this repository.
    pub fn engine(&self) -> Result<Engine> {
        let settings = EngineSettings {
            location: self.location()?,
            password: self.password()?,
            password_file: self.password_file_path(),
            lease: self.lease_settings()?,
            catalog_table: self.catalog_table(),
            replicas: self.replicas(&[]),
        };
        Ok(Engine::new(settings, self.registry.clone(), self.stop.clone()))
    }
}
