//! OAuth 2.1 for streamable HTTP servers, on rmcp's `auth` support: protected resource and
//! authorization server discovery, PKCE, RFC 8707 resources, RFC 9207 issuer checks, client
//! registration (pre-registered, client ID metadata document, or dynamic), token refresh and
//! scope step-up are rmcp's; this module runs the flow when a server answers 401/403.

use std::sync::Arc;
use std::time::Duration;

use agent_core::async_trait;
use rmcp::transport::auth::{AuthClient, AuthorizationCallback, AuthorizationRequest, OAuthState};

/// Takes the user through the authorization server: given the authorization URL, returns the
/// URL the authorization server redirected to (the redirect URI with `code` and `state`).
/// A CLI opens a browser and listens on the redirect URI; a service forwards the URL to its
/// user; tests follow the redirect themselves.
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// Authorizes and returns the callback URL.
    async fn authorize(&self, authorization_url: String) -> Result<String, crate::HandlerError>;
}

/// OAuth 2.1 settings of an HTTP server.
#[derive(Clone)]
pub struct OAuth {
    pub(crate) redirect_uri: String,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) client_name: String,
    pub(crate) client_metadata_url: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<String>,
    pub(crate) scopes: Vec<String>,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field("redirect_uri", &self.redirect_uri)
            .field("client_name", &self.client_name)
            .field("client_metadata_url", &self.client_metadata_url)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl OAuth {
    /// OAuth with this redirect URI and authorizer. Without a client id or metadata URL the
    /// client registers dynamically (RFC 7591) when the server allows it.
    pub fn new(redirect_uri: impl Into<String>, authorizer: Arc<dyn Authorizer>) -> Self {
        Self {
            redirect_uri: redirect_uri.into(),
            authorizer,
            client_name: "agent-mcp".into(),
            client_metadata_url: None,
            client_id: None,
            client_secret: None,
            scopes: Vec::new(),
            timeout: Duration::from_secs(300),
        }
    }

    /// The client name shown to the user (dynamic registration).
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// A client ID metadata document URL (SEP-991), used as the client id.
    pub fn client_metadata_url(mut self, url: impl Into<String>) -> Self {
        self.client_metadata_url = Some(url.into());
        self
    }

    /// A pre-registered client.
    pub fn client(mut self, id: impl Into<String>, secret: Option<String>) -> Self {
        self.client_id = Some(id.into());
        self.client_secret = secret;
        self
    }

    /// Scopes to ask for (default: what the server's challenge or metadata names).
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Bound on one authorization, the user's part included (default 300 s). A connection
    /// attempt that needs an authorization may take this much longer than the startup or
    /// reconnect timeout. Concurrent requests that need one share a single authorization.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

async fn ask(oauth: &OAuth, url: String) -> Result<AuthorizationCallback, String> {
    let callback = tokio::time::timeout(oauth.timeout, oauth.authorizer.authorize(url))
        .await
        .map_err(|_| format!("not authorized within {} s", oauth.timeout.as_secs()))?
        .map_err(|e| e.to_string())?;
    AuthorizationCallback::from_redirect_url(&callback).map_err(|e| e.to_string())
}

/// A full authorization: discovery from the challenge, registration, the user's consent, the
/// code exchange. Returns an HTTP client that adds (and refreshes) the token.
pub(crate) async fn authorize(
    url: &str,
    oauth: &OAuth,
    challenge: Option<&str>,
) -> Result<AuthClient<reqwest::Client>, String> {
    let mut state = OAuthState::new(url, None)
        .await
        .map_err(|e| e.to_string())?;
    let mut request =
        AuthorizationRequest::new(oauth.redirect_uri.clone()).with_client_name(&oauth.client_name);
    if let Some(challenge) = challenge {
        request = request.with_challenge(challenge);
    }
    if let Some(id) = &oauth.client_id {
        request = request.with_preregistered_client(id);
        if let Some(secret) = &oauth.client_secret {
            request = request.with_client_secret(secret);
        }
    }
    if let Some(cimd) = &oauth.client_metadata_url {
        request = request.with_client_metadata_url(cimd);
    }
    if !oauth.scopes.is_empty() {
        request = request.with_scopes(oauth.scopes.iter().cloned());
    }
    state
        .start_authorization(request)
        .await
        .map_err(|e| e.to_string())?;
    let authorization_url = state
        .get_authorization_url()
        .await
        .map_err(|e| e.to_string())?;
    let callback = ask(oauth, authorization_url).await?;
    state
        .handle_callback_with_issuer(
            &callback.code,
            &callback.csrf_token,
            callback.issuer.as_deref(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let manager = state
        .into_authorization_manager()
        .ok_or("the authorization did not complete")?;
    Ok(AuthClient::new(reqwest::Client::default(), manager))
}

/// Asks for `scope` on top of the scopes already granted (a 403 `insufficient_scope`); rmcp
/// bounds the number of step-ups.
pub(crate) async fn step_up(
    client: &AuthClient<reqwest::Client>,
    oauth: &OAuth,
    scope: &str,
) -> Result<(), String> {
    let url = client
        .auth_manager
        .lock()
        .await
        .request_scope_upgrade(scope)
        .await
        .map_err(|e| e.to_string())?;
    let callback = ask(oauth, url).await?;
    client
        .auth_manager
        .lock()
        .await
        .exchange_code_for_token_with_issuer(
            &callback.code,
            &callback.csrf_token,
            callback.issuer.as_deref(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
