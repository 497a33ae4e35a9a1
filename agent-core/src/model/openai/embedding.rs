//! `/v1/embeddings`: an [`Embedder`] for any OpenAI-compatible server (vLLM with an embedding
//! model, llama.cpp's `llama-server --embeddings`, OpenAI, Ollama).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde::{Deserialize, Serialize};

use super::error::{MAX_BODY, error_from_response, read_capped, transport_error};
use super::{bearer, http_client};
use crate::model::ModelError;
use crate::model::embed::{Embedder, Embedding, checked, cut, invalid, parse_answer};

/// The most texts sent in one request by default.
pub const DEFAULT_EMBEDDING_BATCH: usize = 32;

/// Builds an [`OpenAiEmbedder`].
#[derive(Debug, Clone)]
pub struct OpenAiEmbedderBuilder {
    base_url: Option<String>,
    model: Option<String>,
    api_key: Option<String>,
    timeout: Duration,
    max_batch: usize,
    max_input_chars: usize,
}

impl Default for OpenAiEmbedderBuilder {
    fn default() -> Self {
        Self {
            base_url: None,
            model: None,
            api_key: None,
            timeout: Duration::from_secs(30),
            max_batch: DEFAULT_EMBEDDING_BATCH,
            max_input_chars: 2000,
        }
    }
}

impl OpenAiEmbedderBuilder {
    /// The API base URL including `/v1`. Defaults to `OPENAI_EMBEDDING_BASE_URL`, then
    /// `OPENAI_BASE_URL`.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The embedding model's name. Defaults to `OPENAI_EMBEDDING_MODEL`.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// A bearer token. Defaults to `OPENAI_EMBEDDING_API_KEY`, and to `OPENAI_API_KEY` when the
    /// endpoint is the chat endpoint (`OPENAI_BASE_URL`).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Bound on one request, from sending it to the last byte of the answer (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The most texts sent in one request (default [`DEFAULT_EMBEDDING_BATCH`]); more are split
    /// into several requests.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Texts are cut to this many characters before they are sent (default 2,000): small
    /// embedding models take a few hundred tokens, and a server refuses longer input rather
    /// than reading its start.
    pub fn max_input_chars(mut self, n: usize) -> Self {
        self.max_input_chars = n.max(1);
        self
    }

    /// The embedder; a configuration error names what is missing.
    pub fn build(self) -> Result<OpenAiEmbedder, ModelError> {
        // The chat endpoint's key goes only to the chat endpoint: an embedding server elsewhere
        // gets `OPENAI_EMBEDDING_API_KEY` (or the builder's key).
        let mut key_from_env = std::env::var("OPENAI_EMBEDDING_API_KEY").ok();
        let base_url = self
            .base_url
            .or_else(|| std::env::var("OPENAI_EMBEDDING_BASE_URL").ok())
            .or_else(|| {
                let url = std::env::var("OPENAI_BASE_URL").ok()?;
                key_from_env = key_from_env
                    .take()
                    .or_else(|| std::env::var("OPENAI_API_KEY").ok());
                Some(url)
            })
            .ok_or_else(|| {
                ModelError::Config(
                    "no embedding endpoint: set OPENAI_EMBEDDING_BASE_URL (e.g. http://localhost:8000/v1) or call base_url()".into(),
                )
            })?;
        let model = self
            .model
            .or_else(|| std::env::var("OPENAI_EMBEDDING_MODEL").ok())
            .ok_or_else(|| {
                ModelError::Config(
                    "no embedding model: set OPENAI_EMBEDDING_MODEL or call model()".into(),
                )
            })?;
        let url = format!("{}/embeddings", base_url.trim_end_matches('/'));
        reqwest::Url::parse(&url)
            .map_err(|e| ModelError::Config(format!("invalid base URL `{base_url}`: {e}")))?;
        let mut headers = HeaderMap::new();
        let api_key = self.api_key.or(key_from_env);
        // A server that echoes the key into an error must not put it into logs.
        let mut secrets = Vec::new();
        if let Some(key) = api_key.filter(|k| !k.is_empty()) {
            secrets.push(key.clone());
            headers.insert(AUTHORIZATION, bearer(&key)?);
        }
        let client = http_client(
            reqwest::Client::builder()
                .connect_timeout(self.timeout.min(Duration::from_secs(10)))
                .timeout(self.timeout),
        )?;
        Ok(OpenAiEmbedder {
            client,
            url,
            model,
            headers,
            secrets,
            max_batch: self.max_batch,
            max_input_chars: self.max_input_chars,
        })
    }
}

/// An embedding model behind an OpenAI-compatible `/v1/embeddings` endpoint.
///
/// Every request is bounded (the builder's timeout, a 32 MiB answer), and every answer is
/// checked: one finite, non-zero vector per text, all of one length, or a
/// [`ModelError::InvalidReply`]. Errors are classified as the chat provider's are (429/503
/// throttled, 5xx and connection failures transient, redirects to another origin refused).
#[derive(Debug, Clone)]
pub struct OpenAiEmbedder {
    client: reqwest::Client,
    url: String,
    model: String,
    headers: HeaderMap,
    /// The API key, never to appear in an error.
    secrets: Vec<String>,
    max_batch: usize,
    max_input_chars: usize,
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: Vec<&'a str>,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    embedding: Vec<f32>,
    #[serde(default)]
    index: Option<usize>,
}

impl OpenAiEmbedder {
    /// Starts configuring an embedder: base URL and model are required, the rest has
    /// defaults (see [`OpenAiEmbedderBuilder`]).
    pub fn builder() -> OpenAiEmbedderBuilder {
        OpenAiEmbedderBuilder::default()
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Embedding>, ModelError> {
        let input: Vec<&str> = texts.iter().map(|t| cut(t, self.max_input_chars)).collect();
        let body = serde_json::to_vec(&Request {
            model: &self.model,
            input,
        })
        .map_err(|e| ModelError::Config(format!("cannot encode the request: {e}")))?;
        let response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        if !response.status().is_success() {
            return Err(error_from_response(response).await);
        }
        let bytes = read_capped(response, MAX_BODY).await?;
        let reply: Response =
            parse_answer("the embeddings answer is not the expected JSON", &bytes)?;
        self.check(reply, texts.len())
    }

    /// The vectors in input order, if the answer holds exactly one usable vector per text.
    fn check(&self, reply: Response, expected: usize) -> Result<Vec<Embedding>, ModelError> {
        if reply.data.len() != expected {
            return Err(invalid(format!(
                "{} vectors for {expected} texts",
                reply.data.len()
            )));
        }
        let mut slots: Vec<Option<Vec<f32>>> = vec![None; expected];
        for (position, item) in reply.data.into_iter().enumerate() {
            let i = item.index.unwrap_or(position);
            let slot = slots
                .get_mut(i)
                .ok_or_else(|| invalid(format!("vector index {i} for {expected} texts")))?;
            if slot.is_some() {
                return Err(invalid(format!("two vectors for text {i}")));
            }
            *slot = Some(item.embedding);
        }
        let vectors = slots
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| invalid(format!("no vector for text {i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        checked(&self.model, vectors)
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    async fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>, ModelError> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.max_batch) {
            let vectors = self
                .embed_batch(batch)
                .await
                .map_err(|e| e.redacted(&self.secrets))?;
            out.extend(vectors);
        }
        Ok(out)
    }
}
