//! The [`Agent`]: an immutable definition shared by all sessions, and the [`Session`] handle
//! that runs invocations.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::conversation::{ConversationManager, SlidingWindow};
use crate::error::{AgentError, BuildError};
use crate::event::AgentEvent;
use crate::memory::MemoryConfig;
use crate::message::{ContentBlock, Message};
use crate::model::{Model, ModelDescriptor, ToolChoice, Usage};
use crate::retry::RetryPolicy;
use crate::session::{InMemorySessionStore, SessionStore, validate_id};
use crate::telemetry::Telemetry;
use crate::tool::executor::ExecutorConfig;
use crate::tool::{Tool, ToolRegistry, ToolSource};

mod guard;
mod run;

pub use guard::{LoopGuard, REPEATED_CALL_NOTE};
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
    /// The invocation was cancelled.
    Cancelled,
    /// The turn limit was reached.
    LimitTurns,
    /// The token limit was reached.
    LimitTokens,
    /// The wall-clock limit was reached.
    Timeout,
    /// The model kept repeating an identical tool call (see [`LoopGuard`]).
    ToolLoop,
}

impl StopReason {
    /// The snake-case name, as in the JSON form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndTurn => "end_turn",
            Self::MaxTokens => "max_tokens",
            Self::ContentFiltered => "content_filtered",
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
}

impl AgentResult {
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
}

/// What a resumed run does with the tool calls its interrupted run left pending (calls whose
/// results were recorded are never run again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ResumePolicy {
    /// Run again the calls of tools declared idempotent ([`Tool::idempotent`]); answer the
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

    /// The agent's tools: the fixed ones plus each [`ToolSource`]'s list as of its last sync
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
        Session {
            agent: self.clone(),
            session_id: session_id.into(),
            actor_id: None,
            cancel: None,
            idempotency_key: None,
        }
    }
}

/// Builds an [`Agent`].
pub struct AgentBuilder {
    name: String,
    id: String,
    model: Option<Arc<dyn Model>>,
    system_prompt: Option<String>,
    tools: Vec<Arc<dyn Tool>>,
    tool_sources: Vec<Arc<dyn ToolSource>>,
    tool_choice: ToolChoice,
    executor: ExecutorConfig,
    limits: Limits,
    retry: RetryPolicy,
    max_context_reductions: u32,
    conversation: Arc<dyn ConversationManager>,
    store: Arc<dyn SessionStore>,
    telemetry: Option<Telemetry>,
    memory: Option<MemoryConfig>,
    loop_guard: LoopGuard,
    final_answer_timeout: Option<Duration>,
    resume_policy: ResumePolicy,
}

impl Default for AgentBuilder {
    fn default() -> Self {
        Self {
            name: "agent".into(),
            id: "default".into(),
            model: None,
            system_prompt: None,
            tools: Vec::new(),
            tool_sources: Vec::new(),
            tool_choice: ToolChoice::Auto,
            executor: ExecutorConfig::default(),
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            max_context_reductions: 3,
            conversation: Arc::new(SlidingWindow::default()),
            store: Arc::new(InMemorySessionStore::new()),
            telemetry: None,
            memory: None,
            loop_guard: LoopGuard::default(),
            final_answer_timeout: Some(Duration::from_secs(30)),
            resume_policy: ResumePolicy::default(),
        }
    }
}

