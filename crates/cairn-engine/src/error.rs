use cairn_dynamodb::LeaseError;
use cairn_repo::RepoError;
use cairn_source::{Classify, ErrorClass, SourceFailure};
use cairn_store::StoreError;

/// What can stop a job. Each message says what happened and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Repo(#[from] RepoError),

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error(transparent)]
    Source(#[from] SourceFailure),

    #[error(transparent)]
    Lease(#[from] LeaseError),

    #[error(transparent)]
    Catalog(#[from] cairn_dynamodb::CatalogError),

    /// The request cannot be done as asked (the message names what to do).
    #[error("{0}")]
    Usage(String),

    /// A setting (flag, environment variable, cairn.yaml key) is not valid.
    #[error("{0}")]
    Settings(String),

    /// Damage found, or a target that differs from its snapshot.
    #[error("{0}")]
    Damage(String),

    #[error("interrupted")]
    Interrupted,
}

impl Classify for EngineError {
    fn class(&self) -> ErrorClass {
        match self {
            EngineError::Repo(e) => e.class(),
            EngineError::Store(e) => e.class(),
            EngineError::Source(e) => e.class(),
            EngineError::Lease(
                LeaseError::Held { .. } | LeaseError::Lost { .. } | LeaseError::Expiring { .. },
            ) => ErrorClass::Locked,
            EngineError::Lease(_) | EngineError::Catalog(_) | EngineError::Settings(_) => ErrorClass::Failure,
            EngineError::Usage(_) => ErrorClass::Usage,
            EngineError::Damage(_) => ErrorClass::Damaged,
            EngineError::Interrupted => ErrorClass::Interrupted,
        }
    }
}

/// An error and its causes in one line, each cause added only where the
/// message does not already say it (most of ours embed their cause).
pub fn render(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = e.source();
    }
    line
}
