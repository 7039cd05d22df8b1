//! Where an S3 repository lives and how to talk to it: [`S3Config`], and
//! parsing it from an `s3://bucket/prefix?…` location.
//!
//! # Options per object kind
//!
//! Besides where the bucket is, the location can say how objects are stored:
//!
//! * `storage_class=CLASS`: the storage class of the repository's content
//!   (packs, index files, snapshots, journal entries such as PostgreSQL
//!   WAL), e.g. `STANDARD_IA`;
//!   `pack_storage_class=CLASS` overrides it for packs (`data/`) alone, e.g.
//!   `GLACIER_IR`. Lock files, `config`, key files and key revocation
//!   records always stay in `STANDARD` (no header is sent): locks live for minutes and are rewritten
//!   every five (an infrequent-access class would bill each one for 30 days),
//!   and `config` and the keys are read by every command. `GLACIER` and
//!   `DEEP_ARCHIVE` are refused: their objects cannot be read without a
//!   restore request, and every backup reads index files and every restore
//!   and `check --read-data` reads packs (`GLACIER_IR` reads instantly).
//! * `sse=AES256` (SSE-S3) or `sse=aws:kms` with an optional
//!   `sse_kms_key_id=ID` (SSE-KMS; without a key id S3 uses the account's
//!   `aws/s3` key): server-side encryption of every object, locks included.
//!   The data is encrypted by cairn already; this is for policies that want
//!   encryption at rest under the provider's keys too.
//! * `object_lock=MODE:DURATION`, MODE `GOVERNANCE` or `COMPLIANCE`,
//!   DURATION a whole number of hours, days, weeks or years (`36h`, `30d`,
//!   `4w`, `1y`): every immutable object — packs, index files, snapshots,
//!   key files, key revocation records, `config` and journal entries (PostgreSQL WAL) — is written with S3 Object Lock
//!   retention until *now + DURATION*, so neither ransomware holding the
//!   credentials nor a mistaken prune can delete it before then. Lock files
//!   never are: they are deleted at the end of every run and by `cairn
//!   unlock`. The bucket must have Object Lock enabled (`cairn init`
//!   creates it so). See [`S3Config::retention_for`] and
//!   [`S3Config::storage_class_for`] for the rules in code.
//!
//! Values are checked when the location is parsed, and a bad one is refused
//! with a one-line reason, before any request is made.

use std::fmt;
use std::time::Duration;

use cairn_store::{DisplaySafe, FileType};

use crate::error::S3Error;

/// Storage classes cairn accepts (AWS's names; S3-compatible stores know a
/// subset, Ceph RGW only `STANDARD` unless its zone defines more).
pub const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "EXPRESS_ONEZONE",
];

/// Server-side encryption requested for every object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    /// SSE-S3 (`AES256`): S3-managed keys.
    S3,
    /// SSE-KMS (`aws:kms`), with the key's id or ARN, or S3's default
    /// `aws/s3` key when `None`.
    Kms { key_id: Option<String> },
}

impl Sse {
    /// The `x-amz-server-side-encryption` value.
    pub fn header_value(&self) -> &'static str {
        match self {
            Sse::S3 => "AES256",
            Sse::Kms { .. } => "aws:kms",
        }
    }
}

/// S3 Object Lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may still delete (or
    /// shorten) it; everyone else may not.
    Governance,
    /// Nobody, the account's root user included, can delete it or shorten
    /// its retention until it expires.
    Compliance,
}

impl LockMode {
    /// The `x-amz-object-lock-mode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// Object Lock retention for the repository's immutable objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    /// Each object is retained until its upload time plus this.
    pub retention: Duration,
}

/// The longest retention accepted: S3 refuses dates much further out, and a
/// typo like `30y` for `30d` is better caught than honoured for decades.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// S3 refuses parts smaller than this (except the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part, and its largest single PUT.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's largest number of parts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;

