//! Evaluation datasets: JSON lines, one case per line.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::message::{Message, Role};

/// One case of a dataset: a prompt (after an optional earlier conversation) and what a good run
/// does with it. Every reference is optional; a metric whose reference a case lacks is not
/// applicable to it (and is left out of its mean), never scored as a failure.
///
/// ```json
/// {"id": "weather-lisbon", "prompt": "How is the weather in Lisbon?", "tags": ["weather"],
///  "calls": [{"name": "get_weather", "args": {"city": "Lisbon"}}],
///  "reference": "Sunny, 21 °C", "facts": ["sunny", "21"], "absent": ["Porto"]}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Case {
    /// A name unique in the dataset.
    pub id: String,
    /// The user's message.
    pub prompt: String,
    /// Turns before the prompt (`{"role": "user" | "assistant", "content": "..."}`), written to
    /// the case's fresh session before the prompt is sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryTurn>,
    /// Labels the summary groups scores by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The reference tool calls, in order (Ragas' `reference_tool_calls`).
    #[serde(
        default,
        alias = "reference_tool_calls",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub calls: Vec<ToolCall>,
    /// Tools that must each be called at least once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// No tool may be called; the reference tool calls are then the empty list.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_tools: bool,
    /// The reference answer (Ragas' `reference`): for `exact_match`, `string_present` and, when
    /// `goal` is absent, `agent_goal_accuracy_with_reference`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The outcome the run should reach, for `agent_goal_accuracy_with_reference`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<String>,
    /// Each must appear in the answer, case-insensitively; `"a | b"` accepts either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<String>,
    /// None may appear in the answer, case-insensitively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<String>,
}

impl Case {
    /// A case with only an id and a prompt.
    pub fn new(id: impl Into<String>, prompt: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            prompt: prompt.into(),
            history: Vec::new(),
            tags: Vec::new(),
            calls: Vec::new(),
            tools: Vec::new(),
            no_tools: false,
            reference: None,
            goal: None,
            facts: Vec::new(),
            absent: Vec::new(),
        }
    }

    /// The reference tool calls, when the case names them: its `calls`, or none at all when
    /// `no_tools` is set.
    pub fn reference_tool_calls(&self) -> Option<&[ToolCall]> {
        if !self.calls.is_empty() || self.no_tools {
            Some(&self.calls)
        } else {
            None
        }
    }

    /// The history as messages.
    pub fn history_messages(&self) -> Vec<Message> {
        self.history
            .iter()
            .map(|t| match t.role {
                HistoryRole::User => Message::user(t.content.clone()),
                HistoryRole::Assistant => Message::assistant(t.content.clone()),
            })
            .collect()
    }
}

/// A turn of a case's earlier conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryTurn {
    /// Who said it.
    pub role: HistoryRole,
    /// What was said.
    pub content: String,
}

/// The speaker of a [`HistoryTurn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryRole {
    /// The user.
    User,
    /// The agent.
    Assistant,
}

impl From<HistoryRole> for Role {
    fn from(r: HistoryRole) -> Self {
        match r {
            HistoryRole::User => Role::User,
            HistoryRole::Assistant => Role::Assistant,
        }
    }
}

/// A tool call: a name and its arguments (Ragas' `ToolCall`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// The tool's name.
    pub name: String,
    /// The arguments.
    #[serde(default)]
    pub args: Map<String, Value>,
}

impl ToolCall {
    /// A call of `name` with `args` (a JSON object; anything else counts as no arguments).
    pub fn new(name: impl Into<String>, args: Value) -> Self {
        Self {
            name: name.into(),
            args: match args {
                Value::Object(map) => map,
                _ => Map::new(),
            },
        }
    }
}

/// A dataset that could not be read: the file, and the line (1-based) when one is at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
#[non_exhaustive]
pub struct DatasetError {
    /// The file (or `<input>`).
    pub source_name: String,
    /// The line at fault.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// The cases of an evaluation, in file order.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Dataset {
    /// The cases.
    pub cases: Vec<Case>,
}

/// The longest dataset file read (a guard against pointing at the wrong file).
const MAX_DATASET_BYTES: u64 = 64 * 1024 * 1024;

