//! A ledger aggregate declared several times over the same events and state: without
//! snapshots, with automatic snapshots at two intervals, and with manual ones only, so tests
//! can compare what each loads. Shared by the snapshot tests and their crash child.
#![allow(dead_code, clippy::unused_self)]

use varvedb::{Event, EventData, Upcast, aggregate};

/// The first shape of a posting, as an older build wrote it.
#[derive(Event, Debug, Clone)]
#[event(name = "ledger.posted", version = 1)]
pub struct PostedV1 {
    pub cents: u64,
}

#[derive(Event, Debug, Clone)]
#[event(name = "ledger.posted", version = 2, upcast = PostedV1)]
pub struct Posted {
    pub cents: u64,
    pub memo: String,
}

impl Upcast<PostedV1> for Posted {
    fn upcast(old: &ArchivedPostedV1) -> Self {
        Posted { cents: old.cents.to_native(), memo: "(v1)".into() }
    }
}

#[derive(Event, Debug, Clone)]
#[event(name = "ledger.reversed")]
pub struct Reversed {
    pub cents: u64,
}

/// Mixes a value into an order-sensitive digest of the history.
fn mix(digest: u64, v: u64) -> u64 {
    (digest ^ v).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(7)
}

macro_rules! ledger {
    ($name:ident, $($args:tt)*) => {
        /// The ledger's state: every field depends on the whole history, in order.
        #[derive(Default, Debug, Clone, PartialEq, EventData)]
        pub struct $name {
            pub balance: u64,
            pub postings: u32,
            pub digest: u64,
            pub last_memo: String,
        }

        #[aggregate($($args)*)]
        impl $name {
            fn posted(&mut self, e: &ArchivedPosted) {
                self.balance = self.balance.wrapping_add(e.cents.to_native());
                self.postings += 1;
                self.digest = mix(mix(self.digest, e.cents.to_native()), e.memo.len() as u64);
                self.last_memo = e.memo.to_string();
            }
            fn reversed(&mut self, e: &ArchivedReversed) {
                self.balance = self.balance.wrapping_sub(e.cents.to_native());
                self.digest = mix(self.digest, !e.cents.to_native());
            }
        }

        impl $name {
            /// The state's fields, to compare ledgers of different declarations.
            pub fn fields(&self) -> (u64, u32, u64, String) {
                (self.balance, self.postings, self.digest, self.last_memo.clone())
            }
        }
    };
}

ledger!(Full, name = "ledger");
ledger!(Every3, name = "ledger", snapshot_every = 3);
ledger!(Every7, name = "ledger", snapshot_every = 7);
ledger!(Manual, name = "ledger", snapshot);

/// The older build's aggregate: it writes v1 postings.
#[derive(Default, Debug)]
pub struct OldLedger {
    pub postings: u32,
}

#[aggregate(name = "ledger")]
impl OldLedger {
    fn posted(&mut self, _: &ArchivedPostedV1) {
        self.postings += 1;
    }
    fn reversed(&mut self, _: &ArchivedReversed) {}
}
