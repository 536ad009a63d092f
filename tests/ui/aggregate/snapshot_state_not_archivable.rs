use varvedb::{aggregate, Event};

#[derive(Event)]
struct Deposited {
    cents: u64,
}

#[derive(Default)]
struct Account {
    balance: u64,
}

#[aggregate(snapshot_every = 100)]
impl Account {
    fn deposited(&mut self, e: &ArchivedDeposited) {
        self.balance += e.cents.to_native();
    }
}

fn main() {}
