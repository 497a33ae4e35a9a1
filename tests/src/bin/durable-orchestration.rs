//! A graph and a swarm for the crash tests (`tests/tests/orchestration.rs`): it runs or resumes
//! one of them on a file store, so a test can kill it (SIGKILL) in the middle and resume the
//! run in a second process.
//!
//! ```text
//! durable-orchestration <store dir> <model base URL> <calls log> graph|swarm run "<task>"
//! durable-orchestration <store dir> <model base URL> <calls log> graph|swarm resume
//! ```
//!
//! The graph: `research` (an agent) -> `book` (a function that logs `book start` / `book done`,
//! and with `BLOCK=1` waits forever between them) -> `summary` (an agent). The swarm: `flights`
//! (an agent that hands off) and `hotels` (an agent with a `reserve` tool that logs
//! `reserve start` and, with `BLOCK=1`, waits forever). Prints `status: <status>` and the
//! graph's node order or the swarm's answer on stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_core::multiagent::{FnNode, Graph, Swarm};
use agent_core::prelude::*;
use agent_memory::FileSessionStore;
use agent_tests::log_line;
use serde_json::json;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, base_url, log, kind, mode, rest @ ..] = args.as_slice() else {
        eprintln!(
            "usage: durable-orchestration <store dir> <model base URL> <calls log> graph|swarm run <task> | resume"
        );
        return ExitCode::from(2);
    };
    let log = PathBuf::from(log);
    let blocks = std::env::var("BLOCK").is_ok_and(|v| v == "1");
    let model = match OpenAiCompatible::builder()
        .base_url(base_url)
        .model("qwen3-8b")
        .build()
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let store = FileSessionStore::new(store);
    let outcome = match kind.as_str() {
        "graph" => {
            let agent = |id: &str| {
                Agent::builder()
                    .id(id)
                    .name(id)
                    .model(model.clone())
                    .session_store(store.clone())
                    .build()
            };
            let (research, summary) = match (agent("researcher"), agent("summarizer")) {
                (Ok(r), Ok(s)) => (r, s),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let book_log = log.clone();
            let graph = Graph::builder("trip-graph")
                .node("research", research)
                .node(
                    "book",
                    FnNode::new(move |_| {
                        let log = book_log.clone();
                        async move {
                            log_line(&log, "book start");
                            if blocks {
                                std::future::pending::<()>().await;
                            }
                            log_line(&log, "book done");
                            Ok("booked TP1351".to_owned())
                        }
                    }),
                )
                .node("summary", summary)
                .edge("research", "book")
                .edge("book", "summary")
                .entry("research")
                .session_store(store.clone())
                .build();
            let graph = match graph {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = match (mode.as_str(), rest) {
                ("run", [task]) => graph.run("trip", task.as_str()).await,
                ("resume", []) => graph.resume("trip").await,
                _ => {
                    eprintln!("unknown mode `{mode}`");
                    return ExitCode::from(2);
                }
            };
            result.map(|r| {
                format!(
                    "status: {:?}\norder: {}\n",
                    r.status,
                    r.state.order.join(",")
                )
            })
        }
        "swarm" => {
            let reserve_log = log.clone();
            let reserve = FnTool::new(
                "reserve",
                "Reserves a hotel room.",
                json!({"type": "object", "properties": {"hotel": {"type": "string"}}, "required": ["hotel"]}),
                move |input, _| {
                    let log = reserve_log.clone();
                    async move {
                        let hotel = input["hotel"].as_str().unwrap_or_default().to_owned();
                        log_line(&log, &format!("reserve start {hotel}"));
                        if blocks {
                            std::future::pending::<()>().await;
                        }
                        log_line(&log, &format!("reserve done {hotel}"));
                        Ok(ToolOutput::text(format!("reserved {hotel}")))
                    }
                },
            )
            .with_timeout(std::time::Duration::from_secs(3600));
            let swarm = Swarm::builder("desk")
                .agent(
                    "flights",
                    "Finds flights.",
                    Agent::builder()
                        .model(model.clone())
                        .session_store(store.clone()),
                )
                .agent(
                    "hotels",
                    "Finds and reserves hotels.",
                    Agent::builder()
                        .model(model)
                        .tool(reserve)
                        .session_store(store.clone()),
                )
                .entry("flights")
                .session_store(store)
                .build();
            let swarm = match swarm {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = match (mode.as_str(), rest) {
                ("run", [task]) => swarm.run("trip", task.as_str()).await,
                ("resume", []) => swarm.resume("trip").await,
                _ => {
                    eprintln!("unknown mode `{mode}`");
                    return ExitCode::from(2);
                }
            };
            result.map(|r| format!("status: {:?}\nanswer: {}\n", r.status, r.text()))
        }
        other => {
            eprintln!("unknown kind `{other}`");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
