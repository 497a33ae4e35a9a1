//! Hooks against the vLLM-format server: each action (rewrite the request, rewrite, veto or
//! answer a tool call, rewrite a result, retry a model call, stop, emit events), their order,
//! their bounds, and the shipped tool-approval and redaction hooks.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::async_trait;
use agent_core::hooks::{
    AfterInvocation, AfterModelCall, AfterToolCall, Approval, Approver, BeforeInvocation,
    BeforeModelCall, BeforeToolCall, Hook, HookError, MessageAdded, Redact, Rule, RunInfo,
    ToolApproval,
};
use agent_core::message::{ContentBlock, ToolResult, ToolUse};
use agent_core::prelude::*;
use agent_core::session::{InMemorySessionStore, SessionStore};
use agent_tests::{MockVllm, Turn, fast_retry, provider};
use futures::StreamExt;
use serde_json::{Value, json};

/// Weather calls per session (tests run at once, each in its own session).
static WEATHER_CALLS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn weather_calls(session: &str) -> usize {
    WEATHER_CALLS
        .lock()
        .unwrap()
        .iter()
        .filter(|s| *s == session)
        .count()
}

/// Current weather for a city.
#[tool]
fn get_weather(city: String, ctx: ToolContext) -> Value {
    WEATHER_CALLS
        .lock()
        .unwrap()
        .push(ctx.session_id.to_string());
    json!({"city": city, "forecast": "sunny"})
}

/// Deletes everything.
#[tool]
fn delete_all() -> String {
    panic!("a hook must have vetoed this call")
}

/// The price of a trip.
#[tool]
fn quote(city: String) -> String {
    format!("{city}: 999 EUR")
}

fn agent(server: &MockVllm, store: &InMemorySessionStore, hooks: Vec<Arc<dyn Hook>>) -> Agent {
    Agent::builder()
        .model(provider(server))
        .system_prompt("You plan trips.")
        .tool(get_weather)
        .tool(delete_all)
        .tool(quote)
        .retry(fast_retry())
        .session_store(store.clone())
        .hooks(hooks)
        .build()
        .unwrap()
}

/// The text of every message of request `i`, as sent.
fn sent(server: &MockVllm, i: usize) -> Value {
    server.received()[i].body["messages"].clone()
}

/// Rewrites what the model is sent: an extra system line, and the prompt in upper case.
struct Shout;

#[async_trait]
impl Hook for Shout {
    async fn before_model_call(&self, ctx: &mut BeforeModelCall<'_>) -> Result<(), HookError> {
        let system = ctx.system_prompt.take().unwrap_or_default();
        ctx.system_prompt = Some(format!("{system}\nAnswer in French.").into());
        if let Some(first) = ctx.messages.first_mut()
            && let Some(ContentBlock::Text(t)) = first.to_mut().content.first_mut()
        {
            *t = t.to_uppercase();
        }
        ctx.run.emit("rewritten", json!({"attempt": ctx.attempt}));
        Ok(())
    }
}

#[tokio::test]
async fn before_model_call_rewrites_the_request_not_the_history_and_emits_events() {
    let server = MockVllm::start([Turn::text("Bonjour.")]).await.unwrap();
    let store = InMemorySessionStore::new();
    let agent = agent(&server, &store, vec![Arc::new(Shout)]);
    let session = agent.session("s");
    let mut events = session.stream("hello there");
    let mut custom = Vec::new();
    while let Some(event) = events.next().await {
        if let AgentEvent::Custom { name, data } = event.unwrap() {
            custom.push((name, data));
        }
    }
    assert_eq!(custom, [("rewritten".to_owned(), json!({"attempt": 1}))]);
    let messages = sent(&server, 0);
    assert_eq!(messages[0]["content"], "You plan trips.\nAnswer in French.");
    assert_eq!(messages[1]["content"], "HELLO THERE");
    // The history keeps the prompt as the user wrote it.
    let stored = session.messages().await.unwrap().unwrap();
    assert_eq!(stored[0].text(), "hello there");
}

/// Rewrites, vetoes and answers tool calls; rewrites a result.
struct Gatekeeper;

