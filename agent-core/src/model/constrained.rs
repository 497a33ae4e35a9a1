//! Constrained tool calling: the agent's tools and a final-answer branch rendered as one JSON
//! Schema that the server enforces as a grammar (`response_format` json_schema, accepted by
//! vLLM's structured outputs and llama.cpp), and the model's replies mapped back to ordinary
//! tool-use and text blocks.
//!
//! This makes tool calling work where native `tools` silently yield nothing: vLLM started
//! without `--enable-auto-tool-choice`, and small local models that ignore their own tool-call
//! format. Reply shapes:
//!
//! - `{"tool_call": {"name": "<tool>", "arguments": {...}}}`
//! - `{"tool_calls": [{"name": ..., "arguments": ...}, ...]}` (only when parallel calls are enabled)
//! - `{"final_answer": "<text>"}`

use serde_json::{Map, Value, json};

use super::ToolChoice;
use crate::message::{ContentBlock, ToolResult, ToolUse};
use crate::tool::ToolSpec;

fn final_answer_branch() -> Value {
    json!({
        "type": "object",
        "properties": {"final_answer": {"type": "string"}},
        "required": ["final_answer"],
        "additionalProperties": false
    })
}

/// The JSON Schema of one reply, or `None` when the agent has no tool to call and the answer is
/// free text. With tools but [`ToolChoice::None`] (a final answer asked for after tool use), the
/// reply is the final-answer branch alone, so the conversation stays in the protocol the model
/// has been following.
pub(crate) fn reply_schema(
    tools: &[ToolSpec],
    choice: &ToolChoice,
    parallel: bool,
) -> Option<Value> {
    let allowed: Vec<&ToolSpec> = match choice {
        ToolChoice::None if !tools.is_empty() => return Some(final_answer_branch()),
        ToolChoice::None => Vec::new(),
        ToolChoice::Tool(name) => tools.iter().filter(|t| &t.name == name).collect(),
        _ => tools.iter().collect(),
    };
    if allowed.is_empty() {
        return None;
    }
    let call = |t: &ToolSpec| {
        json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.input_schema},
            "required": ["name", "arguments"],
            "additionalProperties": false
        })
    };
    let mut branches: Vec<Value> = allowed
        .iter()
        .map(|t| {
            json!({"type": "object", "properties": {"tool_call": call(t)}, "required": ["tool_call"], "additionalProperties": false})
        })
        .collect();
    if parallel {
        let items: Vec<Value> = allowed.iter().map(|t| call(t)).collect();
        branches.push(json!({
            "type": "object",
            "properties": {"tool_calls": {"type": "array", "minItems": 1, "items": {"oneOf": items}}},
            "required": ["tool_calls"],
            "additionalProperties": false
        }));
    }
    if matches!(choice, ToolChoice::Auto) {
        branches.push(final_answer_branch());
    }
    // One branch is the schema itself: a root object, which OpenAI's strict `response_format`
    // requires (it refuses a root `oneOf`).
    if branches.len() == 1 {
        return branches.pop();
    }
    Some(json!({"oneOf": branches}))
}

/// The protocol, told to the model in the system prompt.
pub(crate) fn protocol_prompt(tools: &[ToolSpec], choice: &ToolChoice, parallel: bool) -> String {
    if matches!(choice, ToolChoice::None) {
        return "Earlier replies followed a JSON protocol: tool calls as {\"tool_call\": ...}, tool \
results as {\"tool_result\": ...}. No tool can be called now. Reply with one JSON object and \
nothing else: {\"final_answer\": \"<your answer>\"}"
            .to_owned();
    }
    let mut out = String::from("You can call tools to help you. The tools:\n");
    for t in tools {
        if let ToolChoice::Tool(name) = choice
            && &t.name != name
        {
            continue;
        }
        out.push_str(&format!(
            "- {}: {} Arguments (JSON Schema): {}\n",
            t.name, t.description, t.input_schema
        ));
    }
    out.push_str("Reply with one JSON object and nothing else:\n");
    out.push_str(
        "- to call a tool: {\"tool_call\": {\"name\": \"<tool name>\", \"arguments\": {...}}}\n",
    );
    if parallel {
        out.push_str("- to call several tools at once: {\"tool_calls\": [{\"name\": ..., \"arguments\": {...}}, ...]}\n");
    }
    if matches!(choice, ToolChoice::Auto) {
        out.push_str("- to answer the user: {\"final_answer\": \"<your answer>\"}\n");
    }
    out.push_str(
        "Tool results come back as {\"tool_result\": {\"name\": ..., \"content\": ...}}. Call the tools one at a time until you have every fact the user asked for, then answer using the results; never answer with facts you did not get from a tool result, and do not call a tool again for a result you already have.",
    );
    out
}

