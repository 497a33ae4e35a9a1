//! `travel-agent eval`: runs a set of prompts, each in a fresh session, checks each answer
//! against machine-checkable expectations and prints the pass rate.
//!
//! A measurement, not a gate: small models are noisy. The exit status is 0 whatever the pass
//! rate unless `--min-pass-rate` is given; it is 1 when a case could not run (an error from the
//! model endpoint, say), because then nothing was measured.
//!
//! Cases are JSON lines (`eval/cases.jsonl`):
//!
//! ```json
//! {"id": "weather-lisbon", "prompt": "How is the weather in Lisbon?", "tags": ["weather"],
//!  "tools": ["get_weather"], "calls": [{"name": "get_weather", "args": {"city": "Lisbon"}}],
//!  "facts": ["sunny", "21"], "absent": ["Porto"]}
//! ```
//!
//! - `tools`: tools that must be called (each at least once); `no_tools: true`: none may be;
//! - `calls`: calls that must be made, arguments compared case-insensitively, as a subset;
//! - `facts`: each must appear in the answer, case-insensitively; `"a | b"` accepts either;
//! - `absent`: none may appear in the answer.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_core::message::ToolUse;
use agent_core::prelude::*;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value};

/// `travel-agent eval` options.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The cases, one JSON object per line.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/eval/cases.jsonl"))]
    cases: PathBuf,
    /// Runs only the first N cases.
    #[arg(long)]
    limit: Option<usize>,
    /// Runs only the cases with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Writes a JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Fails (exit status 1) when the pass rate, in percent, is below this.
    #[arg(long)]
    min_pass_rate: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    id: String,
    prompt: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    no_tools: bool,
    #[serde(default)]
    calls: Vec<ExpectedCall>,
    #[serde(default)]
    facts: Vec<String>,
    #[serde(default)]
    absent: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedCall {
    name: String,
    #[serde(default)]
    args: Map<String, Value>,
}

/// Reads the cases; an error names the file and line.
fn load(path: &Path) -> Result<Vec<Case>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let case: Case =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        if cases.iter().any(|c: &Case| c.id == case.id) {
            return Err(format!(
                "{}:{}: duplicate id `{}`",
                path.display(),
                i + 1,
                case.id
            ));
        }
        cases.push(case);
    }
    if cases.is_empty() {
        return Err(format!("{} has no cases", path.display()));
    }
    Ok(cases)
}

/// What one run did.
#[derive(Debug, Default, serde::Serialize)]
struct Observed {
    answer: String,
    calls: Vec<(String, Value)>,
    stop_reason: String,
    seconds: f64,
}

/// The expectations `observed` misses, in words; empty when the case passes.
fn check(case: &Case, observed: &Observed) -> Vec<String> {
    let mut failures = Vec::new();
    let answer = observed.answer.to_lowercase();
    if observed.answer.trim().is_empty() {
        failures.push(format!("no answer (stopped: {})", observed.stop_reason));
    }
    for tool in &case.tools {
        if !observed.calls.iter().any(|(name, _)| name == tool) {
            failures.push(format!("`{tool}` was not called"));
        }
    }
    if case.no_tools && !observed.calls.is_empty() {
        failures.push(format!(
            "no tool should be called, but {} were",
            observed.calls.len()
        ));
    }
    for expected in &case.calls {
        let made = observed
            .calls
            .iter()
            .any(|(name, args)| *name == expected.name && args_match(&expected.args, args));
        if !made {
            failures.push(format!(
                "no call `{}` with {}",
                expected.name,
                Value::Object(expected.args.clone())
            ));
        }
    }
    for fact in &case.facts {
        let found = fact
            .split('|')
            .map(|alt| alt.trim().to_lowercase())
            .any(|alt| !alt.is_empty() && answer.contains(&alt));
        if !found {
            failures.push(format!("the answer lacks \"{fact}\""));
        }
    }
    for wrong in &case.absent {
        if answer.contains(&wrong.to_lowercase()) {
            failures.push(format!("the answer contains \"{wrong}\""));
        }
    }
    failures
}

/// Every expected argument is present with an equal value (strings compared trimmed and
/// case-insensitively).
fn args_match(expected: &Map<String, Value>, actual: &Value) -> bool {
    expected.iter().all(|(k, want)| match (want, &actual[k]) {
        (Value::String(w), Value::String(a)) => w.trim().eq_ignore_ascii_case(a.trim()),
        (w, a) => w == a,
    })
}

