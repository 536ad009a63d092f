#[derive(Default)]
struct Order;

#[varvedb::aggregate]
impl Order {
    fn placed(&mut self) {}
}

fn main() {}
