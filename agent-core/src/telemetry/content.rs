//! Message content in the GenAI conventions' parts format (`gen_ai.input.messages`,
//! `gen_ai.output.messages`, `gen_ai.system_instructions`).

use base64::Engine as _;
use serde_json::{Value, json};

use crate::message::{
    ContentBlock, Message, ReasoningContent, Role, ToolResult, ToolResultContent,
};
use crate::model::{ModelResponse, ModelStopReason};
use crate::outcome::StopReason;

fn parts(blocks: &[ContentBlock]) -> (Vec<Value>, Vec<Value>) {
    let mut own = Vec::new();
    let mut tool_responses = Vec::new();
    for block in blocks {
        match block {
            ContentBlock::Text(t) => own.push(json!({"type": "text", "content": t})),
            ContentBlock::ToolUse(u) => {
                own.push(json!({"type": "tool_call", "id": u.tool_use_id, "name": u.name, "arguments": u.input}))
            }
            ContentBlock::ToolResult(r) => {
                tool_responses.push(json!({"type": "tool_call_response", "id": r.tool_use_id, "response": tool_result(r)}))
            }
            ContentBlock::ReasoningContent(ReasoningContent::ReasoningText(r)) => {
                own.push(json!({"type": "reasoning", "content": r.text}))
            }
            ContentBlock::Image(img) => own.push(json!({
                "type": "blob", "modality": "image", "mime_type": img.format.mime_type(),
                "content": base64::engine::general_purpose::STANDARD.encode(&img.source.bytes.0)
            })),
            ContentBlock::Document(d) => own.push(json!({"type": "file", "mime_type": d.format, "file_id": d.name})),
            _ => {}
        }
    }
    (own, tool_responses)
}

/// The visible history as `gen_ai.input.messages`.
pub(super) fn input_messages(messages: &[&Message]) -> Value {
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let (own, tool_responses) = parts(&m.content);
        if !tool_responses.is_empty() {
            out.push(json!({"role": "tool", "parts": tool_responses}));
        }
        if !own.is_empty() {
            let role = match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            out.push(json!({"role": role, "parts": own}));
        }
    }
    Value::Array(out)
}

/// The system prompt as `gen_ai.system_instructions`.
pub(super) fn system_instructions(prompt: &str) -> Value {
    json!([{"type": "text", "content": prompt}])
}

/// The conventions' finish reason of a response.
pub(super) fn finish_reason(response: &ModelResponse) -> &'static str {
    match response.stop_reason {
        ModelStopReason::ToolUse => "tool_call",
        ModelStopReason::MaxTokens => "length",
        ModelStopReason::ContentFiltered | ModelStopReason::GuardrailIntervened => "content_filter",
        _ => "stop",
    }
}

/// The conventions' finish reason of a whole run: `stop` when the model answered, `length`
/// when a token limit cut it, `content_filter`, and `error` when the agent ended the run itself
/// (cancelled, a turn or time limit, a tool loop); `agent.stop_reason` says which.
pub(super) fn run_finish_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndTurn => "stop",
        StopReason::MaxTokens | StopReason::LimitTokens => "length",
        StopReason::ContentFiltered | StopReason::GuardrailIntervened => "content_filter",
        StopReason::Cancelled
        | StopReason::LimitTurns
        | StopReason::Timeout
        | StopReason::ToolLoop
        | StopReason::HookStopped
        | StopReason::Interrupted => "error",
    }
}

/// An invocation's prompt as `gen_ai.input.messages`.
pub(super) fn prompt_messages(prompt: &[ContentBlock]) -> Value {
    let (own, tool_responses) = parts(prompt);
    let mut out = Vec::with_capacity(2);
    if !tool_responses.is_empty() {
        out.push(json!({"role": "tool", "parts": tool_responses}));
    }
    if !own.is_empty() {
        out.push(json!({"role": "user", "parts": own}));
    }
    Value::Array(out)
}

/// A run's final message as `gen_ai.output.messages`.
pub(super) fn final_messages(message: &Message, finish_reason: &str) -> Value {
    let (own, _) = parts(&message.content);
    json!([{"role": "assistant", "parts": own, "finish_reason": finish_reason}])
}

/// The text blocks of a prompt, one per line.
pub(super) fn text_of(blocks: &[ContentBlock]) -> String {
    let texts: Vec<&str> = blocks
        .iter()
        .filter_map(|b| match b {
            ContentBlock::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    texts.join("\n")
}

/// A response as `gen_ai.output.messages`.
pub(super) fn output_messages(response: &ModelResponse) -> Value {
    let (own, _) = parts(&response.content);
    json!([{"role": "assistant", "parts": own, "finish_reason": finish_reason(response)}])
}

/// A tool result as the text of `gen_ai.tool.call.result`: text as it is (not as a quoted JSON
/// string), anything else as JSON.
pub(super) fn tool_result_text(result: &ToolResult) -> String {
    match tool_result(result) {
        Value::String(text) => text,
        other => other.to_string(),
    }
}

/// A tool result's content as one JSON value: the JSON block itself when there is only one,
/// the text when there is only text, else the list of blocks.
pub(super) fn tool_result(result: &ToolResult) -> Value {
    match result.content.as_slice() {
        [ToolResultContent::Json(v)] => v.clone(),
        [ToolResultContent::Text(t)] => Value::String(t.clone()),
        other => serde_json::to_value(other).unwrap_or(Value::Null),
    }
}
