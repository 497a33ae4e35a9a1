//! [`Session`]: the handle that runs invocations of one session, and [`AgentStream`], the
//! events of a streamed one.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Agent, AgentResult, Prompt, run};
use crate::error::AgentError;
use crate::event::AgentEvent;

/// A handle on one session of an agent.
#[derive(Debug, Clone)]
pub struct Session {
    agent: Agent,
    session_id: String,
    actor_id: Option<String>,
    cancel: Option<CancellationToken>,
    idempotency_key: Option<String>,
}

impl Session {
    pub(super) fn new(agent: Agent, session_id: String) -> Self {
        Self {
            agent,
            session_id,
            actor_id: None,
            cancel: None,
            idempotency_key: None,
        }
    }

    /// The actor (end user) this session belongs to; tools see it in their context.
    pub fn actor(mut self, actor_id: impl Into<String>) -> Self {
        self.actor_id = Some(actor_id.into());
        self
    }

    /// A token that cancels the invocation: the model stream and running tools stop promptly
    /// and the run ends with [`StopReason::Cancelled`](super::StopReason::Cancelled).
    pub fn cancel_token(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Makes the next invocation idempotent under `key` (a client's retry token, an HTTP
    /// `Idempotency-Key`): the key is recorded with the session before the prompt is written,
    /// and a later invocation with the same key does not write the prompt again. If the first
    /// finished, it gets that outcome (its final message and stop reason; usage and turns are
    /// not kept); if it failed or its process died, it resumes the run where it stopped (see
    /// [`Session::resume`]). Only the session's latest keyed invocation is remembered.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    fn invocation(&self, start: run::Start) -> run::Invocation {
        run::Invocation {
            start,
            idempotency_key: self.idempotency_key.clone(),
        }
    }

    /// Runs an invocation to its end.
    pub async fn invoke(&self, prompt: impl Into<Prompt>) -> Result<AgentResult, AgentError> {
        self.run_to_end(run::Start::Prompt(prompt.into())).await
    }

    /// Continues the session's interrupted run, on any replica, without a new prompt: after a
    /// process died (or an invocation failed) between the prompt and the answer. Tool calls
    /// whose results were recorded are not run again; pending calls are run again or answered
    /// as interrupted as the agent's [`ResumePolicy`](super::ResumePolicy) says; then the loop goes on to an answer.
    /// A session whose last run ended gets that run's final message, with no model call;
    /// an empty session is [`AgentError::NothingToResume`].
    pub async fn resume(&self) -> Result<AgentResult, AgentError> {
        self.run_to_end(run::Start::Resume).await
    }

    /// [`Session::resume`], streamed as [`Session::stream`] streams.
    pub fn resume_stream(&self) -> AgentStream {
        self.spawn(run::Start::Resume)
    }

    async fn run_to_end(&self, start: run::Start) -> Result<AgentResult, AgentError> {
        let cancel = self.cancel.clone().unwrap_or_default();
        run::run(
            &self.agent.inner,
            &self.session_id,
            self.actor_id.as_deref(),
            self.invocation(start),
            cancel,
            None,
        )
        .await
    }

    /// Runs an invocation in a task and streams its events; the last item is
    /// [`AgentEvent::Stop`] or an error. Dropping the stream cancels the run. Must be called
    /// within a Tokio runtime.
    pub fn stream(&self, prompt: impl Into<Prompt>) -> AgentStream {
        self.spawn(run::Start::Prompt(prompt.into()))
    }

    fn spawn(&self, start: run::Start) -> AgentStream {
        let (tx, rx) = mpsc::channel(64);
        let cancel = self.cancel.clone().unwrap_or_default().child_token();
        let guard = cancel.clone().drop_guard();
        let agent = self.agent.clone();
        let session_id = self.session_id.clone();
        let actor_id = self.actor_id.clone();
        let invocation = self.invocation(start);
        // The caller's trace context, so the run's `invoke_agent` span is its child as with
        // `invoke`, not a new root.
        let trace = opentelemetry::Context::current();
        tokio::spawn(async move {
            use futures::FutureExt as _;
            use opentelemetry::trace::FutureExt as _;
            let run = run::run(
                &agent.inner,
                &session_id,
                actor_id.as_deref(),
                invocation,
                cancel,
                Some(tx.clone()),
            )
            .with_context(trace);
            // A panic (in a user's model, tool source or store, say) still ends the stream,
            // with a typed error instead of a stream that just stops.
            let outcome = match std::panic::AssertUnwindSafe(run).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(panic) => Err(AgentError::Panicked {
                    message: panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".to_owned()),
                }),
            };
            let last = outcome.map(AgentEvent::Stop);
            // The receiver may be gone; then nobody is waiting for the outcome.
            let _ = tx.send(last).await;
        });
        AgentStream { rx, _guard: guard }
    }
}

/// The events of a streamed invocation.
#[derive(Debug)]
pub struct AgentStream {
    rx: mpsc::Receiver<Result<AgentEvent, AgentError>>,
    _guard: DropGuard,
}

impl Stream for AgentStream {
    type Item = Result<AgentEvent, AgentError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
