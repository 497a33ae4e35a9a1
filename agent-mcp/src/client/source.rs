//! [`McpToolSource`]: a server's tools that follow its `tools/list_changed` notifications.

use super::*;
use agent_core::async_trait;

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

impl McpToolSource {
    pub(super) fn new(
        client: McpClient,
        tools: Vec<Arc<dyn Tool>>,
        changes: tokio::sync::watch::Receiver<u64>,
    ) -> Self {
        Self {
            client,
            tools: RwLock::new(tools),
            generation: AtomicU64::new(0),
            changes: tokio::sync::Mutex::new(changes),
            retry_at: Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for McpToolSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpToolSource")
            .field("server", &self.client.name())
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ToolSource for McpToolSource {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn tools(&self) -> Vec<Arc<dyn Tool>> {
        self.tools.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn sync(&self) {
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
    }
}
