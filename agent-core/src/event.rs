//! The typed events of [`crate::agent::Session::stream`].
//!
//! Each event serialises as a JSON object with a `type` field naming the variant in snake case,
//! and the variant's fields beside it. This is the wire schema the example service sends as SSE:
//!
//! | `type` | fields |
//! |---|---|
//! | `text_delta` | `text` |
//! | `reasoning_delta` | `text`, `signature`? |
//! | `tool_use_start` | `tool_use_id`, `name` |
//! | `tool_input_delta` | `tool_use_id`, `delta` (a fragment of the JSON arguments) |
//! | `tool_result` | `result` (a `toolResult` object in the Converse shape) |
//! | `message_added` | `message` (a Converse-shape message, now in the session) |
//! | `usage` | `usage` (`input_tokens`, `output_tokens`, `total_tokens` of one model call) |
//! | `retry` | `attempt`, `delay_ms`, `error_kind`, `message` |
//! | `stop` | the [`AgentResult`] fields: `stop_reason`, `message`, `usage`, `turns` |
//!
//! Example: `{"type":"text_delta","text":"Lis"}`.
//!
//! A failed run ends with an [`ErrorEvent`] instead of `stop`:
//! `{"type":"error","kind":"session_busy","message":"...","retryable":true}`. [`SseEvent`] maps
//! each item of a stream to a Server-Sent Event whose `event:` is the `type` and whose `data:`
//! is the JSON above, so a service writes
//!
//! ```
//! use agent_core::event::{AgentEvent, SseEvent};
//!
//! let item = Ok(AgentEvent::TextDelta { text: "Lis".into() });
//! let sse = SseEvent::from_item(&item);
//! assert_eq!(sse.to_frame(), "event: text_delta\ndata: {\"type\":\"text_delta\",\"text\":\"Lis\"}\n\n");
//! ```

use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::message::{Message, ToolResult};
use crate::model::Usage;
use crate::outcome::AgentResult;
use crate::tool::ToolProgress;

/// One event of an agent run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentEvent {
    /// A fragment of the answer.
    TextDelta {
        /// The fragment.
        text: String,
    },
    /// A fragment of reasoning.
    ReasoningDelta {
        /// The fragment.
        text: String,
        /// The provider's signature, when sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    /// The model starts a tool call.
    ToolUseStart {
        /// The call's id.
        tool_use_id: String,
        /// The tool.
        name: String,
    },
    /// A fragment of a tool call's JSON arguments.
    ToolInputDelta {
        /// The call's id.
        tool_use_id: String,
        /// The fragment.
        delta: String,
    },
    /// A running tool reported progress (e.g. an MCP server's `notifications/progress`).
    /// Advisory: dropped rather than blocking the tool when the consumer is behind.
    ToolProgress(ToolProgress),
    /// A tool call finished (successfully or not).
    ToolResult {
        /// The result.
        result: ToolResult,
    },
    /// A message was appended to the session.
    MessageAdded {
        /// The message.
        message: Message,
    },
    /// Usage of one model call.
    Usage {
        /// The usage.
        usage: Usage,
    },
    /// A model call failed and will be retried; text streamed since the last `message_added`
    /// belongs to the abandoned attempt.
    Retry {
        /// The retry number (1 for the first retry).
        attempt: u32,
        /// The backoff before it.
        delay_ms: u64,
        /// The error class (`throttled`, `transient`, `context_overflow`).
        error_kind: String,
        /// The error.
        message: String,
    },
    /// An event a hook emitted ([`RunInfo::emit`](crate::hooks::RunInfo::emit)).
    Custom {
        /// The hook's name for it (`tool_approval` ...).
        name: String,
        /// Its data.
        data: serde_json::Value,
    },
    /// The run ended; always the last event.
    Stop(AgentResult),
}

impl AgentEvent {
    /// The `type` this event serialises with (`text_delta`, `stop` ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::TextDelta { .. } => "text_delta",
            Self::ReasoningDelta { .. } => "reasoning_delta",
            Self::ToolUseStart { .. } => "tool_use_start",
            Self::ToolInputDelta { .. } => "tool_input_delta",
            Self::ToolProgress(_) => "tool_progress",
            Self::ToolResult { .. } => "tool_result",
            Self::MessageAdded { .. } => "message_added",
            Self::Usage { .. } => "usage",
            Self::Retry { .. } => "retry",
            Self::Custom { .. } => "custom",
            Self::Stop(_) => "stop",
        }
    }
}

