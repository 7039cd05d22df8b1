//! The contract an adapter implements.
//!
//! The rules, which the conformance suite (`cairn_testkit::conformance`)
//! checks for every adapter:
//!
//! * **Backup** turns a live system into one snapshot from one consistent
//!   point in time, through [`crate::SnapshotWriter`] (named streams plus
//!   the envelope) or a file-tree writer of its own crate; it never sees
//!   chunks, packs or the store. It stops at the next step once the job's
//!   token is cancelled, writing no snapshot; what it uploaded is indexed
//!   and reused by the next run.
//! * **Restore** reads only verified bytes (the job's `SnapshotReader` never
//!   hands out anything else) and never destroys what a target holds before
//!   the data that replaces it is in and verified: restore beside and swap,
//!   or replace inside one transaction. A dry run computes and returns the
//!   plan and writes nothing.
//! * **Verify against** compares a live target with the snapshot, object by
//!   object (present, count, content digest), and names every difference.
//! * **Scratch** (optional) provisions a throwaway target for drills, named
//!   with the drill's prefix so leftovers of a killed drill can be swept, and
//!   tears it down whatever happened.
//! * **Errors** say what happened and what to do, in one line, and are
//!   classified ([`crate::Classify`]) so the exit code is right.

use async_trait::async_trait;
use cairn_repo::Snapshot;
use cairn_repo::reader::SnapshotReader;

use crate::{
    BackupJob, BackupOutcome, Classify, Envelope, RestoreJob, RestoreOutcome, RestoreRequest, VerifyJob,
    VerifyOutcome,
};

/// What the command line and the registry know about an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The source kind: recorded in snapshots, the `kind:` of `cairn.yaml`
    /// sources and the `cairn backup <kind>` subcommand.
    pub kind: &'static str,
    /// One line for `cairn backup --help`.
    pub about: &'static str,
    /// The modes its snapshots can have (`logical`, `physical`, ...).
    pub modes: &'static [&'static str],
}

/// A backup's settings: the flags of `cairn backup <kind>` and the keys of a
/// `kind: <kind>` source in `cairn.yaml`, one struct for both. Unknown keys
/// must be refused (`#[serde(deny_unknown_fields)]`), and the defaults of
/// both ways must agree (the conformance suite checks `Default`, empty
/// flags and an empty mapping give the same settings).
pub trait SourceSettings:
    clap::Args
    + clap::FromArgMatches
    + serde::de::DeserializeOwned
    + Default
    + Clone
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<T> SourceSettings for T where
    T: clap::Args
        + clap::FromArgMatches
        + serde::de::DeserializeOwned
        + Default
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// One kind of datastore cairn backs up and restores.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    type Settings: SourceSettings;
    /// Restore flags of this source (they share `cairn restore`'s flags with
    /// every other source: names must be unique across adapters).
    type RestoreSettings: clap::Args
        + clap::FromArgMatches
        + Default
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static;
    type Error: std::error::Error + Classify + Send + Sync + 'static;

    fn descriptor(&self) -> Descriptor;

    /// The mode a backup with these settings produces.
    fn mode(&self, settings: &Self::Settings) -> &'static str;

    /// Cheap checks before any repository work (a URL that does not parse,
    /// missing paths), so bad input fails at once and writes nothing.
    fn validate(&self, _settings: &Self::Settings) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Backs the source up as one snapshot.
    async fn backup(
        &self,
        job: BackupJob<'_>,
        settings: &Self::Settings,
    ) -> Result<BackupOutcome, Self::Error>;

    /// The modes of this source's snapshots the request can restore (its
    /// target form and flags); empty when the request is not for this source.
    fn restore_modes(&self, request: &RestoreRequest, settings: &Self::RestoreSettings) -> Vec<&'static str>;

    /// Cheap checks of a restore request this source takes (a target URL
    /// that does not parse), before the repository is opened.
    fn validate_restore(
        &self,
        _request: &RestoreRequest,
        _settings: &Self::RestoreSettings,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Which of `candidates` (admitted by the request's filters, oldest
    /// first) `latest` means; by default the newest. A point-in-time restore
    /// wants the newest base backup that precedes its target instead.
    fn pick_latest(
        &self,
        candidates: &[(cairn_repo::Id, Snapshot)],
        _settings: &Self::RestoreSettings,
    ) -> Result<Option<usize>, Self::Error> {
        Ok(candidates.len().checked_sub(1))
    }

    /// How to restore a snapshot of `mode` instead, for the usage error a
    /// request for another target gets (`cairn restore ID --to postgresql://HOST/NEWDB`).
    fn restore_hint(&self, mode: &str) -> String;

    /// Restores (or, for a dry run, plans) one snapshot of this source.
    async fn restore(
        &self,
        job: RestoreJob<'_>,
        settings: &Self::RestoreSettings,
    ) -> Result<RestoreOutcome, Self::Error>;

    /// Whether `target` is a live target this source can compare with its
    /// snapshots (`verify --against`).
    fn verifies(&self, _target: &str) -> bool {
        false
    }

    /// Compares a live target with a snapshot.
    async fn verify_against(
        &self,
        job: VerifyJob<'_>,
        _settings: &Self::RestoreSettings,
    ) -> Result<VerifyOutcome, Self::Error> {
        Ok(VerifyOutcome { target: job.target, objects: Vec::new() })
    }

    /// The envelope of a snapshot that predates envelopes (from the
    /// adapter's own manifest), or of a file-tree snapshot; `None` if it
    /// cannot be made.
    async fn legacy_envelope(
        &self,
        _reader: &SnapshotReader<'_>,
        snapshot: &Snapshot,
    ) -> Result<Option<Envelope>, Self::Error> {
        Ok(Some(Envelope::of_file_tree(snapshot)))
    }

    /// Scratch targets for restore drills, when the source offers them.
    fn scratch(&self) -> Option<std::sync::Arc<dyn Scratch>> {
        None
    }
}

/// A throwaway target a drill restores into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchTarget {
    /// What `restore --to` and `verify --against` take.
    pub target: String,
    /// What tearing it down needs (a data directory, a process id).
    pub handle: serde_json::Value,
}

/// Provisions and tears down scratch targets.
#[async_trait]
pub trait Scratch: Send + Sync {
    /// A new, empty target for `snapshot`, named with `prefix` (the drill id).
    async fn provision(
        &self,
        prefix: &str,
        snapshot: &Snapshot,
    ) -> Result<ScratchTarget, Box<dyn std::error::Error + Send + Sync>>;

    /// Removes the target and everything in it.
    async fn teardown(&self, target: &ScratchTarget) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;

    /// Removes leftovers of killed drills whose names start with `prefix`;
    /// returns how many.
    async fn sweep(&self, prefix: &str) -> Result<usize, Box<dyn std::error::Error + Send + Sync>>;

    /// The probes a drill's user assertions may name for this kind
    /// (`sql`, `file`, `sha256`, `glob`, `redis_type`, ...).
    fn probes(&self) -> &'static [&'static str] {
        &[]
    }

    /// Runs the probe `probe` with `argument` on a restored target and
    /// returns what it observed, as text (a query's value, `true`/`false`,
    /// a hash, a count); the drill compares it with the assertion's
    /// expectation. Only names listed by [`Scratch::probes`] are asked for.
    async fn probe(
        &self,
        _target: &ScratchTarget,
        probe: &str,
        _argument: &str,
    ) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("this source has no probe {probe:?}").into())
    }
}
