//! Runs a batch of tool calls: concurrently up to a limit, results in request order, input
//! validated against the schema first, each call under a timeout, and every failure (unknown
//! tool, unparseable or invalid input, error, panic, timeout, cancellation) turned into an
//! error tool result the model can read.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{AgentState, ProgressReporter, ToolContext, ToolRegistry};
use crate::message::{ToolResult, ToolUse};
use crate::telemetry::Telemetry;
use opentelemetry::context::FutureExt as _;

/// Text of the result given to a call cut short by cancellation.
pub const CANCELLED_TEXT: &str = "Tool execution cancelled";

/// How tool batches run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExecutorConfig {
    /// How many calls of one batch run at once (at least 1).
    pub max_concurrency: usize,
    /// Default bound on one call; a tool may set its own ([`super::Tool::timeout`]).
    pub timeout: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            max_concurrency: 8,
            timeout: Duration::from_secs(60),
        }
    }
}

impl ExecutorConfig {
    /// Sets how many calls of one batch run at once (at least 1).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// Sets the default bound on one call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Who the calls run for, and the trace they belong to.
#[derive(Debug, Clone)]
pub(crate) struct CallScope {
    /// The session id.
    pub(crate) session_id: Arc<str>,
    /// The actor id.
    pub(crate) actor_id: Option<Arc<str>>,
    /// The session's state.
    pub(crate) state: AgentState,
    /// Telemetry and the parent span context of `execute_tool` spans.
    pub(crate) trace: Option<(Telemetry, opentelemetry::Context)>,
    /// Where the tools' progress reports go (its tool use id is replaced per call).
    pub(crate) progress: ProgressReporter,
    /// The answers of a resumed run, and the questions the calls raise.
    pub(crate) interrupts: crate::interrupt::Interrupts,
}

impl CallScope {
    /// A scope without tracing.
    #[cfg(test)]
    pub(crate) fn new(
        session_id: impl Into<Arc<str>>,
        actor_id: Option<Arc<str>>,
        state: AgentState,
    ) -> Self {
        Self {
            session_id: session_id.into(),
            actor_id,
            state,
            trace: None,
            progress: ProgressReporter::default(),
            interrupts: crate::interrupt::Interrupts::default(),
        }
    }
}

/// The results of a batch.
#[derive(Debug)]
#[cfg(test)]
pub(crate) struct BatchOutcome {
    /// One result per tool use, in request order.
    pub results: Vec<ToolResult>,
    /// Whether cancellation cut the batch short.
    pub cancelled: bool,
}

/// Runs `uses` and returns their results in request order. `on_result` sees each result as soon
/// as it is done.
#[cfg(test)]
pub(crate) async fn execute_batch(
    registry: &ToolRegistry,
    config: &ExecutorConfig,
    uses: &[&ToolUse],
    scope: &CallScope,
    cancel: &CancellationToken,
    mut on_result: impl FnMut(&ToolResult),
) -> BatchOutcome {
    let mut stream = std::pin::pin!(execute_stream(registry, config, uses, scope, cancel));
    let mut slots: Vec<Option<ToolResult>> = vec![None; uses.len()];
    let mut cancelled = false;
    while let Some((index, result, was_cancelled)) = stream.next().await {
        cancelled |= was_cancelled;
        on_result(&result);
        if let Some(slot) = slots.get_mut(index) {
            *slot = Some(result);
        }
    }
    BatchOutcome {
        results: slots.into_iter().flatten().collect(),
        cancelled,
    }
}

/// Runs `uses`, at most `config.max_concurrency` at once, and yields `(index, result,
/// cancelled)` as each completes (`index` is the use's position in `uses`). A slot is free as
/// soon as its call ends: a slow call never keeps finished ones from making room.
pub(crate) fn execute_stream<'a>(
    registry: &'a ToolRegistry,
    config: &'a ExecutorConfig,
    uses: &'a [&'a ToolUse],
    scope: &'a CallScope,
    cancel: &'a CancellationToken,
) -> impl futures::Stream<Item = (usize, ToolResult, bool)> + Send + 'a {
    let calls = uses.iter().enumerate().map(move |(i, u)| {
        run_one(registry, config, u, scope, cancel).map(move |(r, cancelled)| (i, r, cancelled))
    });
    futures::stream::iter(calls).buffer_unordered(config.max_concurrency.max(1))
}

