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

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use eventsource_stream::Eventsource as _;
use futures::{Stream, StreamExt};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::constrained::{self, AnswerStreamer};
use super::{
    Model, ModelDescriptor, ModelError, ModelEvent, ModelRequest, ModelResponse, ModelStopReason,
    ModelStream, ToolChoice, Usage,
};
use crate::message::{
    ContentBlock, Message, ReasoningContent, ReasoningText, Role, ToolResultContent, ToolUse,
};
use crate::tool::ToolSpec;

/// Sampling and length parameters sent with every request.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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
            params: RequestParams::default(),
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

    /// `max_tokens`.
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
        if let Some(key) = api_key.filter(|k| !k.is_empty()) {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                ModelError::Config("the API key is not a valid header value".into())
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
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
            None => reqwest::Client::builder()
                .connect_timeout(self.connect_timeout)
                .read_timeout(self.read_timeout)
                .pool_idle_timeout(Duration::from_secs(60))
                .build()
                .map_err(|e| ModelError::Config(format!("cannot build the HTTP client: {e}")))?,
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
}

impl OpenAiCompatible {
    /// A builder.
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
                let bytes = response.bytes().await.map_err(transport_error)?;
                Ok(futures::stream::iter(non_streaming_events(&bytes, constrained)).boxed())
            }
        })
        .flat_map(|r| match r {
            Ok(s) => s,
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        });
        Box::pin(stream)
    }

    fn descriptor(&self) -> ModelDescriptor {
        self.inner.descriptor.clone()
    }
}

// ---------------------------------------------------------------- request body

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(flatten)]
    params: &'a RequestParams,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum WireMessage<'a> {
    System {
        content: Cow<'a, str>,
    },
    User {
        content: UserContent<'a>,
    },
    Assistant {
        content: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<WireToolCall<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: String,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum UserContent<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<UserPart<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum UserPart<'a> {
    Text { text: Cow<'a, str> },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Serialize)]
struct ImageUrl {
    url: String,
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    r#type: &'static str,
    function: WireFunctionCall<'a>,
}

#[derive(Serialize)]
struct WireFunctionCall<'a> {
    name: &'a str,
    arguments: String,
}

#[derive(Serialize)]
struct WireTool<'a> {
    r#type: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

/// The reply schema when this request uses constrained tool calling.
fn constrained_schema(inner: &Inner, request: &ModelRequest<'_>) -> Option<(Value, bool)> {
    match inner.tool_calling {
        ToolCalling::Constrained { parallel } => {
            constrained::reply_schema(request.tools, request.tool_choice, parallel)
                .map(|s| (s, parallel))
        }
        ToolCalling::Native => None,
    }
}

fn build_body(inner: &Inner, request: &ModelRequest<'_>) -> Result<Vec<u8>, ModelError> {
    let constrained = constrained_schema(inner, request);
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    let system: Option<Cow<'_, str>> = match (&constrained, request.system_prompt) {
        (Some((_, parallel)), prompt) => {
            let protocol =
                constrained::protocol_prompt(request.tools, request.tool_choice, *parallel);
            Some(Cow::Owned(match prompt {
                Some(p) => format!("{p}\n\n{protocol}"),
                None => protocol,
            }))
        }
        (None, prompt) => prompt.map(Cow::Borrowed),
    };
    if let Some(content) = system {
        messages.push(WireMessage::System { content });
    }
    let (tools, tool_choice, response_format) = match constrained {
        Some((schema, _)) => {
            let mut names = HashMap::new();
            for m in &request.messages {
                push_protocol_messages(&mut messages, m, &mut names);
            }
            let format = serde_json::json!({"type": "json_schema", "json_schema": {"name": "agent_step", "schema": schema}});
            (Vec::new(), None, Some(format))
        }
        None => {
            for m in &request.messages {
                push_wire_messages(&mut messages, m);
            }
            let tools: Vec<WireTool<'_>> = request.tools.iter().map(wire_tool).collect();
            let choice = (!tools.is_empty()).then(|| tool_choice_json(request.tool_choice));
            (tools, choice, None)
        }
    };
    let body = ChatRequest {
        model: &inner.model,
        messages,
        stream: inner.streaming,
        stream_options: inner.streaming.then_some(StreamOptions {
            include_usage: true,
        }),
        tools,
        tool_choice,
        response_format,
        params: &inner.params,
    };
    serde_json::to_vec(&body)
        .map_err(|e| ModelError::Config(format!("cannot encode the request: {e}")))
}

/// A message in the constrained protocol: assistant turns as the JSON the model writes, tool
/// results as `{"tool_result": ...}` text in user turns.
fn push_protocol_messages<'a>(
    out: &mut Vec<WireMessage<'a>>,
    m: &'a Message,
    names: &mut HashMap<&'a str, &'a str>,
) {
    match m.role {
        Role::Assistant => {
            for u in m.tool_uses() {
                names.insert(&u.tool_use_id, &u.name);
            }
            out.push(WireMessage::Assistant {
                content: Some(constrained::render_assistant(&m.content)),
                tool_calls: Vec::new(),
            });
        }
        Role::User => {
            let mut parts: Vec<UserPart<'a>> = Vec::new();
            for block in &m.content {
                match block {
                    ContentBlock::ToolResult(r) => {
                        let name = names
                            .get(r.tool_use_id.as_str())
                            .copied()
                            .unwrap_or("unknown");
                        let text =
                            constrained::render_result(name, r, tool_result_text(&r.content));
                        parts.push(UserPart::Text {
                            text: Cow::Owned(text),
                        });
                    }
                    ContentBlock::Text(t) => parts.push(UserPart::Text {
                        text: Cow::Borrowed(t),
                    }),
                    ContentBlock::Document(d) => parts.push(UserPart::Text {
                        text: Cow::Owned(document_text(d)),
                    }),
                    ContentBlock::Image(img) => parts.push(image_part(img)),
                    _ => {}
                }
            }
            if parts.is_empty() {
                return;
            }
            if parts.iter().all(|p| matches!(p, UserPart::Text { .. })) {
                let joined: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| match p {
                        UserPart::Text { text } => Some(text.as_ref()),
                        UserPart::ImageUrl { .. } => None,
                    })
                    .collect();
                out.push(WireMessage::User {
                    content: UserContent::Text(Cow::Owned(joined.join("\n"))),
                });
            } else {
                out.push(WireMessage::User {
                    content: UserContent::Parts(parts),
                });
            }
        }
    }
}

