// The program from the typed-layer issue, compiled as a user would write it.
use varvedb::{aggregate, Event, ExpectedVersion, Varve};

#[derive(Event, Debug)]
struct OrderPlaced { customer: String, amount_cents: u64, lines: Vec<String> }

#[derive(Event, Debug)]
#[event(name = "order.shipped", version = 1)]
struct OrderShipped { carrier: String }

#[derive(Default)]
struct Order { total: u64, shipped: bool }

#[aggregate]
impl Order {
    fn placed(&mut self, e: &ArchivedOrderPlaced) { self.total += e.amount_cents.to_native(); }
    fn shipped(&mut self, _e: &ArchivedOrderShipped) { self.shipped = true; }
}

fn main() -> Result<(), varvedb::Error> {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path())?;
    let id = uuid::Uuid::new_v4();
    let orders = db.stream::<Order>(id);
    orders.append(ExpectedVersion::NoStream, OrderPlaced { customer: "ana".into(), amount_cents: 1250, lines: vec![] })?;
    let order = orders.load()?;
    assert_eq!((order.state().total, order.version()), (1250, 1));
    orders.save(&order, [OrderShipped { carrier: "dhl".into() }])?;
    assert!(matches!(orders.append(ExpectedVersion::Exact(1), OrderShipped { carrier: "x".into() }),
                     Err(varvedb::Error::ConcurrencyConflict { .. })));
    assert!(orders.load()?.state().shipped);
    Ok(())
}
