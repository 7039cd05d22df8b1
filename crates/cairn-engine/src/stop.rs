//! Why a run stops early, and the token that tells every task.

use std::sync::Mutex;

use cairn_source::Cancel;

/// What stopped a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// SIGINT (2) or SIGTERM (15).
    Signal(i32),
    /// The lease or the lock was lost (someone else may hold the repository now).
    Lost(String),
}

/// The process's one cancellation token, and the first reason it fired.
#[derive(Debug, Default)]
pub struct Stop {
    token: Cancel,
    reason: Mutex<Option<StopReason>>,
}

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    /// The token every step and every adapter watches.
    pub fn token(&self) -> Cancel {
        self.token.clone()
    }

    /// Stops the run for `reason` (the first reason is the one reported).
    pub fn stop(&self, reason: StopReason) {
        {
            let mut current = self.reason.lock().expect("stop reason");
            if current.is_none() {
                tracing::warn!(reason = ?reason, "stopping: finishing in-flight uploads so the next run can reuse them");
                *current = Some(reason);
            }
        }
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason.lock().expect("stop reason").clone()
    }

    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Runs `step`, or gives up on it as soon as the run is stopped.
    pub async fn race<T, E>(&self, step: impl Future<Output = Result<T, E>>) -> Result<T, crate::EngineError>
    where
        crate::EngineError: From<E>,
    {
        tokio::select! {
            biased;
            _ = self.token.cancelled() => Err(crate::EngineError::Interrupted),
            result = step => result.map_err(Into::into),
        }
    }
}
