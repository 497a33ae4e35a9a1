//! The Bedrock Converse provider (`agent_core::model::bedrock::BedrockConverse`) on the wire:
//! SigV4-signed `ConverseStream` and `Converse` requests through `aws-sdk-bedrockruntime`,
//! answered in real AWS event-stream frames by the loopback endpoint
//! (`agent_tests::bedrock::LoopbackBedrock`), which also plays the faults: throttling, an
//! exception event mid-stream, a cut stream, a context overflow, access denied, a 200 MB frame,
//! a stall. The last test runs the agent on ministack's Bedrock emulation forwarding to the real
//! local model (`MINISTACK_BEDROCK_PROXY_URL`; `AGENT_BEDROCK_ENDPOINT`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_core::AgentEvent;
use agent_core::message::Message;
use agent_core::message::{ContentBlock, ReasoningContent};
use agent_core::model::bedrock::{BedrockConverse, PromptCache};
use agent_core::model::{Model, ModelError, ModelEvent, ModelRequest, ToolChoice};
use agent_core::prelude::*;
use agent_core::session::InMemorySessionStore;
use agent_tests::bedrock::{BedrockReply, BedrockUsage, LoopbackBedrock, StreamStep};
use agent_tests::fast_retry;
use futures::StreamExt;
use serde_json::{Value, json};

const MODEL_ID: &str = "us.anthropic.claude-sonnet-4-v1:0";

