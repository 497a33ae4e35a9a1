//! A real model (llama.cpp's llama-server with Qwen2.5-Coder-1.5B, started by
//! `scripts/local-model.sh`, found through `AGENT_LOCAL_MODEL_URL`) calls a `#[tool]` through
//! constrained tool calling and answers with the tool's result.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::Duration;

use agent_core::model::openai::{OpenAiCompatible, ToolCalling};
use agent_core::prelude::*;
use serde_json::{Value, json};

static CITIES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Current weather for a city.
#[tool]
fn get_weather(
    /// City name, e.g. "Lisbon".
    city: String,
) -> Value {
    CITIES.lock().unwrap().push(city.clone());
    json!({"city": city, "conditions": "light rain", "temperature_c": 12})
}

/// The local model endpoint (`scripts/local-model.sh`), or a panic that says how to start it.
fn local_model_url() -> String {
    std::env::var("AGENT_LOCAL_MODEL_URL").unwrap_or_else(|_| {
        panic!(
            "AGENT_LOCAL_MODEL_URL is not set. This test needs the local model endpoint: run the whole suite with \
             scripts/test.sh, or run `scripts/local-model.sh start` and export AGENT_LOCAL_MODEL_URL=<the URL it prints>"
        )
    })
}

#[tokio::test]
async fn a_real_local_model_calls_a_tool_and_uses_its_result() {
    let base_url = local_model_url();
    let model = OpenAiCompatible::builder()
        .base_url(base_url)
        .model("local")
        .tool_calling(ToolCalling::Constrained { parallel: false })
        .temperature(0.0)
        .max_tokens(200)
        .read_timeout(Duration::from_secs(120))
        .build()
        .expect("model");
    let agent = Agent::builder()
        .model(model)
        .system_prompt("You are a weather assistant. Always look up the weather with the tool before answering.")
        .tool(get_weather)
        .limits(Limits::default().max_turns(4).timeout(Duration::from_secs(300)))
        .build()
        .expect("agent");
    let result = agent
        .session("real-model")
        .invoke("What is the weather in Paris right now?")
        .await
        .expect("invoke");
    let cities = CITIES.lock().unwrap().clone();
    assert!(
        !cities.is_empty(),
        "the model called no tool; answer: {}",
        result.text()
    );
    assert!(
        cities.iter().any(|c| c.to_lowercase().contains("paris")),
        "called with {cities:?}"
    );
    assert_eq!(result.stop_reason, StopReason::EndTurn, "{result:?}");
    let answer = result.text().to_lowercase();
    assert!(
        answer.contains("rain") || answer.contains("12"),
        "the answer does not use the tool's result: {answer}"
    );
}

/// A trip the user described.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Trip {
    /// The destination city.
    destination: String,
    /// How many nights.
    nights: u32,
    /// The travellers, by first name.
    travellers: Vec<Traveller>,
}

/// One traveller.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Traveller {
    /// First name.
    name: String,
    /// Age in years.
    age: u32,
}

/// Structured output from the real model, native tool calling (the mode it cannot call tools
/// in): the structured turn goes as a JSON schema that llama.cpp enforces as a grammar, so even
/// this model produces a nested value that fits.
#[tokio::test]
async fn a_real_local_model_gives_a_nested_structured_value() {
    let base_url = local_model_url();
    let model = OpenAiCompatible::builder()
        .base_url(base_url)
        .model("local")
        .temperature(0.0)
        .max_tokens(200)
        .read_timeout(Duration::from_secs(120))
        .build()
        .expect("model");
    let agent = Agent::builder()
        .model(model)
        .system_prompt("You are a travel assistant. Answer briefly.")
        .limits(Limits::default().timeout(Duration::from_secs(300)))
        .build()
        .expect("agent");
    let trip: Trip = agent
        .session("real-structured")
        .invoke_structured(
            "Ana (34) and her son Rui (8) are going to Lisbon for three nights. Summarise the trip.",
        )
        .await
        .expect("a structured value");
    assert!(
        trip.destination.to_lowercase().contains("lisbon"),
        "{trip:?}"
    );
    assert_eq!(trip.nights, 3, "{trip:?}");
    let names: Vec<String> = trip
        .travellers
        .iter()
        .map(|t| t.name.to_lowercase())
        .collect();
    assert!(
        names.contains(&"ana".into()) && names.contains(&"rui".into()),
        "{trip:?}"
    );
    assert!(trip.travellers.iter().any(|t| t.age == 34), "{trip:?}");
}

static EXPERT_CITIES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Current weather for a city.
#[tool]
fn city_weather(
    /// City name, e.g. "Lisbon".
    city: String,
) -> Value {
    EXPERT_CITIES.lock().unwrap().push(city.clone());
    json!({"city": city, "conditions": "snow", "temperature_c": -3})
}

fn local_model() -> OpenAiCompatible {
    let base_url = local_model_url();
    OpenAiCompatible::builder()
        .base_url(base_url)
        .model("local")
        .tool_calling(ToolCalling::Constrained { parallel: false })
        .temperature(0.0)
        .max_tokens(200)
        .read_timeout(Duration::from_secs(120))
        .build()
        .expect("model")
}

