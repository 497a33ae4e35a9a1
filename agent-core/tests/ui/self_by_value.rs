use agent_core::tool;

struct Store;

#[tool]
impl Store {
    /// Consumes the store.
    #[tool]
    fn consume(self) -> String {
        String::new()
    }
}

fn main() {}
