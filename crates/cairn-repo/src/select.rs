//! Which snapshot a command means.
//!
//! One repository holds snapshots of many sources and kinds: nightly logical
//! and physical PostgreSQL backups, volumes from several hosts. A snapshot
//! argument (`latest`, an id, a unique prefix) is therefore resolved within
//! a [`SnapshotFilter`]: the `--source`, `--host`, `--tag` and `--path`
//! filters the user gave, and the kinds and modes the command can act on
//! (`cairn restore latest --to postgresql://…` means the newest *logical*
//! PostgreSQL snapshot, whatever else was written since). A prefix is looked
//! for among the snapshots the filter admits first, so it may be shorter
//! than one unique in the whole repository; an explicit id of a snapshot the
//! filter excludes is reported as such ([`RepoError::SnapshotExcluded`]), so
//! the command can say which one to use instead of failing on it later.

use crate::{Id, RepoError, Repository, Result, Snapshot};

/// A snapshot's source kind and mode: as recorded, or for snapshots written
/// before modes were recorded, as their metadata implies; restic's own
/// snapshots are file trees (`volume`, `files`).
pub fn kind_and_mode(snapshot: &Snapshot) -> (String, String) {
    let Some(meta) = &snapshot.cairn else { return ("volume".into(), "files".into()) };
    let mode = if !meta.mode.is_empty() {
        meta.mode.clone()
    } else {
        match meta.source_kind.as_str() {
            "volume" => "files".into(),
            "postgres" if meta.metadata.get("kind").and_then(|k| k.as_str()) == Some("physical") => {
                "physical".into()
            }
            "postgres" => "logical".into(),
            _ => String::new(),
        }
    };
    (meta.source_kind.clone(), mode)
}

/// The snapshots a command may act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    /// Configured source names (`cairn.yaml`'s `name:`).
    pub sources: Vec<String>,
    pub hosts: Vec<String>,
    /// Every tag must be present.
    pub tags: Vec<String>,
    /// Every path must be among the snapshot's paths.
    pub paths: Vec<String>,
    /// `(kind, mode)` pairs the command handles; an empty mode admits every
    /// mode of the kind; no pairs admit everything.
    pub kinds: Vec<(String, String)>,
}

impl SnapshotFilter {
    pub fn matches(&self, snapshot: &Snapshot) -> bool {
        let source = snapshot.cairn.as_ref().and_then(|c| c.source_name.as_deref()).unwrap_or("");
        let (kind, mode) = kind_and_mode(snapshot);
        (self.sources.is_empty() || self.sources.iter().any(|s| s == source))
            && (self.hosts.is_empty() || self.hosts.contains(&snapshot.hostname))
            && self.tags.iter().all(|t| snapshot.tags.contains(t))
            && self
                .paths
                .iter()
                .all(|p| snapshot.paths.iter().any(|sp| sp.trim_end_matches('/') == p.trim_end_matches('/')))
            && (self.kinds.is_empty()
                || self.kinds.iter().any(|(k, m)| *k == kind && (m.is_empty() || *m == mode)))
    }

    /// The filter in words, for "no snapshot matches …" messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.kinds.is_empty() {
            let kinds: Vec<String> = self
                .kinds
                .iter()
                .map(|(k, m)| if m.is_empty() { k.clone() } else { format!("{k}/{m}") })
                .collect();
            parts.push(format!("of kind {}", kinds.join(" or ")));
        }
        for (what, values) in
            [("source", &self.sources), ("host", &self.hosts), ("tag", &self.tags), ("path", &self.paths)]
        {
            if !values.is_empty() {
                parts.push(format!("with {what} {}", values.join(", ")));
            }
        }
        parts.join(" ")
    }
}

impl Repository {
    /// The snapshots the filter admits, oldest first (damaged snapshot files
    /// are skipped here; `check` reports them).
    pub async fn select_snapshots(&self, filter: &SnapshotFilter) -> Result<Vec<(Id, Snapshot)>> {
        let (all, _) = self.snapshots().await?;
        Ok(all.into_iter().filter(|(_, s)| filter.matches(s)).collect())
    }

