//! Online scoring: a sample of live invocations scored in the background.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::dataset::Case;
use super::export::{LangfuseScores, record_on_span};
use super::judge::Judge;
use super::metrics::ArgComparison;
use super::report::CaseReport;
use super::runner::{Sample, score_deterministic, score_judged};
use crate::message::Message;
use crate::outcome::AgentResult;
use crate::telemetry::HeldTrace;

/// Scores a share of an agent's invocations after they answer
/// ([`AgentBuilder::online_evaluation`](crate::agent::AgentBuilder::online_evaluation)).
///
/// A sampled invocation is offered to a bounded queue and the caller gets its answer at once;
/// when the queue is full the invocation is not scored (and counted as dropped). One
/// background task scores the queue in order: the deterministic measures and the judged
/// metrics that need no reference (goal accuracy without reference, faithfulness, answer
/// relevancy), over the invocation's own messages (its prompt, tool calls and results, and
/// answer). Scores go on the invocation's `invoke_agent` span (held open until they are
/// recorded, then ended at the run's own end time: a job older than
/// [`OnlineEvaluator::bound`] when its turn comes is dropped unscored, and scoring one takes at
/// most that bound, so a span is open at most twice the bound), to Langfuse when configured,
/// and to the callback. The worker runs on the runtime of the first sampled invocation.
#[derive(Clone)]
pub struct OnlineEvaluator {
    inner: Arc<Inner>,
}

type OnScored = Arc<dyn Fn(&CaseReport) + Send + Sync>;

/// What the builder methods set; the queue is made from it.
#[derive(Clone)]
struct Settings {
    judge: Judge,
    sample_rate: f64,
    queue: usize,
    bound: Duration,
    on_scored: Option<OnScored>,
    langfuse: Option<LangfuseScores>,
}

struct Inner {
    settings: Settings,
    tx: mpsc::Sender<Job>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Job>>>,
    offered: AtomicU64,
    dropped: AtomicU64,
    scored: AtomicU64,
}

