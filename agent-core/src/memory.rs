//! Long-term memory: records per actor and namespace (facts, preferences, session summaries)
//! behind the [`MemoryStore`] trait, keyword search, injection into the system context before
//! model calls (never into durable history), `remember`/`recall` tools, and extraction of new
//! records from a finished invocation with consolidation of near-duplicates.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::message::{ContentBlock, Message, Role};
use crate::model::{Model, ModelRequest, ToolChoice};
use crate::session::validate_id;
use crate::tool::{BoxFuture, Tool, ToolContext, ToolError, ToolOutput, ToolSpec};

/// One remembered item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// Unique within the actor and namespace.
    pub id: String,
    /// Whose memory this is.
    pub actor_id: String,
    /// `facts`, `preferences`, `summaries`, or any name.
    pub namespace: String,
    /// The remembered text.
    pub content: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Seconds since the epoch.
    pub updated_at: u64,
}

impl MemoryRecord {
    /// A new record with a fresh id.
    pub fn new(
        actor_id: impl Into<String>,
        namespace: impl Into<String>,
        content: impl Into<String>,
    ) -> Self {
        let now = now();
        Self {
            id: format!("{now:x}-{:016x}", fastrand::u64(..)),
            actor_id: actor_id.into(),
            namespace: namespace.into(),
            content: content.into(),
            created_at: now,
            updated_at: now,
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A record with its relevance to a query.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredRecord {
    /// The record.
    pub record: MemoryRecord,
    /// Higher is more relevant.
    pub score: f64,
}

/// Why a memory operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// An actor id or namespace was refused.
    #[error(transparent)]
    InvalidId(#[from] crate::session::InvalidId),
    /// The backend failed; `source` is the backend's own error.
    #[error("memory store error: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The backend's error, when there is one.
        #[source]
        source: Option<crate::error::Cause>,
    },
}

impl MemoryError {
    /// A backend failure with its cause.
    pub fn backend(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Backend {
            message: message.into(),
            source: Some(crate::error::Cause::new(source)),
        }
    }
}

/// Long-term memory storage. `search` ranks by keyword relevance unless a store does better.
#[async_trait]
pub trait MemoryStore: Send + Sync + 'static {
    /// Inserts or replaces a record (by actor, namespace and id).
    async fn put(&self, record: &MemoryRecord) -> Result<(), MemoryError>;

    /// The actor's records in a namespace, or in every namespace.
    async fn list(
        &self,
        actor_id: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<MemoryRecord>, MemoryError>;

    /// Deletes a record; whether it existed.
    async fn delete(&self, actor_id: &str, namespace: &str, id: &str) -> Result<bool, MemoryError>;

    /// The `limit` records most relevant to `query` (keyword scoring).
    async fn search(
        &self,
        actor_id: &str,
        namespace: Option<&str>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<ScoredRecord>, MemoryError> {
        let records = self.list(actor_id, namespace).await?;
        Ok(rank(records, query, limit))
    }
}

/// Lower-case alphanumeric words of two or more characters, stop words dropped, plurals folded
/// (`seats` -> `seat`).
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .map(|w| {
            if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") {
                w[..w.len() - 1].to_owned()
            } else {
                w
            }
        })
        .collect()
}

const STOP_WORDS: &[&str] = &[
    "the", "and", "for", "are", "was", "is", "to", "of", "in", "on", "at", "an", "or", "it", "be",
    "me", "my", "we", "you", "your", "with", "what", "which", "that", "this", "do", "does", "i",
    "a", "about", "like", "likes",
];

/// BM25 ranking of `records` for `query` (k1 = 1.2, b = 0.75); records without a query term are
/// dropped.
pub fn rank(records: Vec<MemoryRecord>, query: &str, limit: usize) -> Vec<ScoredRecord> {
    let terms: HashSet<String> = tokens(query).into_iter().collect();
    if terms.is_empty() || records.is_empty() {
        return Vec::new();
    }
    let docs: Vec<Vec<String>> = records.iter().map(|r| tokens(&r.content)).collect();
    let n = docs.len() as f64;
    let avg_len = docs.iter().map(Vec::len).sum::<usize>() as f64 / n;
    let mut df: HashMap<&str, f64> = HashMap::new();
    for doc in &docs {
        let unique: HashSet<&str> = doc.iter().map(String::as_str).collect();
        for t in unique {
            if terms.contains(t) {
                *df.entry(t).or_default() += 1.0;
            }
        }
    }
    let mut scored: Vec<ScoredRecord> = records
        .into_iter()
        .zip(&docs)
        .filter_map(|(record, doc)| {
            let len = doc.len() as f64;
            let mut score = 0.0;
            for term in &terms {
                let tf = doc.iter().filter(|t| *t == term).count() as f64;
                if tf == 0.0 {
                    continue;
                }
                let d = df.get(term.as_str()).copied().unwrap_or(0.0);
                let idf = ((n - d + 0.5) / (d + 0.5) + 1.0).ln();
                score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / avg_len.max(1.0)));
            }
            (score > 0.0).then_some(ScoredRecord { record, score })
        })
        .collect();
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    scored.truncate(limit);
    scored
}

