//! The `#[tool]` procedural macro, re-exported by `agent-core` as `agent_core::tool`.
//!
//! The macro itself is the subject of its own issue; until it lands this crate is a documented
//! skeleton so that the dependency direction `agent-tools` <- `agent-core` is fixed from the start.
//! Tools can already be written by implementing `agent_core::tool::Tool` or with
//! `agent_core::tool::FnTool`.
