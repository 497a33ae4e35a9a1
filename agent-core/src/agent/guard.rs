//! The loop guard: a model that calls the same tool with the same arguments again, within one
//! invocation, gets the earlier result back (with a note) instead of a second run of the tool,
//! and a model that keeps doing so has its tool use ended.
//!
//! Small models are prone to this: they call a tool, get its result, and call it again with the
//! same arguments until the turn limit, ending with no answer. The guard makes such a run end
//! early with [`StopReason::ToolLoop`](super::StopReason::ToolLoop), after which the loop asks
//! the model for a final answer without tools (see
//! [`AgentBuilder::final_answer_timeout`](super::AgentBuilder::final_answer_timeout)).

use std::collections::HashSet;

use serde_json::Value;

use crate::message::{ToolResult, ToolResultContent, ToolResultStatus, ToolUse};

/// The note appended to a result that answers a repeated call.
pub const REPEATED_CALL_NOTE: &str = "Note: this call repeats an earlier one with the same tool and the same arguments, so it \
was not run again; the result above is the earlier one and will not change. Do not call this \
tool with these arguments again: answer the user with the results you have, or call a \
different tool.";

/// The note appended to a result that an earlier call of the same tool, with other arguments,
/// returned as well.
pub const SAME_RESULT_NOTE: &str = "Note: an earlier call of this tool, with other arguments, returned exactly this result. \
If you are searching, other wording will not find more: answer the user with what you have, or \
call a different tool.";

/// How the loop treats repeated identical tool calls (same tool name and the same arguments,
/// compared as JSON values) within one invocation. On by default.
///
/// A call with other arguments that succeeds with exactly what an earlier successful call of the
/// same tool returned is counted too (its result gets [`SAME_RESULT_NOTE`]): a model that keeps
/// rephrasing a search that finds nothing new (`recall` with one wording after another) is
/// looping as surely as one that repeats its arguments. Such results have their own, larger
/// allowance (`max_same_results`, default 3), since different questions can have one answer
/// ("sunny" in two cities); errors never count (a timeout, an unknown tool).
///
/// A repeat is answered with the earlier call's result and [`REPEATED_CALL_NOTE`], without
/// running the tool again. After `max_repeats` such answers, the next repeat ends the run's tool
/// use with [`StopReason::ToolLoop`](super::StopReason::ToolLoop). Calls that were cancelled or
/// timed out are not remembered, so they may be retried. Tools whose result legitimately
/// changes between identical calls (polling a job, reading a clock) can be exempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopGuard {
    enabled: bool,
    max_repeats: u32,
    max_same_results: u32,
    exempt: HashSet<String>,
}

impl Default for LoopGuard {
    fn default() -> Self {
        Self {
            enabled: true,
            max_repeats: 2,
            max_same_results: 3,
            exempt: HashSet::new(),
        }
    }
}

impl LoopGuard {
    /// The default guard: on, two repeats answered, the third ends tool use.
    pub fn new() -> Self {
        Self::default()
    }

    /// No guard: every call runs, however often it repeats (bounded only by the limits).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// How many repeated calls are answered from earlier results before the next one ends the
    /// run's tool use (default 2; 0 ends it at the first repeat).
    pub fn max_repeats(mut self, n: u32) -> Self {
        self.max_repeats = n;
        self
    }

    /// How many calls with new arguments may return what an earlier call of their tool returned
    /// before the next one ends the run's tool use (default 3).
    pub fn max_same_results(mut self, n: u32) -> Self {
        self.max_same_results = n;
        self
    }

    /// Lets a tool be called repeatedly with the same arguments; its calls always run.
    pub fn exempt(mut self, tool_name: impl Into<String>) -> Self {
        self.exempt.insert(tool_name.into());
        self
    }
}

