// The apply function names the event itself instead of its archived form.
#[derive(varvedb::Event)]
struct Placed {
    amount: u64,
}

#[derive(Default)]
struct Order;

#[varvedb::aggregate]
impl Order {
    fn placed(&mut self, _e: &Placed) {}
}

fn main() {}
