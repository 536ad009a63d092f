/*
 * iofault: an LD_PRELOAD shim that records, or fails, the writes and flushes a process
 * issues to chosen files, and the names it gives them. Used by the power-loss simulation
 * (tests/powerloss.rs) and by tests of how the store handles failed writes
 * (tests/failed_commits.rs); tests/support/iofault.rs builds it and parses its log.
 *
 *   cc -shared -fPIC -O2 -o libiofault.so iofault.c -ldl
 *   LD_PRELOAD=./libiofault.so IOFAULT_LOG=/tmp/log IOFAULT_MARKER=acks program
 *
 * Environment (read once, at the first intercepted call). Lists are colon-separated
 * basename patterns (fnmatch(3): `*`, `?`, `[...]`), matched against the last component of
 * the path a file is opened, linked or renamed by.
 *
 *   IOFAULT_WATCH   files whose writes are watched (data files); default "data.mdb". A file
 *                   is watched from the moment it is opened through one of the calls below,
 *                   whichever directory it is in, and under every name it gets later.
 *   IOFAULT_NAMES   files whose names are watched but not their contents (name files); default
 *                   none. Their creation, links, unlinks and renames are logged like a data
 *                   file's; their writes, flushes, maps and allocations pass unrecorded. For
 *                   files whose contents do not matter after a power loss (LMDB's lock.mdb).
 *   IOFAULT_MARKER  marker files; default none. Writes to a marker file go through to it and
 *                   are also logged as marker records, so a program can put its
 *                   acknowledgements into the same ordered stream as its I/O.
 *   IOFAULT_PAGE_SIZE  the page size `metawrite` counts pages in; default the system's
 *                   (which is LMDB's page size).
 *   IOFAULT_BOOT_ID a fake boot id: an open of exactly /proc/sys/kernel/random/boot_id
 *                   (through any of the open calls below) returns a new read-only descriptor
 *                   of an anonymous file holding this value and a newline, as the kernel's
 *                   file holds the real one. Lets a process see another boot than the one
 *                   that wrote a store (a power loss between them). Works with or without a
 *                   log or faults.
 *   IOFAULT_INODES  inode numbers to show in place of real ones: comma-separated
 *                   DEV:INO=SHOWN, decimal. The stat calls below report the file on device
 *                   DEV with inode INO as having inode SHOWN. Lets a copy of a file pass
 *                   for the file it was copied from (a crash state written to new files
 *                   for the files of a recorded run), for a program that remembers a file
 *                   by its inode. Works with or without a log or faults.
 *   IOFAULT_LOG     path of the binary log to write (created, appended to). Unset: no log.
 *                   With a log, calls the shim does not model (below) abort the process
 *                   when they touch a watched file, instead of letting it pass unrecorded.
 *   IOFAULT_FAIL    comma-separated faults to inject, each OP:N:KIND or OP:N+:KIND: the Nth
 *                   matching call on a data file (counted from 1 per fault; N+ means the
 *                   Nth and every later one) fails. Works with or without a log.
 *                   OP   write      any write call (write, pwrite, writev, pwritev)
 *                        pwrite     pwrite, pwrite64
 *                        writev     writev
 *                        pwritev    pwritev, pwritev64, pwritev2, pwritev64v2
 *                        syncwrite  any write through an O_DSYNC/O_SYNC descriptor
 *                        metawrite  any write that lies within page 0 or within page 1 of
 *                                   the file (LMDB's meta pages: whether written through an
 *                                   O_DSYNC descriptor or, with MDB_NOMETASYNC, a plain one);
 *                                   a write of both pages at once (a new file's) is not one
 *                        fsync      fsync
 *                        fdatasync  fdatasync
 *                        flush      fsync or fdatasync
 *                        link       link or linkat of a data or name file (counted over
 *                                   both kinds)
 *                   KIND eio        fails with EIO; nothing is written, flushed or linked
 *                        enospc     fails with ENOSPC; nothing is written, flushed or linked
 *                        eperm      (link only) fails with EPERM, as on a filesystem
 *                                   without hard links
 *                        short      (writes only) writes the first half of the bytes and
 *                                   returns that length
 *                        dies       (writes only) the bytes are written whole, then the
 *                                   call fails with EIO, and so does every later write and
 *                                   flush of a data file: a disk that failed right after
 *                                   taking the write
 *                   Each injected fault is reported on stderr as a line starting "iofault:".
 *
 * The log is a sequence of records in the machine's byte order (little-endian on the
 * targets we test): u32 kind, u32 file, u64 offset, u64 length, then `length` bytes. Paths
 * are absolute, with every directory resolved (no symlinks, no `..`).
 *
 *   1 FILE       a watched file seen for the first time: file = its id, offset = flags
 *                (1: this open created it, a new directory entry; 2: a name file), bytes =
 *                its path, a NUL, and its inode number (8 bytes)
 *   2 WRITE      bytes written at offset (only the bytes the call really wrote)
 *   3 SYNCWRITE  as WRITE, through an O_DSYNC/O_SYNC descriptor: durable when it returns
 *   4 FLUSH      fsync or fdatasync of the file returned success
 *   5 MARK       bytes written to a marker file (file = 0)
 *   6 MKDIR      a directory was created; bytes = its path
 *   7 DIRSYNC    fsync or fdatasync of a directory returned success; bytes = its path
 *   8 TRUNCATE   ftruncate of the file to offset bytes
 *   9 LINK       the file got another name: bytes = the new name's path, offset = the
 *                file's size then
 *  10 UNLINK     a name of the file was removed: bytes = its path
 *  11 RMDIR      a directory was removed; bytes = its path
 *  12 RENAME     a name of the file moved: bytes = the old path, a NUL, the new path
 *
 * Each record is logged after its call returns, under one lock held across the call, so
 * the log's order is the order in which the calls completed. Files are identified by
 * device and inode, so all descriptors and names of a file (LMDB opens data.mdb twice; a
 * file built under a temporary name is linked into place) share an id.
 *
 * Intercepted: open, open64, openat, openat64, creat, creat64 (and the _2 fortified forms),
 * close, dup, dup2, dup3, fcntl and fcntl64 (F_DUPFD*, F_SETFL), write, pwrite, pwrite64,
 * writev, pwritev, pwritev64, pwritev2, pwritev64v2, fsync, fdatasync, ftruncate,
 * ftruncate64, mkdir, mkdirat, rmdir, link, linkat, unlink, unlinkat, remove, rename,
 * renameat, renameat2 (the opens also for IOFAULT_BOOT_ID); for IOFAULT_INODES stat,
 * stat64, lstat, lstat64, fstat, fstat64, fstatat, fstatat64 and statx (glibc 2.33 or
 * later, where these are functions of their own). Refused while logging (the process aborts
 * with a message): on a data file O_APPEND, a writable shared mmap, sync_file_range,
 * fallocate, posix_fallocate, copy_file_range, sendfile, splice, truncate by path, and any
 * write or flush through a descriptor the shim did not see opened; on any watched file a
 * rename that replaces or exchanges, a link by descriptor (AT_EMPTY_PATH) of a file with no
 * name left; a watched name given to, or taken from, a file the shim has not seen opened
 * (one that existed before); a data file's name given to a name file (its contents were not
 * recorded); a rename of a directory; and sync and syncfs while watched files are open.
 * Calls made inside libc itself (stdio) are not seen by any LD_PRELOAD shim; do not use
 * stdio on watched files.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

enum {
	REC_FILE = 1,
	REC_WRITE,
	REC_SYNCWRITE,
	REC_FLUSH,
	REC_MARK,
	REC_MKDIR,
	REC_DIRSYNC,
	REC_TRUNCATE,
	REC_LINK,
	REC_UNLINK,
	REC_RMDIR,
	REC_RENAME
};
/* What a descriptor or a file is: FD_DATA and FD_NAME files have names the log follows. */
enum { FD_NONE = 0, FD_DATA, FD_MARKER, FD_NAME };
enum {
	OP_WRITE = 1,
	OP_PWRITE = 2,
	OP_WRITEV = 4,
	OP_PWRITEV = 8,
	OP_SYNCWRITE = 16,
	OP_FSYNC = 32,
	OP_FDATASYNC = 64,
	OP_LINK = 128,
	OP_METAWRITE = 256
};
#define OP_WRITES (OP_WRITE | OP_PWRITE | OP_WRITEV | OP_PWRITEV | OP_SYNCWRITE | OP_METAWRITE)
/* A fault's kind besides an errno: a short write, or a write that goes through and then
 * fails, as does everything after it. */
