#[derive(varvedb::Event)]
struct Placed {
    amount: u64,
}

#[derive(Default)]
struct Order;

#[varvedb::aggregate(name = "", kind = "order", name = "a", name = "b")]
impl Order {
    fn placed(&mut self, _e: &ArchivedPlaced) {}
}

fn main() {}
