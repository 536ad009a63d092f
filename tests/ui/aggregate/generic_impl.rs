#[derive(varvedb::Event)]
struct Placed {
    amount: u64,
}

#[derive(Default)]
struct Order<T>(T);

#[varvedb::aggregate]
impl<T> Order<T> {
    fn placed(&mut self, _e: &ArchivedPlaced) {}
}

fn main() {}
