//! Which Redis server: `redis://[USER[:PASSWORD]@]HOST[:PORT][/DB]`, and the
//! password from a file.
//!
//! A password in the URL works but is discouraged (it shows in process
//! lists and shell history); `--redis-password-file` / `password_file:`
//! wins over it. The URL is shown everywhere as [`DisplaySafe`] shows it, so
//! a password in it is masked; the file's content is never shown.

use std::path::Path;

use cairn_store::DisplaySafe;

use crate::RedisError;

/// Port Redis listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 6379;

/// One Redis server and how to log in to it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    /// The ACL user (`AUTH user password`); `None` for the default user.
    pub user: Option<String>,
    password: Option<String>,
    url: DisplaySafe,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Whether `text` names a Redis server (for routing a target to this source).
pub fn is_redis_url(text: &str) -> bool {
    text.starts_with("redis://") || text.starts_with("rediss://")
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or("a % not followed by two hex digits")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "a % not followed by two hex digits")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding that is not UTF-8".into())
}

impl RedisTarget {
    pub fn parse(url: &str) -> Result<RedisTarget, RedisError> {
        let bad = |message: &str| RedisError::Url { url: DisplaySafe::new(url), message: message.into() };
        if url.starts_with("rediss://") {
            return Err(bad(
                "TLS (rediss://) is not supported yet; reach the server over redis:// (a TLS proxy such as stunnel in front of it works)",
            ));
        }
        let rest = url.strip_prefix("redis://").ok_or_else(|| bad("it does not start with redis://"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !path.is_empty() && path.parse::<u32>().is_err() {
            return Err(bad("the path may only be a database number"));
        }
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (u, p) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let u = percent_decode(u).map_err(|m| bad(&m))?;
                let p = p.map(percent_decode).transpose().map_err(|m| bad(&m))?;
                (Some(u).filter(|u| !u.is_empty()), p)
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) =
                v6.split_once(']').ok_or_else(|| bad("an IPv6 address without its closing ]"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None | Some("") => DEFAULT_PORT,
            Some(p) => p.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?,
        };
        Ok(RedisTarget { host, port, user, password, url: DisplaySafe::new(url) })
    }

    /// The same server with the password read from `file` (it wins over the URL's).
    pub fn with_password_file(mut self, file: Option<&Path>) -> Result<RedisTarget, RedisError> {
        if let Some(file) = file {
            let password = cairn_source::config::read_secret_file(file)
                .map_err(|e| RedisError::Settings(e.to_string()))?;
            self.password = Some(password);
        }
        Ok(self)
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// `host:port`, as logs and snapshots name the server.
    pub fn server(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL as given, credentials masked.
    pub fn display(&self) -> String {
        self.url.to_string()
    }

    /// The user as the server calls it.
    pub fn user_name(&self) -> &str {
        self.user.as_deref().unwrap_or("default")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_show_their_password() {
        let t = RedisTarget::parse("redis://backup:s%40cret@cache.internal:6380/2").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.user.as_deref()), ("cache.internal", 6380, Some("backup")));
        assert_eq!(t.password(), Some("s@cret"));
        assert!(!t.display().contains("cret") && !format!("{t:?}").contains("cret"), "{}", t.display());
        assert_eq!(t.server(), "cache.internal:6380");
        let t = RedisTarget::parse("redis://127.0.0.1").unwrap();
        assert_eq!((t.port, t.user.as_deref(), t.password()), (6379, None, None));
        let t = RedisTarget::parse("redis://[::1]:7000").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.server().as_str()), ("::1", 7000, "[::1]:7000"));
        for bad in ["http://x", "redis://", "redis://h:99999", "redis://h:1/x", "rediss://h"] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad} was accepted");
        }
        let err = RedisTarget::parse("redis://u:topsecret@h:x").unwrap_err().to_string();
        assert!(!err.contains("topsecret"), "{err}");
    }
}
