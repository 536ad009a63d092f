//! A small order domain and its "totals per customer" projection, shared by
//! `tests/processors.rs` and the child process it kills (`projection_child.rs`).

use std::collections::BTreeMap;

use varvedb::{Event, HandlerError, Projection, ReadView, Table};

#[derive(Event, Debug, Clone)]
#[event(name = "order.placed")]
pub struct OrderPlaced {
    pub customer: String,
    pub cents: u64,
}

#[derive(Event, Debug, Clone)]
#[event(name = "order.refunded")]
pub struct OrderRefunded {
    pub customer: String,
    pub cents: u64,
}

/// An event type the projection does not handle (skipped by its tag).
#[derive(Event, Debug, Clone)]
#[event(name = "page.viewed")]
pub struct PageViewed {
    pub path: String,
}

pub const NAME: &str = "order-totals";
pub const TOTALS: Table<String, i64> = Table::new(NAME, "totals");
pub const COUNTS: Table<String, u64> = Table::new(NAME, "counts");

/// customer → (net cents, number of orders and refunds applied)
pub type Model = BTreeMap<String, (i64, u64)>;

fn add(tx: &mut varvedb::ProjectionTxn<'_, '_>, customer: &str, cents: i64) -> Result<(), HandlerError> {
    let customer = customer.to_owned();
    let total = tx.get(&TOTALS, &customer)?.unwrap_or(0);
    let count = tx.get(&COUNTS, &customer)?.unwrap_or(0);
    tx.insert(&TOTALS, &customer, &(total + cents))?;
    tx.insert(&COUNTS, &customer, &(count + 1))?;
    Ok(())
}

#[must_use]
pub fn projection(batch: usize) -> Projection {
    Projection::new(NAME)
        .batch_size(batch)
        .on::<OrderPlaced>(|tx, e, _meta| add(tx, &e.customer, e.cents.to_native().cast_signed()))
        .on::<OrderRefunded>(|tx, e, _meta| add(tx, &e.customer, -e.cents.to_native().cast_signed()))
}

/// The read model as stored.
#[must_use]
pub fn stored(view: &ReadView<'_>) -> Model {
    let counts: BTreeMap<String, u64> = view.entries(&COUNTS).unwrap().map(Result::unwrap).collect();
    view.entries(&TOTALS).unwrap().map(Result::unwrap).map(|(c, t)| (c.clone(), (t, counts[&c]))).collect()
}

/// The read model folded from scratch from the log's events with seq `<= upto`.
#[must_use]
pub fn fold(view: &ReadView<'_>, upto: u64) -> Model {
    let mut model = Model::new();
    for event in view.read_all(1).unwrap() {
        let event = event.unwrap();
        if event.seq() > upto {
            break;
        }
        let (customer, cents) = match event.type_tag() {
            "order.placed" => {
                let e = event.access::<ArchivedOrderPlaced>().unwrap();
                (e.customer.to_string(), e.cents.to_native().cast_signed())
            }
            "order.refunded" => {
                let e = event.access::<ArchivedOrderRefunded>().unwrap();
                (e.customer.to_string(), -e.cents.to_native().cast_signed())
            }
            _ => continue,
        };
        let entry = model.entry(customer).or_default();
        entry.0 += cents;
        entry.1 += 1;
    }
    model
}

/// The `n`th event of a deterministic mix of all three types.
#[must_use]
pub fn event(n: u64) -> varvedb::NewEvent {
    let customer = format!("customer-{}", n % 13);
    match n % 5 {
        0 => varvedb::NewEvent::from_event(&PageViewed { path: format!("/p/{n}") }),
        1 => varvedb::NewEvent::from_event(&OrderRefunded { customer, cents: n % 100 }),
        _ => varvedb::NewEvent::from_event(&OrderPlaced { customer, cents: 100 + n % 1_000 }),
    }
    .unwrap()
}
