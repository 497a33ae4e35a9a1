//! Constrained tool calling through the vLLM-format server: the schema and protocol sent, replies
//! mapped back to tool uses and streamed answer text, malformed replies bounded.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agent_core::model::ModelError;
use agent_core::model::openai::ToolCalling;
use agent_core::prelude::*;
use agent_tests::{MockVllm, Turn, fast_retry, provider_builder};
use futures::StreamExt;
use serde_json::{Value, json};

/// Current weather for a city.
#[tool]
fn get_weather(
    /// City name.
    city: String,
) -> Value {
    json!({"city": city, "conditions": "light rain", "high_c": 12})
}

/// Local time in a city.
#[tool]
fn local_time(city: String) -> String {
    format!("14:05 in {city}")
}

fn agent(server: &MockVllm, parallel: bool, streaming: bool) -> Agent {
    let model = provider_builder(server)
        .tool_calling(ToolCalling::Constrained { parallel })
        .streaming(streaming)
        .build()
        .expect("model");
    Agent::builder()
        .model(model)
        .system_prompt("You are a travel assistant.")
        .tool(get_weather)
        .tool(local_time)
        .retry(fast_retry())
        .build()
        .expect("agent")
}

#[tokio::test]
async fn tools_become_a_response_format_schema_and_replies_map_back() {
    let server = MockVllm::start([
        Turn::text(r#"{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}"#),
        Turn::text(r#"{"final_answer": "Light rain in Paris, 12 \u00b0C. Take an \"umbrella\"."}"#),
    ])
    .await
    .expect("server");
    let agent = agent(&server, false, true);
    let mut stream = agent.session("c1").stream("Weather in Paris?");
    let mut text = String::new();
    let mut tool_results = Vec::new();
    let mut result = None;
    while let Some(e) = stream.next().await {
        match e.expect("event") {
            AgentEvent::TextDelta { text: t } => text.push_str(&t),
            AgentEvent::ToolResult { result } => tool_results.push(result),
            AgentEvent::Stop(r) => result = Some(r),
            _ => {}
        }
    }
    let result = result.expect("stop");
    assert_eq!(result.stop_reason, StopReason::EndTurn);
    assert_eq!(
        result.text(),
        "Light rain in Paris, 12 °C. Take an \"umbrella\"."
    );
    assert_eq!(
        text,
        result.text(),
        "the answer streams as plain text deltas, without the JSON around it"
    );
    assert!(result.text().len() > 10);
    assert_eq!(tool_results.len(), 1);
    assert!(tool_results[0].text().contains("light rain"));

    let received = server.received();
    let first = &received[0].body;
    assert!(first.get("tools").is_none() && first.get("tool_choice").is_none());
    assert_eq!(first["response_format"]["type"], "json_schema");
    let branches = first["response_format"]["json_schema"]["schema"]["oneOf"]
        .as_array()
        .expect("oneOf");
    assert_eq!(branches.len(), 3, "two tools and the final answer");
    assert_eq!(
        branches[0]["properties"]["tool_call"]["properties"]["name"]["const"],
        "get_weather"
    );
    assert_eq!(
        branches[0]["properties"]["tool_call"]["properties"]["arguments"]["required"],
        json!(["city"])
    );
    let system = first["messages"][0]["content"].as_str().expect("system");
    assert!(system.starts_with("You are a travel assistant."));
    assert!(
        system.contains("- get_weather: Current weather for a city.")
            && system.contains("final_answer")
    );

    let second = &received[1].body["messages"];
    let assistant: Value =
        serde_json::from_str(second[2]["content"].as_str().expect("assistant")).expect("json");
    assert_eq!(
        assistant,
        json!({"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}})
    );
    assert!(second[2].get("tool_calls").is_none());
    assert_eq!(second[3]["role"], "user");
    let tool_result: Value =
        serde_json::from_str(second[3]["content"].as_str().expect("result")).expect("json");
    assert_eq!(tool_result["tool_result"]["name"], "get_weather");
    assert_eq!(tool_result["tool_result"]["status"], "success");
    assert!(
        tool_result["tool_result"]["content"]
            .as_str()
            .expect("content")
            .contains("light rain")
    );
}

#[tokio::test]
async fn parallel_calls_when_enabled_and_non_streaming_mode() {
    let server = MockVllm::start([
        Turn::text(r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Lisbon"}}, {"name": "local_time", "arguments": {"city": "Lisbon"}}]}"#),
        Turn::text(r#"{"final_answer": "Rainy, and it is 14:05."}"#),
    ])
    .await
    .expect("server");
    let r = agent(&server, true, false)
        .session("c2")
        .invoke("Lisbon now?")
        .await
        .expect("invoke");
    assert_eq!(r.text(), "Rainy, and it is 14:05.");
    assert_eq!(r.turns[0].tool_calls, 2);
    let received = server.received();
    assert_eq!(received[0].body["stream"], false);
    let branches = received[0].body["response_format"]["json_schema"]["schema"]["oneOf"]
        .as_array()
        .expect("oneOf")
        .clone();
    assert!(
        branches
            .iter()
            .any(|b| b["properties"].get("tool_calls").is_some())
    );
    let second = &received[1].body["messages"];
    let results = second[3]["content"].as_str().expect("results");
    assert!(
        results.contains("14:05 in Lisbon") && results.contains("light rain"),
        "{results}"
    );
}

#[tokio::test]
async fn a_reply_that_does_not_parse_is_a_bounded_typed_error() {
    let bad = || Turn::text(r#"{"final_answer": "cut off mid"#).with_finish_reason("length");
    let server = MockVllm::start([bad(), bad(), bad(), bad()])
        .await
        .expect("server");
    let err = agent(&server, false, true)
        .session("c3")
        .invoke("hi")
        .await
        .expect_err("bounded");
    assert!(
        matches!(
            err,
            AgentError::Model {
                attempts: 4,
                error: ModelError::InvalidReply { .. }
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.received().len(), 4);

    // One bad reply is retried and the next good one is used.
    let server = MockVllm::start([
        Turn::text("Sure! The weather is nice."),
        Turn::text(r#"{"final_answer": "Nice."}"#),
    ])
    .await
    .expect("server");
    let r = agent(&server, false, true)
        .session("c4")
        .invoke("hi")
        .await
        .expect("invoke");
    assert_eq!(r.text(), "Nice.");
    assert_eq!(r.turns[0].attempts, 2);
}

#[tokio::test]
async fn tool_choice_any_drops_the_answer_branch_and_unknown_tools_get_error_results() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = MockVllm::start([
        Turn::text(r#"{"tool_call": {"name": "teleport", "arguments": {}}}"#),
        Turn::text(r#"{"final_answer": "ok"}"#),
    ])
    .await
    .expect("server");
    let model = provider_builder(&server)
        .tool_calling(ToolCalling::Constrained { parallel: false })
        .build()
        .expect("model");
    let c2 = calls.clone();
    let agent = Agent::builder()
        .model(model)
        .tool(FnTool::new(
            "noop",
            "Does nothing.",
            json!({"type": "object"}),
            move |_, _| {
                c2.fetch_add(1, Ordering::SeqCst);
                async { Ok(ToolOutput::text("done")) }
            },
        ))
        .tool_choice(ToolChoice::Any)
        .limits(Limits::default().max_turns(2))
        .build()
        .expect("agent");
    let r = agent.session("c5").invoke("go").await.expect("invoke");
    let received = server.received();
    // One tool and no answer branch: the tool's branch is the whole schema.
    let schema = &received[0].body["response_format"]["json_schema"]["schema"];
    let branches = match schema.get("oneOf") {
        Some(b) => b.as_array().expect("oneOf").clone(),
        None => vec![schema.clone()],
    };
    assert!(!branches.is_empty());
    assert!(
        branches
            .iter()
            .all(|b| b["properties"].get("final_answer").is_none())
    );
    let result = received[1].body["messages"][3]["content"]
        .as_str()
        .expect("result")
        .to_owned();
    assert!(result.contains("unknown tool `teleport`"), "{result}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(r.text(), "ok");
}

/// A constrained reply cut off at the output bound (`finish_reason: length`) is an invalid reply
/// that says so, so a caller can retry with a larger bound (the evaluation judge does).
#[tokio::test]
async fn a_reply_cut_off_at_the_bound_says_so() {
    use agent_core::model::{ModelRequest, ToolChoice};
    use agent_core::tool::ToolSpec;
    let server = MockVllm::start([
        Turn::text(r#"{"tool_call": {"name": "verdict", "arguments": {"statements": ["Lisbon is"#)
            .with_finish_reason("length"),
        Turn::text(r#"{"tool_call": {"name": "verdict", "arguments": {"statements": ["#)
            .with_finish_reason("stop"),
    ])
    .await
    .unwrap();
    let model = provider_builder(&server)
        .tool_calling(ToolCalling::Constrained { parallel: false })
        .build()
        .unwrap();
    let tools = [ToolSpec {
        name: "verdict".into(),
        description: "The judgement.".into(),
        input_schema: json!({"type": "object"}),
    }];
    let choice = ToolChoice::Tool("verdict".into());
    let prompt = Message::user("Judge.");
    let request = ModelRequest::new(vec![&prompt], &tools, &choice).max_tokens(8);
    let cut = model.complete(&request).await.expect_err("cut off");
    assert!(
        matches!(&cut, ModelError::InvalidReply { message } if message.starts_with("the reply was cut off at the output bound")),
        "{cut}"
    );
    // Malformed without hitting the bound: invalid, but not said to be cut off.
    let malformed = model.complete(&request).await.expect_err("malformed");
    assert!(
        matches!(&malformed, ModelError::InvalidReply { message } if !message.contains("cut off")),
        "{malformed}"
    );
}
