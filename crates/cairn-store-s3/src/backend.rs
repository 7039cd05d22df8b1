//! [`S3Backend`]: the [`Backend`] trait over the AWS SDK's S3 client.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use aws_sdk_s3::types::{
    BucketLocationConstraint, ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart,
    CreateBucketConfiguration, ObjectLockEnabled, ObjectLockMode, ObjectLockRetention,
    ObjectLockRetentionMode, ServerSideEncryption, StorageClass,
};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use cairn_store::{
    Backend, FileType, Handle, JOURNAL_ROOT, JOURNALS_OUTSIDE_ROOT, ObjectInfo, PutMode, PutOptions,
    StoreError, journal_below_root, journal_dir,
};
use futures::{StreamExt as _, TryStreamExt as _};
use sha2::{Digest as _, Sha256};

use crate::config::{MAX_PART_SIZE, MAX_PARTS, S3Config, Sse};
use crate::error::{Class, Failure, S3Error};

/// How long to wait for a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one request may take until the response starts: this includes
/// sending the body, so it must fit the largest single request (a 64 MiB PUT
/// at ~220 KiB/s). Stalled transfers are caught sooner by the SDK's
/// stalled-stream protection; this catches a server that takes the body and
/// never answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Hash bodies at least this large off the async threads.
const HASH_OFF_THREAD: usize = 1 << 20;

/// What an upload of one object asks S3 for besides its bytes: storage
/// class, server-side encryption and Object Lock retention, as
/// [`S3Config`] decides them for the object's kind.
#[derive(Debug, Clone, Default)]
struct ObjectOptions {
    storage_class: Option<StorageClass>,
    sse: Option<ServerSideEncryption>,
    kms_key_id: Option<String>,
    lock_mode: Option<ObjectLockMode>,
    retain_until: Option<DateTime>,
}

/// A cairn repository under a prefix of an S3 bucket. See the crate docs.
#[derive(Clone)]
pub struct S3Backend {
    client: Client,
    config: S3Config,
    /// The region requests are signed for, as resolved at construction.
    region: String,
}

impl fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Backend").field("config", &self.config).field("region", &self.region).finish()
    }
}

/// A base64 `x-amz-checksum-sha256` as bytes, when it is of the whole
/// object: multipart objects report a checksum of part checksums ("…-N").
fn whole_object_sha256(checksum: &str) -> Option<[u8; 32]> {
    if checksum.contains('-') {
        return None;
    }
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, checksum).ok()?;
    <[u8; 32]>::try_from(bytes).ok()
}

impl S3Backend {
    /// The service this backend talks to: server-side copies happen only
    /// between backends with the same endpoint and region.
    fn service_id(&self) -> String {
        format!("{}|{}", self.config.endpoint.as_deref().unwrap_or("aws"), self.region)
    }

    /// Opens `s3://bucket/prefix?…` (see [`S3Config::from_url`]) with default
    /// settings and credentials from the standard AWS provider chain.
    pub async fn from_url(url: &str) -> Result<Self, S3Error> {
        S3Backend::new(S3Config::from_url(url)?).await
    }

