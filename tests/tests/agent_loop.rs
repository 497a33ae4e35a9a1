//! The agent loop through the vLLM-format server: tool rounds, streaming events, retries,
//! context overflow, limits, cancellation, concurrency and session safety.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_core::history::History;
use agent_core::message::{ContentBlock, Message, Role, ToolUse};
use agent_core::model::ModelError;
use agent_core::prelude::*;
use agent_core::session::{InMemorySessionStore, SessionKey, SessionStore};
use agent_core::{AgentError, AgentEvent, FINAL_ANSWER_NOTE, REPEATED_CALL_NOTE};
use agent_tests::{ArgsEncoding, Fault, MockVllm, Turn, fast_retry, provider, provider_builder};
use futures::StreamExt;
use serde_json::{Value, json};

fn weather_tool(calls: Arc<AtomicUsize>) -> FnTool {
    FnTool::new(
        "get_weather",
        "Current weather for a city.",
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}),
        move |input, _ctx| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let city = input["city"].as_str().unwrap_or_default().to_owned();
                Ok(ToolOutput::json(
                    json!({"city": city, "forecast": "sunny", "high_c": 21}),
                ))
            }
        },
    )
}

fn slow_tool() -> FnTool {
    FnTool::new(
        "wait",
        "Waits.",
        json!({"type": "object"}),
        |_, ctx| async move {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(30)) => Ok(ToolOutput::text("done")),
                () = ctx.cancel.cancelled() => Err(ToolError::new("stopped")),
            }
        },
    )
}

/// `slow_tool`, telling `started` when it begins.
fn signalling_slow_tool(started: Arc<tokio::sync::Notify>) -> FnTool {
    FnTool::new(
        "wait",
        "Waits.",
        json!({"type": "object"}),
        move |_, ctx| {
            let started = started.clone();
            async move {
                started.notify_one();
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(30)) => Ok(ToolOutput::text("done")),
                    () = ctx.cancel.cancelled() => Err(ToolError::new("stopped")),
                }
            }
        },
    )
}

struct Setup {
    server: MockVllm,
    store: InMemorySessionStore,
    calls: Arc<AtomicUsize>,
}

async fn setup(turns: Vec<Turn>) -> Setup {
    Setup {
        server: MockVllm::start(turns).await.expect("server"),
        store: InMemorySessionStore::new(),
        calls: Arc::new(AtomicUsize::new(0)),
    }
}

impl Setup {
    fn builder(&self) -> agent_core::AgentBuilder {
        Agent::builder()
            .name("travel")
            .model(provider(&self.server))
            .system_prompt("You plan trips.")
            .tool(weather_tool(self.calls.clone()))
            .retry(fast_retry())
            .session_store(self.store.clone())
    }

    async fn stored(&self, session: &str) -> Vec<Message> {
        let key = SessionKey::new(session, "default").expect("key");
        self.store
            .load(&key)
            .await
            .expect("load")
            .map(|s| s.messages)
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn one_tool_round_end_to_end() {
    let s = setup(vec![
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})).with_usage(100, 20),
        Turn::text("It is sunny in Lisbon, 21 C.").with_usage(150, 12),
    ])
    .await;
    let agent = s.builder().build().expect("agent");
    let result = agent
        .session("alice-1")
        .invoke("Weather in Lisbon?")
        .await
        .expect("invoke");
    assert_eq!(result.stop_reason, StopReason::EndTurn);
    assert_eq!(result.text(), "It is sunny in Lisbon, 21 C.");
    assert_eq!(
        (result.usage.input_tokens, result.usage.output_tokens),
        (250, 32)
    );
    assert_eq!(result.turns.len(), 2);
    assert_eq!(result.turns[0].tool_calls, 1);
    assert_eq!(result.turns[1].usage.total_tokens, 162);
    assert_eq!(s.calls.load(Ordering::SeqCst), 1);

    let received = s.server.received();
    assert_eq!(received.len(), 2);
    let second = &received[1].body["messages"];
    let call_id = second[2]["tool_calls"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert!(
        call_id.starts_with("chatcmpl-tool-"),
        "ids echoed unchanged"
    );
    assert_eq!(second[2]["role"], "assistant");
    assert_eq!(
        second[2]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Lisbon\"}"
    );
    assert_eq!(second[3]["role"], "tool");
    assert_eq!(second[3]["tool_call_id"], call_id.as_str());
    let content: Value = serde_json::from_str(
        second[3]["content"]
            .as_str()
            .expect("tool content is a string"),
    )
    .expect("json");
    assert_eq!(content["forecast"], "sunny");

    let stored = s.stored("alice-1").await;
    assert_eq!(stored.len(), 4);
    assert!(History::restore(stored.clone()).is_ok());
    let json = serde_json::to_value(&stored[1]).expect("json");
    assert_eq!(json["role"], "assistant");
    assert_eq!(json["content"][0]["toolUse"]["toolUseId"], call_id.as_str());
    assert_eq!(
        serde_json::to_value(&stored[2]).expect("json")["content"][0]["toolResult"]["status"],
        "success"
    );

    // The next invocation continues the same session.
    s.server.push([Turn::text("You're welcome.")]);
    let again = agent
        .session("alice-1")
        .invoke("Thanks!")
        .await
        .expect("invoke");
    assert_eq!(again.text(), "You're welcome.");
    assert_eq!(
        s.server.received()[2].body["messages"]
            .as_array()
            .map(Vec::len),
        Some(1 + 5)
    );
    assert_eq!(s.stored("alice-1").await.len(), 6);
}

