//! Scratch targets for restore drills: a throwaway `redis-server` on a
//! free loopback port, with its data directory in the system's temporary
//! directory, named `cairn-scratch-<prefix>-redis-<pid>-<n>`
//! ([`cairn_source::scratch`]) so that the leftovers of a killed drill are
//! found by their prefix and removed.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use cairn_repo::Snapshot;
use cairn_source::{Scratch, ScratchTarget};

use crate::server;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Scratch Redis servers, started with `redis-server` from `PATH` (or `bin`).
#[derive(Debug, Clone, Default)]
pub struct RedisScratch {
    pub bin: Option<PathBuf>,
    /// Where the data directories go (default: the system's temporary directory).
    pub root: Option<PathBuf>,
}

impl RedisScratch {
    fn root(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Stops the server of `dir` (if it is still ours) and removes `dir`.
    async fn remove(dir: &std::path::Path) -> Result<(), BoxError> {
        if let Some(pid) =
            std::fs::read_to_string(dir.join(server::PID_FILE)).ok().and_then(|p| p.trim().parse().ok())
        {
            server::stop(pid, dir).await;
        }
        cairn_source::scratch::remove_dir(dir)
    }

    pub fn arc(self) -> Arc<dyn Scratch> {
        Arc::new(self)
    }
}

#[async_trait]
impl Scratch for RedisScratch {
    async fn provision(&self, prefix: &str, _snapshot: &Snapshot) -> Result<ScratchTarget, BoxError> {
        let bin = server::find_server(self.bin.as_deref())?;
        let root = self.root();
        let dir = cairn_source::scratch::new_dir(&root, prefix, "redis")?;
        let port = server::free_port()?;
        match server::start(&bin, &dir, port, false, &cairn_source::Cancel::new()).await {
            Ok(started) => Ok(ScratchTarget {
                target: format!("redis://127.0.0.1:{}", started.port),
                handle: serde_json::json!({ "dir": dir, "pid": started.pid, "port": started.port }),
            }),
            Err(e) => {
                let _ = Self::remove(&dir).await;
                Err(e.into())
            }
        }
    }

    async fn teardown(&self, target: &ScratchTarget) -> Result<(), BoxError> {
        Self::remove(&cairn_source::scratch::handle_dir(target)?).await
    }

    async fn sweep(&self, prefix: &str) -> Result<usize, BoxError> {
        let leftovers = cairn_source::scratch::leftovers(&self.root(), prefix, "redis")?;
        for dir in &leftovers {
            Self::remove(dir).await?;
        }
        Ok(leftovers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        serde_json::from_value(serde_json::json!({
            "time": "2026-01-01T00:00:00Z", "tree": "00".repeat(32), "paths": [], "hostname": "h",
            "username": "u"
        }))
        .unwrap()
    }

    /// A real redis-server: provisioned, answering, torn down; a killed
    /// drill's leftover is swept by its prefix, and others are left alone.
    #[tokio::test]
    async fn scratch_servers_start_answer_and_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let scratch = RedisScratch { bin: None, root: Some(root.path().to_path_buf()) };
        let target = scratch.provision("drill-1", &snapshot()).await.unwrap();
        let mut conn =
            crate::resp::Conn::open(&crate::RedisTarget::parse(&target.target).unwrap()).await.unwrap();
        assert_eq!(conn.call(&[b"PING"]).await.unwrap(), crate::resp::Reply::Status("PONG".into()));
        let pid = target.handle["pid"].as_u64().unwrap() as u32;
        assert!(server::alive(pid));
        scratch.teardown(&target).await.unwrap();
        assert!(!server::alive(pid), "the scratch server still runs");
        assert!(!std::path::Path::new(target.handle["dir"].as_str().unwrap()).exists());

        let leftover = scratch.provision("drill-2", &snapshot()).await.unwrap();
        let other = scratch.provision("other", &snapshot()).await.unwrap();
        assert_eq!(scratch.sweep("drill-2").await.unwrap(), 1);
        assert!(!server::alive(leftover.handle["pid"].as_u64().unwrap() as u32));
        assert!(
            server::alive(other.handle["pid"].as_u64().unwrap() as u32),
            "another drill's server was swept"
        );
        scratch.teardown(&other).await.unwrap();
        assert_eq!(scratch.sweep("other").await.unwrap(), 0);
    }
}
