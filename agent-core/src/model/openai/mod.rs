//! The OpenAI-compatible chat-completions provider: vLLM first, and OpenAI, Ollama and llama.cpp
//! servers.
//!
//! What it handles of vLLM's wire format (see the tests in `tests/tests/provider.rs`):
//! - streamed tool-call deltas accumulated by `index` (id and name only on the first delta,
//!   argument fragments after, the last fragment possibly on the chunk with `finish_reason`);
//!   deltas without an index are attached by id, or to the last call;
//! - tool calls decided by their presence, not by `finish_reason` (a named `tool_choice` ends
//!   with `stop`);
//! - arguments as a JSON string, as a JSON object, or doubly encoded; unparseable arguments are
//!   kept as a string so the executor answers them with an error result the model can read;
//! - `reasoning_content` and `reasoning`; usage from `stream_options.include_usage`;
//! - both error body shapes (`{"error":{...}}` and the legacy flat `{"object":"error",...}`),
//!   and errors sent mid-stream as `data: {"error":{...}}`.
//!
//! Errors are classified: HTTP 400 mentioning the maximum context length -> context overflow;
//! 429 and 503 -> throttled with `Retry-After`; connection failures, timeouts, 408 and other
//! 5xx, cut or malformed streams -> transient; anything else -> fatal with the server's message.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::{Map, Value};

use self::error::{MAX_BODY, error_from_response, read_capped, transport_error};
use self::request::{build_body, constrained_schema};
use self::response::{non_streaming_events, sse_events};
use super::{Model, ModelDescriptor, ModelError, ModelRequest, ModelStream};

pub use super::DEFAULT_MAX_TOKENS;

/// Sampling and length parameters sent with every request (usually set through the builder's
/// methods; [`OpenAiCompatibleBuilder::params`] takes them all at once).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RequestParams {
    /// Maximum tokens to generate (`max_tokens`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Stop sequences.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Sampling seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Any other body field (vLLM's `top_k`, `chat_template_kwargs`, ...), merged into the body.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl RequestParams {
    /// Sets `max_tokens`.
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Sets the temperature.
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = Some(t);
        self
    }

    /// Sets `top_p`.
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = Some(p);
        self
    }

    /// Adds a stop sequence.
    pub fn stop(mut self, s: impl Into<String>) -> Self {
        self.stop.push(s.into());
        self
    }

    /// Sets the sampling seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Adds any other body field.
    pub fn extra(mut self, name: impl Into<String>, value: Value) -> Self {
        self.extra.insert(name.into(), value);
        self
    }
}

/// Builds an [`OpenAiCompatible`] provider.
#[derive(Debug, Clone)]
pub struct OpenAiCompatibleBuilder {
    base_url: Option<String>,
    api_key: Option<String>,
    model: Option<String>,
    headers: Vec<(String, String)>,
    params: RequestParams,
    streaming: bool,
    tool_calling: Option<ToolCalling>,
    provider_name: String,
    connect_timeout: Duration,
    read_timeout: Duration,
    client: Option<reqwest::Client>,
}

/// How tools are offered to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ToolCalling {
    /// The API's `tools` and `tool_choice` (the default): for OpenAI, and for vLLM started with
    /// `--enable-auto-tool-choice --tool-call-parser <parser>`.
    #[default]
    Native,
    /// The tools and a final-answer branch as one JSON Schema sent as `response_format`, which
    /// the server enforces as a grammar (vLLM structured outputs, llama.cpp): for vLLM without a
    /// tool parser and for small local models that ignore their tool-call format. Replies map
    /// back to ordinary tool uses and text, so nothing else in the runtime sees a difference.
    Constrained {
        /// Allow several tool calls in one reply.
        parallel: bool,
    },
}

impl ToolCalling {
    /// Reads `OPENAI_TOOL_CALLING` (`native`, `constrained` or `constrained-parallel`).
    fn from_env() -> Result<Option<Self>, ModelError> {
        match std::env::var("OPENAI_TOOL_CALLING") {
            Err(_) => Ok(None),
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "" | "native" => Ok(Some(Self::Native)),
                "constrained" => Ok(Some(Self::Constrained { parallel: false })),
                "constrained-parallel" => Ok(Some(Self::Constrained { parallel: true })),
                other => Err(ModelError::Config(format!(
                    "OPENAI_TOOL_CALLING=`{other}`: use native, constrained or constrained-parallel"
                ))),
            },
        }
    }
}

