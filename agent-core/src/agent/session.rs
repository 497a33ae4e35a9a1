//! [`Session`]: the handle that runs invocations of one session, and [`AgentStream`], the
//! events of a streamed one.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Agent, AgentResult, OutputSchema, Prompt, run};
use crate::error::AgentError;
use crate::event::AgentEvent;
use crate::message::Message;
use crate::session::SessionKey;

/// How long a run's task waits for room in the stream's channel for its last event.
const FINAL_EVENT_BOUND: std::time::Duration = std::time::Duration::from_secs(60);

/// A handle on one session of an agent.
#[derive(Debug, Clone)]
pub struct Session {
    agent: Agent,
    session_id: String,
    actor_id: Option<String>,
    cancel: Option<CancellationToken>,
    idempotency_key: Option<String>,
    trace_parent: Option<opentelemetry::Context>,
    request_id: Option<String>,
    structured: Option<OutputSchema>,
}

impl Session {
    pub(super) fn new(agent: Agent, session_id: String) -> Self {
        Self {
            agent,
            session_id,
            actor_id: None,
            cancel: None,
            idempotency_key: None,
            trace_parent: None,
            request_id: None,
            structured: None,
        }
    }

    /// The trace context the run's `invoke_agent` span is a child of (a service passes the one
    /// of the incoming request's `traceparent`). Default: the caller's current context, taken
    /// when the invocation starts.
    pub fn trace_parent(mut self, cx: opentelemetry::Context) -> Self {
        self.trace_parent = Some(cx);
        self
    }

