//! Spans and metrics of an agent run, on the SDK's in-memory exporters: every GenAI attribute,
//! parentage, per-call usage, errors, content capture off by default and on when asked.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;

use agent_core::prelude::*;
use agent_core::telemetry::{CaptureMode, Telemetry};
use agent_tests::{Fault, MockVllm, Turn, fast_retry, provider_builder};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::{Value as Json, json};

/// Current weather for a city.
#[tool]
fn get_weather(
    /// City name.
    city: String,
) -> Result<Json, String> {
    if city == "Atlantis" {
        return Err("no such city".into());
    }
    Ok(json!({"city": city, "forecast": "sunny"}))
}

struct Recorder {
    spans: InMemorySpanExporter,
    metrics: InMemoryMetricExporter,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
}

impl Recorder {
    fn new() -> Self {
        let spans = InMemorySpanExporter::default();
        let metrics = InMemoryMetricExporter::default();
        let tracer_provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        Self {
            spans,
            metrics,
            tracer_provider,
            meter_provider,
        }
    }

    fn telemetry(&self, capture: CaptureMode) -> Telemetry {
        Telemetry::new(&self.tracer_provider, &self.meter_provider).with_capture(capture)
    }

    fn spans(&self) -> Vec<SpanData> {
        self.spans.get_finished_spans().unwrap()
    }
}

fn attrs(span: &SpanData) -> HashMap<String, Value> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.to_string(), kv.value.clone()))
        .collect()
}

fn s(v: &str) -> Value {
    Value::from(v.to_owned())
}

fn array(v: &str) -> Value {
    Value::Array(vec![opentelemetry::StringValue::from(v.to_owned())].into())
}

fn agent(server: &MockVllm, telemetry: Telemetry) -> Agent {
    let model = provider_builder(server)
        .provider_name("vllm")
        .max_tokens(512)
        .temperature(0.2)
        .build()
        .expect("model");
    Agent::builder()
        .name("travel")
        .model(model)
        .system_prompt("You plan trips.")
        .tool(get_weather)
        .retry(fast_retry())
        .telemetry(telemetry)
        .build()
        .expect("agent")
}