/// Word-set similarity of two texts (Jaccard), used to consolidate near-duplicates.
pub fn similarity(a: &str, b: &str) -> f64 {
    let a: HashSet<String> = tokens(a).into_iter().collect();
    let b: HashSet<String> = tokens(b).into_iter().collect();
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    a.intersection(&b).count() as f64 / a.union(&b).count() as f64
}

/// Actor, namespace and id.
type RecordKey = (String, String, String);

/// Orders records as `MemoryStore::list` returns them: oldest first, ties by id.
pub fn sort_records(records: &mut [MemoryRecord]) {
    records.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
}

/// Records in process memory.
#[derive(Debug, Clone, Default)]
pub struct InMemoryMemoryStore {
    records: Arc<Mutex<HashMap<RecordKey, MemoryRecord>>>,
}

impl InMemoryMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RecordKey, MemoryRecord>> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl MemoryStore for InMemoryMemoryStore {
    async fn put(&self, record: &MemoryRecord) -> Result<(), MemoryError> {
        validate_id("actor", &record.actor_id)?;
        validate_id("namespace", &record.namespace)?;
        let key = (
            record.actor_id.clone(),
            record.namespace.clone(),
            record.id.clone(),
        );
        self.lock().insert(key, record.clone());
        Ok(())
    }

    async fn list(
        &self,
        actor_id: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<MemoryRecord>, MemoryError> {
        validate_id("actor", actor_id)?;
        let mut out: Vec<MemoryRecord> = self
            .lock()
            .values()
            .filter(|r| r.actor_id == actor_id && namespace.is_none_or(|n| r.namespace == n))
            .cloned()
            .collect();
        sort_records(&mut out);
        Ok(out)
    }

    async fn delete(&self, actor_id: &str, namespace: &str, id: &str) -> Result<bool, MemoryError> {
        Ok(self
            .lock()
            .remove(&(actor_id.to_owned(), namespace.to_owned(), id.to_owned()))
            .is_some())
    }
}

/// How an agent uses long-term memory.
#[derive(Clone)]
pub struct MemoryConfig {
    /// The store.
    pub store: Arc<dyn MemoryStore>,
    /// How many records are injected before model calls (0 disables injection; default 5).
    pub inject: usize,
    /// Whether finished invocations are mined for new records (default true).
    pub extract: bool,
    /// Bound on one extraction (default 60 s).
    pub extraction_timeout: Duration,
}

impl std::fmt::Debug for MemoryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryConfig")
            .field("inject", &self.inject)
            .field("extract", &self.extract)
            .finish_non_exhaustive()
    }
}

impl MemoryConfig {
    /// Injection of 5 records and extraction on.
    pub fn new(store: impl MemoryStore) -> Self {
        Self::shared(Arc::new(store))
    }

