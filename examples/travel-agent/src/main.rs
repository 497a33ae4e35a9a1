//! The travel assistant: an agent with travel tools (from its own MCP server) against an
//! OpenAI-compatible endpoint (a vLLM server on EKS, or any OpenAI-compatible server).
//!
//! ```text
//! OPENAI_BASE_URL=http://localhost:8000/v1 cargo run -p travel-agent -- "A weekend in Lisbon?"
//! cargo run -p travel-agent -- eval            # the evaluation set, pass rate at the end
//! cargo run -p travel-agent -- serve --no-auth # the HTTP service (src/serve/)
//! cargo run -p travel-agent -- mcp             # the travel MCP server, stdio (--http <addr>)
//! ```
//!
//! `OPENAI_MODEL` names the model; when unset, the first model the server lists at `/v1/models`
//! is used. `OPENAI_API_KEY` is sent as a bearer token when set; `OPENAI_TOOL_CALLING=constrained`
//! suits a vLLM server started without `--enable-auto-tool-choice`.
//!
//! Without `OPENAI_BASE_URL` it starts a local model with `scripts/local-model.sh` (llama.cpp and
//! Qwen2.5-Coder-1.5B on the CPU; the first run on a machine builds and downloads it, once) and
//! uses constrained tool calling.
//!
//! Exit status: 0 with an answer; 1 when the run failed or ended without an answer; 2 when no
//! model endpoint could be had; 130 when interrupted.

use std::io::Write as _;
use std::process::ExitCode;

use agent_core::prelude::*;
use clap::{Parser, Subcommand};
use futures::StreamExt;

mod data;
mod endpoint;
mod eval;
mod mcp_server;
mod serve;
mod tools;
mod travel_tools;

const DEFAULT_PROMPT: &str =
    "What's the weather in Lisbon, and which flights go there from London on 2026-12-05?";

#[derive(Parser)]
#[command(
    name = "travel-agent",
    about = "A travel assistant: weather and flights from its tools, answered by a model",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The question (default: a weather and flights question about Lisbon).
    prompt: Vec<String>,
    /// Continue this session (default: a new session for each run).
    #[arg(long)]
    session: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the evaluation set against the model: Ragas' metrics, a summary, thresholds.
    Eval(eval::Args),
    /// Serves the agent over HTTP (see `serve --help`).
    Serve(serve::Args),
    /// Serves the travel tools as an MCP server (stdio, or streamable HTTP with `--http`).
    Mcp(mcp_server::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    init_logs(matches!(cli.command, Some(Command::Serve(_))));
    if let Some(Command::Mcp(args)) = cli.command {
        // No model and no telemetry: a tool server.
        return match mcp_server::run(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                say(tracing::Level::ERROR, &e.to_string());
                ExitCode::FAILURE
            }
        };
    }
    let endpoint = match endpoint::Endpoint::resolve() {
        Ok(e) => e,
        Err(message) => {
            say(tracing::Level::ERROR, &message);
            return ExitCode::from(2);
        }
    };
    // OTLP export of traces and metrics when OTEL_EXPORTER_OTLP_ENDPOINT is set (Langfuse,
    // Jaeger, X-Ray through a collector); a no-op otherwise. Flushed when dropped.
    let telemetry = match agent_core::telemetry::otlp::init_from_env() {
        Ok(guard) => Some(guard),
        Err(e) => {
            say(tracing::Level::WARN, &format!("telemetry disabled: {e}"));
            None
        }
    };
    let cancel = CancellationToken::new();
    let serving = matches!(cli.command, Some(Command::Serve(_)));
    // The travel tools, from the travel MCP server; kept connected until the end.
    let mcp = match travel_tools::connect(!serving).await {
        Ok(client) => client,
        Err(e) => {
            say(
                tracing::Level::ERROR,
                &format!("cannot start the travel MCP server: {e}"),
            );
            return ExitCode::FAILURE;
        }
    };
    let tools = match mcp.tools().await {
        Ok(tools) => tools,
        Err(e) => {
            say(
                tracing::Level::ERROR,
                &format!("cannot list the travel MCP server's tools: {e}"),
            );
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        // The service handles its own signals: SIGTERM drains it.
        Some(Command::Serve(args)) => match endpoint.builder(tools).await {
            Ok(builder) => serve::run(args, builder, started).await,
            Err(e) => Err(e),
        },
        command => {
            // Ctrl-C or SIGTERM cancels the run; the local model is still stopped on the way out.
            tokio::spawn(cancel_on_signal(cancel.clone()));
            match (endpoint.agent(tools).await, command) {
                (Err(e), _) => Err(e),
                (Ok(agent), Some(Command::Eval(args))) => {
                    if args.judge_wanted() {
                        match endpoint.judge_model().await {
                            Ok(judge) => eval::run(&agent, Some(judge), &args, &cancel).await,
                            Err(e) => Err(e),
                        }
                    } else {
                        eval::run(&agent, None, &args, &cancel).await
                    }
                }
                (Ok(agent), _) => {
                    let prompt = if cli.prompt.is_empty() {
                        DEFAULT_PROMPT.to_owned()
                    } else {
                        cli.prompt.join(" ")
                    };
                    ask(&agent, &prompt, cli.session, &cancel).await
                }
            }
        }
    };
    drop(mcp);
    drop(telemetry);
    drop(endpoint);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if cancel.is_cancelled() => {
            say(tracing::Level::WARN, "interrupted");
            ExitCode::from(130)
        }
        Err(e) => {
            say(tracing::Level::ERROR, &e.to_string());
            ExitCode::FAILURE
        }
    }
}

