//! MCP tools as agent-core tools: names, calls, result mapping.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use agent_core::async_trait;
use agent_core::message::{
    Bytes, Image, ImageFormat, MediaSource, ToolResultContent, ToolResultStatus,
};
use agent_core::tool::{Tool, ToolContext, ToolError, ToolOutput, ToolSpec, is_valid_tool_name};
use base64::Engine as _;
use opentelemetry::trace::TraceContextExt as _;
use rmcp::model::{
    CallToolRequestParams, ContentBlock, MetaObject, RequestMetaObject, ResourceContents,
};
use serde_json::Value;

use super::Shared;

/// Adapts a listed tool; `None` when filtered out or when no valid name can be made.
pub(crate) fn adapt(
    shared: &Arc<Shared>,
    tool: rmcp::model::Tool,
    used: &mut HashSet<String>,
) -> Option<Arc<dyn Tool>> {
    let config = &shared.config;
    let remote = tool.name.to_string();
    if config.deny.contains(&remote) || config.allow.as_ref().is_some_and(|a| !a.contains(&remote))
    {
        return None;
    }
    // Unique also after `-`/`_` folding (the registry treats them alike); a clash gets a
    // suffix from the MCP name's hash, so it does not depend on the listing order.
    let mut name = provider_name(config.prefix.as_deref(), &remote);
    if used.contains(&name.replace('-', "_")) {
        let suffix = format!("_{:06x}", fnv(&remote) & 0xff_ffff);
        name = format!("{}{suffix}", &name[..name.len().min(64 - suffix.len())]);
    }
    if !is_valid_tool_name(&name) || used.contains(&name.replace('-', "_")) {
        tracing::warn!(server = %config.name, tool = %remote, "MCP tool left out: no valid unique name for it");
        return None;
    }
    used.insert(name.replace('-', "_"));
    let mut input_schema = Value::Object((*tool.input_schema).clone());
    if input_schema.get("type").is_none() {
        // Model providers want an object schema; MCP input schemas are objects by definition.
        input_schema["type"] = Value::String("object".into());
    }
    if input_schema.get("type").and_then(Value::as_str) != Some("object")
        || jsonschema::validator_for(&input_schema).is_err()
    {
        tracing::warn!(server = %config.name, tool = %remote, "MCP tool left out: its input schema is not a valid object schema");
        return None;
    }
    let output_validator = tool
        .output_schema
        .as_ref()
        .and_then(|s| jsonschema::validator_for(&Value::Object((**s).clone())).ok());
    Some(Arc::new(McpTool {
        shared: shared.clone(),
        timeout: config
            .tool_timeouts
            .get(&remote)
            .copied()
            .unwrap_or(config.call_timeout),
        spec: ToolSpec {
            name,
            description: tool.description.as_deref().unwrap_or(&remote).to_owned(),
            input_schema,
        },
        remote,
        output_validator,
    }))
}

/// A name valid for model providers made from an MCP tool name.
pub(crate) fn provider_name(prefix: Option<&str>, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let full = match prefix {
        Some(p) => format!("{p}_{clean}"),
        None => clean,
    };
    if full.len() <= 64 {
        return full;
    }
    // Keep it unique when cut: a short hash of the whole name at the end.
    format!("{}_{:08x}", &full[..55], fnv(&full) as u32)
}

/// FNV-1a: a short stable hash for name suffixes.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

pub(crate) struct McpTool {
    shared: Arc<Shared>,
    remote: String,
    spec: ToolSpec,
    timeout: Duration,
    output_validator: Option<jsonschema::Validator>,
}

/// `traceparent` of the current span, for `_meta` (W3C trace context).
pub(crate) fn traceparent() -> Option<String> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