fn image_part<'a>(img: &crate::message::Image) -> UserPart<'a> {
    UserPart::ImageUrl {
        image_url: ImageUrl {
            url: format!(
                "data:{};base64,{}",
                img.format.mime_type(),
                base64::engine::general_purpose::STANDARD.encode(&img.source.bytes.0)
            ),
        },
    }
}

fn wire_tool(spec: &ToolSpec) -> WireTool<'_> {
    WireTool {
        r#type: "function",
        function: WireFunction {
            name: &spec.name,
            description: &spec.description,
            parameters: &spec.input_schema,
        },
    }
}

fn tool_choice_json(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => Value::from("auto"),
        ToolChoice::Any => Value::from("required"),
        ToolChoice::None => Value::from("none"),
        ToolChoice::Tool(name) => {
            serde_json::json!({"type": "function", "function": {"name": name}})
        }
    }
}

fn push_wire_messages<'a>(out: &mut Vec<WireMessage<'a>>, m: &'a Message) {
    match m.role {
        Role::Assistant => {
            let mut text: Option<String> = None;
            let mut tool_calls = Vec::new();
            for block in &m.content {
                match block {
                    ContentBlock::Text(t) => text.get_or_insert_with(String::new).push_str(t),
                    ContentBlock::ToolUse(u) => tool_calls.push(WireToolCall {
                        id: &u.tool_use_id,
                        r#type: "function",
                        function: WireFunctionCall {
                            name: &u.name,
                            arguments: arguments_text(&u.input),
                        },
                    }),
                    // Reasoning is not fed back (vLLM's guidance); media cannot be sent by the assistant.
                    _ => {}
                }
            }
            out.push(WireMessage::Assistant {
                content: text,
                tool_calls,
            });
        }
        Role::User => {
            let mut parts: Vec<UserPart<'a>> = Vec::new();
            for block in &m.content {
                match block {
                    ContentBlock::ToolResult(r) => out.push(WireMessage::Tool {
                        tool_call_id: &r.tool_use_id,
                        content: tool_result_text(&r.content),
                    }),
                    ContentBlock::Text(t) => parts.push(UserPart::Text {
                        text: t.as_str().into(),
                    }),
                    ContentBlock::Image(img) => parts.push(image_part(img)),
                    _ => {}
                }
            }
            match parts.as_slice() {
                [] => {}
                [
                    UserPart::Text {
                        text: Cow::Borrowed(t),
                    },
                ] => out.push(WireMessage::User {
                    content: UserContent::Text(Cow::Borrowed(t)),
                }),
                _ => out.push(WireMessage::User {
                    content: UserContent::Parts(parts),
                }),
            }
        }
    }
}

