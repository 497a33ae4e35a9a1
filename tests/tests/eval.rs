//! Evaluations end to end, against the vLLM-format server (for the agent and for the judge)
//! and the OTLP receiver: scores as `gen_ai.evaluation.result` events on each case's
//! `invoke_agent` span, Langfuse score requests naming that span, bounded concurrency, fresh
//! sessions with their history, a case that cannot run, and online scoring that never delays
//! the answer and drops when its queue is full.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::eval::{
    Dataset, Evaluation, Judge, LangfuseScores, OnlineEvaluator, Threshold, langfuse_score_bodies,
};
use agent_core::prelude::*;
use agent_core::telemetry::otlp::{self, OtlpConfig};
use agent_tests::{Fault, MockVllm, OtlpReceiver, Turn, provider};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use serde_json::{Value, json};

/// Current weather for a city.
#[tool]
fn get_weather(city: String) -> String {
    format!("{city}: sunny, 21 °C")
}

/// A judge reply as a constrained (grammar-bound) model writes it: the `verdict` call.
fn judged(arguments: Value) -> Turn {
    Turn::text(json!({"tool_call": {"name": "verdict", "arguments": arguments}}).to_string())
}

fn any_value(v: &AnyValue) -> Value {
    match v {
        AnyValue::StringValue(s) => json!(s),
        AnyValue::DoubleValue(d) => json!(d),
        AnyValue::IntValue(i) => json!(i),
        AnyValue::BoolValue(b) => json!(b),
        other => json!(format!("{other:?}")),
    }
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_are_events_on_the_cases_invoke_agent_span_and_langfuse_scores_name_it() {
    let OtlpReceiver { endpoint, received } = OtlpReceiver::start();
    let vars: HashMap<&str, String> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_SERVICE_NAME", "travel-agent".to_owned()),
    ]
    .into();
    let guard = otlp::init(OtlpConfig::from_lookup(|k| vars.get(k).cloned()).unwrap()).unwrap();
    let server = MockVllm::start([
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})).with_usage(120, 15),
        Turn::text("Lisbon is sunny, 21 °C.").with_usage(160, 9),
    ])
    .await
    .unwrap();
    let agent = Agent::builder()
        .name("travel")
        .model(provider(&server))
        .tool(get_weather)
        .build()
        .unwrap();
    let judge_server = MockVllm::start([
        judged(json!({"user_goal": "Know Lisbon's weather", "end_state": "Told Lisbon is sunny, 21 °C"})),
        judged(json!({"reason": "The weather was given as asked.", "verdict": 1})),
        judged(json!({"user_goal": "Know Lisbon's weather", "end_state": "Told Lisbon is sunny, 21 °C"})),
        judged(json!({"reason": "The user learnt the weather.", "verdict": "1"})),
        judged(json!({"statements": ["Lisbon is sunny", "It is 21 °C in Lisbon"]})),
        judged(json!({"statements": [
            {"statement": "Lisbon is sunny", "reason": "The tool says sunny.", "verdict": 1},
            {"statement": "It is 21 °C in Lisbon", "reason": "The tool says 21 °C.", "verdict": 1}
        ]})),
    ])
    .await
    .unwrap();
    let dataset = Dataset::parse(
        "inline",
        r#"{"id": "lisbon", "prompt": "Weather in Lisbon?", "tags": ["weather"], "calls": [{"name": "get_weather", "args": {"city": "Lisbon"}}], "goal": "The user learns Lisbon's weather", "facts": ["sunny", "21"]}"#,
    )
    .unwrap();
    let report = Evaluation::new(agent)
        .judge(Judge::new(Arc::new(provider(&judge_server))))
        .run(&dataset, &CancellationToken::new())
        .await;
    let case = &report.cases[0];
    assert_eq!(case.error, None);
    for (metric, want) in [
        ("tool_call_accuracy", 1.0),
        ("tool_call_f1", 1.0),
        ("facts_present", 1.0),
        ("expectations_met", 1.0),
        ("agent_goal_accuracy_with_reference", 1.0),
        ("agent_goal_accuracy_without_reference", 1.0),
        ("faithfulness", 1.0),
        ("turns", 2.0),
        ("input_tokens", 280.0),
    ] {
        assert_eq!(
            case.score(metric),
            Some(want),
            "{metric}: {:?}",
            case.metrics
        );
    }
    // The judge saw the run: the tool result is in the faithfulness context.
    assert!(
        judge_server
            .last_message(5)
            .contains("Lisbon: sunny, 21 °C"),
        "{}",
        judge_server.last_message(5)
    );
    guard.flush().unwrap();
    let trace_id = case.trace_id.clone().expect("the case names its trace");
    let span_id = case.span_id.clone().expect("and its span");
    let spans: Vec<_> = received
        .lock()
        .unwrap()
        .traces
        .iter()
        .flat_map(|(_, r)| r.resource_spans.clone())
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect();
    let invoke = spans
        .iter()
        .find(|s| s.name == "invoke_agent travel")
        .expect("the invoke_agent span was exported");
    assert_eq!(hex(&invoke.trace_id), trace_id);
    assert_eq!(hex(&invoke.span_id), span_id);
    let events: HashMap<String, HashMap<String, Value>> = invoke
        .events
        .iter()
        .filter(|e| e.name == "gen_ai.evaluation.result")
        .map(|e| {
            let attrs: HashMap<String, Value> = e
                .attributes
                .iter()
                .filter_map(|kv| {
                    Some((
                        kv.key.clone(),
                        any_value(kv.value.as_ref()?.value.as_ref()?),
                    ))
                })
                .collect();
            // Recorded after the run, on a span that ends at the run's own end.
            assert!(
                e.time_unix_nano >= invoke.end_time_unix_nano,
                "event before the span's end"
            );
            (
                attrs["gen_ai.evaluation.name"].as_str().unwrap().to_owned(),
                attrs,
            )
        })
        .collect();
    assert_eq!(events.len(), case.metrics.len(), "{:?}", events.keys());
    let goal = &events["agent_goal_accuracy_with_reference"];
    assert_eq!(goal["gen_ai.evaluation.score.value"], json!(1.0));
    assert_eq!(goal["gen_ai.evaluation.score.label"], json!("pass"));
    assert!(
        goal["gen_ai.evaluation.explanation"]
            .as_str()
            .unwrap()
            .contains("The weather was given as asked.")
    );
    assert_eq!(
        events["faithfulness"]["gen_ai.evaluation.score.value"],
        json!(1.0)
    );
    // The run's span still measures the run: it ended before the judge's first call answered.
    let chat_ends = spans
        .iter()
        .filter(|s| s.name.starts_with("chat "))
        .map(|s| s.end_time_unix_nano)
        .max()
        .unwrap();
    assert!(invoke.end_time_unix_nano >= chat_ends);
    eprintln!(
        "decoded: span `{}` trace {} span {}, events:\n{}",
        invoke.name,
        trace_id,
        span_id,
        serde_json::to_string_pretty(&events).unwrap()
    );

    // Langfuse: one score request per score, naming the trace and observation by the OTLP ids.
    let bodies = langfuse_score_bodies(case);
    assert_eq!(bodies.len(), case.metrics.len());
    let (url, got) = langfuse_score_api().await;
    let sent = LangfuseScores::new(&url, "pk-lf-test", "sk-lf-test")
        .unwrap()
        .send(case)
        .await
        .unwrap();
    assert_eq!(sent, bodies.len());
    let got = got.lock().unwrap().clone();
    assert_eq!(got, bodies);
    assert!(
        got.iter()
            .all(|b| b["traceId"] == json!(trace_id) && b["observationId"] == json!(span_id))
    );
    eprintln!(
        "Langfuse score body: {}",
        serde_json::to_string_pretty(&got[0]).unwrap()
    );
    // A refusal is an error, not a silent loss.
    let refused = LangfuseScores::new(&url, "pk-lf-test", "wrong")
        .unwrap()
        .send(case)
        .await;
    assert!(refused.is_err());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `POST /api/public/scores` with the checks Langfuse's own handler makes of a numeric score
