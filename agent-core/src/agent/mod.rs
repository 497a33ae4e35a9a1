//! The [`Agent`]: an immutable definition shared by all sessions, and the [`Session`] handle
//! that runs invocations.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::conversation::ConversationManager;
use crate::memory::MemoryConfig;
use crate::message::{ContentBlock, Message};
use crate::model::{Model, ModelDescriptor, ToolChoice, Usage};
use crate::retry::RetryPolicy;
use crate::session::SessionStore;
use crate::telemetry::Telemetry;
use crate::tool::ToolRegistry;
use crate::tool::executor::ExecutorConfig;

mod builder;
mod guard;
mod locks;
mod run;
mod session;
mod structured;
mod tools;

pub use builder::AgentBuilder;
pub(crate) use locks::SessionLocks;
pub use session::{AgentStream, Session};
pub use structured::{OutputSchema, STRUCTURED_OUTPUT_NOTE};
pub(crate) use tools::AgentTools;

pub use guard::{LoopGuard, REPEATED_CALL_NOTE, SAME_RESULT_NOTE};
pub use run::{FINAL_ANSWER_NOTE, INTERRUPTED_TEXT, TIME_LIMIT_TEXT};

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StopReason {
    /// The model answered.
    EndTurn,
    /// The model hit its output token limit.
    MaxTokens,
    /// The provider filtered the content.
    ContentFiltered,
    /// A guardrail (Bedrock Guardrails) blocked the prompt or the answer; the answer is the
    /// guardrail's message.
    GuardrailIntervened,
    /// The invocation was cancelled.
    Cancelled,
    /// The turn limit was reached.
    LimitTurns,
    /// The token limit was reached.
    LimitTokens,
    /// The wall-clock limit was reached.
    Timeout,
    /// The model kept repeating a tool call: the same arguments, or new ones that found only
    /// what an earlier call found (see [`LoopGuard`]).
    ToolLoop,
}

impl StopReason {
    /// The snake-case name, as in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndTurn => "end_turn",
            Self::MaxTokens => "max_tokens",
            Self::ContentFiltered => "content_filtered",
            Self::GuardrailIntervened => "guardrail_intervened",
            Self::Cancelled => "cancelled",
            Self::LimitTurns => "limit_turns",
            Self::LimitTokens => "limit_tokens",
            Self::Timeout => "timeout",
            Self::ToolLoop => "tool_loop",
        }
    }
}

/// Bounds of one invocation. Limits end a run gracefully, with their own [`StopReason`]: when
/// one is reached before the model answered, the loop asks the model for a final answer
/// without tools (see [`AgentBuilder::final_answer_timeout`]), so the caller still gets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Model calls per invocation (default 50).
    pub max_turns: Option<u32>,
    /// Input plus output tokens per invocation, checked before each model call (default none).
    pub max_total_tokens: Option<u64>,
    /// Wall-clock time of an invocation, waits for a busy session included (default 10 minutes).
    pub timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_turns: Some(50),
            max_total_tokens: None,
            timeout: Some(Duration::from_secs(600)),
        }
    }
}

impl Limits {
    /// No limits at all (not recommended for services).
    pub fn unlimited() -> Self {
        Self {
            max_turns: None,
            max_total_tokens: None,
            timeout: None,
        }
    }

    /// Sets the turn limit.
    pub fn max_turns(mut self, turns: u32) -> Self {
        self.max_turns = Some(turns);
        self
    }

    /// Sets the token limit.
    pub fn max_total_tokens(mut self, tokens: u64) -> Self {
        self.max_total_tokens = Some(tokens);
        self
    }

    /// Sets the wall-clock limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Metrics of one model turn and the tool batch that followed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnMetrics {
    /// Time from the request to the end of the response, of the successful attempt.
    pub model_latency_ms: u64,
    /// Time to the first streamed event, of the successful attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_first_chunk_ms: Option<u64>,
    /// Attempts the turn took (1 without retries).
    pub attempts: u32,
    /// Usage of the turn.
    pub usage: Usage,
    /// Tool calls in the batch.
    pub tool_calls: u32,
    /// Duration of the tool batch.
    pub tools_ms: u64,
}

/// The outcome of an invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentResult {
    /// Why it ended.
    pub stop_reason: StopReason,
    /// The last assistant message of this invocation, if the model answered at all.
    pub message: Option<Message>,
    /// Usage of this invocation (not of the session's lifetime).
    pub usage: Usage,
    /// Per-turn metrics.
    pub turns: Vec<TurnMetrics>,
    /// The structured value, when the invocation asked for one
    /// ([`Session::structured_output`]); checked against its schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured_output: Option<serde_json::Value>,
}