/// An assistant message as the model would have written it under the protocol.
pub(crate) fn render_assistant(content: &[ContentBlock]) -> String {
    let calls: Vec<Value> = content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::ToolUse(u) => Some(json!({"name": u.name, "arguments": u.input})),
            _ => None,
        })
        .collect();
    match calls.len() {
        0 => json!({"final_answer": crate::message::text_of(content)}).to_string(),
        1 => json!({"tool_call": calls[0]}).to_string(),
        _ => json!({"tool_calls": calls}).to_string(),
    }
}

/// A tool result as the model is told to expect it.
pub(crate) fn render_result(name: &str, result: &ToolResult, content: String) -> String {
    let status = match result.status {
        crate::message::ToolResultStatus::Success => "success",
        crate::message::ToolResultStatus::Error => "error",
    };
    json!({"tool_result": {"name": name, "status": status, "content": content}}).to_string()
}

/// Why a reply could not be mapped.
#[derive(Debug)]
pub(crate) struct ReplyError(pub(crate) String);

/// Maps a complete reply to content blocks: tool uses (ids made here) or the answer text.
pub(crate) fn parse_reply(
    raw: &str,
    next_id: &mut impl FnMut() -> String,
) -> Result<Vec<ContentBlock>, ReplyError> {
    let value: Value = serde_json::from_str(raw.trim()).map_err(|e| {
        let shown: String = raw.chars().take(200).collect();
        ReplyError(format!(
            "the model's reply is not the JSON the protocol asks for ({e}): {shown}"
        ))
    })?;
    let Value::Object(mut map) = value else {
        return Err(ReplyError("the model's reply is not a JSON object".into()));
    };
    if let Some(Value::String(answer)) = map.remove("final_answer") {
        return Ok(vec![ContentBlock::Text(answer)]);
    }
    let calls: Vec<Value> = match (map.remove("tool_call"), map.remove("tool_calls")) {
        (Some(call), _) => vec![call],
        (None, Some(Value::Array(calls))) if !calls.is_empty() => calls,
        _ => {
            return Err(ReplyError(
                "the model's reply has neither `tool_call` nor `final_answer`".into(),
            ));
        }
    };
    calls
        .into_iter()
        .map(|call| {
            let Value::Object(mut call) = call else {
                return Err(ReplyError("a tool call is not an object".into()));
            };
            let name = match call.remove("name") {
                Some(Value::String(n)) => n,
                _ => return Err(ReplyError("a tool call has no name".into())),
            };
            let input = match call.remove("arguments") {
                Some(Value::Object(a)) => Value::Object(a),
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(other) => other,
            };
            Ok(ContentBlock::ToolUse(ToolUse {
                tool_use_id: next_id(),
                name,
                input,
            }))
        })
        .collect()
}

/// Streams the text of a `final_answer` while the reply's JSON arrives: recognises
/// `{"final_answer": "` at the start and decodes the string's characters as they come.
#[derive(Debug, Default)]
pub(crate) struct AnswerStreamer {
    raw: String,
    /// Byte offset in `raw` where the answer string's content starts, once recognised.
    start: Option<usize>,
    /// How far the answer has been decoded.
    decoded_to: usize,
    done: bool,
    not_an_answer: bool,
}