    /// Builds the client: region, endpoint and credentials from `config`
    /// where set, else from the standard AWS chain (environment, profile,
    /// web identity/IRSA, container and instance metadata). Makes no request.
    pub async fn new(config: S3Config) -> Result<Self, S3Error> {
        config.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            // Retries happen once, above every backend, in
            // `cairn_store::RetryBackend`; SDK retries underneath would
            // multiply the attempts and hide them from its logs.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(REQUEST_TIMEOUT)
                    .build(),
            )
            // Every upload carries a SHA-256 this backend computes (or the
            // caller knew); without this the SDK would add a CRC32 of its own
            // to each request. Reads are verified against their SHA-256 names
            // by the repository layer, so the SDK need not hash them again.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        let custom_endpoint = config.endpoint.is_some()
            || ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        } else if custom_endpoint {
            // An S3-compatible store is not where instance metadata would say
            // (and most ignore the region): take it from the environment or
            // profile, else us-east-1, without asking the metadata service.
            loader = loader.region(
                RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
                    .or_else(ProfileFileRegionProvider::new())
                    .or_else(Region::from_static("us-east-1")),
            );
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(c) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                c.session_token.clone(),
                None,
                "cairn-s3-config",
            ));
        }
        let sdk = loader.load().await;
        // A profile's `endpoint_url` shows only now.
        let custom_endpoint = custom_endpoint || sdk.endpoint_url().is_some();
        let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".to_string());
        let s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .region(Region::new(region.clone()))
            .force_path_style(config.force_path_style.unwrap_or(custom_endpoint))
            .build();
        Ok(S3Backend { client: Client::from_conf(s3), config, region })
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The underlying SDK client, for callers that need more of S3.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The object key of `handle`: `<prefix>/<restic path>`.
    pub fn key(&self, handle: &Handle) -> String {
        self.under_prefix(&handle.path())
    }

    fn under_prefix(&self, path: &str) -> String {
        if self.config.prefix.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.config.prefix)
        }
    }

    /// `s3://bucket/key`, for messages.
    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.config.bucket)
    }

    /// The options an upload of a `kind` object carries. Retention runs from
    /// now, so this is called right before each upload starts.
    fn object_options(&self, kind: FileType) -> ObjectOptions {
        let lock = self.config.retention_for(kind);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        ObjectOptions {
            storage_class: self.config.storage_class_for(kind).map(StorageClass::from),
            sse: self.config.sse.as_ref().map(|s| ServerSideEncryption::from(s.header_value())),
            kms_key_id: match &self.config.sse {
                Some(Sse::Kms { key_id }) => key_id.clone(),
                _ => None,
            },
            lock_mode: lock.map(|l| ObjectLockMode::from(l.mode.as_str())),
            // Whole seconds: S3 stores no finer, and some servers parse no finer.
            retain_until: lock.map(|l| DateTime::from_secs((now + l.retention).as_secs() as i64)),
        }
    }

    /// A refused upload that asked for retention: if the bucket has no
    /// Object Lock (S3 answers a bare `InvalidRequest`), say that instead.
    async fn explain_upload_failure(
        &self,
        options: &ObjectOptions,
        failure: Failure,
        operation: &'static str,
        key: &str,
    ) -> S3Error {
        if options.lock_mode.is_some()
            && failure.code.as_deref() == Some("InvalidRequest")
            && matches!(self.check_object_lock().await, Err(S3Error::ObjectLockUnavailable { .. }))
        {
            return S3Error::ObjectLockUnavailable { bucket: self.config.bucket.clone() };
        }
        failure.into_error(operation, &self.url(key), &self.config.bucket)
    }

    fn fail<E>(
        &self,
        operation: &'static str,
        key: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> S3Error
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        Failure::from_sdk(&err).into_error(operation, &self.url(key), &self.config.bucket)
    }

    async fn head(&self, key: &str) -> Result<u64, S3Error> {
        let out = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.fail("HeadObject", key, e))?;
        Ok(out.content_length().unwrap_or(0).max(0) as u64)
    }

    async fn put_single(
        &self,
        key: &str,
        kind: FileType,
        data: Bytes,
        opts: PutOptions,
    ) -> Result<(), S3Error> {
        let sha256 = match opts.sha256 {
            Some(sum) => sum,
            None => sha256(&data).await,
        };
        let options = self.object_options(kind);
        // With retention, S3 wants an integrity checksum on the PUT (Content-MD5
        // or an additional checksum): the SHA-256 below is one, and AWS and
        // Ceph RGW accept it.
        let mut request = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(key)
            .content_length(data.len() as i64)
            .checksum_sha256(base64(&sha256))
            .set_storage_class(options.storage_class.clone())
            .set_server_side_encryption(options.sse.clone())
            .set_ssekms_key_id(options.kms_key_id.clone())
            .set_object_lock_mode(options.lock_mode.clone())
            .set_object_lock_retain_until_date(options.retain_until)
            .body(ByteStream::from(data));
        if opts.mode == PutMode::CreateNew {
            request = request.if_none_match("*");
        }
        if let Err(e) = request.send().await {
            return Err(self.explain_upload_failure(&options, Failure::from_sdk(&e), "PutObject", key).await);
        }
        Ok(())
    }

    /// Uploads `data` in parts, up to `max_concurrency` at once, each with
    /// its SHA-256, and completes the upload; aborts it on any failure so no
    /// parts linger (and cost money) in the bucket.
    async fn put_multipart(
        &self,
        key: &str,
        kind: FileType,
        data: Bytes,
        mode: PutMode,
    ) -> Result<(), S3Error> {
        let options = self.object_options(kind);
        let created = match self
            .client
            .create_multipart_upload()
            .bucket(&self.config.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .set_storage_class(options.storage_class.clone())
            .set_server_side_encryption(options.sse.clone())
            .set_ssekms_key_id(options.kms_key_id.clone())
            .set_object_lock_mode(options.lock_mode.clone())
            .set_object_lock_retain_until_date(options.retain_until)
            .send()
            .await
        {
            Ok(created) => created,
            Err(e) => {
                let failure = Failure::from_sdk(&e);
                return Err(self
                    .explain_upload_failure(&options, failure, "CreateMultipartUpload", key)
                    .await);
            }
        };
        let upload_id = created.upload_id().ok_or_else(|| S3Error::Request {
            path: self.url(key),
            operation: "CreateMultipartUpload",
            message: "the response has no upload id".into(),
        })?;
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.config.bucket.clone(),
            key: key.to_string(),
            upload_id: upload_id.to_string(),
            armed: true,
        };
        let result = self.upload_parts_and_complete(key, upload_id, data, mode, &options).await;
        if let Err(e) = &result {
            guard.armed = false;
            tracing::debug!(object = %self.url(key), error = %e, "aborting the failed multipart upload");
            if let Err(abort) = guard.abort().await
                && !matches!(abort.class, Class::NotFound)
            {
                tracing::warn!(
                    object = %self.url(key),
                    upload_id,
                    error = %abort.message,
                    "could not abort a failed multipart upload; its parts stay until a lifecycle \
                     rule (AbortIncompleteMultipartUpload) removes them"
                );
            }
        }
        guard.armed = false;
        result
    }

    async fn upload_parts_and_complete(
        &self,
        key: &str,
        upload_id: &str,
        data: Bytes,
        mode: PutMode,
        options: &ObjectOptions,
    ) -> Result<(), S3Error> {
        let len = data.len() as u64;
        // S3 allows 10,000 parts; larger objects get larger parts.
        let part_size = self.config.part_size.max(len.div_ceil(MAX_PARTS)).min(MAX_PART_SIZE);
        let count = len.div_ceil(part_size).max(1);
        let parts = (0..count).map(|i| {
            let start = (i * part_size) as usize;
            let end = ((i + 1) * part_size).min(len) as usize;
            (i as i32 + 1, data.slice(start..end))
        });
        let mut completed: Vec<CompletedPart> = futures::stream::iter(parts)
            .map(|(number, body)| self.upload_part(key, upload_id, number, body))
            .buffer_unordered(self.config.max_concurrency)
            .try_collect()
            .await?;
        completed.sort_by_key(|p| p.part_number());
        let mut request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.config.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build());
        if mode == PutMode::CreateNew {
            request = request.if_none_match("*");
        }
        let done = request.send().await.map_err(|e| self.fail("CompleteMultipartUpload", key, e))?;
        if let (Some(mode), Some(until)) = (&options.lock_mode, options.retain_until) {
            self.ensure_retention(key, done.version_id(), mode, until).await?;
        }
        Ok(())
    }

    /// Makes sure the multipart object just completed is retained. AWS
    /// applies the Object Lock headers of CreateMultipartUpload, but Ceph RGW
    /// 16 ignores them, so the object would be left unprotected: look, and
    /// set the retention explicitly where it is missing.
    async fn ensure_retention(
        &self,
        key: &str,
        version: Option<&str>,
        mode: &ObjectLockMode,
        until: DateTime,
    ) -> Result<(), S3Error> {
        let head = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(key)
            .set_version_id(version.map(str::to_owned))
            .send()
            .await
            .map_err(|e| self.fail("HeadObject", key, e))?;
        if head.object_lock_mode().is_some() && head.object_lock_retain_until_date().is_some() {
            return Ok(());
        }
        tracing::debug!(object = %self.url(key), "setting the retention the upload's headers did not");
        self.client
            .put_object_retention()
            .bucket(&self.config.bucket)
            .key(key)
            .set_version_id(version.map(str::to_owned))
            .retention(
                ObjectLockRetention::builder()
                    .mode(ObjectLockRetentionMode::from(mode.as_str()))
                    .retain_until_date(until)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.fail("PutObjectRetention", key, e))?;
        Ok(())
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<CompletedPart, S3Error> {
        let checksum = base64(&sha256(&body).await);
        let out = self
            .client
            .upload_part()
            .bucket(&self.config.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(body.len() as i64)
            .checksum_sha256(&checksum)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.fail("UploadPart", key, e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_owned))
            // Servers that predate additional checksums echo none back; the
            // one we sent is the one the part was stored under.
            .checksum_sha256(out.checksum_sha256().unwrap_or(&checksum))
            .build())
    }

    /// A read of `range` that S3 could not serve in full: name the object's
    /// real size.
    async fn short_read(&self, key: &str, range: &Range<u64>, actual: Option<u64>) -> S3Error {
        let actual = match actual {
            Some(a) => a,
            None => match self.head(key).await {
                Ok(size) => size,
                Err(e) => return e,
            },
        };
        S3Error::ShortRead { path: self.url(key), start: range.start, end: range.end, actual }
    }

    async fn get_object(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, S3Error> {
        let mut request = self.client.get_object().bucket(&self.config.bucket).key(key);
        if let Some(r) = &range {
            if r.start > r.end {
                return Err(S3Error::Request {
                    path: self.url(key),
                    operation: "GetObject",
                    message: format!("invalid range {}..{}", r.start, r.end),
                });
            }
            if r.start == r.end {
                // HTTP cannot ask for zero bytes; an empty read is valid iff it
                // is within the object.
                let size = self.head(key).await?;
                if r.end > size {
                    return Err(self.short_read(key, r, Some(size)).await);
                }
                return Ok(Bytes::new());
            }
            request = request.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) => {
                let failure = Failure::from_sdk(&e);
                if let (Class::InvalidRange, Some(r)) = (failure.class, &range) {
                    return Err(self.short_read(key, r, None).await);
                }
                return Err(failure.into_error("GetObject", &self.url(key), &self.config.bucket));
            }
        };
        let total = out.content_range().and_then(content_range_total);
        let expected = out.content_length().unwrap_or(0).max(0) as usize;
        let mut buf = BytesMut::with_capacity(expected);
        let mut body = out.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| S3Error::Transient {
                path: self.url(key),
                operation: "GetObject",
                message: format!("reading the body failed: {}", aws_sdk_s3::error::DisplayErrorContext(&e)),
            })?;
            buf.extend_from_slice(&chunk);
        }
        if let Some(r) = &range {
            let wanted = r.end - r.start;
            if (buf.len() as u64) < wanted {
                let actual = total.unwrap_or(r.start + buf.len() as u64);
                return Err(self.short_read(key, r, Some(actual)).await);
            }
            buf.truncate(wanted as usize);
        }
        Ok(buf.freeze())
    }

    /// The objects below `dir` (a prefix ending in `/`), named by their key
    /// below it: with `flat`, the whole tree; otherwise only direct children
    /// (restic keeps no subdirectories there). A key ending in `/` is a
    /// folder marker some tools create, not an object.
    async fn list_keys(&self, dir: &str, flat: bool) -> Result<Vec<ObjectInfo>, S3Error> {
        let prefix = self.under_prefix(dir);
        let mut request = self.client.list_objects_v2().bucket(&self.config.bucket).prefix(&prefix);
        if !flat {
            request = request.delimiter("/");
        }
        let mut pages = request.into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.fail("ListObjectsV2", &prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let Some(name) = key.strip_prefix(&prefix) else { continue };
                if name.is_empty() || name.ends_with('/') {
                    continue;
                }
                out.push(ObjectInfo {
                    name: name.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: object.last_modified().and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                });
            }
        }
        Ok(out)
    }

    /// Every journal's entries, named `<journal>/<entry>`: the journals
    /// outside the root, then everything one level below `cairn/journal/`.
    async fn list_journals(&self) -> Result<Vec<ObjectInfo>, S3Error> {
        let mut out = Vec::new();
        for journal in JOURNALS_OUTSIDE_ROOT {
            let entries = self.list_keys(&format!("{}/", journal_dir(journal)), false).await?;
            out.extend(
                entries.into_iter().map(|o| ObjectInfo { name: format!("{journal}/{}", o.name), ..o }),
            );
        }
        for o in self.list_keys(&format!("{JOURNAL_ROOT}/"), true).await? {
            let entry = o.name.split_once('/').filter(|(journal, entry)| {
                journal_below_root(journal) && !entry.is_empty() && !entry.contains('/')
            });
            if entry.is_some() {
                out.push(o);
            }
        }
        Ok(out)
    }

    /// Aborts the multipart uploads under this repository's prefix that
    /// were initiated before `now - older_than`; returns how many.
    ///
    /// A multipart upload that was neither completed nor aborted (the
    /// process was killed mid-upload, or its abort failed) leaves parts the
    /// bucket keeps and bills for, invisible to object listings. Uploads
    /// younger than `older_than` may belong to a backup still running
    /// elsewhere, so they are left alone; S3 reports when each began.
    pub async fn abort_abandoned_uploads(&self, older_than: Duration) -> Result<usize, S3Error> {
        let prefix = self.under_prefix("");
        let cutoff = SystemTime::now().checked_sub(older_than).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut aborted = 0;
        let (mut key_marker, mut upload_id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.config.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_id_marker.take())
                .send()
                .await
                .map_err(|e| self.fail("ListMultipartUploads", &prefix, e))?;
            for upload in page.uploads() {
                let (Some(key), Some(upload_id)) = (upload.key(), upload.upload_id()) else { continue };
                // Without a start time its age is unknown: keep it.
                let Some(initiated) = upload.initiated().and_then(|t| SystemTime::try_from(*t).ok()) else {
                    continue;
                };
                if initiated > cutoff {
                    continue;
                }
                match abort_upload(&self.client, &self.config.bucket, key, upload_id).await {
                    Ok(()) => {
                        aborted += 1;
                        tracing::info!(object = %self.url(key), upload_id, "aborted an abandoned multipart upload");
                    }
                    // Completed or aborted meanwhile by someone else: gone either way.
                    Err(f) if matches!(f.class, Class::NotFound) => {}
                    Err(f) => {
                        return Err(f.into_error(
                            "AbortMultipartUpload",
                            &self.url(key),
                            &self.config.bucket,
                        ));
                    }
                }
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(aborted);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            upload_id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && upload_id_marker.is_none() {
                // A truncated page without markers cannot be continued.
                return Ok(aborted);
            }
        }
    }

    async fn ensure_bucket(&self) -> Result<(), S3Error> {
        let bucket = &self.config.bucket;
        let url = format!("s3://{bucket}");
        let lock = self.config.object_lock.is_some();
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) if lock => return self.check_object_lock().await,
            Ok(_) => return Ok(()),
            Err(e) => {
                let failure = Failure::from_sdk(&e);
                if !matches!(failure.class, Class::NotFound | Class::NoSuchBucket) {
                    return Err(failure.into_error("HeadBucket", &url, bucket));
                }
            }
        }
        // Object Lock can only be had on a bucket created with it (or,
        // on AWS, one with versioning that enables it later); it turns on
        // versioning too.
        let mut request = self.client.create_bucket().bucket(bucket).object_lock_enabled_for_bucket(lock);
        // us-east-1 is S3's default and must not be named (AWS refuses it).
        if self.region != "us-east-1" {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => {
                tracing::info!(bucket = %bucket, region = %self.region, object_lock = lock, "created S3 bucket");
                Ok(())
            }
            // Another `cairn init` created it meanwhile (perhaps without Object Lock).
            Err(e) if e.as_service_error().is_some_and(|s| s.is_bucket_already_owned_by_you()) => {
                if lock {
                    self.check_object_lock().await
                } else {
                    Ok(())
                }
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_bucket_already_exists()) => {
                Err(S3Error::Request {
                    path: url,
                    operation: "CreateBucket",
                    message: "the bucket name is taken by another AWS account; choose another".into(),
                })
            }
            Err(e) => Err(Failure::from_sdk(&e).into_error("CreateBucket", &url, bucket)),
        }
    }
}