/// The `arguments` string for a tool use: its JSON, or the raw text it could not be parsed from.
fn arguments_text(input: &Value) -> String {
    match input {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    }
}

/// Tool-message content as a string, which every chat template accepts.
fn tool_result_text(content: &[ToolResultContent]) -> String {
    let mut out = String::new();
    for (i, c) in content.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match c {
            ToolResultContent::Text(t) => out.push_str(t),
            ToolResultContent::Json(v) => out.push_str(&v.to_string()),
            ToolResultContent::Image(img) => out.push_str(&format!(
                "[image: {}, {} bytes]",
                img.format.mime_type(),
                img.source.bytes.0.len()
            )),
            ToolResultContent::Document(d) => out.push_str(&document_text(d)),
        }
    }
    out
}

fn document_text(d: &crate::message::Document) -> String {
    match d.format.as_str() {
        "txt" | "md" | "csv" | "html" => match std::str::from_utf8(&d.source.bytes.0) {
            Ok(text) => format!("[document: {}]\n{text}", d.name),
            Err(_) => format!("[document: {} ({}), not valid UTF-8]", d.name, d.format),
        },
        other => format!(
            "[document: {} ({other}, {} bytes)]",
            d.name,
            d.source.bytes.0.len()
        ),
    }
}

// ---------------------------------------------------------------- responses

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default, alias = "message")]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    param: Option<Value>,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// Builds the response from chunks and produces the events to emit.
#[derive(Default)]
struct Assembler {
    text: String,
    reasoning: String,
    calls: Vec<PartialCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    id: Option<String>,
    model: Option<String>,
    pending: VecDeque<ModelEvent>,
    /// Set in constrained tool calling: the reply is protocol JSON, parsed at the end.
    constrained: Option<AnswerStreamer>,
}

struct PartialCall {
    index: usize,
    id: String,
    name: String,
    arguments: String,
}

