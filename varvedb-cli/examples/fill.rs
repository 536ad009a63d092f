//! Writes a store of N typed events (default 1,000,000) for measuring `varve` on a large
//! store: `cargo run --release -p varvedb-cli --example fill -- DIR [N]`.

use varvedb::{Event, EventData, ExpectedVersion, NewEvent, Options, WriteBatch};

#[derive(EventData)]
struct Line {
    sku: String,
    quantity: u16,
}

#[derive(Event)]
#[event(name = "order.placed")]
struct Placed {
    customer: u64,
    lines: Vec<Line>,
    total_cents: u64,
    note: Option<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: fill DIR [N]")?;
    let n: u64 = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    let db = Options::new().open(&dir)?;
    // Ten events per stream, a thousand streams per commit.
    let mut i = 0u64;
    while i < n {
        let mut batch = WriteBatch::new();
        for _ in 0..1000 {
            if i >= n {
                break;
            }
            let stream = u128::from(i / 10) + 1;
            let events: Vec<NewEvent> = (i..(i + 10).min(n))
                .map(|j| {
                    NewEvent::from_event(&Placed {
                        customer: j % 5000,
                        lines: vec![Line { sku: format!("sku-{}", j % 977), quantity: (j % 7) as u16 + 1 }],
                        total_cents: 100 + j,
                        note: j.is_multiple_of(3).then(|| "leave it with the neighbour".to_owned()),
                    })
                })
                .collect::<Result<_, _>>()?;
            i += events.len() as u64;
            batch.append_kind(stream, "order", ExpectedVersion::NoStream, events);
        }
        db.write(batch)?;
    }
    println!("wrote {n} events to {dir}");
    Ok(())
}
