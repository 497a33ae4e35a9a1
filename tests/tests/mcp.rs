//! MCP tools through agent-mcp against the reference server
//! `@modelcontextprotocol/server-everything` (npm, pinned; installed by `scripts/mcp-servers.sh`,
//! found through `MCP_EVERYTHING`), run over stdio as a child process.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_core::message::ToolResultContent;
use agent_core::prelude::*;
use agent_core::tool::{ProgressReporter, Tool, ToolContext};
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

    let out = find(&tools, "echo")
        .call(json!({"message": "still here"}), ctx())
        .await
        .expect("usable after a timeout");
    assert_eq!(out, ToolOutput::text("Echo: still here"));

    // Cancelled in flight: the cancel comes with the call's first progress report, which
    // proves the server is running it (not after a guessed delay). A client of its own,
    // since the one above gives up after 500 ms, before the first report.
    let client = everything().connect().await.expect("connect");
    let tools = client.tools().await.expect("tools");
    let long = find(&tools, "trigger-long-running-operation");
    let (reported, mut first_report) = tokio::sync::mpsc::unbounded_channel();
    let mut cancelled = ctx();
    cancelled.progress = ProgressReporter::new(
        "t1",
        Arc::new(move |p| {
            let _ = reported.send(p);
        }),
    );
    let token = cancelled.cancel.clone();
    tokio::spawn(async move {
        if first_report.recv().await.is_some() {
            token.cancel();
        }
    });
    let started = Instant::now();
    let err = long
        .call(json!({"duration": 10, "steps": 10}), cancelled)
        .await
        .expect_err("cancelled");
    assert!(err.message().contains("cancelled"), "{err}");
    // The first report comes after 1 s; uncancelled, the operation would run 10 s.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

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
    let result = server.last_message(1);
    assert!(result.contains("42"), "{result}");
}

#[tokio::test]
async fn progress_notifications_become_agent_events() {
    use futures::StreamExt as _;
    let client = everything().prefix("ev").connect().await.expect("connect");
    let server = MockVllm::start([
        Turn::tool_call(
            "ev_trigger-long-running-operation",
            json!({"duration": 1, "steps": 4}),
        ),
        Turn::text("Done."),
    ])
    .await
    .expect("server");
    let agent = Agent::builder()
        .model(provider(&server))
        .tools(client.tools().await.expect("tools"))
        .build()
        .expect("agent");
    let mut stream = agent.session("progress").stream("Run the long operation");
    let mut progress = Vec::new();
    let mut tool_use_id = None;
    while let Some(event) = stream.next().await {
        match event.expect("event") {
            AgentEvent::ToolProgress(p) => progress.push(p),
            AgentEvent::ToolResult { result } => tool_use_id = Some(result.tool_use_id),
            _ => {}
        }
    }
    let tool_use_id = tool_use_id.expect("a tool result");
    // Four notifications are sent; the last may race the result (rmcp handles them on their
    // own task), so at least three must have been delivered, in order, for this call.
    assert!(progress.len() >= 3, "{progress:?}");
    assert!(
        progress
            .iter()
            .all(|p| p.tool_use_id == tool_use_id && p.total == Some(4.0))
    );
    assert!(
        progress.windows(2).all(|w| w[0].progress < w[1].progress),
        "{progress:?}"
    );
}

#[tokio::test]
async fn a_crashed_server_fails_the_call_in_flight_and_is_respawned() {
    let client = everything()
        .call_timeout(Duration::from_secs(20))
        .connect()
        .await
        .expect("connect");
    let tools = client.tools().await.expect("tools");
    let first_pid = client.process_id().expect("a child process id");
    let long = find(&tools, "trigger-long-running-operation");
    // The server's first progress report proves the call is in flight: the kill waits for it,
    // not for a guessed delay.
    let (reported, mut first_report) = tokio::sync::mpsc::unbounded_channel();
    let mut call_ctx = ctx();
    call_ctx.progress = ProgressReporter::new(
        "t1",
        Arc::new(move |p| {
            let _ = reported.send(p);
        }),
    );
    let in_flight = tokio::spawn(async move {
        let started = Instant::now();
        let result = long
            .call(json!({"duration": 15, "steps": 3}), call_ctx)
            .await;
        (result, started.elapsed())
    });
    tokio::time::timeout(Duration::from_secs(20), first_report.recv())
        .await
        .expect("a progress report within 20 s")
        .expect("the call reported progress");
    let killed_at = Instant::now();
    // The server dies under the call (SIGKILL: no goodbye).
    kill9(first_pid);
    let (result, elapsed) = in_flight.await.expect("join");
    let err = result.expect_err("the call in flight fails");
    assert!(err.message().contains("connection closed"), "{err}");
    // Failed at the kill, not at the end of the 15 s operation or the 20 s call bound.
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "failed after {elapsed:?}"
    );

    // The next call respawns the server and works.
    let respawn = Instant::now();
    let out = find(&tools, "echo")
        .call(json!({"message": "back"}), ctx())
        .await
        .expect("works after a respawn");
    assert_eq!(out, ToolOutput::text("Echo: back"));
    println!(
        "in-flight call failed {elapsed:?} after it started (the kill came after its first progress report); respawn + call took {:?}",
        respawn.elapsed()
    );
    assert_eq!(client.connections(), 2);
    assert_ne!(client.process_id(), Some(first_pid));
    // Reads work on the new process too.
    assert!(!client.list_resources().await.expect("resources").is_empty());
}