impl Assembler {
    fn feed(&mut self, chunk: Chunk) -> Result<(), ModelError> {
        if let Some(err) = chunk.error {
            return Err(classify(
                err.code
                    .as_ref()
                    .and_then(Value::as_u64)
                    .map_or(500, |c| c as u16),
                &err,
                None,
            ));
        }
        if self.id.is_none() {
            self.id = chunk.id;
        }
        if self.model.is_none() {
            self.model = chunk.model;
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(Usage {
                input_tokens: u.prompt_tokens,
                output_tokens: u.completion_tokens,
                total_tokens: u
                    .total_tokens
                    .unwrap_or(u.prompt_tokens + u.completion_tokens),
            });
        }
        for choice in chunk.choices {
            if let Some(delta) = choice.delta {
                self.feed_delta(delta);
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        Ok(())
    }

    fn feed_delta(&mut self, delta: Delta) {
        for reasoning in [delta.reasoning_content, delta.reasoning]
            .into_iter()
            .flatten()
        {
            if !reasoning.is_empty() {
                self.reasoning.push_str(&reasoning);
                self.pending.push_back(ModelEvent::ReasoningDelta {
                    text: reasoning,
                    signature: None,
                });
            }
        }
        if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
            if let Some(streamer) = &mut self.constrained {
                if let Some(answer) = streamer.push(&text) {
                    self.pending.push_back(ModelEvent::TextDelta(answer));
                }
            } else {
                self.text.push_str(&text);
                self.pending.push_back(ModelEvent::TextDelta(text));
            }
        }
        for (position, call) in delta.tool_calls.into_iter().flatten().enumerate() {
            self.feed_tool_call(position, call);
        }
    }

    fn feed_tool_call(&mut self, position: usize, call: ToolCallDelta) {
        let slot = match (call.index, call.id.as_deref()) {
            (Some(index), _) => self.calls.iter().position(|c| c.index == index),
            (None, Some(id)) => self.calls.iter().position(|c| c.id == id),
            (None, None) => self.calls.len().checked_sub(1),
        };
        let function = call.function;
        let (name, arguments) = match function {
            Some(f) => (f.name, f.arguments),
            None => (None, None),
        };
        let slot = match slot {
            Some(s) => s,
            None => {
                let index = call.index.unwrap_or(self.calls.len().max(position));
                let id = call
                    .id
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| format!("call_{index}_{:08x}", fastrand::u32(..)));
                let name = name.clone().unwrap_or_default();
                self.pending.push_back(ModelEvent::ToolUseStart {
                    tool_use_id: id.clone(),
                    name: name.clone(),
                });
                self.calls.push(PartialCall {
                    index,
                    id,
                    name,
                    arguments: String::new(),
                });
                self.calls.len() - 1
            }
        };
        let entry = &mut self.calls[slot];
        if entry.name.is_empty()
            && let Some(n) = name
        {
            entry.name = n;
        }
        let fragment = match arguments {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        if !fragment.is_empty() {
            entry.arguments.push_str(&fragment);
            self.pending.push_back(ModelEvent::ToolInputDelta {
                tool_use_id: entry.id.clone(),
                delta: fragment,
            });
        }
    }

    /// Finishes the response and queues it as the last event.
    fn complete(&mut self) -> Result<(), ModelError> {
        let response = self.finish()?;
        self.pending.push_back(ModelEvent::Completed(response));
        Ok(())
    }

    fn new(constrained: bool) -> Self {
        Self {
            constrained: constrained.then(AnswerStreamer::default),
            ..Self::default()
        }
    }

    fn finish(&mut self) -> Result<ModelResponse, ModelError> {
        if let Some(streamer) = self.constrained.take() {
            let mut counter = 0u32;
            let prefix = fastrand::u32(..);
            let mut next_id = || {
                counter += 1;
                format!("call_{prefix:08x}_{counter}")
            };
            let blocks = constrained::parse_reply(streamer.raw(), &mut next_id)
                .map_err(|e| ModelError::InvalidReply { message: e.0 })?;
            for block in blocks {
                match block {
                    ContentBlock::ToolUse(u) => {
                        self.pending.push_back(ModelEvent::ToolUseStart {
                            tool_use_id: u.tool_use_id.clone(),
                            name: u.name.clone(),
                        });
                        self.pending.push_back(ModelEvent::ToolInputDelta {
                            tool_use_id: u.tool_use_id.clone(),
                            delta: u.input.to_string(),
                        });
                        self.calls.push(PartialCall {
                            index: self.calls.len(),
                            id: u.tool_use_id,
                            name: u.name,
                            arguments: u.input.to_string(),
                        });
                    }
                    ContentBlock::Text(t) => self.text = t,
                    _ => {}
                }
            }
        }
        let mut content = Vec::with_capacity(2 + self.calls.len());
        if !self.reasoning.is_empty() {
            content.push(ContentBlock::ReasoningContent(
                ReasoningContent::ReasoningText(ReasoningText {
                    text: std::mem::take(&mut self.reasoning),
                    signature: None,
                }),
            ));
        }
        if !self.text.is_empty() {
            content.push(ContentBlock::Text(std::mem::take(&mut self.text)));
        }
        let has_calls = !self.calls.is_empty();
        for call in self.calls.drain(..) {
            content.push(ContentBlock::ToolUse(ToolUse {
                tool_use_id: call.id,
                name: call.name,
                input: parse_arguments(call.arguments),
            }));
        }
        let stop_reason = if has_calls {
            ModelStopReason::ToolUse
        } else {
            match self.finish_reason.as_deref() {
                Some("length") => ModelStopReason::MaxTokens,
                Some("content_filter") => ModelStopReason::ContentFiltered,
                _ => ModelStopReason::EndTurn,
            }
        };
        Ok(ModelResponse {
            content,
            stop_reason,
            finish_reason: self.finish_reason.take(),
            usage: self.usage.unwrap_or_default(),
            response_id: self.id.take(),
            response_model: self.model.take(),
        })
    }
}

/// Parses accumulated arguments: an object, a doubly encoded object, or (unparseable) the raw
/// text as a JSON string.
fn parse_arguments(raw: String) -> Value {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Value::Object(Map::new());
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(Value::Null) => Value::Object(Map::new()),
        Ok(Value::String(inner)) => match serde_json::from_str::<Value>(&inner) {
            Ok(Value::Object(map)) => Value::Object(map),
            _ => Value::String(raw),
        },
        _ => Value::String(raw),
    }
}

