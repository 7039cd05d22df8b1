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
//! Stores that ignore `If-None-Match` (Garage, `rclone serve s3`) or do not
//! apply it atomically cannot hold locks safely; use AWS, MinIO or Ceph RGW.

mod backend;
mod config;
mod error;

pub use backend::S3Backend;
pub use config::{MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, S3Config, S3Credentials};
pub use error::S3Error;
