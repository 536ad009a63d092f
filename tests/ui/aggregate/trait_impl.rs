#[derive(Default)]
struct Order;

#[varvedb::aggregate]
impl Clone for Order {
    fn clone(&self) -> Self {
        Order
    }
}

fn main() {}