#[tokio::test]
async fn stream_yields_typed_events_in_order_with_a_stable_json_form() {
    let s = setup(vec![
        Turn::tool_call("get_weather", json!({"city": "Porto"})),
        Turn::text("Cloudy in Porto."),
    ])
    .await;
    let agent = s.builder().build().expect("agent");
    let mut stream = agent.session("s-stream").stream("Porto?");
    let mut events = Vec::new();
    while let Some(e) = stream.next().await {
        events.push(e.expect("event"));
    }
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            serde_json::to_value(e).expect("json")["type"]
                .as_str()
                .expect("type")
                .to_owned()
        })
        .collect();
    let expected_prefix = ["message_added", "tool_use_start", "tool_input_delta"];
    assert_eq!(&kinds[..3], expected_prefix);
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    assert!(pos("usage") < pos("tool_result"));
    assert!(pos("tool_result") < pos("text_delta"));
    assert_eq!(kinds.last().map(String::as_str), Some("stop"));
    assert_eq!(kinds.iter().filter(|k| *k == "message_added").count(), 4);
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::TextDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Cloudy in Porto.");
    let tool_result = events
        .iter()
        .find(|e| matches!(e, AgentEvent::ToolResult { .. }))
        .expect("tool result");
    let json = serde_json::to_value(tool_result).expect("json");
    assert_eq!(json["result"]["status"], "success");
    assert!(
        json["result"]["toolUseId"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-tool-"))
    );
    let stop = serde_json::to_value(events.last().expect("stop")).expect("json");
    assert_eq!(stop["stop_reason"], "end_turn");
    assert_eq!(stop["message"]["content"][0]["text"], "Cloudy in Porto.");
    // The JSON form deserialises back to the same event.
    let back: AgentEvent = serde_json::from_value(stop).expect("round trip");
    assert_eq!(&back, events.last().expect("stop"));
}

#[tokio::test]
async fn retries_throttling_and_transient_faults_without_rerunning_completed_tools() {
    let s = setup(vec![
        Turn::fault(Fault::Status {
            code: 503,
            retry_after: None,
            message: "busy".into(),
        }),
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})),
        Turn::fault(Fault::Status {
            code: 429,
            retry_after: Some("1".into()),
            message: "slow down".into(),
        }),
        Turn::text("a b c d e f").with_fault(Fault::DropMidStream { after_chunks: 3 }),
        Turn::text("a b c").with_fault(Fault::MalformedChunk),
        Turn::fault(Fault::Status {
            code: 500,
            retry_after: None,
            message: "oops".into(),
        }),
        Turn::text("Sunny."),
    ])
    .await;
    let agent = s
        .builder()
        .retry(fast_retry().max_attempts(6))
        .build()
        .expect("agent");
    let started = Instant::now();
    let mut stream = agent.session("retry").stream("Lisbon?");
    let mut retries = Vec::new();
    let mut result = None;
    while let Some(e) = stream.next().await {
        match e.expect("event") {
            AgentEvent::Retry {
                attempt,
                delay_ms,
                error_kind,
                ..
            } => retries.push((attempt, delay_ms, error_kind)),
            AgentEvent::Stop(r) => result = Some(r),
            _ => {}
        }
    }
    let result = result.expect("stop");
    assert_eq!(result.text(), "Sunny.");
    assert_eq!(
        s.calls.load(Ordering::SeqCst),
        1,
        "the completed tool call is not re-run"
    );
    assert_eq!(retries.len(), 5, "{retries:?}");
    assert_eq!(retries[1].0, 1, "retry count restarts per turn");
    assert!(retries[1].1 >= 1000, "Retry-After honoured: {retries:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(retries[0].2, "throttled");
    assert_eq!(retries[2].2, "transient");
    assert_eq!(result.turns[1].attempts, 5);
    assert_eq!(s.server.remaining(), 0);
    assert!(History::restore(s.stored("retry").await).is_ok());
}

