//! Structured output (`Session::invoke_structured`) on every provider and mode: the
//! OpenAI-compatible provider with native tools and in constrained mode (the schema as vLLM's
//! `response_format`), and Bedrock Converse (a forced tool); a reply that does not fit goes back
//! with what is wrong, bounded; a typed error carries the last raw reply.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use agent_core::model::bedrock::BedrockConverse;
use agent_core::model::openai::ToolCalling;
use agent_core::prelude::*;
use agent_core::session::InMemorySessionStore;
use agent_tests::bedrock::{BedrockReply, BedrockUsage, LoopbackBedrock};
use agent_tests::{MockVllm, Turn, fast_retry, provider_builder};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

/// A trip plan.
#[derive(Debug, Deserialize, schemars::JsonSchema, PartialEq)]
struct TripPlan {
    /// Destination city.
    city: String,
    /// Nights to stay.
    nights: u32,
    /// Flights to take.
    flights: Vec<Flight>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema, PartialEq)]
struct Flight {
    number: String,
    price_eur: f64,
}

/// Current weather for a city.
#[tool]
fn get_weather(city: String) -> Value {
    json!({"city": city, "forecast": "sunny", "high_c": 21})
}

fn lisbon() -> TripPlan {
    TripPlan {
        city: "Lisbon".into(),
        nights: 2,
        flights: vec![Flight {
            number: "TA999".into(),
            price_eur: 116.0,
        }],
    }
}

fn lisbon_json() -> Value {
    json!({"city": "Lisbon", "nights": 2, "flights": [{"number": "TA999", "price_eur": 116.0}]})
}

fn vllm_agent(server: &MockVllm, mode: ToolCalling) -> Agent {
    Agent::builder()
        .model(provider_builder(server).tool_calling(mode).build().unwrap())
        .system_prompt("You plan trips.")
        .tool(get_weather)
        .retry(fast_retry())
        .session_store(InMemorySessionStore::new())
        .build()
        .unwrap()
}

#[tokio::test]
async fn native_tools_then_the_schema_as_response_format() {
    let server = MockVllm::start([
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})),
        Turn::text("Lisbon is sunny; TA999 for 116 EUR, two nights."),
        Turn::text(
            json!({"tool_call": {"name": "TripPlan", "arguments": lisbon_json()}}).to_string(),
        )
        .with_usage(300, 40),
    ])
    .await
    .unwrap();
    let agent = vllm_agent(&server, ToolCalling::Native);
    let session = agent.session("s1");
    let plan: TripPlan = session
        .invoke_structured("Plan two nights in Lisbon.")
        .await
        .unwrap();
    assert_eq!(plan, lisbon());

    let received = server.received();
    assert_eq!(received.len(), 3);
    // The loop's turns offer the tools natively; the structured turn sends the schema for
    // vLLM to enforce, and only the output tool.
    assert!(received[0].body["tools"].is_array());
    let last = &received[2].body;
    assert!(last.get("tools").is_none(), "{last}");
    assert_eq!(last["response_format"]["type"], "json_schema");
    // Only the output tool, forced: its branch is the whole schema (a root object).
    let schema = &last["response_format"]["json_schema"]["schema"];
    assert!(schema.get("oneOf").is_none(), "{schema}");
    let arguments = &schema["properties"]["tool_call"]["properties"]["arguments"];
    assert_eq!(arguments["required"], json!(["city", "nights", "flights"]));
    assert_eq!(
        arguments["properties"]["flights"]["items"]["properties"]["price_eur"]["type"],
        "number"
    );
    // The note asking for the structure comes after the answer, and is not stored.
    let messages = last["messages"].as_array().unwrap();
    assert!(
        messages.last().unwrap()["content"]
            .as_str()
            .unwrap()
            .contains("`TripPlan` tool")
    );
    let stored = session.messages().await.unwrap().unwrap();
    assert_eq!(stored.len(), 4, "prompt, call, result, answer");
    assert_eq!(
        stored[3].text(),
        "Lisbon is sunny; TA999 for 116 EUR, two nights."
    );
}

