//! Backups under a DynamoDB lease (`CAIRN_LOCK_TABLE`), against moto's
//! DynamoDB: a held lease stops a backup with exit code 11 and the holder
//! named; a waiting backup proceeds once it is released; a finished backup
//! leaves no lease behind.

mod common;

use std::time::Duration;

use cairn_lock_dynamodb::{Lease, LeaseConfig};
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
