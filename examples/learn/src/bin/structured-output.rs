//! Structured output: the answer as a typed value. The schema comes from the type
//! (`schemars`), the provider is asked for it (vLLM and llama.cpp constrain decoding to it,
//! Bedrock forces a tool), and the reply is checked against it before it is deserialised; a
//! reply that does not fit is sent back to the model once with what was wrong.
//!
//! ```sh
//! OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_MODEL=qwen3-8b \
//!   cargo run -p learn --bin structured-output -- "Plan 3 nights in Porto in May"
//! ```

use agent_core::prelude::*;
use agent_core::schemars::JsonSchema;
use serde::Deserialize;

/// A trip plan. (`crate = ...` lets the derive find schemars through agent-core, so the
/// program needs no schemars dependency of its own.)
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "agent_core::schemars")]
struct TripPlan {
    /// The destination city.
    city: String,
    /// Nights to stay, at least 1.
    #[schemars(range(min = 1))]
    nights: u32,
    /// What to do, one short line per day.
    days: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Plan 2 nights in Lisbon.".into());
    let agent = Agent::builder()
        .model(OpenAiCompatible::from_env()?)
        .system_prompt("You plan trips.")
        .build()?;
    let plan: TripPlan = agent
        .session("structured-output")
        .invoke_structured(prompt)
        .await?;
    println!("{} for {} nights", plan.city, plan.nights);
    for (i, day) in plan.days.iter().enumerate() {
        println!("  day {}: {day}", i + 1);
    }
    Ok(())
}
