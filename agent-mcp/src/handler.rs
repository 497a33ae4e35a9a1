//! What the server may ask of the client: sampling, elicitation, roots; and the notifications
//! it sends (progress, list changes, log messages).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_core::async_trait;
use agent_core::message::{ContentBlock as AgentBlock, Message};
use agent_core::model::{Model, ModelRequest, ToolChoice};
use agent_core::tool::ProgressReporter;
use rmcp::ClientHandler;
use rmcp::model::{
    ClientConfig, CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams,
    ElicitResult, ElicitationAction, ListRootsResult, LoggingLevel,
    LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken, Role, Root,
    SamplingMessage,
};
use rmcp::service::{NotificationContext, RequestContext, RoleClient};
use serde_json::Value;

/// Why a handler (sampling, elicitation, authorization) could not answer: a message for the
/// server (or the log), and the underlying error when there is one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    message: String,
    #[source]
    source: Option<agent_core::error::Cause>,
}

impl HandlerError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error with this message, caused by `source`.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(agent_core::error::Cause::new(source)),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// Answers a server's `sampling/createMessage` request (an LLM call made on the server's
/// behalf). [`ModelSampling`] routes it to an agent-core model, e.g. the agent's own.
///
/// Sampling is deprecated from protocol 2026-07-28 on (SEP-2577) but still used by 2025-11-25
/// servers. The capability is declared only when a handler is set.
#[async_trait]
pub trait SamplingHandler: Send + Sync + 'static {
    /// Produces the completion. An `Err` goes back to the server as a JSON-RPC error.
    async fn create_message(
        &self,
        request: CreateMessageRequestParams,
    ) -> Result<CreateMessageResult, HandlerError>;
}

/// Answers a server's `elicitation/create` request (it asks the user for input). Without a
/// handler the capability is not declared and servers cannot ask.
#[async_trait]
pub trait ElicitationHandler: Send + Sync + 'static {
    /// Accepts (with content), declines or cancels.
    async fn elicit(&self, request: ElicitRequestParams) -> Result<ElicitResult, HandlerError>;
}

/// Sampling through an agent-core [`Model`]: the request's text messages and system prompt
/// become one model call (no tools), bounded by a timeout (default 60 s). Non-text content is
/// described in text; `maxTokens` is left to the model's own setting.
pub struct ModelSampling {
    model: Arc<dyn Model>,
    timeout: Duration,
}

impl ModelSampling {
    /// Sampling through `model`.
    pub fn new(model: Arc<dyn Model>) -> Self {
        Self {
            model,
            timeout: Duration::from_secs(60),
        }
    }