    /// The same with a shared store.
    pub fn shared(store: Arc<dyn MemoryStore>) -> Self {
        Self {
            store,
            inject: 5,
            extract: true,
            extraction_timeout: Duration::from_secs(60),
        }
    }

    /// Sets how many records are injected.
    pub fn inject(mut self, n: usize) -> Self {
        self.inject = n;
        self
    }

    /// Turns extraction on or off.
    pub fn extract(mut self, on: bool) -> Self {
        self.extract = on;
        self
    }
}

/// The system-context text for the records relevant to `query`, if any.
pub(crate) async fn injection(
    config: &MemoryConfig,
    actor_id: &str,
    query: &str,
) -> Option<String> {
    if config.inject == 0 {
        return None;
    }
    match config
        .store
        .search(actor_id, None, query, config.inject)
        .await
    {
        Ok(found) if !found.is_empty() => {
            let mut text =
                String::from("What you remember about this user (from earlier sessions):\n");
            for s in found {
                text.push_str(&format!(
                    "- [{}] {}\n",
                    s.record.namespace, s.record.content
                ));
            }
            Some(text)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "memory search failed; continuing without injected memory");
            None
        }
    }
}

const EXTRACTION_PROMPT: &str = "You extract long-term memories about the user from a conversation. \
Reply with one JSON object: {\"memories\": [{\"namespace\": \"facts\" | \"preferences\", \"content\": \"<one short sentence about the user>\"}]}. \
Only include durable facts and preferences the user stated about themselves; reply {\"memories\": []} if there are none.";

/// Runs the model over a finished conversation and stores what it learned about the actor,
/// updating a record instead of adding a near-duplicate (word similarity >= 0.5 in the same
/// namespace). Returns the records written.
pub async fn extract_memories(
    model: &dyn Model,
    store: &dyn MemoryStore,
    actor_id: &str,
    conversation: &[Message],
) -> Result<Vec<MemoryRecord>, MemoryError> {
    let mut transcript = String::new();
    for m in conversation {
        let who = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let text = m.text();
        if !text.is_empty() {
            transcript.push_str(&format!("{who}: {text}\n"));
        }
    }
    if transcript.is_empty() {
        return Ok(Vec::new());
    }
    let prompt = Message::user(format!("Conversation:\n{transcript}"));
    let request = ModelRequest {
        messages: vec![&prompt],
        system_prompt: Some(EXTRACTION_PROMPT),
        tools: &[],
        tool_choice: &ToolChoice::None,
    };
    let response = model
        .complete(&request)
        .await
        .map_err(|e| MemoryError::backend("extraction model call", e))?;
    let text: String = response
        .content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    let json_text = text
        .trim()
        .trim_start_matches("```json")
        .trim_start_matches("```")
        .trim_end_matches("```")
        .trim();
    let parsed: Value = serde_json::from_str(json_text).map_err(|e| {
        MemoryError::backend(
            format!(
                "extraction reply is not JSON: {}",
                text.chars().take(200).collect::<String>()
            ),
            e,
        )
    })?;
    let mut written = Vec::new();
    for item in parsed["memories"].as_array().into_iter().flatten() {
        let (Some(namespace), Some(content)) =
            (item["namespace"].as_str(), item["content"].as_str())
        else {
            continue;
        };
        let namespace = if namespace == "preferences" {
            "preferences"
        } else {
            "facts"
        };
        let existing = store.list(actor_id, Some(namespace)).await?;
        let closest = existing
            .into_iter()
            .map(|r| (similarity(&r.content, content), r))
            .filter(|(s, _)| *s >= 0.5)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let record = match closest {
            Some((_, mut r)) => {
                r.content = content.to_owned();
                r.updated_at = now();
                r
            }
            None => MemoryRecord::new(actor_id, namespace, content),
        };
        store.put(&record).await?;
        written.push(record);
    }
    Ok(written)
}

