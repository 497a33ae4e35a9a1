//! Responses: streamed chunks (SSE) and whole bodies assembled into model events.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::Deserialize;
use serde_json::{Map, Value};

use futures::{Stream, StreamExt};

use super::super::constrained::{self, AnswerStreamer};
use super::super::sse::{SseDecoder, SseError};
use super::super::{ModelError, ModelEvent, ModelResponse, ModelStopReason, Usage};
use super::error::{WireError, classify};
use crate::message::{ContentBlock, ReasoningContent, ReasoningText, ToolUse};

#[derive(Deserialize)]
pub(super) struct Chunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Deserialize)]
pub(super) struct Choice {
    #[serde(default, alias = "message")]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
pub(super) struct ToolCallDelta {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
pub(super) struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
    /// OpenAI's and vLLM's (`--enable-prompt-tokens-details`) prompt-cache hits.
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Deserialize)]
pub(super) struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

/// Builds the response from chunks and produces the events to emit.
#[derive(Default)]
pub(super) struct Assembler {
    text: String,
    reasoning: String,
    calls: Vec<PartialCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    id: Option<String>,
    model: Option<String>,
    pending: VecDeque<ModelEvent>,
    /// Set in constrained tool calling: the reply is protocol JSON, parsed at the end.
    constrained: Option<AnswerStreamer>,
}

pub(super) struct PartialCall {
    index: usize,
    id: String,
    name: String,
    arguments: String,
}

