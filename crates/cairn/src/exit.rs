//! Exit codes, and how errors map to them. Documented in the README; scripts
//! and CronJob alerting depend on them, so they never change meaning.

use cairn_postgres::PgError;
use cairn_repo::RepoError;
use cairn_store::StoreError;
use cairn_volume::VolumeError;

/// Everything worked.
pub const SUCCESS: u8 = 0;
/// The command failed (the message says why).
pub const FAILURE: u8 = 1;
// 2: bad usage (unknown flag, missing argument) is clap's own exit code.
/// Backup finished and a snapshot was written, but some files could not be
/// read or kept changing; the snapshot lists them.
pub const PARTIAL: u8 = 3;
/// `check` or `verify` found damage.
pub const DAMAGED: u8 = 4;
/// The repository does not exist (no config file at the location).
pub const NO_REPOSITORY: u8 = 10;
/// The repository is locked by another process, or this run lost its lock
/// or lease (and stopped without committing).
pub const LOCKED: u8 = 11;
/// The password opens no key of the repository.
pub const WRONG_PASSWORD: u8 = 12;
/// `wal-fetch` could not deliver an archived WAL file that may exist (damage,
/// unreachable repository): PostgreSQL stops recovery on exit codes above
/// 125 instead of treating the file as missing and ending recovery early.
pub const STOP_RECOVERY: u8 = 126;
/// Interrupted by SIGINT (128 + 2).
pub const INTERRUPTED: u8 = 130;
/// Stopped by SIGTERM (128 + 15), e.g. a Kubernetes pod shutdown.
pub const TERMINATED: u8 = 143;

/// Picks the exit code for an error chain.
pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<crate::commands::StopRecovery>().is_some() {
            return STOP_RECOVERY;
        }
        if cause.downcast_ref::<cairn_dynamodb::LeaseError>().is_some_and(|e| {
            matches!(
                e,
                cairn_dynamodb::LeaseError::Held { .. }
                    | cairn_dynamodb::LeaseError::Lost { .. }
                    | cairn_dynamodb::LeaseError::Expiring { .. }
            )
        }) {
            return LOCKED;
        }
        if let Some(e) = cause.downcast_ref::<RepoError>() {
            return repo_code(e);
        }
        if let Some(e) = cause.downcast_ref::<VolumeError>() {
            return match e {
                VolumeError::Repo(r) => repo_code(r),
                VolumeError::Interrupted => INTERRUPTED,
                _ => FAILURE,
            };
        }
        if let Some(e) = cause.downcast_ref::<PgError>() {
            return match e {
                PgError::Repo(r) => repo_code(r),
                PgError::Interrupted => INTERRUPTED,
                PgError::RowCountMismatch { .. }
                | PgError::ContentMismatch { .. }
                | PgError::BadSnapshot { .. } => DAMAGED,
                _ => FAILURE,
            };
        }
        if let Some(crate::commands::Damage(_)) = cause.downcast_ref::<crate::commands::Damage>() {
            return DAMAGED;
        }
    }
    FAILURE
}

fn repo_code(e: &RepoError) -> u8 {
    match e {
        RepoError::NotARepository { .. } => NO_REPOSITORY,
        RepoError::WrongPassword { .. } => WRONG_PASSWORD,
        RepoError::Locked { .. } | RepoError::LockLost { .. } | RepoError::CommitRefused(_) => LOCKED,
        RepoError::Damaged { .. } | RepoError::BlobNotFound { .. } => DAMAGED,
        RepoError::Interrupted => INTERRUPTED,
        RepoError::Store(StoreError::NotFound { .. }) => FAILURE,
        _ => FAILURE,
    }
}
