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

use serde::{Deserialize, Serialize};

use crate::agent::AgentResult;
use crate::message::{Message, ToolResult};
use crate::model::Usage;
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
    /// The run ended; always the last event.
    Stop(AgentResult),
}
