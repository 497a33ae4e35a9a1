//! Durable runs: a process killed (SIGKILL) during the model stream, in the middle of a tool
//! batch, or between a batch and the next model turn, and the run resumed by a second process
//! on the same file store (`tests/src/bin/durable-agent.rs`): no completed tool runs again, a
//! pending call that may have taken effect is answered as interrupted, the history stays valid
//! and the answer arrives. And idempotency keys: a retried invocation never writes its prompt
//! twice.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agent_core::history::History;
use agent_core::message::{ContentBlock, Message, Role};
use agent_core::prelude::*;
use agent_core::session::{InMemorySessionStore, SessionKey, SessionStore};
use agent_memory::FileSessionStore;
use agent_tests::{Fault, MockVllm, Turn, provider};
use serde_json::{Value, json};

struct Dirs {
    _tmp: tempfile::TempDir,
    store: PathBuf,
    log: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    Dirs {
        store: tmp.path().join("store"),
        log: tmp.path().join("calls.log"),
        _tmp: tmp,
    }
}

fn agent_process(dirs: &Dirs, server: &MockVllm, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_durable-agent"));
    cmd.arg(&dirs.store)
        .arg(server.base_url())
        .arg(&dirs.log)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn durable-agent")
}

/// Polls `ready` until it holds; fails after 60 s, saying what it waited for.
async fn wait_for(what: &str, ready: impl Fn() -> bool) {
    for _ in 0..3000 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("waited 60 s for {what}");
}

