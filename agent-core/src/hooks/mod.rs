//! Hooks: typed, async callbacks at the seams of a run, that can act as well as observe.
//!
//! | method | when | can |
//! |---|---|---|
//! | [`before_invocation`](Hook::before_invocation) | before the prompt is stored | rewrite the prompt, stop |
//! | [`message_added`](Hook::message_added) | as a message is added, before it is stored, streamed or traced | rewrite it (redaction) |
//! | [`before_model_call`](Hook::before_model_call) | before each model call (each retry too) | rewrite the messages and system prompt sent, stop |
//! | [`after_model_call`](Hook::after_model_call) | after each model call, with its response or error | rewrite the response, retry the call, stop |
//! | [`before_tool_call`](Hook::before_tool_call) | before each tool call | rewrite its input, veto it or answer it in the tool's place, stop |
//! | [`after_tool_call`](Hook::after_tool_call) | after each tool call | rewrite its result, stop |
//! | [`after_invocation`](Hook::after_invocation) | when the run ends with a result | rewrite the result |
//!
//! Every context can also [`emit`](RunInfo::emit) custom events into the run's stream
//! ([`AgentEvent::Custom`]) and [`stop`](RunInfo::stop) the run
//! with a reason ([`StopReason::HookStopped`](crate::StopReason::HookStopped)).
//!
//! Hooks run in the order they were added to the builder, the `after_*` ones in reverse (so a
//! hook that wraps a step sees it last on the way out), one at a time. Each call is bounded by
//! the hook's [`timeout`](Hook::timeout) (default: the agent's
//! [`hook_timeout`](crate::AgentBuilder::hook_timeout), 30 s) and by the run's time limit; a
//! hook that fails or passes its bound fails the run with [`AgentError::Hook`](crate::AgentError::Hook),
//! at a point where the session is valid.
//!
//! A hook implements only the methods it needs (the others do nothing):
//!
//! ```
//! use agent_core::async_trait;
//! use agent_core::hooks::{BeforeToolCall, Hook, HookError};
//!
//! /// Refuses bookings above a budget, telling the model why.
//! struct Budget(f64);
//!
//! #[async_trait]
//! impl Hook for Budget {
//!     async fn before_tool_call(&self, call: &mut BeforeToolCall<'_>) -> Result<(), HookError> {
//!         let price = call.tool_use.input["price_eur"].as_f64().unwrap_or(0.0);
//!         if call.tool_use.name == "book_trip" && price > self.0 {
//!             call.deny(format!("the budget is {} EUR", self.0));
//!         }
//!         Ok(())
//!     }
//! }
//! ```
//!
//! Shipped hooks: [`ToolApproval`] (allow, deny or ask a person, per tool) and [`Redact`]
//! (secrets out of messages before they are stored, streamed or traced).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::AgentEvent;
use crate::message::{ContentBlock, Message, ToolResult, ToolUse};
use crate::model::{ModelError, ModelResponse};
use crate::outcome::AgentResult;
use crate::tool::{AgentState, ToolSpec};

mod approval;
mod redact;

pub use approval::{Approval, Approver, Rule, ToolApproval};
pub use redact::Redact;

/// Why a hook failed; the run fails with [`AgentError::Hook`](crate::AgentError::Hook), which
/// names the hook and the event and keeps this error as its source.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct HookError {
    message: String,
    #[source]
    source: Option<crate::error::Cause>,
}

impl HookError {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// A failure with this message, caused by `source` (kept for
    /// [`Error::source`](std::error::Error::source)).
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(crate::error::Cause::new(source)),
        }
    }
}

