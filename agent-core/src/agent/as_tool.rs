//! Agents as tools: an [`Agent`] another agent can call, with its own part of the session.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Agent, StopReason};
use crate::tool::{Tool, ToolContext, ToolError, ToolOutput, ToolSpec};

/// An [`Agent`] as a [`Tool`] (see [`Agent::as_tool`]). The model calls it with a `prompt`;
/// the agent runs it in the caller's session under its own agent id, so its conversation is
/// stored beside the caller's (Strands' `agents/agent_<id>/` in the same session), continues
/// across calls, and is found by the caller's session id. The call:
///
/// - runs for the same actor (memory acts for the same user);
/// - is cancelled with the caller's run, and bounded by the called agent's own time limit (plus
///   its final answer and last writes);
/// - nests its telemetry: the called agent's `invoke_agent` span is a child of the caller's
///   `execute_tool` span;
/// - is idempotent by construction: the invocation's idempotency key is the tool call's id and
///   prompt, so a caller resumed after a crash that runs the call again gets the recorded
///   answer (or resumes the called agent's unfinished run) instead of a second run.
///
/// A called agent that stops to ask a person ([`crate::interrupt`]) fails the call with an
/// error saying so: its questions are not passed up to the caller yet.
///
/// Give the agents distinct [`id`](crate::AgentBuilder::id)s: two agents with one id share a
/// conversation.
#[derive(Debug, Clone)]
pub struct AgentTool {
    agent: Agent,
    spec: ToolSpec,
}

impl Agent {
    /// This agent as a tool named `name` that another agent can call with a prompt; the
    /// description tells the calling model when to (see [`AgentTool`]).
    pub fn as_tool(&self, name: impl Into<String>, description: impl Into<String>) -> AgentTool {
        AgentTool {
            agent: self.clone(),
            spec: ToolSpec {
                name: name.into(),
                description: description.into(),
                input_schema: json!({
                    "type": "object",
                    "properties": {
                        "prompt": {
                            "type": "string",
                            "description": "What to ask: the task, with everything needed to do it."
                        }
                    },
                    "required": ["prompt"],
                    "additionalProperties": false
                }),
            },
        }
    }
}

/// The invocation's idempotency key: the call's id and its prompt (some providers number calls
/// `call_0`, `call_1` ... afresh each turn, so the id alone could match an earlier question).
/// FNV-1a, so the key is the same in every build and process.
fn idempotency_key(tool_use_id: &str, prompt: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in prompt.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{tool_use_id}:{hash:016x}")
}

#[async_trait]
impl Tool for AgentTool {
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }

    async fn call(&self, input: Value, ctx: ToolContext) -> Result<ToolOutput, ToolError> {
        let prompt = input["prompt"].as_str().unwrap_or_default().trim();
        if prompt.is_empty() {
            return Err(ToolError::new("`prompt` must say what to ask"));
        }
        let mut session = self
            .agent
            .session(ctx.session_id.to_string())
            .cancel_token(ctx.cancel.clone())
            .idempotency_key(idempotency_key(&ctx.tool_use_id, prompt));
        if let Some(actor) = &ctx.actor_id {
            session = session.actor(actor.to_string());
        }
        let result = session.invoke(prompt).await.map_err(|e| {
            ToolError::with_source(format!("the agent `{}` failed: {e}", self.agent.name()), e)
        })?;
        match result.stop_reason {
            StopReason::EndTurn => Ok(ToolOutput::text(result.text())),
            StopReason::Interrupted => Err(ToolError::new(format!(
                "the agent `{}` stopped to ask a person ({}); questions of an agent used as a \
                 tool are not passed up to its caller",
                self.agent.name(),
                result
                    .interrupts
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            StopReason::Cancelled => Err(ToolError::new(format!(
                "the agent `{}` was cancelled",
                self.agent.name()
            ))),
            other if result.has_answer() => Ok(ToolOutput::text(format!(
                "{}\n\n(The agent stopped early: {}.)",
                result.text(),
                other.as_str()
            ))),
            other => Err(ToolError::new(format!(
                "the agent `{}` stopped ({}) without an answer",
                self.agent.name(),
                other.as_str()
            ))),
        }
    }

    /// The called agent's own bounds: its time limit, then the final answer it may still ask
    /// for, then its last writes. (With no time limit, the executor's default tool timeout.)
    fn timeout(&self) -> Option<Duration> {
        let inner = &self.agent.inner;
        inner
            .limits
            .timeout
            .map(|t| t + inner.final_answer_timeout.unwrap_or_default() + Duration::from_secs(15))
    }

    fn idempotent(&self) -> bool {
        true
    }
}
