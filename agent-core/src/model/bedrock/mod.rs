//! Amazon Bedrock (feature `bedrock`): chat through the Converse API ([`BedrockConverse`]:
//! `ConverseStream` by default, `Converse` on request) and embeddings through `InvokeModel`
//! ([`BedrockEmbedder`]), with the SDK client the caller configures (the standard credential
//! chain and region from `aws_config::load_from_env()`), or one made by
//! [`BedrockConverse::from_env`].
//!
//! The same agent runs on Bedrock or on an OpenAI-compatible server: messages already have the
//! Converse shape, and the replies become the same [`ModelEvent`](super::ModelEvent)s. What the provider handles:
//! - system prompt, tools and tool choice (auto, any, a named tool; "none" by not offering
//!   tools, or a stand-in tool when the history holds tool blocks, as Strands does), tool
//!   results with their error status and text, JSON, image and document content;
//! - reasoning content with its signature, kept in the history and sent back unchanged, and
//!   redacted reasoning;
//! - usage with prompt-cache reads and writes, and [`PromptCache`] to place cache points;
//! - stop reasons: `max_tokens`, `stop_sequence`, `content_filtered`, `guardrail_intervened`;
//!   `tool_use` decided by the presence of tool uses, as for the other provider;
//! - errors classified as the OpenAI provider's are: throttling and service unavailability are
//!   retried with the loop's backoff (the SDK's own retries are off on the provider's client, so
//!   the two never multiply), a `ValidationException` about the context window, and the stop
//!   reason `model_context_window_exceeded`, become [`ModelError::ContextOverflow`] (the
//!   conversation manager reduces and retries); exception events in the middle of a stream are
//!   classified by their type like the errors of a call (`modelStreamErrorException` and
//!   `internalServerException` transient, `throttlingException` throttled), a cut stream is
//!   transient, an error without a code goes by its HTTP status; access denied and an unknown
//!   model are fatal with a message that says what to fix;
//! - bounds: the wait for the reply, every wait between two events (default 120 s each) and a
//!   whole streamed reply (10 min), each event-stream frame (1 MiB), a `Converse` reply (32 MiB)
//!   and the content one reply accumulates (16 MiB).
//!
//! With extended thinking on (`thinking` or `reasoning_config` in the additional request
//! fields), a forced tool choice (structured output, a named tool) is sent as "auto", since
//! Anthropic's models refuse to think under a forced tool; the structured-output step's note
//! still asks for the tool, and a reply without it goes back as for any other reply that does
//! not fit.

use std::time::Duration;

use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::types as bt;
use futures::StreamExt;
use serde_json::Value;

use self::convert::{parts, to_document};
use self::error::{sdk_error, stream_code};
use self::limit::ReplyLimit;
use self::stream::{Assembler, converse_events};
use super::{DEFAULT_MAX_TOKENS, Model, ModelDescriptor, ModelError, ModelRequest, ModelStream};

mod convert;
mod embed;
mod error;
mod limit;
mod stream;

pub use convert::PromptCache;
pub use embed::BedrockEmbedder;

/// The largest `Converse` (or `InvokeModel`) reply read.
const MAX_REPLY: u64 = 32 * 1024 * 1024;

/// The largest event-stream frame read. Bedrock's events are small (a delta of a few tokens, a
/// usage record); 1 MiB leaves room for a large redacted-reasoning block.
const MAX_FRAME: u32 = 1024 * 1024;

/// Builds a [`BedrockConverse`] provider.
#[derive(Debug, Clone)]
pub struct BedrockConverseBuilder {
    client: aws_sdk_bedrockruntime::Client,
    model_id: Option<String>,
    streaming: bool,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    stop_sequences: Vec<String>,
    additional_fields: Option<Value>,
    cache: PromptCache,
    reply_timeout: Duration,
    idle_timeout: Duration,
    total_timeout: Duration,
}

