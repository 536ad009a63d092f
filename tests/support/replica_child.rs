//! The processes of tests/replication.rs's kill test, killed (SIGKILL) at random moments.
//!
//! `replica-child publish <leader dir> <nats url> <events>`: appends to the leader, ten
//! events a commit, until it holds `<events>` events, while a publisher publishes them;
//! exits once JetStream holds them all.
//! `replica-child follow <replica dir> <nats url> <events>`: follows until the replica holds
//! `<events>` events, then exits.

use std::time::Duration;

use varvedb::{ExpectedVersion, NewEvent, Options, Varve, WriteBatch};
use varvedb_nats::{Follower, FollowerConfig, Publisher, PublisherConfig};

/// The events the leader holds, by seq: stream, id, payload (every 500th in a blob).
fn event(seq: u64) -> (u128, NewEvent) {
    let payload = if seq.is_multiple_of(500) { vec![seq as u8; 2048] } else { seq.to_le_bytes().to_vec() };
    (u128::from(seq % 17), NewEvent::new("counted", payload).with_id(u128::from(seq) | 1 << 100))
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new().retry_on_initial_connect().connect(url).await.expect("connect")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, dir, url, events] = &args[..] else {
        panic!("usage: replica-child publish|follow <dir> <nats url> <events>");
    };
    let target: u64 = events.parse().expect("event count");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    match mode.as_str() {
        "publish" => {
            let db = Varve::open(dir).unwrap();
            let appender = db.clone();
            std::thread::spawn(move || {
                loop {
                    let next = appender.begin_read().unwrap().last_seq().unwrap() + 1;
                    if next > target {
                        break;
                    }
                    // The only writer: the batch's events take the seqs from `next` on.
                    let mut batch = WriteBatch::new();
                    for seq in next..=(next + 9).min(target) {
                        let (stream, e) = event(seq);
                        batch.append(stream, ExpectedVersion::Auto, [e]);
                    }
                    appender.write(batch).unwrap();
                    // Spreads the appends over the time the test kills.
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            rt.block_on(async {
                let config =
                    PublisherConfig { timeout: Duration::from_secs(1), ..PublisherConfig::default() };
                let client = connect(url).await;
                let publisher = loop {
                    match Publisher::new(db.clone(), client.clone(), config.clone()).await {
                        Ok(p) => break p,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                };
                let running = publisher.clone();
                let task = tokio::spawn(async move { running.run().await });
                while publisher.stats().position < target {
                    assert!(!task.is_finished(), "the publisher stopped: {:?}", task.await);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        "follow" => {
            let db = Options::new().replica(true).open(dir).unwrap();
            rt.block_on(async {
                let config = FollowerConfig { timeout: Duration::from_secs(1), ..FollowerConfig::default() };
                let follower = Follower::new(db, connect(url).await, config);
                follower.follow_until(target).await.unwrap();
            });
        }
        other => panic!("unknown mode {other:?}"),
    }
}
