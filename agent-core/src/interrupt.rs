//! Interrupts: a tool or a hook stops the run to ask a person, and any replica resumes it with
//! the answers.
//!
//! A tool asks with [`ToolContext::interrupt`](crate::tool::ToolContext::interrupt), a hook with
//! [`BeforeToolCall::interrupt`](crate::hooks::BeforeToolCall::interrupt). The run then stops
//! with [`StopReason::Interrupted`](crate::StopReason::Interrupted) and the questions in
//! [`AgentResult::interrupts`](crate::AgentResult::interrupts); the other calls of the batch
//! finish and their results are recorded with the session. Nothing more is stored until the
//! answers come: [`Session::respond`](crate::Session::respond) (on any replica) runs the
//! interrupted calls again, where the same question now returns its answer, reuses the
//! recorded results of the others, and the loop goes on. A new prompt instead of answers
//! abandons the questions: the interrupted calls are answered as interrupted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who asks: a tool, or a hook before the tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asker {
    Tool,
    Hook,
}

/// A question for a person, raised by a tool call or a hook on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interrupt {
    /// Its id, as Strands makes it (`v1:tool_call:<tool use id>:<uuid5 of the name>` for a
    /// tool's, `v1:before_tool_call:...` for a hook's), so either runtime can answer it; treat
    /// it as opaque and answer with it.
    pub id: String,
    /// What is asked, as the tool or hook names it (`confirm_booking`).
    pub name: String,
    /// What the person needs to decide (any JSON: a text, the booking's details).
    pub reason: Value,
    /// The tool call it belongs to.
    pub tool_use_id: String,
    /// The answer, once given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
}

impl Interrupt {
    /// The id of the question `name` a tool asked in call `tool_use_id` (Strands' scheme).
    pub fn tool_id(tool_use_id: &str, name: &str) -> String {
        format!("v1:tool_call:{tool_use_id}:{}", name_uuid(name))
    }

    /// The id of the question `name` a hook asked before call `tool_use_id` (Strands'
    /// scheme).
    pub fn hook_id(tool_use_id: &str, name: &str) -> String {
        format!("v1:before_tool_call:{tool_use_id}:{}", name_uuid(name))
    }

    /// The tool call an interrupt id names, for ids of Strands' scheme.
    pub fn tool_use_of(id: &str) -> Option<&str> {
        let rest = id
            .strip_prefix("v1:tool_call:")
            .or_else(|| id.strip_prefix("v1:before_tool_call:"))?;
        // The name's uuid is the last 36 characters, after a colon.
        let cut = rest.len().checked_sub(37)?;
        (rest.as_bytes().get(cut) == Some(&b':')).then(|| &rest[..cut])
    }
}

/// `uuid5(NAMESPACE_OID, name)`, as Strands names its interrupts.
fn name_uuid(name: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes())
}

/// An answer to an [`Interrupt`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterruptResponse {
    /// The interrupt's id.
    pub id: String,
    /// The answer (any JSON: `true`, `"yes"`, a form's fields).
    pub response: Value,
}

impl InterruptResponse {
    /// Answers interrupt `id` with `response`.
    pub fn new(id: impl Into<String>, response: Value) -> Self {
        Self {
            id: id.into(),
            response,
        }
    }
}

/// The answers a resumed run has, and the questions its calls raise: shared by the calls of a
/// batch and the loop.
#[derive(Debug, Clone, Default)]
pub(crate) struct Interrupts {
    pub(crate) responses: Arc<HashMap<String, Value>>,
    pub(crate) raised: Arc<Mutex<Vec<Interrupt>>>,
}

impl Interrupts {
    pub(crate) fn with_responses(responses: HashMap<String, Value>) -> Self {
        Self {
            responses: Arc::new(responses),
            raised: Arc::default(),
        }
    }

    /// The answer to `id`, or the question recorded as raised.
    pub(crate) fn ask(
        &self,
        asker: Asker,
        tool_use_id: &str,
        name: &str,
        reason: Value,
    ) -> Option<Value> {
        let id = match asker {
            Asker::Tool => Interrupt::tool_id(tool_use_id, name),
            Asker::Hook => Interrupt::hook_id(tool_use_id, name),
        };
        if let Some(answer) = self.responses.get(&id) {
            return Some(answer.clone());
        }
        let mut raised = self.raised.lock().unwrap_or_else(|e| e.into_inner());
        if !raised.iter().any(|i| i.id == id) {
            raised.push(Interrupt {
                id,
                name: name.to_owned(),
                reason,
                tool_use_id: tool_use_id.to_owned(),
                response: None,
            });
        }
        None
    }

    /// Whether a call asked a question that waits for its answer.
    pub(crate) fn waits(&self, tool_use_id: &str) -> bool {
        self.raised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|i| i.tool_use_id == tool_use_id)
    }

    /// Withdraws the questions of a call that was answered after all (a later hook denied it).
    pub(crate) fn withdraw(&self, tool_use_id: &str) {
        self.raised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|i| i.tool_use_id != tool_use_id);
    }

    pub(crate) fn take_raised(&self) -> Vec<Interrupt> {
        std::mem::take(&mut *self.raised.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_strands_scheme_and_name_their_call() {
        // Python: f"v1:tool_call:{tool_use_id}:{uuid.uuid5(uuid.NAMESPACE_OID, name)}"
        let id = Interrupt::tool_id("tooluse_abc:1", "confirm_booking");
        assert_eq!(
            id,
            "v1:tool_call:tooluse_abc:1:34cf2e5c-27be-52e7-80df-0c2c10d927ed"
        );
        assert_eq!(Interrupt::tool_use_of(&id), Some("tooluse_abc:1"));
        let hook = Interrupt::hook_id("t2", "approval");
        assert_eq!(
            hook,
            "v1:before_tool_call:t2:225d3982-9eb3-5ce9-93ca-f09a444307f7"
        );
        assert_eq!(Interrupt::tool_use_of(&hook), Some("t2"));
        assert_eq!(Interrupt::tool_use_of("t2:approval"), None);
        assert_eq!(Interrupt::tool_use_of("v1:tool_call:"), None);
    }
}