enum { KIND_SHORT = -1, KIND_DIES = -2 };

#define MAX_FDS 65536
#define MAX_FILES 4096
#define MAX_FAULTS 16
#define MAX_NAMES 16
#define MAX_INODES 4096

struct fdent {
	unsigned char kind;  /* FD_* */
	unsigned char dsync; /* opened with O_DSYNC or O_SYNC */
	int file;            /* index into files */
};

struct file {
	dev_t dev;
	ino_t ino;
	unsigned char kind; /* FD_DATA, FD_MARKER or FD_NAME */
	/* Its last name was removed: once its descriptors are closed its inode may be reused,
	 * so a new file with the same device and inode is another file. */
	unsigned char gone;
};

struct fault {
	char name[32];  /* the OP it was given as */
	unsigned ops;   /* OP_* mask */
	unsigned long long nth, seen;
	int repeat;     /* N+ */
	int err;        /* errno to fail with, or KIND_* */
};

static struct fdent fds[MAX_FDS];
static struct file files[MAX_FILES];
static int nfiles;
static struct fault faults[MAX_FAULTS];
static int nfaults;
static char *watch[MAX_NAMES], *names[MAX_NAMES], *markers[MAX_NAMES];
static int nwatch, nnames, nmarkers;
static int logfd = -1;
static int active; /* a log or a fault: anything to do at all */
static unsigned long long page_size; /* for OP_METAWRITE */
static int dead;   /* a `dies` fault fired: every later write and flush of a data file fails */
static const char *boot_id; /* IOFAULT_BOOT_ID, or NULL */
/* IOFAULT_INODES: the file on device inode_dev[i] with inode inode_real[i] shows inode_shown[i]. */
static unsigned long long inode_dev[MAX_INODES], inode_real[MAX_INODES], inode_shown[MAX_INODES];
static int ninodes;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_close)(int);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_fcntl)(int, int, ...);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev2)(int, const struct iovec *, int, off_t, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_mkdir)(const char *, mode_t);
static int (*real_mkdirat)(int, const char *, mode_t);
static int (*real_rmdir)(const char *);
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static int (*real_sync_file_range)(int, off_t, off_t, unsigned int);
static int (*real_fallocate)(int, int, off_t, off_t);
static int (*real_posix_fallocate)(int, off_t, off_t);
static ssize_t (*real_copy_file_range)(int, off_t *, int, off_t *, size_t, unsigned int);
static ssize_t (*real_sendfile)(int, int, off_t *, size_t);
static ssize_t (*real_splice)(int, off_t *, int, off_t *, size_t, unsigned int);
static int (*real_truncate)(const char *, off_t);
static int (*real_linkat)(int, const char *, int, const char *, int);
static int (*real_unlinkat)(int, const char *, int);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);
static void (*real_sync)(void);
static int (*real_syncfs)(int);
/* Optional: only glibc 2.33 and later export the stat family as functions. */
static int (*real_fstatat)(int, const char *, struct stat *, int);
static int (*real_fstat)(int, struct stat *);
static int (*real_statx)(int, const char *, int, unsigned int, struct statx *);

static void say(const char *a, const char *b, const char *c)
{
	char line[PATH_MAX + 256];
	snprintf(line, sizeof line, "iofault: %s%s%s\n", a, b ? b : "", c ? c : "");
	if (real_write)
		(void)!real_write(2, line, strlen(line));
}

static void die(const char *what, const char *detail)
{
	say(what, detail ? ": " : "", detail);
	abort();
}

static void *need(const char *name)
{
	void *f = dlsym(RTLD_NEXT, name);
	if (!f)
		die("cannot find the real function ", name);
	return f;
}

static int split_names(char *list, char **out)
{
	int n = 0;
	for (char *tok = strtok(list, ":"); tok && n < MAX_NAMES; tok = strtok(NULL, ":"))
		out[n++] = tok;
	return n;
}