impl AnswerStreamer {
    /// Adds a fragment of the reply; returns newly decoded answer text, if any.
    pub(crate) fn push(&mut self, fragment: &str) -> Option<String> {
        self.raw.push_str(fragment);
        if self.done || self.not_an_answer {
            return None;
        }
        if self.start.is_none() {
            match answer_prefix(&self.raw) {
                Prefix::Found(offset) => {
                    self.start = Some(offset);
                    self.decoded_to = offset;
                }
                Prefix::NotYet => return None,
                Prefix::No => {
                    self.not_an_answer = true;
                    return None;
                }
            }
        }
        let mut out = String::new();
        let bytes = self.raw.as_bytes();
        let mut i = self.decoded_to;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    self.done = true;
                    i += 1;
                    break;
                }
                b'\\' => {
                    let Some(&esc) = bytes.get(i + 1) else { break };
                    let simple = match esc {
                        b'"' => Some('"'),
                        b'\\' => Some('\\'),
                        b'/' => Some('/'),
                        b'b' => Some('\u{8}'),
                        b'f' => Some('\u{c}'),
                        b'n' => Some('\n'),
                        b'r' => Some('\r'),
                        b't' => Some('\t'),
                        _ => None,
                    };
                    if let Some(c) = simple {
                        out.push(c);
                        i += 2;
                        continue;
                    }
                    if esc != b'u' {
                        // Invalid escape: leave it to the final parse to report.
                        self.done = true;
                        break;
                    }
                    match decode_unicode_escape(&self.raw[i..]) {
                        Escape::Char(c, len) => {
                            out.push(c);
                            i += len;
                        }
                        Escape::Incomplete => break,
                        Escape::Invalid => {
                            self.done = true;
                            break;
                        }
                    }
                }
                _ => {
                    // Copy one UTF-8 character.
                    let ch_len = self.raw[i..].chars().next().map_or(1, char::len_utf8);
                    out.push_str(&self.raw[i..i + ch_len]);
                    i += ch_len;
                }
            }
        }
        self.decoded_to = i;
        (!out.is_empty()).then_some(out)
    }

    /// The whole reply received so far.
    pub(crate) fn raw(&self) -> &str {
        &self.raw
    }
}

enum Prefix {
    Found(usize),
    NotYet,
    No,
}

/// Matches `\s*{\s*"final_answer"\s*:\s*"` at the start of `raw`.
fn answer_prefix(raw: &str) -> Prefix {
    let mut rest = raw.trim_start();
    let mut consumed = raw.len() - rest.len();
    for token in ["{", "\"final_answer\"", ":", "\""] {
        let trimmed = rest.trim_start();
        consumed += rest.len() - trimmed.len();
        rest = trimmed;
        if rest.len() < token.len() {
            return if token.starts_with(rest) {
                Prefix::NotYet
            } else {
                Prefix::No
            };
        }
        if !rest.starts_with(token) {
            return Prefix::No;
        }
        rest = &rest[token.len()..];
        consumed += token.len();
    }
    Prefix::Found(consumed)
}

enum Escape {
    Char(char, usize),
    Incomplete,
    Invalid,
}