/// How to reach one S3 repository. Build it with [`S3Config::new`] or
/// [`S3Config::from_url`], then adjust fields as needed.
#[derive(Clone, PartialEq)]
pub struct S3Config {
    /// The bucket. It must exist, or the credentials must be allowed to
    /// create it (`cairn init`).
    pub bucket: String,
    /// Key prefix of the repository inside the bucket, without leading or
    /// trailing slashes; empty for the bucket's root.
    pub prefix: String,
    /// AWS region. `None`: the standard chain (`AWS_REGION`, the profile,
    /// then instance metadata, which is skipped when a custom endpoint is
    /// set), then `us-east-1`.
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible store (MinIO, Ceph RGW, moto).
    /// `None`: `AWS_ENDPOINT_URL`/`AWS_ENDPOINT_URL_S3` or the profile's
    /// `endpoint_url` if set (aws-config reads them), else AWS itself.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`) instead of
    /// virtual-hosted (`bucket.endpoint/key`). `None`: path style exactly
    /// when a custom endpoint is in use, since most S3-compatible servers
    /// have no wildcard DNS for bucket names while AWS prefers virtual hosts.
    pub force_path_style: Option<bool>,
    /// Objects larger than this are uploaded in parts.
    pub multipart_threshold: u64,
    /// Size of each part (the last may be smaller); at least 5 MiB. Grown
    /// automatically for objects that would otherwise need over 10,000 parts.
    pub part_size: u64,
    /// Parts of one object uploaded at once.
    pub max_concurrency: usize,
    /// Explicit credentials instead of the standard provider chain (for
    /// tests and tools; deployments should use the chain: environment,
    /// profile, web identity/IRSA, container or instance metadata).
    pub credentials: Option<S3Credentials>,
    /// Storage class of content objects (packs, index, snapshots, journal entries);
    /// `None`: the bucket's default (`STANDARD`). Never applied to locks,
    /// `config` or keys. One of [`STORAGE_CLASSES`].
    pub storage_class: Option<String>,
    /// Storage class of packs, overriding `storage_class` for them.
    pub pack_storage_class: Option<String>,
    /// Server-side encryption of every object; `None`: the bucket's default.
    pub sse: Option<Sse>,
    /// Object Lock retention of immutable objects (never locks); `None`:
    /// none is requested (a bucket default retention still applies).
    pub object_lock: Option<ObjectLock>,
}

impl S3Config {
    pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 64 << 20;
    pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
    pub const DEFAULT_MAX_CONCURRENCY: usize = 4;

    /// A repository under `prefix` in `bucket`, with default settings.
    pub fn new(bucket: impl Into<String>, prefix: impl AsRef<str>) -> Self {
        S3Config {
            bucket: bucket.into(),
            prefix: normalize_prefix(prefix.as_ref()),
            region: None,
            endpoint: None,
            force_path_style: None,
            multipart_threshold: Self::DEFAULT_MULTIPART_THRESHOLD,
            part_size: Self::DEFAULT_PART_SIZE,
            max_concurrency: Self::DEFAULT_MAX_CONCURRENCY,
            credentials: None,
            storage_class: None,
            pack_storage_class: None,
            sse: None,
            object_lock: None,
        }
    }

    /// The storage class to request for objects of `kind`: packs get
    /// `pack_storage_class`, else `storage_class`; index files, snapshots
    /// and journal entries get `storage_class`; locks, `config`, keys and key revocation
    /// records none (they stay in `STANDARD`, see the module docs).
    pub fn storage_class_for(&self, kind: FileType) -> Option<&str> {
        match kind {
            FileType::Pack => self.pack_storage_class.as_deref().or(self.storage_class.as_deref()),
            FileType::Index | FileType::Snapshot | FileType::Journal => self.storage_class.as_deref(),
            FileType::Lock | FileType::Config | FileType::Key | FileType::KeyRevocation => None,
        }
    }

    /// The Object Lock retention to request for objects of `kind`: every
    /// kind but locks, which are deleted at the end of each run (and by
    /// `cairn unlock`) and must stay deletable.
    pub fn retention_for(&self, kind: FileType) -> Option<ObjectLock> {
        match kind {
            FileType::Lock => None,
            FileType::Config
            | FileType::Key
            | FileType::Snapshot
            | FileType::Index
            | FileType::Pack
            | FileType::Journal
            | FileType::KeyRevocation => self.object_lock,
        }
    }

