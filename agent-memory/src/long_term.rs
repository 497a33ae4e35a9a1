//! Long-term memory records in DynamoDB.
//!
//! Items live in the session table's key schema (`pk`, `sk` strings), in their own partition per
//! actor: `pk` = `actor#<actor_id>`, `sk` = `mem#<namespace>#<id>`, attributes `content`,
//! `created_at`, `updated_at` (N, epoch seconds) and, when known, the provenance
//! `source_session` (S) and `source_message` (N), and the content's vector `embedding` (B,
//! little-endian `f32`s) with its model `embedding_model` (S). `list` is a paginated consistent
//! `Query`.
//!
//! DynamoDB has no text or vector search, so `search` ranks (BM25, fused with cosine similarity
//! when the query has a vector) over an in-process
//! [`MemoryIndex`] of the actor's records, kept between calls. Every write also adds one to the
//! actor's version counter (`sk` = `ver#memory`, attribute `v`); a search reads that counter (one
//! consistent `GetItem`) and uses the kept index when it is current, so a recall reads what it
//! returns rather than the actor's whole memory. The index is read again when another writer
//! changed the actor's memory, and at the latest after the cache's maximum age (which also
//! covers a writer that stopped between its write and the counter, or one that does not keep
//! the counter).

use crate::dynamodb::key_part;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_core::memory::{
    Embedding, MemoryError, MemoryIndex, MemoryQuery, MemoryRecord, MemorySource, MemoryStore,
    ScoredRecord,
};
use agent_core::session::validate_id;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

/// Sort key of an actor's memory version counter.
const VERSION_SK: &str = "ver#memory";

/// Actors whose index is kept by default.
pub const DEFAULT_RECALL_CACHE_ACTORS: usize = 64;

/// Age after which a kept index is read again by default, even if the counter did not move.
pub const DEFAULT_RECALL_CACHE_MAX_AGE: Duration = Duration::from_secs(300);

/// Memory records in a DynamoDB table (create it with `DynamoDbSessionStore::create_table`).
#[derive(Debug, Clone)]
pub struct DynamoDbMemoryStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    cache: Arc<Mutex<RecallCache>>,
}

#[derive(Debug, Default)]
struct RecallCache {
    actors: HashMap<String, Cached>,
    capacity: usize,
    max_age: Option<Duration>,
    tick: u64,
}

#[derive(Debug)]
struct Cached {
    /// The actor's version counter the index reflects.
    version: u64,
    index: Arc<MemoryIndex>,
    loaded: Instant,
    used: u64,
}

impl RecallCache {
    /// The kept index of `actor` if it reflects `version` and is young enough.
    fn fresh(&mut self, actor: &str, version: u64) -> Option<Arc<MemoryIndex>> {
        self.tick += 1;
        let tick = self.tick;
        let max_age = self.max_age;
        let entry = self.actors.get_mut(actor)?;
        let young = max_age.is_none_or(|age| entry.loaded.elapsed() < age);
        if entry.version != version || !young {
            return None;
        }
        entry.used = tick;
        Some(entry.index.clone())
    }

    /// Keeps an index read at `version`, unless a newer one is kept already.
    fn keep(&mut self, actor: &str, version: u64, index: Arc<MemoryIndex>) {
        if self.capacity == 0 {
            return;
        }
        if self.actors.get(actor).is_some_and(|e| e.version > version) {
            return;
        }
        if !self.actors.contains_key(actor) && self.actors.len() >= self.capacity {
            let oldest = self
                .actors
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.actors.remove(&oldest);
            }
        }
        self.tick += 1;
        self.actors.insert(
            actor.to_owned(),
            Cached {
                version,
                index,
                loaded: Instant::now(),
                used: self.tick,
            },
        );
    }

    /// After this process's write moved the counter to `version`: the change is applied to
    /// the kept index if it was exactly one behind (no other writer in between), and the index
    /// is dropped otherwise (also when the store did not answer with a counter).
    fn apply(&mut self, actor: &str, version: Option<u64>, change: impl FnOnce(&mut MemoryIndex)) {
        match (self.actors.get_mut(actor), version) {
            (Some(entry), Some(version)) if entry.version.checked_add(1) == Some(version) => {
                change(Arc::make_mut(&mut entry.index));
                entry.version = version;
            }
            (Some(_), _) => {
                self.actors.remove(actor);
            }
            (None, _) => {}
        }
    }
}

