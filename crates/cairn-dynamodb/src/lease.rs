//! Repository leases in a DynamoDB table, for teams that run many
//! CronJobs against one bucket.
//!
//! Repository lock files (restic's format) stay the lock every tool
//! understands; this lease is an extra gate in front of them with three
//! properties lock files on S3 cannot give cheaply:
//!
//! * **Atomic acquisition**: a conditional `PutItem` succeeds for exactly one
//!   contender — when no lease exists or the existing one has expired.
//! * **A lease, kept alive by a heartbeat**: the holder extends `expires_at`
//!   every third of the lease with a conditional `UpdateItem` (only while it
//!   is still the owner with its token). A killed pod stops renewing, and
//!   the next run takes over once the lease has expired: no hand-cleaning.
//! * **Fencing tokens**: every acquisition takes the next number from a
//!   per-resource counter item (`ADD`, atomic). A holder that stalled past
//!   its lease has an older token; [`Lease::check`] (and the heartbeat) tell
//!   it so, and it must stop before committing anything.
//!
//! Table layout (created on first use, on-demand billing): partition key
//! `pk` (string). The lease item is `pk = "lease#<resource>"` with `owner`,
//! `token`, `expires_at` (Unix milliseconds) and `acquired_at`; the counter
//! item is `pk = "fence#<resource>"` with `token`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, KeyType, ReturnValue};

/// Where the table is and how leases behave.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub table: String,
    /// `None`: the standard AWS chain (`AWS_REGION`, profile, metadata).
    pub region: Option<String>,
    /// A DynamoDB-compatible endpoint (local testing); `None`: AWS.
    pub endpoint: Option<String>,
    /// How long a lease lives without a heartbeat.
    pub lease: Duration,
    /// How long to wait for a held lease before giving up.
    pub wait: Duration,
}

impl LeaseConfig {
    pub fn new(table: impl Into<String>) -> LeaseConfig {
        LeaseConfig {
            table: table.into(),
            region: None,
            endpoint: None,
            lease: Duration::from_secs(60),
            wait: Duration::from_secs(0),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "{resource} is leased by {owner} (token {token}) until {expires_in_s}s from now (DynamoDB table {table}); wait, or let the lease expire if that run is dead"
    )]
    Held { resource: String, owner: String, token: u64, expires_in_s: u64, table: String },

    #[error(
        "the lease on {resource} was lost (fencing token {token} is no longer current): another run took over; stopping before anything is committed"
    )]
    Lost { resource: String, token: u64 },

    #[error(
        "the lease on {resource} (fencing token {token}) expires in {left_ms} ms, too soon to commit safely (renewals are failing?); stopping before anything is committed"
    )]
    Expiring { resource: String, token: u64, left_ms: i64 },

    #[error("DynamoDB table {table}: {message}")]
    Dynamo { table: String, message: String },
}

/// A held lease. Drop or [`Lease::release`] it when done.
#[derive(Debug)]
pub struct Lease {
    /// Who holds what, with the commit margin (a third of the lease).
    held: LeaseCheck,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

/// A handle that proves, on demand, that a [`Lease`] is still held with
/// enough time left to commit: see [`Lease::commit_check`].
#[derive(Debug, Clone)]
pub struct LeaseCheck {
    client: Client,
    table: String,
    resource: String,
    owner: String,
    token: u64,
    lost: Arc<AtomicBool>,
    /// Time the lease must still have: a third of its length.
    margin: Duration,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn dynamo_err<E>(table: &str, e: SdkError<E>) -> LeaseError
where
    E: std::fmt::Debug + aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    LeaseError::Dynamo { table: table.into(), message: crate::error_text(&e) }
}

fn is_condition_failed<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    matches!(e, SdkError::ServiceError(se) if se.err().code() == Some("ConditionalCheckFailedException"))
}

/// Creates the table if it does not exist, and waits until it is usable.
async fn ensure_table(client: &Client, table: &str) -> Result<(), LeaseError> {
    crate::ensure_table(client, table, &[("pk", KeyType::Hash)])
        .await
        .map_err(|message| LeaseError::Dynamo { table: table.into(), message })
}

