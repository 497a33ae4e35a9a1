//! The summarising conversation manager against the vLLM-format server: proactively, before the
//! estimated input passes its threshold, and on a context overflow; tool calls stay with their
//! results, the full history stays stored, and the summary is kept with the session.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use agent_core::conversation::{SUMMARY_INTRO, SUMMARY_SYSTEM_PROMPT, Summarizing};
use agent_core::prelude::*;
use agent_core::session::{InMemorySessionStore, SessionKey, SessionStore};
use agent_tests::{Fault, MockVllm, Turn, fast_retry, provider};
use serde_json::{Value, json};

/// Current weather for a city.
#[tool]
fn get_weather(city: String) -> Value {
    json!({"city": city, "forecast": "sunny", "details": "x".repeat(400)})
}

fn agent(server: &MockVllm, store: &InMemorySessionStore, manager: Summarizing) -> Agent {
    Agent::builder()
        .model(provider(server))
        .system_prompt("You plan trips.")
        .tool(get_weather)
        .retry(fast_retry())
        .session_store(store.clone())
        .conversation_manager(manager)
        .build()
        .unwrap()
}

/// Every `tool` message of a request follows the assistant message that called it, and the
/// conversation opens with a user message.
fn assert_pairs_intact(body: &Value) {
    let messages = body["messages"].as_array().unwrap();
    let conversation: Vec<&Value> = messages.iter().filter(|m| m["role"] != "system").collect();
    assert_eq!(conversation[0]["role"], "user", "{body}");
    let mut open: Vec<String> = Vec::new();
    for m in conversation {
        match m["role"].as_str().unwrap() {
            "assistant" => {
                open = m["tool_calls"]
                    .as_array()
                    .map(|calls| {
                        calls
                            .iter()
                            .map(|c| c["id"].as_str().unwrap().to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
            }
            "tool" => {
                let id = m["tool_call_id"].as_str().unwrap();
                assert!(
                    open.iter().any(|o| o == id),
                    "orphan tool result {id}: {body}"
                );
            }
            _ => {}
        }
    }
}

fn is_summary_request(body: &Value) -> bool {
    body["messages"][0]["content"] == SUMMARY_SYSTEM_PROMPT
}

#[tokio::test]
async fn summarizes_before_the_context_fills_keeping_pairs_and_the_full_history() {
    // Three invocations of prompt -> tool -> answer, well under the budget (700 of 1,000
    // tokens: the history's estimate, then the server's reported counts).
    let mut script = Vec::new();
    for i in 0..3 {
        script.push(Turn::tool_call(
            "get_weather",
            json!({"city": format!("City{i}")}),
        ));
        script.push(Turn::text(format!("Answer {i}.")));
    }
    // The fourth: its first call reports 800 input tokens, so the next call would pass the
    // budget: the manager asks for a summary first.
    script.push(Turn::tool_call("get_weather", json!({"city": "City3"})).with_usage(800, 15));
    script.push(Turn::text("- The user asked about City0: sunny."));
    script.push(Turn::text("Answer 3."));
    let server = MockVllm::start(script).await.unwrap();
    let store = InMemorySessionStore::new();
    let manager = Summarizing::new()
        .context_window(1000)
        .threshold(0.7)
        .preserve_recent(4);
    let agent = agent(&server, &store, manager);
    let session = agent.session("long");
    for i in 0..3 {
        let r = session
            .invoke(format!("Weather in City{i}?"))
            .await
            .unwrap();
        assert_eq!(r.text(), format!("Answer {i}."));
    }
    let summaries_so_far = server
        .received()
        .iter()
        .filter(|r| is_summary_request(&r.body))
        .count();
    assert_eq!(summaries_so_far, 0);
    let r = session.invoke("Weather in City3?").await.unwrap();
    assert_eq!(r.text(), "Answer 3.");
    assert_eq!(server.remaining(), 0);
    let received = server.received();
    let summary_requests: Vec<&Value> = received
        .iter()
        .map(|r| &r.body)
        .filter(|b| is_summary_request(b))
        .collect();
    assert_eq!(summary_requests.len(), 1, "one summary");
    let asked = &summary_requests[0];
    assert!(
        asked.get("tools").is_none(),
        "the summariser is offered no tools: {asked}"
    );
    let transcript = asked["messages"][1]["content"].as_str().unwrap();
    assert!(transcript.contains("Weather in City0?"), "{transcript}");
    assert!(
        !transcript.contains("City1"),
        "only the oldest part: {transcript}"
    );
    // After it, the chat requests carry the summary with their first prompt, and every tool
    // result follows its call.
    let after: Vec<&Value> = received
        .iter()
        .map(|r| &r.body)
        .skip_while(|b| !is_summary_request(b))
        .filter(|b| !is_summary_request(b))
        .collect();
    assert_eq!(after.len(), 1);
    for body in &after {
        assert_pairs_intact(body);
        let first_user = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["role"] == "user")
            .unwrap();
        let text = first_user["content"].as_str().unwrap();
        assert!(text.starts_with(SUMMARY_INTRO), "{text}");
        assert!(text.contains("Weather in City1?"), "{text}");
    }
    // The store keeps every message, and the window with its summary.
    let stored = store
        .load(&SessionKey::new("long", "default").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.messages.len(), 16);
    assert_eq!(stored.state.window.start, 4, "cut before the second prompt");
    assert_eq!(
        stored.state.window.summary.as_deref(),
        Some("- The user asked about City0: sunny.")
    );
}

#[tokio::test]
async fn a_context_overflow_is_answered_with_a_summary_and_a_retry() {
    let mut script = Vec::new();
    for i in 0..3 {
        script.push(Turn::tool_call(
            "get_weather",
            json!({"city": format!("City{i}")}),
        ));
        script.push(Turn::text(format!("Answer {i}.")));
    }
    let server = MockVllm::start(script).await.unwrap();
    let store = InMemorySessionStore::new();
    // No context window given: only an overflow makes it summarise.
    let agent = agent(&server, &store, Summarizing::new().preserve_recent(2));
    let session = agent.session("overflow");
    for i in 0..3 {
        session
            .invoke(format!("Weather in City{i}?"))
            .await
            .unwrap();
    }
    server.push([
        Turn::fault(Fault::ContextOverflow { legacy: false }),
        Turn::text("- Three cities asked about, all sunny."),
        Turn::text("Still sunny."),
    ]);
    let r = session.invoke("And tomorrow?").await.unwrap();
    assert_eq!(r.text(), "Still sunny.");
    let received = server.received();
    let n = received.len();
    assert!(is_summary_request(&received[n - 2].body));
    let retried = &received[n - 1].body;
    assert_pairs_intact(retried);
    let text = retried["messages"][1]["content"].as_str().unwrap();
    assert!(
        text.starts_with(SUMMARY_INTRO) && text.contains("Three cities"),
        "{text}"
    );
}
