//! Session storage: the [`SessionStore`] trait and the in-memory store.
//!
//! A session is an append-only log of messages plus a small state object (the agent state and
//! the context window). Writers say what they expect: a message append names the sequence number
//! (the number of messages already stored) and a state save names the version it read. A writer
//! whose expectation is stale gets [`StoreError::Conflict`] and nothing is overwritten, which is
//! what keeps several replicas from losing or interleaving messages.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The run in flight, when the agent takes replica leases
    /// ([`AgentBuilder::replica_lease`](crate::agent::AgentBuilder::replica_lease)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<RunLease>,
    /// The questions an interrupted run waits on ([`crate::interrupt`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interrupts: Vec<crate::interrupt::Interrupt>,
    /// The assistant message whose tool calls wait on them (what Strands keeps as its
    /// pending tool execution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_message: Option<crate::message::Message>,
}

impl RunCheckpoint {
    /// Whether there is nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.completed_tool_results.is_empty()
            && self.invocation.is_none()
            && self.lease.is_none()
            && self.interrupts.is_empty()
            && self.interrupted_message.is_none()
    }
}

/// A run's claim on its session, so that a run on another replica does not run beside it:
/// taken before the run writes anything, renewed at each save, released at its end. A process
/// that dies leaves it to expire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLease {
    /// The run that holds it: `<agent instance>/<run>`, random ids.
    pub owner: String,
    /// When it expires, in milliseconds since the Unix epoch.
    pub until_ms: u64,
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
    /// The structured value it gave, when it was asked for one, for a retry to get again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured_output: Option<serde_json::Value>,
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

/// What a [`SessionStore`] holds for one session: its messages, its state and the state's
/// version (for conditional writes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredSession {
    /// All messages, oldest first.
    pub messages: Vec<Message>,
    /// The state.
    pub state: SessionState,
    /// The state's version.
    pub state_version: StateVersion,
}

/// Why a session store operation failed: a conflicting writer, a bound that passed, an id
/// the store refuses, or the backend's own failure with its cause.
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

/// A shared store is a store: `Arc<dyn SessionStore>` (or `Arc<S>`) goes wherever a store does.
#[async_trait]
impl<S: SessionStore + ?Sized> SessionStore for Arc<S> {
    async fn load(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        (**self).load(key).await
    }

    async fn append(
        &self,
        key: &SessionKey,
        expected_len: usize,
        messages: &[Message],
    ) -> Result<(), StoreError> {
        (**self).append(key, expected_len, messages).await
    }

    async fn save_state(
        &self,
        key: &SessionKey,
        state: &SessionState,
        expected: &StateVersion,
    ) -> Result<StateVersion, StoreError> {
        (**self).save_state(key, state, expected).await
    }
}

#[derive(Debug)]
struct Record {
    messages: Vec<Message>,
    state: SessionState,
    /// The version token of the last save (store-wide counter, so that a session evicted and
    /// created again never hands out a token an old writer still holds); 0 before the first.
    version: u64,
    /// Its position in the recency order.
    tick: u64,
}

impl Record {
    fn version_token(&self) -> StateVersion {
        StateVersion((self.version > 0).then(|| self.version.to_string()))
    }
}

/// Sessions kept by default before the least recently used is evicted.
pub const DEFAULT_SESSION_CAPACITY: usize = 10_000;

/// Idle time after which a session is forgotten by default.
pub const DEFAULT_SESSION_IDLE_EXPIRY: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Sessions {
    map: HashMap<SessionKey, Record>,
    /// Keys and the time of their last use (load or write) by the tick of that use, least
    /// recent first.
    recency: BTreeMap<u64, (SessionKey, Instant)>,
    tick: u64,
    versions: u64,
    capacity: usize,
    idle_expiry: Option<Duration>,
    evicted: u64,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            recency: BTreeMap::new(),
            tick: 0,
            versions: 0,
            capacity: DEFAULT_SESSION_CAPACITY,
            idle_expiry: Some(DEFAULT_SESSION_IDLE_EXPIRY),
            evicted: 0,
        }
    }
}

impl Sessions {
    /// Drops sessions idle for longer than the expiry, and the least recently used ones while
    /// more than `keep` are stored. Only the oldest entries are looked at, without hashing.
    fn sweep(&mut self, now: Instant, keep: usize) {
        while let Some(entry) = self.recency.first_entry() {
            let (_, last_used) = entry.get();
            let expired = self
                .idle_expiry
                .is_some_and(|ttl| now.saturating_duration_since(*last_used) >= ttl);
            if !expired && self.map.len() <= keep {
                break;
            }
            let (key, _) = entry.remove();
            self.map.remove(&key);
            self.evicted += 1;
        }
    }

