//! MCP client for `agent-core`.
//!
//! This crate will connect to MCP servers over stdio and streamable HTTP (on `rmcp`) and adapt
//! their tools into `agent_core::tool::Tool`s. It is a documented skeleton until its issue lands.

pub use agent_core::tool::Tool;