/// What one invocation has seen: its completed calls and the repeats answered so far.
#[derive(Debug, Default)]
pub(crate) struct CallMemory {
    calls: Vec<(String, Value, ToolResult)>,
    repeats: u32,
    same_results: u32,
    /// Whether repeated results went past the allowance (tool use ends after this batch).
    tripped: bool,
}

/// The guard's verdict on one batch.
pub(crate) struct Screened {
    /// For each tool use of the batch, in order: the answer to a repeat, or `None` to run it.
    pub(crate) answers: Vec<Option<ToolResult>>,
    /// Whether the repeats went past the allowance: the run's tool use ends after this batch.
    pub(crate) tripped: bool,
}

impl CallMemory {
    /// Sorts a batch into calls to run and repeats answered from earlier results.
    pub(crate) fn screen(&mut self, guard: &LoopGuard, uses: &[&ToolUse]) -> Screened {
        let mut tripped = false;
        let answers = uses
            .iter()
            .map(|u| {
                if !guard.enabled || guard.exempt.contains(&u.name) {
                    return None;
                }
                let earlier = self
                    .calls
                    .iter()
                    .find(|(name, input, _)| *name == u.name && *input == u.input)?;
                self.repeats = self.repeats.saturating_add(1);
                if self.repeats > guard.max_repeats {
                    tripped = true;
                }
                let mut content = earlier.2.content.clone();
                // Its own paragraph: result texts are concatenated when rendered.
                content.push(ToolResultContent::Text(format!("\n\n{REPEATED_CALL_NOTE}")));
                Some(ToolResult {
                    tool_use_id: u.tool_use_id.clone(),
                    status: earlier.2.status,
                    content,
                })
            })
            .collect();
        Screened { answers, tripped }
    }

    /// Remembers a call that ran to completion (not cancelled or timed out), and returns its
    /// result: with [`SAME_RESULT_NOTE`] when an earlier call of the tool with other arguments
    /// returned the same (a repeat, counted against the allowance).
    pub(crate) fn remember(
        &mut self,
        guard: &LoopGuard,
        tool_use: &ToolUse,
        mut result: ToolResult,
    ) -> ToolResult {
        if self
            .calls
            .iter()
            .any(|(name, input, _)| *name == tool_use.name && *input == tool_use.input)
        {
            return result;
        }
        let same_result = guard.enabled
            && result.status == ToolResultStatus::Success
            && !guard.exempt.contains(&tool_use.name)
            && self.calls.iter().any(|(name, _, earlier)| {
                *name == tool_use.name
                    && earlier.status == ToolResultStatus::Success
                    && earlier.content == result.content
            });
        self.calls.push((
            tool_use.name.clone(),
            tool_use.input.clone(),
            result.clone(),
        ));
        if same_result {
            self.same_results = self.same_results.saturating_add(1);
            if self.same_results > guard.max_same_results {
                self.tripped = true;
            }
            result
                .content
                .push(ToolResultContent::Text(format!("\n\n{SAME_RESULT_NOTE}")));
        }
        result
    }