#[tokio::test]
async fn spans_follow_the_genai_conventions() {
    let recorder = Recorder::new();
    let server = MockVllm::start([
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})).with_usage(100, 20),
        Turn::text("Sunny.").with_usage(150, 12),
    ])
    .await
    .expect("server");
    let r = agent(&server, recorder.telemetry(CaptureMode::NoContent))
        .session("sess-42")
        .invoke("Lisbon?")
        .await
        .expect("invoke");
    assert_eq!(r.text(), "Sunny.");
    let spans = recorder.spans();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    let find = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let invoke = find("invoke_agent travel")[0];
    let chats = find("chat qwen3-8b");
    let tool = find("execute_tool get_weather")[0];
    assert_eq!(chats.len(), 2);

    assert_eq!(invoke.span_kind, SpanKind::Internal);
    assert_eq!(tool.span_kind, SpanKind::Internal);
    assert!(chats.iter().all(|c| c.span_kind == SpanKind::Client));
    let trace_id = invoke.span_context.trace_id();
    for child in chats.iter().copied().chain([tool]) {
        assert_eq!(
            child.parent_span_id,
            invoke.span_context.span_id(),
            "{} is a child of invoke_agent",
            child.name
        );
        assert_eq!(child.span_context.trace_id(), trace_id);
    }

    let a = attrs(invoke);
    assert_eq!(a["gen_ai.operation.name"], s("invoke_agent"));
    assert_eq!(a["gen_ai.provider.name"], s("vllm"));
    assert_eq!(a["gen_ai.agent.name"], s("travel"));
    assert_eq!(a["gen_ai.agent.id"], s("default"));
    assert_eq!(a["gen_ai.conversation.id"], s("sess-42"));
    assert_eq!(a["gen_ai.request.model"], s("qwen3-8b"));
    assert_eq!(
        a["gen_ai.usage.input_tokens"],
        Value::I64(250),
        "usage of this invocation"
    );
    assert_eq!(a["gen_ai.usage.output_tokens"], Value::I64(32));
    // The conventions' vocabulary, and the agent's own reason beside it.
    assert_eq!(a["gen_ai.response.finish_reasons"], array("stop"));
    assert_eq!(a["agent.stop_reason"], s("end_turn"));
    assert_eq!(invoke.status, Status::Unset);

    let c0 = attrs(chats[0]);
    let port = i64::from(server.addr().port());
    assert_eq!(c0["gen_ai.operation.name"], s("chat"));
    assert_eq!(c0["gen_ai.provider.name"], s("vllm"));
    assert_eq!(c0["gen_ai.request.model"], s("qwen3-8b"));
    assert_eq!(c0["server.address"], s("127.0.0.1"));
    assert_eq!(c0["server.port"], Value::I64(port));
    assert_eq!(c0["gen_ai.request.stream"], Value::Bool(true));
    assert_eq!(c0["gen_ai.request.max_tokens"], Value::I64(512));
    assert!(matches!(c0["gen_ai.request.temperature"], Value::F64(t) if (t - 0.2).abs() < 1e-6));
    assert_eq!(c0["gen_ai.conversation.id"], s("sess-42"));
    assert!(c0["gen_ai.response.id"].as_str().starts_with("chatcmpl-"));
    assert_eq!(c0["gen_ai.response.model"], s("qwen3-8b"));
    assert_eq!(c0["gen_ai.response.finish_reasons"], array("tool_call"));
    assert_eq!(
        c0["gen_ai.usage.input_tokens"],
        Value::I64(100),
        "per call, not cumulative"
    );
    assert_eq!(c0["gen_ai.usage.output_tokens"], Value::I64(20));
    assert!(
        matches!(c0["gen_ai.response.time_to_first_chunk"], Value::F64(t) if t > 0.0 && t < 5.0)
    );
    let c1 = attrs(chats[1]);
    assert_eq!(c1["gen_ai.response.finish_reasons"], array("stop"));
    assert_eq!(c1["gen_ai.usage.input_tokens"], Value::I64(150));

    let t = attrs(tool);
    assert_eq!(t["gen_ai.operation.name"], s("execute_tool"));
    assert_eq!(t["gen_ai.tool.name"], s("get_weather"));
    assert!(
        t["gen_ai.tool.call.id"]
            .as_str()
            .starts_with("chatcmpl-tool-")
    );
    assert_eq!(t["gen_ai.tool.type"], s("function"));
    assert_eq!(
        t["gen_ai.tool.description"],
        s("Current weather for a city.")
    );

    // No content by default, and never a secret.
    for span in &spans {
        for kv in &span.attributes {
            let key = kv.key.as_str();
            assert!(
                !key.contains("messages")
                    && !key.contains("arguments")
                    && !key.contains("result")
                    && !key.contains("system_instructions")
                    && key != "input.value"
                    && key != "output.value",
                "{key}"
            );
            assert!(
                !kv.value.as_str().contains("test-key"),
                "secret in {}",
                kv.key
            );
        }
        assert!(span.events.is_empty());
    }
}

/// The server's raw `finish_reason` says `stop` for a tool call (as llama.cpp and vLLM do in
/// constrained mode): the span reports what the reply was. A run the agent ended itself (a turn
/// limit here) is `error` in the conventions' vocabulary, with the agent's reason beside it.
#[tokio::test]
async fn finish_reasons_say_what_the_model_and_the_agent_did() {
    let recorder = Recorder::new();
    let server = MockVllm::start([
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})).with_finish_reason("stop"),
        Turn::text("Sunny, as far as I got."),
    ])
    .await
    .expect("server");
    let model = provider_builder(&server).build().expect("model");
    let r = Agent::builder()
        .name("travel")
        .model(model)
        .tool(get_weather)
        .limits(Limits::default().max_turns(1))
        .telemetry(recorder.telemetry(CaptureMode::NoContent))
        .build()
        .expect("agent")
        .session("f")
        .invoke("Lisbon?")
        .await
        .expect("invoke");
    assert_eq!(r.stop_reason, StopReason::LimitTurns);
    let spans = recorder.spans();
    let chats: Vec<_> = spans.iter().filter(|s| s.name == "chat qwen3-8b").collect();
    assert_eq!(chats.len(), 2, "the tool call and the final answer");
    assert_eq!(
        attrs(chats[0])["gen_ai.response.finish_reasons"],
        array("tool_call")
    );
    assert_eq!(
        attrs(chats[1])["gen_ai.response.finish_reasons"],
        array("stop")
    );
    let invoke = spans
        .iter()
        .find(|s| s.name == "invoke_agent travel")
        .expect("invoke");
    assert_eq!(
        attrs(invoke)["gen_ai.response.finish_reasons"],
        array("error")
    );
    assert_eq!(attrs(invoke)["agent.stop_reason"], s("limit_turns"));
}

