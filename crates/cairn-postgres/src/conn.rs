//! Where a PostgreSQL server is, and how to reach it — both from cairn's own
//! connections (tokio-postgres) and from the client tools it runs
//! (`pg_dump`, `pg_restore`, `psql`, `pg_basebackup`), which get the same
//! target as a libpq keyword string with the password passed in their
//! environment, never on their command line.
//!
//! TLS follows libpq's `sslmode` (`disable`, `allow`, `prefer` — the default —,
//! `require`, `verify-ca`, `verify-full`) with `sslrootcert`, `sslcert` and
//! `sslkey`, so a URL means the same to cairn as to `psql`. tokio-postgres
//! only understands three of those modes, so the `ssl*` parameters are taken
//! out of the URL before it sees it; cairn's own connections then run over
//! rustls (on the aws-lc-rs provider the S3 client already uses), and the
//! client tools get the same settings in their conninfo.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, NoTls, Socket};

use cairn_store::DisplaySafe;

use crate::PgError;

mod replication;
mod socket;
mod tap;
mod tls;

pub(crate) use replication::{BaseBackupEvent, ReplicationConnection, ReplicationError};
pub use tap::CopyTap;
use tls::RustlsConnect;

/// A PostgreSQL server and, optionally, a database on it.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    tls: TlsSettings,
    /// The rustls configuration, built on the first TLS connection and shared
    /// by every clone (the parallel copy tasks), so CA files are read once.
    tls_config: Arc<OnceLock<Arc<rustls::ClientConfig>>>,
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    const NAMES: [(&'static str, TlsMode); 6] = [
        ("disable", TlsMode::Disable),
        ("allow", TlsMode::Allow),
        ("prefer", TlsMode::Prefer),
        ("require", TlsMode::Require),
        ("verify-ca", TlsMode::VerifyCa),
        ("verify-full", TlsMode::VerifyFull),
    ];

    fn parse(value: &str) -> Option<TlsMode> {
        Self::NAMES.iter().find(|(name, _)| *name == value).map(|(_, mode)| *mode)
    }

    fn as_str(self) -> &'static str {
        Self::NAMES.iter().find(|(_, mode)| *mode == self).map(|(name, _)| *name).unwrap_or("prefer")
    }
}

/// Where the CA certificates that vouch for the server come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RootCert {
    /// A PEM bundle.
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store.
    System,
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verify {
    /// Encryption only (libpq's `prefer`, and `require` without a root certificate).
    Nothing,
    /// The chain up to a trusted CA (`verify-ca`, and `require` with `sslrootcert`).
    Chain,
    /// The chain and the host name (`verify-full`).
    ChainAndName,
}

