//! MCP servers' tools, resources and prompts for `agent-core` agents, on `rmcp`.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use agent_mcp::McpServer;
//! let flights = McpServer::stdio("flights", "travel-mcp-server", ["--stdio"])
//!     .prefix("flights")
//!     .connect()
//!     .await?;
//! // A fixed snapshot: Vec<Arc<dyn Tool>> for Agent::builder().tools(..)
//! let tools = flights.tools().await?;
//! // Or a list that follows the server's `tools/list_changed`: Agent::builder().tool_source(..)
//! let source = flights.tool_source().await?;
//! # let _ = (tools, source); Ok(()) }
//! ```
//!
//! - **Transports**: stdio (a child process whose stderr goes to `tracing`) and streamable
//!   HTTP (custom headers, a bearer token, or OAuth 2.1 through rmcp's auth support, see
//!   [`OAuth`]). Protocol negotiation: 2026-07-28 through `server/discover`, falling back to
//!   `initialize` with 2025-11-25 (or a pinned version, [`McpServer::protocol_version`]).
//! - **Tools**: input schema and description kept; names made valid for model providers
//!   (`^[a-zA-Z0-9_-]{1,64}$`, the MCP name kept for the call); optional prefix; allow/deny
//!   filters; results mapped (text, images, embedded resources, resource links,
//!   `structuredContent` checked against the tool's `outputSchema`, `isError` -> an error
//!   result); W3C `traceparent` in `_meta`; MCP attributes on the agent's `execute_tool` span.
//! - **Bounded and cancellable**: every request has a bound (tool calls 60 s by default,
//!   per server and per tool); a timeout or a cancelled invocation sends
//!   `notifications/cancelled`; the server's progress notifications become
//!   [`AgentEvent::ToolProgress`](agent_core::AgentEvent::ToolProgress) events;
//!   `notifications/tools/list_changed` refreshes an agent's tools through
//!   [`McpClient::tool_source`].
//! - **Resilient**: when a stdio server exits or an HTTP connection closes, the next request
//!   reconnects (respawns) with exponential backoff within a bound (30 s by default); a call
//!   in flight fails at once with an error that says so. An expired HTTP session is
//!   re-initialised by rmcp. A server that cannot start fails within the startup bound.
//! - **Resources and prompts**: list, read, get ([`McpClient`]). Server requests: sampling
//!   ([`SamplingHandler`], e.g. [`ModelSampling`] to route it to the agent's model),
//!   elicitation ([`ElicitationHandler`], e.g. [`AcceptDefaults`]) and roots; a capability is
//!   declared only when configured.
//!
//! **Features** (all on by default; turn off what you do not use to compile less): `stdio`
//! ([`McpServer::stdio`], rmcp's child-process transport), `http` ([`McpServer::http`],
//! streamable HTTP on reqwest) and `auth` (OAuth 2.1 on rmcp's auth support: [`OAuth`],
//! [`Authorizer`], [`McpServer::oauth`]; implies `http`).

// Sampling, roots and logging are deprecated from protocol 2026-07-28 on (SEP-2577) but are how
// 2025-11-25 servers work; they stay supported and optional.
#![allow(deprecated)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(any(feature = "stdio", feature = "http")))]
compile_error!(
    "agent-mcp needs a transport: enable its `stdio` feature, its `http` feature, or both"
);

#[cfg(feature = "auth")]
mod auth;
mod client;
mod handler;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(feature = "auth")]
#[cfg_attr(docsrs, doc(cfg(feature = "auth")))]
pub use auth::{Authorizer, OAuth};
pub use client::{McpClient, McpToolSource};
pub use handler::{
    AcceptDefaults, ElicitationHandler, HandlerError, ModelSampling, SamplingHandler,
};
/// The rmcp crate, for its model types (results, prompts, resources, sampling requests).
pub use rmcp;

use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion, Root};
#[cfg(feature = "http")]
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

/// Why connecting to or asking an MCP server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The server could not be started or did not complete the handshake in time.
    #[error("MCP server `{server}` did not start: {reason}")]
    Startup {
        /// The server's name.
        server: String,
        /// What happened.
        reason: String,
    },
    /// A request got no answer within its bound (`notifications/cancelled` was sent).
    #[error("MCP server `{server}`: {what} did not answer within {millis} ms")]
    Timeout {
        /// The server's name.
        server: String,
        /// The request.
        what: String,
        /// The bound.
        millis: u64,
    },
    /// The connection was lost or could not be made; the next request reconnects. Whether a
    /// tool call in flight ran is unknown unless the reason says it was not sent.
    #[error("MCP server `{server}`: {reason}")]
    Connection {
        /// The server's name.
        server: String,
        /// What happened.
        reason: String,
    },
    /// The server answered with a JSON-RPC error.
    #[error("MCP server `{server}`: {message} (error {code})")]
    Server {
        /// The server's name.
        server: String,
        /// The JSON-RPC error code.
        code: i32,
        /// The request and the server's message.
        message: String,
    },
    /// A request to the server failed otherwise.
    #[error("MCP server `{server}`: {reason}")]
    Request {
        /// The server's name.
        server: String,
        /// What happened.
        reason: String,
    },
    /// A configuration value was refused.
    #[error("invalid MCP configuration: {0}")]
    Config(String),
}

