#[derive(varvedb::Event)]
#[event(version = 0)]
struct OrderPlaced {
    amount: u64,
}

fn main() {}
