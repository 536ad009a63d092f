//! A local-first node that `tests/local_first.rs` SIGKILLs: it decides commands on shared
//! accounts and its own, and syncs, over and over, until killed. It prints `decided
//! <nonce>` for each command whose event it has written.
//!
//! Usage: `sync-child <node dir> <nats url> <seed> <own account>`.

#[path = "accounts.rs"]
mod accounts;

use std::io::Write;
use std::time::Duration;

use accounts::{Account, Deposit, Withdraw};

/// splitmix64: enough randomness for a workload, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// In `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bool(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, url, seed, own] = args.as_slice() else {
        eprintln!("usage: sync-child <node dir> <nats url> <seed> <own account>");
        std::process::exit(2);
    };
    let mut rng = Rng(seed.parse().unwrap());
    let own: u128 = own.parse().unwrap();
    let node = accounts::open_node(std::path::Path::new(dir));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut client = None;
    loop {
        for _ in 0..=rng.below(5) {
            let id = if rng.bool() { u128::from(rng.below(3)) + 1 } else { own };
            let (cents, nonce) = (rng.below(199) + 1, rng.next());
            let account = node.stream::<Account>(id);
            let executed = if rng.bool() {
                account.execute(&Deposit { cents, nonce })
            } else {
                account.execute(&Withdraw { cents, nonce })
            };
            // A withdrawal the balance does not cover is rejected; nothing else may fail.
            match executed {
                Ok(_) => {
                    // Committed: the parent may hold the node to it.
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "decided {nonce}");
                    let _ = out.flush();
                }
                Err(varvedb_nats::LocalExecuteError::Rejected(_)) => {}
                Err(e) => {
                    eprintln!("execute failed: {e}");
                    std::process::exit(1);
                }
            }
        }
        rt.block_on(async {
            if client.is_none() {
                client = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_millis(500))
                    .connect(url.as_str())
                    .await
                    .ok();
            }
            if let Some(c) = &client {
                match node.sync(c).await {
                    Ok(_) | Err(varvedb_nats::SyncError::Nats(_)) => {}
                    Err(e) => {
                        eprintln!("sync failed: {e}");
                        std::process::exit(1);
                    }
                }
            }
        });
        std::thread::sleep(Duration::from_millis(rng.below(20)));
    }
}
