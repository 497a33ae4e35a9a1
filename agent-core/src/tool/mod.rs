//! Tools: the [`Tool`] trait, closures as tools ([`FnTool`]), the [`ToolRegistry`] and the
//! [`executor`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::message::{ToolResultContent, ToolResultStatus};

#[doc(hidden)]
#[path = "macro_support.rs"]
pub mod __macro;
pub mod executor;
mod registry;

pub use registry::{RegistryError, ToolRegistry, is_valid_tool_name};

/// What a model is told about a tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolSpec {
    /// The name (`^[a-zA-Z0-9_-]{1,64}$`).
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// JSON Schema of the input object.
    pub input_schema: Value,
}

/// What a tool gets besides its input. Outside an agent, make one with [`ToolContext::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ToolContext {
    /// The id of the tool use being answered.
    pub tool_use_id: String,
    /// The session the invocation runs in.
    pub session_id: Arc<str>,
    /// The actor (end user) the invocation runs for, when known.
    pub actor_id: Option<Arc<str>>,
    /// The session's agent state, shared by the invocation's tools and saved with the session.
    pub state: AgentState,
    /// Cancelled when the invocation is cancelled or the call times out: stop promptly.
    pub cancel: CancellationToken,
    /// Reports progress of a long call to the invocation's event stream.
    pub progress: ProgressReporter,
    pub(crate) interrupts: crate::interrupt::Interrupts,
}

impl ToolContext {
    /// A context for calling a tool outside an agent (tests, direct use): fresh state, a token
    /// that is never cancelled unless you cancel it, progress reports discarded.
    pub fn new(tool_use_id: impl Into<String>, session_id: impl Into<Arc<str>>) -> Self {
        Self {
            tool_use_id: tool_use_id.into(),
            session_id: session_id.into(),
            actor_id: None,
            state: AgentState::default(),
            cancel: CancellationToken::new(),
            progress: ProgressReporter::default(),
            interrupts: crate::interrupt::Interrupts::default(),
        }
    }

    /// Asks a person: returns the answer when the run was resumed with one
    /// ([`Session::respond`](crate::Session::respond)); otherwise records the question and
    /// returns an error the tool returns with `?`, and the run stops with
    /// [`StopReason::Interrupted`](crate::StopReason::Interrupted) once the batch's other calls
    /// are done. The call runs again from the start when answered, so do what must happen once
    /// (the booking) after the question, not before. See [`crate::interrupt`].
    ///
    /// ```
    /// use agent_core::tool::{ToolContext, ToolError};
    /// use serde_json::json;
    ///
    /// async fn book(ctx: &ToolContext, price: f64) -> Result<String, ToolError> {
    ///     let answer = ctx.interrupt("confirm_booking", json!({"price_eur": price}))?;
    ///     if answer != json!(true) {
    ///         return Ok("The user declined the booking.".into());
    ///     }
    ///     Ok("Booked.".into())
    /// }
    /// ```
    pub fn interrupt(&self, name: &str, reason: Value) -> Result<Value, ToolError> {
        self.interrupts
            .ask(
                crate::interrupt::Asker::Tool,
                &self.tool_use_id,
                name,
                reason,
            )
            .ok_or_else(|| {
                ToolError::new(format!("interrupted: waiting for an answer to `{name}`"))
            })
    }
}

/// Progress of one tool call, as reported by the tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolProgress {
    /// The tool use the progress belongs to.
    pub tool_use_id: String,
    /// Work done so far (grows with each report).
    pub progress: f64,
    /// Total work, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
    /// A human-readable status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a tool's progress reports go: the agent's event stream as
/// [`AgentEvent::ToolProgress`](crate::event::AgentEvent::ToolProgress) when the invocation is
/// streamed, nowhere otherwise. Reporting never blocks the tool: when the stream's consumer is
/// behind, a report is dropped (progress is advisory; the result is never dropped).
#[derive(Clone, Default)]
pub struct ProgressReporter {
    sink: Option<Arc<dyn Fn(ToolProgress) + Send + Sync>>,
    tool_use_id: String,
}

