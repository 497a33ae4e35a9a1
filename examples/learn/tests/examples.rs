//! Each example binary run as a user would run it, against the suite's real local servers: the
//! vLLM-format model server, ministack's S3, the npm reference MCP server and an OTLP receiver.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::{Command, Output};

use agent_tests::{MockVllm, OtlpReceiver, Turn};
use serde_json::json;

/// Runs example `bin` with `args` against `server`, with `env` on top.
async fn run(bin: &'static str, server: &MockVllm, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin);
    command
        .args(args)
        .env("OPENAI_BASE_URL", server.base_url())
        .env("OPENAI_MODEL", "qwen3-8b")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("the example runs");
    assert!(
        output.status.success(),
        "{bin} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn tool_macro_runs_a_function_tool_and_a_stateful_impl_tool() {
    let server = MockVllm::start([
        Turn::tool_call("hotel_price", json!({"city": "Lisbon"})),
        Turn::tool_call(
            "convert_currency",
            json!({"amount": 360.0, "from": "EUR", "to": "USD"}),
        ),
        Turn::text("Three nights cost about 388.80 USD."),
    ])
    .await
    .expect("server");
    let out = run(
        env!("CARGO_BIN_EXE_tool-macro"),
        &server,
        &["3 nights in Lisbon?"],
        &[],
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(stderr.contains("[tool] hotel_price"), "{stderr}");
    assert!(stderr.contains("[tool] convert_currency"), "{stderr}");
    assert_eq!(
        text(&out.stdout).trim(),
        "Three nights cost about 388.80 USD."
    );
    // All three tools offered; the tools' real results went back to the model.
    let mut offered = server.offered_tools(0);
    offered.sort();
    assert_eq!(offered, ["convert_currency", "hotel_cities", "hotel_price"]);
    assert_eq!(server.last_message(1), "120.0");
    assert_eq!(server.last_message(2), "360 EUR = 388.80 USD");
}

#[tokio::test]
async fn structured_output_prints_the_typed_plan() {
    // The model answers as it would, then gives that answer the schema's form.
    let server = MockVllm::start([
        Turn::text("Two nights in Porto: walk the Ribeira, then visit the port cellars."),
        // Under the schema the server enforces: the output tool's call.
        Turn::text(
            json!({"tool_call": {"name": "TripPlan", "arguments": {
                "city": "Porto", "nights": 2, "days": ["Ribeira walk", "Port cellars"]
            }}})
            .to_string(),
        ),
    ])
    .await
    .expect("server");
    let out = run(
        env!("CARGO_BIN_EXE_structured-output"),
        &server,
        &["Two nights in Porto"],
        &[],
    )
    .await;
    assert_eq!(
        text(&out.stdout),
        "Porto for 2 nights\n  day 1: Ribeira walk\n  day 2: Port cellars\n"
    );
    // The schema derived from the type went to the server with the second request.
    let body = &server.received()[1].body;
    let schema = &body["response_format"]["json_schema"]["schema"];
    let plan = &schema["properties"]["tool_call"]["properties"]["arguments"];
    assert_eq!(plan["properties"]["nights"]["minimum"], 1, "{body}");
    assert_eq!(
        plan["required"],
        json!(["city", "nights", "days"]),
        "{body}"
    );
}

#[tokio::test]
async fn s3_sessions_remember_the_first_run_in_the_second() {
    let (s3, _) = agent_tests::aws_clients().await;
    let bucket = format!("learn-{:x}", std::process::id());
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    let server = MockVllm::start([Turn::text("Hello Ada."), Turn::text("You are Ada.")])
        .await
        .expect("server");
    let endpoint = agent_tests::aws_endpoint();
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let bin = env!("CARGO_BIN_EXE_s3-sessions");
    run(bin, &server, &[&bucket, "ada", "My name is Ada."], &env).await;
    let out = run(bin, &server, &[&bucket, "ada", "Who am I?"], &env).await;
    assert_eq!(text(&out.stdout).trim(), "You are Ada.");
    assert!(text(&out.stderr).contains("[session] 4 messages stored"));
    // The second process sent the first exchange back to the model, read from S3.
    let history = server.received()[1].body["messages"].to_string();
    assert!(
        history.contains("My name is Ada.") && history.contains("Hello Ada."),
        "{history}"
    );
}

#[tokio::test]
async fn mcp_tools_calls_the_reference_servers_tool() {
    let entry = std::env::var("MCP_EVERYTHING").unwrap_or_else(|_| {
        panic!("MCP_EVERYTHING is not set: run scripts/test.sh, or export MCP_EVERYTHING=$(scripts/mcp-servers.sh everything)")
    });
    let server = MockVllm::start([
        Turn::tool_call("mcp_get-sum", json!({"a": 2, "b": 40})),
        Turn::text("The sum is 42."),
    ])
    .await
    .expect("server");
    let out = run(
        env!("CARGO_BIN_EXE_mcp-tools"),
        &server,
        &["Add 2 and 40.", "node", &entry, "stdio"],
        &[],
    )
    .await;
    assert!(text(&out.stderr).contains("[mcp] offers mcp_get-sum"));
    assert_eq!(text(&out.stdout).trim(), "The sum is 42.");
    // The server computed it.
    assert!(
        server.last_message(1).contains("42"),
        "{}",
        server.last_message(1)
    );
}

#[tokio::test]
async fn telemetry_exports_the_runs_spans_to_a_collector() {
    let receiver = OtlpReceiver::start();
    let server = MockVllm::start([
        Turn::tool_call("utc_offset", json!({"city": "Lisbon"})),
        Turn::text("Lisbon is on UTC+0."),
    ])
    .await
    .expect("server");
    let out = run(
        env!("CARGO_BIN_EXE_telemetry"),
        &server,
        &["Lisbon's time zone?"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "learn"),
        ],
    )
    .await;
    assert_eq!(text(&out.stdout).trim(), "Lisbon is on UTC+0.");
    let received = receiver.received.lock().unwrap();
    let names: Vec<String> = received
        .traces
        .iter()
        .flat_map(|(_, r)| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.name.clone())
        .collect();
    for expected in [
        "invoke_agent learn-telemetry",
        "chat qwen3-8b",
        "execute_tool utc_offset",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
}