impl AgentResult {
    /// The structured value as `T` (see [`Session::invoke_structured`]); an error when the
    /// invocation asked for none or the value is not a `T`.
    pub fn structured<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::AgentError> {
        let value =
            self.structured_output
                .clone()
                .ok_or_else(|| crate::AgentError::StructuredOutput {
                    message: "the invocation asked for no structured output".into(),
                    raw: self.text(),
                    attempts: 0,
                })?;
        let raw = value.to_string();
        serde_json::from_value(value).map_err(|e| crate::AgentError::StructuredOutput {
            message: format!("the value does not deserialise: {e}"),
            raw,
            attempts: 0,
        })
    }

    /// The text of the final message (empty if there is none).
    pub fn text(&self) -> String {
        self.message.as_ref().map(Message::text).unwrap_or_default()
    }

    /// Whether the run ended with an answer: a final assistant message with non-blank text.
    /// A run stopped by a limit may still have one (the final answer asked for without tools);
    /// a caller that must show an answer treats `false` as a failure.
    pub fn has_answer(&self) -> bool {
        !self.text().trim().is_empty()
    }
}

/// What to send as a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt(pub Vec<ContentBlock>);

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Self(vec![ContentBlock::Text(s.to_owned())])
    }
}

impl From<String> for Prompt {
    fn from(s: String) -> Self {
        Self(vec![ContentBlock::Text(s)])
    }
}

impl From<Vec<ContentBlock>> for Prompt {
    fn from(blocks: Vec<ContentBlock>) -> Self {
        Self(blocks)
    }
}

/// An agent: model, tools, prompt, limits and stores. Built once per process, cheap to clone,
/// `Send + Sync`; one agent serves any number of concurrent sessions.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<AgentInner>,
}

pub(crate) struct AgentInner {
    pub(crate) name: String,
    pub(crate) id: String,
    pub(crate) model: Arc<dyn Model>,
    pub(crate) system_prompt: Option<String>,
    pub(crate) tools: AgentTools,
    pub(crate) tool_choice: ToolChoice,
    pub(crate) executor: ExecutorConfig,
    pub(crate) limits: Limits,
    pub(crate) retry: RetryPolicy,
    pub(crate) max_context_reductions: u32,
    pub(crate) conversation: Arc<dyn ConversationManager>,
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) locks: SessionLocks,
    pub(crate) telemetry: Telemetry,
    pub(crate) descriptor: ModelDescriptor,
    pub(crate) memory: Option<MemoryConfig>,
    pub(crate) loop_guard: LoopGuard,
    pub(crate) final_answer_timeout: Option<Duration>,
    pub(crate) resume_policy: ResumePolicy,
    /// See [`AgentBuilder::replica_lease`].
    pub(crate) replica_lease: Option<Duration>,
    /// This agent's id in lease owners: random, one per built agent.
    pub(crate) instance: String,
}

/// What a resumed run does with the tool calls its interrupted run left pending (calls whose
/// results were recorded are never run again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ResumePolicy {
    /// Run again the calls of tools declared idempotent ([`Tool::idempotent`](crate::tool::Tool::idempotent)); answer the
    /// others as interrupted, since they may have taken effect (the default).
    #[default]
    RerunIdempotent,
    /// Run every pending call again.
    RerunAll,
    /// Answer every pending call as interrupted; the model decides what to do.
    InterruptAll,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.inner.name)
            .field("id", &self.inner.id)
            .field("model", &self.inner.model.descriptor())
            .field("tools", &self.inner.tools.current())
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// A builder.
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The agent's id (the key of its part of a session).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The agent's tools: the fixed ones plus each [`ToolSource`](crate::tool::ToolSource)'s list as of its last sync
    /// (sources sync before each model call).
    pub fn tools(&self) -> Arc<ToolRegistry> {
        self.inner.tools.current()
    }

    /// The long-term memory configuration, if the agent has one: its
    /// [`MemoryConfig::settled`] waits for the background extractions of finished invocations
    /// (before a service exits, or in a test).
    pub fn memory(&self) -> Option<&MemoryConfig> {
        self.inner.memory.as_ref()
    }

    /// A handle on one session. Nothing is loaded until an invocation runs.
    pub fn session(&self, session_id: impl Into<String>) -> Session {
        Session::new(self.clone(), session_id.into())
    }
}