fn calls(dirs: &Dirs) -> Vec<String> {
    std::fs::read_to_string(&dirs.log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn count(calls: &[String], line: &str) -> usize {
    calls.iter().filter(|l| *l == line).count()
}

/// The results recorded in the session's checkpoint so far.
fn checkpointed(dirs: &Dirs) -> usize {
    let path = dirs
        .store
        .join("session_durable/agents/agent_default/agent.json");
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|doc| {
            doc["_internal_state"]["rust_checkpoint"]["completed_tool_results"]
                .as_array()
                .map(Vec::len)
        })
        .unwrap_or(0)
}

fn kill(mut child: Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// Waits for `child` (off the runtime's threads: the model server runs on them) and returns its
/// output.
async fn finished(child: Child) -> std::process::Output {
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

/// Resumes the run in a new process and returns its stdout.
async fn resume(dirs: &Dirs, server: &MockVllm) -> String {
    let child = agent_process(dirs, server, &["resume"], &[]);
    let out = finished(child).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "resume failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn history(dirs: &Dirs) -> Vec<Message> {
    let key = SessionKey::new("durable", "default").unwrap();
    let stored = FileSessionStore::new(&dirs.store)
        .load(&key)
        .await
        .unwrap()
        .expect("session");
    History::restore(stored.messages.clone()).expect("a valid history");
    assert!(
        stored.state.checkpoint.completed_tool_results.is_empty(),
        "the checkpoint is cleared once the results are in the history"
    );
    stored.messages
}

fn prompts(messages: &[Message]) -> usize {
    messages.iter().filter(|m| m.is_prompt()).count()
}

fn results(message: &Message) -> Vec<String> {
    message
        .content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::ToolResult(r) => Some(r.text()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn killed_during_the_model_stream_the_run_resumes_from_the_prompt() {
    let dirs = dirs();
    let server = MockVllm::start([
        Turn::text("never sent").with_fault(Fault::SlowFirstByte(Duration::from_secs(120))),
        Turn::tool_call("lookup", json!({"arg": "a"})),
        Turn::text("answer A"),
    ])
    .await
    .unwrap();
    let first = agent_process(&dirs, &server, &["run", "plan a trip"], &[]);
    wait_for("the model call", || server.received().len() == 1).await;
    kill(first);
    let out = resume(&dirs, &server).await;
    assert_eq!(out, "answer A\nstop: end_turn\n");
    assert_eq!(calls(&dirs), ["lookup start a", "lookup done a"]);
    let messages = history(&dirs).await;
    assert_eq!(messages.len(), 4);
    assert_eq!(prompts(&messages), 1, "the prompt was not written twice");
}

/// With replica leases, a process killed mid-run leaves its lease behind: another process is
/// refused as busy (without calling the model) until the lease expires, then resumes the run.
#[tokio::test]
async fn a_killed_replica_s_lease_holds_the_session_until_it_expires() {
    let dirs = dirs();
    let server = MockVllm::start([
        Turn::text("never sent").with_fault(Fault::SlowFirstByte(Duration::from_secs(120))),
        Turn::text("answer A"),
    ])
    .await
    .unwrap();
    let lease = [("REPLICA_LEASE_MS", "3000")];
    let first = agent_process(&dirs, &server, &["run", "plan a trip"], &lease);
    wait_for("the model call", || server.received().len() == 1).await;
    kill(first);
    let killed = std::time::Instant::now();
    let busy = agent_process(&dirs, &server, &["resume"], &lease)
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(
        !busy.status.success() && stderr.contains("busy"),
        "{stderr}"
    );
    assert!(
        killed.elapsed() < Duration::from_millis(2500),
        "decided at once"
    );
    assert_eq!(
        server.received().len(),
        1,
        "the refused process called no model"
    );
    tokio::time::sleep(Duration::from_millis(3000).saturating_sub(killed.elapsed())).await;
    let child = agent_process(&dirs, &server, &["resume"], &lease);
    let out = finished(child).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "answer A\nstop: end_turn\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = SessionKey::new("durable", "default").unwrap();
    let stored = FileSessionStore::new(&dirs.store)
        .load(&key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state.checkpoint.lease, None, "released at the end");
    assert_eq!(prompts(&stored.messages), 1);
}

/// A run longer than its lease keeps it: the lease is renewed before each model turn once half
/// of it has passed, so another process is still refused after the first lease time.
#[tokio::test]
async fn a_long_run_renews_its_lease() {
    let dirs = dirs();
    let slow = |turn: Turn| turn.with_fault(Fault::SlowFirstByte(Duration::from_millis(1200)));
    let server = MockVllm::start([
        slow(Turn::tool_call("lookup", json!({"arg": "a"}))),
        slow(Turn::tool_call("lookup", json!({"arg": "b"}))),
        slow(Turn::text("answer")),
    ])
    .await
    .unwrap();
    let lease = [("REPLICA_LEASE_MS", "2000")];
    let started = std::time::Instant::now();
    let first = agent_process(&dirs, &server, &["run", "plan a trip"], &lease);
    // Past the first lease's end (2 s), inside the third model call.
    wait_for("the third model call", || server.received().len() == 3).await;
    tokio::time::sleep(Duration::from_millis(2600).saturating_sub(started.elapsed())).await;
    let busy = agent_process(&dirs, &server, &["resume"], &lease);
    let busy = finished(busy).await;
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(
        !busy.status.success() && stderr.contains("busy"),
        "{stderr}"
    );
    let out = finished(first).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "answer\nstop: end_turn\n"
    );
    assert_eq!(
        server.received().len(),
        3,
        "the refused process called no model"
    );
}

/// A run that fails (the model refuses the request) releases its lease on the way out: the
/// next process continues the session at once.
#[tokio::test]
async fn a_failed_run_releases_its_lease() {
    let dirs = dirs();
    let server = MockVllm::start([
        Turn::fault(Fault::Status {
            code: 400,
            message: "bad request".into(),
            retry_after: None,
        }),
        Turn::text("answer A"),
    ])
    .await
    .unwrap();
    let lease = [("REPLICA_LEASE_MS", "600000")];
    let child = agent_process(&dirs, &server, &["run", "plan a trip"], &lease);
    let failed = finished(child).await;
    assert!(
        !failed.status.success(),
        "{}",
        String::from_utf8_lossy(&failed.stdout)
    );
    let child = agent_process(&dirs, &server, &["resume"], &lease);
    let out = finished(child).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "answer A\nstop: end_turn\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn killed_mid_tool_batch_completed_calls_are_not_run_again() {
    let dirs = dirs();
    let server = MockVllm::start([
        Turn::tool_call("lookup", json!({"arg": "a"}))
            .and_tool_call("book", json!({"arg": "b"}))
            .and_tool_call("slow_lookup", json!({"arg": "c"})),
        Turn::text("answer B"),
    ])
    .await
    .unwrap();
    let first = agent_process(&dirs, &server, &["run", "plan"], &[("SLOW_BLOCKS", "1")]);
    wait_for("two results checkpointed while the third call runs", || {
        count(&calls(&dirs), "slow_lookup start c") == 1 && checkpointed(&dirs) == 2
    })
    .await;
    kill(first);
    let out = resume(&dirs, &server).await;
    assert_eq!(out, "answer B\nstop: end_turn\n");
    let log = calls(&dirs);
    assert_eq!(count(&log, "lookup start a"), 1, "{log:?}");
    assert_eq!(count(&log, "book start b"), 1, "{log:?}");
    // The idempotent call that was cut off ran again, to its end.
    assert_eq!(count(&log, "slow_lookup start c"), 2, "{log:?}");
    assert_eq!(count(&log, "slow_lookup done c"), 1, "{log:?}");
    let messages = history(&dirs).await;
    assert_eq!(messages.len(), 4);
    assert_eq!(
        results(&messages[2]),
        [
            "lookup result for a",
            "book result for b",
            "slow_lookup result for c"
        ]
    );
}

#[tokio::test]
async fn a_pending_call_that_may_have_taken_effect_is_answered_as_interrupted() {
    let dirs = dirs();
    let server = MockVllm::start([
        Turn::tool_call("lookup", json!({"arg": "a"})).and_tool_call("book", json!({"arg": "b"})),
        Turn::text("answer C"),
    ])
    .await
    .unwrap();
    let first = agent_process(&dirs, &server, &["run", "book it"], &[("BOOK_BLOCKS", "1")]);
    wait_for("the booking in progress", || {
        count(&calls(&dirs), "book start b") == 1 && checkpointed(&dirs) == 1
    })
    .await;
    kill(first);
    let out = resume(&dirs, &server).await;
    assert_eq!(out, "answer C\nstop: end_turn\n");
    let log = calls(&dirs);
    assert_eq!(log, ["lookup start a", "lookup done a", "book start b"]);
    let messages = history(&dirs).await;
    assert_eq!(
        results(&messages[2]),
        ["lookup result for a", agent_core::agent::INTERRUPTED_TEXT]
    );
}

#[tokio::test]
async fn killed_between_the_batch_and_the_next_turn_the_results_are_kept() {
    let dirs = dirs();
    let server = MockVllm::start([
        Turn::tool_call("lookup", json!({"arg": "a"})),
        Turn::text("never sent").with_fault(Fault::SlowFirstByte(Duration::from_secs(120))),
        Turn::text("answer D"),
    ])
    .await
    .unwrap();
    let first = agent_process(&dirs, &server, &["run", "look it up"], &[]);
    wait_for("the second model call", || server.received().len() == 2).await;
    kill(first);
    let out = resume(&dirs, &server).await;
    assert_eq!(out, "answer D\nstop: end_turn\n");
    assert_eq!(calls(&dirs), ["lookup start a", "lookup done a"]);
    let messages = history(&dirs).await;
    assert_eq!(messages.len(), 4);
    // The resumed call saw the same tool result the first process recorded.
    assert_eq!(
        server.received()[2].body["messages"],
        server.received()[1].body["messages"]
    );
}

fn in_memory_agent(server: &MockVllm, store: &InMemorySessionStore) -> Agent {
    Agent::builder()
        .model(provider(server))
        .session_store(store.clone())
        .retry(agent_tests::fast_retry())
        .build()
        .unwrap()
}

async fn stored(store: &InMemorySessionStore, session: &str) -> Vec<Message> {
    let key = SessionKey::new(session, "default").unwrap();
    store.load(&key).await.unwrap().unwrap().messages
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_gets_the_outcome_without_running_again() {
    let server = MockVllm::start([Turn::text("Lisbon is sunny.")])
        .await
        .unwrap();
    let store = InMemorySessionStore::new();
    let agent = in_memory_agent(&server, &store);
    let session = agent.session("idem").idempotency_key("req-1");
    let first = session.invoke("Weather?").await.unwrap();
    let again = session.invoke("Weather?").await.unwrap();
    assert_eq!(again.text(), first.text());
    assert_eq!(again.stop_reason, StopReason::EndTurn);
    assert_eq!(server.received().len(), 1, "no second model call");
    assert_eq!(stored(&store, "idem").await.len(), 2, "no second prompt");
    // A new key is a new invocation.
    server.push([Turn::text("And tomorrow too.")]);
    let next = agent
        .session("idem")
        .idempotency_key("req-2")
        .invoke("Tomorrow?")
        .await
        .unwrap();
    assert_eq!(next.text(), "And tomorrow too.");
    assert_eq!(stored(&store, "idem").await.len(), 4);
}

#[tokio::test]
async fn a_retry_of_a_failed_invocation_resumes_it_instead_of_repeating_the_prompt() {
    let server = MockVllm::start([Turn::fault(Fault::Status {
        code: 401,
        retry_after: None,
        message: "bad key".into(),
    })])
    .await
    .unwrap();
    let store = InMemorySessionStore::new();
    let agent = in_memory_agent(&server, &store);
    let session = agent.session("failed").idempotency_key("req-1");
    session.invoke("Weather?").await.expect_err("401");
    assert_eq!(
        stored(&store, "failed").await.len(),
        1,
        "the prompt is stored"
    );
    server.push([Turn::text("Sunny.")]);
    let retried = session.invoke("Weather?").await.unwrap();
    assert_eq!(retried.text(), "Sunny.");
    let messages = stored(&store, "failed").await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].role, Role::User);
    assert_eq!(prompts(&messages), 1, "one prompt, one answer");
    // Without a key, a resume does the same for the session's last run.
    assert_eq!(
        agent.session("failed").resume().await.unwrap().text(),
        "Sunny."
    );
    assert_eq!(server.received().len(), 2);
    let empty = agent.session("nothing-here").resume().await;
    assert!(matches!(empty, Err(AgentError::NothingToResume { .. })));
}

/// Output of a finished agent process.
fn succeeded(child: Child) -> String {
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn an_interrupted_run_is_answered_in_a_second_process_without_rerunning_the_rest() {
    let dirs = dirs();
    let server = MockVllm::start([
        Turn::tool_call("lookup", json!({"arg": "flights"}))
            .and_tool_call("confirm_book", json!({"arg": "TA999"})),
        Turn::text("Booked TA999 for you."),
    ])
    .await
    .unwrap();
    // The first process asks and stops: no model call after the batch, nothing appended.
    let stdout = tokio::task::spawn_blocking({
        let child = agent_process(&dirs, &server, &["run", "Book the flight"], &[]);
        move || succeeded(child)
    })
    .await
    .unwrap();
    assert!(stdout.contains("stop: interrupted"), "{stdout}");
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("interrupt: "))
        .expect("an interrupt id")
        .to_owned();
    assert!(id.starts_with("v1:tool_call:"), "Strands' id scheme: {id}");
    assert_eq!(server.received().len(), 1);
    let store = FileSessionStore::new(&dirs.store);
    let key = SessionKey::new("durable", "default").unwrap();
    let stored = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        stored.messages.len(),
        2,
        "prompt and the calls; no results yet"
    );
    assert_eq!(stored.state.checkpoint.interrupts.len(), 1);
    assert_eq!(stored.state.checkpoint.completed_tool_results.len(), 1);
    // Python Strands sees the question in its own field, with the pending tool execution.
    let agent_json: Value = serde_json::from_slice(
        &std::fs::read(
            dirs.store
                .join("session_durable/agents/agent_default/agent.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let strands_state = &agent_json["_internal_state"]["interrupt_state"];
    assert_eq!(strands_state["activated"], true, "{agent_json}");
    let pending = &strands_state["pending_tool_execution"];
    assert_eq!(
        pending["assistant_message"]["content"][1]["toolUse"]["name"], "confirm_book",
        "{agent_json}"
    );
    assert_eq!(
        pending["completed_tool_results"][0]["content"][0]["text"],
        "lookup result for flights"
    );
    assert_eq!(strands_state["interrupts"][&id]["name"], "confirm_booking");

    // Wrong answers are refused before anything runs.
    let refused = tokio::task::spawn_blocking({
        let child = agent_process(&dirs, &server, &["respond", "nope", "true"], &[]);
        move || child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no question `nope` is waiting"));

    // A second process answers: the tool runs again and gets its answer; the lookup does not.
    let stdout = tokio::task::spawn_blocking({
        let child = agent_process(&dirs, &server, &["respond", &id, "true"], &[]);
        move || succeeded(child)
    })
    .await
    .unwrap();
    assert!(stdout.contains("Booked TA999 for you."), "{stdout}");
    assert!(stdout.contains("stop: end_turn"), "{stdout}");
    let log = calls(&dirs);
    assert_eq!(count(&log, "lookup start flights"), 1, "{log:?}");
    assert_eq!(count(&log, "confirm_book start TA999"), 2, "{log:?}");
    assert_eq!(
        count(&log, "confirm_book answered TA999 true"),
        1,
        "{log:?}"
    );
    let sent = server.received()[1].body["messages"].to_string();
    assert!(
        sent.contains("booked TA999") && sent.contains("lookup result for flights"),
        "{sent}"
    );
    let stored = store.load(&key).await.unwrap().unwrap();
    assert_eq!(stored.messages.len(), 4);
    assert!(stored.state.checkpoint.interrupts.is_empty());
    let agent_json: Value = serde_json::from_slice(
        &std::fs::read(
            dirs.store
                .join("session_durable/agents/agent_default/agent.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        agent_json["_internal_state"]["interrupt_state"]["interrupts"],
        json!({}),
        "answered questions are gone"
    );
}
