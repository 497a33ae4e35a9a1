//! The one place where history invariants are enforced: at append, at restore and when a
//! context window is cut.
//!
//! The rules:
//! - the first message is a user prompt (a user message without tool results);
//! - an assistant message never follows an assistant message;
//! - an assistant message with tool uses is followed by a user message that starts with exactly
//!   one result per tool use, in the same order (it may carry more content after them);
//! - a tool result appears nowhere else;
//! - tool-use ids are unique within a message.
//!
//! The last message may be an assistant message whose tool uses are not answered yet: that is a
//! run interrupted between the model turn and its tool batch, see [`History::pending_tool_uses`].

use crate::message::{ContentBlock, Message, Role, ToolUse};

/// Why a message cannot be appended, or a history cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The conversation must start with a user prompt.
    #[error(
        "message {index}: a conversation must start with a user message that is not a tool result"
    )]
    MustStartWithUser {
        /// Index of the offending message.
        index: usize,
    },
    /// Two assistant messages in a row.
    #[error("message {index}: an assistant message cannot follow another assistant message")]
    ConsecutiveAssistant {
        /// Index of the offending message.
        index: usize,
    },
    /// A tool use was not answered, or answered out of order or twice.
    #[error(
        "message {index}: expected the result of tool use `{expected}` at position {position}, found {found}"
    )]
    ToolResultMismatch {
        /// Index of the offending message.
        index: usize,
        /// The tool-use id that should have been answered.
        expected: String,
        /// Position in the message's content.
        position: usize,
        /// What was found instead.
        found: String,
    },
    /// A tool result that answers no tool use of the preceding assistant message.
    #[error("message {index}: tool result `{tool_use_id}` answers no pending tool use")]
    UnexpectedToolResult {
        /// Index of the offending message.
        index: usize,
        /// Its tool-use id.
        tool_use_id: String,
    },
    /// Tool results in an assistant message, or tool uses in a user message.
    #[error("message {index}: {what}")]
    MisplacedBlock {
        /// Index of the offending message.
        index: usize,
        /// What is misplaced.
        what: &'static str,
    },
    /// A message without content.
    #[error("message {index}: a message needs at least one content block")]
    Empty {
        /// Index of the offending message.
        index: usize,
    },
    /// Two tool uses with one id in one message.
    #[error("message {index}: duplicate tool use id `{tool_use_id}`")]
    DuplicateToolUseId {
        /// Index of the offending message.
        index: usize,
        /// The duplicated id.
        tool_use_id: String,
    },
}

/// A conversation history whose invariants hold by construction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    messages: Vec<Message>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a history, checking every message.
    pub fn restore(messages: Vec<Message>) -> Result<Self, HistoryError> {
        let mut history = Self {
            messages: Vec::with_capacity(messages.len()),
        };
        for m in messages {
            history.push(m)?;
        }
        Ok(history)
    }

    /// Appends a message if it keeps the invariants.
    pub fn push(&mut self, message: Message) -> Result<(), HistoryError> {
        check_next(self.messages.last(), &message, self.messages.len())?;
        self.messages.push(message);
        Ok(())
    }

    /// Every message of the session, oldest first (the model may see fewer: the
    /// conversation manager's window).
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether there are no messages.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Takes the messages out.
    pub fn into_messages(self) -> Vec<Message> {
        self.messages
    }

    /// Tool uses of the last message still waiting for their results (an interrupted run).
    pub fn pending_tool_uses(&self) -> Vec<&ToolUse> {
        match self.messages.last() {
            Some(m) if m.role == Role::Assistant => m.tool_uses().collect(),
            _ => Vec::new(),
        }
    }

    /// Whether a context may begin at `index`: a user prompt, so no tool result is orphaned.
    pub fn is_valid_start(&self, index: usize) -> bool {
        self.messages.get(index).is_some_and(Message::is_prompt)
    }
}

fn check_next(prev: Option<&Message>, next: &Message, index: usize) -> Result<(), HistoryError> {
    if next.content.is_empty() {
        return Err(HistoryError::Empty { index });
    }
    match next.role {
        Role::Assistant => {
            if next.tool_results().next().is_some() {
                return Err(HistoryError::MisplacedBlock {
                    index,
                    what: "an assistant message cannot carry tool results",
                });
            }
            let mut seen = std::collections::HashSet::new();
            for u in next.tool_uses() {
                if !seen.insert(u.tool_use_id.as_str()) {
                    return Err(HistoryError::DuplicateToolUseId {
                        index,
                        tool_use_id: u.tool_use_id.clone(),
                    });
                }
            }
            match prev {
                None => Err(HistoryError::MustStartWithUser { index }),
                Some(p) if p.role == Role::Assistant => {
                    Err(HistoryError::ConsecutiveAssistant { index })
                }
                Some(_) => Ok(()),
            }
        }
        Role::User => {
            if next.tool_uses().next().is_some() {
                return Err(HistoryError::MisplacedBlock {
                    index,
                    what: "a user message cannot carry tool uses",
                });
            }
            let pending: Vec<&ToolUse> = match prev {
                None => {
                    if !next.is_prompt() {
                        return Err(HistoryError::MustStartWithUser { index });
                    }
                    Vec::new()
                }
                Some(p) if p.role == Role::Assistant => p.tool_uses().collect(),
                Some(_) => Vec::new(),
            };
            // The first `pending.len()` blocks must be the results, in order.
            for (position, expected) in pending.iter().enumerate() {
                match next.content.get(position) {
                    Some(ContentBlock::ToolResult(r)) if r.tool_use_id == expected.tool_use_id => {}
                    other => {
                        return Err(HistoryError::ToolResultMismatch {
                            index,
                            expected: expected.tool_use_id.clone(),
                            position,
                            found: describe(other),
                        });
                    }
                }
            }
            if let Some(extra) = next.content[pending.len()..].iter().find_map(|b| match b {
                ContentBlock::ToolResult(r) => Some(r),
                _ => None,
            }) {
                return Err(HistoryError::UnexpectedToolResult {
                    index,
                    tool_use_id: extra.tool_use_id.clone(),
                });
            }
            Ok(())
        }
    }
}