    /// Parses an S3 location in any of its spellings, with the query
    /// parameters `region=R`, `endpoint=URL`, `path_style=true|false` and the
    /// per-object options of the module docs (`storage_class`,
    /// `pack_storage_class`, `sse`, `sse_kms_key_id`, `object_lock`):
    ///
    /// | location | endpoint |
    /// |---|---|
    /// | `s3://BUCKET[/PREFIX]` (cairn's) | `endpoint=`, else `AWS_ENDPOINT_URL`, else AWS |
    /// | `s3:https://HOST[:PORT]/BUCKET[/PREFIX]`, `s3:http://…` | that scheme, host and port; path-style |
    /// | `s3:HOST/BUCKET[/PREFIX]`, HOST with a `.` or `:`, or `localhost` | `https://HOST`; path-style |
    /// | `s3:BUCKET[/PREFIX]` | as for `s3://` |
    ///
    /// The last three are restic's, read as restic reads them (a first
    /// component that looks like a host is the host), so `restic -r` with
    /// the same text names the same repository. An AWS host
    /// (`s3.amazonaws.com`, `s3.REGION.amazonaws.com`) keeps AWS's
    /// virtual-hosted addressing and gives the region. Note that restic
    /// reads `s3://HOST/BUCKET` with a host first, while cairn's `s3://`
    /// names the bucket first, as the AWS CLI does.
    ///
    /// Credentials are never part of the location (it is printed and
    /// logged); they come from the standard AWS provider chain.
    pub fn from_url(url: &str) -> Result<Self, S3Error> {
        let bad =
            |reason: &str| S3Error::InvalidUrl { url: DisplaySafe::new(url), reason: reason.to_string() };
        let spec = url.strip_prefix("s3:").ok_or_else(|| {
            bad("expected s3://bucket/prefix, s3:https://host/bucket/prefix or s3:bucket/prefix")
        })?;
        let (spec, query) = match spec.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (spec, None),
        };
        let (endpoint, path) = named_endpoint(spec).map_err(|r| bad(&r))?;
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.contains('@') {
            return Err(bad(CREDENTIALS_ELSEWHERE));
        }
        if bucket.is_empty() {
            return Err(bad(if endpoint.is_some() {
                "the bucket name is missing (s3:https://host/bucket/prefix)"
            } else {
                "the bucket name is missing (s3://bucket/prefix)"
            }));
        }
        if bucket.contains(|c: char| c.is_whitespace() || c == ':' || c == '\\') {
            return Err(bad("the bucket name contains characters S3 does not allow"));
        }
        let prefix = normalize_prefix(prefix);
        if prefix.split('/').any(|c| c.is_empty() || c == "." || c == "..") && !prefix.is_empty() {
            return Err(bad("the prefix must not contain empty, '.' or '..' components"));
        }
        let mut config = S3Config::new(bucket, prefix);
        if let Some(named) = &endpoint {
            config.endpoint = Some(named.url.clone());
            config.region = named.region.clone();
            config.force_path_style = Some(named.path_style);
        }
        let (mut sse, mut kms_key_id) = (None::<&str>, None::<String>);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value =
                percent_decode(value).ok_or_else(|| bad("malformed %-escape in a query parameter"))?;
            match key {
                "region" if !value.is_empty() => config.region = Some(value),
                "endpoint" if endpoint.is_some() => {
                    return Err(bad(
                        "the location names its endpoint already; drop endpoint= (or use s3://bucket/prefix?endpoint=…)",
                    ));
                }
                "endpoint" if !value.is_empty() => {
                    let Some(authority) =
                        value.strip_prefix("http://").or_else(|| value.strip_prefix("https://"))
                    else {
                        return Err(bad("endpoint must be an http:// or https:// URL"));
                    };
                    if authority.split('/').next().is_some_and(|host| host.contains('@')) {
                        return Err(bad(CREDENTIALS_ELSEWHERE));
                    }
                    config.endpoint = Some(value);
                }
                "path_style" => {
                    config.force_path_style = Some(match value.as_str() {
                        "true" | "1" | "yes" | "" => true,
                        "false" | "0" | "no" => false,
                        _ => return Err(bad("path_style must be true or false")),
                    })
                }
                "storage_class" | "pack_storage_class" if !value.is_empty() => {
                    let class = parse_storage_class(&value).map_err(|r| bad(&format!("{key}: {r}")))?;
                    if key == "storage_class" {
                        config.storage_class = Some(class);
                    } else {
                        config.pack_storage_class = Some(class);
                    }
                }
                "sse" if !value.is_empty() => {
                    sse = Some(match value.as_str() {
                        "AES256" | "aes256" => "AES256",
                        "aws:kms" => "aws:kms",
                        _ => return Err(bad(&format!("sse must be AES256 or aws:kms, not {value:?}"))),
                    })
                }
                "sse_kms_key_id" if !value.is_empty() => kms_key_id = Some(value),
                "object_lock" if !value.is_empty() => {
                    config.object_lock = Some(parse_object_lock(&value).map_err(|r| bad(&r))?);
                }
                "region" | "endpoint" | "storage_class" | "pack_storage_class" | "sse" | "sse_kms_key_id"
                | "object_lock" => return Err(bad(&format!("{key} needs a value"))),
                _ => {
                    return Err(bad(&format!(
                        "unknown parameter {key:?} (known: {})",
                        QUERY_PARAMETERS.join(", ")
                    )));
                }
            }
        }
        config.sse = match (sse, kms_key_id) {
            (None, None) => None,
            (Some("aws:kms"), key_id) => Some(Sse::Kms { key_id }),
            (Some(_), None) => Some(Sse::S3),
            (_, Some(_)) => return Err(bad("sse_kms_key_id needs sse=aws:kms")),
        };
        Ok(config)
    }

    /// `s3://bucket/prefix`: what users see; never holds credentials.
    pub fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// Checks the numbers S3 imposes.
    pub(crate) fn validate(&self) -> Result<(), S3Error> {
        let bad = |reason: String| S3Error::InvalidConfig { location: self.location(), reason };
        if self.bucket.is_empty() {
            return Err(bad("the bucket name is empty".into()));
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(bad(format!(
                "part size {} is outside S3's limits ({MIN_PART_SIZE}..={MAX_PART_SIZE} bytes)",
                self.part_size
            )));
        }
        if self.multipart_threshold > MAX_PART_SIZE {
            return Err(bad(format!(
                "multipart threshold {} exceeds S3's largest single PUT ({MAX_PART_SIZE} bytes)",
                self.multipart_threshold
            )));
        }
        if self.max_concurrency == 0 {
            return Err(bad("max_concurrency must be at least 1".into()));
        }
        Ok(())
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("force_path_style", &self.force_path_style)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field("max_concurrency", &self.max_concurrency)
            .field("credentials", &self.credentials)
            .field("storage_class", &self.storage_class)
            .field("pack_storage_class", &self.pack_storage_class)
            .field("sse", &self.sse)
            .field("object_lock", &self.object_lock)
            .finish()
    }
}