#[tokio::test]
async fn retries_are_bounded_and_fatal_errors_are_not_retried() {
    let fault = || {
        Turn::fault(Fault::Status {
            code: 500,
            retry_after: None,
            message: "down".into(),
        })
    };
    let s = setup(vec![
        fault(),
        fault(),
        Turn::fault(Fault::Status {
            code: 400,
            retry_after: None,
            message: "bad request: temperature".into(),
        }),
    ])
    .await;
    let agent = s
        .builder()
        .retry(fast_retry().max_attempts(2))
        .build()
        .expect("agent");
    let err = agent
        .session("bounded")
        .invoke("hi")
        .await
        .expect_err("gives up");
    assert!(
        matches!(
            err,
            AgentError::Model {
                attempts: 2,
                error: ModelError::Transient { .. }
            }
        ),
        "{err:?}"
    );
    let err = agent
        .session("bounded")
        .invoke("hi")
        .await
        .expect_err("fatal");
    assert!(
        matches!(
            err,
            AgentError::Model {
                attempts: 1,
                error: ModelError::Fatal {
                    status: Some(400),
                    ..
                }
            }
        ),
        "{err:?}"
    );
    assert_eq!(s.server.received().len(), 3);
    // The failed invocations left valid history (two prompts, nothing else).
    let stored = s.stored("bounded").await;
    assert_eq!(stored.len(), 2);
    assert!(History::restore(stored).is_ok());
}

#[tokio::test]
async fn context_overflow_reduces_history_and_retries() {
    let mut turns = Vec::new();
    for i in 0..6 {
        turns.push(Turn::text(format!("answer {i}")));
    }
    turns.push(Turn::fault(Fault::ContextOverflow { legacy: false }));
    turns.push(Turn::fault(Fault::ContextOverflow { legacy: true }));
    turns.push(Turn::text("fits now"));
    let s = setup(turns).await;
    let agent = s.builder().build().expect("agent");
    let session = agent.session("long");
    for i in 0..6 {
        session
            .invoke(format!("question {i}"))
            .await
            .expect("invoke");
    }
    let result = session
        .invoke("question 6")
        .await
        .expect("reduced and retried");
    assert_eq!(result.text(), "fits now");
    let received = s.server.received();
    let sizes: Vec<usize> = received[6..]
        .iter()
        .map(|r| r.body["messages"].as_array().map_or(0, Vec::len))
        .collect();
    assert!(
        sizes[0] > sizes[1] && sizes[1] > sizes[2],
        "each retry sends less: {sizes:?}"
    );
    for r in &received[6..] {
        assert_eq!(
            r.body["messages"][1]["role"], "user",
            "the visible history starts with a user prompt"
        );
    }
    // Nothing was deleted from the session.
    assert_eq!(s.stored("long").await.len(), 14);

    // A history that cannot shrink gives a typed error.
    s.server
        .push([Turn::fault(Fault::ContextOverflow { legacy: false })]);
    let err = agent
        .session("fresh")
        .invoke("huge prompt")
        .await
        .expect_err("cannot reduce");
    assert!(matches!(err, AgentError::ContextOverflow { .. }), "{err:?}");
}

#[tokio::test]
async fn turn_and_token_limits_end_the_run_gracefully() {
    let looping = || Turn::tool_call("get_weather", json!({"city": "Lisbon"})).with_usage(500, 100);
    let s = setup(vec![looping(), looping(), looping(), looping(), looping()]).await;
    // The limits alone: no loop guard (every call is identical) and no final answer.
    let agent = s
        .builder()
        .limits(Limits::default().max_turns(2))
        .loop_guard(LoopGuard::disabled())
        .final_answer_timeout(None)
        .build()
        .expect("agent");
    let r = agent
        .session("limits")
        .invoke("loop")
        .await
        .expect("invoke");
    assert_eq!(r.stop_reason, StopReason::LimitTurns);
    assert_eq!(r.turns.len(), 2);
    assert_eq!(
        s.calls.load(Ordering::SeqCst),
        2,
        "every tool use got its result before stopping"
    );
    assert!(History::restore(s.stored("limits").await).is_ok());

    let agent = s
        .builder()
        .limits(Limits::default().max_total_tokens(1000))
        .loop_guard(LoopGuard::disabled())
        .final_answer_timeout(None)
        .build()
        .expect("agent");
    let r = agent
        .session("tokens")
        .invoke("loop")
        .await
        .expect("invoke");
    assert_eq!(r.stop_reason, StopReason::LimitTokens);
    assert_eq!(r.usage.total_tokens, 1200);
}

