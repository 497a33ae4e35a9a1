use agent_core::tool;

struct NotSchema {
    x: u32,
}

/// Uses a parameter type without JsonSchema.
#[tool]
fn uses_it(value: NotSchema) -> String {
    value.x.to_string()
}

fn main() {}