impl AgentBuilder {
    /// The agent's name (telemetry's `gen_ai.agent.name`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The agent's id within sessions (default `default`, as in Strands).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// The model. A shared one (`Arc<dyn Model>`) is a model too, so agents can share one
    /// provider and its connection pool:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use agent_core::model::{Model, openai::OpenAiCompatible};
    /// use agent_core::prelude::*;
    ///
    /// let model: Arc<dyn Model> = Arc::new(
    ///     OpenAiCompatible::builder()
    ///         .base_url("http://127.0.0.1:8000/v1")
    ///         .model("qwen3-8b")
    ///         .build()?,
    /// );
    /// let planner = Agent::builder().model(model.clone()).build()?;
    /// let booker = Agent::builder()
    ///     .model(model)
    ///     .system_prompt("You book what the planner chose.")
    ///     .build()?;
    /// # let _ = (planner, booker);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn model(mut self, model: impl Model) -> Self {
        self.model = Some(Arc::new(model));
        self
    }

    /// The system prompt.
    pub fn system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.system_prompt = Some(prompt.into());
        self
    }

    /// Adds a tool.
    pub fn tool(mut self, tool: impl Tool) -> Self {
        self.tools.push(Arc::new(tool));
        self
    }

    /// Adds shared tools.
    pub fn tools(mut self, tools: impl IntoIterator<Item = Arc<dyn Tool>>) -> Self {
        self.tools.extend(tools);
        self
    }

    /// Adds a changing set of tools (e.g. an MCP server's, refreshed on `tools/list_changed`).
    /// Its list is re-read before a model call whenever its generation changed. A tool of a
    /// later list whose name clashes with another is left out with a warning; clashes in the
    /// first list fail [`build`](Self::build).
    pub fn tool_source(mut self, source: Arc<dyn ToolSource>) -> Self {
        self.tool_sources.push(source);
        self
    }

    /// The tool choice sent with every model call (default auto).
    pub fn tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = choice;
        self
    }

    /// How many tool calls of one batch run at once (default 8).
    pub fn max_tool_concurrency(mut self, n: usize) -> Self {
        self.executor.max_concurrency = n;
        self
    }

    /// Default bound of one tool call (default 60 s).
    pub fn tool_timeout(mut self, timeout: Duration) -> Self {
        self.executor.timeout = timeout;
        self
    }

    /// Invocation limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Retry policy of model calls.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How often one model turn may reduce the context after an overflow (default 3).
    pub fn max_context_reductions(mut self, n: u32) -> Self {
        self.max_context_reductions = n;
        self
    }

    /// The conversation manager (default a sliding window of 40 messages).
    pub fn conversation_manager(mut self, manager: impl ConversationManager) -> Self {
        self.conversation = Arc::new(manager);
        self
    }

    /// The session store (default in memory). A shared one (`Arc<dyn SessionStore>`) is a
    /// store too.
    pub fn session_store(mut self, store: impl SessionStore) -> Self {
        self.store = Arc::new(store);
        self
    }

    /// Telemetry (default: [`Telemetry::default_for_agents`]: the global providers once
    /// `telemetry::otlp::init_from_env` configured them, otherwise disabled).
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Long-term memory: relevant records of the invocation's actor are injected into the
    /// system context (not into history) and finished invocations are mined for new ones, in the
    /// background. Memory needs an actor: `agent.session(id).actor(user)`.
    pub fn memory(mut self, memory: MemoryConfig) -> Self {
        self.memory = Some(memory);
        self
    }

    /// How repeated identical tool calls are treated (default [`LoopGuard::new`]: answered
    /// from the earlier result twice, then tool use ends with [`StopReason::ToolLoop`]).
    pub fn loop_guard(mut self, guard: LoopGuard) -> Self {
        self.loop_guard = guard;
        self
    }

    /// The graceful end. When a run stops on a limit (turns, tokens, time) or the
    /// [`LoopGuard`] before the model answered, the loop makes one more model call with tool
    /// use switched off and [`FINAL_ANSWER_NOTE`] added to the system prompt, so the caller gets
    /// an answer from what the tools returned; the run keeps its stop reason. That call has its
    /// own bound, `timeout` (default 30 s), which also applies after the time limit has passed;
    /// it is one model call beyond `max_turns` and its tokens count beyond `max_total_tokens`.
    /// `None` stops at the limit with no final call. A cancelled run never makes it.
    pub fn final_answer_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.final_answer_timeout = timeout;
        self
    }

    /// What [`Session::resume`] does with pending tool calls (default
    /// [`ResumePolicy::RerunIdempotent`]).
    pub fn resume_policy(mut self, policy: ResumePolicy) -> Self {
        self.resume_policy = policy;
        self
    }

    /// Builds the agent.
    pub fn build(self) -> Result<Agent, BuildError> {
        let model = self.model.ok_or(BuildError::MissingModel)?;
        validate_id("agent", &self.id)?;
        if self.executor.max_concurrency == 0 {
            return Err(BuildError::Invalid(
                "max_tool_concurrency must be at least 1".into(),
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(BuildError::Invalid(
                "retry.max_attempts must be at least 1".into(),
            ));
        }
        let descriptor = model.descriptor();
        let telemetry = self.telemetry.unwrap_or_else(Telemetry::default_for_agents);
        let tools = AgentTools::new(self.tools, self.tool_sources)?;
        Ok(Agent {
            inner: Arc::new(AgentInner {
                name: self.name,
                id: self.id,
                model,
                system_prompt: self.system_prompt,
                tools,
                tool_choice: self.tool_choice,
                executor: self.executor,
                limits: self.limits,
                retry: self.retry,
                max_context_reductions: self.max_context_reductions,
                conversation: self.conversation,
                store: self.store,
                locks: SessionLocks::default(),
                telemetry,
                descriptor,
                memory: self.memory,
                loop_guard: self.loop_guard,
                final_answer_timeout: self.final_answer_timeout,
                resume_policy: self.resume_policy,
            }),
        })
    }
}

/// A handle on one session of an agent.
#[derive(Debug, Clone)]
pub struct Session {
    agent: Agent,
    session_id: String,
    actor_id: Option<String>,
    cancel: Option<CancellationToken>,
    idempotency_key: Option<String>,
}

impl Session {
    /// The actor (end user) this session belongs to; tools see it in their context.
    pub fn actor(mut self, actor_id: impl Into<String>) -> Self {
        self.actor_id = Some(actor_id.into());
        self
    }

    /// A token that cancels the invocation: the model stream and running tools stop promptly
    /// and the run ends with [`StopReason::Cancelled`].
    pub fn cancel_token(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Makes the next invocation idempotent under `key` (a client's retry token, an HTTP
    /// `Idempotency-Key`): the key is recorded with the session before the prompt is written,
    /// and a later invocation with the same key does not write the prompt again. If the first
    /// finished, it gets that outcome (its final message and stop reason; usage and turns are
    /// not kept); if it failed or its process died, it resumes the run where it stopped (see
    /// [`Session::resume`]). Only the session's latest keyed invocation is remembered.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    fn invocation(&self, start: run::Start) -> run::Invocation {
        run::Invocation {
            start,
            idempotency_key: self.idempotency_key.clone(),
        }
    }

    /// Runs an invocation to its end.
    pub async fn invoke(&self, prompt: impl Into<Prompt>) -> Result<AgentResult, AgentError> {
        self.run_to_end(run::Start::Prompt(prompt.into())).await
    }

    /// Continues the session's interrupted run, on any replica, without a new prompt: after a
    /// process died (or an invocation failed) between the prompt and the answer. Tool calls
    /// whose results were recorded are not run again; pending calls are run again or answered
    /// as interrupted as the agent's [`ResumePolicy`] says; then the loop goes on to an answer.
    /// A session whose last run ended gets that run's final message, with no model call;
    /// an empty session is [`AgentError::NothingToResume`].
    pub async fn resume(&self) -> Result<AgentResult, AgentError> {
        self.run_to_end(run::Start::Resume).await
    }

    /// [`Session::resume`], streamed as [`Session::stream`] streams.
    pub fn resume_stream(&self) -> AgentStream {
        self.spawn(run::Start::Resume)
    }

    async fn run_to_end(&self, start: run::Start) -> Result<AgentResult, AgentError> {
        let cancel = self.cancel.clone().unwrap_or_default();
        run::run(
            &self.agent.inner,
            &self.session_id,
            self.actor_id.as_deref(),
            self.invocation(start),
            cancel,
            None,
        )
        .await
    }

    /// Runs an invocation in a task and streams its events; the last item is
    /// [`AgentEvent::Stop`] or an error. Dropping the stream cancels the run. Must be called
    /// within a Tokio runtime.
    pub fn stream(&self, prompt: impl Into<Prompt>) -> AgentStream {
        self.spawn(run::Start::Prompt(prompt.into()))
    }

    fn spawn(&self, start: run::Start) -> AgentStream {
        let (tx, rx) = mpsc::channel(64);
        let cancel = self.cancel.clone().unwrap_or_default().child_token();
        let guard = cancel.clone().drop_guard();
        let agent = self.agent.clone();
        let session_id = self.session_id.clone();
        let actor_id = self.actor_id.clone();
        let invocation = self.invocation(start);
        // The caller's trace context, so the run's `invoke_agent` span is its child as with
        // `invoke`, not a new root.
        let trace = opentelemetry::Context::current();
        tokio::spawn(async move {
            use futures::FutureExt as _;
            use opentelemetry::trace::FutureExt as _;
            let run = run::run(
                &agent.inner,
                &session_id,
                actor_id.as_deref(),
                invocation,
                cancel,
                Some(tx.clone()),
            )
            .with_context(trace);
            // A panic (in a user's model, tool source or store, say) still ends the stream,
            // with a typed error instead of a stream that just stops.
            let outcome = match std::panic::AssertUnwindSafe(run).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(panic) => Err(AgentError::Panicked {
                    message: panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".to_owned()),
                }),
            };
            let last = outcome.map(AgentEvent::Stop);
            // The receiver may be gone; then nobody is waiting for the outcome.
            let _ = tx.send(last).await;
        });
        AgentStream { rx, _guard: guard }
    }
}

/// The events of a streamed invocation.
#[derive(Debug)]
pub struct AgentStream {
    rx: mpsc::Receiver<Result<AgentEvent, AgentError>>,
    _guard: DropGuard,
}

impl Stream for AgentStream {
    type Item = Result<AgentEvent, AgentError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// One async mutex per session in use, so two invocations of one session never interleave.
/// Entries disappear when no invocation holds or waits for them.
#[derive(Default)]
pub(crate) struct SessionLocks {
    map: Mutex<HashMap<Arc<str>, Weak<tokio::sync::Mutex<()>>>>,
}

pub(crate) struct SessionLockGuard<'a> {
    locks: &'a SessionLocks,
    key: Arc<str>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for SessionLockGuard<'_> {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let mutex = tokio::sync::OwnedMutexGuard::mutex(&guard).clone();
        drop(guard);
        // Acquirers upgrade the weak entry under the map lock, so a strong count of one (ours)
        // checked under that lock means nobody holds or waits for this session.
        let mut map = self
            .locks
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if Arc::strong_count(&mutex) == 1 {
            map.remove(&self.key);
        }
    }
}