#[async_trait]
impl Hook for Gatekeeper {
    async fn before_tool_call(&self, ctx: &mut BeforeToolCall<'_>) -> Result<(), HookError> {
        match ctx.tool_use.name.as_str() {
            "get_weather" => ctx.tool_use.input = json!({"city": "Lisbon"}),
            "delete_all" => ctx.deny("deleting is not allowed"),
            "quote" => ctx.answer(ToolResult::success("", "quotes are closed today")),
            _ => {}
        }
        assert!(ctx.tool.is_some(), "known tools come with their spec");
        Ok(())
    }

    async fn after_tool_call(&self, ctx: &mut AfterToolCall<'_>) -> Result<(), HookError> {
        let text = ctx.result.text();
        *ctx.result = ToolResult::success(&ctx.result.tool_use_id, format!("checked: {text}"));
        Ok(())
    }
}

#[tokio::test]
async fn before_and_after_tool_call_rewrite_veto_answer_and_rewrite_results() {
    let server = MockVllm::start([
        Turn::tool_call("get_weather", json!({"city": "lisbon?"}))
            .and_tool_call("delete_all", json!({}))
            .and_tool_call("quote", json!({"city": "Porto"})),
        Turn::text("Done."),
    ])
    .await
    .unwrap();
    let store = InMemorySessionStore::new();
    let agent = agent(&server, &store, vec![Arc::new(Gatekeeper)]);
    let result = agent.session("t").invoke("Go").await.unwrap();
    assert_eq!(result.text(), "Done.");
    assert_eq!(weather_calls("t"), 1);
    // The results the model got, in request order.
    let results = server.tool_results(1);
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(
        results[0].starts_with("checked: ") && results[0].contains(r#""city":"Lisbon""#),
        "the rewritten input ran, and its result was rewritten: {}",
        results[0]
    );
    assert_eq!(results[1], "Tool call denied: deleting is not allowed");
    assert_eq!(results[2], "quotes are closed today");
    // The history keeps the calls as the model made them.
    let stored = agent.session("t").messages().await.unwrap().unwrap();
    let calls: Vec<&ToolUse> = stored[1].tool_uses().collect();
    assert_eq!(calls[0].input, json!({"city": "lisbon?"}));
}

/// Asks for another call when the answer is not good enough, and records the order hooks run in.
struct Picky {
    order: Arc<Mutex<Vec<String>>>,
    label: &'static str,
}

#[async_trait]
impl Hook for Picky {
    async fn before_model_call(&self, _ctx: &mut BeforeModelCall<'_>) -> Result<(), HookError> {
        self.order
            .lock()
            .unwrap()
            .push(format!("before {}", self.label));
        Ok(())
    }

    async fn after_model_call(&self, ctx: &mut AfterModelCall<'_>) -> Result<(), HookError> {
        self.order
            .lock()
            .unwrap()
            .push(format!("after {}", self.label));
        if self.label == "a"
            && let Ok(response) = &ctx.outcome
            && response
                .content
                .iter()
                .any(|b| matches!(b, ContentBlock::Text(t) if t.contains("bad")))
        {
            ctx.retry();
        }
        Ok(())
    }
}

#[tokio::test]
async fn after_model_call_retries_and_hooks_run_in_order_and_in_reverse_after() {
    let server = MockVllm::start([Turn::text("a bad answer"), Turn::text("A good answer.")])
        .await
        .unwrap();
    let store = InMemorySessionStore::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    let hooks: Vec<Arc<dyn Hook>> = vec![
        Arc::new(Picky {
            order: order.clone(),
            label: "a",
        }),
        Arc::new(Picky {
            order: order.clone(),
            label: "b",
        }),
    ];
    let agent = agent(&server, &store, hooks);
    let mut retries = 0;
    let mut events = agent.session("r").stream("Hi");
    let mut last = None;
    while let Some(event) = events.next().await {
        match event.unwrap() {
            AgentEvent::Retry { error_kind, .. } => {
                assert_eq!(error_kind, "hook");
                retries += 1;
            }
            AgentEvent::Stop(result) => last = Some(result),
            _ => {}
        }
    }
    assert_eq!(retries, 1);
    assert_eq!(last.unwrap().text(), "A good answer.");
    assert_eq!(server.received().len(), 2);
    assert_eq!(
        *order.lock().unwrap(),
        [
            "before a", "before b", "after b", "after a", "before a", "before b", "after b",
            "after a"
        ]
    );
    // Only the accepted answer was stored.
    let stored = agent.session("r").messages().await.unwrap().unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].text(), "A good answer.");
}

