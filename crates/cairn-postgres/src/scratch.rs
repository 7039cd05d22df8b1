//! Scratch targets for restore drills: a throwaway PostgreSQL cluster.
//!
//! `initdb` into `cairn-scratch-<prefix>-postgres-<pid>-<n>/data`
//! ([`cairn_source::scratch`]) in the system's temporary directory (trust
//! authentication, listening on 127.0.0.1 only, its socket inside that
//! directory, `fsync = off`: it lives for one drill), then `pg_ctl start`
//! on a free port. The target is the database `restored` of that cluster,
//! which the logical restore creates. The server binaries are those of
//! the snapshot's major version (`/usr/lib/postgresql/<major>/bin`), else
//! the newest installed there, else `PATH`; run as root, the cluster
//! belongs to the `postgres` OS user, as PostgreSQL refuses to run as root.
//!
//! Teardown does not need the binaries, so it works on leftovers whatever
//! was installed since: the postmaster of `postmaster.pid` is sent SIGQUIT
//! (immediate shutdown) only if `/proc` shows it working in that data
//! directory, and the directory is removed once it is gone.
//!
//! The probe `sql` runs one query on the restored database and returns the
//! first column of its first row as text (`null` for NULL, empty without a
//! row).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cairn_repo::Snapshot;
use cairn_source::{Scratch, ScratchTarget, scratch};

use crate::PgTarget;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const KIND: &str = "postgres";
/// The database of the scratch cluster a drill restores into.
pub const SCRATCH_DATABASE: &str = "restored";

/// Throwaway clusters for PostgreSQL drills.
#[derive(Debug, Clone, Default)]
pub struct PgScratch {
    /// Directory with initdb and pg_ctl (default: see the module docs).
    pub bin: Option<PathBuf>,
    /// Where the clusters go (default: the system's temporary directory).
    pub root: Option<PathBuf>,
}

impl PgScratch {
    fn root(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(std::env::temp_dir)
    }

    pub fn arc(self) -> Arc<dyn Scratch> {
        Arc::new(self)
    }

    /// The directory holding `tool`: `bin`, else `/usr/lib/postgresql/<major>/bin`,
    /// else the newest version there, else `PATH`.
    fn tool(&self, tool: &str, major: u32) -> Result<PathBuf, BoxError> {
        if let Some(dir) = &self.bin {
            return Ok(dir.join(tool));
        }
        let mut installed: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin").join(tool))))
            .filter(|(_, p): &(u32, PathBuf)| p.is_file())
            .collect();
        installed.sort();
        if let Some((_, p)) = installed.iter().find(|(v, _)| *v == major).or(installed.last()) {
            if installed.last().is_some_and(|(v, _)| *v < major) {
                return Err(format!(
                    "the snapshot is of PostgreSQL {major}, but the newest {tool} installed is older; install postgresql-{major}"
                )
                .into());
            }
            return Ok(p.clone());
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file()).ok_or_else(|| {
            format!("{tool} not found (install postgresql-{major}, or give its bin directory)").into()
        })
    }
}

/// The major version a logical or physical snapshot's server had (0 if not recorded).
fn snapshot_major(snapshot: &Snapshot) -> u32 {
    let meta = snapshot.cairn.as_ref().map(|c| &c.metadata);
    let text = meta
        .and_then(|m| m.get("server_version"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .or_else(|| {
            meta.and_then(|m| m.get("server_version_num"))
                .and_then(|v| v.as_u64())
                .map(|n| (n / 10000).to_string())
        })
        .unwrap_or_default();
    text.chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap_or(0)
}

/// The OS user a cluster runs as: `postgres` when we are root, else ourselves.
fn cluster_user() -> Result<Option<nix::unistd::User>, BoxError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres")? {
        Some(u) => Ok(Some(u)),
        None => Err("PostgreSQL does not run as root and there is no `postgres` OS user to run the scratch cluster as; create one or run the drill as another user".into()),
    }
}

fn command(program: &Path, user: &Option<nix::unistd::User>) -> tokio::process::Command {
    let mut cmd = match user {
        Some(u) => {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", &u.name, "--"]).arg(program);
            c
        }
        None => tokio::process::Command::new(program),
    };
    cmd.stdin(std::process::Stdio::null());
    cmd
}

async fn run(mut cmd: tokio::process::Command, what: &str) -> Result<(), BoxError> {
    let out = cmd.output().await.map_err(|e| format!("running {what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    Err(format!("{what} failed ({}): {}", out.status, last[last.len().saturating_sub(3)..].join(" | "))
        .into())
}

fn free_port() -> Result<u16, BoxError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// The postmaster of `data_dir`, if one runs there.
fn postmaster(data_dir: &Path) -> Option<nix::unistd::Pid> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let ours = std::fs::canonicalize(data_dir).ok()? == cwd;
    (ours && running(pid)).then_some(nix::unistd::Pid::from_raw(pid))
}

/// Whether `pid` is a live process (a zombie, left for a parent that never
/// reaps it, is not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}