#[derive(Debug, Clone)]
#[cfg_attr(not(all(feature = "stdio", feature = "http")), allow(dead_code))]
enum Transport {
    Stdio {
        command: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
    },
    Http {
        url: String,
        bearer: Option<String>,
        headers: Vec<(String, String)>,
    },
}

/// How to reach one MCP server and adapt what it offers.
#[derive(Clone)]
pub struct McpServer {
    name: String,
    transport: Transport,
    startup_timeout: Duration,
    reconnect_timeout: Duration,
    call_timeout: Duration,
    tool_timeouts: HashMap<String, Duration>,
    prefix: Option<String>,
    allow: Option<HashSet<String>>,
    deny: HashSet<String>,
    protocol: Option<ProtocolVersion>,
    #[cfg(feature = "auth")]
    oauth: Option<OAuth>,
    sampling: Option<Arc<dyn SamplingHandler>>,
    elicitation: Option<Arc<dyn ElicitationHandler>>,
    roots: Vec<Root>,
    /// Settings that do not fit the transport, refused by `connect`.
    misfits: Vec<&'static str>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("name", &self.name)
            .field("transport", &self.transport)
            .field("call_timeout", &self.call_timeout)
            .field("prefix", &self.prefix)
            .field("sampling", &self.sampling.is_some())
            .field("elicitation", &self.elicitation.is_some())
            .finish_non_exhaustive()
    }
}

impl McpServer {
    fn new(name: impl Into<String>, transport: Transport) -> Self {
        Self {
            name: name.into(),
            transport,
            startup_timeout: Duration::from_secs(30),
            reconnect_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(60),
            tool_timeouts: HashMap::new(),
            prefix: None,
            allow: None,
            deny: HashSet::new(),
            protocol: None,
            #[cfg(feature = "auth")]
            oauth: None,
            sampling: None,
            elicitation: None,
            roots: Vec::new(),
            misfits: Vec::new(),
        }
    }

    /// A server run as a child process speaking MCP on stdin/stdout.
    #[cfg(feature = "stdio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "stdio")))]
    pub fn stdio(
        name: impl Into<String>,
        command: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self::new(
            name,
            Transport::Stdio {
                command: command.into(),
                args: args.into_iter().map(Into::into).collect(),
                env: Vec::new(),
            },
        )
    }

    /// A server reached over streamable HTTP, e.g. `http://127.0.0.1:3001/mcp`.
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn http(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self::new(
            name,
            Transport::Http {
                url: url.into(),
                bearer: None,
                headers: Vec::new(),
            },
        )
    }

