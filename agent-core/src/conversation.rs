//! Conversation management: which part of the durable history the model sees.
//!
//! Nothing is ever deleted from a session: a manager moves a [`ContextWindow`] over the history,
//! so a trimmed conversation can still be read in full from its store. Every window starts at a
//! user prompt, so a tool use is never split from its result, and the first message the model
//! sees is always a user message.
//!
//! Managers: [`SlidingWindow`] (the default: the newest 40 messages, optionally also a token
//! budget), [`Summarizing`] (the oldest part replaced by a summary the model writes, before
//! the context window is full), [`NullConversationManager`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::history::History;
use crate::message::{ContentBlock, Message, Role, ToolResultContent};
use crate::model::{Model, ModelRequest, ToolChoice};

/// The part of a history the model sees: the message at `pinned` (a prompt kept when the
/// window had to cut inside one long run), then everything from `start` on; with a `summary`
/// of what came before `start` put before the first visible prompt's text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextWindow {
    /// First message of the visible tail.
    pub start: usize,
    /// A prompt shown before the tail, when the tail starts inside a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<usize>,
    /// A summary of the messages before `start` ([`Summarizing`]), shown with the first
    /// visible prompt. Stored with the window (and as Strands' `summary_message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl ContextWindow {
    /// The visible messages, oldest first. A window that does not fit the history (for example
    /// one restored with a shorter history) shows everything.
    pub fn visible<'a>(&self, history: &'a History) -> Vec<&'a Message> {
        let messages = history.messages();
        if !self.fits(history) {
            return messages.iter().collect();
        }
        let mut out = Vec::with_capacity(messages.len() - self.start + 1);
        if let Some(p) = self.pinned {
            out.push(&messages[p]);
        }
        out.extend(&messages[self.start..]);
        out
    }

    /// The summary the model is shown with this window's first message: the window's
    /// summary, when it has one and fits `history`.
    pub fn applicable_summary(&self, history: &History) -> Option<&str> {
        let summary = self.summary.as_deref()?;
        (self.start > 0 && self.fits(history)).then_some(summary)
    }

    /// Number of visible messages.
    pub fn visible_len(&self, history: &History) -> usize {
        if !self.fits(history) {
            return history.len();
        }
        history.len() - self.start + usize::from(self.pinned.is_some())
    }

    fn fits(&self, history: &History) -> bool {
        let len = history.len();
        match self.pinned {
            None => self.start == 0 || (self.start < len && history.is_valid_start(self.start)),
            Some(p) => {
                p < self.start
                    && self.start < len
                    && history.is_valid_start(p)
                    && history.messages()[self.start].role == Role::Assistant
            }
        }
    }
}

/// How the summary of earlier messages is introduced to the model.
pub const SUMMARY_INTRO: &str = "Summary of the earlier conversation:";

/// `message` (the first the model sees) with `summary` before its text.
pub fn with_summary(message: &Message, summary: &str) -> Message {
    let mut message = message.clone();
    let note = format!("{SUMMARY_INTRO}\n{summary}\n\n");
    match message.content.iter_mut().find_map(|b| match b {
        ContentBlock::Text(t) => Some(t),
        _ => None,
    }) {
        Some(text) => *text = format!("{note}{text}"),
        None => message.content.insert(0, ContentBlock::Text(note)),
    }
    message
}

/// What a [`ConversationManager`] works on: the history, the window it moves, the agent's
/// model, and the input tokens the model last reported.
#[non_exhaustive]
pub struct Conversation<'a> {
    /// The whole history, oldest first.
    pub history: &'a History,
    /// The window the model will see.
    pub window: &'a mut ContextWindow,
    /// The agent's model (a manager may call it, e.g. to summarise).
    pub model: &'a Arc<dyn Model>,
    /// The system prompt sent with every call.
    pub system_prompt: Option<&'a str>,
    /// What the last model call of this run reported, if there was one.
    pub reported: Option<ReportedUsage>,
}

/// The input tokens a model call reported, and the conversation as it was for that call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportedUsage {
    /// Input tokens of the call (the whole prompt, as the provider counted it).
    pub input_tokens: u64,
    /// The history's length when the call was made.
    pub history_len: usize,
    /// The window's start when the call was made.
    pub window_start: usize,
}

