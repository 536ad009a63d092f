use varvedb::Event;

#[derive(Event)]
#[event(name = "order.placed", version = 1)]
struct OrderPlacedV1 {
    amount_cents: u64,
}

#[derive(Event)]
#[event(name = "order.placed", version = 2, upcast = OrderPlacedV1)]
struct OrderPlaced {
    amount_cents: u64,
    currency: String,
}

fn main() {}
