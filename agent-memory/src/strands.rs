//! Strands' session layout and JSON documents, shared by the S3 and file stores.
//!
//! ```text
//! [<prefix>/]session_<session_id>/session.json
//! [<prefix>/]session_<session_id>/agents/agent_<agent_id>/agent.json
//! [<prefix>/]session_<session_id>/agents/agent_<agent_id>/messages/message_<n>.json
//! ```

use agent_core::conversation::ContextWindow;
use agent_core::message::Message;
use agent_core::session::{SessionKey, SessionState, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Keys of one session's objects.
pub(crate) struct Layout {
    session_dir: String,
    agent_dir: String,
}

impl Layout {
    pub(crate) fn new(prefix: &str, key: &SessionKey) -> Self {
        let prefix = prefix.trim_matches('/');
        let session_dir = if prefix.is_empty() {
            format!("session_{}", key.session_id)
        } else {
            format!("{prefix}/session_{}", key.session_id)
        };
        let agent_dir = format!("{session_dir}/agents/agent_{}", key.agent_id);
        Self {
            session_dir,
            agent_dir,
        }
    }

    pub(crate) fn session(&self) -> String {
        format!("{}/session.json", self.session_dir)
    }

    pub(crate) fn agent(&self) -> String {
        format!("{}/agent.json", self.agent_dir)
    }

    pub(crate) fn messages_dir(&self) -> String {
        format!("{}/messages/", self.agent_dir)
    }

    pub(crate) fn message(&self, index: usize) -> String {
        format!("{}/messages/message_{index}.json", self.agent_dir)
    }
}

/// The index of a `message_<n>.json` key, if it is one.
pub(crate) fn message_index(key: &str) -> Option<usize> {
    let name = key.rsplit('/').next()?;
    name.strip_prefix("message_")?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

pub(crate) fn now() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

pub(crate) fn session_doc(session_id: &str) -> Vec<u8> {
    let ts = now();
    pretty(
        &json!({"session_id": session_id, "session_type": "AGENT", "created_at": ts, "updated_at": ts}),
    )
}

#[derive(Serialize, Deserialize)]
struct MessageDoc {
    message: Message,
    message_id: usize,
    #[serde(default)]
    redact_message: Option<Message>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
}

pub(crate) fn message_doc(index: usize, message: &Message) -> Vec<u8> {
    let ts = now();
    pretty(
        &json!({"message": message, "message_id": index, "redact_message": null, "created_at": ts, "updated_at": ts}),
    )
}

/// Reads a stored message (its redacted form when Strands redacted it).
pub(crate) fn parse_message(
    key: &SessionKey,
    object: &str,
    bytes: &[u8],
) -> Result<Message, StoreError> {
    let doc: MessageDoc =
        serde_json::from_slice(bytes).map_err(|e| corrupt(key, format!("{object}: {e}")))?;
    Ok(doc.redact_message.unwrap_or(doc.message))
}

#[derive(Deserialize)]
struct AgentDoc {
    #[serde(default)]
    state: Map<String, Value>,
    #[serde(default)]
    conversation_manager_state: Option<Value>,
    #[serde(default, rename = "_internal_state")]
    internal_state: Option<Value>,
}

/// The agent document for a state; `version` is stored for stores without native versions.
pub(crate) fn agent_doc(agent_id: &str, state: &SessionState, version: Option<u64>) -> Vec<u8> {
    let ts = now();
    let mut internal = json!({"interrupt_state": {"interrupts": {}, "context": {}, "activated": false}, "model_state": {}});
    if let Some(v) = version {
        internal["rust_state_version"] = json!(v);
    }
    pretty(&json!({
        "agent_id": agent_id,
        "state": state.agent_state,
        "conversation_manager_state": {
            "__name__": "SlidingWindowConversationManager",
            "removed_message_count": if state.window.pinned.is_none() { state.window.start } else { 0 },
            "rust_window": state.window,
        },
        "_internal_state": internal,
        "created_at": ts,
        "updated_at": ts,
    }))
}

/// Reads an agent document written by Strands or by us; returns the state and our stored
/// version counter, if any.
pub(crate) fn parse_agent(
    key: &SessionKey,
    bytes: &[u8],
) -> Result<(SessionState, Option<u64>), StoreError> {
    let doc: AgentDoc =
        serde_json::from_slice(bytes).map_err(|e| corrupt(key, format!("agent.json: {e}")))?;
    let cm = doc.conversation_manager_state.unwrap_or(Value::Null);
    let window = match cm.get("rust_window") {
        Some(w) => serde_json::from_value(w.clone())
            .map_err(|e| corrupt(key, format!("agent.json window: {e}")))?,
        None => ContextWindow {
            start: cm
                .get("removed_message_count")
                .and_then(Value::as_u64)
                .unwrap_or(0) as usize,
            pinned: None,
        },
    };
    let version = doc
        .internal_state
        .as_ref()
        .and_then(|i| i.get("rust_state_version"))
        .and_then(Value::as_u64);
    Ok((
        SessionState {
            agent_state: doc.state,
            window,
        },
        version,
    ))
}

/// Checks that message indices run 0..n without a gap.
pub(crate) fn check_contiguous(key: &SessionKey, indices: &[usize]) -> Result<(), StoreError> {
    for (expected, &found) in indices.iter().enumerate() {
        if found != expected {
            return Err(corrupt(
                key,
                format!("message_{expected}.json is missing (found message_{found}.json)"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn corrupt(key: &SessionKey, detail: String) -> StoreError {
    StoreError::Corrupt {
        session_id: key.session_id.to_string(),
        detail,
    }
}

pub(crate) fn conflict(key: &SessionKey, detail: String) -> StoreError {
    StoreError::Conflict {
        session_id: key.session_id.to_string(),
        detail,
    }
}

fn pretty(v: &Value) -> Vec<u8> {
    // Serialising a Value built from serialisable parts cannot fail.
    serde_json::to_vec_pretty(v).unwrap_or_default()
}
