//! Optimistic concurrency and group commit under real contention.

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use varvedb::{Error, ExpectedVersion, NewEvent, Varve};

#[test]
fn eight_threads_racing_on_one_stream_win_every_version_exactly_once() {
    const THREADS: u64 = 8;
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let stream = 0x00c0_ffee_u128;
    let deadline = Instant::now() + Duration::from_secs(2);
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (db, barrier) = (db.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let (mut won, mut conflicts) = (Vec::new(), 0u64);
                barrier.wait();
                let mut attempt = 0u64;
                while Instant::now() < deadline {
                    let current = db.begin_read().unwrap().stream_version(stream).unwrap().unwrap_or(0);
                    attempt += 1;
                    let payload = format!("{t}:{attempt}").into_bytes();
                    match db.append(
                        stream,
                        ExpectedVersion::Exact(current),
                        [NewEvent::new("claim", payload)],
                    ) {
                        Ok(a) => {
                            assert_eq!(a.first_version, current + 1);
                            won.push((a.first_version, t, attempt));
                        }
                        Err(Error::ConcurrencyConflict { actual, .. }) => {
                            // Someone else won `current + 1` after our read.
                            assert!(actual > Some(current), "conflict at {actual:?} after reading {current}");
                            conflicts += 1;
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                (won, conflicts)
            })
        })
        .collect();
    let mut winners: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut conflicts = 0;
    for h in handles {
        let (won, c) = h.join().unwrap();
        conflicts += c;
        for (version, t, attempt) in won {
            assert!(winners.insert(version, (t, attempt)).is_none(), "version {version} won twice");
        }
    }
    let successes = winners.len() as u32;
    assert!(successes > 10, "only {successes} appends succeeded");
    assert!(conflicts > 0, "8 racing threads never conflicted; the test did not race");
    let view = db.begin_read().unwrap();
    assert_eq!(view.stream_version(stream).unwrap(), Some(successes));
    for e in view.read_stream(stream, 1).unwrap() {
        let e = e.unwrap();
        let (t, attempt) = winners[&e.version()];
        assert_eq!(
            e.payload(),
            format!("{t}:{attempt}").as_bytes(),
            "version {} holds the winner's event",
            e.version()
        );
    }
    assert_eq!(view.check_integrity().unwrap().events, u64::from(successes));
    eprintln!("{successes} appends won, {conflicts} conflicts");
}

#[test]
fn concurrent_durable_appends_share_commits() {
    const THREADS: usize = 16;
    const PER_THREAD: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (db, barrier) = (db.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..PER_THREAD {
                    let e = NewEvent::new("tick", vec![i as u8]);
                    db.append(t as u128, ExpectedVersion::Exact(i as u32), [e]).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let stats = db.stats();
    let appends = (THREADS * PER_THREAD) as u64;
    assert_eq!((stats.events, stats.requests), (appends, appends));
    assert!(
        stats.commits < appends / 2,
        "{} commits for {appends} appends: group commit is not grouping",
        stats.commits
    );
    assert_eq!(db.begin_read().unwrap().check_integrity().unwrap().events, appends);
    eprintln!("{appends} appends in {} commits", stats.commits);
}

#[test]
fn a_conflict_fails_alone_while_its_group_commits() {
    // Many writers target the same few streams with stale expectations; whatever the grouping,
    // every success is visible, every failure wrote nothing, and seqs stay gap-free.
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let handles: Vec<_> = (0..8u128)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut ok = 0u64;
                for i in 0..50u32 {
                    let stream = u128::from(i % 3);
                    let expected = if (t + u128::from(i)) % 2 == 0 {
                        ExpectedVersion::Auto
                    } else {
                        ExpectedVersion::Exact(i)
                    };
                    match db.append(stream, expected, [NewEvent::new("x", vec![])]) {
                        Ok(_) => ok += 1,
                        Err(Error::ConcurrencyConflict { .. }) if expected != ExpectedVersion::Auto => {}
                        Err(e) => panic!("{expected:?} failed: {e}"),
                    }
                }
                ok
            })
        })
        .collect();
    let ok: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let report = db.begin_read().unwrap().check_integrity().unwrap();
    assert_eq!(report.events, ok);
    assert_eq!(report.last_seq, ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_requests_fail_alone_inside_shared_commits() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    for s in 0..64u128 {
        db.append(s, ExpectedVersion::Auto, [NewEvent::new("seed", vec![])]).unwrap();
    }
    let before = db.stats();
    // Even streams get a stale `NoStream` (must conflict), odd ones a correct `Exact(1)`.
    let tasks: Vec<_> = (0..64u128)
        .map(|s| {
            let db = db.clone();
            let expected = if s % 2 == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(1) };
            tokio::spawn(async move { (s, db.append_async(s, expected, [NewEvent::new("x", vec![])]).await) })
        })
        .collect();
    for t in tasks {
        let (s, r) = t.await.unwrap();
        if s % 2 == 0 {
            assert!(
                matches!(r, Err(Error::ConcurrencyConflict { actual: Some(1), .. })),
                "stream {s}: {r:?}"
            );
        } else {
            assert_eq!(r.unwrap().last_version, 2, "stream {s}");
        }
    }
    let after = db.stats();
    assert_eq!(after.requests - before.requests, 64);
    assert!(
        after.commits - before.commits < 32,
        "32 successes took {} commits",
        after.commits - before.commits
    );
    assert_eq!(db.begin_read().unwrap().check_integrity().unwrap().events, 64 + 32);
}

/// Commits too large for a commit record are answered after a later flush: a leader hands
/// its held answers to the next one, or flushes when no one follows. Under contention from
/// blocking and async callers at once, in both durability modes, every answer comes.
#[test]
fn answers_held_for_a_flush_all_come_under_contention() {
    for durability in [varvedb::Durability::Immediate, varvedb::Durability::Relaxed] {
        const THREADS: u128 = 6;
        const PER_THREAD: u32 = 12;
        let dir = tempfile::tempdir().unwrap();
        let db = varvedb::Options::new().durability(durability).open(dir.path()).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        for t in 0..THREADS {
            let (db, done) = (db.clone(), done.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                for v in 0..PER_THREAD {
                    // Every third append, the last one included, is larger than a record
                    // holds (64 KiB of changes), and unlike any other (a blob is stored once).
                    let size = if v % 3 == 2 { 80 * 1024 } else { 64 };
                    let mut payload = vec![0u8; size];
                    payload[..16].copy_from_slice(&(t << 32 | u128::from(v)).to_le_bytes());
                    let e = [NewEvent::new("blob", payload)];
                    let appended = if t % 2 == 0 {
                        db.append(t, ExpectedVersion::Exact(v), e)
                    } else {
                        runtime.block_on(db.append_async(t, ExpectedVersion::Exact(v), e))
                    };
                    appended.unwrap();
                }
                done.send(()).unwrap();
            });
        }
        drop(done);
        for _ in 0..THREADS {
            finished
                .recv_timeout(Duration::from_mins(1))
                .unwrap_or_else(|_| panic!("an answer never came ({durability:?})"));
        }
        let view = db.begin_read().unwrap();
        assert_eq!(view.check_integrity().unwrap().events, u64::from(PER_THREAD) * THREADS as u64);
    }
}
