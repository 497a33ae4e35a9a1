//! Short-term memory (the conversation log) in DynamoDB, safe for several writers.
//!
//! One table, string keys `pk` and `sk`:
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | message `n` | `session#<session_id>` | `agent#<agent_id>#msg#<n, 20 digits>` | `seq` (N), `message` (S, Converse JSON), `created_at` (S), `expire_at` (N, optional) |
//! | state | `session#<session_id>` | `agent#<agent_id>#state` | `state` (S, JSON), `version` (N), `updated_at` (S), `expire_at` (N, optional) |
//!
//! A message is written with `attribute_not_exists(pk)`, so the second writer of index `n` gets a
//! [`StoreError::Conflict`]; the state carries a `version` checked on every write. Reads are
//! consistent `Query`s with pagination.
//!
//! Items over DynamoDB's 400 KB limit: a message whose JSON exceeds 380,000 bytes is refused
//! before any write with [`StoreError::TooLarge`], so the invocation fails with a clear error
//! and nothing is half-written. (Offloading such messages to S3 is a possible extension.)
//!
//! TTL (optional, [`DynamoDbSessionStore::with_ttl`]): every item gets `expire_at` = write time +
//! TTL, and [`DynamoDbSessionStore::create_table`] enables DynamoDB's TTL on that attribute. A
//! load re-stamps the session's items whose expiry is less than half the TTL away, so a session
//! expires a TTL after it was last used, never in the middle of use (about one `UpdateItem` per
//! item per half TTL). Reads skip items already expired but not yet deleted; a session whose
//! first message expired reads as absent.
//!
//! Ids are percent-encoded where they become key parts (`#` as `%23`, `%` as `%25`), so no id's
//! keys can fall under another id's prefix.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_core::message::Message;
use agent_core::session::{
    SessionKey, SessionState, SessionStore, StateVersion, StoreError, StoredSession,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};

use crate::strands;

/// The largest message JSON written as one item (DynamoDB's limit is 400 KB per item,
/// attribute names and keys included).
pub const MAX_MESSAGE_BYTES: usize = 380_000;

/// Sessions in a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoDbSessionStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    ttl: Option<Duration>,
}

fn backend<E, R>(what: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    crate::sdk_error(what, e)
}

fn epoch_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DynamoDbSessionStore {
    /// A store in `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            ttl: None,
        }
    }

    /// Items expire this long after they were written.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Creates the table (on-demand billing) if it does not exist, waits until it is active
    /// (at most 60 s), and enables TTL on `expire_at` when a TTL is set.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
        };
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                attribute("pk").map_err(|e| StoreError::backend("building a request", e))?,
            )
            .attribute_definitions(
                attribute("sk").map_err(|e| StoreError::backend("building a request", e))?,
            )
            .key_schema(
                key("pk", KeyType::Hash)
                    .map_err(|e| StoreError::backend("building a request", e))?,
            )
            .key_schema(
                key("sk", KeyType::Range)
                    .map_err(|e| StoreError::backend("building a request", e))?,
            )
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) => {}
            Err(e) => return Err(backend("creating the table", e)),
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await;
            let status = described
                .map_err(|e| backend("describing the table", e))?
                .table()
                .and_then(|t| t.table_status().cloned());
            if status == Some(TableStatus::Active) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::backend_message(format!(
                    "table {} not active after 60 s",
                    self.table
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.ttl.is_some() {
            let spec = TimeToLiveSpecification::builder()
                .attribute_name("expire_at")
                .enabled(true)
                .build()
                .map_err(|e| StoreError::backend("building a request", e))?;
            let result = self
                .client
                .update_time_to_live()
                .table_name(&self.table)
                .time_to_live_specification(spec)
                .send()
                .await;
            if let Err(e) = result {
                // Enabling TTL twice is refused; anything else is an error.
                let already = e
                    .as_service_error()
                    .is_some_and(|s| s.to_string().contains("already enabled"));
                if !already {
                    return Err(backend("enabling TTL", e));
                }
            }
        }
        Ok(())
    }

    /// Gives the items `sks` of a session in use a full TTL again, so a session that stays in
    /// use never loses its first messages to expiry (each item's TTL is stamped when it is
    /// written). Items deleted meanwhile are not recreated.
    async fn refresh_expiry(&self, key: &SessionKey, sks: Vec<String>) -> Result<(), StoreError> {
        let Some(expire_at) = self.expire_at() else {
            return Ok(());
        };
        let updates = sks.into_iter().map(|sk| {
            self.client
                .update_item()
                .table_name(&self.table)
                .key("pk", AttributeValue::S(pk(key)))
                .key("sk", AttributeValue::S(sk))
                .update_expression("SET expire_at = :t")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_values(":t", expire_at.clone())
                .send()
        });
        use futures::StreamExt as _;
        let mut results = futures::stream::iter(updates).buffer_unordered(16);
        while let Some(result) = results.next().await {
            match result {
                Ok(_) => {}
                // Expired and deleted in between: nothing to refresh.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) => {}
                Err(e) => return Err(backend("refreshing the session's expiry", e)),
            }
        }
        Ok(())
    }

    fn expire_at(&self) -> Option<AttributeValue> {
        self.ttl
            .map(|ttl| AttributeValue::N((epoch_seconds() + ttl.as_secs()).to_string()))
    }
}

