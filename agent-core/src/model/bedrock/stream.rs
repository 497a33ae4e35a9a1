//! Converse replies as model events: the `ConverseStream` events one by one, and a whole
//! `Converse` output at once, both assembled into the same [`ModelResponse`].

use aws_sdk_bedrockruntime::types as bt;
use serde_json::Value;

use super::convert::from_document;
use crate::message::{ContentBlock, ReasoningContent, ReasoningText, ToolUse};
use crate::model::{ModelError, ModelEvent, ModelResponse, ModelStopReason, Usage};

/// The most content one reply may accumulate (text, reasoning and tool arguments together):
/// beyond it the stream fails instead of growing without bound.
pub(super) const MAX_CONTENT: usize = 16 * 1024 * 1024;

/// The most content blocks one reply may open.
const MAX_BLOCKS: usize = 1024;

#[derive(Debug)]
enum Block {
    Text(String),
    Tool {
        id: String,
        name: String,
        input: String,
    },
    Reasoning {
        text: String,
        signature: Option<String>,
    },
    Redacted(Vec<u8>),
}

/// Assembles one reply from its events.
#[derive(Debug, Default)]
pub(super) struct Assembler {
    /// Blocks by `contentBlockIndex`, in order of their index.
    blocks: Vec<(i32, Block)>,
    stop: Option<bt::StopReason>,
    usage: Option<Usage>,
    size: usize,
}

fn too_large(what: &str) -> ModelError {
    ModelError::InvalidReply {
        message: format!("the Bedrock reply exceeds the bound on {what}"),
    }
}

/// A Bedrock token count (an `i32`, which a hostile peer may send negative) as a count.
fn count(n: i32) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Bedrock's usage in the runtime's terms: `inputTokens` does not count the cached prompt
/// tokens, the runtime's `input_tokens` does (as the GenAI conventions ask).
pub(super) fn usage(u: &bt::TokenUsage) -> Usage {
    let read = u.cache_read_input_tokens.map(count).unwrap_or(0);
    let write = u.cache_write_input_tokens.map(count).unwrap_or(0);
    Usage {
        input_tokens: count(u.input_tokens)
            .saturating_add(read)
            .saturating_add(write),
        output_tokens: count(u.output_tokens),
        total_tokens: count(u.total_tokens),
        cache_read_input_tokens: read,
        cache_write_input_tokens: write,
    }
}

/// The stop reasons that mean the reply is not an answer: the context window filled up (the
/// conversation manager reduces and retries, as for an overflow refused up front), or the model
/// wrote a tool call or output that does not parse (retried).
fn stop_error(reason: Option<&bt::StopReason>) -> Result<(), ModelError> {
    match reason {
        Some(bt::StopReason::ModelContextWindowExceeded) => Err(ModelError::ContextOverflow {
            message:
                "the reply stopped at the model's context window (model_context_window_exceeded)"
                    .into(),
        }),
        Some(r @ (bt::StopReason::MalformedToolUse | bt::StopReason::MalformedModelOutput)) => {
            Err(ModelError::InvalidReply {
                message: format!("Bedrock stopped the reply: {}", r.as_str()),
            })
        }
        _ => Ok(()),
    }
}

fn stop_reason(reason: Option<&bt::StopReason>) -> (ModelStopReason, Option<String>) {
    let Some(reason) = reason else {
        return (ModelStopReason::EndTurn, None);
    };
    let mapped = match reason {
        bt::StopReason::ToolUse => ModelStopReason::ToolUse,
        bt::StopReason::MaxTokens => ModelStopReason::MaxTokens,
        bt::StopReason::StopSequence => ModelStopReason::StopSequence,
        bt::StopReason::ContentFiltered => ModelStopReason::ContentFiltered,
        bt::StopReason::GuardrailIntervened => ModelStopReason::GuardrailIntervened,
        _ => ModelStopReason::EndTurn,
    };
    (mapped, Some(reason.as_str().to_owned()))
}

impl Assembler {
    fn grow(&mut self, by: usize) -> Result<(), ModelError> {
        self.size = self.size.saturating_add(by);
        if self.size > MAX_CONTENT {
            return Err(too_large("content size"));
        }
        Ok(())
    }