    /// Resolves `latest`, a full id or a unique prefix within `filter`.
    pub async fn select_snapshot(&self, spec: &str, filter: &SnapshotFilter) -> Result<(Id, Snapshot)> {
        let not_found = || RepoError::SnapshotNotFound {
            spec: if filter.describe().is_empty() {
                spec.to_string()
            } else {
                format!("{spec} {}", filter.describe())
            },
        };
        if spec == "latest" {
            let (all, errors) = self.snapshots().await?;
            if all.is_empty()
                && let Some(e) = errors.into_iter().next()
            {
                return Err(e);
            }
            return all.into_iter().rev().find(|(_, s)| filter.matches(s)).ok_or_else(not_found);
        }
        let prefix = spec.to_ascii_lowercase();
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(RepoError::SnapshotNotFound { spec: spec.into() });
        }
        let ids: Vec<Id> = self
            .list_ids(cairn_store::FileType::Snapshot)
            .await?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&prefix))
            .collect();
        let mut admitted = Vec::new();
        let mut excluded = Vec::new();
        for id in ids {
            let snapshot: Snapshot = self.load_json(cairn_store::FileType::Snapshot, &id).await?;
            if filter.matches(&snapshot) {
                admitted.push((id, snapshot));
            } else {
                excluded.push((id, snapshot));
            }
        }
        match (admitted.len(), excluded.len()) {
            (1, _) => Ok(admitted.pop().expect("one admitted snapshot")),
            (0, 0) => Err(RepoError::SnapshotNotFound { spec: spec.into() }),
            (0, 1) => {
                let (id, snapshot) = excluded.pop().expect("one excluded snapshot");
                let (kind, mode) = kind_and_mode(&snapshot);
                Err(RepoError::SnapshotExcluded { id, kind, mode, filter: filter.describe() })
            }
            (0, n) => Err(RepoError::AmbiguousSnapshot { spec: spec.into(), count: n }),
            (n, _) => Err(RepoError::AmbiguousSnapshot { spec: spec.into(), count: n }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CairnSnapshotMeta;

    fn snap(kind: Option<(&str, &str)>, host: &str, source: Option<&str>) -> Snapshot {
        let mut s: Snapshot = serde_json::from_value(serde_json::json!({
            "time": "2026-11-23T10:00:00Z", "tree": "00".repeat(32), "paths": ["/srv"], "hostname": host,
            "tags": ["nightly"],
        }))
        .unwrap();
        s.cairn = kind.map(|(k, m)| CairnSnapshotMeta {
            source_kind: k.into(),
            mode: m.into(),
            source_name: source.map(Into::into),
            warnings: vec![],
            metadata: serde_json::Value::Null,
        });
        s
    }

    #[test]
    fn kinds_and_modes_of_old_and_foreign_snapshots() {
        assert_eq!(kind_and_mode(&snap(None, "h", None)), ("volume".into(), "files".into()));
        assert_eq!(kind_and_mode(&snap(Some(("postgres", "")), "h", None)).1, "logical");
        let mut physical = snap(Some(("postgres", "")), "h", None);
        physical.cairn.as_mut().unwrap().metadata = serde_json::json!({"kind": "physical"});
        assert_eq!(kind_and_mode(&physical).1, "physical");
        assert_eq!(kind_and_mode(&snap(Some(("redis", "rdb")), "h", None)).1, "rdb");
    }

    #[test]
    fn filters_combine_source_host_tags_paths_and_kinds() {
        let logical = snap(Some(("postgres", "logical")), "db-1", Some("app-db"));
        let filter = |kinds: &[(&str, &str)]| SnapshotFilter {
            kinds: kinds.iter().map(|(k, m)| (k.to_string(), m.to_string())).collect(),
            ..SnapshotFilter::default()
        };
        assert!(filter(&[]).matches(&logical));
        assert!(filter(&[("postgres", "")]).matches(&logical));
        assert!(filter(&[("postgres", "logical")]).matches(&logical));
        assert!(!filter(&[("postgres", "physical")]).matches(&logical));
        assert!(!filter(&[("volume", "")]).matches(&logical));
        let by = |f: SnapshotFilter| f.matches(&logical);
        assert!(by(SnapshotFilter { sources: vec!["app-db".into()], ..Default::default() }));
        assert!(!by(SnapshotFilter { sources: vec!["other".into()], ..Default::default() }));
        assert!(!by(SnapshotFilter { hosts: vec!["db-2".into()], ..Default::default() }));
        assert!(by(SnapshotFilter { tags: vec!["nightly".into()], ..Default::default() }));
        assert!(!by(SnapshotFilter { tags: vec!["weekly".into()], ..Default::default() }));
        assert!(by(SnapshotFilter { paths: vec!["/srv/".into()], ..Default::default() }));
        let described = SnapshotFilter { hosts: vec!["a".into()], ..filter(&[("postgres", "logical")]) };
        assert_eq!(described.describe(), "of kind postgres/logical with host a");
    }
}
