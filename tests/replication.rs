//! Read replicas over NATS JetStream, against a real `nats-server` (2.9): a leader's log
//! published and imported whole, and the same with the server, the publisher and the
//! follower killed (SIGKILL) at random moments.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use varvedb::{ExpectedVersion, MasterKey, NewEvent, Options, Varve};
use varvedb_nats::{Follower, FollowerConfig, Publisher, PublisherConfig, ReplicationError};

#[path = "support/nats.rs"]
mod nats;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Same log, byte for byte (records and blobs), and both stores pass the integrity check.
fn assert_same_log(leader: &Varve, replica: &Varve, events: u64) {
    let mut after = 0;
    loop {
        let l = leader.export_replicated(after, 10_000).unwrap();
        let r = replica.export_replicated(after, 10_000).unwrap();
        assert_eq!(l.len(), r.len(), "the logs differ in length after seq {after}");
        for (a, b) in l.iter().zip(&r) {
            assert!(a == b, "the logs differ at seq {}", a.seq());
        }
        match l.last() {
            Some(last) => after = last.seq(),
            None => break,
        }
    }
    assert_eq!(after, events);
    let (rl, rr) = (
        leader.begin_read().unwrap().check_integrity().unwrap(),
        replica.begin_read().unwrap().check_integrity().unwrap(),
    );
    assert_eq!((rl.events, rl.streams, rl.blob_references), (rr.events, rr.streams, rr.blob_references));
    assert_eq!(rr.last_seq, events);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn a_replica_receives_the_leaders_log_byte_for_byte() {
    let events = env("VARVEDB_REPLICA_EVENTS", 100_000);
    let server = nats::NatsServer::start();
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Varve::open(l.path()).unwrap();
    append_batches(&leader, 1, events, 0);
    let replica = Options::new().replica(true).open(r.path()).unwrap();
    runtime().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let publisher =
            Publisher::new(leader.clone(), client.clone(), PublisherConfig::default()).await.unwrap();
        let running = publisher.clone();
        let task = tokio::spawn(async move { running.run().await });
        let follower = Follower::new(replica.clone(), client.clone(), FollowerConfig::default());
        let reached = tokio::time::timeout(Duration::from_mins(10), follower.follow_until(events)).await;
        assert_eq!(reached.expect("the replica did not catch up within 10 minutes").unwrap(), events);
        // The publisher saves its position after JetStream has acknowledged a round, which
        // may come after the follower has already imported that round's events.
        let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
        while publisher.stats().position < events && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        let (p, f) = (publisher.stats(), follower.stats());
        assert_eq!((p.position, p.published, p.duplicates), (events, events, 0), "{p:?}");
        assert_eq!((f.imported, f.skipped), (events, 0), "{f:?}");
        assert_eq!(publisher.lag().unwrap(), 0);
        assert_eq!(follower.lag().await.unwrap(), 0);

        // A publisher started again resumes at its checkpoint; rewound, it publishes the
        // last events again, and JetStream drops them.
        let again = Publisher::new(leader.clone(), client.clone(), PublisherConfig::default()).await.unwrap();
        assert_eq!(again.publish_available().await.unwrap(), events);
        assert_eq!(again.stats().published, 0);
        let rewound = events.saturating_sub(1000);
        leader.save_checkpoint("varvedb-nats.publisher", rewound).unwrap();
        let again = Publisher::new(leader.clone(), client, PublisherConfig::default()).await.unwrap();
        assert_eq!(again.publish_available().await.unwrap(), events);
        assert_eq!((again.stats().published, again.stats().duplicates), (0, events - rewound));
    });
    assert_same_log(&leader, &replica, events);
}

