//! `#[tool]` functions and impl-block tools called by an agent through the vLLM-format server.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Mutex;

use agent_core::prelude::*;
use agent_tests::{MockVllm, Turn, provider};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
struct Leg {
    /// Departure airport (IATA).
    from: String,
    /// Arrival airport (IATA).
    to: String,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
struct Itinerary {
    legs: Vec<Leg>,
    /// Number of travellers.
    travellers: u32,
}

/// Prices an itinerary in euros.
#[tool]
async fn price_itinerary(
    /// The itinerary to price.
    itinerary: Itinerary,
    /// Optional discount code.
    discount: Option<String>,
) -> Result<Value, String> {
    if itinerary.legs.is_empty() {
        return Err("an itinerary needs at least one leg".into());
    }
    let per_leg = if discount.as_deref() == Some("WINTER") {
        80
    } else {
        100
    };
    let total = per_leg * itinerary.legs.len() as u32 * itinerary.travellers;
    let route: Vec<String> = itinerary
        .legs
        .iter()
        .map(|l| format!("{}-{}", l.from, l.to))
        .collect();
    Ok(json!({"route": route.join(","), "total_eur": total}))
}

struct Notebook {
    notes: Mutex<Vec<String>>,
}

#[tool]
impl Notebook {
    /// Saves a note for the user.
    #[tool]
    fn save_note(
        &self,
        /// The note.
        text: String,
        ctx: &ToolContext,
    ) -> String {
        let mut notes = self.notes.lock().unwrap();
        notes.push(format!("{}: {text}", ctx.session_id));
        format!("saved note {}", notes.len())
    }
}

fn tool_message_contents(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn agent_calls_macro_tools_with_nested_arguments() {
    let itinerary = json!({"legs": [{"from": "LHR", "to": "LIS"}, {"from": "LIS", "to": "OPO"}], "travellers": 2});
    let server = MockVllm::start([
        Turn::tool_call(
            "price_itinerary",
            json!({"itinerary": itinerary, "discount": "WINTER"}),
        )
        .and_tool_call("save_note", json!({"text": "book the window seat"})),
        Turn::text("It costs 320 EUR; noted."),
    ])
    .await
    .expect("server");
    let notebook = Notebook {
        notes: Mutex::new(Vec::new()),
    };
    let agent = Agent::builder()
        .model(provider(&server))
        .tool(price_itinerary)
        .tools(notebook.into_tools())
        .build()
        .expect("agent");
    let r = agent
        .session("trip-42")
        .invoke("Price my trip")
        .await
        .expect("invoke");
    assert_eq!(r.text(), "It costs 320 EUR; noted.");
    let received = server.received();
    // The tools were offered with their generated schemas.
    let tools = received[0].body["tools"].as_array().unwrap();
    assert_eq!(tools[0]["function"]["name"], "price_itinerary");
    assert_eq!(
        tools[0]["function"]["parameters"]["required"],
        json!(["itinerary"])
    );
    assert_eq!(
        tools[1]["function"]["description"],
        "Saves a note for the user."
    );
    // And their results went back to the model.
    let contents = tool_message_contents(&received[1].body);
    let priced: Value = serde_json::from_str(&contents[0]).unwrap();
    assert_eq!(
        priced,
        json!({"route": "LHR-LIS,LIS-OPO", "total_eur": 320})
    );
    assert_eq!(contents[1], "saved note 1");
}

#[tokio::test]
async fn arguments_that_violate_the_schema_name_the_field() {
    let server = MockVllm::start([
        Turn::tool_call(
            "price_itinerary",
            json!({"itinerary": {"legs": [{"from": "LHR"}], "travellers": "two"}}),
        ),
        Turn::tool_call(
            "price_itinerary",
            json!({"itinerary": {"legs": [], "travellers": 1}}),
        ),
        Turn::text("Sorry."),
    ])
    .await
    .expect("server");
    let agent = Agent::builder()
        .model(provider(&server))
        .tool(price_itinerary)
        .build()
        .expect("agent");
    let r = agent
        .session("bad-args")
        .invoke("Price my trip")
        .await
        .expect("invoke");
    assert_eq!(r.text(), "Sorry.");
    let received = server.received();
    let first = &tool_message_contents(&received[1].body)[0];
    assert!(
        first.starts_with("Error: invalid input for tool `price_itinerary`"),
        "{first}"
    );
    assert!(
        first.contains("/itinerary/legs/0") && first.contains("\"to\""),
        "missing field named: {first}"
    );
    assert!(
        first.contains("/itinerary/travellers"),
        "wrong type named: {first}"
    );
    let second = &tool_message_contents(&received[2].body)[1];
    assert_eq!(second, "Error: an itinerary needs at least one leg");
}
