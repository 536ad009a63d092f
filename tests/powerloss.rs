//! Power-loss simulation. A SIGKILL leaves the page cache to be written back; a power loss
//! keeps only what was flushed, plus whatever else the disk happened to write.
//!
//! A child process runs a workload on a new store under the I/O shim (`support/iofault.c`),
//! which logs every write and flush of the store's data files (`data.mdb` and, in relaxed mode,
//! `checkpoint`), every name given to or taken from them and from the lock files (links,
//! unlinks, renames), directories made, removed and synced, and the child's acknowledgements,
//! in the order they completed. From that log this test builds crash states: for a cut after
//! any op, each file holds what its last completed flush before the cut made durable, and each
//! later write (the one in flight at the cut too) is lost, kept, or torn at 512-byte sectors (a
//! prefix or any subset of its sectors), applied in random order. A name made or removed during
//! the run (a file's, a directory's) is as the last sync of its directory left it, or by chance
//! as the run left it: a new name may be missing, a removed one back. Each state is opened in
//! another child process, which the shim shows another boot id than the run's (the machine
//! rebooted) and each data file with the inode number it had in the run, and which must open
//! the store, pass `check_integrity`, leave no temporary entry of a creation behind, and find
//! everything acknowledged before the cut: the store itself, events, shreds, key rotations,
//! projection progress, backups. With `Durability::Relaxed` the store may have lost what was
//! acknowledged after the last `Varve::sync` (or close) that returned before the cut, but holds
//! a prefix of the commits and everything before it.
//!
//! `VARVEDB_POWERLOSS_STATES` sets how many states in all (default 1,000, spread over the
//! workloads, a fifth of each workload's inside the `open` that creates its store);
//! `VARVEDB_POWERLOSS_SEED` the seed that picks them. `docs/reliability.md`
//! says what the model covers and what it leaves out.
// The shim interposes glibc's functions through LD_PRELOAD.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

#[path = "support/iofault.rs"]
#[allow(dead_code)]
mod iofault;

use iofault::{Mode, Op};

const CHILD: &str = env!("CARGO_BIN_EXE_powerloss-child");
/// `renamed` is `appends` on a filesystem without hard links: the shim refuses every link,
/// so new files are renamed into place.
/// `relaxed` is `appends` with `Durability::Relaxed`, a `Varve::sync` every seventh request
/// and a few commits over 64 KiB: what survives must be a prefix of the commits that holds
/// everything acknowledged before the last sync (or the close) that returned before the cut.
const WORKLOADS: [&str; 8] =
    ["appends", "group", "projection", "shred", "rotate", "backup", "renamed", "relaxed"];
const SECTOR: u64 = 512;
/// The boot id the children that open crash states see: shaped as the kernel's, and
/// unlike any real one, so a store that remembers the boot it was written in sees a reboot.
const OTHER_BOOT: &str = "00000000-0000-4000-8000-00000000b007";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// Crash states checked by one child process: it opens a store per state.
const BATCH: usize = 25;

/// A write as the crash states use it: the whole sectors it touched, as the page cache held
/// them right after it. A sector reaches the disk whole, with the bytes of the last write to
/// it that was written back.
struct Write {
    op: usize,
    /// Index into `Recording::inodes`.
    file: usize,
    first_sector: u64,
    /// Sector-aligned bytes: the touched sectors after the write.
    sectors: Vec<u8>,
    /// The file's length right after the write.
    len_after: u64,
    /// Written through an `O_DSYNC` descriptor: durable once done.
    sync: bool,
}

impl Write {
    /// The write of `data` at `offset` by op `op`, applied to `image`, the file as the page
    /// cache holds it.
    fn new(op: usize, file: usize, image: &mut Vec<u8>, offset: u64, data: &[u8], sync: bool) -> Write {
        let end = offset as usize + data.len();
        if image.len() < end {
            image.resize(end, 0);
        }
        image[offset as usize..end].copy_from_slice(data);
        let len_after = image.len() as u64;
        let first_sector = offset / SECTOR;
        let last_sector = (end as u64).div_ceil(SECTOR);
        let mut sectors = vec![0; ((last_sector - first_sector) * SECTOR) as usize];
        let from = (first_sector * SECTOR) as usize;
        let to = image.len().min((last_sector * SECTOR) as usize);
        sectors[..to - from].copy_from_slice(&image[from..to]);
        Write { op, file, first_sector, sectors, len_after, sync }
    }

