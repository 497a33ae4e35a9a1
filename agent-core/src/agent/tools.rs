//! The agent's tools: a fixed registry plus tool sources whose lists are re-read when they
//! change.

use std::sync::Arc;

use crate::tool::{Tool, ToolRegistry, ToolSource};

/// The agent's tools: a fixed registry, plus tool sources whose lists are re-read when their
/// generation changes.
pub(crate) struct AgentTools {
    fixed: Arc<ToolRegistry>,
    sources: Vec<Arc<dyn ToolSource>>,
    current: std::sync::RwLock<(Vec<u64>, Arc<ToolRegistry>)>,
}

impl AgentTools {
    /// Registers the fixed tools and the sources' first lists; a clash is an error.
    pub(super) fn new(
        fixed_tools: Vec<Arc<dyn Tool>>,
        sources: Vec<Arc<dyn ToolSource>>,
    ) -> Result<Self, crate::tool::RegistryError> {
        let mut fixed = ToolRegistry::new();
        for tool in fixed_tools {
            fixed.register(tool)?;
        }
        let fixed = Arc::new(fixed);
        let generations: Vec<u64> = sources.iter().map(|s| s.generation()).collect();
        let first = if sources.is_empty() {
            fixed.clone()
        } else {
            let mut first = ToolRegistry::new();
            for tool in fixed
                .tools()
                .cloned()
                .chain(sources.iter().flat_map(|s| s.tools()))
            {
                first.register(tool)?;
            }
            Arc::new(first)
        };
        Ok(Self {
            fixed,
            sources,
            current: std::sync::RwLock::new((generations, first)),
        })
    }

    /// The registry for a model call: the sources brought up to date first (concurrently).
    pub(crate) async fn refreshed(&self) -> Arc<ToolRegistry> {
        if !self.sources.is_empty() {
            futures::future::join_all(self.sources.iter().map(|s| s.sync())).await;
        }
        self.current()
    }

    /// The registry as of the sources' last sync.
    pub(crate) fn current(&self) -> Arc<ToolRegistry> {
        if self.sources.is_empty() {
            return self.fixed.clone();
        }
        let generations: Vec<u64> = self.sources.iter().map(|s| s.generation()).collect();
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if current.0 == generations {
                return current.1.clone();
            }
        }
        let mut registry = ToolRegistry::new();
        for tool in self
            .fixed
            .tools()
            .cloned()
            .chain(self.sources.iter().flat_map(|s| s.tools()))
        {
            if let Err(e) = registry.register(tool) {
                tracing::warn!(error = %e, "a changed tool list holds a tool that cannot be registered; left out");
            }
        }
        let registry = Arc::new(registry);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (generations, registry.clone());
        registry
    }
}
