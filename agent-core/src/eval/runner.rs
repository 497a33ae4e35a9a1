//! Runs a dataset against an agent: each case in a fresh session, a bounded number at once,
//! scored as it finishes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;

use super::dataset::{Case, Dataset, ToolCall};
use super::judge::Judge;
use super::metrics::{self, ArgComparison};
use super::report::{CaseReport, MetricResult, Report, RunSettings};
use crate::CancellationToken;
use crate::agent::Agent;
use crate::event::AgentEvent;
use crate::message::{ContentBlock, Message, Role};
use crate::model::Usage;
use crate::outcome::StopReason;
use crate::session::SessionKey;

/// What one run did: Ragas' sample fields (`user_input`, `response`, `retrieved_contexts`, the
/// tool calls) and the measures.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Sample {
    /// The case.
    pub case_id: String,
    /// The prompt.
    pub prompt: String,
    /// The conversation: the case's history, the prompt, and every message the run added.
    pub messages: Vec<Message>,
    /// The final answer.
    pub response: String,
    /// The tool calls made, in order.
    pub tool_calls: Vec<ToolCall>,
    /// The tool results' text, in order: the contexts `faithfulness` checks the answer against.
    pub contexts: Vec<String>,
    /// How the run ended.
    pub stop_reason: String,
    /// Tokens used.
    pub usage: Usage,
    /// Model calls made.
    pub turns: usize,
    /// Wall time of the run.
    pub latency_seconds: f64,
}

impl Sample {
    /// An empty sample of `case_id` with `prompt`.
    pub fn new(case_id: impl Into<String>, prompt: impl Into<String>) -> Self {
        Self {
            case_id: case_id.into(),
            prompt: prompt.into(),
            ..Self::default()
        }
    }

    /// Reads a run's messages (as [`AgentEvent::MessageAdded`] gives them) into the sample.
    pub fn add_message(&mut self, message: Message) {
        for block in &message.content {
            match block {
                ContentBlock::ToolUse(u) if message.role == Role::Assistant => {
                    self.tool_calls
                        .push(ToolCall::new(u.name.clone(), u.input.clone()));
                }
                ContentBlock::ToolResult(r) => self.contexts.push(r.text()),
                _ => {}
            }
        }
        self.messages.push(message);
    }
}