/// Appends events `from..=to` in batches of 100, each batch to one of 50 streams from
/// `streams`; every 1,000th payload goes to a blob.
fn append_batches(db: &Varve, from: u64, to: u64, streams: u128) {
    let mut seq = from - 1;
    while seq < to {
        let n = (to - seq).min(100);
        let batch: Vec<NewEvent> = (seq + 1..=seq + n)
            .map(|s| {
                let payload =
                    if s.is_multiple_of(1000) { vec![s as u8; 4096] } else { s.to_le_bytes().to_vec() };
                let e = NewEvent::new(if s % 3 == 0 { "fizz" } else { "plain" }, payload)
                    .with_metadata(vec![s as u8; (s % 5) as usize]);
                if s.is_multiple_of(7) { e.with_id(u128::from(s) << 32) } else { e }
            })
            .collect();
        db.append(streams + u128::from(seq / 100 % 50), ExpectedVersion::Auto, batch).unwrap();
        seq += n;
    }
}

#[test]
fn an_encrypted_replica_with_the_merkle_tree_receives_the_log_and_the_shreds() {
    let events = env("VARVEDB_REPLICA_EVENTS", 100_000);
    let half = events / 2;
    let server = nats::NatsServer::start();
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = MasterKey::generate().unwrap();
    let leader = Options::new().encryption_key(key.clone()).verifiable_log(true).open(l.path()).unwrap();
    append_batches(&leader, 1, half, 0);
    let replica = Options::new()
        .encryption_key(key)
        .verifiable_log(true)
        .replica_of(leader.store_id().unwrap())
        .open(r.path())
        .unwrap();
    runtime().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let publisher =
            Publisher::new(leader.clone(), client.clone(), PublisherConfig::default()).await.unwrap();
        let running = publisher.clone();
        let task = tokio::spawn(async move { running.run().await });
        let follower = Follower::new(replica.clone(), client.clone(), FollowerConfig::default());
        let following = follower.clone();
        let follow = tokio::spawn(async move { following.run().await });
        // Shredded while the replica catches up: their events reach it before or after the
        // shred, with the marker or without.
        for stream in [0u128, 3, 7, 49] {
            assert!(leader.shred(stream).unwrap());
        }
        append_batches(&leader, half + 1, events, 100);
        let deadline = tokio::time::Instant::now() + Duration::from_mins(10);
        let shredded_on = |db: &Varve| db.export_shreds(u64::MAX).unwrap().1.len();
        // The follower counts a batch after its commit returns, so a reader can see the last
        // seq before the count does; the publisher counts a shred after JetStream's answer,
        // which may come after the follower has applied it. Wait for all four.
        let done = |f: &Follower, p: &Publisher| {
            replica.begin_read().unwrap().last_seq().unwrap() >= events
                && shredded_on(&replica) >= 4
                && f.stats().imported >= events
                && p.stats().shreds >= 4
        };
        while !done(&follower, &publisher) && tokio::time::Instant::now() < deadline {
            assert!(!follow.is_finished() && !task.is_finished(), "the follower or publisher stopped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        follow.abort();
        task.abort();
        let (p, f) = (publisher.stats(), follower.stats());
        assert_eq!(f.imported, events, "{f:?}");
        // Each shred applied once, whichever way its stream's events came.
        assert!(p.shreds >= 4 && f.shreds <= 4, "{p:?} {f:?}");
    });
    assert_same_log(&leader, &replica, events);
    let (lv, rv) = (leader.begin_read().unwrap(), replica.begin_read().unwrap());
    // Streams 0, 3, 7 and 49 hold the batches from seqs 1, 301, 701 and 4901, and every 50th after.
    for seq in [1, 101, 301, 701, 4901, half, events] {
        let (a, b) = (lv.event(seq).unwrap().unwrap(), rv.event(seq).unwrap().unwrap());
        assert_eq!(a, b);
        assert_eq!(b.is_shredded(), ![101, events].contains(&seq), "seq {seq}");
    }
    assert_eq!(lv.tree_head().unwrap(), rv.tree_head().unwrap());
    for size in [1, half, events] {
        assert_eq!(lv.tree_head_at(size).unwrap(), rv.tree_head_at(size).unwrap());
        assert_eq!(lv.inclusion_proof(size, events).unwrap(), rv.inclusion_proof(size, events).unwrap());
        assert_eq!(lv.consistency_proof(size, events).unwrap(), rv.consistency_proof(size, events).unwrap());
    }
}