    fn sector_count(&self) -> usize {
        self.sectors.len() / SECTOR as usize
    }
}

/// A file: its contents, shared by all its names.
struct Inode {
    /// Its inode number in the run.
    ino: u64,
    /// A name file (`lock.mdb`, a lock file being built): its contents are not recorded. A
    /// crash state gives it zeros, at no length or at the length it had.
    names_only: bool,
    /// (op index, length) when a name file got a name: its length then.
    lens: Vec<(usize, u64)>,
}

/// A name in a directory (of a file or of a directory), from the op that made it to the one
/// that removed it.
struct Entry {
    rel: PathBuf,
    /// Index into `Recording::dirs` of its directory, or `None` for the run's root.
    parent: Option<usize>,
    added_at: usize,
    removed_at: Option<usize>,
}

/// A file's name.
struct Name {
    entry: Entry,
    inode: usize,
}

/// One workload's run, ready to cut into crash states.
struct Recording {
    workload: &'static str,
    ops: usize,
    inodes: Vec<Inode>,
    names: Vec<Name>,
    dirs: Vec<Entry>,
    writes: Vec<Write>,
    /// Op index of every successful flush of each inode.
    flushes: Vec<Vec<usize>>,
    /// (op index, directory) of every directory sync; `None` is the root.
    dir_syncs: Vec<(usize, Option<usize>)>,
    /// For each cut 0..=ops: how many whole acknowledgement lines the ops before it wrote.
    acked: Vec<usize>,
    acks: PathBuf,
    _dir: tempfile::TempDir,
}

/// The names and directories of a run as the log changes them.
#[derive(Default)]
struct Tree {
    names: Vec<Name>,
    dirs: Vec<Entry>,
}

impl Tree {
    fn live_dir(&self, rel: &Path) -> Option<usize> {
        self.dirs.iter().rposition(|d| d.rel == rel && d.removed_at.is_none())
    }

    /// The directory holding `rel`, which must exist.
    fn parent_of(&self, rel: &Path) -> Option<usize> {
        let parent = rel.parent().unwrap();
        if parent.as_os_str().is_empty() {
            return None;
        }
        Some(self.live_dir(parent).unwrap_or_else(|| panic!("{} was not created", parent.display())))
    }

    fn add_name(&mut self, rel: PathBuf, inode: usize, at: usize) {
        assert!(
            !self.names.iter().any(|n| n.entry.rel == rel && n.entry.removed_at.is_none()),
            "{} is given a second time",
            rel.display()
        );
        let parent = self.parent_of(&rel);
        self.names.push(Name { entry: Entry { rel, parent, added_at: at, removed_at: None }, inode });
    }

    fn remove_name(&mut self, rel: &Path, inode: usize, at: usize) {
        let name = self
            .names
            .iter_mut()
            .rfind(|n| n.entry.rel == rel && n.inode == inode && n.entry.removed_at.is_none())
            .unwrap_or_else(|| panic!("{} is removed, but was never given", rel.display()));
        name.entry.removed_at = Some(at);
    }
}

