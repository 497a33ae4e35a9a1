//! Conversation management: which part of the durable history the model sees.
//!
//! Nothing is ever deleted from a session: a manager moves a [`ContextWindow`] over the history,
//! so a trimmed conversation can still be read in full from its store. Every window starts at a
//! user prompt, so a tool use is never split from its result, and the first message the model
//! sees is always a user message.

use serde::{Deserialize, Serialize};

use crate::history::History;
use crate::message::{Message, Role};

/// The part of a history the model sees: the message at `pinned` (a prompt kept when the
/// window had to cut inside one long run), then everything from `start` on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextWindow {
    /// First message of the visible tail.
    pub start: usize,
    /// A prompt shown before the tail, when the tail starts inside a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<usize>,
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

/// Chooses what the model sees.
pub trait ConversationManager: Send + Sync + 'static {
    /// Adjusts the window before a model call.
    fn apply(&self, history: &History, window: &mut ContextWindow);

    /// Shrinks the window after the model reported a context overflow. Returns `false` when it
    /// cannot shrink any further.
    fn reduce(&self, history: &History, window: &mut ContextWindow) -> bool;
}

/// Shows the whole history and never reduces it.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullConversationManager;

impl ConversationManager for NullConversationManager {
    fn apply(&self, _: &History, _: &mut ContextWindow) {}

    fn reduce(&self, _: &History, _: &mut ContextWindow) -> bool {
        false
    }
}

/// Keeps the most recent messages (40 by default, as Strands does), cutting only where no tool
/// use is split from its result.
#[derive(Debug, Clone, Copy)]
pub struct SlidingWindow {
    size: usize,
}

impl Default for SlidingWindow {
    fn default() -> Self {
        Self { size: 40 }
    }
}

impl SlidingWindow {
    /// A window of at most `size` messages (at least 1); it may show fewer to cut cleanly.
    pub fn new(size: usize) -> Self {
        Self { size: size.max(1) }
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
            });
        }
        Some(ContextWindow {
            start,
            pinned: Some(prompt),
        })
    }
}

impl ConversationManager for SlidingWindow {
    fn apply(&self, history: &History, window: &mut ContextWindow) {
        if window.visible_len(history) <= self.size {
            return;
        }
        let target = history.len().saturating_sub(self.size);
        if let Some(w) = Self::cut(history, target) {
            *window = w;
        }
    }

    fn reduce(&self, history: &History, window: &mut ContextWindow) -> bool {
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
        m.apply(&h, &mut w);
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
        m.apply(&h, &mut w);
        let visible = w.visible(&h);
        assert_eq!(visible[0].text(), "plan my trip");
        assert!(visible.len() <= 11);
        assert_eq!(
            History::restore(visible.into_iter().cloned().collect()).map(|_| ()),
            Ok(())
        );
        // Reducing keeps shrinking until nothing is left to drop.
        let mut steps = 0;
        while m.reduce(&h, &mut w) {
            steps += 1;
            let v: Vec<Message> = w.visible(&h).into_iter().cloned().collect();
            assert_eq!(History::restore(v).map(|_| ()), Ok(()));
            assert!(steps < 50);
        }
        assert!(steps > 0);
        assert_eq!(w.visible_len(&h), 3);
    }

    #[test]
    fn null_manager_never_reduces() {
        let mut h = History::new();
        h.push(Message::user("q")).expect("q");
        let mut w = ContextWindow::default();
        assert!(!NullConversationManager.reduce(&h, &mut w));
        assert_eq!(w.visible_len(&h), 1);
    }
}
