//! Crash safety of snapshots with real processes: a child saves events and writes
//! snapshots (automatic, on demand, sealed in an encrypted store) as fast as it can; the
//! parent SIGKILLs it at random moments and checks that every load starting from whatever
//! snapshot survived returns exactly what a full fold does.

use std::process::{Command, Stdio};
use std::time::Duration;

use varvedb::{MasterKey, Options, Varve};

#[path = "support/ledger.rs"]
mod ledger;

use ledger::{Every3, Every7, Full, Manual};

/// The child's master key for encrypted runs (`tests/support/snapshot_child.rs`).
const KEY: [u8; 32] = [0x5a; 32];

#[test]
fn sigkill_during_snapshot_writes_never_leaves_a_snapshot_load_trusts_wrongly() {
    let kills: usize =
        std::env::var("VARVEDB_SNAPSHOT_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let plain = tempfile::tempdir().unwrap();
    let encrypted = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(
        std::env::var("VARVEDB_SNAPSHOT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(11),
    );
    let mut from_snapshot = 0;
    for round in 0..kills {
        let encrypt = round % 2 == 1;
        let dir = if encrypt { encrypted.path() } else { plain.path() };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapshot-child"));
        cmd.arg(dir).stdout(Stdio::null()).stderr(Stdio::piped());
        if encrypt {
            cmd.arg("encrypted");
        }
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(20..150)));
        let still_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        if !still_running {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("round {round}: child exited by itself ({status}): {err}");
        }
        let db = if encrypt {
            Options::new().encryption_key(MasterKey::from_bytes(KEY)).open(dir).unwrap()
        } else {
            Varve::open(dir).unwrap()
        };
        from_snapshot += verify(&db, round);
    }
    // The check is only worth something if loads did start from snapshots.
    assert!(from_snapshot > kills, "only {from_snapshot} loads started from a snapshot");
}

/// Every snapshotting declaration loads what the full fold gives; returns how many loads
/// started from a snapshot.
fn verify(db: &Varve, round: usize) -> usize {
    let mut from_snapshot = 0;
    for stream in 1..=3u128 {
        let full = db.stream::<Full>(stream).load().unwrap();
        assert_eq!(full.replayed(), full.version());
        let loads = [
            db.stream::<Every3>(stream).load().map(|l| (l.version(), l.replayed(), l.state().fields())),
            db.stream::<Every7>(stream).load().map(|l| (l.version(), l.replayed(), l.state().fields())),
            db.stream::<Manual>(stream).load().map(|l| (l.version(), l.replayed(), l.state().fields())),
        ];
        for load in loads {
            let (version, replayed, fields) = load.unwrap();
            assert_eq!(version, full.version(), "round {round}, stream {stream}");
            assert_eq!(fields, full.state().fields(), "round {round}, stream {stream}");
            from_snapshot += usize::from(replayed < version);
        }
    }
    let report = db.begin_read().unwrap().check_integrity().unwrap();
    assert!(report.events > 0, "round {round}: the child wrote nothing");
    from_snapshot
}
