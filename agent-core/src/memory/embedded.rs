//! Retrieval by meaning: a store wrapper that gives records vectors when they are written and
//! makes every search hybrid (words and meaning).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    DEFAULT_MIN_SIMILARITY, Embedder, MemoryError, MemoryQuery, MemoryRecord, MemoryStore,
    ScoredRecord,
};

/// A [`MemoryStore`] whose records are found by meaning as well as by words.
///
/// - `put` stores the record with the vector of its content (one embedding call) unless it
///   already has one of this embedder's model. When the embedder fails, the record is stored
///   without a vector (and found by its words): a fact is never lost to an embedding outage.
/// - `search` embeds the query and runs the hybrid search of [`MemoryQuery`]; when the embedder
///   fails or takes longer than its bound, it falls back to words.
/// - After a failure the embedder is left alone for [`EMBEDDER_PAUSE`] (records without
///   vectors, searches by words), so a stalled embedder costs one timeout, not one per record.
///
/// A record whose content changes must be written without its old vector
/// (`record.embedding = None`), so that it gets a new one. [`MemoryConfig::embedder`](super::MemoryConfig::embedder)
/// wraps the agent's store in this.
#[derive(Clone)]
pub struct EmbeddingMemoryStore {
    store: Arc<dyn MemoryStore>,
    embedder: Arc<dyn Embedder>,
    min_similarity: f32,
    timeout: Duration,
    /// Until when (epoch milliseconds) the embedder is left alone after a failure.
    paused_until: Arc<AtomicU64>,
    pause: Duration,
}

impl std::fmt::Debug for EmbeddingMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingMemoryStore")
            .field("model", &self.embedder.model())
            .field("min_similarity", &self.min_similarity)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EmbeddingMemoryStore {
    /// `store`, with vectors from `embedder`; matches by meaning need a cosine of
    /// [`DEFAULT_MIN_SIMILARITY`], and each embedding call is bounded to 10 s.
    pub fn new(store: impl MemoryStore, embedder: impl Embedder) -> Self {
        Self {
            store: Arc::new(store),
            embedder: Arc::new(embedder),
            min_similarity: DEFAULT_MIN_SIMILARITY,
            timeout: Duration::from_secs(10),
            paused_until: Arc::new(AtomicU64::new(0)),
            pause: EMBEDDER_PAUSE,
        }
    }

    /// Sets the least cosine similarity of a match by meaning.
    pub fn min_similarity(mut self, min: f32) -> Self {
        self.min_similarity = min;
        self
    }

    /// Sets the bound on one embedding call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how long a failed embedder is left alone (default [`EMBEDDER_PAUSE`]; zero tries it
    /// again at once).
    pub fn pause_after_failure(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// The store records are kept in (vectors included), for what this wrapper does not
    /// offer.
    pub fn inner(&self) -> &Arc<dyn MemoryStore> {
        &self.store
    }

    /// Runs one embedding call under the store's bound. After a failure the embedder is left
    /// alone for [`EMBEDDER_PAUSE`]: records are stored without vectors and searches go by words
    /// meanwhile, so an embedder that stalls costs one bound, not one per record, and an
    /// extraction's writes are not starved by it (see [`Self::pause_after_failure`]).
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, crate::model::ModelError>>,
    ) -> Result<T, MemoryError> {
        let now = millis();
        if now < self.paused_until.load(Ordering::Relaxed) {
            return Err(MemoryError::Backend {
                message: "the embedder failed moments ago; it is left alone for now".into(),
                source: None,
            });
        }
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => MemoryError::backend("embedding", e),
            Err(_) => MemoryError::Backend {
                message: format!("embedding took longer than {:?}", self.timeout),
                source: None,
            },
        };
        let pause = u64::try_from(self.pause.as_millis()).unwrap_or(u64::MAX);
        self.paused_until
            .store(millis().saturating_add(pause), Ordering::Relaxed);
        Err(result)
    }

    async fn embed_one(&self, text: &str) -> Result<super::Embedding, MemoryError> {
        let texts = [text];
        let mut vectors = self.bounded(self.embedder.embed(&texts)).await?;
        match vectors.len() {
            1 => Ok(vectors.remove(0)),
            n => Err(MemoryError::Backend {
                message: format!("the embedder returned {n} vectors for one text"),
                source: None,
            }),
        }
    }

    /// Gives the actor's records that have no vector of this embedder's model one, in batches:
    /// for memory written before the embedder was configured, or while it was down. Returns how
    /// many records were updated. A record whose text or update time changed while its vector
    /// was being made is left for the next run, never written back over the change; a writer
    /// that changes it between this call's last read and its write (a few milliseconds) can
    /// still be overwritten, as the store has no conditional write for memory records.
    pub async fn embed_missing(&self, actor_id: &str) -> Result<usize, MemoryError> {
        let model = self.embedder.model().to_owned();
        let missing: Vec<MemoryRecord> = self
            .store
            .list(actor_id, None)
            .await?
            .into_iter()
            .filter(|r| r.embedding.as_ref().is_none_or(|e| e.model != model))
            .collect();
        let mut updated = 0;
        for chunk in missing.chunks(32) {
            let texts: Vec<&str> = chunk.iter().map(|r| r.content.as_str()).collect();
            let vectors = self.bounded(self.embedder.embed(&texts)).await?;
            if vectors.len() != chunk.len() {
                return Err(MemoryError::Backend {
                    message: format!(
                        "the embedder returned {} vectors for {} texts",
                        vectors.len(),
                        chunk.len()
                    ),
                    source: None,
                });
            }
            // What the store holds now: only records unchanged since they were read get their
            // vector.
            let current: std::collections::HashMap<(String, String), MemoryRecord> = self
                .store
                .list(actor_id, None)
                .await?
                .into_iter()
                .map(|r| ((r.namespace.clone(), r.id.clone()), r))
                .collect();
            for (record, vector) in chunk.iter().zip(vectors) {
                let unchanged = current
                    .get(&(record.namespace.clone(), record.id.clone()))
                    .is_some_and(|now| {
                        now.content == record.content && now.updated_at == record.updated_at
                    });
                if !unchanged {
                    continue;
                }
                let mut record = record.clone();
                record.embedding = Some(vector);
                self.store.put(&record).await?;
                updated += 1;
            }
        }
        Ok(updated)
    }
}

