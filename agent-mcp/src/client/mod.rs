//! The connection to one server, and [`McpClient`], the crate's handle on it.
//!
//! - `connection.rs`: the connection state machine (start, handshake, reconnect with backoff,
//!   health probes, close);
//! - `oauth.rs`: OAuth authorization and scope step-up when a request is refused;
//! - `requests.rs`: read-only requests with reconnect, OAuth and a bound;
//! - `calls.rs`: tool calls (progress, cancellation, input rounds);
//! - `source.rs`: [`McpToolSource`], tools that follow `tools/list_changed`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use agent_core::tool::{BoxFuture, ProgressReporter, Tool, ToolSource};
use futures::FutureExt as _;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotificationParam,
    ClientRequest, ElicitResult, ElicitationAction, GetPromptRequestParams, GetPromptResult,
    InputRequest, InputRequests, InputResponses, ListRootsResult, ProgressToken, Prompt,
    ProtocolVersion, ReadResourceRequestParams, ReadResourceResult, RequestId, Resource,
    ResourceTemplate, ServerNotification, ServerResult, SubscriptionFilter,
};
use rmcp::service::{Peer, PeerRequestOptions, RoleClient, RunningService, ServiceError};
#[cfg(feature = "http")]
use rmcp::transport::StreamableHttpClientTransport;
#[cfg(feature = "auth")]
use rmcp::transport::auth::{AuthClient, WWWAuthenticateParams};
#[cfg(feature = "stdio")]
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{ClientLifecycleMode, ClientServiceExt};
use serde_json::Value;
#[cfg(feature = "stdio")]
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;

#[cfg(feature = "auth")]
use crate::auth;
use crate::handler::{Handler, ProgressRoute};
use crate::{McpError, McpServer, Transport};

mod calls;
mod connection;
mod oauth;
mod requests;
mod source;
mod tool;

pub use source::McpToolSource;

/// How many times one request may trigger an OAuth authorization (or scope step-up) before it
/// gives up.
const MAX_AUTH_ROUNDS: u32 = 3;

/// Why one connection attempt failed.
enum Failure {
    Error(McpError),
    /// `server/discover` answered, without a version in common.
    NoCommonVersion(Vec<ProtocolVersion>),
}

impl From<McpError> for Failure {
    fn from(e: McpError) -> Self {
        Failure::Error(e)
    }
}

/// Bound on opening the 2026-07-28 tool-list subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Input rounds (SEP-2322) one call may take before it gives up.
const MAX_INPUT_ROUNDS: usize = 8;

pub(crate) struct Live {
    pub(crate) service: RunningService<RoleClient, Handler>,
    /// This connection's progress token -> where the progress of that call goes.
    progress: Arc<Mutex<HashMap<ProgressToken, ProgressReporter>>>,
    /// Set when a request found the connection unusable: the next request reconnects.
    dead: AtomicBool,
}

impl Live {
    fn healthy(&self) -> bool {
        !self.dead.load(Ordering::Acquire) && !self.service.is_transport_closed()
    }

    fn speaks_initialize(&self) -> bool {
        self.service
            .peer_info()
            .is_some_and(|i| i.protocol_version.has_initialize())
    }
}

type Connecting = futures::future::Shared<BoxFuture<'static, Result<Arc<Live>, String>>>;

enum State {
    Up(Arc<Live>),
    Down,
    /// A reconnect in progress, owned by its own task: callers wait for it under their own
    /// bounds, and none of them can abort it.
    Connecting(Connecting),
}

pub(crate) struct Shared {
    pub(crate) config: McpServer,
    pub(crate) handler: Handler,
    state: Mutex<State>,
    /// Connections made so far (1 after the first connect).
    connections: AtomicU64,
    info: Mutex<(Option<String>, Option<u32>)>,
    #[cfg(feature = "auth")]
    auth: Mutex<Option<AuthClient<reqwest::Client>>>,
    /// One authorization at a time; the generation counts completed ones, so a request that
    /// failed under an older token just retries with the new one.
    #[cfg(feature = "auth")]
    auth_flow: tokio::sync::Mutex<()>,
    auth_generation: AtomicU64,
}