/// A static access key. Its `Debug` output shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl S3Credentials {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        S3Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field("session_token", &self.session_token.as_ref().map(|_| "** redacted **"))
            .finish()
    }
}

/// The query parameters [`S3Config::from_url`] knows.
const QUERY_PARAMETERS: &[&str] = &[
    "region",
    "endpoint",
    "path_style",
    "storage_class",
    "pack_storage_class",
    "sse",
    "sse_kms_key_id",
    "object_lock",
];

fn parse_storage_class(value: &str) -> Result<String, String> {
    let class = value.to_ascii_uppercase();
    if STORAGE_CLASSES.contains(&class.as_str()) {
        return Ok(class);
    }
    if class == "GLACIER" || class == "DEEP_ARCHIVE" {
        return Err(format!(
            "{class} objects cannot be read without a restore request, and cairn reads index files \
             on every backup and packs on restore and check; use GLACIER_IR"
        ));
    }
    Err(format!("unknown storage class {value:?} (known: {})", STORAGE_CLASSES.join(", ")))
}

/// `GOVERNANCE:30d` → governance mode, 30 days.
fn parse_object_lock(value: &str) -> Result<ObjectLock, String> {
    const FORMAT: &str =
        "object_lock must be GOVERNANCE:<duration> or COMPLIANCE:<duration>, e.g. GOVERNANCE:30d";
    let (mode, duration) = value.split_once(':').ok_or_else(|| FORMAT.to_string())?;
    let mode = match mode.to_ascii_uppercase().as_str() {
        "GOVERNANCE" => LockMode::Governance,
        "COMPLIANCE" => LockMode::Compliance,
        _ => return Err(format!("{FORMAT} (unknown mode {mode:?})")),
    };
    let retention = parse_retention(duration).ok_or_else(|| {
        format!(
            "object_lock: bad duration {duration:?}; use a whole number of hours, days, weeks or years \
             (36h, 30d, 4w, 1y)"
        )
    })?;
    if retention > MAX_RETENTION {
        return Err(format!("object_lock: a retention of {duration} exceeds 100 years"));
    }
    Ok(ObjectLock { mode, retention })
}

