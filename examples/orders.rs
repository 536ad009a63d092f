//! Orders, event-sourced with `VarveDB`'s typed layer. Read it top to bottom:
//!
//! 1. events are plain structs with `#[derive(Event)]`;
//! 2. the aggregate folds its events with `#[aggregate]` (each apply function reads the
//!    archived event in place, without copying it out of the store);
//! 3. commands decide which events happen (`Handle`), and `Stream::execute` runs
//!    load → decide → save, retrying if another writer got there first;
//! 4. the stream's history is read back, typed.
//!
//! Run: `cargo run --example orders`

use std::path::{Path, PathBuf};

use varvedb::{Event, EventData, ExecuteError, Handle, Pending, Stream, Varve, aggregate};

// --- 1. Events: what happened, in the past tense. -----------------------------------------

/// A line of an order; a nested type inside events gets `EventData`.
#[derive(EventData, Debug, Clone)]
struct Line {
    sku: String,
    quantity: u32,
    unit_cents: u64,
}

#[derive(Event, Debug)]
#[event(name = "order.placed")]
struct OrderPlaced {
    customer: String,
    lines: Vec<Line>,
}

#[derive(Event, Debug)]
#[event(name = "order.line_added")]
struct LineAdded {
    line: Line,
}

#[derive(Event, Debug)]
#[event(name = "order.shipped")]
struct OrderShipped {
    carrier: String,
    tracking: Option<String>,
}

#[derive(Event, Debug)]
#[event(name = "order.cancelled")]
struct OrderCancelled {
    reason: String,
}

// --- 2. The aggregate: state rebuilt from its events. --------------------------------------

#[derive(Default, Debug, PartialEq)]
enum Status {
    #[default]
    New,
    Placed,
    Shipped,
    Cancelled,
}

#[derive(Default, Debug)]
struct Order {
    status: Status,
    customer: String,
    total_cents: u64,
    lines: u32,
}

#[aggregate(name = "order")]
impl Order {
    fn placed(&mut self, e: &ArchivedOrderPlaced) {
        self.status = Status::Placed;
        self.customer = e.customer.to_string();
        for line in e.lines.iter() {
            self.add(line);
        }
    }

    fn line_added(&mut self, e: &ArchivedLineAdded) {
        self.add(&e.line);
    }

    fn shipped(&mut self, _e: &ArchivedOrderShipped) {
        self.status = Status::Shipped;
    }

    fn cancelled(&mut self, _e: &ArchivedOrderCancelled) {
        self.status = Status::Cancelled;
    }
}

impl Order {
    // Archived integers are little-endian wrappers (the store's format does not depend on the
    // machine); `to_native()` reads them as plain numbers.
    fn add(&mut self, line: &ArchivedLine) {
        self.total_cents += u64::from(line.quantity.to_native()) * line.unit_cents.to_native();
        self.lines += 1;
    }
}

// --- 3. Commands: what someone wants; the aggregate decides. -------------------------------

struct Place {
    customer: String,
    lines: Vec<Line>,
}
struct AddLine(Line);
struct Ship {
    carrier: String,
}
struct Cancel {
    reason: String,
}

/// Why the domain refuses a command (kept apart from storage errors by `ExecuteError`).
#[derive(Debug, PartialEq)]
enum Refusal {
    AlreadyPlaced,
    NotOpen(&'static str),
    Empty,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::AlreadyPlaced => f.write_str("the order was already placed"),
            Refusal::NotOpen(status) => write!(f, "the order is {status}"),
            Refusal::Empty => f.write_str("an order needs at least one line"),
        }
    }
}

impl Order {
    fn require_open(&self) -> Result<(), Refusal> {
        match self.status {
            Status::Placed => Ok(()),
            Status::New => Err(Refusal::NotOpen("not placed yet")),
            Status::Shipped => Err(Refusal::NotOpen("already shipped")),
            Status::Cancelled => Err(Refusal::NotOpen("cancelled")),
        }
    }
}

impl Handle<Place> for Order {
    type Error = Refusal;
    fn handle(&self, cmd: &Place) -> Result<Vec<Pending<Self>>, Refusal> {
        if self.status != Status::New {
            return Err(Refusal::AlreadyPlaced);
        }
        if cmd.lines.is_empty() {
            return Err(Refusal::Empty);
        }
        Ok(vec![OrderPlaced { customer: cmd.customer.clone(), lines: cmd.lines.clone() }.into()])
    }
}