/// The deterministic scores of a sample: the tool-call metrics when the case has reference
/// calls, `exact_match` and `string_present` when it has a reference answer, `facts_present`
/// when it lists facts, `expectations_met` (every check of the case: tools called, none when
/// none may be, the calls made, the facts, the absent strings) always, and the measures.
pub fn score_deterministic(
    case: &Case,
    sample: &Sample,
    comparison: ArgComparison,
) -> Vec<MetricResult> {
    let mut out = Vec::new();
    if let Some(reference) = case.reference_tool_calls() {
        out.push(MetricResult::scored(
            "tool_call_accuracy",
            metrics::tool_call_accuracy(&sample.tool_calls, reference, true, comparison),
            String::new(),
        ));
        out.push(MetricResult::scored(
            "tool_call_accuracy_any_order",
            metrics::tool_call_accuracy(&sample.tool_calls, reference, false, comparison),
            String::new(),
        ));
        out.push(MetricResult::scored(
            "tool_call_f1",
            metrics::tool_call_f1(&sample.tool_calls, reference),
            String::new(),
        ));
    }
    if let Some(reference) = &case.reference {
        out.push(MetricResult::scored(
            "exact_match",
            metrics::exact_match(reference, &sample.response),
            String::new(),
        ));
        out.push(MetricResult::scored(
            "string_present",
            metrics::string_present(reference, &sample.response),
            String::new(),
        ));
    }
    let answer = sample.response.to_lowercase();
    let missing: Vec<&str> = case
        .facts
        .iter()
        .filter(|f| !fact_found(f, &answer))
        .map(String::as_str)
        .collect();
    if !case.facts.is_empty() {
        out.push(MetricResult::scored(
            "facts_present",
            (case.facts.len() - missing.len()) as f64 / case.facts.len() as f64,
            missing
                .iter()
                .map(|m| format!("missing \"{m}\""))
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    let failures = expectation_failures(case, sample, &answer, &missing);
    out.push(MetricResult::scored(
        "expectations_met",
        f64::from(u8::from(failures.is_empty())),
        failures.join("; "),
    ));
    for (name, value) in [
        ("turns", sample.turns as f64),
        ("tool_calls", sample.tool_calls.len() as f64),
        ("input_tokens", sample.usage.input_tokens as f64),
        ("output_tokens", sample.usage.output_tokens as f64),
        ("latency_seconds", sample.latency_seconds),
    ] {
        out.push(MetricResult::scored(name, value, String::new()));
    }
    out
}

fn fact_found(fact: &str, answer_lowercase: &str) -> bool {
    fact.split('|')
        .map(|alt| alt.trim().to_lowercase())
        .any(|alt| !alt.is_empty() && answer_lowercase.contains(&alt))
}

fn expectation_failures(
    case: &Case,
    sample: &Sample,
    answer_lowercase: &str,
    missing_facts: &[&str],
) -> Vec<String> {
    let mut failures = Vec::new();
    if sample.response.trim().is_empty() {
        failures.push(format!("no answer (stopped: {})", sample.stop_reason));
    }
    for tool in &case.tools {
        if !sample.tool_calls.iter().any(|c| &c.name == tool) {
            failures.push(format!("`{tool}` was not called"));
        }
    }
    if case.no_tools && !sample.tool_calls.is_empty() {
        failures.push(format!(
            "no tool should be called, but {} were",
            sample.tool_calls.len()
        ));
    }
    for expected in &case.calls {
        let made = sample.tool_calls.iter().any(|c| {
            c.name == expected.name
                && expected.args.iter().all(|(k, want)| {
                    c.args.get(k).is_some_and(|got| {
                        metrics::args_equal(got, want, ArgComparison::Normalised)
                    })
                })
        });
        if !made {
            failures.push(format!(
                "no call `{}` with {}",
                expected.name,
                serde_json::Value::Object(expected.args.clone())
            ));
        }
    }
    for fact in missing_facts {
        failures.push(format!("the answer lacks \"{fact}\""));
    }
    for wrong in &case.absent {
        if answer_lowercase.contains(&wrong.to_lowercase()) {
            failures.push(format!("the answer contains \"{wrong}\""));
        }
    }
    failures
}

/// How long a case waits, after its run ended, for the run's span to be handed over.
const HELD_TRACE_GRACE: Duration = Duration::from_secs(10);

/// Called as each case finishes: its report, how many are done, how many there are.
pub type OnCase = Arc<dyn Fn(&CaseReport, usize, usize) + Send + Sync>;

/// An evaluation of an agent: which judge, how many cases at once, how long each may take.
///
/// ```no_run
/// # async fn example(agent: agent_core::Agent) -> Result<(), Box<dyn std::error::Error>> {
/// use agent_core::eval::{Dataset, Evaluation};
/// let dataset = Dataset::load("eval/cases.jsonl")?;
/// let report = Evaluation::new(agent).concurrency(2).run(&dataset, &Default::default()).await;
/// println!("{}", report.table());
/// let failed = report.check(&["tool_call_accuracy>=0.8".parse()?]);
/// assert!(failed.is_empty(), "{failed:?}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Evaluation {
    agent: Agent,
    judge: Option<Judge>,
    concurrency: usize,
    case_timeout: Duration,
    comparison: ArgComparison,
    on_case: Option<OnCase>,
}

impl std::fmt::Debug for Evaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluation")
            .field("agent", &self.agent.name())
            .field("judge", &self.judge)
            .field("concurrency", &self.concurrency)
            .field("case_timeout", &self.case_timeout)
            .field("comparison", &self.comparison)
            .finish_non_exhaustive()
    }
}

