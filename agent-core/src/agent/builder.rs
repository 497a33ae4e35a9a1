//! [`AgentBuilder`]: everything an [`Agent`] is made of, checked once at `build()`.

use std::sync::Arc;
use std::time::Duration;

use super::{Agent, AgentInner, AgentTools, Limits, LoopGuard, ResumePolicy, SessionLocks};
use crate::conversation::{ConversationManager, SlidingWindow};
use crate::error::BuildError;
use crate::hooks::Hook;
use crate::memory::MemoryConfig;
use crate::model::{Model, ToolChoice};
use crate::retry::RetryPolicy;
use crate::session::{InMemorySessionStore, SessionStore, validate_id};
use crate::telemetry::Telemetry;
use crate::tool::executor::ExecutorConfig;
use crate::tool::{Tool, ToolSource};

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
    hooks: Vec<Arc<dyn Hook>>,
    hook_timeout: Duration,
    store: Arc<dyn SessionStore>,
    telemetry: Option<Telemetry>,
    memory: Option<MemoryConfig>,
    loop_guard: LoopGuard,
    final_answer_timeout: Option<Duration>,
    resume_policy: ResumePolicy,
    replica_lease: Option<Duration>,
    #[cfg(feature = "eval")]
    online: Option<crate::eval::OnlineEvaluator>,
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
            hooks: Vec::new(),
            hook_timeout: crate::hooks::DEFAULT_HOOK_TIMEOUT,
            store: Arc::new(InMemorySessionStore::new()),
            telemetry: None,
            memory: None,
            loop_guard: LoopGuard::default(),
            final_answer_timeout: Some(Duration::from_secs(30)),
            resume_policy: ResumePolicy::default(),
            replica_lease: None,
            #[cfg(feature = "eval")]
            online: None,
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

    /// The instructions sent before every conversation (unset: none). Sent as the system
    /// message, or Bedrock's `system` field, on every model call of every session.
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

    /// Adds a hook ([`crate::hooks`]): guardrails, approvals, redaction, custom events. Hooks
    /// run in the order they are added (`after_*` events in reverse).
    pub fn hook(mut self, hook: impl Hook) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Adds several hooks at once, in order: a bundle a library hands out as one.
    pub fn hooks(mut self, hooks: impl IntoIterator<Item = Arc<dyn Hook>>) -> Self {
        self.hooks.extend(hooks);
        self
    }

    /// The bound on each hook call, for hooks that set none of their own (default 30 s); a
    /// hook past it fails the run with [`AgentError::Hook`](crate::AgentError::Hook).
    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.hook_timeout = timeout;
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
    /// from the earlier result twice, then tool use ends with [`StopReason::ToolLoop`](super::StopReason::ToolLoop)).
    pub fn loop_guard(mut self, guard: LoopGuard) -> Self {
        self.loop_guard = guard;
        self
    }

    /// The graceful end. When a run stops on a limit (turns, tokens, time) or the
    /// [`LoopGuard`] before the model answered, the loop makes one more model call with tool
    /// use switched off and [`FINAL_ANSWER_NOTE`](super::FINAL_ANSWER_NOTE) added to the system prompt, so the caller gets
    /// an answer from what the tools returned; the run keeps its stop reason. That call has its
    /// own bound, `timeout` (default 30 s), which also applies after the time limit has passed;
    /// it is one model call beyond `max_turns` and its tokens count beyond `max_total_tokens`.
    /// `None` stops at the limit with no final call. A cancelled run never makes it.
    pub fn final_answer_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.final_answer_timeout = timeout;
        self
    }

    /// What [`Session::resume`](super::Session::resume) does with pending tool calls (default
    /// [`ResumePolicy::RerunIdempotent`]).
    pub fn resume_policy(mut self, policy: ResumePolicy) -> Self {
        self.resume_policy = policy;
        self
    }

    /// Makes runs of one session on different replicas (processes that share the session
    /// store) exclude each other. A run records a lease in the session's state before it writes
    /// anything, renews it at each save and releases it at its end; a run on another replica
    /// that finds a live lease fails at once with [`AgentError::SessionBusy`](crate::AgentError::SessionBusy)
    /// (retryable) instead of running beside it, and so does one that loses the race to take it.
    /// An idempotent retry of a finished invocation still gets the recorded outcome. A lease
    /// left by a process that died expires `lease` after its last save; the session can be
    /// continued or resumed then. Keep `lease` above the longest model call or tool call (a
    /// lease that expires during one lets another replica start; the store's conditional
    /// writes still refuse the second writer, but the model may be called twice).
    ///
    /// Off by default (runs of one process always exclude each other): it costs one state
    /// write more per invocation.
    pub fn replica_lease(mut self, lease: Duration) -> Self {
        self.replica_lease = Some(lease);
        self
    }

    /// Scores a sample of this agent's invocations in the background (feature `eval`; see
    /// [`OnlineEvaluator`](crate::eval::OnlineEvaluator)): the answer never waits for it.
    #[cfg(feature = "eval")]
    pub fn online_evaluation(mut self, evaluator: crate::eval::OnlineEvaluator) -> Self {
        self.online = Some(evaluator);
        self
    }

    /// Builds the agent.
    pub fn build(self) -> Result<Agent, BuildError> {
        let model = self.model.ok_or(BuildError::MissingModel)?;
        validate_id("agent", &self.id)?;
        if self.executor.max_concurrency == 0 {
            return Err(BuildError::OutOfRange {
                setting: "max_tool_concurrency",
                requirement: "must be at least 1",
            });
        }
        if self.retry.max_attempts == 0 {
            return Err(BuildError::OutOfRange {
                setting: "retry (RetryPolicy::max_attempts)",
                requirement: "must be at least 1",
            });
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
                hooks: crate::hooks::Hooks {
                    list: self.hooks.into(),
                    timeout: self.hook_timeout,
                },
                store: self.store,
                locks: SessionLocks::default(),
                telemetry,
                descriptor,
                memory: self.memory,
                loop_guard: self.loop_guard,
                final_answer_timeout: self.final_answer_timeout,
                resume_policy: self.resume_policy,
                replica_lease: self.replica_lease,
                instance: format!("{:016x}", fastrand::u64(..)),
                #[cfg(feature = "eval")]
                online: self.online,
            }),
        })
    }
}