impl Handle<AddLine> for Order {
    type Error = Refusal;
    fn handle(&self, cmd: &AddLine) -> Result<Vec<Pending<Self>>, Refusal> {
        self.require_open()?;
        Ok(vec![LineAdded { line: cmd.0.clone() }.into()])
    }
}

impl Handle<Ship> for Order {
    type Error = Refusal;
    fn handle(&self, cmd: &Ship) -> Result<Vec<Pending<Self>>, Refusal> {
        self.require_open()?;
        Ok(vec![OrderShipped { carrier: cmd.carrier.clone(), tracking: None }.into()])
    }
}

impl Handle<Cancel> for Order {
    type Error = Refusal;
    fn handle(&self, cmd: &Cancel) -> Result<Vec<Pending<Self>>, Refusal> {
        self.require_open()?;
        Ok(vec![OrderCancelled { reason: cmd.reason.clone() }.into()])
    }
}

// --- 4. Using it. ---------------------------------------------------------------------------

fn line(sku: &str, quantity: u32, unit_cents: u64) -> Line {
    Line { sku: sku.into(), quantity, unit_cents }
}

fn print_history(db: &Varve, order: &Stream<Order>) -> Result<(), varvedb::Error> {
    let view = db.begin_read()?;
    for event in order.read(&view, 1)? {
        let event = event?;
        let v = event.recorded().version();
        if let Some(e) = event.get::<OrderPlaced>()? {
            println!("  v{v} placed by {} with {} line(s)", e.customer, e.lines.len());
        } else if let Some(e) = event.get::<LineAdded>()? {
            println!("  v{v} line added: {} x {}", e.line.quantity, e.line.sku);
        } else if let Some(e) = event.get::<OrderShipped>()? {
            println!("  v{v} shipped with {}", e.carrier);
        } else if let Some(e) = event.get::<OrderCancelled>()? {
            println!("  v{v} cancelled: {}", e.reason);
        }
    }
    Ok(())
}

/// Runs the example in a temporary directory, or keeps its store in `VARVEDB_EXAMPLE_DIR`
/// (to look at with `varve`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir =
        std::env::var_os("VARVEDB_EXAMPLE_DIR").map_or_else(|| temp.path().to_path_buf(), PathBuf::from);
    run(&dir)
}

/// The example, with its store in `dir`.
pub(crate) fn run(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let db = Varve::open(dir)?;

    // A stream per order; its id is a UUID (a u128 works too).
    let order = db.stream::<Order>(varvedb::uuid::Uuid::new_v4());

    order.execute(&Place { customer: "ana".into(), lines: vec![line("tea", 2, 450)] })?;
    order.execute(&AddLine(line("mug", 1, 1200)))?;
    let shipped = order.execute(&Ship { carrier: "dhl".into() })?;
    println!("order shipped at version {}", shipped.version);

    // The domain refuses: a typed, separate error; nothing is written.
    match order.execute(&Cancel { reason: "changed my mind".into() }) {
        Err(ExecuteError::Rejected(refusal)) => println!("cancel refused: {refusal}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Optimistic concurrency: two clerks load the same order, both decide, the second
    // save is refused instead of overwriting what the first one did.
    let other = db.stream::<Order>(varvedb::uuid::Uuid::new_v4());
    other.execute(&Place { customer: "bo".into(), lines: vec![line("pen", 3, 150)] })?;
    let clerk_a = other.load()?;
    let clerk_b = other.load()?;
    other.save(&clerk_a, [LineAdded { line: line("ink", 1, 500) }])?;
    let err = other.save(&clerk_b, [OrderCancelled { reason: "out of stock".into() }]).unwrap_err();
    println!("second clerk: {err}");
    // `execute` does the reload-and-decide-again for you.
    other.execute(&Cancel { reason: "out of stock".into() })?;

    let current = order.load()?;
    let state = current.state();
    println!(
        "order of {}: {:?}, {} lines, total {}.{:02}, version {}",
        state.customer,
        state.status,
        state.lines,
        state.total_cents / 100,
        state.total_cents % 100,
        current.version()
    );
    assert_eq!((state.total_cents, state.lines, current.version()), (2 * 450 + 1200, 2, 3));
    assert_eq!(other.load()?.state().status, Status::Cancelled);
    println!("history:");
    print_history(&db, &order)?;
    Ok(())
}
