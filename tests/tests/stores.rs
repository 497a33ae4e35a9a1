//! Session stores against a real local S3/DynamoDB server (ministack, started by
//! `scripts/test.sh` through `scripts/aws-local.sh`, found through `AWS_ENDPOINT_URL`), and the
//! file store on a temporary directory: Strands interop, conditional writes, replicas racing.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent_core::history::History;
use agent_core::message::{ContentBlock, Message, Role};
use agent_core::prelude::*;
use agent_core::session::{SessionKey, SessionState, SessionStore, StateVersion, StoreError};
use agent_memory::{DynamoDbSessionStore, FileSessionStore, S3SessionStore};
use agent_tests::{MockVllm, Turn, provider};
use aws_sdk_s3::primitives::ByteStream;
use serde_json::{Value, json};

async fn clients() -> (aws_sdk_s3::Client, aws_sdk_dynamodb::Client) {
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        panic!(
            "AWS_ENDPOINT_URL is not set: these tests need the local DynamoDB/S3 server. Run scripts/test.sh, or \
             `scripts/aws-local.sh start` and export AWS_ENDPOINT_URL=<the URL it prints> AWS_ACCESS_KEY_ID=test \
             AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1"
        );
    }
    agent_tests::aws_clients().await
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{:x}-{:x}", nanos, std::process::id())
}

async fn bucket(s3: &aws_sdk_s3::Client) -> String {
    let name = unique("sessions");
    s3.create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("create bucket");
    name
}

async fn table(ddb: aws_sdk_dynamodb::Client) -> DynamoDbSessionStore {
    let store = DynamoDbSessionStore::new(ddb, unique("sessions"));
    store.create_table().await.expect("create table");
    store
}

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/strands-session")
}

fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((relative, std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// Checks a restored Strands session and continues it with an agent.
async fn continue_strands_session(store: Arc<dyn SessionStore>) {
    let key = SessionKey::new("trip-1", "default").unwrap();
    let loaded = store.load(&key).await.expect("load").expect("exists");
    assert_eq!(loaded.messages.len(), 4);
    assert_eq!(loaded.state.agent_state["preferred_airline"], "TAP");
    assert_eq!(loaded.messages[3].text(), "Sunny in Lisbon, 21 C.");
    History::restore(loaded.messages).expect("a valid history");

    let server = MockVllm::start([Turn::text("Book TAP then.")])
        .await
        .expect("server");
    let agent = Agent::builder()
        .model(provider(&server))
        .session_store(store.clone())
        .build()
        .expect("agent");
    let r = agent
        .session("trip-1")
        .invoke("Which airline?")
        .await
        .expect("invoke");
    assert_eq!(r.text(), "Book TAP then.");
    // The model saw the Python session's history.
    let sent = &server.received()[0].body["messages"];
    assert_eq!(
        sent[0],
        json!({"role": "user", "content": "Weather in Lisbon?"})
    );
    assert_eq!(sent[1]["tool_calls"][0]["id"], "tooluse_abc");
    let after = store.load(&key).await.expect("load").expect("exists");
    assert_eq!(after.messages.len(), 6);
}

#[tokio::test]
async fn s3_reads_a_session_written_by_python_strands_and_continues_it() {
    let (s3, _) = clients().await;
    let bucket = bucket(&s3).await;
    for (path, bytes) in files_under(&fixture_dir()) {
        s3.put_object()
            .bucket(&bucket)
            .key(format!("prod/{path}"))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .unwrap();
    }
    let store = Arc::new(S3SessionStore::new(s3.clone(), &bucket).with_prefix("prod"));
    continue_strands_session(store).await;
    // What we wrote is in Strands' shape, next to what Python wrote.
    let object = s3
        .get_object()
        .bucket(&bucket)
        .key("prod/session_trip-1/agents/agent_default/messages/message_5.json")
        .send()
        .await
        .unwrap();
    let doc: Value =
        serde_json::from_slice(&object.body.collect().await.unwrap().into_bytes()).unwrap();
    assert_eq!(doc["message_id"], 5);
    assert_eq!(
        doc["message"],
        json!({"role": "assistant", "content": [{"text": "Book TAP then."}]})
    );
    assert!(doc["created_at"].as_str().is_some() && doc.get("redact_message").is_some());
}

#[tokio::test]
async fn file_store_reads_a_strands_session_and_continues_it() {
    let dir = tempfile::tempdir().unwrap();
    for (path, bytes) in files_under(&fixture_dir()) {
        let target = dir.path().join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, bytes).unwrap();
    }
    continue_strands_session(Arc::new(FileSessionStore::new(dir.path()))).await;
    let written: Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("session_trip-1/agents/agent_default/messages/message_4.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(written["message"]["content"][0]["text"], "Which airline?");
}

#[tokio::test]
async fn s3_writes_documents_strands_can_read() {
    let (s3, _) = clients().await;
    let bucket = bucket(&s3).await;
    let server = MockVllm::start([
        Turn::tool_call("remember", json!({"airline": "TAP"})),
        Turn::text("Noted."),
    ])
    .await
    .expect("server");
    let remember = FnTool::new(
        "remember",
        "Remembers the airline.",
        json!({"type": "object", "properties": {"airline": {"type": "string"}}, "required": ["airline"]}),
        |input, ctx| async move {
            ctx.state.set("airline", input["airline"].clone());
            Ok(ToolOutput::text("ok"))
        },
    );
    let agent = Agent::builder()
        .model(provider(&server))
        .tool(remember)
        .session_store(S3SessionStore::new(s3.clone(), &bucket))
        .build()
        .expect("agent");
    agent
        .session("new-trip")
        .invoke("I like TAP")
        .await
        .expect("invoke");
    let get = |key: String| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            let o = s3
                .get_object()
                .bucket(&bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&o.body.collect().await.unwrap().into_bytes()).unwrap()
        }
    };
    let session = get("session_new-trip/session.json".into()).await;
    assert_eq!(session["session_id"], "new-trip");
    assert_eq!(session["session_type"], "AGENT");
    let agent_doc = get("session_new-trip/agents/agent_default/agent.json".into()).await;
    assert_eq!(agent_doc["agent_id"], "default");
    assert_eq!(agent_doc["state"], json!({"airline": "TAP"}));
    assert_eq!(
        agent_doc["conversation_manager_state"]["__name__"],
        "SlidingWindowConversationManager"
    );
    assert_eq!(
        agent_doc["conversation_manager_state"]["removed_message_count"],
        0
    );
    assert!(agent_doc["_internal_state"]["interrupt_state"].is_object());
    for i in 0..4 {
        let doc = get(format!(
            "session_new-trip/agents/agent_default/messages/message_{i}.json"
        ))
        .await;
        assert_eq!(doc["message_id"], i);
        assert!(doc["message"]["role"].is_string());
    }
    let tool_result =
        get("session_new-trip/agents/agent_default/messages/message_2.json".into()).await;
    assert_eq!(
        tool_result["message"]["content"][0]["toolResult"]["status"],
        "success"
    );
}