impl SessionLocks {
    pub(crate) async fn acquire(
        &self,
        key: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Option<SessionLockGuard<'_>> {
        let key: Arc<str> = key.into();
        let mutex = {
            let mut map = self
                .map
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.get(&key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.clone(), Arc::downgrade(&m));
                    m
                }
            }
        };
        let lock = mutex.lock_owned();
        let guard = match deadline {
            Some(d) => tokio::time::timeout_at(d, lock).await.ok()?,
            None => lock.await,
        };
        Some(SessionLockGuard {
            locks: self,
            key,
            guard: Some(guard),
        })
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// The agent's tools: a fixed registry, plus tool sources whose lists are re-read when their
/// generation changes.
pub(crate) struct AgentTools {
    fixed: Arc<ToolRegistry>,
    sources: Vec<Arc<dyn ToolSource>>,
    current: std::sync::RwLock<(Vec<u64>, Arc<ToolRegistry>)>,
}

impl AgentTools {
    /// Registers the fixed tools and the sources' first lists; a clash is an error.
    fn new(
        fixed_tools: Vec<Arc<dyn Tool>>,
        sources: Vec<Arc<dyn ToolSource>>,
    ) -> Result<Self, crate::tool::RegistryError> {
        let mut fixed = ToolRegistry::new();
        for tool in fixed_tools {
            fixed.register(tool)?;
        }
        let fixed = Arc::new(fixed);
        let generations: Vec<u64> = sources.iter().map(|s| s.generation()).collect();
        let first = if sources.is_empty() {
            fixed.clone()
        } else {
            let mut first = ToolRegistry::new();
            for tool in fixed
                .tools()
                .cloned()
                .chain(sources.iter().flat_map(|s| s.tools()))
            {
                first.register(tool)?;
            }
            Arc::new(first)
        };
        Ok(Self {
            fixed,
            sources,
            current: std::sync::RwLock::new((generations, first)),
        })
    }