/// Decodes `\uXXXX` (and a following `\uXXXX` low surrogate) at the start of `s`.
fn decode_unicode_escape(s: &str) -> Escape {
    // Byte-wise: the text after an escape may hold multi-byte characters, so string slicing
    // at fixed offsets could split one.
    let bytes = s.as_bytes();
    let hex = |from: usize| -> Option<Option<u32>> {
        let digits = bytes.get(from..from + 4)?;
        Some(
            digits
                .iter()
                .try_fold(0u32, |acc, &b| Some(acc * 16 + char::from(b).to_digit(16)?)),
        )
    };
    let Some(first) = hex(2) else {
        return Escape::Incomplete;
    };
    let Some(first) = first else {
        return Escape::Invalid;
    };
    if (0xD800..0xDC00).contains(&first) {
        match bytes.get(6..8) {
            None if b"\\u".starts_with(&bytes[6..]) => return Escape::Incomplete,
            Some(b"\\u") => {}
            _ => return Escape::Invalid,
        }
        if bytes.len() < 12 {
            return Escape::Incomplete;
        }
        let Some(Some(second)) = hex(8) else {
            return Escape::Invalid;
        };
        if !(0xDC00..0xE000).contains(&second) {
            return Escape::Invalid;
        }
        let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
        return char::from_u32(code).map_or(Escape::Invalid, |c| Escape::Char(c, 12));
    }
    char::from_u32(first).map_or(Escape::Invalid, |c| Escape::Char(c, 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: format!("{name} tool."),
            input_schema: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        }
    }

    #[test]
    fn schema_has_one_branch_per_tool_and_the_answer() {
        let tools = [spec("a"), spec("b")];
        let s = reply_schema(&tools, &ToolChoice::Auto, false).expect("schema");
        let branches = s["oneOf"].as_array().expect("oneOf");
        assert_eq!(branches.len(), 3);
        assert_eq!(
            branches[0]["properties"]["tool_call"]["properties"]["name"]["const"],
            "a"
        );
        assert_eq!(
            branches[0]["properties"]["tool_call"]["properties"]["arguments"],
            tools[0].input_schema
        );
        assert_eq!(branches[2]["required"], json!(["final_answer"]));
        let any = reply_schema(&tools, &ToolChoice::Any, true).expect("schema");
        let any = any["oneOf"].as_array().expect("oneOf");
        assert!(
            any.iter()
                .all(|b| b["properties"].get("final_answer").is_none())
        );
        assert!(
            any.iter()
                .any(|b| b["properties"].get("tool_calls").is_some())
        );
        let named = reply_schema(&tools, &ToolChoice::Tool("b".into()), false).expect("schema");
        assert_eq!(named["required"], json!(["tool_call"]));
        assert_eq!(
            named["properties"]["tool_call"]["properties"]["name"]["const"],
            "b"
        );
        // Tool use switched off: the final-answer branch alone.
        let none = reply_schema(&tools, &ToolChoice::None, false).expect("schema");
        assert_eq!(none["required"], json!(["final_answer"]));
        assert!(reply_schema(&[], &ToolChoice::None, false).is_none());
        assert!(reply_schema(&[], &ToolChoice::Auto, false).is_none());
    }

    #[test]
    fn replies_map_to_blocks() {
        let mut n = 0;
        let mut id = || {
            n += 1;
            format!("call_{n}")
        };
        let blocks = parse_reply(
            r#"{"tool_call": {"name": "a", "arguments": {"city": "Lisbon"}}}"#,
            &mut id,
        )
        .expect("ok");
        assert_eq!(
            blocks,
            vec![ContentBlock::ToolUse(ToolUse {
                tool_use_id: "call_1".into(),
                name: "a".into(),
                input: json!({"city": "Lisbon"})
            })]
        );
        let blocks = parse_reply(
            r#"{"tool_calls": [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]}"#,
            &mut id,
        )
        .expect("ok");
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            parse_reply(r#" {"final_answer": "Sunny."} "#, &mut id).expect("ok"),
            vec![ContentBlock::Text("Sunny.".into())]
        );
        assert!(parse_reply(r#"{"final_answer": "cut"#, &mut id).is_err());
        assert!(parse_reply(r#"{"other": 1}"#, &mut id).is_err());
    }

    #[test]
    fn streams_the_answer_text_across_fragment_boundaries() {
        let reply = r#"{ "final_answer" : "Caf\u00e9 \"Lisboa\" \ud83d\ude00 ok\n" }"#;
        for split in 1..reply.len() {
            if !reply.is_char_boundary(split) {
                continue;
            }
            let mut s = AnswerStreamer::default();
            let mut out = String::new();
            for part in [&reply[..split], &reply[split..]] {
                if let Some(t) = s.push(part) {
                    out.push_str(&t);
                }
            }
            assert_eq!(out, "Café \"Lisboa\" 😀 ok\n", "split at {split}");
            assert_eq!(s.raw(), reply);
        }
        let mut s = AnswerStreamer::default();
        assert_eq!(s.push(r#"{"tool_call": {"name": "#), None);
        assert_eq!(s.push(r#""a", "arguments": {}}}"#), None);
    }

    #[test]
    fn history_renders_in_the_protocol() {
        let call = [ContentBlock::ToolUse(ToolUse {
            tool_use_id: "x".into(),
            name: "a".into(),
            input: json!({"city": "P"}),
        })];
        assert_eq!(
            render_assistant(&call),
            r#"{"tool_call":{"arguments":{"city":"P"},"name":"a"}}"#
        );
        assert_eq!(
            render_assistant(&[ContentBlock::Text("hi".into())]),
            r#"{"final_answer":"hi"}"#
        );
        let r = ToolResult::error("x", "boom");
        assert_eq!(
            render_result("a", &r, "boom".into()),
            r#"{"tool_result":{"content":"boom","name":"a","status":"error"}}"#
        );
        let p = protocol_prompt(&[spec("a")], &ToolChoice::Auto, false);
        assert!(p.contains("- a: a tool.") && p.contains("final_answer"));
    }

    /// Streams `raw` through an [`AnswerStreamer`] in pieces cut at `cuts` (char boundaries).
    fn stream_in_pieces(raw: &str, cuts: &[usize]) -> String {
        let mut streamer = AnswerStreamer::default();
        let mut out = String::new();
        let mut from = 0;
        let mut bounds: Vec<usize> = cuts
            .iter()
            .map(|c| c % (raw.len() + 1))
            .filter(|c| raw.is_char_boundary(*c))
            .collect();
        bounds.sort_unstable();
        bounds.push(raw.len());
        for to in bounds {
            if to > from {
                if let Some(text) = streamer.push(&raw[from..to]) {
                    out.push_str(&text);
                }
                from = to;
            }
        }
        out
    }

    #[test]
    fn a_lone_surrogate_before_multibyte_text_is_an_error_not_a_panic() {
        let raw = "{\"final_answer\": \"x\\uD800a€ and more\"}";
        let _ = stream_in_pieces(raw, &[20, 21, 22, 23, 24, 25]);
        let mut n = 0;
        assert!(
            parse_reply(raw, &mut || {
                n += 1;
                n.to_string()
            })
            .is_err()
        );
    }

    proptest::proptest! {
        /// Any reply, cut anywhere: no panic, and when the reply is a valid final answer, the
        /// streamed text is exactly the parsed answer.
        #[test]
        fn fuzz_replies_stream_and_parse(
            body in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("\\uD800".to_owned()),
                    proptest::strategy::Just("\\uDC00".to_owned()),
                    proptest::strategy::Just("\\u00e9".to_owned()),
                    proptest::strategy::Just("\\ud83d\\ude00".to_owned()),
                    proptest::strategy::Just("\\n".to_owned()),
                    proptest::strategy::Just("\\\"".to_owned()),
                    proptest::strategy::Just("\\".to_owned()),
                    proptest::strategy::Just("\"".to_owned()),
                    "[a-z é€😀]{0,4}",
                ],
                0..24,
            ),
            wrap in proptest::bool::ANY,
            cuts in proptest::collection::vec(0usize..512, 0..12),
        ) {
            let body = body.concat();
            let raw = if wrap { format!("{{\"final_answer\": \"{body}\"}}") } else { body };
            let streamed = stream_in_pieces(&raw, &cuts);
            let mut n = 0;
            let parsed = parse_reply(&raw, &mut || { n += 1; n.to_string() });
            if let Ok(blocks) = parsed
                && let [ContentBlock::Text(answer)] = blocks.as_slice()
                && wrap
            {
                proptest::prop_assert_eq!(&streamed, answer);
            }
        }
    }
}
