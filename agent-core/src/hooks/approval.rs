//! [`ToolApproval`]: a per-tool policy of allow, deny or ask a person, as a hook.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::{BeforeToolCall, Hook, HookError, RunInfo};
use crate::message::ToolUse;

/// What a tool call gets under a [`ToolApproval`] policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// Runs without asking.
    Allow,
    /// Never runs: the model is told the call was denied by policy.
    Deny,
    /// Runs if the [`Approver`] approves it.
    Ask,
}

/// A person's (or a service's) answer to "may this call run?".
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Approval {
    /// Run it.
    Approve,
    /// Do not run it; the model is told why.
    Deny {
        /// Why, in words the model can act on ("the user declined: too expensive").
        reason: String,
    },
}

/// Asks whether a call may run: a terminal prompt, a message to the user's app, a ticket.
#[async_trait]
pub trait Approver: Send + Sync + 'static {
    /// Decides on `call`, for the run `run` describes.
    async fn approve(&self, run: &RunInfo<'_>, call: &ToolUse) -> Result<Approval, HookError>;
}

/// A per-tool approval policy: each tool is allowed, denied or asked about; tools without a
/// rule get the default rule (allow, unless set). A denied call does not run and the model is
/// told so (it can apologise, or choose another way); the run goes on. Every decision is also
/// emitted as a custom `tool_approval` event (`{"tool", "tool_use_id", "decision", "reason"}`).
///
/// ```
/// use agent_core::async_trait;
/// use agent_core::hooks::{Approval, Approver, HookError, RunInfo, Rule, ToolApproval};
/// use agent_core::message::ToolUse;
///
/// struct AskOnTerminal;
/// #[async_trait]
/// impl Approver for AskOnTerminal {
///     async fn approve(&self, _run: &RunInfo<'_>, call: &ToolUse) -> Result<Approval, HookError> {
///         eprintln!("run {} with {}? (assuming no)", call.name, call.input);
///         Ok(Approval::Deny { reason: "the user said no".into() })
///     }
/// }
///
/// let policy = ToolApproval::new()
///     .rule("get_weather", Rule::Allow)
///     .rule("delete_account", Rule::Deny)
///     .rule("book_trip", Rule::Ask)
///     .default_rule(Rule::Deny)
///     .approver(AskOnTerminal);
/// ```
#[derive(Clone)]
pub struct ToolApproval {
    rules: HashMap<String, Rule>,
    default: Rule,
    approver: Option<Arc<dyn Approver>>,
    timeout: Duration,
}

impl std::fmt::Debug for ToolApproval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolApproval")
            .field("rules", &self.rules)
            .field("default", &self.default)
            .field("approver", &self.approver.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for ToolApproval {
    fn default() -> Self {
        Self::new()
    }
}

impl ToolApproval {
    /// A policy that allows every tool until rules say otherwise; an approver is asked for
    /// at most 5 minutes per call.
    pub fn new() -> Self {
        Self {
            rules: HashMap::new(),
            default: Rule::Allow,
            approver: None,
            timeout: Duration::from_secs(300),
        }
    }

    /// The rule for tool `name` (the name the model calls it by).
    pub fn rule(mut self, name: impl Into<String>, rule: Rule) -> Self {
        self.rules.insert(name.into(), rule);
        self
    }

    /// The rule for tools without one of their own.
    pub fn default_rule(mut self, rule: Rule) -> Self {
        self.default = rule;
        self
    }

    /// Who is asked about [`Rule::Ask`] calls, while the run waits. Without one, such calls
    /// interrupt the run ([`crate::interrupt`]) with a question named `approval` (reason:
    /// `{"tool", "input"}`), answered through [`Session::respond`](crate::Session::respond) with
    /// `true`, `false`, or `{"approve": bool, "reason": "..."}`, on any replica, at any later time.
    pub fn approver(mut self, approver: impl Approver) -> Self {
        self.approver = Some(Arc::new(approver));
        self
    }

    /// How long an approver may take per call (default 5 minutes; the run's time limit still
    /// applies). Past it, the run fails with [`AgentError::Hook`](crate::AgentError::Hook).
    pub fn approval_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The rule a call of tool `name` gets.
    pub fn rule_for(&self, name: &str) -> Rule {
        self.rules.get(name).copied().unwrap_or(self.default)
    }
}

/// A person's answer to an `approval` interrupt: `true`, `false`, or `{"approve", "reason"}`.
fn read_answer(answer: &serde_json::Value) -> Approval {
    let approve = answer
        .as_bool()
        .or_else(|| answer["approve"].as_bool())
        .unwrap_or(false);
    if approve {
        Approval::Approve
    } else {
        Approval::Deny {
            reason: answer["reason"]
                .as_str()
                .map_or_else(|| "the user declined".to_owned(), str::to_owned),
        }
    }
}

#[async_trait]
impl Hook for ToolApproval {
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "tool_approval".into()
    }

    fn timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    async fn before_tool_call(&self, ctx: &mut BeforeToolCall<'_>) -> Result<(), HookError> {
        if ctx.answered().is_some() {
            return Ok(());
        }
        let decision = match self.rule_for(&ctx.tool_use.name) {
            Rule::Allow => return Ok(()),
            Rule::Deny => Approval::Deny {
                reason: format!("policy does not allow `{}`", ctx.tool_use.name),
            },
            Rule::Ask => match &self.approver {
                Some(approver) => approver.approve(&ctx.run, ctx.tool_use).await?,
                None => {
                    let question = json!({"tool": ctx.tool_use.name, "input": ctx.tool_use.input});
                    match ctx.interrupt("approval", question) {
                        // The run stops until a person answers.
                        None => return Ok(()),
                        Some(answer) => read_answer(&answer),
                    }
                }
            },
        };
        let (name, reason) = match &decision {
            Approval::Approve => ("approved", None),
            Approval::Deny { reason } => ("denied", Some(reason.clone())),
        };
        let event = json!({
            "tool": ctx.tool_use.name,
            "tool_use_id": ctx.tool_use.tool_use_id,
            "decision": name,
            "reason": reason,
        });
        ctx.run.emit("tool_approval", event);
        if let Approval::Deny { reason } = decision {
            ctx.deny(reason);
        }
        Ok(())
    }
}
