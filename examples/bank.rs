//! A small bank on `VarveDB`'s typed layer. Read it top to bottom:
//!
//! 1. accounts are an aggregate; deposits run as commands (`Stream::execute_with`), stamped
//!    with typed metadata: who asked, and a correlation id;
//! 2. a transfer is one command over two accounts (`Varve::transact`): both accounts are
//!    loaded from one snapshot, and both withdrawals and deposits are written atomically, or
//!    neither is; a conflicting writer makes it decide again;
//! 3. a balances projection keeps a struct per account in a table, read in place;
//! 4. a notifier processor reacts to large withdrawals by appending an alert whose
//!    metadata carries the same correlation id and, as causation, the withdrawal's seq;
//! 5. the store refuses an event that is not an account's under an account stream.
//!
//! Run: `cargo run --example bank`

use std::path::{Path, PathBuf};

use varvedb::{
    Data, Error, Event, EventData, ExecuteError, ExecuteOptions, ExpectedVersion, Handle, NewEvent, Pending,
    Processor, Projection, Stream, Table, Varve, aggregate,
};

// --- Events and metadata ----------------------------------------------------------------------

#[derive(Event, Debug)]
#[event(name = "account.deposited")]
struct Deposited {
    cents: u64,
}

#[derive(Event, Debug)]
#[event(name = "account.withdrawn")]
struct Withdrawn {
    cents: u64,
}

#[derive(Event, Debug)]
#[event(name = "alert.large-withdrawal")]
struct LargeWithdrawal {
    account: u128,
    cents: u64,
}

/// Stamped on every event: who asked, which request it belongs to (correlation), and the
/// event that led to it (causation: its seq), if any.
#[derive(EventData, Debug, Clone)]
struct RequestMeta {
    user: String,
    correlation: u128,
    causation: Option<u64>,
}

// --- 1. The account aggregate and its commands ----------------------------------------------

#[derive(Default, Debug)]
struct Account {
    balance: u64,
}

#[aggregate(name = "account")]
impl Account {
    fn deposited(&mut self, e: &ArchivedDeposited) {
        self.balance += e.cents.to_native();
    }
    fn withdrawn(&mut self, e: &ArchivedWithdrawn) {
        self.balance -= e.cents.to_native();
    }
}

struct Deposit(u64);

impl Handle<Deposit> for Account {
    type Error = String;
    fn handle(&self, cmd: &Deposit) -> Result<Vec<Pending<Self>>, String> {
        if cmd.0 == 0 {
            return Err("a deposit moves money".into());
        }
        Ok(vec![Deposited { cents: cmd.0 }.into()])
    }
}

/// Alerts raised by the notifier, in one stream.
#[derive(Default)]
struct Alerts {
    count: u32,
}

#[aggregate(name = "alerts")]
impl Alerts {
    fn large_withdrawal(&mut self, _: &ArchivedLargeWithdrawal) {
        self.count += 1;
    }
}

const ALERTS: u128 = 0xa1e7;
const LARGE: u64 = 5_000;

// --- 2. Transfers over two accounts -----------------------------------------------------------

/// Moves `cents` from one account to the other, atomically; refuses an overdraft.
fn transfer(
    db: &Varve,
    from: &Stream<Account>,
    to: &Stream<Account>,
    cents: u64,
    meta: &RequestMeta,
) -> Result<(), ExecuteError<String>> {
    db.transact_with(&ExecuteOptions::new().metadata(meta), |tx| {
        let (a, b) = (tx.load(from)?, tx.load(to)?);
        if a.state().balance < cents {
            return Err(ExecuteError::Rejected(format!(
                "{} has only {} cents",
                from.id(),
                a.state().balance
            )));
        }
        tx.save(from, &a, [Withdrawn { cents }])?;
        tx.save(to, &b, [Deposited { cents }])?;
        Ok(())
    })
    .map(drop)
}

// --- 3. The balances projection: a struct per account, read in place -------------------------

#[derive(EventData, Debug)]
struct Balance {
    cents: u64,
    movements: u32,
}

const BALANCES: Table<u128, Data<Balance>> = Table::new("balances", "by_account");

fn balances() -> Projection {
    fn apply(
        tx: &mut varvedb::ProjectionTxn<'_, '_>,
        account: u128,
        delta: i128,
    ) -> Result<(), varvedb::HandlerError> {
        let (cents, movements) = tx
            .get_data(&BALANCES, &account)?
            .map_or((0, 0), |b| (b.cents.to_native(), b.movements.to_native()));
        let cents = u64::try_from(i128::from(cents) + delta)?;
        tx.put(&BALANCES, &account, &Balance { cents, movements: movements + 1 })?;
        Ok(())
    }
    Projection::new("balances")
        .on::<Deposited>(|tx, e, ev| apply(tx, ev.stream().as_u128(), i128::from(e.cents.to_native())))
        .on::<Withdrawn>(|tx, e, ev| apply(tx, ev.stream().as_u128(), -i128::from(e.cents.to_native())))
}