fn record(workload: &'static str) -> Recording {
    let dir = tempfile::tempdir().unwrap();
    // The shim logs resolved paths; the root must be spelt the same way.
    let root = dir.path().canonicalize().unwrap().join("run");
    std::fs::create_dir(&root).unwrap();
    let log = dir.path().join("iofault.log");
    let mut cmd = Command::new(CHILD);
    cmd.arg("run").arg(workload).arg(&root);
    // The lock file and the temporary names it and a new data.mdb are built under: names
    // only, their contents do not matter after a power loss.
    // The relaxed mode's `checkpoint` is a data file as `data.mdb` is; a store that does not
    // make one simply never shows it in the log.
    let mut mode =
        Mode::new().watch("data.mdb").watch("checkpoint").names("lock.mdb").names(".varvedb-tmp-*");
    if workload == "renamed" {
        mode = mode.fail("link:1+:eperm");
    }
    mode.marker("acks").record(&log).apply(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{workload}: the workload failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let ops = iofault::parse_log(&std::fs::read(&log).unwrap());
    let acks = dir.path().join("acks");
    std::fs::copy(root.join("acks"), &acks).unwrap();

    let rel = |path: &Path| path.strip_prefix(&root).ok().map(Path::to_path_buf);
    let inside = |path: &Path| {
        rel(path).unwrap_or_else(|| panic!("{workload}: {} is outside the run", path.display()))
    };
    let mut inodes: Vec<Inode> = Vec::new();
    let mut ids: BTreeMap<u32, usize> = BTreeMap::new();
    let mut tree = Tree::default();
    let mut writes = Vec::new();
    let mut flushes: Vec<Vec<usize>> = Vec::new();
    let mut dir_syncs = Vec::new();
    let mut cache: Vec<Vec<u8>> = Vec::new();
    let mut acked = vec![0];
    let mut lines = 0;
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::File { file, path, ino, created, names_only } => {
                let rel = inside(path);
                assert!(created, "{workload}: {} existed before the run", path.display());
                ids.insert(*file, inodes.len());
                tree.add_name(rel, inodes.len(), i);
                inodes.push(Inode { ino: *ino, names_only: *names_only, lens: Vec::new() });
                flushes.push(Vec::new());
                cache.push(Vec::new());
            }
            Op::Link { file, path, len } => {
                let inode = ids[file];
                tree.add_name(inside(path), inode, i);
                inodes[inode].lens.push((i, *len));
            }
            Op::Unlink { file, path } => tree.remove_name(&inside(path), ids[file], i),
            Op::Rename { file, from, to } => {
                tree.remove_name(&inside(from), ids[file], i);
                tree.add_name(inside(to), ids[file], i);
            }
            Op::Mkdir(path) => {
                if let Some(rel) = rel(path) {
                    let parent = tree.parent_of(&rel);
                    tree.dirs.push(Entry { rel, parent, added_at: i, removed_at: None });
                }
            }
            Op::Rmdir(path) => {
                if let Some(rel) = rel(path) {
                    let d =
                        tree.live_dir(&rel).unwrap_or_else(|| panic!("{} was not created", rel.display()));
                    tree.dirs[d].removed_at = Some(i);
                }
            }
            Op::DirSync(path) => {
                if let Some(rel) = rel(path) {
                    let dir = (!rel.as_os_str().is_empty()).then(|| tree.live_dir(&rel).unwrap());
                    dir_syncs.push((i, dir));
                }
            }
            Op::Write { file, offset, data, sync } => {
                let file = ids[file];
                writes.push(Write::new(i, file, &mut cache[file], *offset, data, *sync));
            }
            Op::Flush { file } => flushes[ids[file]].push(i),
            // Each acknowledgement is one write, but count whole lines all the same.
            Op::Mark(bytes) => lines += std::str::from_utf8(bytes).unwrap().matches('\n').count(),
            Op::Truncate { .. } => panic!("{workload}: truncation is not modelled"),
        }
        acked.push(lines);
    }
    Recording {
        workload,
        ops: ops.len(),
        inodes,
        names: tree.names,
        dirs: tree.dirs,
        writes,
        flushes,
        dir_syncs,
        acked,
        acks,
        _dir: dir,
    }
}

/// One crash state: the names it holds, the contents of their files, and how it was made.
struct CrashState {
    id: usize,
    cut: usize,
    /// Each name and the index of its file's contents in `contents`.
    names: Vec<(PathBuf, usize)>,
    contents: Vec<Vec<u8>>,
    /// Of each of `contents`, the data file of the run it is (an index into
    /// `Recording::inodes`), or `None` for a name file.
    files: Vec<Option<usize>>,
    dirs: Vec<PathBuf>,
    how: String,
}

