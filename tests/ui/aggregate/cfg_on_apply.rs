#[derive(varvedb::Event)]
struct Placed {
    amount: u64,
}

#[derive(Default)]
struct Order;

#[varvedb::aggregate]
impl Order {
    #[cfg(feature = "never")]
    fn placed(&mut self, _e: &ArchivedPlaced) {}
}

fn main() {}
