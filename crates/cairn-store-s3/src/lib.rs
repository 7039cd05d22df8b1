//! Keeps a cairn repository in Amazon S3 or an S3-compatible store (MinIO,
//! Ceph RGW, …).
//!
//! [`S3Backend`] implements [`cairn_store::Backend`] with the official AWS
//! SDK, so credentials, regions and endpoints behave exactly as in every other
//! AWS tool: the standard provider chain (environment, profile, web
//! identity/IRSA, container and instance metadata), `AWS_REGION`,
//! `AWS_ENDPOINT_URL`. It lives in its own crate so that the SDK's large
//! dependency tree is built only by what needs S3.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_store::StoreError> {
//! use cairn_store::{Backend, RetryBackend, RetryPolicy};
//! use cairn_store_s3::S3Backend;
//!
//! let s3 = S3Backend::from_url("s3://my-backups/prod/db?region=eu-central-1").await?;
//! let repo = RetryBackend::new(s3, RetryPolicy::default());
//! repo.create().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! Objects are stored under `<prefix>/` with restic's names (`config`,
//! `keys/<id>`, `data/<id[0:2]>/<id>`, …), so `restic -r s3:…` reads the same
//! repository.
//!
//! # How the contract of [`cairn_store`] is met
//!
//! * **Atomic, durable puts**: S3 makes an object visible only once a PUT
//!   (or a multipart upload's completion) succeeded, and acknowledges only
//!   durable writes. Objects up to `multipart_threshold` (64 MiB) go in one
//!   PUT; larger ones in parallel parts of `part_size` (16 MiB).
//! * **Verified uploads**: every PUT and every part carries an
//!   `x-amz-checksum-sha256` (the caller's [`cairn_store::PutOptions::sha256`]
//!   when given, else computed here), so S3 refuses bytes damaged on the way.
//! * **Create-new**: `If-None-Match: *`; S3 answers 412 when the object
//!   exists ([`cairn_store::StoreError::AlreadyExists`]), and of racing
//!   writers exactly one wins. A 409 (a conditional write racing another) is
//!   transient: retried, it resolves to success or `AlreadyExists`.
//! * **No retries here**: the SDK's retries are off. Failures are classified
//!   ([`cairn_store::StoreError::is_transient`]) and retried once, for every
//!   backend alike, by [`cairn_store::RetryBackend`]. Wrap this backend in it.
//! * **No forgotten parts**: a failed multipart upload is aborted; one whose
//!   process was killed is aborted later, by age
//!   ([`S3Backend::abort_abandoned_uploads`], called through
//!   [`cairn_store::Backend::clean_abandoned_uploads`] when a backup starts).
//!
//! # Storage class, encryption and Object Lock
//!
//! The location's query string can ask for a storage class (for all content,
//! or packs alone), SSE-S3 or SSE-KMS, and S3 Object Lock retention; the
//! rules per object kind are [`S3Config::storage_class_for`] and
//! [`S3Config::retention_for`]. Every PUT and CreateMultipartUpload carries them. In short: locks,
//! `config` and keys stay in `STANDARD`; everything but lock files is
//! retained until *upload time + retention*. Three consequences of Object
//! Lock shape the code:
//!
//! * Object Lock buckets are versioned, and there a plain DeleteObject just
//!   adds a delete marker and succeeds while every version stays. With
//!   `object_lock=…` a delete therefore removes the key's versions one by
//!   one: lock files really go, and deleting a retained object fails with
//!   [`S3Error::Retained`] ("protected by S3 Object Lock … until …"), not a
//!   generic 403, and never with governance bypass.
//! * Ceph RGW 16 ignores the Object Lock headers of CreateMultipartUpload;
//!   after completing a multipart upload the backend checks the new version
//!   and sets the retention with PutObjectRetention where it is missing.
//! * `create` (`cairn init`) creates the bucket with Object Lock enabled, and
//!   refuses an existing bucket without it ([`S3Error::ObjectLockUnavailable`]).
//!
//! A future prune must leave retained objects alone: see `docs/DESIGN.md`,
//! section 7.
//!
//! Stores that ignore `If-None-Match` (Garage, `rclone serve s3`) or do not
//! apply it atomically cannot hold locks safely; use AWS, MinIO or Ceph RGW.

mod backend;
mod config;
mod error;

pub use backend::S3Backend;
pub use config::{
    LockMode, MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, ObjectLock, S3Config, S3Credentials, STORAGE_CLASSES,
    Sse,
};
pub use error::S3Error;