fn weather_tool(calls: Arc<AtomicUsize>) -> FnTool {
    FnTool::new(
        "get_weather",
        "Current weather for a city.",
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
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

fn model(server: &LoopbackBedrock) -> agent_core::model::bedrock::BedrockConverseBuilder {
    BedrockConverse::builder(server.client()).model_id(MODEL_ID)
}

fn agent(model: BedrockConverse, calls: Arc<AtomicUsize>) -> Agent {
    Agent::builder()
        .name("travel")
        .model(model)
        .system_prompt("You plan trips.")
        .tool(weather_tool(calls))
        .retry(fast_retry())
        .session_store(InMemorySessionStore::new())
        .build()
        .expect("agent")
}

fn usage(input: u64, output: u64) -> BedrockUsage {
    BedrockUsage {
        input,
        output,
        ..BedrockUsage::default()
    }
}

#[tokio::test]
async fn a_tool_round_on_the_stream_keeps_reasoning_signatures_and_cache_counts() {
    let server = LoopbackBedrock::start([
        BedrockReply::tool_call(
            "tooluse_1",
            "get_weather",
            &json!({"city": "Lisbon"}),
            BedrockUsage {
                input: 40,
                output: 20,
                cache_read: 0,
                cache_write: 300,
            },
        ),
        BedrockReply::text(
            &["It is sunny ", "in Lisbon, 21 C."],
            BedrockUsage {
                input: 60,
                output: 12,
                cache_read: 300,
                cache_write: 0,
            },
        ),
    ])
    .await
    .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let model = model(&server)
        .prompt_cache(PromptCache::automatic())
        .temperature(0.2)
        .build()
        .unwrap();
    let agent = agent(model, calls.clone());
    let session = agent.session("alice");
    let mut stream = session.stream("Weather in Lisbon?");
    let mut text = String::new();
    let mut result = None;
    while let Some(event) = stream.next().await {
        match event.expect("event") {
            AgentEvent::TextDelta { text: t } => text.push_str(&t),
            AgentEvent::Stop(r) => result = Some(r),
            _ => {}
        }
    }
    let result = result.expect("finished");
    assert_eq!(result.stop_reason, StopReason::EndTurn);
    assert_eq!(result.text(), "It is sunny in Lisbon, 21 C.");
    assert_eq!(text, "It is sunny in Lisbon, 21 C.", "streamed as it came");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Cached prompt tokens count as input (the GenAI conventions), and are reported apart.
    assert_eq!(result.usage.input_tokens, 40 + 300 + 60 + 300);
    assert_eq!(result.usage.cache_write_input_tokens, 300);
    assert_eq!(result.usage.cache_read_input_tokens, 300);
    assert_eq!(result.usage.output_tokens, 32);

    let received = server.received();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|r| r.signed && r.model == MODEL_ID));
    assert!(received.iter().all(|r| r.operation == "converse-stream"));
    let first = &received[0].body;
    // Cache points after the system prompt, after the tools, at the end of the conversation.
    assert_eq!(first["system"][0]["text"], "You plan trips.");
    assert_eq!(first["system"][1]["cachePoint"]["type"], "default");
    let tools = first["toolConfig"]["tools"].as_array().unwrap();
    assert_eq!(tools[0]["toolSpec"]["name"], "get_weather");
    assert_eq!(
        tools[0]["toolSpec"]["inputSchema"]["json"]["required"],
        json!(["city"])
    );
    assert_eq!(tools.last().unwrap()["cachePoint"]["type"], "default");
    assert_eq!(
        first["messages"][0]["content"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["cachePoint"]["type"],
        "default"
    );
    assert_eq!(first["inferenceConfig"]["maxTokens"], 4096);
    assert!((first["inferenceConfig"]["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);

    // The second request sends the reasoning back with its signature, the tool use with its
    // parsed input, and the result with its status.
    let second = &received[1].body["messages"];
    let assistant = &second[1]["content"];
    assert_eq!(
        assistant[0]["reasoningContent"]["reasoningText"],
        json!({"text": "The user wants weather.", "signature": "sig-abc"})
    );
    assert_eq!(
        assistant[1]["toolUse"],
        json!({"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Lisbon"}})
    );
    let tool_result = &second[2]["content"][0]["toolResult"];
    assert_eq!(tool_result["toolUseId"], "tooluse_1");
    assert_eq!(tool_result["status"], "success");
    assert_eq!(
        tool_result["content"][0]["json"],
        json!({"city": "Lisbon", "forecast": "sunny", "high_c": 21})
    );
    // The cache point moved to the end of the new last user message.
    assert!(second[2]["content"].as_array().unwrap().last().unwrap()["cachePoint"].is_object());

    // The session keeps the reasoning with its signature (it is sent back next time too).
    let history = session.messages().await.unwrap().unwrap();
    let reasoning = history[1].content.iter().find_map(|b| match b {
        ContentBlock::ReasoningContent(ReasoningContent::ReasoningText(r)) => Some(r),
        _ => None,
    });
    assert_eq!(
        reasoning.and_then(|r| r.signature.as_deref()),
        Some("sig-abc")
    );
}

#[tokio::test]
async fn converse_without_streaming_gives_the_same_result() {
    let server = LoopbackBedrock::start([
        BedrockReply::Converse(json!({
            "output": {"message": {"role": "assistant", "content": [
                {"text": "Checking."},
                {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Porto"}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 30, "outputTokens": 9, "totalTokens": 39},
            "metrics": {"latencyMs": 5}
        })),
        BedrockReply::Converse(json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "Porto: sunny, 21 C."}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 50, "outputTokens": 7, "totalTokens": 57},
            "metrics": {"latencyMs": 5}
        })),
    ])
    .await
    .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let agent = agent(
        model(&server).streaming(false).build().unwrap(),
        calls.clone(),
    );
    let result = agent.session("s").invoke("Porto?").await.unwrap();
    assert_eq!(result.text(), "Porto: sunny, 21 C.");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(result.usage.input_tokens, 80);
    let received = server.received();
    assert!(received.iter().all(|r| r.operation == "converse"));
    assert_eq!(
        received[1].body["messages"][1]["content"][0]["text"],
        "Checking."
    );
}

#[tokio::test]
async fn throttling_exceptions_and_cut_streams_are_retried_by_the_loop() {
    let server = LoopbackBedrock::start([
        BedrockReply::error(429, "ThrottlingException", "Too many requests"),
        BedrockReply::error(503, "ServiceUnavailableException", "try later"),
        BedrockReply::Stream(vec![
            StreamStep::Event("messageStart", json!({"role": "assistant"})),
            StreamStep::Exception("modelStreamErrorException", "the model failed".into()),
        ]),
        BedrockReply::Stream(vec![
            StreamStep::Event("messageStart", json!({"role": "assistant"})),
            StreamStep::Cut,
        ]),
        // Ends without messageStop: not a complete reply.
        BedrockReply::Stream(vec![StreamStep::Event(
            "messageStart",
            json!({"role": "assistant"}),
        )]),
        BedrockReply::Stream(vec![
            StreamStep::Event("messageStart", json!({"role": "assistant"})),
            StreamStep::Exception("throttlingException", "slow down".into()),
        ]),
        BedrockReply::text(&["fine"], usage(5, 1)),
    ])
    .await
    .unwrap();
    let agent = Agent::builder()
        .model(model(&server).build().unwrap())
        .retry(
            agent_core::retry::RetryPolicy::default()
                .max_attempts(7)
                .initial_delay(Duration::from_millis(5))
                .max_delay(Duration::from_millis(20)),
        )
        .build()
        .unwrap();
    let mut stream = agent.session("s").stream("hi");
    let mut retries = Vec::new();
    let mut result = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            AgentEvent::Retry { error_kind, .. } => retries.push(error_kind),
            AgentEvent::Stop(r) => result = Some(r),
            _ => {}
        }
    }
    assert_eq!(result.unwrap().text(), "fine");
    assert_eq!(server.received().len(), 7);
    // Every failure reached the loop: the SDK retried none itself (its retries are off, so the
    // two never multiply).
    assert_eq!(
        retries,
        [
            "throttled",
            "throttled",
            "transient",
            "transient",
            "transient",
            "throttled"
        ]
    );
}

/// The error the provider gives for one scripted reply.
async fn error_of(
    reply: BedrockReply,
    builder: impl FnOnce(
        agent_core::model::bedrock::BedrockConverseBuilder,
    ) -> agent_core::model::bedrock::BedrockConverseBuilder,
) -> ModelError {
    let server = LoopbackBedrock::start([reply]).await.unwrap();
    let model = builder(model(&server)).build().unwrap();
    let prompt = Message::user("hi");
    let mut stream = model.stream(&ModelRequest::new(vec![&prompt], &[], &ToolChoice::Auto));
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            return e;
        }
    }
    panic!("no error");
}