/// The `ssl*` settings of a target, as libpq would read them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TlsSettings {
    mode: TlsMode,
    root_cert: Option<RootCert>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// The libpq parameters cairn handles itself rather than tokio-postgres.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl TlsSettings {
    /// From the parameters taken out of the URL, then the libpq environment
    /// (`PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`), as `psql` would.
    fn from_params(params: &[(String, String)], url: &str) -> Result<TlsSettings, PgError> {
        let get = |key: &str, env: &str| {
            params
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(env).ok())
                .filter(|v| !v.is_empty())
        };
        let bad = |message: String| PgError::Url { url: DisplaySafe::new(url), message };
        let root_cert = get("sslrootcert", "PGSSLROOTCERT").map(|v| match v.as_str() {
            "system" => Ok(RootCert::System),
            path => absolute(path).map(RootCert::File),
        });
        let root_cert = root_cert.transpose().map_err(|e| bad(format!("sslrootcert: {e}")))?;
        let mode = match get("sslmode", "PGSSLMODE") {
            Some(v) => TlsMode::parse(&v).ok_or_else(|| {
                bad(format!(
                    "unknown sslmode {v:?} (expected disable, allow, prefer, require, verify-ca or verify-full)"
                ))
            })?,
            // libpq (16+) makes the OS trust store imply full verification.
            None if root_cert == Some(RootCert::System) => TlsMode::VerifyFull,
            None => TlsMode::Prefer,
        };
        if root_cert == Some(RootCert::System) && mode != TlsMode::VerifyFull {
            return Err(bad(format!(
                "sslrootcert=system needs sslmode=verify-full (a weak sslmode={} would trust any certificate a public CA issued for any name)",
                mode.as_str()
            )));
        }
        let path = |key: &str, env: &str| {
            get(key, env).map(|v| absolute(&v)).transpose().map_err(|e| bad(format!("{key}: {e}")))
        };
        let cert = path("sslcert", "PGSSLCERT")?;
        let key = path("sslkey", "PGSSLKEY")?;
        if cert.is_some() != key.is_some() {
            return Err(bad("sslcert and sslkey go together: give both (the client certificate and its private key), or neither".into()));
        }
        Ok(TlsSettings { mode, root_cert, cert, key })
    }

    /// What tokio-postgres is told: whether to ask for TLS and whether to
    /// insist on it. The certificate checks are rustls's, below.
    fn tokio_mode(&self) -> SslMode {
        match self.mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Allow | TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        }
    }

    fn verify(&self) -> Verify {
        match self.mode {
            TlsMode::Disable | TlsMode::Allow | TlsMode::Prefer => Verify::Nothing,
            // libpq: with a root certificate, `require` checks the chain as `verify-ca` does.
            TlsMode::Require if self.root_cert.is_some() => Verify::Chain,
            TlsMode::Require => Verify::Nothing,
            TlsMode::VerifyCa => Verify::Chain,
            TlsMode::VerifyFull => Verify::ChainAndName,
        }
    }

    /// The CA bundle in use: the configured one, else libpq's default
    /// `~/.postgresql/root.crt` when it exists.
    fn root_cert(&self) -> Option<RootCert> {
        self.root_cert.clone().or_else(|| {
            let default = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
            default.is_file().then_some(RootCert::File(default))
        })
    }
}

fn absolute(path: &str) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("cannot resolve {path:?}: {e}"))
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

