//! The `#[tool]` macro: generated specs (snapshots), calls, context, state, errors, panics.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use agent_core::message::ToolResultStatus;
use agent_core::prelude::*;
use agent_core::schemars::JsonSchema;
use agent_core::tool::ToolRegistry;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Cabin {
    Economy,
    Business,
}

/// A passenger.
#[derive(Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
struct Passenger {
    /// Full name.
    name: String,
    /// Age in years.
    age: Option<u8>,
}

/// A trip request.
#[derive(Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
struct Trip {
    /// IATA code of the origin.
    origin: String,
    /// IATA code of the destination.
    destination: String,
    passengers: Vec<Passenger>,
}

/// Current weather for a city.
///
/// Returns a short description.
#[tool]
async fn get_weather(
    /// City name, e.g. "Lisbon".
    city: String,
) -> String {
    format!("Sunny in {city}")
}

/// Books a trip.
#[tool]
fn book_trip(
    /// The trip.
    trip: Trip,
    /// Cabin class.
    cabin: Cabin,
    /// Extra notes for the agent.
    notes: Option<String>,
    /// Seat preferences by passenger name.
    seats: BTreeMap<String, String>,
    flexible: bool,
    budget_eur: f64,
) -> Result<Value, String> {
    if trip.passengers.is_empty() {
        return Err("a trip needs at least one passenger".into());
    }
    Ok(json!({
        "route": format!("{}-{}", trip.origin, trip.destination),
        "cabin": cabin, "notes": notes, "seats": seats.len(), "flexible": flexible,
        "passengers": trip.passengers.len(), "budget_eur": budget_eur
    }))
}

/// Says who is asking.
#[tool(name = "who-am-i", description = "Tells the session and actor ids.")]
async fn whoami(ctx: ToolContext, greeting: String) -> String {
    ctx.state.set("greeted", json!(true));
    format!(
        "{greeting}, {} in {} ({})",
        ctx.actor_id.as_deref().unwrap_or("nobody"),
        ctx.session_id,
        ctx.tool_use_id
    )
}

/// Does nothing useful.
#[tool]
fn nothing() {}

/// Always panics.
#[tool]
fn explode(reason: String) -> String {
    panic!("{reason}")
}

struct Counter {
    count: AtomicU32,
    step: u32,
}

#[tool]
impl Counter {
    /// Adds the step to the counter and returns the new value.
    #[tool]
    async fn increment(&self) -> u32 {
        self.count.fetch_add(self.step, Ordering::SeqCst) + self.step
    }

    /// Reads the counter.
    #[tool(name = "read_counter")]
    fn read(&self, ctx: &ToolContext) -> String {
        format!(
            "{} for {}",
            self.count.load(Ordering::SeqCst),
            ctx.session_id
        )
    }

    /// A tool that needs no state.
    #[tool]
    fn version() -> &'static str {
        "1.0"
    }

    fn helper(&self) -> u32 {
        self.step
    }
}

fn ctx() -> ToolContext {
    let mut ctx = ToolContext::new("tu-1", "session-9");
    ctx.actor_id = Some("alice".into());
    ctx
}

#[test]
fn generated_schemas() {
    insta::assert_json_snapshot!("get_weather", get_weather.spec());
    insta::assert_json_snapshot!("book_trip", book_trip.spec());
    insta::assert_json_snapshot!("who_am_i", whoami.spec());
    insta::assert_json_snapshot!("nothing", nothing.spec());
    let counter_specs: Vec<_> = Counter {
        count: AtomicU32::new(0),
        step: 1,
    }
    .into_tools()
    .iter()
    .map(|t| t.spec())
    .collect();
    insta::assert_json_snapshot!("counter", counter_specs);
}

#[test]
fn schemas_are_valid_and_strict() {
    for spec in [
        get_weather.spec(),
        book_trip.spec(),
        whoami.spec(),
        nothing.spec(),
    ] {
        let schema = &spec.input_schema;
        assert!(jsonschema_valid(schema), "{schema}");
        assert!(schema.get("required").is_some(), "required always present");
        assert_eq!(schema["additionalProperties"], false);
        let text = schema.to_string();
        assert!(
            !text.contains("\"$schema\"") && !text.contains("\"title\""),
            "no noise: {text}"
        );
    }
    let trip = book_trip.spec().input_schema;
    assert_eq!(
        trip["required"],
        json!(["trip", "cabin", "seats", "flexible", "budget_eur"])
    );
    assert_eq!(
        trip["properties"]["cabin"]["enum"],
        json!(["economy", "business"])
    );
    assert_eq!(trip["properties"]["trip"]["description"], "The trip.");
    assert_eq!(
        trip["properties"]["trip"]["properties"]["passengers"]["items"]["properties"]["name"]["description"],
        "Full name."
    );
    assert_eq!(
        get_weather.spec().description,
        "Current weather for a city.\n\nReturns a short description."
    );
}

fn jsonschema_valid(schema: &Value) -> bool {
    let mut registry = ToolRegistry::new();
    registry
        .register(Arc::new(FnTool::new(
            "probe",
            "probe",
            schema.clone(),
            |_, _| async { Ok(ToolOutput::text("")) },
        )))
        .is_ok()
}

