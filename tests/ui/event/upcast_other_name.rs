use varvedb::{Event, Upcast};

#[derive(Event)]
#[event(name = "order.created", version = 1)]
struct OrderCreated {
    amount_cents: u64,
}

#[derive(Event)]
#[event(name = "order.placed", version = 2, upcast = OrderCreated)]
struct OrderPlaced {
    amount_cents: u64,
}

impl Upcast<OrderCreated> for OrderPlaced {
    fn upcast(old: &ArchivedOrderCreated) -> Self {
        OrderPlaced { amount_cents: old.amount_cents.to_native() }
    }
}

fn main() {}
