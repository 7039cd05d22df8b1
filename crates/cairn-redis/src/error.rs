use std::path::PathBuf;

use cairn_repo::RepoError;
use cairn_source::{Classify, ErrorClass};
use cairn_store::DisplaySafe;

use crate::rdb::RdbError;

/// Everything that can go wrong backing up, restoring or comparing Redis.
/// Each message says what happened and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid Redis URL {url}: {message} (expected redis://[USER@]HOST[:PORT])")]
    Url { url: DisplaySafe, message: String },

    #[error("{0}")]
    Settings(String),

    #[error("cannot connect to Redis at {server}: {message}")]
    Connect { server: String, message: String },

    #[error(
        "Redis at {server} refused the login: {message}; check the user in the URL and the password file"
    )]
    Auth { server: String, message: String },

    #[error(
        "Redis user {user} at {server} may not run {command} ({message}); allow it with `ACL SETUSER {user} {grant}`"
    )]
    NoPermission { server: String, user: String, command: String, grant: String, message: String },

    #[error("Redis at {server} answered {command} with an error: {message}")]
    Server { server: String, command: String, message: String },

    #[error("Redis at {server}: {message}")]
    Protocol { server: String, message: String },

    /// The RDB the server sent is unusable; no snapshot is written.
    #[error("the RDB from {server} is unusable: {source}; no snapshot was written")]
    BadRdb {
        server: String,
        #[source]
        source: RdbError,
    },

    /// The RDB in a snapshot does not read back as recorded.
    #[error("the snapshot's {path} is damaged: {message}")]
    DamagedSnapshot { path: String, message: String },

    #[error("{dir} already holds {file}; restore into a new directory, or pass --overwrite to replace it (the new file is written and checked beside it first)", dir = dir.display())]
    TargetNotEmpty { dir: PathBuf, file: String },

    #[error(
        "redis-server not found{searched}: install it (Debian: `apt-get install redis-server`) or name it with --redis-server"
    )]
    ServerMissing { searched: String },

    /// Keys a live restore would overwrite, without `--replace`.
    #[error(
        "Redis at {server} already holds {count} of the keys to restore ({named}); {}",
        if *restored == 0 {
            "nothing was written: restore into other databases (--db-map), select other keys (--match), or pass --replace (every key is read and verified before the first is replaced)".to_string()
        } else {
            format!("{restored} keys were restored before it")
        }
    )]
    KeysExist { server: String, count: u64, named: String, restored: u64 },

    #[error("redis-server did not start on port {port}: {message}")]
    Start { port: u16, message: String },

    #[error("the restored server on port {port} differs from the snapshot: {message}")]
    Differs { port: u16, message: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Usage(String),

    #[error(transparent)]
    Repo(#[from] RepoError),

    #[error("interrupted")]
    Interrupted,
}

impl RedisError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RedisError {
        let context = context.into();
        move |source| RedisError::Io { context, source }
    }
}

impl Classify for RedisError {
    fn class(&self) -> ErrorClass {
        match self {
            RedisError::Repo(e) => e.class(),
            RedisError::Interrupted => ErrorClass::Interrupted,
            RedisError::DamagedSnapshot { .. } | RedisError::Differs { .. } => ErrorClass::Damaged,
            RedisError::Usage(_) => ErrorClass::Usage,
            _ => ErrorClass::Failure,
        }
    }
}