/// A rough token count of a message: a quarter of its characters, plus 4 for its framing.
/// Used where no model has counted yet; tokenizers differ, so keep a margin.
pub fn estimate_tokens(message: &Message) -> u64 {
    let mut chars = 0usize;
    for block in &message.content {
        chars += match block {
            ContentBlock::Text(t) => t.len(),
            ContentBlock::ToolUse(u) => u.name.len() + u.input.to_string().len(),
            ContentBlock::ToolResult(r) => r
                .content
                .iter()
                .map(|c| match c {
                    ToolResultContent::Text(t) => t.len(),
                    ToolResultContent::Json(v) => v.to_string().len(),
                    _ => 1024,
                })
                .sum(),
            ContentBlock::ReasoningContent(crate::message::ReasoningContent::ReasoningText(r)) => {
                r.text.len()
            }
            ContentBlock::CachePoint(_) => 0,
            _ => 1024,
        };
    }
    (chars as u64).div_ceil(4) + 4
}

impl Conversation<'_> {
    /// The input tokens the next call will take, as well as can be told: the last reported
    /// count plus an estimate of the messages added since, when the window has not moved
    /// since that call; otherwise an estimate of everything visible.
    pub fn estimated_input_tokens(&self) -> u64 {
        let messages = self.history.messages();
        let system = self
            .system_prompt
            .map_or(0, |p| (p.len() as u64).div_ceil(4));
        match self.reported {
            Some(r)
                if r.window_start == self.window.start
                    && r.history_len <= messages.len()
                    && r.input_tokens > 0 =>
            {
                r.input_tokens
                    + messages[r.history_len..]
                        .iter()
                        .map(estimate_tokens)
                        .sum::<u64>()
            }
            _ => {
                system
                    + self
                        .window
                        .visible(self.history)
                        .into_iter()
                        .map(estimate_tokens)
                        .sum::<u64>()
                    + self
                        .window
                        .summary
                        .as_deref()
                        .map_or(0, |s| (s.len() as u64).div_ceil(4))
            }
        }
    }
}

