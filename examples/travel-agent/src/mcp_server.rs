//! `travel-agent mcp`: the travel tools as an MCP server (rmcp), over stdio or streamable HTTP.
//!
//! Tools: `get_weather`, `search_flights`, `search_hotels` (the built-in dataset) and
//! `book_trip`, which asks the user to confirm before it books: by an elicitation request on
//! protocol versions before 2026-07-28, and by an `input_required` result (SEP-2322) from
//! 2026-07-28 on, where servers may no longer send requests of their own.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use agent_core::tool::{Tool as _, ToolContext};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ElicitRequestParams,
    ElicitationAction, Implementation, ListToolsResult, PaginatedRequestParams, ProtocolVersion,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, ServiceExt as _};
use serde_json::{Value, json};

use crate::tools::{find_flight, get_weather, search_flights, search_hotels};

/// How the server is reached.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Args {
    /// Serve streamable HTTP at `http://<addr>/mcp` instead of stdio.
    #[arg(long, env = "TRAVEL_MCP_LISTEN")]
    http: Option<SocketAddr>,
    /// `Host` headers the HTTP server answers (DNS-rebinding protection), e.g. `travel-mcp` or
    /// `travel-mcp:3001` for a Kubernetes Service; loopback names only when none is given.
    #[arg(
        long = "allowed-host",
        env = "TRAVEL_MCP_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
}

#[derive(Clone, Default)]
struct TravelServer {
    bookings: Arc<AtomicU32>,
}

fn schema(value: Value) -> Arc<serde_json::Map<String, Value>> {
    Arc::new(value.as_object().cloned().unwrap_or_default())
}

fn data_tools() -> [Arc<dyn agent_core::tool::Tool>; 3] {
    [
        Arc::new(get_weather),
        Arc::new(search_flights),
        Arc::new(search_hotels),
    ]
}

fn text(s: impl Into<String>) -> CallToolResponse {
    CallToolResponse::Complete(CallToolResult::success(vec![ContentBlock::text(s.into())]))
}

fn error_text(s: impl Into<String>) -> CallToolResponse {
    CallToolResponse::Complete(CallToolResult::error(vec![ContentBlock::text(s.into())]))
}

const BOOK_TRIP: &str = "book_trip";
/// How long a booking waits for the traveller's answer.
const CONFIRMATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The request state of a booking's confirmation round: the booking itself, normalised.
fn booking_state(flight: &str, from: &str, to: &str, date: &str) -> String {
    let norm = |s: &str| s.trim().to_lowercase();
    format!(
        "confirm:{}:{}:{}:{}",
        norm(flight),
        norm(from),
        norm(to),
        norm(date)
    )
}

impl ServerHandler for TravelServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("travel-mcp", env!("CARGO_PKG_VERSION")))
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let mut tools: Vec<Tool> = data_tools()
            .iter()
            .map(|t| {
                let spec = t.spec();
                Tool::new(spec.name, spec.description, schema(spec.input_schema))
            })
            .collect();
        tools.push(Tool::new(
            BOOK_TRIP,
            "Books a flight found with search_flights, after the traveller confirms it. Returns \
             the booking reference, or says that the traveller declined.",
            schema(json!({
                "type": "object",
                "properties": {
                    "from_city": {"type": "string", "description": "Where the flight departs, e.g. \"London\"."},
                    "to_city": {"type": "string", "description": "Where the flight arrives, e.g. \"Lisbon\"."},
                    "date": {"type": "string", "description": "The travel date as YYYY-MM-DD."},
                    "flight_number": {"type": "string", "description": "The flight, e.g. \"TA999\"."}
                },
                "required": ["from_city", "to_city", "date", "flight_number"]
            })),
        ));
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arguments = Value::Object(request.arguments.clone().unwrap_or_default());
        if request.name == BOOK_TRIP {
            return self.book_trip(&request, &arguments, &context).await;
        }
        let Some(tool) = data_tools()
            .into_iter()
            .find(|t| t.spec().name == request.name)
        else {
            return Err(ErrorData::invalid_params(
                format!("unknown tool {}", request.name),
                None,
            ));
        };
        let id = format!("mcp-{}", context.id);
        match tool.call(arguments, ToolContext::new(id, "mcp")).await {
            Ok(output) => {
                let texts: Vec<ContentBlock> = output
                    .content
                    .iter()
                    .map(|c| match c {
                        agent_core::message::ToolResultContent::Text(t) => {
                            ContentBlock::text(t.clone())
                        }
                        other => {
                            ContentBlock::text(serde_json::to_string(other).unwrap_or_default())
                        }
                    })
                    .collect();
                let result = if output.status == agent_core::message::ToolResultStatus::Error {
                    CallToolResult::error(texts)
                } else {
                    CallToolResult::success(texts)
                };
                Ok(CallToolResponse::Complete(result))
            }
            Err(e) => Ok(error_text(e.to_string())),
        }
    }
}