impl Assembler {
    fn feed(&mut self, chunk: Chunk) -> Result<(), ModelError> {
        if let Some(err) = chunk.error {
            return Err(classify(
                err.code
                    .as_ref()
                    .and_then(Value::as_u64)
                    .map_or(500, |c| c as u16),
                &err,
                None,
            ));
        }
        if self.id.is_none() {
            self.id = chunk.id;
        }
        if self.model.is_none() {
            self.model = chunk.model;
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(Usage {
                input_tokens: u.prompt_tokens,
                output_tokens: u.completion_tokens,
                total_tokens: u
                    .total_tokens
                    .unwrap_or(u.prompt_tokens.saturating_add(u.completion_tokens)),
                cache_read_input_tokens: u
                    .prompt_tokens_details
                    .and_then(|d| d.cached_tokens)
                    .unwrap_or(0),
                cache_write_input_tokens: 0,
            });
        }
        for choice in chunk.choices {
            if let Some(delta) = choice.delta {
                self.feed_delta(delta);
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        Ok(())
    }

    fn feed_delta(&mut self, delta: Delta) {
        for reasoning in [delta.reasoning_content, delta.reasoning]
            .into_iter()
            .flatten()
        {
            if !reasoning.is_empty() {
                self.reasoning.push_str(&reasoning);
                self.pending.push_back(ModelEvent::ReasoningDelta {
                    text: reasoning,
                    signature: None,
                });
            }
        }
        if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
            if let Some(streamer) = &mut self.constrained {
                if let Some(answer) = streamer.push(&text) {
                    self.pending.push_back(ModelEvent::TextDelta(answer));
                }
            } else {
                self.text.push_str(&text);
                self.pending.push_back(ModelEvent::TextDelta(text));
            }
        }
        for (position, call) in delta.tool_calls.into_iter().flatten().enumerate() {
            self.feed_tool_call(position, call);
        }
    }

    fn feed_tool_call(&mut self, position: usize, call: ToolCallDelta) {
        let slot = match (call.index, call.id.as_deref()) {
            (Some(index), _) => self.calls.iter().position(|c| c.index == index),
            (None, Some(id)) => self.calls.iter().position(|c| c.id == id),
            (None, None) => self.calls.len().checked_sub(1),
        };
        let function = call.function;
        let (name, arguments) = match function {
            Some(f) => (f.name, f.arguments),
            None => (None, None),
        };
        let slot = match slot {
            Some(s) => s,
            None => {
                let index = call.index.unwrap_or(self.calls.len().max(position));
                let id = call
                    .id
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| format!("call_{index}_{:08x}", fastrand::u32(..)));
                let name = name.clone().unwrap_or_default();
                self.pending.push_back(ModelEvent::ToolUseStart {
                    tool_use_id: id.clone(),
                    name: name.clone(),
                });
                self.calls.push(PartialCall {
                    index,
                    id,
                    name,
                    arguments: String::new(),
                });
                self.calls.len() - 1
            }
        };
        let entry = &mut self.calls[slot];
        if entry.name.is_empty()
            && let Some(n) = name
        {
            entry.name = n;
        }
        let fragment = match arguments {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        if !fragment.is_empty() {
            entry.arguments.push_str(&fragment);
            self.pending.push_back(ModelEvent::ToolInputDelta {
                tool_use_id: entry.id.clone(),
                delta: fragment,
            });
        }
    }

    /// Finishes the response and queues it as the last event.
    fn complete(&mut self) -> Result<(), ModelError> {
        let response = self.finish()?;
        self.pending.push_back(ModelEvent::Completed(response));
        Ok(())
    }

    fn new(constrained: bool) -> Self {
        Self {
            constrained: constrained.then(AnswerStreamer::default),
            ..Self::default()
        }
    }

    fn finish(&mut self) -> Result<ModelResponse, ModelError> {
        if let Some(streamer) = self.constrained.take() {
            let mut counter = 0u32;
            let prefix = fastrand::u32(..);
            let mut next_id = || {
                counter += 1;
                format!("call_{prefix:08x}_{counter}")
            };
            let cut = self.finish_reason.as_deref() == Some("length");
            let blocks = constrained::parse_reply(streamer.raw(), &mut next_id).map_err(|e| {
                ModelError::InvalidReply {
                    message: if cut {
                        format!("{} ({})", crate::model::TRUNCATED_REPLY, e.0)
                    } else {
                        e.0
                    },
                }
            })?;
            for block in blocks {
                match block {
                    ContentBlock::ToolUse(u) => {
                        self.pending.push_back(ModelEvent::ToolUseStart {
                            tool_use_id: u.tool_use_id.clone(),
                            name: u.name.clone(),
                        });
                        self.pending.push_back(ModelEvent::ToolInputDelta {
                            tool_use_id: u.tool_use_id.clone(),
                            delta: u.input.to_string(),
                        });
                        self.calls.push(PartialCall {
                            index: self.calls.len(),
                            id: u.tool_use_id,
                            name: u.name,
                            arguments: u.input.to_string(),
                        });
                    }
                    ContentBlock::Text(t) => self.text = t,
                    _ => {}
                }
            }
        }
        let mut content = Vec::with_capacity(2 + self.calls.len());
        if !self.reasoning.is_empty() {
            content.push(ContentBlock::ReasoningContent(
                ReasoningContent::ReasoningText(ReasoningText {
                    text: std::mem::take(&mut self.reasoning),
                    signature: None,
                }),
            ));
        }
        if !self.text.is_empty() {
            content.push(ContentBlock::Text(std::mem::take(&mut self.text)));
        }
        let has_calls = !self.calls.is_empty();
        for call in self.calls.drain(..) {
            content.push(ContentBlock::ToolUse(ToolUse {
                tool_use_id: call.id,
                name: call.name,
                input: parse_arguments(call.arguments),
            }));
        }
        let stop_reason = if has_calls {
            ModelStopReason::ToolUse
        } else {
            match self.finish_reason.as_deref() {
                Some("length") => ModelStopReason::MaxTokens,
                Some("content_filter") => ModelStopReason::ContentFiltered,
                _ => ModelStopReason::EndTurn,
            }
        };
        Ok(ModelResponse {
            content,
            stop_reason,
            finish_reason: self.finish_reason.take(),
            usage: self.usage.unwrap_or_default(),
            response_id: self.id.take(),
            response_model: self.model.take(),
        })
    }
}

/// Parses accumulated arguments: an object, a doubly encoded object, or (unparseable) the raw
/// text as a JSON string.
pub(super) fn parse_arguments(raw: String) -> Value {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Value::Object(Map::new());
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(Value::Null) => Value::Object(Map::new()),
        Ok(Value::String(inner)) => match serde_json::from_str::<Value>(&inner) {
            Ok(Value::Object(map)) => Value::Object(map),
            _ => Value::String(raw),
        },
        _ => Value::String(raw),
    }
}

pub(super) fn sse_events(
    response: reqwest::Response,
    constrained: bool,
) -> impl Stream<Item = Result<ModelEvent, ModelError>> + Send {
    SseEvents {
        body: response.bytes_stream(),
        decoder: SseDecoder::default(),
        assembler: Assembler::new(constrained),
        done: false,
        quiet_chunks: 0,
    }
}

/// Chunks read in one poll without an event before the task yields, so a peer that talks fast
/// but says nothing (comments, empty lines) cannot hold the executor.
const CHUNKS_PER_YIELD: u32 = 32;

/// Model events from a body of server-sent events. A hand-written stream rather than an
/// `unfold`: the decoder and the assembler stay in place instead of moving in and out of a
/// future for every event.
struct SseEvents<B> {
    body: B,
    decoder: SseDecoder,
    assembler: Assembler,
    done: bool,
    /// Chunks read since the last event.
    quiet_chunks: u32,
}