/// Eight writers append at the same position and save state from the same version: exactly one
/// of each wins, the others get a conflict, and nothing is overwritten.
async fn racing_writers(store: Arc<dyn SessionStore>, session: &str) {
    let key = SessionKey::new(session, "default").unwrap();
    store
        .append(&key, 0, &[Message::user("hello")])
        .await
        .expect("seed");
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let (store, key) = (store.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            store
                .append(
                    &key,
                    1,
                    &[Message::assistant(format!("answer from writer {writer}"))],
                )
                .await
                .map(|()| writer)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(w) => winners.push(w),
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins");
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(loaded.messages.len(), 2);
    assert_eq!(
        loaded.messages[1].text(),
        format!("answer from writer {}", winners[0])
    );

    let mut tasks = Vec::new();
    for writer in 0..8 {
        let (store, key) = (store.clone(), key.clone());
        let expected = loaded.state_version.clone();
        tasks.push(tokio::spawn(async move {
            let mut state = SessionState::default();
            state.agent_state.insert("writer".into(), json!(writer));
            store
                .save_state(&key, &state, &expected)
                .await
                .map(|v| (writer, v))
        }));
    }
    let mut saved = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(w) => saved.push(w),
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(saved.len(), 1, "exactly one state save wins");
    let reloaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(reloaded.state.agent_state["writer"], json!(saved[0].0));
    assert_eq!(reloaded.state_version, saved[0].1);
    // The old version is now stale.
    assert!(matches!(
        store
            .save_state(&key, &SessionState::default(), &loaded.state_version)
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store
            .save_state(&key, &SessionState::default(), &StateVersion::none())
            .await,
        Err(StoreError::Conflict { .. })
    ));
}

/// Two replicas (agents with their own stores and locks) invoke one session at once, several
/// times: each invocation succeeds or fails with a conflict, and the stored history stays valid
/// with every successful answer in it. Then the same with replica leases: the loser of each
/// round is refused as busy before it writes anything (never a conflict), and the lease is
/// released after each run.
async fn racing_replicas(make_store: impl Fn() -> Arc<dyn SessionStore>) {
    racing_replicas_with(&make_store, None, "shared").await;
    racing_replicas_with(&make_store, Some(Duration::from_secs(60)), "leased").await;
}

async fn racing_replicas_with(
    make_store: &impl Fn() -> Arc<dyn SessionStore>,
    lease: Option<Duration>,
    session: &str,
) {
    let server = MockVllm::start_bench("127.0.0.1:0").await.expect("server");
    let replica = || agent_tests::racing_replica(&server, make_store(), lease).expect("agent");
    let (a, b) = (replica(), replica());
    let mut successes = 0;
    let mut conflicts = 0;
    for round in 0..6 {
        let (sa, sb) = (a.session(session), b.session(session));
        let (ra, rb) = tokio::join!(
            sa.invoke(format!("a{round}")),
            sb.invoke(format!("b{round}"))
        );
        for r in [ra, rb] {
            match r {
                Ok(result) => {
                    assert_eq!(result.stop_reason, StopReason::EndTurn);
                    successes += 1;
                }
                Err(AgentError::Store(StoreError::Conflict { .. })) if lease.is_none() => {
                    conflicts += 1;
                }
                Err(AgentError::SessionBusy { .. }) if lease.is_some() => conflicts += 1,
                Err(e) => panic!("unexpected error (lease {lease:?}): {e}"),
            }
        }
    }
    let key = SessionKey::new(session, "default").unwrap();
    let stored = make_store().load(&key).await.unwrap().unwrap().messages;
    History::restore(stored.clone()).expect("no interleaved or broken history");
    let answers = stored
        .iter()
        .filter(|m| m.role == Role::Assistant && m.tool_uses().next().is_none())
        .count();
    assert_eq!(
        answers, successes,
        "every successful invocation's answer is stored, once"
    );
    assert_eq!(successes + conflicts, 12);
    assert!(successes >= 6, "at least one replica wins each round");
    if lease.is_some() {
        let state = make_store().load(&key).await.unwrap().unwrap().state;
        assert_eq!(state.checkpoint.lease, None, "each run released its lease");
    }
}

#[tokio::test]
async fn s3_writers_race_without_loss() {
    let (s3, _) = clients().await;
    let bucket = bucket(&s3).await;
    racing_writers(Arc::new(S3SessionStore::new(s3.clone(), &bucket)), "race").await;
    racing_replicas(|| Arc::new(S3SessionStore::new(s3.clone(), &bucket)) as Arc<dyn SessionStore>)
        .await;
}

#[tokio::test]
async fn dynamodb_writers_race_without_loss() {
    let (_, ddb) = clients().await;
    let store = table(ddb).await;
    racing_writers(Arc::new(store.clone()), "race").await;
    racing_replicas(|| Arc::new(store.clone()) as Arc<dyn SessionStore>).await;
}

#[tokio::test]
async fn file_writers_race_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    racing_writers(Arc::new(FileSessionStore::new(&root)), "race").await;
    racing_replicas(|| Arc::new(FileSessionStore::new(&root)) as Arc<dyn SessionStore>).await;
}

