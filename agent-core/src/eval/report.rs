//! Scores, the report of a run over a dataset, its summary and the thresholds CI gates on.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::dataset::ToolCall;

/// A metric's outcome on one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The score.
    Value(f64),
    /// No score, and why: the judge failed or answered garbage, or the metric's inputs are
    /// missing from the run. Never counted in a mean.
    Unscored(String),
}

/// One metric's result on one case, with the judge's reasoning when a model judged it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MetricResult {
    /// The metric's name (Ragas' where Ragas has the metric).
    pub metric: String,
    /// The score, or why there is none.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Why: the judge's reasoning, or what a check missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

impl MetricResult {
    /// A score with its explanation (none when empty).
    pub fn scored(metric: impl Into<String>, value: f64, explanation: String) -> Self {
        Self {
            metric: metric.into(),
            outcome: Outcome::Value(value),
            explanation: (!explanation.is_empty()).then_some(explanation),
        }
    }

    /// No score, and why.
    pub fn unscored(metric: impl Into<String>, reason: String) -> Self {
        Self {
            metric: metric.into(),
            outcome: Outcome::Unscored(reason),
            explanation: None,
        }
    }

    /// The score, when there is one.
    pub fn value(&self) -> Option<f64> {
        match self.outcome {
            Outcome::Value(v) => Some(v),
            Outcome::Unscored(_) => None,
        }
    }
}

/// Metrics that measure (counts, seconds) rather than grade: excluded from the worst-case
/// ranking, where only 0..1 scores count.
pub const MEASURES: [&str; 5] = [
    "turns",
    "tool_calls",
    "input_tokens",
    "output_tokens",
    "latency_seconds",
];

/// What one case did and how it scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CaseReport {
    /// The case's id.
    pub id: String,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The fresh session it ran in.
    pub session_id: String,
    /// The trace and span of its `invoke_agent` span, when telemetry recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// See `trace_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// The answer.
    pub response: String,
    /// The tool calls made, in order.
    pub tool_calls: Vec<ToolCall>,
    /// How the run ended (`end_turn`, `max_turns`, ...), or `error`.
    pub stop_reason: String,
    /// Why the case could not run; it then has no scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The scores.
    pub metrics: Vec<MetricResult>,
}

impl CaseReport {
    /// The score of `metric`, when it has one.
    pub fn score(&self, metric: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|m| m.metric == metric)
            .and_then(MetricResult::value)
    }
}

/// Statistics of one metric over the cases that have a score for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Cases with a score.
    pub count: usize,
    /// Cases where it was attempted but unscored.
    pub unscored: usize,
    /// Mean.
    pub mean: f64,
    /// Population standard deviation.
    pub stdev: f64,
    /// Least.
    pub min: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Greatest.
    pub max: f64,
}

impl Stats {
    fn of(values: &[f64], unscored: usize) -> Option<Self> {
        let values: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return None;
        }
        let mut sorted = values;
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let mean = sorted.iter().sum::<f64>() / n;
        let var = sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let rank = |p: f64| {
            let i = ((p / 100.0) * n).ceil() as usize;
            sorted[i.clamp(1, sorted.len()) - 1]
        };
        Some(Self {
            count: sorted.len(),
            unscored,
            mean,
            stdev: var.sqrt(),
            min: sorted[0],
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: sorted[sorted.len() - 1],
        })
    }

    /// A statistic by name.
    pub fn get(&self, stat: Stat) -> f64 {
        match stat {
            Stat::Mean => self.mean,
            Stat::Min => self.min,
            Stat::Max => self.max,
            Stat::P50 => self.p50,
            Stat::P90 => self.p90,
            Stat::P99 => self.p99,
            Stat::Stdev => self.stdev,
        }
    }
}

/// A case among the worst: its lowest score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorstCase {
    /// The case.
    pub id: String,
    /// Its mean over its 0..1 scores.
    pub mean: f64,
    /// Its lowest-scoring metric.
    pub metric: String,
    /// That score.
    pub value: f64,
}

/// The summary of a report.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Summary {
    /// Per metric.
    pub metrics: BTreeMap<String, Stats>,
    /// Per tag, per metric: the mean.
    pub tags: BTreeMap<String, BTreeMap<String, f64>>,
    /// The five cases with the lowest mean score.
    pub worst: Vec<WorstCase>,
    /// Metrics attempted but never scored, and on how many cases.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub never_scored: BTreeMap<String, usize>,
    /// Cases that could not run.
    pub errors: usize,
}

