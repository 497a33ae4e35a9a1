//! The runtime's messages, tools and JSON as Bedrock SDK types, and back.
//!
//! The runtime's messages already have the Converse shape, so the mapping is one-to-one; what
//! needs care is JSON (the SDK's `Document` has no arbitrary-precision numbers and no `NaN`) and
//! the few things Bedrock refuses that other providers accept (blank text blocks, tool blocks in
//! a history sent without tools).

use std::collections::HashMap;

use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types as bt;
use aws_smithy_types::{Document, Number};
use serde_json::Value;

use crate::message::{
    ContentBlock, Document as Doc, Image, ImageFormat, Message, ReasoningContent, Role,
    ToolResultContent, ToolResultStatus,
};
use crate::model::{ModelError, ModelRequest, ToolChoice};
use crate::tool::ToolSpec;

/// Where cache points go in each request (Bedrock prompt caching). A cache point marks the end
/// of a prefix the service may cache: a later request that starts with the same prefix reads it
/// from the cache (cheaper, faster) instead of processing it again. Models that do not support
/// caching reject cache points, so all are off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PromptCache {
    /// A cache point after the system prompt.
    pub system: bool,
    /// A cache point after the tool definitions.
    pub tools: bool,
    /// A cache point at the end of the last user message, so each turn reads the conversation
    /// so far from the cache (Strands' `CacheConfig(strategy="auto")`).
    pub conversation: bool,
}

impl PromptCache {
    /// No cache points (the default).
    pub fn none() -> Self {
        Self::default()
    }

    /// Cache points after the system prompt, after the tools and at the end of the conversation:
    /// the placement that saves most in a multi-turn agent (Bedrock allows four per request).
    pub fn automatic() -> Self {
        Self {
            system: true,
            tools: true,
            conversation: true,
        }
    }

    /// Sets the cache point after the system prompt.
    pub fn system(mut self, on: bool) -> Self {
        self.system = on;
        self
    }

    /// Sets the cache point after the tools.
    pub fn tools(mut self, on: bool) -> Self {
        self.tools = on;
        self
    }

    /// Sets the cache point at the end of the conversation.
    pub fn conversation(mut self, on: bool) -> Self {
        self.conversation = on;
        self
    }
}

/// The parts of a Converse request that come from a [`ModelRequest`].
pub(super) struct Parts {
    pub messages: Vec<bt::Message>,
    pub system: Vec<bt::SystemContentBlock>,
    pub tool_config: Option<bt::ToolConfiguration>,
}

/// A JSON value as the SDK's document type. Numbers keep their kind (unsigned, signed, float).
pub(super) fn to_document(value: &Value) -> Document {
    match value {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(if let Some(u) = n.as_u64() {
            Number::PosInt(u)
        } else if let Some(i) = n.as_i64() {
            Number::NegInt(i)
        } else {
            Number::Float(n.as_f64().unwrap_or(0.0))
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(to_document).collect()),
        Value::Object(map) => Document::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), to_document(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

/// The SDK's document type as JSON. A float JSON cannot hold (`NaN`, infinity) becomes `null`.
pub(super) fn from_document(document: &Document) -> Value {
    match document {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Document::String(s) => Value::String(s.clone()),
        Document::Array(items) => Value::Array(items.iter().map(from_document).collect()),
        Document::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), from_document(v)))
                .collect(),
        ),
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Config(format!("cannot express {what} as a Bedrock request: {e}"))
}

fn image(img: &Image) -> Result<bt::ImageBlock, ModelError> {
    let format = match img.format {
        ImageFormat::Png => bt::ImageFormat::Png,
        ImageFormat::Jpeg => bt::ImageFormat::Jpeg,
        ImageFormat::Gif => bt::ImageFormat::Gif,
        ImageFormat::Webp => bt::ImageFormat::Webp,
    };
    bt::ImageBlock::builder()
        .format(format)
        .source(bt::ImageSource::Bytes(Blob::new(
            img.source.bytes.0.clone(),
        )))
        .build()
        .map_err(|e| invalid("an image", e))
}

