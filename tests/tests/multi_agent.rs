//! Agents as tools against the vLLM-format server: the called agent's conversation stored
//! beside the caller's, its telemetry nested under the caller's tool span, cancellation passed
//! down, and a resumed caller that runs the call again getting the recorded answer.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use agent_core::prelude::*;
use agent_core::session::InMemorySessionStore;
use agent_core::telemetry::Telemetry;
use agent_tests::{MockVllm, Turn, fast_retry, provider};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::{Value, json};

/// Current weather for a city.
#[tool]
fn get_weather(city: String) -> Value {
    json!({"city": city, "forecast": "sunny", "high_c": 21})
}

fn expert(server: &MockVllm, store: &InMemorySessionStore, telemetry: Telemetry) -> Agent {
    Agent::builder()
        .name("weather-expert")
        .id("weather-expert")
        .model(provider(server))
        .system_prompt("You know the weather.")
        .tool(get_weather)
        .retry(fast_retry())
        .session_store(store.clone())
        .telemetry(telemetry)
        .build()
        .unwrap()
}

fn planner(
    server: &MockVllm,
    store: &InMemorySessionStore,
    expert: &Agent,
    telemetry: Telemetry,
) -> Agent {
    Agent::builder()
        .name("planner")
        .id("planner")
        .model(provider(server))
        .system_prompt("You plan trips; ask the weather expert about weather.")
        .tool(expert.as_tool(
            "ask_weather_expert",
            "Asks the weather expert a question about the weather.",
        ))
        .retry(fast_retry())
        .session_store(store.clone())
        .telemetry(telemetry)
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_agent_calls_another_whose_conversation_and_spans_nest_under_its_own() {
    let planner_model = MockVllm::start([
        Turn::tool_call(
            "ask_weather_expert",
            json!({"prompt": "Weather in Lisbon tomorrow?"}),
        ),
        Turn::text("Pack light: the expert says sunny, 21 °C."),
    ])
    .await
    .unwrap();
    let expert_model = MockVllm::start([
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})),
        Turn::text("Sunny in Lisbon, 21 °C."),
    ])
    .await
    .unwrap();
    let spans = InMemorySpanExporter::default();
    let tracer_provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let meter_provider = SdkMeterProvider::builder().build();
    let telemetry = Telemetry::new(&tracer_provider, &meter_provider);
    let store = InMemorySessionStore::new();
    let expert = expert(&expert_model, &store, telemetry.clone());
    let planner = planner(&planner_model, &store, &expert, telemetry);

    let result = planner
        .session("trip-1")
        .actor("ada")
        .invoke("Plan a day in Lisbon")
        .await
        .unwrap();
    assert_eq!(result.text(), "Pack light: the expert says sunny, 21 °C.");
    // The planner's model got the expert's answer as the tool's result.
    let sent = planner_model.received()[1].body["messages"].clone();
    let tool_message = sent
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()
        .clone();
    assert_eq!(tool_message["content"], "Sunny in Lisbon, 21 °C.");
    // The expert's model got the planner's question.
    assert_eq!(expert_model.last_message(0), "Weather in Lisbon tomorrow?");

    // Both conversations live in the same session, each under its agent's id.
    let planner_messages = planner.session("trip-1").messages().await.unwrap().unwrap();
    let expert_messages = expert.session("trip-1").messages().await.unwrap().unwrap();
    assert_eq!(planner_messages.len(), 4);
    assert_eq!(expert_messages.len(), 4);
    assert_eq!(expert_messages[0].text(), "Weather in Lisbon tomorrow?");

    // The expert's invoke_agent span is a child of the planner's execute_tool span.
    let finished = spans.get_finished_spans().unwrap();
    let find = |name: &str| {
        finished
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no span {name}: {:?}",
                    finished.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
            .clone()
    };
    let planner_span = find("invoke_agent planner");
    let tool_span = find("execute_tool ask_weather_expert");
    let expert_span = find("invoke_agent weather-expert");
    let expert_tool = find("execute_tool get_weather");
    assert_eq!(
        tool_span.parent_span_id,
        planner_span.span_context.span_id()
    );
    assert_eq!(expert_span.parent_span_id, tool_span.span_context.span_id());
    assert_eq!(
        expert_tool.parent_span_id,
        expert_span.span_context.span_id()
    );
    assert_eq!(
        expert_span.span_context.trace_id(),
        planner_span.span_context.trace_id()
    );
}

#[tokio::test]
async fn a_call_made_again_gets_the_recorded_answer_and_cancellation_reaches_the_called_agent() {
    let expert_model = MockVllm::start([Turn::text("Rain in Porto.")])
        .await
        .unwrap();
    let store = InMemorySessionStore::new();
    let called = expert(&expert_model, &store, Telemetry::disabled());
    let tool = called.as_tool("ask_weather_expert", "Weather questions.");
    let call = |id: &str| {
        let mut ctx = ToolContext::new(id, "trip-2");
        ctx.actor_id = Some("ada".into());
        ctx
    };
    let first = tool
        .call(json!({"prompt": "Weather in Porto?"}), call("call-7"))
        .await
        .unwrap();
    assert_eq!(first, ToolOutput::text("Rain in Porto."));
    // The same call again (a caller resumed after a crash runs it once more): the recorded
    // answer, with no model call.
    let again = tool
        .call(json!({"prompt": "Weather in Porto?"}), call("call-7"))
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(expert_model.received().len(), 1);
    assert_eq!(
        called
            .session("trip-2")
            .messages()
            .await
            .unwrap()
            .unwrap()
            .len(),
        2
    );

    // An empty prompt is the model's mistake, told to it.
    let err = tool
        .call(json!({"prompt": "  "}), call("call-8"))
        .await
        .unwrap_err();
    assert!(err.message().contains("`prompt`"), "{err}");

    // Cancelled with the caller: the called agent's model call stops at once.
    let slow =
        MockVllm::start([Turn::text("late")
            .with_fault(agent_tests::Fault::SlowFirstByte(Duration::from_secs(30)))])
        .await
        .unwrap();
    let stalled = expert(&slow, &store, Telemetry::disabled()).as_tool("ask", "Weather.");
    let ctx = call("call-9");
    let cancel = ctx.cancel.clone();
    let started = std::time::Instant::now();
    let pending =
        tokio::spawn(async move { stalled.call(json!({"prompt": "Weather?"}), ctx).await });
    // Cancelled once the called agent's model call is in flight (the server has it).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while slow.received().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the model call never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let err = pending.await.unwrap().unwrap_err();
    assert!(err.message().contains("cancelled"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
