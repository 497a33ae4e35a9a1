//! Support code for the `#[tool]` macro's expansion. Not a public API: the macro is.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
pub use serde_json::{Map, Value};

use super::{ToolError, ToolOutput};

/// A type that can be a `#[tool]` parameter: deserialisable from JSON and with a JSON Schema.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a #[tool] parameter: it must implement `serde::Deserialize` and `schemars::JsonSchema`",
    label = "not usable as a tool parameter",
    note = "derive them: #[derive(serde::Deserialize, schemars::JsonSchema)]; borrowed types such as `&str` cannot be deserialised into, use `String`"
)]
pub trait ToolArgument: DeserializeOwned + schemars::JsonSchema {}

impl<T: DeserializeOwned + schemars::JsonSchema> ToolArgument for T {}

/// The schema generator: JSON Schema 2020-12, subschemas inlined, no `$schema`.
pub fn generator() -> schemars::SchemaGenerator {
    schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator()
}

/// Adds one parameter's schema to the object schema being built.
pub fn property<T: ToolArgument>(
    generator: &mut schemars::SchemaGenerator,
    properties: &mut Map<String, Value>,
    required: &mut Vec<Value>,
    name: &str,
    description: Option<&str>,
    is_required: bool,
) {
    let mut schema = Value::from(generator.subschema_for::<T>());
    strip_noise(&mut schema);
    if let (Value::Object(o), Some(d)) = (&mut schema, description) {
        o.insert("description".into(), Value::from(d));
    }
    properties.insert(name.to_owned(), schema);
    if is_required {
        required.push(Value::from(name));
    }
}

/// The input schema: an object with every property, `required` always present and no other
/// properties allowed.
pub fn object_schema(properties: Map<String, Value>, required: Vec<Value>) -> Value {
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// Makes a generated schema acceptable to strict function calling: removes `title`, `$schema`
/// and schemars' non-standard numeric `format`s (`uint8`, `double`, ...), and closes nested
/// objects with `additionalProperties: false`; in the schema and all its subschemas, never in
/// data such as `enum` values, nor in property names.
pub(crate) fn strip_noise(schema: &mut Value) {
    match schema {
        Value::Object(o) => {
            o.remove("title");
            o.remove("$schema");
            let numeric = |t: &Value| matches!(t.as_str(), Some("integer" | "number"));
            let is_numeric = o
                .get("type")
                .is_some_and(|t| numeric(t) || t.as_array().is_some_and(|a| a.iter().any(numeric)));
            if is_numeric {
                o.remove("format");
            }
            if o.contains_key("properties") && !o.contains_key("additionalProperties") {
                o.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (key, value) in o.iter_mut() {
                match key.as_str() {
                    "properties" | "$defs" | "definitions" | "patternProperties" => {
                        if let Value::Object(children) = value {
                            children.values_mut().for_each(strip_noise);
                        }
                    }
                    "enum" | "const" | "default" | "examples" => {}
                    _ => strip_noise(value),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_noise),
        _ => {}
    }
}

/// The input as an argument map.
pub fn arguments(input: Value) -> Result<Map<String, Value>, ToolError> {
    match input {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(ToolError::new(format!(
            "the input must be a JSON object, got {other}"
        ))),
    }
}

/// One argument, deserialised; a missing one is `null` (which an `Option` accepts).
pub fn argument<T: ToolArgument>(
    args: &mut Map<String, Value>,
    name: &str,
) -> Result<T, ToolError> {
    let value = args.remove(name).unwrap_or(Value::Null);
    serde_json::from_value(value)
        .map_err(|e| ToolError::new(format!("invalid value for `{name}`: {e}")))
}

/// A return value as tool output: a string becomes text, `()` becomes "ok", anything else JSON.
pub fn output<T: Serialize + ?Sized>(value: &T) -> Result<ToolOutput, ToolError> {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => Ok(ToolOutput::text(s)),
        Ok(Value::Null) => Ok(ToolOutput::text("ok")),
        Ok(v) => Ok(ToolOutput::json(v)),
        Err(e) => Err(ToolError::new(format!(
            "cannot serialise the tool's result: {e}"
        ))),
    }
}

/// Runs a synchronous tool on the blocking pool, turning a panic into an error.
pub async fn blocking<F, R>(f: F) -> Result<R, ToolError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        if e.is_panic() {
            let panic = e.into_panic();
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            ToolError::new(format!("the tool failed unexpectedly: {what}"))
        } else {
            ToolError::new("the tool was cancelled")
        }
    })
}
