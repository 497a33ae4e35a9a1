//! [`Redact`]: secrets out of messages before they are stored, streamed or traced.

use std::borrow::Cow;

use async_trait::async_trait;
use regex::Regex;
use serde_json::Value;

use super::{AfterToolCall, Hook, HookError, MessageAdded};
use crate::message::{ContentBlock, ToolResultContent};

/// The patterns of [`Redact::secrets`]: label and regular expression.
const SECRETS: &[(&str, &str)] = &[
    ("aws_access_key_id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    (
        "aws_secret_access_key",
        r"(?i)aws_secret_access_key\s*[=:]\s*[A-Za-z0-9/+=]{40}",
    ),
    (
        "private_key",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    ),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    ),
    ("bearer_token", r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}=*"),
    ("api_key", r"\bsk-[A-Za-z0-9_-]{20,}"),
    ("github_token", r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
];

/// Replaces what matches its patterns with `[REDACTED <label>]` in every message as it is
/// added (user prompts, the model's text and tool-call inputs, tool results: text and JSON
/// strings) and in each tool result as it arrives (before it is streamed or checkpointed). So
/// a secret a user pastes, or a tool returns, never reaches the session store, the stored
/// messages' events, the model's later turns or long-term memory.
///
/// Not covered: text deltas streamed while the model writes (its whole answer is redacted
/// when stored); reasoning text (providers sign it, and a changed text fails their check);
/// the reasons of interrupts (they quote tool inputs as the model wrote them); and, with
/// message content capture on, the prompt recorded on the `invoke_agent` span. Redact before
/// invoking, or keep content capture off, where that matters.
///
/// ```
/// use agent_core::hooks::Redact;
/// let redact = Redact::secrets() // AWS keys, private keys, JWTs, bearer tokens, API keys
///     .pattern("iban", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}\b")
///     .expect("a valid pattern");
/// # let _ = redact;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Redact {
    patterns: Vec<(String, Regex)>,
}

impl Redact {
    /// No patterns yet: add them with [`pattern`](Self::pattern).
    pub fn new() -> Self {
        Self::default()
    }

    /// The common secrets: AWS access key ids and `aws_secret_access_key = ...` assignments,
    /// PEM private keys, JWTs, `Bearer` tokens, `sk-` API keys and GitHub tokens.
    pub fn secrets() -> Self {
        Self {
            patterns: SECRETS
                .iter()
                .filter_map(|(label, re)| Regex::new(re).ok().map(|r| ((*label).to_owned(), r)))
                .collect(),
        }
    }

    /// Adds a pattern (Rust `regex` syntax); its matches become `[REDACTED <label>]`.
    pub fn pattern(mut self, label: impl Into<String>, regex: &str) -> Result<Self, regex::Error> {
        self.patterns.push((label.into(), Regex::new(regex)?));
        Ok(self)
    }

    /// `text` with every match replaced; borrowed when nothing matched.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for (label, re) in &self.patterns {
            if let Cow::Owned(changed) = re.replace_all(&out, format!("[REDACTED {label}]")) {
                out = Cow::Owned(changed);
            }
        }
        out
    }

    fn redact_string(&self, s: &mut String) -> bool {
        match self.redact(s) {
            Cow::Borrowed(_) => false,
            Cow::Owned(changed) => {
                *s = changed;
                true
            }
        }
    }

    fn redact_json(&self, value: &mut Value) -> usize {
        match value {
            Value::String(s) => usize::from(self.redact_string(s)),
            Value::Array(items) => items.iter_mut().map(|v| self.redact_json(v)).sum(),
            Value::Object(map) => map.values_mut().map(|v| self.redact_json(v)).sum(),
            _ => 0,
        }
    }
}

#[async_trait]
impl Hook for Redact {
    fn name(&self) -> Cow<'static, str> {
        "redact".into()
    }

    async fn after_tool_call(&self, ctx: &mut AfterToolCall<'_>) -> Result<(), HookError> {
        for c in &mut ctx.result.content {
            match c {
                ToolResultContent::Text(t) => {
                    self.redact_string(t);
                }
                ToolResultContent::Json(v) => {
                    self.redact_json(v);
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn message_added(&self, ctx: &mut MessageAdded<'_>) -> Result<(), HookError> {
        let mut changed = 0usize;
        for block in &mut ctx.message.content {
            match block {
                ContentBlock::Text(t) => changed += usize::from(self.redact_string(t)),
                ContentBlock::ToolUse(u) => changed += self.redact_json(&mut u.input),
                ContentBlock::ToolResult(r) => {
                    for c in &mut r.content {
                        match c {
                            ToolResultContent::Text(t) => {
                                changed += usize::from(self.redact_string(t));
                            }
                            ToolResultContent::Json(v) => changed += self.redact_json(v),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if changed > 0 {
            tracing::info!(
                session = ctx.run.session_id,
                changed,
                "secrets redacted from a message"
            );
        }
        Ok(())
    }
}
