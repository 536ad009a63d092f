use varvedb::{aggregate, Event, Varve};

#[derive(Event)]
struct Deposited {
    cents: u64,
}

#[derive(Default)]
struct Account {
    balance: u64,
}

#[aggregate]
impl Account {
    fn deposited(&mut self, e: &ArchivedDeposited) {
        self.balance += e.cents.to_native();
    }
}

fn main() -> Result<(), varvedb::Error> {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path())?;
    db.stream::<Account>(1u128).snapshot()?;
    Ok(())
}
