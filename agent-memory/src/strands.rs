//! Strands' session layout and JSON documents, shared by the S3 and file stores.
//!
//! ```text
//! [<prefix>/]session_<session_id>/session.json
//! [<prefix>/]session_<session_id>/agents/agent_<agent_id>/agent.json
//! [<prefix>/]session_<session_id>/agents/agent_<agent_id>/messages/message_<n>.json
//! ```

// The helpers serve the three stores; with only some of them compiled, some go unused.
#![cfg_attr(
    not(all(feature = "s3", feature = "dynamodb", feature = "file")),
    allow(dead_code)
)]

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
            format!("session_{}", key.session_id())
        } else {
            format!("{prefix}/session_{}", key.session_id())
        };
        let agent_dir = format!("{session_dir}/agents/agent_{}", key.agent_id());
        Self {
            session_dir,
            agent_dir,
        }
    }

    /// The layout on a file system, where a name has at most 255 bytes: a `session_<id>` or
    /// `agent_<id>` longer than that is named by the SHA-256 of the id instead
    /// (`session_~<64 hex digits>`), so every valid id (up to 256 characters of up to 4 bytes)
    /// has a directory and no two ids share one. Shorter names are Strands' own.
    pub(crate) fn for_files(key: &SessionKey) -> Self {
        let session_dir = file_name("session_", key.session_id());
        let agent_dir = format!(
            "{session_dir}/agents/{}",
            file_name("agent_", key.agent_id())
        );
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

/// `<prefix><id>`, or `<prefix>~<sha256 of id>` when that is longer than a file name may be.
fn file_name(prefix: &str, id: &str) -> String {
    const MAX_NAME: usize = 255;
    if prefix.len() + id.len() <= MAX_NAME {
        return format!("{prefix}{id}");
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}~{hex}")
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

/// The agent document for a state, written over `previous` (the document as stored, if any):
/// what we do not own is kept, as another writer (Python Strands) recorded it: `created_at`,
/// unknown fields, the interrupt and model state, the conversation manager's other fields.
/// `version` is stored for stores without native versions.
pub(crate) fn agent_doc(
    previous: Option<&[u8]>,
    agent_id: &str,
    state: &SessionState,
    version: Option<u64>,
) -> Vec<u8> {
    let ts = now();
    let mut doc = previous
        .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(bytes).ok())
        .unwrap_or_default();
    doc.insert("agent_id".into(), json!(agent_id));
    doc.insert("state".into(), Value::Object(state.agent_state.clone()));
    let mut cm = take_object(&mut doc, "conversation_manager_state");
    cm.entry("__name__")
        .or_insert_with(|| json!("SlidingWindowConversationManager"));
    cm.insert(
        "removed_message_count".into(),
        json!(if state.window.pinned.is_none() {
            state.window.start
        } else {
            0
        }),
    );
    cm.insert("rust_window".into(), json!(state.window));
    if let Some(summary) = &state.window.summary {
        // Strands' summarising manager keeps its summary as a user message it puts first.
        cm.insert("__name__".into(), json!("SummarizingConversationManager"));
        cm.insert(
            "summary_message".into(),
            json!({"role": "user", "content": [{"text": summary}]}),
        );
    } else if cm.remove("summary_message").is_some() {
        // The window has no summary (any more): none may be put before it.
        cm.insert("__name__".into(), json!("SlidingWindowConversationManager"));
    }
    doc.insert("conversation_manager_state".into(), Value::Object(cm));
    let mut internal = take_object(&mut doc, "_internal_state");
    if state.checkpoint.interrupts.is_empty() {
        // No question waits: any earlier one (ours, or Python's, which a load imports) was
        // answered or abandoned by the run that saves this.
        let waiting = internal
            .get("interrupt_state")
            .and_then(|s| s.get("activated"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if waiting {
            internal.remove("interrupt_state");
        }
        internal
            .entry("interrupt_state")
            .or_insert_with(|| json!({"interrupts": {}, "context": {}, "activated": false}));
    } else {
        // Strands' shape: the questions by id (Strands' ids), activated, and the pending tool
        // execution (the calls' message and the results already in), so a Python agent on
        // this session resumes it with `interruptResponse`s as it would its own.
        let interrupts: Map<String, Value> = state
            .checkpoint
            .interrupts
            .iter()
            .map(|i| {
                (
                    i.id.clone(),
                    json!({"id": i.id, "name": i.name, "reason": i.reason, "response": i.response}),
                )
            })
            .collect();
        let mut interrupt_state =
            json!({"interrupts": interrupts, "context": {}, "activated": true, "rust": true});
        if let Some(message) = &state.checkpoint.interrupted_message {
            interrupt_state["pending_tool_execution"] = json!({
                "assistant_message": message,
                "completed_tool_results": state.checkpoint.completed_tool_results,
            });
        }
        internal.insert("interrupt_state".into(), interrupt_state);
    }
    internal.entry("model_state").or_insert_with(|| json!({}));
    match version {
        Some(v) => {
            internal.insert("rust_state_version".into(), json!(v));
        }
        None => {
            internal.remove("rust_state_version");
        }
    }
    if state.checkpoint.is_empty() {
        internal.remove("rust_checkpoint");
    } else {
        internal.insert("rust_checkpoint".into(), json!(state.checkpoint));
    }
    doc.insert("_internal_state".into(), Value::Object(internal));
    doc.entry("created_at").or_insert_with(|| json!(ts));
    doc.insert("updated_at".into(), json!(ts));
    pretty(&Value::Object(doc))
}

/// The object under `key` (empty if it is missing or not an object), taken out of `doc`.
fn take_object(doc: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match doc.remove(key) {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    }
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
            // A summary Strands' summarising manager wrote: the text of its summary message.
            summary: cm
                .get("summary_message")
                .and_then(|m| m.get("content"))
                .and_then(Value::as_array)
                .map(|blocks| {
                    blocks
                        .iter()
                        .filter_map(|b| b.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .filter(|s| !s.trim().is_empty()),
        },
    };
    let version = doc
        .internal_state
        .as_ref()
        .and_then(|i| i.get("rust_state_version"))
        .and_then(Value::as_u64);
    let checkpoint = match doc
        .internal_state
        .as_ref()
        .and_then(|i| i.get("rust_checkpoint"))
    {
        Some(c) => serde_json::from_value(c.clone())
            .map_err(|e| corrupt(key, format!("agent.json checkpoint: {e}")))?,
        // A Python agent's interrupted run: its questions and pending tool execution, so
        // `respond` here answers it.
        None => doc
            .internal_state
            .as_ref()
            .and_then(|i| i.get("interrupt_state"))
            .map(strands_interrupts)
            .unwrap_or_default(),
    };
    Ok((
        SessionState {
            agent_state: doc.state,
            window,
            checkpoint,
        },
        version,
    ))
}

/// The checkpoint of an interrupt state Strands wrote: its waiting questions (with the tool
/// call each names) and its pending tool execution. Nothing when it is not activated or does
/// not parse.
fn strands_interrupts(state: &Value) -> agent_core::session::RunCheckpoint {
    let mut checkpoint = agent_core::session::RunCheckpoint::default();
    if state.get("activated").and_then(Value::as_bool) != Some(true) {
        return checkpoint;
    }
    let pending = state.get("pending_tool_execution");
    checkpoint.interrupted_message = pending
        .and_then(|p| p.get("assistant_message"))
        .and_then(|m| serde_json::from_value(m.clone()).ok());
    checkpoint.completed_tool_results = pending
        .and_then(|p| p.get("completed_tool_results"))
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default();
    checkpoint.interrupts = state
        .get("interrupts")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(id, i)| {
            Some(agent_core::interrupt::Interrupt {
                id: id.clone(),
                name: i.get("name")?.as_str()?.to_owned(),
                reason: i.get("reason").cloned().unwrap_or(Value::Null),
                tool_use_id: agent_core::interrupt::Interrupt::tool_use_of(id)?.to_owned(),
                response: i.get("response").cloned().filter(|r| !r.is_null()),
            })
        })
        .collect();
    checkpoint
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
        session_id: key.session_id().to_string(),
        detail,
    }
}

pub(crate) fn conflict(key: &SessionKey, detail: String) -> StoreError {
    StoreError::Conflict {
        session_id: key.session_id().to_string(),
        detail,
    }
}

fn pretty(v: &Value) -> Vec<u8> {
    // Serialising a Value built from serialisable parts cannot fail.
    serde_json::to_vec_pretty(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SessionKey {
        SessionKey::new("s", "a").expect("key")
    }

    /// Pieces of the documents Strands and we write, so the fuzzer reaches past the parser.
    fn document() -> impl Strategy<Value = Vec<u8>> {
        let value = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            ".{0,6}".prop_map(Value::from),
            Just(json!({"role": "user", "content": [{"text": "hi"}]})),
            Just(json!({"start": 3, "pinned": null})),
            Just(
                json!({"completed_tool_results": [{"toolUseId": "x", "status": "success", "content": []}]})
            ),
        ];
        let keys = prop_oneof![
            Just("message"),
            Just("message_id"),
            Just("redact_message"),
            Just("state"),
            Just("conversation_manager_state"),
            Just("_internal_state"),
            Just("rust_window"),
            Just("removed_message_count"),
            Just("rust_state_version"),
            Just("rust_checkpoint"),
        ];
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec((keys, value.clone()), 0..6).prop_map(|fields| {
                let mut doc = Map::new();
                for (k, v) in fields {
                    doc.insert(k.to_owned(), v);
                }
                // Nest the window and checkpoint fields where the readers look for them.
                let nested = json!({"rust_window": doc.get("rust_window"), "rust_checkpoint": doc.get("rust_checkpoint"), "rust_state_version": doc.get("rust_state_version"), "removed_message_count": doc.get("removed_message_count")});
                doc.insert("conversation_manager_state".into(), nested.clone());
                doc.insert("_internal_state".into(), nested);
                serde_json::to_vec(&doc).unwrap_or_default()
            }),
        ]
    }

    proptest! {
        /// Any stored document, from any writer: parsed, or a typed corruption error naming
        /// the session, never a panic.
        #[test]
        fn fuzz_stored_documents(bytes in document()) {
            match parse_message(&key(), "message_0.json", &bytes) {
                Ok(_) => {}
                Err(e) => prop_assert!(matches!(e, StoreError::Corrupt { .. }), "{e}"),
            }
            match parse_agent(&key(), &bytes) {
                Ok((state, _)) => {
                    // What we read we can write back, and read again the same.
                    let again = agent_doc(Some(&bytes), "a", &state, Some(1));
                    let (reread, version) = parse_agent(&key(), &again).expect("our own document");
                    prop_assert_eq!(reread, state);
                    prop_assert_eq!(version, Some(1));
                }
                Err(e) => prop_assert!(matches!(e, StoreError::Corrupt { .. }), "{e}"),
            }
        }
    }
}