/// Stops the run after the first tool result, or before the prompt is stored.
struct Stopper {
    at: &'static str,
}

#[async_trait]
impl Hook for Stopper {
    async fn before_invocation(&self, ctx: &mut BeforeInvocation<'_>) -> Result<(), HookError> {
        if self.at == "invocation" {
            ctx.run.stop("prompts about deletion are refused");
        }
        Ok(())
    }

    async fn after_tool_call(&self, ctx: &mut AfterToolCall<'_>) -> Result<(), HookError> {
        if self.at == "tool" {
            ctx.run.stop("one tool call is enough");
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_hook_stops_the_run_with_its_reason_leaving_a_valid_session() {
    let server = MockVllm::start([
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})),
        Turn::text("never asked for"),
    ])
    .await
    .unwrap();
    let store = InMemorySessionStore::new();
    let stopping = agent(&server, &store, vec![Arc::new(Stopper { at: "tool" })]);
    let result = stopping.session("x").invoke("Weather?").await.unwrap();
    assert_eq!(result.stop_reason, StopReason::HookStopped);
    assert_eq!(
        result.stopped_by.as_deref(),
        Some("one tool call is enough")
    );
    assert_eq!(server.received().len(), 1, "no model call after the stop");
    // The batch's result is stored: the session goes on with the next prompt.
    let stored = stopping.session("x").messages().await.unwrap().unwrap();
    assert_eq!(stored.len(), 3);
    let plain = agent(&server, &store, Vec::new());
    // The scripted "never asked for" turn is consumed by this next prompt.
    let next = plain.session("x").invoke("And then?").await.unwrap();
    assert_eq!(next.text(), "never asked for");

    // Stopped before the prompt: nothing stored, no model call.
    let refusing = agent(
        &server,
        &store,
        vec![Arc::new(Stopper { at: "invocation" })],
    );
    let before = server.received().len();
    let result = refusing
        .session("y")
        .invoke("Delete my data")
        .await
        .unwrap();
    assert_eq!(result.stop_reason, StopReason::HookStopped);
    assert!(result.message.is_none());
    assert!(refusing.session("y").messages().await.unwrap().is_none());
    assert_eq!(server.received().len(), before);
}

/// Fails, or never answers.
struct Broken {
    hang: bool,
}

#[async_trait]
impl Hook for Broken {
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "broken".into()
    }

    fn timeout(&self) -> Option<Duration> {
        Some(Duration::from_millis(200))
    }

    async fn before_tool_call(&self, _ctx: &mut BeforeToolCall<'_>) -> Result<(), HookError> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        Err(HookError::with_source(
            "the policy service refused",
            std::io::Error::other("connection refused"),
        ))
    }
}