impl CrashState {
    /// Writes the state's directories and files under `root`, a new directory. Names of one
    /// file are hard links, as they were.
    fn write_to(&self, root: &Path) {
        std::fs::create_dir_all(root).unwrap();
        for d in &self.dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let mut written: BTreeMap<usize, PathBuf> = BTreeMap::new();
        for (rel, c) in &self.names {
            let path = root.join(rel);
            match written.get(c) {
                Some(first) => std::fs::hard_link(first, &path).unwrap(),
                None => {
                    std::fs::write(&path, &self.contents[*c]).unwrap();
                    written.insert(*c, path);
                }
            }
        }
    }
}

/// Where a name made or removed in the run stands in a crash state.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Not made before the cut.
    Unmade,
    /// There (made, or removed without the removal reaching the disk).
    Here,
    /// Made but lost, or removed for good.
    Gone,
}

impl Recording {
    /// Whether a sync of directory `parent` finished after op `at` and before `cut`.
    fn synced(&self, at: usize, parent: Option<usize>, cut: usize) -> bool {
        self.dir_syncs.iter().any(|&(s, dir)| s > at && s < cut && dir == parent)
    }

    /// Where `entry` stands at `cut`: a name made or removed (the op in flight at the cut
    /// too) is as its directory's last sync after that op left it, or, with no such sync,
    /// either way. A name whose directory is not there is not there either.
    fn standing(&self, entry: &Entry, parent_here: bool, cut: usize, rng: &mut fastrand::Rng) -> Standing {
        if entry.added_at > cut {
            return Standing::Unmade;
        }
        let here = match entry.removed_at {
            Some(removed) if removed <= cut => !self.synced(removed, entry.parent, cut) && rng.bool(),
            _ => self.synced(entry.added_at, entry.parent, cut) || rng.bool(),
        };
        if here && parent_here { Standing::Here } else { Standing::Gone }
    }

    /// The length a name file had at its last link before `cut`.
    fn names_only_len(&self, inode: usize, cut: usize) -> u64 {
        self.inodes[inode].lens.iter().take_while(|&&(at, _)| at < cut).last().map_or(0, |&(_, len)| len)
    }
}

/// Makes crash states at ascending cuts, keeping each file's durable image from one cut to
/// the next.
struct Cutter<'r> {
    rec: &'r Recording,
    durable: Vec<Vec<u8>>,
    durable_len: Vec<u64>,
    /// Per file and sector, 1 + the op index of the write whose bytes the durable image holds.
    owner: Vec<Vec<usize>>,
    applied: Vec<bool>,
}

impl<'r> Cutter<'r> {
    fn new(rec: &'r Recording) -> Self {
        let files = rec.inodes.len();
        Cutter {
            rec,
            durable: vec![Vec::new(); files],
            durable_len: vec![0; files],
            owner: vec![Vec::new(); files],
            applied: vec![false; rec.writes.len()],
        }
    }

