//! The OpenAI-compatible provider against the vLLM-format server: wire format, deltas,
//! arguments, reasoning, usage, error classification, non-streaming mode.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use agent_core::message::{ContentBlock, Message, ReasoningContent, ToolUse};
use agent_core::model::{
    Model, ModelError, ModelEvent, ModelRequest, ModelResponse, ModelStopReason, ToolChoice,
};
use agent_core::tool::ToolSpec;
use agent_tests::{ArgsEncoding, Fault, MockVllm, Turn, provider, provider_builder};
use futures::StreamExt;
use serde_json::json;

fn weather_spec() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        description: "Weather for a city.".into(),
        input_schema: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    }
}

async fn call(
    model: &impl Model,
    choice: &ToolChoice,
) -> (Vec<ModelEvent>, Result<ModelResponse, ModelError>) {
    let prompt = Message::user("Weather in Lisbon?");
    let specs = [weather_spec()];
    let request = ModelRequest::new(vec![&prompt], &specs, choice).system_prompt("You plan trips.");
    let mut stream = model.stream(&request);
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(ModelEvent::Completed(r)) => return (events, Ok(r)),
            Ok(e) => events.push(e),
            Err(e) => return (events, Err(e)),
        }
    }
    (
        events,
        Err(ModelError::Transient {
            message: "no completion".into(),
        }),
    )
}

fn tool_uses(r: &ModelResponse) -> Vec<ToolUse> {
    r.content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::ToolUse(u) => Some(u.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn streams_text_with_usage_and_sends_the_vllm_request_shape() {
    let server = MockVllm::start([Turn::text("Sunny and mild in Lisbon.").with_usage(312, 41)])
        .await
        .expect("server");
    let model = provider_builder(&server)
        .header("x-tenant", "acme")
        .max_tokens(256)
        .param("top_k", json!(20))
        .build()
        .expect("model");
    let (events, response) = call(&model, &ToolChoice::Auto).await;
    let response = response.expect("response");
    let deltas: String = events
        .iter()
        .filter_map(|e| match e {
            ModelEvent::TextDelta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas, "Sunny and mild in Lisbon.");
    assert!(
        events.len() >= 5,
        "text should stream in pieces: {events:?}"
    );
    assert_eq!(
        response.content,
        vec![ContentBlock::Text("Sunny and mild in Lisbon.".into())]
    );
    assert_eq!(response.stop_reason, ModelStopReason::EndTurn);
    assert_eq!(
        (
            response.usage.input_tokens,
            response.usage.output_tokens,
            response.usage.total_tokens
        ),
        (312, 41, 353)
    );
    assert!(
        response
            .response_id
            .as_deref()
            .is_some_and(|id| id.starts_with("chatcmpl-"))
    );

    let req = &server.received()[0];
    let body = &req.body;
    assert_eq!(body["model"], "qwen3-8b");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "You plan trips."})
    );
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "Weather in Lisbon?"})
    );
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(
        body["tools"][0]["function"]["parameters"]["required"],
        json!(["city"])
    );
    assert_eq!(body["tool_choice"], "auto");
    assert_eq!(body["max_tokens"], 256);
    assert_eq!(body["top_k"], 20);
    assert_eq!(req.headers["authorization"], "Bearer test-key");
    assert_eq!(req.headers["x-tenant"], "acme");
}

