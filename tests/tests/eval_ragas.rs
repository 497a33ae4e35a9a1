//! The deterministic metrics against Ragas itself (0.4.3 from PyPI, `scripts/ragas-python.sh`,
//! found through `AGENT_RAGAS_PYTHON`): the same samples scored by `agent_core::eval` and by
//! Ragas' metric classes (`tests/python/ragas_parity.py`) must give the same floats, bit for bit.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use agent_core::eval::{ArgComparison, Case, Sample, ToolCall, score_deterministic};
use serde_json::{Value, json};

fn python() -> String {
    std::env::var("AGENT_RAGAS_PYTHON").unwrap_or_else(|_| {
        panic!(
            "AGENT_RAGAS_PYTHON is not set: run scripts/test.sh, or export \
             AGENT_RAGAS_PYTHON=$(scripts/ragas-python.sh)"
        )
    })
}

/// (id, predicted calls, reference calls (`None`: the case names none), response, reference)
type Row = (
    &'static str,
    Value,
    Option<Value>,
    &'static str,
    Option<&'static str>,
);

fn rows() -> Vec<Row> {
    let w = |c: &str| json!({"name": "get_weather", "args": {"city": c}});
    let f = |a: &str, b: &str| json!({"name": "search_flights", "args": {"from_city": a, "to_city": b, "date": "2026-12-05"}});
    let one = |name: &str, args: Value| json!({"name": name, "args": args});
    vec![
        (
            "same-two",
            json!([w("Lisbon"), f("London", "Lisbon")]),
            Some(json!([w("Lisbon"), f("London", "Lisbon")])),
            "Sunny, 21 °C. TA999.",
            Some("TA999"),
        ),
        (
            "reversed",
            json!([f("London", "Lisbon"), w("Lisbon")]),
            Some(json!([w("Lisbon"), f("London", "Lisbon")])),
            "TA999",
            Some("TA999"),
        ),
        (
            "one-arg-wrong",
            json!([f("London", "Porto")]),
            Some(json!([f("London", "Lisbon")])),
            "x",
            Some("x"),
        ),
        (
            "case-differs",
            json!([w("lisbon")]),
            Some(json!([w("Lisbon")])),
            "Lisbon",
            Some("lisbon"),
        ),
        (
            "int-float",
            json!([one("f", json!({"n": 1}))]),
            Some(json!([one("f", json!({"n": 1.0}))])),
            "",
            Some(""),
        ),
        (
            "bool-int",
            json!([one("f", json!({"n": true}))]),
            Some(json!([one("f", json!({"n": 1}))])),
            "a",
            None,
        ),
        (
            "missing-call",
            json!([w("Paris")]),
            Some(json!([w("Paris"), w("Madrid")])),
            "Paris",
            None,
        ),
        (
            "extra-call",
            json!([w("Paris"), w("Madrid"), w("Rome")]),
            Some(json!([w("Paris"), w("Madrid")])),
            "b",
            None,
        ),
        (
            "no-prediction",
            json!([]),
            Some(json!([w("Paris")])),
            "I don't know.",
            Some("Paris"),
        ),
        (
            "no-reference",
            json!([w("Paris")]),
            Some(json!([])),
            "Hello",
            Some("Hello"),
        ),
        (
            "both-empty",
            json!([]),
            Some(json!([])),
            "Hello!",
            Some("Hello"),
        ),
        (
            "duplicate",
            json!([w("Paris"), w("Paris")]),
            Some(json!([w("Paris")])),
            "c",
            None,
        ),
        (
            "list-arg",
            json!([one("f", json!({"xs": ["a", "b"]}))]),
            Some(json!([one("f", json!({"xs": ["a", "b"]}))])),
            "d",
            None,
        ),
        (
            "list-order",
            json!([one("f", json!({"xs": ["b", "a"]}))]),
            Some(json!([one("f", json!({"xs": ["a", "b"]}))])),
            "e",
            None,
        ),
        (
            "extra-args",
            json!([one("f", json!({"a": 1, "b": 2}))]),
            Some(json!([one("f", json!({"a": 1}))])),
            "f",
            None,
        ),
        (
            "missing-arg",
            json!([one("f", json!({"a": 1}))]),
            Some(json!([one("f", json!({"a": 1, "b": 2, "c": 3}))])),
            "g",
            None,
        ),
        (
            "ref-no-args",
            json!([one("f", json!({"a": 1}))]),
            Some(json!([one("f", json!({}))])),
            "h",
            None,
        ),
        (
            "no-args",
            json!([one("f", json!({}))]),
            Some(json!([one("f", json!({}))])),
            "i",
            None,
        ),
        (
            "wrong-name",
            json!([one("g", json!({"city": "Paris"}))]),
            Some(json!([w("Paris")])),
            "j",
            None,
        ),
        (
            "three-any-order",
            json!([w("Rome"), w("Paris"), f("Paris", "Rome")]),
            Some(json!([f("Paris", "Rome"), w("Paris"), w("Rome")])),
            "k",
            None,
        ),
        (
            "same-name-args-swapped",
            json!([w("Rome"), w("Paris")]),
            Some(json!([w("Paris"), w("Rome")])),
            "l",
            None,
        ),
        (
            "unicode",
            json!([w("São Paulo")]),
            Some(json!([w("São Paulo")])),
            "São Paulo: 25 °C",
            Some("°C"),
        ),
        (
            "string-vs-number",
            json!([one("f", json!({"n": "1"}))]),
            Some(json!([one("f", json!({"n": 1}))])),
            "m",
            None,
        ),
        (
            "null-arg",
            json!([one("f", json!({"n": null}))]),
            Some(json!([one("f", json!({"n": null}))])),
            "n",
            None,
        ),
        (
            "float-arg",
            json!([one("f", json!({"x": 0.1, "y": 1e16}))]),
            Some(json!([one("f", json!({"x": 0.1, "y": 1e16}))])),
            "o",
            None,
        ),
        (
            "quote-in-list",
            json!([one("f", json!({"xs": ["it's", "a\"b"]}))]),
            Some(json!([one("f", json!({"xs": ["it's", "a\"b"]}))])),
            "p",
            None,
        ),
        (
            "nested-object",
            json!([one("f", json!({"o": {"a": 1, "b": [true, null]}}))]),
            Some(json!([one("f", json!({"o": {"a": 1, "b": [true, null]}}))])),
            "q",
            None,
        ),
        (
            "two-of-three-args",
            json!([f("London", "Lisbon"), w("Lisbon")]),
            Some(json!([
                json!({"name": "search_flights", "args": {"from_city": "London", "to_city": "Lisbon", "date": "2026-12-06"}}),
                w("Lisbon")
            ])),
            "r",
            None,
        ),
        (
            "text-only",
            json!([]),
            None,
            "The answer is 42.",
            Some("The answer is 42."),
        ),
        (
            "whitespace",
            json!([]),
            None,
            "The answer is 42. ",
            Some("The answer is 42."),
        ),
    ]
}

