//! Resolved settings: flags, environment and `cairn.yaml` merged once, with
//! flags winning over the environment and the environment over the file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use cairn_repo::Repository;
use cairn_store::{Backend, DisplaySafe, LocalBackend, Location, RetryBackend, RetryPolicy, StoreError};

use crate::cli::GlobalArgs;
use crate::config::{Config, read_secret_file};
use crate::output::{LogFormat, progress_enabled};

pub struct Context {
    pub config: Option<Config>,
    repo: Option<String>,
    password_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub progress: bool,
}

impl Context {
    pub fn new(global: &GlobalArgs) -> Result<Context> {
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
        })
    }

    pub fn json_logs(&self) -> bool {
        self.log_format == LogFormat::Json
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

/// Opens any repository location ([`Location`] says which kinds there are):
/// a local directory, or S3 wrapped in the retry policy.
pub async fn backend_for(location: &str) -> Result<Arc<dyn Backend>> {
    match Location::parse(location)? {
        Location::Local(path) => Ok(Arc::new(LocalBackend::new(path))),
        Location::S3(url) => {
            let s3 = cairn_store_s3::S3Backend::from_url(&url).await.map_err(StoreError::from)?;
            Ok(Arc::new(RetryBackend::new(s3, s3_retry_policy()?)))
        }
    }
}

/// The retry policy for S3 requests: the default, with every wait capped at
/// `CAIRN_S3_RETRY_MAX_DELAY` when set (`500ms`, `2s`, …). Lower it where
/// waiting out a long outage is pointless (tests that inject faults, or a
/// run that is better retried whole); the number of attempts stays.
fn s3_retry_policy() -> Result<RetryPolicy> {
    let mut policy = RetryPolicy::default();
    if let Some(value) = std::env::var("CAIRN_S3_RETRY_MAX_DELAY").ok().filter(|v| !v.is_empty()) {
        let max = crate::cli::parse_duration(&value)
            .map_err(|e| anyhow::anyhow!("CAIRN_S3_RETRY_MAX_DELAY: {e}"))?;
        policy.max_backoff = max;
        policy.initial_backoff = policy.initial_backoff.min(max);
    }
    Ok(policy)
}

/// How old an unfinished S3 multipart upload must be before a backup aborts
/// it as abandoned: `CAIRN_S3_ABANDONED_UPLOAD_AGE` (`24h` unless set). Far
/// longer than any single upload takes, so a concurrent run's uploads are
/// never touched.
pub fn abandoned_upload_age() -> Result<std::time::Duration> {
    match std::env::var("CAIRN_S3_ABANDONED_UPLOAD_AGE").ok().filter(|v| !v.is_empty()) {
        Some(value) => crate::cli::parse_duration(&value)
            .map_err(|e| anyhow::anyhow!("CAIRN_S3_ABANDONED_UPLOAD_AGE: {e}")),
        None => Ok(std::time::Duration::from_secs(24 * 3600)),
    }
}

/// How held repository locks are refreshed and when they count as lost:
/// `CAIRN_LOCK_REFRESH_INTERVAL` (5m unless set; failed refreshes are
/// retried after a tenth of it) and `CAIRN_LOCK_LOST_AFTER` (15m). Test and
/// operations knobs: the lost bound must exceed the interval and stay
/// under the 30 minutes after which others treat a lock as stale.
pub fn lock_timing() -> Result<cairn_repo::lock::LockTiming> {
    use cairn_repo::lock::{LockTiming, STALE_AFTER};
    let defaults = LockTiming::default();
    let read =
        |name: &str, default: std::time::Duration| match std::env::var(name).ok().filter(|v| !v.is_empty()) {
            Some(value) => crate::cli::parse_duration(&value).map_err(|e| anyhow::anyhow!("{name}: {e}")),
            None => Ok(default),
        };
    let timing = LockTiming {
        refresh_every: read("CAIRN_LOCK_REFRESH_INTERVAL", defaults.refresh_every)?,
        lost_after: read("CAIRN_LOCK_LOST_AFTER", defaults.lost_after)?,
    };
    if timing.refresh_every.is_zero()
        || timing.lost_after <= timing.refresh_every
        || timing.lost_after >= STALE_AFTER
    {
        bail!(
            "CAIRN_LOCK_LOST_AFTER ({:?}) must be longer than CAIRN_LOCK_REFRESH_INTERVAL ({:?}) and shorter than {} minutes",
            timing.lost_after,
            timing.refresh_every,
            STALE_AFTER.as_secs() / 60
        );
    }
    Ok(timing)
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

    pub async fn open(&self) -> Result<Repository> {
        let backend = self.backend().await?;
        let password = self.password()?;
        Ok(Repository::open(backend, &password).await?)
    }
}
