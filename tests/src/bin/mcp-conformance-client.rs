//! The client side of the official MCP conformance suite (`@modelcontextprotocol/conformance`),
//! built on agent-mcp. The harness runs it with the mock server's URL as the last argument and
//! the scenario in `MCP_CONFORMANCE_SCENARIO`, the spec version in
//! `MCP_CONFORMANCE_PROTOCOL_VERSION` and scenario data in `MCP_CONFORMANCE_CONTEXT`.
//! `scripts/mcp-conformance.sh` runs the suites. Exit status 0 when every step worked.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent_core::async_trait;
#[allow(deprecated)]
use agent_mcp::rmcp::model::{CreateMessageRequestParams, CreateMessageResult, SamplingMessage};
use agent_mcp::{AcceptDefaults, Authorizer, McpClient, McpServer, OAuth, SamplingHandler};
use serde_json::{Map, Value, json};

/// The harness's fixed redirect URI and client metadata document URL.
const REDIRECT_URI: &str = "http://localhost:3000/callback";
const CLIENT_METADATA_URL: &str = "https://conformance-test.local/client-metadata.json";

/// Follows the authorization URL itself (the mock authorization server redirects at once)
/// and hands back the redirect.
struct FollowRedirect;

#[async_trait]
impl Authorizer for FollowRedirect {
    async fn authorize(&self, url: String) -> Result<String, agent_mcp::HandlerError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| agent_mcp::HandlerError::with_source("no HTTP client", e))?;
        let response = http.get(&url).send().await.map_err(|e| {
            agent_mcp::HandlerError::with_source("the authorization server did not answer", e)
        })?;
        response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                format!(
                    "no redirect from the authorization server ({})",
                    response.status()
                )
                .into()
            })
    }
}

/// Answers sampling with a fixed text.
#[allow(deprecated)]
struct FixedSampling;

#[allow(deprecated)]
#[async_trait]
impl SamplingHandler for FixedSampling {
    async fn create_message(
        &self,
        _request: CreateMessageRequestParams,
    ) -> Result<CreateMessageResult, agent_mcp::HandlerError> {
        Ok(CreateMessageResult::new(
            SamplingMessage::assistant_text("conformance sampling answer"),
            "conformance-model".into(),
        )
        .with_stop_reason("endTurn"))
    }
}

/// Arguments for a tool from its input schema's required properties.
fn synthesize(schema: &Map<String, Value>) -> Value {
    let mut args = Map::new();
    let props = schema.get("properties").and_then(Value::as_object);
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        let kind = props
            .and_then(|p| p.get(name))
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("string");
        let value = match kind {
            "number" | "integer" => json!(1),
            "boolean" => json!(true),
            "object" => json!({}),
            "array" => json!([]),
            _ => json!("test"),
        };
        args.insert(name.to_owned(), value);
    }
    Value::Object(args)
}

async fn run(url: &str) -> Result<(), String> {
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    let version =
        std::env::var("MCP_CONFORMANCE_PROTOCOL_VERSION").unwrap_or_else(|_| "2025-11-25".into());
    let context: Value = std::env::var("MCP_CONFORMANCE_CONTEXT")
        .ok()
        .and_then(|c| serde_json::from_str(&c).ok())
        .unwrap_or(Value::Null);
    eprintln!("scenario {scenario}, protocol {version}, server {url}");

    let mut server = McpServer::http("conformance", url)
        .protocol_version(&version)
        .map_err(|e| e.to_string())?
        .startup_timeout(Duration::from_secs(20))
        .reconnect_timeout(Duration::from_secs(5))
        .call_timeout(Duration::from_secs(15))
        .elicitation(Arc::new(AcceptDefaults))
        .sampling(Arc::new(FixedSampling))
        .root("file:///tmp/conformance", "conformance");
    if scenario.starts_with("auth/") {
        let mut oauth = OAuth::new(REDIRECT_URI, Arc::new(FollowRedirect))
            .client_name("agent-mcp conformance client")
            .timeout(Duration::from_secs(10));
        if let Some(id) = context.get("client_id").and_then(Value::as_str) {
            let secret = context
                .get("client_secret")
                .and_then(Value::as_str)
                .map(str::to_owned);
            oauth = oauth.client(id, secret);
        } else {
            oauth = oauth.client_metadata_url(CLIENT_METADATA_URL);
        }
        server = server.oauth(oauth);
    }
    let client = server.connect().await.map_err(|e| e.to_string())?;
    eprintln!("connected, protocol {:?}", client.protocol_version());
    exercise(&client, &scenario, &context).await?;
    client.close().await;
    Ok(())
}

async fn exercise(client: &McpClient, scenario: &str, context: &Value) -> Result<(), String> {
    let tools = client.list_tools().await.map_err(|e| e.to_string())?;
    eprintln!("{} tools", tools.len());
    if scenario == "json-schema-2020-12-preservation" {
        let schema = tools
            .iter()
            .find(|t| t.name == "json_schema_2020_12_tool")
            .map(|t| Value::Object((*t.input_schema).clone()))
            .ok_or("no json_schema_2020_12_tool")?;
        client
            .call_tool("json_schema_echo", json!({ "schema": schema }))
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    let calls: Vec<(String, Value)> = match context.get("toolCalls").and_then(Value::as_array) {
        Some(calls) => calls
            .iter()
            .filter_map(|c| {
                Some((
                    c.get("name")?.as_str()?.to_owned(),
                    c.get("arguments").cloned().unwrap_or_else(|| json!({})),
                ))
            })
            .collect(),
        None => tools
            .iter()
            .map(|t| (t.name.to_string(), synthesize(&t.input_schema)))
            .collect(),
    };
    for (name, arguments) in calls {
        let result = client
            .call_tool(&name, arguments)
            .await
            .map_err(|e| e.to_string())?;
        eprintln!("called {name}: is_error={:?}", result.is_error);
    }
    if scenario == "http-standard-headers" {
        let resources = client.list_resources().await.map_err(|e| e.to_string())?;
        if let Some(r) = resources.first() {
            client
                .read_resource(&r.uri)
                .await
                .map_err(|e| e.to_string())?;
        }
        let prompts = client.list_prompts().await.map_err(|e| e.to_string())?;
        if let Some(p) = prompts.first() {
            let mut args = Map::new();
            for a in p
                .arguments
                .iter()
                .flatten()
                .filter(|a| a.required == Some(true))
            {
                args.insert(a.name.clone(), json!("test"));
            }
            client
                .get_prompt(&p.name, Value::Object(args))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(url) = std::env::args().skip(1).last() else {
        eprintln!("usage: mcp-conformance-client <server url>");
        return ExitCode::from(2);
    };
    // The harness waits 30 s per client; give up before it does.
    match tokio::time::timeout(Duration::from_secs(25), run(&url)).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("error: gave up after 25 s");
            ExitCode::FAILURE
        }
    }
}
