//! The agent loop: an explicit state machine, model turn -> tool batch -> model turn ..., until
//! a stop reason. Every message is appended to the session store as soon as it exists, so a
//! run's progress is checkpointed after each model turn and each tool batch.

use std::time::Duration;

use futures::{FutureExt as _, StreamExt};
use opentelemetry::Context;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::guard::CallMemory;
use super::{AgentInner, AgentResult, Prompt, ResumePolicy, StopReason, TurnMetrics};
use std::borrow::Cow;

use crate::conversation::{ContextWindow, Conversation, ReportedUsage};
use crate::error::AgentError;
use crate::event::AgentEvent;
use crate::history::History;
use crate::hooks::{
    AfterInvocation, AfterModelCall, AfterToolCall, BeforeInvocation, BeforeModelCall,
    BeforeToolCall, MessageAdded, RunInfo,
};
use crate::interrupt::{InterruptResponse, Interrupts};
use crate::message::{ContentBlock, Message, Role, ToolResult, ToolUse, text_of};
use crate::model::{
    ModelError, ModelEvent, ModelRequest, ModelResponse, ModelStopReason, ToolChoice, Usage,
};
use crate::session::{
    InvocationRecord, RunCheckpoint, RunLease, SessionKey, SessionState, StateVersion, validate_id,
};
use crate::telemetry::InvokeEnd;
use crate::tool::executor::{CallScope, execute_stream};
use crate::tool::{AgentState, ProgressReporter};

/// Text of the results that answer tool uses left pending by an interrupted run.
pub const INTERRUPTED_TEXT: &str = "Tool was interrupted.";
/// Text of the results of calls stopped by the invocation's time limit.
pub const TIME_LIMIT_TEXT: &str =
    "Tool execution stopped: the invocation's time limit was reached.";

/// Added to the system prompt of the final answer a run asks for when a limit or the loop guard
/// ends its tool use before the model answered.
pub const FINAL_ANSWER_NOTE: &str = "Tool use has ended for this request: no more tools can be \
called. Answer the user now, using only the tool results above. If they do not contain what the \
user asked for, say what is missing instead of guessing.";

/// How long a store call may take past the invocation's deadline: the writes that end a run
/// (the results of calls the time limit stopped, the state) must still land for the session to
/// stay valid, but not wait forever.
const STORE_GRACE: Duration = Duration::from_secs(10);

/// A store call bounded by the invocation's deadline, or by [`STORE_GRACE`] from now if that
/// is later. It is not cut by cancellation: a store call is short, and cutting a write would
/// leave its outcome unknown.
async fn within<T>(
    deadline: Option<Instant>,
    operation: &'static str,
    call: impl Future<Output = Result<T, crate::session::StoreError>>,
) -> Result<T, crate::session::StoreError> {
    let Some(deadline) = deadline else {
        return call.await;
    };
    let bound = deadline.max(Instant::now() + STORE_GRACE);
    tokio::time::timeout_at(bound, call)
        .await
        .unwrap_or(Err(crate::session::StoreError::Timeout { operation }))
}

pub(super) type Sender = mpsc::Sender<Result<AgentEvent, AgentError>>;

/// Sends events to a stream consumer, if there is one.
struct Emitter {
    tx: Option<Sender>,
    deadline: Option<Instant>,
}

impl Emitter {
    fn active(&self) -> bool {
        self.tx.is_some()
    }

    /// Waits for room in the channel (back-pressure), but never past the invocation's
    /// deadline: a consumer that stops reading cannot hold the run forever.
    async fn send(&self, event: AgentEvent) {
        let Some(tx) = &self.tx else { return };
        // Room in the channel (the usual case) needs no timer.
        let event = match tx.try_send(Ok(event)) {
            // A closed channel means the consumer dropped the stream, which cancels the run.
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        let send = tx.send(event);
        match self.deadline {
            Some(d) => {
                if tokio::time::timeout_at(d, send).await.is_err() {
                    tracing::warn!("stream consumer not reading; event dropped at the time limit");
                }
            }
            None => {
                let _ = send.await;
            }
        }
    }
}

/// What a model turn is for.
enum TurnKind<'a> {
    /// A turn of the loop: the agent's tools and tool choice.
    Normal,
    /// The final answer after a limit: no tools, [`FINAL_ANSWER_NOTE`] in the system prompt.
    FinalAnswer,
    /// The structured form of the answer: only the output tool, forced, with `extra` (this
    /// step's notes and earlier rejected replies, never stored) after the conversation.
    Structured {
        schema: &'a super::OutputSchema,
        extra: &'a [Message],
    },
}

// Returned once per turn and moved out at once, never stored: boxing would only add an
// allocation per turn.
#[allow(clippy::large_enum_variant)]
enum TurnOutcome {
    Done(ModelResponse, TurnMetrics),
    Stopped(StopReason),
}

struct Run<'a> {
    /// The system prompt of this invocation (the agent's; memories go with the prompt).
    system_prompt: Option<std::borrow::Cow<'a, str>>,
    /// The `invoke_agent` span's context, when telemetry is on.
    trace: Option<Context>,
    agent: &'a AgentInner,
    key: SessionKey,
    actor_id: Option<std::sync::Arc<str>>,
    history: History,
    window: ContextWindow,
    state: AgentState,
    emitter: Emitter,
    cancel: CancellationToken,
    deadline: Option<Instant>,
    /// The tools of the last model call: its tool uses run against the same list.
    tools: Option<std::sync::Arc<crate::tool::ToolRegistry>>,
    /// The calls of this invocation, for the loop guard.
    calls: CallMemory,
    /// What the run records for a resume besides messages.
    checkpoint: RunCheckpoint,
    /// The invocation's prompt (its index in the history) as the model sees it: with the
    /// actor's remembered records set before its text. Never stored.
    remembered: Option<(usize, Message)>,
    /// The state as last saved, and its version.
    saved: Saved,
    /// Why a hook asked the run to stop, once one did.
    hook_stop: Option<String>,
    /// The input tokens the last model call reported, for the conversation manager.
    reported: Option<ReportedUsage>,
    /// The answers this run resumes with, and the questions its tool calls raise.
    interrupts: Interrupts,
}

/// The state as last saved: what [`Run::save_if_changed`] compares against.
struct Saved {
    version: StateVersion,
    window: ContextWindow,
    checkpoint: RunCheckpoint,
}

