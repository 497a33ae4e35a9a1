//! `travel-agent eval`: the evaluation set run against the agent with `agent_core::eval`, each
//! case in a fresh session; Ragas' metrics per case, a summary table, an optional JSON report,
//! and an exit status from `--threshold`s.
//!
//! Cases are JSON lines (`eval/cases.jsonl`, format: `agent_core::eval::Case`):
//!
//! ```json
//! {"id": "weather-lisbon", "prompt": "How is the weather in Lisbon?", "tags": ["weather"],
//!  "tools": ["get_weather"], "calls": [{"name": "get_weather", "args": {"city": "Lisbon"}}],
//!  "goal": "The user learns Lisbon's weather: sunny, 21 °C", "facts": ["sunny", "21"],
//!  "absent": ["Porto"]}
//! ```
//!
//! `--judge` adds the judged metrics, judged by the agent's own model endpoint (or
//! `EVAL_JUDGE_BASE_URL`/`EVAL_JUDGE_MODEL`); `--embed-url` (an OpenAI-compatible embeddings
//! endpoint) adds `answer_relevancy`. With telemetry on (`OTEL_EXPORTER_OTLP_ENDPOINT`), every
//! score is a `gen_ai.evaluation.result` event on its case's `invoke_agent` span; with
//! `LANGFUSE_HOST`, `LANGFUSE_PUBLIC_KEY` and `LANGFUSE_SECRET_KEY` the scores also go to
//! Langfuse, linked to those traces.
//!
//! Exit status: 1 when a threshold is missed or no case could run; 0 otherwise.

use std::path::PathBuf;
use std::sync::Arc;

use agent_core::eval::{ArgComparison, Dataset, Evaluation, Judge, LangfuseScores, Threshold};
use agent_core::model::Model;
use agent_core::model::openai::OpenAiEmbedder;
use agent_core::prelude::*;

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
    /// Writes the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// A bound the run must meet, e.g. `tool_call_accuracy>=0.8`, `latency_seconds.p90<=30`,
    /// `errors<=0` (repeatable; statistics: mean (default), min, max, p50, p90, p99, sd).
    #[arg(long = "threshold", value_name = "METRIC[.STAT]>=|<=VALUE")]
    thresholds: Vec<Threshold>,
    /// Fails when fewer than this percentage of cases meet all their expectations (the same
    /// as `--threshold expectations_met>=PERCENT/100`).
    #[arg(long)]
    min_pass_rate: Option<f64>,
    /// Cases run at once (a local CPU model serves one request at a time).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Adds the judged metrics (goal accuracy, faithfulness; answer relevancy with
    /// `--embed-url`), judged by the agent's model endpoint at temperature 0.
    #[arg(long)]
    judge: bool,
    /// An OpenAI-compatible embeddings endpoint for `answer_relevancy` (with `--judge`).
    #[arg(long, env = "EVAL_EMBED_URL")]
    embed_url: Option<String>,
    /// The embedding model's name.
    #[arg(long, env = "EVAL_EMBED_MODEL", default_value = "all-minilm-l6-v2")]
    embed_model: String,
    /// Compares tool arguments trimmed and case-insensitively (Ragas compares them exactly).
    #[arg(long)]
    normalised_args: bool,
}

impl Args {
    /// Whether a judge model is needed.
    pub(crate) fn judge_wanted(&self) -> bool {
        self.judge
    }
}

