use agent_core::tool;

struct Store {
    n: u32,
}

#[tool]
impl Store {
    /// Mutates the store.
    #[tool]
    fn bump(&mut self) -> u32 {
        self.n += 1;
        self.n
    }
}

fn main() {}
