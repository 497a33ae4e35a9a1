//! [`Graph`]: nodes (agents or functions) joined by edges with conditions, run in waves.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{
    Events, OrchestrationError, OrchestrationEvent, OrchestrationStream, Status, load_state,
    run_agent, run_id, save_state, spawn_stream,
};
use crate::Agent;
use crate::error::Cause;
use crate::session::{InMemorySessionStore, SessionKey, SessionStore, validate_id};
use std::collections::HashSet;

/// The key of a graph's state in its session state.
const STATE_KEY: &str = "graph";

/// What a graph has done so far: saved after every wave, and what edge conditions read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GraphState {
    /// The task the graph was given.
    pub task: String,
    /// The latest result of each node that ran.
    pub results: BTreeMap<String, NodeResult>,
    /// Node executions in the order they finished.
    pub order: Vec<String>,
    /// Nodes activated and not run yet: the next wave.
    pub queue: Vec<String>,
    /// Node executions so far.
    pub executions: u32,
    /// How the run stands.
    pub status: Status,
    /// This run's id (in the idempotency keys of its agents' invocations).
    pub run_id: String,
}

impl GraphState {
    /// The latest output of `node`, if it ran.
    pub fn output(&self, node: &str) -> Option<&str> {
        self.results.get(node).map(|r| r.output.as_str())
    }

    /// How many times `node` ran.
    pub fn runs(&self, node: &str) -> u32 {
        self.results.get(node).map_or(0, |r| r.execution)
    }
}

/// One node's latest result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResult {
    /// What it answered.
    pub output: String,
    /// How many times it has run (1 the first time).
    pub execution: u32,
}

/// What a node is given.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeInput {
    /// The node's name.
    pub node: String,
    /// The session the graph runs in.
    pub session_id: String,
    /// The task, then the latest outputs of the node's predecessors that ran.
    pub prompt: String,
    /// The graph's state before this wave.
    pub state: GraphState,
    /// A key unique to this execution of this node in this run: the same when a resumed run
    /// runs it again.
    pub execution_key: String,
    /// Cancelled with the run.
    pub cancel: CancellationToken,
}

/// A node: what runs when the graph gets to it. Agents are nodes; [`FnNode`] makes one of a
/// function.
#[async_trait]
pub trait GraphNode: Send + Sync + 'static {
    /// Runs the node; its answer becomes the node's output. `events` is for agents' events.
    async fn run(&self, input: NodeInput, events: &Events) -> Result<String, OrchestrationError>;
}

#[async_trait]
impl GraphNode for Agent {
    async fn run(&self, input: NodeInput, events: &Events) -> Result<String, OrchestrationError> {
        let result = run_agent(
            self,
            &input.node,
            &input.session_id,
            input.prompt,
            input.execution_key,
            &input.cancel,
            events,
        )
        .await?;
        super::step_answer(&input.node, &result)
    }
}

type NodeFuture = std::pin::Pin<
    Box<dyn Future<Output = Result<String, Box<dyn std::error::Error + Send + Sync>>> + Send>,
>;

/// A node made of an async function of the node's input (its prompt and the graph's state).
/// Unlike an agent, a function node that was running when its process died runs again from
/// its start when the graph is resumed: make it idempotent.
pub struct FnNode {
    f: Box<dyn Fn(NodeInput) -> NodeFuture + Send + Sync>,
}

impl std::fmt::Debug for FnNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnNode").finish_non_exhaustive()
    }
}

impl FnNode {
    /// A node that runs `f`.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(NodeInput) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, Box<dyn std::error::Error + Send + Sync>>>
            + Send
            + 'static,
    {
        Self {
            f: Box::new(move |input| Box::pin(f(input))),
        }
    }
}

#[async_trait]
impl GraphNode for FnNode {
    async fn run(&self, input: NodeInput, _events: &Events) -> Result<String, OrchestrationError> {
        let node = input.node.clone();
        (self.f)(input)
            .await
            .map_err(|e| OrchestrationError::NodeFailed {
                node,
                message: e.to_string(),
                source: Some(Cause::new(BoxedError(e))),
            })
    }
}