static void parse_faults(const char *spec)
{
	char *copy = strdup(spec);
	char *save = NULL;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (nfaults == MAX_FAULTS)
			die("too many faults in IOFAULT_FAIL", NULL);
		char op[32], kind[32], count[32];
		if (sscanf(tok, "%31[^:]:%31[^:]:%31s", op, count, kind) != 3)
			die("bad IOFAULT_FAIL entry (want OP:N:KIND)", tok);
		struct fault *f = &faults[nfaults++];
		snprintf(f->name, sizeof f->name, "%s", op);
		if (!strcmp(op, "write"))
			f->ops = OP_WRITE | OP_PWRITE | OP_WRITEV | OP_PWRITEV;
		else if (!strcmp(op, "pwrite"))
			f->ops = OP_PWRITE;
		else if (!strcmp(op, "writev"))
			f->ops = OP_WRITEV;
		else if (!strcmp(op, "pwritev"))
			f->ops = OP_PWRITEV;
		else if (!strcmp(op, "syncwrite"))
			f->ops = OP_SYNCWRITE;
		else if (!strcmp(op, "metawrite"))
			f->ops = OP_METAWRITE;
		else if (!strcmp(op, "fsync"))
			f->ops = OP_FSYNC;
		else if (!strcmp(op, "fdatasync"))
			f->ops = OP_FDATASYNC;
		else if (!strcmp(op, "flush"))
			f->ops = OP_FSYNC | OP_FDATASYNC;
		else if (!strcmp(op, "link"))
			f->ops = OP_LINK;
		else
			die("unknown operation in IOFAULT_FAIL", tok);
		char *end;
		f->nth = strtoull(count, &end, 10);
		f->repeat = *end == '+';
		if (f->nth == 0 || (*end && strcmp(end, "+")))
			die("bad count in IOFAULT_FAIL (want N or N+, from 1)", tok);
		int writes = (f->ops & OP_WRITES) != 0;
		if (!strcmp(kind, "eio"))
			f->err = EIO;
		else if (!strcmp(kind, "enospc"))
			f->err = ENOSPC;
		else if (!strcmp(kind, "eperm") && f->ops == OP_LINK)
			f->err = EPERM;
		else if (!strcmp(kind, "short") && writes)
			f->err = KIND_SHORT;
		else if (!strcmp(kind, "dies") && writes)
			f->err = KIND_DIES;
		else
			die("bad kind in IOFAULT_FAIL (eio, enospc; eperm for link; short or dies for writes)", tok);
	}
}

static void parse_inodes(const char *spec)
{
	char *copy = strdup(spec);
	char *save = NULL;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (ninodes == MAX_INODES)
			die("too many entries in IOFAULT_INODES", NULL);
		int i = ninodes++;
		if (sscanf(tok, "%llu:%llu=%llu", &inode_dev[i], &inode_real[i], &inode_shown[i]) != 3)
			die("bad IOFAULT_INODES entry (want DEV:INO=SHOWN)", tok);
	}
	free(copy);
}

static void init(void)
{
	real_open = need("open");
	real_openat = need("openat");
	real_close = need("close");
	real_dup = need("dup");
	real_dup2 = need("dup2");
	real_dup3 = need("dup3");
	real_fcntl = need("fcntl");
	real_write = need("write");
	real_pwrite = need("pwrite");
	real_writev = need("writev");
	real_pwritev = need("pwritev");
	real_pwritev2 = need("pwritev2");
	real_fsync = need("fsync");
	real_fdatasync = need("fdatasync");
	real_ftruncate = need("ftruncate");
	real_mkdir = need("mkdir");
	real_mkdirat = need("mkdirat");
	real_rmdir = need("rmdir");
	real_mmap = need("mmap");
	real_sync_file_range = need("sync_file_range");
	real_fallocate = need("fallocate");
	real_posix_fallocate = need("posix_fallocate");
	real_copy_file_range = need("copy_file_range");
	real_sendfile = need("sendfile");
	real_splice = need("splice");
	real_truncate = need("truncate");
	real_linkat = need("linkat");
	real_unlinkat = need("unlinkat");
	real_renameat2 = need("renameat2");
	real_sync = need("sync");
	real_syncfs = need("syncfs");
	real_fstatat = dlsym(RTLD_NEXT, "fstatat");
	real_fstat = dlsym(RTLD_NEXT, "fstat");
	real_statx = dlsym(RTLD_NEXT, "statx");

	const char *w = getenv("IOFAULT_WATCH");
	nwatch = split_names(strdup(w && *w ? w : "data.mdb"), watch);
	const char *n = getenv("IOFAULT_NAMES");
	if (n && *n)
		nnames = split_names(strdup(n), names);
	const char *m = getenv("IOFAULT_MARKER");
	if (m && *m)
		nmarkers = split_names(strdup(m), markers);
	const char *ps = getenv("IOFAULT_PAGE_SIZE");
	long sys = sysconf(_SC_PAGESIZE);
	page_size = ps && *ps ? strtoull(ps, NULL, 10) : (unsigned long long)(sys > 0 ? sys : 4096);
	if (page_size == 0)
		die("bad IOFAULT_PAGE_SIZE", ps);
	const char *inodes = getenv("IOFAULT_INODES");
	if (inodes && *inodes)
		parse_inodes(inodes);
	const char *b = getenv("IOFAULT_BOOT_ID");
	if (b && *b)
		boot_id = strdup(b);
	const char *f = getenv("IOFAULT_FAIL");
	if (f && *f)
		parse_faults(f);
	const char *log = getenv("IOFAULT_LOG");
	if (log && *log) {
		/* Opened with the real call: the log is never a watched file. */
		logfd = real_open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (logfd < 0)
			die("cannot open IOFAULT_LOG ", log);
	}
	active = logfd >= 0 || nfaults > 0;
}

#define INIT() pthread_once(&once, init)

/* ---- the log ---- */

static void log_bytes(const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t w = real_write(logfd, c, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("cannot write the log", strerror(errno));
		c += w;
		n -= (size_t)w;
	}
}

/* Writes one record; `iov` holds the bytes, of which the first `len` are logged. */
static void log_rec(uint32_t kind, int file, uint64_t off, const struct iovec *iov, int iovcnt, size_t len)
{
	if (logfd < 0)
		return;
	struct {
		uint32_t kind, file;
		uint64_t off, len;
	} h = { kind, (uint32_t)file, off, len };
	int saved = errno;
	log_bytes(&h, sizeof h);
	for (int i = 0; i < iovcnt && len > 0; i++) {
		size_t n = iov[i].iov_len < len ? iov[i].iov_len : len;
		log_bytes(iov[i].iov_base, n);
		len -= n;
	}
	errno = saved;
}

static void log_path(uint32_t kind, int file, uint64_t off, const char *path)
{
	struct iovec v = { (void *)path, strlen(path) };
	log_rec(kind, file, off, &v, 1, v.iov_len);
}

/* ---- which descriptors and names are watched ---- */

static const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');
	return s ? s + 1 : path;
}

static int listed(const char *path, char **list, int n)
{
	const char *b = base_name(path);
	for (int i = 0; i < n; i++)
		if (fnmatch(list[i], b, 0) == 0)
			return 1;
	return 0;
}