fn lifecycle(pin: Option<&ProtocolVersion>) -> ClientLifecycleMode {
    match pin {
        None => ClientLifecycleMode::Auto {
            preferred_versions: vec![ProtocolVersion::LATEST],
            legacy_version: Some(ProtocolVersion::LATEST_WITH_INITIALIZE),
        },
        Some(v) if v.has_initialize() => ClientLifecycleMode::Initialize,
        Some(v) => ClientLifecycleMode::Discover {
            preferred_versions: vec![v.clone()],
        },
    }
}

/// Sends `notifications/cancelled` for a request dropped before its answer.
struct CancelGuard {
    peer: Peer<RoleClient>,
    id: Option<RequestId>,
    reason: &'static str,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let peer = self.peer.clone();
        let reason = self.reason;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let param = CancelledNotificationParam::new(Some(id), Some(reason.to_owned()));
                let _ = tokio::time::timeout(Duration::from_secs(5), peer.notify_cancelled(param))
                    .await;
            });
        }
    }
}

/// What a failed request means for the connection.
enum Lost {
    /// The connection closed: whatever was in flight may or may not have run.
    Closed,
    /// The server could not be reached: nothing was delivered.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    Unreachable,
}

/// When the HTTP layer refused a request for want of authorization (401, or 403 asking for
/// more scope): `Some` with the `WWW-Authenticate` challenge, if the server sent one.
fn auth_refusal(error: &ServiceError) -> Option<Option<&str>> {
    #[cfg(feature = "http")]
    if error.auth_challenge().is_some() || error.is_authorization_required() {
        return Some(error.auth_challenge());
    }
    #[cfg(not(feature = "http"))]
    let _ = error;
    None
}

fn lost(error: &ServiceError) -> Option<Lost> {
    match error {
        ServiceError::TransportClosed => Some(Lost::Closed),
        #[cfg(feature = "http")]
        ServiceError::TransportSend(e) => {
            use rmcp::transport::streamable_http_client::StreamableHttpError;
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.error.as_ref());
            while let Some(current) = source {
                let connect = match current.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
                    Some(StreamableHttpError::Client(e)) => e.is_connect(),
                    _ => current
                        .downcast_ref::<reqwest::Error>()
                        .is_some_and(reqwest::Error::is_connect),
                };
                if connect {
                    return Some(Lost::Unreachable);
                }
                source = current.source();
            }
            None
        }
        _ => None,
    }
}