    /// The crash state after op `cut`: cuts must not go down from one call to the next.
    fn state(&mut self, id: usize, cut: usize, rng: &mut fastrand::Rng) -> CrashState {
        let rec = self.rec;
        // Writes of a file before its last flush that finished before the cut are durable.
        let flushed_before: Vec<usize> = rec
            .flushes
            .iter()
            .map(|f| f.iter().take_while(|&&at| at < cut).last().map_or(0, |&at| at))
            .collect();
        let mut pending = Vec::new();
        for (w, write) in rec.writes.iter().enumerate() {
            if write.op > cut || self.applied[w] {
                continue;
            }
            if write.op < cut && (write.sync || write.op < flushed_before[write.file]) {
                self.applied[w] = true;
                let f = write.file;
                let all: Vec<usize> = (0..write.sector_count()).collect();
                apply(write, &all, &mut self.durable[f], &mut self.durable_len[f], &self.owner[f]);
                let owner = &mut self.owner[f];
                let last = write.first_sector as usize + write.sector_count();
                if owner.len() < last {
                    owner.resize(last, 0);
                }
                for o in &mut owner[write.first_sector as usize..last] {
                    *o = (*o).max(write.op + 1);
                }
            } else if write.op < cut || rng.bool() {
                // Written after its file's last flush, or in flight at the cut.
                pending.push(w);
            }
        }
        let mut files = self.durable.clone();
        let mut lens = self.durable_len.clone();
        let keep = [0.25, 0.5, 0.75, 1.0][rng.usize(..4)];
        let mut pieces: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut torn = 0;
        for &w in &pending {
            if rng.f64() >= keep {
                continue;
            }
            let write = &rec.writes[w];
            let count = write.sector_count();
            let sectors: Vec<usize> = match rng.u8(..4) {
                0 => (0..count).collect(),
                1 => (0..rng.usize(1..=count)).collect(),
                2 => (0..count).filter(|_| rng.bool()).collect(),
                _ => {
                    // The file's new length reached the disk, none of the bytes: unwritten
                    // sectors read as zeros.
                    let f = write.file;
                    lens[f] = lens[f].max(write.len_after);
                    Vec::new()
                }
            };
            torn += usize::from(sectors.len() < count);
            pieces.push((w, sectors));
        }
        // Any order: of two kept writes to one sector, either may be the one on the disk.
        rng.shuffle(&mut pieces);
        for (w, sectors) in &pieces {
            let write = &rec.writes[*w];
            apply(write, sectors, &mut files[write.file], &mut lens[write.file], &self.owner[write.file]);
        }
        let names = DrawnNames::draw(rec, cut, &mut files, &lens, rng);
        let mut how = format!(
            "cut after op {cut} of {}; {} writes after the last flushes, {} kept ({torn} torn)",
            rec.ops,
            pending.len(),
            pieces.len()
        );
        if !names.lost.is_empty() {
            let _ = write!(how, "; names lost: {}", names.lost.join(", "));
        }
        if !names.back.is_empty() {
            let _ = write!(how, "; removed names back: {}", names.back.join(", "));
        }
        CrashState {
            id,
            cut,
            names: names.names,
            contents: names.contents,
            files: names.files,
            dirs: names.dirs,
            how,
        }
    }
}

/// The names of a crash state, and the contents of their files.
struct DrawnNames {
    names: Vec<(PathBuf, usize)>,
    contents: Vec<Vec<u8>>,
    files: Vec<Option<usize>>,
    dirs: Vec<PathBuf>,
    /// Names made and not there; names removed and there.
    lost: Vec<String>,
    back: Vec<String>,
}

impl DrawnNames {
    /// Each directory and file name made or removed in the run stands as the last sync of
    /// its directory left it, or by chance. `files` and `lens` are the files' images at the
    /// cut (taken from).
    fn draw(
        rec: &Recording,
        cut: usize,
        files: &mut [Vec<u8>],
        lens: &[u64],
        rng: &mut fastrand::Rng,
    ) -> DrawnNames {
        let mut dir_here = Vec::new();
        let (mut lost, mut back) = (Vec::new(), Vec::new());
        let mut note = |entry: &Entry, standing: Standing| {
            let removed = entry.removed_at.is_some_and(|r| r <= cut);
            match standing {
                Standing::Here if removed => back.push(entry.rel.display().to_string()),
                Standing::Gone if !removed => lost.push(entry.rel.display().to_string()),
                _ => {}
            }
        };
        for d in &rec.dirs {
            let standing = rec.standing(d, d.parent.is_none_or(|p| dir_here[p]), cut, rng);
            note(d, standing);
            dir_here.push(standing == Standing::Here);
        }
        let mut names = Vec::new();
        let mut contents: Vec<Vec<u8>> = Vec::new();
        let mut content_files = Vec::new();
        let mut content_of: BTreeMap<usize, usize> = BTreeMap::new();
        for name in &rec.names {
            let entry = &name.entry;
            let standing = rec.standing(entry, entry.parent.is_none_or(|p| dir_here[p]), cut, rng);
            note(entry, standing);
            if standing != Standing::Here {
                continue;
            }
            let f = name.inode;
            let c = *content_of.entry(f).or_insert_with(|| {
                let bytes = if rec.inodes[f].names_only {
                    // What the lock file held does not matter; its length might.
                    vec![0; if rng.bool() { rec.names_only_len(f, cut) as usize } else { 0 }]
                } else {
                    let mut bytes = std::mem::take(&mut files[f]);
                    bytes.resize(lens[f] as usize, 0);
                    bytes
                };
                contents.push(bytes);
                content_files.push((!rec.inodes[f].names_only).then_some(f));
                contents.len() - 1
            });
            names.push((entry.rel.clone(), c));
        }
        let dirs = rec.dirs.iter().zip(&dir_here).filter(|&(_, &h)| h).map(|(d, _)| d.rel.clone()).collect();
        DrawnNames { names, contents, files: content_files, dirs, lost, back }
    }
}

