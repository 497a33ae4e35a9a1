//! OpenTelemetry traces and metrics that follow the GenAI semantic conventions.
//!
//! Spans: `invoke_agent {agent}` (INTERNAL) is the parent of `chat {model}` (CLIENT, one per
//! model call attempt) and `execute_tool {tool}` (INTERNAL, one per tool call; a tool's own
//! spans, MCP calls included, nest under it). Attributes are the conventions' `gen_ai.*` names;
//! usage is per model call on `chat` spans and per invocation on `invoke_agent` (never a session's
//! lifetime total). Errors set the span status and `error.type`.
//!
//! Metrics: `gen_ai.client.token.usage` (with `gen_ai.token.type`),
//! `gen_ai.client.operation.duration`, `gen_ai.client.operation.time_to_first_chunk` with the
//! advised buckets, and `agent.tool.calls` / `agent.tool.duration` by tool name. No attribute
//! carries an id; a tool name the model made up is recorded as `_OTHER`.
//!
//! Finish reasons are the conventions' values for what happened: on `chat`, what the reply was
//! (`tool_call`, `stop`, `length`, `content_filter`), not the server's raw value; on
//! `invoke_agent`, `stop`, `length`, `content_filter`, or `error` when the agent ended the run
//! itself, with its own reason in `agent.stop_reason`.
//!
//! Message content is recorded only when `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` asks
//! for it ([`CaptureMode`]), in the conventions' parts format as JSON strings: the messages of
//! each model call on `chat`, the prompt and final answer on `invoke_agent`, arguments and
//! results on `execute_tool`. `invoke_agent` and `execute_tool` also get OpenInference's
//! `input.value`/`output.value`, which Phoenix and Langfuse show as a trace's input and output.
//! Nothing from request headers (API keys, authorization) is ever recorded.
//!
//! An agent uses [`Telemetry::disabled`] unless told otherwise or unless `otlp::init_from_env`
//! (feature `otlp`) installed the global providers; disabled instrumentation is a branch on an
//! `Option` per call site.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::metrics::{Counter, Histogram, MeterProvider};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider,
};
use opentelemetry::{Array, Context, InstrumentationScope, KeyValue, StringValue, Value};

use crate::message::{ContentBlock, Message, ToolResult, ToolResultStatus, ToolUse};
use crate::model::{ModelDescriptor, ModelError, ModelRequest, ModelResponse, Usage};
use crate::outcome::StopReason;

mod content;
#[cfg(feature = "otlp")]
pub mod otlp;