#[tokio::test]
async fn a_limit_reached_after_tool_use_still_gets_a_final_answer_without_tools() {
    let s = setup(vec![
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})).with_usage(500, 100),
        Turn::tool_call("get_weather", json!({"city": "Porto"})).with_usage(500, 100),
        Turn::text("Lisbon is sunny, 21 C; Porto too.").with_usage(700, 20),
    ])
    .await;
    let agent = s
        .builder()
        .limits(Limits::default().max_turns(2))
        .build()
        .expect("agent");
    let r = agent
        .session("graceful")
        .invoke("Weather in Lisbon and Porto?")
        .await
        .expect("invoke");
    // The stop reason stays the limit's; the answer is there anyway.
    assert_eq!(r.stop_reason, StopReason::LimitTurns);
    assert!(r.has_answer());
    assert_eq!(r.text(), "Lisbon is sunny, 21 C; Porto too.");
    assert_eq!(r.turns.len(), 3, "two tool turns and the final answer");
    assert_eq!(r.usage.total_tokens, 600 + 600 + 720);
    assert_eq!(s.calls.load(Ordering::SeqCst), 2);
    let received = s.server.received();
    assert_eq!(received.len(), 3);
    // The final call: tools switched off and the model told why.
    let last = &received[2].body;
    assert_eq!(last["tool_choice"], "none");
    let system = last["messages"][0]["content"].as_str().unwrap_or_default();
    assert!(system.contains(FINAL_ANSWER_NOTE), "{system}");
    assert_eq!(received[1].body["tool_choice"], "auto");
    let stored = s.stored("graceful").await;
    assert_eq!(stored.len(), 6);
    assert_eq!(stored[5].role, Role::Assistant);
    assert!(History::restore(stored).is_ok());
}

#[tokio::test]
async fn a_final_answer_that_is_a_tool_call_leaves_the_run_without_answer() {
    let s = setup(vec![
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})),
        Turn::tool_call("get_weather", json!({"city": "Porto"})),
    ])
    .await;
    let agent = s
        .builder()
        .limits(Limits::default().max_turns(1))
        .build()
        .expect("agent");
    let r = agent
        .session("stubborn")
        .invoke("Weather?")
        .await
        .expect("invoke");
    assert_eq!(r.stop_reason, StopReason::LimitTurns);
    assert!(!r.has_answer(), "{:?}", r.message);
    assert_eq!(s.server.received().len(), 2);
    // The tool call of the final reply was dropped, not left unanswered in history.
    let stored = s.stored("stubborn").await;
    assert_eq!(stored.len(), 3);
    assert!(History::restore(stored).is_ok());
}

