#[derive(varvedb::Event)]
#[event(version = 5_000_000_000)]
struct OrderPlaced {
    amount: u64,
}

fn main() {}
