//! [`Swarm`]: agents that hand a task to each other with a handoff tool.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    Events, OrchestrationError, OrchestrationEvent, OrchestrationStream, Status, load_state,
    run_agent, run_id, save_state, spawn_stream,
};
use crate::agent::{Agent, AgentBuilder, StopReason};
use crate::hooks::{AfterToolCall, Hook, HookError};
use crate::message::{ContentBlock, Role, ToolResultStatus};
use crate::session::{InMemorySessionStore, SessionKey, SessionStore, validate_id};
use crate::tool::{FnTool, ToolError, ToolOutput};

/// The name of the tool each agent of a swarm is given to hand the task on.
pub const HANDOFF_TOOL: &str = "handoff_to_agent";

/// The key of a swarm's state in its session state.
const STATE_KEY: &str = "swarm";

/// A task handed from one agent to another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    /// Who handed it on.
    pub from: String,
    /// To whom.
    pub to: String,
    /// What the next agent should do.
    pub message: String,
    /// What it should know (shared with every later agent).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub context: Value,
}

/// What a swarm has done so far, saved before each agent's turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SwarmState {
    /// The task the swarm was given.
    pub task: String,
    /// The agent whose turn it is (or whose answer ended the run).
    pub current: String,
    /// The handoffs so far, in order.
    pub handoffs: Vec<Handoff>,
    /// The context each agent shared when it handed off, by agent.
    pub shared_context: BTreeMap<String, Value>,
    /// The final answer, once an agent answered without handing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// How the run stands.
    pub status: Status,
    /// This run's id (in the idempotency keys of its agents' invocations).
    pub run_id: String,
}

/// How a swarm run ended.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SwarmResult {
    /// How it ended.
    pub status: Status,
    /// Its state: the handoffs, the shared context, the answer.
    pub state: SwarmState,
}

impl SwarmResult {
    /// The final answer (empty if there is none).
    pub fn text(&self) -> &str {
        self.state.answer.as_deref().unwrap_or_default()
    }
}

/// Ends an agent's run once it handed the task on.
struct StopAfterHandoff;

#[async_trait]
impl Hook for StopAfterHandoff {
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "swarm_handoff".into()
    }

    async fn after_tool_call(&self, ctx: &mut AfterToolCall<'_>) -> Result<(), HookError> {
        if ctx.tool_use.name == HANDOFF_TOOL && ctx.result.status == ToolResultStatus::Success {
            ctx.run.stop("handed off");
        }
        Ok(())
    }
}

struct Member {
    name: String,
    agent: Agent,
}

struct Inner {
    id: String,
    members: Vec<Member>,
    entry: String,
    max_handoffs: u32,
    store: Arc<dyn SessionStore>,
}