#[tokio::test]
async fn each_error_is_classified_for_what_the_loop_does() {
    let keep = |b| b;
    let overflow = error_of(
        BedrockReply::error(
            400,
            "ValidationException",
            "Input is too long for requested model.",
        ),
        keep,
    )
    .await;
    assert!(
        matches!(overflow, ModelError::ContextOverflow { .. }),
        "{overflow:?}"
    );
    let mid_stream_overflow = error_of(
        BedrockReply::Stream(vec![
            StreamStep::Event("messageStart", json!({"role": "assistant"})),
            StreamStep::Exception(
                "validationException",
                "prompt is too long: 250000 tokens".into(),
            ),
        ]),
        keep,
    )
    .await;
    assert!(
        matches!(mid_stream_overflow, ModelError::ContextOverflow { .. }),
        "{mid_stream_overflow:?}"
    );

    let denied = error_of(
        BedrockReply::error(
            403,
            "AccessDeniedException",
            "You don't have access to the model.",
        ),
        keep,
    )
    .await;
    assert!(
        matches!(
            denied,
            ModelError::Fatal {
                status: Some(403),
                ..
            }
        ),
        "{denied:?}"
    );
    assert!(
        denied
            .to_string()
            .contains("bedrock:InvokeModelWithResponseStream")
    );

    let invalid = error_of(
        BedrockReply::error(
            400,
            "ValidationException",
            "The model returned the following errors: bad role",
        ),
        keep,
    )
    .await;
    assert!(
        matches!(
            invalid,
            ModelError::Fatal {
                status: Some(400),
                ..
            }
        ),
        "{invalid:?}"
    );
    assert!(!invalid.is_retryable());

    // Errors without a code (a proxy between): by their status.
    let gateway = error_of(
        BedrockReply::error(502, "", "<html>Bad Gateway</html>"),
        keep,
    )
    .await;
    assert!(
        matches!(gateway, ModelError::Transient { .. }),
        "{gateway:?}"
    );
    let busy = error_of(BedrockReply::error(429, "", "slow down"), keep).await;
    assert!(
        matches!(busy, ModelError::Throttled { status: 429, .. }),
        "{busy:?}"
    );
    // Stop reasons that are not answers.
    let mut cut = vec![StreamStep::Event(
        "messageStart",
        json!({"role": "assistant"}),
    )];
    cut.extend(BedrockReply::end(
        "model_context_window_exceeded",
        usage(1, 1),
    ));
    let window = error_of(BedrockReply::Stream(cut), keep).await;
    assert!(
        matches!(window, ModelError::ContextOverflow { .. }),
        "{window:?}"
    );
    let mut garbled = vec![StreamStep::Event(
        "messageStart",
        json!({"role": "assistant"}),
    )];
    garbled.extend(BedrockReply::end("malformed_tool_use", usage(1, 1)));
    let malformed = error_of(BedrockReply::Stream(garbled), keep).await;
    assert!(
        matches!(malformed, ModelError::InvalidReply { .. }),
        "{malformed:?}"
    );

    let unknown = error_of(
        BedrockReply::error(
            404,
            "ResourceNotFoundException",
            "Could not resolve the foundation model",
        ),
        keep,
    )
    .await;
    assert!(unknown.to_string().contains("AWS_REGION"), "{unknown}");

    // A 200 MB frame fails at its length field, before anything is buffered.
    let started = Instant::now();
    let huge = error_of(
        BedrockReply::Stream(vec![
            StreamStep::Event("messageStart", json!({"role": "assistant"})),
            StreamStep::HugeFrame,
        ]),
        keep,
    )
    .await;
    assert!(huge.is_retryable(), "{huge:?}");
    assert!(huge.to_string().contains("beyond the bound"), "{huge}");
    assert!(started.elapsed() < Duration::from_secs(30));

    // A peer that stops talking is cut off by the idle bound; one that never answers by the
    // reply bound.
    let stalled = error_of(
        BedrockReply::Stream(vec![
            StreamStep::Event("messageStart", json!({"role": "assistant"})),
            StreamStep::Pause(Duration::from_secs(3600)),
        ]),
        |b| b.idle_timeout(Duration::from_millis(300)),
    )
    .await;
    assert!(stalled.to_string().contains("no event for"), "{stalled}");
    // A peer that keeps talking but never finishes is cut off by the bound on the whole reply.
    let mut chatty = vec![StreamStep::Event(
        "messageStart",
        json!({"role": "assistant"}),
    )];
    for _ in 0..40 {
        chatty.push(StreamStep::Pause(Duration::from_millis(50)));
        chatty.push(StreamStep::Event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": ""}}),
        ));
    }
    let endless = error_of(BedrockReply::Stream(chatty), |b| {
        b.idle_timeout(Duration::from_millis(300))
            .total_timeout(Duration::from_millis(700))
    })
    .await;
    assert!(
        endless.to_string().contains("took longer than"),
        "{endless}"
    );
    let silent = error_of(BedrockReply::Stall, |b| {
        b.reply_timeout(Duration::from_millis(300))
    })
    .await;
    assert!(
        silent.to_string().contains("did not answer within"),
        "{silent}"
    );
}

