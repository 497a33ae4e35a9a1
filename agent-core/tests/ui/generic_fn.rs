use agent_core::tool;

/// Generic.
#[tool]
fn generic<T: ToString>(value: String) -> String {
    value
}

fn main() {}