/// Two agents on the real model: a planner that delegates weather questions to an expert agent
/// (an agent as a tool), which looks the weather up with its own tool.
#[tokio::test]
async fn a_real_local_model_delegates_to_another_agent() {
    let store = agent_core::session::InMemorySessionStore::new();
    let expert = Agent::builder()
        .name("weather-expert")
        .id("weather-expert")
        .model(local_model())
        .system_prompt(
            "You are a weather expert. Always look up the weather with the city_weather tool, \
             then answer in one sentence.",
        )
        .tool(city_weather)
        .session_store(store.clone())
        .limits(
            Limits::default()
                .max_turns(4)
                .timeout(Duration::from_secs(240)),
        )
        .build()
        .expect("expert");
    let planner = Agent::builder()
        .name("planner")
        .id("planner")
        .model(local_model())
        .system_prompt(
            "You are a travel planner. For any question about weather, ask the weather expert \
             with the ask_weather_expert tool, then answer the user in one sentence.",
        )
        .tool(expert.as_tool(
            "ask_weather_expert",
            "Asks the weather expert about the weather in a city.",
        ))
        .session_store(store)
        .limits(
            Limits::default()
                .max_turns(4)
                .timeout(Duration::from_secs(500)),
        )
        .build()
        .expect("planner");
    let result = planner
        .session("real-multi")
        .invoke("What is the weather in Oslo right now?")
        .await
        .expect("invoke");
    let expert_messages = expert
        .session("real-multi")
        .messages()
        .await
        .expect("load")
        .unwrap_or_default();
    assert!(
        !expert_messages.is_empty(),
        "the planner never asked the expert; answer: {}",
        result.text()
    );
    let cities = EXPERT_CITIES.lock().unwrap().clone();
    assert!(
        cities.iter().any(|c| c.to_lowercase().contains("oslo")),
        "the expert looked up {cities:?}"
    );
    assert!(result.has_answer(), "{result:?}");
    let answer = result.text().to_lowercase();
    assert!(
        answer.contains("snow") || answer.contains("-3") || answer.contains("cold"),
        "the planner's answer does not use the expert's: {answer}"
    );
}

/// The judged metrics with the real model as judge: a correct answer and a wrong one, each
/// judged (goal accuracy with a reference, faithfulness to the tool result). A small model is a
/// noisy judge, so what must hold is the contract: every metric is a score in 0..=1 or a typed
/// "unscored" with its reason, never a guess, within the judge's bounds; and the constrained
/// reply gives a verdict for the goal.
#[tokio::test]
async fn a_real_model_judges_runs_within_its_bounds() {
    use agent_core::eval::{Judge, Outcome, Sample};
    use agent_core::message::{ContentBlock, Role, ToolResult, ToolUse};
    let base_url = local_model_url();
    let model = OpenAiCompatible::builder()
        .base_url(base_url)
        .model("local")
        .temperature(0.0)
        .build()
        .expect("model");
    let judge = Judge::new(std::sync::Arc::new(model))
        .timeout(Duration::from_secs(120))
        .attempts(2);
    let mut goal_scores = Vec::new();
    for answer in [
        "Today in Lisbon it is sunny, 21 °C.",
        "Today in Lisbon it is snowing, -5 °C.",
    ] {
        let mut s = Sample::new("lisbon", "What's the weather like in Lisbon today?");
        s.add_message(Message::user("What's the weather like in Lisbon today?"));
        s.add_message(Message::new(
            Role::Assistant,
            vec![ContentBlock::ToolUse(ToolUse {
                tool_use_id: "c1".into(),
                name: "get_weather".into(),
                input: json!({"city": "Lisbon"}),
            })],
        ));
        s.add_message(Message::new(
            Role::User,
            vec![ContentBlock::ToolResult(ToolResult::success(
                "c1",
                "Lisbon: sunny, 21 °C",
            ))],
        ));
        s.add_message(Message::assistant(answer));
        s.response = answer.into();
        let goal = judge
            .goal_accuracy(
                &s,
                Some("The user learns today's weather in Lisbon: sunny, 21 °C"),
            )
            .await;
        let faithfulness = judge.faithfulness(&s).await;
        eprintln!("{answer}\n  goal: {goal:?}\n  faithfulness: {faithfulness:?}");
        let Outcome::Value(v) = goal.outcome else {
            panic!("no verdict from the constrained judge: {goal:?}");
        };
        assert!(v == 0.0 || v == 1.0, "{v}");
        goal_scores.push(v);
        assert!(goal.explanation.is_some_and(|e| !e.is_empty()));
        match faithfulness.outcome {
            Outcome::Value(v) => assert!((0.0..=1.0).contains(&v), "{v}"),
            Outcome::Unscored(reason) => assert!(!reason.is_empty()),
        }
    }
    // The contradicting answer never scores above the right one.
    assert!(goal_scores[0] >= goal_scores[1], "{goal_scores:?}");
}
