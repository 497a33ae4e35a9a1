//! Graphs and swarms against the vLLM-format server: waves, conditions, fan-in, bounded
//! cycles, one named event stream, a run cancelled mid-node and resumed by another instance
//! from its saved state, handoffs with shared context, and their bound.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use agent_core::multiagent::{
    FnNode, Graph, GraphState, HANDOFF_TOOL, OrchestrationError, OrchestrationEvent, Status, Swarm,
};
use agent_core::prelude::*;
use agent_core::session::{InMemorySessionStore, SessionKey, SessionStore};
use agent_tests::{MockVllm, Turn, fast_retry, provider};
use futures::StreamExt;
use serde_json::json;

fn agent(server: &MockVllm, id: &str, store: &InMemorySessionStore) -> Agent {
    Agent::builder()
        .id(id)
        .name(id)
        .model(provider(server))
        .retry(fast_retry())
        .session_store(store.clone())
        .build()
        .unwrap()
}

fn check_prices() -> FnNode {
    FnNode::new(|input| async move {
        let plan = input.state.output("write").unwrap_or_default().to_owned();
        Ok(if plan.contains('€') {
            "ok".to_owned()
        } else {
            "no prices".to_owned()
        })
    })
}

#[tokio::test]
async fn a_graph_runs_in_waves_follows_conditions_and_streams_named_events() {
    let research = MockVllm::start([Turn::text("TAP flies daily; hotels near Baixa.")])
        .await
        .unwrap();
    let writer = MockVllm::start([
        Turn::text("A plan without prices."),
        Turn::text("Two nights, 480 €."),
    ])
    .await
    .unwrap();
    let store = InMemorySessionStore::new();
    let graph = Graph::builder("planner")
        .node("research", agent(&research, "researcher", &store))
        .node("write", agent(&writer, "writer", &store))
        .node("check", check_prices())
        .edge("research", "write")
        .edge("write", "check")
        .edge_if("check", "write", |s: &GraphState| {
            s.output("check") != Some("ok")
        })
        .entry("research")
        .session_store(store.clone())
        .build()
        .unwrap();
    let mut stream = graph.stream("trip", "Two nights in Lisbon");
    let mut starts = Vec::new();
    let mut writer_deltas = 0;
    let mut last = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            OrchestrationEvent::NodeStart { node } => starts.push(node),
            OrchestrationEvent::NodeEvent { node, event }
                if node == "write" && matches!(*event, AgentEvent::TextDelta { .. }) =>
            {
                writer_deltas += 1;
            }
            OrchestrationEvent::Stop { status } => last = Some(status),
            _ => {}
        }
    }
    assert_eq!(last, Some(Status::Completed));
    assert_eq!(starts, ["research", "write", "check", "write", "check"]);
    assert!(writer_deltas > 0, "the writer's text came through, named");
    // The writer's second prompt: the task, the research, and the check's verdict.
    let prompt = writer.last_message(1);
    assert!(prompt.starts_with("Two nights in Lisbon"), "{prompt}");
    assert!(
        prompt.contains("From research:\nTAP flies daily"),
        "{prompt}"
    );
    assert!(prompt.contains("From check:\nno prices"), "{prompt}");
    // The saved state says the same; each agent kept its conversation in the session.
    let saved = store
        .load(&SessionKey::new("trip", "planner").unwrap())
        .await
        .unwrap()
        .unwrap();
    let state: GraphState =
        serde_json::from_value(saved.state.agent_state["graph"].clone()).unwrap();
    assert_eq!(state.status, Status::Completed);
    assert_eq!(state.output("write"), Some("Two nights, 480 €."));
    assert_eq!(state.runs("write"), 2);
    assert_eq!(state.executions, 5);
    let writer_history = store
        .load(&SessionKey::new("trip", "writer").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(writer_history.messages.len(), 4, "two turns of the writer");
}

