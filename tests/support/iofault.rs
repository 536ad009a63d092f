//! The I/O shim `iofault.c` from Rust: build it, run a child process under it, read its log.
//!
//! The shim is an `LD_PRELOAD` library that watches the writes and flushes a process makes to
//! chosen files (by basename pattern, `data.mdb` by default), and the names it gives them
//! and takes from them (links, unlinks, renames, directories made and removed). It can
//! record them, in the order they completed, into a log that [`parse_log`] reads, and it
//! can make the Nth write, flush or link of a watched file fail. The environment variables
//! it reads (documented in full at the top of `iofault.c`); lists are basename patterns:
//!
//! - `IOFAULT_WATCH=data.mdb:other` the data files: writes, flushes and names watched;
//! - `IOFAULT_NAMES=lock.mdb:.tmp-*` the name files: names watched, contents not;
//! - `IOFAULT_MARKER=acks` marker files: each write to one is logged as a [`Op::Mark`] with
//!   its bytes, so a child can put its acknowledgements into the op stream;
//! - `IOFAULT_BOOT_ID=<id>` an open of `/proc/sys/kernel/random/boot_id` reads this id and a
//!   newline, so a child sees another boot than the one that wrote a store;
//! - `IOFAULT_INODES=DEV:INO=SHOWN[,…]` the stat calls show the file with that device and
//!   inode as having inode SHOWN, so a copy passes for the file it was copied from;
//! - `IOFAULT_LOG=/path/log` record into this log;
//! - `IOFAULT_FAIL=OP:N:KIND[,…]` inject faults: OP is `write`, `pwrite`, `writev`,
//!   `pwritev`, `syncwrite` (a write through an `O_DSYNC` descriptor), `metawrite` (a write
//!   within page 0 or within page 1 of the file: LMDB's meta pages; `IOFAULT_PAGE_SIZE`
//!   sets the page size, the system's by default), `fsync`, `fdatasync`, `flush` or `link`; N counts matching calls on watched files from
//!   1 (`N+`: that one and every later one); KIND is `eio`, `enospc`, `eperm` (links only),
//!   `short` (writes only: the first half is written and its length returned) or `dies`
//!   (writes only: the write goes through, then it and every later write and flush of a
//!   data file fail with EIO).
//!
//! ```ignore
//! let mut cmd = Command::new(env!("CARGO_BIN_EXE_some-child"));
//! Mode::new().fail("fdatasync:3:eio").apply(&mut cmd);
//! let out = cmd.output().unwrap(); // the third fdatasync of data.mdb failed with EIO
//! ```
//!
//! Linux with glibc only (the shim interposes libc's functions); a C compiler `cc` must be
//! on the `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shim, compiled once per version of its source into the cargo target's temp dir.
///
/// # Panics
/// If `cc` cannot compile it.
#[must_use]
pub fn shim() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build).clone()
}

fn build() -> PathBuf {
    const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/iofault.c");
    let source = std::fs::read(SOURCE).expect("read iofault.c");
    // Named after its source's hash: a changed shim is rebuilt, and tests running at once
    // share one build.
    let hash = source
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let so = dir.join(format!("libiofault-{hash:016x}.so"));
    if so.exists() {
        return so;
    }
    let tmp = dir.join(format!("libiofault-{hash:016x}.{}.tmp", std::process::id()));
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&tmp)
        .arg(SOURCE)
        .arg("-ldl")
        .output()
        .expect("run cc (a C compiler is needed to build the I/O shim)");
    assert!(out.status.success(), "cc failed on iofault.c:\n{}", String::from_utf8_lossy(&out.stderr));
    // A rename is atomic: another test process sees the whole library or none.
    std::fs::rename(&tmp, &so).expect("install libiofault.so");
    so
}

/// What the shim does in a child process.
#[derive(Debug, Clone, Default)]
pub struct Mode {
    watch: Vec<String>,
    names: Vec<String>,
    markers: Vec<String>,
    log: Option<PathBuf>,
    faults: Vec<String>,
    boot_id: Option<String>,
    inodes: Vec<String>,
}

impl Mode {
    /// Watches `data.mdb`, records nothing and fails nothing.
    #[must_use]
    pub fn new() -> Self {
        Mode::default()
    }

    /// Watches files with this basename too (`data.mdb` is watched when none is given).
    #[must_use]
    pub fn watch(mut self, basename: &str) -> Self {
        self.watch.push(basename.to_owned());
        self
    }

    /// Watches the names of files with a basename that matches this pattern, not their
    /// contents.
    #[must_use]
    pub fn names(mut self, pattern: &str) -> Self {
        self.names.push(pattern.to_owned());
        self
    }

    /// Logs writes to files with this basename as markers.
    #[must_use]
    pub fn marker(mut self, basename: &str) -> Self {
        self.markers.push(basename.to_owned());
        self
    }

    /// Records every watched write, flush and marker into `log`.
    #[must_use]
    pub fn record(mut self, log: &Path) -> Self {
        self.log = Some(log.to_path_buf());
        self
    }

    /// Injects a fault, `OP:N:KIND` (see the module doc).
    #[must_use]
    pub fn fail(mut self, spec: &str) -> Self {
        self.faults.push(spec.to_owned());
        self
    }