/// Agents that hand a task to each other: each is given a `handoff_to_agent` tool (the other
/// agents' names and descriptions in its description). The run starts with the entry agent;
/// an agent that hands off ends its turn, and the next agent gets the task, the handoff's
/// message and the context shared so far; an agent that answers without handing off ends the
/// run with its answer. Handoffs are bounded (default 20, as in Strands).
///
/// Each agent keeps its own conversation in the session, under the agent id
/// `<swarm id>.<name>`. The swarm's state is saved in the store before every turn:
/// [`resume`](Swarm::resume) continues a run whose process died, and an agent caught in the
/// middle of its turn resumes that turn.
///
/// ```no_run
/// use agent_core::multiagent::Swarm;
/// use agent_core::prelude::*;
///
/// # async fn run(model: OpenAiCompatible) -> Result<(), Box<dyn std::error::Error>> {
/// let swarm = Swarm::builder("travel-desk")
///     .agent("flights", "Finds and prices flights.", Agent::builder().model(model.clone()))
///     .agent("hotels", "Finds hotels.", Agent::builder().model(model))
///     .entry("flights")
///     .build()?;
/// let result = swarm.run("session-1", "A weekend in Lisbon: flight and hotel").await?;
/// println!("{}", result.text());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Swarm {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm")
            .field("id", &self.inner.id)
            .field(
                "agents",
                &self
                    .inner
                    .members
                    .iter()
                    .map(|m| &m.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Configures a [`Swarm`].
pub struct SwarmBuilder {
    id: String,
    members: Vec<(String, String, AgentBuilder)>,
    entry: Option<String>,
    max_handoffs: u32,
    store: Arc<dyn SessionStore>,
}

impl std::fmt::Debug for SwarmBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmBuilder")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Swarm {
    /// Starts a swarm with this id (its key in sessions: keep it stable across deployments).
    pub fn builder(id: impl Into<String>) -> SwarmBuilder {
        SwarmBuilder {
            id: id.into(),
            members: Vec::new(),
            entry: None,
            max_handoffs: 20,
            store: Arc::new(InMemorySessionStore::new()),
        }
    }
}

impl SwarmBuilder {
    /// Adds an agent, as a builder: the swarm adds the handoff tool and its hook, and sets its
    /// id to `<swarm id>.<name>`. `description` tells the other agents what it is for.
    pub fn agent(
        mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        agent: AgentBuilder,
    ) -> Self {
        self.members.push((name.into(), description.into(), agent));
        self
    }

    /// The agent the run starts with (default: the first added).
    pub fn entry(mut self, name: impl Into<String>) -> Self {
        self.entry = Some(name.into());
        self
    }

    /// The bound on handoffs per run (default 20); the run then ends with
    /// [`Status::LimitReached`].
    pub fn max_handoffs(mut self, n: u32) -> Self {
        self.max_handoffs = n;
        self
    }

    /// Where the swarm's state is saved (default: in memory, this process only). The agents
    /// keep their conversations in their own stores.
    pub fn session_store(mut self, store: impl SessionStore) -> Self {
        self.store = Arc::new(store);
        self
    }

    /// Builds the agents, each with the handoff tool.
    pub fn build(self) -> Result<Swarm, OrchestrationError> {
        validate_id("swarm", &self.id)?;
        let names: Vec<String> = self.members.iter().map(|(n, _, _)| n.clone()).collect();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(OrchestrationError::DuplicateNode { name: n.clone() });
            }
        }
        let entry = match self.entry {
            Some(e) if names.contains(&e) => e,
            Some(e) => return Err(OrchestrationError::UnknownNode { name: e }),
            None => names
                .first()
                .cloned()
                .ok_or(OrchestrationError::NoEntryPoint)?,
        };
        let roster: Vec<(String, String)> = self
            .members
            .iter()
            .map(|(n, d, _)| (n.clone(), d.clone()))
            .collect();
        let mut members = Vec::with_capacity(self.members.len());
        for (name, _, builder) in self.members {
            let others: Vec<&(String, String)> =
                roster.iter().filter(|(n, _)| *n != name).collect();
            let agent = builder
                .id(format!("{}.{name}", self.id))
                .tool(handoff_tool(&others))
                .hook(StopAfterHandoff)
                .build()
                .map_err(|error| OrchestrationError::AgentBuild {
                    name: name.clone(),
                    error,
                })?;
            members.push(Member { name, agent });
        }
        Ok(Swarm {
            inner: Arc::new(Inner {
                id: self.id,
                members,
                entry,
                max_handoffs: self.max_handoffs,
                store: self.store,
            }),
        })
    }
}