/// Chooses what the model sees. Async, and given the model, so a manager can summarise.
#[async_trait]
pub trait ConversationManager: Send + Sync + 'static {
    /// Adjusts the window before a model call (proactively: before the context is full).
    async fn apply(&self, conversation: &mut Conversation<'_>);

    /// Shrinks the window after the model reported a context overflow. Returns `false` when it
    /// cannot shrink any further.
    async fn reduce(&self, conversation: &mut Conversation<'_>) -> bool;
}

/// Shows the whole history and never reduces it.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullConversationManager;

#[async_trait]
impl ConversationManager for NullConversationManager {
    async fn apply(&self, _: &mut Conversation<'_>) {}

    async fn reduce(&self, _: &mut Conversation<'_>) -> bool {
        false
    }
}

/// Keeps the most recent messages (40 by default, as Strands does), cutting only where no tool
/// use is split from its result; with a token budget, also keeps the estimated input under it.
#[derive(Debug, Clone, Copy)]
pub struct SlidingWindow {
    size: usize,
    max_tokens: Option<u64>,
}

impl Default for SlidingWindow {
    fn default() -> Self {
        Self {
            size: 40,
            max_tokens: None,
        }
    }
}

impl SlidingWindow {
    /// A window of at most `size` messages (at least 1); it may show fewer to cut cleanly.
    pub fn new(size: usize) -> Self {
        Self {
            size: size.max(1),
            max_tokens: None,
        }
    }

    /// Also slides until the estimated input ([`Conversation::estimated_input_tokens`]) is at
    /// most `tokens` before each call (e.g. 0.7 of the model's context window), instead of
    /// waiting for the server to refuse an overflowing prompt.
    pub fn max_tokens(mut self, tokens: u64) -> Self {
        self.max_tokens = Some(tokens);
        self
    }

    /// How many messages the window keeps (the newest; tool-use/result pairs are never split).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The window that shows at most the messages from `target` on.
    fn cut(history: &History, target: usize) -> Option<ContextWindow> {
        let messages = history.messages();
        let len = messages.len();
        if target >= len {
            return None;
        }
        if let Some(start) = (target..len).find(|&i| history.is_valid_start(i)) {
            return Some(ContextWindow {
                start,
                pinned: None,
                summary: None,
            });
        }
        // The tail is one long run: keep the prompt that started it, then cut at an assistant
        // message so tool uses stay with their results.
        let prompt = (0..target).rev().find(|&i| history.is_valid_start(i))?;
        let start = (target..len).find(|&i| messages[i].role == Role::Assistant)?;
        if start == prompt + 1 {
            return Some(ContextWindow {
                start: prompt,
                pinned: None,
                summary: None,
            });
        }
        Some(ContextWindow {
            start,
            pinned: Some(prompt),
            summary: None,
        })
    }

    fn slide(&self, history: &History, window: &mut ContextWindow) {
        if window.visible_len(history) <= self.size {
            return;
        }
        let target = history.len().saturating_sub(self.size);
        if let Some(w) = Self::cut(history, target) {
            *window = w;
        }
    }

    fn shrink(history: &History, window: &mut ContextWindow) -> bool {
        let before = window.visible_len(history);
        let current = if window.visible_len(history) == history.len() {
            0
        } else {
            window.start
        };
        let target = current + 2;
        match Self::cut(history, target) {
            Some(w) if w.visible_len(history) < before && w.visible_len(history) > 0 => {
                *window = w;
                true
            }
            _ => false,
        }
    }
}

#[async_trait]
impl ConversationManager for SlidingWindow {
    async fn apply(&self, c: &mut Conversation<'_>) {
        self.slide(c.history, c.window);
        if let Some(budget) = self.max_tokens {
            while c.estimated_input_tokens() > budget && Self::shrink(c.history, c.window) {}
        }
    }

    async fn reduce(&self, c: &mut Conversation<'_>) -> bool {
        Self::shrink(c.history, c.window)
    }
}

/// What [`Summarizing`] asks the model to do (Strands' summarisation prompt, in spirit).
pub const SUMMARY_SYSTEM_PROMPT: &str = "You summarise conversations between a user and an \
assistant that uses tools. Write a concise summary in bullet points, in the third person: the \
user's goals, facts and preferences they gave, decisions made, what the tools found (names, \
numbers, ids), and what is still open. Keep every detail needed to continue; leave out \
pleasantries. Do not call tools. Answer with the summary only.";

/// The longest text of one block quoted to the summariser.
const MAX_QUOTED: usize = 4000;

/// Replaces the oldest part of the conversation with a summary the model writes, keeping the
/// newest messages as they are: before each call once the estimated input passes a threshold
/// of the context window (default 0.7), and on a context overflow. The full history stays in
/// the store; the summary is kept with the window (as Strands' `summary_message` too). Cuts
/// only before a user prompt, so a tool use always stays with its result; a summary that fails
/// (the model errs, times out or answers nothing) leaves the window as it was.
///
/// ```
/// use agent_core::conversation::Summarizing;
/// let manager = Summarizing::new()
///     .context_window(32_768) // the model's, in tokens: summarise past 0.7 of it
///     .preserve_recent(10);
/// # let _ = manager;
/// ```
#[derive(Clone)]
pub struct Summarizing {
    ratio: f32,
    preserve_recent: usize,
    context_window: Option<u64>,
    threshold: f32,
    model: Option<Arc<dyn Model>>,
    timeout: Duration,
    max_summary_tokens: u32,
}

impl std::fmt::Debug for Summarizing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Summarizing")
            .field("ratio", &self.ratio)
            .field("preserve_recent", &self.preserve_recent)
            .field("context_window", &self.context_window)
            .field("threshold", &self.threshold)
            .field("dedicated_model", &self.model.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Summarizing {
    fn default() -> Self {
        Self::new()
    }
}

impl Summarizing {
    /// Summarises the oldest 30% of the visible messages (Strands' default), keeps at least
    /// the 10 newest, with the agent's own model; proactively only once
    /// [`context_window`](Self::context_window) is set.
    pub fn new() -> Self {
        Self {
            ratio: 0.3,
            preserve_recent: 10,
            context_window: None,
            threshold: 0.7,
            model: None,
            timeout: Duration::from_secs(60),
            max_summary_tokens: 1024,
        }
    }

    /// The share of the visible messages to summarise each time (clamped to 0.1..=0.8).
    pub fn ratio(mut self, ratio: f32) -> Self {
        self.ratio = ratio.clamp(0.1, 0.8);
        self
    }

    /// How many of the newest messages are never summarised (default 10).
    pub fn preserve_recent(mut self, messages: usize) -> Self {
        self.preserve_recent = messages;
        self
    }

    /// The model's context window, in tokens: summarise before a call whose estimated input
    /// passes [`threshold`](Self::threshold) of it.
    pub fn context_window(mut self, tokens: u64) -> Self {
        self.context_window = Some(tokens);
        self
    }

    /// The share of the context window that triggers a summary (default 0.7, clamped to
    /// 0.1..=1).
    pub fn threshold(mut self, share: f32) -> Self {
        self.threshold = share.clamp(0.1, 1.0);
        self
    }

    /// Summarises with this model instead of the agent's (a smaller, cheaper one).
    pub fn model(mut self, model: impl Model) -> Self {
        self.model = Some(Arc::new(model));
        self
    }

    /// The bound on one summary call (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The window that summarises more of `c`'s history, with its summary; `None` when there
    /// is nothing to summarise or the summary failed.
    async fn summarize(&self, c: &Conversation<'_>) -> Option<ContextWindow> {
        let messages = c.history.messages();
        let len = messages.len();
        let from = if c.window.start > 0 && c.window.visible_len(c.history) < len {
            c.window.pinned.unwrap_or(c.window.start)
        } else {
            0
        };
        let visible = len - from;
        if visible <= self.preserve_recent + 1 {
            return None;
        }
        let share = ((visible as f32 * self.ratio) as usize).max(1);
        // The newest `preserve_recent` messages are never summarised.
        let limit = len - self.preserve_recent.max(1);
        let target = (from + share).min(limit);
        let start = (target..=limit)
            .find(|&i| i > from && c.history.is_valid_start(i))
            .or_else(|| {
                ((from + 1)..target)
                    .rev()
                    .find(|&i| c.history.is_valid_start(i))
            })?;
        let model = self.model.as_ref().unwrap_or(c.model);
        let mut transcript = String::new();
        if let Some(previous) = c.window.summary.as_deref().filter(|_| from > 0) {
            transcript.push_str("Earlier summary:\n");
            transcript.push_str(previous);
            transcript.push_str("\n\n");
        }
        for m in &messages[from..start] {
            quote(m, &mut transcript);
        }
        transcript.push_str("\nSummarise this conversation.");
        let prompt = Message::user(transcript);
        let choice = ToolChoice::None;
        let mut request =
            ModelRequest::new(vec![&prompt], &[], &choice).max_tokens(self.max_summary_tokens);
        request.system_prompt = Some(SUMMARY_SYSTEM_PROMPT);
        request.temperature = Some(0.0);
        let summary = match tokio::time::timeout(self.timeout, model.complete(&request)).await {
            Ok(Ok(response)) => response
                .content
                .iter()
                .filter_map(|b| match b {
                    ContentBlock::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect::<String>(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the conversation summary failed; the window is left as it was");
                return None;
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.timeout.as_millis() as u64,
                    "the conversation summary timed out; the window is left as it was"
                );
                return None;
            }
        };
        let summary = summary.trim();
        if summary.is_empty() {
            tracing::warn!("the model wrote an empty summary; the window is left as it was");
            return None;
        }
        Some(ContextWindow {
            start,
            pinned: None,
            summary: Some(summary.to_owned()),
        })
    }
}

/// Appends `message` to a transcript for the summariser, each block bounded.
fn quote(message: &Message, out: &mut String) {
    let who = match message.role {
        Role::User => "User",
        Role::Assistant => "Assistant",
    };
    let clip = |s: &str| -> String {
        if s.len() <= MAX_QUOTED {
            return s.to_owned();
        }
        let mut end = MAX_QUOTED;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    };
    for block in &message.content {
        let line = match block {
            ContentBlock::Text(t) if !t.trim().is_empty() => format!("{who}: {}", clip(t)),
            ContentBlock::ToolUse(u) => {
                format!(
                    "Assistant called tool `{}` with {}",
                    u.name,
                    clip(&u.input.to_string())
                )
            }
            ContentBlock::ToolResult(r) => format!("Tool result: {}", clip(&r.text())),
            _ => continue,
        };
        out.push_str(&line);
        out.push('\n');
    }
}

#[async_trait]
impl ConversationManager for Summarizing {
    async fn apply(&self, c: &mut Conversation<'_>) {
        let Some(window) = self.context_window else {
            return;
        };
        let limit = (window as f64 * f64::from(self.threshold)) as u64;
        if c.estimated_input_tokens() > limit
            && let Some(w) = self.summarize(c).await
        {
            *c.window = w;
        }
    }

    async fn reduce(&self, c: &mut Conversation<'_>) -> bool {
        match self.summarize(c).await {
            Some(w) => {
                *c.window = w;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ContentBlock, ToolResult, ToolUse};
    use serde_json::json;

    fn tool_round(h: &mut History, id: &str) {
        h.push(Message::new(
            Role::Assistant,
            vec![ContentBlock::ToolUse(ToolUse {
                tool_use_id: id.into(),
                name: "f".into(),
                input: json!({}),
            })],
        ))
        .expect("use");
        h.push(Message::new(
            Role::User,
            vec![ContentBlock::ToolResult(ToolResult::error(id, "x"))],
        ))
        .expect("result");
    }

    #[test]
    fn sliding_window_keeps_pairs_and_starts_at_a_prompt() {
        let mut h = History::new();
        for i in 0..10 {
            h.push(Message::user(format!("q{i}"))).expect("q");
            tool_round(&mut h, &format!("t{i}"));
            h.push(Message::assistant("a")).expect("a");
        }
        let m = SlidingWindow::new(6);
        let mut w = ContextWindow::default();
        m.slide(&h, &mut w);
        let visible = w.visible(&h);
        assert!(visible.len() <= 6);
        assert!(visible[0].is_prompt());
        assert_eq!(visible[0].text(), "q9");
        assert_eq!(
            History::restore(visible.into_iter().cloned().collect()).map(|_| ()),
            Ok(())
        );
    }

    #[test]
    fn one_long_run_keeps_its_prompt_pinned() {
        let mut h = History::new();
        h.push(Message::user("plan my trip")).expect("q");
        for i in 0..20 {
            tool_round(&mut h, &format!("t{i}"));
        }
        let m = SlidingWindow::new(10);
        let mut w = ContextWindow::default();
        m.slide(&h, &mut w);
        let visible = w.visible(&h);
        assert_eq!(visible[0].text(), "plan my trip");
        assert!(visible.len() <= 11);
        assert_eq!(
            History::restore(visible.into_iter().cloned().collect()).map(|_| ()),
            Ok(())
        );
        // Reducing keeps shrinking until nothing is left to drop.
        let mut steps = 0;
        while SlidingWindow::shrink(&h, &mut w) {
            steps += 1;
            let v: Vec<Message> = w.visible(&h).into_iter().cloned().collect();
            assert_eq!(History::restore(v).map(|_| ()), Ok(()));
            assert!(steps < 50);
        }
        assert!(steps > 0);
        assert_eq!(w.visible_len(&h), 3);
    }

    fn conversation<'a>(
        h: &'a History,
        w: &'a mut ContextWindow,
        model: &'a Arc<dyn Model>,
    ) -> Conversation<'a> {
        Conversation {
            history: h,
            window: w,
            model,
            system_prompt: None,
            reported: None,
        }
    }

    #[tokio::test]
    async fn null_manager_never_reduces() {
        let mut h = History::new();
        h.push(Message::user("q")).expect("q");
        let mut w = ContextWindow::default();
        let model: Arc<dyn Model> = Arc::new(crate::model::ScriptedModel::default());
        assert!(
            !NullConversationManager
                .reduce(&mut conversation(&h, &mut w, &model))
                .await
        );
        assert_eq!(w.visible_len(&h), 1);
    }

    /// Ten exchanges of prompt, tool round and answer: 40 messages.
    fn long_history() -> History {
        let mut h = History::new();
        for i in 0..10 {
            h.push(Message::user(format!("q{i} {}", "x".repeat(400))))
                .expect("q");
            tool_round(&mut h, &format!("t{i}"));
            h.push(Message::assistant(format!("a{i}"))).expect("a");
        }
        h
    }

    #[tokio::test]
    async fn a_token_budget_slides_the_window_before_the_call() {
        let h = long_history();
        let model: Arc<dyn Model> = Arc::new(crate::model::ScriptedModel::default());
        let mut w = ContextWindow::default();
        let budget = 500;
        SlidingWindow::default()
            .max_tokens(budget)
            .apply(&mut conversation(&h, &mut w, &model))
            .await;
        let c = conversation(&h, &mut w, &model);
        assert!(
            c.estimated_input_tokens() <= budget,
            "{}",
            c.estimated_input_tokens()
        );
        assert!(w.start > 0 && h.is_valid_start(w.start));
        // The reported count is used while the window has not moved: one call of 2,000
        // tokens and one message since.
        let mut w = ContextWindow::default();
        let mut c = conversation(&h, &mut w, &model);
        c.reported = Some(ReportedUsage {
            input_tokens: 2000,
            history_len: h.len() - 1,
            window_start: 0,
        });
        assert_eq!(
            c.estimated_input_tokens(),
            2000 + estimate_tokens(&h.messages()[h.len() - 1])
        );
    }

    #[tokio::test]
    async fn summarizing_replaces_the_oldest_part_at_a_prompt_and_keeps_the_newest() {
        use crate::model::ScriptedModel;
        let h = long_history();
        let scripted =
            ScriptedModel::new([ScriptedModel::text("- The user asked q0..q2; tools ran.")]);
        let model: Arc<dyn Model> = Arc::new(scripted.clone());
        let manager = Summarizing::new().context_window(1000).preserve_recent(8);
        let mut w = ContextWindow::default();
        manager.apply(&mut conversation(&h, &mut w, &model)).await;
        // 30% of 40 messages: cut at the first prompt from message 12 on.
        assert_eq!(w.start, 12);
        assert!(h.is_valid_start(w.start));
        assert_eq!(
            w.summary.as_deref(),
            Some("- The user asked q0..q2; tools ran.")
        );
        // The summariser saw the first 12 messages, tool calls and results as text, no tools.
        let asked = &scripted.requests()[0];
        assert!(asked.tools.is_empty());
        assert_eq!(asked.system_prompt.as_deref(), Some(SUMMARY_SYSTEM_PROMPT));
        let transcript = asked.messages[0].text();
        assert!(transcript.contains("User: q0") && transcript.contains("Assistant: a2"));
        assert!(transcript.contains("Assistant called tool `f`"));
        assert!(!transcript.contains("q3"), "{transcript}");
        // The model sees the summary with the first visible prompt; the window is valid.
        let first = with_summary(w.visible(&h)[0], w.applicable_summary(&h).expect("summary"));
        assert!(first.text().starts_with(SUMMARY_INTRO));
        assert!(first.text().contains("q3"));
        let visible: Vec<Message> = w.visible(&h).into_iter().cloned().collect();
        assert_eq!(History::restore(visible).map(|_| ()), Ok(()));

        // Under the threshold nothing happens, and no model call is made.
        let mut w = ContextWindow::default();
        Summarizing::new()
            .context_window(1_000_000)
            .apply(&mut conversation(&h, &mut w, &model))
            .await;
        assert_eq!(w, ContextWindow::default());

        // A summariser that fails leaves the window as it was; so does an empty summary.
        scripted.push([ScriptedModel::text("  ")]);
        let mut w = ContextWindow::default();
        assert!(!manager.reduce(&mut conversation(&h, &mut w, &model)).await);
        assert!(!manager.reduce(&mut conversation(&h, &mut w, &model)).await);
        assert_eq!(w, ContextWindow::default());

        // A second summary folds the first in.
        scripted.push([ScriptedModel::text("- everything up to q5")]);
        let mut w = ContextWindow {
            start: 12,
            pinned: None,
            summary: Some("- first part".into()),
        };
        assert!(manager.reduce(&mut conversation(&h, &mut w, &model)).await);
        assert!(w.start > 12 && h.is_valid_start(w.start));
        let transcript = scripted.requests().last().expect("asked").messages[0].text();
        assert!(transcript.starts_with("Earlier summary:\n- first part"));
    }
}
