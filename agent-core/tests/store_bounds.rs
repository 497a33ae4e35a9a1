//! A session store that stops answering cannot hold an invocation (and its session lock) past
//! the invocation's bound. The clock is Tokio's paused clock, so the test waits for nothing.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use agent_core::message::Message;
use agent_core::model::{Model, ModelDescriptor, ModelRequest, ModelStream};
use agent_core::prelude::*;
use agent_core::session::{
    InMemorySessionStore, SessionKey, SessionState, SessionStore, StateVersion, StoreError,
    StoredSession,
};

/// Hangs in the operation named, and answers the others from memory.
struct Hanging {
    operation: &'static str,
    inner: InMemorySessionStore,
}

#[async_trait::async_trait]
impl SessionStore for Hanging {
    async fn load(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        if self.operation == "load" {
            std::future::pending::<()>().await;
        }
        self.inner.load(key).await
    }

    async fn append(
        &self,
        key: &SessionKey,
        expected_len: usize,
        messages: &[Message],
    ) -> Result<(), StoreError> {
        if self.operation == "append" {
            std::future::pending::<()>().await;
        }
        self.inner.append(key, expected_len, messages).await
    }

    async fn save_state(
        &self,
        key: &SessionKey,
        state: &SessionState,
        expected: &StateVersion,
    ) -> Result<StateVersion, StoreError> {
        self.inner.save_state(key, state, expected).await
    }
}

/// Never called: the store hangs first.
struct Unreachable;

impl Model for Unreachable {
    fn stream(&self, _request: &ModelRequest<'_>) -> ModelStream {
        Box::pin(futures::stream::empty())
    }

    fn descriptor(&self) -> ModelDescriptor {
        ModelDescriptor::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_store_ends_the_invocation_with_a_typed_error_at_its_bound() {
    for operation in ["load", "append"] {
        let agent = Agent::builder()
            .model(Unreachable)
            .session_store(Hanging {
                operation,
                inner: InMemorySessionStore::new(),
            })
            .limits(Limits::default().timeout(Duration::from_secs(60)))
            .build()
            .expect("agent");
        let started = tokio::time::Instant::now();
        let err = agent
            .session("s")
            .invoke("hi")
            .await
            .expect_err("the store never answers");
        match err {
            AgentError::Store(StoreError::Timeout { operation: op }) => assert_eq!(op, operation),
            other => panic!("{operation}: {other:?}"),
        }
        // The invocation's limit, on the paused clock.
        assert_eq!(started.elapsed().as_secs(), 60, "{operation}");
    }
}
