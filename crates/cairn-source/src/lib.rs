//! The source-adapter contract: what every datastore cairn backs up
//! implements, and what the job engine, the command line and restore drills
//! rely on.
//!
//! How the pieces fit:
//!
//! * [`Source`] is the contract an adapter implements, with typed settings
//!   (its `cairn backup <kind>` flags and its `kind:` keys in `cairn.yaml`,
//!   one struct for both), typed restore settings and its own error type.
//!   Its methods: [`Source::backup`], [`Source::restore`] (a dry run is a
//!   plan), [`Source::verify_against`] a live target, and optionally
//!   [`Source::scratch`] targets for drills.
//! * Jobs ([`BackupJob`], [`RestoreJob`], [`VerifyJob`]) are what the engine
//!   hands an adapter: the repository (only ever under a lock the engine
//!   took: a job cannot be made without one), the snapshot's labels, one
//!   [`Cancel`] token and a [`Progress`] display. Adapters never open
//!   repositories, take locks or write snapshots' index entries themselves.
//! * [`SnapshotWriter`] is how stream-shaped sources write: named byte
//!   streams through the shared pipeline, plus the [`Envelope`], the typed
//!   manifest every source snapshot carries at [`ENVELOPE_PATH`] so that
//!   drills and `verify` can judge completeness without knowing the adapter.
//! * [`ErrorClass`] and [`Classify`]: one trait decides what kind of failure
//!   an error is, and so its exit code (the table is in `cairn-engine`).
//! * [`Registry`] erases the adapters' types so the binary registers each
//!   with one line and the engine drives them all alike.
//!
//! The contract is written down in `docs/DESIGN.md`, "Writing a source
//! adapter"; `cairn_testkit::conformance` is the suite every adapter runs
//! with its own fixture.

mod class;
pub mod config;
mod contract;
mod envelope;
mod job;
mod progress;
mod registry;
pub mod scratch;
pub mod units;
mod writer;

pub use class::{Classify, ErrorClass};
pub use contract::{Descriptor, Scratch, ScratchTarget, Source, SourceSettings};
pub use envelope::{
    ENVELOPE_PATH, ENVELOPE_VERSION, Envelope, EnvelopeCheck, ObjectEntry, StreamEntry, check_envelope,
};
pub use job::{
    BackupJob, BackupOutcome, Labels, ObjectCheck, Overwrite, RepositoryAccess, RestoreJob, RestoreOutcome,
    RestoreRequest, VerifyJob, VerifyOutcome, counts,
};
pub use progress::{Meter, Progress, Reading};
pub use registry::{AnySettings, DynSource, Registry, SourceFailure};
pub use tokio_util::sync::CancellationToken as Cancel;
pub use writer::SnapshotWriter;

/// The kind and mode of a snapshot as recorded, with the defaults for
/// snapshots written before modes were recorded and for restic's own.
pub fn kind_and_mode(snapshot: &cairn_repo::Snapshot) -> (String, String) {
    cairn_repo::select::kind_and_mode(snapshot)
}
