//! A small MCP server (rmcp, stdio) for the tests of what server-everything cannot show: a
//! tool list that changes while a client is connected. Tools: `add_tool {name}` registers a
//! tool `name` (answering "`name` called") and sends a tool-list-changed notification before it
//! answers. `ask {}` (2026-07-28) asks for the user's name through an `input_required` round
//! (SEP-2322) and answers "hello `<name>`"; it logs `ask <requestState>` per request. `meta {}` answers the request's `_meta` as JSON text. `wait {seconds}` waits, and when the client cancels the call (`notifications/cancelled`)
//! appends `cancelled` to the file named by `MCP_TEST_SERVER_LOG`. `--legacy` limits it to protocol 2025-11-25 (notifications on the session);
//! otherwise it speaks 2026-07-28 too (notifications on `subscriptions/listen`).

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProtocolVersion, ServerCapabilities, ServerConfig,
    Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, ServiceExt};
use serde_json::json;

#[derive(Clone)]
struct TestServer {
    legacy: bool,
    added: Arc<Mutex<Vec<String>>>,
}

fn schema(value: serde_json::Value) -> Arc<serde_json::Map<String, serde_json::Value>> {
    Arc::new(value.as_object().cloned().unwrap_or_default())
}

impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("agent-tests-mcp", "0.1.0"))
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        if self.legacy {
            Cow::Owned(vec![ProtocolVersion::V_2025_11_25])
        } else {
            Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS)
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools = vec![Tool::new(
            "add_tool",
            "Registers a tool with the given name.",
            schema(json!({
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"]
            })),
        )];
        tools.push(Tool::new(
            "wait",
            "Waits for the given number of seconds.",
            schema(json!({
                "type": "object",
                "properties": {"seconds": {"type": "number"}},
                "required": ["seconds"]
            })),
        ));
        tools.push(Tool::new(
            "ask",
            "Greets the user by the name it asks for.",
            schema(json!({"type": "object", "properties": {}})),
        ));
        tools.push(Tool::new(
            "meta",
            "Answers the request's _meta.",
            schema(json!({"type": "object", "properties": {}})),
        ));
        let added = self.added.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for name in added {
            tools.push(Tool::new(
                name,
                "A tool added at run time.",
                schema(json!({"type": "object", "properties": {}})),
            ));
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name == "add_tool" {
            let name = request
                .arguments
                .as_ref()
                .and_then(|a| a.get("name"))
                .and_then(|n| n.as_str())
                .ok_or_else(|| ErrorData::invalid_params("name is required", None))?
                .to_owned();
            self.added
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(name.clone());
            if let Err(e) = context.peer.notify_tool_list_changed().await {
                eprintln!("cannot notify: {e}");
            }
            // Let the notification reach the client before the answer does.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Ok(CallToolResponse::Complete(CallToolResult::success(vec![
                ContentBlock::text(format!("added {name}")),
            ])));
        }
        if request.name == "ask" {
            log(&format!(
                "ask {}",
                request.request_state.as_deref().unwrap_or("-")
            ));
            let answered = request
                .input_responses
                .as_ref()
                .and_then(|r| r.get("name"))
                .and_then(|r| r.pointer("/content/name"))
                .and_then(|n| n.as_str());
            if let (Some(name), Some("s1")) = (answered, request.request_state.as_deref()) {
                return Ok(CallToolResponse::Complete(CallToolResult::success(vec![
                    ContentBlock::text(format!("hello {name}")),
                ])));
            }
            let ask = serde_json::from_value(json!({
                "resultType": "input_required",
                "inputRequests": {"name": {
                    "method": "elicitation/create",
                    "params": {
                        "mode": "form",
                        "message": "What is your name?",
                        "requestedSchema": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}},
                            "required": ["name"]
                        }
                    }
                }},
                "requestState": "s1"
            }))
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
            return Ok(CallToolResponse::InputRequired(ask));
        }
        if request.name == "meta" {
            let meta = serde_json::to_string(&context.meta).unwrap_or_default();
            return Ok(CallToolResponse::Complete(CallToolResult::success(vec![
                ContentBlock::text(meta),
            ])));
        }
        if request.name == "wait" {
            let seconds = request
                .arguments
                .as_ref()
                .and_then(|a| a.get("seconds"))
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(1.0);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs_f64(seconds)) => {}
                () = context.ct.cancelled() => {
                    log("cancelled");
                    return Err(ErrorData::internal_error("cancelled", None));
                }
            }
            return Ok(CallToolResponse::Complete(CallToolResult::success(vec![
                ContentBlock::text("waited"),
            ])));
        }
        let known = self
            .added
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&request.name.to_string());
        if known {
            Ok(CallToolResponse::Complete(CallToolResult::success(vec![
                ContentBlock::text(format!("{} called", request.name)),
            ])))
        } else {
            Err(ErrorData::invalid_params(
                format!("unknown tool {}", request.name),
                None,
            ))
        }
    }
}

/// Appends a line to the file named by `MCP_TEST_SERVER_LOG`, if set.
fn log(line: &str) {
    use std::io::Write as _;
    if let Ok(path) = std::env::var("MCP_TEST_SERVER_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = TestServer {
        legacy: std::env::args().any(|a| a == "--legacy"),
        added: Arc::default(),
    };
    server
        .serve(rmcp::transport::stdio())
        .await?
        .waiting()
        .await?;
    Ok(())
}