#[tokio::test]
async fn repeated_identical_tool_calls_are_answered_from_memory_then_end_tool_use() {
    let lisbon = || Turn::tool_call("get_weather", json!({"city": "Lisbon"}));
    let s = setup(vec![
        lisbon(),
        // Same arguments in another spelling of the same JSON: still a repeat.
        Turn::tool_call("get_weather", json!({ "city": "Lisbon" })),
        lisbon(),
        lisbon(),
        Turn::text("Sunny in Lisbon, 21 C."),
    ])
    .await;
    let agent = s.builder().build().expect("agent");
    let mut events = agent.session("loop").stream("Weather in Lisbon?");
    let mut results = Vec::new();
    let mut stop = None;
    while let Some(event) = events.next().await {
        match event.expect("event") {
            AgentEvent::ToolResult { result } => results.push(result.text()),
            AgentEvent::Stop(r) => stop = Some(r),
            _ => {}
        }
    }
    let r = stop.expect("stop event");
    assert_eq!(r.stop_reason, StopReason::ToolLoop);
    assert_eq!(r.text(), "Sunny in Lisbon, 21 C.");
    assert_eq!(
        s.calls.load(Ordering::SeqCst),
        1,
        "the tool ran once; repeats were answered from its result"
    );
    assert_eq!(results.len(), 4);
    assert!(!results[0].contains(REPEATED_CALL_NOTE));
    for repeat in &results[1..] {
        assert!(repeat.starts_with(&results[0]), "{repeat}");
        assert!(repeat.contains(REPEATED_CALL_NOTE), "{repeat}");
    }
    // The model saw the note with the repeated result.
    assert!(s.server.last_message(2).contains("Do not call this tool"));
    assert_eq!(s.server.received().len(), 5);
    assert_eq!(s.server.received()[4].body["tool_choice"], "none");
    assert!(History::restore(s.stored("loop").await).is_ok());

    // Exempt tools run every time.
    s.server.push([lisbon(), lisbon(), Turn::text("done")]);
    let agent = s
        .builder()
        .loop_guard(LoopGuard::new().exempt("get_weather"))
        .build()
        .expect("agent");
    let r = agent.session("poll").invoke("poll").await.expect("invoke");
    assert_eq!(r.stop_reason, StopReason::EndTurn);
    assert_eq!(s.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn wall_clock_limit_stops_a_stalled_model_promptly() {
    let s = setup(vec![
        Turn::text("late").with_fault(Fault::SlowFirstByte(Duration::from_secs(10))),
    ])
    .await;
    let agent = s
        .builder()
        .model(
            provider_builder(&s.server)
                .read_timeout(Duration::from_secs(30))
                .build()
                .expect("model"),
        )
        .limits(Limits::default().timeout(Duration::from_millis(300)))
        .build()
        .expect("agent");
    let started = Instant::now();
    let r = agent.session("slow").invoke("hello").await.expect("invoke");
    assert_eq!(r.stop_reason, StopReason::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn slow_first_byte_beyond_the_read_timeout_is_retried() {
    let s = setup(vec![
        Turn::text("late").with_fault(Fault::SlowFirstByte(Duration::from_secs(3))),
        Turn::text("on time"),
    ])
    .await;
    let agent = s
        .builder()
        .model(
            provider_builder(&s.server)
                .read_timeout(Duration::from_millis(300))
                .build()
                .expect("model"),
        )
        .build()
        .expect("agent");
    let r = agent.session("slow").invoke("hello").await.expect("invoke");
    assert_eq!(r.text(), "on time");
    assert_eq!(r.turns[0].attempts, 2);
}

#[tokio::test]
async fn cancellation_stops_the_model_stream_and_running_tools() {
    let tool_started = Arc::new(tokio::sync::Notify::new());
    let s = setup(vec![
        Turn::text("late").with_fault(Fault::SlowFirstByte(Duration::from_secs(10))),
        Turn::tool_call("wait", json!({})),
        Turn::text("after"),
    ])
    .await;
    let agent = s
        .builder()
        .model(
            provider_builder(&s.server)
                .read_timeout(Duration::from_secs(30))
                .build()
                .expect("model"),
        )
        .tool(signalling_slow_tool(tool_started.clone()))
        .build()
        .expect("agent");
    for round in 0..2 {
        let token = CancellationToken::new();
        let received_before = s.server.received().len();
        // Cancel once the run is inside the model call (round 0: the server has the request)
        // or inside the tool (round 1: the tool says it started), not after a guessed delay.
        let cancel_when_busy = async {
            if round == 0 {
                let deadline = Instant::now() + Duration::from_secs(10);
                while s.server.received().len() == received_before {
                    assert!(
                        Instant::now() < deadline,
                        "the request never reached the server"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            } else {
                tokio::time::timeout(Duration::from_secs(10), tool_started.notified())
                    .await
                    .expect("the tool never started");
            }
            token.cancel();
            Instant::now()
        };
        let session = agent.session("cancel").cancel_token(token.clone());
        let (r, cancelled_at) = tokio::join!(session.invoke("go"), cancel_when_busy);
        let r = r.expect("invoke");
        assert_eq!(r.stop_reason, StopReason::Cancelled);
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(2),
            "round {round}: ended {:?} after the cancellation",
            cancelled_at.elapsed()
        );
    }
    let stored = s.stored("cancel").await;
    // prompt; prompt, assistant tool use, cancelled result
    assert_eq!(stored.len(), 4);
    let last = stored.last().expect("last");
    assert_eq!(
        last.tool_results().next().map(|r| r.text()),
        Some(agent_core::tool::executor::CANCELLED_TEXT.to_owned())
    );
    // The session stays usable.
    let r = agent
        .session("cancel")
        .invoke("again")
        .await
        .expect("invoke");
    assert_eq!(r.text(), "after");
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_run() {
    let s = setup(vec![
        Turn::tool_call("wait", json!({})),
        Turn::text("never"),
    ])
    .await;
    let agent = s.builder().tool(slow_tool()).build().expect("agent");
    let mut stream = agent.session("drop").stream("go");
    while let Some(e) = stream.next().await {
        if matches!(e.expect("event"), AgentEvent::ToolUseStart { .. }) {
            break;
        }
    }
    drop(stream);
    // The run ends promptly and releases the session: the next invocation is not blocked.
    s.server.push([Turn::text("next")]);
    let started = Instant::now();
    let r = agent.session("drop").invoke("again").await.expect("invoke");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.text(), "never");
}

/// `invoke` runs in a task of its own: a caller that goes away (an HTTP client that
/// disconnected, a timeout around the call) cancels the run at a safe point, and the session
/// stays valid for the next invocation.
#[tokio::test]
async fn dropping_an_invocation_cancels_the_run_and_leaves_the_session_valid() {
    let s = setup(vec![
        Turn::tool_call("wait", json!({})),
        Turn::text("never"),
    ])
    .await;
    let agent = s.builder().tool(slow_tool()).build().expect("agent");
    let session = agent.session("dropped-invoke");
    let outcome = tokio::time::timeout(Duration::from_millis(300), session.invoke("go")).await;
    assert!(outcome.is_err(), "the slow tool outlives the caller");
    s.server.push([Turn::text("next")]);
    let started = Instant::now();
    let r = agent
        .session("dropped-invoke")
        .invoke("again")
        .await
        .expect("invoke");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The interrupted call got its result (cancelled), so the next request was valid and the
    // model answered it.
    assert_eq!(r.text(), "never");
    let history = agent
        .session("dropped-invoke")
        .messages()
        .await
        .expect("messages")
        .expect("exists");
    let uses = history.iter().flat_map(|m| m.tool_uses()).count();
    let results = history.iter().flat_map(|m| m.tool_results()).count();
    assert_eq!(uses, results, "every tool call has its result");
}

#[tokio::test]
async fn bad_tool_input_becomes_a_result_the_model_reads() {
    let s = setup(vec![
        Turn::tool_call("get_weather", json!({"city": "Lisbon"}))
            .with_args(ArgsEncoding::Truncated),
        Turn::tool_call("get_weather", json!({"city": 42})),
        Turn::tool_call("teleport", json!({})),
        Turn::text("ok"),
    ])
    .await;
    let agent = s.builder().build().expect("agent");
    let r = agent
        .session("bad-input")
        .invoke("go")
        .await
        .expect("invoke");
    assert_eq!(r.text(), "ok");
    assert_eq!(
        s.calls.load(Ordering::SeqCst),
        0,
        "invalid input never reaches the tool"
    );
    let received = s.server.received();
    let tool_text = |i: usize| {
        let msgs = received[i].body["messages"]
            .as_array()
            .expect("messages")
            .clone();
        msgs.last().expect("last")["content"]
            .as_str()
            .expect("text")
            .to_owned()
    };
    assert!(tool_text(1).contains("not valid JSON"), "{}", tool_text(1));
    assert!(tool_text(2).contains("/city"), "{}", tool_text(2));
    assert!(
        tool_text(3).contains("unknown tool `teleport`"),
        "{}",
        tool_text(3)
    );
}

#[tokio::test]
async fn pending_tool_uses_from_an_interrupted_run_are_answered() {
    let s = setup(vec![Turn::text("Recovered.")]).await;
    let key = SessionKey::new("interrupted", "default").expect("key");
    let pending = Message::new(
        Role::Assistant,
        vec![ContentBlock::ToolUse(ToolUse {
            tool_use_id: "chatcmpl-tool-old".into(),
            name: "get_weather".into(),
            input: json!({"city": "Faro"}),
        })],
    );
    s.store
        .append(&key, 0, &[Message::user("Faro?"), pending])
        .await
        .expect("seed");
    let agent = s.builder().build().expect("agent");
    let r = agent
        .session("interrupted")
        .invoke("Still there?")
        .await
        .expect("invoke");
    assert_eq!(r.text(), "Recovered.");
    let msgs = &s.server.received()[0].body["messages"];
    assert_eq!(msgs[3]["role"], "tool");
    assert_eq!(msgs[3]["tool_call_id"], "chatcmpl-tool-old");
    assert_eq!(msgs[3]["content"], agent_core::agent::INTERRUPTED_TEXT);
    assert_eq!(msgs[4], json!({"role": "user", "content": "Still there?"}));
}

#[tokio::test]
async fn one_agent_serves_many_sessions_and_never_interleaves_one_session() {
    let server = MockVllm::start_bench("127.0.0.1:0").await.expect("server");
    let store = InMemorySessionStore::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let agent = Agent::builder()
        .model(provider(&server))
        .tool(weather_tool(calls.clone()))
        .session_store(store.clone())
        .build()
        .expect("agent");
    let mut tasks = Vec::new();
    for i in 0..40 {
        // 20 sessions, two concurrent invocations each.
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move {
            agent
                .session(format!("user-{}", i % 20))
                .invoke("Weather?")
                .await
        }));
    }
    for t in tasks {
        let r = t.await.expect("join").expect("invoke");
        assert_eq!(r.stop_reason, StopReason::EndTurn);
        assert!(r.text().starts_with("w0 w1"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 40);
    for i in 0..20 {
        let key = SessionKey::new(&format!("user-{i}"), "default").expect("key");
        let messages = store
            .load(&key)
            .await
            .expect("load")
            .expect("exists")
            .messages;
        assert_eq!(messages.len(), 8);
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::User,
                Role::Assistant,
                Role::User,
                Role::Assistant,
                Role::User,
                Role::Assistant,
                Role::User,
                Role::Assistant
            ]
        );
        History::restore(messages).expect("invocations of one session never interleave");
    }
}

#[tokio::test]
async fn invalid_ids_and_empty_prompts_are_typed_errors() {
    let s = setup(vec![]).await;
    let agent = s.builder().build().expect("agent");
    for bad in ["../etc", "a/b", "", "x\u{0}y"] {
        let err = agent.session(bad).invoke("hi").await.expect_err("refused");
        assert!(matches!(err, AgentError::InvalidId(_)), "{bad:?}: {err:?}");
    }
    let err = agent
        .session("ok")
        .actor("bob/../alice")
        .invoke("hi")
        .await
        .expect_err("refused");
    assert!(matches!(err, AgentError::InvalidId(_)));
    let err = agent
        .session("ok")
        .invoke(Vec::<ContentBlock>::new())
        .await
        .expect_err("refused");
    assert_eq!(err, AgentError::EmptyPrompt);
    assert!(s.server.received().is_empty());
    let dup = s.builder().tool(weather_tool(s.calls.clone())).build();
    assert!(matches!(dup, Err(agent_core::BuildError::Tool(_))));
}

#[tokio::test]
async fn non_streaming_provider_runs_the_same_loop() {
    let s = setup(vec![
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})),
        Turn::text("Sunny."),
    ])
    .await;
    let agent = s
        .builder()
        .model(
            provider_builder(&s.server)
                .streaming(false)
                .build()
                .expect("model"),
        )
        .build()
        .expect("agent");
    let r = agent
        .session("plain")
        .invoke("Lisbon?")
        .await
        .expect("invoke");
    assert_eq!(r.text(), "Sunny.");
    assert_eq!(s.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn parallel_tool_calls_run_concurrently_up_to_the_limit_and_answer_in_request_order() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r2, p2) = (running.clone(), peak.clone());
    let sleeper = FnTool::new(
        "nap",
        "Sleeps for `ms` milliseconds.",
        json!({"type": "object", "properties": {"ms": {"type": "integer"}}, "required": ["ms"]}),
        move |input, _| {
            let (running, peak) = (r2.clone(), p2.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(input["ms"].as_u64().unwrap_or(0))).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(ToolOutput::text(format!("napped {}", input["ms"])))
            }
        },
    );
    let boom = FnTool::new("boom", "Panics.", json!({"type": "object"}), |_, _| async {
        if true {
            panic!("tool bug");
        }
        Ok(ToolOutput::text("unreachable"))
    });
    let s = setup(vec![
        Turn::tool_call("nap", json!({"ms": 300}))
            .and_tool_call("nap", json!({"ms": 50}))
            .and_tool_call("boom", json!({}))
            .and_tool_call("nap", json!({"ms": 5000}))
            .and_tool_call("nap", json!({"ms": 100})),
        Turn::text("rested"),
    ])
    .await;
    let agent = s
        .builder()
        .tool(sleeper.with_timeout(Duration::from_millis(600)))
        .tool(boom)
        .max_tool_concurrency(2)
        .build()
        .expect("agent");
    let started = Instant::now();
    let r = agent
        .session("parallel")
        .invoke("rest")
        .await
        .expect("invoke");
    assert_eq!(r.text(), "rested");
    assert_eq!(peak.load(Ordering::SeqCst), 2, "at most two calls at once");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the slow call timed out: {:?}",
        started.elapsed()
    );
    let msgs = s.server.received()[1].body["messages"]
        .as_array()
        .expect("messages")
        .clone();
    let ids: Vec<&str> = msgs[2]["tool_calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    let answers: Vec<(&str, &str)> = msgs[3..8]
        .iter()
        .map(|m| {
            (
                m["tool_call_id"].as_str().expect("id"),
                m["content"].as_str().expect("content"),
            )
        })
        .collect();
    assert_eq!(
        answers.iter().map(|a| a.0).collect::<Vec<_>>(),
        ids,
        "results in request order"
    );
    assert_eq!(answers[0].1, "napped 300");
    assert_eq!(answers[1].1, "napped 50");
    assert!(answers[2].1.contains("tool bug"), "{}", answers[2].1);
    assert!(
        answers[3].1.contains("timed out after 600 ms"),
        "{}",
        answers[3].1
    );
    assert_eq!(answers[4].1, "napped 100");
}

