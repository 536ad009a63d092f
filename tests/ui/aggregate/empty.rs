#[derive(Default)]
struct Order;

#[varvedb::aggregate]
impl Order {}

fn main() {}