#[tokio::test]
async fn errors_set_status_and_error_type() {
    let recorder = Recorder::new();
    let server = MockVllm::start([
        Turn::fault(Fault::Status {
            code: 500,
            retry_after: None,
            message: "engine dead".into(),
        }),
        Turn::tool_call("get_weather", json!({"city": "Atlantis"})),
        Turn::fault(Fault::Status {
            code: 401,
            retry_after: None,
            message: "bad key".into(),
        }),
    ])
    .await
    .expect("server");
    let err = agent(&server, recorder.telemetry(CaptureMode::NoContent))
        .session("e")
        .invoke("x")
        .await
        .expect_err("fatal");
    assert!(matches!(err, AgentError::Model { .. }));
    let spans = recorder.spans();
    let chats: Vec<_> = spans.iter().filter(|s| s.name == "chat qwen3-8b").collect();
    assert_eq!(chats.len(), 3);
    assert!(matches!(chats[0].status, Status::Error { .. }));
    assert_eq!(attrs(chats[0])["error.type"], s("transient"));
    assert_eq!(chats[1].status, Status::Unset);
    assert_eq!(attrs(chats[2])["error.type"], s("401"));
    let tool = spans
        .iter()
        .find(|s| s.name == "execute_tool get_weather")
        .expect("tool span");
    // Without content capture the status names the class only: the result text can quote the
    // call's arguments (here the city).
    assert!(
        matches!(&tool.status, Status::Error { description } if description == "tool_error"),
        "{:?}",
        tool.status
    );
    assert_eq!(attrs(tool)["error.type"], s("tool_error"));
    let invoke = spans
        .iter()
        .find(|s| s.name == "invoke_agent travel")
        .expect("invoke");
    assert!(matches!(invoke.status, Status::Error { .. }));
    assert_eq!(attrs(invoke)["error.type"], s("fatal"));
}