#[tokio::test]
async fn dynamodb_refuses_an_oversized_message_without_writing_anything() {
    let (_, ddb) = clients().await;
    let store = table(ddb)
        .await
        .with_ttl(std::time::Duration::from_secs(3600));
    let key = SessionKey::new("big", "default").unwrap();
    store
        .append(&key, 0, &[Message::user("hi")])
        .await
        .expect("small");
    let huge = Message::new(
        Role::Assistant,
        vec![ContentBlock::Text("x".repeat(500_000))],
    );
    let err = store
        .append(&key, 1, &[huge, Message::user("after")])
        .await
        .expect_err("too large");
    assert!(
        matches!(err, StoreError::TooLarge { bytes, limit: 380_000, .. } if bytes > 500_000),
        "{err:?}"
    );
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        loaded.messages.len(),
        1,
        "nothing of the refused batch was written"
    );
}

#[tokio::test]
async fn missing_sessions_load_as_none_everywhere() {
    let (s3, ddb) = clients().await;
    let key = SessionKey::new("nobody", "default").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bucket = bucket(&s3).await;
    let stores: Vec<Arc<dyn SessionStore>> = vec![
        Arc::new(S3SessionStore::new(s3, &bucket)),
        Arc::new(table(ddb).await),
        Arc::new(FileSessionStore::new(dir.path())),
    ];
    for store in stores {
        assert!(store.load(&key).await.unwrap().is_none());
    }
}

