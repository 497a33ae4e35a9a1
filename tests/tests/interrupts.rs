//! Interrupts against the vLLM-format server: a question asked while other calls of the batch
//! still run, a call that asks two questions in turn, answers given through a session with an
//! idempotency key, and a question a later hook made moot.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use agent_core::async_trait;
use agent_core::hooks::{BeforeToolCall, Hook, HookError};
use agent_core::interrupt::InterruptResponse;
use agent_core::prelude::*;
use agent_core::session::InMemorySessionStore;
use agent_tests::{MockVllm, Turn, fast_retry, provider};
use serde_json::{Value, json};

/// Asks for a seat, then for a meal, then books.
#[tool]
fn book(flight: String, ctx: ToolContext) -> Result<String, ToolError> {
    let seat = ctx.interrupt("seat", json!({"flight": flight}))?;
    let meal = ctx.interrupt("meal", json!({"flight": flight}))?;
    Ok(format!("booked {flight}, seat {seat}, meal {meal}"))
}

/// Takes its time, so it finishes after `book` has asked.
#[tool]
async fn slow_lookup(what: String) -> String {
    tokio::time::sleep(Duration::from_millis(300)).await;
    format!("found {what}")
}

fn agent(server: &MockVllm, store: &InMemorySessionStore, hooks: Vec<Arc<dyn Hook>>) -> Agent {
    Agent::builder()
        .model(provider(server))
        .tool(book)
        .tool(slow_lookup)
        .retry(fast_retry())
        .session_store(store.clone())
        .hooks(hooks)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_call_asks_two_questions_in_turn_beside_a_slower_call_and_gets_both_answers() {
    let server = MockVllm::start([
        Turn::tool_call("book", json!({"flight": "TA999"}))
            .and_tool_call("slow_lookup", json!({"what": "hotels"})),
        Turn::text("All set."),
    ])
    .await
    .unwrap();
    let store = InMemorySessionStore::new();
    let agent = agent(&server, &store, Vec::new());
    // Answers go through a session with an idempotency key, as a service's retries would.
    let session = agent.session("two").idempotency_key("request-1");
    let first = session.invoke("Book TA999 and find hotels").await.unwrap();
    assert_eq!(first.stop_reason, StopReason::Interrupted);
    assert_eq!(first.interrupts.len(), 1);
    assert_eq!(first.interrupts[0].name, "seat");
    let seat_id = first.interrupts[0].id.clone();

    let second = session
        .respond([InterruptResponse::new(seat_id.clone(), json!("12A"))])
        .await
        .unwrap();
    assert_eq!(second.stop_reason, StopReason::Interrupted, "{second:?}");
    assert_eq!(second.interrupts.len(), 1, "only the new question");
    assert_eq!(second.interrupts[0].name, "meal");
    assert_eq!(
        server.received().len(),
        1,
        "no model call while questions wait"
    );

    // Answering the first question again is not what is waiting.
    let err = session
        .respond([InterruptResponse::new(seat_id, json!("14C"))])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is waiting"), "{err}");

    let done = session
        .respond([InterruptResponse::new(
            second.interrupts[0].id.clone(),
            json!("vegetarian"),
        )])
        .await
        .unwrap();
    assert_eq!(done.stop_reason, StopReason::EndTurn);
    assert_eq!(done.text(), "All set.");
    assert_eq!(
        server.tool_results(1),
        [
            r#"booked TA999, seat "12A", meal "vegetarian""#,
            "found hotels"
        ]
    );
}

/// Asks about every booking, then a second hook denies bookings of TA000.
struct AskThenDeny;

#[async_trait]
impl Hook for AskThenDeny {
    async fn before_tool_call(&self, call: &mut BeforeToolCall<'_>) -> Result<(), HookError> {
        if call.tool_use.name == "book" && call.interrupt("sure", json!(null)).is_none() {
            return Ok(());
        }
        Ok(())
    }
}

struct DenyTa000;

#[async_trait]
impl Hook for DenyTa000 {
    async fn before_tool_call(&self, call: &mut BeforeToolCall<'_>) -> Result<(), HookError> {
        if call.tool_use.input["flight"] == "TA000" {
            call.deny("TA000 is cancelled");
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_question_a_later_hook_made_moot_does_not_stop_the_run() {
    let server = MockVllm::start([
        Turn::tool_call("book", json!({"flight": "TA000"})),
        Turn::text("That flight is cancelled."),
    ])
    .await
    .unwrap();
    let store = InMemorySessionStore::new();
    let agent = agent(
        &server,
        &store,
        vec![Arc::new(AskThenDeny), Arc::new(DenyTa000)],
    );
    let result = agent.session("moot").invoke("Book TA000").await.unwrap();
    assert_eq!(result.stop_reason, StopReason::EndTurn, "{result:?}");
    assert!(result.interrupts.is_empty());
    assert_eq!(
        server.tool_results(1),
        ["Tool call denied: TA000 is cancelled"]
    );
}

#[tokio::test]
async fn a_new_prompt_abandons_the_questions_and_keeps_the_history_valid() {
    let server = MockVllm::start([
        Turn::tool_call("book", json!({"flight": "TA999"})),
        Turn::text("Never mind then."),
    ])
    .await
    .unwrap();
    let store = InMemorySessionStore::new();
    let agent = agent(&server, &store, Vec::new());
    let session = agent.session("abandon");
    let first = session.invoke("Book TA999").await.unwrap();
    assert_eq!(first.stop_reason, StopReason::Interrupted);
    let next = session.invoke("Actually, forget it").await.unwrap();
    assert_eq!(next.text(), "Never mind then.");
    let sent: Value = server.received()[1].body["messages"].clone();
    assert!(
        sent.to_string().contains("Tool was interrupted."),
        "the waiting call is answered as interrupted: {sent}"
    );
    let err = session
        .respond([InterruptResponse::new(
            first.interrupts[0].id.clone(),
            json!("1A"),
        )])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("waits on no question"), "{err}");
}
