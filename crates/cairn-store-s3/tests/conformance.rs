//! The S3 backend against real servers: moto (wide API coverage) and Ceph
//! RGW (real S3 semantics: signatures checked, atomic conditional writes).
//! Servers come from `cairn-testkit`, which starts them when needed; every
//! test uses a bucket of its own, so tests share the servers safely.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use cairn_store::{
    Backend, FileType, Handle, PutOptions, RetryBackend, RetryPolicy, StoreError, conformance,
};
use cairn_store_s3::{MIN_PART_SIZE, S3Backend, S3Config, S3Credentials};
use cairn_testkit::{S3Server, ServerKind};
use sha2::{Digest, Sha256};

/// A config for a fresh bucket (created by `create`) and prefix on `server`.
fn config(server: &S3Server, name: &str) -> S3Config {
    let mut config = S3Config::new(cairn_testkit::unique_bucket(name), "repos/one");
    config.region = Some(server.region.clone());
    config.endpoint = Some(server.endpoint.clone());
    // Explicit keys: nothing falls through to the provider chain (and its
    // instance-metadata lookups) in tests.
    config.credentials = Some(S3Credentials::new(&server.access_key, &server.secret_key));
    config
}

async fn backend(server: &S3Server, name: &str) -> S3Backend {
    S3Backend::new(config(server, name)).await.expect("S3 client")
}

/// A retry policy for tests: quick waits, so a throttled server costs
/// milliseconds, not seconds.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        initial_backoff: std::time::Duration::from_millis(20),
        max_backoff: std::time::Duration::from_millis(500),
        multiplier: 2.0,
    }
}

async fn runs_the_conformance_suite(server: S3Server) {
    let be = backend(&server, "conformance").await;
    conformance::run_all(&be).await;
    // The same bucket again under another prefix is another repository.
    let mut other = config(&server, "unused");
    other.bucket = be.config().bucket.clone();
    other.prefix = "repos/two".into();
    let other = S3Backend::new(other).await.unwrap();
    other.create().await.expect("a second repository beside the first");
    assert!(other.list(FileType::Snapshot).await.unwrap().is_empty());
    assert!(matches!(be.create().await, Err(StoreError::AlreadyExists { .. })));
}

