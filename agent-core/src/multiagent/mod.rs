//! Multi-agent orchestration: a deterministic [`Graph`] of agents and functions, and a
//! [`Swarm`] of agents that hand a task to each other. (An agent can also simply call another
//! as a tool: [`Agent::as_tool`](crate::Agent::as_tool).)
//!
//! Both keep their progress in a [`SessionStore`] under their
//! own id in the caller's session, written after every step with the store's conditional
//! writes, so a run whose process died is resumed on any replica from the last step
//! ([`Graph::resume`], [`Swarm::resume`]); an agent caught in the middle of its own run
//! resumes that run (each step's invocation has an idempotency key). Both stream one event
//! stream in which every agent event is named by the node or agent it comes from.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::{AgentError, Cause};
use crate::event::AgentEvent;
use crate::session::{InvalidId, SessionKey, SessionState, SessionStore, StateVersion, StoreError};

mod graph;
mod swarm;

pub use graph::{
    FnNode, Graph, GraphBuilder, GraphNode, GraphResult, GraphState, NodeInput, NodeResult,
};
pub use swarm::{HANDOFF_TOOL, Handoff, Swarm, SwarmBuilder, SwarmResult, SwarmState};

/// How an orchestration ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Status {
    /// Still running (or stopped by a crash: resume it).
    #[default]
    Running,
    /// Done: no node left to run, or the last agent answered without handing off.
    Completed,
    /// A node or agent failed; see the error. Resumable: the step that failed runs again.
    Failed,
    /// The bound on node executions or handoffs was reached.
    LimitReached,
    /// Cancelled; resumable.
    Cancelled,
}

impl Status {
    /// Whether `resume` continues a run in this state: one that did not finish (its process
    /// died while running, or it was cancelled, or a step failed).
    fn resumable(self) -> bool {
        matches!(self, Self::Running | Self::Cancelled | Self::Failed)
    }
}

/// An event of an orchestration's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum OrchestrationEvent {
    /// A node (or swarm agent) starts.
    NodeStart {
        /// The node or agent.
        node: String,
    },
    /// An event of the node's agent run.
    NodeEvent {
        /// The node or agent.
        node: String,
        /// The agent's event.
        event: Box<AgentEvent>,
    },
    /// A node (or swarm agent) finished with this output.
    NodeStop {
        /// The node or agent.
        node: String,
        /// Its output.
        output: String,
    },
    /// An agent of a swarm handed the task to another.
    Handoff {
        /// Who handed off.
        from: String,
        /// To whom.
        to: String,
        /// The message for the next agent.
        message: String,
    },
    /// The orchestration ended (always the last event of a stream that did not fail).
    Stop {
        /// How.
        status: Status,
    },
}

/// Why an orchestration could not be built or run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OrchestrationError {
    /// An edge, entry point or handoff names a node that does not exist.
    #[error("no node or agent named `{name}`")]
    UnknownNode {
        /// The name.
        name: String,
    },
    /// Two nodes or agents have one name.
    #[error("two nodes or agents are named `{name}`")]
    DuplicateNode {
        /// The name.
        name: String,
    },
    /// No entry point was given.
    #[error("no entry point: call `entry`")]
    NoEntryPoint,
    /// An id is refused (the orchestration's, or the session's).
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// The store failed (a conflict means another replica moved the run on).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored state cannot be read.
    #[error("the stored orchestration state is unreadable: {message}")]
    CorruptState {
        /// What is wrong.
        message: String,
    },
    /// [`Graph::resume`] or [`Swarm::resume`] found no unfinished run in the session.
    #[error("session `{session_id}` has no unfinished run of `{id}`")]
    NothingToResume {
        /// The session.
        session_id: String,
        /// The graph or swarm.
        id: String,
    },
    /// A swarm's agent could not be built.
    #[error("agent `{name}` cannot be built: {error}")]
    AgentBuild {
        /// The agent's name in the swarm.
        name: String,
        /// Why.
        #[source]
        error: crate::error::BuildError,
    },
    /// A node or agent failed; the run is saved as failed at that step.
    #[error("`{node}` failed: {message}")]
    NodeFailed {
        /// The node or agent.
        node: String,
        /// What happened.
        message: String,
        /// The agent's error, when an agent failed.
        #[source]
        source: Option<Cause>,
    },
}

impl OrchestrationError {
    fn nothing_to_resume(session_id: &str, id: &str) -> Self {
        Self::NothingToResume {
            session_id: session_id.to_owned(),
            id: id.to_owned(),
        }
    }

    fn node(node: &str, error: AgentError) -> Self {
        Self::NodeFailed {
            node: node.to_owned(),
            message: error.to_string(),
            source: Some(Cause::new(error)),
        }
    }
}

/// The bound on one store call of an orchestration.
const STORE_BOUND: Duration = Duration::from_secs(30);

/// The state saved under `state_key` in the session of `key`, and its version.
async fn load_state<T: serde::de::DeserializeOwned>(
    store: &dyn SessionStore,
    key: &SessionKey,
    state_key: &str,
) -> Result<(Option<T>, StateVersion), OrchestrationError> {
    let stored = tokio::time::timeout(STORE_BOUND, store.load(key))
        .await
        .map_err(|_| StoreError::Timeout { operation: "load" })??;
    let Some(stored) = stored else {
        return Ok((None, StateVersion::none()));
    };
    let state = match stored.state.agent_state.get(state_key) {
        Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| {
            OrchestrationError::CorruptState {
                message: e.to_string(),
            }
        })?),
        None => None,
    };
    Ok((state, stored.state_version))
}