#[tokio::test]
async fn accumulates_streamed_tool_calls_by_index() {
    let server = MockVllm::start([Turn::tool_call(
        "get_weather",
        json!({"city": "Lisbon", "days": [1, 2]}),
    )
    .and_tool_call("get_weather", json!({"city": "Porto"}))])
    .await
    .expect("server");
    let (events, response) = call(&provider(&server), &ToolChoice::Auto).await;
    let response = response.expect("response");
    assert_eq!(response.stop_reason, ModelStopReason::ToolUse);
    let uses = tool_uses(&response);
    assert_eq!(uses.len(), 2);
    assert!(uses[0].tool_use_id.starts_with("chatcmpl-tool-"));
    assert_ne!(uses[0].tool_use_id, uses[1].tool_use_id);
    assert_eq!(uses[0].input, json!({"city": "Lisbon", "days": [1, 2]}));
    assert_eq!(uses[1].input, json!({"city": "Porto"}));
    let starts = events
        .iter()
        .filter(|e| matches!(e, ModelEvent::ToolUseStart { .. }))
        .count();
    assert_eq!(starts, 2);
    let fragments: String = events
        .iter()
        .filter_map(|e| match e {
            ModelEvent::ToolInputDelta { tool_use_id, delta }
                if *tool_use_id == uses[0].tool_use_id =>
            {
                Some(delta.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&fragments).expect("json"),
        uses[0].input
    );
}

#[tokio::test]
async fn named_tool_choice_finishing_with_stop_still_yields_tool_use() {
    let server = MockVllm::start([
        Turn::tool_call("get_weather", json!({"city": "Faro"})).with_finish_reason("stop")
    ])
    .await
    .expect("server");
    let (_, response) = call(&provider(&server), &ToolChoice::Tool("get_weather".into())).await;
    let response = response.expect("response");
    assert_eq!(response.stop_reason, ModelStopReason::ToolUse);
    assert_eq!(response.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        server.received()[0].body["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
}

#[tokio::test]
async fn accepts_object_doubly_encoded_and_idless_arguments_and_keeps_unparseable_ones() {
    let args = json!({"city": "Lisbon"});
    let server = MockVllm::start([
        Turn::tool_call("get_weather", args.clone()).with_args(ArgsEncoding::Object),
        Turn::tool_call("get_weather", args.clone()).with_args(ArgsEncoding::DoubleEncoded),
        Turn::tool_call("get_weather", args.clone()).with_args(ArgsEncoding::Idless),
        Turn::tool_call("get_weather", args.clone()).with_args(ArgsEncoding::Truncated),
    ])
    .await
    .expect("server");
    let model = provider(&server);
    for _ in 0..3 {
        let (_, response) = call(&model, &ToolChoice::Auto).await;
        assert_eq!(tool_uses(&response.expect("response"))[0].input, args);
    }
    let (_, response) = call(&model, &ToolChoice::Auto).await;
    let uses = tool_uses(&response.expect("a truncated call is not a crash"));
    assert_eq!(
        uses[0].input,
        json!("{\"city\":"),
        "raw text kept for the executor to answer"
    );
}

#[tokio::test]
async fn reads_reasoning_from_reasoning_content_and_reasoning() {
    let mut second = Turn::text("Pack an umbrella.").with_reasoning("It rains in November.");
    second.reasoning_field = true;
    let server = MockVllm::start([
        Turn::text("Pack light.").with_reasoning("Dry season."),
        second,
    ])
    .await
    .expect("server");
    let model = provider(&server);
    for expected in ["Dry season.", "It rains in November."] {
        let (events, response) = call(&model, &ToolChoice::Auto).await;
        let response = response.expect("response");
        match &response.content[0] {
            ContentBlock::ReasoningContent(ReasoningContent::ReasoningText(r)) => {
                assert_eq!(r.text, expected)
            }
            other => panic!("expected reasoning first, got {other:?}"),
        }
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ModelEvent::ReasoningDelta { .. }))
        );
    }
}

#[tokio::test]
async fn classifies_every_error_shape() {
    let server = MockVllm::start([
        Turn::fault(Fault::ContextOverflow { legacy: false }),
        Turn::fault(Fault::ContextOverflow { legacy: true }),
        Turn::fault(Fault::Status {
            code: 429,
            retry_after: Some("2".into()),
            message: "queue full".into(),
        }),
        Turn::fault(Fault::Status {
            code: 503,
            retry_after: None,
            message: "overloaded".into(),
        }),
        Turn::fault(Fault::Status {
            code: 500,
            retry_after: None,
            message: "engine dead".into(),
        }),
        Turn::fault(Fault::Status {
            code: 401,
            retry_after: None,
            message: "bad key".into(),
        }),
        Turn::text("a b c d e").with_fault(Fault::MidStreamError { code: 500 }),
        Turn::text("a b c d e").with_fault(Fault::MalformedChunk),
        Turn::text("a b c d e f g h").with_fault(Fault::DropMidStream { after_chunks: 3 }),
        Turn::text("late").with_fault(Fault::SlowFirstByte(Duration::from_secs(4))),
    ])
    .await
    .expect("server");
    let model = provider_builder(&server)
        .read_timeout(Duration::from_millis(500))
        .build()
        .expect("model");
    let mut errors = Vec::new();
    for _ in 0..10 {
        let (_, r) = call(&model, &ToolChoice::Auto).await;
        errors.push(r.expect_err("each turn is a fault"));
    }
    assert!(
        matches!(&errors[0], ModelError::ContextOverflow { message } if message.contains("maximum context length"))
    );
    assert!(
        matches!(&errors[1], ModelError::ContextOverflow { .. }),
        "legacy flat body: {:?}",
        errors[1]
    );
    assert_eq!(
        errors[2],
        ModelError::Throttled {
            status: 429,
            message: "queue full".into(),
            retry_after: Some(Duration::from_secs(2))
        }
    );
    assert!(matches!(
        &errors[3],
        ModelError::Throttled {
            status: 503,
            retry_after: None,
            ..
        }
    ));
    assert!(
        matches!(&errors[4], ModelError::Transient { message } if message.contains("engine dead"))
    );
    assert_eq!(
        errors[5],
        ModelError::Fatal {
            status: Some(401),
            message: "bad key".into()
        }
    );
    assert!(
        matches!(&errors[6], ModelError::Transient { message } if message.contains("injected engine failure")),
        "{:?}",
        errors[6]
    );
    assert!(
        matches!(&errors[7], ModelError::Transient { message } if message.contains("malformed")),
        "{:?}",
        errors[7]
    );
    // A cut connection and a read timeout: connection errors, retried, with the client's
    // error as their source.
    assert!(
        matches!(&errors[8], ModelError::Connection { .. }) && errors[8].is_retryable(),
        "{:?}",
        errors[8]
    );
    assert!(
        matches!(&errors[9], ModelError::Connection { message, .. } if message.contains("timed out")),
        "{:?}",
        errors[9]
    );
    assert!(std::error::Error::source(&errors[9]).is_some());
    assert!(
        errors.iter().all(|e| !e.to_string().contains("test-key")),
        "secrets never in errors"
    );
}

#[tokio::test]
async fn model_not_found_is_fatal_with_the_servers_message() {
    let server = MockVllm::start([Turn::text("x")]).await.expect("server");
    let model = provider_builder(&server)
        .model("nope")
        .build()
        .expect("model");
    let (_, r) = call(&model, &ToolChoice::Auto).await;
    assert!(
        matches!(r, Err(ModelError::Fatal { status: Some(404), ref message }) if message.contains("does not exist")),
        "{r:?}"
    );
}

#[tokio::test]
async fn non_streaming_mode() {
    let server = MockVllm::start([
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})).with_text("Let me check."),
        Turn::text("Sunny.").with_reasoning("easy"),
    ])
    .await
    .expect("server");
    let model = provider_builder(&server)
        .streaming(false)
        .build()
        .expect("model");
    let (_, r) = call(&model, &ToolChoice::Any).await;
    let r = r.expect("response");
    assert_eq!(r.stop_reason, ModelStopReason::ToolUse);
    assert_eq!(r.content[0], ContentBlock::Text("Let me check.".into()));
    assert_eq!(tool_uses(&r)[0].input, json!({"city": "Lisbon"}));
    assert_eq!(r.usage.total_tokens, 45);
    let (events, r) = call(&model, &ToolChoice::Auto).await;
    assert_eq!(r.expect("response").content.len(), 2);
    assert!(events.contains(&ModelEvent::TextDelta("Sunny.".into())));
    let body = &server.received()[0].body;
    assert_eq!(body["stream"], false);
    assert!(
        body.get("stream_options").is_none(),
        "vLLM rejects stream_options without stream"
    );
    assert_eq!(body["tool_choice"], "required");
}

#[tokio::test]
async fn configuration_errors_are_typed() {
    let r = agent_core::model::openai::OpenAiCompatible::builder()
        .base_url("not a url")
        .model("m")
        .build();
    assert!(
        matches!(r, Err(ModelError::Config(ref m)) if m.contains("invalid base URL")),
        "{r:?}"
    );
    let r = agent_core::model::openai::OpenAiCompatible::builder()
        .base_url("http://127.0.0.1:1/v1")
        .model("m")
        .header("bad header", "x")
        .build();
    assert!(matches!(r, Err(ModelError::Config(_))));
    // Nothing listens on port 1: a connection failure, retried by the loop.
    let model = agent_core::model::openai::OpenAiCompatible::builder()
        .base_url("http://127.0.0.1:1/v1")
        .model("m")
        .build()
        .expect("model");
    let (_, r) = call(&model, &ToolChoice::Auto).await;
    assert!(
        matches!(&r, Err(e @ ModelError::Connection { .. }) if e.is_retryable()),
        "{r:?}"
    );
}
