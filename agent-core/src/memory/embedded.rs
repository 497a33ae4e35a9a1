//! Retrieval by meaning: a store wrapper that gives records vectors when they are written and
//! makes every search hybrid (words and meaning).

use std::sync::Arc;
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

    /// The store underneath.
    pub fn inner(&self) -> &Arc<dyn MemoryStore> {
        &self.store
    }

    async fn embed_one(&self, text: &str) -> Result<super::Embedding, MemoryError> {
        let texts = [text];
        match tokio::time::timeout(self.timeout, self.embedder.embed(&texts)).await {
            Ok(Ok(mut v)) if v.len() == 1 => Ok(v.remove(0)),
            Ok(Ok(v)) => Err(MemoryError::Backend {
                message: format!("the embedder returned {} vectors for one text", v.len()),
                source: None,
            }),
            Ok(Err(e)) => Err(MemoryError::backend("embedding", e)),
            Err(_) => Err(MemoryError::Backend {
                message: format!("embedding took longer than {:?}", self.timeout),
                source: None,
            }),
        }
    }

    /// Gives the actor's records that have no vector of this embedder's model one, in batches:
    /// for memory written before the embedder was configured, or while it was down. Returns how
    /// many records were updated.
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
            let vectors = tokio::time::timeout(self.timeout, self.embedder.embed(&texts))
                .await
                .map_err(|_| MemoryError::Backend {
                    message: format!("embedding took longer than {:?}", self.timeout),
                    source: None,
                })?
                .map_err(|e| MemoryError::backend("embedding", e))?;
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
            for (record, vector) in chunk.iter().zip(vectors) {
                let mut record = record.clone();
                record.embedding = Some(vector);
                self.store.put(&record).await?;
                updated += 1;
            }
        }
        Ok(updated)
    }
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
        match self.embed_one(query).await {
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