async fn run_one(
    registry: &ToolRegistry,
    config: &ExecutorConfig,
    tool_use: &ToolUse,
    scope: &CallScope,
    cancel: &CancellationToken,
) -> (ToolResult, bool) {
    let span = scope.trace.as_ref().and_then(|(telemetry, parent)| {
        let description = registry
            .spec(&tool_use.name)
            .map(|s| s.description.as_str());
        telemetry.start_tool(parent, tool_use, description)
    });
    let Some(span) = span else {
        return run_call(registry, config, tool_use, scope, cancel).await;
    };
    let out = run_call(registry, config, tool_use, scope, cancel)
        .with_context(span.cx.clone())
        .await;
    span.end(&out.0);
    out
}

async fn run_call(
    registry: &ToolRegistry,
    config: &ExecutorConfig,
    tool_use: &ToolUse,
    scope: &CallScope,
    cancel: &CancellationToken,
) -> (ToolResult, bool) {
    let id = &tool_use.tool_use_id;
    let name = &tool_use.name;
    if cancel.is_cancelled() {
        return (ToolResult::error(id, CANCELLED_TEXT), true);
    }
    let Some(entry) = registry.entry(name) else {
        let available: Vec<&str> = registry.specs().iter().map(|s| s.name.as_str()).collect();
        return (
            ToolResult::error(
                id,
                format!(
                    "Error: unknown tool `{name}`. Available tools: {}.",
                    available.join(", ")
                ),
            ),
            false,
        );
    };
    let input = match &tool_use.input {
        Value::Object(_) => tool_use.input.clone(),
        Value::String(raw) => {
            let shown: String = raw.chars().take(200).collect();
            return (
                ToolResult::error(
                    id,
                    format!(
                        "Error: the arguments for tool `{name}` are not valid JSON: {shown}. Call it again with a JSON object that matches its input schema."
                    ),
                ),
                false,
            );
        }
        other => {
            return (
                ToolResult::error(
                    id,
                    format!(
                        "Error: the arguments for tool `{name}` must be a JSON object, got {other}."
                    ),
                ),
                false,
            );
        }
    };
    let problems: Vec<String> = entry
        .validator
        .iter_errors(&input)
        .take(5)
        .map(|e| {
            let path = e.instance_path().to_string();
            if path.is_empty() {
                e.to_string()
            } else {
                format!("at `{path}`: {e}")
            }
        })
        .collect();
    if !problems.is_empty() {
        return (
            ToolResult::error(
                id,
                format!(
                    "Error: invalid input for tool `{name}`: {}",
                    problems.join("; ")
                ),
            ),
            false,
        );
    }
    let timeout = entry.tool.timeout().unwrap_or(config.timeout);
    let call_cancel = cancel.child_token();
    let ctx = ToolContext {
        tool_use_id: id.clone(),
        session_id: scope.session_id.clone(),
        actor_id: scope.actor_id.clone(),
        state: scope.state.clone(),
        cancel: call_cancel.clone(),
        progress: ProgressReporter {
            sink: scope.progress.sink.clone(),
            tool_use_id: id.clone(),
        },
        interrupts: scope.interrupts.clone(),
    };
    let call = AssertUnwindSafe(entry.tool.call(input, ctx)).catch_unwind();
    let outcome = tokio::select! {
        biased;
        () = cancel.cancelled() => {
            return (ToolResult::error(id, CANCELLED_TEXT), true);
        }
        r = tokio::time::timeout(timeout, call) => r,
    };
    let result = match outcome {
        Err(_) => {
            call_cancel.cancel();
            ToolResult::error(
                id,
                format!(
                    "Error: tool `{name}` timed out after {} ms.",
                    timeout.as_millis()
                ),
            )
        }
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(tool = %name, panic = %what, "tool panicked");
            ToolResult::error(
                id,
                format!("Error: tool `{name}` failed unexpectedly: {what}"),
            )
        }
        Ok(Ok(Err(e))) => ToolResult::error(id, format!("Error: {e}")),
        Ok(Ok(Ok(out))) => ToolResult {
            tool_use_id: id.clone(),
            status: out.status,
            content: out.content,
        },
    };
    (result, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ToolResultStatus;
    use crate::tool::{FnTool, ToolError, ToolOutput};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn scope() -> CallScope {
        CallScope::new("s", None, AgentState::default())
    }

    fn use_(id: &str, name: &str, input: Value) -> ToolUse {
        ToolUse {
            tool_use_id: id.into(),
            name: name.into(),
            input,
        }
    }

    fn registry() -> (ToolRegistry, Arc<AtomicUsize>) {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut r = ToolRegistry::new();
        let (run2, peak2) = (running.clone(), peak.clone());
        r.register(Arc::new(FnTool::new(
            "sleep",
            "sleeps",
            json!({"type": "object", "properties": {"ms": {"type": "integer"}}, "required": ["ms"]}),
            move |input, _| {
                let (running, peak) = (run2.clone(), peak2.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(input["ms"].as_u64().unwrap_or(0))).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(ToolOutput::text(format!("slept {}", input["ms"])))
                }
            },
        )))
        .expect("register");
        r.register(Arc::new(FnTool::new(
            "fail",
            "fails",
            json!({"type": "object"}),
            |_, _| async { Err(ToolError::new("no such city")) },
        )))
        .expect("register");
        r.register(Arc::new(FnTool::new(
            "boom",
            "panics",
            json!({"type": "object"}),
            |_, _| async {
                if true {
                    panic!("kaboom");
                }
                Ok(ToolOutput::text("unreachable"))
            },
        )))
        .expect("register");
        (r, peak)
    }

    #[tokio::test(start_paused = true)]
    async fn runs_concurrently_up_to_the_limit_and_keeps_request_order() {
        let (r, peak) = registry();
        let uses = [
            use_("1", "sleep", json!({"ms": 300})),
            use_("2", "sleep", json!({"ms": 100})),
            use_("3", "sleep", json!({"ms": 200})),
            use_("4", "sleep", json!({"ms": 10})),
        ];
        let refs: Vec<&ToolUse> = uses.iter().collect();
        let config = ExecutorConfig {
            max_concurrency: 2,
            timeout: Duration::from_secs(5),
        };
        let mut seen = Vec::new();
        let out = execute_batch(
            &r,
            &config,
            &refs,
            &scope(),
            &CancellationToken::new(),
            |res| seen.push(res.tool_use_id.clone()),
        )
        .await;
        let ids: Vec<_> = out.results.iter().map(|r| r.tool_use_id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3", "4"]);
        // The callback sees each result as it completes: the 100 ms call first, and the last
        // call (started when a slot freed at 300 ms) last.
        assert_eq!(seen.len(), 4);
        assert_eq!((seen[0].as_str(), seen[3].as_str()), ("2", "4"));
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(out.results[1].text(), "slept 100");
    }

    #[tokio::test(start_paused = true)]
    async fn every_failure_becomes_an_error_result() {
        let (r, _) = registry();
        let uses = [
            use_("a", "nope", json!({})),
            use_("b", "sleep", json!({"ms": "x"})),
            use_("c", "sleep", json!("{\"ms\": 1")),
            use_("d", "fail", json!({})),
            use_("e", "boom", json!({})),
            use_("f", "sleep", json!({"ms": 10_000})),
        ];
        let refs: Vec<&ToolUse> = uses.iter().collect();
        let config = ExecutorConfig {
            max_concurrency: 8,
            timeout: Duration::from_millis(500),
        };
        let out = execute_batch(
            &r,
            &config,
            &refs,
            &scope(),
            &CancellationToken::new(),
            |_| {},
        )
        .await;
        assert!(
            out.results
                .iter()
                .all(|r| r.status == ToolResultStatus::Error)
        );
        let texts: Vec<String> = out.results.iter().map(|r| r.text()).collect();
        assert!(
            texts[0].contains("unknown tool `nope`") && texts[0].contains("sleep"),
            "{}",
            texts[0]
        );
        assert!(texts[1].contains("at `/ms`"), "{}", texts[1]);
        assert!(texts[2].contains("not valid JSON"), "{}", texts[2]);
        assert_eq!(texts[3], "Error: no such city");
        assert!(texts[4].contains("kaboom"), "{}", texts[4]);
        assert!(texts[5].contains("timed out after 500 ms"), "{}", texts[5]);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_running_calls() {
        let (r, _) = registry();
        let uses = [use_("1", "sleep", json!({"ms": 60_000}))];
        let refs: Vec<&ToolUse> = uses.iter().collect();
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c2.cancel();
        });
        let started = tokio::time::Instant::now();
        let out = execute_batch(
            &r,
            &ExecutorConfig::default(),
            &refs,
            &scope(),
            &cancel,
            |_| {},
        )
        .await;
        assert!(out.cancelled);
        assert_eq!(out.results[0].text(), CANCELLED_TEXT);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