    /// The record of `key`, marked as used now; created if `create`.
    fn touch(&mut self, key: &SessionKey, create: bool) -> Option<&mut Record> {
        let now = Instant::now();
        // Room for a new session, counted before it exists (looked up only when full).
        let keep = if create && self.map.len() >= self.capacity && !self.map.contains_key(key) {
            self.capacity.saturating_sub(1)
        } else {
            self.capacity
        };
        self.sweep(now, keep);
        self.tick += 1;
        let tick = self.tick;
        let record = match self.map.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let record = e.into_mut();
                self.recency.remove(&record.tick);
                record.tick = tick;
                record
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                if !create {
                    return None;
                }
                e.insert(Record {
                    messages: Vec::new(),
                    state: SessionState::default(),
                    version: 0,
                    tick,
                })
            }
        };
        self.recency.insert(tick, (key.clone(), now));
        Some(record)
    }
}

/// Sessions in process memory: the embedded default, for tests and single-replica services.
///
/// The store is bounded so that a long-running service with fresh session ids keeps a flat
/// memory footprint:
/// - a session not loaded or written for the **idle expiry** (default one hour) is forgotten;
/// - when a new session would exceed the **capacity** (default 10,000), the least recently
///   used session is forgotten first.
///
/// A forgotten session loads as `None`: its next invocation starts a new conversation. A run
/// still writing to a session that was forgotten under it gets [`StoreError::Conflict`] (its
/// expected message count and state version no longer match), never a silent overwrite; the
/// run's own session is the most recently used one, so this needs `capacity` other sessions
/// used in the meantime. Sessions that must survive restarts, replicas or eviction belong in a
/// durable store (S3, DynamoDB, files).
#[derive(Debug, Default, Clone)]
pub struct InMemorySessionStore {
    sessions: Arc<Mutex<Sessions>>,
}

impl InMemorySessionStore {
    /// An empty store with the default bounds ([`DEFAULT_SESSION_CAPACITY`] sessions,
    /// [`DEFAULT_SESSION_IDLE_EXPIRY`] of idleness).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how many sessions are kept (at least one); the least recently used is forgotten
    /// first. `usize::MAX` keeps every session. Clones share their sessions and these bounds.
    pub fn capacity(self, sessions: usize) -> Self {
        {
            let mut s = self.lock();
            s.capacity = sessions.max(1);
            let keep = s.capacity;
            s.sweep(Instant::now(), keep);
        }
        self
    }

    /// Sets how long a session may stay unused before it is forgotten; `None` keeps idle
    /// sessions until the capacity evicts them. Clones share their sessions and these bounds.
    pub fn idle_expiry(self, expiry: Option<Duration>) -> Self {
        {
            let mut s = self.lock();
            s.idle_expiry = expiry;
            let keep = s.capacity;
            s.sweep(Instant::now(), keep);
        }
        self
    }