/// Saves the session state (conditional on the version last read or written), within the
/// invocation's bounds.
async fn persist(
    agent: &AgentInner,
    key: &SessionKey,
    deadline: Option<Instant>,
    state: &AgentState,
    window: &ContextWindow,
    checkpoint: &mut RunCheckpoint,
    saved: &mut Saved,
) -> Result<(), AgentError> {
    // Every save renews the run's replica lease.
    if let (Some(lease), Some(duration)) = (checkpoint.lease.as_mut(), agent.replica_lease) {
        lease.until_ms = unix_ms().saturating_add(millis(duration));
    }
    let session_state = SessionState {
        agent_state: state.to_map(),
        window: window.clone(),
        checkpoint: checkpoint.clone(),
    };
    saved.version = within(
        deadline,
        "save_state",
        agent.store.save_state(key, &session_state, &saved.version),
    )
    .await?;
    saved.window = window.clone();
    saved.checkpoint = checkpoint.clone();
    Ok(())
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How an invocation starts.
pub(super) enum Start {
    /// A new prompt.
    Prompt(Prompt),
    /// No prompt: continue the session's interrupted run.
    Resume,
    /// Answers to the questions an interrupted run waits on.
    Respond(Vec<InterruptResponse>),
}

/// What an invocation is asked to do.
pub(super) struct Invocation {
    pub(super) start: Start,
    /// A retry with the same key resumes the invocation, or gets its outcome.
    pub(super) idempotency_key: Option<String>,
    /// The structure the answer must also be given in.
    pub(super) structured: Option<super::OutputSchema>,
    /// Where the run's `invoke_agent` span goes, still open, when the run ends (an evaluation
    /// adds its scores to it, then ends it at the run's end time).
    pub(crate) hold_trace: Option<crate::telemetry::TraceHold>,
}

pub(super) async fn run(
    agent: &AgentInner,
    session_id: &str,
    actor_id: Option<&str>,
    mut invocation: Invocation,
    cancel: CancellationToken,
    tx: Option<Sender>,
) -> Result<AgentResult, AgentError> {
    #[cfg_attr(not(feature = "eval"), allow(unused_mut))]
    let mut hold = invocation.hold_trace.take();
    // A sampled invocation is scored in the background; an evaluation's own run is not.
    #[cfg(feature = "eval")]
    let online = match hold {
        None => agent.online.as_ref().filter(|o| o.sampled()),
        Some(_) => None,
    };
    #[cfg(feature = "eval")]
    let mut online_trace = None;
    #[cfg(feature = "eval")]
    if online.is_some() {
        let (to, from) = tokio::sync::oneshot::channel();
        hold = Some(to);
        online_trace = Some(from);
    }
    #[cfg(feature = "eval")]
    let started = Instant::now();
    let trace = agent
        .telemetry
        .start_invoke(&agent.name, &agent.id, session_id, &agent.descriptor);
    if let Some(cx) = &trace {
        // Log lines of this run name its trace (the `invocation` span declares the fields).
        use opentelemetry::trace::TraceContextExt as _;
        let span = cx.span();
        let ids = span.span_context();
        let current = tracing::Span::current();
        current.record("trace_id", tracing::field::display(ids.trace_id()));
        current.record("span_id", tracing::field::display(ids.span_id()));
    }
    // The prompt is copied only when content is recorded.
    let input = match &invocation.start {
        Start::Prompt(prompt) if agent.telemetry.captures_content() => Some(prompt.0.clone()),
        _ => None,
    };
    let outcome = run_traced(
        agent,
        session_id,
        actor_id,
        invocation,
        cancel,
        tx,
        trace.clone(),
    )
    .await;
    if let Some(cx) = &trace {
        let end = match &outcome {
            Ok(r) => InvokeEnd {
                usage: Some(&r.usage),
                stop_reason: Some(r.stop_reason),
                output: r.message.as_ref(),
                input: input.as_deref(),
                system_prompt: agent.system_prompt.as_deref(),
                ..InvokeEnd::default()
            },
            Err(e) => InvokeEnd {
                error: Some(e.kind()),
                input: input.as_deref(),
                system_prompt: agent.system_prompt.as_deref(),
                ..InvokeEnd::default()
            },
        };
        agent.telemetry.end_invoke(cx, &end, hold);
    }
    #[cfg(feature = "eval")]
    if let (Some(online), Ok(result)) = (online, &outcome)
        && result.has_answer()
        && let Ok(key) = SessionKey::new(session_id, &agent.id)
    {
        online.offer(crate::eval::online::Job {
            store: agent.store.clone(),
            key,
            result: result.clone(),
            latency_seconds: started.elapsed().as_secs_f64(),
            trace: online_trace.and_then(|mut r| r.try_recv().ok()),
            offered: Instant::now(),
        });
    }
    outcome
}

/// The outcome of a finished run, read back from the history: its last assistant message.
fn recorded_outcome(
    history: &History,
    first_message: usize,
    stop_reason: StopReason,
) -> AgentResult {
    AgentResult {
        stop_reason,
        message: history
            .messages()
            .get(first_message..)
            .unwrap_or_default()
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .cloned(),
        usage: Usage::default(),
        turns: Vec::new(),
        structured_output: None,
        stopped_by: None,
        interrupts: Vec::new(),
    }
}

/// How long a failed run may spend releasing its replica lease.
const LEASE_RELEASE_BOUND: Duration = Duration::from_secs(5);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, millis)
}

async fn run_traced(
    agent: &AgentInner,
    session_id: &str,
    actor_id: Option<&str>,
    invocation: Invocation,
    cancel: CancellationToken,
    tx: Option<Sender>,
    trace: Option<Context>,
) -> Result<AgentResult, AgentError> {
    let deadline = agent.limits.timeout.map(|t| Instant::now() + t);
    // One run per session in this process; the replica lease extends that to other processes.
    let _lock = agent
        .locks
        .acquire(session_id, deadline)
        .await
        .ok_or_else(|| AgentError::SessionBusy {
            session_id: session_id.to_owned(),
        })?;
    let Some(owner) = agent
        .replica_lease
        .map(|_| format!("{}/{:016x}", agent.instance, fastrand::u64(..)))
    else {
        return run_session(
            agent, session_id, actor_id, invocation, cancel, tx, trace, deadline, None,
        )
        .await;
    };
    let outcome = std::panic::AssertUnwindSafe(run_session(
        agent,
        session_id,
        actor_id,
        invocation,
        cancel,
        tx,
        trace,
        deadline,
        Some(&owner),
    ))
    .catch_unwind()
    .await;
    // A run that failed (or panicked) did not reach its last save: its lease is released here,
    // under the session's lock, so another replica need not wait for it to expire. A run
    // refused as busy never took one.
    match outcome {
        Ok(Err(e)) if e.kind() != "session_busy" => {
            release_lease(agent, session_id, &owner).await;
            Err(e)
        }
        Ok(outcome) => outcome,
        Err(panic) => {
            release_lease(agent, session_id, &owner).await;
            std::panic::resume_unwind(panic)
        }
    }
}