/* What a file opened by this name is watched as: FD_DATA, FD_NAME, FD_MARKER or FD_NONE. */
static int kind_of_name(const char *path)
{
	if (listed(path, markers, nmarkers))
		return FD_MARKER;
	if (listed(path, watch, nwatch))
		return FD_DATA;
	if (listed(path, names, nnames))
		return FD_NAME;
	return FD_NONE;
}

static int fd_path(int fd, char *out, size_t size)
{
	char link[64];
	snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, out, size - 1);
	if (n < 0)
		return -1;
	out[n] = 0;
	return 0;
}

/* The resolved absolute path of `path` (relative to `dirfd`), without following its last
 * component: its directory resolved, then its name. Works for a name about to be created
 * or removed. Returns -1 if the directory cannot be opened. */
static int abs_path_at(int dirfd, const char *path, char *out, size_t size)
{
	char copy[PATH_MAX];
	snprintf(copy, sizeof copy, "%s", path);
	size_t len = strlen(copy);
	while (len > 1 && copy[len - 1] == '/')
		copy[--len] = 0;
	char *slash = strrchr(copy, '/');
	const char *dir = ".", *name = copy;
	if (slash) {
		*slash = 0;
		dir = slash == copy ? "/" : copy;
		name = slash + 1;
	}
	if (!*name || !strcmp(name, ".") || !strcmp(name, ".."))
		return -1;
	int d = real_openat(dirfd, dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (d < 0)
		return -1;
	char parent[PATH_MAX];
	int r = fd_path(d, parent, sizeof parent);
	real_close(d);
	if (r != 0)
		return -1;
	int n = snprintf(out, size, "%s/%s", strcmp(parent, "/") ? parent : "", name);
	return n > 0 && (size_t)n < size ? 0 : -1;
}

static int find_file(const struct stat *st)
{
	for (int i = 0; i < nfiles; i++)
		if (!files[i].gone && files[i].dev == st->st_dev && files[i].ino == st->st_ino)
			return i;
	return -1;
}

/* The watched file (data or name) a name refers to, or -1; `st` gets its stat. */
static int file_at(int dirfd, const char *path, int flags, struct stat *st)
{
	if (fstatat(dirfd, path, st, flags) != 0 || !S_ISREG(st->st_mode))
		return -1;
	int f = find_file(st);
	return f >= 0 && files[f].kind != FD_MARKER ? f : -1;
}

/* The watched file behind `fd`, or -1, with its kind. Checks the descriptor still names the
 * file it was opened as: a number closed and reused by a call the shim does not see (a
 * socket, libc's own opens) must not pass for the watched file. A descriptor the shim never
 * saw opened that names a data file is refused while logging: its writes would go
 * unrecorded. */
static int watched_fd(int fd, int *kind, int *dsync)
{
	if (nfiles == 0 || fd < 0)
		return -1;
	struct stat st;
	if (fstat(fd, &st) != 0)
		return -1;
	if (fd < MAX_FDS && fds[fd].kind != FD_NONE) {
		struct file *f = &files[fds[fd].file];
		if (f->dev == st.st_dev && f->ino == st.st_ino) {
			*kind = fds[fd].kind;
			*dsync = fds[fd].dsync;
			return fds[fd].file;
		}
		fds[fd].kind = FD_NONE;
	}
	int known = find_file(&st);
	if (logfd >= 0 && known >= 0 && files[known].kind == FD_DATA)
		die("a watched file is written or flushed through a descriptor the shim did not see opened", NULL);
	return -1;
}

/* Called with the lock held, after a successful open of `fd` by a name of kind `kind`. A
 * file known already keeps the kind it was first seen as. */
static void opened(int fd, const char *path, int flags, int existed, int kind)
{
	if (fd < 0 || fd >= MAX_FDS)
		return;
	fds[fd].kind = FD_NONE;
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
		return;
	int id = find_file(&st);
	if (id < 0) {
		if (nfiles == MAX_FILES)
			die("too many watched files", NULL);
		id = nfiles++;
		files[id].dev = st.st_dev;
		files[id].ino = st.st_ino;
		files[id].kind = (unsigned char)kind;
		files[id].gone = 0;
		char full[PATH_MAX];
		if (kind != FD_MARKER) {
			if (fd_path(fd, full, sizeof full) != 0)
				die("cannot resolve the path of ", path);
			uint64_t ino = (uint64_t)st.st_ino;
			struct iovec v[3] = { { full, strlen(full) }, { "", 1 }, { &ino, sizeof ino } };
			log_rec(REC_FILE, id, (uint64_t)(!existed) | (kind == FD_NAME ? 2 : 0), v, 3,
				v[0].iov_len + 1 + sizeof ino);
		}
	}
	kind = files[id].kind;
	if (logfd >= 0 && (flags & O_APPEND) && kind == FD_DATA)
		die("O_APPEND on a watched file is not modelled: ", path);
	if (logfd >= 0 && (flags & O_TRUNC) && existed && kind == FD_DATA)
		log_rec(REC_TRUNCATE, id, 0, NULL, 0, 0);
	fds[fd].kind = (unsigned char)kind;
	fds[fd].dsync = (flags & (O_DSYNC | O_SYNC)) != 0;
	fds[fd].file = id;
}

#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"

/* The fake boot id file: an anonymous file holding IOFAULT_BOOT_ID and a newline, its
 * position at the start. Opened read-only through /proc/self/fd, so a write to it fails as
 * one to the kernel's file would. */
static int open_boot_id(int flags)
{
	int mem = memfd_create("iofault-boot-id", MFD_CLOEXEC);
	if (mem < 0)
		return -1;
	size_t n = strlen(boot_id);
	char *text = malloc(n + 1);
	if (!text) {
		real_close(mem);
		errno = ENOMEM;
		return -1;
	}
	memcpy(text, boot_id, n);
	text[n] = '\n';
	ssize_t w = real_pwrite(mem, text, n + 1, 0);
	free(text);
	if (w != (ssize_t)(n + 1)) {
		real_close(mem);
		errno = EIO;
		return -1;
	}
	char self[64];
	snprintf(self, sizeof self, "/proc/self/fd/%d", mem);
	int fd = real_openat(AT_FDCWD, self, O_RDONLY | (flags & O_CLOEXEC), 0);
	int saved = errno;
	real_close(mem);
	errno = saved;
	return fd;
}

static int do_open(int dirfd, const char *path, int flags, mode_t mode)
{
	INIT();
	/* The kernel's file is read-only: any other access mode gets the real file's answer. */
	if (boot_id && path && !strcmp(path, BOOT_ID_PATH) && (flags & O_ACCMODE) == O_RDONLY)
		return open_boot_id(flags);
	int kind = path ? kind_of_name(path) : FD_NONE;
	if (!active || kind == FD_NONE)
		return real_openat(dirfd, path, flags, mode);
	pthread_mutex_lock(&lock);
	int existed = faccessat(dirfd, path, F_OK, 0) == 0;
	int fd = real_openat(dirfd, path, flags, mode);
	if (fd >= 0)
		opened(fd, path, flags, existed, kind);
	pthread_mutex_unlock(&lock);
	return fd;
}

/* A descriptor opened by a call the shim does not interpose must not keep a stale entry;
 * `watched_fd` checks identity anyway, this only keeps the table tidy. */
static void forget(int fd)
{
	if (fd >= 0 && fd < MAX_FDS)
		fds[fd].kind = FD_NONE;
}

static mode_t mode_arg(int flags, va_list ap)
{
	return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_arg(flags, ap);
	va_end(ap);
	return do_open(AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_arg(flags, ap);
	va_end(ap);
	return do_open(AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_arg(flags, ap);
	va_end(ap);
	return do_open(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = mode_arg(flags, ap);
	va_end(ap);
	return do_open(dirfd, path, flags, mode);
}

int __open_2(const char *path, int flags) { return do_open(AT_FDCWD, path, flags, 0); }
int __open64_2(const char *path, int flags) { return do_open(AT_FDCWD, path, flags, 0); }
int __openat_2(int dirfd, const char *path, int flags) { return do_open(dirfd, path, flags, 0); }
int __openat64_2(int dirfd, const char *path, int flags) { return do_open(dirfd, path, flags, 0); }

int creat(const char *path, mode_t mode) { return do_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode); }
int creat64(const char *path, mode_t mode) { return do_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode); }

int close(int fd)
{
	INIT();
	if (active) {
		pthread_mutex_lock(&lock);
		forget(fd);
		pthread_mutex_unlock(&lock);
	}
	return real_close(fd);
}

static void copy_fd(int from, int to)
{
	if (to < 0 || to >= MAX_FDS)
		return;
	fds[to].kind = FD_NONE;
	if (from >= 0 && from < MAX_FDS)
		fds[to] = fds[from];
}

int dup(int fd)
{
	INIT();
	if (!active)
		return real_dup(fd);
	pthread_mutex_lock(&lock);
	int r = real_dup(fd);
	if (r >= 0)
		copy_fd(fd, r);
	pthread_mutex_unlock(&lock);
	return r;
}

int dup2(int fd, int to)
{
	INIT();
	if (!active)
		return real_dup2(fd, to);
	pthread_mutex_lock(&lock);
	int r = real_dup2(fd, to);
	if (r >= 0 && r != fd)
		copy_fd(fd, r);
	pthread_mutex_unlock(&lock);
	return r;
}

int dup3(int fd, int to, int flags)
{
	INIT();
	if (!active)
		return real_dup3(fd, to, flags);
	pthread_mutex_lock(&lock);
	int r = real_dup3(fd, to, flags);
	if (r >= 0)
		copy_fd(fd, r);
	pthread_mutex_unlock(&lock);
	return r;
}

static int do_fcntl(int fd, int cmd, void *arg)
{
	INIT();
	if (!active || (cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC && cmd != F_SETFL))
		return real_fcntl(fd, cmd, arg);
	pthread_mutex_lock(&lock);
	int kind = 0, dsync = 0;
	if (cmd == F_SETFL && logfd >= 0 && ((long)arg & O_APPEND) && watched_fd(fd, &kind, &dsync) >= 0 &&
	    kind == FD_DATA)
		die("O_APPEND on a watched file is not modelled", NULL);
	int r = real_fcntl(fd, cmd, arg);
	if (r >= 0 && cmd != F_SETFL)
		copy_fd(fd, r);
	pthread_mutex_unlock(&lock);
	return r;
}

int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return do_fcntl(fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return do_fcntl(fd, cmd, arg);
}

/* ---- faults ---- */

/* The fault to inject into this call (counting it), or NULL. Called with the lock held. */
static struct fault *fault_for(unsigned op)
{
	struct fault *hit = NULL;
	for (int i = 0; i < nfaults; i++) {
		struct fault *f = &faults[i];
		if (!(f->ops & op))
			continue;
		f->seen++;
		if (!hit && (f->seen == f->nth || (f->repeat && f->seen > f->nth)))
			hit = f;
	}
	return hit;
}

static void report(const char *call, const char *path, struct fault *f)
{
	char what[64];
	snprintf(what, sizeof what, "%s #%llu (a %s) ", f->name, f->seen, call);
	const char *how = f->err == EIO        ? "fails with EIO on "
			  : f->err == ENOSPC   ? "fails with ENOSPC on "
			  : f->err == EPERM    ? "fails with EPERM on "
			  : f->err == KIND_DIES ? "is written, then fails with EIO, as does every later write and flush, on "
						: "is cut short on ";
	say(what, how, path);
}

static void report_fd(const char *call, int fd, struct fault *f)
{
	char path[PATH_MAX] = "?";
	(void)fd_path(fd, path, sizeof path);
	report(call, path, f);
}

/* ---- writes ---- */

static size_t iov_total(const struct iovec *iov, int n)
{
	size_t t = 0;
	for (int i = 0; i < n; i++)
		t += iov[i].iov_len;
	return t;
}

/* Cuts `iov` to its first `keep` bytes, in `out` (at most `n` entries); returns the count. */
static int iov_prefix(const struct iovec *iov, int n, size_t keep, struct iovec *out)
{
	int m = 0;
	for (int i = 0; i < n && keep > 0; i++) {
		out[m] = iov[i];
		if (out[m].iov_len > keep)
			out[m].iov_len = keep;
		keep -= out[m].iov_len;
		m++;
	}
	return m;
}

/* The real call behind each wrapper, so an unwatched descriptor sees exactly the call its
 * program made. */
static ssize_t real_call(unsigned op, int v2, int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	switch (op) {
	case OP_WRITE:
		return real_write(fd, iovcnt ? iov[0].iov_base : NULL, iovcnt ? iov[0].iov_len : 0);
	case OP_PWRITE:
		return real_pwrite(fd, iovcnt ? iov[0].iov_base : NULL, iovcnt ? iov[0].iov_len : 0, off);
	case OP_WRITEV:
		return v2 ? real_pwritev2(fd, iov, iovcnt, -1, flags) : real_writev(fd, iov, iovcnt);
	default:
		return v2 ? real_pwritev2(fd, iov, iovcnt, off, flags) : real_pwritev(fd, iov, iovcnt, off);
	}
}

/* Every write-family call: `op` is its OP_*, `off` its offset (unused for write and writev,
 * which write at the file position), `v2` and `flags` are pwritev2's. */
static ssize_t do_write(unsigned op, int v2, const char *call, int fd, const struct iovec *iov, int iovcnt, off_t off,
			int flags)
{
	INIT();
	if (!active)
		return real_call(op, v2, fd, iov, iovcnt, off, flags);
	int kind = 0, dsync = 0;
	pthread_mutex_lock(&lock);
	int file = watched_fd(fd, &kind, &dsync);
	if (file < 0 || kind == FD_NAME) {
		/* Not held across the call: an unwatched write may block (a full pipe). */
		pthread_mutex_unlock(&lock);
		return real_call(op, v2, fd, iov, iovcnt, off, flags);
	}
	ssize_t r;
	if (kind == FD_MARKER) {
		r = real_call(op, v2, fd, iov, iovcnt, off, flags);
		if (r > 0)
			log_rec(REC_MARK, 0, 0, iov, iovcnt, (size_t)r);
		pthread_mutex_unlock(&lock);
		return r;
	}
	if (flags & ~(RWF_DSYNC | RWF_SYNC | RWF_HIPRI | RWF_NOWAIT))
		die("pwritev2 flags other than RWF_DSYNC and RWF_SYNC are not modelled", NULL);
	if (flags & (RWF_DSYNC | RWF_SYNC))
		dsync = 1;
	off_t at = off;
	if (op == OP_WRITE || op == OP_WRITEV) {
		at = lseek(fd, 0, SEEK_CUR);
		if (at < 0)
			die("cannot read the file position of a watched file", strerror(errno));
	}
	/* A meta page: the write's bytes lie within page 0 or within page 1. */
	size_t total = iov_total(iov, iovcnt);
	unsigned long long first = (unsigned long long)at / page_size;
	int meta = total > 0 && first < 2 && ((unsigned long long)at + total - 1) / page_size == first;
	struct fault *f = dead ? NULL : fault_for(op | (dsync ? OP_SYNCWRITE : 0) | (meta ? OP_METAWRITE : 0));
	struct iovec cut[IOV_MAX];
	const struct iovec *use = iov;
	int usecnt = iovcnt;
	if (dead || (f && f->err > 0)) {
		if (f)
			report_fd(call, fd, f);
		errno = f ? f->err : EIO;
		r = -1;
	} else {
		if (f) {
			report_fd(call, fd, f);
			if (f->err == KIND_SHORT) {
				usecnt = iov_prefix(iov, iovcnt < IOV_MAX ? iovcnt : IOV_MAX, iov_total(iov, iovcnt) / 2, cut);
				use = cut;
			}
		}
		r = usecnt == 0 ? 0 : real_call(op, v2, fd, use, usecnt, off, flags);
		if (r > 0)
			log_rec(dsync ? REC_SYNCWRITE : REC_WRITE, file, (uint64_t)at, use, usecnt, (size_t)r);
		if (f && f->err == KIND_DIES && r >= 0) {
			dead = 1;
			errno = EIO;
			r = -1;
		}
	}
	pthread_mutex_unlock(&lock);
	return r;
}

ssize_t write(int fd, const void *buf, size_t n)
{
	struct iovec v = { (void *)buf, n };
	return do_write(OP_WRITE, 0, "write", fd, &v, 1, 0, 0);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	struct iovec v = { (void *)buf, n };
	return do_write(OP_PWRITE, 0, "pwrite", fd, &v, 1, off, 0);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) { return pwrite(fd, buf, n, off); }

ssize_t writev(int fd, const struct iovec *iov, int n) { return do_write(OP_WRITEV, 0, "writev", fd, iov, n, 0, 0); }

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
	return do_write(OP_PWRITEV, 0, "pwritev", fd, iov, n, off, 0);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t off) { return pwritev(fd, iov, n, off); }

ssize_t pwritev2(int fd, const struct iovec *iov, int n, off_t off, int flags)
{
	/* An offset of -1 writes at the file position, as writev does. */
	return do_write(off == -1 ? OP_WRITEV : OP_PWRITEV, 1, "pwritev2", fd, iov, n, off, flags);
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int n, off_t off, int flags) { return pwritev2(fd, iov, n, off, flags); }

/* ---- flushes ---- */

static int do_flush(unsigned op, const char *call, int fd)
{
	INIT();
	int (*real)(int) = op == OP_FSYNC ? real_fsync : real_fdatasync;
	if (!active)
		return real(fd);
	pthread_mutex_lock(&lock);
	int kind = 0, dsync = 0, r;
	int file = watched_fd(fd, &kind, &dsync);
	if (file >= 0 && kind == FD_DATA) {
		struct fault *f = dead ? NULL : fault_for(op);
		if (dead || f) {
			if (f)
				report_fd(call, fd, f);
			errno = f ? f->err : EIO;
			r = -1;
		} else {
			r = real(fd);
			if (r == 0)
				log_rec(REC_FLUSH, file, 0, NULL, 0, 0);
		}
	} else {
		r = real(fd);
		struct stat st;
		char path[PATH_MAX];
		if (r == 0 && logfd >= 0 && fstat(fd, &st) == 0 && S_ISDIR(st.st_mode) && fd_path(fd, path, sizeof path) == 0)
			log_path(REC_DIRSYNC, 0, 0, path);
	}
	pthread_mutex_unlock(&lock);
	return r;
}

int fsync(int fd) { return do_flush(OP_FSYNC, "fsync", fd); }
int fdatasync(int fd) { return do_flush(OP_FDATASYNC, "fdatasync", fd); }

int ftruncate(int fd, off_t len)
{
	INIT();
	if (!active)
		return real_ftruncate(fd, len);
	pthread_mutex_lock(&lock);
	int kind = 0, dsync = 0;
	int file = watched_fd(fd, &kind, &dsync);
	int r = real_ftruncate(fd, len);
	if (r == 0 && file >= 0 && kind == FD_DATA)
		log_rec(REC_TRUNCATE, file, (uint64_t)len, NULL, 0, 0);
	pthread_mutex_unlock(&lock);
	return r;
}

int ftruncate64(int fd, off_t len) { return ftruncate(fd, len); }

/* ---- directories ---- */

static void made_dir(int dirfd, const char *path)
{
	char full[PATH_MAX];
	int fd = real_openat(dirfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (fd_path(fd, full, sizeof full) == 0)
		log_path(REC_MKDIR, 0, 0, full);
	real_close(fd);
}

int mkdir(const char *path, mode_t mode)
{
	INIT();
	if (logfd < 0)
		return real_mkdir(path, mode);
	pthread_mutex_lock(&lock);
	int r = real_mkdir(path, mode);
	if (r == 0)
		made_dir(AT_FDCWD, path);
	pthread_mutex_unlock(&lock);
	return r;
}

int mkdirat(int dirfd, const char *path, mode_t mode)
{
	INIT();
	if (logfd < 0)
		return real_mkdirat(dirfd, path, mode);
	pthread_mutex_lock(&lock);
	int r = real_mkdirat(dirfd, path, mode);
	if (r == 0)
		made_dir(dirfd, path);
	pthread_mutex_unlock(&lock);
	return r;
}

/* rmdir: logged for every directory, as mkdir is. */
static int do_rmdir(int dirfd, const char *path)
{
	INIT();
	if (logfd < 0)
		return dirfd == AT_FDCWD ? real_rmdir(path) : real_unlinkat(dirfd, path, AT_REMOVEDIR);
	pthread_mutex_lock(&lock);
	char full[PATH_MAX];
	int named = abs_path_at(dirfd, path, full, sizeof full) == 0;
	int r = dirfd == AT_FDCWD ? real_rmdir(path) : real_unlinkat(dirfd, path, AT_REMOVEDIR);
	if (r == 0 && named)
		log_path(REC_RMDIR, 0, 0, full);
	pthread_mutex_unlock(&lock);
	return r;
}

int rmdir(const char *path) { return do_rmdir(AT_FDCWD, path); }

/* ---- names ---- */

/* Refuses, while logging, a data file's name given to a name file: its contents were not
 * recorded, so the crash states could not hold them. */
static void refuse_name_file_as_data(int file, const char *to, const char *call)
{
	if (logfd >= 0 && file >= 0 && files[file].kind == FD_NAME && listed(to, watch, nwatch))
		die("not modelled: a data file's name given to a name file, by ", call);
}

/* Refuses, while logging, a watched name that belongs to no file the shim has seen: the
 * crash states know nothing of such a file. */
static void refuse_unseen(const char *path, const char *call)
{
	if (logfd >= 0 && path && (listed(path, watch, nwatch) || listed(path, names, nnames)))
		die("not modelled on a watched name of a file the shim has not seen opened: ", call);
}

static int do_unlink(int dirfd, const char *path)
{
	INIT();
	if (!active)
		return real_unlinkat(dirfd, path, 0);
	pthread_mutex_lock(&lock);
	struct stat st;
	int file = file_at(dirfd, path, AT_SYMLINK_NOFOLLOW, &st);
	char full[PATH_MAX] = "";
	if (file < 0) {
		if (fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
			refuse_unseen(path, "unlink");
	} else if (logfd >= 0 && abs_path_at(dirfd, path, full, sizeof full) != 0) {
		die("cannot resolve the path of a watched name being removed: ", path);
	}
	int r = real_unlinkat(dirfd, path, 0);
	if (r == 0 && file >= 0) {
		log_path(REC_UNLINK, file, 0, full);
		if (st.st_nlink <= 1)
			files[file].gone = 1;
	}
	pthread_mutex_unlock(&lock);
	return r;
}

int unlink(const char *path) { return do_unlink(AT_FDCWD, path); }

int unlinkat(int dirfd, const char *path, int flags)
{
	if (flags & AT_REMOVEDIR)
		return do_rmdir(dirfd, path);
	return do_unlink(dirfd, path);
}

int remove(const char *path)
{
	struct stat st;
	if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
		return do_rmdir(AT_FDCWD, path);
	return do_unlink(AT_FDCWD, path);
}

static int do_link(int fromfd, const char *from, int tofd, const char *to, int flags)
{
	INIT();
	if (!active)
		return real_linkat(fromfd, from, tofd, to, flags);
	pthread_mutex_lock(&lock);
	struct stat st;
	int follow = (flags & AT_SYMLINK_FOLLOW) ? 0 : AT_SYMLINK_NOFOLLOW;
	int file = file_at(fromfd, from, follow | (flags & AT_EMPTY_PATH), &st);
	if (file < 0 && (flags & AT_EMPTY_PATH) && logfd >= 0 && fstatat(fromfd, from, &st, AT_EMPTY_PATH) == 0) {
		/* A file with no name left (unlinked, or O_TMPFILE) given one. */
		for (int i = 0; i < nfiles; i++)
			if (files[i].dev == st.st_dev && files[i].ino == st.st_ino && files[i].kind != FD_MARKER)
				die("not modelled: a link of a watched file with no name left", NULL);
	}
	char full[PATH_MAX] = "";
	refuse_name_file_as_data(file, to, "link");
	if (file < 0)
		refuse_unseen(to, "link");
	else if (logfd >= 0 && abs_path_at(tofd, to, full, sizeof full) != 0)
		die("cannot resolve the path of a new watched name: ", to);
	struct fault *f = file >= 0 ? fault_for(OP_LINK) : NULL;
	int r;
	if (f) {
		report("link", to, f);
		errno = f->err;
		r = -1;
	} else {
		r = real_linkat(fromfd, from, tofd, to, flags);
	}
	if (r == 0 && file >= 0 && fstatat(fromfd, from, &st, follow | (flags & AT_EMPTY_PATH)) == 0)
		log_path(REC_LINK, file, (uint64_t)st.st_size, full);
	pthread_mutex_unlock(&lock);
	return r;
}

int link(const char *from, const char *to) { return do_link(AT_FDCWD, from, AT_FDCWD, to, 0); }

int linkat(int fromfd, const char *from, int tofd, const char *to, int flags)
{
	return do_link(fromfd, from, tofd, to, flags);
}

static int do_rename(int fromfd, const char *from, int tofd, const char *to, unsigned int flags)
{
	INIT();
	if (!active)
		return real_renameat2(fromfd, from, tofd, to, flags);
	pthread_mutex_lock(&lock);
	struct stat st, target;
	int file = file_at(fromfd, from, AT_SYMLINK_NOFOLLOW, &st);
	int replaced = file_at(tofd, to, AT_SYMLINK_NOFOLLOW, &target);
	char old[PATH_MAX], new[PATH_MAX];
	if (logfd >= 0) {
		if (fstatat(fromfd, from, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode))
			die("not modelled while logging: a rename of a directory: ", from);
		refuse_name_file_as_data(file, to, "rename");
		if (file < 0) {
			refuse_unseen(from, "rename");
			refuse_unseen(to, "rename");
		}
		/* With RENAME_NOREPLACE an existing target only makes the call fail. */
		int replaces = !(flags & RENAME_NOREPLACE) && faccessat(tofd, to, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
		if ((file >= 0 || replaced >= 0) && (replaces || (flags & ~RENAME_NOREPLACE)))
			die("not modelled on a watched file: a rename that replaces or exchanges: ", to);
		if (file >= 0 && (abs_path_at(fromfd, from, old, sizeof old) != 0 || abs_path_at(tofd, to, new, sizeof new) != 0))
			die("cannot resolve the paths of a rename of a watched file: ", from);
	}
	int r = real_renameat2(fromfd, from, tofd, to, flags);
	if (r == 0 && file >= 0 && logfd >= 0) {
		size_t a = strlen(old), b = strlen(new);
		struct iovec v[3] = { { old, a }, { "", 1 }, { new, b } };
		log_rec(REC_RENAME, file, 0, v, 3, a + 1 + b);
	}
	pthread_mutex_unlock(&lock);
	return r;
}

int rename(const char *from, const char *to) { return do_rename(AT_FDCWD, from, AT_FDCWD, to, 0); }

int renameat(int fromfd, const char *from, int tofd, const char *to)
{
	return do_rename(fromfd, from, tofd, to, 0);
}

int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned int flags)
{
	return do_rename(fromfd, from, tofd, to, flags);
}

/* ---- refused while logging ---- */

/* Refuses the call on a data file: name files may be mapped, allocated and the like, their
 * contents are not modelled. */
static void refuse_fd(int fd, const char *call)
{
	if (logfd < 0)
		return;
	pthread_mutex_lock(&lock);
	int kind = 0, dsync = 0;
	int file = watched_fd(fd, &kind, &dsync);
	pthread_mutex_unlock(&lock);
	if (file >= 0 && kind == FD_DATA)
		die("not modelled on a watched file: ", call);
}

static void refuse_path(const char *path, const char *call)
{
	if (logfd >= 0 && path && listed(path, watch, nwatch))
		die("not modelled on a watched file: ", call);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	INIT();
	if (fd >= 0 && (prot & PROT_WRITE) && (flags & MAP_SHARED))
		refuse_fd(fd, "a writable shared mmap");
	return real_mmap(addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) { return mmap(addr, len, prot, flags, fd, off); }

int sync_file_range(int fd, off_t off, off_t n, unsigned int flags)
{
	INIT();
	refuse_fd(fd, "sync_file_range");
	return real_sync_file_range(fd, off, n, flags);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
	INIT();
	refuse_fd(fd, "fallocate");
	return real_fallocate(fd, mode, off, len);
}

int fallocate64(int fd, int mode, off_t off, off_t len) { return fallocate(fd, mode, off, len); }

int posix_fallocate(int fd, off_t off, off_t len)
{
	INIT();
	refuse_fd(fd, "posix_fallocate");
	return real_posix_fallocate(fd, off, len);
}

int posix_fallocate64(int fd, off_t off, off_t len) { return posix_fallocate(fd, off, len); }

ssize_t copy_file_range(int in, off_t *inoff, int out, off_t *outoff, size_t n, unsigned int flags)
{
	INIT();
	refuse_fd(out, "copy_file_range");
	return real_copy_file_range(in, inoff, out, outoff, n, flags);
}

ssize_t sendfile(int out, int in, off_t *off, size_t n)
{
	INIT();
	refuse_fd(out, "sendfile");
	return real_sendfile(out, in, off, n);
}

ssize_t sendfile64(int out, int in, off_t *off, size_t n) { return sendfile(out, in, off, n); }

ssize_t splice(int in, off_t *inoff, int out, off_t *outoff, size_t n, unsigned int flags)
{
	INIT();
	refuse_fd(out, "splice");
	return real_splice(in, inoff, out, outoff, n, flags);
}

int truncate(const char *path, off_t len)
{
	INIT();
	refuse_path(path, "truncate");
	return real_truncate(path, len);
}

int truncate64(const char *path, off_t len) { return truncate(path, len); }

void sync(void)
{
	INIT();
	if (logfd >= 0 && nfiles > 0)
		die("not modelled while watched files are open: ", "sync");
	real_sync();
}

int syncfs(int fd)
{
	INIT();
	if (logfd >= 0 && nfiles > 0)
		die("not modelled while watched files are open: ", "syncfs");
	return real_syncfs(fd);
}

/* ---- inode numbers shown (IOFAULT_INODES) ---- */

static unsigned long long shown_inode(unsigned long long dev, unsigned long long ino)
{
	for (int i = 0; i < ninodes; i++)
		if (inode_dev[i] == dev && inode_real[i] == ino)
			return inode_shown[i];
	return ino;
}

int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
	INIT();
	if (!real_fstatat) {
		errno = ENOSYS;
		return -1;
	}
	int r = real_fstatat(dirfd, path, st, flags);
	if (r == 0 && ninodes > 0)
		st->st_ino = (ino_t)shown_inode((unsigned long long)st->st_dev, (unsigned long long)st->st_ino);
	return r;
}

int fstat(int fd, struct stat *st)
{
	INIT();
	if (!real_fstat) {
		errno = ENOSYS;
		return -1;
	}
	int r = real_fstat(fd, st);
	if (r == 0 && ninodes > 0)
		st->st_ino = (ino_t)shown_inode((unsigned long long)st->st_dev, (unsigned long long)st->st_ino);
	return r;
}

int stat(const char *path, struct stat *st) { return fstatat(AT_FDCWD, path, st, 0); }
int lstat(const char *path, struct stat *st) { return fstatat(AT_FDCWD, path, st, AT_SYMLINK_NOFOLLOW); }

/* On the 64-bit targets tested, struct stat64 is struct stat. */
int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
	return fstatat(dirfd, path, (struct stat *)st, flags);
}
int fstat64(int fd, struct stat64 *st) { return fstat(fd, (struct stat *)st); }
int stat64(const char *path, struct stat64 *st) { return fstatat(AT_FDCWD, path, (struct stat *)st, 0); }
int lstat64(const char *path, struct stat64 *st)
{
	return fstatat(AT_FDCWD, path, (struct stat *)st, AT_SYMLINK_NOFOLLOW);
}

int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *stx)
{
	INIT();
	if (!real_statx) {
		errno = ENOSYS;
		return -1;
	}
	int r = real_statx(dirfd, path, flags, mask, stx);
	if (r == 0 && ninodes > 0 && (stx->stx_mask & STATX_INO))
		stx->stx_ino = shown_inode((unsigned long long)makedev(stx->stx_dev_major, stx->stx_dev_minor),
					   (unsigned long long)stx->stx_ino);
	return r;
}