    /// An environment variable for a stdio server.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        match &mut self.transport {
            Transport::Stdio { env, .. } => env.push((key.into(), value.into())),
            Transport::Http { .. } => self.misfits.push("`env` is for stdio servers"),
        }
        self
    }

    /// A static bearer token for an HTTP server.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        match &mut self.transport {
            Transport::Http { bearer, .. } => *bearer = Some(token.into()),
            Transport::Stdio { .. } => self.misfits.push("`bearer_token` is for HTTP servers"),
        }
        self
    }

    /// A header sent with every HTTP request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        match &mut self.transport {
            Transport::Http { headers, .. } => headers.push((name.into(), value.into())),
            Transport::Stdio { .. } => self.misfits.push("`header` is for HTTP servers"),
        }
        self
    }

    /// OAuth 2.1 for an HTTP server: run when the server answers 401 (or 403 for more scope).
    #[cfg(feature = "auth")]
    #[cfg_attr(docsrs, doc(cfg(feature = "auth")))]
    pub fn oauth(mut self, oauth: OAuth) -> Self {
        if matches!(self.transport, Transport::Stdio { .. }) {
            self.misfits.push("`oauth` is for HTTP servers");
        }
        self.oauth = Some(oauth);
        self
    }

    /// Pins the protocol version (`2025-11-25` uses `initialize`; `2026-07-28` uses
    /// `server/discover`). Default: 2026-07-28 with fallback to 2025-11-25.
    pub fn protocol_version(mut self, version: &str) -> Result<Self, McpError> {
        let known = ProtocolVersion::KNOWN_VERSIONS
            .iter()
            .find(|v| v.to_string() == version)
            .cloned()
            .ok_or_else(|| McpError::Config(format!("unknown MCP protocol version `{version}`")))?;
        self.protocol = Some(known);
        Ok(self)
    }

    /// Bound on starting and completing the handshake (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Bound on reconnecting after the server exited or the connection closed, all attempts
    /// included (default 30 s).
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// Default bound on one request or tool call (default 60 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Bound on calls of one tool (by its MCP name).
    pub fn tool_timeout(mut self, tool: impl Into<String>, timeout: Duration) -> Self {
        self.tool_timeouts.insert(tool.into(), timeout);
        self
    }

    /// Prefixes the agent-side tool names with `<prefix>_` (1 to 32 ASCII letters, digits,
    /// `_` or `-`; checked by `connect`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Only these tools (MCP names).
    pub fn allow(mut self, tools: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.allow = Some(tools.into_iter().map(Into::into).collect());
        self
    }

    /// Never these tools (MCP names).
    pub fn deny(mut self, tools: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.deny.extend(tools.into_iter().map(Into::into));
        self
    }

    /// Answers the server's sampling requests (declares the capability).
    pub fn sampling(mut self, handler: Arc<dyn SamplingHandler>) -> Self {
        self.sampling = Some(handler);
        self
    }

    /// Answers the server's elicitation requests (declares the capability, form and URL mode).
    pub fn elicitation(mut self, handler: Arc<dyn ElicitationHandler>) -> Self {
        self.elicitation = Some(handler);
        self
    }

    /// A root (`file://` URI and name) the server may ask for (declares the capability).
    pub fn root(mut self, uri: impl Into<String>, name: impl Into<String>) -> Self {
        self.roots
            .push(Root::new(uri.into()).with_name(name.into()));
        self
    }

    fn network_transport(&self) -> &'static str {
        match self.transport {
            Transport::Stdio { .. } => "pipe",
            Transport::Http { .. } => "tcp",
        }
    }

    #[cfg(feature = "http")]
    fn http_config(&self) -> Result<StreamableHttpClientTransportConfig, McpError> {
        let Transport::Http {
            url,
            bearer,
            headers,
        } = &self.transport
        else {
            return Err(McpError::Config("not an HTTP server".into()));
        };
        let mut config = StreamableHttpClientTransportConfig::with_uri(url.clone());
        if let Some(token) = bearer {
            config = config.auth_header(token.clone());
        }
        let mut custom = HashMap::new();
        for (k, v) in headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| McpError::Config(format!("invalid header name `{k}`")))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| McpError::Config(format!("invalid value for header `{k}`")))?;
            custom.insert(name, value);
        }
        Ok(config.custom_headers(custom))
    }

    fn capabilities(&self) -> Result<ClientCapabilities, McpError> {
        let mut caps = serde_json::Map::new();
        if self.sampling.is_some() {
            caps.insert("sampling".into(), serde_json::json!({}));
        }
        if self.elicitation.is_some() {
            caps.insert(
                "elicitation".into(),
                serde_json::json!({"form": {}, "url": {}}),
            );
        }
        if !self.roots.is_empty() {
            caps.insert("roots".into(), serde_json::json!({"listChanged": false}));
        }
        serde_json::from_value(serde_json::Value::Object(caps))
            .map_err(|e| McpError::Config(format!("client capabilities: {e}")))
    }

    /// Starts (stdio) or reaches (HTTP) the server and completes the handshake, within the
    /// startup timeout (one attempt; later reconnects retry with backoff).
    pub async fn connect(self) -> Result<McpClient, McpError> {
        if let Some(misfit) = self.misfits.first() {
            return Err(McpError::Config(format!(
                "server `{}`: {misfit}",
                self.name
            )));
        }
        if let Some(prefix) = &self.prefix
            && (prefix.is_empty()
                || prefix.len() > 32
                || !prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            return Err(McpError::Config(format!(
                "prefix `{prefix}`: use 1 to 32 ASCII letters, digits, `_` or `-`"
            )));
        }
        #[cfg(feature = "http")]
        if let Transport::Http { url, .. } = &self.transport {
            reqwest::Url::parse(url)
                .map_err(|e| McpError::Config(format!("invalid MCP server URL `{url}`: {e}")))?;
        }
        let protocol = match &self.protocol {
            Some(v) if v.has_initialize() => v.clone(),
            _ => ProtocolVersion::LATEST_WITH_INITIALIZE,
        };
        let info = ClientConfig::new(
            self.capabilities()?,
            Implementation::new("agent-mcp", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(protocol);
        let (tools_changed, _) = tokio::sync::watch::channel(0u64);
        let handler = handler::Handler {
            server: self.name.as_str().into(),
            info,
            sampling: self.sampling.clone(),
            elicitation: self.elicitation.clone(),
            roots: Arc::new(self.roots.clone()),
            progress: Arc::new(Mutex::new(HashMap::new())),
            tools_changed: Arc::new(tools_changed),
        };
        let shared = Arc::new(client::Shared::new(self, handler));
        shared.connect_first().await?;
        Ok(McpClient { shared })
    }
}