fn document(doc: &Doc) -> Result<bt::DocumentBlock, ModelError> {
    bt::DocumentBlock::builder()
        .format(bt::DocumentFormat::from(doc.format.as_str()))
        .name(&doc.name)
        .source(bt::DocumentSource::Bytes(Blob::new(
            doc.source.bytes.0.clone(),
        )))
        .build()
        .map_err(|e| invalid("a document", e))
}

fn cache_point() -> Result<bt::CachePointBlock, ModelError> {
    bt::CachePointBlock::builder()
        .r#type(bt::CachePointType::Default)
        .build()
        .map_err(|e| invalid("a cache point", e))
}

/// What stands in for a message that has nothing Bedrock accepts (an empty reply, say): the
/// message must stay, or the conversation would no longer alternate between user and assistant,
/// which Bedrock refuses.
const EMPTY_MESSAGE: &str = "(no content)";

/// One message's blocks. Blank text is left out (Bedrock refuses it); a message left with
/// nothing gets [`EMPTY_MESSAGE`]. Reasoning without a signature (from another provider, say a
/// vLLM model before a fallback) is left out too: models that check signatures refuse it, and
/// the others do not need it back.
/// `cache_after`: a cache point ends the message (unless it already ends with one).
fn message(msg: &Message, cache_after: bool) -> Result<bt::Message, ModelError> {
    let mut content = Vec::with_capacity(msg.content.len());
    for block in &msg.content {
        match block {
            ContentBlock::Text(t) => {
                if !t.trim().is_empty() {
                    content.push(bt::ContentBlock::Text(t.clone()));
                }
            }
            ContentBlock::CachePoint(_) => {
                // Never first: a cache point marks the end of something.
                if !content.is_empty() {
                    content.push(bt::ContentBlock::CachePoint(cache_point()?));
                }
            }
            ContentBlock::ToolUse(u) => content.push(bt::ContentBlock::ToolUse(
                bt::ToolUseBlock::builder()
                    .tool_use_id(&u.tool_use_id)
                    .name(&u.name)
                    // Arguments the model garbled are kept as a string; Bedrock wants an object.
                    .input(match &u.input {
                        Value::Object(_) => to_document(&u.input),
                        other => Document::Object(HashMap::from([(
                            "raw_arguments".to_owned(),
                            to_document(other),
                        )])),
                    })
                    .build()
                    .map_err(|e| invalid("a tool use", e))?,
            )),
            ContentBlock::ToolResult(r) => {
                let mut items = Vec::with_capacity(r.content.len());
                for c in &r.content {
                    items.push(match c {
                        ToolResultContent::Text(t) => bt::ToolResultContentBlock::Text(t.clone()),
                        // Converse takes only an object as `json`; a list or a number goes as
                        // its JSON text.
                        ToolResultContent::Json(v @ Value::Object(_)) => {
                            bt::ToolResultContentBlock::Json(to_document(v))
                        }
                        ToolResultContent::Json(v) => {
                            bt::ToolResultContentBlock::Text(v.to_string())
                        }
                        ToolResultContent::Image(img) => {
                            bt::ToolResultContentBlock::Image(image(img)?)
                        }
                        ToolResultContent::Document(d) => {
                            bt::ToolResultContentBlock::Document(document(d)?)
                        }
                    });
                }
                if items.is_empty() {
                    // A result with no content is refused; the model still needs the answer.
                    items.push(bt::ToolResultContentBlock::Text("(no output)".into()));
                }
                content.push(bt::ContentBlock::ToolResult(
                    bt::ToolResultBlock::builder()
                        .tool_use_id(&r.tool_use_id)
                        .set_content(Some(items))
                        .status(match r.status {
                            ToolResultStatus::Success => bt::ToolResultStatus::Success,
                            ToolResultStatus::Error => bt::ToolResultStatus::Error,
                        })
                        .build()
                        .map_err(|e| invalid("a tool result", e))?,
                ));
            }
            ContentBlock::ReasoningContent(ReasoningContent::ReasoningText(r))
                if r.signature.is_none() => {}
            ContentBlock::ReasoningContent(ReasoningContent::ReasoningText(r)) => content.push(
                bt::ContentBlock::ReasoningContent(bt::ReasoningContentBlock::ReasoningText(
                    bt::ReasoningTextBlock::builder()
                        .text(&r.text)
                        .set_signature(r.signature.clone())
                        .build()
                        .map_err(|e| invalid("reasoning", e))?,
                )),
            ),
            ContentBlock::ReasoningContent(ReasoningContent::RedactedContent(bytes)) => content
                .push(bt::ContentBlock::ReasoningContent(
                    bt::ReasoningContentBlock::RedactedContent(Blob::new(bytes.0.clone())),
                )),
            ContentBlock::Image(img) => content.push(bt::ContentBlock::Image(image(img)?)),
            ContentBlock::Document(d) => content.push(bt::ContentBlock::Document(document(d)?)),
        }
    }
    if content
        .iter()
        .all(|b| matches!(b, bt::ContentBlock::CachePoint(_)))
    {
        content.insert(0, bt::ContentBlock::Text(EMPTY_MESSAGE.into()));
    }
    if cache_after && !matches!(content.last(), Some(bt::ContentBlock::CachePoint(_))) {
        content.push(bt::ContentBlock::CachePoint(cache_point()?));
    }
    let role = match msg.role {
        Role::User => bt::ConversationRole::User,
        Role::Assistant => bt::ConversationRole::Assistant,
    };
    bt::Message::builder()
        .role(role)
        .set_content(Some(content))
        .build()
        .map_err(|e| invalid("a message", e))
}

