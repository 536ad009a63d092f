//! Child process for the projection crash test: runs the totals projection on the store at
//! `argv[1]` until it is killed. The parent appends meanwhile, from its own process.

#[path = "totals.rs"]
#[allow(dead_code)]
mod totals;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: projection-child <store dir>");
    let db = varvedb::Varve::open(&dir).expect("open store");
    // Small batches: many commits, so kills land before, inside and after them.
    let runner = varvedb::Runner::spawn_thread(&db, totals::projection(7));
    println!("running");
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!runner.is_finished(), "the projection stopped: {:?}", runner.stop_blocking().err());
    }
}