impl BedrockConverseBuilder {
    /// The model id (`amazon.nova-pro-v1:0`, `anthropic.claude-...`), or an inference profile id
    /// or ARN (`us.anthropic.claude-...`, `arn:aws:bedrock:...`). Defaults to `BEDROCK_MODEL_ID`.
    pub fn model_id(mut self, id: impl Into<String>) -> Self {
        self.model_id = Some(id.into());
        self
    }

    /// `ConverseStream` (the default) or `Converse`, one reply per call.
    pub fn streaming(mut self, streaming: bool) -> Self {
        self.streaming = streaming;
        self
    }

    /// The most tokens one call may generate (default [`DEFAULT_MAX_TOKENS`]); a request's own
    /// bound may lower it.
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// The sampling temperature sent with every call (Bedrock's `inferenceConfig.temperature`);
    /// unset, the model's default applies. A call's own temperature overrides it.
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = Some(t);
        self
    }

    /// Nucleus sampling.
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = Some(p);
        self
    }

    /// A stop sequence (may be called several times).
    pub fn stop_sequence(mut self, s: impl Into<String>) -> Self {
        self.stop_sequences.push(s.into());
        self
    }

    /// Model-specific request fields Converse does not model, sent as
    /// `additionalModelRequestFields`: for example `{"top_k": 20}`, or Claude's
    /// `{"thinking": {"type": "enabled", "budget_tokens": 2048}}`. Must be a JSON object.
    pub fn additional_model_request_fields(mut self, fields: Value) -> Self {
        self.additional_fields = Some(fields);
        self
    }

    /// Where prompt-cache points go (default none; see [`PromptCache::automatic`]).
    pub fn prompt_cache(mut self, cache: PromptCache) -> Self {
        self.cache = cache;
        self
    }

    /// Bound on the wait for a streamed reply to start, and on a whole `Converse` call
    /// (default 120 s).
    pub fn reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// Bound on any wait between two events of a streamed reply (default 120 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Bound on a whole streamed reply, however steadily it comes (default 10 min): a peer that
    /// keeps sending events that add nothing cannot hold the call open.
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = timeout;
        self
    }

    /// Builds the provider; the model id is required (here or in `BEDROCK_MODEL_ID`).
    pub fn build(self) -> Result<BedrockConverse, ModelError> {
        let model_id = match self.model_id {
            Some(id) => id,
            None => std::env::var("BEDROCK_MODEL_ID").map_err(|_| {
                ModelError::Config(
                    "no Bedrock model: set BEDROCK_MODEL_ID (a model id such as \
                     amazon.nova-lite-v1:0, or an inference-profile id or ARN) or call model_id()"
                        .into(),
                )
            })?,
        };
        if model_id.trim().is_empty() {
            return Err(ModelError::Config("the Bedrock model id is empty".into()));
        }
        let additional = match self.additional_fields {
            None => None,
            Some(v @ Value::Object(_)) => Some(to_document(&v)),
            Some(other) => {
                return Err(ModelError::Config(format!(
                    "additional model request fields must be a JSON object, not {other}"
                )));
            }
        };
        let thinking = additional.as_ref().is_some_and(|d| {
            matches!(d, aws_smithy_types::Document::Object(o)
                if o.contains_key("thinking") || o.contains_key("reasoning_config"))
        });
        let max_tokens = self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        let region = self.client.config().region().map(|r| r.to_string());
        let descriptor = ModelDescriptor {
            provider: "aws.bedrock".into(),
            model: model_id.clone(),
            server_address: region.map(|r| format!("bedrock-runtime.{r}.amazonaws.com")),
            server_port: Some(443),
            streaming: self.streaming,
            max_tokens: Some(max_tokens),
            temperature: self.temperature.map(f64::from),
            top_p: self.top_p.map(f64::from),
            seed: None,
        };
        // The caller's client with two changes, made once: no SDK retries (the loop retries,
        // with its own backoff, so the two never multiply) and the reply bounds.
        let client = aws_sdk_bedrockruntime::Client::from_conf(
            self.client
                .config()
                .to_builder()
                .retry_config(RetryConfig::disabled())
                .interceptor(ReplyLimit)
                .build(),
        );
        Ok(BedrockConverse {
            client,
            model_id,
            streaming: self.streaming,
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            stop_sequences: self.stop_sequences,
            additional,
            cache: self.cache,
            reply_timeout: self.reply_timeout,
            idle_timeout: self.idle_timeout,
            total_timeout: self.total_timeout,
            thinking,
            descriptor,
        })
    }
}

