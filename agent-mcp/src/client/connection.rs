//! The connection state machine: start, handshake, reconnect with backoff, health probes, close.

use super::*;

impl Shared {
    pub(crate) fn new(config: McpServer, handler: Handler) -> Self {
        Self {
            config,
            handler,
            state: Mutex::new(State::Down),
            connections: AtomicU64::new(0),
            info: Mutex::new((None, None)),
            #[cfg(feature = "auth")]
            auth: Mutex::new(None),
            #[cfg(feature = "auth")]
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

    pub(super) fn startup(&self, reason: impl Into<String>) -> McpError {
        McpError::Startup {
            server: self.config.name.clone(),
            reason: reason.into(),
        }
    }

    pub(super) fn request_error(&self, reason: impl Into<String>) -> McpError {
        McpError::Request {
            server: self.config.name.clone(),
            reason: reason.into(),
        }
    }

    /// The bound on establishing a connection: the handshake, plus the user's part of an
    /// OAuth authorization when one is configured.
    pub(super) fn connect_bound(&self, base: Duration) -> Duration {
        #[cfg(feature = "auth")]
        let user = self
            .config
            .oauth
            .as_ref()
            .map_or(Duration::ZERO, |o| o.timeout);
        #[cfg(not(feature = "auth"))]
        let user = Duration::ZERO;
        base + user
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
    pub(super) async fn reconnect(self: Arc<Self>) -> Result<Arc<Live>, String> {
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

    pub(super) async fn connect_once(&self) -> Result<Live, McpError> {
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

    pub(super) fn failure_error(&self, failure: Failure) -> McpError {
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

    pub(super) fn failure(&self, error: rmcp::service::ClientInitializeError) -> Failure {
        match error {
            rmcp::service::ClientInitializeError::NoCompatibleProtocolVersion {
                server_supported,
                ..
            } => Failure::NoCommonVersion(server_supported),
            e => Failure::Error(self.startup(e.to_string())),
        }
    }

    // Without `auth` the HTTP arm connects once: its loop is there for authorization rounds.
    #[cfg_attr(not(feature = "auth"), allow(clippy::never_loop))]
    pub(super) async fn connect_with(&self, mode: ClientLifecycleMode) -> Result<Live, Failure> {
        // Each connection routes its own progress tokens (rmcp numbers them per connection).
        let mut handler = self.handler.clone();
        let progress = Arc::new(Mutex::new(HashMap::new()));
        handler.progress = progress.clone();
        let service = match &self.config.transport {
            #[cfg(feature = "stdio")]
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
            #[cfg(not(feature = "stdio"))]
            Transport::Stdio { .. } => {
                return Err(self
                    .startup("stdio servers need agent-mcp's `stdio` feature")
                    .into());
            }
            #[cfg(feature = "http")]
            Transport::Http { url, .. } => {
                let mut rounds = 0;
                loop {
                    let config = self.config.http_config()?;
                    let auth_generation = self.auth_generation.load(Ordering::Acquire);
                    #[cfg(feature = "auth")]
                    let auth = self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    #[cfg(not(feature = "auth"))]
                    let auth: Option<std::convert::Infallible> = None;
                    let result = match auth {
                        #[cfg(feature = "auth")]
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
                            #[cfg(feature = "auth")]
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
                            #[cfg(not(feature = "auth"))]
                            let _ = (url, &mut rounds, auth_generation);
                            if !needs_auth {
                                return Err(self.failure(e));
                            }
                            return Err(self.startup(self.unauthorized(&e.to_string())).into());
                        }
                    }
                }
            }
            #[cfg(not(feature = "http"))]
            Transport::Http { .. } => {
                return Err(self
                    .startup("HTTP servers need agent-mcp's `http` feature")
                    .into());
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

    /// After a request timed out on HTTP: checks in the background that the session still
    /// answers (a `ping` within 5 s) and drops it if not, so that the next request starts a
    /// new one. A server that restarted and forgot the session without answering 404 is found
    /// this way.
    pub(super) fn probe(self: &Arc<Self>, live: &Arc<Live>) {
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
