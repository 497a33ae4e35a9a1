//! Telemetry to an OpenTelemetry collector: one call reads the standard `OTEL_*` variables and
//! exports traces (`invoke_agent` → `chat` and `execute_tool` spans with the GenAI semantic
//! conventions' attributes) and metrics (token usage, operation duration) over OTLP/HTTP.
//! Jaeger, Grafana Tempo, Arize Phoenix, Langfuse (`.../api/public/otel`) all take it.
//!
//! ```sh
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_SERVICE_NAME=learn \
//! OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_MODEL=qwen3-8b \
//!   cargo run -p learn --bin telemetry -- "What time zone is Lisbon in?"
//! ```

use agent_core::prelude::*;

/// The UTC offset of a city's time zone in winter.
#[tool]
async fn utc_offset(
    /// The city.
    city: String,
) -> Result<String, String> {
    match city.as_str() {
        "Lisbon" | "London" => Ok("UTC+0".into()),
        "Paris" | "Berlin" | "Madrid" => Ok("UTC+1".into()),
        _ => Err(format!("unknown city {city}")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What time zone is Lisbon in?".into());
    // Before the agent is built: agents record to what is installed when they are built.
    // Keep the guard alive; dropping it flushes what is left and shuts the exporters down.
    let telemetry = agent_core::telemetry::otlp::init_from_env()?;
    let agent = Agent::builder()
        .name("learn-telemetry")
        .model(OpenAiCompatible::from_env()?)
        .tool(utc_offset)
        .build()?;
    let result = agent.session("telemetry").invoke(prompt).await?;
    println!("{}", result.text());
    drop(telemetry); // flush before exit
    Ok(())
}
