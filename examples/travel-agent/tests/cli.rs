//! The travel-agent binary end to end against the vLLM-format server.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

use agent_tests::MockVllm;

/// The binary against `server`, with no model name or key from the environment.
fn against(server: &MockVllm) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_travel-agent"));
    command
        .env("OPENAI_BASE_URL", server.base_url())
        .env_remove("OPENAI_MODEL")
        .env_remove("OPENAI_API_KEY");
    command
}

/// Runs `command` off the test's runtime.
async fn output(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("runs")
}

/// Runs the binary with one prompt against `server`, with no model name or key from the
/// environment.
async fn ask(server: &MockVllm, prompt: &'static str) -> std::process::Output {
    let mut command = against(server);
    command.arg(prompt);
    output(command).await
}

#[tokio::test]
async fn answers_with_a_tool_result_against_a_vllm_endpoint() {
    let server = MockVllm::start_bench("127.0.0.1:0").await.expect("server");
    let output = ask(&server, "Weather in Lisbon?").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("model `qwen3-8b`"),
        "model discovered from /v1/models: {stderr}"
    );
    assert!(stderr.contains("[tool] calling get_weather"), "{stderr}");
    assert!(
        stderr.contains("[tool] result: Weather in Lisbon today: sunny, high 21 °C"),
        "the built-in dataset answered: {stderr}"
    );
    assert!(stdout.starts_with("w0 w1 w2"), "{stdout}");
}

#[test]
fn without_an_endpoint_or_local_model_it_says_how_to_configure_one() {
    let output = Command::new(env!("CARGO_BIN_EXE_travel-agent"))
        .env_remove("OPENAI_BASE_URL")
        .env("AGENT_LOCAL_MODEL_SCRIPT", "/nonexistent/local-model.sh")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OPENAI_BASE_URL"), "{stderr}");
}

#[tokio::test]
async fn a_run_that_ends_without_an_answer_fails_with_a_clear_message() {
    use agent_tests::Turn;
    use serde_json::json;
    // A model that only ever repeats one tool call: the loop guard ends tool use, the final
    // answer asked for without tools is yet another tool call, so there is no answer.
    let lisbon = || Turn::tool_call("get_weather", json!({"city": "Lisbon"}));
    let server = MockVllm::start([lisbon(), lisbon(), lisbon(), lisbon(), lisbon()])
        .await
        .expect("server");
    let output = ask(&server, "Weather in Lisbon?").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: the agent stopped (tool_loop) without an answer"),
        "{stderr}"
    );
    assert_eq!(
        server.remaining(),
        0,
        "four tool turns and the final answer"
    );
    assert_eq!(
        stderr.matches("[tool] result: Weather in Lisbon").count(),
        4,
        "{stderr}"
    );
}

/// Runs the binary with one prompt on Bedrock at the loopback endpoint `url`, with `env` added.
async fn ask_bedrock(url: String, env: Vec<(&'static str, String)>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_travel-agent"));
        command
            .arg("Weather in Lisbon?")
            .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", url)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_PROFILE")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("MODEL_PROVIDER")
            .env_remove("BEDROCK_FALLBACK_MODEL_ID");
        for (k, v) in env {
            command.env(k, v);
        }
        command.output()
    })
    .await
    .expect("join")
    .expect("runs")
}

fn bedrock_script() -> Vec<agent_tests::bedrock::BedrockReply> {
    use agent_tests::bedrock::{BedrockReply, BedrockUsage};
    let usage = BedrockUsage {
        input: 10,
        output: 5,
        ..BedrockUsage::default()
    };
    vec![
        BedrockReply::tool_call(
            "tooluse_1",
            "get_weather",
            &serde_json::json!({"city": "Lisbon"}),
            usage,
        ),
        BedrockReply::text(&["Lisbon: sunny, ", "21 °C."], usage),
    ]
}