#[test]
fn deterministic_metrics_equal_ragas() {
    let python = python();
    let rows = rows();
    let mut samples = Vec::new();
    let mut ours = Vec::new();
    for (id, predicted, reference_calls, response, reference) in &rows {
        let mut case = Case::new(*id, "q");
        match reference_calls {
            Some(Value::Array(calls)) if calls.is_empty() => case.no_tools = true,
            Some(calls) => case.calls = serde_json::from_value(calls.clone()).unwrap(),
            None => {}
        }
        case.reference = reference.map(str::to_owned);
        let mut sample = Sample::new(*id, "q");
        sample.tool_calls = serde_json::from_value::<Vec<ToolCall>>(predicted.clone()).unwrap();
        sample.response = (*response).to_owned();
        ours.push(score_deterministic(&case, &sample, ArgComparison::Exact));
        samples.push(json!({"id": id, "predicted": predicted, "reference_calls": reference_calls, "response": response, "reference": reference}));
    }
    assert!(samples.len() >= 20);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("samples.json");
    std::fs::write(&input, serde_json::to_vec(&samples).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/ragas_parity.py");
    let output = std::process::Command::new(&python)
        .arg(script)
        .arg(&input)
        .env("RAGAS_DO_NOT_TRACK", "true")
        .output()
        .expect("runs Python");
    assert!(
        output.status.success(),
        "ragas_parity.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs: Vec<serde_json::Map<String, Value>> =
        serde_json::from_slice(&output.stdout).expect("JSON from the script");
    assert_eq!(theirs.len(), rows.len());
    let mut compared = 0;
    let mut mismatches = Vec::new();
    for (scores, ragas) in ours.iter().zip(&theirs) {
        let id = ragas["id"].as_str().unwrap();
        for (metric, value) in ragas.iter().filter(|(k, _)| *k != "id") {
            let theirs: f64 = value.as_str().unwrap().parse().unwrap();
            let mine = scores
                .iter()
                .find(|m| &m.metric == metric)
                .and_then(|m| m.value());
            compared += 1;
            if mine.map(f64::to_bits) != Some(theirs.to_bits()) {
                mismatches.push(format!("{id} {metric}: ours {mine:?}, Ragas {theirs}"));
            }
        }
        // Every metric we computed for the row, Ragas computed too.
        for m in scores.iter().filter(|m| {
            [
                "tool_call_accuracy",
                "tool_call_accuracy_any_order",
                "tool_call_f1",
                "exact_match",
                "string_present",
            ]
            .contains(&m.metric.as_str())
        }) {
            assert!(
                ragas.contains_key(&m.metric),
                "{id}: Ragas has no {}",
                m.metric
            );
        }
    }
    assert!(
        mismatches.is_empty(),
        "differences from Ragas:\n{}",
        mismatches.join("\n")
    );
    eprintln!(
        "{compared} scores on {} samples equal Ragas 0.4.3's",
        rows.len()
    );
    assert!(compared >= 100, "{compared}");
}