/// A run's error as a client sees it: the class ([`AgentError::kind`]), the message, and
/// whether the same request may succeed when sent again (throttling, a transient model error,
/// a busy session, a store conflict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "error")]
pub struct ErrorEvent {
    /// [`AgentError::kind`].
    pub kind: String,
    /// The error, one line.
    pub message: String,
    /// Whether a retry may succeed.
    pub retryable: bool,
}

impl From<&AgentError> for ErrorEvent {
    fn from(error: &AgentError) -> Self {
        let kind = error.kind();
        Self {
            kind: kind.to_owned(),
            message: error.to_string().replace(['\r', '\n'], " "),
            retryable: matches!(
                kind,
                "throttled" | "transient" | "session_busy" | "store_conflict"
            ),
        }
    }
}

/// One item of a run's stream as a Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field: the event's `type`, or `error`.
    pub event: &'static str,
    /// The `data:` field: the event's JSON, on one line.
    pub data: String,
}

impl SseEvent {
    /// The event of one stream item: an [`AgentEvent`], or the [`ErrorEvent`] of an error.
    pub fn from_item(item: &Result<AgentEvent, AgentError>) -> Self {
        match item {
            Ok(event) => Self::from_event(event),
            Err(error) => Self::from_error(error),
        }
    }

    /// The event of an [`AgentEvent`].
    pub fn from_event(event: &AgentEvent) -> Self {
        Self {
            event: event.name(),
            data: json_line(event),
        }
    }

    /// The `error` event of a failed run (or of a request refused before it ran).
    pub fn from_error(error: &AgentError) -> Self {
        Self {
            event: "error",
            data: json_line(&ErrorEvent::from(error)),
        }
    }

    /// The event as it is written on the wire, blank line included.
    pub fn to_frame(&self) -> String {
        format!("event: {}\ndata: {}\n\n", self.event, self.data)
    }
}

/// JSON on one line (serde_json escapes newlines inside strings, and writes none between
/// tokens); a value that cannot be serialised becomes an error object, not a panic.
fn json_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        serde_json::json!({"type": "error", "kind": "serialization", "message": e.to_string(), "retryable": false})
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_is_named_as_it_serialises() {
        let events = [
            AgentEvent::TextDelta {
                text: "a\nb".into(),
            },
            AgentEvent::ToolUseStart {
                tool_use_id: "1".into(),
                name: "f".into(),
            },
            AgentEvent::ToolInputDelta {
                tool_use_id: "1".into(),
                delta: "{".into(),
            },
            AgentEvent::Usage {
                usage: Usage::default(),
            },
            AgentEvent::Retry {
                attempt: 1,
                delay_ms: 5,
                error_kind: "throttled".into(),
                message: "slow down".into(),
            },
        ];
        for event in events {
            let sse = SseEvent::from_event(&event);
            let value: serde_json::Value = serde_json::from_str(&sse.data).expect("json");
            assert_eq!(value["type"], sse.event);
            assert!(!sse.data.contains('\n'), "one line: {}", sse.data);
            let frame = sse.to_frame();
            assert_eq!(frame.matches("\n\n").count(), 1);
            assert!(frame.ends_with("\n\n"));
        }
    }

    #[test]
    fn errors_carry_their_class_and_whether_to_retry() {
        let busy = AgentError::SessionBusy {
            session_id: "s".into(),
        };
        let sse = SseEvent::from_item(&Err(busy));
        assert_eq!(sse.event, "error");
        let value: serde_json::Value = serde_json::from_str(&sse.data).expect("json");
        assert_eq!(value["type"], "error");
        assert_eq!(value["kind"], "session_busy");
        assert_eq!(value["retryable"], true);
        let empty = ErrorEvent::from(&AgentError::EmptyPrompt);
        assert!(!empty.retryable);
        assert_eq!(empty.kind, "empty_prompt");
    }
}
