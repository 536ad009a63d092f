#[varvedb::aggregate]
struct Order {
    total: u64,
}

fn main() {}