/// The handoff tool of an agent, naming the agents it can hand off to.
fn handoff_tool(others: &[&(String, String)]) -> FnTool {
    let names: Vec<String> = others.iter().map(|(n, _)| n.clone()).collect();
    let roster = others
        .iter()
        .map(|(n, d)| format!("- {n}: {d}"))
        .collect::<Vec<_>>()
        .join("\n");
    let description = format!(
        "Hands the task to another agent when it is better placed to continue; your turn ends. \
         Agents:\n{roster}"
    );
    let schema = json!({
        "type": "object",
        "properties": {
            "agent_name": {"type": "string", "enum": names, "description": "Who takes over."},
            "message": {"type": "string", "description": "What they should do next."},
            "context": {"type": "object", "description": "What they should know."}
        },
        "required": ["agent_name", "message"]
    });
    FnTool::new(HANDOFF_TOOL, description, schema, move |input, _ctx| {
        let names = names.clone();
        async move {
            let to = input["agent_name"].as_str().unwrap_or_default();
            if !names.iter().any(|n| n == to) {
                return Err(ToolError::new(format!(
                    "no agent `{to}`: hand off to one of {}",
                    names.join(", ")
                )));
            }
            Ok(ToolOutput::text(format!("Handed off to {to}.")))
        }
    })
}

/// The handoff of an agent's turn: the last handoff call in the turn (the agent's messages
/// from its last prompt on) that the tool accepted. Read from the stored conversation, not from
/// how the run stopped, so a turn resumed after a crash (whose handoff result was recorded,
/// and whose run did not stop for it again) still hands off, and a refused call (an unknown
/// agent) never counts.
fn handoff_of(from: &str, messages: &[crate::message::Message]) -> Option<Handoff> {
    let turn = messages
        .iter()
        .rposition(crate::message::Message::is_prompt)?;
    let messages = &messages[turn..];
    let accepted = |id: &str| {
        messages.iter().any(|m| {
            m.content.iter().any(|b| {
                matches!(b, ContentBlock::ToolResult(r)
                    if r.tool_use_id == id && r.status == ToolResultStatus::Success)
            })
        })
    };
    messages
        .iter()
        .rev()
        .filter(|m| m.role == Role::Assistant)
        .flat_map(|m| m.content.iter().rev())
        .find_map(|b| match b {
            ContentBlock::ToolUse(u) if u.name == HANDOFF_TOOL && accepted(&u.tool_use_id) => {
                Some(Handoff {
                    from: from.to_owned(),
                    to: u.input["agent_name"].as_str()?.to_owned(),
                    message: u.input["message"].as_str().unwrap_or_default().to_owned(),
                    context: u.input.get("context").cloned().unwrap_or(Value::Null),
                })
            }
            _ => None,
        })
}

impl Swarm {
    /// The swarm's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Runs the swarm on `task` in session `session_id` (a new run).
    pub async fn run(
        &self,
        session_id: &str,
        task: impl Into<String>,
    ) -> Result<SwarmResult, OrchestrationError> {
        self.execute(
            session_id,
            Some(task.into()),
            CancellationToken::new(),
            Events::default(),
        )
        .await
    }

    /// Continues the session's unfinished run from the turn it was in, on any replica.
    pub async fn resume(&self, session_id: &str) -> Result<SwarmResult, OrchestrationError> {
        self.execute(
            session_id,
            None,
            CancellationToken::new(),
            Events::default(),
        )
        .await
    }

    /// [`run`](Self::run), streamed: each turn's start and end, handoffs, and every agent event
    /// named by its agent. Dropping the stream cancels the run (resumable).
    pub fn stream(&self, session_id: &str, task: impl Into<String>) -> OrchestrationStream {
        let swarm = self.clone();
        let session_id = session_id.to_owned();
        let task = task.into();
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        spawn_stream(cancel, move |events| async move {
            swarm
                .execute(&session_id, Some(task), token, events)
                .await
                .map(|r| r.status)
        })
    }

    fn prompt(&self, state: &SwarmState) -> String {
        let mut prompt = state.task.clone();
        if let Some(h) = state.handoffs.last() {
            prompt.push_str(&format!("\n\n{} handed this to you: {}", h.from, h.message));
        }
        if !state.shared_context.is_empty() {
            prompt.push_str(&format!(
                "\n\nShared context: {}",
                serde_json::to_string(&state.shared_context).unwrap_or_default()
            ));
        }
        prompt
    }

