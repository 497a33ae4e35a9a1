//! The travel agent exporting to Arize Phoenix, a real observability backend (started by
//! `scripts/phoenix.sh`, found through `AGENT_PHOENIX_URL`), read back through Phoenix's REST
//! API as its UI shows it: Phoenix turns the GenAI conventions into its own (OpenInference)
//! attributes, so these assertions are about what a user of Phoenix sees.
//!
//! What the in-process receiver tests (`tests/tests/otlp_*.rs`) check instead: metrics, and the
//! exact attribute sets on the wire.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use agent_tests::{MockVllm, Turn};
use serde_json::{Value, json};

const PROMPT: &str = "Weather in Lisbon, and flights from London on 2026-12-05?";
const ANSWER: &str = "Sunny, 21 °C; TA999 at 116 EUR is the cheapest.";

fn phoenix_url() -> String {
    std::env::var("AGENT_PHOENIX_URL").unwrap_or_else(|_| {
        panic!(
            "AGENT_PHOENIX_URL is not set: run scripts/test.sh, or export \
             AGENT_PHOENIX_URL=$(scripts/phoenix.sh start)"
        )
    })
}

/// One CLI run against a model that calls both tools in one turn, then answers; exported to
/// Phoenix's project `project`.
async fn run(project: &str, env: &[(&str, &str)]) -> (Output, String) {
    let server = MockVllm::start([
        Turn::tool_call("get_weather", json!({"city": "Lisbon"}))
            .and_tool_call(
                "search_flights",
                json!({"from_city": "London", "to_city": "Lisbon", "date": "2026-12-05"}),
            )
            .with_usage(300, 40),
        Turn::text(ANSWER).with_usage(420, 25),
    ])
    .await
    .expect("model server");
    let mut command = Command::new(env!("CARGO_BIN_EXE_travel-agent"));
    command
        .arg(PROMPT)
        .env("OPENAI_BASE_URL", server.base_url())
        .env_remove("OPENAI_MODEL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
        .env_remove("OTEL_METRICS_EXPORTER")
        .env_remove("RUST_LOG")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix_url())
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("x-project-name={project}"),
        )
        .env("OTEL_SERVICE_NAME", "travel-agent");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    (output, stderr)
}

/// The session id the CLI announced.
fn session_of(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("[travel-agent] session "))
        .expect("the CLI names its session")
        .to_owned()
}