impl From<String> for HookError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for HookError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// A callback at the seams of a run. Implement the methods you need; add it with
/// [`AgentBuilder::hook`](crate::AgentBuilder::hook). See the [module docs](self).
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// The hook's name in errors and logs (default: the type's name).
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(std::any::type_name::<Self>())
    }

    /// This hook's bound on each of its calls, instead of the agent's
    /// [`hook_timeout`](crate::AgentBuilder::hook_timeout) (a hook that asks a person needs
    /// longer). The run's own time limit still applies.
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// Before the prompt is stored: rewrite it, or stop the run (nothing is stored then).
    /// Not called when a run is resumed without a prompt.
    async fn before_invocation(&self, _ctx: &mut BeforeInvocation<'_>) -> Result<(), HookError> {
        Ok(())
    }

    /// As a message is added to the history, before it is stored, streamed or traced: rewrite
    /// it (a redaction). It must stay a valid message of its role (tool uses and results keep
    /// their ids): a rewrite that breaks the history fails the run.
    async fn message_added(&self, _ctx: &mut MessageAdded<'_>) -> Result<(), HookError> {
        Ok(())
    }

    /// Before each model call (and each retry): rewrite what the model is sent. The history is
    /// not changed; only this call's request is.
    async fn before_model_call(&self, _ctx: &mut BeforeModelCall<'_>) -> Result<(), HookError> {
        Ok(())
    }

    /// After each model call, with its response or its error: rewrite the response before it
    /// is stored (its text was already streamed), ask for the call to be made again
    /// ([`AfterModelCall::retry`]), or stop the run (the response is then discarded).
    async fn after_model_call(&self, _ctx: &mut AfterModelCall<'_>) -> Result<(), HookError> {
        Ok(())
    }

    /// Before each tool call: rewrite its input, veto it ([`BeforeToolCall::deny`]) or answer
    /// it in the tool's place ([`BeforeToolCall::answer`]). The calls of one batch pass through
    /// this one at a time, in request order, before any of them runs.
    async fn before_tool_call(&self, _ctx: &mut BeforeToolCall<'_>) -> Result<(), HookError> {
        Ok(())
    }

    /// After each tool call that ran (not one a hook answered or the loop guard refused):
    /// rewrite the result the model will see, or stop the run once the batch is done.
    async fn after_tool_call(&self, _ctx: &mut AfterToolCall<'_>) -> Result<(), HookError> {
        Ok(())
    }

    /// When the run ends with a result (not when it fails): rewrite the result the caller
    /// gets. The session is already stored.
    async fn after_invocation(&self, _ctx: &mut AfterInvocation<'_>) -> Result<(), HookError> {
        Ok(())
    }
}

/// A shared hook is a hook.
#[async_trait]
impl<T: Hook + ?Sized> Hook for Arc<T> {
    fn name(&self) -> Cow<'static, str> {
        (**self).name()
    }
    fn timeout(&self) -> Option<Duration> {
        (**self).timeout()
    }
    async fn before_invocation(&self, ctx: &mut BeforeInvocation<'_>) -> Result<(), HookError> {
        (**self).before_invocation(ctx).await
    }
    async fn message_added(&self, ctx: &mut MessageAdded<'_>) -> Result<(), HookError> {
        (**self).message_added(ctx).await
    }
    async fn before_model_call(&self, ctx: &mut BeforeModelCall<'_>) -> Result<(), HookError> {
        (**self).before_model_call(ctx).await
    }
    async fn after_model_call(&self, ctx: &mut AfterModelCall<'_>) -> Result<(), HookError> {
        (**self).after_model_call(ctx).await
    }
    async fn before_tool_call(&self, ctx: &mut BeforeToolCall<'_>) -> Result<(), HookError> {
        (**self).before_tool_call(ctx).await
    }
    async fn after_tool_call(&self, ctx: &mut AfterToolCall<'_>) -> Result<(), HookError> {
        (**self).after_tool_call(ctx).await
    }
    async fn after_invocation(&self, ctx: &mut AfterInvocation<'_>) -> Result<(), HookError> {
        (**self).after_invocation(ctx).await
    }
}

/// What every hook context tells about the run, and the actions any hook can take.
#[derive(Debug)]
#[non_exhaustive]
pub struct RunInfo<'a> {
    /// The agent's name.
    pub agent: &'a str,
    /// The session.
    pub session_id: &'a str,
    /// The actor the session runs for, when given.
    pub actor_id: Option<&'a str>,
    /// The session's state (shared: a hook may read and write it like a tool does).
    pub state: &'a AgentState,
    pub(crate) events: Vec<AgentEvent>,
    pub(crate) stop: Option<String>,
}

