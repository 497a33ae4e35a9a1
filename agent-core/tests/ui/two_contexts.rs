use agent_core::tool;
use agent_core::tool::ToolContext;

/// Two contexts.
#[tool]
fn two(a: ToolContext, b: &ToolContext) -> String {
    format!("{} {}", a.session_id, b.session_id)
}

fn main() {}
