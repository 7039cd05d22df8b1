//! Finding the PostgreSQL client tools and checking they fit the server.
//!
//! `pg_dump` can dump servers of its own major version and older, never
//! newer ones; it would refuse after connecting, with a message that does
//! not say what to install. So the version is checked first, and the error
//! names the package. Search order: `--pg-bin` (or `CAIRN_PG_BIN`), then the
//! Debian/Ubuntu layout `/usr/lib/postgresql/<server major>/bin`, then `PATH`.

use std::path::{Path, PathBuf};

use crate::PgError;

/// The client tools chosen for one server.
#[derive(Debug, Clone)]
pub struct PgTools {
    bin_dir: Option<PathBuf>,
    server_major: u32,
}

impl PgTools {
    /// Tools for a server of `server_version_num` (e.g. 150018).
    pub fn new(bin_dir: Option<PathBuf>, server_version_num: u32) -> PgTools {
        PgTools { bin_dir, server_major: server_version_num / 10000 }
    }

    /// The path of `tool`, checked to exist and (for tools that read from
    /// the server) to be at least the server's major version.
    pub async fn find(&self, tool: &str, must_fit_server: bool) -> Result<PathBuf, PgError> {
        let path = self.locate(tool)?;
        if must_fit_server {
            self.check_fits(tool, &path).await?;
        }
        Ok(path)
    }

    /// [`find`](Self::find) for a tool that must fit the server, with its
    /// `--version` banner (recorded in manifests).
    pub async fn find_with_version(&self, tool: &str) -> Result<(PathBuf, String), PgError> {
        let path = self.locate(tool)?;
        let banner = self.check_fits(tool, &path).await?;
        Ok((path, banner))
    }

    async fn check_fits(&self, tool: &str, path: &Path) -> Result<String, PgError> {
        let (major, banner) = tool_version(path, tool).await?;
        if major < self.server_major {
            return Err(PgError::ToolTooOld {
                tool: tool.into(),
                path: path.to_path_buf(),
                tool_major: major,
                server_major: self.server_major,
            });
        }
        Ok(banner)
    }

    fn locate(&self, tool: &str) -> Result<PathBuf, PgError> {
        if let Some(dir) = &self.bin_dir {
            let p = dir.join(tool);
            return if is_executable(&p) {
                Ok(p)
            } else {
                Err(PgError::ToolMissing {
                    tool: tool.into(),
                    major: self.server_major,
                    searched: format!(" in {}", dir.display()),
                })
            };
        }
        let debian = PathBuf::from(format!("/usr/lib/postgresql/{}/bin/{tool}", self.server_major));
        if is_executable(&debian) {
            return Ok(debian);
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            let p = dir.join(tool);
            if is_executable(&p) {
                return Ok(p);
            }
        }
        Err(PgError::ToolMissing { tool: tool.into(), major: self.server_major, searched: " in PATH".into() })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Runs `tool --version`: the major version and the banner
/// ("pg_dump (PostgreSQL) 15.18 (Debian …)").
async fn tool_version(path: &Path, tool: &str) -> Result<(u32, String), PgError> {
    let out = tokio::process::Command::new(path)
        .arg("--version")
        .output()
        .await
        .map_err(PgError::io(format!("running {} --version", path.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let major = parse_major(&text).ok_or_else(|| PgError::ToolFailed {
        tool: tool.into(),
        status: out.status.to_string(),
        stderr: format!("cannot read a version from {:?}", text.trim()),
    })?;
    Ok((major, text.trim().to_string()))
}

fn parse_major(version_output: &str) -> Option<u32> {
    let after = version_output.split(')').nth(1)?.trim_start();
    let number: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
    number.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_tool_banners() {
        assert_eq!(parse_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"), Some(15));
        assert_eq!(parse_major("pg_restore (PostgreSQL) 9.6.24\n"), Some(9));
        assert_eq!(parse_major("pg_dump (PostgreSQL) 17devel"), Some(17));
        assert_eq!(parse_major("something else"), None);
    }
}
