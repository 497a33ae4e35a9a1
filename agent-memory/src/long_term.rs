//! Long-term memory records in DynamoDB.
//!
//! Items live in the session table's key schema (`pk`, `sk` strings), in their own partition per
//! actor: `pk` = `actor#<actor_id>`, `sk` = `mem#<namespace>#<id>`, attributes `content`,
//! `created_at`, `updated_at` (N, epoch seconds). `list` is a paginated consistent `Query`;
//! `search` ranks the actor's records with BM25 keyword scoring (DynamoDB has no text search).

use crate::dynamodb::key_part;
use std::collections::HashMap;

use agent_core::memory::{MemoryError, MemoryRecord, MemoryStore};
use agent_core::session::validate_id;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

/// Memory records in a DynamoDB table (create it with `DynamoDbSessionStore::create_table`).
#[derive(Debug, Clone)]
pub struct DynamoDbMemoryStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoDbMemoryStore {
    /// A store in `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

/// A memory error from an SDK error: the full error context in the text, the error itself as
/// the source.
fn backend(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> MemoryError {
    let detail = aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string();
    MemoryError::backend(format!("{what}: {detail}"), e)
}

fn record_from(item: &HashMap<String, AttributeValue>, actor_id: &str) -> Option<MemoryRecord> {
    let sk = item.get("sk")?.as_s().ok()?;
    let rest = sk.strip_prefix("mem#")?;
    let (namespace, id) = rest.split_once('#')?;
    let number = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Some(MemoryRecord {
        id: id.to_owned(),
        actor_id: actor_id.to_owned(),
        namespace: namespace.to_owned(),
        content: item.get("content")?.as_s().ok()?.clone(),
        created_at: number("created_at"),
        updated_at: number("updated_at"),
    })
}

#[async_trait]
impl MemoryStore for DynamoDbMemoryStore {
    async fn put(&self, record: &MemoryRecord) -> Result<(), MemoryError> {
        validate_id("actor", &record.actor_id)?;
        validate_id("namespace", &record.namespace)?;
        validate_id("memory", &record.id)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .item(
                "pk",
                AttributeValue::S(format!("actor#{}", key_part(&record.actor_id))),
            )
            .item(
                "sk",
                AttributeValue::S(format!(
                    "mem#{}#{}",
                    key_part(&record.namespace),
                    key_part(&record.id)
                )),
            )
            .item("content", AttributeValue::S(record.content.clone()))
            .item(
                "created_at",
                AttributeValue::N(record.created_at.to_string()),
            )
            .item(
                "updated_at",
                AttributeValue::N(record.updated_at.to_string()),
            )
            .send()
            .await
            .map_err(|e| backend("writing a memory", e))?;
        Ok(())
    }

    async fn list(
        &self,
        actor_id: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<MemoryRecord>, MemoryError> {
        validate_id("actor", actor_id)?;
        if let Some(n) = namespace {
            validate_id("namespace", n)?;
        }
        let prefix = match namespace {
            Some(n) => format!("mem#{}#", key_part(n)),
            None => "mem#".to_owned(),
        };
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(
                ":pk",
                AttributeValue::S(format!("actor#{}", key_part(actor_id))),
            )
            .expression_attribute_values(":prefix", AttributeValue::S(prefix))
            .into_paginator()
            .items()
            .send();
        let mut out = Vec::new();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| backend("reading memories", e))?;
            if let Some(r) = record_from(&item, actor_id) {
                out.push(r);
            }
        }
        agent_core::memory::sort_records(&mut out);
        Ok(out)
    }

    async fn delete(&self, actor_id: &str, namespace: &str, id: &str) -> Result<bool, MemoryError> {
        validate_id("actor", actor_id)?;
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(
                "pk",
                AttributeValue::S(format!("actor#{}", key_part(actor_id))),
            )
            .key(
                "sk",
                AttributeValue::S(format!("mem#{}#{}", key_part(namespace), key_part(id))),
            )
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| backend("deleting a memory", e))?;
        Ok(out.attributes().is_some_and(|a| !a.is_empty()))
    }
}
