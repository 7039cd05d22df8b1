//! Abandoned multipart uploads are aborted by age, and only under the
//! repository's prefix, against real servers (moto and Ceph RGW): an upload
//! left behind by a killed run is created with the SDK directly, as the
//! killed process would have left it.

use std::time::Duration;

use cairn_store::{Backend, RetryBackend, RetryPolicy};
use cairn_store_s3::{S3Backend, S3Config, S3Credentials};
use cairn_testkit::S3Server;

async fn backend(server: &S3Server) -> S3Backend {
    let mut config = S3Config::new(cairn_testkit::unique_bucket("abandoned"), "repos/one");
    config.region = Some(server.region.clone());
    config.endpoint = Some(server.endpoint.clone());
    config.credentials = Some(S3Credentials::new(&server.access_key, &server.secret_key));
    S3Backend::new(config).await.expect("S3 client")
}

/// Keys of the multipart uploads in progress in the backend's bucket.
async fn uploads(be: &S3Backend) -> Vec<String> {
    let out = be.client().list_multipart_uploads().bucket(&be.config().bucket).send().await.unwrap();
    let mut keys: Vec<String> = out.uploads().iter().filter_map(|u| u.key().map(str::to_owned)).collect();
    keys.sort();
    keys
}

async fn start_upload(be: &S3Backend, key: &str) {
    let created = be
        .client()
        .create_multipart_upload()
        .bucket(&be.config().bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateMultipartUpload {key}: {e:?}"));
    // One part, so the upload holds data as a real abandoned one would.
    be.client()
        .upload_part()
        .bucket(&be.config().bucket)
        .key(key)
        .upload_id(created.upload_id().unwrap())
        .part_number(1)
        .body(vec![7u8; 1024].into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("UploadPart {key}: {e:?}"));
}

/// `real_start_times`: moto reports the same start time (in 2010) for every
/// upload, so only a server that reports real ones can show that young
/// uploads are kept.
async fn aborts_only_old_uploads_under_the_prefix(server: S3Server, real_start_times: bool) {
    let be = backend(&server).await;
    be.create().await.unwrap();
    let pack = format!("repos/one/data/ab/{}", "ab".repeat(32));
    let neighbour = format!("repos/two/data/cd/{}", "cd".repeat(32));
    start_upload(&be, &pack).await;
    start_upload(&be, &neighbour).await;
    assert_eq!(uploads(&be).await, vec![pack.clone(), neighbour.clone()]);

    // Through the trait and the retry wrapper, as the CLI calls it.
    let wrapped = RetryBackend::new(be.clone(), RetryPolicy::none());
    if real_start_times {
        // Young uploads may belong to a run still under way: kept.
        assert_eq!(wrapped.clean_abandoned_uploads(Duration::from_secs(86_400)).await.unwrap(), 0);
        assert_eq!(uploads(&be).await, vec![pack.clone(), neighbour.clone()]);
        // Servers may round the start time to the second; let it be in the past.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(wrapped.clean_abandoned_uploads(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(uploads(&be).await, vec![neighbour], "only this repository's upload is aborted");
    assert_eq!(wrapped.clean_abandoned_uploads(Duration::ZERO).await.unwrap(), 0, "nothing left to abort");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_aborts_only_old_uploads_under_the_prefix() {
    aborts_only_old_uploads_under_the_prefix(cairn_testkit::moto(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceph_rgw_aborts_only_old_uploads_under_the_prefix() {
    aborts_only_old_uploads_under_the_prefix(cairn_testkit::ceph_rgw(), true).await;
}
