//! What a finished invocation returns: why it ended ([`StopReason`]), its answer, usage and
//! per-turn metrics ([`AgentResult`]). Its own module, below both the agent loop and the event
//! stream, which both speak of it.

use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::model::Usage;

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
    /// what an earlier call found (see [`LoopGuard`](crate::agent::LoopGuard)).
    ToolLoop,
    /// A hook stopped the run ([`RunInfo::stop`](crate::hooks::RunInfo::stop)); its reason is
    /// in [`AgentResult::stopped_by`].
    HookStopped,
    /// A tool or hook asked a person ([`crate::interrupt`]); the questions are in
    /// [`AgentResult::interrupts`], and [`Session::respond`](crate::Session::respond) resumes.
    Interrupted,
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
            Self::HookStopped => "hook_stopped",
            Self::Interrupted => "interrupted",
        }
    }
}

/// Metrics of one model turn and the tool batch that followed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
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
#[non_exhaustive]
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
    /// ([`Session::structured_output`](crate::agent::Session::structured_output)); checked against its schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured_output: Option<serde_json::Value>,
    /// When a hook stopped the run: the reason it gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// When the run was interrupted: the questions to answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interrupts: Vec<crate::interrupt::Interrupt>,
}

impl AgentResult {
    /// The structured value as `T` (see [`Session::invoke_structured`](crate::agent::Session::invoke_structured)); an error when the
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
