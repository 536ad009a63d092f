#[derive(varvedb::Event)]
struct Placed {
    amount: u64,
}

#[derive(Default)]
struct Order;

#[varvedb::aggregate(name = "")]
impl Order {
    fn placed(&mut self, _e: &ArchivedPlaced) {}
}

fn main() {}
