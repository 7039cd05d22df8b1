//! What kind of failure an error is.
//!
//! Scripts and CronJob alerting act on exit codes, so every error must say
//! which kind of failure it is, and only one place may turn that into a
//! number (`cairn_engine::exit`). Adapters implement [`Classify`] for their
//! error type; the repository's and the store's errors are classified here.

use cairn_repo::RepoError;
use cairn_store::StoreError;

/// The kinds of failure, each with its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Anything else: the message says why and what to do.
    Failure,
    /// The command cannot do what was asked as asked (a snapshot of another
    /// kind, a target this source cannot restore into, conflicting settings).
    Usage,
    /// Damage found: in the repository, or a restored target that differs.
    Damaged,
    /// The repository does not exist.
    NoRepository,
    /// Another process holds the repository (lock or lease), or this run lost it.
    Locked,
    /// The password opens no key.
    WrongPassword,
    /// Stopped by a signal (or cancelled); the signal decides the code.
    Interrupted,
}

/// Says which [`ErrorClass`] an error belongs to.
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

impl Classify for RepoError {
    fn class(&self) -> ErrorClass {
        match self {
            RepoError::NotARepository { .. } => ErrorClass::NoRepository,
            RepoError::WrongPassword { .. } => ErrorClass::WrongPassword,
            RepoError::Locked { .. } | RepoError::CommitRefused(_) => ErrorClass::Locked,
            RepoError::Damaged { .. }
            | RepoError::BlobNotFound { .. }
            | RepoError::SnapshotFile { .. }
            | RepoError::JournalDamaged { .. } => ErrorClass::Damaged,
            RepoError::BadJournalEntry { .. } => ErrorClass::Usage,
            RepoError::Interrupted => ErrorClass::Interrupted,
            RepoError::Store(e) => e.class(),
            _ => ErrorClass::Failure,
        }
    }
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_errors_keep_their_meaning() {
        let damaged = RepoError::Damaged { path: "data/ab".into(), reason: "bad".into() };
        assert_eq!(damaged.class(), ErrorClass::Damaged);
        assert_eq!(RepoError::Locked { holder: "x".into() }.class(), ErrorClass::Locked);
        assert_eq!(RepoError::Interrupted.class(), ErrorClass::Interrupted);
        assert_eq!(RepoError::Pipeline("x".into()).class(), ErrorClass::Failure);
    }
}