impl Summary {
    /// Computes the summary of `cases`.
    pub fn of(cases: &[CaseReport]) -> Self {
        let mut values: BTreeMap<&str, (Vec<f64>, usize)> = BTreeMap::new();
        let mut tags: BTreeMap<&str, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
        let mut worst = Vec::new();
        for case in cases {
            for m in &case.metrics {
                let entry = values.entry(&m.metric).or_default();
                match m.outcome {
                    Outcome::Value(v) => {
                        entry.0.push(v);
                        for tag in &case.tags {
                            tags.entry(tag)
                                .or_default()
                                .entry(&m.metric)
                                .or_default()
                                .push(v);
                        }
                    }
                    Outcome::Unscored(_) => entry.1 += 1,
                }
            }
            let graded: Vec<(&str, f64)> = case
                .metrics
                .iter()
                .filter(|m| !MEASURES.contains(&m.metric.as_str()))
                .filter_map(|m| m.value().map(|v| (m.metric.as_str(), v)))
                .collect();
            if let Some(&(metric, value)) = graded.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
                worst.push(WorstCase {
                    id: case.id.clone(),
                    mean: graded.iter().map(|g| g.1).sum::<f64>() / graded.len() as f64,
                    metric: metric.to_owned(),
                    value,
                });
            }
        }
        worst.sort_by(|a, b| a.mean.total_cmp(&b.mean).then_with(|| a.id.cmp(&b.id)));
        worst.retain(|w| w.mean < 1.0);
        worst.truncate(5);
        let never_scored = values
            .iter()
            .filter(|(_, (v, u))| v.is_empty() && *u > 0)
            .map(|(k, (_, u))| ((*k).to_owned(), *u))
            .collect();
        Self {
            metrics: values
                .into_iter()
                .filter_map(|(k, (v, u))| Stats::of(&v, u).map(|s| (k.to_owned(), s)))
                .collect(),
            never_scored,
            tags: tags
                .into_iter()
                .map(|(tag, m)| {
                    let means = m
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.iter().sum::<f64>() / v.len() as f64))
                        .collect();
                    (tag.to_owned(), means)
                })
                .collect(),
            worst,
            errors: cases.iter().filter(|c| c.error.is_some()).count(),
        }
    }
}

/// How the evaluated runs were sampled, recorded so a run can be reproduced.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunSettings {
    /// The agent's name.
    pub agent: String,
    /// The agent's model provider and name.
    pub provider: String,
    /// See `provider`.
    pub model: String,
    /// The sampling temperature the agent's model sends, when set.
    pub temperature: Option<f64>,
    /// The sampling seed the agent's model sends, when set.
    pub seed: Option<u64>,
    /// The judge's provider and model, when a model judged.
    pub judge: Option<String>,
    /// Cases run at once.
    pub concurrency: usize,
}

/// The report of an evaluation: every case and the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Report {
    /// How the runs were made.
    pub settings: RunSettings,
    /// When the evaluation started, seconds since the Unix epoch.
    pub started_at: u64,
    /// How long it took.
    pub duration_seconds: f64,
    /// The cases, in dataset order.
    pub cases: Vec<CaseReport>,
    /// The summary.
    pub summary: Summary,
}

impl Report {
    /// A report of `cases`, with its summary.
    pub fn new(
        settings: RunSettings,
        started_at: u64,
        duration_seconds: f64,
        cases: Vec<CaseReport>,
    ) -> Self {
        let summary = Summary::of(&cases);
        Self {
            settings,
            started_at,
            duration_seconds,
            cases,
            summary,
        }
    }

    /// The thresholds this report misses, each in words; empty when all are met. A threshold on
    /// a metric with no score fails, so a misspelt name never passes; and when thresholds are
    /// given, cases that could not run fail the check unless a threshold on `errors` allows
    /// them, so scores over the few cases that ran never pass for the whole dataset.
    pub fn check(&self, thresholds: &[Threshold]) -> Vec<String> {
        let mut failures = Vec::new();
        if !thresholds.is_empty()
            && self.summary.errors > 0
            && !thresholds.iter().any(|t| t.metric == "errors")
        {
            failures.push(format!(
                "{} of {} cases could not run (allow some with errors<=N)",
                self.summary.errors,
                self.cases.len()
            ));
        }
        for t in thresholds {
            let actual = if t.metric == "errors" {
                Some(self.summary.errors as f64)
            } else {
                self.summary
                    .metrics
                    .get(&t.metric)
                    .filter(|s| s.count > 0)
                    .map(|s| s.get(t.stat))
            };
            match actual {
                None => failures.push(format!("{t}: `{}` has no scores", t.metric)),
                Some(v) if !t.met_by(v) => failures.push(format!("{t}: it is {v:.4}")),
                Some(_) => {}
            }
        }
        failures
    }