#[tokio::test]
async fn content_is_captured_only_when_asked() {
    for mode in [
        CaptureMode::SpanOnly,
        CaptureMode::EventOnly,
        CaptureMode::SpanAndEvent,
    ] {
        let recorder = Recorder::new();
        let server = MockVllm::start([
            Turn::tool_call("get_weather", json!({"city": "Porto"})),
            Turn::text("Sunny in Porto."),
        ])
        .await
        .expect("server");
        agent(&server, recorder.telemetry(mode))
            .session("c")
            .invoke("Porto?")
            .await
            .expect("invoke");
        let spans = recorder.spans();
        let chats: Vec<_> = spans.iter().filter(|s| s.name == "chat qwen3-8b").collect();
        let tool = spans
            .iter()
            .find(|s| s.name == "execute_tool get_weather")
            .expect("tool");
        let on_span = matches!(mode, CaptureMode::SpanOnly | CaptureMode::SpanAndEvent);
        let on_event = matches!(mode, CaptureMode::EventOnly | CaptureMode::SpanAndEvent);
        let second = attrs(chats[1]);
        assert_eq!(
            second.contains_key("gen_ai.input.messages"),
            on_span,
            "{mode:?}"
        );
        assert_eq!(
            attrs(tool).contains_key("gen_ai.tool.call.arguments"),
            on_span
        );
        assert_eq!(chats[1].events.len(), usize::from(on_event));
        let (input, output, system) = if on_span {
            (
                second["gen_ai.input.messages"].as_str().to_string(),
                second["gen_ai.output.messages"].as_str().to_string(),
                second["gen_ai.system_instructions"].as_str().to_string(),
            )
        } else {
            let event = chats[1].events.iter().next().expect("event");
            assert_eq!(event.name, "gen_ai.client.inference.operation.details");
            let get = |k: &str| {
                event
                    .attributes
                    .iter()
                    .find(|kv: &&KeyValue| kv.key.as_str() == k)
                    .expect(k)
                    .value
                    .as_str()
                    .to_string()
            };
            (
                get("gen_ai.input.messages"),
                get("gen_ai.output.messages"),
                get("gen_ai.system_instructions"),
            )
        };
        let input: Json = serde_json::from_str(&input).expect("json");
        assert_eq!(
            input[0],
            json!({"role": "user", "parts": [{"type": "text", "content": "Porto?"}]})
        );
        assert_eq!(input[1]["parts"][0]["type"], "tool_call");
        assert_eq!(input[1]["parts"][0]["arguments"], json!({"city": "Porto"}));
        assert_eq!(input[2]["role"], "tool");
        assert_eq!(input[2]["parts"][0]["type"], "tool_call_response");
        assert_eq!(
            input[2]["parts"][0]["response"],
            json!({"city": "Porto", "forecast": "sunny"})
        );
        let output: Json = serde_json::from_str(&output).expect("json");
        assert_eq!(
            output,
            json!([{"role": "assistant", "parts": [{"type": "text", "content": "Sunny in Porto."}], "finish_reason": "stop"}])
        );
        let system: Json = serde_json::from_str(&system).expect("json");
        assert_eq!(
            system,
            json!([{"type": "text", "content": "You plan trips."}])
        );
        // The invocation's own input and output on `invoke_agent`.
        let invoke = spans
            .iter()
            .find(|s| s.name == "invoke_agent travel")
            .expect("invoke");
        let a = attrs(invoke);
        assert_eq!(a.contains_key("gen_ai.input.messages"), on_span);
        assert_eq!(a.contains_key("input.value"), on_span);
        assert_eq!(invoke.events.len(), usize::from(on_event));
        let (input, output, system) = if on_span {
            assert_eq!(a["input.value"], s("Porto?"));
            assert_eq!(a["output.value"], s("Sunny in Porto."));
            (
                a["gen_ai.input.messages"].as_str().to_string(),
                a["gen_ai.output.messages"].as_str().to_string(),
                a["gen_ai.system_instructions"].as_str().to_string(),
            )
        } else {
            let event = invoke.events.iter().next().expect("event");
            let get = |k: &str| {
                event
                    .attributes
                    .iter()
                    .find(|kv: &&KeyValue| kv.key.as_str() == k)
                    .expect(k)
                    .value
                    .as_str()
                    .to_string()
            };
            (
                get("gen_ai.input.messages"),
                get("gen_ai.output.messages"),
                get("gen_ai.system_instructions"),
            )
        };
        assert_eq!(
            serde_json::from_str::<Json>(&input).expect("json"),
            json!([{"role": "user", "parts": [{"type": "text", "content": "Porto?"}]}])
        );
        assert_eq!(
            serde_json::from_str::<Json>(&output).expect("json"),
            json!([{"role": "assistant", "parts": [{"type": "text", "content": "Sunny in Porto."}], "finish_reason": "stop"}])
        );
        assert_eq!(
            serde_json::from_str::<Json>(&system).expect("json"),
            json!([{"type": "text", "content": "You plan trips."}])
        );
        if on_span {
            assert_eq!(attrs(tool)["input.value"], s("{\"city\":\"Porto\"}"));
            let first_out: Json =
                serde_json::from_str(&attrs(chats[0])["gen_ai.output.messages"].as_str())
                    .expect("json");
            assert_eq!(first_out[0]["finish_reason"], "tool_call");
            assert_eq!(
                attrs(tool)["gen_ai.tool.call.result"].as_str(),
                "{\"city\":\"Porto\",\"forecast\":\"sunny\"}"
            );
        }
    }
}