/// Runs the evaluation; `judge` is the model that judges (with `--judge`).
pub(crate) async fn run(
    agent: &Agent,
    judge: Option<Arc<dyn Model>>,
    args: &Args,
    cancel: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut dataset = Dataset::load(&args.cases)?;
    if let Some(tag) = &args.tag {
        dataset = dataset.with_tag(tag);
    }
    if let Some(n) = args.limit {
        dataset = dataset.take(n);
    }
    if dataset.cases.is_empty() {
        return Err("no case matches the filters".into());
    }
    let mut thresholds = args.thresholds.clone();
    if let Some(rate) = args.min_pass_rate {
        thresholds.push(format!("expectations_met>={}", rate / 100.0).parse()?);
    }
    let langfuse = LangfuseScores::from_env()?;
    let bar = progress_bar(dataset.cases.len());
    let line_bar = bar.clone();
    let mut evaluation = Evaluation::new(agent.clone())
        .concurrency(args.concurrency)
        .on_case(move |case, done, total| {
            let status = match (&case.error, case.score("expectations_met")) {
                (Some(e), _) => format!("ERROR {}: {e}", case.id),
                (None, Some(v)) if v >= 1.0 => format!("PASS {}", case.id),
                (None, _) => {
                    let why = case
                        .metrics
                        .iter()
                        .find(|m| m.metric == "expectations_met")
                        .and_then(|m| m.explanation.clone())
                        .unwrap_or_default();
                    format!("FAIL {}: {why}", case.id)
                }
            };
            if line_bar.is_hidden() {
                eprintln!("[{done}/{total}] {status}");
            } else {
                line_bar.println(status);
                line_bar.inc(1);
            }
        });
    if args.normalised_args {
        evaluation = evaluation.arg_comparison(ArgComparison::Normalised);
    }
    if let Some(model) = judge {
        let mut judge = Judge::new(model);
        if let Some(url) = &args.embed_url {
            judge = judge.embedder(Arc::new(
                OpenAiEmbedder::builder()
                    .base_url(url)
                    .model(&args.embed_model)
                    .build()?,
            ));
        }
        evaluation = evaluation.judge(judge);
    }
    let report = evaluation.run(&dataset, cancel).await;
    bar.finish_and_clear();
    if cancel.is_cancelled() {
        return Err("interrupted".into());
    }
    println!("{}", report.table());
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("[travel-agent] report: {}", path.display());
    }
    if let Some(langfuse) = &langfuse {
        let mut sent = 0;
        for case in &report.cases {
            sent += langfuse.send(case).await?;
        }
        eprintln!("[travel-agent] {sent} scores sent to Langfuse");
    }
    if report.summary.errors == report.cases.len() {
        return Err(format!(
            "no case could run; the first error: {}",
            report.cases[0].error.as_deref().unwrap_or("unknown")
        )
        .into());
    }
    let failed = report.check(&thresholds);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("thresholds missed: {}", failed.join("; ")).into())
    }
}

/// A bar on a terminal; hidden (a line per case instead) when stderr is not one.
fn progress_bar(total: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} cases, {elapsed} (eta {eta})")
    {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use agent_core::eval::{Case, Sample, score_deterministic};
    use serde_json::json;

    use super::*;

    #[test]
    fn the_shipped_cases_load_and_score() {
        let dataset = Dataset::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/eval/cases.jsonl"
        )))
        .expect("the shipped cases");
        assert!(dataset.cases.len() >= 20, "{}", dataset.cases.len());
        let readme = dataset
            .cases
            .iter()
            .find(|c| c.id == "readme")
            .expect("readme case");
        let mut sample = Sample::new("readme", readme.prompt.clone());
        sample.response = "Sunny, 21 °C. TA999 | 116 EUR".into();
        sample.tool_calls = vec![
            agent_core::eval::ToolCall::new(
                "search_flights",
                json!({"from_city": "London", "to_city": "Lisbon", "date": "2026-12-05"}),
            ),
            agent_core::eval::ToolCall::new("get_weather", json!({"city": "Lisbon"})),
        ];
        let scores = score_deterministic(readme, &sample, ArgComparison::Exact);
        let score = |m: &str| {
            scores
                .iter()
                .find(|r| r.metric == m)
                .and_then(|r| r.value())
        };
        // Both calls made, in the other order.
        assert_eq!(score("tool_call_accuracy"), Some(0.0));
        assert_eq!(score("tool_call_accuracy_any_order"), Some(1.0));
        assert_eq!(score("tool_call_f1"), Some(1.0));
        assert_eq!(score("expectations_met"), Some(1.0));
        let none = Case::new("x", "hi");
        assert!(
            score_deterministic(&none, &sample, ArgComparison::Exact)
                .iter()
                .all(|r| r.metric != "tool_call_f1")
        );
    }
}