impl<B> SseEvents<B> {
    /// Ends the stream with `error`.
    fn fail(&mut self, error: ModelError) -> Poll<Option<Result<ModelEvent, ModelError>>> {
        self.done = true;
        Poll::Ready(Some(Err(error)))
    }

    /// Decodes the buffered events into the assembler; `Err` ends the stream.
    fn decode_buffered(&mut self) -> Result<(), ModelError> {
        while self.assembler.pending.is_empty() && !self.done {
            let data = match self.decoder.next_event() {
                Err(e) => return Err(invalid_stream(e)),
                Ok(None) => return Ok(()),
                Ok(Some(data)) => data.trim(),
            };
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                self.done = true;
                return self.assembler.complete();
            }
            let chunk: Chunk = serde_json::from_str(data).map_err(|e| ModelError::Transient {
                message: format!("malformed stream chunk: {e}"),
            })?;
            self.assembler.feed(chunk)?;
        }
        Ok(())
    }
}

impl<B, T> Stream for SseEvents<B>
where
    B: Stream<Item = Result<T, reqwest::Error>> + Unpin,
    T: AsRef<[u8]>,
{
    type Item = Result<ModelEvent, ModelError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let st = self.get_mut();
        loop {
            if let Some(ev) = st.assembler.pending.pop_front() {
                st.quiet_chunks = 0;
                return Poll::Ready(Some(Ok(ev)));
            }
            if st.done {
                return Poll::Ready(None);
            }
            if let Err(e) = st.decode_buffered() {
                return st.fail(e);
            }
            if !st.assembler.pending.is_empty() || st.done {
                continue;
            }
            st.quiet_chunks = st.quiet_chunks.wrapping_add(1);
            if st.quiet_chunks.is_multiple_of(CHUNKS_PER_YIELD) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match std::task::ready!(st.body.poll_next_unpin(cx)) {
                Some(Ok(bytes)) => {
                    if let Err(e) = st.decoder.feed(bytes.as_ref()) {
                        return st.fail(invalid_stream(e));
                    }
                }
                Some(Err(e)) => {
                    return st.fail(ModelError::Connection {
                        message: format!("stream interrupted: {e}"),
                        source: crate::error::Cause::new(e),
                    });
                }
                None => {
                    st.done = true;
                    // Some servers end without `[DONE]`; a finish reason says the response is
                    // whole.
                    if st.assembler.finish_reason.is_some() {
                        if let Err(e) = st.assembler.complete() {
                            return Poll::Ready(Some(Err(e)));
                        }
                        continue;
                    }
                    return Poll::Ready(Some(Err(ModelError::Transient {
                        message: "stream ended before the response was complete".into(),
                    })));
                }
            }
        }
    }
}

/// A stream the decoder refuses: a peer that does not speak server-sent events within bounds.
fn invalid_stream(e: SseError) -> ModelError {
    ModelError::InvalidReply {
        message: e.to_string(),
    }
}

