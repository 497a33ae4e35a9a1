//! OAuth: one authorization (or scope step-up) at a time when a request is refused. Without
//! the `auth` feature a refusal is an error that says how to authorize.

use super::*;

/// How to authorize, for errors about a server that requires it.
#[cfg(feature = "auth")]
const HOW_TO_AUTHORIZE: &str = "configure `oauth` or `bearer_token`";
#[cfg(not(feature = "auth"))]
const HOW_TO_AUTHORIZE: &str =
    "configure `bearer_token`, or enable agent-mcp's `auth` feature for `oauth`";

impl Shared {
    /// The reason for a connection the server refused for want of authorization.
    #[cfg(feature = "http")]
    pub(super) fn unauthorized(&self, refusal: &str) -> String {
        #[cfg(feature = "auth")]
        if self.config.oauth.is_some() {
            return refusal.to_owned();
        }
        format!("{refusal} (the server requires authorization: {HOW_TO_AUTHORIZE})")
    }

    /// Without the `auth` feature a request refused for authorization fails.
    #[cfg(not(feature = "auth"))]
    pub(super) async fn on_auth_challenge(
        &self,
        _live: &Arc<Live>,
        challenge: Option<&str>,
        _seen: u64,
    ) -> Result<(), McpError> {
        Err(self.request_error(format!(
            "the server requires authorization ({}); {HOW_TO_AUTHORIZE}",
            challenge.unwrap_or("401")
        )))
    }
}

#[cfg(feature = "auth")]
impl Shared {
    /// Runs one authorization, unless another finished since `seen` (the generation the
    /// failed request used), in which case the caller just retries with the new token.
    pub(super) async fn authorize(
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
    pub(super) async fn on_auth_challenge(
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
                "the server requires authorization ({}); {HOW_TO_AUTHORIZE}",
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
}
