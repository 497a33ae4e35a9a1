//! The judged metrics of `agent_core::eval` beside Ragas' own (0.4.3), both judged by the same
//! model on the same 20 travel-agent samples (correct, wrong and evasive answers to weather
//! questions): how often the two agree. A measurement, not a gate: a small model is a noisy
//! judge, for Ragas as for us.
//!
//! Run: `scripts/judge-agreement.sh` (starts the local model and embedding endpoint and installs
//! Ragas unless given), or by hand:
//! `judge_agreement --model-url URL --embed-url URL --python RAGAS_PYTHON [--report out.json]`.

use std::sync::Arc;

use agent_core::eval::{Judge, MetricResult, Sample};
use agent_core::message::{ContentBlock, Message, Role, ToolResult, ToolUse};
use agent_core::model::openai::{OpenAiCompatible, OpenAiEmbedder};
use serde_json::{Value, json};

const METRICS: [&str; 4] = [
    "agent_goal_accuracy_with_reference",
    "agent_goal_accuracy_without_reference",
    "faithfulness",
    "answer_relevancy",
];

struct Args {
    model_url: String,
    model: String,
    embed_url: String,
    embed_model: String,
    python: String,
    report: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        model_url: String::new(),
        model: "local".into(),
        embed_url: String::new(),
        embed_model: "all-minilm-l6-v2".into(),
        python: String::new(),
        report: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model-url" => a.model_url = value()?,
            "--model" => a.model = value()?,
            "--embed-url" => a.embed_url = value()?,
            "--embed-model" => a.embed_model = value()?,
            "--python" => a.python = value()?,
            "--report" => a.report = Some(value()?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.model_url.is_empty() || a.embed_url.is_empty() || a.python.is_empty() {
        return Err("usage: judge_agreement --model-url URL --embed-url URL --python RAGAS_PYTHON [--model NAME] [--embed-model NAME] [--report FILE]".into());
    }
    Ok(a)
}

/// One sample: the conversation, and the outcome it should reach.
struct Fixture {
    id: String,
    prompt: String,
    tool_result: String,
    answer: String,
    goal: String,
}

fn fixtures() -> Vec<Fixture> {
    let cities = [
        ("Lisbon", "sunny, 21 °C", "raining, 9 °C"),
        ("London", "rain, 9 °C", "sunny, 25 °C"),
        ("Paris", "cloudy, 12 °C", "snow, -3 °C"),
        ("Berlin", "snow, 2 °C", "sunny, 19 °C"),
        ("Madrid", "sunny, 16 °C", "thunderstorms, 30 °C"),
        ("Porto", "cloudy, 14 °C", "clear, 28 °C"),
        ("Rome", "sunny, 18 °C", "fog, 4 °C"),
    ];
    let mut out = Vec::new();
    for (i, (city, weather, wrong)) in cities.iter().enumerate() {
        let goal = format!("The user learns today's weather in {city}: {weather}");
        let kinds: &[(&str, String)] = &[
            ("correct", format!("Today in {city} it is {weather}.")),
            ("wrong", format!("Today in {city} it is {wrong}.")),
            (
                "evasive",
                "I'm not sure; please check a weather website.".to_owned(),
            ),
        ];
        for (kind, answer) in kinds.iter() {
            // 7 correct, 7 wrong, 6 evasive.
            if *kind == "evasive" && i == 6 {
                continue;
            }
            out.push(Fixture {
                id: format!("{}-{kind}", city.to_lowercase()),
                prompt: format!("What's the weather like in {city} today?"),
                tool_result: format!("{city}: {weather}"),
                answer: answer.clone(),
                goal: goal.clone(),
            });
        }
    }
    out
}

fn sample(f: &Fixture) -> Sample {
    let mut s = Sample::new(f.id.clone(), f.prompt.clone());
    let call = ToolUse {
        tool_use_id: "call-1".into(),
        name: "get_weather".into(),
        input: json!({"city": f.prompt.split(" in ").nth(1).and_then(|c| c.split(' ').next()).unwrap_or_default()}),
    };
    s.add_message(Message::user(f.prompt.clone()));
    s.add_message(Message::new(
        Role::Assistant,
        vec![ContentBlock::ToolUse(call)],
    ));
    s.add_message(Message::new(
        Role::User,
        vec![ContentBlock::ToolResult(ToolResult::success(
            "call-1",
            f.tool_result.clone(),
        ))],
    ));
    s.add_message(Message::assistant(f.answer.clone()));
    s.response = f.answer.clone();
    s
}

fn ragas_sample(f: &Fixture, s: &Sample) -> Value {
    let city = s
        .tool_calls
        .first()
        .map(|c| Value::Object(c.args.clone()))
        .unwrap_or(json!({}));
    json!({
        "id": f.id,
        "prompt": f.prompt,
        "messages": [
            {"type": "human", "content": f.prompt},
            {"type": "ai", "content": "", "tool_calls": [{"name": "get_weather", "args": city}]},
            {"type": "tool", "content": f.tool_result},
            {"type": "ai", "content": f.answer},
        ],
        "response": f.answer,
        "contexts": [f.tool_result],
        "goal": f.goal,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let model = OpenAiCompatible::builder()
        .base_url(&args.model_url)
        .model(&args.model)
        .temperature(0.0)
        .build()?;
    let embedder = OpenAiEmbedder::builder()
        .base_url(&args.embed_url)
        .model(&args.embed_model)
        .build()?;
    let judge = Judge::new(Arc::new(model)).embedder(Arc::new(embedder));
    let fixtures = fixtures();
    let started = std::time::Instant::now();
    let mut ours: Vec<Vec<MetricResult>> = Vec::new();
    let mut ragas_input = Vec::new();
    for f in &fixtures {
        let s = sample(f);
        let scores = vec![
            judge.goal_accuracy(&s, Some(&f.goal)).await,
            judge.goal_accuracy(&s, None).await,
            judge.faithfulness(&s).await,
            judge.answer_relevancy(&s).await,
        ];
        eprintln!(
            "[ours] {}: {}",
            f.id,
            scores
                .iter()
                .map(|m| format!("{} {:?}", m.metric, m.value()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        ours.push(scores);
        ragas_input.push(ragas_sample(f, &s));
    }
    let ours_seconds = started.elapsed().as_secs_f64();
    let dir = std::env::temp_dir().join(format!("judge-agreement-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("samples.json");
    std::fs::write(&input, serde_json::to_vec(&ragas_input)?)?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/ragas_judge.py");
    let started = std::time::Instant::now();
    let output = std::process::Command::new(&args.python)
        .arg(script)
        .arg(&input)
        .args([
            &args.model_url,
            &args.model,
            &args.embed_url,
            &args.embed_model,
        ])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    if !output.status.success() {
        return Err(format!("ragas_judge.py failed ({})", output.status).into());
    }
    let ragas_seconds = started.elapsed().as_secs_f64();
    let theirs: Vec<serde_json::Map<String, Value>> = serde_json::from_slice(&output.stdout)?;
    let mut report = serde_json::Map::new();
    println!(
        "metric                                  both  ours-only-unscored  ragas-unscored  agree  mean|diff|  ours-mean  ragas-mean"
    );
    for metric in METRICS {
        let mut both = Vec::new();
        let (mut ours_unscored, mut ragas_unscored) = (0, 0);
        for (mine, theirs) in ours.iter().zip(&theirs) {
            let a = mine
                .iter()
                .find(|m| m.metric == metric)
                .and_then(MetricResult::value);
            let b = theirs.get(metric).and_then(Value::as_f64);
            match (a, b) {
                (Some(a), Some(b)) => both.push((a, b)),
                (None, Some(_)) => ours_unscored += 1,
                (Some(_), None) => ragas_unscored += 1,
                (None, None) => {
                    ours_unscored += 1;
                    ragas_unscored += 1;
                }
            }
        }
        let n = both.len().max(1) as f64;
        let binary = metric.starts_with("agent_goal");
        let agree = both
            .iter()
            .filter(|(a, b)| if binary { a == b } else { (a - b).abs() <= 0.2 })
            .count();
        let diff = both.iter().map(|(a, b)| (a - b).abs()).sum::<f64>() / n;
        let mean_ours = both.iter().map(|p| p.0).sum::<f64>() / n;
        let mean_ragas = both.iter().map(|p| p.1).sum::<f64>() / n;
        println!(
            "{metric:38}  {:>4}  {ours_unscored:>13}  {ragas_unscored:>14}  {:>5}  {diff:>10.3}  {mean_ours:>9.3}  {mean_ragas:>10.3}",
            both.len(),
            format!("{agree}/{}", both.len()),
        );
        report.insert(
            metric.to_owned(),
            json!({"both_scored": both.len(), "agree": agree, "agree_rule": if binary { "equal" } else { "|diff| <= 0.2" },
                   "mean_abs_diff": diff, "ours_mean": mean_ours, "ragas_mean": mean_ragas,
                   "ours_unscored": ours_unscored, "ragas_unscored": ragas_unscored, "pairs": both}),
        );
    }
    println!(
        "{} samples; ours {ours_seconds:.0} s, Ragas {ragas_seconds:.0} s",
        fixtures.len()
    );
    if let Some(path) = &args.report {
        let body = json!({"samples": fixtures.len(), "ours_seconds": ours_seconds, "ragas_seconds": ragas_seconds,
                          "metrics": report, "ragas": theirs,
                          "ours": ours.iter().map(|m| serde_json::to_value(m).unwrap_or_default()).collect::<Vec<_>>()});
        std::fs::write(path, serde_json::to_vec_pretty(&body)?)?;
    }
    Ok(())
}