/// How long an embedder that failed is left alone.
pub const EMBEDDER_PAUSE: Duration = Duration::from_secs(30);

fn millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[async_trait]
impl MemoryStore for EmbeddingMemoryStore {
    async fn put(&self, record: &MemoryRecord) -> Result<(), MemoryError> {
        let current = record
            .embedding
            .as_ref()
            .is_some_and(|e| e.model == self.embedder.model());
        if current {
            return self.store.put(record).await;
        }
        match self.embed_one(&record.content).await {
            Ok(vector) => {
                let mut record = record.clone();
                record.embedding = Some(vector);
                self.store.put(&record).await
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "a memory is stored without a vector: it is found by its words until `embed_missing` runs");
                let mut record = record.clone();
                record.embedding = None;
                self.store.put(&record).await
            }
        }
    }

    async fn list(
        &self,
        actor_id: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<MemoryRecord>, MemoryError> {
        self.store.list(actor_id, namespace).await
    }

    async fn delete(&self, actor_id: &str, namespace: &str, id: &str) -> Result<bool, MemoryError> {
        self.store.delete(actor_id, namespace, id).await
    }

    async fn search(
        &self,
        actor_id: &str,
        namespace: Option<&str>,
        query: &str,
        limit: usize,
    ) -> Result<Vec<ScoredRecord>, MemoryError> {
        let q = MemoryQuery::new(query).min_similarity(self.min_similarity);
        match self.bounded(self.embedder.embed_query(query)).await {
            Ok(vector) => {
                self.store
                    .search_query(actor_id, namespace, &q.embedding(&vector), limit)
                    .await
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "memory search by words only: the query could not be embedded");
                self.store
                    .search_query(actor_id, namespace, &q, limit)
                    .await
            }
        }
    }

    async fn search_query(
        &self,
        actor_id: &str,
        namespace: Option<&str>,
        query: &MemoryQuery<'_>,
        limit: usize,
    ) -> Result<Vec<ScoredRecord>, MemoryError> {
        if query.embedding.is_some() {
            return self
                .store
                .search_query(actor_id, namespace, query, limit)
                .await;
        }
        self.search(actor_id, namespace, query.text, limit).await
    }
}
