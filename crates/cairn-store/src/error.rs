//! The one error type every backend reports, so callers (and the retry
//! wrapper) can decide what to do without knowing which backend failed.

use crate::redact::DisplaySafe;

/// A storage failure, naming the object involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} does not exist")]
    NotFound { path: String },

    #[error("{path} already exists")]
    AlreadyExists { path: String },

    #[error("permission denied on {path}")]
    PermissionDenied { path: String },

    #[error("no space left on the device holding {path}")]
    NoSpace { path: String },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: object is {actual} bytes, the read asked for bytes {start}..{end}")]
    ShortRead { path: String, start: u64, end: u64, actual: u64 },

    #[error("unsupported repository location {location}: {hint}")]
    UnsupportedLocation { location: DisplaySafe, hint: String },

    /// A failure that may succeed when retried (throttling, timeouts, resets).
    #[error("transient error on {path}: {message}")]
    Transient { path: String, message: String },
}

impl StoreError {
    /// Maps an I/O error on `path` to the most specific variant.
    pub fn from_io(path: impl Into<String>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound { path },
            std::io::ErrorKind::AlreadyExists => StoreError::AlreadyExists { path },
            std::io::ErrorKind::PermissionDenied => StoreError::PermissionDenied { path },
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                StoreError::NoSpace { path }
            }
            _ if source.raw_os_error() == Some(libc::ENOSPC)
                || source.raw_os_error() == Some(libc::EDQUOT) =>
            {
                StoreError::NoSpace { path }
            }
            _ => StoreError::Io { path, source },
        }
    }

    /// Whether retrying the same call could succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Transient { .. } => true,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}
