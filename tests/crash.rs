//! Crash safety with real processes: a child appends and reports each acknowledged append;
//! the parent SIGKILLs it at random moments and checks that every acknowledged event
//! survived intact, seqs are contiguous, the indexes agree with the log, and the Merkle tree
//! over the log is the one its events give. A killed process is not a power loss: the page
//! cache survives it, so with `Durability::Relaxed` too nothing acknowledged may be lost.
//!
//! `VARVEDB_CRASH_KILLS` (default 60) and `VARVEDB_RELAXED_KILLS` (default 30) set the
//! number of kills of a child with the default durability and with `Durability::Relaxed`;
//! `VARVEDB_CRASH_SEED` the seed that times them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use varvedb::{Durability, Options, Varve};

#[path = "support/crash_child.rs"]
#[allow(dead_code)]
mod child;

#[derive(Debug, Clone, Copy)]
struct Ack {
    stream: u128,
    first_version: u32,
    last_version: u32,
    first_seq: u64,
    last_seq: u64,
}

fn parse(line: &str) -> Ack {
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 6, "bad line {line:?}");
    Ack {
        stream: f[1].parse().unwrap(),
        first_version: f[2].parse().unwrap(),
        last_version: f[3].parse().unwrap(),
        first_seq: f[4].parse().unwrap(),
        last_seq: f[5].parse().unwrap(),
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_event() {
    kill_at_random_moments(env_number("VARVEDB_CRASH_KILLS", 60) as usize, Durability::Immediate);
}

/// With `Durability::Relaxed` a commit may be answered before it is flushed, but a crash of
/// the process alone leaves the page cache whole: the store reopens (in the same boot, so
/// nothing is rolled back) with every acknowledged event.
#[test]
fn sigkill_of_a_relaxed_writer_loses_no_acknowledged_event() {
    kill_at_random_moments(env_number("VARVEDB_RELAXED_KILLS", 30) as usize, Durability::Relaxed);
}

/// Starts a child appending with `durability` `kills` times, SIGKILLs it at a random moment,
/// and reopens the store to check it after each kill. A relaxed store is reopened relaxed,
/// and every third time with the default durability, so that the next child opens relaxed
/// again a store last opened the other way.
fn kill_at_random_moments(kills: usize, durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(env_number("VARVEDB_CRASH_SEED", 7));
    let mut acked: Vec<Ack> = Vec::new();
    let mut killed_mid_run = 0;
    for round in 0..kills {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_crash-child"));
        cmd.arg(dir.path());
        if durability == Durability::Relaxed {
            cmd.arg("relaxed");
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            // Only whole lines count: a line cut by the kill was never fully acknowledged.
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.ends_with('\n') {
                    lines.push(parse(&line));
                }
                line.clear();
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(rng.u64(5..120)));
        let still_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        let new = reader.join().unwrap();
        if still_running {
            killed_mid_run += 1;
        } else {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("round {round}: child exited by itself ({status}): {err}");
        }
        acked.extend(new);
        let reopen = if durability == Durability::Relaxed && round % 3 != 2 {
            Durability::Relaxed
        } else {
            Durability::Immediate
        };
        let db = Options::new()
            .durability(reopen)
            .open(dir.path())
            .unwrap_or_else(|e| panic!("round {round}: the store does not open: {e}"));
        verify(&db, &acked, round);
    }
    assert_eq!(killed_mid_run, kills);
    assert!(acked.len() > kills, "children acknowledged only {} appends", acked.len());
    eprintln!("{kills} kills, {} acknowledged appends, all present", acked.len());
}

fn verify(db: &Varve, acked: &[Ack], round: usize) {
    let view = db.begin_read().unwrap();
    let report =
        view.check_integrity().unwrap_or_else(|e| panic!("round {round}: integrity check failed: {e}"));
    assert_eq!(report.events, report.last_seq);
    // The stored tree's head is that of a tree computed here from every event's leaf.
    let head = view.tree_head().unwrap();
    let leaves: Vec<_> =
        (1..=report.last_seq).map(|seq| varvedb::leaf_hash(&view.leaf(seq).unwrap().unwrap())).collect();
    assert_eq!(head.size, report.last_seq, "round {round}: tree size");
    if !leaves.is_empty() {
        assert_eq!(head.root, mth(&leaves), "round {round}: tree head");
    }
    assert_eq!(report.tree_head, Some(head), "round {round}");
    for a in acked {
        assert_eq!(a.last_seq - a.first_seq, u64::from(a.last_version - a.first_version));
        for (i, seq) in (a.first_seq..=a.last_seq).enumerate() {
            let e = view
                .event(seq)
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acknowledged seq {seq} is missing"));
            let version = a.first_version + i as u32;
            assert_eq!((e.stream().as_u128(), e.version()), (a.stream, version), "round {round}: seq {seq}");
            assert_eq!(e.payload(), child::payload(a.stream, version), "round {round}: payload of seq {seq}");
        }
    }
    // Streams 100 and 101 are written only together: a torn batch would leave them apart.
    assert_eq!(view.stream_version(100u128).unwrap(), view.stream_version(101u128).unwrap(), "round {round}");
}

/// `MTH` by the definition of RFC 9162 §2.1.1 (for a log of at least one event).
fn mth(leaves: &[varvedb::Hash]) -> varvedb::Hash {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let k = 1 << (leaves.len() - 1).ilog2();
    varvedb::node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
}