    /// Shows the child `id` as the machine's boot id, in place of the real one.
    #[must_use]
    pub fn boot_id(mut self, id: &str) -> Self {
        self.boot_id = Some(id.to_owned());
        self
    }

    /// Shows the file on device `dev` with inode `ino` as having inode `shown`.
    #[must_use]
    pub fn inode(mut self, dev: u64, ino: u64, shown: u64) -> Self {
        self.inodes.push(format!("{dev}:{ino}={shown}"));
        self
    }

    /// Runs `cmd` under the shim in this mode (builds the shim if needed).
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("LD_PRELOAD", shim());
        for (var, list) in [
            ("IOFAULT_WATCH", &self.watch),
            ("IOFAULT_NAMES", &self.names),
            ("IOFAULT_MARKER", &self.markers),
        ] {
            if list.is_empty() {
                cmd.env_remove(var);
            } else {
                cmd.env(var, list.join(":"));
            }
        }
        match &self.log {
            Some(log) => cmd.env("IOFAULT_LOG", log),
            None => cmd.env_remove("IOFAULT_LOG"),
        };
        if self.faults.is_empty() {
            cmd.env_remove("IOFAULT_FAIL");
        } else {
            cmd.env("IOFAULT_FAIL", self.faults.join(","));
        }
        match &self.boot_id {
            Some(id) => cmd.env("IOFAULT_BOOT_ID", id),
            None => cmd.env_remove("IOFAULT_BOOT_ID"),
        };
        if self.inodes.is_empty() {
            cmd.env_remove("IOFAULT_INODES");
        } else {
            cmd.env("IOFAULT_INODES", self.inodes.join(","));
        }
    }
}

/// One record of the shim's log, in the order the calls completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A watched file seen for the first time: its id in later ops, its absolute path, its
    /// inode number, whether this open created it (a new directory entry), and whether only
    /// its names are watched (a name file: no writes or flushes of it are logged).
    File { file: u32, path: PathBuf, ino: u64, created: bool, names_only: bool },
    /// Bytes written at an offset; `sync` when written through an `O_DSYNC`/`O_SYNC`
    /// descriptor, durable once the call returned.
    Write { file: u32, offset: u64, data: Vec<u8>, sync: bool },
    /// An `fsync` or `fdatasync` of the file returned success.
    Flush { file: u32 },
    /// Bytes written to a marker file.
    Mark(Vec<u8>),
    /// A directory was created.
    Mkdir(PathBuf),
    /// An `fsync` or `fdatasync` of a directory returned success.
    DirSync(PathBuf),
    /// The file was truncated to this length.
    Truncate { file: u32, len: u64 },
    /// The file got another name; `len` is its size then.
    Link { file: u32, path: PathBuf, len: u64 },
    /// A name of the file was removed.
    Unlink { file: u32, path: PathBuf },
    /// A directory was removed.
    Rmdir(PathBuf),
    /// A name of the file moved from `from` to `to`.
    Rename { file: u32, from: PathBuf, to: PathBuf },
}

/// Parses a log the shim wrote.
///
/// # Panics
/// On a truncated or unknown record.
#[must_use]
pub fn parse_log(bytes: &[u8]) -> Vec<Op> {
    use std::os::unix::ffi::OsStrExt;
    let path = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
    let mut ops = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let head = bytes.get(at..at + 24).expect("truncated record header");
        let kind = u32::from_le_bytes(head[0..4].try_into().unwrap());
        let file = u32::from_le_bytes(head[4..8].try_into().unwrap());
        let offset = u64::from_le_bytes(head[8..16].try_into().unwrap());
        let len = usize::try_from(u64::from_le_bytes(head[16..24].try_into().unwrap())).unwrap();
        let body = bytes.get(at + 24..at + 24 + len).expect("truncated record");
        at += 24 + len;
        ops.push(match kind {
            1 => {
                let (name, ino) =
                    body.split_at(body.len().checked_sub(9).expect("a file record holds an inode"));
                assert_eq!(ino[0], 0, "a file record's path ends with a NUL");
                Op::File {
                    file,
                    path: path(name),
                    ino: u64::from_le_bytes(ino[1..].try_into().unwrap()),
                    created: offset & 1 != 0,
                    names_only: offset & 2 != 0,
                }
            }
            2 | 3 => Op::Write { file, offset, data: body.to_vec(), sync: kind == 3 },
            4 => Op::Flush { file },
            5 => Op::Mark(body.to_vec()),
            6 => Op::Mkdir(path(body)),
            7 => Op::DirSync(path(body)),
            8 => Op::Truncate { file, len: offset },
            9 => Op::Link { file, path: path(body), len: offset },
            10 => Op::Unlink { file, path: path(body) },
            11 => Op::Rmdir(path(body)),
            12 => {
                let nul = body.iter().position(|&b| b == 0).expect("a rename record holds two paths");
                Op::Rename { file, from: path(&body[..nul]), to: path(&body[nul + 1..]) }
            }
            other => panic!("unknown record kind {other} in the iofault log"),
        });
    }
    ops
}
