use varvedb::{aggregate, Event, Varve};

#[derive(Event)]
struct OrderPlaced {
    amount: u64,
}

#[derive(Event)]
struct UserRenamed {
    name: String,
}

#[derive(Default)]
struct Order;

#[aggregate]
impl Order {
    fn placed(&mut self, _e: &ArchivedOrderPlaced) {}
}

fn main() -> Result<(), varvedb::Error> {
    let db = Varve::open("unused")?;
    let orders = db.stream::<Order>(1u128);
    let loaded = orders.load()?;
    orders.save(&loaded, [UserRenamed { name: "x".into() }])?;
    Ok(())
}