impl Lease {
    /// Takes the lease on `resource` (e.g. the repository URL) for `owner`,
    /// waiting up to `config.wait` while someone else holds it, and starts
    /// the heartbeat.
    pub async fn acquire(config: &LeaseConfig, resource: &str, owner: &str) -> Result<Lease, LeaseError> {
        let client = crate::client(config.region.as_deref(), config.endpoint.as_deref()).await;
        Self::acquire_with(client, config, resource, owner, true).await
    }

    /// [`Lease::acquire`] with a given client; `heartbeat: false` is for
    /// tests that need a holder which stops renewing.
    pub async fn acquire_with(
        client: Client,
        config: &LeaseConfig,
        resource: &str,
        owner: &str,
        heartbeat: bool,
    ) -> Result<Lease, LeaseError> {
        let table = config.table.clone();
        ensure_table(&client, &table).await?;
        let deadline = std::time::Instant::now() + config.wait;
        loop {
            let token = next_token(&client, &table, resource).await?;
            let now = now_ms();
            let put = client
                .put_item()
                .table_name(&table)
                .item("pk", s(format!("lease#{resource}")))
                .item("owner", s(owner))
                .item("token", n(token))
                .item("acquired_at", n(now))
                .item("expires_at", n(now + config.lease.as_millis() as i64))
                .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
                .expression_attribute_values(":now", n(now))
                .send()
                .await;
            match put {
                Ok(_) => {
                    tracing::info!(resource, owner, token, table = %table, "DynamoDB lease acquired");
                    let lost = Arc::new(AtomicBool::new(false));
                    let mut lease = Lease {
                        held: LeaseCheck {
                            client: client.clone(),
                            table: table.clone(),
                            resource: resource.into(),
                            owner: owner.into(),
                            token,
                            lost: lost.clone(),
                            margin: config.lease / 3,
                        },
                        heartbeat: None,
                    };
                    if heartbeat {
                        lease.heartbeat = Some(tokio::spawn(heartbeat_loop(
                            client,
                            table,
                            resource.to_string(),
                            owner.to_string(),
                            token,
                            config.lease,
                            lost,
                        )));
                    }
                    return Ok(lease);
                }
                Err(e) if is_condition_failed(&e) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(held_error(&client, &table, resource).await);
                    }
                    // Jittered, so a crowd of waiters does not retry in step.
                    let pause = 500 + rand::random::<u64>() % 1000;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(dynamo_err(&table, e)),
            }
        }
    }

    /// The fencing token of this lease: larger than every earlier holder's.
    pub fn token(&self) -> u64 {
        self.held.token
    }

    /// Proves the lease is still ours and current (a strongly consistent
    /// read). An error means stop.
    pub async fn check(&self) -> Result<(), LeaseError> {
        LeaseCheck { margin: Duration::ZERO, ..self.held.clone() }.confirm().await
    }

    /// A check to run right before committing (writing a snapshot): the
    /// lease must be ours and still valid for a third of its length. Nobody
    /// can take a lease over before it expires, so a commit that starts
    /// with that much time left finishes before any other holder exists,
    /// as long as the write takes less than that (20 s of the default 60 s).
    pub fn commit_check(&self) -> LeaseCheck {
        self.held.clone()
    }

    /// Whether the heartbeat has found the lease gone.
    pub fn is_lost(&self) -> bool {
        self.held.lost.load(Ordering::Relaxed)
    }

    /// Shares the lost flag (e.g. to stop a long-running operation).
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        self.held.lost.clone()
    }

    /// Gives the lease up (only if it is still ours).
    pub async fn release(mut self) -> Result<(), LeaseError> {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        let deleted = self
            .held
            .client
            .delete_item()
            .table_name(&self.held.table)
            .key("pk", s(format!("lease#{}", self.held.resource)))
            .condition_expression("#o = :owner AND #t = :token")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#t", "token")
            .expression_attribute_values(":owner", s(&self.held.owner))
            .expression_attribute_values(":token", n(self.held.token))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Err(self.held.lost_error()),
            Err(e) => Err(dynamo_err(&self.held.table, e)),
        }
    }
}

