//! The connection to one server: start, handshake, reconnect with backoff, OAuth, and the
//! requests the crate makes.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use agent_core::tool::{BoxFuture, ProgressReporter, Tool, ToolSource};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotificationParam,
    ClientRequest, GetPromptRequestParams, GetPromptResult, Prompt, ProtocolVersion,
    ReadResourceRequestParams, ReadResourceResult, RequestId, Resource, ResourceTemplate,
    ServerNotification, ServerResult, SubscriptionFilter,
};
use rmcp::service::{Peer, PeerRequestOptions, RoleClient, RunningService, ServiceError};
use rmcp::transport::auth::{AuthClient, WWWAuthenticateParams};
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientLifecycleMode, ClientServiceExt};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;

use crate::auth;
use crate::handler::{Handler, ProgressRoute};
use crate::{McpError, McpServer, Transport};

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

pub(crate) struct Live {
    pub(crate) service: RunningService<RoleClient, Handler>,
}

pub(crate) struct Shared {
    pub(crate) config: McpServer,
    pub(crate) handler: Handler,
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
    /// Connections made so far (1 after the first connect).
    connections: AtomicU64,
    info: Mutex<(Option<String>, Option<u32>)>,
    auth: tokio::sync::Mutex<Option<AuthClient<reqwest::Client>>>,
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

impl Shared {
    pub(crate) fn new(config: McpServer, handler: Handler) -> Self {
        Self {
            config,
            handler,
            live: tokio::sync::Mutex::new(None),
            connections: AtomicU64::new(0),
            info: Mutex::new((None, None)),
            auth: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn protocol_version(&self) -> Option<String> {
        self.info
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    pub(crate) fn process_id(&self) -> Option<u32> {
        self.info.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    fn startup(&self, reason: impl Into<String>) -> McpError {
        McpError::Startup {
            server: self.config.name.clone(),
            reason: reason.into(),
        }
    }

    fn request_error(&self, reason: impl Into<String>) -> McpError {
        McpError::Request {
            server: self.config.name.clone(),
            reason: reason.into(),
        }
    }

    /// The first connection: one attempt, bounded by the startup timeout.
    pub(crate) async fn connect_first(&self) -> Result<(), McpError> {
        let live = tokio::time::timeout(self.config.startup_timeout, self.connect_once())
            .await
            .map_err(|_| {
                self.startup(format!(
                    "no answer to the handshake within {} ms",
                    self.config.startup_timeout.as_millis()
                ))
            })??;
        *self.live.lock().await = Some(Arc::new(live));
        Ok(())
    }

    /// The current connection, reconnecting (with backoff, within the reconnect bound) when
    /// the last one closed.
    pub(crate) async fn live(&self) -> Result<Arc<Live>, McpError> {
        let mut current = self.live.lock().await;
        if let Some(live) = current.as_ref()
            && !live.service.is_transport_closed()
        {
            return Ok(live.clone());
        }
        if let Some(old) = current.take() {
            tracing::warn!(server = %self.config.name, "MCP connection closed; reconnecting");
            drop(old);
        }
        let deadline = Instant::now() + self.config.reconnect_timeout;
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let error = match tokio::time::timeout_at(deadline, self.connect_once()).await {
                Ok(Ok(live)) => {
                    let live = Arc::new(live);
                    *current = Some(live.clone());
                    tracing::info!(server = %self.config.name, attempts, "MCP server reconnected");
                    // A restarted server may offer other tools.
                    self.handler.bump_tools();
                    return Ok(live);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the attempt timed out".to_owned(),
            };
            if Instant::now() + delay >= deadline {
                return Err(self.request_error(format!(
                    "cannot reconnect ({attempts} attempts in {} ms; last: {error})",
                    self.config.reconnect_timeout.as_millis()
                )));
            }
            tracing::warn!(server = %self.config.name, attempts, %error, "MCP reconnect failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Forgets `live` (if still current) so that the next request reconnects.
    pub(crate) async fn mark_dead(&self, live: &Arc<Live>) {
        let mut current = self.live.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, live)) {
            *current = None;
        }
    }

    pub(crate) async fn close(&self) {
        let live = self.live.lock().await.take();
        if let Some(live) = live
            && let Ok(live) = Arc::try_unwrap(live)
        {
            let mut service = live.service;
            let _ = service.close_with_timeout(Duration::from_secs(5)).await;
        }
    }

    async fn connect_once(&self) -> Result<Live, McpError> {
        let mode = lifecycle(self.config.protocol.as_ref());
        match self.connect_with(mode).await {
            // A server that answers `server/discover` but only speaks versions with
            // `initialize`: initialize.
            Err(Failure::NoCommonVersion(supported))
                if self.config.protocol.is_none()
                    && supported.iter().any(|v| v.has_initialize()) =>
            {
                self.connect_with(ClientLifecycleMode::Initialize)
                    .await
                    .map_err(|f| self.failure_error(f))
            }
            other => other.map_err(|f| self.failure_error(f)),
        }
    }

    fn failure_error(&self, failure: Failure) -> McpError {
        match failure {
            Failure::Error(e) => e,
            Failure::NoCommonVersion(versions) => self.startup(format!(
                "no protocol version in common (the server speaks {})",
                versions
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    fn failure(&self, error: rmcp::service::ClientInitializeError) -> Failure {
        match error {
            rmcp::service::ClientInitializeError::NoCompatibleProtocolVersion {
                server_supported,
                ..
            } => Failure::NoCommonVersion(server_supported),
            e => Failure::Error(self.startup(e.to_string())),
        }
    }

    async fn connect_with(&self, mode: ClientLifecycleMode) -> Result<Live, Failure> {
        let handler = self.handler.clone();
        let service = match &self.config.transport {
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
                    .map_err(|e| self.startup(format!("cannot run `{command}`: {e}")))?;
                let pid = transport.id();
                if let Some(stderr) = stderr {
                    let server = self.config.name.clone();
                    tokio::spawn(async move {
                        let mut lines = tokio::io::BufReader::new(stderr).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            tracing::info!(target: "agent_mcp::server", server = %server, "{line}");
                        }
                    });
                }
                self.info.lock().unwrap_or_else(|e| e.into_inner()).1 = pid;
                handler
                    .serve_with_lifecycle(transport, mode.clone())
                    .await
                    .map_err(|e| self.failure(e))?
            }
            Transport::Http { url, .. } => {
                let mut rounds = 0;
                loop {
                    let config = self.config.http_config()?;
                    let auth = self.auth.lock().await.clone();
                    let result = match auth {
                        Some(client) => {
                            handler
                                .clone()
                                .serve_with_lifecycle(
                                    StreamableHttpClientTransport::with_client(client, config),
                                    mode.clone(),
                                )
                                .await
                        }
                        None => {
                            handler
                                .clone()
                                .serve_with_lifecycle(
                                    StreamableHttpClientTransport::from_config(config),
                                    mode.clone(),
                                )
                                .await
                        }
                    };
                    match result {
                        Ok(service) => break service,
                        Err(e) => {
                            let needs_auth =
                                e.auth_challenge().is_some() || e.is_authorization_required();
                            if needs_auth
                                && let Some(oauth) = &self.config.oauth
                                && rounds < MAX_AUTH_ROUNDS
                            {
                                rounds += 1;
                                let client = auth::authorize(url, oauth, e.auth_challenge())
                                    .await
                                    .map_err(|reason| {
                                        self.startup(format!("authorization failed: {reason}"))
                                    })?;
                                *self.auth.lock().await = Some(client);
                                continue;
                            }
                            if !needs_auth {
                                return Err(self.failure(e));
                            }
                            let reason = if self.config.oauth.is_none() {
                                format!(
                                    "{e} (the server requires authorization: configure `oauth` or `bearer_token`)"
                                )
                            } else {
                                e.to_string()
                            };
                            return Err(self.startup(reason).into());
                        }
                    }
                }
            }
        };
        self.connections.fetch_add(1, Ordering::Relaxed);
        let info = service.peer_info();
        // From 2026-07-28 on, list changes come only on a `subscriptions/listen` stream.
        if let Some(info) = &info
            && !info.protocol_version.has_initialize()
            && info
                .capabilities
                .tools
                .as_ref()
                .and_then(|t| t.list_changed)
                .unwrap_or(false)
        {
            let peer = service.peer().clone();
            let handler = self.handler.clone();
            tokio::spawn(async move {
                let filter = SubscriptionFilter::builder().tools_list_changed().build();
                let mut subscription = match peer.listen(filter).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(server = %handler.server, error = %e, "cannot subscribe to tool list changes");
                        return;
                    }
                };
                while let Ok(Some(notification)) = subscription.next().await {
                    if matches!(
                        notification,
                        ServerNotification::ToolListChangedNotification(_)
                    ) {
                        handler.bump_tools();
                    }
                }
            });
        }
        let version = info.map(|i| i.protocol_version.to_string());
        self.info.lock().unwrap_or_else(|e| e.into_inner()).0 = version;
        Ok(Live { service })
    }

    /// Reacts to a 401/403 during a request: a scope step-up on the current token when the
    /// server asks for more scope, a fresh authorization (and a new connection) otherwise.
    async fn on_auth_challenge(&self, live: &Arc<Live>, challenge: &str) -> Result<(), McpError> {
        let Transport::Http { url, .. } = &self.config.transport else {
            return Err(self.request_error("authorization challenge on a stdio server"));
        };
        let Some(oauth) = &self.config.oauth else {
            return Err(self.request_error(format!(
                "the server requires authorization ({challenge}); configure `oauth` or `bearer_token`"
            )));
        };
        let base = reqwest::Url::parse(url).map_err(|e| McpError::Config(e.to_string()))?;
        let params = WWWAuthenticateParams::parse(challenge, &base);
        let current = self.auth.lock().await.clone();
        if let (Some(client), true, Some(scope)) = (
            current,
            params.is_insufficient_scope(),
            params.scope.as_deref(),
        ) {
            auth::step_up(&client, oauth, scope)
                .await
                .map_err(|reason| self.request_error(format!("scope step-up failed: {reason}")))?;
            return Ok(());
        }
        let client = auth::authorize(url, oauth, Some(challenge))
            .await
            .map_err(|reason| self.request_error(format!("authorization failed: {reason}")))?;
        *self.auth.lock().await = Some(client);
        self.mark_dead(live).await;
        Ok(())
    }

    /// One request with reconnect, OAuth and a bound. `retry_closed`: whether the request may
    /// be sent again after the connection closed under it (true for reads).
    pub(crate) async fn request<T, F, Fut>(
        &self,
        what: &str,
        retry_closed: bool,
        f: F,
    ) -> Result<T, McpError>
    where
        F: Fn(Arc<Live>) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        let deadline = Instant::now() + self.config.call_timeout;
        let timed_out = || {
            self.request_error(format!(
                "{what} did not answer within {} ms",
                self.config.call_timeout.as_millis()
            ))
        };
        let mut auth_rounds = 0;
        let mut closed_retries = 0;
        loop {
            let live = tokio::time::timeout_at(deadline, self.live())
                .await
                .map_err(|_| timed_out())??;
            let error = match tokio::time::timeout_at(deadline, f(live.clone())).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
            };
            if let Some(challenge) = error.auth_challenge()
                && auth_rounds < MAX_AUTH_ROUNDS
            {
                auth_rounds += 1;
                self.on_auth_challenge(&live, challenge).await?;
                continue;
            }
            if connection_lost(&error) || live.service.is_transport_closed() {
                self.mark_dead(&live).await;
                if retry_closed && closed_retries == 0 {
                    closed_retries += 1;
                    continue;
                }
                return Err(self.request_error(format!(
                    "{what}: the connection closed (the server may have exited); the next request reconnects"
                )));
            }
            return Err(self.request_error(match error {
                ServiceError::McpError(e) => format!("{what}: {}", e.message),
                e => format!("{what}: {e}"),
            }));
        }
    }

    /// After a call timed out: checks in the background that the session still answers (a
    /// `ping` within 5 s) and drops it if not, so that the next call starts a new one. A
    /// server that restarted and forgot the session without answering 404 is found this way.
    fn probe(self: &Arc<Self>, live: &Arc<Live>) {
        if !live
            .service
            .peer_info()
            .is_some_and(|i| i.protocol_version.has_initialize())
        {
            return;
        }
        let shared = self.clone();
        let live = live.clone();
        tokio::spawn(async move {
            let ping = live
                .service
                .peer()
                .send_request(ClientRequest::PingRequest(Default::default()));
            if !matches!(
                tokio::time::timeout(Duration::from_secs(5), ping).await,
                Ok(Ok(_))
            ) {
                tracing::warn!(server = %shared.config.name, "MCP session does not answer a ping; starting a new one on the next call");
                shared.mark_dead(&live).await;
            }
        });
    }

    /// `tools/call` for the agent adapter: progress routed to `progress`, bounded by `timeout`,
    /// `notifications/cancelled` on timeout or when dropped; MRTR rounds driven by rmcp.
    pub(crate) async fn call_tool_tracked(
        self: &Arc<Self>,
        params: CallToolRequestParams,
        progress: ProgressReporter,
        timeout: Duration,
    ) -> Result<CallToolResult, String> {
        let deadline = Instant::now() + timeout;
        let late = || format!("did not answer within {} ms", timeout.as_millis());
        let mut auth_rounds = 0;
        loop {
            let live = tokio::time::timeout_at(deadline, self.live())
                .await
                .map_err(|_| late())?
                .map_err(|e| e.to_string())?;
            let request = ClientRequest::CallToolRequest(CallToolRequest::new(params.clone()));
            let handle = match live
                .service
                .peer()
                .send_cancellable_request(request, PeerRequestOptions::no_options())
                .await
            {
                Ok(h) => h,
                Err(_) => {
                    self.mark_dead(&live).await;
                    return Err("the server is not running (its connection closed); the next call reconnects".into());
                }
            };
            let _route = progress.is_active().then(|| {
                self.handler
                    .progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(handle.progress_token.clone(), progress.clone());
                ProgressRoute {
                    map: self.handler.progress.clone(),
                    token: handle.progress_token.clone(),
                }
            });
            let mut guard = CancelGuard {
                peer: handle.peer.clone(),
                id: Some(handle.id.clone()),
                reason: "cancelled by the client",
            };
            let outcome = tokio::time::timeout_at(deadline, handle.await_response()).await;
            let outcome = match outcome {
                Err(_) => {
                    guard.reason = "timed out";
                    self.probe(&live);
                    return Err(late());
                }
                Ok(o) => {
                    guard.id = None;
                    o
                }
            };
            match outcome {
                Ok(ServerResult::CallToolResult(result)) => return Ok(result),
                Ok(ServerResult::InputRequiredResult(_)) => {
                    // The server needs input first (SEP-2322): let rmcp drive the rounds
                    // through our handler.
                    return tokio::time::timeout_at(deadline, live.service.call_tool(params))
                        .await
                        .map_err(|_| late())?
                        .map_err(|e| e.to_string());
                }
                Ok(other) => {
                    return Err(format!(
                        "unexpected answer to tools/call: {}",
                        serde_json::to_string(&other).unwrap_or_default()
                    ));
                }
                Err(e) => {
                    if let Some(challenge) = e.auth_challenge()
                        && auth_rounds < MAX_AUTH_ROUNDS
                    {
                        auth_rounds += 1;
                        self.on_auth_challenge(&live, challenge)
                            .await
                            .map_err(|e| e.to_string())?;
                        continue;
                    }
                    if connection_lost(&e) || live.service.is_transport_closed() {
                        self.mark_dead(&live).await;
                        return Err("the server's connection closed during the call (it may have crashed); the call's outcome is unknown; the next call reconnects".into());
                    }
                    return Err(match e {
                        ServiceError::McpError(e) => e.message.to_string(),
                        e => e.to_string(),
                    });
                }
            }
        }
    }
}

/// Whether an error means the connection is gone (closed, or the server unreachable): the
/// next request should start a new one.
fn connection_lost(error: &ServiceError) -> bool {
    matches!(
        error,
        ServiceError::TransportClosed | ServiceError::TransportSend(_)
    )
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
        let listed = self
            .shared
            .request("tools/list", true, |live| async move {
                live.service.list_all_tools().await
            })
            .await?;
        let mut used = HashSet::new();
        Ok(listed
            .into_iter()
            .filter_map(|t| crate::tool::adapt(&self.shared, t, &mut used))
            .collect())
    }

    /// The server's tools as a [`ToolSource`] for
    /// [`AgentBuilder::tool_source`](agent_core::agent::AgentBuilder::tool_source): re-listed
    /// before the agent's next model call after `notifications/tools/list_changed` or a
    /// reconnect, so that call sees the new list.
    pub async fn tool_source(&self) -> Result<Arc<McpToolSource>, McpError> {
        let mut changes = self.shared.handler.tools_changed.subscribe();
        changes.mark_unchanged();
        let tools = self.tools().await?;
        Ok(Arc::new(McpToolSource {
            client: self.clone(),
            tools: RwLock::new(tools),
            generation: AtomicU64::new(0),
            changes: tokio::sync::Mutex::new(changes),
        }))
    }

    /// The server's tools as it lists them (all pages; no filters, MCP names).
    pub async fn list_tools(&self) -> Result<Vec<rmcp::model::Tool>, McpError> {
        self.shared
            .request("tools/list", true, |live| async move {
                live.service.list_all_tools().await
            })
            .await
    }

    /// Calls a tool by its MCP name and returns the server's result as is (MRTR input rounds
    /// answered by the configured handlers), bounded by the call timeout.
    pub async fn call_tool(
        &self,
        name: &str,
        arguments: Value,
    ) -> Result<CallToolResult, McpError> {
        let mut params = CallToolRequestParams::new(name.to_owned());
        if let Value::Object(args) = arguments {
            params = params.with_arguments(args);
        }
        self.shared
            .request("tools/call", false, |live| {
                let params = params.clone();
                async move { live.service.call_tool(params).await }
            })
            .await
    }

    /// The server's resources.
    pub async fn list_resources(&self) -> Result<Vec<Resource>, McpError> {
        self.shared
            .request("resources/list", true, |live| async move {
                live.service.list_all_resources().await
            })
            .await
    }

    /// The server's resource templates.
    pub async fn list_resource_templates(&self) -> Result<Vec<ResourceTemplate>, McpError> {
        self.shared
            .request("resources/templates/list", true, |live| async move {
                live.service.list_all_resource_templates().await
            })
            .await
    }

    /// Reads a resource.
    pub async fn read_resource(&self, uri: &str) -> Result<ReadResourceResult, McpError> {
        self.shared
            .request("resources/read", true, |live| async move {
                live.service
                    .read_resource(ReadResourceRequestParams::new(uri))
                    .await
            })
            .await
    }

    /// The server's prompts.
    pub async fn list_prompts(&self) -> Result<Vec<Prompt>, McpError> {
        self.shared
            .request("prompts/list", true, |live| async move {
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
        if let Value::Object(args) = arguments {
            params = params.with_arguments(args);
        }
        self.shared
            .request("prompts/get", true, |live| {
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

/// An MCP server's tools that follow its `tools/list_changed` notifications; see
/// [`McpClient::tool_source`].
pub struct McpToolSource {
    client: McpClient,
    tools: RwLock<Vec<Arc<dyn Tool>>>,
    generation: AtomicU64,
    changes: tokio::sync::Mutex<tokio::sync::watch::Receiver<u64>>,
}

impl std::fmt::Debug for McpToolSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpToolSource")
            .field("server", &self.client.name())
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl ToolSource for McpToolSource {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn tools(&self) -> Vec<Arc<dyn Tool>> {
        self.tools.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn sync(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut changes = self.changes.lock().await;
            if !changes.has_changed().unwrap_or(false) {
                return;
            }
            changes.mark_unchanged();
            // Bounded by the call timeout; on failure the last list stays and the next sync
            // tries again.
            match self.client.tools().await {
                Ok(tools) => {
                    *self.tools.write().unwrap_or_else(|e| e.into_inner()) = tools;
                    self.generation.fetch_add(1, Ordering::Release);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "re-listing MCP tools failed; keeping the last list");
                    changes.mark_changed();
                }
            }
        })
    }
}
