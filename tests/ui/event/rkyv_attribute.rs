#[derive(varvedb::Event)]
#[rkyv(derive(Debug))]
struct OrderPlaced {
    amount: u64,
}

fn main() {}
