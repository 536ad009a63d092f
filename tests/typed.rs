//! The typed layer: derives, aggregates, `Stream<A>`, load/save, commands.

use varvedb::{Event, ExpectedVersion, Varve, aggregate};

#[derive(Event, Debug)]
struct OrderPlaced {
    customer: String,
    amount_cents: u64,
    lines: Vec<String>,
}

#[derive(Event, Debug)]
#[event(name = "order.shipped", version = 1)]
struct OrderShipped {
    carrier: String,
}

#[derive(Default)]
struct Order {
    total: u64,
    shipped: bool,
}

#[aggregate]
impl Order {
    fn placed(&mut self, e: &ArchivedOrderPlaced) {
        self.total += e.amount_cents.to_native();
    }
    fn shipped(&mut self, _e: &ArchivedOrderShipped) {
        self.shipped = true;
    }
}

/// The program from the issue, as written.
#[test]
fn the_users_view_compiles_and_works_as_written() -> Result<(), varvedb::Error> {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path())?;
    let id = uuid::Uuid::new_v4(); // u128 works too
    let orders = db.stream::<Order>(id); // varvedb::Stream<Order>
    orders.append(
        ExpectedVersion::NoStream,
        OrderPlaced { customer: "ana".into(), amount_cents: 1250, lines: vec![] },
    )?;
    let order = orders.load()?; // folds archived events in place
    assert_eq!((order.state().total, order.version()), (1250, 1));
    orders.save(&order, [OrderShipped { carrier: "dhl".into() }])?; // expects version 1
    assert!(matches!(
        orders.append(ExpectedVersion::Exact(1), OrderShipped { carrier: "x".into() }),
        Err(varvedb::Error::ConcurrencyConflict { .. })
    ));
    let order = orders.load()?;
    assert!(order.state().shipped);
    assert_eq!(order.version(), 2);
    Ok(())
}