#[tokio::test]
async fn fan_in_waits_for_every_input_and_cycles_are_bounded() {
    let node = |text: &'static str| FnNode::new(move |_| async move { Ok(text.to_owned()) });
    let graph = Graph::builder("fan-in")
        .node("a", node("from a"))
        .node("b", node("from b"))
        .node("c", FnNode::new(|input| async move { Ok(input.prompt) }))
        .edge("a", "c")
        .edge("b", "c")
        .entry("a")
        .entry("b")
        .build()
        .unwrap();
    let result = graph.run("s", "Join").await.unwrap();
    assert_eq!(result.status, Status::Completed);
    assert_eq!(result.state.order, ["a", "b", "c"]);
    let joined = result.state.output("c").unwrap();
    assert!(
        joined.contains("From a:\nfrom a") && joined.contains("From b:\nfrom b"),
        "{joined}"
    );

    let looping = Graph::builder("loop")
        .node("x", node("again"))
        .edge("x", "x")
        .entry("x")
        .max_node_executions(3)
        .build()
        .unwrap();
    let result = looping.run("s", "Loop").await.unwrap();
    assert_eq!(result.status, Status::LimitReached);
    assert_eq!(result.state.executions, 3);

    // Configuration mistakes are named.
    let err = Graph::builder("bad")
        .node("x", node("x"))
        .edge("x", "y")
        .entry("x")
        .build()
        .unwrap_err();
    assert_eq!(err, OrchestrationError::UnknownNode { name: "y".into() });
    assert_eq!(
        Graph::builder("bad")
            .node("x", node("x"))
            .build()
            .unwrap_err(),
        OrchestrationError::NoEntryPoint
    );
}

