//! How an error of the command line becomes an exit code. The table itself
//! is the engine's ([`cairn_engine::exit`]); here the error chain is read
//! for the first error that says what kind of failure it is.

pub use cairn_engine::exit::*;
use cairn_engine::{EngineError, StopReason};
use cairn_source::{Classify, ErrorClass, SourceFailure};

/// Picks the exit code for an error chain, given why the run stopped (if it did).
pub fn code_for(err: &anyhow::Error, stopped: Option<&StopReason>) -> u8 {
    let mut class = ErrorClass::Failure;
    for cause in err.chain() {
        if cause.downcast_ref::<crate::commands::StopRecovery>().is_some() {
            return STOP_RECOVERY;
        }
        if cause.downcast_ref::<crate::commands::Lagging>().is_some() {
            return REPLICA_LAGGING;
        }
        if let Some(found) = classify(cause) {
            class = found;
            break;
        }
    }
    cairn_engine::exit::code_for(class, stopped)
}

fn classify(cause: &(dyn std::error::Error + 'static)) -> Option<ErrorClass> {
    if let Some(e) = cause.downcast_ref::<EngineError>() {
        return Some(e.class());
    }
    if let Some(e) = cause.downcast_ref::<SourceFailure>() {
        return Some(e.class());
    }
    if let Some(e) = cause.downcast_ref::<cairn_repo::RepoError>() {
        return Some(e.class());
    }
    if let Some(e) = cause.downcast_ref::<cairn_postgres::PgError>() {
        return Some(e.class());
    }
    if let Some(e) = cause.downcast_ref::<cairn_volume::VolumeError>() {
        return Some(e.class());
    }
    if let Some(e) = cause.downcast_ref::<cairn_dynamodb::LeaseError>() {
        return Some(lease_class(e));
    }
    if cause.downcast_ref::<crate::commands::Damage>().is_some() {
        return Some(ErrorClass::Damaged);
    }
    None
}

fn lease_class(e: &cairn_dynamodb::LeaseError) -> ErrorClass {
    use cairn_dynamodb::LeaseError;
    match e {
        LeaseError::Held { .. } | LeaseError::Lost { .. } | LeaseError::Expiring { .. } => ErrorClass::Locked,
        _ => ErrorClass::Failure,
    }
}