#[tokio::test]
async fn metrics_use_the_advised_buckets_and_bounded_attributes() {
    let recorder = Recorder::new();
    let server = MockVllm::start([
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})).with_usage(100, 20),
        Turn::tool_call("made_up_tool", json!({})).with_usage(120, 10),
        Turn::text("Sunny.").with_usage(150, 12),
    ])
    .await
    .expect("server");
    agent(&server, recorder.telemetry(CaptureMode::NoContent))
        .session("m")
        .invoke("Lisbon?")
        .await
        .expect("invoke");
    recorder.meter_provider.force_flush().expect("flush");
    let exported = recorder.metrics.get_finished_metrics().expect("metrics");
    let last = exported.last().expect("a collection");
    let mut seen = HashMap::new();
    for scope in last.scope_metrics() {
        for metric in scope.metrics() {
            seen.insert(metric.name().to_owned(), ());
            for kv in attributes_of(metric.data()) {
                let key = kv.key.as_str();
                assert!(
                    !key.ends_with(".id"),
                    "no id labels: {} on {}",
                    key,
                    metric.name()
                );
            }
            match (metric.name(), metric.data()) {
                ("gen_ai.client.token.usage", AggregatedMetrics::U64(MetricData::Histogram(h))) => {
                    let mut by_type = HashMap::new();
                    for dp in h.data_points() {
                        let kind = dp
                            .attributes()
                            .find(|kv| kv.key.as_str() == "gen_ai.token.type")
                            .expect("token type")
                            .value
                            .as_str()
                            .to_string();
                        assert!(
                            dp.attributes()
                                .any(|kv| kv.key.as_str() == "gen_ai.provider.name")
                        );
                        assert_eq!(dp.bounds().collect::<Vec<_>>()[..3], [1.0, 4.0, 16.0]);
                        by_type.insert(kind, dp.sum());
                    }
                    assert_eq!(by_type["input"], 370);
                    assert_eq!(by_type["output"], 42);
                }
                (
                    "gen_ai.client.operation.duration",
                    AggregatedMetrics::F64(MetricData::Histogram(h)),
                ) => {
                    let count: u64 = h.data_points().map(|dp| dp.count()).sum();
                    assert_eq!(count, 3);
                    let dp = h.data_points().next().expect("point");
                    assert_eq!(
                        dp.bounds().collect::<Vec<_>>(),
                        [
                            0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                            20.48, 40.96, 81.92
                        ]
                    );
                    assert!(
                        dp.attributes()
                            .any(|kv| kv.key.as_str() == "gen_ai.operation.name"
                                && kv.value.as_str() == "chat")
                    );
                }
                ("agent.tool.calls", AggregatedMetrics::U64(MetricData::Sum(sum))) => {
                    let mut by_tool = HashMap::new();
                    for dp in sum.data_points() {
                        let tool = dp
                            .attributes()
                            .find(|kv| kv.key.as_str() == "gen_ai.tool.name")
                            .expect("tool")
                            .value
                            .as_str()
                            .to_string();
                        let outcome = dp
                            .attributes()
                            .find(|kv| kv.key.as_str() == "outcome")
                            .expect("outcome")
                            .value
                            .as_str()
                            .to_string();
                        by_tool.insert((tool, outcome), dp.value());
                    }
                    assert_eq!(
                        by_tool[&("get_weather".to_owned(), "success".to_owned())],
                        1
                    );
                    assert_eq!(
                        by_tool[&("_OTHER".to_owned(), "error".to_owned())],
                        1,
                        "invented names do not become labels"
                    );
                }
                _ => {}
            }
        }
    }
    for name in [
        "gen_ai.client.token.usage",
        "gen_ai.client.operation.duration",
        "gen_ai.client.operation.time_to_first_chunk",
        "agent.tool.calls",
        "agent.tool.duration",
    ] {
        assert!(seen.contains_key(name), "{name} missing: {:?}", seen.keys());
    }
}

fn attributes_of(data: &AggregatedMetrics) -> Vec<KeyValue> {
    let mut out = Vec::new();
    match data {
        AggregatedMetrics::U64(MetricData::Histogram(h)) => h
            .data_points()
            .for_each(|dp| out.extend(dp.attributes().cloned())),
        AggregatedMetrics::F64(MetricData::Histogram(h)) => h
            .data_points()
            .for_each(|dp| out.extend(dp.attributes().cloned())),
        AggregatedMetrics::U64(MetricData::Sum(sm)) => sm
            .data_points()
            .for_each(|dp| out.extend(dp.attributes().cloned())),
        _ => {}
    }
    out
}

#[tokio::test]
async fn disabled_telemetry_records_nothing() {
    // Even with a recording global provider installed by someone else, an agent records only
    // when told to (or when `otlp::init` marked the globals as ours).
    let recorder = Recorder::new();
    opentelemetry::global::set_tracer_provider(recorder.tracer_provider.clone());
    assert!(!Telemetry::default_for_agents().is_enabled());
    let server = MockVllm::start([Turn::text("hi"), Turn::text("hi again")])
        .await
        .expect("server");
    agent(&server, Telemetry::disabled())
        .session("d")
        .invoke("x")
        .await
        .expect("invoke");
    let defaulted = Agent::builder()
        .model(provider_builder(&server).build().expect("model"))
        .build()
        .expect("agent");
    defaulted.session("d2").invoke("x").await.expect("invoke");
    assert!(
        recorder.spans().is_empty(),
        "nothing reached the global provider"
    );
    // The same provider does record when asked, so the check above can fail.
    agent(&server, Telemetry::from_global())
        .session("d3")
        .invoke("x")
        .await
        .expect_err("script exhausted");
    assert!(!recorder.spans().is_empty());
    assert_eq!(
        CaptureMode::parse("span_and_event"),
        CaptureMode::SpanAndEvent
    );
    assert_eq!(CaptureMode::parse("bogus"), CaptureMode::NoContent);
}