#[tokio::test]
async fn hostile_events_give_errors_not_panics() {
    // Negative token counts, an unknown stop reason, tool input for a block no tool use
    // started.
    let server = LoopbackBedrock::start([
        BedrockReply::Stream(vec![
            StreamStep::Event("messageStart", json!({"role": "assistant"})),
            StreamStep::Event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "ok"}}),
            ),
            StreamStep::Event("messageStop", json!({"stopReason": "something_new"})),
            StreamStep::Event(
                "metadata",
                json!({"usage": {"inputTokens": -5, "outputTokens": 2147483647, "totalTokens": -1}, "metrics": {"latencyMs": 1}}),
            ),
        ]),
        BedrockReply::Stream(vec![
            StreamStep::Event("messageStart", json!({"role": "assistant"})),
            StreamStep::Event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 3, "delta": {"toolUse": {"input": "{}"}}}),
            ),
        ]),
    ])
    .await
    .unwrap();
    let model = model(&server).build().unwrap();
    let prompt = Message::user("hi");
    let request = ModelRequest::new(vec![&prompt], &[], &ToolChoice::Auto);
    let response = model.complete(&request).await.unwrap();
    assert_eq!(response.usage.input_tokens, 0);
    assert_eq!(response.usage.output_tokens, 2_147_483_647);
    assert_eq!(response.finish_reason.as_deref(), Some("something_new"));
    let err = model.complete(&request).await.unwrap_err();
    assert!(matches!(err, ModelError::InvalidReply { .. }), "{err:?}");
}