/// A boxed error as an error (for [`Cause`]).
#[derive(Debug)]
struct BoxedError(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for BoxedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BoxedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

type Condition = Arc<dyn Fn(&GraphState) -> bool + Send + Sync>;

struct Edge {
    from: String,
    to: String,
    condition: Option<Condition>,
}

struct Inner {
    id: String,
    nodes: Vec<(String, Arc<dyn GraphNode>)>,
    edges: Vec<Edge>,
    entry: Vec<String>,
    max_executions: u32,
    store: Arc<dyn SessionStore>,
}

/// A deterministic graph: nodes (agents or functions) and edges, some with conditions on the
/// graph's state. A run starts with the entry nodes; when a wave of nodes is done, each edge
/// from them whose condition holds activates its target; the next wave is every activated
/// node that no other activated node leads to (so a node with several inputs runs once every
/// branch still on its way has arrived). The nodes of a wave run at once. Cycles are allowed and
/// bounded by [`max_node_executions`](GraphBuilder::max_node_executions) (default 50).
///
/// A node's prompt is the task, then the latest output of each predecessor that ran. The state
/// (outputs, the queue, counts) is saved after every wave in the store, under the graph's id in
/// the caller's session: [`resume`](Graph::resume) continues a run whose process died.
///
/// ```no_run
/// use agent_core::multiagent::{FnNode, Graph};
/// use agent_core::prelude::*;
///
/// # async fn run(researcher: Agent, writer: Agent) -> Result<(), Box<dyn std::error::Error>> {
/// let graph = Graph::builder("trip-planner")
///     .node("research", researcher)
///     .node("write", writer)
///     .node("check", FnNode::new(|input| async move {
///         Ok(if input.prompt.contains("€") { "ok".into() } else { "no prices".into() })
///     }))
///     .edge("research", "write")
///     .edge("write", "check")
///     // Back to the writer until the check passes (bounded by max_node_executions).
///     .edge_if("check", "write", |state| state.output("check") != Some("ok"))
///     .entry("research")
///     .build()?;
/// let result = graph.run("session-1", "Two nights in Lisbon under 500 €").await?;
/// println!("{}", result.state.output("write").unwrap_or_default());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Graph {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("id", &self.inner.id)
            .field(
                "nodes",
                &self.inner.nodes.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Configures a [`Graph`].
pub struct GraphBuilder {
    id: String,
    nodes: Vec<(String, Arc<dyn GraphNode>)>,
    edges: Vec<Edge>,
    entry: Vec<String>,
    max_executions: u32,
    store: Arc<dyn SessionStore>,
}

impl std::fmt::Debug for GraphBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphBuilder")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Graph {
    /// Starts a graph with this id (its key in sessions: keep it stable across deployments).
    pub fn builder(id: impl Into<String>) -> GraphBuilder {
        GraphBuilder {
            id: id.into(),
            nodes: Vec::new(),
            edges: Vec::new(),
            entry: Vec::new(),
            max_executions: 50,
            store: Arc::new(InMemorySessionStore::new()),
        }
    }
}

impl GraphBuilder {
    /// Adds a node: an [`Agent`] (give each agent node its own agent id: its conversation is
    /// kept in the session under it) or a [`FnNode`].
    pub fn node(mut self, name: impl Into<String>, node: impl GraphNode) -> Self {
        self.nodes.push((name.into(), Arc::new(node)));
        self
    }

    /// An edge that always activates `to` once `from` has run.
    pub fn edge(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.edges.push(Edge {
            from: from.into(),
            to: to.into(),
            condition: None,
        });
        self
    }

    /// An edge that activates `to` once `from` has run, if `condition` holds on the state.
    pub fn edge_if(
        mut self,
        from: impl Into<String>,
        to: impl Into<String>,
        condition: impl Fn(&GraphState) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.edges.push(Edge {
            from: from.into(),
            to: to.into(),
            condition: Some(Arc::new(condition)),
        });
        self
    }

    /// A node the run starts with (at least one).
    pub fn entry(mut self, node: impl Into<String>) -> Self {
        self.entry.push(node.into());
        self
    }

    /// The bound on node executions per run, cycles included (default 50); the run then ends
    /// with [`Status::LimitReached`].
    pub fn max_node_executions(mut self, n: u32) -> Self {
        self.max_executions = n.max(1);
        self
    }

    /// Where the graph's state is saved (default: in memory, this process only).
    pub fn session_store(mut self, store: impl SessionStore) -> Self {
        self.store = Arc::new(store);
        self
    }

    /// Checks the graph: unique node names, edges and entry points that name nodes.
    pub fn build(self) -> Result<Graph, OrchestrationError> {
        validate_id("graph", &self.id)?;
        let mut seen = std::collections::HashSet::new();
        for (name, _) in &self.nodes {
            if !seen.insert(name.as_str()) {
                return Err(OrchestrationError::DuplicateNode { name: name.clone() });
            }
        }
        let known = |n: &str| -> Result<(), OrchestrationError> {
            if seen.contains(n) {
                Ok(())
            } else {
                Err(OrchestrationError::UnknownNode { name: n.to_owned() })
            }
        };
        for e in &self.edges {
            known(&e.from)?;
            known(&e.to)?;
        }
        if self.entry.is_empty() {
            return Err(OrchestrationError::NoEntryPoint);
        }
        for n in &self.entry {
            known(n)?;
        }
        let mut entry = Vec::with_capacity(self.entry.len());
        for n in self.entry {
            if !entry.contains(&n) {
                entry.push(n);
            }
        }
        Ok(Graph {
            inner: Arc::new(Inner {
                id: self.id,
                nodes: self.nodes,
                edges: self.edges,
                entry,
                max_executions: self.max_executions,
                store: self.store,
            }),
        })
    }
}

/// How a graph run ended, and its state.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GraphResult {
    /// How it ended.
    pub status: Status,
    /// Its state: every node's latest output, the order they ran in.
    pub state: GraphState,
}