impl fmt::Debug for ProgressReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgressReporter")
            .field("active", &self.sink.is_some())
            .finish()
    }
}

impl ProgressReporter {
    /// A reporter that hands each report to `sink`.
    pub fn new(
        tool_use_id: impl Into<String>,
        sink: Arc<dyn Fn(ToolProgress) + Send + Sync>,
    ) -> Self {
        Self {
            sink: Some(sink),
            tool_use_id: tool_use_id.into(),
        }
    }

    /// Whether reports go anywhere.
    pub fn is_active(&self) -> bool {
        self.sink.is_some()
    }

    /// Reports progress.
    pub fn report(&self, progress: f64, total: Option<f64>, message: Option<String>) {
        if let Some(sink) = &self.sink {
            sink(ToolProgress {
                tool_use_id: self.tool_use_id.clone(),
                progress,
                total,
                message,
            });
        }
    }
}

/// A changing set of tools (an MCP server's, a plugin directory's ...). Before each model call
/// the agent awaits [`sync`](ToolSource::sync), asks [`generation`](ToolSource::generation)
/// and re-reads [`tools`](ToolSource::tools) when it changed, so the call sees the new list.
#[async_trait]
pub trait ToolSource: Send + Sync + 'static {
    /// A number that changes whenever the list changes.
    fn generation(&self) -> u64;
    /// The tools as of the last [`sync`](ToolSource::sync): read on every generation change,
    /// so return a cheap clone.
    fn tools(&self) -> Vec<Arc<dyn Tool>>;
    /// Applies a change signalled since the last call (e.g. re-lists after a
    /// `tools/list_changed` notification). Must be cheap when nothing changed and bounded when
    /// something did. The default does nothing.
    async fn sync(&self) {}
}

/// The session state tools read and write; it lives with sessions.
pub use crate::session::AgentState;

/// A successful (or deliberately failed) tool output.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    /// Success or error.
    pub status: ToolResultStatus,
    /// The content blocks.
    pub content: Vec<ToolResultContent>,
}

impl ToolOutput {
    /// A text result.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            status: ToolResultStatus::Success,
            content: vec![ToolResultContent::Text(text.into())],
        }
    }

    /// A JSON result.
    pub fn json(value: Value) -> Self {
        Self {
            status: ToolResultStatus::Success,
            content: vec![ToolResultContent::Json(value)],
        }
    }

    /// An error result the model can read.
    pub fn error(text: impl Into<String>) -> Self {
        Self {
            status: ToolResultStatus::Error,
            content: vec![ToolResultContent::Text(text.into())],
        }
    }
}

impl From<String> for ToolOutput {
    fn from(s: String) -> Self {
        Self::text(s)
    }
}

impl From<&str> for ToolOutput {
    fn from(s: &str) -> Self {
        Self::text(s)
    }
}

impl From<Value> for ToolOutput {
    fn from(v: Value) -> Self {
        Self::json(v)
    }
}

/// A tool failure: its message is what the model reads; its source, when there is one, is the
/// underlying error (an HTTP client's, a store's) for logs and callers, never sent to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolError {
    message: String,
    source: Option<crate::error::Cause>,
}

impl ToolError {
    /// An error with this message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            source: None,
        }
    }

    /// An error with this message, caused by `source` (kept for [`std::error::Error::source`]).
    ///
    /// ```
    /// use agent_core::tool::ToolError;
    /// let io = std::io::Error::other("disk full");
    /// let e = ToolError::with_source("could not save the booking", io);
    /// assert_eq!(e.message(), "could not save the booking");
    /// assert_eq!(std::error::Error::source(&e).map(|s| s.to_string()).as_deref(), Some("disk full"));
    /// ```
    pub fn with_source(
        message: impl fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.to_string(),
            source: Some(crate::error::Cause::new(source)),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ToolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|c| c.get() as &(dyn std::error::Error + 'static))
    }
}

