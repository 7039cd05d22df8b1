//! The job engine: every job's lifecycle in one place, for every source.
//!
//! A backup is always: open the repository → take the DynamoDB lease (when
//! configured) → take the repository lock → abort abandoned multipart
//! uploads → run the adapter → the fenced snapshot write (the repository
//! asks the lease, right before it, whether this run still holds it) →
//! record it in the catalog → bring the replicas up to date → one
//! [`JobReport`]. Restores and verifications share the first steps and the
//! report. Adapters ([`cairn_source::Source`]) only do their part in the
//! middle.
//!
//! One [`Stop`] per process carries the cancellation token every step and
//! every adapter gets: SIGTERM/SIGINT (fed by the binary), a lost lease or a
//! lost lock. Each step before the adapter runs is raced against it, so a
//! pod told to stop while it waits for a lease or opens a slow bucket stops
//! at once; adapters stop at their next step and write no snapshot.
//!
//! Exit codes are decided in one place ([`exit`]) from the error's
//! [`cairn_source::ErrorClass`] and why the run stopped.

pub mod drill;
mod error;
pub mod exit;
mod jobs;
mod lifecycle;
pub mod metrics;
mod open;
mod report;
mod stop;

pub use error::{EngineError, render};
pub use jobs::{BackupRequest, Engine, EngineSettings, RestoreRequest, VerifyRequest};
pub use lifecycle::{Hold, LeaseSettings, catalog_entry, lock_timing, open_catalog};
pub use open::{abandoned_upload_age, open_backend};
pub use report::{ByteCounts, JobReport};
pub use stop::{Stop, StopReason};