impl Default for OpenAiCompatibleBuilder {
    fn default() -> Self {
        Self {
            base_url: None,
            api_key: None,
            model: None,
            headers: Vec::new(),
            params: RequestParams {
                max_tokens: Some(DEFAULT_MAX_TOKENS),
                ..RequestParams::default()
            },
            streaming: true,
            tool_calling: None,
            provider_name: "openai".into(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
            client: None,
        }
    }
}

impl OpenAiCompatibleBuilder {
    /// The API base URL including `/v1`, e.g. `http://vllm.models.svc:8000/v1`.
    /// Defaults to `OPENAI_BASE_URL`.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The API key, sent as a bearer token. Defaults to `OPENAI_API_KEY`, if set.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The model name; on vLLM, its `--served-model-name`. Defaults to `OPENAI_MODEL`.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// An extra header sent with every request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// All request parameters at once.
    pub fn params(mut self, params: RequestParams) -> Self {
        self.params = params;
        self
    }

    /// `max_tokens`: the most tokens one call may generate (default [`DEFAULT_MAX_TOKENS`]). A
    /// request's own [`ModelRequest::max_tokens`] may lower it for that call.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.params.max_tokens = Some(max_tokens);
        self
    }

    /// `temperature`.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.params.temperature = Some(temperature);
        self
    }

    /// Any other body field, e.g. `("top_k", json!(20))`.
    pub fn param(mut self, name: impl Into<String>, value: Value) -> Self {
        self.params.extra.insert(name.into(), value);
        self
    }

    /// Streaming (the default) or one JSON response per call.
    pub fn streaming(mut self, streaming: bool) -> Self {
        self.streaming = streaming;
        self
    }

    /// How tools are offered (default [`ToolCalling::Native`], or `OPENAI_TOOL_CALLING`).
    pub fn tool_calling(mut self, mode: ToolCalling) -> Self {
        self.tool_calling = Some(mode);
        self
    }

    /// The provider name telemetry reports as `gen_ai.provider.name` (default `openai`, the
    /// wire protocol; set `vllm` for a vLLM server).
    pub fn provider_name(mut self, name: impl Into<String>) -> Self {
        self.provider_name = name.into();
        self
    }

    /// Bound on establishing a connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on any wait for bytes from the server, the first byte included (default 120 s).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Uses this `reqwest` client instead of building one (timeouts then are the client's).
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Builds the provider.
    pub fn build(self) -> Result<OpenAiCompatible, ModelError> {
        let base_url = match self.base_url {
            Some(u) => u,
            None => std::env::var("OPENAI_BASE_URL").map_err(|_| {
                ModelError::Config(
                    "no model endpoint: set OPENAI_BASE_URL (e.g. http://localhost:8000/v1) or call base_url()"
                        .into(),
                )
            })?,
        };
        let model = match self.model {
            Some(m) => m,
            None => std::env::var("OPENAI_MODEL").map_err(|_| {
                ModelError::Config(
                    "no model name: set OPENAI_MODEL (vLLM's --served-model-name) or call model()"
                        .into(),
                )
            })?,
        };
        let api_key = self
            .api_key
            .or_else(|| std::env::var("OPENAI_API_KEY").ok());
        let tool_calling = match self.tool_calling {
            Some(mode) => mode,
            None => ToolCalling::from_env()?.unwrap_or_default(),
        };
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| ModelError::Config(format!("invalid base URL `{base_url}`: {e}")))?;
        let mut headers = HeaderMap::new();
        // Values a server could echo back into an error: redacted from every error text.
        let mut secrets: Vec<String> = self.headers.iter().map(|(_, v)| v.clone()).collect();
        if let Some(key) = api_key.filter(|k| !k.is_empty()) {
            secrets.push(key.clone());
            headers.insert(AUTHORIZATION, bearer(&key)?);
        }
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ModelError::Config(format!("invalid header name `{name}`")))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| ModelError::Config(format!("invalid value for header `{name}`")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = match self.client {
            Some(c) => c,
            None => http_client(
                reqwest::Client::builder()
                    .connect_timeout(self.connect_timeout)
                    .read_timeout(self.read_timeout),
            )?,
        };
        let descriptor = ModelDescriptor {
            provider: self.provider_name.clone(),
            model: model.clone(),
            server_address: parsed.host_str().map(str::to_owned),
            server_port: parsed.port_or_known_default(),
            streaming: self.streaming,
            max_tokens: self.params.max_tokens,
            temperature: self.params.temperature.map(f64::from),
            top_p: self.params.top_p.map(f64::from),
            seed: self.params.seed,
        };
        Ok(OpenAiCompatible {
            inner: Arc::new(Inner {
                client,
                url,
                model,
                headers,
                params: self.params,
                streaming: self.streaming,
                tool_calling,
                descriptor,
                secrets,
            }),
        })
    }
}

