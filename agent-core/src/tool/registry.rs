use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::{Tool, ToolSpec};

/// Why a tool cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The name does not match `^[a-zA-Z0-9_-]{1,64}$`.
    #[error("invalid tool name `{0}`: use 1 to 64 ASCII letters, digits, `_` or `-`")]
    InvalidName(String),
    /// Another tool has this name (or one differing only by `-`/`_`).
    #[error("duplicate tool name `{name}` (clashes with `{existing}`)")]
    Duplicate {
        /// The refused name.
        name: String,
        /// The registered tool it clashes with.
        existing: String,
    },
    /// The input schema is not a valid JSON Schema for an object.
    #[error("tool `{name}` has an invalid input schema: {reason}")]
    InvalidSchema {
        /// The tool.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

pub(crate) struct RegisteredTool {
    pub(crate) tool: Arc<dyn Tool>,
    pub(crate) validator: jsonschema::Validator,
}

/// The tools of an agent, by name, with their compiled input schemas.
#[derive(Default)]
pub struct ToolRegistry {
    tools: Vec<RegisteredTool>,
    specs: Vec<ToolSpec>,
    by_name: HashMap<String, usize>,
    normalised: HashMap<String, usize>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRegistry")
            .field("tools", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Whether `name` is a valid tool name for every provider: `^[a-zA-Z0-9_-]{1,64}$`.
pub fn is_valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a tool, validating its name and compiling its schema.
    pub fn register(&mut self, tool: Arc<dyn Tool>) -> Result<(), RegistryError> {
        let spec = tool.spec();
        if !is_valid_tool_name(&spec.name) {
            return Err(RegistryError::InvalidName(spec.name));
        }
        let key = spec.name.replace('-', "_");
        if let Some(&i) = self.normalised.get(&key) {
            return Err(RegistryError::Duplicate {
                name: spec.name,
                existing: self.specs[i].name.clone(),
            });
        }
        if spec.input_schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(RegistryError::InvalidSchema {
                name: spec.name,
                reason: "the input schema must have \"type\": \"object\"".into(),
            });
        }
        let validator = jsonschema::validator_for(&spec.input_schema).map_err(|e| {
            RegistryError::InvalidSchema {
                name: spec.name.clone(),
                reason: e.to_string(),
            }
        })?;
        let index = self.tools.len();
        self.by_name.insert(spec.name.clone(), index);
        self.normalised.insert(key, index);
        self.specs.push(spec);
        self.tools.push(RegisteredTool { tool, validator });
        Ok(())
    }

    /// The specs of all tools, in registration order.
    pub fn specs(&self) -> &[ToolSpec] {
        &self.specs
    }

    /// Number of tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// Whether there are no tools.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// A tool's spec by name.
    pub fn spec(&self, name: &str) -> Option<&ToolSpec> {
        self.by_name.get(name).map(|&i| &self.specs[i])
    }

    /// The tool registered under `name` (the name the model calls it by), if any.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.entry(name).map(|e| &e.tool)
    }

    /// The registered tools, in registration order.
    pub(crate) fn tools(&self) -> impl Iterator<Item = &Arc<dyn Tool>> {
        self.tools.iter().map(|e| &e.tool)
    }

    pub(crate) fn entry(&self, name: &str) -> Option<&RegisteredTool> {
        self.by_name.get(name).map(|&i| &self.tools[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::{FnTool, ToolOutput};
    use serde_json::json;

    fn tool(name: &str, schema: Value) -> Arc<dyn Tool> {
        Arc::new(FnTool::new(name, "d", schema, |_, _| async {
            Ok(ToolOutput::text("x"))
        }))
    }

    #[test]
    fn validates_names_and_refuses_duplicates() {
        let mut r = ToolRegistry::new();
        let obj = json!({"type": "object"});
        r.register(tool("get_weather", obj.clone())).expect("valid");
        assert_eq!(
            r.register(tool("get-weather", obj.clone())),
            Err(RegistryError::Duplicate {
                name: "get-weather".into(),
                existing: "get_weather".into()
            })
        );
        assert!(matches!(
            r.register(tool("bad name", obj.clone())),
            Err(RegistryError::InvalidName(_))
        ));
        assert!(matches!(
            r.register(tool("", obj.clone())),
            Err(RegistryError::InvalidName(_))
        ));
        assert!(matches!(
            r.register(tool(&"a".repeat(65), obj)),
            Err(RegistryError::InvalidName(_))
        ));
        assert!(matches!(
            r.register(tool("s", json!({"type": "string"}))),
            Err(RegistryError::InvalidSchema { .. })
        ));
        assert!(matches!(
            r.register(tool(
                "t",
                json!({"type": "object", "properties": {"a": {"type": 5}}})
            )),
            Err(RegistryError::InvalidSchema { .. })
        ));
        assert_eq!(r.len(), 1);
        assert_eq!(r.specs()[0].name, "get_weather");
    }
}