#[tokio::test]
async fn a_value_that_does_not_fit_goes_back_with_what_is_wrong() {
    let bad = json!({"city": "Lisbon", "nights": "two", "flights": []});
    let server = MockVllm::start([
        // Constrained mode: the loop's answer is in the protocol too.
        Turn::text(json!({"final_answer": "Two nights in Lisbon."}).to_string()),
        Turn::text(json!({"tool_call": {"name": "TripPlan", "arguments": bad}}).to_string()),
        Turn::text(
            json!({"tool_call": {"name": "TripPlan", "arguments": lisbon_json()}}).to_string(),
        ),
    ])
    .await
    .unwrap();
    let agent = vllm_agent(&server, ToolCalling::Constrained { parallel: false });
    let result = agent
        .session("s2")
        .structured_output(OutputSchema::of::<TripPlan>())
        .invoke("Plan it.")
        .await
        .unwrap();
    assert_eq!(result.structured::<TripPlan>().unwrap(), lisbon());
    assert_eq!(
        result.turns.len(),
        3,
        "the answer and two structured replies"
    );
    let retry = &server.received()[2].body["messages"];
    let feedback = retry.as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        feedback.contains("/nights") && feedback.contains("does not fit"),
        "{feedback}"
    );
}

#[tokio::test]
async fn attempts_are_bounded_and_the_error_carries_the_raw_reply() {
    let server = MockVllm::start([
        Turn::text("An answer."),
        Turn::text(
            json!({"tool_call": {"name": "TripPlan", "arguments": {"city": 5}}}).to_string(),
        ),
        Turn::text(
            json!({"tool_call": {"name": "TripPlan", "arguments": {"city": 6}}}).to_string(),
        ),
    ])
    .await
    .unwrap();
    let agent = vllm_agent(&server, ToolCalling::Native);
    let err = agent
        .session("s3")
        .structured_output(OutputSchema::of::<TripPlan>().max_attempts(2))
        .invoke("Plan it.")
        .await
        .unwrap_err();
    match err {
        AgentError::StructuredOutput {
            attempts,
            raw,
            message,
        } => {
            assert_eq!(attempts, 2);
            assert_eq!(raw, r#"{"city":6}"#);
            assert!(message.contains("does not fit"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.remaining(), 0);
}

#[tokio::test]
async fn bedrock_forces_the_output_tool_and_streams_its_input() {
    let usage = BedrockUsage {
        input: 10,
        output: 5,
        ..BedrockUsage::default()
    };
    let server = LoopbackBedrock::start([
        BedrockReply::text(&["Two nights in Lisbon, TA999."], usage),
        BedrockReply::tool_call("tooluse_plan", "TripPlan", &lisbon_json(), usage),
    ])
    .await
    .unwrap();
    let model = BedrockConverse::builder(server.client())
        .model_id("amazon.nova-pro-v1:0")
        .build()
        .unwrap();
    let agent = Agent::builder()
        .model(model)
        .tool(get_weather)
        .retry(fast_retry())
        .build()
        .unwrap();
    let mut stream = agent.session("b").stream_structured::<TripPlan>("Plan it.");
    let mut input = String::new();
    let mut result = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            AgentEvent::ToolInputDelta { delta, .. } => input.push_str(&delta),
            AgentEvent::Stop(r) => result = Some(r),
            _ => {}
        }
    }
    let result = result.unwrap();
    assert_eq!(result.structured::<TripPlan>().unwrap(), lisbon());
    assert_eq!(
        serde_json::from_str::<Value>(&input).unwrap(),
        lisbon_json()
    );
    assert_eq!(result.usage.input_tokens, 20);
    let second = &server.received()[1].body;
    assert_eq!(
        second["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "TripPlan"}})
    );
    let tools = second["toolConfig"]["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["toolSpec"]["description"], "A trip plan.");
}

#[tokio::test]
async fn a_run_that_ends_without_an_answer_has_no_structure() {
    let server = MockVllm::start([Turn::tool_call("get_weather", json!({"city": "Lisbon"}))])
        .await
        .unwrap();
    let agent = Agent::builder()
        .model(provider_builder(&server).build().unwrap())
        .tool(get_weather)
        .limits(Limits::default().max_turns(1))
        .final_answer_timeout(None)
        .build()
        .unwrap();
    let err = agent
        .session("s4")
        .invoke_structured::<TripPlan>("Plan it.")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::StructuredOutput { attempts: 0, message, .. } if message.contains("limit_turns")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_value_or_runs_only_the_missing_step() {
    let server = MockVllm::start([
        Turn::text("Two nights in Lisbon."),
        // The structured step fails twice (the schema allows two attempts)...
        Turn::text(
            json!({"tool_call": {"name": "TripPlan", "arguments": {"city": 5}}}).to_string(),
        ),
        Turn::text(
            json!({"tool_call": {"name": "TripPlan", "arguments": {"city": 6}}}).to_string(),
        ),
        // ...and the retry runs only that step again, which now fits.
        Turn::text(
            json!({"tool_call": {"name": "TripPlan", "arguments": lisbon_json()}}).to_string(),
        ),
    ])
    .await
    .unwrap();
    let agent = vllm_agent(&server, ToolCalling::Native);
    let session = || {
        agent
            .session("keyed")
            .idempotency_key("req-1")
            .structured_output(OutputSchema::of::<TripPlan>().max_attempts(2))
    };
    let err = session().invoke("Plan it.").await.unwrap_err();
    assert!(
        matches!(err, AgentError::StructuredOutput { .. }),
        "{err:?}"
    );
    let again = session().invoke("Plan it.").await.unwrap();
    assert_eq!(again.structured::<TripPlan>().unwrap(), lisbon());
    assert_eq!(
        server.received().len(),
        4,
        "the answer was not asked for again"
    );
    // A third retry gets the recorded value, with no model call.
    let third = session().invoke("Plan it.").await.unwrap();
    assert_eq!(third.structured::<TripPlan>().unwrap(), lisbon());
    assert_eq!(server.received().len(), 4);
    let stored = agent.session("keyed").messages().await.unwrap().unwrap();
    assert_eq!(stored.len(), 2, "one prompt, one answer: {stored:?}");
}

#[tokio::test]
async fn every_tool_call_of_a_rejected_reply_is_answered() {
    let usage = BedrockUsage {
        input: 1,
        output: 1,
        ..BedrockUsage::default()
    };
    let server = LoopbackBedrock::start([
        BedrockReply::text(&["Lisbon, two nights."], usage),
        // The structured step: the model calls another tool instead.
        BedrockReply::tool_call(
            "t-weather",
            "get_weather",
            &json!({"city": "Lisbon"}),
            usage,
        ),
        BedrockReply::tool_call("t-plan", "TripPlan", &lisbon_json(), usage),
    ])
    .await
    .unwrap();
    let agent = Agent::builder()
        .model(
            BedrockConverse::builder(server.client())
                .model_id("amazon.nova-pro-v1:0")
                .build()
                .unwrap(),
        )
        .tool(get_weather)
        .build()
        .unwrap();
    let plan: TripPlan = agent
        .session("b2")
        .invoke_structured("Plan it.")
        .await
        .unwrap();
    assert_eq!(plan, lisbon());
    let last = &server.received()[2].body["messages"];
    let feedback = last.as_array().unwrap().last().unwrap();
    assert_eq!(feedback["role"], "user");
    assert_eq!(
        feedback["content"][0]["toolResult"]["toolUseId"],
        "t-weather"
    );
    assert_eq!(feedback["content"][0]["toolResult"]["status"], "error");
    assert!(
        feedback["content"][1]["text"]
            .as_str()
            .unwrap()
            .contains("not a call of the `TripPlan` tool")
    );
}

#[tokio::test]
async fn a_model_failure_in_the_structured_step_keeps_its_type() {
    let server = MockVllm::start([
        Turn::text("An answer."),
        Turn::fault(agent_tests::Fault::Status {
            code: 403,
            retry_after: None,
            message: "forbidden".into(),
        }),
    ])
    .await
    .unwrap();
    let agent = vllm_agent(&server, ToolCalling::Native);
    let err = agent
        .session("s5")
        .invoke_structured::<TripPlan>("Plan it.")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            AgentError::Model {
                error: agent_core::model::ModelError::Fatal {
                    status: Some(403),
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
}
