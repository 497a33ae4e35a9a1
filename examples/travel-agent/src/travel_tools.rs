//! The agent's travel tools, taken from the travel MCP server (`travel-agent mcp`) through
//! agent-mcp: over streamable HTTP when `TRAVEL_MCP_URL` names a running server (the service on
//! EKS), otherwise spawned over stdio from this same binary.

use std::sync::Arc;

use agent_core::async_trait;
use agent_mcp::{AcceptDefaults, ElicitationHandler, McpClient, McpServer};
use rmcp::model::{ElicitRequestParams, ElicitResult, ElicitationAction};

/// Connects to the travel MCP server. `ask` decides how `book_trip`'s confirmation is answered:
/// on the terminal when there is one (the CLI), declined otherwise.
///
/// A server over HTTP may not be up yet (pods start in any order): it is tried again, with
/// backoff, for up to [`CONNECT_WITHIN`].
pub(crate) async fn connect(
    ask_on_terminal: bool,
) -> Result<McpClient, Box<dyn std::error::Error>> {
    let url = std::env::var("TRAVEL_MCP_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    let Some(url) = url else {
        let me = std::env::current_exe()?;
        let server = McpServer::stdio("travel", me.display().to_string(), ["mcp"]);
        return Ok(server
            .elicitation(handler(ask_on_terminal))
            .connect()
            .await?);
    };
    let deadline = tokio::time::Instant::now() + CONNECT_WITHIN;
    let mut delay = std::time::Duration::from_millis(250);
    loop {
        let server = McpServer::http("travel", url.trim()).elicitation(handler(ask_on_terminal));
        match server.connect().await {
            Ok(client) => return Ok(client),
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(target: "travel_agent::lifecycle", url = url.trim(), error = %e, "the travel MCP server is not answering yet; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(4));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How long the service waits for the travel MCP server at start.
const CONNECT_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// How `book_trip`'s confirmation is answered.
fn handler(ask_on_terminal: bool) -> Arc<dyn ElicitationHandler> {
    if ask_on_terminal && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        Arc::new(TerminalConfirm)
    } else {
        // Headless: a confirmation without a default is declined, so nothing is booked
        // without a person saying so.
        Arc::new(AcceptDefaults)
    }
}

/// Asks yes/no questions (a booking's confirmation) on the terminal.
struct TerminalConfirm;

#[async_trait]
impl ElicitationHandler for TerminalConfirm {
    async fn elicit(
        &self,
        request: ElicitRequestParams,
    ) -> Result<ElicitResult, agent_mcp::HandlerError> {
        let ElicitRequestParams::FormElicitationParams { message, .. } = request else {
            return Ok(ElicitResult::new(ElicitationAction::Decline));
        };
        eprint!("[travel-agent] {message} [y/N] ");
        let line = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if line.trim().eq_ignore_ascii_case("y") || line.trim().eq_ignore_ascii_case("yes") {
            Ok(ElicitResult::new(ElicitationAction::Accept)
                .with_content(serde_json::json!({"confirm": true})))
        } else {
            Ok(ElicitResult::new(ElicitationAction::Decline))
        }
    }
}
