//! The [`Agent`]: an immutable definition shared by all sessions, and the [`Session`] handle
//! that runs invocations.

use std::sync::Arc;
use std::time::Duration;

use crate::conversation::ConversationManager;
use crate::memory::MemoryConfig;
use crate::message::ContentBlock;
use crate::model::{Model, ModelDescriptor, ToolChoice};
use crate::retry::RetryPolicy;
use crate::session::SessionStore;
use crate::telemetry::Telemetry;
use crate::tool::ToolRegistry;
use crate::tool::executor::ExecutorConfig;

mod as_tool;
mod builder;
mod guard;
mod locks;
mod run;
mod session;
mod structured;
mod tools;

pub use crate::outcome::{AgentResult, StopReason, TurnMetrics};
pub use as_tool::AgentTool;
pub use builder::AgentBuilder;
pub(crate) use locks::SessionLocks;
pub use session::{AgentStream, Session};
pub use structured::{OutputSchema, STRUCTURED_OUTPUT_NOTE};
pub(crate) use tools::AgentTools;

pub use guard::{LoopGuard, REPEATED_CALL_NOTE, SAME_RESULT_NOTE};
pub use run::{FINAL_ANSWER_NOTE, INTERRUPTED_TEXT, TIME_LIMIT_TEXT};

/// Bounds of one invocation. Limits end a run gracefully, with their own [`StopReason`]: when
/// one is reached before the model answered, the loop asks the model for a final answer
/// without tools (see [`AgentBuilder::final_answer_timeout`]), so the caller still gets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
    pub(crate) inner: Arc<AgentInner>,
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
    pub(crate) hooks: crate::hooks::Hooks,
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
    /// Scores a sample of invocations in the background.
    #[cfg(feature = "eval")]
    pub(crate) online: Option<crate::eval::OnlineEvaluator>,
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
    /// Starts configuring an agent; only the model is required. Build once per process and
    /// clone the `Agent`: sessions are cheap, agents are shared.
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
