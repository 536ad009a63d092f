//! W9: read replicas over NATS JetStream, on loopback. For a plain store and an encrypted
//! one, alternating within each repetition (and which goes first, from one to the next):
//!
//! - **publish**: a leader holding a backlog of events, published whole to a new JetStream
//!   stream (`Publisher::publish_available`), in events/s;
//! - **import**: that stream imported into a new replica (`Follower::follow_until`), in
//!   events/s;
//! - **lag**: with the publisher and the follower running, the leader appends one event per
//!   durable commit, paced; the lag of each event is the time from the leader's commit (its
//!   `append` returning) to the replica's (its last-seq watch reaching the event), p50 and p99.
//!
//! It starts its own `nats-server -js` (the Debian package `nats-server`, on PATH) on a free
//! port of 127.0.0.1 with its store in a temporary directory.
//!
//! Run: `cargo bench --bench replication` (3 repetitions, a backlog of 50,000 events, 2,000
//! paced events) or `cargo bench --bench replication -- --quick` (1 repetition, 10,000 and
//! 500). `VARVEDB_BENCH_EVENTS` and `VARVEDB_BENCH_LAG_EVENTS` override the sizes.

#![allow(clippy::cast_precision_loss, reason = "event counts far below 2^52 become rates")]

use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use varvedb::{ExpectedVersion, MasterKey, NewEvent, Options, Varve};
use varvedb_nats::{Follower, FollowerConfig, Publisher, PublisherConfig};

#[path = "../tests/support/nats.rs"]
mod nats;

type Res<T> = Result<T, Box<dyn Error>>;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Subject {
    Plain,
    Encrypted,
}

const KEY: [u8; 32] = [42; 32];

fn open_leader(dir: &Path, subject: Subject) -> Res<Varve> {
    let options = Options::new().map_size(8 << 30);
    Ok(match subject {
        Subject::Plain => options.open(dir)?,
        Subject::Encrypted => options.encryption_key(MasterKey::from_bytes(KEY)).open(dir)?,
    })
}

fn open_replica(dir: &Path, leader: &Varve, subject: Subject) -> Res<Varve> {
    let options = Options::new().map_size(8 << 30);
    Ok(match subject {
        Subject::Plain => options.replica(true).open(dir)?,
        Subject::Encrypted => options
            .encryption_key(MasterKey::from_bytes(KEY))
            .replica_of(leader.store_id().ok_or("the leader has no identity")?)
            .open(dir)?,
    })
}

/// An event of about 100 bytes: a 64-byte payload, 16 bytes of metadata, a type tag.
fn event(i: u64) -> NewEvent {
    let mut payload = vec![0u8; 64];
    payload[..8].copy_from_slice(&i.to_le_bytes());
    NewEvent::new("payment-recorded", payload).with_metadata(i.to_be_bytes().repeat(2))
}

/// Appends `n` events in commits of 100, over 100 streams.
fn backlog(db: &Varve, n: u64) -> Res<()> {
    let mut done = 0;
    while done < n {
        let k = (n - done).min(100);
        let batch: Vec<NewEvent> = (done..done + k).map(event).collect();
        db.append(u128::from(done / 100 % 100), ExpectedVersion::Auto, batch)?;
        done += k;
    }
    Ok(())
}

/// A line of the table: its label, and the figure it takes from a sample.
type Row = (&'static str, fn(&Sample) -> f64);

struct Sample {
    publish: f64,
    import: f64,
    lag_p50: Duration,
    lag_p99: Duration,
}

/// The `per_mille`th of `sorted`, by the nearest rank.
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    let at = ((sorted.len() - 1) * per_mille + 500) / 1000;
    sorted[at.min(sorted.len() - 1)]
}