impl PgTarget {
    /// Parses `postgresql://user:pw@host:port/db?…` (or `postgres://`, or a
    /// libpq keyword string). Unset parts come from the libpq environment
    /// (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGSSLMODE`, ...), as they
    /// would for `psql`.
    pub fn parse(url: &str) -> Result<PgTarget, PgError> {
        let bad = |message: String| PgError::Url { url: DisplaySafe::new(url), message };
        if host_holds_at(url) {
            // libpq and tokio-postgres end the userinfo at the first `@`: the
            // password's tail would become the host (and be printed as such).
            return Err(bad(
                "a user name or password holds a raw '@'; write it as %40 (and ':' as %3A, '/' as %2F)"
                    .into(),
            ));
        }
        let (rest, tls_params) = split_tls_params(url);
        let tls = TlsSettings::from_params(&tls_params, url)?;
        let mut config: Config = rest.parse().map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
        config.ssl_mode(tls.tokio_mode());
        if config.get_hosts().is_empty() {
            match std::env::var("PGHOST") {
                Ok(h) if h.starts_with('/') => config.host_path(h),
                Ok(h) if !h.is_empty() => config.host(&h),
                _ => config.host_path("/var/run/postgresql"),
            };
        }
        if config.get_ports().is_empty()
            && let Some(port) = std::env::var("PGPORT").ok().and_then(|p| p.parse().ok())
        {
            config.port(port);
        }
        if config.get_user().is_none() {
            let user = std::env::var("PGUSER")
                .ok()
                .filter(|u| !u.is_empty())
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "postgres".into());
            config.user(&user);
        }
        if config.get_password().is_none()
            && let Ok(pw) = std::env::var("PGPASSWORD")
        {
            config.password(pw);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(15));
        }
        if config.get_application_name().is_none() {
            config.application_name("cairn");
        }
        Ok(PgTarget { config, tls, tls_config: Arc::default() })
    }

    /// The same target with this password (from a secret file).
    pub fn with_password(&self, password: &str) -> PgTarget {
        let mut target = self.clone();
        target.config.password(password);
        target
    }

    /// The database the URL names, if any.
    pub fn database(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// The same server, another database.
    pub fn with_database(&self, db: &str) -> PgTarget {
        let mut target = self.clone();
        target.config.dbname(db);
        target
    }

    /// `host:port/db` for messages and snapshot paths — never the password.
    pub fn display(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        match self.database().filter(|db| !db.is_empty()) {
            Some(db) => format!("postgresql://{host}:{port}/{db}"),
            None => format!("postgresql://{host}:{port}"),
        }
    }

    /// `postgresql://host:port`, without any database.
    pub fn server(&self) -> String {
        self.with_database("").display()
    }

    /// Opens a connection; its I/O runs on a spawned task.
    pub async fn connect(&self) -> Result<Client, PgError> {
        match self.tls_connector()? {
            Some(tls) => self.spawn(&self.config, tls).await,
            None => {
                let mut config = self.config.clone();
                config.ssl_mode(SslMode::Disable);
                self.spawn(&config, NoTls).await
            }
        }
    }

    /// Opens a connection whose `COPY … TO STDOUT` rows can bypass
    /// tokio-postgres (see [`CopyTap`]), for the dump's copy connections.
    /// Same settings as [`connect`](Self::connect).
    pub async fn connect_tapped(&self) -> Result<(Client, CopyTap), PgError> {
        let tls = self.tls_connector()?;
        tap::connect(&self.config, self.tls.tokio_mode(), tls)
            .await
            .map_err(|message| self.connect_error(message))
    }

    /// Opens a physical replication connection (for `BASE_BACKUP`), with
    /// the same host, TLS and authentication settings as [`connect`](Self::connect).
    pub(crate) async fn connect_replication(&self) -> Result<ReplicationConnection, PgError> {
        let tls = self.tls_connector()?;
        replication::connect(&self.config, self.tls.tokio_mode(), tls)
            .await
            .map_err(|e| self.connect_error(replication_message(&e)))
    }

    /// The TLS hook for this target's TCP connections, or none when TLS is
    /// off: `sslmode=disable`, or, as in libpq, only Unix sockets to reach
    /// (the server would refuse TLS there, and the socket never leaves the
    /// machine). A `hostaddr` is TCP even without a host name.
    fn tls_connector(&self) -> Result<Option<RustlsConnect>, PgError> {
        let all_unix = self.config.get_hosts().iter().all(|h| matches!(h, Host::Unix(_)))
            && self.config.get_hostaddrs().is_empty();
        if self.tls.mode == TlsMode::Disable || all_unix {
            return Ok(None);
        }
        let config = self.tls_config().map_err(|message| self.connect_error(message))?;
        Ok(Some(RustlsConnect(config)))
    }

    async fn spawn<T>(&self, config: &Config, tls: T) -> Result<Client, PgError>
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) =
            config.connect(tls).await.map_err(|e| self.connect_error(self.connect_message(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection closed with an error");
            }
        });
        Ok(client)
    }

    fn connect_error(&self, message: String) -> PgError {
        PgError::Connect { target: self.display(), message }
    }

    /// The rustls configuration for this target's settings (built once).
    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        if let Some(config) = self.tls_config.get() {
            return Ok(config.clone());
        }
        let config = Arc::new(tls::client_config(&self.tls)?);
        Ok(self.tls_config.get_or_init(|| config).clone())
    }

    /// The target as a libpq keyword/value string for the client tools,
    /// with the same TLS settings as cairn's own connections.
    pub fn conninfo(&self) -> String {
        let mut parts = Vec::new();
        if let Some(host) = self.config.get_hosts().first() {
            let h = match host {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p.display().to_string(),
            };
            parts.push(format!("host={}", quote(&h)));
        }
        if let Some(addr) = self.config.get_hostaddrs().first() {
            parts.push(format!("hostaddr={addr}"));
        }
        if let Some(port) = self.config.get_ports().first() {
            parts.push(format!("port={port}"));
        }
        if let Some(user) = self.config.get_user() {
            parts.push(format!("user={}", quote(user)));
        }
        if let Some(db) = self.database() {
            parts.push(format!("dbname={}", quote(db)));
        }
        if let Some(options) = self.config.get_options() {
            parts.push(format!("options={}", quote(options)));
        }
        parts.push(format!("sslmode={}", self.tls.mode.as_str()));
        match &self.tls.root_cert {
            Some(RootCert::File(path)) => parts.push(format!("sslrootcert={}", quote_path(path))),
            Some(RootCert::System) => parts.push("sslrootcert=system".into()),
            None => {}
        }
        if let Some(cert) = &self.tls.cert {
            parts.push(format!("sslcert={}", quote_path(cert)));
        }
        if let Some(key) = &self.tls.key {
            parts.push(format!("sslkey={}", quote_path(key)));
        }
        match self.config.get_channel_binding() {
            tokio_postgres::config::ChannelBinding::Require => parts.push("channel_binding=require".into()),
            tokio_postgres::config::ChannelBinding::Disable => parts.push("channel_binding=disable".into()),
            _ => {}
        }
        parts.push("application_name=cairn".into());
        parts.join(" ")
    }

    /// Points a client tool at this target: the password in its environment,
    /// nothing from the caller's libpq environment that could send it
    /// elsewhere (or connect it differently from cairn), and no stdin.
    pub fn prepare_tool(&self, cmd: &mut tokio::process::Command) {
        for var in [
            "PGHOST",
            "PGPORT",
            "PGDATABASE",
            "PGUSER",
            "PGSERVICE",
            "PGOPTIONS",
            "PGSSLMODE",
            "PGSSLROOTCERT",
            "PGSSLCERT",
            "PGSSLKEY",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(self.tool_env()).stdin(std::process::Stdio::null());
    }

    /// Environment for the client tools: the password and a connect timeout.
    fn tool_env(&self) -> Vec<(String, String)> {
        let mut env = vec![("PGCONNECT_TIMEOUT".to_string(), "15".to_string())];
        if let Some(pw) = self.config.get_password() {
            env.push(("PGPASSWORD".into(), String::from_utf8_lossy(pw).into_owned()));
        }
        env
    }

    /// One line saying why a connection failed and what to do about it.
    fn connect_message(&self, e: &tokio_postgres::Error) -> String {
        if let Some(db) = e.as_db_error() {
            let hint = match db.code().code() {
                // pg_hba.conf has only `hostssl` lines for us.
                "28000" if db.message().contains("no encryption") => {
                    "; the server accepts only TLS connections here: use sslmode=require (or verify-ca / verify-full)".into()
                }
                // `cert` authentication, or `clientcert=verify-full` on another method.
                "28000" if db.message().contains("requires a valid client certificate") => match &self.tls.cert {
                    None => "; give the client certificate and its key with sslcert and sslkey (or PGSSLCERT and PGSSLKEY)".into(),
                    Some(cert) => format!(
                        "; the server did not take the certificate in sslcert={}: use one signed by a CA in the server's ssl_ca_file",
                        cert.display()
                    ),
                },
                "28000" if db.message().contains("certificate authentication failed") => {
                    "; the client certificate's common name (CN) must be the user name in the URL, unless pg_ident.conf maps it".into()
                }
                "28P01" | "28000" => "; check the user and password in the URL (or PGPASSWORD)".into(),
                "3D000" => "; check the database name in the URL".into(),
                _ => String::new(),
            };
            return format!("{}{hint}", db.message());
        }
        if let Some(message) = self.tls_message(e) {
            return message;
        }
        let text = std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
        if text.contains("channel binding") {
            return CHANNEL_BINDING_REFUSED.into();
        }
        format!("{text}; check the host and port, and that the server is running and accepts connections")
    }

    /// TLS failures, said in terms of the sslmode / sslrootcert to change.
    fn tls_message(&self, e: &tokio_postgres::Error) -> Option<String> {
        let mode = self.tls.mode.as_str();
        let roots = match self.tls.root_cert() {
            Some(RootCert::File(path)) => format!("the CA certificates in {}", path.display()),
            Some(RootCert::System) => "the system's trusted CAs".into(),
            None => "the trusted CAs".into(),
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(err) = source {
            let inner = err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|i| i as &dyn std::error::Error);
            if let Some(tls) =
                err.downcast_ref::<rustls::Error>().or_else(|| inner?.downcast_ref::<rustls::Error>())
            {
                use rustls::AlertDescription as A;
                use rustls::CertificateError as C;
                return Some(match tls {
                    rustls::Error::InvalidCertificate(
                        C::NotValidForName | C::NotValidForNameContext { .. },
                    ) => format!(
                        "the server's TLS certificate is not valid for the host name in the URL ({tls}); connect with a name the certificate lists, or use sslmode=verify-ca to check only who signed it"
                    ),
                    rustls::Error::InvalidCertificate(
                        C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension | C::Other(_),
                    ) => format!(
                        "the server's TLS certificate does not verify against {roots} ({tls}); point sslrootcert at the CA that issued the server's certificate (sslmode={mode})"
                    ),
                    rustls::Error::InvalidCertificate(_) => format!(
                        "the server's TLS certificate was rejected ({tls}); renew the server's certificate, or check the clock of this machine (sslmode={mode})"
                    ),
                    // The server's complaints about the certificate we sent (or did not).
                    rustls::Error::AlertReceived(
                        alert @ (A::UnknownCA
                        | A::BadCertificate
                        | A::UnsupportedCertificate
                        | A::CertificateRevoked
                        | A::CertificateExpired
                        | A::CertificateUnknown
                        | A::CertificateRequired),
                    ) => match &self.tls.cert {
                        Some(cert) => format!(
                            "the server rejected the client certificate in sslcert={} ({tls}); {}",
                            cert.display(),
                            match alert {
                                A::CertificateExpired => "renew it",
                                A::CertificateRevoked => "issue a new one",
                                _ => "use a certificate signed by a CA in the server's ssl_ca_file",
                            }
                        ),
                        None => format!(
                            "the server requires a client certificate ({tls}); give it and its key with sslcert and sslkey (or PGSSLCERT and PGSSLKEY)"
                        ),
                    },
                    _ => format!("TLS handshake with the server failed: {tls} (sslmode={mode})"),
                });
            }
            if err.to_string().contains("server does not support TLS") {
                return Some(format!(
                    "the server does not accept TLS connections, but sslmode={mode} requires TLS; turn on ssl in the server's postgresql.conf, or use sslmode=prefer (TLS when offered) or sslmode=disable"
                ));
            }
            source = err.source();
        }
        None
    }
}

