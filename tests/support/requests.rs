//! The requests of the failed-commit tests (`tests/failed_commits.rs` and its child), so
//! that the test knows every byte the child sent.

use varvedb::NewEvent;

/// The `k`th request of thread `t`: two events to [`stream`]`(t)`, with ids that name them.
/// Every third event is over 1 KiB, so blob pages are written too.
pub fn request(t: usize, k: usize) -> Vec<NewEvent> {
    (0..2)
        .map(|j| {
            let n = k * 2 + j;
            let len = if t == LARGE {
                40_000
            } else if n % 3 == 2 {
                1_500
            } else {
                40
            };
            NewEvent::new("fc", vec![(t * 31 + n) as u8; len]).with_id(event_id(t, n))
        })
        .collect()
}

/// The thread whose requests are too large for a commit record: two events of 40,000 bytes.
pub const LARGE: usize = 7;

/// The id of the `n`th event of thread `t` (`n` counts from 0 over its requests).
pub fn event_id(t: usize, n: usize) -> u128 {
    ((t as u128 + 1) << 64) | n as u128
}

/// Thread `t`'s stream.
pub fn stream(t: usize) -> u128 {
    1 + t as u128
}
