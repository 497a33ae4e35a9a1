//! The travel assistant, CLI mode: one prompt, answered by an agent with travel tools against an
//! OpenAI-compatible endpoint (a vLLM server on EKS, or any OpenAI-compatible server).
//!
//! ```text
//! OPENAI_BASE_URL=http://localhost:8000/v1 cargo run -p travel-agent -- "A weekend in Lisbon?"
//! ```
//!
//! `OPENAI_MODEL` names the model; when unset, the first model the server lists at `/v1/models`
//! is used. `OPENAI_API_KEY` is sent as a bearer token when set.

use std::io::Write as _;
use std::process::ExitCode;

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
    let Ok(base_url) = std::env::var("OPENAI_BASE_URL") else {
        eprintln!(
            "No model endpoint is configured.\n\
             Set OPENAI_BASE_URL to an OpenAI-compatible server, for example a vLLM server:\n\
             \n    OPENAI_BASE_URL=http://localhost:8000/v1 cargo run -p travel-agent -- \"A weekend in Lisbon?\"\n\
             \nOptional: OPENAI_MODEL (default: the first model the server lists), OPENAI_API_KEY."
        );
        return ExitCode::from(2);
    };
    match run(&base_url, &prompt).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(base_url: &str, prompt: &str) -> Result<(), Box<dyn std::error::Error>> {
    let model_name = match std::env::var("OPENAI_MODEL") {
        Ok(m) => m,
        Err(_) => discover_model(base_url).await?,
    };
    let model = OpenAiCompatible::builder()
        .base_url(base_url)
        .model(&model_name)
        .build()?;
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