/// Rewrites the Python session's agent document and checks that what Strands recorded is kept.
async fn rewrite_keeps_what_strands_recorded(
    store: &dyn SessionStore,
    read: impl AsyncFn() -> Value,
) {
    let key = SessionKey::new("trip-1", "default").unwrap();
    let loaded = store.load(&key).await.expect("load").expect("exists");
    let mut state = loaded.state.clone();
    state.agent_state.insert("budget_eur".into(), json!(700));
    store
        .save_state(&key, &state, &loaded.state_version)
        .await
        .expect("save");
    let doc = read().await;
    assert_eq!(doc["created_at"], "2026-11-20T10:00:00.000000+00:00");
    assert_ne!(doc["updated_at"], "2026-11-20T10:00:05.000000+00:00");
    assert_eq!(doc["state"]["budget_eur"], 700);
    assert_eq!(doc["strands_extra"], "kept");
    assert_eq!(
        doc["_internal_state"]["interrupt_state"]["context"]["k"],
        "v"
    );
    assert_eq!(
        doc["conversation_manager_state"]["__name__"],
        "SlidingWindowConversationManager"
    );
}

/// The fixture's agent document with a field and an interrupt context only Python knows.
fn fixture_with_extras(path: &str, bytes: Vec<u8>) -> Vec<u8> {
    if !path.ends_with("agent.json") {
        return bytes;
    }
    let mut doc: Value = serde_json::from_slice(&bytes).unwrap();
    doc["strands_extra"] = json!("kept");
    doc["_internal_state"]["interrupt_state"]["context"] = json!({"k": "v"});
    serde_json::to_vec(&doc).unwrap()
}

#[tokio::test]
async fn rewriting_the_agent_document_keeps_what_another_writer_recorded() {
    let dir = tempfile::tempdir().unwrap();
    for (path, bytes) in files_under(&fixture_dir()) {
        let target = dir.path().join(&path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, fixture_with_extras(&path, bytes)).unwrap();
    }
    let agent_json = dir
        .path()
        .join("session_trip-1/agents/agent_default/agent.json");
    rewrite_keeps_what_strands_recorded(&FileSessionStore::new(dir.path()), async || {
        serde_json::from_slice(&std::fs::read(&agent_json).unwrap()).unwrap()
    })
    .await;

    let (s3, _) = clients().await;
    let bucket = bucket(&s3).await;
    for (path, bytes) in files_under(&fixture_dir()) {
        s3.put_object()
            .bucket(&bucket)
            .key(&path)
            .body(ByteStream::from(fixture_with_extras(&path, bytes)))
            .send()
            .await
            .unwrap();
    }
    let store = S3SessionStore::new(s3.clone(), &bucket);
    rewrite_keeps_what_strands_recorded(&store, async || {
        let object = s3
            .get_object()
            .bucket(&bucket)
            .key("session_trip-1/agents/agent_default/agent.json")
            .send()
            .await
            .unwrap();
        serde_json::from_slice(&object.body.collect().await.unwrap().into_bytes()).unwrap()
    })
    .await;
}