#[tokio::test]
async fn a_guardrail_ends_the_run_with_its_own_reason() {
    let mut steps = vec![
        StreamStep::Event("messageStart", json!({"role": "assistant"})),
        StreamStep::Event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Sorry, I can't help with that."}}),
        ),
    ];
    steps.extend(BedrockReply::end("guardrail_intervened", usage(10, 5)));
    let server = LoopbackBedrock::start([BedrockReply::Stream(steps)])
        .await
        .unwrap();
    let agent = agent(
        model(&server).build().unwrap(),
        Arc::new(AtomicUsize::new(0)),
    );
    let result = agent.session("s").invoke("something bad").await.unwrap();
    assert_eq!(result.stop_reason, StopReason::GuardrailIntervened);
    assert_eq!(result.text(), "Sorry, I can't help with that.");
}

#[tokio::test]
async fn context_overflow_reduces_the_history_and_retries() {
    let mut script = Vec::new();
    for i in 0..4 {
        script.push(BedrockReply::text(&[&format!("answer {i}")], usage(10, 2)));
    }
    script.push(BedrockReply::error(
        400,
        "ValidationException",
        "input length and `max_tokens` exceed context limit: 190000 + 4096 > 200000",
    ));
    script.push(BedrockReply::text(&["fits now"], usage(10, 2)));
    let server = LoopbackBedrock::start(script).await.unwrap();
    let agent = agent(
        model(&server).build().unwrap(),
        Arc::new(AtomicUsize::new(0)),
    );
    let session = agent.session("long");
    for i in 0..4 {
        session.invoke(format!("question {i}")).await.unwrap();
    }
    let result = session.invoke("question 4").await.unwrap();
    assert_eq!(result.text(), "fits now");
    let sizes: Vec<usize> = server.received()[4..]
        .iter()
        .map(|r| r.body["messages"].as_array().map_or(0, Vec::len))
        .collect();
    assert!(sizes[0] > sizes[1], "the retry sends less: {sizes:?}");
    assert_eq!(server.received()[5].body["messages"][0]["role"], "user");
}