/// A provider for any OpenAI-compatible chat-completions endpoint. Cheap to clone: one pooled
/// HTTP client is shared by all clones.
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    url: String,
    model: String,
    headers: HeaderMap,
    params: RequestParams,
    streaming: bool,
    tool_calling: ToolCalling,
    descriptor: ModelDescriptor,
    /// The API key and custom header values, never to appear in an error.
    secrets: Vec<String>,
}

/// The `Authorization` header for a bearer key, marked sensitive (kept out of debug output).
fn bearer(key: &str) -> Result<HeaderValue, ModelError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
        .map_err(|_| ModelError::Config("the API key is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// An HTTP client for an OpenAI-compatible server, from `builder`'s timeouts: pooled
/// connections are dropped after 4 s idle, below the 5 s keep-alive of uvicorn (vLLM) and
/// cpp-httplib (llama.cpp), so a connection the server has closed is never taken for a request
/// (which would fail with "connection closed before message completed"); redirects stay within
/// the endpoint's origin.
fn http_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, ModelError> {
    builder
        .pool_idle_timeout(Duration::from_secs(4))
        .redirect(same_origin_redirects())
        .build()
        .map_err(|e| ModelError::Config(format!("cannot build the HTTP client: {e}")))
}

/// Follows a redirect only within the endpoint's origin (scheme, host and port), at most 5
/// times. A redirect elsewhere is not followed: its 3xx response becomes
/// [`ModelError::Redirected`], because following it would send the conversation and the
/// headers (API keys included) to a server nobody configured.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if same_origin && attempt.previous().len() <= 5 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

impl OpenAiCompatible {
    /// Starts configuring a provider: every setting falls back to the `OPENAI_*` variables
    /// and then to defaults (see [`OpenAiCompatibleBuilder`]).
    pub fn builder() -> OpenAiCompatibleBuilder {
        OpenAiCompatibleBuilder::default()
    }

    /// A provider configured from `OPENAI_BASE_URL`, `OPENAI_MODEL` and `OPENAI_API_KEY`.
    pub fn from_env() -> Result<Self, ModelError> {
        Self::builder().build()
    }

    /// The chat-completions URL requests go to.
    pub fn url(&self) -> &str {
        &self.inner.url
    }
}

impl Model for OpenAiCompatible {
    fn stream(&self, request: &ModelRequest<'_>) -> ModelStream {
        let inner = &self.inner;
        let constrained = constrained_schema(inner, request).is_some();
        let body = match build_body(inner, request) {
            Ok(b) => b,
            Err(e) => return Box::pin(futures::stream::once(async move { Err(e) })),
        };
        let send = inner
            .client
            .post(&inner.url)
            .headers(inner.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send();
        let streaming = inner.streaming;
        let stream = futures::stream::once(async move {
            let response = send.await.map_err(transport_error)?;
            let status = response.status();
            if !status.is_success() {
                return Err(error_from_response(response).await);
            }
            if streaming {
                Ok(sse_events(response, constrained).boxed())
            } else {
                let bytes = read_capped(response, MAX_BODY).await?;
                Ok(futures::stream::iter(non_streaming_events(&bytes, constrained)).boxed())
            }
        })
        .flat_map(|r| match r {
            Ok(s) => s,
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        });
        if inner.secrets.is_empty() {
            return Box::pin(stream);
        }
        let secrets = self.inner.clone();
        Box::pin(stream.map(move |item| item.map_err(|e| e.redacted(&secrets.secrets))))
    }

    fn descriptor(&self) -> ModelDescriptor {
        self.inner.descriptor.clone()
    }
}

mod embedding;
mod error;
mod request;
mod response;

pub use embedding::{DEFAULT_EMBEDDING_BATCH, OpenAiEmbedder, OpenAiEmbedderBuilder};