#[async_trait]
impl Tool for McpTool {
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }

    fn timeout(&self) -> Option<Duration> {
        // The executor's bound; the call below also bounds itself so that the server hears
        // `notifications/cancelled` when it expires.
        Some(self.timeout + Duration::from_secs(1))
    }

    async fn call(&self, input: Value, ctx: ToolContext) -> Result<ToolOutput, ToolError> {
        let shared = &self.shared;
        let server = shared.config.name.as_str();
        let arguments = match input {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        // The agent's execute_tool span is current here: add the MCP attributes to it rather
        // than opening a second span (the conventions' advice).
        {
            let cx = opentelemetry::Context::current();
            let span = cx.span();
            if span.is_recording() {
                use opentelemetry::KeyValue;
                span.set_attribute(KeyValue::new("mcp.method.name", "tools/call"));
                span.set_attribute(KeyValue::new("mcp.server.name", server.to_owned()));
                span.set_attribute(KeyValue::new(
                    "network.transport",
                    shared.config.network_transport(),
                ));
                if let Some(version) = shared.protocol_version() {
                    span.set_attribute(KeyValue::new("mcp.protocol.version", version));
                }
            }
        }
        let mut params = CallToolRequestParams::new(self.remote.clone()).with_arguments(arguments);
        if let Some(tp) = traceparent() {
            let mut meta = serde_json::Map::new();
            meta.insert("traceparent".into(), Value::String(tp));
            params.meta = Some(RequestMetaObject(MetaObject(meta)));
        }
        // Dropping the call (cancellation) sends notifications/cancelled.
        let call = shared.call_tool_tracked(params, ctx.progress.clone(), self.timeout);
        let result = tokio::select! {
            r = call => r,
            () = ctx.cancel.cancelled() => return Err(ToolError::new(format!("MCP tool `{}` on `{server}` was cancelled", self.remote))),
        };
        let result =
            result.map_err(|e| ToolError::new(format!("MCP tool `{}`: {e}", self.remote)))?;
        if let Some(structured) = &result.structured_content
            && let Some(validator) = &self.output_validator
            && let Some(problem) = validator.iter_errors(structured).next()
        {
            return Err(ToolError::new(format!(
                "MCP tool `{}` returned structured content that does not match its output schema: {problem}",
                self.remote
            )));
        }
        let content = result_content(result.structured_content, result.content);
        let status = if result.is_error == Some(true) {
            ToolResultStatus::Error
        } else {
            ToolResultStatus::Success
        };
        Ok(ToolOutput { status, content })
    }
}

/// A result's content, each fact once. Servers send structured content together with a text
/// rendering of it (the specification asks them to, for older clients); the model gets one:
/// - the text blocks are the JSON of the structured content: the structured content alone, as
///   JSON (server-everything, mcp-server-time);
/// - the text blocks say it differently (`"hello"` for `{"content": "hello"}`, as
///   server-filesystem and server-memory do): the server's own rendering alone;
/// - no text blocks: the structured content, beside the other blocks.
pub(crate) fn result_content(
    structured: Option<Value>,
    blocks: Vec<ContentBlock>,
) -> Vec<ToolResultContent> {
    let mapped: Vec<ToolResultContent> = blocks.into_iter().filter_map(map_content).collect();
    let Some(structured) = structured else {
        return mapped;
    };
    let texts: Vec<&String> = mapped
        .iter()
        .filter_map(|c| match c {
            ToolResultContent::Text(t) => Some(t),
            _ => None,
        })
        .collect();
    if texts.is_empty() {
        let mut out = vec![ToolResultContent::Json(structured)];
        out.extend(mapped);
        return out;
    }
    let renders_json = texts
        .iter()
        .all(|t| serde_json::from_str::<Value>(t).is_ok_and(|v| v == structured));
    if !renders_json {
        return mapped;
    }
    let mut out = vec![ToolResultContent::Json(structured)];
    out.extend(
        mapped
            .into_iter()
            .filter(|c| !matches!(c, ToolResultContent::Text(_))),
    );
    out
}