/// Why a login under `channel_binding=require` was refused, and what to change.
const CHANNEL_BINDING_REFUSED: &str = "the server did not use channel binding, which channel_binding=require demands: it needs TLS and SCRAM-SHA-256 for this user (pg_hba.conf method scram-sha-256, a SCRAM password), or drop channel_binding=require";

/// One line saying why a replication connection or base backup failed, with
/// the setting to change where the server's error names one.
pub fn replication_message(e: &ReplicationError) -> String {
    let ReplicationError::Server { code, message } = e else {
        if let ReplicationError::ChannelBindingRefused = e {
            return CHANNEL_BINDING_REFUSED.into();
        }
        return e.to_string();
    };
    let hint = match code.as_str() {
        "28000" if message.contains("pg_hba.conf") => {
            "; allow it with a `host replication USER ADDRESS METHOD` line in pg_hba.conf (a line for `all` databases does not cover replication) and reload the server"
        }
        "42501" => "; give the user the REPLICATION attribute (ALTER ROLE … REPLICATION) or use a superuser",
        "53300" => "; raise max_wal_senders on the server (each base backup takes one WAL sender)",
        "28P01" | "28000" => "; check the user and password in the URL (or PGPASSWORD)",
        _ => "",
    };
    format!("{message}{hint}")
}