fn sse_events(
    response: reqwest::Response,
    constrained: bool,
) -> impl Stream<Item = Result<ModelEvent, ModelError>> + Send {
    struct State<S> {
        source: S,
        assembler: Assembler,
        done: bool,
    }
    let source = response.bytes_stream().eventsource();
    futures::stream::unfold(
        State {
            source,
            assembler: Assembler::new(constrained),
            done: false,
        },
        |mut st| async move {
            loop {
                if let Some(ev) = st.assembler.pending.pop_front() {
                    return Some((Ok(ev), st));
                }
                if st.done {
                    return None;
                }
                match st.source.next().await {
                    Some(Ok(event)) => {
                        let data = event.data.trim();
                        if data.is_empty() {
                            continue;
                        }
                        if data == "[DONE]" {
                            st.done = true;
                            if let Err(e) = st.assembler.complete() {
                                return Some((Err(e), st));
                            }
                            continue;
                        }
                        let chunk: Chunk = match serde_json::from_str(data) {
                            Ok(c) => c,
                            Err(e) => {
                                st.done = true;
                                return Some((
                                    Err(ModelError::Transient {
                                        message: format!("malformed stream chunk: {e}"),
                                    }),
                                    st,
                                ));
                            }
                        };
                        if let Err(e) = st.assembler.feed(chunk) {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((
                            Err(ModelError::Transient {
                                message: format!("stream interrupted: {e}"),
                            }),
                            st,
                        ));
                    }
                    None => {
                        st.done = true;
                        // Some servers end without `[DONE]`; a finish reason says the response is whole.
                        if st.assembler.finish_reason.is_some() {
                            if let Err(e) = st.assembler.complete() {
                                return Some((Err(e), st));
                            }
                            continue;
                        }
                        return Some((
                            Err(ModelError::Transient {
                                message: "stream ended before the response was complete".into(),
                            }),
                            st,
                        ));
                    }
                }
            }
        },
    )
}

fn non_streaming_events(bytes: &[u8], constrained: bool) -> Vec<Result<ModelEvent, ModelError>> {
    let chunk: Chunk = match serde_json::from_slice(bytes) {
        Ok(c) => c,
        Err(e) => {
            return vec![Err(ModelError::Transient {
                message: format!("malformed response body: {e}"),
            })];
        }
    };
    let mut assembler = Assembler::new(constrained);
    if let Err(e) = assembler.feed(chunk).and_then(|()| assembler.complete()) {
        return vec![Err(e)];
    }
    assembler.pending.drain(..).map(Ok).collect()
}

// ---------------------------------------------------------------- errors

fn transport_error(e: reqwest::Error) -> ModelError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    ModelError::Transient {
        message: format!("{what}: {e}"),
    }
}

async fn error_from_response(response: reqwest::Response) -> ModelError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return ModelError::Transient {
                message: format!("HTTP {status}, body unreadable: {e}"),
            };
        }
    };
    #[derive(Deserialize)]
    struct Envelope {
        error: WireError,
    }
    let err = serde_json::from_slice::<Envelope>(&body)
        .map(|e| e.error)
        .or_else(|_| serde_json::from_slice::<WireError>(&body))
        .unwrap_or(WireError {
            message: None,
            param: None,
            code: None,
            kind: None,
        });
    let err = if err.message.is_none() {
        let text = String::from_utf8_lossy(&body);
        let text: String = text.chars().take(500).collect();
        WireError {
            message: Some(if text.is_empty() {
                format!("HTTP {status}")
            } else {
                text
            }),
            ..err
        }
    } else {
        err
    };
    classify(status, &err, retry_after)
}

fn classify(status: u16, err: &WireError, retry_after: Option<Duration>) -> ModelError {
    let message = err
        .message
        .clone()
        .unwrap_or_else(|| format!("HTTP {status}"));
    let lower = message.to_ascii_lowercase();
    let overflow = lower.contains("maximum context length")
        || lower.contains("context length")
        || lower.contains("context size")
        || err.param.as_ref().and_then(Value::as_str) == Some("input_tokens")
        || err.code.as_ref().and_then(Value::as_str) == Some("context_length_exceeded")
        || err.kind.as_deref() == Some("exceed_context_size_error");
    match status {
        400 | 413 if overflow => ModelError::ContextOverflow { message },
        429 | 503 => ModelError::Throttled {
            status,
            message,
            retry_after,
        },
        408 | 500..=599 => ModelError::Transient {
            message: format!("HTTP {status}: {message}"),
        },
        _ => ModelError::Fatal {
            status: Some(status),
            message,
        },
    }
}

fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chunk(v: Value) -> Chunk {
        serde_json::from_value(v).expect("chunk")
    }

    #[test]
    fn accumulates_tool_calls_by_index_including_the_finishing_chunk() {
        let mut a = Assembler::default();
        a.feed(chunk(json!({"choices":[{"index":0,"delta":{"tool_calls":[{"id":"chatcmpl-tool-1","type":"function","index":0,"function":{"name":"search"}}]}}]}))).expect("ok");
        a.feed(chunk(json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"chatcmpl-tool-2","function":{"name":"other","arguments":""}}]}}]}))).expect("ok");
        a.feed(chunk(json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"q\": "}}]}}]}))).expect("ok");
        a.feed(chunk(json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":{"x":1}}},{"index":0,"function":{"arguments":"\"lisbon\"}"}}]},"finish_reason":"tool_calls"}]}))).expect("ok");
        let r = a.finish().expect("response");
        assert_eq!(r.stop_reason, ModelStopReason::ToolUse);
        let uses: Vec<_> = r
            .content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::ToolUse(u) => Some(u),
                _ => None,
            })
            .collect();
        assert_eq!(uses.len(), 2);
        assert_eq!(uses[0].tool_use_id, "chatcmpl-tool-1");
        assert_eq!(uses[0].input, json!({"q": "lisbon"}));
        assert_eq!(uses[1].name, "other");
        assert_eq!(uses[1].input, json!({"x": 1}));
    }

    #[test]
    fn decides_tool_use_by_presence_not_finish_reason() {
        let mut a = Assembler::default();
        a.feed(chunk(json!({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"stop"}]}))).expect("ok");
        assert_eq!(
            a.finish().expect("response").stop_reason,
            ModelStopReason::ToolUse
        );
        let mut b = Assembler::default();
        b.feed(chunk(
            json!({"choices":[{"delta":{"content":"hi"},"finish_reason":"tool_calls"}]}),
        ))
        .expect("ok");
        assert_eq!(
            b.finish().expect("response").stop_reason,
            ModelStopReason::EndTurn
        );
    }

    #[test]
    fn arguments_parsing() {
        assert_eq!(parse_arguments("".into()), json!({}));
        assert_eq!(parse_arguments("{\"a\":1}".into()), json!({"a":1}));
        assert_eq!(parse_arguments("\"{\\\"a\\\":1}\"".into()), json!({"a":1}));
        assert_eq!(parse_arguments("{\"a\":".into()), json!("{\"a\":"));
    }

    #[test]
    fn classifies_errors() {
        let e = |m: &str| WireError {
            message: Some(m.into()),
            param: None,
            code: Some(json!(400)),
            kind: None,
        };
        assert!(matches!(
            classify(
                400,
                &e("This model's maximum context length is 32768 tokens."),
                None
            ),
            ModelError::ContextOverflow { .. }
        ));
        assert!(matches!(
            classify(400, &e("bad"), None),
            ModelError::Fatal {
                status: Some(400),
                ..
            }
        ));
        assert!(matches!(
            classify(429, &e("slow"), Some(Duration::from_secs(2))),
            ModelError::Throttled {
                retry_after: Some(_),
                ..
            }
        ));
        assert!(matches!(
            classify(502, &e("gw"), None),
            ModelError::Transient { .. }
        ));
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn reasoning_from_either_field() {
        let mut a = Assembler::default();
        a.feed(chunk(
            json!({"choices":[{"delta":{"reasoning_content":"think "}}]}),
        ))
        .expect("ok");
        a.feed(chunk(json!({"choices":[{"delta":{"reasoning":"more"}}]})))
            .expect("ok");
        let r = a.finish().expect("response");
        assert_eq!(
            r.content,
            vec![ContentBlock::ReasoningContent(
                ReasoningContent::ReasoningText(ReasoningText {
                    text: "think more".into(),
                    signature: None
                })
            )]
        );
    }
}