#[tokio::test]
async fn a_forced_tool_and_a_history_with_tools_no_longer_offered() {
    let server = LoopbackBedrock::start([
        BedrockReply::tool_call("t9", "get_weather", &json!({"city": "Faro"}), usage(1, 1)),
        BedrockReply::text(&["done"], usage(1, 1)),
    ])
    .await
    .unwrap();
    let model = model(&server).build().unwrap();
    let tools = [agent_core::tool::ToolSpec {
        name: "get_weather".into(),
        description: "Weather.".into(),
        input_schema: json!({"type": "object"}),
    }];
    let prompt = Message::user("Faro?");
    let forced = ToolChoice::Tool("get_weather".into());
    let response = model
        .complete(&ModelRequest::new(vec![&prompt], &tools, &forced))
        .await
        .unwrap();
    let call = Message::new(
        agent_core::message::Role::Assistant,
        response.content.clone(),
    );
    let result = Message::new(
        agent_core::message::Role::User,
        vec![ContentBlock::ToolResult(
            agent_core::message::ToolResult::error("t9", "no data"),
        )],
    );
    let history = vec![&prompt, &call, &result];
    // Tools still exist but are not to be called (the loop's final answer after a limit).
    model
        .complete(&ModelRequest::new(history, &tools, &ToolChoice::None))
        .await
        .unwrap();
    let received = server.received();
    assert_eq!(
        received[0].body["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "get_weather"}})
    );
    // Bedrock refuses tool blocks without a tool configuration: a stand-in tool is offered.
    let second = &received[1].body;
    let offered = second["toolConfig"]["tools"].as_array().unwrap();
    assert_eq!(offered.len(), 1, "{offered:?}");
    assert_eq!(offered[0]["toolSpec"]["name"], "noop");
    assert!(second["toolConfig"].get("toolChoice").is_none());
    assert_eq!(
        second["messages"][2]["content"][0]["toolResult"]["status"],
        "error"
    );
}

#[tokio::test]
async fn the_stream_events_name_the_tool_call_as_it_arrives() {
    let server = LoopbackBedrock::start([BedrockReply::tool_call(
        "t1",
        "get_weather",
        &json!({"city": "Lisbon"}),
        usage(1, 1),
    )])
    .await
    .unwrap();
    let model = model(&server).build().unwrap();
    let prompt = Message::user("hi");
    let events: Vec<ModelEvent> = model
        .stream(&ModelRequest::new(vec![&prompt], &[], &ToolChoice::Auto))
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert!(
        matches!(&events[0], ModelEvent::ReasoningDelta { text, .. } if text == "The user wants weather.")
    );
    assert!(events.iter().any(|e| matches!(e, ModelEvent::ToolUseStart { tool_use_id, name } if tool_use_id == "t1" && name == "get_weather")));
    let input: String = events
        .iter()
        .filter_map(|e| match e {
            ModelEvent::ToolInputDelta { delta, .. } => Some(delta.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&input).unwrap(),
        json!({"city": "Lisbon"})
    );
    assert!(
        matches!(events.last(), Some(ModelEvent::Completed(r)) if r.stop_reason == agent_core::model::ModelStopReason::ToolUse)
    );
}

/// The provider on the Bedrock wire against ministack, which forwards Converse to the real
/// local model (llama.cpp) when started with `MINISTACK_BEDROCK_PROXY_URL` (scripts/test.sh
/// does). The small local model cannot make native tool calls (it writes them as text; the
/// travel agent uses constrained mode for it, which the forward cannot carry), so the tool round
/// here has the call already made: the test checks that a plain answer and an answer built from
/// a tool result come back through ConverseStream and Converse. ministack answers with a canned
/// reply when the forward fails, so the test asserts what only the real model can produce.
#[tokio::test]
async fn the_provider_runs_on_ministack_bedrock_forwarding_to_the_real_model() {
    let Ok(endpoint) = std::env::var("AGENT_BEDROCK_ENDPOINT") else {
        panic!(
            "AGENT_BEDROCK_ENDPOINT is not set: run scripts/test.sh, which starts a ministack \
             with MINISTACK_BEDROCK_PROXY_URL pointing at the local model"
        );
    };
    let client = agent_tests::bedrock::loopback_client(&endpoint);

    // The agent itself on the Bedrock wire: a two-turn session, the second turn answered from
    // the history the first left.
    let agent = Agent::builder()
        .model(
            BedrockConverse::builder(client.clone())
                .model_id("us.amazon.nova-lite-v1:0")
                .temperature(0.0)
                .max_tokens(60)
                .build()
                .unwrap(),
        )
        .system_prompt("Answer in one short sentence.")
        .build()
        .unwrap();
    let session = agent.session("ministack-agent");
    let first = session
        .invoke("My name is Ana and I live in Faro. Just say hello.")
        .await
        .unwrap();
    assert_eq!(first.stop_reason, StopReason::EndTurn);
    let second = session.invoke("In which city do I live?").await.unwrap();
    assert!(
        second.text().to_lowercase().contains("faro"),
        "the history went over the Bedrock wire: {}",
        second.text()
    );

    let tools = [agent_core::tool::ToolSpec {
        name: "get_weather".into(),
        description: "Current weather for a city.".into(),
        input_schema: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    }];
    for streaming in [true, false] {
        let model = BedrockConverse::builder(client.clone())
            .model_id("us.amazon.nova-lite-v1:0")
            .streaming(streaming)
            .temperature(0.0)
            .max_tokens(60)
            .build()
            .unwrap();
        let question = Message::user("What is the capital of Portugal? Answer with one word.");
        let plain = model
            .complete(&ModelRequest::new(vec![&question], &[], &ToolChoice::Auto))
            .await
            .unwrap();
        let text = plain
            .content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::Text(t) => Some(t.to_lowercase()),
                _ => None,
            })
            .collect::<String>();
        assert!(text.contains("lisbon"), "streaming {streaming}: {text}");
        assert!(plain.usage.input_tokens > 0 && plain.usage.output_tokens > 0);

        let prompt = Message::user("What is the weather in Lisbon?");
        let call = Message::new(
            agent_core::message::Role::Assistant,
            vec![ContentBlock::ToolUse(agent_core::message::ToolUse {
                tool_use_id: "tooluse_lisbon".into(),
                name: "get_weather".into(),
                input: json!({"city": "Lisbon"}),
            })],
        );
        let result = Message::new(
            agent_core::message::Role::User,
            vec![ContentBlock::ToolResult(
                agent_core::message::ToolResult::success(
                    "tooluse_lisbon",
                    r#"{"city": "Lisbon", "forecast": "sunny", "high_c": 27}"#,
                ),
            )],
        );
        let answer = model
            .complete(
                // No more tools: the history's tool blocks travel with the stand-in tool.
                &ModelRequest::new(vec![&prompt, &call, &result], &tools, &ToolChoice::None)
                    .system_prompt(
                        "The get_weather tool has already answered; do not call any tool. Reply \
                         in one plain sentence with the forecast and temperature it returned.",
                    ),
            )
            .await
            .unwrap();
        let text = answer
            .content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::Text(t) => Some(t.to_lowercase()),
                _ => None,
            })
            .collect::<String>();
        assert!(
            text.contains("sunny") || text.contains("27"),
            "streaming {streaming}: {text}"
        );
    }
}

