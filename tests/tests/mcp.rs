//! MCP tools through agent-mcp against the reference server
//! `@modelcontextprotocol/server-everything` (npm, pinned; installed by `scripts/mcp-servers.sh`,
//! found through `MCP_EVERYTHING`), run over stdio as a child process.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::message::ToolResultContent;
use agent_core::prelude::*;
use agent_core::tool::{AgentState, Tool, ToolContext};
use agent_mcp::{McpError, McpServer};
use agent_tests::{MockVllm, Turn, provider};
use serde_json::json;

fn everything() -> McpServer {
    let entry = std::env::var("MCP_EVERYTHING").unwrap_or_else(|_| {
        panic!("MCP_EVERYTHING is not set: run scripts/test.sh, or export MCP_EVERYTHING=$(scripts/mcp-servers.sh)")
    });
    McpServer::stdio("everything", "node", [entry, "stdio".to_owned()])
}

fn ctx() -> ToolContext {
    ToolContext::new("t1", "s")
}

fn find(tools: &[Arc<dyn Tool>], name: &str) -> Arc<dyn Tool> {
    tools
        .iter()
        .find(|t| t.spec().name == name)
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no tool {name} in {:?}",
                tools.iter().map(|t| t.spec().name).collect::<Vec<_>>()
            )
        })
}

#[tokio::test]
async fn tools_are_adapted_and_called() {
    let client = everything()
        .prefix("ev")
        .deny(["get-env"])
        .connect()
        .await
        .expect("connect");
    // server-everything predates 2026-07-28: negotiation falls back to initialize.
    assert_eq!(client.protocol_version().as_deref(), Some("2025-11-25"));
    let tools = client.tools().await.expect("tools");
    let names: Vec<String> = tools.iter().map(|t| t.spec().name).collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("ev_") && agent_core::tool::is_valid_tool_name(n)),
        "{names:?}"
    );
    assert!(
        !names.contains(&"ev_get-env".to_owned()),
        "denied tools are left out"
    );
    let echo = find(&tools, "ev_echo");
    assert!(
        echo.spec().input_schema["properties"]["message"].is_object(),
        "input schema kept"
    );
    assert!(!echo.spec().description.is_empty());

    let out = echo
        .call(json!({"message": "hello"}), ctx())
        .await
        .expect("echo");
    assert_eq!(out, ToolOutput::text("Echo: hello"));
    let out = find(&tools, "ev_get-sum")
        .call(json!({"a": 2, "b": 3}), ctx())
        .await
        .expect("sum");
    assert!(
        matches!(&out.content[0], ToolResultContent::Text(t) if t.contains('5')),
        "{out:?}"
    );
    let out = find(&tools, "ev_get-structured-content")
        .call(json!({"location": "Chicago"}), ctx())
        .await
        .expect("structured");
    match &out.content[0] {
        ToolResultContent::Json(v) => assert!(v.get("temperature").is_some(), "{v}"),
        other => panic!("structured content first: {other:?}"),
    }
    let out = find(&tools, "ev_get-tiny-image")
        .call(json!({}), ctx())
        .await
        .expect("image");
    assert!(
        out.content
            .iter()
            .any(|c| matches!(c, ToolResultContent::Image(_))),
        "{out:?}"
    );
    let allowed = everything()
        .allow(["echo"])
        .connect()
        .await
        .expect("connect")
        .tools()
        .await
        .expect("tools");
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0].spec().name, "echo");
}

#[tokio::test]
async fn calls_are_bounded_and_cancellable_and_the_connection_survives() {
    let client = everything()
        .tool_timeout("trigger-long-running-operation", Duration::from_millis(500))
        .connect()
        .await
        .expect("connect");
    let tools = client.tools().await.expect("tools");
    let long = find(&tools, "trigger-long-running-operation");
    let started = Instant::now();
    let err = long
        .call(json!({"duration": 10, "steps": 5}), ctx())
        .await
        .expect_err("times out");
    assert!(
        err.message().contains("did not answer within 500 ms"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    let cancelled = ctx();
    let token = cancelled.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel();
    });
    let started = Instant::now();
    let err = long
        .call(json!({"duration": 10, "steps": 5}), cancelled)
        .await
        .expect_err("cancelled");
    assert!(err.message().contains("cancelled"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let out = find(&tools, "echo")
        .call(json!({"message": "still here"}), ctx())
        .await
        .expect("usable after cancel");
    assert_eq!(out, ToolOutput::text("Echo: still here"));
}

#[tokio::test]
async fn servers_that_cannot_start_fail_clearly_and_in_bounded_time() {
    for (server, what) in [
        (
            McpServer::stdio("missing", "/nonexistent/mcp-server", Vec::<String>::new()),
            "cannot run",
        ),
        (
            McpServer::stdio("exits", "false", Vec::<String>::new()),
            "did not start",
        ),
        (
            McpServer::stdio("silent", "sleep", ["30"]).startup_timeout(Duration::from_millis(800)),
            "within 800 ms",
        ),
    ] {
        let started = Instant::now();
        let err = server.connect().await.expect_err("must fail");
        assert!(matches!(err, McpError::Startup { .. }), "{err:?}");
        assert!(err.to_string().contains(what), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn an_agent_uses_an_mcp_tool_end_to_end() {
    let client = everything()
        .prefix("everything")
        .connect()
        .await
        .expect("connect");
    let server = MockVllm::start([
        Turn::tool_call("everything_get-sum", json!({"a": 20, "b": 22})),
        Turn::text("It is 42."),
    ])
    .await
    .expect("server");
    let agent = Agent::builder()
        .model(provider(&server))
        .tools(client.tools().await.expect("tools"))
        .build()
        .expect("agent");
    let r = agent
        .session("mcp")
        .invoke("Add 20 and 22")
        .await
        .expect("invoke");
    assert_eq!(r.text(), "It is 42.");
    let sent = &server.received()[0].body["tools"];
    assert!(
        sent.as_array()
            .unwrap()
            .iter()
            .any(|t| t["function"]["name"] == "everything_get-sum")
    );
    let result = server.received()[1].body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(result.contains("42"), "{result}");
}
