//! Amazon Bedrock (feature `bedrock`): embeddings through `InvokeModel`, with the client the
//! caller configures (`aws_config::load_from_env()`: the standard credential chain and region).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, SdkError};
use aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError;
use aws_sdk_bedrockruntime::primitives::Blob;
use serde::Deserialize;
use serde_json::json;

use super::ModelError;
use super::embed::{Embedder, Embedding, checked};

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
/// or Cohere Embed (`cohere.embed-*`), by model id or inference-profile ARN.
///
/// Each request is bounded (default 30 s); errors are classified as the chat providers' are:
/// throttling and quota errors are [`ModelError::Throttled`], service unavailability and
/// internal errors are transient, and access denied, an unknown model or a refused request are
/// fatal with a message that says what to fix. Every answer is checked as
/// [`OpenAiEmbedder`](super::openai::OpenAiEmbedder)'s is.
#[derive(Debug, Clone)]
pub struct BedrockEmbedder {
    client: aws_sdk_bedrockruntime::Client,
    model_id: String,
    family: Family,
    dimensions: Option<u32>,
    timeout: Duration,
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
    /// An embedder for `model_id` (e.g. `amazon.titan-embed-text-v2:0`); a model of another
    /// family is a configuration error.
    pub fn new(
        client: aws_sdk_bedrockruntime::Client,
        model_id: impl Into<String>,
    ) -> Result<Self, ModelError> {
        let model_id = model_id.into();
        let family = if model_id.contains("titan-embed") {
            Family::Titan
        } else if model_id.contains("cohere.embed") {
            Family::Cohere
        } else {
            return Err(ModelError::Config(format!(
                "`{model_id}` is not a Bedrock embedding model this embedder speaks: use amazon.titan-embed-* or cohere.embed-*"
            )));
        };
        Ok(Self {
            client,
            model_id,
            family,
            dimensions: None,
            timeout: Duration::from_secs(30),
        })
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
            .send();
        let output = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ModelError::Transient {
                message: format!("Bedrock did not answer within {:?}", self.timeout),
            })?
            .map_err(|e| invoke_error(&self.model_id, e))?;
        Ok(output.body.into_inner())
    }
}

/// A Bedrock `InvokeModel` failure as a [`ModelError`].
fn invoke_error(
    model_id: &str,
    e: SdkError<InvokeModelError, aws_sdk_bedrockruntime::config::http::HttpResponse>,
) -> ModelError {
    let detail = DisplayErrorContext(&e).to_string();
    let service = match e {
        SdkError::ServiceError(s) => s.into_err(),
        SdkError::ConstructionFailure(_) => {
            return ModelError::Config(format!("cannot build the Bedrock request: {detail}"));
        }
        other => {
            return ModelError::Connection {
                message: format!("Bedrock request failed: {detail}"),
                source: crate::error::Cause::new(other),
            };
        }
    };
    let message = service.to_string();
    if service.is_throttling_exception() || service.is_service_quota_exceeded_exception() {
        ModelError::Throttled {
            status: 429,
            message,
            retry_after: None,
        }
    } else if service.is_service_unavailable_exception() {
        ModelError::Throttled {
            status: 503,
            message,
            retry_after: None,
        }
    } else if service.is_internal_server_exception() || service.is_model_timeout_exception() {
        ModelError::Transient { message }
    } else if service.is_access_denied_exception() {
        ModelError::Fatal {
            status: Some(403),
            message: format!(
                "access denied to {model_id}: allow bedrock:InvokeModel on it for this role, and enable the model in the account's Bedrock console ({message})"
            ),
        }
    } else if service.is_resource_not_found_exception() {
        ModelError::Fatal {
            status: Some(404),
            message: format!("no model {model_id} in this region ({message})"),
        }
    } else if service.is_model_not_ready_exception() {
        ModelError::Fatal {
            status: Some(429),
            message: format!("{model_id} is not ready to serve ({message})"),
        }
    } else {
        // A validation error, or one the SDK does not model: its whole context says which.
        ModelError::Fatal {
            status: Some(400),
            message: detail,
        }
    }
}

fn invalid(message: String) -> ModelError {
    ModelError::InvalidReply { message }
}

#[async_trait]
impl Embedder for BedrockEmbedder {
    fn model(&self) -> &str {
        &self.model_id
    }

    async fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>, ModelError> {
        let mut vectors = Vec::with_capacity(texts.len());
        match self.family {
            Family::Titan => {
                for text in texts {
                    let mut body = json!({ "inputText": text });
                    if let Some(n) = self.dimensions {
                        body["dimensions"] = json!(n);
                    }
                    let bytes = self.invoke(body).await?;
                    let answer: TitanAnswer = serde_json::from_slice(&bytes).map_err(|e| {
                        invalid(format!(
                            "the Titan answer has no embedding ({e}): {}",
                            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                        ))
                    })?;
                    vectors.push(answer.embedding);
                }
            }
            Family::Cohere => {
                for batch in texts.chunks(COHERE_BATCH) {
                    let bytes = self
                        .invoke(json!({ "texts": batch, "input_type": "search_document" }))
                        .await?;
                    let answer: CohereAnswer = serde_json::from_slice(&bytes).map_err(|e| {
                        invalid(format!(
                            "the Cohere answer has no embeddings ({e}): {}",
                            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                        ))
                    })?;
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