/// Writes the chosen sectors of `write` into `image`, except where `owner` says a later
/// write's bytes are durable there already.
fn apply(write: &Write, sectors: &[usize], image: &mut Vec<u8>, len: &mut u64, owner: &[usize]) {
    const S: usize = SECTOR as usize;
    for &s in sectors {
        let sector = write.first_sector as usize + s;
        if owner.get(sector).is_some_and(|&o| o > write.op + 1) {
            continue;
        }
        let at = sector * S;
        if image.len() < at + S {
            image.resize(at + S, 0);
        }
        image[at..at + S].copy_from_slice(&write.sectors[s * S..(s + 1) * S]);
        *len = (*len).max(write.len_after.min((sector as u64 + 1) * SECTOR));
    }
}

#[derive(Default, Debug)]
struct Counts {
    states: usize,
    ok: usize,
    unopenable: usize,
    creation: usize,
    integrity: usize,
    unclean: usize,
    lost_states: usize,
    lost_items: u64,
    crashes: usize,
    /// The first failure of each kind: verdict, how the state was made, and where its
    /// files were kept.
    examples: BTreeMap<String, String>,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.states += other.states;
        self.ok += other.ok;
        self.unopenable += other.unopenable;
        self.creation += other.creation;
        self.integrity += other.integrity;
        self.unclean += other.unclean;
        self.lost_states += other.lost_states;
        self.lost_items += other.lost_items;
        self.crashes += other.crashes;
        for (k, v) in &other.examples {
            self.examples.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} crash states: {} ok, {} unopenable, {} unopenable before the store's creation was acknowledged, \
             {} integrity failures, {} with a creation's temporary entries left after an open, \
             {} with acknowledged data lost ({} items), {} crashes",
            self.states,
            self.ok,
            self.unopenable,
            self.creation,
            self.integrity,
            self.unclean,
            self.lost_states,
            self.lost_items,
            self.crashes
        )
    }
}