impl std::fmt::Debug for OnlineEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineEvaluator")
            .field("sample_rate", &self.inner.settings.sample_rate)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Counts of an [`OnlineEvaluator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OnlineStats {
    /// Invocations offered to the queue.
    pub offered: u64,
    /// Offered but not scored because the queue was full.
    pub dropped: u64,
    /// Scored.
    pub scored: u64,
}

pub(crate) struct Job {
    pub(crate) store: Arc<dyn crate::session::SessionStore>,
    pub(crate) key: crate::session::SessionKey,
    pub(crate) result: AgentResult,
    pub(crate) latency_seconds: f64,
    pub(crate) trace: Option<HeldTrace>,
    /// When it was offered (a job older than the bound is dropped unscored).
    pub(crate) offered: tokio::time::Instant,
}

/// Default settings.
const DEFAULT_QUEUE: usize = 64;
const DEFAULT_SAMPLE_RATE: f64 = 0.1;
const DEFAULT_BOUND: Duration = Duration::from_secs(300);

impl OnlineEvaluator {
    /// Scores 10% of invocations with `judge`, from a queue of 64.
    pub fn new(judge: Judge) -> Self {
        Self::build(Settings {
            judge,
            sample_rate: DEFAULT_SAMPLE_RATE,
            queue: DEFAULT_QUEUE,
            bound: DEFAULT_BOUND,
            on_scored: None,
            langfuse: None,
        })
    }

    fn build(settings: Settings) -> Self {
        let (tx, rx) = mpsc::channel(settings.queue);
        Self {
            inner: Arc::new(Inner {
                settings,
                tx,
                rx: std::sync::Mutex::new(Some(rx)),
                offered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                scored: AtomicU64::new(0),
            }),
        }
    }

    /// The same evaluator with one setting changed (a new queue; set up before first use).
    fn with(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.inner.settings.clone();
        change(&mut settings);
        Self::build(settings)
    }

    /// The share of invocations scored, 0 to 1.
    pub fn sample_rate(self, rate: f64) -> Self {
        self.with(|s| {
            s.sample_rate = if rate.is_nan() {
                0.0
            } else {
                rate.clamp(0.0, 1.0)
            }
        })
    }

    /// How many invocations may wait to be scored (at least 1).
    pub fn queue(self, n: usize) -> Self {
        self.with(|s| s.queue = n.max(1))
    }

    /// The longest one invocation's scoring may take; its span is ended then whatever the
    /// judge is doing.
    pub fn bound(self, bound: Duration) -> Self {
        self.with(|s| s.bound = bound.max(Duration::from_millis(1)))
    }

    /// Called with each scored invocation (its `id` is the session id).
    pub fn on_scored(self, f: impl Fn(&CaseReport) + Send + Sync + 'static) -> Self {
        self.with(|s| s.on_scored = Some(Arc::new(f)))
    }

    /// Also sends the scores to Langfuse.
    pub fn langfuse(self, scores: LangfuseScores) -> Self {
        self.with(|s| s.langfuse = Some(scores))
    }

    /// The counts so far.
    pub fn stats(&self) -> OnlineStats {
        OnlineStats {
            offered: self.inner.offered.load(Ordering::Relaxed),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
            scored: self.inner.scored.load(Ordering::Relaxed),
        }
    }

    /// Whether this invocation is to be scored.
    pub(crate) fn sampled(&self) -> bool {
        let rate = self.inner.settings.sample_rate;
        rate >= 1.0 || (rate > 0.0 && fastrand::f64() < rate)
    }

    /// Queues a job without waiting; a full queue drops it (its span then ends at once).
    pub(crate) fn offer(&self, job: Job) {
        self.inner.offered.fetch_add(1, Ordering::Relaxed);
        self.start_worker();
        if self.inner.tx.try_send(job).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts the background task on first use (the runtime of the first invocation).
    fn start_worker(&self) {
        let rx = match self.inner.rx.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(mut rx) = rx else { return };
        // Holds the shared state weakly: the task ends when the evaluator is dropped.
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            use futures::FutureExt as _;
            while let Some(job) = rx.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                let bound = inner.settings.bound;
                // A job that waited longer than the bound is not scored: its span ends now.
                if job.offered.elapsed() > bound {
                    inner.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // The job (and its span) is dropped at the bound whatever the judge does; a
                // panic (in the callback, say) loses that job, not the worker.
                let scoring = std::panic::AssertUnwindSafe(score(&inner, job)).catch_unwind();
                match tokio::time::timeout(bound, scoring).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        tracing::warn!(target: "agent_core::eval", "online scoring panicked; the invocation is not scored")
                    }
                    Err(_) => {
                        tracing::warn!(target: "agent_core::eval", ?bound, "online scoring took longer than its bound; the invocation is not scored")
                    }
                }
            }
        });
    }
}

async fn score(inner: &Inner, job: Job) {
    let session_id = job.key.session_id().to_owned();
    let messages = match job.store.load(&job.key).await {
        Ok(Some(stored)) => stored.messages,
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!(target: "agent_core::eval", session_id, error = %e, "online scoring could not read the session");
            return;
        }
    };
    if messages.is_empty() {
        return;
    }
    // This invocation only: from its prompt to its answer (the session may have gone on since).
    let end = job
        .result
        .message
        .as_ref()
        .and_then(|answer| messages.iter().rposition(|m| m == answer))
        .unwrap_or(messages.len().saturating_sub(1));
    let start = messages
        .get(..=end)
        .and_then(|before| before.iter().rposition(Message::is_prompt))
        .unwrap_or(0);
    let own: Vec<Message> = messages
        .get(start..=end)
        .map(<[Message]>::to_vec)
        .unwrap_or_default();
    let prompt = own.first().map(Message::text).unwrap_or_default();
    let mut sample = Sample::new(session_id.clone(), prompt.clone());
    for m in own {
        sample.add_message(m);
    }
    sample.response = job.result.text();
    sample.stop_reason = job.result.stop_reason.as_str().to_owned();
    sample.usage = job.result.usage;
    sample.turns = job.result.turns.len();
    sample.latency_seconds = job.latency_seconds;
    let case = Case::new(session_id.clone(), prompt);
    let mut metrics: Vec<_> = score_deterministic(&case, &sample, ArgComparison::Exact)
        .into_iter()
        .filter(|m| m.metric != "expectations_met")
        .collect();
    metrics.extend(score_judged(&inner.settings.judge, &case, &sample).await);
    let report = CaseReport {
        id: session_id.clone(),
        tags: vec!["online".into()],
        session_id,
        trace_id: job.trace.as_ref().map(HeldTrace::trace_id),
        span_id: job.trace.as_ref().map(HeldTrace::span_id),
        response: sample.response,
        tool_calls: sample.tool_calls,
        stop_reason: sample.stop_reason,
        error: None,
        metrics,
    };
    if let Some(trace) = &job.trace {
        record_on_span(trace, &report.metrics);
    }
    drop(job.trace);
    inner.scored.fetch_add(1, Ordering::Relaxed);
    if let Some(f) = &inner.settings.on_scored {
        f(&report);
    }
    if let Some(langfuse) = &inner.settings.langfuse
        && let Err(e) = langfuse.send(&report).await
    {
        tracing::warn!(target: "agent_core::eval", error = %e, "online scores not sent to Langfuse");
    }
}
