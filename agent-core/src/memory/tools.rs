//! The `remember` and `recall` tools.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{MemoryRecord, MemorySource, MemoryStore, is_instruction};
use async_trait::async_trait;

use crate::tool::{Tool, ToolContext, ToolError, ToolOutput, ToolSpec};

/// The `remember` and `recall` tools over a store; they act for the invocation's actor.
pub fn memory_tools(store: Arc<dyn MemoryStore>) -> Vec<Arc<dyn Tool>> {
    vec![Arc::new(Remember(store.clone())), Arc::new(Recall(store))]
}

struct Remember(Arc<dyn MemoryStore>);
struct Recall(Arc<dyn MemoryStore>);

fn actor(ctx: &ToolContext) -> Result<String, ToolError> {
    ctx.actor_id.as_deref().map(str::to_owned).ok_or_else(|| {
        ToolError::new("memory needs to know the user: this invocation has no actor id")
    })
}

#[async_trait]
impl Tool for Remember {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "remember".into(),
            description: "Stores a fact or preference about the user for future conversations."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "content": {"type": "string", "description": "One short sentence about the user."},
                    "namespace": {"type": "string", "enum": ["facts", "preferences"], "description": "Kind of memory (default facts)."}
                },
                "required": ["content"],
                "additionalProperties": false
            }),
        }
    }

    async fn call(&self, input: Value, ctx: ToolContext) -> Result<ToolOutput, ToolError> {
        let actor = actor(&ctx)?;
        let content = input["content"].as_str().unwrap_or_default();
        let namespace = input["namespace"].as_str().unwrap_or("facts");
        if is_instruction(content) {
            return Err(ToolError::new(
                "not remembered: memories are facts and preferences about the user, not \
                 instructions to the assistant",
            ));
        }
        let record = MemoryRecord::new(actor, namespace, content).with_source(MemorySource {
            session_id: ctx.session_id.to_string(),
            message: None,
        });
        self.0.put(&record).await.map_err(ToolError::new)?;
        Ok(ToolOutput::text(format!("remembered: {content}")))
    }
}

#[async_trait]
impl Tool for Recall {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "recall".into(),
            description: "Searches what is remembered about the user.".into(),
            input_schema: json!({
                "type": "object",
                "properties": {"query": {"type": "string", "description": "What to look for."}},
                "required": ["query"],
                "additionalProperties": false
            }),
        }
    }

    async fn call(&self, input: Value, ctx: ToolContext) -> Result<ToolOutput, ToolError> {
        let actor = actor(&ctx)?;
        let query = input["query"].as_str().unwrap_or_default();
        let found = self
            .0
            .search(&actor, None, query, 5)
            .await
            .map_err(ToolError::new)?;
        let items: Vec<Value> = found
            .iter()
            .map(|s| json!({"namespace": s.record.namespace, "content": s.record.content}))
            .collect();
        Ok(ToolOutput::json(json!({"memories": items})))
    }
}