/// Writes a batch of crash states, checks them in child processes, and counts verdicts.
fn check(rec: &Recording, states: &[CrashState], counts: &mut Counts) {
    let dir = tempfile::tempdir().unwrap();
    let mut jobs: Vec<(usize, String)> = Vec::new();
    // A power loss is a reboot: the shim, recording nothing, shows another boot id. And the
    // files of a crash state are the files of the run: the shim shows each data file with
    // the inode number it had there.
    let mut mode = Mode::new().boot_id(OTHER_BOOT);
    for state in states {
        let root = dir.path().join(state.id.to_string());
        state.write_to(&root);
        let mut shown = vec![false; state.contents.len()];
        for (rel, c) in &state.names {
            assert!(
                state.files[*c].is_some() || rel.file_name() != Some("data.mdb".as_ref()),
                "{} is not a data file",
                rel.display()
            );
            if let (Some(f), false) = (state.files[*c], shown[*c]) {
                let meta = std::fs::metadata(root.join(rel)).unwrap();
                mode = mode.inode(meta.dev(), meta.ino(), rec.inodes[f].ino);
                shown[*c] = true;
            }
        }
        jobs.push((state.id, format!("{} {} {}\n", state.id, root.display(), rec.acked[state.cut])));
    }
    let mut verdicts: BTreeMap<usize, String> = BTreeMap::new();
    let mut left: Vec<&CrashState> = states.iter().collect();
    while !left.is_empty() {
        let jobs_file = dir.path().join("jobs");
        let lines: String = jobs
            .iter()
            .filter(|(id, _)| left.iter().any(|s| s.id == *id))
            .map(|(_, line)| line.as_str())
            .collect();
        std::fs::write(&jobs_file, lines).unwrap();
        let mut cmd = Command::new(CHILD);
        cmd.arg("check").arg(rec.workload).arg(&rec.acks).arg(&jobs_file);
        mode.apply(&mut cmd);
        let out = cmd.output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let (id, verdict) = line.split_once(' ').unwrap();
            verdicts.insert(id.parse().unwrap(), verdict.to_owned());
        }
        left.retain(|s| !verdicts.contains_key(&s.id));
        if !out.status.success() {
            // The child died checking the first state it gave no verdict for.
            let dead = left.remove(0);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
            verdicts.insert(dead.id, format!("crash {} ({last})", out.status));
        }
    }
    for state in states {
        let verdict = &verdicts[&state.id];
        let kind = verdict.split(' ').next().unwrap();
        counts.states += 1;
        match kind {
            "ok" => counts.ok += 1,
            "unopenable" => counts.unopenable += 1,
            "creation" => counts.creation += 1,
            "integrity" => counts.integrity += 1,
            "unclean" => counts.unclean += 1,
            "lost" => {
                counts.lost_states += 1;
                counts.lost_items += verdict.split(' ').nth(1).unwrap().parse::<u64>().unwrap();
            }
            "crash" => counts.crashes += 1,
            other => panic!("unknown verdict {other:?}"),
        }
        if kind != "ok" && !counts.examples.contains_key(&format!("{} {kind}", rec.workload)) {
            // Keep the first failing state of each kind for a look at its files, as it was
            // before the check opened it.
            let kept = failures_dir().join(format!("{}-{}", rec.workload, state.id));
            state.write_to(&kept);
            counts.examples.insert(
                format!("{} {kind}", rec.workload),
                format!("{verdict}\n    made by: {}\n    kept at: {}", state.how, kept.display()),
            );
        }
    }
}

/// Where the first failing state of each kind is kept.
fn failures_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("powerloss-failures")
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn power_loss_at_any_point_keeps_every_acknowledged_write() {
    let total = env_number("VARVEDB_POWERLOSS_STATES", 1_000) as usize;
    let seed = env_number("VARVEDB_POWERLOSS_SEED", 1);
    let started = std::time::Instant::now();
    drop(std::fs::remove_dir_all(failures_dir()));
    let all = Mutex::new(Counts::default());
    // Two workloads at a time: recording and checking run in child processes, and two
    // keep both cores of a small machine busy.
    let next = Mutex::new(0usize);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let w = {
                        let mut next = next.lock().unwrap();
                        *next += 1;
                        *next - 1
                    };
                    let Some(&workload) = WORKLOADS.get(w) else { break };
                    let share = total / WORKLOADS.len() + usize::from(w < total % WORKLOADS.len());
                    let rec = record(workload);
                    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(w as u64));
                    // A fifth of the cuts fall in the `open` that creates the store (up to its
                    // acknowledgement), a few ops of the run where every name changes.
                    let opened = rec.acked.iter().position(|&n| n > 0).unwrap_or(rec.ops);
                    let mut cuts: Vec<usize> = (0..share)
                        .map(|i| if i % 5 == 0 { rng.usize(0..=opened) } else { rng.usize(0..=rec.ops) })
                        .collect();
                    cuts.sort_unstable();
                    let mut cutter = Cutter::new(&rec);
                    let mut counts = Counts::default();
                    for (b, batch) in cuts.chunks(BATCH).enumerate() {
                        let states: Vec<CrashState> = batch
                            .iter()
                            .enumerate()
                            .map(|(i, &cut)| cutter.state(b * BATCH + i, cut, &mut rng))
                            .collect();
                        check(&rec, &states, &mut counts);
                    }
                    eprintln!(
                        "{workload}: {} ops, {} acknowledgements; {}",
                        rec.ops,
                        rec.acked[rec.ops],
                        counts.summary()
                    );
                    all.lock().unwrap().add(&counts);
                }
            });
        }
    });
    let all = all.into_inner().unwrap();
    eprintln!("power loss: {} (seed {seed}, {:.0?})", all.summary(), started.elapsed());
    for (kind, example) in &all.examples {
        eprintln!("first {kind}: {example}");
    }
    assert_eq!(all.states, total);
    // A store is created whole or not at all: a power loss during the `open` that creates
    // it leaves no data.mdb (the next open creates the store) or a complete one, never one
    // LMDB refuses (`creation`).
    assert_eq!(
        (all.unopenable, all.creation, all.integrity, all.unclean, all.lost_states, all.crashes),
        (0, 0, 0, 0, 0, 0),
        "{}",
        all.summary()
    );
}

