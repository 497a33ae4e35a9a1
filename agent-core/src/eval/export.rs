//! Scores out: OpenTelemetry `gen_ai.evaluation.result` events on the evaluated run's
//! `invoke_agent` span, and Langfuse scores linked to that span.
//!
//! Langfuse's OTLP endpoint ingests spans but drops span events (its ingestion keeps only
//! the GenAI input/output events), and makes no score out of anything in a trace; a score
//! linked to a trace is made through its score API, `POST /api/public/scores`, naming the
//! trace and observation by the OTLP trace and span ids (which Langfuse uses as they are).
//! [`LangfuseScores`] does that, so the scores appear beside the trace the OTLP export sent.

use std::time::Duration;

use opentelemetry::KeyValue;
use serde_json::{Value, json};

use super::report::{CaseReport, MetricResult, Outcome};
use crate::telemetry::HeldTrace;

/// The event name of the GenAI conventions.
pub const EVALUATION_EVENT: &str = "gen_ai.evaluation.result";

/// The attributes of one score as the GenAI conventions name them: `gen_ai.evaluation.name`,
/// `gen_ai.evaluation.score.value`, `gen_ai.evaluation.score.label` (`pass`/`fail` for 0/1
/// metrics), `gen_ai.evaluation.explanation`; an unscored metric has no value and
/// `error.type` `unscored`, its reason as the explanation.
pub fn evaluation_attributes(result: &MetricResult) -> Vec<KeyValue> {
    let mut attributes = vec![KeyValue::new(
        "gen_ai.evaluation.name",
        result.metric.clone(),
    )];
    match &result.outcome {
        Outcome::Value(v) => {
            attributes.push(KeyValue::new("gen_ai.evaluation.score.value", *v));
            if binary(&result.metric) {
                let label = if *v >= 1.0 { "pass" } else { "fail" };
                attributes.push(KeyValue::new("gen_ai.evaluation.score.label", label));
            }
            if let Some(e) = &result.explanation {
                attributes.push(KeyValue::new("gen_ai.evaluation.explanation", clip(e)));
            }
        }
        Outcome::Unscored(reason) => {
            attributes.push(KeyValue::new("error.type", "unscored"));
            attributes.push(KeyValue::new("gen_ai.evaluation.explanation", clip(reason)));
        }
    }
    attributes
}

/// Metrics whose scores are 0 or 1.
fn binary(metric: &str) -> bool {
    matches!(
        metric,
        "agent_goal_accuracy_with_reference"
            | "agent_goal_accuracy_without_reference"
            | "exact_match"
            | "string_present"
            | "expectations_met"
    )
}

/// The longest explanation recorded on a span or sent as a comment.
const MAX_EXPLANATION: usize = 4000;

fn clip(s: &str) -> String {
    if s.len() <= MAX_EXPLANATION {
        return s.to_owned();
    }
    let mut end = MAX_EXPLANATION;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Records every score as an event on the run's span.
pub(crate) fn record_on_span(trace: &HeldTrace, results: &[MetricResult]) {
    for r in results {
        trace.add_event(EVALUATION_EVENT, evaluation_attributes(r));
    }
}

/// The bodies of Langfuse's `POST /api/public/scores` for a case's scores: numeric scores on
/// the case's trace and `invoke_agent` observation, with the explanation as the comment and a
/// stable id (a UUID of trace, span and metric), so sending them twice updates rather than
/// duplicates. Unscored metrics and cases without a trace give none.
pub fn langfuse_score_bodies(case: &CaseReport) -> Vec<Value> {
    let (Some(trace), Some(span)) = (&case.trace_id, &case.span_id) else {
        return Vec::new();
    };
    case.metrics
        .iter()
        .filter_map(|m| {
            let value = m.value()?;
            let id = uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_OID,
                format!("{trace}:{span}:{}", m.metric).as_bytes(),
            );
            let mut body = json!({
                "id": id.to_string(),
                "traceId": trace,
                "observationId": span,
                "name": m.metric,
                "value": value,
                "dataType": "NUMERIC",
                "metadata": {"case": case.id, "session": case.session_id},
            });
            if let Some(e) = &m.explanation {
                body["comment"] = Value::String(clip(e));
            }
            Some(body)
        })
        .collect()
}

/// Why scores could not be sent to Langfuse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A setting is missing or wrong.
    #[error("Langfuse is not configured: {0}")]
    Config(String),
    /// The request failed or was refused.
    #[error("Langfuse refused or did not take a score: {0}")]
    Send(String),
}

/// Sends scores to Langfuse's score API.
#[derive(Clone)]
pub struct LangfuseScores {
    client: reqwest::Client,
    url: String,
    public_key: String,
    secret_key: String,
}

impl std::fmt::Debug for LangfuseScores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LangfuseScores")
            .field("url", &self.url)
            .field("public_key", &self.public_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl LangfuseScores {
    /// Scores for the Langfuse at `host` (`https://cloud.langfuse.com`, say), with a project's
    /// key pair. Each request is bounded by 10 s and follows no redirect.
    pub fn new(
        host: &str,
        public_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Result<Self, ExportError> {
        let host = host.trim_end_matches('/');
        if !(host.starts_with("http://") || host.starts_with("https://")) {
            return Err(ExportError::Config(format!(
                "`{host}` is not an http(s) URL"
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ExportError::Config(e.to_string()))?;
        Ok(Self {
            client,
            url: format!("{host}/api/public/scores"),
            public_key: public_key.into(),
            secret_key: secret_key.into(),
        })
    }

    /// From `LANGFUSE_HOST` (or `LANGFUSE_BASE_URL`), `LANGFUSE_PUBLIC_KEY` and
    /// `LANGFUSE_SECRET_KEY`; `Ok(None)` when no host is set.
    pub fn from_env() -> Result<Option<Self>, ExportError> {
        let Some(host) = std::env::var("LANGFUSE_HOST")
            .or_else(|_| std::env::var("LANGFUSE_BASE_URL"))
            .ok()
        else {
            return Ok(None);
        };
        let key = |name: &str| {
            std::env::var(name).map_err(|_| ExportError::Config(format!("{name} is not set")))
        };
        Self::new(
            &host,
            key("LANGFUSE_PUBLIC_KEY")?,
            key("LANGFUSE_SECRET_KEY")?,
        )
        .map(Some)
    }

    /// Sends a case's scores; returns how many were taken.
    pub async fn send(&self, case: &CaseReport) -> Result<usize, ExportError> {
        let bodies = langfuse_score_bodies(case);
        for body in &bodies {
            let response = self
                .client
                .post(&self.url)
                .basic_auth(&self.public_key, Some(&self.secret_key))
                .json(body)
                .send()
                .await
                .map_err(|e| ExportError::Send(e.to_string()))?;
            let status = response.status();
            if !status.is_success() {
                // The first chunk of the body at most: an error page can be any size.
                let mut response = response;
                let chunk = response.chunk().await.ok().flatten().unwrap_or_default();
                let text: String = String::from_utf8_lossy(&chunk).chars().take(300).collect();
                return Err(ExportError::Send(format!("{status}: {text}")));
            }
        }
        Ok(bodies.len())
    }
}