#[tokio::test]
async fn a_server_that_stays_down_gives_a_bounded_clear_error() {
    let dir = tempfile::tempdir().expect("dir");
    let script = dir.path().join("server.sh");
    let entry = std::env::var("MCP_EVERYTHING").expect("MCP_EVERYTHING");
    // Runs the server once; later starts fail at once (the "binary" is gone).
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e {marker} ]; then exit 1; fi\ntouch {marker}\nexec node {entry} stdio\n",
            marker = dir.path().join("started").display()
        ),
    )
    .expect("script");
    let client = McpServer::stdio("flaky", "sh", [script.display().to_string()])
        .reconnect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect");
    let tools = client.tools().await.expect("tools");
    kill9(client.process_id().expect("pid"));
    // The first call may still find the dying connection; from then on the server cannot be
    // started again, and each call says so within the reconnect bound.
    let started = Instant::now();
    let mut last = String::new();
    for _ in 0..3 {
        let err = find(&tools, "echo")
            .call(json!({"message": "anyone?"}), ctx())
            .await
            .expect_err("cannot reconnect");
        last = err.message().to_owned();
        if last.contains("cannot reconnect") {
            break;
        }
    }
    assert!(last.contains("cannot reconnect"), "{last}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// Kills a server process the client started (SIGKILL: no goodbye).
fn kill9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn test_server(legacy: bool) -> McpServer {
    let args: Vec<&str> = if legacy { vec!["--legacy"] } else { vec![] };
    McpServer::stdio("dynamic", env!("CARGO_BIN_EXE_mcp-test-server"), args)
}

#[tokio::test]
async fn list_changed_refreshes_the_agents_tools_on_both_protocol_versions() {
    for (legacy, version) in [(true, "2025-11-25"), (false, "2026-07-28")] {
        let client = test_server(legacy).connect().await.expect("connect");
        assert_eq!(client.protocol_version().as_deref(), Some(version));
        let source = client.tool_source().await.expect("source");
        let server = MockVllm::start([
            Turn::tool_call("add_tool", json!({"name": "weather_v2"})),
            Turn::tool_call("weather_v2", json!({})),
            Turn::text("Done."),
        ])
        .await
        .expect("server");
        let agent = Agent::builder()
            .model(provider(&server))
            .tool_source(source.clone())
            .build()
            .expect("agent");
        let r = agent
            .session("dynamic")
            .invoke("Add a tool and use it")
            .await
            .expect("invoke");
        assert_eq!(r.text(), "Done.", "{version}");
        let offered = |i: usize| server.offered_tools(i);
        assert_eq!(offered(0), ["add_tool", "wait", "ask", "meta"], "{version}");
        assert_eq!(
            offered(1),
            ["add_tool", "wait", "ask", "meta", "weather_v2"],
            "{version}"
        );
        let answer = server.last_message(2);
        assert!(answer.contains("weather_v2 called"), "{version}: {answer}");
        assert_eq!(
            agent_core::tool::ToolSource::generation(&*source),
            1,
            "{version}"
        );
    }
}

#[tokio::test]
async fn timed_out_and_cancelled_calls_are_cancelled_on_the_server() {
    for legacy in [true, false] {
        let dir = tempfile::tempdir().expect("dir");
        let log = dir.path().join("server.log");
        let client = test_server(legacy)
            .env("MCP_TEST_SERVER_LOG", log.display().to_string())
            .tool_timeout("wait", Duration::from_millis(300))
            .connect()
            .await
            .expect("connect");
        let tools = client.tools().await.expect("tools");
        let wait = find(&tools, "wait");
        let err = wait
            .call(json!({"seconds": 30}), ctx())
            .await
            .expect_err("times out");
        assert!(
            err.message().contains("did not answer within 300 ms"),
            "{err}"
        );
        let cancelled = ctx();
        let token = cancelled.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            token.cancel();
        });
        let started = Instant::now();
        let err = wait
            .call(json!({"seconds": 30}), cancelled)
            .await
            .expect_err("cancelled");
        assert!(err.message().contains("was cancelled"), "{err}");
        // Far below the 30 s the call asked for, with room for a loaded CI machine.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // The server saw both cancellations.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = std::fs::read_to_string(&log).unwrap_or_default();
            if seen.lines().filter(|l| *l == "cancelled").count() == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "legacy={legacy}: server log {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = wait
            .call(json!({"seconds": 0.01}), ctx())
            .await
            .expect("usable afterwards");
        assert_eq!(out, ToolOutput::text("waited"));
    }
}