    /// The summary as a text table: per metric, per tag, the worst cases, and the settings.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = self
            .summary
            .metrics
            .keys()
            .chain(self.summary.never_scored.keys())
            .map(String::len)
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            out,
            "{:width$}  {:>4} {:>8} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "metric", "n", "unscored", "mean", "sd", "min", "p50", "p90", "max"
        );
        for (name, s) in &self.summary.metrics {
            let _ = writeln!(
                out,
                "{name:width$}  {:>4} {:>8} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9}",
                s.count,
                s.unscored,
                num(s.mean),
                num(s.stdev),
                num(s.min),
                num(s.p50),
                num(s.p90),
                num(s.max)
            );
        }
        for (name, unscored) in &self.summary.never_scored {
            let _ = writeln!(out, "{name:width$}  {:>4} {unscored:>8}   (no score)", 0);
        }
        if !self.summary.tags.is_empty() {
            let _ = writeln!(out, "\nper tag (means of 0..1 scores):");
            for (tag, means) in &self.summary.tags {
                let graded: Vec<String> = means
                    .iter()
                    .filter(|(k, _)| !MEASURES.contains(&k.as_str()))
                    .map(|(k, v)| format!("{k} {}", num(*v)))
                    .collect();
                let _ = writeln!(out, "  {tag}: {}", graded.join(", "));
            }
        }
        if !self.summary.worst.is_empty() {
            let _ = writeln!(out, "\nworst cases:");
            for w in &self.summary.worst {
                let _ = writeln!(
                    out,
                    "  {} (mean {}): {} {}",
                    w.id,
                    num(w.mean),
                    w.metric,
                    num(w.value)
                );
            }
        }
        let s = &self.settings;
        let _ = writeln!(
            out,
            "\n{} cases ({} could not run) in {:.1} s; agent {} on {}/{}, temperature {}, seed {}{}",
            self.cases.len(),
            self.summary.errors,
            self.duration_seconds,
            s.agent,
            s.provider,
            s.model,
            s.temperature
                .map_or("provider default".to_owned(), |t| t.to_string()),
            s.seed.map_or("none".to_owned(), |t| t.to_string()),
            s.judge
                .as_ref()
                .map(|j| format!("; judge {j}"))
                .unwrap_or_default()
        );
        out
    }
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.fract() == 0.0 && v.abs() < 1e9 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// A statistic a [`Threshold`] bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stat {
    /// The mean (the default).
    Mean,
    /// The least.
    Min,
    /// The greatest.
    Max,
    /// The median.
    P50,
    /// The 90th percentile.
    P90,
    /// The 99th percentile.
    P99,
    /// The standard deviation.
    Stdev,
}

/// A bound a report must meet: `metric[.stat]>=value` or `metric[.stat]<=value`, e.g.
/// `tool_call_accuracy>=0.8`, `latency_seconds.p90<=30`, `errors<=0`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Threshold {
    /// The metric (or `errors`, the cases that could not run).
    pub metric: String,
    /// The statistic.
    pub stat: Stat,
    /// `true` for `>=`, `false` for `<=`.
    pub at_least: bool,
    /// The bound.
    pub value: f64,
}

