#[derive(varvedb::Event)]
#[event(name = "a", name = "b")]
struct OrderPlaced {
    amount: u64,
}

fn main() {}