#[tokio::test]
async fn calls_map_returns_to_outputs() {
    let out = get_weather
        .call(json!({"city": "Lisbon"}), ctx())
        .await
        .expect("ok");
    assert_eq!(out, ToolOutput::text("Sunny in Lisbon"));
    assert_eq!(
        get_weather::run("Porto".into()).await,
        "Sunny in Porto",
        "the function stays callable"
    );

    let input = json!({
        "trip": {"origin": "LHR", "destination": "LIS", "passengers": [{"name": "Ana", "age": 30}, {"name": "Rui"}]},
        "cabin": "business", "seats": {"Ana": "1A"}, "flexible": true, "budget_eur": 900.5
    });
    let out = book_trip.call(input, ctx()).await.expect("ok");
    assert_eq!(out.status, ToolResultStatus::Success);
    assert_eq!(
        out,
        ToolOutput::json(
            json!({"route": "LHR-LIS", "cabin": "business", "notes": null, "seats": 1, "flexible": true, "passengers": 2, "budget_eur": 900.5})
        )
    );
    let err = book_trip
        .call(json!({"trip": {"origin": "A", "destination": "B", "passengers": []}, "cabin": "economy", "seats": {}, "flexible": false, "budget_eur": 1}), ctx())
        .await
        .expect_err("Err is an error result");
    assert_eq!(err.message(), "a trip needs at least one passenger");
    let err = book_trip
        .call(json!({"trip": 5}), ctx())
        .await
        .expect_err("bad");
    assert!(
        err.message().contains("invalid value for `trip`"),
        "{}",
        err.message()
    );

    assert_eq!(
        nothing.call(json!({}), ctx()).await.expect("ok"),
        ToolOutput::text("ok")
    );
}

#[tokio::test]
async fn context_is_injected_by_type() {
    let c = ctx();
    let state = c.state.clone();
    let out = whoami.call(json!({"greeting": "Hi"}), c).await.expect("ok");
    assert_eq!(out, ToolOutput::text("Hi, alice in session-9 (tu-1)"));
    assert_eq!(state.get("greeted"), Some(json!(true)));
    assert!(
        !whoami.spec().input_schema["properties"]
            .as_object()
            .expect("props")
            .contains_key("ctx")
    );
}

#[tokio::test]
async fn impl_block_tools_share_state() {
    let counter = Arc::new(Counter {
        count: AtomicU32::new(0),
        step: 5,
    });
    assert_eq!(
        counter.helper(),
        5,
        "unmarked methods stay ordinary methods"
    );
    let tools = counter.clone().shared_tools();
    assert_eq!(tools.len(), 3);
    assert_eq!(
        tools[0].call(json!({}), ctx()).await.expect("ok"),
        ToolOutput::json(json!(5))
    );
    assert_eq!(
        tools[0].call(json!({}), ctx()).await.expect("ok"),
        ToolOutput::json(json!(10))
    );
    assert_eq!(
        tools[1].call(json!({}), ctx()).await.expect("ok"),
        ToolOutput::text("10 for session-9")
    );
    assert_eq!(
        tools[2].call(json!({}), ctx()).await.expect("ok"),
        ToolOutput::text("1.0")
    );
    assert_eq!(counter.count.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn through_the_loop_bad_input_names_the_field_and_panics_are_results() {
    use agent_core::message::ContentBlock;
    use agent_core::model::{ModelResponse, ModelStopReason, ScriptedModel};
    let calls = [
        (
            "book_trip",
            json!({"trip": {"origin": "A", "destination": "B", "passengers": [{"name": 7}]}, "cabin": "first", "seats": {}, "flexible": false, "budget_eur": 1}),
        ),
        (
            "book_trip",
            json!({"cabin": "economy", "seats": {}, "flexible": false, "budget_eur": 1, "extra": 1}),
        ),
        ("explode", json!({"reason": "kaboom"})),
    ];
    let model = ScriptedModel::new([
        ScriptedModel::tool_calls(calls.map(|(n, i)| (n.to_owned(), i))),
        ModelResponse::new(
            vec![ContentBlock::Text("done".into())],
            ModelStopReason::EndTurn,
        ),
    ]);
    let agent = Agent::builder()
        .model(model.clone())
        .tool(book_trip)
        .tool(explode)
        .build()
        .expect("agent");
    let result = agent.session("s").invoke("go").await.expect("run");
    assert_eq!(result.text(), "done");
    // The results the model was sent back, in request order.
    let requests = model.requests();
    let results: Vec<(ToolResultStatus, String)> = requests[1]
        .messages
        .last()
        .expect("tool results")
        .content
        .iter()
        .filter_map(|b| match b {
            ContentBlock::ToolResult(r) => Some((r.status, r.text())),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|(s, _)| *s == ToolResultStatus::Error));
    let texts: Vec<&String> = results.iter().map(|(_, t)| t).collect();
    assert!(
        texts[0].contains("/trip/passengers/0/name") && texts[0].contains("/cabin"),
        "{}",
        texts[0]
    );
    assert!(
        texts[1].contains("trip") && texts[1].contains("extra"),
        "{}",
        texts[1]
    );
    assert!(texts[2].contains("kaboom"), "{}", texts[2]);
}

#[test]
fn misuse_fails_to_compile_with_a_helpful_message() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

/// Looks a code up.
#[tool(idempotent, name = "lookup-code")]
fn lookup_code(
    /// The code.
    code: String,
) -> String {
    code
}

#[test]
fn idempotent_is_declared_by_the_attribute() {
    assert!(lookup_code.idempotent());
    assert_eq!(lookup_code.spec().name, "lookup-code");
    assert!(!get_weather.idempotent(), "not declared, not idempotent");
}