async fn has_exactly_one_winner_in_a_create_new_race(server: S3Server) {
    let be = backend(&server, "race").await;
    be.create().await.unwrap();
    let be = Arc::new(be);
    // The server alone: `If-None-Match: *` must be atomic.
    conformance::create_new_race(be.clone()).await;
    // Through the retry wrapper, as cairn uses it: a server may answer a
    // conditional write racing another with a (transient) 409, which the
    // retry resolves.
    let wrapped = Arc::new(RetryBackend::new(Arc::unwrap_or_clone(be), quick_retries()));
    for _ in 0..3 {
        conformance::create_new_race(wrapped.clone()).await;
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            // xorshift: incompressible, and different at every offset.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn round_trips_a_multipart_object(server: S3Server) {
    let mut config = config(&server, "multipart");
    config.multipart_threshold = 6 << 20;
    config.part_size = MIN_PART_SIZE; // 5 MiB: 12 MiB makes parts of 5, 5 and 2 MiB
    config.max_concurrency = 2;
    let be = S3Backend::new(config).await.unwrap();
    be.create().await.unwrap();

    let data = pattern(12 << 20, 7);
    let sha: [u8; 32] = Sha256::digest(&data).into();
    let h = Handle::new(FileType::Pack, hex(&sha));
    be.put(&h, Bytes::from(data.clone()), PutOptions { sha256: Some(sha), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(be.stat(&h).await.unwrap().size, data.len() as u64);
    let back = be.get(&h, None).await.unwrap();
    assert!(back == data, "the whole object reads back unchanged");

    // The parts went up with SHA-256 checksums, in order: a server that keeps
    // them (moto does; RGW 16 predates additional checksums) reports the
    // composite, the SHA-256 of the parts' SHA-256s.
    let head = be
        .client()
        .head_object()
        .bucket(&be.config().bucket)
        .key(be.key(&h))
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    if let Some(stored) = head.checksum_sha256() {
        let mut composite = Sha256::new();
        for part in data.chunks(MIN_PART_SIZE as usize) {
            composite.update(Sha256::digest(part));
        }
        let want = base64::engine::general_purpose::STANDARD.encode(composite.finalize());
        assert_eq!(stored.trim_end_matches("-3"), want, "composite checksum on {:?}", server.kind);
    }

    // Ranges inside a part, across the part boundaries (5 MiB, 10 MiB), and the tail.
    let part = 5u64 << 20;
    let end = data.len() as u64;
    for range in [
        0..100,
        part - 10..part + 10,
        2 * part - 1..2 * part + 1,
        part - 3..2 * part + 3,
        end - 5..end,
        end..end,
    ] {
        let got = be.get(&h, Some(range.clone())).await.unwrap();
        assert!(got == data[range.start as usize..range.end as usize], "range {range:?}");
    }
    let past = be.get(&h, Some((12 << 20) - 5..(12 << 20) + 5)).await.unwrap_err();
    assert!(
        matches!(past, StoreError::ShortRead { actual, .. } if actual == 12 << 20),
        "a read past the end names the object's size: {past:?}"
    );
    let beyond = be.get(&h, Some((13 << 20)..(13 << 20) + 5)).await.unwrap_err();
    assert!(matches!(beyond, StoreError::ShortRead { .. }), "a read wholly past the end: {beyond:?}");

    let listed = be.list(FileType::Pack).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), listed[0].size), (h.name.as_str(), data.len() as u64));

    // Overwriting a multipart object with a small one, and a wrong SHA-256
    // for a multipart upload is refused before anything is sent.
    let wrong = PutOptions { sha256: Some([0; 32]), ..Default::default() };
    let err = be.put(&h, Bytes::from(pattern(7 << 20, 8)), wrong).await.unwrap_err();
    assert!(!err.is_transient() && err.to_string().contains("SHA-256"), "{err}");
    assert!(be.get(&h, None).await.unwrap() == data, "a refused upload leaves the object as it was");
    be.put(&h, Bytes::from_static(b"small"), PutOptions::default()).await.unwrap();
    assert_eq!(be.get(&h, None).await.unwrap(), &b"small"[..]);
    be.delete(&h).await.unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn missing_bucket_is_not_found(server: S3Server) {
    let be = backend(&server, "missing").await;
    let err = be.list(FileType::Snapshot).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(err.to_string().contains(&be.config().bucket), "{err}");
    assert!(be.get(&Handle::config(), None).await.unwrap_err().is_not_found());
    assert!(!be.exists(&Handle::config()).await.unwrap());
}

// ---------------------------------------------------------------- moto

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_conformance() {
    runs_the_conformance_suite(cairn_testkit::moto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_create_new_race() {
    has_exactly_one_winner_in_a_create_new_race(cairn_testkit::moto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_multipart_round_trip() {
    round_trips_a_multipart_object(cairn_testkit::moto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_missing_bucket() {
    missing_bucket_is_not_found(cairn_testkit::moto()).await;
}

// ---------------------------------------------------------------- Ceph RGW

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rgw_conformance() {
    runs_the_conformance_suite(cairn_testkit::ceph_rgw()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rgw_create_new_race() {
    has_exactly_one_winner_in_a_create_new_race(cairn_testkit::ceph_rgw()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rgw_multipart_round_trip() {
    round_trips_a_multipart_object(cairn_testkit::ceph_rgw()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rgw_missing_bucket() {
    missing_bucket_is_not_found(cairn_testkit::ceph_rgw()).await;
}

/// RGW checks signatures: a wrong secret key is a permanent permission error
/// whose message says to check the credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rgw_wrong_secret_key_is_permission_denied() {
    let server = cairn_testkit::ceph_rgw();
    assert_eq!(server.kind, ServerKind::CephRgw);
    let good = backend(&server, "wrongkey").await;
    good.create().await.unwrap();

    let mut config = good.config().clone();
    config.credentials = Some(S3Credentials::new(&server.access_key, "not-the-secret"));
    let bad = RetryBackend::new(S3Backend::new(config).await.unwrap(), quick_retries());
    for err in [
        bad.get(&Handle::config(), None).await.unwrap_err(),
        bad.put(&Handle::config(), Bytes::from_static(b"x"), PutOptions::create_new()).await.unwrap_err(),
        bad.list(FileType::Key).await.unwrap_err(),
        bad.create().await.unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("SignatureDoesNotMatch") || msg.contains("HTTP 403"), "{msg}");
        assert!(msg.contains("AWS_ACCESS_KEY_ID"), "the message says what to check: {msg}");
    }

    let mut config = good.config().clone();
    config.credentials = Some(S3Credentials::new("AKIANOSUCHKEY", &server.secret_key));
    let unknown = S3Backend::new(config).await.unwrap();
    let err = unknown.stat(&Handle::config()).await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err:?}");
}

/// Packs are listed across their fan-out directories, by name, with sizes;
/// other types list only their own directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rgw_lists_many_packs_across_pages() {
    let be = backend(&cairn_testkit::ceph_rgw(), "listing").await;
    be.create().await.unwrap();
    // More than one ListObjectsV2 page (1000 keys).
    let names: Vec<String> = (0..1100u32).map(|i| hex(&Sha256::digest(i.to_le_bytes()))).collect();
    let be = Arc::new(be);
    let mut tasks = Vec::new();
    for chunk in names.chunks(100) {
        let (be, chunk) = (be.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for name in chunk {
                let len = 1 + name.as_bytes()[0] as usize % 7;
                be.put(&Handle::new(FileType::Pack, name), Bytes::from(vec![1; len]), PutOptions::default())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    be.put(&Handle::new(FileType::Index, "ee".repeat(32)), Bytes::from_static(b"i"), PutOptions::default())
        .await
        .unwrap();
    let mut listed = be.list(FileType::Pack).await.unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    let mut want = names.clone();
    want.sort();
    assert_eq!(listed.iter().map(|o| o.name.clone()).collect::<Vec<_>>(), want);
    assert!(listed.iter().all(|o| o.size == 1 + o.name.as_bytes()[0] as u64 % 7));
    assert_eq!(be.list(FileType::Index).await.unwrap().len(), 1);
}
