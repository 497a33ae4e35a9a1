//! MCP servers' tools as `agent-core` tools, on `rmcp`.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use agent_mcp::McpServer;
//! let flights = McpServer::stdio("flights", "travel-mcp-server", ["--stdio"])
//!     .prefix("flights")
//!     .connect()
//!     .await?;
//! let tools = flights.tools().await?; // Vec<Arc<dyn Tool>>: hand them to Agent::builder().tools(..)
//! # let _ = tools; Ok(()) }
//! ```
//!
//! What it does today: stdio (a child process whose stderr goes to `tracing`) and streamable
//! HTTP (bearer token, custom headers) transports; protocol negotiation (2026-07-28 through
//! `server/discover`, falling back to `initialize` with 2025-11-25); a bounded start (default 30 s); tools adapted with their
//! input schema and description, names made valid for model providers (`^[a-zA-Z0-9_-]{1,64}$`)
//! with the original kept for the call, an optional prefix, allow/deny filters; results mapped
//! (text, images, embedded resources, resource links, `structuredContent` checked against the
//! tool's `outputSchema`, `isError` -> an error result); a per-call timeout (default 60 s, per
//! tool overrides) and cancellation that send `notifications/cancelled`; W3C trace context in
//! `_meta.traceparent`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use agent_core::message::{
    Bytes, Image, ImageFormat, MediaSource, ToolResultContent, ToolResultStatus,
};
use agent_core::tool::{
    BoxFuture, Tool, ToolContext, ToolError, ToolOutput, ToolSpec, is_valid_tool_name,
};
use base64::Engine as _;
use opentelemetry::trace::TraceContextExt as _;
use rmcp::{ClientLifecycleMode, ClientServiceExt};

/// Protocol negotiation: `server/discover` for 2026-07-28, falling back to `initialize` with
/// 2025-11-25 for servers that predate it.
fn lifecycle() -> ClientLifecycleMode {
    ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::LATEST],
        legacy_version: Some(ProtocolVersion::LATEST_WITH_INITIALIZE),
    }
}
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ContentBlock, Implementation,
    MetaObject, ProtocolVersion, RequestMetaObject, ResourceContents,
};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

/// Why connecting to or listing an MCP server failed.
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
    /// A request to the server failed.
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

/// How to reach one MCP server and adapt its tools.
#[derive(Debug, Clone)]
pub struct McpServer {
    name: String,
    transport: Transport,
    startup_timeout: Duration,
    call_timeout: Duration,
    tool_timeouts: HashMap<String, Duration>,
    prefix: Option<String>,
    allow: Option<HashSet<String>>,
    deny: HashSet<String>,
}

impl McpServer {
    fn new(name: impl Into<String>, transport: Transport) -> Self {
        Self {
            name: name.into(),
            transport,
            startup_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(60),
            tool_timeouts: HashMap::new(),
            prefix: None,
            allow: None,
            deny: HashSet::new(),
        }
    }

    /// A server run as a child process speaking MCP on stdin/stdout.
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
        if let Transport::Stdio { env, .. } = &mut self.transport {
            env.push((key.into(), value.into()));
        }
        self
    }

    /// A bearer token for an HTTP server.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        if let Transport::Http { bearer, .. } = &mut self.transport {
            *bearer = Some(token.into());
        }
        self
    }

    /// A header sent with every HTTP request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Transport::Http { headers, .. } = &mut self.transport {
            headers.push((name.into(), value.into()));
        }
        self
    }

    /// Bound on starting and initializing (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Default bound on one tool call (default 60 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Bound on calls of one tool (by its MCP name).
    pub fn tool_timeout(mut self, tool: impl Into<String>, timeout: Duration) -> Self {
        self.tool_timeouts.insert(tool.into(), timeout);
        self
    }

    /// Prefixes the agent-side tool names with `<prefix>_`.
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

    /// Starts (stdio) or reaches (HTTP) the server and completes the handshake, within the
    /// startup timeout.
    pub async fn connect(self) -> Result<McpClient, McpError> {
        let startup = |reason: String| McpError::Startup {
            server: self.name.clone(),
            reason,
        };
        let handler = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("agent-mcp", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE);
        let connecting = async {
            match &self.transport {
                Transport::Stdio { command, args, env } => {
                    let cmd = tokio::process::Command::new(command).configure(|c| {
                        c.args(args);
                        for (k, v) in env {
                            c.env(k, v);
                        }
                    });
                    let (transport, stderr) = TokioChildProcess::builder(cmd)
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .map_err(|e| startup(format!("cannot run `{command}`: {e}")))?;
                    if let Some(stderr) = stderr {
                        let server = self.name.clone();
                        tokio::spawn(async move {
                            let mut lines = tokio::io::BufReader::new(stderr).lines();
                            while let Ok(Some(line)) = lines.next_line().await {
                                tracing::info!(target: "agent_mcp::server", server = %server, "{line}");
                            }
                        });
                    }
                    handler
                        .clone()
                        .serve_with_lifecycle(transport, lifecycle())
                        .await
                        .map_err(|e| startup(e.to_string()))
                }
                Transport::Http {
                    url,
                    bearer,
                    headers,
                } => {
                    let mut config = rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(url.clone());
                    if let Some(token) = bearer {
                        config = config.auth_header(token.clone());
                    }
                    let mut custom = HashMap::new();
                    for (k, v) in headers {
                        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                            .map_err(|_| McpError::Config(format!("invalid header name `{k}`")))?;
                        let value = reqwest::header::HeaderValue::from_str(v).map_err(|_| {
                            McpError::Config(format!("invalid value for header `{k}`"))
                        })?;
                        custom.insert(name, value);
                    }
                    config = config.custom_headers(custom);
                    let transport = StreamableHttpClientTransport::from_config(config);
                    handler
                        .clone()
                        .serve_with_lifecycle(transport, lifecycle())
                        .await
                        .map_err(|e| startup(e.to_string()))
                }
            }
        };
        let service = tokio::time::timeout(self.startup_timeout, connecting)
            .await
            .map_err(|_| {
                startup(format!(
                    "no answer to `initialize` within {} ms",
                    self.startup_timeout.as_millis()
                ))
            })??;
        Ok(McpClient {
            inner: Arc::new(Connection {
                service,
                config: self,
            }),
        })
    }
}