#[tokio::test]
async fn a_streamed_run_is_a_child_of_the_callers_span() {
    use futures::StreamExt;
    use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
    let recorder = Recorder::new();
    let server = MockVllm::start([Turn::text("hi")]).await.expect("server");
    let agent = agent(&server, recorder.telemetry(CaptureMode::NoContent));
    let tracer = recorder.tracer_provider.tracer("caller");
    let parent = tracer.start("http request");
    let parent_cx = opentelemetry::Context::current_with_span(parent);
    let parent_id = parent_cx.span().span_context().span_id();
    let trace_id = parent_cx.span().span_context().trace_id();
    let mut events = {
        let _attached = parent_cx.clone().attach();
        agent.session("streamed").stream("hello")
    };
    while let Some(event) = events.next().await {
        event.expect("event");
    }
    parent_cx.span().end();
    let spans = recorder.spans();
    let invoke = spans
        .iter()
        .find(|s| s.name == "invoke_agent travel")
        .expect("invoke");
    assert_eq!(invoke.parent_span_id, parent_id);
    assert_eq!(invoke.span_context.trace_id(), trace_id);
}

/// A service passes the incoming request's `traceparent` as the run's parent, for `invoke` and
/// for `stream` alike (the stream's task does not start a new root).
#[tokio::test]
async fn a_given_trace_parent_is_the_parent_of_invoke_agent() {
    use futures::StreamExt;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    let recorder = Recorder::new();
    let server = MockVllm::start([Turn::text("one"), Turn::text("two")])
        .await
        .expect("server");
    let agent = agent(&server, recorder.telemetry(CaptureMode::NoContent));
    // traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex");
    let span_id = SpanId::from_hex("00f067aa0ba902b7").expect("hex");
    let remote = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ));
    agent
        .session("p")
        .trace_parent(remote.clone())
        .invoke("hello")
        .await
        .expect("invoke");
    let mut events = agent.session("p").trace_parent(remote).stream("again");
    while let Some(event) = events.next().await {
        event.expect("event");
    }
    let spans = recorder.spans();
    let invokes: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "invoke_agent travel")
        .collect();
    assert_eq!(invokes.len(), 2);
    for invoke in invokes {
        assert_eq!(invoke.span_context.trace_id(), trace_id);
        assert_eq!(invoke.parent_span_id, span_id);
    }
}

/// Bedrock's spans: the provider named as the conventions name it, the responding model, and
/// the prompt-cache counts (`gen_ai.usage.cache_read.input_tokens`,
/// `gen_ai.usage.cache_creation.input_tokens`) on the chat and invoke_agent spans.
#[tokio::test]
async fn bedrock_spans_carry_the_prompt_cache_counts() {
    use agent_tests::bedrock::{BedrockReply, BedrockUsage, LoopbackBedrock};
    let recorder = Recorder::new();
    let server = LoopbackBedrock::start([BedrockReply::text(
        &["Sunny."],
        BedrockUsage {
            input: 20,
            output: 3,
            cache_read: 1200,
            cache_write: 80,
        },
    )])
    .await
    .unwrap();
    let model = agent_core::model::bedrock::BedrockConverse::builder(server.client())
        .model_id("amazon.nova-pro-v1:0")
        .build()
        .unwrap();
    let agent = Agent::builder()
        .name("travel")
        .model(model)
        .telemetry(recorder.telemetry(CaptureMode::NoContent))
        .build()
        .unwrap();
    agent.session("b").invoke("Lisbon?").await.unwrap();
    let spans = recorder.spans();
    let chat = spans
        .iter()
        .find(|s| s.name == "chat amazon.nova-pro-v1:0")
        .expect("chat span");
    let a = attrs(chat);
    assert_eq!(a["gen_ai.provider.name"], s("aws.bedrock"));
    assert_eq!(a["gen_ai.response.model"], s("amazon.nova-pro-v1:0"));
    assert_eq!(a["gen_ai.usage.input_tokens"], Value::I64(1300));
    assert_eq!(a["gen_ai.usage.cache_read.input_tokens"], Value::I64(1200));
    assert_eq!(
        a["gen_ai.usage.cache_creation.input_tokens"],
        Value::I64(80)
    );
    let invoke = spans
        .iter()
        .find(|s| s.name == "invoke_agent travel")
        .expect("invoke span");
    assert_eq!(
        attrs(invoke)["gen_ai.usage.cache_read.input_tokens"],
        Value::I64(1200)
    );
}