/// Attribute names of the GenAI conventions used here (the semantic-conventions crate's constants
/// are deprecated while the GenAI conventions move).
pub mod attr {
    /// `gen_ai.operation.name`
    pub const OPERATION_NAME: &str = "gen_ai.operation.name";
    /// `gen_ai.provider.name`
    pub const PROVIDER_NAME: &str = "gen_ai.provider.name";
    /// `gen_ai.request.model`
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    /// `gen_ai.request.stream`
    pub const REQUEST_STREAM: &str = "gen_ai.request.stream";
    /// `gen_ai.request.max_tokens`
    pub const REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
    /// `gen_ai.request.temperature`
    pub const REQUEST_TEMPERATURE: &str = "gen_ai.request.temperature";
    /// `gen_ai.request.top_p`
    pub const REQUEST_TOP_P: &str = "gen_ai.request.top_p";
    /// `gen_ai.request.seed`
    pub const REQUEST_SEED: &str = "gen_ai.request.seed";
    /// `gen_ai.response.id`
    pub const RESPONSE_ID: &str = "gen_ai.response.id";
    /// `gen_ai.response.model`
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    /// `gen_ai.response.finish_reasons`
    pub const RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
    /// `gen_ai.response.time_to_first_chunk`
    pub const RESPONSE_TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";
    /// `gen_ai.usage.input_tokens`
    pub const USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    /// `gen_ai.usage.cache_read.input_tokens`
    pub const USAGE_CACHE_READ_INPUT_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
    /// `gen_ai.usage.cache_creation.input_tokens`
    pub const USAGE_CACHE_CREATION_INPUT_TOKENS: &str = "gen_ai.usage.cache_creation.input_tokens";
    /// `gen_ai.usage.output_tokens`
    pub const USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    /// `gen_ai.conversation.id`
    pub const CONVERSATION_ID: &str = "gen_ai.conversation.id";
    /// `gen_ai.agent.name`
    pub const AGENT_NAME: &str = "gen_ai.agent.name";
    /// `gen_ai.agent.id`
    pub const AGENT_ID: &str = "gen_ai.agent.id";
    /// `gen_ai.tool.name`
    pub const TOOL_NAME: &str = "gen_ai.tool.name";
    /// `gen_ai.tool.call.id`
    pub const TOOL_CALL_ID: &str = "gen_ai.tool.call.id";
    /// `gen_ai.tool.type`
    pub const TOOL_TYPE: &str = "gen_ai.tool.type";
    /// `gen_ai.tool.description`
    pub const TOOL_DESCRIPTION: &str = "gen_ai.tool.description";
    /// `gen_ai.tool.call.arguments`
    pub const TOOL_CALL_ARGUMENTS: &str = "gen_ai.tool.call.arguments";
    /// `gen_ai.tool.call.result`
    pub const TOOL_CALL_RESULT: &str = "gen_ai.tool.call.result";
    /// `gen_ai.input.messages`
    pub const INPUT_MESSAGES: &str = "gen_ai.input.messages";
    /// `gen_ai.output.messages`
    pub const OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
    /// `gen_ai.system_instructions`
    pub const SYSTEM_INSTRUCTIONS: &str = "gen_ai.system_instructions";
    /// `gen_ai.token.type`
    pub const TOKEN_TYPE: &str = "gen_ai.token.type";
    /// `server.address`
    pub const SERVER_ADDRESS: &str = "server.address";
    /// `server.port`
    pub const SERVER_PORT: &str = "server.port";
    /// `error.type`
    pub const ERROR_TYPE: &str = "error.type";
    /// `agent.stop_reason`: why the agent ended a run, in its own words (`end_turn`,
    /// `limit_turns`, `cancelled` ...), beside the conventions' finish reason.
    pub const AGENT_STOP_REASON: &str = "agent.stop_reason";
    /// OpenInference's `input.value`: the text Phoenix and Langfuse show as a span's input.
    pub const INPUT_VALUE: &str = "input.value";
    /// OpenInference's `input.mime_type`.
    pub const INPUT_MIME_TYPE: &str = "input.mime_type";
    /// OpenInference's `output.value`.
    pub const OUTPUT_VALUE: &str = "output.value";
    /// OpenInference's `output.mime_type`.
    pub const OUTPUT_MIME_TYPE: &str = "output.mime_type";
    /// The span event that carries content when events are asked for.
    pub const INFERENCE_DETAILS_EVENT: &str = "gen_ai.client.inference.operation.details";
}

/// Where message content is recorded, from `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureMode {
    /// Nowhere (the default).
    #[default]
    NoContent,
    /// On span attributes.
    SpanOnly,
    /// On the `gen_ai.client.inference.operation.details` span event.
    EventOnly,
    /// Both.
    SpanAndEvent,
}

impl CaptureMode {
    /// Parses a value of `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT` (case-insensitive;
    /// the legacy `true` means span attributes; anything unknown means no content).
    pub fn parse(value: &str) -> Self {
        match value.trim().to_ascii_uppercase().as_str() {
            "SPAN_ONLY" | "TRUE" => Self::SpanOnly,
            "EVENT_ONLY" => Self::EventOnly,
            "SPAN_AND_EVENT" => Self::SpanAndEvent,
            _ => Self::NoContent,
        }
    }

