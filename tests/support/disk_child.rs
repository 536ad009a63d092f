//! Child process of `tests/disk_faults.rs`: opens a store and does one thing with it, so that
//! a crash (a SIGBUS on a full disk) ends this process rather than the test run.
//!
//! Usage: `disk-child open <dir>` (open, read the last seq); `disk-child views <dir> <n>`
//! (open, then hold `n` read views at once and read through each);
//! `disk-child grow <dir> <map size> <bytes>` (open with that map size and append events of
//! 64 KiB until `bytes` are written). Prints one line: `ok <last seq or count>` or
//! `err <Debug of the error>`.

use varvedb::{Error, ExpectedVersion, NewEvent, Options, Varve};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: disk-child open|views|grow <dir> [args]";
    let (command, dir) = (args.first().expect(usage), args.get(1).expect(usage));
    let number = |i: usize| -> usize { args.get(i).expect(usage).parse().expect("a number") };
    let result = match command.as_str() {
        "open" => open(dir),
        "views" => views(dir, number(2)),
        "grow" => grow(dir, number(2), number(3)),
        other => panic!("unknown command {other}; {usage}"),
    };
    match result {
        Ok(detail) => println!("ok {detail}"),
        Err(e) => println!("err {e:?}"),
    }
}

fn open(dir: &str) -> Result<u64, Error> {
    let db = Varve::open(dir)?;
    db.begin_read()?.last_seq()
}

fn views(dir: &str, n: usize) -> Result<u64, Error> {
    let db = Varve::open(dir)?;
    let views = (0..n).map(|_| db.begin_read()).collect::<Result<Vec<_>, _>>()?;
    for view in &views {
        view.last_seq()?;
    }
    Ok(views.len() as u64)
}

/// The payload size of the events `grow` appends.
const EVENT: usize = 64 * 1024;

fn grow(dir: &str, map_size: usize, bytes: usize) -> Result<u64, Error> {
    let db = Options::new().map_size(map_size).open(dir)?;
    for i in 0..bytes.div_ceil(EVENT) {
        let payload = vec![(i % 251) as u8; EVENT];
        db.append(7u128, ExpectedVersion::Auto, [NewEvent::new("grown", payload)])?;
    }
    db.begin_read()?.last_seq()
}