    /// The request this invocation serves (a service's request id): the library's log lines
    /// during the run carry it, in a `tracing` span `invocation` with `session_id`,
    /// `request_id`, and, when telemetry records, the `trace_id` and `span_id` of the run's
    /// `invoke_agent` span.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
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
            structured: self.structured.clone(),
            hold_trace: None,
        }
    }

    /// [`Session::stream`], handing the run's `invoke_agent` span to `hold` still open when the
    /// run ends (nothing is sent when telemetry is off).
    #[cfg_attr(not(feature = "eval"), allow(dead_code))]
    pub(crate) fn stream_holding_trace(
        &self,
        prompt: impl Into<Prompt>,
        hold: crate::telemetry::TraceHold,
    ) -> AgentStream {
        let mut invocation = self.invocation(run::Start::Prompt(prompt.into()));
        invocation.hold_trace = Some(hold);
        self.spawn_invocation(invocation)
    }

    /// Asks the next invocations for their answer in this structure too: once the model has
    /// answered, it is made to give the answer as a value of `schema`, checked, and found in
    /// [`AgentResult::structured_output`] (see [`OutputSchema`]). A streamed invocation streams
    /// the value's JSON as tool-input deltas of the output tool. The extra model calls count in
    /// the result's usage; they are not stored in the session.
    pub fn structured_output(mut self, schema: OutputSchema) -> Self {
        self.structured = Some(schema);
        self
    }

    /// Runs an invocation and returns its answer as a `T`, on every provider:
    ///
    /// ```no_run
    /// # async fn demo(agent: agent_core::Agent) -> Result<(), agent_core::AgentError> {
    /// /// A trip the user asked about.
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct Trip {
    ///     city: String,
    ///     nights: u32,
    /// }
    /// let trip: Trip = agent.session("alice").invoke_structured("Two nights in Lisbon?").await?;
    /// # let _ = trip; Ok(()) }
    /// ```
    ///
    /// A model that gives no valid `T` within the schema's attempts (default 3) ends it with
    /// [`AgentError::StructuredOutput`], which carries the last raw reply.
    pub async fn invoke_structured<T>(&self, prompt: impl Into<Prompt>) -> Result<T, AgentError>
    where
        T: serde::de::DeserializeOwned + schemars::JsonSchema,
    {
        let session = self.clone().structured_output(OutputSchema::of::<T>());
        session.invoke(prompt).await?.structured::<T>()
    }

    /// [`Session::invoke_structured`], streamed: the last event's result carries the value
    /// ([`AgentResult::structured`] reads it as a `T`).
    pub fn stream_structured<T: schemars::JsonSchema + serde::de::DeserializeOwned>(
        &self,
        prompt: impl Into<Prompt>,
    ) -> AgentStream {
        self.clone()
            .structured_output(OutputSchema::of::<T>())
            .stream(prompt)
    }

    /// Runs an invocation to its end, in a task of its own: dropping the returned future (a
    /// client that went away) cancels the run as a [`CancellationToken`] would, at a point where
    /// the session is valid, never in the middle of an append. Must be called within a Tokio
    /// runtime.
    pub async fn invoke(&self, prompt: impl Into<Prompt>) -> Result<AgentResult, AgentError> {
        self.run_to_end(run::Start::Prompt(prompt.into())).await
    }

    /// The session's messages as stored: its whole history, oldest first (the window a
    /// conversation manager shows the model may be shorter); `None` when the session does not
    /// exist.
    pub async fn messages(&self) -> Result<Option<Vec<Message>>, AgentError> {
        let key = SessionKey::new(&self.session_id, &self.agent.inner.id)?;
        Ok(self
            .agent
            .inner
            .store
            .load(&key)
            .await?
            .map(|stored| stored.messages))
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

    /// Resumes a run that stopped with [`StopReason::Interrupted`](super::StopReason::Interrupted),
    /// on any replica, with an answer to each of its questions
    /// ([`AgentResult::interrupts`](super::AgentResult::interrupts)): the interrupted tool calls
    /// run again and get their answers, the batch's other results are reused, and the loop
    /// goes on. Answers that do not match the waiting questions are
    /// [`AgentError::InterruptResponse`].
    pub async fn respond(
        &self,
        responses: impl IntoIterator<Item = crate::interrupt::InterruptResponse>,
    ) -> Result<AgentResult, AgentError> {
        self.run_to_end(run::Start::Respond(responses.into_iter().collect()))
            .await
    }

    /// [`Session::respond`], streamed as [`Session::stream`] streams.
    pub fn respond_stream(
        &self,
        responses: impl IntoIterator<Item = crate::interrupt::InterruptResponse>,
    ) -> AgentStream {
        self.spawn(run::Start::Respond(responses.into_iter().collect()))
    }

    /// [`Session::resume`], streamed as [`Session::stream`] streams.
    pub fn resume_stream(&self) -> AgentStream {
        self.spawn(run::Start::Resume)
    }

    async fn run_to_end(&self, start: run::Start) -> Result<AgentResult, AgentError> {
        let cancel = self.cancel.clone().unwrap_or_default().child_token();
        let _guard = cancel.clone().drop_guard();
        let task = tokio::spawn(self.task(self.invocation(start), cancel, None));
        match task.await {
            Ok(outcome) => outcome,
            // The task catches panics itself; a join error is a runtime shutting down.
            Err(e) => Err(AgentError::Panicked {
                message: e.to_string(),
            }),
        }
    }

    /// Runs an invocation in a task and streams its events; the last item is
    /// [`AgentEvent::Stop`] or an error. Dropping the stream cancels the run. Must be called
    /// within a Tokio runtime.
    pub fn stream(&self, prompt: impl Into<Prompt>) -> AgentStream {
        self.spawn(run::Start::Prompt(prompt.into()))
    }

    fn spawn(&self, start: run::Start) -> AgentStream {
        self.spawn_invocation(self.invocation(start))
    }

    fn spawn_invocation(&self, invocation: run::Invocation) -> AgentStream {
        let (tx, rx) = mpsc::channel(64);
        let cancel = self.cancel.clone().unwrap_or_default().child_token();
        let guard = cancel.clone().drop_guard();
        let run = self.task(invocation, cancel, Some(tx.clone()));
        tokio::spawn(async move {
            let last = run.await.map(AgentEvent::Stop);
            // The receiver may be gone (then nobody is waiting for the outcome), or held and
            // never read: the task does not wait for it past a bound.
            let _ = tokio::time::timeout(FINAL_EVENT_BOUND, tx.send(last)).await;
        });
        AgentStream { rx, _guard: guard }
    }

    /// The run as a `'static` future: in the trace context and `tracing` span of this
    /// invocation, with a panic (in a user's model, tool source or store, say) turned into a
    /// typed error.
    fn task(
        &self,
        invocation: run::Invocation,
        cancel: CancellationToken,
        tx: Option<run::Sender>,
    ) -> impl Future<Output = Result<AgentResult, AgentError>> + Send + 'static {
        use futures::FutureExt as _;
        use opentelemetry::trace::FutureExt as _;
        use tracing::Instrument as _;
        let agent = self.agent.clone();
        let session_id = self.session_id.clone();
        let actor_id = self.actor_id.clone();
        // The caller's trace context unless one was given, so the run's `invoke_agent` span is
        // its child, not a new root.
        let trace = self
            .trace_parent
            .clone()
            .unwrap_or_else(opentelemetry::Context::current);
        let span = tracing::info_span!(
            "invocation",
            session_id = %self.session_id,
            request_id = self.request_id.as_deref(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        async move {
            let run = run::run(
                &agent.inner,
                &session_id,
                actor_id.as_deref(),
                invocation,
                cancel,
                tx,
            )
            .with_context(trace);
            match std::panic::AssertUnwindSafe(run).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(panic) => Err(AgentError::Panicked {
                    message: panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".to_owned()),
                }),
            }
        }
        .instrument(span)
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