#[tokio::test]
async fn a_failing_or_hanging_hook_fails_the_run_with_a_typed_error_in_its_bound() {
    for hang in [false, true] {
        let server = MockVllm::start([
            Turn::tool_call("get_weather", json!({"city": "Lisbon"})),
            Turn::text("Sunny."),
        ])
        .await
        .unwrap();
        let store = InMemorySessionStore::new();
        let broken = agent(&server, &store, vec![Arc::new(Broken { hang })]);
        let started = std::time::Instant::now();
        let err = broken.session("b").invoke("Weather?").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        match &err {
            AgentError::Hook {
                hook,
                event,
                message,
                source,
            } => {
                assert_eq!(hook, "broken");
                assert_eq!(*event, "before_tool_call");
                if hang {
                    assert_eq!(message, "no answer within 200 ms");
                    assert!(source.is_none());
                } else {
                    assert_eq!(message, "the policy service refused");
                    let cause = std::error::Error::source(source.as_ref().unwrap()).unwrap();
                    assert_eq!(cause.to_string(), "connection refused");
                }
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.kind(), "hook");
        // The session is valid: its pending call is answered as interrupted on the next run.
        let plain = agent(&server, &store, Vec::new());
        let next = plain.session("b").invoke("Try again").await.unwrap();
        assert_eq!(next.text(), "Sunny.");
    }
}

/// Approves trips under 500 EUR.
struct UnderBudget;

#[async_trait]
impl Approver for UnderBudget {
    async fn approve(&self, run: &RunInfo<'_>, call: &ToolUse) -> Result<Approval, HookError> {
        assert_eq!(run.session_id, "approvals");
        Ok(if call.input["city"] == "Lisbon" {
            Approval::Approve
        } else {
            Approval::Deny {
                reason: "the user declined: too far".into(),
            }
        })
    }
}

#[tokio::test]
async fn tool_approval_allows_denies_and_asks_and_says_so_in_the_stream() {
    let server = MockVllm::start([
        Turn::tool_call("quote", json!({"city": "Lisbon"}))
            .and_tool_call("quote", json!({"city": "Tokyo"}))
            .and_tool_call("delete_all", json!({}))
            .and_tool_call("get_weather", json!({"city": "Lisbon"})),
        Turn::text("Here is what I could do."),
    ])
    .await
    .unwrap();
    let store = InMemorySessionStore::new();
    let policy = ToolApproval::new()
        .rule("quote", Rule::Ask)
        .rule("delete_all", Rule::Deny)
        .approver(UnderBudget);
    let agent = agent(&server, &store, vec![Arc::new(policy)]);
    let mut decisions = Vec::new();
    let mut events = agent.session("approvals").stream("Quote Lisbon and Tokyo");
    while let Some(event) = events.next().await {
        if let AgentEvent::Custom { name, data } = event.unwrap() {
            assert_eq!(name, "tool_approval");
            decisions.push((data["tool"].clone(), data["decision"].clone()));
        }
    }
    assert_eq!(
        decisions,
        [
            (json!("quote"), json!("approved")),
            (json!("quote"), json!("denied")),
            (json!("delete_all"), json!("denied")),
        ],
        "allowed tools are not reported"
    );
    let results: Vec<String> = server.tool_results(1);
    assert_eq!(results[0], "Lisbon: 999 EUR");
    assert_eq!(results[1], "Tool call denied: the user declined: too far");
    assert_eq!(
        results[2],
        "Tool call denied: policy does not allow `delete_all`"
    );
    assert!(results[3].contains("sunny"));
}

#[tokio::test]
async fn approval_without_an_approver_interrupts_and_the_answer_resumes_the_run() {
    let server = MockVllm::start([
        Turn::tool_call("quote", json!({"city": "Lisbon"}))
            .and_tool_call("get_weather", json!({"city": "Lisbon"})),
        Turn::text("Quoted, and it is sunny."),
        Turn::tool_call("quote", json!({"city": "Oslo"})),
        Turn::text("The user said no."),
    ])
    .await
    .unwrap();
    let store = InMemorySessionStore::new();
    let policy = ToolApproval::new().rule("quote", Rule::Ask);
    assert_eq!(policy.rule_for("quote"), Rule::Ask);
    let agent = agent(&server, &store, vec![Arc::new(policy.clone())]);
    let session = agent.session("hitl");
    let stopped = session.invoke("Quote Lisbon").await.unwrap();
    assert_eq!(stopped.stop_reason, StopReason::Interrupted);
    assert_eq!(stopped.interrupts.len(), 1);
    let question = &stopped.interrupts[0];
    assert_eq!(question.name, "approval");
    assert_eq!(question.reason["tool"], "quote");
    assert_eq!(question.reason["input"], json!({"city": "Lisbon"}));
    assert_eq!(server.received().len(), 1, "no model call while waiting");
    assert_eq!(weather_calls("hitl"), 1);

    // Answers that do not fit are refused.
    let err = session
        .respond([agent_core::interrupt::InterruptResponse::new(
            "x",
            json!(true),
        )])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "interrupt_response");

    // Another replica (a fresh agent on the same store) answers yes.
    let replica = self::agent(&server, &store, vec![Arc::new(policy)]);
    let done = replica
        .session("hitl")
        .respond([agent_core::interrupt::InterruptResponse::new(
            question.id.clone(),
            json!(true),
        )])
        .await
        .unwrap();
    assert_eq!(done.stop_reason, StopReason::EndTurn);
    assert_eq!(done.text(), "Quoted, and it is sunny.");
    assert_eq!(
        weather_calls("hitl"),
        1,
        "the weather call's recorded result was reused"
    );
    let results: Vec<String> = server.tool_results(1);
    assert_eq!(results[0], "Lisbon: 999 EUR");
    assert!(results[1].contains("sunny"));

    // The next question is answered no, with a reason the model reads.
    let stopped = replica.session("hitl").invoke("Now Oslo").await.unwrap();
    let id = stopped.interrupts[0].id.clone();
    let done = replica
        .session("hitl")
        .respond([agent_core::interrupt::InterruptResponse::new(
            id,
            json!({"approve": false, "reason": "too cold"}),
        )])
        .await
        .unwrap();
    assert_eq!(done.text(), "The user said no.");
    let last: Vec<String> = server.tool_results(3);
    assert_eq!(last.last().unwrap(), "Tool call denied: too cold");
}

