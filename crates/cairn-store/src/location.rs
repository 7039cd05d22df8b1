//! What a repository location names, decided in one place for `--repo`,
//! `CAIRN_REPOSITORY`, `repository:`, replicas and every other location.
//!
//! * `s3:…` is an S3 bucket, in cairn's spelling (`s3://bucket/prefix`) or
//!   restic's (`s3:https://host/bucket/prefix`, `s3:host/bucket/prefix`,
//!   `s3:bucket/prefix`); `cairn-store-s3` parses the rest, so the AWS SDK
//!   stays out of this crate.
//! * `local:PATH` (restic's spelling) and any other path is a directory.
//! * Any other `word:` prefix is another tool's backend (restic's `rest:`,
//!   `sftp:`, `b2:`, `azure:`, `gs:`, `swift:`, `rclone:`, or a typo) and is
//!   refused. Treating it as a relative path would quietly create a
//!   directory such as `./rest:https:` and back up into it; a directory
//!   whose name holds a colon is still reachable as `./name:x`.

use std::path::PathBuf;

use crate::StoreError;
use crate::redact::DisplaySafe;

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory.
    Local(PathBuf),
    /// An S3 bucket and prefix: the location as given, for
    /// `cairn_store_s3::S3Config::from_url`.
    S3(String),
}

impl Location {
    /// Decides what `location` names; refuses, in one line and without
    /// creating anything, what cairn cannot store a repository in.
    pub fn parse(location: &str) -> Result<Location, StoreError> {
        let refuse =
            |hint: String| StoreError::UnsupportedLocation { location: DisplaySafe::new(location), hint };
        if location.is_empty() {
            return Err(refuse("the location is empty".into()));
        }
        if location.starts_with("s3:") {
            return Ok(Location::S3(location.to_string()));
        }
        if let Some(path) = location.strip_prefix("local:") {
            if path.is_empty() {
                return Err(refuse("local: needs a directory, e.g. local:/srv/backups".into()));
            }
            return Ok(Location::Local(PathBuf::from(path)));
        }
        if let Some(scheme) = scheme(location) {
            return Err(refuse(format!(
                "cairn does not support {scheme}: repositories; use a directory (a path, or local:PATH; \
                 write a relative directory whose name holds a colon as ./{scheme}:…) or S3 \
                 (s3://bucket/prefix, s3:https://host/bucket/prefix)"
            )));
        }
        Ok(Location::Local(PathBuf::from(location)))
    }
}

/// The `word` of a leading `word:` (a URL scheme's characters, starting with
/// a letter), if the location has one. A path such as `./a:b` or `dir/a:b`
/// has none.
fn scheme(location: &str) -> Option<&str> {
    let (word, _) = location.split_once(':')?;
    let mut chars = word.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
        .then_some(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_s3_are_told_apart() {
        let local = |p: &str| Location::Local(PathBuf::from(p));
        for (given, want) in [
            ("/srv/backups/cairn", local("/srv/backups/cairn")),
            ("relative/dir", local("relative/dir")),
            ("./name:with:colons", local("./name:with:colons")),
            ("dir/a:b", local("dir/a:b")),
            ("/abs/s3:bucket", local("/abs/s3:bucket")),
            ("local:/srv/backups", local("/srv/backups")),
            ("local:relative", local("relative")),
            (
                "s3://bucket/prefix?region=eu-west-1",
                Location::S3("s3://bucket/prefix?region=eu-west-1".into()),
            ),
            ("s3:https://host:9000/bucket/p", Location::S3("s3:https://host:9000/bucket/p".into())),
            ("s3:bucket/prefix", Location::S3("s3:bucket/prefix".into())),
        ] {
            assert_eq!(Location::parse(given).unwrap(), want, "{given}");
        }
    }

    #[test]
    fn other_schemes_are_refused_in_one_line_without_their_secrets() {
        for (given, scheme) in [
            ("rest:https://user:secret@host:8000/repo/", "rest"),
            ("sftp:user@host:/srv/repo", "sftp"),
            ("b2:bucket:path", "b2"),
            ("azure:container:/path", "azure"),
            ("gs:bucket:/path", "gs"),
            ("swift:container:/path", "swift"),
            ("rclone:remote:path", "rclone"),
            ("S3:bucket", "S3"),
            ("file:///srv/x", "file"),
            ("backup:2024", "backup"),
        ] {
            let e = Location::parse(given).unwrap_err().to_string();
            assert!(e.contains(&format!("cairn does not support {scheme}: repositories")), "{given}: {e}");
            assert!(e.contains("./") && !e.contains('\n'), "{given}: {e}");
            assert!(!e.contains("secret"), "{given}: {e}");
        }
        assert!(Location::parse("").is_err());
        assert!(Location::parse("local:").is_err());
    }
}