impl<'a> RunInfo<'a> {
    pub(crate) fn new(
        agent: &'a str,
        session_id: &'a str,
        actor_id: Option<&'a str>,
        state: &'a AgentState,
    ) -> Self {
        Self {
            agent,
            session_id,
            actor_id,
            state,
            events: Vec::new(),
            stop: None,
        }
    }

    /// Sends a custom event into the run's stream ([`AgentEvent::Custom`]), after the hook
    /// returns. Ignored by [`Session::invoke`](crate::Session::invoke), which has no stream.
    pub fn emit(&mut self, name: impl Into<String>, data: Value) {
        self.events.push(AgentEvent::Custom {
            name: name.into(),
            data,
        });
    }

    /// Stops the run with [`StopReason::HookStopped`](crate::StopReason::HookStopped); the
    /// reason is in [`AgentResult::stopped_by`]. What the event's docs say happens to its step.
    pub fn stop(&mut self, reason: impl Into<String>) {
        self.stop.get_or_insert_with(|| reason.into());
    }

    /// Whether a hook asked to stop.
    pub fn stopping(&self) -> bool {
        self.stop.is_some()
    }
}

/// [`Hook::before_invocation`]'s context.
#[derive(Debug)]
#[non_exhaustive]
pub struct BeforeInvocation<'a> {
    /// The run.
    pub run: RunInfo<'a>,
    /// The prompt, as it will be stored and sent.
    pub prompt: &'a mut Vec<ContentBlock>,
}

/// [`Hook::message_added`]'s context.
#[derive(Debug)]
#[non_exhaustive]
pub struct MessageAdded<'a> {
    /// The run.
    pub run: RunInfo<'a>,
    /// The message about to be stored.
    pub message: &'a mut Message,
}

/// [`Hook::before_model_call`]'s context.
#[derive(Debug)]
#[non_exhaustive]
pub struct BeforeModelCall<'a> {
    /// The run.
    pub run: RunInfo<'a>,
    /// The messages the model will be sent, oldest first (borrowed from the history until a
    /// hook changes one: `Cow::to_mut`).
    pub messages: Vec<Cow<'a, Message>>,
    /// The system prompt the model will be sent.
    pub system_prompt: Option<Cow<'a, str>>,
    /// The tools offered.
    pub tools: &'a [ToolSpec],
    /// Which call of this turn this is (1, then 2 for the first retry, ...).
    pub attempt: u32,
}

/// [`Hook::after_model_call`]'s context.
#[derive(Debug)]
#[non_exhaustive]
pub struct AfterModelCall<'a> {
    /// The run.
    pub run: RunInfo<'a>,
    /// The response (rewritable), or the error the call ended with.
    pub outcome: Result<&'a mut ModelResponse, &'a ModelError>,
    /// Which call of this turn this was.
    pub attempt: u32,
    pub(crate) retry: bool,
}

impl AfterModelCall<'_> {
    /// Discards this response (or error) and calls the model again, within the agent's retry
    /// budget ([`RetryPolicy::max_attempts`](crate::retry::RetryPolicy::max_attempts) calls per
    /// turn); past it, the run fails with [`AgentError::Hook`](crate::AgentError::Hook).
    pub fn retry(&mut self) {
        self.retry = true;
    }
}

/// [`Hook::before_tool_call`]'s context.
#[derive(Debug)]
#[non_exhaustive]
pub struct BeforeToolCall<'a> {
    /// The run.
    pub run: RunInfo<'a>,
    /// The call as it will run: its input may be rewritten (it is validated against the
    /// tool's schema after the hooks). The history keeps the call as the model made it.
    pub tool_use: &'a mut ToolUse,
    /// The tool's spec, when the model named a known tool.
    pub tool: Option<&'a ToolSpec>,
    pub(crate) answer: Option<ToolResult>,
    pub(crate) interrupts: &'a crate::interrupt::Interrupts,
    pub(crate) interrupted: bool,
}

