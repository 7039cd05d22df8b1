//! Leases against a real DynamoDB endpoint (moto's server, started by
//! `scripts/test-servers.sh`), whose conditional writes are race-safe.

use std::time::Duration;

use cairn_dynamodb::{Lease, LeaseConfig, LeaseError};

fn config() -> LeaseConfig {
    let moto = cairn_testkit::moto();
    LeaseConfig {
        table: cairn_testkit::unique_bucket("leases"),
        region: Some(moto.region.clone()),
        endpoint: Some(moto.endpoint.clone()),
        lease: Duration::from_secs(3),
        wait: Duration::ZERO,
    }
}

async fn client(cfg: &LeaseConfig) -> aws_sdk_dynamodb::Client {
    let moto = cairn_testkit::moto();
    let creds =
        aws_credential_types::Credentials::new(&moto.access_key, &moto.secret_key, None, None, "test");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new(cfg.region.clone().unwrap()))
        .endpoint_url(cfg.endpoint.clone().unwrap())
        .credentials_provider(creds)
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&sdk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_and_tokens_grow() {
    let cfg = config();
    let c = client(&cfg).await;
    let a = Lease::acquire_with(c.clone(), &cfg, "s3://bucket/repo", "host-a/1", true).await.unwrap();
    let err = Lease::acquire_with(c.clone(), &cfg, "s3://bucket/repo", "host-b/2", true).await.unwrap_err();
    match &err {
        LeaseError::Held { owner, token, .. } => {
            assert_eq!(owner, "host-a/1");
            assert_eq!(*token, a.token());
        }
        other => panic!("expected Held, got {other}"),
    }
    assert!(err.to_string().contains("host-a/1"), "{err}");
    // Another resource is independent.
    let other = Lease::acquire_with(c.clone(), &cfg, "s3://bucket/other", "host-b/2", true).await.unwrap();
    a.check().await.unwrap();
    let first_token = a.token();
    a.release().await.unwrap();
    let b = Lease::acquire_with(c.clone(), &cfg, "s3://bucket/repo", "host-b/2", true).await.unwrap();
    assert!(b.token() > first_token, "fencing tokens grow: {} then {}", first_token, b.token());
    b.release().await.unwrap();
    other.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_lease_and_a_dead_holder_is_taken_over_and_fenced() {
    let cfg = config();
    let c = client(&cfg).await;
    // A live holder outlasts several lease periods.
    let live = Lease::acquire_with(c.clone(), &cfg, "repo-live", "live/1", true).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    live.check().await.unwrap();
    assert!(matches!(
        Lease::acquire_with(c.clone(), &cfg, "repo-live", "other/2", true).await,
        Err(LeaseError::Held { .. })
    ));
    live.release().await.unwrap();

    // A holder that stops renewing (a killed pod, a stalled process)...
    let stalled = Lease::acquire_with(c.clone(), &cfg, "repo-dead", "dead/1", false).await.unwrap();
    // ...is taken over once its lease has expired, by a waiter.
    let waiting = LeaseConfig { wait: Duration::from_secs(10), ..cfg.clone() };
    let started = std::time::Instant::now();
    let next = Lease::acquire_with(c.clone(), &waiting, "repo-dead", "next/2", true).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "took over before the lease expired");
    assert!(next.token() > stalled.token());
    // The stalled holder learns it has been fenced off before it commits.
    assert!(matches!(stalled.check().await, Err(LeaseError::Lost { .. })));
    assert!(
        matches!(stalled.release().await, Err(LeaseError::Lost { .. })),
        "cannot release someone else's lease"
    );
    next.check().await.unwrap();
    next.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_contenders_get_exactly_one_lease() {
    let cfg = config();
    let c = client(&cfg).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (c, cfg) = (c.clone(), cfg.clone());
        tasks.push(tokio::spawn(async move {
            Lease::acquire_with(c, &cfg, "raced", &format!("racer/{i}"), false).await
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let Ok(lease) = t.await.unwrap() {
            winners.push(lease);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one of 8 racers holds the lease");
}