pub(super) fn non_streaming_events(
    bytes: &[u8],
    constrained: bool,
) -> Vec<Result<ModelEvent, ModelError>> {
    let chunk: Chunk = match serde_json::from_slice(bytes) {
        Ok(c) => c,
        Err(e) => {
            return vec![Err(ModelError::Transient {
                message: format!("malformed response body: {e}"),
            })];
        }
    };
    let mut assembler = Assembler::new(constrained);
    if let Err(e) = assembler.feed(chunk).and_then(|()| assembler.complete()) {
        return vec![Err(e)];
    }
    assembler.pending.drain(..).map(Ok).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chunk(v: Value) -> Chunk {
        serde_json::from_value(v).expect("chunk")
    }

    #[test]
    fn accumulates_tool_calls_by_index_including_the_finishing_chunk() {
        let mut a = Assembler::default();
        a.feed(chunk(json!({"choices":[{"index":0,"delta":{"tool_calls":[{"id":"chatcmpl-tool-1","type":"function","index":0,"function":{"name":"search"}}]}}]}))).expect("ok");
        a.feed(chunk(json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"chatcmpl-tool-2","function":{"name":"other","arguments":""}}]}}]}))).expect("ok");
        a.feed(chunk(json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"q\": "}}]}}]}))).expect("ok");
        a.feed(chunk(json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":{"x":1}}},{"index":0,"function":{"arguments":"\"lisbon\"}"}}]},"finish_reason":"tool_calls"}]}))).expect("ok");
        let r = a.finish().expect("response");
        assert_eq!(r.stop_reason, ModelStopReason::ToolUse);
        let uses: Vec<_> = r
            .content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::ToolUse(u) => Some(u),
                _ => None,
            })
            .collect();
        assert_eq!(uses.len(), 2);
        assert_eq!(uses[0].tool_use_id, "chatcmpl-tool-1");
        assert_eq!(uses[0].input, json!({"q": "lisbon"}));
        assert_eq!(uses[1].name, "other");
        assert_eq!(uses[1].input, json!({"x": 1}));
    }

    #[test]
    fn decides_tool_use_by_presence_not_finish_reason() {
        let mut a = Assembler::default();
        a.feed(chunk(json!({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"stop"}]}))).expect("ok");
        assert_eq!(
            a.finish().expect("response").stop_reason,
            ModelStopReason::ToolUse
        );
        let mut b = Assembler::default();
        b.feed(chunk(
            json!({"choices":[{"delta":{"content":"hi"},"finish_reason":"tool_calls"}]}),
        ))
        .expect("ok");
        assert_eq!(
            b.finish().expect("response").stop_reason,
            ModelStopReason::EndTurn
        );
    }

    #[test]
    fn arguments_parsing() {
        assert_eq!(parse_arguments("".into()), json!({}));
        assert_eq!(parse_arguments("{\"a\":1}".into()), json!({"a":1}));
        assert_eq!(parse_arguments("\"{\\\"a\\\":1}\"".into()), json!({"a":1}));
        assert_eq!(parse_arguments("{\"a\":".into()), json!("{\"a\":"));
    }

    #[test]
    fn reasoning_from_either_field() {
        let mut a = Assembler::default();
        a.feed(chunk(
            json!({"choices":[{"delta":{"reasoning_content":"think "}}]}),
        ))
        .expect("ok");
        a.feed(chunk(json!({"choices":[{"delta":{"reasoning":"more"}}]})))
            .expect("ok");
        let r = a.finish().expect("response");
        assert_eq!(
            r.content,
            vec![ContentBlock::ReasoningContent(
                ReasoningContent::ReasoningText(ReasoningText {
                    text: "think more".into(),
                    signature: None
                })
            )]
        );
    }

    /// A JSON value built from the pieces chat-completion chunks are made of, so the fuzzer
    /// reaches the assembler's branches instead of failing at parsing.
    fn chunk_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
            Just(json!("{\"a\":")),
            Just(json!("\"{}\"")),
        ];
        let call = (
            proptest::option::of(0usize..4),
            proptest::option::of("[a-z0-9-]{0,6}"),
            proptest::option::of("[a-z_]{0,6}"),
            scalar.clone(),
        )
            .prop_map(|(index, id, name, args)| {
                json!({"index": index, "id": id, "function": {"name": name, "arguments": args}})
            });
        let delta = (
            proptest::option::of(".{0,8}"),
            proptest::option::of(".{0,4}"),
            proptest::collection::vec(call, 0..3),
        )
            .prop_map(|(content, reasoning, calls)| {
                json!({"content": content, "reasoning_content": reasoning, "tool_calls": calls})
            });
        (
            proptest::collection::vec(
                (
                    delta,
                    proptest::option::of(prop_oneof![
                        Just("stop"),
                        Just("tool_calls"),
                        Just("length")
                    ]),
                ),
                0..3,
            ),
            proptest::option::of((any::<u64>(), any::<u64>())),
            any::<bool>(),
        )
            .prop_map(|(choices, usage, error)| {
                let choices: Vec<Value> = choices
                    .into_iter()
                    .map(|(d, f)| json!({"delta": d, "finish_reason": f}))
                    .collect();
                let mut v = json!({"id": "c", "choices": choices});
                if let Some((p, c)) = usage {
                    v["usage"] = json!({"prompt_tokens": p, "completion_tokens": c});
                }
                if error {
                    v["error"] = json!({"message": "x", "code": 500});
                }
                v
            })
    }

    proptest::proptest! {
        /// Any sequence of chunks, in either mode: no panic, and a response or a typed error.
        #[test]
        fn fuzz_chunk_assembly(
            chunks in proptest::collection::vec(chunk_value(), 0..6),
            constrained in proptest::bool::ANY,
        ) {
            let mut a = Assembler::new(constrained);
            let mut failed = false;
            for c in chunks {
                if let Ok(chunk) = serde_json::from_value::<Chunk>(c)
                    && a.feed(chunk).is_err()
                {
                    failed = true;
                    break;
                }
            }
            if !failed {
                let _ = a.complete();
            }
        }

        /// Tool-call arguments as any text: an object, or the text kept for an error result.
        #[test]
        fn fuzz_tool_arguments(raw in ".{0,64}") {
            let v = parse_arguments(raw.clone());
            proptest::prop_assert!(v.is_object() || v == Value::String(raw));
        }
    }
}
