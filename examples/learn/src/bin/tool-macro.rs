//! Tools with `#[tool]`: a function tool and an `impl` block of tools that share state, given
//! to an agent on any OpenAI-compatible endpoint (vLLM, llama.cpp's server, OpenAI).
//!
//! ```sh
//! OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_MODEL=qwen3-8b \
//!   cargo run -p learn --bin tool-macro -- "How much is 3 nights in Lisbon?"
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use agent_core::prelude::*;
use futures::StreamExt;

/// Converts an amount between two currencies at a fixed rate.
#[tool]
async fn convert_currency(
    /// The amount to convert.
    amount: f64,
    /// ISO 4217 code to convert from, e.g. "EUR".
    from: String,
    /// ISO 4217 code to convert to, e.g. "USD".
    to: String,
) -> Result<String, String> {
    let rate = match (from.as_str(), to.as_str()) {
        (a, b) if a == b => 1.0,
        ("EUR", "USD") => 1.08,
        ("USD", "EUR") => 0.93,
        _ => return Err(format!("no rate from {from} to {to}: use EUR or USD")),
    };
    Ok(format!("{amount} {from} = {:.2} {to}", amount * rate))
}

/// Hotel prices per city. `#[tool]` on the `impl` block and on each method that is a tool:
/// the tools share the struct.
struct Hotels {
    nightly: HashMap<String, f64>,
}

#[tool]
impl Hotels {
    /// The nightly price of a hotel in a city, in EUR.
    #[tool]
    async fn hotel_price(
        &self,
        /// The city, e.g. "Lisbon".
        city: String,
    ) -> Result<f64, String> {
        self.nightly
            .get(&city)
            .copied()
            .ok_or_else(|| format!("no hotel known in {city}"))
    }

    /// The cities with known hotels.
    #[tool]
    async fn hotel_cities(&self) -> Vec<String> {
        let mut cities: Vec<String> = self.nightly.keys().cloned().collect();
        cities.sort();
        cities
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "How much is 3 nights in Lisbon, in USD?".into());
    let hotels = Arc::new(Hotels {
        nightly: HashMap::from([("Lisbon".into(), 120.0), ("Porto".into(), 95.0)]),
    });
    let agent = Agent::builder()
        .model(OpenAiCompatible::from_env()?) // OPENAI_BASE_URL, OPENAI_MODEL, OPENAI_API_KEY
        .system_prompt("You price trips. Use the tools; answer in one sentence.")
        .tool(convert_currency)
        .tools(hotels.shared_tools()) // one tool per method, sharing `hotels`
        .build()?;
    // Streamed: tool calls as they start, the answer as it is written.
    let mut events = agent.session("tool-macro").stream(prompt);
    while let Some(event) = events.next().await {
        match event? {
            AgentEvent::ToolUseStart { name, .. } => eprintln!("[tool] {name}"),
            AgentEvent::TextDelta { text } => print!("{text}"),
            AgentEvent::Stop(result) => {
                println!();
                eprintln!(
                    "[stop] {:?}, {} turns",
                    result.stop_reason,
                    result.turns.len()
                );
            }
            _ => {}
        }
    }
    Ok(())
}