#[tokio::test]
async fn ids_cannot_reach_into_each_others_sessions_on_any_store() {
    let (s3, ddb) = clients().await;
    let dir = tempfile::tempdir().unwrap();
    let bucket = bucket(&s3).await;
    let stores: Vec<(&str, Arc<dyn SessionStore>)> = vec![
        ("s3", Arc::new(S3SessionStore::new(s3, &bucket))),
        ("dynamodb", Arc::new(table(ddb).await)),
        ("file", Arc::new(FileSessionStore::new(dir.path()))),
    ];
    let user = |text: &str| Message::new(Role::User, vec![ContentBlock::Text(text.into())]);
    let answer = |text: &str| Message::new(Role::Assistant, vec![ContentBlock::Text(text.into())]);
    // `a#x` and `a%23x` would both collide with `a` (or each other) under a naive encoding;
    // the 256-character id (the longest allowed, 4-byte characters) is longer than a file name.
    let long = "✈".repeat(256);
    for (name, store) in stores {
        let a = SessionKey::new("s", "a").unwrap();
        store
            .append(&a, 0, &[user("a's prompt"), answer("a's answer")])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for agent in ["a#x", "a%23x", "a#", long.as_str()] {
            let other = SessionKey::new("s", agent).unwrap();
            store
                .append(&other, 0, &[user(&format!("{agent}'s prompt"))])
                .await
                .unwrap_or_else(|e| panic!("{name} {agent}: {e}"));
            let loaded = store.load(&other).await.unwrap().unwrap();
            assert_eq!(loaded.messages.len(), 1, "{name} {agent}");
            assert_eq!(loaded.messages[0].text(), format!("{agent}'s prompt"));
        }
        let loaded = store.load(&a).await.unwrap().unwrap();
        assert_eq!(
            loaded.messages.len(),
            2,
            "{name}: agent a's session is its own"
        );
        History::restore(loaded.messages).unwrap_or_else(|e| panic!("{name}: {e}"));
        // A long session id too.
        if name != "s3" {
            let key = SessionKey::new(&long, &long).unwrap();
            store.append(&key, 0, &[user("long")]).await.unwrap();
            let state = SessionState::default();
            store
                .save_state(&key, &state, &StateVersion::default())
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(store.load(&key).await.unwrap().unwrap().messages.len(), 1);
        }
    }
}

#[tokio::test]
async fn temporary_files_of_a_killed_writer_are_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileSessionStore::new(dir.path());
    let key = SessionKey::new("tmp", "default").unwrap();
    let user = Message::new(Role::User, vec![ContentBlock::Text("hi".into())]);
    store.append(&key, 0, &[user]).await.unwrap();
    let messages = dir.path().join("session_tmp/agents/agent_default/messages");
    let stale = messages.join(".tmp-999-00000000deadbeef");
    let fresh = messages.join(".tmp-999-00000000cafef00d");
    std::fs::write(&stale, b"half a message").unwrap();
    std::fs::write(&fresh, b"being written").unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    assert_eq!(store.load(&key).await.unwrap().unwrap().messages.len(), 1);
    assert!(!stale.exists(), "a stale temporary file is removed");
    assert!(fresh.exists(), "one that may still be written is kept");
}

/// Loses the response of the first successful write (it arrives as a 503), so the SDK retries a
/// request that already took effect, as it does when a response is lost on the network.
#[derive(Debug)]
struct LoseFirstWriteResponse {
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// Whether the request in flight is a write (S3 `PUT`, DynamoDB `PutItem`).
    writing: std::sync::atomic::AtomicBool,
}

// The S3 and DynamoDB SDKs share these types (aws-smithy-runtime-api).
use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};