/// Whether stderr carries JSON log lines (set once, by `init_logs`).
static JSON_LOGS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// A line about the process itself (its model, a failure to start): a JSON log line (target
/// `travel_agent::lifecycle`) when the logs are JSON, so a log pipeline parses every line;
/// `[travel-agent] ...` text otherwise.
pub(crate) fn say(level: tracing::Level, message: &str) {
    if JSON_LOGS.get().copied().unwrap_or(false) {
        match level {
            tracing::Level::ERROR => {
                tracing::error!(target: "travel_agent::lifecycle", "{message}")
            }
            tracing::Level::WARN => tracing::warn!(target: "travel_agent::lifecycle", "{message}"),
            _ => tracing::info!(target: "travel_agent::lifecycle", "{message}"),
        }
    } else if level == tracing::Level::ERROR {
        eprintln!("error: {message}");
    } else {
        eprintln!("[travel-agent] {message}");
    }
}

/// Logs on stderr through `tracing`: the library's warnings (telemetry export failures, retries
/// given up, memory extraction) and the service's requests. JSON lines (with the run's
/// `request_id`, `session_id`, `trace_id` and `span_id`) for the service, text for the CLI;
/// `TRAVEL_AGENT_LOG_FORMAT=json|text` overrides, and `RUST_LOG` chooses the levels (default
/// `info` for the service, `warn` for the CLI).
fn init_logs(service: bool) {
    let json = match std::env::var("TRAVEL_AGENT_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => service,
    };
    let _ = JSON_LOGS.set(json);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if service { "info" } else { "warn" })
    });
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if json {
        builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

async fn cancel_on_signal(cancel: CancellationToken) {
    serve::terminated().await;
    cancel.cancel();
}

/// Asks one question and prints the answer as it streams; tool activity goes to stderr.
async fn ask(
    agent: &Agent,
    prompt: &str,
    session: Option<String>,
    cancel: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error>> {
    // A new session per run unless one is named, so separate runs are separate conversations.
    let session = session.unwrap_or_else(|| format!("cli-{:016x}", fastrand::u64(..)));
    eprintln!("[travel-agent] session {session}");
    let mut events = agent
        .session(&session)
        .cancel_token(cancel.clone())
        .stream(prompt);
    let mut printed = false;
    while let Some(event) = events.next().await {
        match event? {
            AgentEvent::TextDelta { text } => {
                print!("{text}");
                printed |= !text.is_empty();
                std::io::stdout().flush()?;
            }
            AgentEvent::MessageAdded { message } if message.role == Role::Assistant => {
                for u in message.tool_uses() {
                    eprintln!("[tool] calling {} {}", u.name, u.input);
                }
            }
            AgentEvent::ToolResult { result } => eprintln!("[tool] result: {}", result.text()),
            AgentEvent::Retry {
                attempt,
                delay_ms,
                message,
                ..
            } => eprintln!("[retry {attempt} in {delay_ms} ms] {message}"),
            AgentEvent::Stop(result) => {
                if printed {
                    println!();
                }
                eprintln!(
                    "[done] {}, {} model calls, {} tokens",
                    result.stop_reason.as_str(),
                    result.turns.len(),
                    result.usage.total_tokens
                );
                if result.stop_reason == StopReason::Cancelled {
                    return Err("interrupted".into());
                }
                if !result.has_answer() {
                    return Err(format!(
                        "the agent stopped ({}) without an answer",
                        result.stop_reason.as_str()
                    )
                    .into());
                }
            }
            _ => {}
        }
    }
    Ok(())
}
