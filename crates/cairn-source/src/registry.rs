//! The adapters of a build, with their types erased.
//!
//! The binary registers each adapter with one line; everything else — the
//! `cairn backup <kind>` subcommands and their flags, `cairn restore`'s
//! adapter flags, validating a `cairn.yaml` source by its kind, which
//! adapter restores which snapshot — comes from here. [`DynSource`] is the
//! object-safe face of a [`Source`]: settings travel as [`AnySettings`] and
//! errors as [`SourceFailure`], which keeps the error's class and chain.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use cairn_repo::Snapshot;
use cairn_repo::reader::SnapshotReader;

use crate::{
    BackupJob, BackupOutcome, Classify, Descriptor, Envelope, ErrorClass, RestoreJob, RestoreOutcome,
    RestoreRequest, Scratch, Source, VerifyJob, VerifyOutcome,
};

/// An adapter's settings, type-erased.
pub trait AnySettings: Any + Send + Sync + std::fmt::Debug {
    fn as_any(&self) -> &dyn Any;
    /// A copy (a drill hands the same settings to each of its jobs).
    fn clone_boxed(&self) -> Box<dyn AnySettings>;
}

impl<T: Any + Send + Sync + std::fmt::Debug + Clone> AnySettings for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn clone_boxed(&self) -> Box<dyn AnySettings> {
        Box::new(self.clone())
    }
}

/// An adapter's error with its class, type-erased (the chain is kept).
#[derive(Debug)]
pub struct SourceFailure {
    pub class: ErrorClass,
    pub error: Box<dyn std::error::Error + Send + Sync>,
}

impl SourceFailure {
    pub fn new<E: std::error::Error + Classify + Send + Sync + 'static>(error: E) -> SourceFailure {
        SourceFailure { class: error.class(), error: Box::new(error) }
    }

    pub fn usage(message: impl Into<String>) -> SourceFailure {
        SourceFailure { class: ErrorClass::Usage, error: message.into().into() }
    }
}

impl std::fmt::Display for SourceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for SourceFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl Classify for SourceFailure {
    fn class(&self) -> ErrorClass {
        self.class
    }
}

/// The object-safe face of a [`Source`].
#[async_trait]
pub trait DynSource: Send + Sync {
    fn descriptor(&self) -> Descriptor;
    /// `cairn backup <kind>` with the adapter's flags.
    fn backup_command(&self) -> clap::Command;
    /// Adds the adapter's restore flags to `cairn restore` (or `verify`).
    fn augment_restore(&self, command: clap::Command) -> clap::Command;
    fn settings_from_args(&self, matches: &clap::ArgMatches) -> Result<Box<dyn AnySettings>, clap::Error>;
    /// A `cairn.yaml` source's adapter keys (everything but the common ones),
    /// `${NAME}` interpolated as the adapter's types want.
    fn settings_from_config(
        &self,
        keys: serde_yaml::Value,
        path: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Box<dyn AnySettings>, crate::config::ConfigError>;
    fn default_settings(&self) -> Box<dyn AnySettings>;
    fn restore_settings_from_args(
        &self,
        matches: &clap::ArgMatches,
    ) -> Result<Box<dyn AnySettings>, clap::Error>;
    fn mode(&self, settings: &dyn AnySettings) -> &'static str;
    fn validate(&self, settings: &dyn AnySettings) -> Result<(), SourceFailure>;
    async fn backup(
        &self,
        job: BackupJob<'_>,
        settings: &dyn AnySettings,
    ) -> Result<BackupOutcome, SourceFailure>;
    fn restore_modes(&self, request: &RestoreRequest, settings: &dyn AnySettings) -> Vec<&'static str>;
    fn validate_restore(
        &self,
        request: &RestoreRequest,
        settings: &dyn AnySettings,
    ) -> Result<(), SourceFailure>;
    fn pick_latest(
        &self,
        candidates: &[(cairn_repo::Id, Snapshot)],
        settings: &dyn AnySettings,
    ) -> Result<Option<usize>, SourceFailure>;
    fn restore_hint(&self, mode: &str) -> String;
    async fn restore(
        &self,
        job: RestoreJob<'_>,
        settings: &dyn AnySettings,
    ) -> Result<RestoreOutcome, SourceFailure>;
    fn verifies(&self, target: &str) -> bool;
    async fn verify_against(
        &self,
        job: VerifyJob<'_>,
        settings: &dyn AnySettings,
    ) -> Result<VerifyOutcome, SourceFailure>;
    /// The snapshot's envelope: the one it carries, else the adapter's reading of it.
    async fn envelope(
        &self,
        reader: &SnapshotReader<'_>,
        snapshot: &Snapshot,
    ) -> Result<Envelope, SourceFailure>;
    fn scratch(&self) -> Option<Arc<dyn Scratch>>;
}

struct Registered<S: Source>(S);

fn settings<'a, T: 'static>(settings: &'a dyn AnySettings, kind: &str) -> &'a T {
    settings
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("settings of another adapter given to {kind}"))
}

#[async_trait]
impl<S: Source> DynSource for Registered<S> {
    fn descriptor(&self) -> Descriptor {
        self.0.descriptor()
    }

