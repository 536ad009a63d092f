use varvedb::{aggregate, Event, ExecuteError, Varve};

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

fn main() {
    let db = Varve::open("unused").unwrap();
    let account = db.stream::<Account>(1u128);
    let _ = db.transact(|tx| {
        let a = tx.load(&account)?;
        tx.save(&account, &a, [OrderPlaced { amount: 1 }])?;
        Ok::<_, ExecuteError<()>>(())
    });
}