impl TravelServer {
    /// Checks the flight, asks the traveller to confirm, then books.
    async fn book_trip(
        &self,
        request: &CallToolRequestParams,
        arguments: &Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let field = |k: &str| arguments.get(k).and_then(Value::as_str).unwrap_or("");
        let flight = match find_flight(
            field("from_city"),
            field("to_city"),
            field("date"),
            field("flight_number"),
        ) {
            Ok(f) => f,
            Err(e) => return Ok(error_text(format!("Cannot book: {e}."))),
        };
        let question = format!(
            "Book flight {} from {} to {} on {}, departing {}, for {} EUR?",
            flight.number,
            field("from_city").trim(),
            field("to_city").trim(),
            field("date").trim(),
            flight.departs,
            flight.price_eur
        );
        let confirm_schema = json!({
            "type": "object",
            "properties": {"confirm": {"type": "boolean", "title": "Book it?"}},
            "required": ["confirm"]
        });
        let legacy = context
            .peer
            .peer_info()
            .is_some_and(|info| info.protocol_version < ProtocolVersion::V_2026_07_28);
        let confirmed = if legacy {
            let params: ElicitRequestParams = serde_json::from_value(json!({
                "mode": "form", "message": question, "requestedSchema": confirm_schema
            }))
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
            let asked = context
                .peer
                .create_elicitation_with_timeout(params, Some(CONFIRMATION_TIMEOUT));
            let answer = tokio::select! {
                r = asked => r,
                () = context.ct.cancelled() => {
                    return Err(ErrorData::internal_error("the call was cancelled", None));
                }
            };
            match answer {
                Ok(r) => {
                    r.action == ElicitationAction::Accept
                        && r.content
                            .as_ref()
                            .and_then(|c| c.get("confirm"))
                            .and_then(Value::as_bool)
                            == Some(true)
                }
                Err(e) => {
                    return Ok(error_text(format!(
                        "Cannot ask the traveller to confirm ({e}); nothing was booked."
                    )));
                }
            }
        } else {
            // 2026-07-28: ask through the result, and read the answer on the retried call. The
            // request state names the booking that was shown: an answer that comes back with
            // other arguments is not a confirmation of them, and is asked again.
            let state = booking_state(
                &flight.number,
                field("from_city"),
                field("to_city"),
                field("date"),
            );
            let answer = request
                .input_responses
                .as_ref()
                .and_then(|r| r.get("confirm"))
                .filter(|_| request.request_state.as_deref() == Some(state.as_str()));
            match answer {
                None => {
                    let ask = serde_json::from_value(json!({
                        "resultType": "input_required",
                        "inputRequests": {"confirm": {
                            "method": "elicitation/create",
                            "params": {"mode": "form", "message": question, "requestedSchema": confirm_schema}
                        }},
                        "requestState": state
                    }))
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
                    return Ok(CallToolResponse::InputRequired(ask));
                }
                Some(answer) => {
                    answer.get("action").and_then(Value::as_str) == Some("accept")
                        && answer.pointer("/content/confirm").and_then(Value::as_bool) == Some(true)
                }
            }
        };
        if !confirmed {
            return Ok(text(format!(
                "The traveller declined: flight {} was not booked.",
                flight.number
            )));
        }
        let n = self.bookings.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(text(format!(
            "Booked flight {} on {} for {} EUR. Booking reference TRV-{:04}.",
            flight.number,
            field("date").trim(),
            flight.price_eur,
            n
        )))
    }
}

/// Serves until stdin closes (stdio) or until SIGTERM / Ctrl-C (HTTP).
pub(crate) async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let server = TravelServer::default();
    let Some(addr) = args.http else {
        server
            .serve(rmcp::transport::stdio())
            .await?
            .waiting()
            .await?;
        return Ok(());
    };
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let stop = agent_core::CancellationToken::new();
    let mut config =
        StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token());
    if !args.allowed_hosts.is_empty() {
        config = config.with_allowed_hosts(args.allowed_hosts.iter().cloned());
    }
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "[travel-mcp] listening on http://{}/mcp",
        listener.local_addr()?
    );
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    crate::serve::terminated().await;
    // Open SSE streams end with the sessions' token; what is still open after 5 s is closed.
    stop.cancel();
    match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(e)) => eprintln!("[travel-mcp] server task: {e}"),
        Err(_) => eprintln!("[travel-mcp] connections still open after 5 s; closing"),
    }
    Ok(())
}