#[tokio::test]
async fn model_provider_bedrock_runs_the_agent_on_converse() {
    let bedrock = agent_tests::bedrock::LoopbackBedrock::start(bedrock_script())
        .await
        .unwrap();
    let output = ask_bedrock(
        bedrock.url(),
        vec![
            ("MODEL_PROVIDER", "bedrock".into()),
            ("BEDROCK_MODEL_ID", "amazon.nova-pro-v1:0".into()),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("`amazon.nova-pro-v1:0` on Amazon Bedrock"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[tool] result: Weather in Lisbon today: sunny, high 21 °C"),
        "{stderr}"
    );
    assert_eq!(stdout.trim(), "Lisbon: sunny, 21 °C.");
    let received = bedrock.received();
    assert_eq!(received.len(), 2);
    assert!(
        received
            .iter()
            .all(|r| r.signed && r.model == "amazon.nova-pro-v1:0")
    );
    assert!(
        received[0].body["system"][0]["text"]
            .as_str()
            .unwrap()
            .contains("travel assistant")
    );
}

#[tokio::test]
async fn an_unreachable_vllm_falls_back_to_bedrock() {
    let bedrock = agent_tests::bedrock::LoopbackBedrock::start(bedrock_script())
        .await
        .unwrap();
    // A port nothing listens on: the connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let output = ask_bedrock(
        bedrock.url(),
        vec![
            ("OPENAI_BASE_URL", dead),
            ("OPENAI_MODEL", "qwen3-8b".into()),
            ("BEDROCK_FALLBACK_MODEL_ID", "amazon.nova-lite-v1:0".into()),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("fallback: model `amazon.nova-lite-v1:0`"),
        "{stderr}"
    );
    assert_eq!(stdout.trim(), "Lisbon: sunny, 21 °C.");
    assert_eq!(bedrock.received().len(), 2);
}

#[test]
fn model_provider_bedrock_without_a_model_says_what_to_set() {
    let output = Command::new(env!("CARGO_BIN_EXE_travel-agent"))
        .arg("hi")
        .env("MODEL_PROVIDER", "bedrock")
        .env_remove("BEDROCK_MODEL_ID")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("BEDROCK_MODEL_ID"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_travel-agent"))
        .arg("hi")
        .env("MODEL_PROVIDER", "gemini")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("use openai"));
}

/// Runs `travel-agent eval` with `args` against `server`, with no telemetry or Langfuse.
async fn eval(server: &MockVllm, args: Vec<String>) -> std::process::Output {
    let mut command = against(server);
    command
        .arg("eval")
        .args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("LANGFUSE_HOST")
        .env_remove("LANGFUSE_BASE_URL");
    output(command).await
}

#[tokio::test]
async fn eval_prints_the_metrics_writes_the_report_and_gates_on_thresholds() {
    use agent_tests::Turn;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.jsonl");
    std::fs::write(
        &cases,
        concat!(
            r#"{"id": "lisbon", "prompt": "Weather in Lisbon?", "tags": ["weather"], "calls": [{"name": "get_weather", "args": {"city": "Lisbon"}}], "facts": ["sunny", "21"]}"#,
            "\n",
            r#"{"id": "hello", "prompt": "Hello!", "tags": ["no-tool"], "no_tools": true, "reference": "Hi! I plan trips."}"#,
            "\n"
        ),
    )
    .unwrap();
    let script = || {
        [
            Turn::tool_call("get_weather", json!({"city": "Lisbon"})),
            Turn::text("Sunny in Lisbon, 21 °C."),
            Turn::text("Hi! I plan trips."),
        ]
    };
    let server = MockVllm::start(script()).await.expect("server");
    let report = dir.path().join("report.json");
    let output = eval(
        &server,
        vec![
            "--cases".into(),
            cases.display().to_string(),
            "--report".into(),
            report.display().to_string(),
            "--threshold".into(),
            "tool_call_accuracy>=1".into(),
            "--threshold".into(),
            "exact_match>=1".into(),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    // Not a terminal: a line per case instead of a bar.
    assert!(
        stderr.contains("[1/2] PASS lisbon") && stderr.contains("[2/2] PASS hello"),
        "{stderr}"
    );
    for metric in [
        "tool_call_accuracy",
        "tool_call_f1",
        "exact_match",
        "latency_seconds",
        "per tag",
    ] {
        assert!(stdout.contains(metric), "{metric}: {stdout}");
    }
    assert!(
        stdout.contains("temperature provider default, seed none"),
        "{stdout}"
    );
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(written["cases"].as_array().unwrap().len(), 2);
    assert_eq!(
        written["summary"]["metrics"]["tool_call_accuracy"]["mean"],
        json!(1.0)
    );
    assert_eq!(written["cases"][1]["tool_calls"], json!([]));

    // The same run against a threshold it misses: exit status 1, and which one and by how much.
    let server = MockVllm::start(script()).await.expect("server");
    let output = eval(
        &server,
        vec![
            "--cases".into(),
            cases.display().to_string(),
            "--threshold".into(),
            "latency_seconds.max<=0".into(),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("thresholds missed: latency_seconds.max<=0: it is"),
        "{stderr}"
    );

    // A bad case: the file and line, before any model call.
    std::fs::write(
        &cases,
        "{\"id\": \"a\", \"prompt\": \"p\"}\n{\"id\": \"b\", \"promt\": \"p\"}\n",
    )
    .unwrap();
    let server = MockVllm::start([]).await.expect("server");
    let output = eval(&server, vec!["--cases".into(), cases.display().to_string()]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cases.jsonl:2: unknown field `promt`"),
        "{stderr}"
    );
    assert!(
        server
            .received()
            .iter()
            .all(|r| r.body.get("messages").is_none()),
        "no case ran"
    );
}