    /// The block at `index`, opened as `make()` if new.
    fn block(
        &mut self,
        index: i32,
        make: impl FnOnce() -> Block,
    ) -> Result<&mut Block, ModelError> {
        let at = match self.blocks.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) => at,
            Err(at) => {
                if self.blocks.len() >= MAX_BLOCKS {
                    return Err(too_large("content blocks"));
                }
                self.blocks.insert(at, (index, make()));
                at
            }
        };
        Ok(&mut self.blocks[at].1)
    }

    /// Takes one stream event; returns the model event it makes, if any.
    pub(super) fn feed(
        &mut self,
        event: bt::ConverseStreamOutput,
    ) -> Result<Option<ModelEvent>, ModelError> {
        match event {
            bt::ConverseStreamOutput::ContentBlockStart(start) => {
                if let Some(bt::ContentBlockStart::ToolUse(tool)) = start.start {
                    self.grow(tool.tool_use_id.len() + tool.name.len())?;
                    let started = Block::Tool {
                        id: tool.tool_use_id.clone(),
                        name: tool.name.clone(),
                        input: String::new(),
                    };
                    // A start for a block that already has content replaces it.
                    *self.block(start.content_block_index, || Block::Text(String::new()))? =
                        started;
                    return Ok(Some(ModelEvent::ToolUseStart {
                        tool_use_id: tool.tool_use_id,
                        name: tool.name,
                    }));
                }
                Ok(None)
            }
            bt::ConverseStreamOutput::ContentBlockDelta(delta) => {
                let index = delta.content_block_index;
                let Some(delta) = delta.delta else {
                    return Ok(None);
                };
                match delta {
                    bt::ContentBlockDelta::Text(text) => {
                        self.grow(text.len())?;
                        match self.block(index, || Block::Text(String::new()))? {
                            Block::Text(t) => t.push_str(&text),
                            _ => return Err(mixed(index)),
                        }
                        Ok((!text.is_empty()).then_some(ModelEvent::TextDelta(text)))
                    }
                    bt::ContentBlockDelta::ToolUse(tool) => {
                        self.grow(tool.input.len())?;
                        match self.block(index, || Block::Text(String::new()))? {
                            Block::Tool { id, input, .. } => {
                                input.push_str(&tool.input);
                                Ok(Some(ModelEvent::ToolInputDelta {
                                    tool_use_id: id.clone(),
                                    delta: tool.input,
                                }))
                            }
                            _ => Err(ModelError::InvalidReply {
                                message: format!(
                                    "tool input for content block {index}, which no tool use started"
                                ),
                            }),
                        }
                    }
                    bt::ContentBlockDelta::ReasoningContent(r) => {
                        let reasoning = || Block::Reasoning {
                            text: String::new(),
                            signature: None,
                        };
                        match r {
                            bt::ReasoningContentBlockDelta::Text(text) => {
                                self.grow(text.len())?;
                                match self.block(index, reasoning)? {
                                    Block::Reasoning { text: t, .. } => t.push_str(&text),
                                    _ => return Err(mixed(index)),
                                }
                                Ok(Some(ModelEvent::ReasoningDelta {
                                    text,
                                    signature: None,
                                }))
                            }
                            bt::ReasoningContentBlockDelta::Signature(sig) => {
                                self.grow(sig.len())?;
                                match self.block(index, reasoning)? {
                                    Block::Reasoning { signature, .. } => {
                                        signature.get_or_insert_with(String::new).push_str(&sig)
                                    }
                                    _ => return Err(mixed(index)),
                                }
                                Ok(Some(ModelEvent::ReasoningDelta {
                                    text: String::new(),
                                    signature: Some(sig),
                                }))
                            }
                            bt::ReasoningContentBlockDelta::RedactedContent(blob) => {
                                let bytes = blob.into_inner();
                                self.grow(bytes.len())?;
                                match self.block(index, || Block::Redacted(Vec::new()))? {
                                    Block::Redacted(b) => b.extend_from_slice(&bytes),
                                    _ => return Err(mixed(index)),
                                }
                                Ok(None)
                            }
                            // A reasoning delta of a kind this SDK version does not know.
                            _ => Ok(None),
                        }
                    }
                    // Citations, images, tool-result deltas of server-side tools: not content
                    // this runtime keeps.
                    _ => Ok(None),
                }
            }
            bt::ConverseStreamOutput::MessageStop(stop) => {
                self.stop = Some(stop.stop_reason);
                Ok(None)
            }
            bt::ConverseStreamOutput::Metadata(meta) => {
                if let Some(u) = meta.usage {
                    self.usage = Some(usage(&u));
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Whether the reply's `messageStop` arrived.
    pub(super) fn stopped(&self) -> bool {
        self.stop.is_some()
    }

    /// The finished response of `model_id`, or the error its stop reason means.
    pub(super) fn finish(self, model_id: &str) -> Result<ModelResponse, ModelError> {
        let mut content = Vec::with_capacity(self.blocks.len());
        for (_, block) in self.blocks {
            content.push(match block {
                Block::Text(t) if t.is_empty() => continue,
                Block::Text(t) => ContentBlock::Text(t),
                Block::Tool { id, name, input } => ContentBlock::ToolUse(ToolUse {
                    tool_use_id: id,
                    name,
                    input: parse_input(input),
                }),
                Block::Reasoning { text, signature } => {
                    ContentBlock::ReasoningContent(ReasoningContent::ReasoningText(ReasoningText {
                        text,
                        signature,
                    }))
                }
                Block::Redacted(bytes) => ContentBlock::ReasoningContent(
                    ReasoningContent::RedactedContent(crate::message::Bytes(bytes)),
                ),
            });
        }
        response(
            self.stop.as_ref(),
            content,
            self.usage.unwrap_or_default(),
            model_id,
        )
    }
}

/// The response a reply's content and stop reason make, or the error the stop reason means.
/// `tool_use` is decided by the presence of tool uses, as for the other provider.
fn response(
    stop: Option<&bt::StopReason>,
    content: Vec<ContentBlock>,
    usage: Usage,
    model_id: &str,
) -> Result<ModelResponse, ModelError> {
    stop_error(stop)?;
    let (stop_reason, finish_reason) = stop_reason(stop);
    let stop_reason = if content
        .iter()
        .any(|b| matches!(b, ContentBlock::ToolUse(_)))
    {
        ModelStopReason::ToolUse
    } else if stop_reason == ModelStopReason::ToolUse {
        ModelStopReason::EndTurn
    } else {
        stop_reason
    };
    Ok(ModelResponse {
        content,
        stop_reason,
        finish_reason,
        usage,
        response_id: None,
        response_model: Some(model_id.to_owned()),
    })
}

fn mixed(index: i32) -> ModelError {
    ModelError::InvalidReply {
        message: format!("content block {index} mixes kinds of content"),
    }
}

/// Tool arguments: an object when they parse, `{}` when empty, otherwise the raw text as a JSON
/// string (the executor answers it with an error the model can read).
fn parse_input(input: String) -> Value {
    if input.trim().is_empty() {
        return Value::Object(Default::default());
    }
    serde_json::from_str(&input).unwrap_or(Value::String(input))
}

/// A whole `Converse` output as the events a stream of it would make.
pub(super) fn converse_events(
    output: aws_sdk_bedrockruntime::operation::converse::ConverseOutput,
    model_id: &str,
) -> Result<Vec<ModelEvent>, ModelError> {
    let mut events = Vec::new();
    let mut content = Vec::new();
    let mut size = 0usize;
    if let Some(bt::ConverseOutput::Message(message)) = output.output {
        for block in message.content {
            match block {
                bt::ContentBlock::Text(t) => {
                    size += t.len();
                    if !t.is_empty() {
                        events.push(ModelEvent::TextDelta(t.clone()));
                        content.push(ContentBlock::Text(t));
                    }
                }
                bt::ContentBlock::ToolUse(u) => {
                    let input = from_document(&u.input);
                    events.push(ModelEvent::ToolUseStart {
                        tool_use_id: u.tool_use_id.clone(),
                        name: u.name.clone(),
                    });
                    let text = input.to_string();
                    size += text.len();
                    events.push(ModelEvent::ToolInputDelta {
                        tool_use_id: u.tool_use_id.clone(),
                        delta: text,
                    });
                    content.push(ContentBlock::ToolUse(ToolUse {
                        tool_use_id: u.tool_use_id,
                        name: u.name,
                        input,
                    }));
                }
                bt::ContentBlock::ReasoningContent(bt::ReasoningContentBlock::ReasoningText(r)) => {
                    size += r.text.len();
                    events.push(ModelEvent::ReasoningDelta {
                        text: r.text.clone(),
                        signature: r.signature.clone(),
                    });
                    content.push(ContentBlock::ReasoningContent(
                        ReasoningContent::ReasoningText(ReasoningText {
                            text: r.text,
                            signature: r.signature,
                        }),
                    ));
                }
                bt::ContentBlock::ReasoningContent(bt::ReasoningContentBlock::RedactedContent(
                    b,
                )) => {
                    let bytes = b.into_inner();
                    size += bytes.len();
                    content.push(ContentBlock::ReasoningContent(
                        ReasoningContent::RedactedContent(crate::message::Bytes(bytes)),
                    ));
                }
                _ => {}
            }
            if size > MAX_CONTENT {
                return Err(too_large("content size"));
            }
        }
    }
    let usage = output.usage.as_ref().map(usage).unwrap_or_default();
    events.push(ModelEvent::Completed(response(
        Some(&output.stop_reason),
        content,
        usage,
        model_id,
    )?));
    Ok(events)
}
