#[derive(varvedb::Event)]
#[event(nme = "order.placed")]
struct OrderPlaced {
    amount: u64,
}

fn main() {}
