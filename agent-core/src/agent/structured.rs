//! Structured output: an invocation that ends with a typed value instead of (beside) text.
//!
//! As Strands does it, the shape is offered to the model as a tool (named after the type) that
//! the model is made to call once it has answered: a forced tool choice on Bedrock and on
//! OpenAI-compatible servers with native tool calling, and on those servers the call goes as a
//! JSON-schema `response_format` (vLLM's guided decoding, llama.cpp's grammar), so the reply is
//! valid JSON by construction. The value is checked against the schema; a reply that does not
//! fit goes back to the model with what is wrong, within a bounded number of attempts, and then
//! ends the run with [`AgentError::StructuredOutput`](crate::AgentError::StructuredOutput),
//! which carries the raw reply.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::tool::ToolSpec;

/// The note sent (as a user message, for this call only) when the model is asked for the
/// structured form of its answer.
pub const STRUCTURED_OUTPUT_NOTE: &str = "Now record your answer with the `{name}` tool, filling \
every required field from the conversation above. Call only that tool.";

/// The shape an invocation's result must take: a JSON Schema with a name, checked on every
/// reply. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OutputSchema {
    inner: Arc<Inner>,
}

/// A check beyond the schema: that the value deserialises into the Rust type (a schema cannot
/// say everything serde checks, such as an integer's range).
#[derive(Clone)]
struct TypedCheck(Arc<CheckFn>);

type CheckFn = dyn Fn(&Value) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for TypedCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TypedCheck")
    }
}

#[derive(Debug, Clone)]
struct Inner {
    tool: ToolSpec,
    validator: jsonschema::Validator,
    typed: Option<TypedCheck>,
    /// Whether the type's schema was not an object and sits under `value`.
    wrapped: bool,
    max_attempts: u32,
    note: String,
}

/// A name a tool may have (`^[a-zA-Z0-9_-]{1,64}$`) made from a type's title.
fn tool_name(title: Option<&str>) -> String {
    let name: String = title
        .unwrap_or("structured_output")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(64)
        .collect();
    if name.is_empty() {
        "structured_output".into()
    } else {
        name
    }
}

impl OutputSchema {
    /// The schema of `T`, named after the type (its `title`), described by its doc comment;
    /// a value must also deserialise into a `T`.
    pub fn of<T: schemars::JsonSchema + serde::de::DeserializeOwned>() -> Self {
        let mut schema = Self::schema_of::<T>();
        Arc::make_mut(&mut schema.inner).typed = Some(TypedCheck(Arc::new(|value: &Value| {
            T::deserialize(value).map(|_| ()).map_err(|e| e.to_string())
        })));
        schema
    }

    fn schema_of<T: schemars::JsonSchema>() -> Self {
        let schema = Value::from(crate::tool::__macro::generator().root_schema_for::<T>());
        let name = tool_name(schema.get("title").and_then(Value::as_str));
        let description = schema
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut schema = schema;
        crate::tool::__macro::strip_noise(&mut schema);
        if let Value::Object(o) = &mut schema {
            o.remove("description");
        }
        // A schema that cannot be built is a bug in the type's JsonSchema impl, not input.
        match Self::build(name, description, schema) {
            Ok(s) => s,
            Err(reason) => Self::build(
                "structured_output".into(),
                Some(format!("(the schema of this type is invalid: {reason})")),
                json!({"type": "object"}),
            )
            .unwrap_or_else(|_| unreachable!("an empty object schema is valid")),
        }
    }

