//! Evaluations (feature `eval`): score an agent on a dataset with Ragas' agent metrics, in CI
//! and in production.
//!
//! - [`Dataset`]: JSON-lines cases (prompt, optional history, reference tool calls, reference
//!   answer or goal, facts, tags); errors name the line.
//! - Deterministic metrics, computed exactly as Ragas 0.4.3 computes them ([`metrics`]):
//!   `tool_call_accuracy` (in order) and `tool_call_accuracy_any_order`, with exact or
//!   normalised argument comparison; `tool_call_f1`; `exact_match`; `string_present`; and
//!   measures: `turns`, `tool_calls`, `input_tokens`, `output_tokens`, `latency_seconds`.
//! - Judged metrics, by any [`Model`](crate::model::Model) ([`Judge`]):
//!   `agent_goal_accuracy_with_reference`, `agent_goal_accuracy_without_reference`,
//!   `faithfulness` (the answer against the tool results), `answer_relevancy` (with an
//!   embedder). Each judgement is bounded, retried, and recorded with the judge's reasoning; a
//!   judge that answers garbage gives [`Outcome::Unscored`], never a guess.
//! - [`Evaluation`] runs a dataset: a fresh session per case, bounded concurrency, a callback
//!   per finished case; its [`Report`] has per-metric statistics, per-tag means, the worst
//!   cases, the model's temperature and seed, a text table and JSON, and is checked against
//!   [`Threshold`]s for an exit status.
//! - Export: each score is a `gen_ai.evaluation.result` event on the case's `invoke_agent`
//!   span (kept open for it, and ended at the run's own end time), and [`LangfuseScores`]
//!   sends the scores to Langfuse linked to that trace and span.
//! - [`OnlineEvaluator`]: scores a sample of live invocations in the background, from a
//!   bounded queue that drops when full; the answer never waits for it.

pub mod dataset;
pub mod export;
pub mod judge;
pub mod metrics;
pub mod online;
pub mod report;
pub mod runner;

pub use dataset::{Case, Dataset, DatasetError, HistoryRole, HistoryTurn, ToolCall};
pub use export::{
    EVALUATION_EVENT, ExportError, LangfuseScores, evaluation_attributes, langfuse_score_bodies,
};
pub use judge::Judge;
pub use metrics::ArgComparison;
pub use online::{OnlineEvaluator, OnlineStats};
pub use report::{
    CaseReport, MetricResult, Outcome, Report, RunSettings, Stat, Stats, Summary, Threshold,
};
pub use runner::{Evaluation, Sample, score_deterministic, score_judged};