    fn backup_command(&self) -> clap::Command {
        let d = self.0.descriptor();
        // The descriptor's line last: a doc comment on the settings struct would otherwise replace it.
        <S::Settings as clap::Args>::augment_args(clap::Command::new(d.kind)).about(d.about)
    }

    fn augment_restore(&self, command: clap::Command) -> clap::Command {
        <S::RestoreSettings as clap::Args>::augment_args(command)
    }

    fn settings_from_args(&self, matches: &clap::ArgMatches) -> Result<Box<dyn AnySettings>, clap::Error> {
        Ok(Box::new(<S::Settings as clap::FromArgMatches>::from_arg_matches(matches)?))
    }

    fn settings_from_config(
        &self,
        keys: serde_yaml::Value,
        path: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Box<dyn AnySettings>, crate::config::ConfigError> {
        let settings: S::Settings = crate::config::from_value(keys, path, env)?;
        Ok(Box::new(settings))
    }

    fn default_settings(&self) -> Box<dyn AnySettings> {
        Box::new(S::Settings::default())
    }

    fn restore_settings_from_args(
        &self,
        matches: &clap::ArgMatches,
    ) -> Result<Box<dyn AnySettings>, clap::Error> {
        Ok(Box::new(<S::RestoreSettings as clap::FromArgMatches>::from_arg_matches(matches)?))
    }

    fn mode(&self, s: &dyn AnySettings) -> &'static str {
        self.0.mode(settings(s, self.0.descriptor().kind))
    }

    fn validate(&self, s: &dyn AnySettings) -> Result<(), SourceFailure> {
        self.0.validate(settings(s, self.0.descriptor().kind)).map_err(SourceFailure::new)
    }

    async fn backup(&self, job: BackupJob<'_>, s: &dyn AnySettings) -> Result<BackupOutcome, SourceFailure> {
        self.0.backup(job, settings(s, self.0.descriptor().kind)).await.map_err(SourceFailure::new)
    }

    fn restore_modes(&self, request: &RestoreRequest, s: &dyn AnySettings) -> Vec<&'static str> {
        self.0.restore_modes(request, settings(s, self.0.descriptor().kind))
    }

    fn validate_restore(&self, request: &RestoreRequest, s: &dyn AnySettings) -> Result<(), SourceFailure> {
        self.0.validate_restore(request, settings(s, self.0.descriptor().kind)).map_err(SourceFailure::new)
    }

    fn pick_latest(
        &self,
        candidates: &[(cairn_repo::Id, Snapshot)],
        s: &dyn AnySettings,
    ) -> Result<Option<usize>, SourceFailure> {
        self.0.pick_latest(candidates, settings(s, self.0.descriptor().kind)).map_err(SourceFailure::new)
    }

    fn restore_hint(&self, mode: &str) -> String {
        self.0.restore_hint(mode)
    }

    async fn restore(
        &self,
        job: RestoreJob<'_>,
        s: &dyn AnySettings,
    ) -> Result<RestoreOutcome, SourceFailure> {
        self.0.restore(job, settings(s, self.0.descriptor().kind)).await.map_err(SourceFailure::new)
    }

    fn verifies(&self, target: &str) -> bool {
        self.0.verifies(target)
    }

    async fn verify_against(
        &self,
        job: VerifyJob<'_>,
        s: &dyn AnySettings,
    ) -> Result<VerifyOutcome, SourceFailure> {
        self.0.verify_against(job, settings(s, self.0.descriptor().kind)).await.map_err(SourceFailure::new)
    }

    async fn envelope(
        &self,
        reader: &SnapshotReader<'_>,
        snapshot: &Snapshot,
    ) -> Result<Envelope, SourceFailure> {
        if let Some(envelope) = Envelope::read(reader).await.map_err(SourceFailure::new)? {
            return Ok(envelope);
        }
        match self.0.legacy_envelope(reader, snapshot).await.map_err(SourceFailure::new)? {
            Some(envelope) => Ok(envelope),
            None => Ok(Envelope::of_file_tree(snapshot)),
        }
    }

    fn scratch(&self) -> Option<Arc<dyn Scratch>> {
        self.0.scratch()
    }
}

/// The adapters of this build.
#[derive(Default, Clone)]
pub struct Registry {
    sources: Vec<Arc<dyn DynSource>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.sources.iter().map(|s| s.descriptor().kind)).finish()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds an adapter. Kinds must be unique.
    pub fn with(mut self, source: impl Source) -> Registry {
        let kind = source.descriptor().kind;
        assert!(self.get(kind).is_none(), "two adapters of kind {kind}");
        self.sources.push(Arc::new(Registered(source)));
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Arc<dyn DynSource>> {
        self.sources.iter().find(|s| s.descriptor().kind == kind)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn DynSource>> {
        self.sources.iter()
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.sources.iter().map(|s| s.descriptor().kind).collect()
    }
}
