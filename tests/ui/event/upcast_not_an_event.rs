use varvedb::Event;

struct Legacy {
    amount_cents: u64,
}

#[derive(Event)]
#[event(name = "order.placed", version = 2, upcast = Legacy)]
struct OrderPlaced {
    amount_cents: u64,
}

fn main() {}
