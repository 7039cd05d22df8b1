//! cairn's DynamoDB tables against moto's DynamoDB: backups under a lease
//! (`CAIRN_LOCK_TABLE`: a held lease stops a backup with exit code 11 and
//! the holder named; a waiting backup proceeds once it is released; a
//! finished backup leaves no lease behind), and the snapshot catalog
//! (`CAIRN_CATALOG_TABLE`: written after each backup and verification,
//! read by `snapshots --from-catalog`, recreated by `catalog rebuild`).

mod common;

use std::time::Duration;

use cairn_dynamodb::{Lease, LeaseConfig, LeaseError};
use common::*;

struct Dynamo {
    table: String,
    moto: cairn_testkit::S3Server,
}

impl Dynamo {
    fn new() -> Dynamo {
        Dynamo { table: cairn_testkit::unique_bucket("cairn-leases"), moto: cairn_testkit::moto() }
    }

    fn config(&self) -> LeaseConfig {
        LeaseConfig {
            region: Some(self.moto.region.clone()),
            endpoint: Some(self.moto.endpoint.clone()),
            ..LeaseConfig::new(&self.table)
        }
    }

    async fn client(&self) -> aws_sdk_dynamodb::Client {
        let creds = aws_credential_types::Credentials::new(
            &self.moto.access_key,
            &self.moto.secret_key,
            None,
            None,
            "test",
        );
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new(self.moto.region.clone()))
            .endpoint_url(&self.moto.endpoint)
            .credentials_provider(creds)
            .load()
            .await;
        aws_sdk_dynamodb::Client::new(&sdk)
    }

    /// cairn with the lease table configured through the environment.
    fn cairn(&self, env: &Env) -> std::process::Command {
        let mut c = env.cairn_cmd();
        c.env("CAIRN_LOCK_TABLE", &self.table)
            .env("AWS_ENDPOINT_URL", &self.moto.endpoint)
            .env("AWS_ACCESS_KEY_ID", &self.moto.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.moto.secret_key)
            .env("AWS_REGION", &self.moto.region)
            .env("AWS_EC2_METADATA_DISABLED", "true");
        c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_respect_the_dynamodb_lease() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    let dynamo = Dynamo::new();
    let resource = env.repo.display().to_string();
    let client = dynamo.client().await;

    // Another run holds the repository's lease: refused, holder named, exit 11.
    let holder = Lease::acquire_with(client.clone(), &dynamo.config(), &resource, "nightly-job/42", true)
        .await
        .unwrap();
    let out = dynamo.cairn(&env).args(["backup", "volume", src.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(11), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nightly-job/42") && err.contains(&dynamo.table), "{err}");
    assert!(env.cairn_json(&["snapshots", "--json"]).as_array().unwrap().is_empty(), "nothing was written");

    // A backup allowed to wait gets the lease once the holder lets go.
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        holder.release().await.unwrap();
    });
    let mut waiting = dynamo.cairn(&env);
    waiting.env("CAIRN_LOCK_WAIT", "30s").args(["backup", "--json", "volume", src.to_str().unwrap()]);
    let out = tokio::task::spawn_blocking(move || waiting.output().unwrap()).await.unwrap();
    release.await.unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(env.cairn_json(&["snapshots", "--json"]).as_array().unwrap().len(), 1);

    // The finished backup released its lease: it can be taken at once, with a newer token.
    let after = Lease::acquire_with(client, &dynamo.config(), &resource, "check/1", false).await.unwrap();
    assert!(after.token() >= 3, "tokens: holder 1, the waiting backup's attempts, then this one");
    after.release().await.unwrap();
}