/// The project's spans once all `n` have been ingested (bounded wait).
async fn spans(project: &str, n: usize) -> Vec<Value> {
    let client = reqwest::Client::new();
    let url = format!("{}/v1/projects/{project}/spans?limit=100", phoenix_url());
    let started = Instant::now();
    loop {
        let response = client
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(r) = response
            && r.status().is_success()
        {
            let body: Value = r.json().await.expect("json");
            let data = body["data"].as_array().cloned().unwrap_or_default();
            if data.len() >= n {
                assert_eq!(data.len(), n, "{data:#?}");
                return data;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Phoenix did not show {n} spans in project {project} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn named<'a>(spans: &'a [Value], prefix: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["name"].as_str().unwrap_or("").starts_with(prefix))
        .collect()
}

/// Asserts what both runs show, and returns (agent, chats in time order, tools).
fn check_tree(spans: &[Value], session: &str) -> (Value, Vec<Value>, Vec<Value>) {
    let agent = named(spans, "invoke_agent")
        .pop()
        .expect("invoke_agent")
        .clone();
    let mut chats: Vec<Value> = named(spans, "chat ").into_iter().cloned().collect();
    chats.sort_by_key(|s| s["start_time"].as_str().unwrap_or("").to_owned());
    let tools: Vec<Value> = named(spans, "execute_tool ").into_iter().cloned().collect();
    assert_eq!((chats.len(), tools.len()), (2, 2), "{spans:#?}");

    // The tree: invoke_agent is the root, every other span its child, one trace.
    assert!(agent["parent_id"].is_null(), "{agent:#}");
    let root = &agent["context"]["span_id"];
    for child in chats.iter().chain(&tools) {
        assert_eq!(&child["parent_id"], root, "{child:#}");
        assert_eq!(child["context"]["trace_id"], agent["context"]["trace_id"]);
    }
    // Span kinds as Phoenix shows them.
    assert_eq!(agent["span_kind"], "AGENT");
    assert!(chats.iter().all(|c| c["span_kind"] == "LLM"));
    assert!(tools.iter().all(|t| t["span_kind"] == "TOOL"));

    // Model, token counts per call and per run (no double counting), finish reasons in the
    // conventions' words, tool names, and the CLI run's own session.
    let a = |s: &Value, k: &str| s["attributes"][k].clone();
    for (chat, (prompt, completion), finish) in [
        (&chats[0], (300, 40), "tool_call"),
        (&chats[1], (420, 25), "stop"),
    ] {
        assert_eq!(a(chat, "llm.model_name"), "qwen3-8b");
        assert_eq!(a(chat, "llm.token_count.prompt"), prompt);
        assert_eq!(a(chat, "llm.token_count.completion"), completion);
        assert_eq!(a(chat, "llm.finish_reason"), finish, "{chat:#}");
        assert_eq!(a(chat, "session.id"), session);
    }
    assert_eq!(a(&agent, "llm.token_count.prompt"), 720);
    assert_eq!(a(&agent, "llm.token_count.completion"), 65);
    assert_eq!(a(&agent, "llm.finish_reason"), "stop");
    assert_eq!(a(&agent, "session.id"), session);
    let mut tool_names: Vec<String> = tools
        .iter()
        .map(|t| a(t, "tool.name").as_str().unwrap_or("").to_owned())
        .collect();
    tool_names.sort();
    assert_eq!(tool_names, ["get_weather", "search_flights"]);
    (agent, chats, tools)
}

/// Every attribute key of the spans that carries message content, as Phoenix names it. (An LLM
/// span's `output.value` is Phoenix's own summary of the response id and model, not content.)
fn content_keys(spans: &[Value]) -> Vec<String> {
    let mut keys = Vec::new();
    for span in spans {
        let llm = span["span_kind"] == "LLM";
        for (k, _) in span["attributes"].as_object().cloned().unwrap_or_default() {
            let content = k.starts_with("llm.input_messages")
                || k.starts_with("llm.output_messages")
                || k.starts_with("input.")
                || (k.starts_with("output.") && !llm)
                || k.starts_with("tool.parameters")
                || k.starts_with("gen_ai.input")
                || k.starts_with("gen_ai.output")
                || k.starts_with("gen_ai.system_instructions")
                || k == "gen_ai.tool.call.arguments"
                || k == "gen_ai.tool.call.result";
            if content {
                keys.push(format!("{}: {k}", span["name"]));
            }
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phoenix_shows_the_run_as_the_conventions_describe_it() {
    let unique = format!("{:08x}", fastrand::u32(..));

    // With content capture on, and metrics left on: Phoenix refuses them (405), the CLI says so
    // once and still exits 0.
    let with_content = format!("travel-content-{unique}");
    let (output, stderr) = run(
        &with_content,
        &[(
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
            "SPAN_ONLY",
        )],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("TA999"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("OTLP metrics export failed").count(),
        1,
        "the refused metrics are reported once: {stderr}"
    );
    assert!(stderr.contains("405"), "{stderr}");
    let first_session = session_of(&stderr);
    let spans_on = spans(&with_content, 5).await;
    let (agent, chats, tools) = check_tree(&spans_on, &first_session);

    // The trace's input and output, as Phoenix lists traces.
    assert_eq!(agent["attributes"]["input.value"], PROMPT);
    assert_eq!(agent["attributes"]["output.value"], ANSWER);
    assert_eq!(
        agent["attributes"]["llm.output_messages.0.message.content"],
        ANSWER
    );
    // The model calls' messages, and the tool calls' arguments and results.
    assert_eq!(
        chats[0]["attributes"]["llm.input_messages.1.message.content"], PROMPT,
        "after the system prompt: {:#}",
        chats[0]
    );
    let weather = tools
        .iter()
        .find(|t| t["attributes"]["tool.name"] == "get_weather")
        .expect("get_weather");
    let input: Value = serde_json::from_str(
        weather["attributes"]["input.value"]
            .as_str()
            .expect("input.value"),
    )
    .expect("json arguments");
    assert_eq!(input, json!({"city": "Lisbon"}));
    assert!(
        weather["attributes"]["output.value"]
            .as_str()
            .expect("output.value")
            .starts_with("Weather in Lisbon today: sunny"),
        "the result as text, not a quoted JSON string: {weather:#}"
    );

    // Without capture, and with metrics turned off: no content anywhere, no warning, and a
    // session of its own.
    let without_content = format!("travel-plain-{unique}");
    let (_, stderr) = run(&without_content, &[("OTEL_METRICS_EXPORTER", "none")]).await;
    assert!(!stderr.contains("export failed"), "{stderr}");
    let second_session = session_of(&stderr);
    assert_ne!(
        first_session, second_session,
        "each CLI run is its own conversation"
    );
    let spans_off = spans(&without_content, 5).await;
    check_tree(&spans_off, &second_session);
    assert_eq!(content_keys(&spans_off), Vec::<String>::new());
    assert!(!content_keys(&spans_on).is_empty());

    // Phoenix's session view: one trace per run, with the run's token total.
    let session: Value = reqwest::get(format!("{}/v1/sessions/{first_session}", phoenix_url()))
        .await
        .expect("session")
        .json()
        .await
        .expect("json");
    assert_eq!(
        session["data"]["traces"].as_array().map(Vec::len),
        Some(1),
        "{session:#}"
    );
    assert_eq!(session["data"]["token_count_total"], 785, "{session:#}");
}

/// A judge reply as a grammar-bound model writes it: the `verdict` call.
fn judged(arguments: Value) -> Turn {
    Turn::text(json!({"tool_call": {"name": "verdict", "arguments": arguments}}).to_string())
}

/// `travel-agent eval --judge` exporting to Phoenix: every score is a `gen_ai.evaluation.result`
/// event on its case's `invoke_agent` span as Phoenix stores it, and the span still measures the
/// run (it ends before the judge's first call).
#[tokio::test]
async fn phoenix_shows_the_scores_on_the_evaluated_run() {
    let dir = tempfile::tempdir().expect("dir");
    let cases = dir.path().join("cases.jsonl");
    std::fs::write(
        &cases,
        r#"{"id": "lisbon", "prompt": "Weather in Lisbon?", "calls": [{"name": "get_weather", "args": {"city": "Lisbon"}}], "goal": "The user learns Lisbon's weather: sunny, 21 °C"}"#,
    )
    .expect("cases");
    // The agent's two turns, then the judge's six (the same endpoint judges).
    let goal =
        json!({"user_goal": "Know Lisbon's weather", "end_state": "Told it is sunny, 21 °C"});
    let server = MockVllm::start([
        Turn::tool_call("get_weather", json!({"city": "Lisbon"})),
        Turn::text("Sunny in Lisbon, 21 °C."),
        judged(goal.clone()),
        judged(json!({"reason": "As desired.", "verdict": 1})),
        judged(goal),
        judged(json!({"reason": "Goal reached.", "verdict": 1})),
        judged(json!({"statements": ["Lisbon is sunny at 21 °C"]})),
        judged(json!({"statements": [{"statement": "Lisbon is sunny at 21 °C", "reason": "The tool says so.", "verdict": 1}]})),
    ])
    .await
    .expect("model server");
    let project = format!("travel-eval-{:08x}", fastrand::u32(..));
    let mut command = Command::new(env!("CARGO_BIN_EXE_travel-agent"));
    command
        .args(["eval", "--judge", "--cases"])
        .arg(&cases)
        .env("OPENAI_BASE_URL", server.base_url())
        .env_remove("OPENAI_MODEL")
        .env_remove("EVAL_JUDGE_BASE_URL")
        .env_remove("EVAL_EMBED_URL")
        .env_remove("LANGFUSE_HOST")
        .env_remove("LANGFUSE_BASE_URL")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix_url())
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("x-project-name={project}"),
        )
        .env("OTEL_METRICS_EXPORTER", "none");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("faithfulness"), "{stdout}");
    // invoke_agent, two chats, one tool; the judge's calls are not the agent's.
    let spans = spans(&project, 4).await;
    let agent = named(&spans, "invoke_agent")
        .pop()
        .expect("invoke_agent")
        .clone();
    let events: Vec<&Value> = agent["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["name"] == "gen_ai.evaluation.result")
        .collect();
    let score = |metric: &str| {
        events
            .iter()
            .find(|e| e["attributes"]["gen_ai.evaluation.name"] == metric)
            .map(|e| e["attributes"].clone())
            .unwrap_or_else(|| panic!("no {metric} event: {agent:#}"))
    };
    assert_eq!(
        score("tool_call_accuracy")["gen_ai.evaluation.score.value"],
        json!(1.0)
    );
    assert_eq!(
        score("faithfulness")["gen_ai.evaluation.score.value"],
        json!(1.0)
    );
    let goal = score("agent_goal_accuracy_with_reference");
    assert_eq!(goal["gen_ai.evaluation.score.label"], "pass");
    assert!(
        goal["gen_ai.evaluation.explanation"]
            .as_str()
            .unwrap_or("")
            .contains("As desired."),
        "{goal:#}"
    );
    let ended = instant(&agent["end_time"]);
    let last_chat = named(&spans, "chat ")
        .iter()
        .map(|s| instant(&s["end_time"]))
        .fold(f64::MIN, f64::max);
    assert!(ended >= last_chat, "{ended} {last_chat}");
    assert!(
        events.iter().all(|e| instant(&e["timestamp"]) >= ended),
        "scores come after the run: {agent:#}"
    );
}

/// Seconds since midnight of one of Phoenix's UTC times (`2026-11-30T19:22:43.073823+00:00`;
/// the fraction may be absent); the runs of a test share a day but for a run across midnight.
fn instant(v: &Value) -> f64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    let time = &s[11..s.len() - 6];
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let parts: Vec<f64> = hms.split(':').map(|p| p.parse().expect("number")).collect();
    let fraction: f64 = format!("0.{fraction}").parse().expect("fraction");
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2] + fraction
}
