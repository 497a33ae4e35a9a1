//! OTLP/HTTP export end to end: `telemetry::otlp::init` aimed at a loopback receiver that decodes
//! the real protobuf, then the span tree and attributes of an agent run that calls a local tool,
//! and the metrics, as a collector (or Langfuse) receives them.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;

use agent_core::prelude::*;
use agent_core::telemetry::otlp::{self, OtlpConfig};
use agent_tests::{MockVllm, OtlpReceiver, Turn, provider};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;

/// Current weather for a city.
#[tool]
fn get_weather(city: String) -> String {
    format!("sunny in {city}")
}

fn string_attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            AnyValue::BoolValue(b) => Some(b.to_string()),
            AnyValue::DoubleValue(d) => Some(d.to_string()),
            AnyValue::ArrayValue(a) => Some(format!(
                "{:?}",
                a.values
                    .iter()
                    .map(|v| format!("{:?}", v.value))
                    .collect::<Vec<_>>()
            )),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_the_span_tree_and_metrics_over_otlp_http() {
    let OtlpReceiver { endpoint, received } = OtlpReceiver::start();
    let mut vars = HashMap::new();
    vars.insert("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone());
    vars.insert(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "Authorization=Basic%20cGstbGY6c2stbGY=".to_owned(),
    );
    vars.insert("OTEL_SERVICE_NAME", "travel-agent".to_owned());
    let config = OtlpConfig::from_lookup(|k| vars.get(k).cloned()).expect("config");
    let guard = otlp::init(config).expect("init");
    assert!(guard.is_enabled());

    let entry = std::env::var("MCP_EVERYTHING")
        .unwrap_or_else(|_| panic!("MCP_EVERYTHING is not set: run scripts/test.sh, or export MCP_EVERYTHING=$(scripts/mcp-servers.sh)"));
    let mcp = agent_mcp::McpServer::stdio("everything", "node", [entry, "stdio".to_owned()])
        .allow(["echo"])
        .connect()
        .await
        .expect("mcp");
    let server = MockVllm::start([
        Turn::tool_call("get_weather", json!({"city": "Lisbon"}))
            .and_tool_call("echo", json!({"message": "hi"}))
            .with_usage(100, 20),
        Turn::text("Sunny.").with_usage(150, 12),
    ])
    .await
    .expect("server");
    // No .telemetry(..): agents built after init record to the installed providers.
    let agent = Agent::builder()
        .name("travel")
        .model(provider(&server))
        .tool(get_weather)
        .tools(mcp.tools().await.expect("mcp tools"))
        .build()
        .expect("agent");
    agent
        .session("sess-otlp")
        .invoke("Lisbon?")
        .await
        .expect("invoke");
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .expect("join")
        .expect("shutdown flushes");

    let received = received.lock().unwrap();
    assert!(!received.traces.is_empty(), "no trace export arrived");
    let (headers, _) = &received.traces[0];
    assert_eq!(headers["authorization"], "Basic cGstbGY6c2stbGY=");
    assert_eq!(headers["content-type"], "application/x-protobuf");
    let mut spans = Vec::new();
    for (_, request) in &received.traces {
        for rs in &request.resource_spans {
            let resource = rs.resource.as_ref().expect("resource");
            let service = resource
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .expect("service.name");
            assert_eq!(
                service.value.as_ref().and_then(|v| v.value.clone()),
                Some(AnyValue::StringValue("travel-agent".into()))
            );
            for ss in &rs.scope_spans {
                assert_eq!(
                    ss.scope.as_ref().map(|s| s.name.as_str()),
                    Some("agent-runtime")
                );
                spans.extend(ss.spans.iter().cloned());
            }
        }
    }
    let by_name = |n: &str| {
        spans
            .iter()
            .filter(|s| s.name == n)
            .cloned()
            .collect::<Vec<_>>()
    };
    let invoke = by_name("invoke_agent travel").pop().expect("invoke span");
    let chats = by_name("chat qwen3-8b");
    let tool = by_name("execute_tool get_weather")
        .pop()
        .expect("tool span");
    assert_eq!(chats.len(), 2);
    // Kinds as on the wire: 1 INTERNAL, 3 CLIENT.
    assert_eq!(invoke.kind, 1);
    assert_eq!(tool.kind, 1);
    assert!(chats.iter().all(|c| c.kind == 3));
    assert!(invoke.parent_span_id.is_empty(), "invoke_agent is the root");
    for child in chats.iter().chain([&tool]) {
        assert_eq!(child.parent_span_id, invoke.span_id);
        assert_eq!(child.trace_id, invoke.trace_id);
    }
    assert_eq!(
        string_attr(&invoke, "gen_ai.conversation.id").as_deref(),
        Some("sess-otlp")
    );
    assert_eq!(
        string_attr(&invoke, "gen_ai.usage.input_tokens").as_deref(),
        Some("250")
    );
    assert_eq!(
        string_attr(&chats[0], "gen_ai.usage.output_tokens").as_deref(),
        Some("20")
    );
    assert_eq!(
        string_attr(&chats[0], "gen_ai.request.model").as_deref(),
        Some("qwen3-8b")
    );
    assert_eq!(
        string_attr(&chats[0], "server.address").as_deref(),
        Some("127.0.0.1")
    );
    let finish = string_attr(&chats[0], "gen_ai.response.finish_reasons").expect("finish");
    assert!(
        finish.contains("tool_call") && !finish.contains("tool_calls"),
        "the conventions' value, not the server's: {finish}"
    );
    assert_eq!(
        string_attr(&tool, "gen_ai.tool.name").as_deref(),
        Some("get_weather")
    );
    let mcp_tool = by_name("execute_tool echo")
        .pop()
        .expect("the MCP tool's span");
    assert_eq!(mcp_tool.parent_span_id, invoke.span_id);
    assert_eq!(mcp_tool.kind, 1);
    assert_eq!(
        string_attr(&mcp_tool, "mcp.method.name").as_deref(),
        Some("tools/call")
    );
    assert_eq!(
        string_attr(&mcp_tool, "network.transport").as_deref(),
        Some("pipe")
    );
    assert!(string_attr(&mcp_tool, "mcp.protocol.version").is_some());
    assert!(
        string_attr(&tool, "gen_ai.tool.call.id")
            .expect("id")
            .starts_with("chatcmpl-tool-")
    );

    let metric_names: Vec<String> = received
        .metrics
        .iter()
        .flat_map(|(_, r)| r.resource_metrics.iter())
        .flat_map(|rm| rm.scope_metrics.iter())
        .flat_map(|sm| sm.metrics.iter().map(|m| m.name.clone()))
        .collect();
    for name in [
        "gen_ai.client.token.usage",
        "gen_ai.client.operation.duration",
        "agent.tool.calls",
    ] {
        assert!(
            metric_names.iter().any(|n| n == name),
            "{name} not exported: {metric_names:?}"
        );
    }
}