impl DynamoDbMemoryStore {
    /// A store in `table`, keeping the index of up to [`DEFAULT_RECALL_CACHE_ACTORS`] actors for
    /// at most [`DEFAULT_RECALL_CACHE_MAX_AGE`].
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            cache: Arc::default(),
        }
        .recall_cache(
            DEFAULT_RECALL_CACHE_ACTORS,
            Some(DEFAULT_RECALL_CACHE_MAX_AGE),
        )
    }

    /// Sets how many actors' indexes are kept (the least recently searched is dropped first;
    /// `0` reads the actor's records on every search) and how old a kept index may get before it
    /// is read again (`None`: only when the version counter moves). An index holds every record
    /// of its actor, so memory grows with `actors` times the largest actor's memory.
    ///
    /// The returned store starts with its own empty cache; clones of it share that cache.
    pub fn recall_cache(mut self, actors: usize, max_age: Option<Duration>) -> Self {
        self.cache = Arc::new(Mutex::new(RecallCache {
            actors: HashMap::new(),
            capacity: actors,
            max_age,
            tick: 0,
        }));
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecallCache> {
        // Every critical section leaves the cache consistent, so a poisoned lock is usable.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn actor_pk(actor_id: &str) -> AttributeValue {
        AttributeValue::S(format!("actor#{}", key_part(actor_id)))
    }

    /// The actor's version counter: 0 before the first counted write, `None` when what the
    /// store holds is not a counter (then nothing is cached for the actor).
    async fn version(&self, actor_id: &str) -> Result<Option<u64>, MemoryError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .consistent_read(true)
            .key("pk", Self::actor_pk(actor_id))
            .key("sk", AttributeValue::S(VERSION_SK.to_owned()))
            .projection_expression("v")
            .send()
            .await
            .map_err(|e| backend("reading the memory version", e))?;
        Ok(match out.item() {
            None => Some(0),
            Some(item) => counter(item),
        })
    }

    /// Adds one to the actor's version counter; the new value, `None` if the store's answer is
    /// not a counter.
    async fn bump(&self, actor_id: &str) -> Result<Option<u64>, MemoryError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", Self::actor_pk(actor_id))
            .key("sk", AttributeValue::S(VERSION_SK.to_owned()))
            .update_expression("ADD v :one")
            .expression_attribute_values(":one", AttributeValue::N("1".to_owned()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| backend("counting a memory write", e))?;
        Ok(out.attributes().and_then(counter))
    }
}

/// The version counter `v` of an item or of returned attributes.
fn counter(attributes: &HashMap<String, AttributeValue>) -> Option<u64> {
    attributes.get("v")?.as_n().ok()?.parse().ok()
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
        source: item
            .get("source_session")
            .and_then(|v| v.as_s().ok())
            .map(|session| MemorySource {
                session_id: session.clone(),
                message: item
                    .get("source_message")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse().ok()),
            }),
        embedding: embedding_from(item),
    })
}

/// The record's vector: `embedding` (B, little-endian `f32`s) of the model `embedding_model`
/// (S). A vector the store holds in another shape is ignored (the record is still read, and
/// found by its words), never an error.
fn embedding_from(item: &HashMap<String, AttributeValue>) -> Option<Embedding> {
    let model = item.get("embedding_model")?.as_s().ok()?;
    let bytes = item.get("embedding")?.as_b().ok()?.as_ref();
    if bytes.is_empty() || bytes.len() % 4 != 0 {
        return None;
    }
    let vector = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some(Embedding {
        model: model.clone(),
        vector,
    })
}

#[async_trait]
impl MemoryStore for DynamoDbMemoryStore {
    async fn put(&self, record: &MemoryRecord) -> Result<(), MemoryError> {
        validate_id("actor", &record.actor_id)?;
        validate_id("namespace", &record.namespace)?;
        validate_id("memory", &record.id)?;
        let mut item = HashMap::from([
            (
                "pk".to_owned(),
                AttributeValue::S(format!("actor#{}", key_part(&record.actor_id))),
            ),
            (
                "sk".to_owned(),
                AttributeValue::S(format!(
                    "mem#{}#{}",
                    key_part(&record.namespace),
                    key_part(&record.id)
                )),
            ),
            (
                "content".to_owned(),
                AttributeValue::S(record.content.clone()),
            ),
            (
                "created_at".to_owned(),
                AttributeValue::N(record.created_at.to_string()),
            ),
            (
                "updated_at".to_owned(),
                AttributeValue::N(record.updated_at.to_string()),
            ),
        ]);
        if let Some(source) = &record.source {
            item.insert(
                "source_session".to_owned(),
                AttributeValue::S(source.session_id.clone()),
            );
            if let Some(message) = source.message {
                item.insert(
                    "source_message".to_owned(),
                    AttributeValue::N(message.to_string()),
                );
            }
        }
        if let Some(embedding) = &record.embedding {
            let bytes: Vec<u8> = embedding
                .vector
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            item.insert(
                "embedding".to_owned(),
                AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(bytes)),
            );
            item.insert(
                "embedding_model".to_owned(),
                AttributeValue::S(embedding.model.clone()),
            );
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| backend("writing a memory", e))?;
        let version = self.bump(&record.actor_id).await?;
        let inserted = record.clone();
        self.lock()
            .apply(&record.actor_id, version, |index| index.insert(inserted));
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
        let existed = out.attributes().is_some_and(|a| !a.is_empty());
        if existed {
            let version = self.bump(actor_id).await?;
            self.lock().apply(actor_id, version, |index| {
                index.remove(namespace, id);
            });
        }
        Ok(existed)
    }

    async fn search_query(
        &self,
        actor_id: &str,
        namespace: Option<&str>,
        query: &MemoryQuery<'_>,
        limit: usize,
    ) -> Result<Vec<ScoredRecord>, MemoryError> {
        validate_id("actor", actor_id)?;
        if let Some(n) = namespace {
            validate_id("namespace", n)?;
        }
        // The counter is read before the records, so an index kept under it can only be older
        // than the records it holds, never newer.
        let version = self.version(actor_id).await?;
        let kept = version.and_then(|v| self.lock().fresh(actor_id, v));
        let index = match kept {
            Some(index) => index,
            None => {
                let index = Arc::new(MemoryIndex::from_records(self.list(actor_id, None).await?));
                // Kept only under a counter the store really holds.
                if let Some(v) = version {
                    self.lock().keep(actor_id, v, index.clone());
                }
                index
            }
        };
        Ok(index.search_query(namespace, query, limit))
    }
}