    /// The registry for a model call: the sources brought up to date first (concurrently).
    pub(crate) async fn refreshed(&self) -> Arc<ToolRegistry> {
        if !self.sources.is_empty() {
            futures::future::join_all(self.sources.iter().map(|s| s.sync())).await;
        }
        self.current()
    }

    /// The registry as of the sources' last sync.
    pub(crate) fn current(&self) -> Arc<ToolRegistry> {
        if self.sources.is_empty() {
            return self.fixed.clone();
        }
        let generations: Vec<u64> = self.sources.iter().map(|s| s.generation()).collect();
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if current.0 == generations {
                return current.1.clone();
            }
        }
        let mut registry = ToolRegistry::new();
        for tool in self
            .fixed
            .tools()
            .cloned()
            .chain(self.sources.iter().flat_map(|s| s.tools()))
        {
            if let Err(e) = registry.register(tool) {
                tracing::warn!(error = %e, "a changed tool list holds a tool that cannot be registered; left out");
            }
        }
        let registry = Arc::new(registry);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (generations, registry.clone());
        registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn session_locks_serialise_and_clean_up() {
        let locks = SessionLocks::default();
        let first = locks.acquire("s", None).await.expect("free");
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(
            locks.acquire("s", Some(deadline)).await.is_none(),
            "busy session waits are bounded"
        );
        let other = locks
            .acquire("t", None)
            .await
            .expect("other sessions are independent");
        assert_eq!(locks.len(), 2);
        drop(first);
        drop(other);
        assert_eq!(locks.len(), 0, "entries go when nobody holds them");
        let again = locks
            .acquire(
                "s",
                Some(tokio::time::Instant::now() + Duration::from_millis(50)),
            )
            .await;
        assert!(again.is_some());
    }
}