#[tokio::test]
async fn calls_carry_the_w3c_trace_context_in_meta() {
    use opentelemetry::trace::{TraceContextExt as _, Tracer as _, TracerProvider as _};
    let client = test_server(true).connect().await.expect("connect");
    let tools = client.tools().await.expect("tools");
    let meta = find(&tools, "meta");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let span = provider.tracer("test").start("invoke_agent");
    let cx = opentelemetry::Context::current_with_span(span);
    let sc = cx.span().span_context().clone();
    let out = opentelemetry::context::FutureExt::with_context(meta.call(json!({}), ctx()), cx)
        .await
        .expect("meta");
    let ToolResultContent::Text(text) = &out.content[0] else {
        panic!("{out:?}")
    };
    let seen: serde_json::Value = serde_json::from_str(text).expect("json");
    assert_eq!(
        seen["traceparent"],
        format!("00-{}-{}-01", sc.trace_id(), sc.span_id()),
        "{seen}"
    );
    // Without a span, no traceparent.
    let out = meta.call(json!({}), ctx()).await.expect("meta");
    let ToolResultContent::Text(text) = &out.content[0] else {
        panic!("{out:?}")
    };
    assert!(!text.contains("traceparent"), "{text}");
}

#[tokio::test]
async fn input_rounds_are_answered_by_the_handlers_without_resending_the_call() {
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("server.log");
    let client = test_server(false)
        .env("MCP_TEST_SERVER_LOG", log.display().to_string())
        .elicitation(Arc::new(Named))
        .connect()
        .await
        .expect("connect");
    assert_eq!(client.protocol_version().as_deref(), Some("2026-07-28"));
    let tools = client.tools().await.expect("tools");
    let out = find(&tools, "ask")
        .call(json!({}), ctx())
        .await
        .expect("ask");
    assert_eq!(out, ToolOutput::text("hello Ada"));
    // One first request, one with the answer and the request state: never sent twice.
    let seen = std::fs::read_to_string(&log).expect("log");
    assert_eq!(seen.lines().collect::<Vec<_>>(), ["ask -", "ask s1"]);
    // The same through the client's own call.
    let result = client.call_tool("ask", json!({})).await.expect("call");
    assert!(format!("{:?}", result.content).contains("hello Ada"));
    assert!(client.call_tool("ask", json!([1])).await.is_err());
}

/// Answers elicitation with the name "Ada".
struct Named;

#[agent_core::async_trait]
impl agent_mcp::ElicitationHandler for Named {
    async fn elicit(
        &self,
        _request: agent_mcp::rmcp::model::ElicitRequestParams,
    ) -> Result<agent_mcp::rmcp::model::ElicitResult, agent_mcp::HandlerError> {
        use agent_mcp::rmcp::model::{ElicitResult, ElicitationAction};
        Ok(ElicitResult::new(ElicitationAction::Accept).with_content(json!({"name": "Ada"})))
    }
}

#[tokio::test]
async fn bad_configuration_is_refused_before_anything_starts() {
    for (server, what) in [
        (
            McpServer::stdio("s", "true", Vec::<String>::new()).bearer_token("t"),
            "bearer_token",
        ),
        (
            McpServer::http("h", "http://127.0.0.1:9/mcp").env("A", "b"),
            "env",
        ),
        (
            McpServer::stdio("s", "true", Vec::<String>::new()).prefix("bad prefix"),
            "prefix",
        ),
        (McpServer::http("h", "not a url"), "invalid MCP server URL"),
    ] {
        let err = server.connect().await.expect_err("refused");
        assert!(matches!(err, McpError::Config(_)), "{err:?}");
        assert!(err.to_string().contains(what), "{err}");
    }
}