    /// Reads `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`.
    pub fn from_env() -> Self {
        std::env::var("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
            .map_or(Self::NoContent, |v| Self::parse(&v))
    }

    fn on_span(self) -> bool {
        matches!(self, Self::SpanOnly | Self::SpanAndEvent)
    }

    fn on_event(self) -> bool {
        matches!(self, Self::EventOnly | Self::SpanAndEvent)
    }

    fn any(self) -> bool {
        self != Self::NoContent
    }
}

/// Advised buckets of `gen_ai.client.token.usage`.
const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// Advised buckets of the duration histograms, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

static GLOBAL_INSTALLED: AtomicBool = AtomicBool::new(false);

/// Marks the global providers as configured, so agents built afterwards use them by default.
pub fn mark_global_installed() {
    GLOBAL_INSTALLED.store(true, Ordering::SeqCst);
}

struct Instruments {
    tracer: BoxedTracer,
    token_usage: Histogram<u64>,
    duration: Histogram<f64>,
    time_to_first_chunk: Histogram<f64>,
    tool_calls: Counter<u64>,
    tool_duration: Histogram<f64>,
}

/// Where a run hands its `invoke_agent` span, still open, when it ends.
pub(crate) type TraceHold = tokio::sync::oneshot::Sender<HeldTrace>;

/// A run's `invoke_agent` span, kept open after the run so that what is learnt about the run
/// afterwards (evaluation scores) is recorded on it as events. Dropping it ends the span, with
/// the run's own end time, so its duration is the run's.
#[must_use = "dropping it ends the span at once"]
pub struct HeldTrace {
    cx: Context,
    ended: std::time::SystemTime,
}

impl std::fmt::Debug for HeldTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldTrace")
            .field("trace_id", &self.trace_id())
            .field("span_id", &self.span_id())
            .finish()
    }
}

impl HeldTrace {
    /// The trace id, 32 lowercase hex digits (Langfuse's trace id).
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// The span id, 16 lowercase hex digits (Langfuse's observation id).
    pub fn span_id(&self) -> String {
        self.cx.span().span_context().span_id().to_string()
    }

    /// Records an event on the span, timed now.
    pub fn add_event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        self.cx.span().add_event(name, attributes);
    }
}

impl Drop for HeldTrace {
    fn drop(&mut self) {
        self.cx.span().end_with_timestamp(self.ended);
    }
}

/// The instrumentation handle an agent records with. Cheap to clone.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Option<Arc<Instruments>>,
    capture: CaptureMode,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("enabled", &self.is_enabled())
            .field("capture", &self.capture)
            .finish()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("agent-runtime")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