/// `36h`, `30d`, `4w`, `1y` (365 days); at least one hour.
fn parse_retention(s: &str) -> Option<Duration> {
    let unit = s.chars().last()?;
    let seconds: u64 = match unit {
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        'y' => 365 * 86_400,
        _ => return None,
    };
    let number = &s[..s.len() - 1];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = number.parse().ok().filter(|&n| n > 0)?;
    n.checked_mul(seconds).map(Duration::from_secs)
}

fn normalize_prefix(prefix: &str) -> String {
    prefix.trim_matches('/').to_string()
}

/// Why a location refuses `user:secret@`.
const CREDENTIALS_ELSEWHERE: &str = "credentials do not belong in the location; \
     set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or use an IAM role";

/// An endpoint the location itself names (restic's spellings).
struct NamedEndpoint {
    /// `scheme://host[:port]`.
    url: String,
    /// The region an AWS host names (`s3.eu-west-1.amazonaws.com`).
    region: Option<String>,
    path_style: bool,
}

/// Splits what follows `s3:` into the endpoint it names, if any, and
/// `BUCKET[/PREFIX]` (see [`S3Config::from_url`]).
fn named_endpoint(spec: &str) -> Result<(Option<NamedEndpoint>, &str), String> {
    if let Some(path) = spec.strip_prefix("//") {
        return Ok((None, path));
    }
    let (scheme, host, path) = match spec.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => {
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            (scheme, host, path)
        }
        Some((scheme, _)) => {
            return Err(format!("the endpoint must be http:// or https://, not {scheme}://"));
        }
        None => match spec.split_once('/').unwrap_or((spec, "")) {
            (host, path) if host.contains(['.', ':']) || host == "localhost" => ("https", host, path),
            _ => return Ok((None, spec)),
        },
    };
    if host.contains('@') {
        return Err(CREDENTIALS_ELSEWHERE.into());
    }
    if host.is_empty() || host.starts_with(':') || host.contains(|c: char| c.is_whitespace() || c == '\\') {
        return Err(
            "the endpoint's host is missing or malformed (s3:https://host[:port]/bucket/prefix)".into()
        );
    }
    let aws_region = (scheme == "https").then(|| aws_region(host)).flatten();
    Ok((
        Some(NamedEndpoint {
            url: format!("{scheme}://{host}"),
            path_style: aws_region.is_none(),
            region: aws_region.flatten(),
        }),
        path,
    ))
}