async fn run_one(url: &str, subject: Subject, name: &str, events: u64, lag_events: u64) -> Res<Sample> {
    let (l, r) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let leader = open_leader(l.path(), subject)?;
    backlog(&leader, events)?;
    let replica = open_replica(r.path(), &leader, subject)?;
    let client = async_nats::connect(url).await?;
    let publisher_config = PublisherConfig {
        stream: name.to_uppercase(),
        prefix: name.to_owned(),
        shred_stream: format!("{}_SHREDS", name.to_uppercase()),
        ..PublisherConfig::default()
    };
    let follower_config = FollowerConfig {
        stream: publisher_config.stream.clone(),
        shred_stream: publisher_config.shred_stream.clone(),
        durable: format!("{name}-replica"),
        ..FollowerConfig::default()
    };

    let publisher = Publisher::new(leader.clone(), client.clone(), publisher_config.clone()).await?;
    let start = Instant::now();
    assert_eq!(publisher.publish_available().await?, events);
    let publish = events as f64 / start.elapsed().as_secs_f64();

    let follower = Follower::new(replica.clone(), client.clone(), follower_config);
    let start = Instant::now();
    assert_eq!(follower.follow_until(events).await?, events);
    let import = events as f64 / start.elapsed().as_secs_f64();

    // Lag: both running, the leader appending one event per commit, every 2 ms.
    let running = publisher.clone();
    let publishing = tokio::spawn(async move { running.run().await });
    let running = follower.clone();
    let following = tokio::spawn(async move { running.run().await });
    let mut watch = replica.watch_last_seq();
    let seen = tokio::spawn(async move {
        let mut at = Vec::with_capacity(lag_events as usize);
        let mut last = events;
        while last < events + lag_events {
            if watch.changed().await.is_err() {
                break;
            }
            let now = Instant::now();
            let reached = *watch.borrow_and_update();
            for _ in last..reached {
                at.push(now);
            }
            last = last.max(reached);
        }
        at
    });
    let db = leader.clone();
    let committed = tokio::task::spawn_blocking(move || -> Result<Vec<Instant>, varvedb::Error> {
        let mut at = Vec::with_capacity(lag_events as usize);
        for i in 0..lag_events {
            db.append(u128::from(i % 100), ExpectedVersion::Auto, [event(events + i)])?;
            at.push(Instant::now());
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(at)
    })
    .await??;
    let seen = tokio::time::timeout(Duration::from_mins(2), seen).await??;
    publishing.abort();
    following.abort();
    let mut lags: Vec<Duration> =
        committed.iter().zip(&seen).map(|(c, s)| s.saturating_duration_since(*c)).collect();
    assert_eq!(lags.len() as u64, lag_events, "the replica did not reach every event");
    lags.sort_unstable();

    let js = async_nats::jetstream::new(client);
    js.delete_stream(&publisher_config.stream).await?;
    if subject == Subject::Encrypted {
        js.delete_stream(&publisher_config.shred_stream).await?;
    }
    Ok(Sample { publish, import, lag_p50: percentile(&lags, 500), lag_p99: percentile(&lags, 990) })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "unknown".into(), |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Res<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 1 } else { 3 };
    let events = env("VARVEDB_BENCH_EVENTS", if quick { 10_000 } else { 50_000 });
    let lag_events = env("VARVEDB_BENCH_LAG_EVENTS", if quick { 500 } else { 2_000 });
    println!("W9 replication over NATS JetStream (loopback)");
    println!("backlog {events} events, {lag_events} paced events, {reps} repetitions");
    println!("load average at start: {}", load_average());
    let server = nats::NatsServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let subjects = [Subject::Plain, Subject::Encrypted];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(), Vec::new()];
    for rep in 0..reps {
        // Alternating which goes first: the second of a pair meets a warmer server and cache.
        let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let subject = &subjects[i];
            let name = format!("w9r{rep}s{i}");
            let sample = rt.block_on(run_one(&server.url(), *subject, &name, events, lag_events))?;
            println!(
                "  rep {rep} {subject:?}: publish {:.0}/s, import {:.0}/s, lag p50 {:.2} ms, p99 {:.2} ms",
                sample.publish,
                sample.import,
                sample.lag_p50.as_secs_f64() * 1e3,
                sample.lag_p99.as_secs_f64() * 1e3
            );
            samples[i].push(sample);
        }
    }
    println!("load average at end: {}", load_average());
    let figure = |s: &[Sample], f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
    let rows: [Row; 4] = [
        ("publish (events/s)", |s| s.publish),
        ("import (events/s)", |s| s.import),
        ("lag p50 (ms)", |s| s.lag_p50.as_secs_f64() * 1e3),
        ("lag p99 (ms)", |s| s.lag_p99.as_secs_f64() * 1e3),
    ];
    println!("\n| measurement | plain | encrypted | encrypted / plain |");
    println!("|---|---:|---:|---:|");
    for (label, f) in rows {
        let (p, e) = (figure(&samples[0], f), figure(&samples[1], f));
        let fmt = |x: f64| if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.2}") };
        println!("| {label} | {} | {} | {:.2} |", fmt(p), fmt(e), e / p);
    }
    Ok(())
}
