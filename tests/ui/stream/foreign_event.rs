use varvedb::{aggregate, Event, ExpectedVersion, Varve};

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
    orders.append(ExpectedVersion::Auto, UserRenamed { name: "x".into() })?;
    Ok(())
}
