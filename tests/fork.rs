//! A forked child inherits the store's handle, but not the right to use LMDB's environment
//! (LMDB forbids it): its writes are refused instead of committed.
// Alone in its binary: the child of a fork copies only the forking thread, and no other test
// may hold a lock (the allocator's) at that moment.
#![cfg(unix)]

use varvedb::{Error, ExpectedVersion, NewEvent, Varve};

#[test]
fn a_forked_child_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    db.append(1u128, ExpectedVersion::Exact(0), [NewEvent::new("tick", vec![1])]).unwrap();
    // SAFETY: the child only appends (refused before any LMDB call) and exits with `_exit`,
    // without running destructors or atexit handlers that would touch the parent's state.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let refused = matches!(
            db.append(1u128, ExpectedVersion::Exact(1), [NewEvent::new("tick", vec![2])]),
            Err(Error::WriterStopped)
        );
        // SAFETY: ends the child at once, as above.
        unsafe { libc::_exit(i32::from(!refused)) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked, with a valid pointer for its status.
    assert_eq!(unsafe { libc::waitpid(pid, &raw mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child's append was not refused");
    // The parent writes on, and the child wrote nothing.
    let appended = db.append(1u128, ExpectedVersion::Exact(1), [NewEvent::new("tick", vec![3])]).unwrap();
    assert_eq!(appended.last_version, 2);
    assert_eq!(db.begin_read().unwrap().last_seq().unwrap(), 2);
}
