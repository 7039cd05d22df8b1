//! Starting `redis-server` on a data directory: for `restore --start` and
//! for scratch targets. The server runs on 127.0.0.1 only, daemonised,
//! with its pid file and log in the data directory; cairn waits until it
//! has loaded its RDB and answers, and makes sure the server answering is
//! the one it started (another one on the same port would otherwise pass
//! for it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::resp::{Conn, info_field};
use crate::{RedisError, RedisTarget};

/// The pid file and log of a started server, in its data directory.
pub const PID_FILE: &str = "redis-server.pid";
pub const LOG_FILE: &str = "redis-server.log";

/// How long loading an RDB may take before cairn gives up.
const START_TIMEOUT: Duration = Duration::from_secs(3600);

/// `redis-server`: `explicit`, else the first in `PATH`.
pub fn find_server(explicit: Option<&Path>) -> Result<PathBuf, RedisError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(RedisError::ServerMissing { searched: format!(" at {}", path.display()) })
        };
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| RedisError::ServerMissing { searched: " in PATH".into() })
}

/// A port nothing on 127.0.0.1 listens on now.
pub fn free_port() -> Result<u16, RedisError> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(RedisError::io("picking a free port"))?;
    Ok(l.local_addr().map_err(RedisError::io("picking a free port"))?.port())
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Whether `pid` runs `redis-server` with `dir` as its data directory.
pub fn is_our_server(pid: u32, dir: &Path) -> bool {
    // The server rewrites its title ("/usr/bin/redis-server 127.0.0.1:6379"),
    // and works in its data directory.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    alive(pid)
        && cmdline.windows(12).any(|w| w == b"redis-server")
        && std::fs::read_link(format!("/proc/{pid}/cwd"))
            .is_ok_and(|cwd| std::fs::canonicalize(dir).is_ok_and(|dir| cwd == dir))
}

/// The last `n` lines of a server's log, for an error message.
pub fn log_tail(dir: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// A server cairn started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub pid: u32,
    pub port: u16,
    pub dir: PathBuf,
}

impl Started {
    pub fn target(&self) -> RedisTarget {
        RedisTarget::parse(&format!("redis://127.0.0.1:{}", self.port)).expect("a loopback URL parses")
    }
}

/// Starts `bin` on `dir` (which holds the `dump.rdb` to load, or nothing)
/// listening on 127.0.0.1:`port`, and waits until it has loaded its data.
/// Without `persist` the server never saves (a scratch server: its data
/// is thrown away, and a save into a removed directory would keep it from
/// shutting down).
pub async fn start(
    bin: &Path,
    dir: &Path,
    port: u16,
    persist: bool,
    cancel: &cairn_source::Cancel,
) -> Result<Started, RedisError> {
    let failed = |message: String| RedisError::Start { port, message };
    if !port_free(port) {
        return Err(failed(format!("port {port} on 127.0.0.1 is in use; choose another with --port")));
    }
    let dir = std::path::absolute(dir).map_err(RedisError::io(format!("resolving {}", dir.display())))?;
    let _ = std::fs::remove_file(dir.join(PID_FILE));
    let mut command = tokio::process::Command::new(bin);
    if !persist {
        command.args(["--save", ""]);
    }
    let out = command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--daemonize", "yes"])
        .arg("--dir")
        .arg(&dir)
        .args(["--dbfilename", crate::manifest::RDB_FILE, "--appendonly", "no"])
        .arg("--pidfile")
        .arg(dir.join(PID_FILE))
        .arg("--logfile")
        .arg(dir.join(LOG_FILE))
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(RedisError::io(format!("running {}", bin.display())))?;
    if !out.status.success() {
        return Err(failed(format!(
            "{} exited with {}: {} {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            log_tail(&dir, 5)
        )));
    }
    let deadline = Instant::now() + START_TIMEOUT;
    let mut pid = None;
    loop {
        if cancel.is_cancelled() {
            if let Some(pid) = pid {
                stop(pid, &dir).await;
            }
            return Err(RedisError::Interrupted);
        }
        if pid.is_none() {
            pid = std::fs::read_to_string(dir.join(PID_FILE)).ok().and_then(|p| p.trim().parse::<u32>().ok());
        }
        if let Some(p) = pid {
            if !alive(p) {
                return Err(failed(format!("the server exited: {}", log_tail(&dir, 6))));
            }
            let started = Started { pid: p, port, dir: dir.clone() };
            if let Ok(mut conn) = Conn::open(&started.target()).await
                && let Ok(server) = conn.call(&[b"INFO", b"server"]).await
                && info_field(&server, "process_id").and_then(|v| v.parse::<u32>().ok()) == Some(p)
                && let Ok(persistence) = conn.call(&[b"INFO", b"persistence"]).await
                && info_field(&persistence, "loading").as_deref() == Some("0")
            {
                return Ok(started);
            }
        }
        if Instant::now() > deadline {
            if let Some(pid) = pid {
                stop(pid, &dir).await;
            }
            return Err(failed(format!(
                "not ready after {} s: {}",
                START_TIMEOUT.as_secs(),
                log_tail(&dir, 6)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops a server cairn started (SIGTERM, then SIGKILL after 10 s); a pid
/// that is no longer that server is left alone.
pub async fn stop(pid: u32, dir: &Path) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if !is_our_server(pid, dir) {
        return;
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if alive(pid) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}