/// An id as a part of a key: `#` separates the parts, so an id's own `#` (and `%`, the escape)
/// are percent-encoded, and no id's keys can begin with another id's prefix (agent `a#x` must
/// not show up in agent `a`'s `agent#a#` query).
pub(crate) fn key_part(id: &str) -> std::borrow::Cow<'_, str> {
    if id.contains(['#', '%']) {
        std::borrow::Cow::Owned(id.replace('%', "%25").replace('#', "%23"))
    } else {
        std::borrow::Cow::Borrowed(id)
    }
}

fn pk(key: &SessionKey) -> String {
    format!("session#{}", key_part(key.session_id()))
}

fn agent_prefix(key: &SessionKey) -> String {
    format!("agent#{}#", key_part(key.agent_id()))
}

fn message_sk(key: &SessionKey, index: usize) -> String {
    format!("agent#{}#msg#{index:020}", key_part(key.agent_id()))
}

fn state_sk(key: &SessionKey) -> String {
    format!("agent#{}#state", key_part(key.agent_id()))
}

fn string_attr<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn number_attr(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
}

#[async_trait]
impl SessionStore for DynamoDbSessionStore {
    async fn load(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        let now = epoch_seconds();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", AttributeValue::S(pk(key)))
            .expression_attribute_values(":prefix", AttributeValue::S(agent_prefix(key)))
            .into_paginator()
            .items()
            .send();
        let mut messages: Vec<(usize, Message)> = Vec::new();
        let mut state = None;
        let state_key = state_sk(key);
        // Live items whose expiry is less than half the TTL away: re-stamped below.
        let mut fading: Vec<String> = Vec::new();
        let refresh_before = self.ttl.map(|ttl| now + ttl.as_secs() / 2);
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| backend("reading the session", e))?;
            let expire_at = number_attr(&item, "expire_at");
            if expire_at.is_some_and(|t| t <= now) {
                continue;
            }
            let sk = string_attr(&item, "sk").unwrap_or_default();
            if let Some(before) = refresh_before
                && expire_at.is_none_or(|t| t < before)
            {
                fading.push(sk.to_owned());
            }
            if sk == state_key {
                let json = string_attr(&item, "state")
                    .ok_or_else(|| strands::corrupt(key, "state item without `state`".into()))?;
                let parsed: SessionState = serde_json::from_str(json)
                    .map_err(|e| strands::corrupt(key, format!("state: {e}")))?;
                let version = number_attr(&item, "version").map(|v| v.to_string());
                state = Some((parsed, StateVersion(version)));
            } else {
                let seq = number_attr(&item, "seq")
                    .ok_or_else(|| strands::corrupt(key, format!("{sk} without `seq`")))?;
                let json = string_attr(&item, "message")
                    .ok_or_else(|| strands::corrupt(key, format!("{sk} without `message`")))?;
                let message: Message = serde_json::from_str(json)
                    .map_err(|e| strands::corrupt(key, format!("{sk}: {e}")))?;
                messages.push((seq as usize, message));
            }
        }
        if messages.is_empty() && state.is_none() {
            return Ok(None);
        }
        if self.ttl.is_some() && messages.first().is_some_and(|(i, _)| *i != 0) {
            // The start of the conversation expired: the session as a whole has.
            return Ok(None);
        }
        strands::check_contiguous(key, &messages.iter().map(|(i, _)| *i).collect::<Vec<_>>())?;
        if !fading.is_empty() {
            self.refresh_expiry(key, fading).await?;
        }
        let (state, state_version) = state.unwrap_or_default();
        Ok(Some(StoredSession {
            messages: messages.into_iter().map(|(_, m)| m).collect(),
            state,
            state_version,
        }))
    }

    async fn append(
        &self,
        key: &SessionKey,
        expected_len: usize,
        messages: &[Message],
    ) -> Result<(), StoreError> {
        // Check every size first, so a too-large message writes nothing at all.
        let encoded: Vec<String> = messages
            .iter()
            .map(|m| {
                serde_json::to_string(m).map_err(|e| StoreError::backend("building a request", e))
            })
            .collect::<Result<_, _>>()?;
        if let Some(big) = encoded.iter().find(|j| j.len() > MAX_MESSAGE_BYTES) {
            return Err(StoreError::TooLarge {
                session_id: key.session_id().to_string(),
                bytes: big.len(),
                limit: MAX_MESSAGE_BYTES,
            });
        }
        for (i, json) in encoded.into_iter().enumerate() {
            let index = expected_len + i;
            let created_at = strands::now();
            let mut put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", AttributeValue::S(pk(key)))
                .item("sk", AttributeValue::S(message_sk(key, index)))
                .item("seq", AttributeValue::N(index.to_string()))
                .item("message", AttributeValue::S(json.clone()))
                .item("created_at", AttributeValue::S(created_at.clone()))
                .condition_expression("attribute_not_exists(pk)");
            if let Some(t) = self.expire_at() {
                put = put.item("expire_at", t);
            }
            match put.send().await {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                {
                    // The SDK retries a request whose response was lost; if the first attempt
                    // landed, the retry fails its own condition. Then the item is exactly ours
                    // (same message, same timestamp) and the write succeeded.
                    let stored = self
                        .client
                        .get_item()
                        .table_name(&self.table)
                        .key("pk", AttributeValue::S(pk(key)))
                        .key("sk", AttributeValue::S(message_sk(key, index)))
                        .consistent_read(true)
                        .send()
                        .await
                        .map_err(|e| backend("reading a message back", e))?;
                    let ours = stored.item().is_some_and(|item| {
                        string_attr(item, "message") == Some(json.as_str())
                            && string_attr(item, "created_at") == Some(created_at.as_str())
                    });
                    if !ours {
                        return Err(strands::conflict(
                            key,
                            format!("message {index} was written by another writer"),
                        ));
                    }
                }
                Err(e) => return Err(backend("writing a message", e)),
            }
        }
        Ok(())
    }

    async fn save_state(
        &self,
        key: &SessionKey,
        state: &SessionState,
        expected: &StateVersion,
    ) -> Result<StateVersion, StoreError> {
        let current: u64 = match &expected.0 {
            None => 0,
            Some(v) => v.parse().map_err(|_| {
                strands::conflict(key, format!("`{v}` is not a DynamoDB state version"))
            })?,
        };
        let next = current + 1;
        let json = serde_json::to_string(state)
            .map_err(|e| StoreError::backend("building a request", e))?;
        let updated_at = strands::now();
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(pk(key)))
            .item("sk", AttributeValue::S(state_sk(key)))
            .item("state", AttributeValue::S(json.clone()))
            .item("version", AttributeValue::N(next.to_string()))
            .item("updated_at", AttributeValue::S(updated_at.clone()));
        put = if expected.0.is_none() {
            put.condition_expression("attribute_not_exists(pk)")
        } else {
            put.condition_expression("#v = :v")
                .expression_attribute_names("#v", "version")
                .expression_attribute_values(":v", AttributeValue::N(current.to_string()))
        };
        if let Some(t) = self.expire_at() {
            put = put.item("expire_at", t);
        }
        match put.send().await {
            Ok(_) => Ok(StateVersion(Some(next.to_string()))),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                // A retried request whose first attempt landed: the item is exactly ours.
                let stored = self
                    .client
                    .get_item()
                    .table_name(&self.table)
                    .key("pk", AttributeValue::S(pk(key)))
                    .key("sk", AttributeValue::S(state_sk(key)))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| backend("reading the state back", e))?;
                let next_text = next.to_string();
                let ours = stored.item().is_some_and(|item| {
                    string_attr(item, "state") == Some(json.as_str())
                        && string_attr(item, "updated_at") == Some(updated_at.as_str())
                        && item.get("version").and_then(|v| v.as_n().ok()) == Some(&next_text)
                });
                if ours {
                    return Ok(StateVersion(Some(next_text)));
                }
                Err(strands::conflict(
                    key,
                    format!("state changed since version {current} was read"),
                ))
            }
            Err(e) => Err(backend("writing the state", e)),
        }
    }
}
