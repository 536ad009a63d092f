//! `Stream::load` folds archived events in place: a counting allocator shows the number of
//! heap allocations does not grow with the number of events, nor with the number of older
//! events upcast on the way.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use varvedb::{Event, ExpectedVersion, MasterKey, Options, Pending, Upcast, Varve, aggregate};

/// Counts allocations made by the current thread only, so the store's writer thread and
/// the test harness do not disturb the measurement.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: delegates every operation to the system allocator unchanged; the counter is a
// thread-local `Cell` with a const initializer, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every alloc goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: as for `dealloc`; `new_size` comes from our caller under the same contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[derive(Event)]
struct Placed {
    customer: String,
    amount_cents: u64,
    lines: Vec<String>,
}

#[derive(Event)]
struct Cancelled {
    reason: String,
}

#[derive(Default)]
struct Totals {
    total: u64,
    lines: usize,
    cancelled: usize,
    longest_customer: usize,
}

#[aggregate]
impl Totals {
    fn placed(&mut self, e: &ArchivedPlaced) {
        self.total += e.amount_cents.to_native();
        self.lines += e.lines.len();
        self.longest_customer = self.longest_customer.max(e.customer.len());
    }
    fn cancelled(&mut self, e: &ArchivedCancelled) {
        self.cancelled += usize::from(!e.reason.is_empty());
    }
}

fn fill(db: &Varve, stream: u128, n: u32) {
    let s = db.stream::<Totals>(stream);
    let mut version = 0;
    while version < n {
        let batch: Vec<Pending<Totals>> = (version..n.min(version + 1_000))
            .map(|i| {
                if i % 10 == 9 {
                    Pending::from(Cancelled { reason: format!("reason {i}") })
                } else {
                    Pending::from(Placed {
                        customer: format!("customer-{i}"),
                        amount_cents: u64::from(i),
                        lines: vec!["a".into(), "b".into()],
                    })
                }
            })
            .collect();
        version = s.append_all(ExpectedVersion::Exact(version), batch).unwrap().last_version;
    }
}

fn allocations_of_load(db: &Varve, stream: u128) -> (u64, Totals) {
    let s = db.stream::<Totals>(stream);
    let before = allocations();
    let loaded = s.load().unwrap();
    let used = allocations() - before;
    (used, loaded.into_state())
}

#[test]
fn loading_ten_thousand_events_allocates_no_more_than_loading_ten() {
    let dir = tempfile::tempdir().unwrap();
    fold_allocations_do_not_grow(&Varve::open(dir.path()).unwrap());
}

#[test]
fn an_encrypted_fold_decrypts_into_one_reused_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let db = Options::new().encryption_key(MasterKey::from_bytes([9; 32])).open(dir.path()).unwrap();
    fold_allocations_do_not_grow(&db);
}

fn fold_allocations_do_not_grow(db: &Varve) {
    let db = db.clone();
    fill(&db, 1, 10);
    fill(&db, 2, 10_000);
    let _ = allocations_of_load(&db, 1); // warm up lazily initialised state

    let (small, s) = allocations_of_load(&db, 1);
    let (large, l) = allocations_of_load(&db, 2);
    assert_eq!((s.cancelled, l.cancelled), (1, 1_000));
    assert_eq!(l.total, (0..10_000u64).filter(|i| i % 10 != 9).sum::<u64>());
    assert_eq!(l.lines, 9_000 * 2);
    assert!(l.longest_customer >= "customer-9998".len());
    eprintln!("allocations per load: {small} for 10 events, {large} for 10,000 events");
    assert_eq!(
        large, small,
        "the fold allocates per event: {small} allocations for 10 events, {large} for 10,000"
    );
    assert!(small < 20, "a load should allocate a handful of times, not {small}");
}

/// Stored by an older build.
#[derive(Event)]
#[event(name = "line.priced", version = 1)]
struct PricedV1 {
    amount_cents: u64,
    quantity: u32,
}

#[derive(Event)]
#[event(name = "line.priced", version = 2, upcast = PricedV1)]
struct Priced {
    amount_cents: u64,
    quantity: u32,
    currency: [u8; 3],
}

/// Allocates nothing itself, so what the fold allocates is the library's.
impl Upcast<PricedV1> for Priced {
    fn upcast(old: &ArchivedPricedV1) -> Self {
        Priced {
            amount_cents: old.amount_cents.to_native(),
            quantity: old.quantity.to_native(),
            currency: *b"EUR",
        }
    }
}

#[derive(Default)]
struct OldLines {
    count: u32,
}

#[aggregate(name = "lines")]
impl OldLines {
    fn priced(&mut self, _: &ArchivedPricedV1) {
        self.count += 1;
    }
}

#[derive(Default)]
struct Lines {
    total: u64,
    eur: u32,
}

#[aggregate(name = "lines")]
impl Lines {
    fn priced(&mut self, e: &ArchivedPriced) {
        self.total += e.amount_cents.to_native() * u64::from(e.quantity.to_native());
        self.eur += u32::from(&e.currency == b"EUR");
    }
}

#[test]
fn upcasting_ten_thousand_v1_events_allocates_no_more_than_upcasting_ten() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    for (stream, n) in [(1u128, 10u32), (2, 10_000)] {
        let s = db.stream::<OldLines>(stream);
        let mut version = 0;
        while version < n {
            let batch: Vec<PricedV1> = (version..n.min(version + 1_000))
                .map(|i| PricedV1 { amount_cents: u64::from(i), quantity: 2 })
                .collect();
            version = s.append_all(ExpectedVersion::Exact(version), batch).unwrap().last_version;
        }
    }
    let load = |stream: u128| {
        let s = db.stream::<Lines>(stream);
        let before = allocations();
        let loaded = s.load().unwrap();
        (allocations() - before, loaded.into_state())
    };
    let _ = load(1); // warm up lazily initialised state
    let (small, s) = load(1);
    let (large, l) = load(2);
    assert_eq!((s.eur, l.eur), (10, 10_000), "every v1 event reached the v2 apply function");
    assert_eq!(l.total, (0..10_000u64).map(|i| i * 2).sum::<u64>());
    eprintln!("allocations per upcasting load: {small} for 10 events, {large} for 10,000 events");
    assert_eq!(large, small, "upcasting allocates per event: {small} for 10 events, {large} for 10,000");
    assert!(small < 30, "an upcasting load should allocate a handful of times, not {small}");
}