/// A tool source whose list the test changes.
struct Changing {
    generation: std::sync::atomic::AtomicU64,
    tools: std::sync::Mutex<Vec<Arc<dyn agent_core::tool::Tool>>>,
}

impl agent_core::tool::ToolSource for Changing {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
    fn tools(&self) -> Vec<Arc<dyn agent_core::tool::Tool>> {
        self.tools.lock().unwrap().clone()
    }
}

fn named(name: &str) -> Arc<dyn agent_core::tool::Tool> {
    let answer = format!("{name} ran");
    Arc::new(FnTool::new(
        name,
        "test tool",
        json!({"type": "object", "properties": {}}),
        move |_, _| {
            let answer = answer.clone();
            async move { Ok(ToolOutput::text(answer)) }
        },
    ))
}

#[tokio::test]
async fn tool_sources_are_reread_when_they_change_and_clashes_are_left_out() {
    let source = Arc::new(Changing {
        generation: 0.into(),
        tools: std::sync::Mutex::new(vec![named("alpha")]),
    });
    // A clash in the first list fails the build.
    let clash = Arc::new(Changing {
        generation: 0.into(),
        tools: std::sync::Mutex::new(vec![named("fixed")]),
    });
    let server = MockVllm::start([Turn::text("one"), Turn::text("two")])
        .await
        .expect("server");
    let err = Agent::builder()
        .model(provider(&server))
        .tools([named("fixed")])
        .tool_source(clash)
        .build()
        .expect_err("duplicate");
    assert!(err.to_string().contains("duplicate tool name"), "{err}");

    let agent = Agent::builder()
        .model(provider(&server))
        .tools([named("fixed")])
        .tool_source(source.clone())
        .build()
        .expect("agent");
    let names = |i: usize| server.offered_tools(i);
    agent.session("s1").invoke("hi").await.expect("first");
    assert_eq!(names(0), ["fixed", "alpha"]);
    // The list changes; a later clash is left out (with a warning), the rest is used.
    *source.tools.lock().unwrap() = vec![named("beta"), named("fixed")];
    // Not re-read until the generation changes.
    assert_eq!(agent.tools().len(), 2);
    source.generation.store(1, Ordering::SeqCst);
    agent.session("s2").invoke("hi").await.expect("second");
    assert_eq!(names(1), ["fixed", "beta"]);
    assert_eq!(agent.tools().len(), 2);
}

