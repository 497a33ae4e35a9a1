//! The connection to one server: start, handshake, reconnect with backoff, OAuth, and the
//! requests the crate makes.

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
    auth: Mutex<Option<AuthClient<reqwest::Client>>>,
    /// One authorization at a time; the generation counts completed ones, so a request that
    /// failed under an older token just retries with the new one.
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
    Unreachable,
}

fn lost(error: &ServiceError) -> Option<Lost> {
    match error {
        ServiceError::TransportClosed => Some(Lost::Closed),
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

impl Shared {
    pub(crate) fn new(config: McpServer, handler: Handler) -> Self {
        Self {
            config,
            handler,
            state: Mutex::new(State::Down),
            connections: AtomicU64::new(0),
            info: Mutex::new((None, None)),
            auth: Mutex::new(None),
            auth_flow: tokio::sync::Mutex::new(()),
            auth_generation: AtomicU64::new(0),
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

    /// The bound on establishing a connection: the handshake, plus the user's part of an
    /// OAuth authorization when one is configured.
    fn connect_bound(&self, base: Duration) -> Duration {
        base + self
            .config
            .oauth
            .as_ref()
            .map_or(Duration::ZERO, |o| o.timeout)
    }

    /// The first connection: one attempt, bounded by the startup timeout.
    pub(crate) async fn connect_first(&self) -> Result<(), McpError> {
        let bound = self.connect_bound(self.config.startup_timeout);
        let live = tokio::time::timeout(bound, self.connect_once())
            .await
            .map_err(|_| {
                self.startup(format!(
                    "no answer to the handshake within {} ms",
                    bound.as_millis()
                ))
            })??;
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = State::Up(Arc::new(live));
        Ok(())
    }

    /// The current connection; when it is gone, waits for the reconnect (started here if
    /// none runs yet).
    pub(crate) async fn live(self: &Arc<Self>) -> Result<Arc<Live>, McpError> {
        let pending = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match &*state {
                State::Up(live) if live.healthy() => return Ok(live.clone()),
                State::Connecting(pending) => pending.clone(),
                current => {
                    if let State::Up(old) = current {
                        tracing::warn!(server = %self.config.name, "MCP connection lost; reconnecting");
                        old.service.cancellation_token().cancel();
                    }
                    let shared = self.clone();
                    let task = tokio::spawn(async move { shared.reconnect().await });
                    let pending: BoxFuture<'static, Result<Arc<Live>, String>> =
                        Box::pin(async move { task.await.map_err(|e| e.to_string())? });
                    let pending = pending.shared();
                    *state = State::Connecting(pending.clone());
                    pending
                }
            }
        };
        pending.await.map_err(|e| self.request_error(e))
    }

    /// Reconnects with exponential backoff (with jitter, so the replicas of a service that lost
    /// one server do not all come back in the same millisecond) within the reconnect bound,
    /// then records the outcome.
    async fn reconnect(self: Arc<Self>) -> Result<Arc<Live>, String> {
        let bound = self.connect_bound(self.config.reconnect_timeout);
        let deadline = Instant::now() + bound;
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0u32;
        let outcome = loop {
            attempts += 1;
            let error = match tokio::time::timeout_at(deadline, self.connect_once()).await {
                Ok(Ok(live)) => break Ok(Arc::new(live)),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the attempt timed out".to_owned(),
            };
            if Instant::now() + delay >= deadline {
                break Err(format!(
                    "cannot reconnect ({attempts} attempts in {} ms; last: {error})",
                    bound.as_millis()
                ));
            }
            tracing::warn!(server = %self.config.name, attempts, %error, "MCP reconnect failed; retrying");
            tokio::time::sleep(jittered(delay)).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &outcome {
            Ok(live) => {
                tracing::info!(server = %self.config.name, attempts, "MCP server reconnected");
                *state = State::Up(live.clone());
                // A restarted server may offer other tools.
                self.handler.bump_tools();
            }
            Err(_) => *state = State::Down,
        }
        outcome
    }

    pub(crate) async fn close(&self) {
        let current = std::mem::replace(
            &mut *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            State::Down,
        );
        if let State::Up(live) = current {
            match Arc::try_unwrap(live) {
                Ok(live) => {
                    let mut service = live.service;
                    let _ = service.close_with_timeout(Duration::from_secs(5)).await;
                }
                // Calls still hold it: end it now; they fail with a closed connection.
                Err(live) => live.service.cancellation_token().cancel(),
            }
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
        // Each connection routes its own progress tokens (rmcp numbers them per connection).
        let mut handler = self.handler.clone();
        let progress = Arc::new(Mutex::new(HashMap::new()));
        handler.progress = progress.clone();
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
                    let auth_generation = self.auth_generation.load(Ordering::Acquire);
                    let auth = self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
                                self.authorize(url, oauth, e.auth_challenge(), auth_generation)
                                    .await
                                    .map_err(|reason| {
                                        self.startup(format!("authorization failed: {reason}"))
                                    })?;
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
            // Subscribe before the connection is handed out, so no change is missed.
            let filter = SubscriptionFilter::builder().tools_list_changed().build();
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, service.peer().listen(filter)).await {
                Ok(Ok(mut subscription)) => {
                    let handler = self.handler.clone();
                    tokio::spawn(async move {
                        while let Ok(Some(notification)) = subscription.next().await {
                            if matches!(
                                notification,
                                ServerNotification::ToolListChangedNotification(_)
                            ) {
                                handler.bump_tools();
                            }
                        }
                        // The stream ended (lagged, or the connection went): re-list to be
                        // sure; a new connection subscribes again.
                        handler.bump_tools();
                    });
                }
                Ok(Err(e)) => {
                    tracing::warn!(server = %self.config.name, error = %e, "cannot subscribe to tool list changes")
                }
                Err(_) => {
                    tracing::warn!(server = %self.config.name, "no answer to subscriptions/listen; tool list changes will not be seen")
                }
            }
        }
        let version = info.map(|i| i.protocol_version.to_string());
        self.info.lock().unwrap_or_else(|e| e.into_inner()).0 = version;
        Ok(Live {
            service,
            progress,
            dead: AtomicBool::new(false),
        })
    }

    /// Runs one authorization, unless another finished since `seen` (the generation the
    /// failed request used), in which case the caller just retries with the new token.
    async fn authorize(
        &self,
        url: &str,
        oauth: &crate::OAuth,
        challenge: Option<&str>,
        seen: u64,
    ) -> Result<(), String> {
        let _flow = self.auth_flow.lock().await;
        if self.auth_generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        let client = auth::authorize(url, oauth, challenge).await?;
        *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = Some(client);
        self.auth_generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Reacts to a 401/403 during a request: a scope step-up on the current token when the
    /// server asks for more scope, a fresh authorization (and a new connection) otherwise.
    /// Bounded by the call timeout plus the authorization's own timeout (the user's part).
    async fn on_auth_challenge(
        &self,
        live: &Arc<Live>,
        challenge: Option<&str>,
        seen: u64,
    ) -> Result<(), McpError> {
        let bound = self.connect_bound(self.config.call_timeout);
        tokio::time::timeout(bound, self.answer_challenge(live, challenge, seen))
            .await
            .map_err(|_| McpError::Timeout {
                server: self.config.name.clone(),
                what: "authorization".into(),
                millis: millis(bound),
            })?
    }

    async fn answer_challenge(
        &self,
        live: &Arc<Live>,
        challenge: Option<&str>,
        seen: u64,
    ) -> Result<(), McpError> {
        let Transport::Http { url, .. } = &self.config.transport else {
            return Err(self.request_error("authorization challenge on a stdio server"));
        };
        let Some(oauth) = &self.config.oauth else {
            return Err(self.request_error(format!(
                "the server requires authorization ({}); configure `oauth` or `bearer_token`",
                challenge.unwrap_or("401")
            )));
        };
        let base = reqwest::Url::parse(url).map_err(|e| McpError::Config(e.to_string()))?;
        let params = challenge.map(|c| WWWAuthenticateParams::parse(c, &base));
        let current = self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let (Some(client), Some(params)) = (current, &params)
            && params.is_insufficient_scope()
            && let Some(scope) = params.scope.as_deref()
        {
            let _flow = self.auth_flow.lock().await;
            if self.auth_generation.load(Ordering::Acquire) != seen {
                return Ok(());
            }
            auth::step_up(&client, oauth, scope)
                .await
                .map_err(|reason| self.request_error(format!("scope step-up failed: {reason}")))?;
            self.auth_generation.fetch_add(1, Ordering::AcqRel);
            return Ok(());
        }
        self.authorize(url, oauth, challenge, seen)
            .await
            .map_err(|reason| self.request_error(format!("authorization failed: {reason}")))?;
        // The new token goes with a new connection.
        live.dead.store(true, Ordering::Release);
        Ok(())
    }

    /// A read-only request with reconnect, OAuth and a bound. It is sent again once if the
    /// connection was lost under it (safe: it changes nothing).
    pub(crate) async fn request<T, F, Fut>(
        self: &Arc<Self>,
        what: &str,
        f: F,
    ) -> Result<T, McpError>
    where
        F: Fn(Arc<Live>) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        let deadline = Instant::now() + self.config.call_timeout;
        let timed_out = || McpError::Timeout {
            server: self.config.name.clone(),
            what: what.to_owned(),
            millis: millis(self.config.call_timeout),
        };
        let mut auth_rounds = 0;
        let mut resent = false;
        loop {
            let live = tokio::time::timeout_at(deadline, self.live())
                .await
                .map_err(|_| timed_out())??;
            let seen = self.auth_generation.load(Ordering::Acquire);
            let error = match tokio::time::timeout_at(deadline, f(live.clone())).await {
                Err(_) => {
                    self.probe(&live);
                    return Err(timed_out());
                }
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
            };
            if (error.auth_challenge().is_some() || error.is_authorization_required())
                && auth_rounds < MAX_AUTH_ROUNDS
            {
                auth_rounds += 1;
                self.on_auth_challenge(&live, error.auth_challenge(), seen)
                    .await?;
                continue;
            }
            if lost(&error).is_some() || live.service.is_transport_closed() {
                live.dead.store(true, Ordering::Release);
                if !resent {
                    resent = true;
                    continue;
                }
                return Err(McpError::Connection {
                    server: self.config.name.clone(),
                    reason: format!("{what}: {error}; the next request reconnects"),
                });
            }
            return Err(self.service_error(what, error));
        }
    }

    fn service_error(&self, what: &str, error: ServiceError) -> McpError {
        match error {
            ServiceError::McpError(e) => McpError::Server {
                server: self.config.name.clone(),
                code: e.code.0,
                message: format!("{what}: {}", e.message),
            },
            e => self.request_error(format!("{what}: {e}")),
        }
    }

    /// After a request timed out on HTTP: checks in the background that the session still
    /// answers (a `ping` within 5 s) and drops it if not, so that the next request starts a
    /// new one. A server that restarted and forgot the session without answering 404 is found
    /// this way.
    fn probe(self: &Arc<Self>, live: &Arc<Live>) {
        if !matches!(self.config.transport, Transport::Http { .. }) || !live.speaks_initialize() {
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
                tracing::warn!(server = %shared.config.name, "MCP session does not answer a ping; starting a new one on the next request");
                live.dead.store(true, Ordering::Release);
            }
        });
    }

    /// Answers a server's input requests (SEP-2322) with the configured handlers.
    async fn fulfil(&self, requests: InputRequests) -> Result<InputResponses, String> {
        let mut responses = InputResponses::new();
        for (key, request) in requests {
            let value = match request {
                InputRequest::CreateMessage(request) => {
                    let handler = self
                        .handler
                        .sampling
                        .as_ref()
                        .ok_or("the server asked for sampling, which is not configured")?;
                    let result = handler.create_message(request.params).await?;
                    serde_json::to_value(result).map_err(|e| e.to_string())?
                }
                InputRequest::Elicitation(request) => {
                    let result = match &self.handler.elicitation {
                        Some(handler) => handler.elicit(request.params).await?,
                        None => ElicitResult::new(ElicitationAction::Decline),
                    };
                    serde_json::to_value(result).map_err(|e| e.to_string())?
                }
                InputRequest::ListRoots(_) => {
                    serde_json::to_value(ListRootsResult::new(self.handler.roots.as_ref().clone()))
                        .map_err(|e| e.to_string())?
                }
                _ => {
                    return Err(format!(
                        "the server asked for an input of an unknown kind ({key})"
                    ));
                }
            };
            responses.insert(key, value);
        }
        Ok(responses)
    }

    /// `tools/call`: progress routed to `progress`, bounded by `timeout`,
    /// `notifications/cancelled` on timeout or when dropped, input rounds (SEP-2322) answered
    /// by the handlers. Never sent twice once it may have reached the server.
    pub(crate) async fn call_tool_tracked(
        self: &Arc<Self>,
        mut params: CallToolRequestParams,
        progress: ProgressReporter,
        timeout: Duration,
    ) -> Result<CallToolResult, McpError> {
        let what = format!("tools/call `{}`", params.name);
        let deadline = Instant::now() + timeout;
        let late = || McpError::Timeout {
            server: self.config.name.clone(),
            what: what.clone(),
            millis: millis(timeout),
        };
        let mut auth_rounds = 0;
        let mut rounds = 0;
        let mut state_only_rounds = 0u32;
        loop {
            let live = tokio::time::timeout_at(deadline, self.live())
                .await
                .map_err(|_| late())??;
            let seen = self.auth_generation.load(Ordering::Acquire);
            let request = ClientRequest::CallToolRequest(CallToolRequest::new(params.clone()));
            let handle = tokio::time::timeout_at(
                deadline,
                live.service
                    .peer()
                    .send_cancellable_request(request, PeerRequestOptions::no_options()),
            )
            .await
            .map_err(|_| late())?;
            let handle = match handle {
                Ok(h) => h,
                Err(e) => {
                    live.dead.store(true, Ordering::Release);
                    return Err(McpError::Connection {
                        server: self.config.name.clone(),
                        reason: format!(
                            "{what} was not sent ({e}): the server is not running; the next call reconnects"
                        ),
                    });
                }
            };
            let _route = progress.is_active().then(|| {
                live.progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(handle.progress_token.clone(), progress.clone());
                ProgressRoute {
                    map: live.progress.clone(),
                    token: handle.progress_token.clone(),
                }
            });
            let mut guard = CancelGuard {
                peer: handle.peer.clone(),
                id: Some(handle.id.clone()),
                reason: "cancelled by the client",
            };
            let outcome = match tokio::time::timeout_at(deadline, handle.await_response()).await {
                Err(_) => {
                    guard.reason = "timed out";
                    drop(guard);
                    self.probe(&live);
                    return Err(late());
                }
                Ok(o) => {
                    guard.id = None;
                    o
                }
            };
            let error = match outcome {
                Ok(ServerResult::CallToolResult(result)) => return Ok(result),
                Ok(ServerResult::InputRequiredResult(result)) => {
                    rounds += 1;
                    if rounds > MAX_INPUT_ROUNDS {
                        return Err(self.request_error(format!(
                            "{what}: the server still wants input after {MAX_INPUT_ROUNDS} rounds"
                        )));
                    }
                    let requests = result.input_requests.unwrap_or_default();
                    if requests.is_empty() && result.request_state.is_none() {
                        return Err(self.request_error(format!(
                            "{what}: the server asked for input without saying which"
                        )));
                    }
                    if requests.is_empty() {
                        // State only: the server wants the call again shortly.
                        let wait = 50u64 << state_only_rounds.min(2);
                        state_only_rounds += 1;
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    } else {
                        state_only_rounds = 0;
                    }
                    let responses = tokio::time::timeout_at(deadline, self.fulfil(requests))
                        .await
                        .map_err(|_| late())?
                        .map_err(|e| self.request_error(format!("{what}: {e}")))?;
                    params.input_responses = (!responses.is_empty()).then_some(responses);
                    params.request_state = result.request_state;
                    continue;
                }
                Ok(ServerResult::CreateTaskResult(_)) => {
                    return Err(self.request_error(format!(
                        "{what}: the server made it a task (the tasks extension is not supported)"
                    )));
                }
                Ok(_) => {
                    return Err(self.request_error(format!(
                        "{what}: the server answered with something other than a tool result"
                    )));
                }
                Err(e) => e,
            };
            if (error.auth_challenge().is_some() || error.is_authorization_required())
                && auth_rounds < MAX_AUTH_ROUNDS
            {
                // The HTTP layer refused the request: it did not run; send it again.
                auth_rounds += 1;
                self.on_auth_challenge(&live, error.auth_challenge(), seen)
                    .await?;
                continue;
            }
            let closed = live.service.is_transport_closed();
            match lost(&error) {
                Some(Lost::Unreachable) => {
                    live.dead.store(true, Ordering::Release);
                    return Err(McpError::Connection {
                        server: self.config.name.clone(),
                        reason: format!(
                            "{what}: the server could not be reached ({error}); the next call reconnects"
                        ),
                    });
                }
                Some(Lost::Closed) => {}
                None if closed => {}
                None => return Err(self.service_error(&what, error)),
            }
            live.dead.store(true, Ordering::Release);
            return Err(McpError::Connection {
                server: self.config.name.clone(),
                reason: format!(
                    "{what}: the connection closed during the call (the server may have crashed); its outcome is unknown; the next call reconnects"
                ),
            });
        }
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
            .filter_map(|t| crate::tool::adapt(&self.shared, t, &mut used))
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
        Ok(Arc::new(McpToolSource {
            client: self.clone(),
            tools: RwLock::new(tools),
            generation: AtomicU64::new(0),
            changes: tokio::sync::Mutex::new(changes),
            retry_at: Mutex::new(None),
        }))
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

/// An MCP server's tools that follow its `tools/list_changed` notifications; see
/// [`McpClient::tool_source`].
pub struct McpToolSource {
    client: McpClient,
    tools: RwLock<Vec<Arc<dyn Tool>>>,
    generation: AtomicU64,
    changes: tokio::sync::Mutex<tokio::sync::watch::Receiver<u64>>,
    retry_at: Mutex<Option<Instant>>,
}

/// Bound on re-listing tools before a model call, and the pause after a failed re-list.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
const SYNC_RETRY: Duration = Duration::from_secs(5);

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
            let mut retry_at = self
                .retry_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if retry_at.is_some_and(|t| Instant::now() < t) {
                // A re-list failed a moment ago: keep the last list for now.
                *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) = retry_at;
                return;
            }
            changes.mark_unchanged();
            match tokio::time::timeout(SYNC_TIMEOUT, self.client.tools()).await {
                Ok(Ok(tools)) => {
                    *self.tools.write().unwrap_or_else(|e| e.into_inner()) = tools;
                    self.generation.fetch_add(1, Ordering::Release);
                    retry_at = None;
                }
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {} s", SYNC_TIMEOUT.as_secs()),
                    };
                    tracing::warn!(server = %self.client.name(), %error, "re-listing MCP tools failed; keeping the last list");
                    changes.mark_changed();
                    retry_at = Some(Instant::now() + SYNC_RETRY);
                }
            }
            *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) = retry_at;
        })
    }
}

/// A backoff pause drawn uniformly from `[delay / 2, delay]`.
fn jittered(delay: Duration) -> Duration {
    delay / 2 + delay.mul_f64(fastrand::f64()) / 2
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn reconnect_pauses_are_jittered_within_the_backoff() {
        let delay = Duration::from_millis(800);
        let pauses: Vec<Duration> = (0..200).map(|_| jittered(delay)).collect();
        assert!(pauses.iter().all(|p| *p >= delay / 2 && *p <= delay));
        let distinct: std::collections::HashSet<_> = pauses.iter().collect();
        assert!(distinct.len() > 100, "{} distinct pauses", distinct.len());
    }
}