/// A chat model on Amazon Bedrock through the Converse API. Cheap to clone (the SDK client is
/// shared).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use agent_core::model::bedrock::{BedrockConverse, PromptCache};
///
/// let config = aws_config::load_from_env().await;
/// let model = BedrockConverse::builder(aws_sdk_bedrockruntime::Client::new(&config))
///     .model_id("us.amazon.nova-pro-v1:0")
///     .prompt_cache(PromptCache::automatic())
///     .build()?;
/// # let _ = model; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct BedrockConverse {
    client: aws_sdk_bedrockruntime::Client,
    model_id: String,
    streaming: bool,
    max_tokens: u32,
    temperature: Option<f32>,
    top_p: Option<f32>,
    stop_sequences: Vec<String>,
    additional: Option<aws_smithy_types::Document>,
    cache: PromptCache,
    reply_timeout: Duration,
    idle_timeout: Duration,
    total_timeout: Duration,
    /// Whether the request fields turn on extended thinking, which refuses a forced tool choice.
    thinking: bool,
    descriptor: ModelDescriptor,
}

impl BedrockConverse {
    /// A builder on `client`.
    pub fn builder(client: aws_sdk_bedrockruntime::Client) -> BedrockConverseBuilder {
        BedrockConverseBuilder {
            client,
            model_id: None,
            streaming: true,
            max_tokens: None,
            temperature: None,
            top_p: None,
            stop_sequences: Vec::new(),
            additional_fields: None,
            cache: PromptCache::none(),
            reply_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(120),
            total_timeout: Duration::from_secs(600),
        }
    }

    /// A provider for `BEDROCK_MODEL_ID`, with a client from the standard AWS configuration
    /// (credential chain, `AWS_REGION`, `AWS_ENDPOINT_URL`).
    pub async fn from_env() -> Result<Self, ModelError> {
        let config = aws_config::load_from_env().await;
        Self::builder(aws_sdk_bedrockruntime::Client::new(&config)).build()
    }

    /// The model id or inference profile calls go to.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    fn inference_config(&self, request: &ModelRequest<'_>) -> bt::InferenceConfiguration {
        let max_tokens = request
            .max_tokens
            .map_or(self.max_tokens, |n| n.min(self.max_tokens));
        bt::InferenceConfiguration::builder()
            .max_tokens(i32::try_from(max_tokens).unwrap_or(i32::MAX))
            .set_temperature(request.temperature.or(self.temperature))
            .set_top_p(self.top_p)
            .set_stop_sequences(
                (!self.stop_sequences.is_empty()).then(|| self.stop_sequences.clone()),
            )
            .build()
    }
}

fn failed(e: ModelError) -> ModelStream {
    Box::pin(futures::stream::once(async move { Err(e) }))
}

/// The state of a streamed reply between two events.
struct Streaming {
    receiver: aws_sdk_bedrockruntime::primitives::event_stream::EventReceiver<
        bt::ConverseStreamOutput,
        bt::error::ConverseStreamOutputError,
    >,
    assembler: Option<Assembler>,
    idle: Duration,
    model_id: String,
    /// One timer for the whole reply, pushed back only when it fires early: re-arming a timer
    /// for each of a reply's many small events would cost more than decoding them.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// When the last event arrived.
    last_event: tokio::time::Instant,
    /// When the whole reply must be complete.
    deadline: tokio::time::Instant,
    total: Duration,
}