fn tool(spec: &ToolSpec) -> Result<bt::Tool, ModelError> {
    let mut builder = bt::ToolSpecification::builder()
        .name(&spec.name)
        .input_schema(bt::ToolInputSchema::Json(to_document(&spec.input_schema)));
    if !spec.description.is_empty() {
        builder = builder.description(&spec.description);
    }
    builder
        .build()
        .map(bt::Tool::ToolSpec)
        .map_err(|e| invalid(&format!("tool `{}`", spec.name), e))
}

/// The request's messages, system prompt and tools as Converse parts, with cache points where
/// `cache` says.
/// `thinking`: extended thinking is on, which refuses a forced tool choice (sent as auto).
pub(super) fn parts(
    request: &ModelRequest<'_>,
    cache: PromptCache,
    thinking: bool,
) -> Result<Parts, ModelError> {
    // The conversation's cache point ends the last user message.
    let cached = if cache.conversation {
        request.messages.iter().rposition(|m| m.role == Role::User)
    } else {
        None
    };
    let mut messages = Vec::with_capacity(request.messages.len());
    let mut tool_blocks = false;
    for (i, m) in request.messages.iter().enumerate() {
        tool_blocks |= m
            .content
            .iter()
            .any(|b| matches!(b, ContentBlock::ToolUse(_) | ContentBlock::ToolResult(_)));
        messages.push(message(m, cached == Some(i))?);
    }

    let mut system = Vec::new();
    if let Some(prompt) = request.system_prompt.filter(|p| !p.trim().is_empty()) {
        system.push(bt::SystemContentBlock::Text(prompt.to_owned()));
        if cache.system {
            system.push(bt::SystemContentBlock::CachePoint(cache_point()?));
        }
    }

    // Bedrock has no "none" tool choice: offering no tools is how to forbid them (a history
    // with tool blocks then gets the stand-in below: Bedrock refuses tool blocks without a tool
    // configuration).
    let offered: &[ToolSpec] = match request.tool_choice {
        ToolChoice::None => &[],
        _ => request.tools,
    };
    let mut tools = Vec::with_capacity(offered.len() + 1);
    for spec in offered {
        tools.push(tool(spec)?);
    }
    if tools.is_empty() && tool_blocks {
        // As Strands does: a history with tool blocks needs a tool configuration, so a tool
        // that is never called stands in for the ones no longer offered.
        tools.push(tool(&ToolSpec {
            name: "noop".into(),
            description: "This tool does nothing; never call it.".into(),
            input_schema: serde_json::json!({"type": "object", "properties": {}}),
        })?);
    }
    let tool_config = if tools.is_empty() {
        None
    } else {
        if cache.tools {
            tools.push(bt::Tool::CachePoint(cache_point()?));
        }
        let choice = match request.tool_choice {
            ToolChoice::Auto | ToolChoice::None => None,
            _ if thinking => None,
            ToolChoice::Any => Some(bt::ToolChoice::Any(bt::AnyToolChoice::builder().build())),
            ToolChoice::Tool(name) => Some(bt::ToolChoice::Tool(
                bt::SpecificToolChoice::builder()
                    .name(name)
                    .build()
                    .map_err(|e| invalid("the tool choice", e))?,
            )),
        };
        Some(
            bt::ToolConfiguration::builder()
                .set_tools(Some(tools))
                .set_tool_choice(choice)
                .build()
                .map_err(|e| invalid("the tool configuration", e))?,
        )
    };
    Ok(Parts {
        messages,
        system,
        tool_config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ToolResult, ToolUse};
    use serde_json::json;

    #[test]
    fn json_survives_the_round_trip_through_documents() {
        let value = json!({"a": [1, -2, 2.5, "x", null, true], "b": {"c": u64::MAX}});
        assert_eq!(from_document(&to_document(&value)), value);
        assert_eq!(
            from_document(&Document::Number(Number::Float(f64::NAN))),
            Value::Null
        );
    }

    #[test]
    fn json_results_that_are_not_objects_go_as_text_and_unsigned_reasoning_stays_home() {
        let result = Message::new(
            Role::User,
            vec![ContentBlock::ToolResult(ToolResult {
                tool_use_id: "t1".into(),
                status: ToolResultStatus::Success,
                content: vec![
                    ToolResultContent::Json(json!(["a", "b"])),
                    ToolResultContent::Json(json!({"k": 1})),
                ],
            })],
        );
        let reasoning = Message::new(
            Role::Assistant,
            vec![
                ContentBlock::ReasoningContent(ReasoningContent::ReasoningText(
                    crate::message::ReasoningText {
                        text: "thinking from another provider".into(),
                        signature: None,
                    },
                )),
                ContentBlock::Text("answer".into()),
            ],
        );
        let converted = message(&result, false).unwrap();
        let Some(bt::ContentBlock::ToolResult(r)) = converted.content().first() else {
            panic!("no tool result");
        };
        assert!(
            matches!(&r.content()[0], bt::ToolResultContentBlock::Text(t) if t == r#"["a","b"]"#)
        );
        assert!(matches!(
            &r.content()[1],
            bt::ToolResultContentBlock::Json(_)
        ));
        let converted = message(&reasoning, false).unwrap();
        assert!(matches!(converted.content(), [bt::ContentBlock::Text(t)] if t == "answer"));
    }

    #[test]
    fn tool_history_without_tools_gets_the_stand_in_and_cache_points_land() {
        let call = Message::new(
            Role::Assistant,
            vec![ContentBlock::ToolUse(ToolUse {
                tool_use_id: "t1".into(),
                name: "get_weather".into(),
                input: json!("{not json"),
            })],
        );
        let result = Message::new(
            Role::User,
            vec![ContentBlock::ToolResult(ToolResult::success("t1", "sunny"))],
        );
        let prompt = Message::user("Weather?");
        let blank = Message::assistant("  ");
        let request = ModelRequest::new(
            vec![&prompt, &call, &result, &blank],
            &[],
            &ToolChoice::None,
        )
        .system_prompt("Be brief.");
        let parts = parts(&request, PromptCache::automatic(), false).unwrap();
        // The blank assistant message stays, with a stand-in text (the roles must alternate);
        // the cache point is on the last user message.
        assert_eq!(parts.messages.len(), 4);
        assert!(
            matches!(parts.messages[3].content(), [bt::ContentBlock::Text(t)] if t == EMPTY_MESSAGE)
        );
        assert!(matches!(
            parts.messages[2].content().last(),
            Some(bt::ContentBlock::CachePoint(_))
        ));
        // Garbled arguments are wrapped in an object.
        let Some(bt::ContentBlock::ToolUse(u)) = parts.messages[1].content().first() else {
            panic!("no tool use");
        };
        assert_eq!(
            from_document(u.input()),
            json!({"raw_arguments": "{not json"})
        );
        let config = parts.tool_config.unwrap();
        assert_eq!(config.tools().len(), 2);
        assert!(matches!(&config.tools()[0], bt::Tool::ToolSpec(s) if s.name() == "noop"));
        assert!(matches!(&config.tools()[1], bt::Tool::CachePoint(_)));
        assert_eq!(parts.system.len(), 2);
    }
}
