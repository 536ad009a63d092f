//! The bank accounts of the local-first sync tests and their child process: the balance
//! must never go below zero.

#![allow(dead_code, reason = "each user takes part of it")]

use varvedb::{Event, Handle, Pending, aggregate};

#[derive(Event, Debug)]
pub struct Deposited {
    pub cents: u64,
    pub nonce: u64,
}

#[derive(Event, Debug)]
pub struct Withdrawn {
    pub cents: u64,
    pub nonce: u64,
}

#[derive(Event, Debug)]
pub struct Deposit {
    pub cents: u64,
    pub nonce: u64,
}

#[derive(Event, Debug)]
pub struct Withdraw {
    pub cents: u64,
    pub nonce: u64,
}

/// Two deposits at once: more than a synced command may decide.
#[derive(Event, Debug)]
pub struct DepositTwice {
    pub cents: u64,
}

/// A bank account whose balance must never go below zero; `lowest` remembers whether it
/// ever did in the events folded.
#[derive(Default, Debug)]
pub struct Account {
    pub balance: i64,
    pub lowest: i64,
}

#[aggregate]
impl Account {
    fn deposited(&mut self, e: &ArchivedDeposited) {
        self.balance += e.cents.to_native().cast_signed();
    }
    fn withdrawn(&mut self, e: &ArchivedWithdrawn) {
        self.balance -= e.cents.to_native().cast_signed();
        self.lowest = self.lowest.min(self.balance);
    }
}

#[derive(Debug)]
pub struct Overdrawn;

impl std::fmt::Display for Overdrawn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the balance does not cover the withdrawal")
    }
}

impl Handle<Deposit> for Account {
    type Error = Overdrawn;
    fn handle(&self, c: &Deposit) -> Result<Vec<Pending<Self>>, Overdrawn> {
        Ok(vec![Deposited { cents: c.cents, nonce: c.nonce }.into()])
    }
}

impl Handle<Withdraw> for Account {
    type Error = Overdrawn;
    fn handle(&self, c: &Withdraw) -> Result<Vec<Pending<Self>>, Overdrawn> {
        if self.balance < c.cents.cast_signed() {
            return Err(Overdrawn);
        }
        Ok(vec![Withdrawn { cents: c.cents, nonce: c.nonce }.into()])
    }
}

impl Handle<DepositTwice> for Account {
    type Error = Overdrawn;
    fn handle(&self, c: &DepositTwice) -> Result<Vec<Pending<Self>>, Overdrawn> {
        Ok(vec![Deposited { cents: c.cents, nonce: 0 }.into(), Deposited { cents: c.cents, nonce: 0 }.into()])
    }
}

/// Opens a sync node that can re-run deposits and withdrawals.
pub fn open_node(dir: &std::path::Path) -> varvedb_nats::SyncNode {
    let config =
        varvedb_nats::SyncConfig { timeout: std::time::Duration::from_secs(2), ..Default::default() };
    let node = varvedb_nats::SyncNode::open(dir, config).unwrap();
    node.register::<Account, Deposit>().unwrap();
    node.register::<Account, Withdraw>().unwrap();
    node
}