/// Saves `state` under `state_key`, conditional on `version`, which it updates.
async fn save_state<T: Serialize>(
    store: &dyn SessionStore,
    key: &SessionKey,
    state_key: &str,
    state: &T,
    version: &mut StateVersion,
) -> Result<(), OrchestrationError> {
    let value = serde_json::to_value(state).map_err(|e| OrchestrationError::CorruptState {
        message: e.to_string(),
    })?;
    let mut session_state = SessionState::default();
    session_state
        .agent_state
        .insert(state_key.to_owned(), value);
    *version = tokio::time::timeout(STORE_BOUND, store.save_state(key, &session_state, version))
        .await
        .map_err(|_| StoreError::Timeout {
            operation: "save_state",
        })??;
    Ok(())
}

/// A random id for one run (idempotency keys of its steps).
fn run_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// The events of a streamed orchestration; the last item is [`OrchestrationEvent::Stop`] or
/// an error. Dropping it cancels the run (resumable).
#[derive(Debug)]
pub struct OrchestrationStream {
    rx: mpsc::Receiver<Result<OrchestrationEvent, OrchestrationError>>,
    _guard: DropGuard,
}

impl futures::Stream for OrchestrationStream {
    type Item = Result<OrchestrationEvent, OrchestrationError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Where a run's events go, when it is streamed: a node that runs an agent forwards the
/// agent's events here, named by the node.
#[derive(Clone, Default)]
pub struct Events(Option<(EventSender, std::sync::Arc<std::sync::atomic::AtomicBool>)>);

type EventSender = mpsc::Sender<Result<OrchestrationEvent, OrchestrationError>>;

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("streamed", &self.0.is_some())
            .finish()
    }
}

impl Events {
    /// Whether anyone reads the events (a run that is not streamed drops them).
    pub fn active(&self) -> bool {
        self.0.is_some()
    }

    /// Sends an event. A reader that takes more than 30 s for one is taken for gone: the run
    /// goes on, and drops its later events.
    pub async fn send(&self, event: OrchestrationEvent) {
        use std::sync::atomic::Ordering;
        if let Some((tx, gone)) = &self.0
            && !gone.load(Ordering::Relaxed)
            && tokio::time::timeout(Duration::from_secs(30), tx.send(Ok(event)))
                .await
                .is_err()
        {
            gone.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs `f` in a task, streaming its events; dropping the stream cancels `cancel`.
fn spawn_stream<F, Fut>(cancel: CancellationToken, f: F) -> OrchestrationStream
where
    F: FnOnce(Events) -> Fut,
    Fut: std::future::Future<Output = Result<Status, OrchestrationError>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let run = f(Events(Some((tx.clone(), std::sync::Arc::default()))));
    let guard = cancel.drop_guard();
    tokio::spawn(async move {
        let last = run.await.map(|status| OrchestrationEvent::Stop { status });
        let _ = tokio::time::timeout(Duration::from_secs(30), tx.send(last)).await;
    });
    OrchestrationStream { rx, _guard: guard }
}

/// The answer of an agent's step, when its run ended with one the orchestration can use: the
/// model answered, or a limit or the loop guard ended it with a final answer. A run stopped
/// otherwise (interrupted, cancelled, filtered, cut by the token limit) fails the step.
fn step_answer(node: &str, result: &crate::AgentResult) -> Result<String, OrchestrationError> {
    use crate::StopReason as S;
    match result.stop_reason {
        S::EndTurn | S::ToolLoop | S::LimitTurns | S::LimitTokens | S::Timeout
            if result.has_answer() =>
        {
            Ok(result.text())
        }
        S::Interrupted => Err(OrchestrationError::NodeFailed {
            node: node.to_owned(),
            message: "the agent stopped to ask a person; questions inside a graph or swarm are \
                      not passed up to its caller"
                .into(),
            source: None,
        }),
        other => Err(OrchestrationError::NodeFailed {
            node: node.to_owned(),
            message: format!("the agent stopped ({}) without an answer", other.as_str()),
            source: None,
        }),
    }
}

/// Runs an agent for one step: streamed (its events forwarded, named by `node`) when `events`
/// is, else invoked. Returns its answer, or the error that fails the step.
async fn run_agent(
    agent: &crate::Agent,
    node: &str,
    session_id: &str,
    prompt: String,
    idempotency_key: String,
    cancel: &CancellationToken,
    events: &Events,
) -> Result<crate::AgentResult, OrchestrationError> {
    use futures::StreamExt as _;
    let session = agent
        .session(session_id.to_owned())
        .idempotency_key(idempotency_key)
        .cancel_token(cancel.clone());
    let result = if events.active() {
        let mut stream = session.stream(prompt);
        let mut last = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(AgentEvent::Stop(result)) => last = Some(result),
                Ok(event) => {
                    events
                        .send(OrchestrationEvent::NodeEvent {
                            node: node.to_owned(),
                            event: Box::new(event),
                        })
                        .await;
                }
                Err(e) => return Err(OrchestrationError::node(node, e)),
            }
        }
        last.ok_or_else(|| OrchestrationError::NodeFailed {
            node: node.to_owned(),
            message: "the agent's stream ended without a result".into(),
            source: None,
        })?
    } else {
        session
            .invoke(prompt)
            .await
            .map_err(|e| OrchestrationError::node(node, e))?
    };
    Ok(result)
}
