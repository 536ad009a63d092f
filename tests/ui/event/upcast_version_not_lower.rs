use varvedb::{Event, Upcast};

#[derive(Event)]
#[event(name = "order.placed", version = 3)]
struct OrderPlacedV3 {
    amount_cents: u64,
}

#[derive(Event)]
#[event(name = "order.placed", version = 2, upcast = OrderPlacedV3)]
struct OrderPlaced {
    amount_cents: u64,
}

impl Upcast<OrderPlacedV3> for OrderPlaced {
    fn upcast(old: &ArchivedOrderPlacedV3) -> Self {
        OrderPlaced { amount_cents: old.amount_cents.to_native() }
    }
}

fn main() {}