struct Connection {
    service: RunningService<RoleClient, ClientConfig>,
    config: McpServer,
}

/// A connected MCP server.
#[derive(Clone)]
pub struct McpClient {
    inner: Arc<Connection>,
}

impl std::fmt::Debug for McpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClient")
            .field("server", &self.inner.config.name)
            .finish_non_exhaustive()
    }
}

/// A name valid for model providers made from an MCP tool name.
fn provider_name(prefix: Option<&str>, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let full = match prefix {
        Some(p) => format!("{p}_{clean}"),
        None => clean,
    };
    if full.len() <= 64 {
        return full;
    }
    // Keep it unique when cut: a short hash of the whole name at the end.
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{}_{:08x}", &full[..55], hash as u32)
}

impl McpClient {
    /// The server's tools as agent tools (allow/deny filters and the prefix applied).
    pub async fn tools(&self) -> Result<Vec<Arc<dyn Tool>>, McpError> {
        let config = &self.inner.config;
        let listed = tokio::time::timeout(config.call_timeout, self.inner.service.list_all_tools())
            .await
            .map_err(|_| McpError::Request {
                server: config.name.clone(),
                reason: "tools/list timed out".into(),
            })?
            .map_err(|e| McpError::Request {
                server: config.name.clone(),
                reason: e.to_string(),
            })?;
        let mut used = HashSet::new();
        let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
        for tool in listed {
            let remote = tool.name.to_string();
            if config.deny.contains(&remote)
                || config.allow.as_ref().is_some_and(|a| !a.contains(&remote))
            {
                continue;
            }
            let mut name = provider_name(config.prefix.as_deref(), &remote);
            let mut n = 2;
            while used.contains(&name) {
                name = format!(
                    "{}_{n}",
                    &provider_name(config.prefix.as_deref(), &remote)[..name.len().min(60)]
                );
                n += 1;
            }
            if !is_valid_tool_name(&name) {
                continue;
            }
            used.insert(name.clone());
            let output_schema = tool
                .output_schema
                .as_ref()
                .map(|s| Value::Object((**s).clone()));
            let output_validator = output_schema
                .as_ref()
                .and_then(|s| jsonschema::validator_for(s).ok());
            tools.push(Arc::new(McpTool {
                connection: self.inner.clone(),
                timeout: config
                    .tool_timeouts
                    .get(&remote)
                    .copied()
                    .unwrap_or(config.call_timeout),
                spec: ToolSpec {
                    name,
                    description: tool.description.as_deref().unwrap_or(&remote).to_owned(),
                    input_schema: Value::Object((*tool.input_schema).clone()),
                },
                remote,
                output_validator,
            }));
        }
        Ok(tools)
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The protocol version the server agreed to.
    pub fn protocol_version(&self) -> Option<String> {
        self.inner
            .service
            .peer_info()
            .map(|i| i.protocol_version.to_string())
    }
}

struct McpTool {
    connection: Arc<Connection>,
    remote: String,
    spec: ToolSpec,
    timeout: Duration,
    output_validator: Option<jsonschema::Validator>,
}

/// `traceparent` of the current span, for `_meta` (W3C trace context).
fn traceparent() -> Option<String> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

impl Tool for McpTool {
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }

    fn timeout(&self) -> Option<Duration> {
        // The executor's bound; the call below also bounds itself so that the server hears
        // `notifications/cancelled` when it expires.
        Some(self.timeout + Duration::from_secs(1))
    }