/// Clears the session's lease if `owner` still holds it (bounded, best effort: a lease left
/// behind expires).
async fn release_lease(agent: &AgentInner, session_id: &str, owner: &str) {
    let Ok(key) = SessionKey::new(session_id, &agent.id) else {
        return;
    };
    let release = async {
        let Some(mut stored) = agent.store.load(&key).await? else {
            return Ok(());
        };
        if stored
            .state
            .checkpoint
            .lease
            .as_ref()
            .is_some_and(|l| l.owner == owner)
        {
            stored.state.checkpoint.lease = None;
            agent
                .store
                .save_state(&key, &stored.state, &stored.state_version)
                .await?;
        }
        Ok::<(), crate::session::StoreError>(())
    };
    match tokio::time::timeout(LEASE_RELEASE_BOUND, release).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(session_id, error = %e, "releasing the session's lease failed; it expires")
        }
        Err(_) => tracing::warn!(
            session_id,
            "releasing the session's lease timed out; it expires"
        ),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_session(
    agent: &AgentInner,
    session_id: &str,
    actor_id: Option<&str>,
    invocation: Invocation,
    cancel: CancellationToken,
    tx: Option<Sender>,
    trace: Option<Context>,
    deadline: Option<Instant>,
    lease_owner: Option<&str>,
) -> Result<AgentResult, AgentError> {
    let Invocation {
        mut start,
        idempotency_key,
        structured,
        hold_trace: _,
    } = invocation;
    if matches!(&start, Start::Prompt(p) if p.0.is_empty()) {
        return Err(AgentError::EmptyPrompt);
    }
    let key = SessionKey::new(session_id, &agent.id)?;
    if let Some(actor) = actor_id {
        validate_id("actor", actor)?;
    }
    let stored = within(deadline, "load", agent.store.load(&key))
        .await?
        .unwrap_or_default();
    let history = History::restore(stored.messages)?;
    let SessionState {
        agent_state,
        window,
        checkpoint,
    } = stored.state;
    // A retry of an invocation with the same key: its outcome if it finished, else a resume.
    let mut record_index = None;
    if let Some(k) = &idempotency_key
        && !matches!(start, Start::Respond(_))
        && let Some(record) = checkpoint.invocation.as_ref().filter(|r| &r.key == k)
    {
        if let Some(reason) = &record.stop_reason {
            let reason = serde_json::from_value(serde_json::Value::String(reason.clone()))
                .unwrap_or(StopReason::EndTurn);
            let mut outcome = recorded_outcome(&history, record.first_message, reason);
            outcome.structured_output = record.structured_output.clone();
            return Ok(outcome);
        }
        record_index = Some(record.first_message);
        start = Start::Resume;
    }
    // Another replica's run in flight: this one does not run beside it. (A lease of this agent
    // instance is one a run of this process left behind: the local lock excludes the rest.)
    if lease_owner.is_some()
        && let Some(held) = &checkpoint.lease
        && held.until_ms > unix_ms()
        && !held
            .owner
            .strip_prefix(agent.instance.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    {
        return Err(AgentError::SessionBusy {
            session_id: session_id.to_owned(),
        });
    }
    let mut run = Run {
        agent,
        key,
        actor_id: actor_id.map(Into::into),
        history,
        window: window.clone(),
        state: AgentState::from_map(agent_state),
        emitter: Emitter { tx, deadline },
        cancel,
        deadline,
        tools: None,
        calls: CallMemory::default(),
        saved: Saved {
            version: stored.state_version,
            window,
            checkpoint: checkpoint.clone(),
        },
        checkpoint,
        remembered: None,
        hook_stop: None,
        reported: None,
        interrupts: Interrupts::default(),
        trace,
        system_prompt: agent
            .system_prompt
            .as_deref()
            .map(std::borrow::Cow::Borrowed),
    };
    if let Start::Respond(responses) = start {
        // Answers to the questions the last run stopped on: each must match one, and every
        // question needs its answer.
        let pending: Vec<&crate::interrupt::Interrupt> = run
            .checkpoint
            .interrupts
            .iter()
            .filter(|i| i.response.is_none())
            .collect();
        if pending.is_empty() {
            return Err(AgentError::InterruptResponse {
                message: format!("session `{session_id}` waits on no question"),
            });
        }
        let mut answers = std::collections::HashMap::new();
        for r in responses {
            if !pending.iter().any(|i| i.id == r.id) {
                return Err(AgentError::InterruptResponse {
                    message: format!("no question `{}` is waiting", r.id),
                });
            }
            answers.insert(r.id, r.response);
        }
        let missing: Vec<&str> = pending
            .iter()
            .filter(|i| !answers.contains_key(&i.id))
            .map(|i| i.id.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(AgentError::InterruptResponse {
                message: format!("no answer to {}", missing.join(", ")),
            });
        }
        for i in &mut run.checkpoint.interrupts {
            if let Some(answer) = answers.get(&i.id) {
                i.response = Some(answer.clone());
            }
        }
        // This round's answers and the earlier rounds'.
        let all: std::collections::HashMap<String, serde_json::Value> = run
            .checkpoint
            .interrupts
            .iter()
            .filter_map(|i| Some((i.id.clone(), i.response.clone()?)))
            .collect();
        run.interrupts = Interrupts::with_responses(all);
        start = Start::Resume;
    }
    let nothing_to_resume = matches!(start, Start::Resume) && run.history.is_empty();
    if let Some(owner) = lease_owner
        && !nothing_to_resume
    {
        // Taken before anything is written; a replica that took it first makes this save a
        // conflict.
        run.checkpoint.lease = Some(RunLease {
            owner: owner.to_owned(),
            until_ms: 0,
        });
        run.save_now().await.map_err(|e| match e.kind() {
            "store_conflict" => AgentError::SessionBusy {
                session_id: session_id.to_owned(),
            },
            _ => e,
        })?;
    }
    let mut remembered = None;
    if let (Some(memory), Some(actor)) = (&agent.memory, actor_id) {
        let prompt_text: String = match &start {
            Start::Prompt(prompt) => text_of(&prompt.0),
            // The prompt of the run being resumed.
            Start::Resume | Start::Respond(_) => run
                .history
                .messages()
                .iter()
                .rev()
                .find(|m| m.is_prompt())
                .map(|m| text_of(&m.content))
                .unwrap_or_default(),
        };
        let injection = crate::memory::injection(memory, actor, &prompt_text);
        remembered = match deadline {
            Some(d) => tokio::time::timeout_at(d, injection)
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!("memory search timed out: no memories injected");
                    None
                }),
            None => injection.await,
        };
    }

    let first_new;
    let mut answered_already = false;
    let mut resume_batch = false;
    match start {
        Start::Prompt(mut prompt) => {
            if !agent.hooks.is_empty() {
                let mut ctx = BeforeInvocation {
                    run: run.info(),
                    prompt: &mut prompt.0,
                };
                let dispatched = agent
                    .hooks
                    .dispatch("before_invocation", false, deadline, &mut ctx, |h, c| {
                        h.before_invocation(c)
                    })
                    .await;
                let RunInfo { events, stop, .. } = ctx.run;
                run.send_all(events).await;
                if let Err(e) = dispatched {
                    run.checkpoint.lease = None;
                    run.save_if_changed().await?;
                    return Err(e);
                }
                if let Some(reason) = stop {
                    // Refused before anything of it was stored.
                    run.checkpoint.lease = None;
                    run.save_if_changed().await?;
                    return Ok(AgentResult {
                        stop_reason: StopReason::HookStopped,
                        message: None,
                        usage: Usage::default(),
                        turns: Vec::new(),
                        structured_output: None,
                        stopped_by: Some(reason),
                        interrupts: Vec::new(),
                    });
                }
                if prompt.0.is_empty() {
                    run.checkpoint.lease = None;
                    run.save_if_changed().await?;
                    return Err(AgentError::EmptyPrompt);
                }
            }
            first_new = run.history.len();
            if let Some(k) = &idempotency_key {
                // Recorded before the prompt is written: a retry finds the record either way.
                run.checkpoint.invocation = Some(InvocationRecord {
                    key: k.clone(),
                    first_message: first_new,
                    stop_reason: None,
                    structured_output: None,
                });
                run.save_now().await?;
            }
            // Tool uses an earlier run left pending are answered in the same user message as
            // the prompt: with their recorded results, or as interrupted.
            let mut content: Vec<ContentBlock> = run
                .history
                .pending_tool_uses()
                .into_iter()
                .map(|u| {
                    let recorded = run
                        .checkpoint
                        .completed_tool_results
                        .iter()
                        .find(|r| r.tool_use_id == u.tool_use_id)
                        .cloned();
                    ContentBlock::ToolResult(
                        recorded
                            .unwrap_or_else(|| ToolResult::error(&u.tool_use_id, INTERRUPTED_TEXT)),
                    )
                })
                .collect();
            content.extend(prompt.0);
            run.append(Message::new(Role::User, content)).await?;
            run.checkpoint.completed_tool_results.clear();
            // Questions left unanswered are abandoned with their calls.
            run.checkpoint.interrupts.clear();
            run.checkpoint.interrupted_message = None;
        }
        Start::Resume | Start::Respond(_) => {
            first_new = record_index.unwrap_or_else(|| {
                // The prompt of the run being resumed: the last message that is one.
                run.history
                    .messages()
                    .iter()
                    .rposition(Message::is_prompt)
                    .unwrap_or(0)
            });
            match run.history.messages().last() {
                None => {
                    return Err(AgentError::NothingToResume {
                        session_id: session_id.to_owned(),
                    });
                }
                Some(m)
                    if m.role == Role::Assistant
                        && m.tool_uses().next().is_none()
                        && structured.is_some() =>
                {
                    // The run had ended, but its structured value is still owed (the step
                    // failed, or its process died in it): only that step runs.
                    answered_already = true;
                }
                Some(m) if m.role == Role::Assistant && m.tool_uses().next().is_none() => {
                    // The run had ended: nothing to do but report it.
                    let outcome = recorded_outcome(&run.history, first_new, StopReason::EndTurn);
                    if let Some(record) = run.checkpoint.invocation.as_mut()
                        && idempotency_key.as_deref() == Some(record.key.as_str())
                    {
                        record.stop_reason = Some(StopReason::EndTurn.as_str().to_owned());
                    }
                    run.checkpoint.lease = None;
                    run.save_if_changed().await?;
                    return Ok(outcome);
                }
                Some(m) if m.role == Role::Assistant => resume_batch = true,
                // A prompt or tool results with no answer yet: the next model turn.
                Some(_) => {}
            }
        }
    }
    if let Some(block) = remembered {
        // Remembered records go with the prompt, as quoted context the user gave, for this
        // invocation's model calls only: never into the system prompt, never into history.
        let messages = run.history.messages();
        let index = if first_new < messages.len() && messages[first_new].is_prompt() {
            Some(first_new)
        } else {
            messages.iter().rposition(Message::is_prompt)
        };
        if let Some(index) = index {
            let mut prompt = messages[index].clone();
            // Before the prompt's text, in the same block, so the prompt stays one text.
            match prompt.content.iter_mut().find_map(|b| match b {
                ContentBlock::Text(t) => Some(t),
                _ => None,
            }) {
                Some(text) => *text = format!("{block}\n\n{text}"),
                None => prompt.content.push(ContentBlock::Text(block)),
            }
            run.remembered = Some((index, prompt));
        }
    }

    let mut usage = Usage::default();
    let mut turns: Vec<TurnMetrics> = Vec::new();
    let limits = agent.limits;
    let resumed_stop = if resume_batch {
        run.tool_batch(true).await?.1
    } else {
        None
    };
    let stop_reason = if let Some(reason) = resumed_stop {
        reason
    } else if answered_already {
        StopReason::EndTurn
    } else {
        loop {
            if run.cancel.is_cancelled() {
                break StopReason::Cancelled;
            }
            if run.hook_stop.is_some() {
                break StopReason::HookStopped;
            }
            if limits
                .max_turns
                .is_some_and(|max| turns.len() as u64 >= u64::from(max))
            {
                break StopReason::LimitTurns;
            }
            if limits
                .max_total_tokens
                .is_some_and(|max| usage.total_tokens >= max)
            {
                break StopReason::LimitTokens;
            }
            if run.deadline.is_some_and(|d| Instant::now() >= d) {
                break StopReason::Timeout;
            }
            run.renew_lease_if_due().await?;
            run.manage().await;
            let (response, mut metrics) = match run.model_turn(TurnKind::Normal).await? {
                TurnOutcome::Done(r, m) => (r, m),
                TurnOutcome::Stopped(reason) => break reason,
            };
            usage.add(&response.usage);
            let mut content = response.content;
            if content.is_empty() {
                content.push(ContentBlock::Text(String::new()));
            }
            let has_tools = content
                .iter()
                .any(|b| matches!(b, ContentBlock::ToolUse(_)));
            run.append(Message::new(Role::Assistant, content)).await?;
            if has_tools {
                let started = Instant::now();
                let (calls, stopped) = run.tool_batch(false).await?;
                metrics.tool_calls = calls;
                metrics.tools_ms = millis(started.elapsed());
                turns.push(metrics);
                if let Some(reason) = stopped {
                    break reason;
                }
                continue;
            }
            turns.push(metrics);
            break match response.stop_reason {
                ModelStopReason::MaxTokens => StopReason::MaxTokens,
                ModelStopReason::ContentFiltered => StopReason::ContentFiltered,
                ModelStopReason::GuardrailIntervened => StopReason::GuardrailIntervened,
                _ => StopReason::EndTurn,
            };
        }
    };

    // A hook that asked to stop as the last message was added: the run ends as it asked.
    let stop_reason = if run.hook_stop.is_some() && stop_reason != StopReason::Interrupted {
        StopReason::HookStopped
    } else {
        stop_reason
    };
    // The graceful end: a limit or the loop guard stopped tool use before the model answered.
    if let Some(timeout) = agent.final_answer_timeout
        && matches!(
            stop_reason,
            StopReason::LimitTurns
                | StopReason::LimitTokens
                | StopReason::Timeout
                | StopReason::ToolLoop
        )
        && !run.cancel.is_cancelled()
        && run.history.messages().last().is_some_and(|m| {
            // Only after tool use: a model too slow to answer a plain prompt gets no second call.
            m.role == Role::User
                && m.content
                    .iter()
                    .any(|b| matches!(b, ContentBlock::ToolResult(_)))
        })
    {
        run.deadline = Some(Instant::now() + timeout);
        run.emitter.deadline = run.deadline;
        run.renew_lease_if_due().await?;
        run.manage().await;
        if let TurnOutcome::Done(response, metrics) = run.model_turn(TurnKind::FinalAnswer).await? {
            usage.add(&response.usage);
            turns.push(metrics);
            // Text only: a tool use here would be one nobody answers.
            let content: Vec<ContentBlock> = response
                .content
                .into_iter()
                .filter(|b| !matches!(b, ContentBlock::ToolUse(_)))
                .collect();
            if !content.is_empty() {
                run.append(Message::new(Role::Assistant, content)).await?;
            }
        }
    }

    // The structured form of the answer: asked for once the model has answered, the replies
    // that do not fit sent back with what is wrong. None of it is stored: the session keeps the
    // answer as the model gave it, and stays a valid conversation for the next prompt.
    let mut structured_output = None;
    let mut structured_error = None;
    if let Some(schema) = structured
        .as_ref()
        .filter(|_| stop_reason != StopReason::Interrupted)
    {
        // The window as the conversation left it: an overflow caused by this step's own notes
        // must not move the stored window.
        let window = run.window.clone();
        let outcome = structured_step(&mut run, schema, stop_reason, &mut usage, &mut turns).await;
        run.window = window;
        match outcome {
            Ok(Ok(value)) => structured_output = Some(value),
            Ok(Err(failure)) => structured_error = Some(failure),
            Err(e) => {
                // A typed failure of the step (the model, the store): the caller gets it as
                // it is; the invocation stays unfinished, so a retry with its key runs the
                // step again.
                run.checkpoint.lease = None;
                run.save_if_changed().await?;
                return Err(e);
            }
        }
    }

    if let Some(record) = run.checkpoint.invocation.as_mut()
        && idempotency_key.as_deref() == Some(record.key.as_str())
    {
        // An invocation whose structured value is still owed is not finished: a retry with its
        // key runs the structured step again.
        // Interrupted and cancelled runs are not finished: a retry with the key resumes them.
        if structured_error.is_none()
            && !matches!(stop_reason, StopReason::Interrupted | StopReason::Cancelled)
        {
            record.stop_reason = Some(stop_reason.as_str().to_owned());
            record.structured_output.clone_from(&structured_output);
        }
    }
    run.checkpoint.lease = None;
    run.save_if_changed().await?;
    if let Some(error) = structured_error {
        return Err(error);
    }
    // Only a run that ended with an answer is mined (also one the loop guard sent to its final
    // answer); a failed or stopped one may hold half a thought, and the extraction call would
    // compete with the user's next request.
    let messages = &run.history.messages()[first_new..];
    let answered = match stop_reason {
        StopReason::EndTurn => true,
        StopReason::ToolLoop => messages
            .last()
            .is_some_and(|m| m.role == Role::Assistant && !m.text().trim().is_empty()),
        _ => false,
    };
    if let (Some(memory), Some(actor)) = (&agent.memory, actor_id)
        && memory.extract
        && answered
    {
        let said_about_self = messages
            .iter()
            .filter(|m| m.role == Role::User)
            .any(|m| crate::memory::speaks_about_self(&m.text()));
        if said_about_self {
            memory.submit_extraction(
                agent.model.clone(),
                actor,
                session_id,
                first_new,
                messages.to_vec(),
            );
        }
    }
    let message = messages
        .iter()
        .rev()
        .find(|m| m.role == Role::Assistant)
        .cloned();
    let mut result = AgentResult {
        stop_reason,
        message,
        usage,
        turns,
        structured_output,
        stopped_by: run.hook_stop.take(),
        interrupts: if stop_reason == StopReason::Interrupted {
            run.checkpoint
                .interrupts
                .iter()
                .filter(|i| i.response.is_none())
                .cloned()
                .collect()
        } else {
            Vec::new()
        },
    };
    if !agent.hooks.is_empty() {
        let mut ctx = AfterInvocation {
            run: run.info(),
            result: &mut result,
        };
        let dispatched = agent
            .hooks
            .dispatch("after_invocation", true, None, &mut ctx, |h, c| {
                h.after_invocation(c)
            })
            .await;
        let RunInfo { events, .. } = ctx.run;
        run.send_all(events).await;
        dispatched?;
    }
    Ok(result)
}