    /// Number of sessions stored (idle ones past their expiry included until the next access).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of sessions forgotten so far, by idle expiry or capacity.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // Every critical section below leaves the map consistent, so a poisoned lock is usable.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl SessionStore for InMemorySessionStore {
    async fn load(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        Ok(self.lock().touch(key, false).map(|r| StoredSession {
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
        let mut sessions = self.lock();
        let conflict = |found: usize| StoreError::Conflict {
            session_id: key.session_id.to_string(),
            detail: format!("expected {expected_len} stored messages, found {found}"),
        };
        // Only an append of the first messages creates a session.
        let Some(record) = sessions.touch(key, expected_len == 0) else {
            return Err(conflict(0));
        };
        if record.messages.len() != expected_len {
            return Err(conflict(record.messages.len()));
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
        let mut sessions = self.lock();
        let conflict = |found: &StateVersion| StoreError::Conflict {
            session_id: key.session_id.to_string(),
            detail: format!(
                "expected state version {:?}, found {:?}",
                expected.0, found.0
            ),
        };
        sessions.versions += 1;
        let version = sessions.versions;
        // Only a first save creates a session.
        let Some(record) = sessions.touch(key, expected.0.is_none()) else {
            return Err(conflict(&StateVersion::none()));
        };
        let current = record.version_token();
        if &current != expected {
            return Err(conflict(&current));
        }
        record.state = state.clone();
        record.version = version;
        Ok(record.version_token())
    }
}

/// A session's key-value state (Strands' `agent.state`): loaded with the session, shared by the
/// invocation's tools and hooks, saved with the session after each tool batch and at the end of
/// a run.
#[derive(Debug, Clone, Default)]
pub struct AgentState {
    inner: Arc<Mutex<StateInner>>,
}

#[derive(Debug, Default)]
struct StateInner {
    values: Map<String, Value>,
    dirty: bool,
}

impl AgentState {
    /// State holding these values.
    pub fn from_map(values: Map<String, Value>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(StateInner {
                values,
                dirty: false,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StateInner> {
        // A panic while holding the lock cannot leave the map half-written: every operation
        // below is a single map call. Recover the guard instead of propagating the poison.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The value stored under `key`, cloned; `None` when there is none.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.lock().values.get(key).cloned()
    }

    /// Sets a value.
    pub fn set(&self, key: impl Into<String>, value: Value) {
        let mut g = self.lock();
        g.values.insert(key.into(), value);
        g.dirty = true;
    }

    /// Removes a value.
    pub fn remove(&self, key: &str) -> Option<Value> {
        let mut g = self.lock();
        let old = g.values.remove(key);
        g.dirty |= old.is_some();
        old
    }

    /// All values, cloned: what is persisted with the session.
    pub fn to_map(&self) -> Map<String, Value> {
        self.lock().values.clone()
    }

    /// Whether the state changed since it was loaded or last marked clean.
    pub(crate) fn take_dirty(&self) -> bool {
        std::mem::take(&mut self.lock().dirty)
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

    fn key(id: &str) -> SessionKey {
        SessionKey::new(id, "default").expect("key")
    }

    #[tokio::test]
    async fn the_least_recently_used_session_is_evicted_at_capacity() {
        let store = InMemorySessionStore::new().capacity(2);
        store
            .append(&key("a"), 0, &[Message::user("a")])
            .await
            .expect("a");
        store
            .append(&key("b"), 0, &[Message::user("b")])
            .await
            .expect("b");
        // `a` is used again, so `b` is the least recently used when `c` arrives.
        assert!(store.load(&key("a")).await.expect("load").is_some());
        store
            .append(&key("c"), 0, &[Message::user("c")])
            .await
            .expect("c");
        assert_eq!(store.len(), 2);
        assert_eq!(store.evicted(), 1);
        assert!(store.load(&key("b")).await.expect("load").is_none());
        assert!(store.load(&key("a")).await.expect("load").is_some());
        assert!(store.load(&key("c")).await.expect("load").is_some());
        // A load of a missing session does not create one.
        assert_eq!(store.len(), 2);
    }

    #[tokio::test]
    async fn idle_sessions_expire() {
        let store = InMemorySessionStore::new().idle_expiry(Some(Duration::ZERO));
        store
            .append(&key("a"), 0, &[Message::user("a")])
            .await
            .expect("a");
        // Any later access sweeps it.
        assert!(store.load(&key("a")).await.expect("load").is_none());
        assert_eq!(store.evicted(), 1);
        let kept = InMemorySessionStore::new().idle_expiry(None);
        kept.append(&key("a"), 0, &[Message::user("a")])
            .await
            .expect("a");
        assert!(kept.load(&key("a")).await.expect("load").is_some());
    }

    #[tokio::test]
    async fn a_writer_whose_session_was_evicted_gets_a_conflict_not_a_new_session() {
        let store = InMemorySessionStore::new().capacity(1);
        store
            .append(&key("a"), 0, &[Message::user("a")])
            .await
            .expect("a");
        let v = store
            .save_state(&key("a"), &SessionState::default(), &StateVersion::none())
            .await
            .expect("save");
        store
            .append(&key("b"), 0, &[Message::user("b")])
            .await
            .expect("b");
        assert!(matches!(
            store.append(&key("a"), 1, &[Message::user("more")]).await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            store
                .save_state(&key("a"), &SessionState::default(), &v)
                .await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(store.load(&key("a")).await.expect("load").is_none());
        // A session created again never reuses a version an old writer may hold.
        store
            .append(&key("a"), 0, &[Message::user("again")])
            .await
            .expect("again");
        let v2 = store
            .save_state(&key("a"), &SessionState::default(), &StateVersion::none())
            .await
            .expect("save");
        assert_ne!(v, v2);
    }
}