impl BeforeToolCall<'_> {
    /// Vetoes the call: the tool does not run, and the model gets an error result saying
    /// "Tool call denied: {reason}". Later hooks still see the call.
    pub fn deny(&mut self, reason: impl std::fmt::Display) {
        let id = self.tool_use.tool_use_id.clone();
        self.answer = Some(ToolResult::error(id, format!("Tool call denied: {reason}")));
    }

    /// Answers the call in the tool's place: the tool does not run, and the model gets
    /// `result` (its id is set to the call's).
    pub fn answer(&mut self, mut result: ToolResult) {
        result.tool_use_id.clone_from(&self.tool_use.tool_use_id);
        self.answer = Some(result);
    }

    /// Asks a person before the call runs ([`crate::interrupt`]): the answer, when the run was
    /// resumed with one; otherwise `None`, the call waits, and the run stops with
    /// [`StopReason::Interrupted`](crate::StopReason::Interrupted) once the batch's other
    /// calls are done.
    pub fn interrupt(&mut self, name: &str, reason: Value) -> Option<Value> {
        let answer = self.interrupts.ask(
            crate::interrupt::Asker::Hook,
            &self.tool_use.tool_use_id,
            name,
            reason,
        );
        if answer.is_none() {
            self.interrupted = true;
        }
        answer
    }

    /// Whether an earlier hook answered or denied the call.
    pub fn answered(&self) -> Option<&ToolResult> {
        self.answer.as_ref()
    }
}

/// [`Hook::after_tool_call`]'s context.
#[derive(Debug)]
#[non_exhaustive]
pub struct AfterToolCall<'a> {
    /// The run.
    pub run: RunInfo<'a>,
    /// The call as it ran.
    pub tool_use: &'a ToolUse,
    /// The result the model will see (rewritable; keep its id).
    pub result: &'a mut ToolResult,
}

/// [`Hook::after_invocation`]'s context.
#[derive(Debug)]
#[non_exhaustive]
pub struct AfterInvocation<'a> {
    /// The run.
    pub run: RunInfo<'a>,
    /// The result the caller will get.
    pub result: &'a mut AgentResult,
}

/// The hooks of an agent, and how the loop calls them.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) list: Arc<[Arc<dyn Hook>]>,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|h| h.name()))
            .finish()
    }
}

/// The agent's default bound on one hook call.
pub(crate) const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

type HookCall<C> =
    for<'x> fn(&'x dyn Hook, &'x mut C) -> crate::tool::BoxFuture<'x, Result<(), HookError>>;

impl Hooks {
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Calls `call` on every hook (in reverse for `after_*` events), each bounded by its
    /// timeout and `deadline`.
    pub(crate) async fn dispatch<C: Send>(
        &self,
        event: &'static str,
        reverse: bool,
        deadline: Option<tokio::time::Instant>,
        ctx: &mut C,
        call: HookCall<C>,
    ) -> Result<(), crate::AgentError> {
        let n = self.list.len();
        for i in 0..n {
            let hook = &self.list[if reverse { n - 1 - i } else { i }];
            let bound = hook.timeout().unwrap_or(self.timeout);
            let started = tokio::time::Instant::now();
            let mut until = started + bound;
            if let Some(d) = deadline {
                until = until.min(d);
            }
            let fail = |message: String, source: Option<HookError>| crate::AgentError::Hook {
                hook: hook.name().into_owned(),
                event,
                message,
                source,
            };
            match tokio::time::timeout_at(until, call(&**hook, ctx)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(fail(e.to_string(), Some(e))),
                Err(_) => {
                    let waited = until.saturating_duration_since(started);
                    return Err(fail(
                        format!("no answer within {} ms", waited.as_millis()),
                        None,
                    ));
                }
            }
        }
        Ok(())
    }
}
