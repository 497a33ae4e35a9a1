//! Errors of agent construction and invocation.

use crate::history::HistoryError;
use crate::model::ModelError;
use crate::session::{InvalidId, StoreError};
use crate::tool::RegistryError;

/// The underlying error of a failure (an I/O error, an SDK error, an HTTP client error), kept so
/// that [`std::error::Error::source`] walks the whole chain. Cheap to clone (shared); compared by
/// its text.
#[derive(Clone)]
pub struct Cause(std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    /// Wraps an error.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(error))
    }

    /// The wrapped error.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Cause {
    /// The wrapped error itself, so walking the chain reaches it (and can downcast to it).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

/// Why an invocation failed. Limits, cancellation and timeouts are not errors: they end the run
/// with their own [`crate::agent::StopReason`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The model failed with an error that is not retried, or retries ran out.
    #[error("{error} (after {attempts} attempt(s))")]
    Model {
        /// The last error.
        #[source]
        error: ModelError,
        /// Attempts made.
        attempts: u32,
    },
    /// The prompt does not fit the context window even after reducing the history.
    #[error("context window overflow that the conversation manager could not resolve: {message}")]
    ContextOverflow {
        /// The server's last message.
        message: String,
    },
    /// A message would break the history's invariants, or a stored history is broken.
    #[error("invalid history: {0}")]
    History(#[from] HistoryError),
    /// The session store failed; a [`crate::session::StoreError::Conflict`] means another
    /// writer changed the session and nothing was overwritten.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A refused id.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// Another invocation held the session for the whole time this one could wait, or holds
    /// its replica lease on another process.
    #[error("session `{session_id}` is busy with another invocation")]
    SessionBusy {
        /// The session.
        session_id: String,
    },
    /// The prompt has no content.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// [`crate::Session::resume`] on a session with no messages.
    #[error("session `{session_id}` has no run to resume")]
    NothingToResume {
        /// The session.
        session_id: String,
    },
    /// The run panicked (in a model, tool source or store implementation, say); a streamed run
    /// ends with this error instead of a stream that just stops.
    #[error("the run panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// The model gave no value of the asked structure within the allowed attempts (or the run
    /// ended before it could be asked: cancelled, out of time).
    #[error("no structured output after {attempts} attempt(s): {message}")]
    StructuredOutput {
        /// What was wrong with the last reply.
        message: String,
        /// The last reply as the model wrote it (the tool call's input as JSON, or its text).
        raw: String,
        /// Replies asked for.
        attempts: u32,
    },
    /// [`crate::Session::respond`] with answers that do not match the questions the session
    /// waits on (none waiting, an unknown id, or a question left unanswered).
    #[error("cannot resume with these answers: {message}")]
    InterruptResponse {
        /// What does not match.
        message: String,
    },
    /// A hook failed or passed its bound; the run stopped at a point where the session is
    /// valid (see [`crate::hooks`]).
    #[error("hook `{hook}` failed in {event}: {message}")]
    Hook {
        /// The hook's [`name`](crate::hooks::Hook::name).
        hook: String,
        /// The event (`before_tool_call` ...).
        event: &'static str,
        /// What happened.
        message: String,
        /// The hook's error, when it returned one (none for a timeout).
        #[source]
        source: Option<crate::hooks::HookError>,
    },
}

impl AgentError {
    /// A short, stable name of the error class (used as `error.type` in telemetry).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Model { error, .. } => error.kind(),
            Self::ContextOverflow { .. } => "context_length_exceeded",
            Self::History(_) => "invalid_history",
            Self::Store(StoreError::Conflict { .. }) => "store_conflict",
            Self::Store(_) => "store_error",
            Self::InvalidId(_) => "invalid_id",
            Self::SessionBusy { .. } => "session_busy",
            Self::EmptyPrompt => "empty_prompt",
            Self::Panicked { .. } => "panicked",
            Self::NothingToResume { .. } => "nothing_to_resume",
            Self::StructuredOutput { .. } => "structured_output",
            Self::Hook { .. } => "hook",
            Self::InterruptResponse { .. } => "interrupt_response",
        }
    }
}

/// Why an agent cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No model was given.
    #[error("an agent needs a model: call AgentBuilder::model")]
    MissingModel,
    /// A tool was refused.
    #[error(transparent)]
    Tool(#[from] RegistryError),
    /// The agent id is invalid.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// A setting is out of range: `setting` names the builder method, `requirement` what its
    /// value must be.
    #[error("invalid setting {setting}: {requirement}")]
    OutOfRange {
        /// The setting, as the builder method that sets it.
        setting: &'static str,
        /// What the value must be.
        requirement: &'static str,
    },
}

/// An error and its causes in one line (`outer: cause: root cause`), for logs that must say
/// what failed underneath.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
