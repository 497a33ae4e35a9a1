//! The request body: messages, tools and parameters in the chat-completions wire format, native
//! or in the constrained tool-calling protocol.

use std::borrow::Cow;
use std::collections::HashMap;

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use super::super::constrained;
use super::super::{ModelError, ModelRequest, ToolChoice};
use super::{Inner, RequestParams, ToolCalling};
use crate::message::{ContentBlock, Message, Role, ToolResultContent};
use crate::tool::ToolSpec;

#[derive(Serialize)]
pub(super) struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(flatten)]
    params: Cow<'a, RequestParams>,
}

#[derive(Serialize)]
pub(super) struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub(super) enum WireMessage<'a> {
    System {
        content: Cow<'a, str>,
    },
    User {
        content: UserContent<'a>,
    },
    Assistant {
        content: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<WireToolCall<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: String,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum UserContent<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<UserPart<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum UserPart<'a> {
    Text { text: Cow<'a, str> },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Serialize)]
pub(super) struct ImageUrl {
    url: String,
}

#[derive(Serialize)]
pub(super) struct WireToolCall<'a> {
    id: &'a str,
    r#type: &'static str,
    function: WireFunctionCall<'a>,
}

#[derive(Serialize)]
pub(super) struct WireFunctionCall<'a> {
    name: &'a str,
    arguments: String,
}

#[derive(Serialize)]
pub(super) struct WireTool<'a> {
    r#type: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
pub(super) struct WireFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

/// The reply schema when this request uses constrained tool calling.
pub(super) fn constrained_schema(
    inner: &Inner,
    request: &ModelRequest<'_>,
) -> Option<(Value, bool)> {
    match inner.tool_calling {
        ToolCalling::Constrained { parallel } => {
            constrained::reply_schema(request.tools, request.tool_choice, parallel)
                .map(|s| (s, parallel))
        }
        // Structured output is enforced as a schema even where tools are native: vLLM's
        // guided decoding and llama.cpp's grammar make the reply valid JSON by construction.
        ToolCalling::Native if request.structured_output => {
            constrained::reply_schema(request.tools, request.tool_choice, false).map(|s| (s, false))
        }
        ToolCalling::Native => None,
    }
}

pub(super) fn build_body(inner: &Inner, request: &ModelRequest<'_>) -> Result<Vec<u8>, ModelError> {
    let constrained = constrained_schema(inner, request);
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    let system: Option<Cow<'_, str>> = match (&constrained, request.system_prompt) {
        (Some((_, parallel)), prompt) => {
            let protocol =
                constrained::protocol_prompt(request.tools, request.tool_choice, *parallel);
            Some(Cow::Owned(match prompt {
                Some(p) => format!("{p}\n\n{protocol}"),
                None => protocol,
            }))
        }
        (None, prompt) => prompt.map(Cow::Borrowed),
    };
    if let Some(content) = system {
        messages.push(WireMessage::System { content });
    }
    let (tools, tool_choice, response_format) = match constrained {
        Some((schema, _)) => {
            let mut names = HashMap::new();
            for m in &request.messages {
                push_protocol_messages(&mut messages, m, &mut names);
            }
            let format = serde_json::json!({"type": "json_schema", "json_schema": {"name": "agent_step", "schema": schema}});
            (Vec::new(), None, Some(format))
        }
        None => {
            for m in &request.messages {
                push_wire_messages(&mut messages, m);
            }
            let tools: Vec<WireTool<'_>> = request.tools.iter().map(wire_tool).collect();
            let choice = (!tools.is_empty()).then(|| tool_choice_json(request.tool_choice));
            (tools, choice, None)
        }
    };
    let body = ChatRequest {
        model: &inner.model,
        messages,
        stream: inner.streaming,
        stream_options: inner.streaming.then_some(StreamOptions {
            include_usage: true,
        }),
        tools,
        tool_choice,
        response_format,
        params: {
            let lower = request
                .max_tokens
                .filter(|n| inner.params.max_tokens.is_none_or(|m| *n < m));
            if lower.is_none() && request.temperature.is_none() {
                Cow::Borrowed(&inner.params)
            } else {
                Cow::Owned(RequestParams {
                    max_tokens: lower.or(inner.params.max_tokens),
                    temperature: request.temperature.or(inner.params.temperature),
                    ..inner.params.clone()
                })
            }
        },
    };
    serde_json::to_vec(&body)
        .map_err(|e| ModelError::Config(format!("cannot encode the request: {e}")))
}

