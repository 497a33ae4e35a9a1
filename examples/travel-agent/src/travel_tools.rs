//! The agent's travel tools, taken from the travel MCP server (`travel-agent mcp`) through
//! agent-mcp: over streamable HTTP when `TRAVEL_MCP_URL` names a running server (the service on
//! EKS), otherwise spawned over stdio from this same binary.

use std::sync::Arc;

use agent_core::tool::BoxFuture;
use agent_mcp::{AcceptDefaults, ElicitationHandler, McpClient, McpServer};
use rmcp::model::{ElicitRequestParams, ElicitResult, ElicitationAction};

/// Connects to the travel MCP server. `ask` decides how `book_trip`'s confirmation is answered:
/// on the terminal when there is one (the CLI), declined otherwise.
pub(crate) async fn connect(
    ask_on_terminal: bool,
) -> Result<McpClient, Box<dyn std::error::Error>> {
    let server = match std::env::var("TRAVEL_MCP_URL") {
        Ok(url) if !url.trim().is_empty() => McpServer::http("travel", url.trim()),
        _ => {
            let me = std::env::current_exe()?;
            McpServer::stdio("travel", me.display().to_string(), ["mcp"])
        }
    };
    let handler: Arc<dyn ElicitationHandler> =
        if ask_on_terminal && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            Arc::new(TerminalConfirm)
        } else {
            // Headless: a confirmation without a default is declined, so nothing is booked
            // without a person saying so.
            Arc::new(AcceptDefaults)
        };
    Ok(server.elicitation(handler).connect().await?)
}

/// Asks yes/no questions (a booking's confirmation) on the terminal.
struct TerminalConfirm;

impl ElicitationHandler for TerminalConfirm {
    fn elicit(&self, request: ElicitRequestParams) -> BoxFuture<'_, Result<ElicitResult, String>> {
        Box::pin(async move {
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
        })
    }
}