    /// Whether repeated results have gone past the allowance since the last call; clears it.
    pub(crate) fn take_tripped(&mut self) -> bool {
        std::mem::take(&mut self.tripped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(id: &str, name: &str, input: Value) -> ToolUse {
        ToolUse {
            tool_use_id: id.into(),
            name: name.into(),
            input,
        }
    }

    #[test]
    fn repeats_are_answered_then_trip() {
        let guard = LoopGuard::new().max_repeats(1);
        let mut memory = CallMemory::default();
        let first = call("1", "weather", json!({"city": "Lisbon", "days": 1}));
        let s = memory.screen(&guard, &[&first]);
        assert!(s.answers[0].is_none() && !s.tripped);
        memory.remember(&guard, &first, ToolResult::success("1", "sunny"));

        // Same arguments in another key order: a repeat, answered with the earlier result.
        let again = call("2", "weather", json!({"days": 1, "city": "Lisbon"}));
        let other = call("3", "weather", json!({"city": "Porto", "days": 1}));
        let s = memory.screen(&guard, &[&again, &other]);
        let answer = s.answers[0].as_ref().expect("answered");
        assert_eq!(answer.tool_use_id, "2");
        assert_eq!(answer.content[0], ToolResultContent::Text("sunny".into()));
        assert_eq!(
            answer.content[1],
            ToolResultContent::Text(format!("\n\n{REPEATED_CALL_NOTE}"))
        );
        assert!(s.answers[1].is_none());
        assert!(!s.tripped);

        let third = call("4", "weather", json!({"city": "Lisbon", "days": 1}));
        assert!(memory.screen(&guard, &[&third]).tripped);
    }

    #[test]
    fn disabled_and_exempt_tools_always_run() {
        let mut memory = CallMemory::default();
        let first = call("1", "clock", json!({}));
        memory.remember(&LoopGuard::new(), &first, ToolResult::success("1", "12:00"));
        let again = call("2", "clock", json!({}));
        for guard in [LoopGuard::disabled(), LoopGuard::new().exempt("clock")] {
            let s = memory.screen(&guard, &[&again]);
            assert!(s.answers[0].is_none() && !s.tripped);
        }
    }

    #[test]
    fn rephrased_calls_that_find_nothing_new_are_repeats() {
        let guard = LoopGuard::new().max_same_results(1);
        let mut memory = CallMemory::default();
        let nothing = |id: &str| ToolResult::success(id, r#"{"memories":[]}"#);
        let first = memory.remember(
            &guard,
            &call("1", "recall", json!({"query": "food"})),
            nothing("1"),
        );
        assert_eq!(first.content.len(), 1, "a first result is left alone");
        // Other arguments, other result: progress, not a repeat.
        let other = ToolResult::success("2", r#"{"memories":["vegetarian"]}"#);
        let r = memory.remember(
            &guard,
            &call("2", "recall", json!({"query": "diet"})),
            other,
        );
        assert_eq!(r.content.len(), 1);
        // Another tool with the same result is not a repeat either.
        let r = memory.remember(
            &guard,
            &call("3", "search", json!({"q": "x"})),
            nothing("3"),
        );
        assert_eq!(r.content.len(), 1);
        assert!(!memory.take_tripped());
        // Other wording, the same nothing: a repeat, noted.
        let r = memory.remember(
            &guard,
            &call("4", "recall", json!({"query": "meals"})),
            nothing("4"),
        );
        assert_eq!(
            r.content.last(),
            Some(&ToolResultContent::Text(format!("\n\n{SAME_RESULT_NOTE}")))
        );
        assert!(!memory.take_tripped(), "one repeat is allowed");
        memory.remember(
            &guard,
            &call("5", "recall", json!({"query": "eat"})),
            nothing("5"),
        );
        assert!(memory.take_tripped(), "the second goes past the allowance");
        assert!(!memory.take_tripped(), "taken once");
        // Exempt tools and a disabled guard never count.
        let mut memory = CallMemory::default();
        for guard in [
            LoopGuard::disabled(),
            LoopGuard::new().max_repeats(0).exempt("recall"),
        ] {
            for i in 0..3 {
                let id = format!("{i}");
                let r = memory.remember(
                    &guard,
                    &call(&id, "recall", json!({"query": id})),
                    nothing(&id),
                );
                assert_eq!(r.content.len(), 1);
            }
            assert!(!memory.take_tripped());
        }
        // Errors never count: a tool that times out for every input is not a loop.
        let guard = LoopGuard::new().max_same_results(0);
        let mut memory = CallMemory::default();
        for i in 0..3 {
            let id = format!("e{i}");
            let failed = ToolResult::error(&id, "tool `search` timed out after 100 ms");
            let r = memory.remember(&guard, &call(&id, "search", json!({ "q": id })), failed);
            assert_eq!(r.content.len(), 1);
        }
        assert!(!memory.take_tripped());
    }
}
