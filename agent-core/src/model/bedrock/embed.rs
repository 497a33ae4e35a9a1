//! Bedrock embeddings through `InvokeModel`.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_bedrockruntime::primitives::Blob;
use serde::Deserialize;
use serde_json::json;

use super::error::sdk_error;
use super::limit::ReplyLimit;
use crate::model::ModelError;
use crate::model::embed::{Embedder, Embedding, checked, cut, invalid, parse_answer};

/// The request and answer shapes of the embedding model families Bedrock serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `amazon.titan-embed-*`: one text per request (`inputText` -> `embedding`).
    Titan,
    /// `cohere.embed-*`: up to 96 texts per request (`texts` -> `embeddings`).
    Cohere,
}

/// Texts per Cohere request (the service's limit).
const COHERE_BATCH: usize = 96;

/// An embedding model on Amazon Bedrock: Amazon Titan Text Embeddings (`amazon.titan-embed-*`)
/// or Cohere Embed (`cohere.embed-*`), by model id ([`BedrockEmbedder::new`] tells the family
/// from it) or inference-profile ARN ([`BedrockEmbedder::titan`], [`BedrockEmbedder::cohere`]).
///
/// Each request is bounded (default 30 s, and an answer of at most 32 MiB); texts are cut to
/// 2,000 characters (Cohere's limit is 2,048). Errors are classified as the chat providers' are:
/// throttling, quota and a model that is not ready yet are [`ModelError::Throttled`], service
/// unavailability and internal errors are retryable, and access denied, an unknown model or a
/// refused request are fatal with a message that says what to fix. Every answer is checked as
/// [`OpenAiEmbedder`](crate::model::openai::OpenAiEmbedder)'s is. Cohere embeds queries as
/// `search_query` and memories as `search_document`.
#[derive(Debug, Clone)]
pub struct BedrockEmbedder {
    client: aws_sdk_bedrockruntime::Client,
    model_id: String,
    family: Family,
    dimensions: Option<u32>,
    timeout: Duration,
    max_input_chars: usize,
}

#[derive(Deserialize)]
struct TitanAnswer {
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct CohereAnswer {
    embeddings: Vec<Vec<f32>>,
}

impl BedrockEmbedder {
    /// An embedder for `model_id` (e.g. `amazon.titan-embed-text-v2:0`), its family told from
    /// the id; an id of another family is a configuration error.
    pub fn new(
        client: aws_sdk_bedrockruntime::Client,
        model_id: impl Into<String>,
    ) -> Result<Self, ModelError> {
        let model_id = model_id.into();
        if model_id.contains("titan-embed") {
            Ok(Self::titan(client, model_id))
        } else if model_id.contains("cohere.embed") {
            Ok(Self::cohere(client, model_id))
        } else {
            Err(ModelError::Config(format!(
                "`{model_id}` is not a Bedrock embedding model this embedder speaks: use amazon.titan-embed-* or cohere.embed-*, or name the family with BedrockEmbedder::titan / ::cohere (inference profiles)"
            )))
        }
    }

    /// A Titan Text Embeddings model (or an inference profile of one).
    pub fn titan(client: aws_sdk_bedrockruntime::Client, model_id: impl Into<String>) -> Self {
        Self::with_family(client, model_id.into(), Family::Titan)
    }

    /// A Cohere Embed model (or an inference profile of one).
    pub fn cohere(client: aws_sdk_bedrockruntime::Client, model_id: impl Into<String>) -> Self {
        Self::with_family(client, model_id.into(), Family::Cohere)
    }

    fn with_family(
        client: aws_sdk_bedrockruntime::Client,
        model_id: String,
        family: Family,
    ) -> Self {
        Self {
            client,
            model_id,
            family,
            dimensions: None,
            timeout: Duration::from_secs(30),
            max_input_chars: 2000,
        }
    }

    /// Asks Titan Text Embeddings V2 for vectors of this length (256, 512 or 1024).
    pub fn dimensions(mut self, n: u32) -> Self {
        self.dimensions = Some(n);
        self
    }

    /// Bound on one request (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn invoke(&self, body: serde_json::Value) -> Result<Vec<u8>, ModelError> {
        let call = self
            .client
            .invoke_model()
            .model_id(&self.model_id)
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(body.to_string()))
            .customize()
            .interceptor(ReplyLimit)
            .send();
        let output = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ModelError::Transient {
                message: format!("Bedrock did not answer within {:?}", self.timeout),
            })?
            .map_err(|e| sdk_error(&self.model_id, "the Bedrock InvokeModel call", e, |_| None))?;
        Ok(output.body.into_inner())
    }
}

#[async_trait]
impl Embedder for BedrockEmbedder {
    fn model(&self) -> &str {
        &self.model_id
    }

    async fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>, ModelError> {
        self.embed_as(texts, "search_document").await
    }

    async fn embed_query(&self, text: &str) -> Result<Embedding, ModelError> {
        let mut vectors = self.embed_as(&[text], "search_query").await?;
        match vectors.len() {
            1 => Ok(vectors.remove(0)),
            n => Err(invalid(format!("{n} vectors for one text"))),
        }
    }
}

impl BedrockEmbedder {
    /// Vectors for `texts`; `input_type` is Cohere's (`search_document` or `search_query`).
    async fn embed_as(
        &self,
        texts: &[&str],
        input_type: &str,
    ) -> Result<Vec<Embedding>, ModelError> {
        let texts: Vec<&str> = texts.iter().map(|t| cut(t, self.max_input_chars)).collect();
        let mut vectors = Vec::with_capacity(texts.len());
        match self.family {
            Family::Titan => {
                for text in &texts {
                    let mut body = json!({ "inputText": text });
                    if let Some(n) = self.dimensions {
                        body["dimensions"] = json!(n);
                    }
                    let bytes = self.invoke(body).await?;
                    let answer: TitanAnswer =
                        parse_answer("the Titan answer has no embedding", &bytes)?;
                    vectors.push(answer.embedding);
                }
            }
            Family::Cohere => {
                for batch in texts.chunks(COHERE_BATCH) {
                    let bytes = self
                        .invoke(json!({ "texts": batch, "input_type": input_type }))
                        .await?;
                    let answer: CohereAnswer =
                        parse_answer("the Cohere answer has no embeddings", &bytes)?;
                    if answer.embeddings.len() != batch.len() {
                        return Err(invalid(format!(
                            "{} vectors for {} texts",
                            answer.embeddings.len(),
                            batch.len()
                        )));
                    }
                    vectors.extend(answer.embeddings);
                }
            }
        }
        checked(&self.model_id, vectors)
    }
}
