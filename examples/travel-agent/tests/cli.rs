//! The travel-agent binary end to end against the vLLM-format server.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

use agent_tests::MockVllm;

/// Runs the binary with one prompt against `server`, with no model name or key from the
/// environment.
async fn ask(server: &MockVllm, prompt: &'static str) -> std::process::Output {
    let base_url = server.base_url();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_travel-agent"))
            .arg(prompt)
            .env("OPENAI_BASE_URL", base_url)
            .env_remove("OPENAI_MODEL")
            .env_remove("OPENAI_API_KEY")
            .output()
    })
    .await
    .expect("join")
    .expect("runs")
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