impl Graph {
    /// The graph's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Runs the graph on `task` in session `session_id` (a new run, whatever the session
    /// holds).
    pub async fn run(
        &self,
        session_id: &str,
        task: impl Into<String>,
    ) -> Result<GraphResult, OrchestrationError> {
        self.execute(
            session_id,
            Some(task.into()),
            CancellationToken::new(),
            Events::default(),
        )
        .await
    }

    /// Continues the session's unfinished run (its process died, or it was cancelled) from its
    /// last saved wave, on any replica.
    pub async fn resume(&self, session_id: &str) -> Result<GraphResult, OrchestrationError> {
        self.execute(
            session_id,
            None,
            CancellationToken::new(),
            Events::default(),
        )
        .await
    }

    /// [`run`](Self::run), streamed: node starts and stops, and every agent event named by its
    /// node. Dropping the stream cancels the run (resumable).
    pub fn stream(&self, session_id: &str, task: impl Into<String>) -> OrchestrationStream {
        let graph = self.clone();
        let session_id = session_id.to_owned();
        let task = task.into();
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        spawn_stream(cancel, move |events| async move {
            graph
                .execute(&session_id, Some(task), token, events)
                .await
                .map(|r| r.status)
        })
    }

    async fn execute(
        &self,
        session_id: &str,
        task: Option<String>,
        cancel: CancellationToken,
        events: Events,
    ) -> Result<GraphResult, OrchestrationError> {
        let inner = &*self.inner;
        let key = SessionKey::new(session_id, &inner.id)?;
        let (stored, mut version) =
            load_state::<GraphState>(&*inner.store, &key, STATE_KEY).await?;
        let mut state = match task {
            Some(task) => GraphState {
                task,
                queue: inner.entry.clone(),
                run_id: run_id(),
                ..GraphState::default()
            },
            None => match stored {
                Some(mut s) if s.status.resumable() => {
                    s.status = Status::Running;
                    s
                }
                _ => return Err(OrchestrationError::nothing_to_resume(session_id, &inner.id)),
            },
        };
        save_state(&*inner.store, &key, STATE_KEY, &state, &mut version).await?;
        let nodes: HashMap<&str, &Arc<dyn GraphNode>> = inner
            .nodes
            .iter()
            .map(|(n, node)| (n.as_str(), node))
            .collect();
        loop {
            if cancel.is_cancelled() {
                state.status = Status::Cancelled;
                break;
            }
            if state.queue.is_empty() {
                state.status = Status::Completed;
                break;
            }
            // The wave: queued nodes that no other queued node leads to (so a node with several
            // inputs waits for every branch still on its way), or, in a cycle where every queued
            // node waits on another, the first queued.
            let mut wave: Vec<String> = state
                .queue
                .iter()
                .filter(|n| !state.queue.iter().any(|q| q != *n && self.leads_to(q, n)))
                .cloned()
                .collect();
            if wave.is_empty() {
                wave.push(state.queue[0].clone());
            }
            if state.executions + wave.len() as u32 > inner.max_executions {
                state.status = Status::LimitReached;
                break;
            }
            let runs = wave.iter().map(|name| {
                let execution = state.runs(name) + 1;
                let input = NodeInput {
                    node: name.clone(),
                    session_id: session_id.to_owned(),
                    prompt: self.prompt(&state, name),
                    state: state.clone(),
                    execution_key: format!("{}:{}:{}:{execution}", inner.id, state.run_id, name),
                    cancel: cancel.clone(),
                };
                let node = nodes.get(name.as_str()).map(|n| Arc::clone(n));
                let events = events.clone();
                async move {
                    events
                        .send(OrchestrationEvent::NodeStart {
                            node: input.node.clone(),
                        })
                        .await;
                    let name = input.node.clone();
                    let out = match node {
                        Some(node) => node.run(input, &events).await,
                        None => Err(OrchestrationError::UnknownNode { name: name.clone() }),
                    };
                    if let Ok(output) = &out {
                        events
                            .send(OrchestrationEvent::NodeStop {
                                node: name.clone(),
                                output: output.clone(),
                            })
                            .await;
                    }
                    (name, execution, out)
                }
            });
            let outcomes = futures::future::join_all(runs).await;
            let mut failure = None;
            let mut done = Vec::with_capacity(wave.len());
            for (name, execution, out) in outcomes {
                match out {
                    Ok(output) => {
                        state.executions += 1;
                        state.order.push(name.clone());
                        state.queue.retain(|n| n != &name);
                        state
                            .results
                            .insert(name.clone(), NodeResult { output, execution });
                        done.push(name);
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
            // Edges from the nodes that finished, on the state after the wave (also when
            // another node of the wave failed: a resumed run must not lose them).
            for name in &done {
                for e in inner.edges.iter().filter(|e| &e.from == name) {
                    let open = e.condition.as_ref().is_none_or(|c| c(&state));
                    if open && !state.queue.contains(&e.to) {
                        state.queue.push(e.to.clone());
                    }
                }
            }
            if let Some(e) = failure {
                if cancel.is_cancelled() {
                    state.status = Status::Cancelled;
                    save_state(&*inner.store, &key, STATE_KEY, &state, &mut version).await?;
                    return Ok(GraphResult {
                        status: state.status,
                        state,
                    });
                }
                state.status = Status::Failed;
                save_state(&*inner.store, &key, STATE_KEY, &state, &mut version).await?;
                return Err(e);
            }
            save_state(&*inner.store, &key, STATE_KEY, &state, &mut version).await?;
        }
        save_state(&*inner.store, &key, STATE_KEY, &state, &mut version).await?;
        Ok(GraphResult {
            status: state.status,
            state,
        })
    }

    /// Whether an edge path leads from `from` to `to`.
    fn leads_to(&self, from: &str, to: &str) -> bool {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut next = vec![from];
        while let Some(n) = next.pop() {
            for e in self.inner.edges.iter().filter(|e| e.from == n) {
                if e.to == to {
                    return true;
                }
                if seen.insert(e.to.as_str()) {
                    next.push(e.to.as_str());
                }
            }
        }
        false
    }

    /// The task, then the latest output of each predecessor of `node` that ran.
    fn prompt(&self, state: &GraphState, node: &str) -> String {
        let mut prompt = state.task.clone();
        let mut inputs = String::new();
        let mut seen = Vec::new();
        for e in self.inner.edges.iter().filter(|e| e.to == node) {
            if seen.contains(&e.from.as_str()) {
                continue;
            }
            seen.push(e.from.as_str());
            if let Some(output) = state.output(&e.from) {
                inputs.push_str(&format!("\nFrom {}:\n{output}\n", e.from));
            }
        }
        if !inputs.is_empty() {
            prompt.push_str("\n\nInputs from earlier steps:");
            prompt.push_str(&inputs);
        }
        prompt
    }
}
