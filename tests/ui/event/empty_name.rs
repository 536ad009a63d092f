#[derive(varvedb::Event)]
#[event(name = "")]
struct OrderPlaced {
    amount: u64,
}

fn main() {}