/// Runs one case in a fresh session.
async fn observe(
    agent: &Agent,
    case: &Case,
    cancel: &CancellationToken,
) -> Result<Observed, AgentError> {
    let started = Instant::now();
    let session = format!("eval-{}-{:08x}", case.id, fastrand::u32(..));
    let mut events = agent
        .session(session)
        .cancel_token(cancel.child_token())
        .stream(case.prompt.as_str());
    let mut observed = Observed::default();
    while let Some(event) = events.next().await {
        match event? {
            AgentEvent::MessageAdded { message } if message.role == Role::Assistant => {
                observed.calls.extend(
                    message
                        .tool_uses()
                        .map(|u: &ToolUse| (u.name.clone(), u.input.clone())),
                );
            }
            AgentEvent::Stop(result) => {
                observed.answer = result.text();
                observed.stop_reason = result.stop_reason.as_str().to_owned();
            }
            _ => {}
        }
    }
    observed.seconds = started.elapsed().as_secs_f64();
    Ok(observed)
}

/// Runs the cases one at a time (a local model serves one request at a time) and prints a line
/// per case and the pass rate.
pub(crate) async fn run(
    agent: &Agent,
    args: &Args,
    cancel: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut cases = load(&args.cases)?;
    if let Some(tag) = &args.tag {
        cases.retain(|c| c.tags.iter().any(|t| t == tag));
    }
    cases.truncate(args.limit.unwrap_or(usize::MAX));
    if cases.is_empty() {
        return Err("no case matches the filters".into());
    }
    let mut passed = 0usize;
    let mut report = Vec::with_capacity(cases.len());
    let started = Instant::now();
    for case in &cases {
        let observed = observe(agent, case, cancel)
            .await
            .map_err(|e| format!("case `{}` could not run: {e}", case.id))?;
        let failures = check(case, &observed);
        if failures.is_empty() {
            passed += 1;
            println!("PASS {} ({:.1} s)", case.id, observed.seconds);
        } else {
            println!(
                "FAIL {} ({:.1} s): {}",
                case.id,
                observed.seconds,
                failures.join("; ")
            );
            println!("     answer: {}", observed.answer.replace('\n', " "));
        }
        report.push(serde_json::json!({
            "id": case.id, "tags": case.tags, "passed": failures.is_empty(),
            "failures": failures, "observed": observed,
        }));
    }
    let rate = 100.0 * passed as f64 / cases.len() as f64;
    println!(
        "pass rate: {passed}/{} ({rate:.0}%) in {}",
        cases.len(),
        humanize(started.elapsed())
    );
    if let Some(path) = &args.report {
        let body = serde_json::json!({"passed": passed, "cases": cases.len(), "results": report});
        std::fs::write(path, serde_json::to_vec_pretty(&body)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    match args.min_pass_rate {
        Some(min) if rate < min => {
            Err(format!("pass rate {rate:.0}% is below the minimum {min}%").into())
        }
        _ => Ok(()),
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn case(json: Value) -> Case {
        serde_json::from_value(json).expect("case")
    }

    #[test]
    fn expectations_are_checked() {
        let c = case(json!({
            "id": "x", "prompt": "p", "tools": ["search_flights"],
            "calls": [{"name": "search_flights", "args": {"from_city": "London", "to_city": "Lisbon"}}],
            "facts": ["TA123", "cheapest | lowest"], "absent": ["Porto"]
        }));
        let good = Observed {
            answer: "The cheapest is TA123.".into(),
            calls: vec![(
                "search_flights".into(),
                json!({"from_city": "london ", "to_city": "Lisbon", "date": "2026-12-05"}),
            )],
            ..Observed::default()
        };
        assert!(check(&c, &good).is_empty(), "{:?}", check(&c, &good));
        let reversed = Observed {
            answer: "The lowest fare is TA123, via Porto.".into(),
            calls: vec![(
                "search_flights".into(),
                json!({"from_city": "Lisbon", "to_city": "London"}),
            )],
            ..Observed::default()
        };
        let failures = check(&c, &reversed);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].starts_with("no call `search_flights`"));
        assert!(failures[1].contains("Porto"));

        let none = case(json!({"id": "y", "prompt": "hi", "no_tools": true}));
        let called = Observed {
            answer: "Hello".into(),
            calls: vec![("get_weather".into(), json!({}))],
            ..Observed::default()
        };
        assert_eq!(check(&none, &called).len(), 1);
        assert_eq!(check(&none, &Observed::default()).len(), 1, "no answer");
    }

    #[test]
    fn the_shipped_cases_load_and_bad_lines_are_named() {
        let cases = load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/eval/cases.jsonl"
        )))
        .expect("cases");
        assert!(cases.len() >= 20, "{}", cases.len());
        let dir = std::env::temp_dir().join(format!("eval-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("dir");
        let bad = dir.join("bad.jsonl");
        std::fs::write(
            &bad,
            "{\"id\": \"a\", \"prompt\": \"p\"}\n\n{\"id\": \"b\", \"promt\": \"p\"}\n",
        )
        .expect("write");
        let err = load(&bad).expect_err("bad line");
        assert!(
            err.contains("bad.jsonl:3:") && err.contains("promt"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