#[tokio::test]
async fn a_slow_call_does_not_hold_a_slot_once_the_calls_after_it_finish() {
    // Two slots; the first call waits until the fourth has run. That needs the second slot to
    // run calls two, three and four one after another while the first still runs: with slots
    // held by finished calls until the first ends, it would wait out its 10 s and say so.
    let release = Arc::new(tokio::sync::Notify::new());
    let (r1, r2) = (release.clone(), release.clone());
    let waiter = FnTool::new(
        "wait_for_last",
        "Waits.",
        json!({"type": "object"}),
        move |_, _| {
            let release = r1.clone();
            async move {
                match tokio::time::timeout(Duration::from_secs(10), release.notified()).await {
                    Ok(()) => Ok(ToolOutput::text("released")),
                    Err(_) => Ok(ToolOutput::text("never released")),
                }
            }
        },
    );
    let quick = FnTool::new(
        "quick",
        "Returns at once.",
        json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
        move |input, _| {
            let release = r2.clone();
            async move {
                if input["n"] == 3 {
                    release.notify_one();
                }
                Ok(ToolOutput::text(format!("quick {}", input["n"])))
            }
        },
    );
    let s = setup(vec![
        Turn::tool_call("wait_for_last", json!({}))
            .and_tool_call("quick", json!({"n": 1}))
            .and_tool_call("quick", json!({"n": 2}))
            .and_tool_call("quick", json!({"n": 3})),
        Turn::text("done"),
    ])
    .await;
    let agent = s
        .builder()
        .tool(waiter)
        .tool(quick)
        .max_tool_concurrency(2)
        .build()
        .expect("agent");
    agent.session("slots").invoke("go").await.expect("invoke");
    let stored = s.stored("slots").await;
    let results: Vec<String> = stored[2]
        .content
        .iter()
        .map(|b| match b {
            ContentBlock::ToolResult(r) => r.text(),
            other => panic!("{other:?}"),
        })
        .collect();
    // In request order, whatever order they finished in.
    assert_eq!(results, ["released", "quick 1", "quick 2", "quick 3"]);
}
