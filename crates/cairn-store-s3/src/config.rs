//! Where an S3 repository lives and how to talk to it: [`S3Config`], and
//! parsing it from an `s3://bucket/prefix?…` location.

use std::fmt;

use crate::error::S3Error;

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
        }
    }

    /// Parses `s3://bucket[/prefix][?region=R&endpoint=URL&path_style=true|false]`.
    ///
    /// Credentials are never part of the location (it is printed and
    /// logged); they come from the standard AWS provider chain.
    pub fn from_url(url: &str) -> Result<Self, S3Error> {
        let bad = |reason: &str| S3Error::InvalidUrl { url: redact(url), reason: reason.to_string() };
        let rest = url.strip_prefix("s3://").ok_or_else(|| bad("expected s3://bucket/prefix"))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.contains('@') {
            return Err(bad("credentials do not belong in the location; \
                 set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or use an IAM role"));
        }
        if bucket.is_empty() {
            return Err(bad("the bucket name is missing (s3://bucket/prefix)"));
        }
        if bucket.contains(|c: char| c.is_whitespace() || c == ':' || c == '\\') {
            return Err(bad("the bucket name contains characters S3 does not allow"));
        }
        let prefix = normalize_prefix(prefix);
        if prefix.split('/').any(|c| c.is_empty() || c == "." || c == "..") && !prefix.is_empty() {
            return Err(bad("the prefix must not contain empty, '.' or '..' components"));
        }
        let mut config = S3Config::new(bucket, prefix);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value =
                percent_decode(value).ok_or_else(|| bad("malformed %-escape in a query parameter"))?;
            match key {
                "region" if !value.is_empty() => config.region = Some(value),
                "endpoint" if !value.is_empty() => {
                    if !(value.starts_with("http://") || value.starts_with("https://")) {
                        return Err(bad("endpoint must be an http:// or https:// URL"));
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
                "region" | "endpoint" => return Err(bad(&format!("{key} needs a value"))),
                _ => {
                    return Err(bad(&format!(
                        "unknown parameter {key:?} (known: region, endpoint, path_style)"
                    )));
                }
            }
        }
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

fn normalize_prefix(prefix: &str) -> String {
    prefix.trim_matches('/').to_string()
}

/// The location for error messages, without anything that looks like a
/// secret (a `user:password@` part).
fn redact(url: &str) -> String {
    match url.strip_prefix("s3://").and_then(|rest| rest.split_once('@')) {
        Some((_, after)) => format!("s3://***@{after}"),
        None => url.to_string(),
    }
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
            ("s3://b/a//c", "components"),
            ("s3://b/a/../c", "components"),
            ("s3://b?regoin=x", "unknown parameter"),
            ("s3://b?endpoint=127.0.0.1:9000", "http://"),
            ("s3://b?path_style=maybe", "path_style"),
            ("s3://b?region=", "needs a value"),
        ] {
            let err = S3Config::from_url(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
            assert!(!err.contains("secret"), "{url}: the message leaks a secret: {err}");
        }
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
