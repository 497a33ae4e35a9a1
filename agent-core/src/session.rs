//! Session storage: the [`SessionStore`] trait and the in-memory store.
//!
//! A session is an append-only log of messages plus a small state object (the agent state and
//! the context window). Writers say what they expect: a message append names the sequence number
//! (the number of messages already stored) and a state save names the version it read. A writer
//! whose expectation is stale gets [`StoreError::Conflict`] and nothing is overwritten, which is
//! what keeps several replicas from losing or interleaving messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::conversation::ContextWindow;
use crate::message::Message;

/// Why an id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id `{id}`: {reason}")]
pub struct InvalidId {
    /// `session`, `agent` or `actor`.
    pub kind: &'static str,
    /// The refused id (control characters escaped).
    pub id: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Checks a session, agent or actor id: 1 to 256 characters, no path separators, no control
/// characters, not `.` or `..`. Ids become object keys and file names, so this is what keeps
/// one tenant out of another's data.
pub fn validate_id(kind: &'static str, id: &str) -> Result<(), InvalidId> {
    let fail = |reason| {
        Err(InvalidId {
            kind,
            id: id.escape_debug().to_string(),
            reason,
        })
    };
    if id.is_empty() {
        return fail("it is empty");
    }
    if id.chars().count() > 256 {
        return fail("it is longer than 256 characters");
    }
    if id == "." || id == ".." {
        return fail("`.` and `..` are not ids");
    }
    if id.contains(['/', '\\']) {
        return fail("it contains a path separator");
    }
    if id.chars().any(char::is_control) {
        return fail("it contains a control character");
    }
    Ok(())
}

/// Which session of which agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
///
/// Its fields are private: a key exists only through [`SessionKey::new`], so every key a store
/// turns into a path or a database key has valid ids.
pub struct SessionKey {
    session_id: Arc<str>,
    agent_id: Arc<str>,
}

impl SessionKey {
    /// A key, validating both ids.
    pub fn new(session_id: &str, agent_id: &str) -> Result<Self, InvalidId> {
        validate_id("session", session_id)?;
        validate_id("agent", agent_id)?;
        Ok(Self {
            session_id: session_id.into(),
            agent_id: agent_id.into(),
        })
    }

    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The agent id (Strands' `agent_id`; several agents may share one session).
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The session id, shared.
    pub(crate) fn shared_session_id(&self) -> &Arc<str> {
        &self.session_id
    }
}

/// The mutable part of a session besides its messages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    /// The agent state tools and hooks read and write.
    #[serde(default)]
    pub agent_state: Map<String, Value>,
    /// What the model sees of the history.
    #[serde(default)]
    pub window: ContextWindow,
    /// Progress of the run in flight, for a replica that resumes it.
    #[serde(default, skip_serializing_if = "RunCheckpoint::is_empty")]
    pub checkpoint: RunCheckpoint,
}

/// What a run records, besides its messages, so that another process can resume it: the
/// results of tool calls that completed while others of the same batch were still running
/// (the batch's message is written when all are done), and the invocation an idempotency key
/// names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunCheckpoint {
    /// Results of the last message's tool uses that completed, in completion order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completed_tool_results: Vec<crate::message::ToolResult>,
    /// The last invocation made with an idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation: Option<InvocationRecord>,
}

impl RunCheckpoint {
    /// Whether there is nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.completed_tool_results.is_empty() && self.invocation.is_none()
    }
}

/// An invocation made with an idempotency key: a retry with the same key resumes it, or gets
/// its outcome, instead of running the prompt again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationRecord {
    /// The caller's idempotency key.
    pub key: String,
    /// Index of the invocation's prompt message.
    pub first_message: usize,
    /// How it ended (`StopReason`'s JSON name), once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

/// An opaque token of a stored state's version: a counter, an S3 ETag, ...; empty before the
/// first save. A writer passes back the version it read; the store refuses a stale one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct StateVersion(pub Option<String>);

impl StateVersion {
    /// The version of a state that was never saved.
    pub fn none() -> Self {
        Self(None)
    }
}

/// A loaded session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredSession {
    /// All messages, oldest first.
    pub messages: Vec<Message>,
    /// The state.
    pub state: SessionState,
    /// The state's version.
    pub state_version: StateVersion,
}

/// A storage failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another writer got there first; nothing was written.
    #[error("conflict in session `{session_id}`: {detail}")]
    Conflict {
        /// The session.
        session_id: String,
        /// What was expected and what was found.
        detail: String,
    },
    /// A refused id.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// Stored data that cannot be read.
    #[error("corrupt session data in `{session_id}`: {detail}")]
    Corrupt {
        /// The session.
        session_id: String,
        /// What is wrong.
        detail: String,
    },
    /// A message too large for the backend; nothing was written, and the invocation fails
    /// with this error instead of losing the message silently.
    #[error(
        "message of {bytes} bytes in session `{session_id}` exceeds the store's limit of {limit} bytes"
    )]
    TooLarge {
        /// The session.
        session_id: String,
        /// Size of the serialised message.
        bytes: usize,
        /// The store's limit.
        limit: usize,
    },
    /// The backend failed (network, permissions, ...); `source` is the backend's own error.
    #[error("session store error: {message}")]
    Backend {
        /// What failed.
        message: String,
        /// The backend's error, when there is one.
        #[source]
        source: Option<crate::error::Cause>,
    },
    /// The store did not answer within the invocation's bound; whether the operation took
    /// effect is unknown (a conditional write that did is found by the next load).
    #[error("the session store did not answer `{operation}` within the invocation's time limit")]
    Timeout {
        /// `load`, `append` or `save_state`.
        operation: &'static str,
    },
}

