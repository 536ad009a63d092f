use varvedb::{aggregate, Event, EventData};

#[derive(Event)]
struct Deposited {
    cents: u64,
}

#[derive(Default, EventData)]
struct Account {
    balance: u64,
}

#[aggregate(snapshot_every = 0, snapshot_version = 1, snapshot_version = 2)]
impl Account {
    fn deposited(&mut self, e: &ArchivedDeposited) {
        self.balance += e.cents.to_native();
    }
}

fn main() {}