#[test]
fn the_model_id_is_required() {
    let client = agent_tests::bedrock::loopback_client("http://127.0.0.1:9");
    // Without BEDROCK_MODEL_ID in the environment (the suite never sets it), the builder says
    // what to set.
    assert!(std::env::var("BEDROCK_MODEL_ID").is_err());
    let err = BedrockConverse::builder(client.clone())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("BEDROCK_MODEL_ID"), "{err}");
    let err = BedrockConverse::builder(client.clone())
        .model_id(" ")
        .build()
        .unwrap_err();
    assert!(matches!(err, ModelError::Config(_)));
    let err = BedrockConverse::builder(client)
        .model_id("m")
        .additional_model_request_fields(json!([1]))
        .build()
        .unwrap_err();
    assert!(matches!(err, ModelError::Config(_)));
}

/// The idle bound is between two events, not on the whole reply: a slow but steady stream
/// longer than the bound completes.
#[tokio::test]
async fn a_steady_stream_longer_than_the_idle_bound_completes() {
    let mut steps = vec![StreamStep::Event(
        "messageStart",
        json!({"role": "assistant"}),
    )];
    for word in ["one ", "two ", "three ", "four"] {
        steps.push(StreamStep::Pause(Duration::from_millis(150)));
        steps.push(StreamStep::Event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": word}}),
        ));
    }
    steps.extend(BedrockReply::end("end_turn", usage(1, 4)));
    let server = LoopbackBedrock::start([BedrockReply::Stream(steps)])
        .await
        .unwrap();
    let model = model(&server)
        .idle_timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let prompt = Message::user("count");
    let started = Instant::now();
    let response = model
        .complete(&ModelRequest::new(vec![&prompt], &[], &ToolChoice::Auto))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(
        Message::new(agent_core::message::Role::Assistant, response.content).text(),
        "one two three four"
    );
}
