//! The model abstraction: one streaming method, typed events, classified errors.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::message::{ContentBlock, Message};
use crate::tool::ToolSpec;

pub use embed::{Embedder, Embedding};
pub use fallback::Fallback;
pub use scripted::{RecordedRequest, ScriptedModel};

#[cfg(feature = "bedrock")]
#[cfg_attr(docsrs, doc(cfg(feature = "bedrock")))]
pub mod bedrock;
#[cfg(feature = "openai")]
mod constrained;
pub mod embed;
mod fallback;
#[cfg(feature = "openai")]
pub mod openai;
mod scripted;
#[cfg(feature = "openai")]
pub mod sse;

/// The output bound every provider's requests carry unless its builder sets another: no call
/// may generate without bound (a model that loops would otherwise hold a server slot until the
/// read timeout).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// What the model is asked: the visible history, the system prompt, the tools and the tool choice.
///
/// Made with [`ModelRequest::new`] and its setters, so that it can gain fields without breaking
/// callers:
///
/// ```
/// use agent_core::message::Message;
/// use agent_core::model::{ModelRequest, ToolChoice};
///
/// let prompt = Message::user("Weather in Lisbon?");
/// let request = ModelRequest::new(vec![&prompt], &[], &ToolChoice::Auto)
///     .system_prompt("You plan trips.")
///     .max_tokens(256);
/// assert_eq!(request.max_tokens, Some(256));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ModelRequest<'a> {
    /// The messages the model sees, oldest first.
    pub messages: Vec<&'a Message>,
    /// The system prompt, if any.
    pub system_prompt: Option<&'a str>,
    /// The tools the model may call.
    pub tools: &'a [ToolSpec],
    /// Whether and which tool the model must call.
    pub tool_choice: &'a ToolChoice,
    /// A bound on the tokens this call may generate, below the provider's own default (for
    /// example a small one for a background extraction); `None` uses the provider's.
    pub max_tokens: Option<u32>,
    /// A sampling temperature for this call, instead of the provider's (for example 0 for a
    /// background extraction that should not vary from run to run); `None` uses the provider's.
    pub temperature: Option<f32>,
    /// This call asks for structured output: the single tool named by the tool choice carries
    /// the answer's schema. Providers that can enforce a JSON schema on the reply do so (the
    /// OpenAI-compatible provider sends it as `response_format`, which vLLM and llama.cpp
    /// enforce); others force the tool call.
    pub structured_output: bool,
}

impl<'a> ModelRequest<'a> {
    /// A request for `messages` with `tools` offered under `tool_choice`; no system prompt, and
    /// the provider's output bound and temperature.
    pub fn new(
        messages: Vec<&'a Message>,
        tools: &'a [ToolSpec],
        tool_choice: &'a ToolChoice,
    ) -> Self {
        Self {
            messages,
            system_prompt: None,
            tools,
            tool_choice,
            max_tokens: None,
            temperature: None,
            structured_output: false,
        }
    }

    /// Sets the system prompt.
    pub fn system_prompt(mut self, prompt: &'a str) -> Self {
        self.system_prompt = Some(prompt);
        self
    }

    /// Bounds this call's output below the provider's own bound.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets this call's sampling temperature.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Marks this call as asking for structured output (see the field).
    pub fn structured_output(mut self) -> Self {
        self.structured_output = true;
        self
    }
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ToolChoice {
    /// The model decides (the default).
    #[default]
    Auto,
    /// The model must call some tool.
    Any,
    /// The model must not call tools.
    None,
    /// The model must call this tool.
    Tool(String),
}

/// Token usage of one model call or of an invocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// Prompt tokens, the cached ones included (as the GenAI conventions count them).
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Their sum, as reported by the server (or computed).
    pub total_tokens: u64,
    /// Prompt tokens read from the provider's prompt cache (part of `input_tokens`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_input_tokens: u64,
    /// Prompt tokens written to the provider's prompt cache (part of `input_tokens`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_input_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Usage of `input` prompt and `output` generated tokens (total: their sum, saturating).
    pub fn new(input: u64, output: u64) -> Self {
        Self {
            input_tokens: input,
            output_tokens: output,
            total_tokens: input.saturating_add(output),
            cache_read_input_tokens: 0,
            cache_write_input_tokens: 0,
        }
    }

    /// Sets the total as the server reported it.
    pub fn total(mut self, total: u64) -> Self {
        self.total_tokens = total;
        self
    }

    /// Sets the prompt tokens read from and written to the prompt cache (part of the input).
    pub fn cached(mut self, read: u64, written: u64) -> Self {
        self.cache_read_input_tokens = read;
        self.cache_write_input_tokens = written;
        self
    }

    /// Adds another usage to this one, saturating: a peer's absurd count (`u64::MAX`) cannot
    /// overflow.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        self.cache_read_input_tokens = self
            .cache_read_input_tokens
            .saturating_add(other.cache_read_input_tokens);
        self.cache_write_input_tokens = self
            .cache_write_input_tokens
            .saturating_add(other.cache_write_input_tokens);
    }
}