/// The longest description of what is wrong with a reply that goes back to the model.
const MAX_FEEDBACK: usize = 2000;

/// Asks the model for the structured form of its answer, within the schema's attempts. `Ok(Ok)`
/// is the value, `Ok(Err)` a [`AgentError::StructuredOutput`] (no fitting reply, or the run was
/// stopped), `Err` a failure of the model or the store, as it is.
async fn structured_step(
    run: &mut Run<'_>,
    schema: &super::OutputSchema,
    stop_reason: StopReason,
    usage: &mut Usage,
    turns: &mut Vec<TurnMetrics>,
) -> Result<Result<serde_json::Value, AgentError>, AgentError> {
    let failed = |message: String, raw: String, attempts: u32| {
        Ok(Err(AgentError::StructuredOutput {
            message,
            raw,
            attempts,
        }))
    };
    let answered = run
        .history
        .messages()
        .last()
        .is_some_and(|m| m.role == Role::Assistant && m.tool_uses().next().is_none());
    if !answered {
        return failed(
            format!(
                "the run ended ({}) before the model answered",
                stop_reason.as_str()
            ),
            String::new(),
            0,
        );
    }
    let name = schema.tool().name.clone();
    let mut extra = vec![Message::user(schema.note())];
    let mut last = (String::new(), String::new());
    for attempt in 1..=schema.attempts() {
        run.renew_lease_if_due().await?;
        run.manage().await;
        let kind = TurnKind::Structured {
            schema,
            extra: &extra,
        };
        let (response, metrics) = match run.model_turn(kind).await? {
            TurnOutcome::Done(response, metrics) => (response, metrics),
            TurnOutcome::Stopped(reason) => {
                return failed(
                    format!("the run stopped ({}) while asked for it", reason.as_str()),
                    last.1,
                    attempt,
                );
            }
        };
        usage.add(&response.usage);
        turns.push(metrics);
        let calls: Vec<&crate::message::ToolUse> =
            crate::message::tool_uses(&response.content).collect();
        let mine = calls.iter().find(|u| u.name == name);
        let problem = match mine {
            Some(call) => match schema.check(&call.input) {
                Ok(value) => return Ok(Ok(value)),
                Err(problem) => {
                    last = (problem.clone(), call.input.to_string());
                    problem
                }
            },
            None => {
                last = (
                    format!("the model answered without calling `{name}`"),
                    text_of(&response.content),
                );
                format!(
                    "That was not a call of the `{name}` tool. {}",
                    schema.note()
                )
            }
        };
        let problem = crate::model::embed::cut(&problem, MAX_FEEDBACK).to_owned();
        // Every tool use of the rejected reply is answered (a provider refuses a call left
        // without its result); the output tool's with what is wrong.
        let mut feedback: Vec<ContentBlock> = calls
            .iter()
            .map(|u| {
                let text = if u.name == name {
                    problem.clone()
                } else {
                    format!("Only `{name}` may be called now.")
                };
                ContentBlock::ToolResult(crate::message::ToolResult::error(
                    u.tool_use_id.clone(),
                    text,
                ))
            })
            .collect();
        if mine.is_none() {
            feedback.push(ContentBlock::Text(problem));
        }
        let mut content = response.content;
        if content.is_empty() {
            content.push(ContentBlock::Text(String::new()));
        }
        extra.push(Message::new(Role::Assistant, content));
        extra.push(Message::new(Role::User, feedback));
    }
    failed(last.0, last.1, schema.attempts())
}