impl Intercept for LoseFirstWriteResponse {
    fn name(&self) -> &'static str {
        "LoseFirstWriteResponse"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let request = context.request();
        let write = request.method() == "PUT"
            || request
                .headers()
                .get("x-amz-target")
                .is_some_and(|t| t.ends_with(".PutItem"));
        self.writing
            .store(write, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if self.writing.load(std::sync::atomic::Ordering::SeqCst)
            && context.response().status().is_success()
            && !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            *context.response_mut().status_mut() = 503u16.try_into()?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_write_retried_after_a_lost_response_is_not_a_false_conflict() {
    let (s3, ddb) = clients().await;
    let bucket = bucket(&s3).await;
    let table_name = unique("sessions");
    DynamoDbSessionStore::new(ddb.clone(), &table_name)
        .create_table()
        .await
        .expect("create table");
    let user = Message::new(Role::User, vec![ContentBlock::Text("hi".into())]);
    let answer = Message::new(Role::Assistant, vec![ContentBlock::Text("hello".into())]);
    let mut state = SessionState::default();
    state.agent_state.insert("k".into(), json!(1));
    for name in [
        "s3-message",
        "s3-state",
        "dynamodb-message",
        "dynamodb-state",
    ] {
        // Each case loses its first write's response, on a client of its own.
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let interceptor = LoseFirstWriteResponse {
            lost: lost.clone(),
            writing: Default::default(),
        };
        let (plain, lossy): (Arc<dyn SessionStore>, Arc<dyn SessionStore>) =
            if name.starts_with("s3") {
                let conf = s3.config().to_builder().interceptor(interceptor).build();
                (
                    Arc::new(S3SessionStore::new(s3.clone(), &bucket)),
                    Arc::new(S3SessionStore::new(
                        aws_sdk_s3::Client::from_conf(conf),
                        &bucket,
                    )),
                )
            } else {
                let conf = ddb.config().to_builder().interceptor(interceptor).build();
                (
                    Arc::new(DynamoDbSessionStore::new(ddb.clone(), &table_name)),
                    Arc::new(DynamoDbSessionStore::new(
                        aws_sdk_dynamodb::Client::from_conf(conf),
                        &table_name,
                    )),
                )
            };
        let key = SessionKey::new(name, "default").unwrap();
        plain
            .append(&key, 0, std::slice::from_ref(&user))
            .await
            .unwrap();
        if name.ends_with("state") {
            plain
                .append(&key, 1, std::slice::from_ref(&answer))
                .await
                .unwrap();
            let loaded = plain.load(&key).await.unwrap().unwrap();
            let version = lossy
                .save_state(&key, &state, &loaded.state_version)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let again = plain.load(&key).await.unwrap().unwrap();
            assert_eq!(again.state_version, version, "{name}");
            assert_eq!(again.state.agent_state["k"], 1, "{name}");
        } else {
            lossy
                .append(&key, 1, std::slice::from_ref(&answer))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(plain.load(&key).await.unwrap().unwrap().messages.len(), 2);
        }
        assert!(
            lost.load(std::sync::atomic::Ordering::SeqCst),
            "{name}: a response was lost and the write retried"
        );
        // A real second writer still gets its conflict.
        let err = lossy
            .append(&key, 1, std::slice::from_ref(&answer))
            .await
            .expect_err("taken");
        assert!(matches!(err, StoreError::Conflict { .. }), "{name}: {err}");
    }
}

#[tokio::test]
async fn a_dynamodb_session_in_use_never_expires_under_its_user() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let (_, ddb) = clients().await;
    let table_name = unique("sessions");
    let store = DynamoDbSessionStore::new(ddb.clone(), &table_name)
        .with_ttl(std::time::Duration::from_secs(1000));
    store.create_table().await.expect("create table");
    let key = SessionKey::new("long-lived", "default").unwrap();
    let user = Message::new(Role::User, vec![ContentBlock::Text("hi".into())]);
    let answer = Message::new(Role::Assistant, vec![ContentBlock::Text("hello".into())]);
    store.append(&key, 0, &[user, answer]).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry = |sk: &'static str| {
        let ddb = ddb.clone();
        let table_name = table_name.clone();
        async move {
            let item = ddb
                .get_item()
                .table_name(&table_name)
                .key("pk", AttributeValue::S("session#long-lived".into()))
                .key("sk", AttributeValue::S(sk.into()))
                .consistent_read(true)
                .send()
                .await
                .unwrap();
            item.item().unwrap()["expire_at"]
                .as_n()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        }
    };
    let first = "agent#default#msg#00000000000000000000";
    // The first message was written long ago: 100 s of its TTL are left.
    ddb.update_item()
        .table_name(&table_name)
        .key("pk", AttributeValue::S("session#long-lived".into()))
        .key("sk", AttributeValue::S(first.into()))
        .update_expression("SET expire_at = :t")
        .expression_attribute_values(":t", AttributeValue::N((now + 100).to_string()))
        .send()
        .await
        .unwrap();
    let second = "agent#default#msg#00000000000000000001";
    let untouched = expiry(second).await;
    assert_eq!(store.load(&key).await.unwrap().unwrap().messages.len(), 2);
    // Using the session gave the fading item a full TTL again; the fresh one was left alone.
    assert!(expiry(first).await >= now + 1000, "refreshed");
    assert_eq!(expiry(second).await, untouched);
}

#[tokio::test]
async fn an_oversized_s3_object_is_refused_while_it_is_read() {
    let (s3, _) = clients().await;
    let bucket = bucket(&s3).await;
    // 65 MiB where a message document should be: the store stops reading at its 64 MiB cap.
    s3.put_object()
        .bucket(&bucket)
        .key("session_big/agents/agent_default/messages/message_0.json")
        .body(ByteStream::from(vec![b' '; 65 * 1024 * 1024]))
        .send()
        .await
        .unwrap();
    let store = S3SessionStore::new(s3, &bucket);
    let key = SessionKey::new("big", "default").unwrap();
    let err = store.load(&key).await.expect_err("too large");
    assert!(
        matches!(&err, StoreError::Backend { message, .. } if message.contains("larger than")),
        "{err}"
    );
}