#[tokio::test]
async fn a_run_stopped_in_a_node_is_resumed_by_another_instance_without_rerunning_the_rest() {
    let store = InMemorySessionStore::new();
    let first_runs = Arc::new(AtomicU32::new(0));
    let released = Arc::new(AtomicBool::new(false));
    let build = |first_runs: Arc<AtomicU32>, released: Arc<AtomicBool>| {
        Graph::builder("durable")
            .node(
                "first",
                FnNode::new(move |_| {
                    let first_runs = first_runs.clone();
                    async move {
                        first_runs.fetch_add(1, Ordering::SeqCst);
                        Ok("first done".to_owned())
                    }
                }),
            )
            .node(
                "second",
                FnNode::new(move |input| {
                    let released = released.clone();
                    async move {
                        if released.load(Ordering::SeqCst) {
                            return Ok("second done".to_owned());
                        }
                        // Stuck until the run is cancelled.
                        input.cancel.cancelled().await;
                        Err("cancelled".into())
                    }
                }),
            )
            .edge("first", "second")
            .entry("first")
            .session_store(store.clone())
            .build()
            .unwrap()
    };
    let graph = build(first_runs.clone(), released.clone());
    let mut stream = graph.stream("job", "Do it");
    while let Some(event) = stream.next().await {
        if matches!(event.unwrap(), OrchestrationEvent::NodeStart { node } if node == "second") {
            break;
        }
    }
    // The client goes away: the run is cancelled in the second node and saved as such.
    drop(stream);
    let key = SessionKey::new("job", "durable").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let saved = store.load(&key).await.unwrap().unwrap();
        let state: GraphState =
            serde_json::from_value(saved.state.agent_state["graph"].clone()).unwrap();
        if state.status == Status::Cancelled {
            assert_eq!(state.order, ["first"]);
            assert_eq!(state.queue, ["second"]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saved as cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another instance (a replica) resumes from the saved wave.
    released.store(true, Ordering::SeqCst);
    let replica = build(first_runs.clone(), released);
    let result = replica.resume("job").await.unwrap();
    assert_eq!(result.status, Status::Completed);
    assert_eq!(result.state.order, ["first", "second"]);
    assert_eq!(
        first_runs.load(Ordering::SeqCst),
        1,
        "the first node ran once"
    );
    // Nothing left to resume.
    assert!(matches!(
        replica.resume("job").await,
        Err(OrchestrationError::NothingToResume { .. })
    ));
}

fn desk(flights: &MockVllm, hotels: &MockVllm, max_handoffs: u32) -> Swarm {
    let store = InMemorySessionStore::new();
    Swarm::builder("desk")
        .agent(
            "flights",
            "Finds and prices flights.",
            Agent::builder()
                .model(provider(flights))
                .retry(fast_retry())
                .session_store(store.clone()),
        )
        .agent(
            "hotels",
            "Finds hotels.",
            Agent::builder()
                .model(provider(hotels))
                .retry(fast_retry())
                .session_store(store.clone()),
        )
        .entry("flights")
        .max_handoffs(max_handoffs)
        .session_store(store)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_swarm_hands_off_with_shared_context_and_streams_it() {
    let flights = MockVllm::start([Turn::tool_call(
        HANDOFF_TOOL,
        json!({"agent_name": "hotels", "message": "Find a hotel near Baixa", "context": {"flight": "TP1351"}}),
    )])
    .await
    .unwrap();
    let hotels = MockVllm::start([Turn::text("Baixa Inn, two nights; you fly TP1351.")])
        .await
        .unwrap();
    let swarm = desk(&flights, &hotels, 20);
    let mut events = Vec::new();
    let mut stream = swarm.stream("trip", "A weekend in Lisbon");
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            OrchestrationEvent::NodeEvent { .. } => {}
            other => events.push(other),
        }
    }
    assert_eq!(
        events,
        [
            OrchestrationEvent::NodeStart {
                node: "flights".into()
            },
            // Its turn ends with the handoff (no text of its own).
            OrchestrationEvent::NodeStop {
                node: "flights".into(),
                output: String::new()
            },
            OrchestrationEvent::Handoff {
                from: "flights".into(),
                to: "hotels".into(),
                message: "Find a hotel near Baixa".into()
            },
            OrchestrationEvent::NodeStart {
                node: "hotels".into()
            },
            OrchestrationEvent::NodeStop {
                node: "hotels".into(),
                output: "Baixa Inn, two nights; you fly TP1351.".into()
            },
            OrchestrationEvent::Stop {
                status: Status::Completed
            },
        ]
    );
    // The flights agent was offered the handoff tool, naming only the other agent.
    let offered = &flights.received()[0].body["tools"];
    let handoff = offered
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == HANDOFF_TOOL)
        .unwrap();
    assert_eq!(
        handoff["function"]["parameters"]["properties"]["agent_name"]["enum"],
        json!(["hotels"])
    );
    // Its turn ended at the handoff: one model call.
    assert_eq!(flights.received().len(), 1);
    // The hotels agent got the task, the handoff and the shared context.
    let prompt = hotels.last_message(0);
    assert!(prompt.starts_with("A weekend in Lisbon"), "{prompt}");
    assert!(
        prompt.contains("flights handed this to you: Find a hotel near Baixa"),
        "{prompt}"
    );
    assert!(
        prompt.contains(r#"{"flights":{"flight":"TP1351"}}"#),
        "{prompt}"
    );
}

#[tokio::test]
async fn handoffs_are_bounded_and_a_bad_target_is_the_models_to_fix() {
    let handoff = |to: &str| {
        Turn::tool_call(
            HANDOFF_TOOL,
            json!({"agent_name": to, "message": "your turn"}),
        )
    };
    // Ping-pong past the bound.
    let flights = MockVllm::start([handoff("hotels"), handoff("hotels")])
        .await
        .unwrap();
    let hotels = MockVllm::start([handoff("flights")]).await.unwrap();
    let result = desk(&flights, &hotels, 2)
        .run("pingpong", "Go")
        .await
        .unwrap();
    assert_eq!(result.status, Status::LimitReached);
    assert_eq!(result.state.handoffs.len(), 2);

    // A handoff to nobody: the model is told, and answers itself.
    let flights = MockVllm::start([handoff("pilots"), Turn::text("I will answer myself.")])
        .await
        .unwrap();
    let hotels = MockVllm::start([]).await.unwrap();
    let result = desk(&flights, &hotels, 20).run("bad", "Go").await.unwrap();
    assert_eq!(result.status, Status::Completed);
    assert_eq!(result.text(), "I will answer myself.");
    assert!(result.state.handoffs.is_empty());
    assert!(hotels.received().is_empty());
}

/// A crash-test process (`tests/src/bin/durable-orchestration.rs`).
fn orchestration_process(
    dir: &std::path::Path,
    server: &MockVllm,
    args: &[&str],
    block: bool,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_durable-orchestration"))
        .arg(dir.join("store"))
        .arg(server.base_url())
        .arg(dir.join("calls.log"))
        .args(args)
        .env("BLOCK", if block { "1" } else { "0" })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn durable-orchestration")
}

fn log_lines(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs until `line` is in the calls log, then kills the process (SIGKILL: no goodbye).
async fn kill_at(dir: &std::path::Path, mut child: std::process::Child, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !log_lines(dir).iter().any(|l| l == line) {
        assert!(
            std::time::Instant::now() < deadline,
            "never reached `{line}`"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process ended early"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}

/// Resumes in a new process and returns its stdout.
async fn resumed(dir: &std::path::Path, server: &MockVllm, kind: &str) -> String {
    let child = orchestration_process(dir, server, &[kind, "resume"], false);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn a_graph_killed_in_a_node_resumes_in_a_second_process_from_that_node() {
    let tmp = tempfile::tempdir().unwrap();
    let server = MockVllm::start([
        Turn::text("Research: TP1351 is the best flight."),
        Turn::text("Summary: booked TP1351."),
    ])
    .await
    .unwrap();
    let child = orchestration_process(tmp.path(), &server, &["graph", "run", "Book a trip"], true);
    kill_at(tmp.path(), child, "book start").await;
    assert_eq!(
        server.received().len(),
        1,
        "the research ran before the crash"
    );
    let stdout = resumed(tmp.path(), &server, "graph").await;
    assert!(stdout.contains("status: Completed"), "{stdout}");
    assert!(stdout.contains("order: research,book,summary"), "{stdout}");
    // The research agent was not asked again; the function node ran again from its start.
    assert_eq!(server.received().len(), 2);
    let log = log_lines(tmp.path());
    assert_eq!(
        log.iter().filter(|l| *l == "book start").count(),
        2,
        "{log:?}"
    );
    assert_eq!(
        log.iter().filter(|l| *l == "book done").count(),
        1,
        "{log:?}"
    );
    let prompt = server.last_message(1);
    assert!(
        prompt.contains("From book:\nbooked TP1351"),
        "the summary got the booking: {prompt}"
    );
}

#[tokio::test]
async fn a_swarm_killed_in_an_agents_tool_resumes_that_agents_turn_in_a_second_process() {
    let tmp = tempfile::tempdir().unwrap();
    let server = MockVllm::start([
        // flights
        Turn::tool_call(
            HANDOFF_TOOL,
            json!({"agent_name": "hotels", "message": "Reserve Baixa Inn"}),
        ),
        // hotels, before the crash
        Turn::tool_call("reserve", json!({"hotel": "Baixa Inn"})),
        // hotels, resumed
        Turn::text("The reservation was interrupted; please confirm before I try again."),
    ])
    .await
    .unwrap();
    let child = orchestration_process(
        tmp.path(),
        &server,
        &["swarm", "run", "A hotel in Lisbon"],
        true,
    );
    kill_at(tmp.path(), child, "reserve start Baixa Inn").await;
    assert_eq!(server.received().len(), 2);
    let stdout = resumed(tmp.path(), &server, "swarm").await;
    assert!(stdout.contains("status: Completed"), "{stdout}");
    assert!(
        stdout.contains("The reservation was interrupted"),
        "{stdout}"
    );
    // The flights agent was not asked again; the hotels agent's turn went on from its
    // pending call, answered as interrupted (the tool is not idempotent), not run twice.
    assert_eq!(server.received().len(), 3);
    let sent = server.received()[2].body["messages"].to_string();
    assert!(sent.contains("Tool was interrupted."), "{sent}");
    let log = log_lines(tmp.path());
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("reserve start"))
            .count(),
        1,
        "{log:?}"
    );
}

#[tokio::test]
async fn fan_in_waits_for_a_longer_branch_and_runs_once() {
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let node = |text: &'static str| FnNode::new(move |_| async move { Ok(text.to_owned()) });
    // a -> b -> x -> c and a -> c: c waits for x.
    let graph = Graph::builder("uneven")
        .node("a", node("A"))
        .node("b", node("B"))
        .node("x", node("X"))
        .node(
            "c",
            FnNode::new(move |input| {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    Ok(input.prompt)
                }
            }),
        )
        .edge("a", "b")
        .edge("b", "x")
        .edge("x", "c")
        .edge("a", "c")
        .entry("a")
        .entry("a")
        .build()
        .unwrap();
    let result = graph.run("s", "Join").await.unwrap();
    assert_eq!(result.state.order, ["a", "b", "x", "c"]);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let joined = result.state.output("c").unwrap();
    assert!(
        joined.contains("From x:\nX") && joined.contains("From a:\nA"),
        "{joined}"
    );
}

#[tokio::test]
async fn an_agent_node_cancelled_mid_call_is_resumed_and_answers() {
    let server = MockVllm::start([
        Turn::text("too late")
            .with_fault(agent_tests::Fault::SlowFirstByte(Duration::from_secs(30))),
        Turn::text("On time."),
    ])
    .await
    .unwrap();
    let store = InMemorySessionStore::new();
    let graph = Graph::builder("slow")
        .node("answer", agent(&server, "answerer", &store))
        .entry("answer")
        .session_store(store.clone())
        .build()
        .unwrap();
    let mut stream = graph.stream("job", "Answer");
    // Cancelled once the agent's model call is in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.received().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the call never arrived"
        );
        tokio::select! {
            _ = stream.next() => {}
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    drop(stream);
    let key = SessionKey::new("job", "slow").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let saved = store.load(&key).await.unwrap().unwrap();
        let state: GraphState =
            serde_json::from_value(saved.state.agent_state["graph"].clone()).unwrap();
        if state.status == Status::Cancelled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saved as cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The agent's cancelled invocation is not taken for finished: resuming runs it on.
    let result = graph.resume("job").await.unwrap();
    assert_eq!(result.status, Status::Completed);
    assert_eq!(result.state.output("answer"), Some("On time."));
}

#[tokio::test]
async fn of_two_handoffs_in_one_reply_the_accepted_one_counts() {
    let flights = MockVllm::start([Turn::tool_call(
        HANDOFF_TOOL,
        json!({"agent_name": "hotels", "message": "Your turn"}),
    )
    .and_tool_call(
        HANDOFF_TOOL,
        json!({"agent_name": "pilots", "message": "Fly it"}),
    )])
    .await
    .unwrap();
    let hotels = MockVllm::start([Turn::text("Hotel found.")]).await.unwrap();
    let result = desk(&flights, &hotels, 20).run("two", "Go").await.unwrap();
    assert_eq!(result.status, Status::Completed);
    assert_eq!(result.text(), "Hotel found.");
    assert_eq!(result.state.handoffs.len(), 1);
    assert_eq!(result.state.handoffs[0].to, "hotels");
}