#[test]
fn a_promoted_replica_does_not_splice_its_log_onto_its_old_leaders_stream() {
    let server = nats::NatsServer::start();
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Varve::open(l.path()).unwrap();
    append_batches(&leader, 1, 300, 0);
    let replica = Options::new().replica_of(leader.store_id().unwrap()).open(r.path()).unwrap();
    runtime().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let publisher =
            Publisher::new(leader.clone(), client.clone(), PublisherConfig::default()).await.unwrap();
        publisher.publish_available().await.unwrap();
        let follower = Follower::new(replica.clone(), client.clone(), FollowerConfig::default());
        follower.follow_until(300).await.unwrap();
        // The leader goes on; the replica is promoted and appends on its own.
        append_batches(&leader, 301, 400, 0);
        publisher.publish_available().await.unwrap();
        drop((follower, replica));
        let promoted = Varve::open(r.path()).unwrap();
        assert_eq!(promoted.store_id(), leader.store_id());
        promoted.append(1u128, ExpectedVersion::Auto, [NewEvent::new("own", vec![1])]).unwrap();
        // Its seqs 1..=300 are the leader's (dropped as duplicates, their records compared);
        // its 301 has the message id of the leader's 301, but not its record: refused.
        let again = Publisher::new(promoted.clone(), client, PublisherConfig::default()).await.unwrap();
        let mut result = again.publish_available().await;
        if result.as_ref().is_err_and(ReplicationError::is_transient) {
            result = again.publish_available().await;
        }
        assert!(matches!(result, Err(ReplicationError::NotOneLog { seq: 301, .. })), "{result:?}");
        assert_eq!(again.stats().position, 300);
    });
}

fn spawn(mode: &str, dir: &Path, url: &str, events: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_replica-child"))
        .args([mode, dir.to_str().unwrap(), url, &events.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[test]
fn sigkills_of_server_publisher_and_follower_lose_and_repeat_nothing() {
    let kills = env("VARVEDB_REPLICA_KILLS", 30);
    let events = env("VARVEDB_REPLICA_KILL_EVENTS", 20_000);
    let mut rng = fastrand::Rng::with_seed(env("VARVEDB_REPLICA_SEED", 19));
    let mut server = nats::NatsServer::start();
    let url = server.url();
    let (l, r) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut publisher = spawn("publish", l.path(), &url, events);
    let mut follower = spawn("follow", r.path(), &url, events);
    let mut killed = [0u32; 3];
    // Kills while the replica is still catching up: the ones that test something.
    let mut mid_stream = 0;
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.u64(20..400)));
        if follower.try_wait().unwrap().is_none() {
            mid_stream += 1;
        }
        let victim = rng.usize(0..3);
        killed[victim] += 1;
        match victim {
            0 => server.restart(),
            1 => {
                let _ = publisher.kill();
                let _ = publisher.wait();
                publisher = spawn("publish", l.path(), &url, events);
            }
            _ => {
                let _ = follower.kill();
                let _ = follower.wait();
                follower = spawn("follow", r.path(), &url, events);
            }
        }
    }
    // Then both run to the end.
    let deadline = Instant::now() + Duration::from_mins(5);
    for child in [&mut publisher, &mut follower] {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "a child failed: {status}");
                break;
            }
            assert!(Instant::now() < deadline, "the children did not finish within 5 minutes");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "killed: server {}, publisher {}, follower {}; {mid_stream} of {kills} while the replica was behind",
        killed[0], killed[1], killed[2]
    );
    assert!(mid_stream * 2 >= kills, "most kills came after the replica had caught up: make the log longer");
    let leader = Varve::open(l.path()).unwrap();
    let replica = Options::new().replica(true).open(r.path()).unwrap();
    assert_same_log(&leader, &replica, events);
}
