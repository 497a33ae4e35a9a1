//! Tool calls: progress, cancellation on timeout or drop, and input rounds (SEP-2322).

use super::*;

impl Shared {
    /// Answers a server's input requests (SEP-2322) with the configured handlers.
    pub(super) async fn fulfil(&self, requests: InputRequests) -> Result<InputResponses, String> {
        let mut responses = InputResponses::new();
        for (key, request) in requests {
            let value = match request {
                InputRequest::CreateMessage(request) => {
                    let handler = self
                        .handler
                        .sampling
                        .as_ref()
                        .ok_or("the server asked for sampling, which is not configured")?;
                    let result = handler
                        .create_message(request.params)
                        .await
                        .map_err(|e| e.to_string())?;
                    serde_json::to_value(result).map_err(|e| e.to_string())?
                }
                InputRequest::Elicitation(request) => {
                    let result = match &self.handler.elicitation {
                        Some(handler) => handler
                            .elicit(request.params)
                            .await
                            .map_err(|e| e.to_string())?,
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
            if let Some(challenge) = auth_refusal(&error)
                && auth_rounds < MAX_AUTH_ROUNDS
            {
                // The HTTP layer refused the request: it did not run; send it again.
                auth_rounds += 1;
                self.on_auth_challenge(&live, challenge, seen).await?;
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