pub(crate) fn map_content(block: ContentBlock) -> Option<ToolResultContent> {
    match block {
        ContentBlock::Text(t) => Some(ToolResultContent::Text(t.text)),
        ContentBlock::Image(img) => {
            let format = match img.mime_type.as_str() {
                "image/png" => Some(ImageFormat::Png),
                "image/jpeg" => Some(ImageFormat::Jpeg),
                "image/gif" => Some(ImageFormat::Gif),
                "image/webp" => Some(ImageFormat::Webp),
                _ => None,
            };
            match (
                format,
                base64::engine::general_purpose::STANDARD.decode(img.data.as_bytes()),
            ) {
                (Some(format), Ok(bytes)) => Some(ToolResultContent::Image(Image {
                    format,
                    source: MediaSource {
                        bytes: Bytes(bytes),
                    },
                })),
                _ => Some(ToolResultContent::Text(format!(
                    "[image: {}]",
                    img.mime_type
                ))),
            }
        }
        ContentBlock::Resource(r) => match r.resource {
            ResourceContents::TextResourceContents { uri, text, .. } => {
                Some(ToolResultContent::Text(format!("[resource {uri}]\n{text}")))
            }
            ResourceContents::BlobResourceContents { uri, mime_type, .. } => {
                Some(ToolResultContent::Text(format!(
                    "[resource {uri}: binary {}]",
                    mime_type.unwrap_or_else(|| "data".into())
                )))
            }
            _ => None,
        },
        ContentBlock::ResourceLink(link) => Some(ToolResultContent::Text(format!(
            "[resource link {} ({})]",
            link.uri, link.name
        ))),
        ContentBlock::Audio(a) => {
            Some(ToolResultContent::Text(format!("[audio: {}]", a.mime_type)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// Any structured content and text blocks: never the same JSON twice.
        #[test]
        fn fuzz_results_give_each_fact_once(
            structured in proptest::option::of(proptest::prop_oneof![
                proptest::strategy::Just(serde_json::json!({"content": "hello"})),
                "[a-z]{0,4}".prop_map(|t| serde_json::json!({"t": t})),
                proptest::num::i64::ANY.prop_map(|n| serde_json::json!(n)),
            ]),
            texts in proptest::collection::vec(proptest::prop_oneof![
                "[a-z{}\":]{0,10}",
                proptest::strategy::Just("{\"content\": \"hello\"}".to_owned()),
                proptest::strategy::Just("hello".to_owned()),
            ], 0..3),
        ) {
            let blocks: Vec<ContentBlock> = texts.iter().map(|t| ContentBlock::text(t.clone())).collect();
            let out = result_content(structured.clone(), blocks);
            if let Some(s) = &structured {
                let json_blocks = out.iter().filter(|c| matches!(c, ToolResultContent::Json(_))).count();
                let rendered = out.iter().filter(|c| matches!(c, ToolResultContent::Text(t) if serde_json::from_str::<Value>(t).is_ok_and(|v| &v == s))).count();
                proptest::prop_assert!(json_blocks + rendered <= texts.len().max(1));
                proptest::prop_assert!(json_blocks == 0 || rendered == 0, "{out:?}");
            }
        }
    }

    #[test]
    fn structured_content_and_its_text_reach_the_model_once() {
        let text = |t: &str| ContentBlock::text(t.to_owned());
        let structured = serde_json::json!({"content": "hello"});
        // A text rendering that says it differently: the text alone (the reported duplicate
        // was `{"content":"hello"}hello`).
        assert_eq!(
            result_content(Some(structured.clone()), vec![text("hello")]),
            vec![ToolResultContent::Text("hello".into())]
        );
        // The JSON of the structured content: the structured content alone.
        assert_eq!(
            result_content(
                Some(structured.clone()),
                vec![text("{ \"content\": \"hello\" }")]
            ),
            vec![ToolResultContent::Json(structured.clone())]
        );
        // No text: the structured content.
        assert_eq!(
            result_content(Some(structured.clone()), vec![]),
            vec![ToolResultContent::Json(structured)]
        );
        assert_eq!(
            result_content(None, vec![text("plain")]),
            vec![ToolResultContent::Text("plain".into())]
        );
    }

    #[test]
    fn provider_names_are_valid_and_unique_when_cut() {
        assert_eq!(provider_name(None, "get-sum"), "get-sum");
        assert_eq!(
            provider_name(Some("everything"), "files.read"),
            "everything_files_read"
        );
        let long_a = provider_name(None, &format!("{}a", "x".repeat(100)));
        let long_b = provider_name(None, &format!("{}b", "x".repeat(100)));
        assert!(long_a.len() <= 64 && is_valid_tool_name(&long_a));
        assert_ne!(long_a, long_b);
    }
}