/// Takes libpq's `ssl*` parameters out of a URL (`?sslmode=…&…`) or keyword
/// string (`sslmode=… `), returning the rest for tokio-postgres and the
/// parameters (decoded).
fn split_tls_params(url: &str) -> (String, Vec<(String, String)>) {
    let mut taken = Vec::new();
    if url.starts_with("postgresql://") || url.starts_with("postgres://") {
        let Some((base, query)) = url.split_once('?') else { return (url.to_string(), taken) };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key);
            if TLS_KEYS.contains(&key.as_str()) {
                taken.push((key, percent_decode(value)));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        return (rest, taken);
    }
    let Some(pairs) = keyword_pairs(url) else { return (url.to_string(), taken) };
    let mut kept = Vec::new();
    for (key, value) in pairs {
        if TLS_KEYS.contains(&key.as_str()) {
            taken.push((key, value));
        } else {
            kept.push(format!("{key}={}", quote(&value)));
        }
    }
    (kept.join(" "), taken)
}

/// `key=value` pairs of a libpq keyword string (values bare or single-quoted,
/// backslash escapes in both). `None` if it does not parse; tokio-postgres
/// then reports the error on the original text.
fn keyword_pairs(text: &str) -> Option<Vec<(String, String)>> {
    let mut chars = text.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Some(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        chars.next_if_eq(&'=')?;
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next()? {
                    '\'' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next()?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn quote_path(path: &Path) -> String {
    quote(&path.to_string_lossy())
}

/// Whether a `postgresql://` URL's host, as libpq reads it (after the first
/// `@`), still holds an `@`, which no host can.
fn host_holds_at(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("postgresql://").or_else(|| url.strip_prefix("postgres://")) else {
        return false;
    };
    let Some((_, host)) = rest.split_once('@') else { return false };
    host.split(['/', '?']).next().is_some_and(|h| h.contains('@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_conninfo_without_the_password() {
        let t = PgTarget::parse("postgresql://alice:s3cr'et@db.example:6543/app").unwrap();
        assert_eq!(t.database(), Some("app"));
        assert_eq!(t.display(), "postgresql://db.example:6543/app");
        let info = t.conninfo();
        assert!(info.contains("host='db.example'") && info.contains("port=6543"), "{info}");
        assert!(info.contains("user='alice'") && info.contains("dbname='app'"), "{info}");
        assert!(!info.contains("s3cr"), "password leaked into {info}");
        assert!(t.tool_env().contains(&("PGPASSWORD".into(), "s3cr'et".into())));
        let other = t.with_database("o'ther");
        assert!(other.conninfo().contains(r"dbname='o\'ther'"), "{}", other.conninfo());
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_passwords() {
        for url in [
            "postgresql://bob:hunter2@host:notaport/db",
            "host=h password=hunter2 port=notaport",
            "host=h password='hunter2 x' port=notaport",
            "postgresql://bob@host/db?password=hunter2&port=notaport",
            "postgresql://bob@host/db?port=notaport&password=hunter2",
            "host=h sslpassword=hunter2 port=5432",
            "postgresql://bob:pass@hunter2@host/db",
            "postgresql://bob:pass@hunter2@host:notaport/db",
        ] {
            let e = PgTarget::parse(url).unwrap_err().to_string();
            assert!(e.contains("invalid PostgreSQL URL") && !e.contains("hunter2"), "{url}: {e}");
        }
        let e = PgTarget::parse("postgresql://bob:p@ss@db.example/app").unwrap_err().to_string();
        assert!(e.contains("raw '@'") && e.contains("%40") && e.contains("@db.example/app"), "{e}");
        // A percent-encoded '@' is fine, and so is one in the database name.
        let t = PgTarget::parse("postgresql://bob:p%40ss@db.example/app").unwrap();
        assert_eq!(t.display(), "postgresql://db.example:5432/app");
        assert!(PgTarget::parse("postgresql://bob@db.example/a@b").is_ok());
    }

    #[test]
    fn debug_output_never_holds_the_password() {
        let t = PgTarget::parse("postgresql://alice:hunter2@db.example/app?sslmode=disable").unwrap();
        let t = t.with_password("other-secret");
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("other-secret") && shown.contains("db.example"),
            "{shown}"
        );
    }

    #[test]
    fn ssl_parameters_are_taken_from_urls() {
        let t = PgTarget::parse(
            "postgresql://bob:pw@db.example:5433/app?application_name=x&sslmode=verify-full&sslrootcert=/etc/ca%20bundle.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(t.tls.mode, TlsMode::VerifyFull);
        assert_eq!(t.tls.root_cert, Some(RootCert::File("/etc/ca bundle.pem".into())));
        assert_eq!(t.tls.verify(), Verify::ChainAndName);
        assert_eq!(t.config.get_ssl_mode(), SslMode::Require);
        // The other parameters still reach tokio-postgres.
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(t.config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        let info = t.conninfo();
        assert!(
            info.contains("sslmode=verify-full") && info.contains("sslrootcert='/etc/ca bundle.pem'"),
            "{info}"
        );

        let t = PgTarget::parse("postgres://h/db?sslmode=require").unwrap();
        assert_eq!((t.tls.mode, t.tls.verify()), (TlsMode::Require, Verify::Nothing));
        assert_eq!(t.config.get_ssl_mode(), SslMode::Require);
        // libpq: `require` with a root certificate checks the chain.
        let t = PgTarget::parse("postgres://h/db?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(t.tls.verify(), Verify::Chain);
        let t = PgTarget::parse("postgres://h/db?sslmode=allow").unwrap();
        assert_eq!((t.config.get_ssl_mode(), t.tls.verify()), (SslMode::Prefer, Verify::Nothing));
        let t = PgTarget::parse("postgres://h/db?sslmode=disable").unwrap();
        assert_eq!(t.config.get_ssl_mode(), SslMode::Disable);
        assert!(t.conninfo().contains("sslmode=disable"), "{}", t.conninfo());
    }

    #[test]
    fn ssl_parameters_are_taken_from_keyword_strings() {
        let t = PgTarget::parse(
            r"host=db.example port=5433 dbname='my db' sslmode = verify-ca sslrootcert='/etc/it\'s/ca.pem' sslcert=/c.pem sslkey=/c.key",
        )
        .unwrap();
        assert_eq!(t.database(), Some("my db"));
        assert_eq!(t.tls.mode, TlsMode::VerifyCa);
        assert_eq!(t.tls.root_cert, Some(RootCert::File("/etc/it's/ca.pem".into())));
        assert_eq!(t.tls.cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(t.tls.key.as_deref(), Some(Path::new("/c.key")));
        assert_eq!(t.config.get_ssl_mode(), SslMode::Require);
        let info = t.conninfo();
        for part in [
            "sslmode=verify-ca",
            r"sslrootcert='/etc/it\'s/ca.pem'",
            "sslcert='/c.pem'",
            "sslkey='/c.key'",
            "dbname='my db'",
        ] {
            assert!(info.contains(part), "{part} missing from {info}");
        }
        // The OS trust store implies verify-full, as in libpq.
        let t = PgTarget::parse("host=h sslrootcert=system").unwrap();
        assert_eq!(t.tls.mode, TlsMode::VerifyFull);
        assert!(t.conninfo().contains("sslrootcert=system"), "{}", t.conninfo());
        // Relative paths are made absolute, so the tools find them from anywhere.
        let t = PgTarget::parse("host=h sslmode=verify-ca sslrootcert=ca.pem").unwrap();
        assert!(matches!(&t.tls.root_cert, Some(RootCert::File(p)) if p.is_absolute()));
    }

    #[test]
    fn bad_ssl_settings_are_refused_clearly() {
        let e = PgTarget::parse("postgresql://bob:hunter2@h/db?sslmode=verify_full").unwrap_err().to_string();
        assert!(e.contains("unknown sslmode \"verify_full\"") && e.contains("verify-full"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = PgTarget::parse("host=h sslmode=on").unwrap_err().to_string();
        assert!(e.contains("unknown sslmode \"on\""), "{e}");
        let e =
            PgTarget::parse("postgres://h/db?sslmode=require&sslrootcert=system").unwrap_err().to_string();
        assert!(e.contains("sslrootcert=system needs sslmode=verify-full"), "{e}");
        let e = PgTarget::parse("postgres://h/db?sslcert=/c.pem").unwrap_err().to_string();
        assert!(e.contains("sslcert and sslkey go together"), "{e}");
    }

    #[test]
    fn verification_without_a_ca_bundle_says_what_to_add() {
        let t =
            PgTarget::parse("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").unwrap();
        let e = t.tls_config().unwrap_err();
        assert!(e.contains("cannot read sslrootcert /nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let t =
            PgTarget::parse(&format!("host=h sslmode=verify-ca sslrootcert={}", empty.display())).unwrap();
        let e = t.tls_config().unwrap_err();
        assert!(e.contains("holds no usable CA certificate"), "{e}");
        // Encryption without verification needs nothing.
        let t = PgTarget::parse("host=h sslmode=require").unwrap();
        assert!(t.tls_config().is_ok());
    }

    #[test]
    fn keyword_strings_split_like_libpq() {
        let (rest, taken) = split_tls_params(r"host=a  sslmode=require user='x y' password='p\'w'");
        assert_eq!(taken, vec![("sslmode".to_string(), "require".to_string())]);
        assert_eq!(rest, r"host='a' user='x y' password='p\'w'");
        let (rest, taken) = split_tls_params("postgresql://u@h/db?sslmode=prefer");
        assert_eq!((rest.as_str(), taken.len()), ("postgresql://u@h/db", 1));
        assert_eq!(keyword_pairs("host='unterminated"), None);
    }
}
