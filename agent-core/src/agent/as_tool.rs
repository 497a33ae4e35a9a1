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
/// - is cancelled with the caller's run, and bounded by the called agent's own time limit;
/// - nests its telemetry: the called agent's `invoke_agent` span is a child of the caller's
///   `execute_tool` span;
/// - is idempotent by construction: the invocation's idempotency key is the tool call's id, so
///   a caller resumed after a crash that runs the call again gets the recorded answer (or
///   resumes the called agent's unfinished run) instead of a second run.
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
            .idempotency_key(ctx.tool_use_id.clone());
        if let Some(actor) = &ctx.actor_id {
            session = session.actor(actor.to_string());
        }
        let result = session.invoke(prompt).await.map_err(|e| {
            ToolError::with_source(format!("the agent `{}` failed: {e}", self.agent.name()), e)
        })?;
        match result.stop_reason {
            StopReason::EndTurn => Ok(ToolOutput::text(result.text())),
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

    /// The called agent's own time limit, plus a moment for its final save.
    fn timeout(&self) -> Option<Duration> {
        self.agent
            .inner
            .limits
            .timeout
            .map(|t| t + Duration::from_secs(5))
    }

    fn idempotent(&self) -> bool {
        true
    }
}