    /// The bound on one model call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[async_trait]
impl SamplingHandler for ModelSampling {
    async fn create_message(
        &self,
        request: CreateMessageRequestParams,
    ) -> Result<CreateMessageResult, HandlerError> {
        let messages: Vec<Message> = request
            .messages
            .into_iter()
            .map(|m| {
                let text = m
                    .content
                    .into_vec()
                    .iter()
                    .map(|block| match block.as_text() {
                        Some(t) => t.text.clone(),
                        None => "[non-text content]".to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                match m.role {
                    Role::Assistant => Message::assistant(text),
                    _ => Message::user(text),
                }
            })
            .collect();
        if messages.is_empty() {
            return Err("sampling request without messages".into());
        }
        let choice = ToolChoice::default();
        // The server's bound on the sampled answer, and its temperature if it set one.
        let mut model_request = ModelRequest::new(messages.iter().collect(), &[], &choice)
            .max_tokens(request.max_tokens);
        model_request.system_prompt = request.system_prompt.as_deref();
        model_request.temperature = request.temperature;
        let response = tokio::time::timeout(self.timeout, self.model.complete(&model_request))
            .await
            .map_err(|_| {
                format!(
                    "the model did not answer within {} ms",
                    self.timeout.as_millis()
                )
            })?
            .map_err(|e| format!("the model failed: {e}"))?;
        let text: String = response
            .content
            .iter()
            .filter_map(|b| match b {
                AgentBlock::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        let model = response
            .response_model
            .unwrap_or_else(|| self.model.descriptor().model);
        Ok(
            CreateMessageResult::new(SamplingMessage::assistant_text(text), model)
                .with_stop_reason("endTurn"),
        )
    }
}

/// Elicitation answered with the defaults of the requested form's schema: accepts when every
/// required field has a default, declines otherwise, and declines URL-mode requests. For
/// headless services and tests; interactive clients implement [`ElicitationHandler`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptDefaults;

#[async_trait]
impl ElicitationHandler for AcceptDefaults {
    async fn elicit(&self, request: ElicitRequestParams) -> Result<ElicitResult, HandlerError> {
        let ElicitRequestParams::FormElicitationParams {
            requested_schema, ..
        } = request
        else {
            return Ok(ElicitResult::new(ElicitationAction::Decline));
        };
        let schema = serde_json::to_value(&requested_schema).map_err(|e| e.to_string())?;
        let mut content = serde_json::Map::new();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                if let Some(default) = prop.get("default") {
                    content.insert(name.clone(), default.clone());
                }
            }
        }
        let required = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect::<Vec<_>>())
            .unwrap_or_default();
        if required.iter().any(|r| !content.contains_key(*r)) {
            return Ok(ElicitResult::new(ElicitationAction::Decline));
        }
        Ok(ElicitResult::new(ElicitationAction::Accept).with_content(Value::Object(content)))
    }
}

/// The rmcp client handler behind every connection.
#[derive(Clone)]
pub(crate) struct Handler {
    pub(crate) server: Arc<str>,
    pub(crate) info: ClientConfig,
    pub(crate) sampling: Option<Arc<dyn SamplingHandler>>,
    pub(crate) elicitation: Option<Arc<dyn ElicitationHandler>>,
    pub(crate) roots: Arc<Vec<Root>>,
    /// Progress token of a call in flight -> where its progress goes.
    pub(crate) progress: Arc<Mutex<HashMap<ProgressToken, ProgressReporter>>>,
    /// Bumped on `notifications/tools/list_changed` and after a reconnect.
    pub(crate) tools_changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Handler {
    pub(crate) fn bump_tools(&self) {
        self.tools_changed.send_modify(|g| *g += 1);
    }
}

/// Removes a call's progress route when the call ends (or is dropped).
pub(crate) struct ProgressRoute {
    pub(crate) map: Arc<Mutex<HashMap<ProgressToken, ProgressReporter>>>,
    pub(crate) token: ProgressToken,
}

impl Drop for ProgressRoute {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.token);
    }
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, rmcp::ErrorData> {
        match &self.sampling {
            Some(h) => h
                .create_message(params)
                .await
                .map_err(|e| rmcp::ErrorData::internal_error(e.to_string(), None)),
            None => Err(rmcp::ErrorData::method_not_found::<
                rmcp::model::CreateMessageRequestMethod,
            >()),
        }
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, rmcp::ErrorData> {
        match &self.elicitation {
            Some(h) => h
                .elicit(request)
                .await
                .map_err(|e| rmcp::ErrorData::internal_error(e.to_string(), None)),
            None => Ok(ElicitResult::new(ElicitationAction::Decline)),
        }
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, rmcp::ErrorData> {
        Ok(ListRootsResult::new(self.roots.as_ref().clone()))
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let reporter = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&params.progress_token)
            .cloned();
        if let Some(reporter) = reporter {
            reporter.report(params.progress, params.total, params.message);
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        tracing::debug!(server = %self.server, "MCP server's tool list changed");
        self.bump_tools();
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let server = &self.server;
        let logger = params.logger.as_deref().unwrap_or("");
        let data = &params.data;
        match params.level {
            LoggingLevel::Debug => {
                tracing::debug!(target: "agent_mcp::server", %server, logger, %data)
            }
            LoggingLevel::Info | LoggingLevel::Notice => {
                tracing::info!(target: "agent_mcp::server", %server, logger, %data)
            }
            LoggingLevel::Warning => {
                tracing::warn!(target: "agent_mcp::server", %server, logger, %data)
            }
            _ => tracing::error!(target: "agent_mcp::server", %server, logger, %data),
        }
    }
}
