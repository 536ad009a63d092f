//! A forked child of a process that has a store open with `Durability::Relaxed` inherits the
//! handle, the checkpoint's pin among it: a checkpoint made in the child would end the
//! parent's pin (its reader slot) and begin one in a slot that names the parent's process.
// Alone in its binary: the child of a fork copies only the forking thread, and no other test
// may hold a lock (the allocator's) at that moment.
#![cfg(unix)]

use varvedb::{Durability, Error, ExpectedVersion, NewEvent, Options};

#[test]
fn a_forked_child_cannot_make_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = Options::new().durability(Durability::Relaxed).open(dir.path()).unwrap();
    db.append(1u128, ExpectedVersion::Exact(0), [NewEvent::new("tick", vec![1])]).unwrap();
    db.sync().unwrap();
    // The timed checkpoint of the append has come and gone: no thread of the parent holds a
    // lock of the store when it forks.
    std::thread::sleep(varvedb::RELAXED_CHECKPOINT_INTERVAL * 10);
    let checkpoints = std::fs::read(dir.path().join("checkpoint")).unwrap();
    // SAFETY: the child only asks for a checkpoint (refused before any LMDB call) and exits
    // with `_exit`, without running destructors or atexit handlers that would touch the
    // parent's state.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let refused = matches!(db.sync(), Err(Error::WriterStopped));
        // SAFETY: ends the child at once, as above.
        unsafe { libc::_exit(i32::from(!refused)) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked, with a valid pointer for its status.
    assert_eq!(unsafe { libc::waitpid(pid, &raw mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's checkpoint was not refused"
    );
    assert_eq!(
        std::fs::read(dir.path().join("checkpoint")).unwrap(),
        checkpoints,
        "the child wrote a checkpoint"
    );
    // The parent's pin is its own still: no reader slot of the child's stays behind in its name.
    assert_eq!(db.reader_lag().unwrap(), None);
    db.append(1u128, ExpectedVersion::Exact(1), [NewEvent::new("tick", vec![2])]).unwrap();
    db.sync().unwrap();
    assert_eq!(db.reader_lag().unwrap(), None);
}