/// A boxed, sendable future: what an `#[async_trait]` method returns once expanded, and the type
/// [`FnTool`] stores its closure's futures as.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A tool an agent can call. Write it with the [`#[tool]`](macro@crate::tool) macro on a
/// function or an `impl` block (the usual way), build one from a closure with [`FnTool`], or
/// implement it by hand with [`async_trait`](crate::async_trait), as here (every async trait of
/// the workspace — `Tool`, `ToolSource`, the session and memory stores, `Embedder`, the MCP
/// handlers — is written this way).
///
/// ```
/// use agent_core::async_trait;
/// use agent_core::tool::{Tool, ToolContext, ToolError, ToolOutput, ToolSpec};
/// use serde_json::{json, Value};
///
/// struct Echo;
/// #[async_trait]
/// impl Tool for Echo {
///     fn spec(&self) -> ToolSpec {
///         ToolSpec {
///             name: "echo".into(),
///             description: "Repeats its input.".into(),
///             input_schema: json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}),
///         }
///     }
///     async fn call(&self, input: Value, _ctx: ToolContext) -> Result<ToolOutput, ToolError> {
///         Ok(ToolOutput::text(input["text"].as_str().unwrap_or_default()))
///     }
/// }
/// ```
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// The tool's spec; read once, when the tool is registered.
    fn spec(&self) -> ToolSpec;

    /// Runs the tool on input already validated against the spec's schema.
    async fn call(&self, input: Value, ctx: ToolContext) -> Result<ToolOutput, ToolError>;

    /// This tool's own timeout, overriding the executor's default.
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// Whether calling the tool twice with the same input has the effect of calling it once (a
    /// search, a read; not a booking). When a run is resumed after its process died, pending
    /// calls of idempotent tools run again; the others are answered as interrupted, since they
    /// may have taken effect. Default `false`.
    fn idempotent(&self) -> bool {
        false
    }
}

/// A shared tool is a tool.
#[async_trait]
impl<T: Tool + ?Sized> Tool for Arc<T> {
    fn spec(&self) -> ToolSpec {
        (**self).spec()
    }

    async fn call(&self, input: Value, ctx: ToolContext) -> Result<ToolOutput, ToolError> {
        (**self).call(input, ctx).await
    }

    fn timeout(&self) -> Option<Duration> {
        (**self).timeout()
    }

    fn idempotent(&self) -> bool {
        (**self).idempotent()
    }
}

type ToolFn =
    dyn Fn(Value, ToolContext) -> BoxFuture<'static, Result<ToolOutput, ToolError>> + Send + Sync;

/// A tool made from a closure.
///
/// ```
/// use agent_core::tool::{FnTool, ToolOutput};
/// use serde_json::json;
///
/// let add = FnTool::new(
///     "add",
///     "Adds two numbers.",
///     json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}),
///     |input, _ctx| async move {
///         let sum = input["a"].as_f64().unwrap_or(0.0) + input["b"].as_f64().unwrap_or(0.0);
///         Ok(ToolOutput::json(json!({"sum": sum})))
///     },
/// );
/// ```
pub struct FnTool {
    spec: ToolSpec,
    timeout: Option<Duration>,
    idempotent: bool,
    f: Box<ToolFn>,
}

impl FnTool {
    /// A tool named `name` that runs `f`.
    pub fn new<F, Fut>(
        name: impl Into<String>,
        description: impl Into<String>,
        input_schema: Value,
        f: F,
    ) -> Self
    where
        F: Fn(Value, ToolContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ToolOutput, ToolError>> + Send + 'static,
    {
        Self {
            spec: ToolSpec {
                name: name.into(),
                description: description.into(),
                input_schema,
            },
            timeout: None,
            idempotent: false,
            f: Box::new(move |input, ctx| Box::pin(f(input, ctx))),
        }
    }

    /// Sets this tool's own timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Declares the tool idempotent (see [`Tool::idempotent`]).
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }
}

impl fmt::Debug for FnTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnTool")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Tool for FnTool {
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }

    async fn call(&self, input: Value, ctx: ToolContext) -> Result<ToolOutput, ToolError> {
        (self.f)(input, ctx).await
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn idempotent(&self) -> bool {
        self.idempotent
    }
}
