//! # agent-core
//!
//! The runtime of an AI agent service: messages in the Bedrock Converse shape, an agent loop
//! that is an explicit state machine with limits, retries and cancellation, model providers
//! (OpenAI-compatible: vLLM, OpenAI, Ollama, llama.cpp), tools and their executor, conversation
//! management, and the session-store trait.
//!
//! ```no_run
//! use agent_core::prelude::*;
//! use serde_json::json;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let weather = FnTool::new(
//!     "get_weather",
//!     "Current weather for a city.",
//!     json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
//!     |input, _ctx| async move { Ok(ToolOutput::text(format!("Sunny in {}", input["city"]))) },
//! );
//! let agent = Agent::builder()
//!     .name("travel")
//!     .model(OpenAiCompatible::from_env()?) // OPENAI_BASE_URL, OPENAI_MODEL, OPENAI_API_KEY
//!     .system_prompt("You plan trips.")
//!     .tool(weather)
//!     .limits(Limits::default().max_turns(20))
//!     .build()?;
//! let answer = agent.session("alice-trip-7").invoke("A weekend in Lisbon?").await?;
//! println!("{}", answer.text());
//! # Ok(()) }
//! ```

extern crate self as agent_core;

pub mod agent;
pub mod conversation;
pub mod error;
#[cfg(feature = "eval")]
pub mod eval;
pub mod event;
pub mod history;
pub mod hooks;
pub mod interrupt;
pub mod memory;
pub mod message;
pub mod model;
pub mod multiagent;
mod outcome;
pub mod retry;
pub mod session;
pub mod telemetry;
pub mod tool;

pub use agent::{
    Agent, AgentBuilder, AgentResult, AgentStream, FINAL_ANSWER_NOTE, Limits, LoopGuard,
    OutputSchema, Prompt, REPEATED_CALL_NOTE, ResumePolicy, SAME_RESULT_NOTE,
    STRUCTURED_OUTPUT_NOTE, Session, StopReason, TurnMetrics,
};
pub use error::{AgentError, BuildError};
pub use event::AgentEvent;
pub use tokio_util::sync::CancellationToken;

/// The attribute every async trait of the workspace is written with ([`Tool`](tool::Tool),
/// [`ToolSource`](tool::ToolSource), [`SessionStore`](session::SessionStore),
/// [`MemoryStore`](memory::MemoryStore), [`Embedder`](model::embed::Embedder),
/// [`Hook`](hooks::Hook), [`ConversationManager`](conversation::ConversationManager), the MCP
/// handlers):
/// put `#[async_trait]` on your `impl` and write `async fn`. Re-exported so an implementation
/// needs no dependency of its own.
pub use async_trait::async_trait;

#[doc = include_str!("tool_macro.md")]
pub use agent_tools::tool;

/// `schemars`, for `#[derive(JsonSchema)]` on tool parameter types.
pub use schemars;

/// The names most programs need.
pub mod prelude {
    pub use crate::agent::{Agent, AgentResult, Limits, LoopGuard, OutputSchema, StopReason};
    pub use crate::conversation::{NullConversationManager, SlidingWindow, Summarizing};
    pub use crate::error::{AgentError, BuildError};
    pub use crate::event::AgentEvent;
    pub use crate::message::{ContentBlock, Message, Role};
    #[cfg(feature = "openai")]
    pub use crate::model::openai::OpenAiCompatible;
    pub use crate::model::{Model, ToolChoice};
    pub use crate::retry::RetryPolicy;
    pub use crate::tool::{FnTool, Tool, ToolContext, ToolError, ToolOutput};
    pub use agent_tools::tool;
    pub use tokio_util::sync::CancellationToken;
}