/// Why the model stopped generating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ModelStopReason {
    /// The model finished its answer.
    EndTurn,
    /// The model asked for tools (decided by the presence of tool calls, not the finish reason).
    ToolUse,
    /// The output token limit was reached.
    MaxTokens,
    /// A stop sequence matched.
    StopSequence,
    /// The provider filtered the content.
    ContentFiltered,
    /// A guardrail blocked the prompt or the answer (Bedrock's `guardrail_intervened`).
    GuardrailIntervened,
}

/// A finished model response. A provider makes one with [`ModelResponse::new`] and the setters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ModelResponse {
    /// The assistant message's content (text, reasoning, tool uses) in the order produced.
    pub content: Vec<ContentBlock>,
    /// Why generation stopped.
    pub stop_reason: ModelStopReason,
    /// The provider's raw finish reason, when it gave one.
    pub finish_reason: Option<String>,
    /// Token usage of this call.
    pub usage: Usage,
    /// The provider's response id.
    pub response_id: Option<String>,
    /// The model that answered, as the server named it.
    pub response_model: Option<String>,
}

impl ModelResponse {
    /// A response with this content and stop reason; no usage, ids or raw finish reason.
    pub fn new(content: Vec<ContentBlock>, stop_reason: ModelStopReason) -> Self {
        Self {
            content,
            stop_reason,
            finish_reason: None,
            usage: Usage::default(),
            response_id: None,
            response_model: None,
        }
    }

    /// Sets the usage.
    pub fn usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// Sets the provider's raw finish reason.
    pub fn finish_reason(mut self, reason: impl Into<String>) -> Self {
        self.finish_reason = Some(reason.into());
        self
    }

    /// Sets the provider's response id.
    pub fn response_id(mut self, id: impl Into<String>) -> Self {
        self.response_id = Some(id.into());
        self
    }

    /// Sets the name of the model that answered.
    pub fn response_model(mut self, model: impl Into<String>) -> Self {
        self.response_model = Some(model.into());
        self
    }
}

/// One event of a model stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ModelEvent {
    /// A fragment of answer text.
    TextDelta(String),
    /// A fragment of reasoning.
    ReasoningDelta {
        /// Reasoning text.
        text: String,
        /// A signature, when the provider sends one.
        signature: Option<String>,
    },
    /// A tool call begins.
    ToolUseStart {
        /// Its id.
        tool_use_id: String,
        /// The tool's name.
        name: String,
    },
    /// A fragment of a tool call's JSON arguments.
    ToolInputDelta {
        /// The call's id.
        tool_use_id: String,
        /// The fragment.
        delta: String,
    },
    /// The response is complete; always the last event of a successful stream.
    Completed(ModelResponse),
}

/// A model error, classified so the loop knows what to do with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The prompt does not fit the model's context window: reduce the history and retry.
    #[error("context window overflow: {message}")]
    ContextOverflow {
        /// The server's message.
        message: String,
    },
    /// The server asks us to slow down (HTTP 429 or 503).
    #[error("throttled (HTTP {status}{}): {message}", retry_after.map(|d| format!(", retry after {} s", d.as_secs_f64().ceil())).unwrap_or_default())]
    Throttled {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
        /// The server's `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// A failure worth retrying: connection reset, timeout, 5xx, a malformed or cut stream.
    #[error("transient model error: {message}")]
    Transient {
        /// What happened.
        message: String,
    },
    /// The connection failed or broke (refused, reset, timed out, cut in the middle of a
    /// stream). Retried like a transient error; `source` is the HTTP client's error.
    #[error("transient model error: {message}")]
    Connection {
        /// What happened.
        message: String,
        /// The HTTP client's error.
        #[source]
        source: crate::error::Cause,
    },
    /// A failure that retrying will not fix.
    #[error("model error{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Fatal {
        /// HTTP status, when there was one.
        status: Option<u16>,
        /// The server's message.
        message: String,
    },
    /// The reply does not follow the constrained tool-calling protocol (for example a reply cut
    /// off by the token limit). Retried like a transient error, within the retry budget.
    #[error("invalid model reply: {message}")]
    InvalidReply {
        /// What is wrong.
        message: String,
    },
    /// The endpoint redirected the request to another origin. Such redirects are not followed:
    /// the request (the whole conversation) and its headers (API keys) would go to a server
    /// nobody configured. Not retried.
    #[error(
        "the model endpoint answered HTTP {status} with a redirect to another origin ({location}); it was not followed: set the base URL to the endpoint that serves the model"
    )]
    Redirected {
        /// HTTP status (301, 302, 303, 307, 308).
        status: u16,
        /// The `Location` the endpoint named.
        location: String,
    },
    /// The provider is misconfigured.
    #[error("model configuration error: {0}")]
    Config(String),
}