    /// A schema given as JSON, with a tool name (`^[a-zA-Z0-9_-]{1,64}$`) and what it is for.
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        schema: Value,
    ) -> Result<Self, String> {
        let name = name.into();
        if tool_name(Some(&name)) != name {
            return Err(format!(
                "`{name}` is not a tool name: use 1 to 64 of a-z, A-Z, 0-9, _ and -"
            ));
        }
        Self::build(name, Some(description.into()), schema)
    }

    fn build(name: String, description: Option<String>, schema: Value) -> Result<Self, String> {
        let is_object = schema.get("type").and_then(Value::as_str) == Some("object");
        let (input_schema, wrapped) = if is_object {
            (schema, false)
        } else {
            (
                json!({"type": "object", "properties": {"value": schema}, "required": ["value"], "additionalProperties": false}),
                true,
            )
        };
        let validator = jsonschema::validator_for(&input_schema).map_err(|e| e.to_string())?;
        let description = description.unwrap_or_else(|| {
            format!(
                "Records the final answer as a `{name}`. Call it once, with every field filled."
            )
        });
        let note = STRUCTURED_OUTPUT_NOTE.replace("{name}", &name);
        Ok(Self {
            inner: Arc::new(Inner {
                tool: ToolSpec {
                    name,
                    description,
                    input_schema,
                },
                validator,
                typed: None,
                wrapped,
                max_attempts: 3,
                note,
            }),
        })
    }

    /// How many replies the model gets to produce a valid value (default 3).
    pub fn max_attempts(mut self, n: u32) -> Self {
        Arc::make_mut(&mut self.inner).max_attempts = n.max(1);
        self
    }

    /// The tool the model is made to call.
    pub fn tool(&self) -> &ToolSpec {
        &self.inner.tool
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    pub(crate) fn note(&self) -> &str {
        &self.inner.note
    }

    /// The value in a tool call's input, or what is wrong with it (for the model to mend).
    pub(crate) fn check(&self, input: &Value) -> Result<Value, String> {
        let problems: Vec<String> = self
            .inner
            .validator
            .iter_errors(input)
            .take(10)
            .map(|e| {
                // The error quotes the offending value, which may be the whole reply.
                let text = e.to_string();
                let text = crate::model::embed::cut(&text, 200);
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    text.to_owned()
                } else {
                    format!("at {at}: {text}")
                }
            })
            .collect();
        if !problems.is_empty() {
            return Err(format!(
                "The value does not fit the `{}` schema: {}. Call `{}` again with a corrected value.",
                self.inner.tool.name,
                problems.join("; "),
                self.inner.tool.name
            ));
        }
        let value = if self.inner.wrapped {
            input.get("value").cloned().unwrap_or(Value::Null)
        } else {
            input.clone()
        };
        if let Some(TypedCheck(check)) = &self.inner.typed
            && let Err(e) = check(&value)
        {
            return Err(format!(
                "The value does not fit the `{}` type: {e}. Call `{}` again with a corrected value.",
                self.inner.tool.name, self.inner.tool.name
            ));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trip the user asked about.
    #[derive(schemars::JsonSchema, serde::Deserialize)]
    #[allow(dead_code)]
    struct Trip {
        city: String,
        nights: u32,
        flights: Vec<Flight>,
    }

    #[derive(schemars::JsonSchema, serde::Deserialize)]
    #[allow(dead_code)]
    struct Flight {
        number: String,
        price_eur: f64,
    }

    #[test]
    fn a_type_becomes_a_named_tool_with_its_nested_types_inlined() {
        let schema = OutputSchema::of::<Trip>();
        let tool = schema.tool();
        assert_eq!(tool.name, "Trip");
        assert_eq!(tool.description, "A trip the user asked about.");
        assert!(!tool.input_schema.to_string().contains("$ref"));
        assert_eq!(
            tool.input_schema["properties"]["flights"]["items"]["additionalProperties"],
            false
        );
        let ok = json!({"city": "Lisbon", "nights": 2, "flights": [{"number": "TA999", "price_eur": 116.0}]});
        assert_eq!(schema.check(&ok).unwrap(), ok);
        let bad = json!({"city": "Lisbon", "nights": -1, "flights": [{"number": 5}]});
        let err = schema.check(&bad).unwrap_err();
        assert!(
            err.contains("/nights") && err.contains("/flights/0"),
            "{err}"
        );
    }

    #[test]
    fn a_non_object_type_is_wrapped_and_unwrapped() {
        let schema = OutputSchema::of::<Vec<String>>();
        // Beyond the schema: the value must deserialise (`u8` has a range no schema states).
        let small = OutputSchema::of::<Vec<u8>>();
        let err = small.check(&json!({"value": [300]})).unwrap_err();
        assert!(
            err.contains("does not fit the `") && err.contains("300"),
            "{err}"
        );
        assert_eq!(schema.tool().input_schema["required"], json!(["value"]));
        assert_eq!(
            schema.check(&json!({"value": ["a", "b"]})).unwrap(),
            json!(["a", "b"])
        );
        assert!(OutputSchema::new("bad name!", "x", json!({"type": "object"})).is_err());
    }
}
