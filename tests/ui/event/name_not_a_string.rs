#[derive(varvedb::Event)]
#[event(name = order_placed)]
struct OrderPlaced {
    amount: u64,
}

fn main() {}