impl Telemetry {
    /// No spans, no metrics.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Records with these providers; content capture from the environment.
    pub fn new<T, M>(tracer_provider: &T, meter_provider: &M) -> Self
    where
        T: TracerProvider,
        T::Tracer: Send + Sync + 'static,
        <T::Tracer as opentelemetry::trace::Tracer>::Span: Send + Sync + 'static,
        M: MeterProvider + ?Sized,
    {
        let tracer = BoxedTracer::new(Box::new(tracer_provider.tracer_with_scope(scope())));
        let meter = meter_provider.meter_with_scope(scope());
        let instruments = Instruments {
            tracer,
            token_usage: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Number of input and output tokens used.")
                .with_boundaries(TOKEN_BUCKETS.to_vec())
                .build(),
            duration: meter
                .f64_histogram("gen_ai.client.operation.duration")
                .with_unit("s")
                .with_description("GenAI operation duration.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            time_to_first_chunk: meter
                .f64_histogram("gen_ai.client.operation.time_to_first_chunk")
                .with_unit("s")
                .with_description("Time to receive the first chunk of a streamed response.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            tool_calls: meter
                .u64_counter("agent.tool.calls")
                .with_unit("{call}")
                .with_description("Tool calls, by tool name and outcome.")
                .build(),
            tool_duration: meter
                .f64_histogram("agent.tool.duration")
                .with_unit("s")
                .with_description("Tool call duration, by tool name.")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
        };
        Self {
            inner: Some(Arc::new(instruments)),
            capture: CaptureMode::from_env(),
        }
    }

    /// Records with the global tracer and meter providers.
    pub fn from_global() -> Self {
        Self::new(
            &opentelemetry::global::tracer_provider(),
            &*opentelemetry::global::meter_provider(),
        )
    }

    /// The default of new agents: the global providers once [`mark_global_installed`] ran
    /// (as `otlp::init_from_env` does), otherwise disabled.
    pub fn default_for_agents() -> Self {
        if GLOBAL_INSTALLED.load(Ordering::SeqCst) {
            Self::from_global()
        } else {
            Self::disabled()
        }
    }

    /// Overrides where content is captured.
    pub fn with_capture(mut self, mode: CaptureMode) -> Self {
        self.capture = mode;
        self
    }

    /// Whether anything is recorded.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub(crate) fn start_invoke(
        &self,
        agent_name: &str,
        agent_id: &str,
        session_id: &str,
        model: &ModelDescriptor,
    ) -> Option<Context> {
        let inner = self.inner.as_ref()?;
        let attributes = vec![
            KeyValue::new(attr::OPERATION_NAME, "invoke_agent"),
            KeyValue::new(attr::PROVIDER_NAME, model.provider.clone()),
            KeyValue::new(attr::AGENT_NAME, agent_name.to_owned()),
            KeyValue::new(attr::AGENT_ID, agent_id.to_owned()),
            KeyValue::new(attr::CONVERSATION_ID, session_id.to_owned()),
            KeyValue::new(attr::REQUEST_MODEL, model.model.clone()),
        ];
        let span = inner
            .tracer
            .span_builder(format!("invoke_agent {agent_name}"))
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .start(&inner.tracer);
        Some(Context::current().with_span(span))
    }

    /// Whether message content is recorded anywhere (callers skip copying it otherwise).
    pub(crate) fn captures_content(&self) -> bool {
        self.inner.is_some() && self.capture.any()
    }

    pub(crate) fn end_invoke(&self, cx: &Context, end: &InvokeEnd<'_>, hold: Option<TraceHold>) {
        let span = cx.span();
        if let Some(u) = end.usage {
            span.set_attribute(KeyValue::new(
                attr::USAGE_INPUT_TOKENS,
                clamp(u.input_tokens),
            ));
            span.set_attribute(KeyValue::new(
                attr::USAGE_OUTPUT_TOKENS,
                clamp(u.output_tokens),
            ));
            for kv in cache_attributes(u) {
                span.set_attribute(kv);
            }
        }
        if let Some(reason) = end.stop_reason {
            span.set_attribute(KeyValue::new(
                attr::RESPONSE_FINISH_REASONS,
                string_array(content::run_finish_reason(reason)),
            ));
            span.set_attribute(KeyValue::new(attr::AGENT_STOP_REASON, reason.as_str()));
        }
        if let Some(kind) = end.error {
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, kind.to_owned()));
            span.set_status(Status::error(kind.to_owned()));
        }
        if self.capture.any() {
            self.invoke_content(&span, end);
        }
        let ended = std::time::SystemTime::now();
        match hold {
            // Ended by the holder, or when the holder is gone, at this time either way.
            Some(hold) => drop(hold.send(HeldTrace {
                cx: cx.clone(),
                ended,
            })),
            None => span.end_with_timestamp(ended),
        }
    }

    /// The invocation's input (its prompt) and output (its final message) on `invoke_agent`,
    /// in the conventions' attributes, plus OpenInference's `input.value`/`output.value` text
    /// that backends such as Phoenix and Langfuse show as a trace's input and output.
    fn invoke_content(&self, span: &opentelemetry::trace::SpanRef<'_>, end: &InvokeEnd<'_>) {
        let mut attributes = Vec::new();
        if let Some(prompt) = end.input {
            attributes.push(KeyValue::new(
                attr::INPUT_MESSAGES,
                content::prompt_messages(prompt).to_string(),
            ));
        }
        if let Some(system) = end.system_prompt {
            attributes.push(KeyValue::new(
                attr::SYSTEM_INSTRUCTIONS,
                content::system_instructions(system).to_string(),
            ));
        }
        if let (Some(message), Some(reason)) = (end.output, end.stop_reason) {
            attributes.push(KeyValue::new(
                attr::OUTPUT_MESSAGES,
                content::final_messages(message, content::run_finish_reason(reason)).to_string(),
            ));
        }
        if self.capture.on_event() && !attributes.is_empty() {
            span.add_event(attr::INFERENCE_DETAILS_EVENT, attributes.clone());
        }
        if !self.capture.on_span() {
            return;
        }
        span.set_attributes(attributes);
        if let Some(prompt) = end.input {
            span.set_attribute(KeyValue::new(attr::INPUT_VALUE, content::text_of(prompt)));
            span.set_attribute(KeyValue::new(attr::INPUT_MIME_TYPE, "text/plain"));
        }
        if let Some(message) = end.output {
            span.set_attribute(KeyValue::new(attr::OUTPUT_VALUE, message.text()));
            span.set_attribute(KeyValue::new(attr::OUTPUT_MIME_TYPE, "text/plain"));
        }
    }

    pub(crate) fn start_chat(
        &self,
        parent: &Context,
        model: &ModelDescriptor,
        session_id: &str,
        request: &ModelRequest<'_>,
    ) -> Option<ChatSpan> {
        let inner = self.inner.as_ref()?;
        let mut metric_attributes = vec![
            KeyValue::new(attr::OPERATION_NAME, "chat"),
            KeyValue::new(attr::PROVIDER_NAME, model.provider.clone()),
            KeyValue::new(attr::REQUEST_MODEL, model.model.clone()),
        ];
        if let Some(address) = &model.server_address {
            metric_attributes.push(KeyValue::new(attr::SERVER_ADDRESS, address.clone()));
        }
        if let Some(port) = model.server_port {
            metric_attributes.push(KeyValue::new(attr::SERVER_PORT, i64::from(port)));
        }
        let mut attributes = metric_attributes.clone();
        attributes.push(KeyValue::new(attr::CONVERSATION_ID, session_id.to_owned()));
        if model.streaming {
            attributes.push(KeyValue::new(attr::REQUEST_STREAM, true));
        }
        if let Some(v) = model.max_tokens {
            attributes.push(KeyValue::new(attr::REQUEST_MAX_TOKENS, i64::from(v)));
        }
        if let Some(v) = model.temperature {
            attributes.push(KeyValue::new(attr::REQUEST_TEMPERATURE, v));
        }
        if let Some(v) = model.top_p {
            attributes.push(KeyValue::new(attr::REQUEST_TOP_P, v));
        }
        if let Some(v) = model.seed {
            attributes.push(KeyValue::new(attr::REQUEST_SEED, clamp(v)));
        }
        let mut content = None;
        if self.capture.any() {
            let input = content::input_messages(&request.messages).to_string();
            let system = request
                .system_prompt
                .map(|s| content::system_instructions(s).to_string());
            if self.capture.on_span() {
                attributes.push(KeyValue::new(attr::INPUT_MESSAGES, input.clone()));
                if let Some(s) = &system {
                    attributes.push(KeyValue::new(attr::SYSTEM_INSTRUCTIONS, s.clone()));
                }
            }
            content = Some((input, system));
        }
        let span = inner.tracer.build_with_context(
            inner
                .tracer
                .span_builder(format!("chat {}", model.model))
                .with_kind(SpanKind::Client)
                .with_attributes(attributes),
            parent,
        );
        Some(ChatSpan {
            span,
            instruments: inner.clone(),
            capture: self.capture,
            started: Instant::now(),
            first_chunk: None,
            metric_attributes,
            content,
            streaming: model.streaming,
        })
    }

    pub(crate) fn start_tool(
        &self,
        parent: &Context,
        tool_use: &ToolUse,
        description: Option<&str>,
    ) -> Option<ToolSpan> {
        let inner = self.inner.as_ref()?;
        let mut attributes = vec![
            KeyValue::new(attr::OPERATION_NAME, "execute_tool"),
            KeyValue::new(attr::TOOL_NAME, tool_use.name.clone()),
            KeyValue::new(attr::TOOL_CALL_ID, tool_use.tool_use_id.clone()),
            KeyValue::new(attr::TOOL_TYPE, "function"),
        ];
        if let Some(d) = description {
            attributes.push(KeyValue::new(attr::TOOL_DESCRIPTION, d.to_owned()));
        }
        if self.capture.on_span() {
            let arguments = tool_use.input.to_string();
            attributes.push(KeyValue::new(attr::TOOL_CALL_ARGUMENTS, arguments.clone()));
            // What Phoenix and Langfuse show as the tool span's input.
            attributes.push(KeyValue::new(attr::INPUT_VALUE, arguments));
            attributes.push(KeyValue::new(attr::INPUT_MIME_TYPE, "application/json"));
        }
        let span = inner.tracer.build_with_context(
            inner
                .tracer
                .span_builder(format!("execute_tool {}", tool_use.name))
                .with_kind(SpanKind::Internal)
                .with_attributes(attributes),
            parent,
        );
        Some(ToolSpan {
            cx: parent.with_span(span),
            instruments: inner.clone(),
            capture: self.capture,
            started: Instant::now(),
            // Metric attributes stay bounded: a name the model invented is not a label value.
            metric_name: if description.is_some() {
                tool_use.name.clone()
            } else {
                "_OTHER".to_owned()
            },
        })
    }
}