    async fn execute(
        &self,
        session_id: &str,
        task: Option<String>,
        cancel: CancellationToken,
        events: Events,
    ) -> Result<SwarmResult, OrchestrationError> {
        let inner = &*self.inner;
        let key = SessionKey::new(session_id, &inner.id)?;
        let (stored, mut version) =
            load_state::<SwarmState>(&*inner.store, &key, STATE_KEY).await?;
        let mut state = match task {
            Some(task) => SwarmState {
                task,
                current: inner.entry.clone(),
                run_id: run_id(),
                ..SwarmState::default()
            },
            None => match stored {
                Some(mut s) if s.status.resumable() => {
                    s.status = Status::Running;
                    s
                }
                _ => return Err(OrchestrationError::nothing_to_resume(session_id, &inner.id)),
            },
        };
        loop {
            save_state(&*inner.store, &key, STATE_KEY, &state, &mut version).await?;
            if cancel.is_cancelled() {
                state.status = Status::Cancelled;
                break;
            }
            let Some(member) = inner.members.iter().find(|m| m.name == state.current) else {
                return Err(OrchestrationError::UnknownNode {
                    name: state.current.clone(),
                });
            };
            events
                .send(OrchestrationEvent::NodeStart {
                    node: member.name.clone(),
                })
                .await;
            let turn = state.handoffs.len();
            let result = match run_agent(
                &member.agent,
                &member.name,
                session_id,
                self.prompt(&state),
                format!("{}:{}:{turn}", inner.id, state.run_id),
                &cancel,
                &events,
            )
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    state.status = if cancel.is_cancelled() {
                        Status::Cancelled
                    } else {
                        Status::Failed
                    };
                    save_state(&*inner.store, &key, STATE_KEY, &state, &mut version).await?;
                    if state.status == Status::Cancelled {
                        break;
                    }
                    return Err(e);
                }
            };
            // The turn's conversation, as stored: where its handoff is read from.
            let messages = member
                .agent
                .session(session_id.to_owned())
                .messages()
                .await
                .map_err(|e| OrchestrationError::node(&member.name, e))?
                .unwrap_or_default();
            match handoff_of(&member.name, &messages) {
                Some(handoff) => {
                    events
                        .send(OrchestrationEvent::NodeStop {
                            node: member.name.clone(),
                            output: result.text(),
                        })
                        .await;
                    if state.handoffs.len() as u32 >= inner.max_handoffs {
                        state.status = Status::LimitReached;
                        break;
                    }
                    events
                        .send(OrchestrationEvent::Handoff {
                            from: handoff.from.clone(),
                            to: handoff.to.clone(),
                            message: handoff.message.clone(),
                        })
                        .await;
                    if !handoff.context.is_null() {
                        state
                            .shared_context
                            .insert(member.name.clone(), handoff.context.clone());
                    }
                    state.current = handoff.to.clone();
                    state.handoffs.push(handoff);
                }
                None if result.stop_reason == StopReason::Cancelled => {
                    state.status = Status::Cancelled;
                    break;
                }
                None if super::step_answer(&member.name, &result).is_ok() => {
                    let answer = result.text();
                    events
                        .send(OrchestrationEvent::NodeStop {
                            node: member.name.clone(),
                            output: answer.clone(),
                        })
                        .await;
                    state.answer = Some(answer);
                    state.status = Status::Completed;
                    break;
                }
                None => {
                    state.status = Status::Failed;
                    save_state(&*inner.store, &key, STATE_KEY, &state, &mut version).await?;
                    return Err(match super::step_answer(&member.name, &result) {
                        Err(e) => e,
                        Ok(_) => OrchestrationError::NodeFailed {
                            node: member.name.clone(),
                            message: "the agent ended without an answer or a handoff".into(),
                            source: None,
                        },
                    });
                }
            }
        }
        save_state(&*inner.store, &key, STATE_KEY, &state, &mut version).await?;
        Ok(SwarmResult {
            status: state.status,
            state,
        })
    }
}