fn describe(block: Option<&ContentBlock>) -> String {
    match block {
        None => "nothing".to_owned(),
        Some(ContentBlock::ToolResult(r)) => format!("the result of `{}`", r.tool_use_id),
        Some(ContentBlock::Text(_)) => "a text block".to_owned(),
        Some(_) => "another content block".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ToolResult, ToolResultContent, ToolResultStatus};
    use serde_json::json;

    fn tool_use(id: &str) -> ContentBlock {
        ContentBlock::ToolUse(ToolUse {
            tool_use_id: id.into(),
            name: "f".into(),
            input: json!({}),
        })
    }
    fn result(id: &str) -> ContentBlock {
        ContentBlock::ToolResult(ToolResult {
            tool_use_id: id.into(),
            status: ToolResultStatus::Success,
            content: vec![ToolResultContent::Text("ok".into())],
        })
    }

    #[test]
    fn accepts_a_valid_tool_round() {
        let h = History::restore(vec![
            Message::user("hi"),
            Message::new(Role::Assistant, vec![tool_use("a"), tool_use("b")]),
            Message::new(Role::User, vec![result("a"), result("b")]),
            Message::assistant("done"),
        ]);
        assert!(h.is_ok(), "{h:?}");
    }

    #[test]
    fn refuses_assistant_first_and_orphan_results() {
        assert_eq!(
            History::restore(vec![Message::assistant("x")]),
            Err(HistoryError::MustStartWithUser { index: 0 })
        );
        assert_eq!(
            History::restore(vec![Message::new(Role::User, vec![result("a")])]),
            Err(HistoryError::MustStartWithUser { index: 0 })
        );
        let err = History::restore(vec![
            Message::user("hi"),
            Message::assistant("x"),
            Message::new(Role::User, vec![result("a")]),
        ]);
        assert!(
            matches!(
                err,
                Err(HistoryError::UnexpectedToolResult { index: 2, .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_results_out_of_order_or_missing() {
        let base = vec![
            Message::user("hi"),
            Message::new(Role::Assistant, vec![tool_use("a"), tool_use("b")]),
        ];
        let mut swapped = base.clone();
        swapped.push(Message::new(Role::User, vec![result("b"), result("a")]));
        assert!(matches!(
            History::restore(swapped),
            Err(HistoryError::ToolResultMismatch {
                index: 2,
                position: 0,
                ..
            })
        ));
        let mut missing = base.clone();
        missing.push(Message::new(Role::User, vec![result("a")]));
        assert!(matches!(
            History::restore(missing),
            Err(HistoryError::ToolResultMismatch {
                index: 2,
                position: 1,
                ..
            })
        ));
        let mut twice = base;
        twice.push(Message::new(
            Role::User,
            vec![result("a"), result("b"), result("a")],
        ));
        assert!(matches!(
            History::restore(twice),
            Err(HistoryError::UnexpectedToolResult { .. })
        ));
    }

    #[test]
    fn pending_tool_uses_and_valid_starts() {
        let h = History::restore(vec![
            Message::user("hi"),
            Message::new(Role::Assistant, vec![tool_use("a")]),
        ])
        .expect("valid");
        assert_eq!(h.pending_tool_uses().len(), 1);
        assert!(h.is_valid_start(0));
        assert!(!h.is_valid_start(1));
        let mut h2 = History::new();
        assert_eq!(
            h2.push(Message::new(Role::User, vec![])),
            Err(HistoryError::Empty { index: 0 })
        );
        h2.push(Message::user("a")).expect("ok");
        h2.push(Message::assistant("b")).expect("ok");
        assert_eq!(
            h2.push(Message::assistant("c")),
            Err(HistoryError::ConsecutiveAssistant { index: 2 })
        );
        h2.push(Message::user("again"))
            .expect("consecutive prompts are allowed");
    }

    use proptest::prelude::*;

    proptest::proptest! {
        /// Any stored message sequence (as JSON a peer or a corrupt store could hold): a typed
        /// error or a history that keeps the invariants, never a panic.
        #[test]
        fn fuzz_stored_histories(
            messages in proptest::collection::vec(
                (
                    proptest::bool::ANY,
                    proptest::collection::vec(
                        proptest::prop_oneof![
                            "[a-z]{0,3}".prop_map(|t| json!({"text": t})),
                            (0u8..3).prop_map(|i| json!({"toolUse": {"toolUseId": i.to_string(), "name": "t", "input": {}}})),
                            (0u8..3, proptest::bool::ANY).prop_map(|(i, ok)| json!({"toolResult": {"toolUseId": i.to_string(), "status": if ok { "success" } else { "error" }, "content": [{"text": "r"}]}})),
                            proptest::strategy::Just(json!({"unknown": 1})),
                        ],
                        0..4,
                    ),
                ),
                0..8,
            ),
        ) {
            let parsed: Vec<Message> = messages
                .into_iter()
                .filter_map(|(user, content)| {
                    serde_json::from_value(json!({"role": if user { "user" } else { "assistant" }, "content": content})).ok()
                })
                .collect();
            if let Ok(history) = History::restore(parsed) {
                // What was restored is accepted again, message by message.
                let mut again = History::default();
                for m in history.messages() {
                    prop_assert!(again.push(m.clone()).is_ok());
                }
            }
        }
    }
}
