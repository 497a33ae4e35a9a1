//! An MCP server's tools as agent tools. The server runs as a child process (stdio); its
//! tools are listed, prefixed, and followed when the server says the list changed. Progress
//! reports become events; a timeout or a cancelled run cancels the call on the server.
//!
//! ```sh
//! # The reference "everything" server from npm:
//! npm install @modelcontextprotocol/server-everything
//! OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_MODEL=qwen3-8b \
//!   cargo run -p learn --bin mcp-tools -- "Add 2 and 40 with the tool." \
//!   node node_modules/@modelcontextprotocol/server-everything/dist/index.js stdio
//! ```

use std::time::Duration;

use agent_core::prelude::*;
use agent_core::tool::ToolSource;
use agent_mcp::McpServer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(prompt), Some(command)) = (args.next(), args.next()) else {
        eprintln!("usage: mcp-tools <prompt> <server command> [server args...]");
        std::process::exit(2);
    };
    let server = McpServer::stdio("server", command, args)
        .prefix("mcp") // tools are offered as mcp_<name>
        .call_timeout(Duration::from_secs(30))
        .connect()
        .await?;
    let source = server.tool_source().await?;
    for tool in source.tools() {
        eprintln!("[mcp] offers {}", tool.spec().name);
    }
    let agent = Agent::builder()
        .model(OpenAiCompatible::from_env()?)
        .system_prompt("Use the tools to answer. Answer in one sentence.")
        .tool_source(source)
        .build()?;
    let result = agent.session("mcp-tools").invoke(prompt).await?;
    println!("{}", result.text());
    server.close().await;
    Ok(())
}
