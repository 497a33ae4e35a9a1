//! `#[tool]` with agent-core renamed to `runtime` in Cargo.toml.

use runtime::tool;

/// Greets someone.
#[tool]
pub fn greet(
    /// Who to greet.
    name: String,
) -> String {
    format!("Hello, {name}!")
}