impl S3Backend {
    /// Whether the bucket has Object Lock enabled; [`S3Error::ObjectLockUnavailable`] if not.
    async fn check_object_lock(&self) -> Result<(), S3Error> {
        let bucket = &self.config.bucket;
        match self.client.get_object_lock_configuration().bucket(bucket).send().await {
            Ok(out)
                if out.object_lock_configuration().and_then(|c| c.object_lock_enabled())
                    == Some(&ObjectLockEnabled::Enabled) =>
            {
                Ok(())
            }
            Ok(_) => Err(S3Error::ObjectLockUnavailable { bucket: bucket.clone() }),
            Err(e) => {
                let failure = Failure::from_sdk(&e);
                if failure.code.as_deref() == Some("ObjectLockConfigurationNotFoundError") {
                    Err(S3Error::ObjectLockUnavailable { bucket: bucket.clone() })
                } else {
                    Err(failure.into_error("GetObjectLockConfiguration", &format!("s3://{bucket}"), bucket))
                }
            }
        }
    }

    /// Deletes every version of `key` (and its delete markers), for buckets
    /// with Object Lock, which are versioned: there a plain DeleteObject
    /// only hides the object behind a delete marker, always succeeds, and
    /// leaves every version in the bucket. Deleting versions instead makes a
    /// lock file really go, and makes S3 refuse (clearly, see
    /// [`Self::delete_version`]) to delete a retained object.
    async fn delete_all_versions(&self, key: &str) -> Result<(), S3Error> {
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.config.bucket)
                .prefix(key)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| self.fail("ListObjectVersions", key, e))?;
            // The prefix also matches longer keys; only this one counts.
            let versions =
                page.versions().iter().filter(|v| v.key() == Some(key)).filter_map(|v| v.version_id());
            let markers =
                page.delete_markers().iter().filter(|m| m.key() == Some(key)).filter_map(|m| m.version_id());
            let ids: Vec<String> = versions.chain(markers).map(str::to_owned).collect();
            for id in &ids {
                self.delete_version(key, id).await?;
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(());
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
            if key_marker.is_none() && version_marker.is_none() {
                return Ok(());
            }
        }
    }

    /// Deletes one version. S3 refuses a retained one with a bare 403
    /// AccessDenied (Ceph RGW: "forbidden by object lock"), which reads like
    /// a credentials problem; ask for its retention and say what it is.
    async fn delete_version(&self, key: &str, version: &str) -> Result<(), S3Error> {
        let bucket = &self.config.bucket;
        let err = match self.client.delete_object().bucket(bucket).key(key).version_id(version).send().await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let failure = Failure::from_sdk(&err);
        match failure.class {
            Class::NotFound => Ok(()),
            Class::AccessDenied => {
                let retention = self
                    .client
                    .get_object_retention()
                    .bucket(bucket)
                    .key(key)
                    .version_id(version)
                    .send()
                    .await
                    .ok()
                    .and_then(|out| out.retention().cloned());
                let retained = retention.as_ref().and_then(|r| {
                    let until = r.retain_until_date()?;
                    (SystemTime::try_from(*until).ok()? > SystemTime::now()).then_some((r.mode(), until))
                });
                match retained {
                    Some((mode, until)) => Err(S3Error::Retained {
                        path: self.url(key),
                        mode: mode.map(|m| m.as_str().to_owned()).unwrap_or_else(|| "unknown".into()),
                        until: until.fmt(DateTimeFormat::DateTime).unwrap_or_else(|_| until.to_string()),
                    }),
                    None => Err(failure.into_error("DeleteObject", &self.url(key), bucket)),
                }
            }
            _ => Err(failure.into_error("DeleteObject", &self.url(key), bucket)),
        }
    }
}

