//! The snapshot catalog: one DynamoDB item per snapshot and per
//! verification result, written after the snapshot (or the check) landed.
//!
//! Table layout (created on first use): partition key `pk` = the repository
//! location, sort key `sk` = `snap#<RFC 3339 time>#<snapshot id>` for
//! snapshots and `verify#<RFC 3339 time>#<snapshot id>` for verification
//! results, so one `Query` lists a repository's snapshots in time order.
//! Attributes are plain strings and numbers (see [`CatalogEntry`],
//! [`Verification`]), readable by dashboards without cairn.
//!
//! The catalog is an index, never the truth: a write failure after a backup
//! is a warning, and `cairn catalog rebuild` deletes the repository's items
//! and writes them again from the repository's snapshots.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, KeyType, WriteRequest};

#[derive(Debug, thiserror::Error)]
#[error("DynamoDB catalog table {table}: {message}")]
pub struct CatalogError {
    pub table: String,
    pub message: String,
}

/// One snapshot, as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CatalogEntry {
    pub repository: String,
    pub snapshot: String,
    /// RFC 3339.
    pub time: String,
    pub hostname: String,
    pub source_kind: String,
    pub source_name: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    /// Bytes the backup read.
    pub size: u64,
    /// New bytes it stored (compressed).
    pub added: u64,
    /// `complete`, or `partial` when some files could not be read.
    pub status: String,
}

/// One verification result (`cairn verify`, a restore drill).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verification {
    pub repository: String,
    pub snapshot: String,
    pub time: String,
    /// What verified it: `verify`, `verify-against`, `drill`.
    pub kind: String,
    pub ok: bool,
    pub detail: String,
}

/// An opened catalog table.
#[derive(Debug, Clone)]
pub struct Catalog {
    client: Client,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn list(v: &[String]) -> AttributeValue {
    AttributeValue::L(v.iter().map(|x| s(x.clone())).collect())
}

fn get_s(item: &HashMap<String, AttributeValue>, key: &str) -> String {
    item.get(key).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default()
}

fn get_n(item: &HashMap<String, AttributeValue>, key: &str) -> u64 {
    item.get(key).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn get_list(item: &HashMap<String, AttributeValue>, key: &str) -> Vec<String> {
    item.get(key)
        .and_then(|v| v.as_l().ok())
        .map(|l| l.iter().filter_map(|x| x.as_s().ok().cloned()).collect())
        .unwrap_or_default()
}

impl Catalog {
    /// Opens (creating if needed) the catalog table.
    pub async fn open(client: Client, table: &str) -> Result<Catalog, CatalogError> {
        crate::ensure_table(&client, table, &[("pk", KeyType::Hash), ("sk", KeyType::Range)])
            .await
            .map_err(|message| CatalogError { table: table.into(), message })?;
        Ok(Catalog { client, table: table.into() })
    }

    fn err<E>(&self, e: aws_sdk_dynamodb::error::SdkError<E>) -> CatalogError
    where
        E: std::fmt::Debug + aws_sdk_dynamodb::error::ProvideErrorMetadata,
    {
        CatalogError { table: self.table.clone(), message: crate::error_text(&e) }
    }

    /// Records a snapshot that has landed in the repository.
    pub async fn put_snapshot(&self, e: &CatalogEntry) -> Result<(), CatalogError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&e.repository))
            .item("sk", s(format!("snap#{}#{}", e.time, e.snapshot)))
            .item("snapshot", s(&e.snapshot))
            .item("time", s(&e.time))
            .item("hostname", s(&e.hostname))
            .item("source_kind", s(&e.source_kind))
            .item("source_name", s(&e.source_name))
            .item("paths", list(&e.paths))
            .item("tags", list(&e.tags))
            .item("size", n(e.size))
            .item("added", n(e.added))
            .item("status", s(&e.status))
            .send()
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records a verification result.
    pub async fn put_verification(&self, v: &Verification) -> Result<(), CatalogError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&v.repository))
            .item("sk", s(format!("verify#{}#{}", v.time, v.snapshot)))
            .item("snapshot", s(&v.snapshot))
            .item("time", s(&v.time))
            .item("kind", s(&v.kind))
            .item("ok", AttributeValue::Bool(v.ok))
            .item("detail", s(&v.detail))
            .send()
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every item of `repository` whose sort key starts with `prefix`, in order.
    async fn query(
        &self,
        repository: &str,
        prefix: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, CatalogError> {
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(repository))
                .expression_attribute_values(":prefix", s(prefix))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.err(e))?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(items),
            }
        }
    }

    /// The repository's snapshots, oldest first.
    pub async fn snapshots(&self, repository: &str) -> Result<Vec<CatalogEntry>, CatalogError> {
        Ok(self
            .query(repository, "snap#")
            .await?
            .iter()
            .map(|it| CatalogEntry {
                repository: repository.into(),
                snapshot: get_s(it, "snapshot"),
                time: get_s(it, "time"),
                hostname: get_s(it, "hostname"),
                source_kind: get_s(it, "source_kind"),
                source_name: get_s(it, "source_name"),
                paths: get_list(it, "paths"),
                tags: get_list(it, "tags"),
                size: get_n(it, "size"),
                added: get_n(it, "added"),
                status: get_s(it, "status"),
            })
            .collect())
    }

    /// The repository's verification results, oldest first.
    pub async fn verifications(&self, repository: &str) -> Result<Vec<Verification>, CatalogError> {
        Ok(self
            .query(repository, "verify#")
            .await?
            .iter()
            .map(|it| Verification {
                repository: repository.into(),
                snapshot: get_s(it, "snapshot"),
                time: get_s(it, "time"),
                kind: get_s(it, "kind"),
                ok: it.get("ok").and_then(|v| v.as_bool().ok()).copied().unwrap_or(false),
                detail: get_s(it, "detail"),
            })
            .collect())
    }

    /// Deletes the repository's snapshot items (not its verification
    /// history); returns how many.
    pub async fn clear_snapshots(&self, repository: &str) -> Result<usize, CatalogError> {
        let items = self.query(repository, "snap#").await?;
        for batch in items.chunks(25) {
            let requests: Vec<WriteRequest> = batch
                .iter()
                .map(|it| {
                    let key = HashMap::from([
                        ("pk".to_string(), s(repository)),
                        ("sk".to_string(), it.get("sk").cloned().unwrap_or_else(|| s(""))),
                    ]);
                    WriteRequest::builder()
                        .delete_request(DeleteRequest::builder().set_key(Some(key)).build().expect("key set"))
                        .build()
                })
                .collect();
            let mut pending = Some(HashMap::from([(self.table.clone(), requests)]));
            // BatchWriteItem may hand back what it did not process: resubmit it.
            for _ in 0..10 {
                let Some(req) = pending.take() else { break };
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(req))
                    .send()
                    .await
                    .map_err(|e| self.err(e))?;
                pending = out.unprocessed_items().filter(|u| !u.is_empty()).cloned();
            }
        }
        Ok(items.len())
    }
}