/// Arguments of a tool call or prompt: an object, or null for none.
fn object_arguments(
    name: &str,
    arguments: Value,
) -> Result<Option<serde_json::Map<String, Value>>, McpError> {
    match arguments {
        Value::Object(args) => Ok(Some(args)),
        Value::Null => Ok(None),
        other => Err(McpError::Config(format!(
            "the arguments of `{name}` must be a JSON object, not {other}"
        ))),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A connected MCP server. Cheap to clone; requests reconnect after the server exits.
#[derive(Clone)]
pub struct McpClient {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for McpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClient")
            .field("server", &self.shared.config.name)
            .finish_non_exhaustive()
    }
}

impl McpClient {
    /// The server's tools as agent tools (allow/deny filters and the prefix applied), as listed
    /// now. For a list that follows the server's changes use [`tool_source`](Self::tool_source).
    pub async fn tools(&self) -> Result<Vec<Arc<dyn Tool>>, McpError> {
        let listed = self.list_tools().await?;
        let mut used = HashSet::new();
        Ok(listed
            .into_iter()
            .filter_map(|t| tool::adapt(&self.shared, t, &mut used))
            .collect())
    }

    /// The server's tools as a [`ToolSource`] for
    /// [`AgentBuilder::tool_source`](agent_core::agent::AgentBuilder::tool_source): once a
    /// `notifications/tools/list_changed` (on 2026-07-28, from the `subscriptions/listen`
    /// stream) or a reconnect has arrived, the list is re-listed before the agent's next model
    /// call. A re-list that fails keeps the last list and is tried again 5 s later.
    pub async fn tool_source(&self) -> Result<Arc<McpToolSource>, McpError> {
        let mut changes = self.shared.handler.tools_changed.subscribe();
        changes.mark_unchanged();
        let tools = self.tools().await?;
        Ok(Arc::new(McpToolSource::new(self.clone(), tools, changes)))
    }

    /// The server's tools as it lists them (all pages; no filters, MCP names).
    pub async fn list_tools(&self) -> Result<Vec<rmcp::model::Tool>, McpError> {
        self.shared
            .request("tools/list", |live| async move {
                live.service.list_all_tools().await
            })
            .await
    }

    /// Calls a tool by its MCP name and returns the server's result as is, bounded by the call
    /// timeout (then `notifications/cancelled` is sent), input rounds answered by the
    /// configured handlers. `arguments` must be an object (or null for none). The allow/deny
    /// filters apply to the agent tools only.
    pub async fn call_tool(
        &self,
        name: &str,
        arguments: Value,
    ) -> Result<CallToolResult, McpError> {
        let mut params = CallToolRequestParams::new(name.to_owned());
        if let Some(args) = object_arguments(name, arguments)? {
            params = params.with_arguments(args);
        }
        self.shared
            .call_tool_tracked(
                params,
                ProgressReporter::default(),
                self.shared.config.call_timeout,
            )
            .await
    }

    /// The server's resources.
    pub async fn list_resources(&self) -> Result<Vec<Resource>, McpError> {
        self.shared
            .request("resources/list", |live| async move {
                live.service.list_all_resources().await
            })
            .await
    }

    /// The server's resource templates.
    pub async fn list_resource_templates(&self) -> Result<Vec<ResourceTemplate>, McpError> {
        self.shared
            .request("resources/templates/list", |live| async move {
                live.service.list_all_resource_templates().await
            })
            .await
    }

    /// Reads a resource.
    pub async fn read_resource(&self, uri: &str) -> Result<ReadResourceResult, McpError> {
        self.shared
            .request("resources/read", |live| async move {
                live.service
                    .read_resource(ReadResourceRequestParams::new(uri))
                    .await
            })
            .await
    }

    /// The server's prompts.
    pub async fn list_prompts(&self) -> Result<Vec<Prompt>, McpError> {
        self.shared
            .request("prompts/list", |live| async move {
                live.service.list_all_prompts().await
            })
            .await
    }

    /// Gets a prompt with its arguments (an object of strings).
    pub async fn get_prompt(
        &self,
        name: &str,
        arguments: Value,
    ) -> Result<GetPromptResult, McpError> {
        let mut params = GetPromptRequestParams::new(name.to_owned());
        if let Some(args) = object_arguments(name, arguments)? {
            params = params.with_arguments(args);
        }
        self.shared
            .request("prompts/get", |live| {
                let params = params.clone();
                async move { live.service.get_prompt(params).await }
            })
            .await
    }

    /// The server's name (as configured).
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The protocol version agreed with the server.
    pub fn protocol_version(&self) -> Option<String> {
        self.shared.protocol_version()
    }

    /// The process id of a stdio server's current process.
    pub fn process_id(&self) -> Option<u32> {
        self.shared.process_id()
    }

    /// How many connections were made (1 + reconnects).
    pub fn connections(&self) -> u64 {
        self.shared.connections()
    }

    /// Closes the connection (a stdio server is asked to exit, then stopped). Later requests
    /// reconnect.
    pub async fn close(&self) {
        self.shared.close().await;
    }
}