/// Aborts a multipart upload if the future driving it is dropped (a
/// cancelled backup) before it completed or was aborted.
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    armed: bool,
}

impl AbortOnDrop {
    async fn abort(&self) -> Result<(), Failure> {
        abort_upload(&self.client, &self.bucket, &self.key, &self.upload_id).await
    }
}

async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) -> Result<(), Failure> {
    client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| Failure::from_sdk(&e))
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (client, bucket, key, upload_id) = (
            self.client.clone(),
            self.bucket.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.upload_id),
        );
        runtime.spawn(async move {
            if let Err(e) = abort_upload(&client, &bucket, &key, &upload_id).await {
                tracing::debug!(key, upload_id, error = %e.message, "abort of a cancelled multipart upload failed");
            }
        });
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        self.config.location()
    }

    async fn create(&self) -> Result<(), StoreError> {
        self.ensure_bucket().await?;
        let key = self.key(&Handle::config());
        match self.head(&key).await {
            Ok(_) => Err(StoreError::AlreadyExists { path: self.url(&key) }),
            Err(S3Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, handle: &Handle, range: Option<Range<u64>>) -> Result<Bytes, StoreError> {
        Ok(self.get_object(&self.key(handle), range).await?)
    }

    async fn put(&self, handle: &Handle, data: Bytes, opts: PutOptions) -> Result<(), StoreError> {
        let key = self.key(handle);
        let len = data.len() as u64;
        // Create-new objects (locks, config, keys) are small; a single PUT
        // makes the condition atomic on every S3 implementation, so they go
        // whole whenever S3 allows.
        let single = len <= self.config.multipart_threshold
            || (opts.mode == PutMode::CreateNew && len <= MAX_PART_SIZE);
        if single {
            self.put_single(&key, handle.kind, data, opts).await?;
        } else {
            if let Some(expected) = opts.sha256 {
                // Parts carry their own checksums; check the caller's hash of
                // the whole here, as S3 would have for a single PUT.
                let actual = sha256(&data).await;
                if actual != expected {
                    return Err(S3Error::Request {
                        path: self.url(&key),
                        operation: "PutObject",
                        message: "the data does not match the SHA-256 given for it".into(),
                    }
                    .into());
                }
            }
            self.put_multipart(&key, handle.kind, data, opts.mode).await?;
        }
        Ok(())
    }

    fn copy_source(&self, handle: &Handle) -> Option<cairn_store::CopySource> {
        Some(cairn_store::CopySource {
            service: self.service_id(),
            bucket: self.config.bucket.clone(),
            key: self.key(handle),
        })
    }

    async fn copy_from(
        &self,
        source: &cairn_store::CopySource,
        handle: &Handle,
    ) -> Result<Option<Option<[u8; 32]>>, StoreError> {
        if source.service != self.service_id() {
            return Ok(None);
        }
        let key = self.key(handle);
        let options = self.object_options(handle.kind);
        // The copy source is `bucket/key`, URL-encoded (keys are hex and slashes here).
        let out = self
            .client
            .copy_object()
            .bucket(&self.config.bucket)
            .key(&key)
            .copy_source(format!("{}/{}", source.bucket, source.key))
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .set_storage_class(options.storage_class.clone())
            .set_server_side_encryption(options.sse.clone())
            .set_ssekms_key_id(options.kms_key_id.clone())
            .set_object_lock_mode(options.lock_mode.clone())
            .set_object_lock_retain_until_date(options.retain_until)
            .send()
            .await;
        match out {
            Ok(out) => Ok(Some(
                out.copy_object_result().and_then(|r| r.checksum_sha256()).and_then(whole_object_sha256),
            )),
            Err(e) => {
                let err = StoreError::from(self.fail("CopyObject", &key, e));
                if err.is_transient() {
                    Err(err)
                } else {
                    // No read access to the source, or no CopyObject: stream instead.
                    tracing::debug!(object = %key, error = %err, "server-side copy refused; copying through this host");
                    Ok(None)
                }
            }
        }
    }

    async fn stored_sha256(&self, handle: &Handle) -> Result<Option<[u8; 32]>, StoreError> {
        let key = self.key(handle);
        let out = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(&key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| StoreError::from(self.fail("HeadObject", &key, e)))?;
        Ok(out.checksum_sha256().and_then(whole_object_sha256))
    }

    async fn stat(&self, handle: &Handle) -> Result<ObjectInfo, StoreError> {
        let size = self.head(&self.key(handle)).await?;
        Ok(ObjectInfo { name: handle.name.clone(), size, modified: None })
    }

    async fn list(&self, kind: FileType) -> Result<Vec<ObjectInfo>, StoreError> {
        match kind {
            FileType::Config => {
                let handle = Handle::config();
                match self.stat(&handle).await {
                    Ok(info) => Ok(vec![info]),
                    Err(StoreError::NotFound { .. }) => Ok(Vec::new()),
                    Err(e) => Err(e),
                }
            }
            // Packs sit one level down (`data/ab/abcd…`); the name is the last component.
            FileType::Pack => Ok(self
                .list_keys("data/", true)
                .await?
                .into_iter()
                .map(|o| ObjectInfo { name: o.name.rsplit('/').next().unwrap_or_default().to_string(), ..o })
                .collect()),
            FileType::Journal => Ok(self.list_journals().await?),
            kind => Ok(self.list_keys(&format!("{}/", kind.dir()), false).await?),
        }
    }

    async fn clean_abandoned_uploads(&self, older_than: Duration) -> Result<usize, StoreError> {
        Ok(self.abort_abandoned_uploads(older_than).await?)
    }

    async fn delete(&self, handle: &Handle) -> Result<(), StoreError> {
        let key = self.key(handle);
        if self.config.object_lock.is_some() {
            return Ok(self.delete_all_versions(&key).await?);
        }
        match self.client.delete_object().bucket(&self.config.bucket).key(&key).send().await {
            Ok(_) => Ok(()),
            Err(e) => match self.fail("DeleteObject", &key, e) {
                // S3 answers 204 for absent keys; some compatible stores say 404.
                S3Error::NotFound { .. } => Ok(()),
                e => Err(e.into()),
            },
        }
    }
}

async fn sha256(data: &Bytes) -> [u8; 32] {
    if data.len() < HASH_OFF_THREAD {
        return Sha256::digest(data).into();
    }
    let data = data.clone();
    tokio::task::spawn_blocking(move || Sha256::digest(&data).into()).await.expect("hashing task panicked")
}

fn base64(sum: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sum)
}