impl Dataset {
    /// Reads a JSONL file: one [`Case`] per line; blank lines and lines starting with `//` are
    /// skipped. An error names the file and line: a line that is not a case (an unknown field
    /// is an error, so a misspelt reference is never silently ignored), a duplicate id, an
    /// empty prompt, or a file with no cases.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DatasetError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let error = |message: String| DatasetError {
            source_name: name.clone(),
            line: None,
            message,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| error(format!("cannot read: {e}")))?
            .len();
        if size > MAX_DATASET_BYTES {
            return Err(error(format!(
                "{size} bytes is more than the {MAX_DATASET_BYTES} a dataset may have"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
        Self::parse(&name, &text)
    }

    /// Parses JSONL text; `source_name` names it in errors.
    pub fn parse(source_name: &str, text: &str) -> Result<Self, DatasetError> {
        let error = |line: Option<usize>, message: String| DatasetError {
            source_name: source_name.to_owned(),
            line,
            message,
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut cases: Vec<Case> = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with("//") {
                continue;
            }
            let case: Case =
                serde_json::from_str(trimmed).map_err(|e| error(Some(i + 1), e.to_string()))?;
            if case.id.trim().is_empty() {
                return Err(error(Some(i + 1), "the id is empty".into()));
            }
            if case.prompt.trim().is_empty() {
                return Err(error(
                    Some(i + 1),
                    format!("case `{}` has an empty prompt", case.id),
                ));
            }
            if case.no_tools && (!case.calls.is_empty() || !case.tools.is_empty()) {
                return Err(error(
                    Some(i + 1),
                    format!("case `{}` has `no_tools` and names tools to call", case.id),
                ));
            }
            if !ids.insert(case.id.clone()) {
                return Err(error(Some(i + 1), format!("duplicate id `{}`", case.id)));
            }
            cases.push(case);
        }
        if cases.is_empty() {
            return Err(error(None, "no cases".into()));
        }
        Ok(Self { cases })
    }

    /// Keeps the cases with `tag`.
    pub fn with_tag(mut self, tag: &str) -> Self {
        self.cases.retain(|c| c.tags.iter().any(|t| t == tag));
        self
    }

    /// Keeps the first `n` cases.
    pub fn take(mut self, n: usize) -> Self {
        self.cases.truncate(n);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_line() {
        let err = Dataset::parse(
            "d.jsonl",
            "{\"id\": \"a\", \"prompt\": \"p\"}\n\n{\"id\": \"b\", \"promt\": \"p\"}\n",
        )
        .expect_err("misspelt field");
        assert_eq!(err.line, Some(3));
        assert!(err.to_string().starts_with("d.jsonl:3: "), "{err}");
        assert!(err.message.contains("promt"), "{err}");
        let dup = Dataset::parse(
            "d",
            "{\"id\": \"a\", \"prompt\": \"p\"}\n{\"id\": \"a\", \"prompt\": \"q\"}",
        )
        .expect_err("duplicate");
        assert_eq!(
            (dup.line, dup.message.as_str()),
            (Some(2), "duplicate id `a`")
        );
        let empty = Dataset::parse("d", "\n// only a comment\n").expect_err("empty");
        assert_eq!(empty.to_string(), "d: no cases");
        let both = Dataset::parse(
            "d",
            "{\"id\": \"a\", \"prompt\": \"p\", \"no_tools\": true, \"tools\": [\"f\"]}",
        )
        .expect_err("contradiction");
        assert!(both.message.contains("no_tools"), "{both}");
        let blank = Dataset::parse("d", "{\"id\": \"a\", \"prompt\": \"  \"}").expect_err("blank");
        assert_eq!(blank.line, Some(1));
        assert!(Dataset::parse("d", "[1, 2]").is_err());
    }

    #[test]
    fn a_case_reads_every_reference() {
        let d = Dataset::parse(
            "d",
            "\u{feff}{\"id\": \"a\", \"prompt\": \"p\", \"history\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}], \"tags\": [\"t\"], \"reference_tool_calls\": [{\"name\": \"f\", \"args\": {\"x\": 1}}], \"reference\": \"r\", \"goal\": \"g\", \"facts\": [\"x\"], \"absent\": [\"y\"]}\n{\"id\": \"b\", \"prompt\": \"q\", \"no_tools\": true}",
        )
        .expect("dataset");
        let a = &d.cases[0];
        assert_eq!(a.history_messages()[1].role, Role::Assistant);
        assert_eq!(a.reference_tool_calls().map(<[_]>::len), Some(1));
        assert_eq!(d.cases[1].reference_tool_calls(), Some(&[][..]));
        assert_eq!(Case::new("c", "p").reference_tool_calls(), None);
        assert_eq!(d.clone().with_tag("t").cases.len(), 1);
        assert_eq!(d.take(1).cases.len(), 1);
    }
}