/// A message in the constrained protocol: assistant turns as the JSON the model writes, tool
/// results as `{"tool_result": ...}` text in user turns.
pub(super) fn push_protocol_messages<'a>(
    out: &mut Vec<WireMessage<'a>>,
    m: &'a Message,
    names: &mut HashMap<&'a str, &'a str>,
) {
    match m.role {
        Role::Assistant => {
            for u in m.tool_uses() {
                names.insert(&u.tool_use_id, &u.name);
            }
            out.push(WireMessage::Assistant {
                content: Some(constrained::render_assistant(&m.content)),
                tool_calls: Vec::new(),
            });
        }
        Role::User => {
            let mut parts: Vec<UserPart<'a>> = Vec::new();
            for block in &m.content {
                match block {
                    ContentBlock::ToolResult(r) => {
                        let name = names
                            .get(r.tool_use_id.as_str())
                            .copied()
                            .unwrap_or("unknown");
                        let text =
                            constrained::render_result(name, r, tool_result_text(&r.content));
                        parts.push(UserPart::Text {
                            text: Cow::Owned(text),
                        });
                    }
                    ContentBlock::Text(t) => parts.push(UserPart::Text {
                        text: Cow::Borrowed(t),
                    }),
                    ContentBlock::Document(d) => parts.push(UserPart::Text {
                        text: Cow::Owned(document_text(d)),
                    }),
                    ContentBlock::Image(img) => parts.push(image_part(img)),
                    _ => {}
                }
            }
            if parts.is_empty() {
                return;
            }
            if parts.iter().all(|p| matches!(p, UserPart::Text { .. })) {
                let joined: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| match p {
                        UserPart::Text { text } => Some(text.as_ref()),
                        UserPart::ImageUrl { .. } => None,
                    })
                    .collect();
                out.push(WireMessage::User {
                    content: UserContent::Text(Cow::Owned(joined.join("\n"))),
                });
            } else {
                out.push(WireMessage::User {
                    content: UserContent::Parts(parts),
                });
            }
        }
    }
}

pub(super) fn image_part<'a>(img: &crate::message::Image) -> UserPart<'a> {
    UserPart::ImageUrl {
        image_url: ImageUrl {
            url: format!(
                "data:{};base64,{}",
                img.format.mime_type(),
                base64::engine::general_purpose::STANDARD.encode(&img.source.bytes.0)
            ),
        },
    }
}

pub(super) fn wire_tool(spec: &ToolSpec) -> WireTool<'_> {
    WireTool {
        r#type: "function",
        function: WireFunction {
            name: &spec.name,
            description: &spec.description,
            parameters: &spec.input_schema,
        },
    }
}

pub(super) fn tool_choice_json(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => Value::from("auto"),
        ToolChoice::Any => Value::from("required"),
        ToolChoice::None => Value::from("none"),
        ToolChoice::Tool(name) => {
            serde_json::json!({"type": "function", "function": {"name": name}})
        }
    }
}

pub(super) fn push_wire_messages<'a>(out: &mut Vec<WireMessage<'a>>, m: &'a Message) {
    match m.role {
        Role::Assistant => {
            let mut text: Option<String> = None;
            let mut tool_calls = Vec::new();
            for block in &m.content {
                match block {
                    ContentBlock::Text(t) => text.get_or_insert_with(String::new).push_str(t),
                    ContentBlock::ToolUse(u) => tool_calls.push(WireToolCall {
                        id: &u.tool_use_id,
                        r#type: "function",
                        function: WireFunctionCall {
                            name: &u.name,
                            arguments: arguments_text(&u.input),
                        },
                    }),
                    // Reasoning is not fed back (vLLM's guidance); media cannot be sent by the assistant.
                    _ => {}
                }
            }
            out.push(WireMessage::Assistant {
                content: text,
                tool_calls,
            });
        }
        Role::User => {
            let mut parts: Vec<UserPart<'a>> = Vec::new();
            for block in &m.content {
                match block {
                    ContentBlock::ToolResult(r) => out.push(WireMessage::Tool {
                        tool_call_id: &r.tool_use_id,
                        content: tool_result_text(&r.content),
                    }),
                    ContentBlock::Text(t) => parts.push(UserPart::Text {
                        text: t.as_str().into(),
                    }),
                    ContentBlock::Image(img) => parts.push(image_part(img)),
                    _ => {}
                }
            }
            match parts.as_slice() {
                [] => {}
                [
                    UserPart::Text {
                        text: Cow::Borrowed(t),
                    },
                ] => out.push(WireMessage::User {
                    content: UserContent::Text(Cow::Borrowed(t)),
                }),
                _ => out.push(WireMessage::User {
                    content: UserContent::Parts(parts),
                }),
            }
        }
    }
}

/// The `arguments` string for a tool use: its JSON, or the raw text it could not be parsed from.
pub(super) fn arguments_text(input: &Value) -> String {
    match input {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    }
}

/// Tool-message content as a string, which every chat template accepts.
pub(super) fn tool_result_text(content: &[ToolResultContent]) -> String {
    let mut out = String::new();
    for (i, c) in content.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match c {
            ToolResultContent::Text(t) => out.push_str(t),
            ToolResultContent::Json(v) => out.push_str(&v.to_string()),
            ToolResultContent::Image(img) => out.push_str(&format!(
                "[image: {}, {} bytes]",
                img.format.mime_type(),
                img.source.bytes.0.len()
            )),
            ToolResultContent::Document(d) => out.push_str(&document_text(d)),
        }
    }
    out
}

pub(super) fn document_text(d: &crate::message::Document) -> String {
    match d.format.as_str() {
        "txt" | "md" | "csv" | "html" => match std::str::from_utf8(&d.source.bytes.0) {
            Ok(text) => format!("[document: {}]\n{text}", d.name),
            Err(_) => format!("[document: {} ({}), not valid UTF-8]", d.name, d.format),
        },
        other => format!(
            "[document: {} ({other}, {} bytes)]",
            d.name,
            d.source.bytes.0.len()
        ),
    }
}
