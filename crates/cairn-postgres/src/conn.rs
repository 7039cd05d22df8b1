//! Where a PostgreSQL server is, and how to reach it — both from cairn's own
//! connections (tokio-postgres) and from the client tools it runs
//! (`pg_dump`, `pg_restore`, `psql`), which get the same target as a libpq
//! keyword string with the password passed in their environment, never on
//! their command line.

use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};

use crate::PgError;

/// A PostgreSQL server and, optionally, a database on it.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

impl PgTarget {
    /// Parses `postgresql://user:pw@host:port/db?…` (or `postgres://`, or a
    /// libpq keyword string). Unset parts come from the libpq environment
    /// (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`), as they would for `psql`.
    pub fn parse(url: &str) -> Result<PgTarget, PgError> {
        let mut config: Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| PgError::Url { url: redact(url), message: e.to_string() })?;
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
        if config.get_ssl_mode() == SslMode::Require {
            return Err(PgError::Url {
                url: redact(url),
                message: "sslmode=require is not supported yet (cairn's own connections are plain TCP or Unix sockets); use sslmode=prefer or disable, or a local socket".into(),
            });
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(15));
        }
        if config.get_application_name().is_none() {
            config.application_name("cairn");
        }
        Ok(PgTarget { config })
    }

    /// The same target with this password (from a secret file).
    pub fn with_password(&self, password: &str) -> PgTarget {
        let mut config = self.config.clone();
        config.password(password);
        PgTarget { config }
    }

    /// The database the URL names, if any.
    pub fn database(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// The same server, another database.
    pub fn with_database(&self, db: &str) -> PgTarget {
        let mut config = self.config.clone();
        config.dbname(db);
        PgTarget { config }
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
        let mut config = self.config.clone();
        config.dbname("");
        PgTarget { config }.display()
    }

    /// Opens a connection; its I/O runs on a spawned task.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| PgError::Connect { target: self.display(), message: connect_message(&e) })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection closed with an error");
            }
        });
        Ok(client)
    }

    /// The target as a libpq keyword/value string for the client tools.
    pub fn conninfo(&self) -> String {
        let mut parts = Vec::new();
        if let Some(host) = self.config.get_hosts().first() {
            let h = match host {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p.display().to_string(),
            };
            parts.push(format!("host={}", quote(&h)));
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
        parts.push("application_name=cairn".into());
        parts.join(" ")
    }

    /// Points a client tool at this target: the password in its environment,
    /// nothing from the caller's libpq environment that could send it
    /// elsewhere, and no stdin.
    pub fn prepare_tool(&self, cmd: &mut tokio::process::Command) {
        for var in ["PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE", "PGOPTIONS"] {
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
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The URL with any password replaced, for error messages.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

fn connect_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let hint = match db.code().code() {
            "28P01" | "28000" => "; check the user and password in the URL (or PGPASSWORD)",
            "3D000" => "; check the database name in the URL",
            _ => "",
        };
        return format!("{}{hint}", db.message());
    }
    let text = std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
    format!("{text}; check the host and port, and that the server is running and accepts connections")
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
        let e = PgTarget::parse("postgresql://bob:hunter2@host:notaport/db").unwrap_err().to_string();
        assert!(e.contains("invalid PostgreSQL URL") && !e.contains("hunter2"), "{e}");
        let e = PgTarget::parse("postgresql://h/db?sslmode=require").unwrap_err().to_string();
        assert!(e.contains("sslmode=require"), "{e}");
    }
}
