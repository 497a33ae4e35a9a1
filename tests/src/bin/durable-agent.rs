//! An agent process for the durable-run tests (`tests/tests/durable.rs`): it runs or resumes
//! one session on a file store, so a test can kill it (SIGKILL) at any point and resume the run
//! in a second process.
//!
//! ```text
//! durable-agent <store dir> <model base URL> <calls log> run "<prompt>"
//! durable-agent <store dir> <model base URL> <calls log> resume
//! durable-agent <store dir> <model base URL> <calls log> respond <interrupt id> <JSON answer>
//! ```
//!
//! Tools, each writing `<tool> start <arg>` / `<tool> done <arg>` lines to the calls log (one
//! `write` per line, so lines from concurrent calls do not mix):
//! - `lookup` (idempotent) returns at once;
//! - `book` (not idempotent) returns at once, or waits forever when `BOOK_BLOCKS=1`;
//! - `slow_lookup` (idempotent) returns at once, or waits forever when `SLOW_BLOCKS=1`.
//!
//! - `confirm_book` (not idempotent) asks a person first (`confirm_booking`, an interrupt),
//!   then books when the answer is `true`.
//!
//! Prints the answer, then `stop: <reason>`, then `interrupt: <id>` per question, on stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_core::prelude::*;
use agent_memory::FileSessionStore;
use agent_tests::log_line;
use serde_json::json;

fn tool(name: &'static str, log: PathBuf, blocks: bool, idempotent: bool) -> FnTool {
    let t = FnTool::new(
        name,
        "A test tool.",
        json!({"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]}),
        move |input, _ctx| {
            let log = log.clone();
            async move {
                let arg = input["arg"].as_str().unwrap_or_default().to_owned();
                log_line(&log, &format!("{name} start {arg}"));
                if blocks {
                    std::future::pending::<()>().await;
                }
                log_line(&log, &format!("{name} done {arg}"));
                Ok(ToolOutput::text(format!("{name} result for {arg}")))
            }
        },
    )
    .with_timeout(std::time::Duration::from_secs(3600));
    if idempotent { t.idempotent() } else { t }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, base_url, log, mode, rest @ ..] = args.as_slice() else {
        eprintln!(
            "usage: durable-agent <store dir> <model base URL> <calls log> run <prompt> | resume"
        );
        return ExitCode::from(2);
    };
    let log = PathBuf::from(log);
    let blocks = |var: &str| std::env::var(var).is_ok_and(|v| v == "1");
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
    // REPLICA_LEASE_MS: take replica leases of that many milliseconds.
    let builder = match std::env::var("REPLICA_LEASE_MS")
        .ok()
        .map(|v| v.parse::<u64>())
    {
        Some(Ok(ms)) => Agent::builder().replica_lease(std::time::Duration::from_millis(ms)),
        Some(Err(e)) => {
            eprintln!("REPLICA_LEASE_MS: {e}");
            return ExitCode::from(2);
        }
        None => Agent::builder(),
    };
    let agent = match builder
        .model(model)
        .session_store(FileSessionStore::new(store))
        .tool(tool("lookup", log.clone(), false, true))
        .tool(tool("book", log.clone(), blocks("BOOK_BLOCKS"), false))
        .tool(FnTool::new(
            "confirm_book",
            "Books after the user confirms.",
            json!({"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]}),
            {
                let log = log.clone();
                move |input, ctx: ToolContext| {
                    let log = log.clone();
                    async move {
                        let arg = input["arg"].as_str().unwrap_or_default().to_owned();
                        log_line(&log, &format!("confirm_book start {arg}"));
                        let answer = ctx.interrupt("confirm_booking", json!({"arg": arg}))?;
                        log_line(&log, &format!("confirm_book answered {arg} {answer}"));
                        if answer != json!(true) {
                            return Ok(ToolOutput::text("declined"));
                        }
                        Ok(ToolOutput::text(format!("booked {arg}")))
                    }
                }
            },
        ))
        .tool(tool(
            "slow_lookup",
            log.clone(),
            blocks("SLOW_BLOCKS"),
            true,
        ))
        .build()
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let session = agent.session("durable");
    let outcome = match (mode.as_str(), rest) {
        ("run", [prompt]) => session.invoke(prompt.as_str()).await,
        ("resume", []) => session.resume().await,
        ("respond", [id, answer]) => match serde_json::from_str(answer) {
            Ok(answer) => {
                session
                    .respond([agent_core::interrupt::InterruptResponse::new(id, answer)])
                    .await
            }
            Err(e) => {
                eprintln!("the answer is not JSON: {e}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("unknown mode `{mode}`");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(r) => {
            println!("{}", r.text());
            println!("stop: {}", r.stop_reason.as_str());
            for i in &r.interrupts {
                println!("interrupt: {}", i.id);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