impl Evaluation {
    /// An evaluation of `agent`: deterministic metrics only, one case at a time, 5 minutes per
    /// case, arguments compared exactly (as Ragas does).
    pub fn new(agent: Agent) -> Self {
        Self {
            agent,
            judge: None,
            concurrency: 1,
            case_timeout: Duration::from_secs(300),
            comparison: ArgComparison::Exact,
            on_case: None,
        }
    }

    /// Adds the judged metrics, judged by `judge`.
    pub fn judge(mut self, judge: Judge) -> Self {
        self.judge = Some(judge);
        self
    }

    /// Runs up to `n` cases at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Bounds each case's run (the judging has its own bounds).
    pub fn case_timeout(mut self, timeout: Duration) -> Self {
        self.case_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How `tool_call_accuracy` compares argument values.
    pub fn arg_comparison(mut self, comparison: ArgComparison) -> Self {
        self.comparison = comparison;
        self
    }

    /// Calls `f` as each case finishes (a progress bar, say).
    pub fn on_case(
        mut self,
        f: impl Fn(&CaseReport, usize, usize) + Send + Sync + 'static,
    ) -> Self {
        self.on_case = Some(Arc::new(f));
        self
    }

    /// The settings recorded in reports.
    pub fn settings(&self) -> RunSettings {
        let d = &self.agent.inner.descriptor;
        RunSettings {
            agent: self.agent.name().to_owned(),
            provider: d.provider.clone(),
            model: d.model.clone(),
            temperature: d.temperature,
            seed: d.seed,
            judge: self.judge.as_ref().map(|j| {
                let d = j.descriptor();
                format!("{}/{}", d.provider, d.model)
            }),
            concurrency: self.concurrency,
        }
    }

    /// Runs every case of `dataset` and scores it. A case that cannot run (the model endpoint
    /// fails, its bound passes) is reported with its error and no scores; cancelling `cancel`
    /// ends the cases in flight the same way and starts no more.
    pub async fn run(&self, dataset: &Dataset, cancel: &CancellationToken) -> Report {
        let started = Instant::now();
        let started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let total = dataset.cases.len();
        let done = std::sync::atomic::AtomicUsize::new(0);
        // Futures of an `async fn` (not of a closure), so the whole run stays `Send`.
        let runs: Vec<_> = dataset
            .cases
            .iter()
            .enumerate()
            .map(|(i, case)| self.numbered_case(i, case, cancel, &done, total))
            .collect();
        let mut reports: Vec<(usize, CaseReport)> = futures::stream::iter(runs)
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        reports.sort_by_key(|(i, _)| *i);
        Report::new(
            self.settings(),
            started_at,
            started.elapsed().as_secs_f64(),
            reports.into_iter().map(|(_, r)| r).collect(),
        )
    }

    async fn numbered_case(
        &self,
        i: usize,
        case: &Case,
        cancel: &CancellationToken,
        done: &std::sync::atomic::AtomicUsize,
        total: usize,
    ) -> (usize, CaseReport) {
        let report = self.run_case(case, cancel).await;
        let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if let Some(f) = &self.on_case {
            f(&report, n, total);
        }
        (i, report)
    }

    /// Runs and scores one case in a fresh session.
    pub async fn run_case(&self, case: &Case, cancel: &CancellationToken) -> CaseReport {
        let session_id = format!("eval-{}-{:08x}", sanitise(&case.id), fastrand::u32(..));
        let mut report = CaseReport {
            id: case.id.clone(),
            tags: case.tags.clone(),
            session_id: session_id.clone(),
            trace_id: None,
            span_id: None,
            response: String::new(),
            tool_calls: Vec::new(),
            stop_reason: "error".into(),
            error: None,
            metrics: Vec::new(),
        };
        if cancel.is_cancelled() {
            report.error = Some("cancelled before it started".into());
            return report;
        }
        let (hold, held) = tokio::sync::oneshot::channel();
        let sample = match tokio::time::timeout(
            self.case_timeout,
            self.observe(case, &session_id, hold, cancel),
        )
        .await
        {
            Err(_) => Err(format!("the run took longer than {:?}", self.case_timeout)),
            Ok(outcome) => outcome,
        };
        // The span is ended (at the run's end time) when this is dropped, after the scores. A
        // finished or cancelled run hands it over as it ends; one that ignores cancellation is
        // not waited for past the grace.
        let held = tokio::time::timeout(HELD_TRACE_GRACE, held)
            .await
            .ok()
            .and_then(Result::ok);
        if let Some(h) = &held {
            report.trace_id = Some(h.trace_id());
            report.span_id = Some(h.span_id());
        }
        let sample = match sample {
            Ok(s) => s,
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        };
        report.response = sample.response.clone();
        report.tool_calls = sample.tool_calls.clone();
        report.stop_reason = sample.stop_reason.clone();
        report.metrics = score_deterministic(case, &sample, self.comparison);
        if let Some(judge) = &self.judge {
            tokio::select! {
                judged = score_judged(judge, case, &sample) => report.metrics.extend(judged),
                () = cancel.cancelled() => {
                    report.error = Some("cancelled while judging".into());
                    report.metrics.clear();
                    return report;
                }
            }
        }
        if let Some(h) = &held {
            super::export::record_on_span(h, &report.metrics);
        }
        report
    }

    async fn observe(
        &self,
        case: &Case,
        session_id: &str,
        hold: crate::telemetry::TraceHold,
        cancel: &CancellationToken,
    ) -> Result<Sample, String> {
        let mut sample = Sample::new(case.id.clone(), case.prompt.clone());
        let history = case.history_messages();
        if !history.is_empty() {
            let key = SessionKey::new(session_id, self.agent.id()).map_err(|e| e.to_string())?;
            self.agent
                .inner
                .store
                .append(&key, 0, &history)
                .await
                .map_err(|e| format!("cannot write the case's history: {e}"))?;
            sample.messages = history;
        }
        let started = Instant::now();
        let mut events = self
            .agent
            .session(session_id)
            .cancel_token(cancel.child_token())
            .stream_holding_trace(case.prompt.as_str(), hold);
        while let Some(event) = events.next().await {
            match event.map_err(|e| e.to_string())? {
                AgentEvent::MessageAdded { message } => sample.add_message(message),
                AgentEvent::Stop(result) if result.stop_reason == StopReason::Cancelled => {
                    return Err("cancelled".into());
                }
                AgentEvent::Stop(result) => {
                    sample.response = result.text();
                    sample.stop_reason = result.stop_reason.as_str().to_owned();
                    sample.usage = result.usage;
                    sample.turns = result.turns.len();
                }
                _ => {}
            }
        }
        sample.latency_seconds = started.elapsed().as_secs_f64();
        Ok(sample)
    }
}

/// The judged scores of a sample: goal accuracy with reference (when the case has a goal or
/// reference answer) and without, faithfulness (when tools returned something), answer
/// relevancy (when the judge has an embedder). A metric whose inputs the run lacks is not
/// applicable and left out.
pub async fn score_judged(judge: &Judge, case: &Case, sample: &Sample) -> Vec<MetricResult> {
    let mut out = Vec::new();
    if let Some(reference) = case.goal.as_deref().or(case.reference.as_deref()) {
        out.push(judge.goal_accuracy(sample, Some(reference)).await);
    }
    out.push(judge.goal_accuracy(sample, None).await);
    if !sample.response.trim().is_empty() && !sample.contexts.is_empty() {
        out.push(judge.faithfulness(sample).await);
    }
    if !sample.response.trim().is_empty() && judge.has_embedder() {
        out.push(judge.answer_relevancy(sample).await);
    }
    out
}

/// A case id as a session id part: letters, digits, `-` and `_` only.
fn sanitise(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}
