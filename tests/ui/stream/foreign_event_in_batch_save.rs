use varvedb::{aggregate, Event, Varve};

#[derive(Event)]
struct Deposited {
    cents: u64,
}

#[derive(Event)]
struct OrderPlaced {
    amount: u64,
}

#[derive(Default)]
struct Account;

#[aggregate]
impl Account {
    fn deposited(&mut self, _e: &ArchivedDeposited) {}
}

fn main() -> Result<(), varvedb::Error> {
    let db = Varve::open("unused")?;
    let (from, to) = (db.stream::<Account>(1u128), db.stream::<Account>(2u128));
    let (a, b) = (from.load()?, to.load()?);
    let mut tx = db.batch();
    tx.save(&from, &a, [Deposited { cents: 1 }])?;
    tx.save(&to, &b, [OrderPlaced { amount: 1 }])?;
    db.write(tx)?;
    Ok(())
}
