//! A read replica over NATS JetStream: a leader store publishes its events, a replica store
//! in another directory (on another machine, in production) imports them, and a subscription
//! on the replica sees each event shortly after the leader committed it. Read it top to
//! bottom:
//!
//! 1. the leader appends a backlog of events, then a publisher publishes them to JetStream
//!    and a follower imports them into the replica: the throughput of the catch-up;
//! 2. the leader goes on appending while both run: the lag from the leader's commit to the
//!    replica's (the replica keeps the leader's commit time in each event);
//! 3. the replica's log is the leader's, byte for byte, and it refuses local appends.
//!
//! Run: `cargo run --release --example replica`. With `NATS_URL` unset, it starts
//! `nats-server -js` (the Debian/Ubuntu package `nats-server`, or a release from
//! nats.io, on PATH) on a free port of 127.0.0.1 with its store in a temporary directory,
//! and stops it at the end; with `NATS_URL=nats://host:4222` it uses that server (it needs
//! JetStream on, and creates the stream `VARVE` there). `EVENTS` sets the backlog (default
//! 100,000).

use std::time::{Duration, Instant};

use varvedb::{Error, ExpectedVersion, NewEvent, Options, Varve};
use varvedb_nats::{Follower, FollowerConfig, Publisher, PublisherConfig};

#[path = "support/nats_server.rs"]
mod nats_server;
use nats_server::start_server;

fn event(n: u64) -> NewEvent {
    NewEvent::new("reading.taken", format!("{{\"sensor\":{},\"value\":{n}}}", n % 64).into_bytes())
}

/// The value at `per_mille` thousandths of the sorted `sorted`.
fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

fn micros_now() -> u64 {
    u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros())
        .unwrap()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backlog: u64 = std::env::var("EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let (url, _server) = match std::env::var("NATS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let (url, server) = start_server()?;
            println!("started nats-server -js at {url} (set NATS_URL to use another)");
            (url, Some(server))
        }
    };
    let (leader_dir, replica_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let leader = Varve::open(leader_dir.path())?;
    let replica = Options::new().replica(true).open(replica_dir.path())?;

    // 1. A backlog, then the catch-up.
    for chunk in (0..backlog).collect::<Vec<_>>().chunks(1000) {
        leader.append(
            u128::from(chunk[0] / 1000 % 16),
            ExpectedVersion::Auto,
            chunk.iter().map(|&n| event(n)),
        )?;
    }
    let client = async_nats::connect(&url).await?;
    let publisher = Publisher::new(leader.clone(), client.clone(), PublisherConfig::default()).await?;
    let follower = Follower::new(replica.clone(), client, FollowerConfig::default());
    let started = Instant::now();
    let running = publisher.clone();
    let publishing = tokio::spawn(async move { running.run().await });
    let following = {
        let follower = follower.clone();
        tokio::spawn(async move { follower.run().await })
    };
    while replica.begin_read()?.last_seq()? < backlog {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "catch-up: {backlog} events published and imported in {:.2} s ({} events/s)",
        elapsed.as_secs_f64(),
        u128::from(backlog) * 1_000_000 / elapsed.as_micros().max(1)
    );

    // 2. Live: one event every millisecond on the leader; the replica's subscription reads
    // each event's commit time on the leader.
    let live = 5_000u64;
    let mut sub = replica.subscribe(backlog + 1);
    let appender = {
        let leader = leader.clone();
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            for n in 0..live {
                leader.append(1u128, ExpectedVersion::Auto, [event(n)])?;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        })
    };
    let mut lags = Vec::with_capacity(live as usize);
    while (lags.len() as u64) < live {
        let e = sub.next_event().await.ok_or("subscription ended")??;
        lags.push(micros_now().saturating_sub(e.timestamp_micros));
    }
    appender.await??;
    lags.sort_unstable();
    println!(
        "live: {live} events, lag from the leader's commit to the replica's: p50 {} µs, p99 {} µs",
        percentile(&lags, 500),
        percentile(&lags, 990)
    );
    let (p, f) = (publisher.stats(), follower.stats());
    println!(
        "publisher: position {}, published {}, duplicates {}, errors {}; follower: imported {}, errors {}",
        p.position, p.published, p.duplicates, p.errors, f.imported, f.errors
    );
    publishing.abort();
    following.abort();

    // 3. The same log, and a replica that takes no local appends.
    let total = backlog + live;
    assert_eq!(leader.export_replicated(0, usize::MAX)?, replica.export_replicated(0, usize::MAX)?);
    assert_eq!(replica.begin_read()?.check_integrity()?.events, total);
    let refused = replica.append(1u128, ExpectedVersion::Auto, [event(0)]);
    assert!(matches!(refused, Err(Error::ReadOnlyReplica)));
    println!(
        "replica: {total} events, byte for byte the leader's; a local append is refused: {}",
        refused.unwrap_err()
    );
    Ok(())
}
