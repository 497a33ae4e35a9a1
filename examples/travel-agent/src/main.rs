//! The travel assistant, CLI mode: one prompt, answered by an agent with travel tools against an
//! OpenAI-compatible endpoint (a vLLM server on EKS, or any OpenAI-compatible server).
//!
//! ```text
//! OPENAI_BASE_URL=http://localhost:8000/v1 cargo run -p travel-agent -- "A weekend in Lisbon?"
//! ```
//!
//! `OPENAI_MODEL` names the model; when unset, the first model the server lists at `/v1/models`
//! is used. `OPENAI_API_KEY` is sent as a bearer token when set; `OPENAI_TOOL_CALLING=constrained`
//! suits a vLLM server started without `--enable-auto-tool-choice`.
//!
//! Without `OPENAI_BASE_URL` it starts a local model with `scripts/local-model.sh` (llama.cpp and
//! Qwen2.5-Coder-1.5B on the CPU; the first run builds and downloads for about 12 minutes) and
//! uses constrained tool calling.

use std::io::Write as _;
use std::process::ExitCode;

use agent_core::model::openai::ToolCalling;
use agent_core::prelude::*;
use futures::StreamExt;
use serde_json::json;

mod data;

const SYSTEM_PROMPT: &str = "You are a travel assistant. Use the tools to look up weather and flights \
before answering, and answer briefly with the facts the tools returned.";

#[tokio::main]
async fn main() -> ExitCode {
    let prompt: Vec<String> = std::env::args().skip(1).collect();
    let prompt = if prompt.is_empty() {
        "What's the weather in Lisbon, and which flights go there from London on 2026-12-05?"
            .to_owned()
    } else {
        prompt.join(" ")
    };
    let (base_url, local) = match std::env::var("OPENAI_BASE_URL") {
        Ok(url) => (url, None),
        Err(_) => match LocalModel::start() {
            Ok(local) => (local.base_url.clone(), Some(local)),
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::from(2);
            }
        },
    };
    // OTLP export of traces and metrics when OTEL_EXPORTER_OTLP_ENDPOINT is set (Langfuse,
    // Jaeger, X-Ray through a collector); a no-op otherwise. Flushed when dropped.
    let telemetry = match agent_core::telemetry::otlp::init_from_env() {
        Ok(guard) => Some(guard),
        Err(e) => {
            eprintln!("[travel-agent] telemetry disabled: {e}");
            None
        }
    };
    let outcome = run(&base_url, &prompt, local.is_some()).await;
    drop(telemetry);
    drop(local);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The zero-configuration endpoint: `scripts/local-model.sh` (llama.cpp + Qwen2.5-Coder-1.5B on
/// the CPU), stopped again when the run ends unless `AGENT_KEEP_LOCAL_MODEL=1`.
struct LocalModel {
    base_url: String,
    script: std::path::PathBuf,
}

impl LocalModel {
    fn start() -> Result<Self, String> {
        let script = match std::env::var_os("AGENT_LOCAL_MODEL_SCRIPT") {
            Some(path) => std::path::PathBuf::from(path),
            None => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../scripts/local-model.sh"),
        };
        if !script.exists() {
            return Err(format!(
                "No model endpoint is configured and the local-model script is not at {}.\n\
                 Set OPENAI_BASE_URL to an OpenAI-compatible server, for example a vLLM server:\n\
                 \n    OPENAI_BASE_URL=http://localhost:8000/v1 cargo run -p travel-agent -- \"A weekend in Lisbon?\"\n\
                 \nOptional: OPENAI_MODEL (default: the first model the server lists), OPENAI_API_KEY,\n\
                 OPENAI_TOOL_CALLING=constrained for a vLLM server started without --enable-auto-tool-choice.",
                script.display()
            ));
        }
        eprintln!(
            "[travel-agent] OPENAI_BASE_URL is not set: starting a local model instead (llama.cpp's \
             llama-server with Qwen2.5-Coder-1.5B-Instruct on the CPU, constrained tool calling).\n\
             [travel-agent] The first run builds llama.cpp and downloads the 1.1 GB model: about 12 minutes \
             on 2 cores. Later runs start in seconds. Set OPENAI_BASE_URL to use your own endpoint."
        );
        let output = std::process::Command::new("bash")
            .arg(&script)
            .arg("start")
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "the local model did not start ({}); see the messages above",
                output.status
            ));
        }
        let base_url = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Ok(Self { base_url, script })
    }
}

impl Drop for LocalModel {
    fn drop(&mut self) {
        if std::env::var("AGENT_KEEP_LOCAL_MODEL").is_ok_and(|v| v == "1") {
            eprintln!(
                "[travel-agent] the local model keeps running at {} (stop: scripts/local-model.sh stop)",
                self.base_url
            );
            return;
        }
        // Best effort: the script stops only the server it started, by its PID.
        let _ = std::process::Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .status();
    }
}

async fn run(base_url: &str, prompt: &str, local: bool) -> Result<(), Box<dyn std::error::Error>> {
    let model_name = match std::env::var("OPENAI_MODEL") {
        Ok(m) => m,
        Err(_) => discover_model(base_url).await?,
    };
    let mut model = OpenAiCompatible::builder()
        .base_url(base_url)
        .model(&model_name);
    if local {
        // Small local models only call tools reliably when a grammar constrains their replies.
        model = model
            .tool_calling(ToolCalling::Constrained { parallel: false })
            .temperature(0.0);
    }
    let model = model.build()?;
    let agent = Agent::builder()
        .name("travel-agent")
        .model(model)
        .system_prompt(SYSTEM_PROMPT)
        .tool(get_weather)
        .tool(search_flights)
        .limits(Limits::default().max_turns(8))
        .build()?;
    eprintln!("[travel-agent] model `{model_name}` at {base_url}");
    let mut events = agent.session("cli").stream(prompt);
    while let Some(event) = events.next().await {
        match event? {
            AgentEvent::TextDelta { text } => {
                print!("{text}");
                std::io::stdout().flush()?;
            }
            AgentEvent::ToolUseStart { name, .. } => eprintln!("[tool] calling {name}"),
            AgentEvent::ToolResult { result } => eprintln!("[tool] result: {}", result.text()),
            AgentEvent::Retry {
                attempt,
                delay_ms,
                message,
                ..
            } => {
                eprintln!("[retry {attempt} in {delay_ms} ms] {message}")
            }
            AgentEvent::Stop(result) => {
                println!();
                eprintln!(
                    "[done] {:?}, {} turns, {} tokens",
                    result.stop_reason,
                    result.turns.len(),
                    result.usage.total_tokens
                );
            }
            _ => {}
        }
    }
    Ok(())
}

async fn discover_model(base_url: &str) -> Result<String, Box<dyn std::error::Error>> {
    let url = format!("{}/models", base_url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let body: serde_json::Value = client
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    body["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{url} lists no model; set OPENAI_MODEL").into())
}

/// Current weather and a short forecast for a city.
#[tool]
fn get_weather(
    /// City name, e.g. "Lisbon".
    city: String,
) -> Result<serde_json::Value, String> {
    data::weather(&city).ok_or_else(|| {
        format!(
            "no weather data for `{city}`; known cities: {}",
            data::CITIES.join(", ")
        )
    })
}

/// Direct flights between two cities on a date.
#[tool]
fn search_flights(
    /// Departure city.
    origin: String,
    /// Arrival city.
    destination: String,
    /// Date, YYYY-MM-DD.
    date: String,
) -> serde_json::Value {
    json!({"flights": data::flights(&origin, &destination, &date)})
}
