//! Python Strands Agents (from PyPI, `scripts/strands-python.sh`, found through
//! `AGENT_STRANDS_PYTHON`) reads sessions this runtime wrote, on a file store: an interrupted
//! run, which it resumes with an `interruptResponse` (its own tool gets the answer, the other
//! call's recorded result is reused), and a conversation the summarising manager shortened.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use agent_core::conversation::{SUMMARY_SYSTEM_PROMPT, Summarizing};
use agent_core::prelude::*;
use agent_memory::FileSessionStore;
use agent_tests::{Fault, MockVllm, Turn, fast_retry, provider};
use serde_json::json;

fn python() -> String {
    std::env::var("AGENT_STRANDS_PYTHON").unwrap_or_else(|_| {
        panic!(
            "AGENT_STRANDS_PYTHON is not set: run scripts/test.sh, or export \
             AGENT_STRANDS_PYTHON=$(scripts/strands-python.sh)"
        )
    })
}

fn tool(name: &'static str, f: fn(&str, &ToolContext) -> Result<String, ToolError>) -> FnTool {
    FnTool::new(
        name,
        "A test tool.",
        json!({"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]}),
        move |input, ctx| async move {
            f(input["arg"].as_str().unwrap_or_default(), &ctx).map(ToolOutput::text)
        },
    )
}

#[tokio::test]
async fn python_strands_resumes_our_interrupted_run_and_reads_our_summary() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let store = FileSessionStore::new(dir.path());

    // An interrupted run: `lookup` answers, `confirm_book` asks a person.
    let server = MockVllm::start([Turn::tool_call("lookup", json!({"arg": "flights"}))
        .and_tool_call("confirm_book", json!({"arg": "TA999"}))])
    .await
    .unwrap();
    let agent = Agent::builder()
        .model(provider(&server))
        .tool(tool("lookup", |arg, _| {
            Ok(format!("lookup result for {arg}"))
        }))
        .tool(tool("confirm_book", |arg, ctx| {
            let answer = ctx.interrupt("confirm_booking", json!({"arg": arg}))?;
            Ok(format!("answered {answer}"))
        }))
        .session_store(store.clone())
        .build()
        .unwrap();
    let stopped = agent
        .session("interrupted")
        .invoke("Book it")
        .await
        .unwrap();
    assert_eq!(stopped.stop_reason, StopReason::Interrupted);

    // A conversation shortened by a summary, on an overflow.
    let server = MockVllm::start([
        Turn::text("Answer 0."),
        Turn::text("Answer 1."),
        Turn::fault(Fault::ContextOverflow { legacy: false }),
        Turn::text("- The user asked a first question; it was answered."),
        Turn::text("Answer 2."),
    ])
    .await
    .unwrap();
    let agent = Agent::builder()
        .model(provider(&server))
        .retry(fast_retry())
        .conversation_manager(Summarizing::new().preserve_recent(1))
        .session_store(store.clone())
        .build()
        .unwrap();
    for i in 0..3 {
        agent
            .session("summarized")
            .invoke(format!("Question {i}"))
            .await
            .unwrap();
    }
    assert!(
        server
            .received()
            .iter()
            .any(|r| r.body["messages"][0]["content"] == SUMMARY_SYSTEM_PROMPT)
    );

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/python/strands_reads_our_sessions.py"
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(dir.path())
            .output()
    })
    .await
    .unwrap()
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "interrupted: activated=True questions=['confirm_booking'] pending=True messages=2",
        "resumed: stop=end_turn tool_got=[True]",
        "results_to_model=['lookup result for flights', 'booked TA999']",
        "summarized: role=user first='- The user asked a first question; it was answered.'",
        "summarized: next='Question 1'",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
}