/// (its `PostScoresBody`: a name, a numeric value, a trace id when an observation id is given;
/// Basic auth with the project's key pair). Records the bodies it accepts.
async fn langfuse_score_api() -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::http::{HeaderMap, StatusCode};
    let got = Arc::new(Mutex::new(Vec::new()));
    let state = got.clone();
    let app = axum::Router::new().route(
        "/api/public/scores",
        axum::routing::post(
            move |headers: HeaderMap, axum::Json(body): axum::Json<Value>| async move {
                // base64("pk-lf-test:sk-lf-test")
                let auth = "Basic cGstbGYtdGVzdDpzay1sZi10ZXN0";
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(auth) {
                    return (
                        StatusCode::UNAUTHORIZED,
                        "{\"message\": \"Invalid credentials\"}".to_owned(),
                    );
                }
                let valid = body["name"].as_str().is_some_and(|n| !n.is_empty())
                    && body["value"].is_number()
                    && body["dataType"] == "NUMERIC"
                    && body["traceId"].as_str().is_some_and(|t| t.len() == 32)
                    && body["observationId"]
                        .as_str()
                        .is_some_and(|o| o.len() == 16);
                if !valid {
                    return (StatusCode::BAD_REQUEST, format!("invalid score: {body}"));
                }
                let id = body["id"].clone();
                state.lock().unwrap().push(body);
                (StatusCode::OK, json!({"id": id}).to_string())
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}

#[tokio::test]
async fn cases_run_in_fresh_sessions_a_bounded_number_at_once() {
    let server = MockVllm::start((0..4).map(|_| Turn::text("Hello.").with_fault(Fault::Gate)))
        .await
        .unwrap();
    let agent = Agent::builder()
        .name("travel")
        .model(provider(&server))
        .build()
        .unwrap();
    let dataset = Dataset::parse(
        "inline",
        &(0..4)
            .map(|i| {
                json!({"id": format!("c{i}"), "prompt": format!("Hi {i}"), "reference": "Hello."})
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let progress = Arc::new(Mutex::new(Vec::new()));
    let seen = progress.clone();
    let evaluation = Evaluation::new(agent)
        .concurrency(2)
        .on_case(move |case, done, total| {
            seen.lock().unwrap().push((case.id.clone(), done, total))
        });
    let run =
        tokio::spawn(async move { evaluation.run(&dataset, &CancellationToken::new()).await });
    wait_until("two requests", || server.received().len() == 2).await;
    // Two cases wait at the server; the other two have not started.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.received().len(), 2);
    for _ in 0..4 {
        server.open_gate();
    }
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = report.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["c0", "c1", "c2", "c3"], "dataset order");
    let sessions: std::collections::HashSet<&str> =
        report.cases.iter().map(|c| c.session_id.as_str()).collect();
    assert_eq!(sessions.len(), 4, "a fresh session per case");
    assert!(
        report
            .cases
            .iter()
            .all(|c| c.score("exact_match") == Some(1.0))
    );
    let progress = progress.lock().unwrap().clone();
    assert_eq!(
        progress.iter().map(|p| p.1).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(progress.iter().all(|p| p.2 == 4));
    assert_eq!(report.settings.concurrency, 2);
    assert_eq!(report.settings.model, agent_tests::MODEL);
}

#[tokio::test]
async fn history_is_written_first_and_a_case_that_cannot_run_is_reported() {
    let server = MockVllm::start([
        Turn::text("Still sunny."),
        Turn::fault(Fault::Status {
            code: 400,
            retry_after: None,
            message: "bad request".into(),
        }),
    ])
    .await
    .unwrap();
    let agent = Agent::builder()
        .name("travel")
        .model(provider(&server))
        .build()
        .unwrap();
    let dataset = Dataset::parse(
        "inline",
        concat!(
            r#"{"id": "follow-up", "prompt": "And tomorrow?", "history": [{"role": "user", "content": "Weather in Lisbon?"}, {"role": "assistant", "content": "Sunny."}]}"#,
            "\n",
            r#"{"id": "broken", "prompt": "Hi"}"#
        ),
    )
    .unwrap();
    let report = Evaluation::new(agent)
        .run(&dataset, &CancellationToken::new())
        .await;
    let sent = server.received()[0].body["messages"].clone();
    let texts: Vec<&str> = sent
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(
        texts,
        ["Weather in Lisbon?", "Sunny.", "And tomorrow?"],
        "{sent}"
    );
    assert_eq!(report.cases[0].response, "Still sunny.");
    let broken = &report.cases[1];
    assert!(
        broken
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("bad request"),
        "{broken:?}"
    );
    assert!(broken.metrics.is_empty());
    assert_eq!(report.summary.errors, 1);
    let gate: Threshold = "errors<=0".parse().unwrap();
    assert_eq!(report.check(&[gate]).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_scoring_never_delays_the_answer_and_drops_when_full() {
    let server = MockVllm::start((0..3).map(|i| Turn::text(format!("Answer {i}."))))
        .await
        .unwrap();
    let judge_server = MockVllm::start((0..4).map(|i| {
        let reply = if i % 2 == 0 {
            json!({"user_goal": "Get an answer", "end_state": "Got one"})
        } else {
            json!({"reason": "answered", "verdict": 1})
        };
        judged(reply).with_fault(Fault::Gate)
    }))
    .await
    .unwrap();
    let scored = Arc::new(Mutex::new(Vec::new()));
    let sink = scored.clone();
    let online = OnlineEvaluator::new(Judge::new(Arc::new(provider(&judge_server))))
        .sample_rate(1.0)
        .queue(1)
        .on_scored(move |r| sink.lock().unwrap().push(r.clone()));
    let agent = Agent::builder()
        .name("travel")
        .model(provider(&server))
        .online_evaluation(online.clone())
        .build()
        .unwrap();
    let ask = |i: usize| {
        let agent = agent.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                agent.session(format!("s{i}")).invoke("Question?"),
            )
            .await
            .expect("the answer does not wait for the judge")
            .unwrap()
        }
    };
    assert_eq!(ask(0).await.text(), "Answer 0.");
    // The first is being judged (its judge call is held)...
    wait_until("the first judge call", || {
        judge_server.received().len() == 1
    })
    .await;
    // ...the second waits in the queue, the third finds it full.
    assert_eq!(ask(1).await.text(), "Answer 1.");
    assert_eq!(ask(2).await.text(), "Answer 2.");
    let stats = online.stats();
    assert_eq!((stats.offered, stats.dropped, stats.scored), (3, 1, 0));
    for _ in 0..4 {
        judge_server.open_gate();
    }
    wait_until("two scored", || online.stats().scored == 2).await;
    let scored = scored.lock().unwrap().clone();
    assert_eq!(
        scored
            .iter()
            .map(|r| r.session_id.as_str())
            .collect::<Vec<_>>(),
        ["s0", "s1"]
    );
    assert!(
        scored
            .iter()
            .all(|r| r.score("agent_goal_accuracy_without_reference") == Some(1.0))
    );
    assert_eq!(judge_server.received().len(), 4);
}