// --- 4. The notifier: reacts, and records why --------------------------------------------------

fn notifier(db: &Varve) -> Processor {
    let alerts = db.stream::<Alerts>(ALERTS);
    Processor::new("notifier").on::<Withdrawn>(move |e, ev| {
        if e.cents.to_native() < LARGE {
            return Ok(());
        }
        let asked = ev.meta::<RequestMeta>()?;
        let meta = RequestMeta {
            user: "notifier".into(),
            correlation: asked.map_or(0, |m| m.correlation.to_native()),
            causation: Some(ev.seq()),
        };
        let alert = LargeWithdrawal { account: ev.stream().as_u128(), cents: e.cents.to_native() };
        // At least once: a repeat after a crash carries the same id and is not stored twice.
        let id = (u128::from(ev.seq()) << 64) | ALERTS;
        alerts.append_all(ExpectedVersion::Auto, [Pending::from(alert).with_meta(&meta).with_id(id)])?;
        Ok(())
    })
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
    let (ana, bo) = (db.stream::<Account>(1u128), db.stream::<Account>(2u128));
    let teller = |correlation| RequestMeta { user: "teller-7".into(), correlation, causation: None };

    // 1. Deposits, each stamped with who asked and why.
    ana.execute_with(&Deposit(12_000), &ExecuteOptions::new().metadata(&teller(1)))?;
    bo.execute_with(&Deposit(1_000), &ExecuteOptions::new().metadata(&teller(2)))?;

    // 2. Transfers: atomic over both accounts. An overdraft is the domain's refusal.
    transfer(&db, &ana, &bo, 7_500, &teller(3))?;
    match transfer(&db, &bo, &ana, 50_000, &teller(4)) {
        Err(ExecuteError::Rejected(why)) => println!("refused: {why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Concurrent transfers in both directions: conflicts are retried with backoff.
    let workers: Vec<_> = (0..4u128)
        .map(|t| {
            let (db, ana, bo) = (db.clone(), ana.clone(), bo.clone());
            std::thread::spawn(move || {
                for i in 0..25 {
                    let (from, to) = if (t + i) % 2 == 0 { (&ana, &bo) } else { (&bo, &ana) };
                    let meta = RequestMeta {
                        user: format!("app-{t}"),
                        correlation: 100 + t * 100 + i,
                        causation: None,
                    };
                    match transfer(&db, from, to, 100, &meta) {
                        Ok(()) | Err(ExecuteError::Rejected(_)) => {}
                        Err(e) => panic!("transfer failed: {e}"),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a transfer thread panicked");
    }
    let (a, b) = (ana.load()?.state().balance, bo.load()?.state().balance);
    assert_eq!(a + b, 13_000, "transfers move money, they never make or lose any");
    println!("ana {a} cents, bo {b} cents");

    // 3. The projection agrees with the aggregates.
    let mut projection = balances();
    projection.catch_up(&db)?;
    {
        let view = db.begin_read()?;
        for (name, id, folded) in [("ana", 1u128, a), ("bo", 2, b)] {
            let balance: &ArchivedBalance = view.get_data(&BALANCES, &id)?.expect("projected");
            assert_eq!(balance.cents.to_native(), folded);
            println!("projected {name}: {} cents after {} movements", balance.cents, balance.movements);
        }
    }

    // 4. The notifier alerts on the large withdrawal; the alert says what caused it.
    notifier(&db).catch_up(&db)?;
    let view = db.begin_read()?;
    let alerts = db.stream::<Alerts>(ALERTS);
    for alert in alerts.read(&view, 1)? {
        let alert = alert?;
        let meta = alert.meta::<RequestMeta>()?.expect("alerts carry metadata");
        let cause_seq = meta.causation.as_ref().map(|s| s.to_native()).expect("an alert has a cause");
        let cause = view.event(cause_seq)?.expect("the cause is stored");
        let cause_meta = cause.meta::<RequestMeta>()?.expect("the withdrawal carries metadata");
        assert_eq!(meta.correlation, cause_meta.correlation);
        println!(
            "alert at seq {}: caused by seq {cause_seq} ({} by {}), correlation {}",
            alert.recorded().seq(),
            cause.type_tag(),
            cause_meta.user,
            meta.correlation
        );
    }
    assert_eq!(alerts.load()?.state().count, 1);
    drop(view);

    // 5. No public call can make an account unloadable: a foreign event is refused.
    let foreign = NewEvent::from_event(&LargeWithdrawal { account: 1, cents: 1 })?;
    match db.append(1u128, ExpectedVersion::Auto, [foreign]) {
        Err(Error::ForeignEvent { event, aggregate, .. }) => println!("refused {event} under {aggregate}"),
        other => panic!("expected ForeignEvent, got {other:?}"),
    }
    assert_eq!(ana.load()?.state().balance, a);
    Ok(())
}