impl Run<'_> {
    /// What hooks are told about the run.
    fn info(&self) -> RunInfo<'_> {
        RunInfo::new(
            &self.agent.name,
            self.key.session_id(),
            self.actor_id.as_deref(),
            &self.state,
        )
    }

    /// Lets the conversation manager move the window before a model call, within the run's
    /// time limit (past it, the window stays as it was).
    async fn manage(&mut self) {
        let agent = self.agent;
        let mut conversation = Conversation {
            history: &self.history,
            window: &mut self.window,
            model: &agent.model,
            system_prompt: agent.system_prompt.as_deref(),
            reported: self.reported,
        };
        let apply = agent.conversation.apply(&mut conversation);
        // Cut by the time limit or cancellation: the window then stays as it was.
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => {}
            () = sleep_until_opt(self.deadline) => {}
            () = apply => {}
        }
    }

    /// Asks the conversation manager to shrink the window after an overflow.
    async fn reduce_window(&mut self) -> bool {
        let agent = self.agent;
        let mut conversation = Conversation {
            history: &self.history,
            window: &mut self.window,
            model: &agent.model,
            system_prompt: agent.system_prompt.as_deref(),
            reported: None,
        };
        let reduce = agent.conversation.reduce(&mut conversation);
        match self.deadline {
            Some(d) => tokio::time::timeout_at(d, reduce).await.unwrap_or(false),
            None => reduce.await,
        }
    }

    /// Sends the events hooks emitted.
    async fn send_all(&self, events: Vec<AgentEvent>) {
        if self.emitter.active() {
            for event in events {
                self.emitter.send(event).await;
            }
        }
    }

    /// Saves the state now (renewing the run's lease, if it holds one).
    async fn save_now(&mut self) -> Result<(), AgentError> {
        persist(
            self.agent,
            &self.key,
            self.deadline,
            &self.state,
            &self.window,
            &mut self.checkpoint,
            &mut self.saved,
        )
        .await
    }

    /// Renews the run's replica lease when half of it has passed since the last save (a run of
    /// long model calls and turns that change no state saves seldom).
    async fn renew_lease_if_due(&mut self) -> Result<(), AgentError> {
        if let (Some(lease), Some(duration)) = (&self.checkpoint.lease, self.agent.replica_lease)
            && lease.until_ms.saturating_sub(unix_ms()) < millis(duration) / 2
        {
            self.save_now().await?;
        }
        Ok(())
    }

    /// Saves the state if a tool changed it, the window moved or the checkpoint changed since
    /// the last save: after every tool batch and at the end of the run.
    async fn save_if_changed(&mut self) -> Result<(), AgentError> {
        let dirty = self.state.take_dirty();
        if dirty || self.window != self.saved.window || self.checkpoint != self.saved.checkpoint {
            self.save_now().await?;
        }
        Ok(())
    }

    async fn append(&mut self, mut message: Message) -> Result<(), AgentError> {
        if !self.agent.hooks.is_empty() {
            let mut ctx = MessageAdded {
                run: self.info(),
                message: &mut message,
            };
            let dispatched = self
                .agent
                .hooks
                // Messages are written even at the time limit (the store gets a grace period):
                // so are their hooks.
                .dispatch(
                    "message_added",
                    false,
                    self.deadline.map(|d| d.max(Instant::now() + STORE_GRACE)),
                    &mut ctx,
                    |h, c| h.message_added(c),
                )
                .await;
            let RunInfo { events, stop, .. } = ctx.run;
            self.send_all(events).await;
            dispatched?;
            if let Some(reason) = stop {
                self.hook_stop.get_or_insert(reason);
            }
        }
        let expected = self.history.len();
        self.history.push(message)?;
        let stored = &self.history.messages()[expected..];
        within(
            self.deadline,
            "append",
            self.agent.store.append(&self.key, expected, stored),
        )
        .await?;
        if self.emitter.active() {
            self.emitter
                .send(AgentEvent::MessageAdded {
                    message: stored[0].clone(),
                })
                .await;
        }
        Ok(())
    }

    /// One model call, retried as the policy allows, of the given kind.
    async fn model_turn(&mut self, kind: TurnKind<'_>) -> Result<TurnOutcome, AgentError> {
        let agent = self.agent;
        let final_answer = matches!(kind, TurnKind::FinalAnswer);
        let final_prompt = final_answer.then(|| match &self.system_prompt {
            Some(p) => format!("{p}\n\n{FINAL_ANSWER_NOTE}"),
            None => FINAL_ANSWER_NOTE.to_owned(),
        });
        let forced;
        let (tool_choice, structured) = match &kind {
            TurnKind::Normal => (&agent.tool_choice, None),
            TurnKind::FinalAnswer => (&ToolChoice::None, None),
            TurnKind::Structured { schema, extra } => {
                forced = ToolChoice::Tool(schema.tool().name.clone());
                (&forced, Some((schema.tool(), *extra)))
            }
        };
        // Tool sources bring their lists up to date first, within the run's bounds.
        let tools = tokio::select! {
            biased;
            () = self.cancel.cancelled() => return Ok(TurnOutcome::Stopped(StopReason::Cancelled)),
            () = sleep_until_opt(self.deadline) => return Ok(TurnOutcome::Stopped(StopReason::Timeout)),
            tools = agent.tools.refreshed() => tools,
        };
        if structured.is_none() {
            self.tools = Some(tools.clone());
        }
        let mut attempts = 0u32;
        let mut failures = 0u32;
        let mut reductions = 0u32;
        loop {
            attempts += 1;
            let mut messages = self.window.visible(&self.history);
            if let Some((index, with_memory)) = &self.remembered
                && let Some(original) = self.history.messages().get(*index)
                && let Some(slot) = messages.iter_mut().find(|m| std::ptr::eq(**m, original))
            {
                *slot = with_memory;
            }
            // A summary of what the window left out goes with its first message.
            let summarized: Message;
            if let Some(summary) = self.window.applicable_summary(&self.history)
                && let Some(first) = messages.first_mut()
            {
                summarized = crate::conversation::with_summary(first, summary);
                *first = &summarized;
            }
            let mut offered = tools.specs();
            if let Some((tool, extra)) = structured {
                // Only the output tool, after the conversation and the notes of this step.
                offered = std::slice::from_ref(tool);
                messages.extend(extra.iter());
            }
            let mut system = final_prompt
                .as_deref()
                .or(self.system_prompt.as_deref())
                .map(Cow::Borrowed);
            // What hooks rewrote, when there are hooks: `messages` then borrows from it.
            let rewritten: Vec<Cow<'_, Message>>;
            if !agent.hooks.is_empty() {
                let mut ctx = BeforeModelCall {
                    run: self.info(),
                    messages: messages.iter().map(|m| Cow::Borrowed(*m)).collect(),
                    system_prompt: system.take(),
                    tools: offered,
                    attempt: attempts,
                };
                let dispatched = agent
                    .hooks
                    .dispatch(
                        "before_model_call",
                        false,
                        self.deadline,
                        &mut ctx,
                        |h, c| h.before_model_call(c),
                    )
                    .await;
                let BeforeModelCall {
                    run: RunInfo { events, stop, .. },
                    messages: hooked,
                    system_prompt: hooked_system,
                    ..
                } = ctx;
                self.send_all(events).await;
                dispatched?;
                if let Some(reason) = stop {
                    self.hook_stop.get_or_insert(reason);
                    return Ok(TurnOutcome::Stopped(StopReason::HookStopped));
                }
                rewritten = hooked;
                system = hooked_system;
                messages = rewritten.iter().map(AsRef::as_ref).collect();
            }
            let started = Instant::now();
            let mut first_event = None;
            let (mut stream, mut chat) = {
                let request = ModelRequest {
                    messages,
                    system_prompt: system.as_deref(),
                    tools: offered,
                    tool_choice,
                    max_tokens: None,
                    temperature: None,
                    structured_output: structured.is_some(),
                };
                let chat = self.trace.as_ref().and_then(|cx| {
                    agent.telemetry.start_chat(
                        cx,
                        &agent.descriptor,
                        self.key.session_id(),
                        &request,
                    )
                });
                (agent.model.stream(&request), chat)
            };
            // One cancellation future and one deadline timer for the whole call, not one per
            // chunk: re-arming them on every event was most of the loop's own cost.
            let mut cancelled = std::pin::pin!(self.cancel.clone().cancelled_owned());
            let mut deadline = std::pin::pin!(sleep_until_opt(self.deadline));
            let outcome: Result<ModelResponse, ModelError> = loop {
                let next = tokio::select! {
                    biased;
                    () = &mut cancelled => {
                        if let Some(c) = chat { c.end_interrupted("cancelled") }
                        return Ok(TurnOutcome::Stopped(StopReason::Cancelled));
                    }
                    () = &mut deadline => {
                        if let Some(c) = chat { c.end_interrupted("timeout") }
                        return Ok(TurnOutcome::Stopped(StopReason::Timeout));
                    }
                    next = stream.next() => next,
                };
                match next {
                    None => {
                        break Err(ModelError::Transient {
                            message: "model stream ended without a response".into(),
                        });
                    }
                    Some(Err(e)) => break Err(e),
                    Some(Ok(event)) => {
                        first_event.get_or_insert_with(|| started.elapsed());
                        if let Some(c) = &mut chat {
                            c.first_chunk();
                        }
                        match event {
                            ModelEvent::Completed(response) => break Ok(response),
                            other => self.forward(other).await,
                        }
                    }
                }
            };
            drop(stream);
            if let Some(c) = chat {
                match &outcome {
                    Ok(response) => c.end_ok(response),
                    Err(e) => c.end_err(e),
                }
            }
            let mut outcome = outcome;
            if !agent.hooks.is_empty() {
                let mut ctx = AfterModelCall {
                    run: self.info(),
                    outcome: outcome.as_mut().map_err(|e| &*e),
                    attempt: attempts,
                    retry: false,
                };
                let dispatched = agent
                    .hooks
                    .dispatch("after_model_call", true, self.deadline, &mut ctx, |h, c| {
                        h.after_model_call(c)
                    })
                    .await;
                let retry = ctx.retry;
                let RunInfo { events, stop, .. } = ctx.run;
                self.send_all(events).await;
                dispatched?;
                if let Some(reason) = stop {
                    // The response is discarded: nothing of it is stored.
                    self.hook_stop.get_or_insert(reason);
                    return Ok(TurnOutcome::Stopped(StopReason::HookStopped));
                }
                if retry {
                    if attempts >= agent.retry.max_attempts {
                        return Err(AgentError::Hook {
                            hook: "after_model_call".into(),
                            event: "after_model_call",
                            message: format!(
                                "a hook asked to call the model again after {attempts} call(s), \
                                 the retry policy's limit"
                            ),
                            source: None,
                        });
                    }
                    self.retry_event(
                        attempts,
                        Duration::ZERO,
                        "hook",
                        "a hook asked for another call",
                    )
                    .await;
                    continue;
                }
            }
            let error = match outcome {
                Ok(response) => {
                    self.reported = Some(ReportedUsage {
                        input_tokens: response.usage.input_tokens,
                        history_len: self.history.len(),
                        window_start: self.window.start,
                    });
                    // Every model call's usage is an event, as soon as the call is complete.
                    if self.emitter.active() {
                        self.emitter
                            .send(AgentEvent::Usage {
                                usage: response.usage,
                            })
                            .await;
                    }
                    let metrics = TurnMetrics {
                        model_latency_ms: millis(started.elapsed()),
                        time_to_first_chunk_ms: first_event.map(millis),
                        attempts,
                        usage: response.usage,
                        tool_calls: 0,
                        tools_ms: 0,
                    };
                    return Ok(TurnOutcome::Done(response, metrics));
                }
                Err(e) => e,
            };
            match error {
                ModelError::ContextOverflow { message } => {
                    if reductions < agent.max_context_reductions && self.reduce_window().await {
                        reductions += 1;
                        tracing::warn!(session = %self.key.session_id(), reductions, "context overflow: history reduced, retrying");
                        self.retry_event(reductions, Duration::ZERO, "context_overflow", &message)
                            .await;
                        continue;
                    }
                    return Err(AgentError::ContextOverflow { message });
                }
                e if e.is_retryable() && failures + 1 < agent.retry.max_attempts => {
                    failures += 1;
                    let delay = agent.retry.delay(failures, e.retry_after());
                    if self.deadline.is_some_and(|d| Instant::now() + delay >= d) {
                        // Not a timeout: the model failed, and waiting to retry would pass the
                        // time limit. The caller gets the cause (a throttle says when to come
                        // back).
                        tracing::warn!(error = %e, "model call failed and the backoff would pass the time limit");
                        return Err(AgentError::Model { error: e, attempts });
                    }
                    tracing::warn!(error = %e, retry = failures, delay_ms = millis(delay), "model call failed, retrying");
                    self.retry_event(failures, delay, e.kind(), &e.to_string())
                        .await;
                    tokio::select! {
                        biased;
                        () = self.cancel.cancelled() => return Ok(TurnOutcome::Stopped(StopReason::Cancelled)),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                e => return Err(AgentError::Model { error: e, attempts }),
            }
        }
    }

    async fn retry_event(&self, attempt: u32, delay: Duration, kind: &str, message: &str) {
        if self.emitter.active() {
            self.emitter
                .send(AgentEvent::Retry {
                    attempt,
                    delay_ms: millis(delay),
                    error_kind: kind.to_owned(),
                    message: message.to_owned(),
                })
                .await;
        }
    }

    async fn forward(&self, event: ModelEvent) {
        if !self.emitter.active() {
            return;
        }
        let event = match event {
            ModelEvent::TextDelta(text) => AgentEvent::TextDelta { text },
            ModelEvent::ReasoningDelta { text, signature } => {
                AgentEvent::ReasoningDelta { text, signature }
            }
            ModelEvent::ToolUseStart { tool_use_id, name } => {
                AgentEvent::ToolUseStart { tool_use_id, name }
            }
            ModelEvent::ToolInputDelta { tool_use_id, delta } => {
                AgentEvent::ToolInputDelta { tool_use_id, delta }
            }
            _ => return,
        };
        self.emitter.send(event).await;
    }

    /// Runs the tool uses of the last message and appends their results. Returns the number of
    /// calls and, if the run must stop, why.
    async fn tool_batch(&mut self, resume: bool) -> Result<(u32, Option<StopReason>), AgentError> {
        let agent = self.agent;
        let tools = self.tools.clone().unwrap_or_else(|| agent.tools.current());
        let scope = CallScope {
            session_id: self.key.shared_session_id().clone(),
            actor_id: self.actor_id.clone(),
            state: self.state.clone(),
            trace: self.trace.clone().map(|cx| (agent.telemetry.clone(), cx)),
            progress: match &self.emitter.tx {
                Some(tx) => {
                    let tx = tx.clone();
                    ProgressReporter::new(
                        String::new(),
                        std::sync::Arc::new(move |p| {
                            // Never block the tool: a lagging consumer loses progress, not results.
                            let _ = tx.try_send(Ok(AgentEvent::ToolProgress(p)));
                        }),
                    )
                }
                None => ProgressReporter::default(),
            },
            interrupts: self.interrupts.clone(),
        };
        let tools_cancel = self.cancel.child_token();
        let mut timed_out = false;
        let tripped;
        // One slot per tool use, in request order: repeats are answered by the loop guard, the
        // rest by the executor.
        let mut results: Vec<Option<(ToolResult, bool)>>;
        // The calls as hooks left them (their input may be rewritten), when there are hooks.
        let hooked_uses: Vec<ToolUse>;
        // Why a hook stopped the run during this batch.
        let mut batch_stop: Option<String> = None;
        // Calls a hook held for an answer: their batch position and id.
        let mut held: Vec<(usize, String)> = Vec::new();
        {
            let uses: Vec<&ToolUse> = self
                .history
                .messages()
                .last()
                .map(|m| m.tool_uses().collect())
                .unwrap_or_default();
            let screened = self.calls.screen(&agent.loop_guard, &uses);
            tripped = screened.tripped;
            results = Vec::with_capacity(uses.len());
            let mut to_run: Vec<&ToolUse> = Vec::with_capacity(uses.len());
            for (u, answer) in uses.iter().zip(screened.answers) {
                // A result recorded before the process died, or (resuming) the policy's answer
                // for a call that may or may not have taken effect.
                // A call interrupted for an answer it now has runs again, whatever it left.
                let answered = self
                    .checkpoint
                    .interrupts
                    .iter()
                    .any(|i| i.tool_use_id == u.tool_use_id && i.response.is_some());
                let answer = self
                    .checkpoint
                    .completed_tool_results
                    .iter()
                    .find(|r| !answered && r.tool_use_id == u.tool_use_id)
                    .cloned()
                    .or_else(|| {
                        let rerun = answered
                            || match agent.resume_policy {
                                ResumePolicy::RerunAll => true,
                                ResumePolicy::InterruptAll => false,
                                ResumePolicy::RerunIdempotent => {
                                    tools.get(&u.name).is_some_and(|t| t.idempotent())
                                }
                            };
                        (resume && !rerun)
                            .then(|| ToolResult::error(&u.tool_use_id, INTERRUPTED_TEXT))
                    })
                    .or(answer);
                match answer {
                    Some(result) => {
                        if self.emitter.active() {
                            self.emitter
                                .send(AgentEvent::ToolResult {
                                    result: result.clone(),
                                })
                                .await;
                        }
                        results.push(Some((result, false)));
                    }
                    None => {
                        to_run.push(u);
                        results.push(None);
                    }
                }
            }
            // The batch position of each call in `to_run`, when hooks changed which run.
            let mut hooked_slots: Option<Vec<usize>> = None;
            if !agent.hooks.is_empty() && !to_run.is_empty() {
                let positions: Vec<usize> = results
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.is_none())
                    .map(|(i, _)| i)
                    .collect();
                let mut kept = Vec::with_capacity(to_run.len());
                let mut kept_slots = Vec::with_capacity(to_run.len());
                for (&u, &slot) in to_run.iter().zip(&positions) {
                    let mut call = u.clone();
                    let mut answer = None;
                    if batch_stop.is_none() {
                        let mut ctx = BeforeToolCall {
                            run: self.info(),
                            tool_use: &mut call,
                            tool: tools.specs().iter().find(|s| s.name == u.name),
                            answer: None,
                            interrupts: &self.interrupts,
                            interrupted: false,
                        };
                        let dispatched = agent
                            .hooks
                            .dispatch(
                                "before_tool_call",
                                false,
                                self.deadline,
                                &mut ctx,
                                |h, c| h.before_tool_call(c),
                            )
                            .await;
                        answer = ctx.answer.take();
                        let interrupted = ctx.interrupted;
                        let RunInfo { events, stop, .. } = ctx.run;
                        self.send_all(events).await;
                        dispatched?;
                        batch_stop = stop;
                        if interrupted && answer.is_none() {
                            // Waits for its answer: neither run nor answered.
                            held.push((slot, u.tool_use_id.clone()));
                            continue;
                        }
                        if interrupted {
                            // Asked, then denied or answered by a later hook: no question.
                            self.interrupts.withdraw(&u.tool_use_id);
                        }
                    }
                    if answer.is_none()
                        && let Some(reason) = &batch_stop
                    {
                        answer = Some(ToolResult::error(
                            &u.tool_use_id,
                            format!("Tool call not run: the run was stopped ({reason})"),
                        ));
                    }
                    match answer {
                        Some(result) => {
                            if self.emitter.active() {
                                self.emitter
                                    .send(AgentEvent::ToolResult {
                                        result: result.clone(),
                                    })
                                    .await;
                            }
                            results[slot] = Some((result, false));
                        }
                        None => {
                            kept.push(call);
                            kept_slots.push(slot);
                        }
                    }
                }
                hooked_slots = Some(kept_slots);
                hooked_uses = kept;
                to_run = hooked_uses.iter().collect();
            }
            // The executor's index is a position in `to_run`; this maps it to the batch's.
            let slots: Vec<usize> = hooked_slots.unwrap_or_else(|| {
                results
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.is_none())
                    .map(|(i, _)| i)
                    .collect()
            });
            let mut running = to_run.len();
            let mut stream = std::pin::pin!(execute_stream(
                &tools,
                &agent.executor,
                &to_run,
                &scope,
                &tools_cancel
            ));
            loop {
                tokio::select! {
                    biased;
                    item = stream.next() => match item {
                        Some((index, result, cancelled)) => {
                            running -= 1;
                            let slot = slots.get(index).copied();
                            // The loop guard notes a result another wording already got.
                            let mut result = match slot.and_then(|i| uses.get(i)) {
                                Some(u) if !cancelled => {
                                    self.calls.remember(&agent.loop_guard, u, result)
                                }
                                _ => result,
                            };
                            if !agent.hooks.is_empty()
                                && !cancelled
                                && let Some(&executed) = to_run.get(index)
                            {
                                let mut ctx = AfterToolCall {
                                    run: self.info(),
                                    tool_use: executed,
                                    result: &mut result,
                                };
                                let dispatched = agent
                                    .hooks
                                    .dispatch("after_tool_call", true, self.deadline, &mut ctx, |h, c| {
                                        h.after_tool_call(c)
                                    })
                                    .await;
                                let RunInfo { events, stop, .. } = ctx.run;
                                self.send_all(events).await;
                                dispatched?;
                                if let Some(reason) = stop {
                                    batch_stop.get_or_insert(reason);
                                }
                            }
                            if self.emitter.active() {
                                self.emitter.send(AgentEvent::ToolResult { result: result.clone() }).await;
                            }
                            // The batch's message is written when every call is done; a result
                            // that completes while others still run is checkpointed now, so a
                            // process that dies meanwhile does not lose it (and a resumed run
                            // does not run it again).
                            // (Not the error of a call that waits for an answer: it runs again.)
                            if running > 0
                                && !cancelled
                                && !self.interrupts.waits(&result.tool_use_id)
                            {
                                self.checkpoint.completed_tool_results.push(result.clone());
                                persist(
                                    agent,
                                    &self.key,
                                    self.deadline,
                                    &self.state,
                                    &self.window,
                                    &mut self.checkpoint,
                                    &mut self.saved,
                                )
                                .await?;
                            }
                            if let Some(i) = slot {
                                results[i] = Some((result, cancelled));
                            }
                        }
                        None => break,
                    },
                    () = sleep_until_opt(self.deadline), if !timed_out => {
                        timed_out = true;
                        tools_cancel.cancel();
                    }
                }
            }
        }
        let raised = self.interrupts.take_raised();
        if !raised.is_empty() && !self.cancel.is_cancelled() && !timed_out && batch_stop.is_none() {
            // Questions for a person: the other calls' results are recorded, nothing is
            // appended, and the run stops until the answers come.
            let waiting: std::collections::HashSet<&str> =
                raised.iter().map(|i| i.tool_use_id.as_str()).collect();
            let calls = u32::try_from(results.len()).unwrap_or(u32::MAX);
            self.checkpoint
                .completed_tool_results
                .retain(|r| !waiting.contains(r.tool_use_id.as_str()));
            for (result, cancelled) in results.into_iter().flatten() {
                if !cancelled
                    && !waiting.contains(result.tool_use_id.as_str())
                    && !self
                        .checkpoint
                        .completed_tool_results
                        .iter()
                        .any(|r| r.tool_use_id == result.tool_use_id)
                {
                    self.checkpoint.completed_tool_results.push(result);
                }
            }
            // Answers already given stay (a call may ask several questions, one at a time).
            self.checkpoint.interrupts.retain(|i| i.response.is_some());
            self.checkpoint.interrupts.extend(raised);
            self.checkpoint.interrupted_message = self.history.messages().last().cloned();
            self.save_now().await?;
            return Ok((calls, Some(StopReason::Interrupted)));
        }
        // Cut short before the answers could be asked for: held calls are answered as
        // interrupted, so every tool use keeps its result.
        for (slot, id) in held {
            if let Some(r) = results.get_mut(slot)
                && r.is_none()
            {
                *r = Some((ToolResult::error(id, INTERRUPTED_TEXT), false));
            }
        }
        let results: Vec<(ToolResult, bool)> = results.into_iter().flatten().collect();
        let calls = u32::try_from(results.len()).unwrap_or(u32::MAX);
        let user_cancelled = self.cancel.is_cancelled();
        let content = results
            .into_iter()
            .map(|(result, cancelled)| {
                if cancelled && timed_out && !user_cancelled {
                    ContentBlock::ToolResult(ToolResult::error(result.tool_use_id, TIME_LIMIT_TEXT))
                } else {
                    ContentBlock::ToolResult(result)
                }
            })
            .collect();
        self.append(Message::new(Role::User, content)).await?;
        // Recorded results now live in the history; the checkpoint forgets them (and the
        // questions they answered) at the next save.
        self.checkpoint.completed_tool_results.clear();
        self.checkpoint.interrupts.clear();
        self.checkpoint.interrupted_message = None;
        self.save_if_changed().await?;
        let stop = if user_cancelled {
            Some(StopReason::Cancelled)
        } else if timed_out {
            Some(StopReason::Timeout)
        } else if let Some(reason) = batch_stop.or_else(|| self.hook_stop.take()) {
            self.hook_stop = Some(reason);
            Some(StopReason::HookStopped)
        } else if tripped || self.calls.take_tripped() {
            tracing::warn!(session = %self.key.session_id(), "the model keeps repeating tool calls (the same arguments, or new ones that find the same): tool use ended");
            Some(StopReason::ToolLoop)
        } else {
            None
        };
        Ok((calls, stop))
    }
}
