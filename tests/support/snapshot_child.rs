//! Child process for `tests/snapshot_crash.rs`: saves small batches of ledger events and
//! writes snapshots, automatic and on demand, as fast as it can, until it is killed.
//!
//! Usage: `snapshot-child <store dir> [encrypted]`.

#[path = "ledger.rs"]
mod ledger;

use ledger::{Every3, Manual, Posted, PostedV1, Reversed};
use varvedb::{ExpectedVersion, MasterKey, Options, Pending, Varve};

/// The master key of the encrypted runs (the parent opens the store with it too).
const KEY: [u8; 32] = [0x5a; 32];

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: snapshot-child <store dir> [encrypted]");
    let db = if args.next().as_deref() == Some("encrypted") {
        Options::new().encryption_key(MasterKey::from_bytes(KEY)).open(&dir)
    } else {
        Varve::open(&dir)
    }
    .expect("open store");
    let mut rng = fastrand_lite(std::process::id().into());
    loop {
        for stream in 1..=3u128 {
            let s = db.stream::<Every3>(stream);
            let loaded = s.load().expect("load");
            let n = 1 + rng() % 4;
            let events: Vec<Pending<Every3>> = (0..n)
                .map(|i| {
                    let c = rng() % 1_000;
                    if i % 3 == 2 {
                        Pending::from(Reversed { cents: c })
                    } else {
                        Pending::from(Posted { cents: c, memo: format!("m{c}") })
                    }
                })
                .collect();
            s.save(&loaded, events).expect("save");
            if rng().is_multiple_of(2) {
                db.stream::<Manual>(stream).snapshot().expect("snapshot");
            }
            if rng().is_multiple_of(5) {
                db.stream::<ledger::OldLedger>(stream)
                    .append(ExpectedVersion::Auto, PostedV1 { cents: rng() % 100 })
                    .expect("append v1");
            }
        }
        if rng().is_multiple_of(50) {
            db.drop_snapshots_of("ledger").expect("drop");
        }
    }
}

/// A small xorshift generator: the child needs no dependency beyond varvedb.
fn fastrand_lite(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}