/// A run that stalled under its lease must not commit when it wakes: the
/// snapshot write asks the lease first, and refuses when it was taken over
/// or has less than a third of its length left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_lease_holder_cannot_write_a_snapshot() {
    let env = Env::new();
    env.init();
    let dynamo = Dynamo::new();
    let client = dynamo.client().await;
    let resource = env.repo.display().to_string();
    let config = LeaseConfig { lease: Duration::from_secs(6), ..dynamo.config() };
    // No heartbeat: this holder has stalled.
    let stalled = Lease::acquire_with(client.clone(), &config, &resource, "stalled/1", false).await.unwrap();
    let acquired = tokio::time::Instant::now();
    let check = stalled.commit_check();
    let backend = std::sync::Arc::new(cairn_store::LocalBackend::new(&env.repo));
    let repo = cairn_repo::Repository::open(backend, PASSWORD).await.unwrap();
    let guard = check.clone();
    repo.add_commit_check(std::sync::Arc::new(move || {
        let guard = guard.clone();
        Box::pin(async move { guard.confirm().await.map_err(|e| e.to_string()) })
    }));
    let snapshot = serde_json::json!({"time": "2026-11-23T10:00:00Z", "tree": "00", "paths": ["x"]});

    check.confirm().await.unwrap();
    // 1.2 s left of 6: still valid, but under the 2 s a commit needs.
    tokio::time::sleep_until(acquired + Duration::from_millis(4800)).await;
    let near = check.confirm().await;
    assert!(matches!(near, Err(LeaseError::Expiring { .. })), "{near:?}");
    let refused = repo.save_json(cairn_store::FileType::Snapshot, &snapshot).await;
    assert!(matches!(refused, Err(cairn_repo::RepoError::CommitRefused(_))), "{refused:?}");

    tokio::time::sleep_until(acquired + Duration::from_millis(6500)).await;
    let taker = Lease::acquire_with(client, &config, &resource, "taker/2", false).await.unwrap();
    assert!(taker.token() > stalled.token());
    let lost = check.confirm().await;
    assert!(matches!(lost, Err(LeaseError::Lost { .. })), "{lost:?}");
    let refused = repo.save_json(cairn_store::FileType::Snapshot, &snapshot).await.unwrap_err();
    assert!(refused.to_string().contains("another run took over"), "{refused}");
    assert!(repo_files(&env.repo, "snapshots").is_empty(), "a snapshot was written");
    taker.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_verifications_are_catalogued_and_rebuilt() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    let dynamo = Dynamo::new();
    let catalog_table = cairn_testkit::unique_bucket("cairn-catalog");
    // One table cannot hold both leases and the catalog: said plainly.
    let out = dynamo
        .cairn(&env)
        .env("CAIRN_CATALOG_TABLE", &dynamo.table)
        .args(["backup", "volume", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "the catalog is not the truth: the backup stands: {}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("separate tables"), "{}", describe(&out));
    let run = |args: &[&str]| {
        let out = dynamo.cairn(&env).env("CAIRN_CATALOG_TABLE", &catalog_table).args(args).output().unwrap();
        assert!(out.status.success(), "cairn {args:?}: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run(&["backup", "--json", "volume", "--tag", "nightly", src.to_str().unwrap()]);
    let second = run(&["backup", "--json", "volume", src.to_str().unwrap()]);
    let id = |out: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        v["snapshot"].as_str().unwrap().to_string()
    };
    let (a, b) = (id(&first), id(&second));

    let listed: serde_json::Value =
        serde_json::from_str(run(&["snapshots", "--from-catalog", "--json"]).trim()).unwrap();
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|e| e["snapshot"].as_str().unwrap()).collect();
    assert_eq!(ids, [a.as_str(), b.as_str()], "oldest first, as in the repository");
    assert_eq!(listed[0]["tags"][0], "nightly");
    assert_eq!(listed[0]["source_kind"], "volume");
    assert_eq!(listed[0]["status"], "complete");
    assert!(listed[0]["size"].as_u64().unwrap() > 1 << 20, "{listed}");

    // A verification lands in the catalog too.
    run(&["verify", &b]);
    let catalog = cairn_dynamodb::Catalog::open(dynamo.client().await, &catalog_table).await.unwrap();
    let repo = env.repo.display().to_string();
    let checks = catalog.verifications(&repo).await.unwrap();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert!(checks[0].ok && checks[0].snapshot == b && checks[0].kind == "verify", "{checks:?}");

    // The catalog drifts (a snapshot written without it, one item lost)...
    env.cairn_ok(&["backup", "volume", src.to_str().unwrap()]);
    catalog.clear_snapshots(&repo).await.unwrap();
    assert!(catalog.snapshots(&repo).await.unwrap().is_empty());
    // ...and is rebuilt from the repository, the source of truth.
    let rebuilt: serde_json::Value =
        serde_json::from_str(run(&["catalog", "rebuild", "--json"]).trim()).unwrap();
    assert_eq!(rebuilt["written"], 4, "{rebuilt}");
    let from_repo = env.cairn_json(&["snapshots", "--json"]);
    let repo_ids: Vec<String> =
        from_repo.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    let catalog_ids: Vec<String> =
        catalog.snapshots(&repo).await.unwrap().into_iter().map(|e| e.snapshot).collect();
    assert_eq!(catalog_ids, repo_ids);
    assert_eq!(
        catalog.verifications(&repo).await.unwrap().len(),
        1,
        "rebuild keeps the verification history"
    );
}

/// A backup waiting for a lease another run holds (`CAIRN_LOCK_WAIT`)
/// stops at once on SIGTERM: exit 143, nothing written, no lock, and the
/// holder's lease untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_backup_waiting_for_the_lease() {
    use cairn_testkit::conformance::{Running, assert_terminated, terminate};
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"a").unwrap();
    let dynamo = Dynamo::new();
    let resource = env.repo.display().to_string();
    let client = dynamo.client().await;
    let holder = Lease::acquire_with(client.clone(), &dynamo.config(), &resource, "nightly-job/7", true)
        .await
        .unwrap();
    let mut waiting = dynamo.cairn(&env);
    waiting.env("CAIRN_LOCK_WAIT", "5m").args(["backup", "volume", src.to_str().unwrap()]);
    let mut run = Running::spawn(&mut waiting);
    // Each attempt takes a fencing token: two past the holder's, it is waiting.
    let fence = || {
        let client = client.clone();
        let (table, key) = (dynamo.table.clone(), format!("fence#{resource}"));
        tokio::task::block_in_place(move || {
            tokio::runtime::Handle::current().block_on(async move {
                let item = client
                    .get_item()
                    .table_name(table)
                    .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(key))
                    .consistent_read(true)
                    .send()
                    .await
                    .unwrap();
                item.item()
                    .and_then(|i| i.get("token"))
                    .and_then(|t| t.as_n().ok())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            })
        })
    };
    run.wait_for("the backup waiting for the lease", Duration::from_secs(60), || {
        fence() >= holder.token() + 2
    });
    let t = terminate(run);
    assert_terminated("backup waiting for a lease", &t, Some(&env.repo));
    assert!(env.cairn_json(&["snapshots", "--json"]).as_array().unwrap().is_empty());
    holder.check().await.expect("the holder still holds its lease");
    holder.release().await.unwrap();
}
