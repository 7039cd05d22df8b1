//! cairn's optional DynamoDB tables, for teams that run many CronJobs
//! against one bucket:
//!
//! * [`lease`]: repository leases (conditional writes, heartbeat, fencing
//!   tokens) in front of the repository's own lock files;
//! * [`catalog`]: one item per snapshot and per verification result, so
//!   dashboards and `cairn snapshots --from-catalog` need not list and
//!   decrypt the repository. The repository stays the source of truth:
//!   `cairn catalog rebuild` recreates the catalog from it.
//!
//! Credentials, region and endpoint come from the standard AWS chain
//! (`AWS_REGION`, `AWS_ENDPOINT_URL`/`AWS_ENDPOINT_URL_DYNAMODB`, profiles,
//! IRSA, instance metadata) unless given explicitly.

pub mod catalog;
pub mod lease;

pub use catalog::{Catalog, CatalogEntry, CatalogError, Verification};
pub use lease::{Lease, LeaseCheck, LeaseConfig, LeaseError};

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::Region;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};

/// A DynamoDB client: the given region and endpoint, else the AWS chain's.
pub async fn client(region: Option<&str>, endpoint: Option<&str>) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    Client::new(&loader.load().await)
}

/// Creates `table` with string keys `keys` if it does not exist (on-demand
/// billing), and waits until it is usable. Errors are one-line messages.
pub(crate) async fn ensure_table(
    client: &Client,
    table: &str,
    keys: &[(&str, KeyType)],
) -> Result<(), String> {
    let describe = |e: String| format!("describing the table: {e}");
    match client.describe_table().table_name(table).send().await {
        Ok(d) => {
            // Leases and the catalog need different keys: one table cannot serve both.
            let have: Vec<String> = d
                .table()
                .map(|t| t.key_schema().iter().map(|k| k.attribute_name().to_string()).collect())
                .unwrap_or_default();
            let want: Vec<String> = keys.iter().map(|(name, _)| name.to_string()).collect();
            if !have.is_empty() && have != want {
                return Err(format!(
                    "the table exists with key ({}) but this use needs ({}); give leases and the catalog separate tables",
                    have.join(", "),
                    want.join(", ")
                ));
            }
            return Ok(());
        }
        Err(SdkError::ServiceError(se)) if se.err().is_resource_not_found_exception() => {}
        Err(e) => return Err(describe(error_text(&e))),
    }
    let mut create = client.create_table().table_name(table).billing_mode(BillingMode::PayPerRequest);
    for (name, kind) in keys {
        create = create
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(*name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("complete attribute definition"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(*name)
                    .key_type(kind.clone())
                    .build()
                    .expect("complete key"),
            );
    }
    match create.send().await {
        Ok(_) => {}
        // Another run created it meanwhile.
        Err(SdkError::ServiceError(se)) if se.err().is_resource_in_use_exception() => {}
        Err(e) => return Err(format!("creating the table: {}", error_text(&e))),
    }
    for _ in 0..120 {
        let d =
            client.describe_table().table_name(table).send().await.map_err(|e| describe(error_text(&e)))?;
        if d.table().and_then(|t| t.table_status()).is_some_and(|st| st.as_str() == "ACTIVE") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err("the table did not become ACTIVE within 60 s".into())
}

/// The service's code and message, or the transport error, in one line.
pub(crate) fn error_text<E>(e: &SdkError<E>) -> String
where
    E: std::fmt::Debug + aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    match e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            format!("{}: {}", err.code().unwrap_or("error"), err.message().unwrap_or("no message"))
        }
        other => format!("{other:?}").chars().take(300).collect(),
    }
}