    fn call(&self, input: Value, ctx: ToolContext) -> BoxFuture<'_, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let server = &self.connection.config.name;
            let arguments = match input {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            };
            // The agent's execute_tool span is current here: add the MCP attributes to it rather
            // than opening a second span (the conventions' advice).
            {
                let cx = opentelemetry::Context::current();
                let span = cx.span();
                if span.is_recording() {
                    span.set_attribute(opentelemetry::KeyValue::new(
                        "mcp.method.name",
                        "tools/call",
                    ));
                    span.set_attribute(opentelemetry::KeyValue::new(
                        "mcp.server.name",
                        server.clone(),
                    ));
                    let transport = match self.connection.config.transport {
                        Transport::Stdio { .. } => "pipe",
                        Transport::Http { .. } => "tcp",
                    };
                    span.set_attribute(opentelemetry::KeyValue::new(
                        "network.transport",
                        transport,
                    ));
                    if let Some(info) = self.connection.service.peer_info() {
                        span.set_attribute(opentelemetry::KeyValue::new(
                            "mcp.protocol.version",
                            info.protocol_version.to_string(),
                        ));
                    }
                }
            }
            let mut params =
                CallToolRequestParams::new(self.remote.clone()).with_arguments(arguments);
            if let Some(tp) = traceparent() {
                let mut meta = serde_json::Map::new();
                meta.insert("traceparent".into(), Value::String(tp));
                params.meta = Some(RequestMetaObject(MetaObject(meta)));
            }
            // Dropping the call future (timeout or cancellation) sends notifications/cancelled.
            let call =
                tokio::time::timeout(self.timeout, self.connection.service.call_tool(params));
            let result = tokio::select! {
                r = call => r,
                () = ctx.cancel.cancelled() => return Err(ToolError::new(format!("MCP tool `{}` on `{server}` was cancelled", self.remote))),
            };
            let result = match result {
                Err(_) => {
                    return Err(ToolError::new(format!(
                        "MCP tool `{}` on `{server}` did not answer within {} ms",
                        self.remote,
                        self.timeout.as_millis()
                    )));
                }
                Ok(Err(ServiceError::McpError(e))) => {
                    return Err(ToolError::new(format!(
                        "MCP server `{server}`: {}",
                        e.message
                    )));
                }
                Ok(Err(ServiceError::TransportClosed)) => {
                    return Err(ToolError::new(format!(
                        "MCP server `{server}` is not running (its connection closed)"
                    )));
                }
                Ok(Err(e)) => return Err(ToolError::new(format!("MCP server `{server}`: {e}"))),
                Ok(Ok(r)) => r,
            };
            let mut content = Vec::new();
            if let Some(structured) = result.structured_content {
                if let Some(validator) = &self.output_validator
                    && let Some(problem) = validator.iter_errors(&structured).next()
                {
                    return Err(ToolError::new(format!(
                        "MCP tool `{}` returned structured content that does not match its output schema: {problem}",
                        self.remote
                    )));
                }
                content.push(ToolResultContent::Json(structured));
            }
            for block in result.content {
                if let Some(c) = map_content(block) {
                    content.push(c);
                }
            }
            let status = if result.is_error == Some(true) {
                ToolResultStatus::Error
            } else {
                ToolResultStatus::Success
            };
            Ok(ToolOutput { status, content })
        })
    }
}

fn map_content(block: ContentBlock) -> Option<ToolResultContent> {
    match block {
        ContentBlock::Text(t) => Some(ToolResultContent::Text(t.text)),
        ContentBlock::Image(img) => {
            let format = match img.mime_type.as_str() {
                "image/png" => Some(ImageFormat::Png),
                "image/jpeg" => Some(ImageFormat::Jpeg),
                "image/gif" => Some(ImageFormat::Gif),
                "image/webp" => Some(ImageFormat::Webp),
                _ => None,
            };
            match (
                format,
                base64::engine::general_purpose::STANDARD.decode(img.data.as_bytes()),
            ) {
                (Some(format), Ok(bytes)) => Some(ToolResultContent::Image(Image {
                    format,
                    source: MediaSource {
                        bytes: Bytes(bytes),
                    },
                })),
                _ => Some(ToolResultContent::Text(format!(
                    "[image: {}]",
                    img.mime_type
                ))),
            }
        }
        ContentBlock::Resource(r) => match r.resource {
            ResourceContents::TextResourceContents { uri, text, .. } => {
                Some(ToolResultContent::Text(format!("[resource {uri}]\n{text}")))
            }
            ResourceContents::BlobResourceContents { uri, mime_type, .. } => {
                Some(ToolResultContent::Text(format!(
                    "[resource {uri}: binary {}]",
                    mime_type.unwrap_or_else(|| "data".into())
                )))
            }
            _ => None,
        },
        ContentBlock::ResourceLink(link) => Some(ToolResultContent::Text(format!(
            "[resource link {} ({})]",
            link.uri, link.name
        ))),
        ContentBlock::Audio(a) => {
            Some(ToolResultContent::Text(format!("[audio: {}]", a.mime_type)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_are_valid_and_unique_when_cut() {
        assert_eq!(provider_name(None, "get-sum"), "get-sum");
        assert_eq!(
            provider_name(Some("everything"), "files.read"),
            "everything_files_read"
        );
        let long_a = provider_name(None, &format!("{}a", "x".repeat(100)));
        let long_b = provider_name(None, &format!("{}b", "x".repeat(100)));
        assert!(long_a.len() <= 64 && is_valid_tool_name(&long_a));
        assert_ne!(long_a, long_b);
    }
}