/// For an AWS S3 host: `Some(region)` (`None` for the global
/// `s3.amazonaws.com`); `None` for any other host.
fn aws_region(host: &str) -> Option<Option<String>> {
    let name = host.strip_suffix(".amazonaws.com")?;
    if name == "s3" {
        return Some(None);
    }
    let region = name.strip_prefix("s3.").or(name.strip_prefix("s3-"))?;
    let valid = !region.is_empty()
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then(|| Some(region.to_string()))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_prefix() {
        let c = S3Config::from_url("s3://backups/prod/cairn/").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("backups", "prod/cairn"));
        assert_eq!(c.location(), "s3://backups/prod/cairn");
        assert_eq!((c.region, c.endpoint, c.force_path_style), (None, None, None));
        assert_eq!(c.multipart_threshold, 64 << 20);
        assert_eq!(c.part_size, 16 << 20);

        let c = S3Config::from_url("s3://backups").unwrap();
        assert_eq!(c.prefix, "");
        assert_eq!(c.location(), "s3://backups");
        assert_eq!(S3Config::from_url("s3://backups/").unwrap().prefix, "");
    }

    #[test]
    fn restic_spellings_name_the_same_bucket_and_endpoint() {
        let parts = |url: &str| {
            let c = S3Config::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            (c.bucket, c.prefix, c.endpoint, c.region, c.force_path_style)
        };
        let s = |v: &str| Some(v.to_string());
        for (url, want) in [
            (
                "s3:http://127.0.0.1:7480/bucket/prod/db",
                ("bucket", "prod/db", s("http://127.0.0.1:7480"), None, Some(true)),
            ),
            ("s3:https://minio.local/bucket", ("bucket", "", s("https://minio.local"), None, Some(true))),
            (
                "s3:minio.local:9000/bucket/p/",
                ("bucket", "p", s("https://minio.local:9000"), None, Some(true)),
            ),
            ("s3:localhost/bucket/p", ("bucket", "p", s("https://localhost"), None, Some(true))),
            (
                "s3:s3.amazonaws.com/bucket/p",
                ("bucket", "p", s("https://s3.amazonaws.com"), None, Some(false)),
            ),
            (
                "s3:s3.eu-west-1.amazonaws.com/bucket/p",
                ("bucket", "p", s("https://s3.eu-west-1.amazonaws.com"), s("eu-west-1"), Some(false)),
            ),
            (
                "s3:https://s3-us-west-2.amazonaws.com/bucket",
                ("bucket", "", s("https://s3-us-west-2.amazonaws.com"), s("us-west-2"), Some(false)),
            ),
            // No host: the bucket, on the default endpoint (AWS_ENDPOINT_URL or AWS).
            ("s3:bucket/prod/db", ("bucket", "prod/db", None, None, None)),
            ("s3:bucket", ("bucket", "", None, None, None)),
            // Query parameters apply to every spelling and come last.
            ("s3:http://h:1/b/p?region=r&path_style=false", ("b", "p", s("http://h:1"), s("r"), Some(false))),
        ] {
            let want = (want.0.to_string(), want.1.to_string(), want.2, want.3, want.4);
            assert_eq!(parts(url), want, "{url}");
        }
        assert_eq!(S3Config::from_url("s3:http://h:1/b/p").unwrap().location(), "s3://b/p");
    }

    #[test]
    fn query_parameters() {
        let c = S3Config::from_url(
            "s3://b/p?region=eu-central-1&endpoint=http%3A%2F%2F127.0.0.1%3A9000&path_style=false",
        )
        .unwrap();
        assert_eq!(c.region.as_deref(), Some("eu-central-1"));
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.force_path_style, Some(false));
        assert_eq!(c.location(), "s3://b/p", "the location does not repeat the parameters");

        let c = S3Config::from_url("s3://b?endpoint=https://minio.local:9000&path_style").unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://minio.local:9000"));
        assert_eq!(c.force_path_style, Some(true));
    }

    #[test]
    fn bad_locations_are_refused_with_a_reason() {
        for (url, why) in [
            ("s3:/b", "s3://"),
            ("s3://", "bucket name is missing"),
            ("s3:///prefix", "bucket name is missing"),
            ("s3://AKIA:secret@bucket/p", "credentials"),
            ("s3:https://AKIA:secret@host/bucket", "credentials"),
            ("s3:AKIA:secret@host.example/bucket", "credentials"),
            ("s3://b?endpoint=http://AKIA:secret@127.0.0.1:9000", "credentials"),
            ("s3://b?endpoint=http%3A%2F%2Fu%3Asecret%40h", "credentials"),
            ("s3:https://host.example", "bucket name is missing (s3:https://"),
            ("s3:https://:9000/bucket", "host is missing"),
            ("s3:ftp://host/bucket", "http:// or https://"),
            ("s3:https://h:9000/b?endpoint=http://other", "names its endpoint already"),
            ("s3:my.bucket", "bucket name is missing"),
            ("s3://b?aws_session_token=secret", "unknown parameter \"aws_session_token\""),
            ("s3://b/a//c", "components"),
            ("s3://b/a/../c", "components"),
            ("s3://b?regoin=x", "unknown parameter"),
            ("s3://b?endpoint=127.0.0.1:9000", "http://"),
            ("s3://b?path_style=maybe", "path_style"),
            ("s3://b?region=", "needs a value"),
            ("s3://b?storage_class=STANDARD-IA", "unknown storage class \"STANDARD-IA\""),
            ("s3://b?pack_storage_class=GLACIER", "restore request"),
            ("s3://b?storage_class=DEEP_ARCHIVE", "GLACIER_IR"),
            ("s3://b?storage_class=", "needs a value"),
            ("s3://b?sse=KMS", "sse must be AES256 or aws:kms"),
            ("s3://b?sse=AES256&sse_kms_key_id=k", "sse_kms_key_id needs sse=aws:kms"),
            ("s3://b?sse_kms_key_id=k", "sse_kms_key_id needs sse=aws:kms"),
            ("s3://b?object_lock=30d", "GOVERNANCE:<duration>"),
            ("s3://b?object_lock=LEGAL:30d", "unknown mode"),
            ("s3://b?object_lock=GOVERNANCE:30", "bad duration"),
            ("s3://b?object_lock=GOVERNANCE:0d", "bad duration"),
            ("s3://b?object_lock=GOVERNANCE:-1d", "bad duration"),
            ("s3://b?object_lock=GOVERNANCE:30m", "bad duration"),
            ("s3://b?object_lock=COMPLIANCE:101y", "100 years"),
            ("s3://b?object_lock=COMPLIANCE:99999999999999999999d", "bad duration"),
            ("s3://b?object_locks=GOVERNANCE:1d", "known: region, endpoint, path_style, storage_class"),
        ] {
            let err = S3Config::from_url(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
            assert!(!err.contains("secret"), "{url}: the message leaks a secret: {err}");
        }
    }

    #[test]
    fn per_object_options() {
        let c = S3Config::from_url(
            "s3://b/p?storage_class=standard_ia&pack_storage_class=GLACIER_IR&sse=aws:kms\
             &sse_kms_key_id=arn%3Aaws%3Akms%3Aeu-west-1%3A1%3Akey%2Fk&object_lock=compliance:4w",
        )
        .unwrap();
        assert_eq!(c.storage_class.as_deref(), Some("STANDARD_IA"));
        assert_eq!(c.sse, Some(Sse::Kms { key_id: Some("arn:aws:kms:eu-west-1:1:key/k".into()) }));
        let lock = ObjectLock { mode: LockMode::Compliance, retention: Duration::from_secs(28 * 86_400) };
        assert_eq!(c.object_lock, Some(lock));

        // Which kind gets what.
        use FileType::*;
        let classes: Vec<_> = [Pack, Index, Snapshot, Journal, Lock, Config, Key, KeyRevocation]
            .iter()
            .map(|&k| c.storage_class_for(k))
            .collect();
        let ia = Some("STANDARD_IA");
        assert_eq!(classes, [Some("GLACIER_IR"), ia, ia, ia, None, None, None, None]);
        for kind in [Pack, Index, Snapshot, Journal, Config, Key, KeyRevocation] {
            assert_eq!(c.retention_for(kind), Some(lock), "{kind:?}");
        }
        assert_eq!(c.retention_for(Lock), None, "lock files are never retained");

        let c =
            S3Config::from_url("s3://b?pack_storage_class=ONEZONE_IA&sse=AES256&object_lock=GOVERNANCE:36h")
                .unwrap();
        assert_eq!((c.storage_class_for(Pack), c.storage_class_for(Index)), (Some("ONEZONE_IA"), None));
        assert_eq!(c.sse, Some(Sse::S3));
        assert_eq!(c.object_lock.unwrap().retention, Duration::from_secs(36 * 3600));
        assert_eq!(S3Config::from_url("s3://b?sse=aws:kms").unwrap().sse, Some(Sse::Kms { key_id: None }));

        let plain = S3Config::from_url("s3://b").unwrap();
        assert!([Pack, Lock].iter().all(|&k| plain.storage_class_for(k).is_none()));
        assert_eq!((plain.sse.as_ref(), plain.retention_for(Pack)), (None, None));
    }

    #[test]
    fn limits_are_validated() {
        let mut c = S3Config::new("b", "");
        c.validate().unwrap();
        c.part_size = 1 << 20;
        assert!(c.validate().unwrap_err().to_string().contains("part size"));
        c.part_size = MIN_PART_SIZE;
        c.max_concurrency = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut c = S3Config::new("b", "p");
        c.credentials = Some(S3Credentials {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            session_token: Some("FwoGZXIvYXdzE".into()),
        });
        let shown = format!("{c:?}");
        assert!(shown.contains("AKIAEXAMPLE"));
        assert!(!shown.contains("wJalrXUtnFEMI") && !shown.contains("FwoGZXIvYXdzE"), "{shown}");
    }
}