impl Streaming {
    /// The next model event, or `None` when the reply is complete.
    async fn next(&mut self) -> Option<Result<super::ModelEvent, ModelError>> {
        loop {
            self.assembler.as_ref()?;
            let received = tokio::select! {
                biased;
                r = self.receiver.recv() => {
                    self.last_event = tokio::time::Instant::now();
                    r.map_err(|e| sdk_error(&self.model_id, "the Bedrock stream", e, stream_code))
                }
                () = &mut self.timer => {
                    let now = tokio::time::Instant::now();
                    let due = (self.last_event + self.idle).min(self.deadline);
                    if due > now {
                        // Events came since the timer was set: wait out the rest.
                        self.timer.as_mut().reset(due);
                        continue;
                    }
                    Err(ModelError::Transient {
                        message: if now >= self.deadline {
                            format!("Bedrock's reply took longer than {:?}", self.total)
                        } else {
                            format!("Bedrock sent no event for {:?}", self.idle)
                        },
                    })
                }
            };
            let event = match received {
                Err(e) => {
                    self.assembler = None;
                    return Some(Err(e));
                }
                Ok(Some(event)) => event,
                Ok(None) => {
                    let assembler = self.assembler.take()?;
                    if !assembler.stopped() {
                        return Some(Err(ModelError::Transient {
                            message: "the Bedrock stream ended before its messageStop event".into(),
                        }));
                    }
                    return Some(
                        assembler
                            .finish(&self.model_id)
                            .map(super::ModelEvent::Completed),
                    );
                }
            };
            let assembler = self.assembler.as_mut()?;
            match assembler.feed(event) {
                Ok(Some(e)) => return Some(Ok(e)),
                Ok(None) => {}
                Err(e) => {
                    self.assembler = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Model for BedrockConverse {
    fn stream(&self, request: &ModelRequest<'_>) -> ModelStream {
        let parts = match parts(request, self.cache, self.thinking) {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let inference = self.inference_config(request);
        let model_id = self.model_id.clone();
        let reply_timeout = self.reply_timeout;
        let timed_out = move || ModelError::Transient {
            message: format!("Bedrock did not answer within {reply_timeout:?}"),
        };
        if !self.streaming {
            let call = self
                .client
                .converse()
                .model_id(&self.model_id)
                .set_messages(Some(parts.messages))
                .set_system((!parts.system.is_empty()).then_some(parts.system))
                .set_tool_config(parts.tool_config)
                .inference_config(inference)
                .set_additional_model_request_fields(self.additional.clone())
                .send();
            return Box::pin(
                futures::stream::once(async move {
                    let output = tokio::time::timeout(reply_timeout, call)
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(|e| {
                            sdk_error(&model_id, "the Bedrock Converse call", e, |_| None)
                        })?;
                    converse_events(output, &model_id)
                })
                .flat_map(|r| match r {
                    Ok(events) => futures::stream::iter(events.into_iter().map(Ok)).boxed(),
                    Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
                }),
            );
        }
        let call = self
            .client
            .converse_stream()
            .model_id(&self.model_id)
            .set_messages(Some(parts.messages))
            .set_system((!parts.system.is_empty()).then_some(parts.system))
            .set_tool_config(parts.tool_config)
            .inference_config(inference)
            .set_additional_model_request_fields(self.additional.clone())
            .send();
        let idle = self.idle_timeout;
        let total = self.total_timeout;
        let start = async move {
            let output = tokio::time::timeout(reply_timeout, call)
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| {
                    sdk_error(&model_id, "the Bedrock ConverseStream call", e, |_| None)
                })?;
            let now = tokio::time::Instant::now();
            // Boxed: the stream moves its state in and out of each step's future.
            Ok::<_, ModelError>(Box::new(Streaming {
                receiver: output.stream,
                assembler: Some(Assembler::default()),
                idle,
                model_id,
                timer: Box::pin(tokio::time::sleep_until((now + idle).min(now + total))),
                last_event: now,
                deadline: now + total,
                total,
            }))
        };
        Box::pin(futures::stream::once(start).flat_map(|started| {
            match started {
                Ok(streaming) => futures::stream::unfold(streaming, |mut s| async move {
                    s.next().await.map(|item| (item, s))
                })
                .boxed(),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            }
        }))
    }

    fn descriptor(&self) -> ModelDescriptor {
        self.descriptor.clone()
    }
}