impl Threshold {
    fn met_by(&self, v: f64) -> bool {
        if self.at_least {
            v >= self.value
        } else {
            v <= self.value
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stat = match self.stat {
            Stat::Mean => "",
            Stat::Min => ".min",
            Stat::Max => ".max",
            Stat::P50 => ".p50",
            Stat::P90 => ".p90",
            Stat::P99 => ".p99",
            Stat::Stdev => ".sd",
        };
        let op = if self.at_least { ">=" } else { "<=" };
        write!(f, "{}{stat}{op}{}", self.metric, self.value)
    }
}

impl FromStr for Threshold {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (lhs, rhs, at_least) = if let Some((l, r)) = s.split_once(">=") {
            (l, r, true)
        } else if let Some((l, r)) = s.split_once("<=") {
            (l, r, false)
        } else {
            return Err(format!("`{s}`: expected metric>=value or metric<=value"));
        };
        let value: f64 = rhs
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: `{}` is not a number", rhs.trim()))?;
        if !value.is_finite() {
            return Err(format!("`{s}`: the bound must be finite"));
        }
        let (metric, stat) = match lhs.trim().split_once('.') {
            None => (lhs.trim(), Stat::Mean),
            Some((m, stat)) => (
                m,
                match stat {
                    "mean" => Stat::Mean,
                    "min" => Stat::Min,
                    "max" => Stat::Max,
                    "p50" => Stat::P50,
                    "p90" => Stat::P90,
                    "p99" => Stat::P99,
                    "sd" => Stat::Stdev,
                    other => {
                        return Err(format!(
                            "`{s}`: unknown statistic `{other}` (mean, min, max, p50, p90, p99, sd)"
                        ));
                    }
                },
            ),
        };
        if metric.is_empty() {
            return Err(format!("`{s}`: no metric"));
        }
        Ok(Self {
            metric: metric.to_owned(),
            stat,
            at_least,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(id: &str, tags: &[&str], scores: &[(&str, Option<f64>)]) -> CaseReport {
        CaseReport {
            id: id.into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            session_id: format!("s-{id}"),
            trace_id: None,
            span_id: None,
            response: String::new(),
            tool_calls: Vec::new(),
            stop_reason: "end_turn".into(),
            error: None,
            metrics: scores
                .iter()
                .map(|(m, v)| match v {
                    Some(v) => MetricResult::scored(*m, *v, String::new()),
                    None => MetricResult::unscored(*m, "garbage".into()),
                })
                .collect(),
        }
    }

    #[test]
    fn summary_and_thresholds() {
        let cases = vec![
            case(
                "a",
                &["weather"],
                &[
                    ("tool_call_f1", Some(1.0)),
                    ("faithfulness", None),
                    ("latency_seconds", Some(2.0)),
                ],
            ),
            case(
                "b",
                &["weather", "flights"],
                &[
                    ("tool_call_f1", Some(0.5)),
                    ("faithfulness", Some(1.0)),
                    ("latency_seconds", Some(4.0)),
                ],
            ),
            case(
                "c",
                &["flights"],
                &[
                    ("tool_call_f1", Some(0.0)),
                    ("faithfulness", Some(0.5)),
                    ("latency_seconds", Some(9.0)),
                ],
            ),
        ];
        let report = Report::new(RunSettings::default(), 0, 1.0, cases);
        let f1 = &report.summary.metrics["tool_call_f1"];
        assert_eq!(
            (f1.count, f1.mean, f1.min, f1.max, f1.p50),
            (3, 0.5, 0.0, 1.0, 0.5)
        );
        assert!((f1.stdev - (1.0f64 / 6.0).sqrt()).abs() < 1e-12);
        let faith = &report.summary.metrics["faithfulness"];
        assert_eq!((faith.count, faith.unscored, faith.mean), (2, 1, 0.75));
        assert_eq!(report.summary.metrics["latency_seconds"].p90, 9.0);
        assert_eq!(report.summary.tags["flights"]["tool_call_f1"], 0.25);
        // Worst: c (mean of 0 and 0.5), then b; a's only grade is 1.0, so it is not listed.
        let worst: Vec<&str> = report.summary.worst.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(worst, ["c", "b"]);
        assert_eq!(report.summary.worst[0].metric, "tool_call_f1");

        let t = |s: &str| s.parse::<Threshold>().expect("threshold");
        assert!(
            report
                .check(&[
                    t("tool_call_f1>=0.5"),
                    t("latency_seconds.p90<=9"),
                    t("errors<=0")
                ])
                .is_empty()
        );
        let failed = report.check(&[t("tool_call_f1>=0.6"), t("tool_call_fl>=0.1")]);
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert!(failed[0].contains("it is 0.5000"), "{failed:?}");
        assert!(failed[1].contains("has no scores"), "{failed:?}");
        assert!("f1=0.5".parse::<Threshold>().is_err());
        assert!("f1.p42>=0.5".parse::<Threshold>().is_err());
        assert!("f1>=NaN".parse::<Threshold>().is_err());
        // A case that could not run fails any gate that does not allow it.
        let mut broken = case("d", &[], &[]);
        broken.error = Some("the model is down".into());
        let with_error = Report::new(
            RunSettings::default(),
            0,
            1.0,
            vec![report.cases[0].clone(), broken],
        );
        let failed = with_error.check(&[t("tool_call_f1>=0.5")]);
        assert!(
            failed.len() == 1 && failed[0].contains("1 of 2 cases could not run"),
            "{failed:?}"
        );
        assert!(
            with_error
                .check(&[t("tool_call_f1>=0.5"), t("errors<=1")])
                .is_empty()
        );
        assert!(with_error.check(&[]).is_empty(), "no thresholds, no gate");
        let table = report.table();
        assert!(
            table.contains("tool_call_f1") && table.contains("worst cases:"),
            "{table}"
        );
        // The JSON report reads back.
        let json = serde_json::to_string(&report).expect("json");
        let back: Report = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back.cases, report.cases);
    }
}
