//! Child process for the compaction crash test of `tests/encryption.rs`: compacts the closed
//! store in place again and again until it is killed, printing `start` before and `done`
//! after each run, so the parent knows where its SIGKILL landed.
//!
//! Usage: `compact-child <store dir>`.

use std::io::Write;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: compact-child <store dir>");
    let mut out = std::io::stdout();
    loop {
        writeln!(out, "start").unwrap();
        out.flush().unwrap();
        varvedb::compact_in_place(&dir).expect("compact in place");
        writeln!(out, "done").unwrap();
        out.flush().unwrap();
    }
}