/// What `program` with `args` prints, run under the shim in `mode`; it must succeed.
fn output_under<A: AsRef<std::ffi::OsStr>>(program: &str, args: &[A], mode: &Mode) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    mode.apply(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The children that open crash states must see another boot: the shim's fake boot id has to
/// reach a read through `std::fs`, as the store does it, and through another reader (`cat`,
/// which opens it by another entry of libc), and nothing else may change.
#[test]
fn the_shim_shows_another_boot_id() {
    let ours = std::fs::read_to_string(BOOT_ID).unwrap();
    assert_ne!(ours.trim(), OTHER_BOOT, "the fake boot id is this machine's");
    let read = |program: &str, args: &[&str], mode: Mode| output_under(program, args, &mode);
    let fake = format!("{OTHER_BOOT}\n");
    assert_eq!(read(CHILD, &["boot-id"], Mode::new().boot_id(OTHER_BOOT)), fake);
    assert_eq!(read("cat", &[BOOT_ID], Mode::new().boot_id(OTHER_BOOT)), fake);
    // Without the variable the shim passes the real file through.
    assert_eq!(read(CHILD, &["boot-id"], Mode::new()), ours);
    // Only that exact path: another file of the same directory is the kernel's.
    let other = read("cat", &["/proc/sys/kernel/random/uuid"], Mode::new().boot_id(OTHER_BOOT));
    assert_ne!(other, fake);
}

/// The files of a crash state must pass for the files of the run: the inode number the shim
/// shows has to reach `std::fs` by path and by descriptor, as the store reads it, and
/// another reader (`stat`), for that file only.
#[test]
fn the_shim_shows_the_inodes_of_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (file, other) = (dir.path().join("data.mdb"), dir.path().join("other"));
    std::fs::write(&file, b"x").unwrap();
    std::fs::write(&other, b"y").unwrap();
    let meta = std::fs::metadata(&file).unwrap();
    let shown = meta.ino() + 1_000_003;
    let run = |program: &str, args: &[&std::ffi::OsStr], mode: Mode| output_under(program, args, &mode);
    let mode = || Mode::new().inode(meta.dev(), meta.ino(), shown);
    assert_eq!(run(CHILD, &["inode".as_ref(), file.as_os_str()], mode()), format!("{shown} {shown}\n"));
    assert_eq!(run("stat", &["-c".as_ref(), "%i".as_ref(), file.as_os_str()], mode()), format!("{shown}\n"));
    let other_ino = std::fs::metadata(&other).unwrap().ino();
    assert_eq!(
        run(CHILD, &["inode".as_ref(), other.as_os_str()], mode()),
        format!("{other_ino} {other_ino}\n")
    );
    assert_eq!(
        run(CHILD, &["inode".as_ref(), file.as_os_str()], Mode::new()),
        format!("{0} {0}\n", meta.ino())
    );
}