#[tokio::test]
async fn redaction_keeps_secrets_out_of_the_store_the_stream_and_the_model() {
    /// Returns a secret.
    #[tool]
    fn read_config() -> String {
        "token: Bearer abcdefghijklmnopqrstuvwxyz0123456789".to_owned()
    }
    let server = MockVllm::start([
        Turn::tool_call("read_config", json!({})),
        Turn::text("Your key AKIAABCDEFGHIJKLMNOP is set."),
    ])
    .await
    .unwrap();
    let store = InMemorySessionStore::new();
    let agent = Agent::builder()
        .model(provider(&server))
        .tool(read_config)
        .session_store(store.clone())
        .hook(Redact::secrets())
        .build()
        .unwrap();
    let mut streamed = String::new();
    let mut events = agent
        .session("secret")
        .stream("My key is AKIAABCDEFGHIJKLMNOP, check my config");
    while let Some(event) = events.next().await {
        match event.unwrap() {
            // Deltas are streamed as the model writes them; everything else is redacted.
            AgentEvent::TextDelta { .. } => {}
            other => streamed.push_str(&serde_json::to_string(&other).unwrap()),
        }
    }
    let stored = serde_json::to_string(&agent.session("secret").messages().await.unwrap()).unwrap();
    let to_model = serde_json::to_string(&sent(&server, 1)).unwrap();
    for (what, text) in [
        ("stored", &stored),
        ("streamed", &streamed),
        ("sent", &to_model),
    ] {
        assert!(!text.contains("AKIAABCDEFGHIJKLMNOP"), "{what}: {text}");
        assert!(
            !text.contains("abcdefghijklmnopqrstuvwxyz0123456789"),
            "{what}: {text}"
        );
    }
    assert!(stored.contains("[REDACTED aws_access_key_id]"), "{stored}");
    assert!(stored.contains("[REDACTED bearer_token]"), "{stored}");
    // The model's own answer was redacted too (its text had already been streamed as deltas).
    assert!(stored.contains("Your key [REDACTED aws_access_key_id] is set."));
    // Custom patterns, and text without secrets left as it is (borrowed).
    let iban = Redact::new()
        .pattern("iban", r"\bPT50(?: ?\d{4}){5}\b")
        .unwrap();
    assert_eq!(
        iban.redact("pay PT50 0002 0123 1234 5678 9015 today"),
        "pay [REDACTED iban] today"
    );
    assert!(matches!(
        iban.redact("nothing here"),
        std::borrow::Cow::Borrowed(_)
    ));
    assert!(Redact::new().pattern("bad", "(").is_err());
}

/// A hook that rewrites a message as it is added, and one that rewrites the result.
struct Annotate;

#[async_trait]
impl Hook for Annotate {
    async fn message_added(&self, ctx: &mut MessageAdded<'_>) -> Result<(), HookError> {
        ctx.run.state.set(
            "messages_seen",
            json!(
                ctx.run
                    .state
                    .get("messages_seen")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0)
                    + 1
            ),
        );
        Ok(())
    }

    async fn after_invocation(&self, ctx: &mut AfterInvocation<'_>) -> Result<(), HookError> {
        ctx.result.stopped_by = Some("annotated".into());
        Ok(())
    }
}

#[tokio::test]
async fn hooks_see_the_session_state_and_can_rewrite_the_result() {
    let server = MockVllm::start([Turn::text("Hi.")]).await.unwrap();
    let store = InMemorySessionStore::new();
    let agent = agent(&server, &store, vec![Arc::new(Annotate)]);
    let result = agent.session("st").invoke("Hello").await.unwrap();
    assert_eq!(result.stopped_by.as_deref(), Some("annotated"));
    let state = store
        .load(&agent_core::session::SessionKey::new("st", "default").unwrap())
        .await
        .unwrap()
        .unwrap()
        .state
        .agent_state;
    assert_eq!(state["messages_seen"], 2, "the prompt and the answer");
}