/// The total size in a `Content-Range: bytes a-b/total` header.
fn content_range_total(header: &str) -> Option<u64> {
    header.rsplit_once('/')?.1.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use super::*;

    async fn backend_at(endpoint: &str, prefix: &str) -> S3Backend {
        let mut config = S3Config::new("bucket", prefix);
        config.region = Some("eu-west-1".into());
        config.endpoint = Some(endpoint.into());
        config.credentials = Some(crate::S3Credentials::new("AK", "SK"));
        S3Backend::new(config).await.unwrap()
    }

    async fn backend(prefix: &str) -> S3Backend {
        // Port 1 on loopback: nothing listens, connections are refused at once.
        backend_at("http://127.0.0.1:1", prefix).await
    }

    #[tokio::test]
    async fn keys_follow_restics_layout() {
        let be = backend("prod/cairn").await;
        let pack = Handle::new(FileType::Pack, "abcd".repeat(16));
        assert_eq!(be.key(&pack), format!("prod/cairn/data/ab/{}", "abcd".repeat(16)));
        assert_eq!(be.key(&Handle::config()), "prod/cairn/config");
        assert_eq!(be.location(), "s3://bucket/prod/cairn");
        assert_eq!(be.region(), "eu-west-1");

        let be = backend("").await;
        assert_eq!(be.key(&Handle::config()), "config", "no leading slash without a prefix");
        assert_eq!(be.key(&Handle::new(FileType::Key, "k1")), "keys/k1");
        assert_eq!(be.location(), "s3://bucket");
    }

    #[tokio::test]
    async fn refused_connections_are_transient() {
        let be = backend("p").await;
        let err = be.stat(&Handle::config()).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(err.to_string().contains("s3://bucket/p/config"), "{err}");
    }

    #[test]
    fn content_range_totals() {
        assert_eq!(content_range_total("bytes 0-9/100"), Some(100));
        assert_eq!(content_range_total("bytes */100"), Some(100));
        assert_eq!(content_range_total("bytes 0-9/*"), None);
    }

    /// Neither moto nor Ceph RGW 16 checks `x-amz-checksum-sha256`, so what
    /// goes on the wire is checked here: a loopback listener records each
    /// request's head and answers as S3 would.
    fn recording_server() -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let recorded = recorded.clone();
                std::thread::spawn(move || serve(stream, &recorded));
            }
        });
        (endpoint, heads)
    }

    fn serve(stream: std::net::TcpStream, recorded: &Mutex<Vec<String>>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        loop {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                // The request line and header names in lower case; values as sent.
                match line.split_once(':') {
                    Some((name, value)) if !head.is_empty() => {
                        head.push_str(&name.to_ascii_lowercase());
                        head.push(':');
                        head.push_str(value);
                    }
                    _ => head.push_str(&line.to_ascii_lowercase()),
                }
            }
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .unwrap_or(0);
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let request_line = head.lines().next().unwrap_or("").to_string();
            recorded.lock().unwrap().push(format!("{head}\n{}", String::from_utf8_lossy(&body)));
            let body = if request_line.starts_with("post") && !request_line.contains("uploadid=") {
                "<InitiateMultipartUploadResult><Bucket>bucket</Bucket><Key>k</Key>\
                 <UploadId>up1</UploadId></InitiateMultipartUploadResult>"
            } else if request_line.starts_with("post") {
                "<CompleteMultipartUploadResult><ETag>\"e\"</ETag></CompleteMultipartUploadResult>"
            } else {
                ""
            };
            let response =
                format!("HTTP/1.1 200 OK\r\nETag: \"e1\"\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            if out.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_upload_carries_a_sha256() {
        let (endpoint, heads) = recording_server();
        let mut be = backend_at(&endpoint, "p").await;
        be.config.multipart_threshold = 6 << 20;
        be.config.part_size = 5 << 20;
        let b64 = |d: &[u8]| base64(&Sha256::digest(d).into());

        // A single PUT with the caller's SHA-256, create-new.
        let small = Bytes::from_static(b"lock bytes");
        let given: [u8; 32] = Sha256::digest(&small).into();
        let lock = Handle::new(FileType::Lock, "ab".repeat(32));
        be.put(&lock, small.clone(), PutOptions { mode: PutMode::CreateNew, sha256: Some(given) })
            .await
            .unwrap();
        // A single PUT whose SHA-256 the backend computes.
        be.put(&Handle::config(), small.clone(), PutOptions::default()).await.unwrap();
        // A multipart upload: 11 MiB in parts of 5, 5 and 1 MiB.
        let big: Vec<u8> = (0..11u32 << 20).map(|i| (i % 251) as u8).collect();
        let pack = Handle::new(FileType::Pack, "cd".repeat(32));
        be.put(&pack, Bytes::from(big.clone()), PutOptions::default()).await.unwrap();

        let heads = heads.lock().unwrap().clone();
        let lines: Vec<&str> = heads.iter().map(|h| h.lines().next().unwrap()).collect();
        // "put /bucket/key?x-id=PutObject http/1.1" → ("put", "/bucket/key")
        let target = |i: usize| {
            let mut words = lines[i].split([' ', '?']);
            (words.next().unwrap(), words.next().unwrap())
        };
        assert_eq!(target(0), ("put", format!("/bucket/p/locks/{}", "ab".repeat(32)).as_str()));
        assert_eq!(header(&heads[0], "x-amz-checksum-sha256"), Some(b64(&small).as_str()));
        assert_eq!(header(&heads[0], "if-none-match"), Some("*"));
        assert_eq!(target(1), ("put", "/bucket/p/config"));
        assert_eq!(header(&heads[1], "x-amz-checksum-sha256"), header(&heads[0], "x-amz-checksum-sha256"));
        assert_eq!(header(&heads[1], "if-none-match"), None);

        assert_eq!(target(2), ("post", format!("/bucket/p/data/cd/{}", "cd".repeat(32)).as_str()));
        assert!(lines[2].contains("?uploads"), "{lines:?}");
        assert_eq!(header(&heads[2], "x-amz-checksum-algorithm"), Some("SHA256"));
        let mut parts: Vec<(String, Option<&str>)> = heads[3..6]
            .iter()
            .map(|h| {
                let line = h.lines().next().unwrap();
                let number = line.split("partnumber=").nth(1).unwrap().split(['&', ' ']).next().unwrap();
                (number.to_string(), header(h, "x-amz-checksum-sha256"))
            })
            .collect();
        parts.sort();
        let want: Vec<(String, String)> = [(1, 0..5 << 20), (2, 5 << 20..10 << 20), (3, 10 << 20..11 << 20)]
            .into_iter()
            .map(|(n, r)| (n.to_string(), b64(&big[r])))
            .collect();
        assert_eq!(parts, want.iter().map(|(n, s)| (n.clone(), Some(s.as_str()))).collect::<Vec<_>>());
        assert!(lines[6].starts_with("post ") && lines[6].contains("uploadid=up1"), "{lines:?}");
        // Completion names every part with its checksum, in order.
        let complete = heads[6].split_once("\n\n").map(|(_, body)| body).unwrap_or("");
        let mut at = 0;
        for (n, sum) in &want {
            let entry = format!("<PartNumber>{n}</PartNumber>");
            let found = complete[at..].find(&entry).unwrap_or_else(|| panic!("part {n} in {complete}")) + at;
            let next = complete[found..].find("</Part>").unwrap() + found;
            assert!(
                complete[at..next].contains(&format!("<ChecksumSHA256>{sum}</ChecksumSHA256>")),
                "{complete}"
            );
            at = next;
        }
        assert_eq!(heads.len(), 7, "{lines:?}");
    }

    /// Storage class, SSE and Object Lock headers go where the rules of
    /// `S3Config` send them, on single PUTs and on CreateMultipartUpload;
    /// a multipart object the server did not retain gets its retention set.
    /// (The integration tests check what the servers store: SSE-KMS and
    /// storage classes on Ceph RGW, SSE-S3 and storage classes on moto.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_carry_the_options_of_their_kind() {
        let (endpoint, heads) = recording_server();
        let mut be = backend_at(&endpoint, "p").await;
        be.config = S3Config {
            multipart_threshold: 6 << 20,
            part_size: 5 << 20,
            ..S3Config::from_url(
                "s3://bucket/p?storage_class=STANDARD_IA&pack_storage_class=GLACIER_IR&sse=aws:kms\
                 &sse_kms_key_id=key-1&object_lock=GOVERNANCE:1d",
            )
            .unwrap()
        };
        let small = Bytes::from_static(b"bytes");
        be.put(&Handle::new(FileType::Lock, "ab".repeat(32)), small.clone(), PutOptions::create_new())
            .await
            .unwrap();
        be.put(&Handle::config(), small.clone(), PutOptions::create_new()).await.unwrap();
        be.put(&Handle::new(FileType::Index, "ef".repeat(32)), small.clone(), PutOptions::default())
            .await
            .unwrap();
        let big = Bytes::from(vec![7u8; 7 << 20]);
        be.put(&Handle::new(FileType::Pack, "cd".repeat(32)), big, PutOptions::default()).await.unwrap();

        let heads = heads.lock().unwrap().clone();
        let lines: Vec<&str> = heads.iter().map(|h| h.lines().next().unwrap()).collect();
        let find = |start: &str, contains: &str| {
            heads
                .iter()
                .find(|h| h.starts_with(start) && h.lines().next().unwrap().contains(contains))
                .unwrap_or_else(|| panic!("no {start} …{contains}… in {lines:?}"))
                .as_str()
        };
        let lock = find("put ", "/locks/");
        let config = find("put ", "/p/config");
        let index = find("put ", "/index/");
        let create = find("post ", "?uploads");
        let retention = find("put ", "?retention");
        let one_day = SystemTime::now() + Duration::from_secs(86_400);
        let retained_a_day = |head: &str| {
            assert_eq!(header(head, "x-amz-object-lock-mode"), Some("GOVERNANCE"), "{head}");
            let until = header(head, "x-amz-object-lock-retain-until-date").expect("retain-until");
            let until =
                SystemTime::try_from(DateTime::from_str(until, DateTimeFormat::DateTime).unwrap()).unwrap();
            let off = until.duration_since(one_day).unwrap_or_else(|e| e.duration());
            assert!(off < Duration::from_secs(60), "retained until {until:?}, not a day from now");
        };
        for head in [lock, config, index, create] {
            assert_eq!(header(head, "x-amz-server-side-encryption"), Some("aws:kms"), "{head}");
            assert_eq!(header(head, "x-amz-server-side-encryption-aws-kms-key-id"), Some("key-1"), "{head}");
        }
        // Locks: no storage class, never retained.
        assert_eq!(header(lock, "x-amz-storage-class"), None);
        assert_eq!(header(lock, "x-amz-object-lock-mode"), None);
        assert_eq!(header(lock, "x-amz-object-lock-retain-until-date"), None);
        // config: retained, but always STANDARD.
        assert_eq!(header(config, "x-amz-storage-class"), None);
        retained_a_day(config);
        assert_eq!(header(index, "x-amz-storage-class"), Some("STANDARD_IA"));
        retained_a_day(index);
        assert_eq!(header(create, "x-amz-storage-class"), Some("GLACIER_IR"));
        retained_a_day(create);
        // The recording server's HEAD shows no retention, so it is set afterwards.
        assert!(heads.iter().any(|h| h.starts_with("head ") && h.contains("/data/cd/")), "{lines:?}");
        let body = retention.split_once("\n\n").map(|(_, b)| b).unwrap_or("");
        assert!(body.contains("<Mode>GOVERNANCE</Mode>") && body.contains("<RetainUntilDate>"), "{body}");
    }
}