/// How an invocation ended, for its `invoke_agent` span.
#[derive(Default)]
pub(crate) struct InvokeEnd<'a> {
    pub(crate) usage: Option<&'a Usage>,
    pub(crate) stop_reason: Option<StopReason>,
    pub(crate) error: Option<&'a str>,
    /// The prompt, when content is captured.
    pub(crate) input: Option<&'a [ContentBlock]>,
    pub(crate) system_prompt: Option<&'a str>,
    pub(crate) output: Option<&'a Message>,
}

/// The `chat` span of a model call in flight, with what it records when the call ends.
pub(crate) struct ChatSpan {
    span: BoxedSpan,
    instruments: Arc<Instruments>,
    capture: CaptureMode,
    started: Instant,
    first_chunk: Option<Duration>,
    metric_attributes: Vec<KeyValue>,
    content: Option<(String, Option<String>)>,
    streaming: bool,
}

impl ChatSpan {
    pub(crate) fn first_chunk(&mut self) {
        if self.first_chunk.is_none() {
            self.first_chunk = Some(self.started.elapsed());
        }
    }

    pub(crate) fn end_ok(mut self, response: &ModelResponse) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let span = &mut self.span;
        if let Some(id) = &response.response_id {
            span.set_attribute(KeyValue::new(attr::RESPONSE_ID, id.clone()));
        }
        if let Some(m) = &response.response_model {
            span.set_attribute(KeyValue::new(attr::RESPONSE_MODEL, m.clone()));
        }
        // What the reply was (a tool call, an answer cut at the limit ...), in the conventions'
        // vocabulary: not the server's raw value, which in constrained mode says `stop` for a
        // tool call.
        span.set_attribute(KeyValue::new(
            attr::RESPONSE_FINISH_REASONS,
            string_array(content::finish_reason(response)),
        ));
        span.set_attribute(KeyValue::new(
            attr::USAGE_INPUT_TOKENS,
            clamp(response.usage.input_tokens),
        ));
        span.set_attribute(KeyValue::new(
            attr::USAGE_OUTPUT_TOKENS,
            clamp(response.usage.output_tokens),
        ));
        for kv in cache_attributes(&response.usage) {
            span.set_attribute(kv);
        }
        if self.streaming
            && let Some(ttfc) = self.first_chunk
        {
            span.set_attribute(KeyValue::new(
                attr::RESPONSE_TIME_TO_FIRST_CHUNK,
                ttfc.as_secs_f64(),
            ));
            self.instruments
                .time_to_first_chunk
                .record(ttfc.as_secs_f64(), &self.metric_attributes);
        }
        if let Some((input, system)) = self.content.take() {
            let output = content::output_messages(response).to_string();
            if self.capture.on_span() {
                span.set_attribute(KeyValue::new(attr::OUTPUT_MESSAGES, output.clone()));
            }
            if self.capture.on_event() {
                let mut attributes = vec![
                    KeyValue::new(attr::INPUT_MESSAGES, input),
                    KeyValue::new(attr::OUTPUT_MESSAGES, output),
                ];
                if let Some(s) = system {
                    attributes.push(KeyValue::new(attr::SYSTEM_INSTRUCTIONS, s));
                }
                span.add_event(attr::INFERENCE_DETAILS_EVENT, attributes);
            }
        }
        span.end();
        self.instruments
            .duration
            .record(elapsed, &self.metric_attributes);
        if response.usage != Usage::default() {
            let mut attributes = self.metric_attributes.clone();
            attributes.push(KeyValue::new(attr::TOKEN_TYPE, "input"));
            self.instruments
                .token_usage
                .record(response.usage.input_tokens, &attributes);
            if let Some(last) = attributes.last_mut() {
                *last = KeyValue::new(attr::TOKEN_TYPE, "output");
            }
            self.instruments
                .token_usage
                .record(response.usage.output_tokens, &attributes);
        }
    }

    pub(crate) fn end_err(mut self, error: &ModelError) {
        let kind = error_type(error);
        self.span
            .set_attribute(KeyValue::new(attr::ERROR_TYPE, kind.clone()));
        self.span.set_status(Status::error(error.to_string()));
        self.span.end();
        let mut attributes = self.metric_attributes;
        attributes.push(KeyValue::new(attr::ERROR_TYPE, kind));
        self.instruments
            .duration
            .record(self.started.elapsed().as_secs_f64(), &attributes);
    }

    pub(crate) fn end_interrupted(mut self, why: &'static str) {
        self.span
            .set_attribute(KeyValue::new(attr::ERROR_TYPE, why));
        self.span.set_status(Status::error(why));
        self.span.end();
    }
}