impl LeaseCheck {
    fn lost_error(&self) -> LeaseError {
        LeaseError::Lost { resource: self.resource.clone(), token: self.token }
    }

    /// Ok when the lease is ours, current, and valid for the margin still.
    pub async fn confirm(&self) -> Result<(), LeaseError> {
        if self.lost.load(Ordering::Relaxed) {
            return Err(self.lost_error());
        }
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("lease#{}", self.resource)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| dynamo_err(&self.table, e))?;
        let now = now_ms();
        let expires_at = item.item().and_then(|it| {
            let ours = it.get("owner").and_then(|v| v.as_s().ok()) == Some(&self.owner)
                && number(it, "token") == Some(self.token as i64);
            ours.then(|| number(it, "expires_at")).flatten()
        });
        match expires_at {
            Some(t) if t - now > self.margin.as_millis() as i64 => Ok(()),
            Some(t) if t > now => Err(LeaseError::Expiring {
                resource: self.resource.clone(),
                token: self.token,
                left_ms: t - now,
            }),
            _ => {
                self.lost.store(true, Ordering::Relaxed);
                Err(self.lost_error())
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
    }
}

fn number(item: &HashMap<String, AttributeValue>, key: &str) -> Option<i64> {
    item.get(key).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

/// The next fencing token for `resource` (an atomic counter).
async fn next_token(client: &Client, table: &str, resource: &str) -> Result<u64, LeaseError> {
    let out = client
        .update_item()
        .table_name(table)
        .key("pk", s(format!("fence#{resource}")))
        .update_expression("ADD #t :one")
        .expression_attribute_names("#t", "token")
        .expression_attribute_values(":one", n(1))
        .return_values(ReturnValue::UpdatedNew)
        .send()
        .await
        .map_err(|e| dynamo_err(table, e))?;
    out.attributes().and_then(|a| number(a, "token")).map(|t| t as u64).ok_or_else(|| LeaseError::Dynamo {
        table: table.into(),
        message: "the fencing counter returned no token".into(),
    })
}

async fn held_error(client: &Client, table: &str, resource: &str) -> LeaseError {
    let item = client
        .get_item()
        .table_name(table)
        .key("pk", s(format!("lease#{resource}")))
        .consistent_read(true)
        .send()
        .await;
    let (owner, token, expires) = match item.ok().and_then(|o| o.item().cloned()) {
        Some(it) => (
            it.get("owner").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default(),
            number(&it, "token").unwrap_or(0) as u64,
            number(&it, "expires_at").unwrap_or(0),
        ),
        None => (String::from("(released meanwhile)"), 0, now_ms()),
    };
    LeaseError::Held {
        resource: resource.into(),
        owner,
        token,
        expires_in_s: ((expires - now_ms()).max(0) / 1000) as u64,
        table: table.into(),
    }
}

async fn heartbeat_loop(
    client: Client,
    table: String,
    resource: String,
    owner: String,
    token: u64,
    lease: Duration,
    lost: Arc<AtomicBool>,
) {
    let period = (lease / 3).max(Duration::from_millis(200));
    loop {
        tokio::time::sleep(period).await;
        let renewed = client
            .update_item()
            .table_name(&table)
            .key("pk", s(format!("lease#{resource}")))
            .update_expression("SET expires_at = :until")
            .condition_expression("#o = :owner AND #t = :token")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#t", "token")
            .expression_attribute_values(":owner", s(&owner))
            .expression_attribute_values(":token", n(token))
            .expression_attribute_values(":until", n(now_ms() + lease.as_millis() as i64))
            .send()
            .await;
        match renewed {
            Ok(_) => {}
            Err(e) if is_condition_failed(&e) => {
                tracing::error!(resource, token, "DynamoDB lease lost: another run holds it now");
                lost.store(true, Ordering::Relaxed);
                return;
            }
            // A transient failure: try again next period; the lease is still
            // valid until it expires.
            Err(e) => tracing::warn!(error = %dynamo_err(&table, e), "could not renew the DynamoDB lease"),
        }
    }
}