impl StoreError {
    /// A backend failure with its cause.
    pub fn backend(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Backend {
            message: message.into(),
            source: Some(crate::error::Cause::new(source)),
        }
    }

    /// A backend failure with no underlying error.
    pub fn backend_message(message: impl Into<String>) -> Self {
        Self::Backend {
            message: message.into(),
            source: None,
        }
    }
}

/// Durable session storage. Implementations must make [`SessionStore::append`] and
/// [`SessionStore::save_state`] conditional, as documented.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Loads a session; `None` if it does not exist.
    async fn load(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError>;

    /// Appends messages, provided exactly `expected_len` messages are stored now; otherwise
    /// fails with [`StoreError::Conflict`] and writes nothing.
    async fn append(
        &self,
        key: &SessionKey,
        expected_len: usize,
        messages: &[Message],
    ) -> Result<(), StoreError>;

    /// Saves the state, provided its stored version is `expected`; returns the new version. A
    /// stale version fails with [`StoreError::Conflict`].
    async fn save_state(
        &self,
        key: &SessionKey,
        state: &SessionState,
        expected: &StateVersion,
    ) -> Result<StateVersion, StoreError>;
}

#[derive(Debug, Default)]
struct Record {
    messages: Vec<Message>,
    state: SessionState,
    version: u64,
}

impl Record {
    fn version_token(&self) -> StateVersion {
        StateVersion((self.version > 0).then(|| self.version.to_string()))
    }
}

/// Sessions in process memory: the embedded default, for tests and single-replica services.
#[derive(Debug, Default, Clone)]
pub struct InMemorySessionStore {
    sessions: Arc<Mutex<HashMap<SessionKey, Record>>>,
}

impl InMemorySessionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of sessions stored.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Record>> {
        // Every critical section below leaves the map consistent, so a poisoned lock is usable.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl SessionStore for InMemorySessionStore {
    async fn load(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        Ok(self.lock().get(key).map(|r| StoredSession {
            messages: r.messages.clone(),
            state: r.state.clone(),
            state_version: r.version_token(),
        }))
    }

    async fn append(
        &self,
        key: &SessionKey,
        expected_len: usize,
        messages: &[Message],
    ) -> Result<(), StoreError> {
        let mut map = self.lock();
        let record = map.entry(key.clone()).or_default();
        if record.messages.len() != expected_len {
            return Err(StoreError::Conflict {
                session_id: key.session_id.to_string(),
                detail: format!(
                    "expected {expected_len} stored messages, found {}",
                    record.messages.len()
                ),
            });
        }
        record.messages.extend_from_slice(messages);
        Ok(())
    }

    async fn save_state(
        &self,
        key: &SessionKey,
        state: &SessionState,
        expected: &StateVersion,
    ) -> Result<StateVersion, StoreError> {
        let mut map = self.lock();
        let record = map.entry(key.clone()).or_default();
        let current = record.version_token();
        if &current != expected {
            return Err(StoreError::Conflict {
                session_id: key.session_id.to_string(),
                detail: format!(
                    "expected state version {:?}, found {:?}",
                    expected.0, current.0
                ),
            });
        }
        record.state = state.clone();
        record.version += 1;
        Ok(record.version_token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("session", "alice-trip_7.v2").is_ok());
        for bad in ["", ".", "..", "a/b", "a\\b", "a\nb", &"x".repeat(257)] {
            assert!(validate_id("session", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn appends_and_saves_are_conditional() {
        let store = InMemorySessionStore::new();
        let key = SessionKey::new("s", "default").expect("key");
        store
            .append(&key, 0, &[Message::user("a")])
            .await
            .expect("first");
        let stale = store.append(&key, 0, &[Message::user("b")]).await;
        assert!(matches!(stale, Err(StoreError::Conflict { .. })));
        let v = store
            .save_state(&key, &SessionState::default(), &StateVersion::none())
            .await
            .expect("save");
        assert_eq!(v, StateVersion(Some("1".into())));
        assert!(matches!(
            store
                .save_state(&key, &SessionState::default(), &StateVersion::none())
                .await,
            Err(StoreError::Conflict { .. })
        ));
        let loaded = store.load(&key).await.expect("load").expect("exists");
        assert_eq!(loaded.messages, vec![Message::user("a")]);
        assert_eq!(loaded.state_version, v);
    }
}