/// A tool call in flight; `cx` carries its span, so work the tool does nests under it.
pub(crate) struct ToolSpan {
    pub(crate) cx: Context,
    instruments: Arc<Instruments>,
    capture: CaptureMode,
    started: Instant,
    metric_name: String,
}

impl ToolSpan {
    pub(crate) fn end(self, result: &ToolResult) {
        let span = self.cx.span();
        let outcome = match result.status {
            ToolResultStatus::Success => "success",
            ToolResultStatus::Error => "error",
        };
        if self.capture.on_span() {
            span.set_attribute(KeyValue::new(
                attr::TOOL_CALL_RESULT,
                content::tool_result_text(result),
            ));
        }
        if result.status == ToolResultStatus::Error {
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, "tool_error"));
            // The result text may quote the call's arguments (a schema violation, say): it is
            // content, recorded only when content capture is on.
            if self.capture.on_span() {
                span.set_status(Status::error(result.text()));
            } else {
                span.set_status(Status::error("tool_error"));
            }
        }
        span.end();
        let name = KeyValue::new(attr::TOOL_NAME, self.metric_name);
        self.instruments.tool_duration.record(
            self.started.elapsed().as_secs_f64(),
            std::slice::from_ref(&name),
        );
        self.instruments
            .tool_calls
            .add(1, &[name, KeyValue::new("outcome", outcome)]);
    }
}

/// `error.type` of a model error: the HTTP status when there is one, else the error class.
fn error_type(error: &ModelError) -> String {
    match error {
        ModelError::Throttled { status, .. } => status.to_string(),
        ModelError::Fatal {
            status: Some(s), ..
        } => s.to_string(),
        ModelError::ContextOverflow { .. } => "context_length_exceeded".to_owned(),
        other => other.kind().to_owned(),
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The prompt-cache token counts, for the spans of providers that report them.
fn cache_attributes(usage: &Usage) -> impl Iterator<Item = KeyValue> {
    [
        (
            attr::USAGE_CACHE_READ_INPUT_TOKENS,
            usage.cache_read_input_tokens,
        ),
        (
            attr::USAGE_CACHE_CREATION_INPUT_TOKENS,
            usage.cache_write_input_tokens,
        ),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(key, n)| KeyValue::new(key, clamp(n)))
}

fn string_array(s: &str) -> Value {
    Value::Array(Array::String(vec![StringValue::from(s.to_owned())]))
}