impl ModelError {
    /// Whether the loop should retry the call after a backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. }
                | Self::Transient { .. }
                | Self::Connection { .. }
                | Self::InvalidReply { .. }
        )
    }

    /// The server's requested delay, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The same error with every occurrence of each secret in its text replaced by
    /// `[REDACTED]`: a server that echoes a request header must not put a key into errors,
    /// logs or telemetry.
    #[cfg_attr(not(feature = "openai"), allow(dead_code))]
    pub(crate) fn redacted(self, secrets: &[String]) -> Self {
        if secrets.is_empty() {
            return self;
        }
        let clean = |mut text: String| {
            for secret in secrets.iter().filter(|s| !s.is_empty()) {
                if text.contains(secret.as_str()) {
                    text = text.replace(secret.as_str(), "[REDACTED]");
                }
            }
            text
        };
        match self {
            Self::ContextOverflow { message } => Self::ContextOverflow {
                message: clean(message),
            },
            Self::Throttled {
                status,
                message,
                retry_after,
            } => Self::Throttled {
                status,
                message: clean(message),
                retry_after,
            },
            Self::Transient { message } => Self::Transient {
                message: clean(message),
            },
            Self::Connection { message, source } => Self::Connection {
                message: clean(message),
                source,
            },
            Self::Fatal { status, message } => Self::Fatal {
                status,
                message: clean(message),
            },
            Self::InvalidReply { message } => Self::InvalidReply {
                message: clean(message),
            },
            Self::Redirected { status, location } => Self::Redirected {
                status,
                location: clean(location),
            },
            Self::Config(message) => Self::Config(clean(message)),
        }
    }

    /// A short, stable name of the error class (used as `error.type` in telemetry).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ContextOverflow { .. } => "context_overflow",
            Self::Throttled { .. } => "throttled",
            Self::Transient { .. } | Self::Connection { .. } => "transient",
            Self::Fatal { .. } => "fatal",
            Self::InvalidReply { .. } => "invalid_reply",
            Self::Redirected { .. } => "redirected",
            Self::Config(_) => "config",
        }
    }
}

/// A stream of model events.
pub type ModelStream = Pin<Box<dyn Stream<Item = Result<ModelEvent, ModelError>> + Send>>;

/// Who a model is and how it is called, for telemetry and errors.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct ModelDescriptor {
    /// The provider's name in the GenAI conventions (`openai`, `vllm`, `aws.bedrock`, ...).
    pub provider: String,
    /// The requested model name.
    pub model: String,
    /// Host of the endpoint, when there is one.
    pub server_address: Option<String>,
    /// Port of the endpoint, when there is one.
    pub server_port: Option<u16>,
    /// Whether responses are streamed.
    pub streaming: bool,
    /// `max_tokens` sent with requests.
    pub max_tokens: Option<u32>,
    /// Sampling temperature sent with requests.
    pub temperature: Option<f64>,
    /// `top_p` sent with requests.
    pub top_p: Option<f64>,
    /// Sampling seed sent with requests.
    pub seed: Option<u64>,
}

impl ModelDescriptor {
    /// A descriptor with a provider and model name; the other fields default to unknown.
    pub fn new(provider: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            provider: provider.into(),
            model: model.into(),
            ..Self::default()
        }
    }
}

/// How an [`ModelError::InvalidReply`] starts when the reply did not parse because the model
/// hit its output bound (`finish_reason` `length`): a larger bound may fix it.
pub(crate) const TRUNCATED_REPLY: &str = "the reply was cut off at the output bound";

impl ModelError {
    /// A reply that did not parse because it was cut off at the output bound.
    #[cfg_attr(not(feature = "eval"), allow(dead_code))]
    pub(crate) fn is_truncated_reply(&self) -> bool {
        matches!(self, Self::InvalidReply { message } if message.starts_with(TRUNCATED_REPLY))
    }
}

/// A chat model. Implement [`Model::stream`]; [`Model::complete`] is derived from it.
///
/// The request is borrowed: a provider serialises what it needs before returning the stream,
/// so no history is copied per call.
pub trait Model: Send + Sync + 'static {
    /// Starts a streaming call. The stream ends with [`ModelEvent::Completed`] or an error.
    fn stream(&self, request: &ModelRequest<'_>) -> ModelStream;

    /// Describes the model.
    fn descriptor(&self) -> ModelDescriptor;

    /// Runs a call to completion and returns the response.
    fn complete<'a>(
        &'a self,
        request: &ModelRequest<'_>,
    ) -> Pin<Box<dyn Future<Output = Result<ModelResponse, ModelError>> + Send + 'a>> {
        let mut stream = self.stream(request);
        Box::pin(async move {
            while let Some(event) = stream.next().await {
                if let ModelEvent::Completed(response) = event? {
                    return Ok(response);
                }
            }
            Err(ModelError::Transient {
                message: "model stream ended without a response".into(),
            })
        })
    }
}

/// A shared model is a model: `Arc<dyn Model>` (or `Arc<M>`) goes wherever a model does.
impl<M: Model + ?Sized> Model for std::sync::Arc<M> {
    fn stream(&self, request: &ModelRequest<'_>) -> ModelStream {
        (**self).stream(request)
    }

    fn descriptor(&self) -> ModelDescriptor {
        (**self).descriptor()
    }

    fn complete<'a>(
        &'a self,
        request: &ModelRequest<'_>,
    ) -> Pin<Box<dyn Future<Output = Result<ModelResponse, ModelError>> + Send + 'a>> {
        (**self).complete(request)
    }
}
