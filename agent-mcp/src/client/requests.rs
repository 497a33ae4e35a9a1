//! Read-only requests with reconnect, OAuth and a bound.

use super::*;

impl Shared {
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
            if let Some(challenge) = auth_refusal(&error)
                && auth_rounds < MAX_AUTH_ROUNDS
            {
                auth_rounds += 1;
                self.on_auth_challenge(&live, challenge, seen).await?;
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

    pub(super) fn service_error(&self, what: &str, error: ServiceError) -> McpError {
        match error {
            ServiceError::McpError(e) => McpError::Server {
                server: self.config.name.clone(),
                code: e.code.0,
                message: format!("{what}: {}", e.message),
            },
            e => self.request_error(format!("{what}: {e}")),
        }
    }
}