/// The `remember` and `recall` tools over a store; they act for the invocation's actor.
pub fn memory_tools(store: Arc<dyn MemoryStore>) -> Vec<Arc<dyn Tool>> {
    vec![Arc::new(Remember(store.clone())), Arc::new(Recall(store))]
}

struct Remember(Arc<dyn MemoryStore>);
struct Recall(Arc<dyn MemoryStore>);

fn actor(ctx: &ToolContext) -> Result<String, ToolError> {
    ctx.actor_id.as_deref().map(str::to_owned).ok_or_else(|| {
        ToolError::new("memory needs to know the user: this invocation has no actor id")
    })
}

impl Tool for Remember {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "remember".into(),
            description: "Stores a fact or preference about the user for future conversations."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "content": {"type": "string", "description": "One short sentence about the user."},
                    "namespace": {"type": "string", "enum": ["facts", "preferences"], "description": "Kind of memory (default facts)."}
                },
                "required": ["content"],
                "additionalProperties": false
            }),
        }
    }

    fn call(&self, input: Value, ctx: ToolContext) -> BoxFuture<'_, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let actor = actor(&ctx)?;
            let content = input["content"].as_str().unwrap_or_default();
            let namespace = input["namespace"].as_str().unwrap_or("facts");
            let record = MemoryRecord::new(actor, namespace, content);
            self.0.put(&record).await.map_err(ToolError::new)?;
            Ok(ToolOutput::text(format!("remembered: {content}")))
        })
    }
}

impl Tool for Recall {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "recall".into(),
            description: "Searches what is remembered about the user.".into(),
            input_schema: json!({
                "type": "object",
                "properties": {"query": {"type": "string", "description": "What to look for."}},
                "required": ["query"],
                "additionalProperties": false
            }),
        }
    }

    fn call(&self, input: Value, ctx: ToolContext) -> BoxFuture<'_, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let actor = actor(&ctx)?;
            let query = input["query"].as_str().unwrap_or_default();
            let found = self
                .0
                .search(&actor, None, query, 5)
                .await
                .map_err(ToolError::new)?;
            let items: Vec<Value> = found
                .iter()
                .map(|s| json!({"namespace": s.record.namespace, "content": s.record.content}))
                .collect();
            Ok(ToolOutput::json(json!({"memories": items})))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_prefers_relevant_records() {
        let records = vec![
            MemoryRecord::new("a", "preferences", "Prefers window seats on long flights"),
            MemoryRecord::new("a", "facts", "Lives in Porto and works as a nurse"),
            MemoryRecord::new("a", "preferences", "Vegetarian, no seafood"),
        ];
        let ranked = rank(records, "Which seat do I like on flights?", 2);
        assert_eq!(ranked.len(), 1);
        assert!(ranked[0].record.content.contains("window seats"));
        assert!(rank(vec![MemoryRecord::new("a", "f", "x y")], "the", 3).is_empty());
        assert!(similarity("Prefers window seats", "prefers a window seat") > 0.3);
        assert!(similarity("Lives in Porto", "Vegetarian") < 0.1);
    }

    #[tokio::test]
    async fn in_memory_store_scopes_by_actor_and_namespace() {
        let store = InMemoryMemoryStore::new();
        let r = MemoryRecord::new("alice", "facts", "Lives in Lisbon");
        store.put(&r).await.expect("put");
        store
            .put(&MemoryRecord::new("bob", "facts", "Lives in Lisbon too"))
            .await
            .expect("put");
        assert_eq!(store.list("alice", None).await.expect("list").len(), 1);
        assert_eq!(
            store
                .list("alice", Some("preferences"))
                .await
                .expect("list")
                .len(),
            0
        );
        assert_eq!(
            store
                .search("alice", None, "Lisbon", 5)
                .await
                .expect("search")
                .len(),
            1
        );
        assert!(store.delete("alice", "facts", &r.id).await.expect("delete"));
        assert!(!store.delete("alice", "facts", &r.id).await.expect("delete"));
        assert!(
            store
                .put(&MemoryRecord::new("../x", "facts", "no"))
                .await
                .is_err()
        );
    }
}