/// Stops the cluster in `dir/data` (if it runs) and removes `dir`.
async fn remove(dir: &Path) -> Result<(), BoxError> {
    let data = dir.join("data");
    if let Some(pid) = postmaster(&data) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while postmaster(&data).is_some() {
            if Instant::now() > deadline {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || scratch::remove_dir(&dir)).await?
}

#[async_trait]
impl Scratch for PgScratch {
    async fn provision(&self, prefix: &str, snapshot: &Snapshot) -> Result<ScratchTarget, BoxError> {
        let major = snapshot_major(snapshot);
        let initdb = self.tool("initdb", major)?;
        let pg_ctl = self.tool("pg_ctl", major)?;
        let user = cluster_user()?;
        let dir = scratch::new_dir(&self.root(), prefix, KIND)?;
        let result = async {
            if let Some(u) = &user {
                std::os::unix::fs::chown(&dir, Some(u.uid.as_raw()), Some(u.gid.as_raw()))?;
            }
            let data = dir.join("data");
            let mut init = command(&initdb, &user);
            init.arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]);
            run(init, "initdb").await?;
            let port = free_port()?;
            let conf = format!(
                "\n# cairn drill scratch cluster\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
                 unix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
                dir.display()
            );
            let mut f = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf"))?;
            std::io::Write::write_all(&mut f, conf.as_bytes())?;
            let mut start = command(&pg_ctl, &user);
            start.arg("-D").arg(&data).arg("-l").arg(dir.join("postgres.log")).args(["-w", "-t", "120", "start"]);
            if let Err(e) = run(start, "pg_ctl start").await {
                let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                return Err(format!("{e}; server log: {}", tail.join(" | ")).into());
            }
            Ok::<_, BoxError>(ScratchTarget {
                target: format!("postgresql://postgres@127.0.0.1:{port}/{SCRATCH_DATABASE}"),
                handle: serde_json::json!({ "dir": dir, "port": port }),
            })
        }
        .await;
        if result.is_err() {
            let _ = remove(&dir).await;
        }
        result
    }

    async fn teardown(&self, target: &ScratchTarget) -> Result<(), BoxError> {
        remove(&scratch::handle_dir(target)?).await
    }

    async fn sweep(&self, prefix: &str) -> Result<usize, BoxError> {
        let leftovers = scratch::leftovers(&self.root(), prefix, KIND)?;
        for dir in &leftovers {
            remove(dir).await?;
        }
        Ok(leftovers.len())
    }

    fn probes(&self) -> &'static [&'static str] {
        &["sql"]
    }

    async fn probe(&self, target: &ScratchTarget, probe: &str, argument: &str) -> Result<String, BoxError> {
        if probe != "sql" {
            return Err(format!("PostgreSQL targets have no probe {probe:?}").into());
        }
        let client = PgTarget::parse(&target.target)?.connect().await?;
        for message in client.simple_query(argument).await? {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                return Ok(row.get(0).unwrap_or("null").to_string());
            }
        }
        Ok(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: &str) -> Snapshot {
        serde_json::from_value(serde_json::json!({
            "time": "2026-01-01T00:00:00Z", "tree": "00".repeat(32), "paths": [], "hostname": "h",
            "username": "u",
            "cairn": { "source_kind": "postgres", "metadata": { "server_version": version } }
        }))
        .unwrap()
    }

    #[test]
    fn the_snapshots_major_version_is_read() {
        assert_eq!(snapshot_major(&snapshot("15.18 (Debian 15.18-0+deb12u1)")), 15);
        assert_eq!(snapshot_major(&snapshot("")), 0);
    }

    /// A real cluster: provisioned, answering a query, torn down; a killed
    /// drill's leftover is swept by its prefix, and others are left alone.
    #[tokio::test]
    async fn scratch_clusters_start_answer_and_are_removed() {
        let root = tempfile::tempdir().unwrap();
        // The postgres OS user (when we are root) must reach its directory.
        std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let scratch = PgScratch { bin: None, root: Some(root.path().to_path_buf()) };
        let snap = snapshot("15.18");
        let target = scratch.provision("drill-db", &snap).await.unwrap();
        let admin =
            ScratchTarget { target: target.target.replace(SCRATCH_DATABASE, "postgres"), ..target.clone() };
        assert_eq!(scratch.probe(&admin, "sql", "SELECT 40 + 2").await.unwrap(), "42");
        assert_eq!(scratch.probe(&admin, "sql", "SELECT NULL").await.unwrap(), "null");
        assert_eq!(scratch.probe(&admin, "sql", "SELECT 1 WHERE false").await.unwrap(), "");
        let dir = scratch::handle_dir(&target).unwrap();
        let pid = postmaster(&dir.join("data")).expect("a postmaster runs");
        scratch.teardown(&target).await.unwrap();
        assert!(!dir.exists());
        assert!(!running(pid.as_raw()), "the scratch postmaster still runs");

        let leftover = scratch.provision("drill-db", &snap).await.unwrap();
        let other = scratch.provision("drill-other", &snap).await.unwrap();
        assert_eq!(scratch.sweep("drill-db").await.unwrap(), 1);
        assert!(!scratch::handle_dir(&leftover).unwrap().exists());
        let other_dir = scratch::handle_dir(&other).unwrap();
        assert!(postmaster(&other_dir.join("data")).is_some(), "another drill's cluster was swept");
        scratch.teardown(&other).await.unwrap();
    }
}
