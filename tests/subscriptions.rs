//! Subscriptions: catch-up then live, no gap and no duplicate across the hand-off.

use std::time::Duration;

use futures_util::StreamExt;
use varvedb::{Error, ExpectedVersion, NewEvent, Subscription, Varve};

#[path = "support/damage.rs"]
mod damage;

const TOTAL: u64 = 100_000;
const PER_WRITE: u64 = 100;

/// Appends `TOTAL` events (payload = its own seq, little-endian) in writes of `PER_WRITE`.
async fn write_all(db: Varve) {
    for w in 0..TOTAL / PER_WRITE {
        let events: Vec<NewEvent> = (0..PER_WRITE)
            .map(|i| {
                let seq = w * PER_WRITE + i + 1;
                NewEvent::new(
                    if seq.is_multiple_of(3) { "fizz" } else { "plain" },
                    seq.to_le_bytes().to_vec(),
                )
            })
            .collect();
        db.append_async(u128::from(w % 7), ExpectedVersion::Auto, events).await.unwrap();
        if w % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

/// Reads until `until`, checking every seq arrives once, in order, with its own payload.
/// `pause` slows the reader down every 500 events.
async fn consume(mut sub: Subscription, from: u64, until: u64, pause: Option<Duration>) -> u64 {
    let mut expected = from;
    while expected <= until {
        let e = tokio::time::timeout(Duration::from_secs(30), sub.next_event())
            .await
            .expect("no event for 30 s")
            .expect("feed open")
            .unwrap();
        assert_eq!(e.seq, expected, "gap or duplicate");
        assert_eq!(e.payload[..], e.seq.to_le_bytes(), "payload of seq {}", e.seq);
        expected += 1;
        if let Some(p) = pause
            && e.seq % 500 == 0
        {
            tokio::time::sleep(p).await;
        }
    }
    expected - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_slow_late_and_resumed_subscribers_each_see_every_seq_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();

    let fast = tokio::spawn(consume(db.subscribe(1), 1, TOTAL, None));
    let slow = tokio::spawn(consume(db.subscribe(1), 1, TOTAL, Some(Duration::from_millis(5))));
    let writer = tokio::spawn(write_all(db.clone()));

    // Joins late, while writes continue, and catches up the whole backlog.
    while db.begin_read().unwrap().last_seq().unwrap() < 30_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let late = tokio::spawn(consume(db.subscribe(1), 1, TOTAL, None));

    // Dropped part-way, then resumed from the last seq it saw.
    let first_half = consume(db.subscribe(1), 1, 40_000, None).await;
    assert_eq!(first_half, 40_000);
    let resumed = tokio::spawn(consume(db.subscribe(first_half + 1), first_half + 1, TOTAL, None));

    writer.await.unwrap();
    for (name, task) in [("fast", fast), ("slow", slow), ("late", late), ("resumed", resumed)] {
        assert_eq!(task.await.unwrap(), TOTAL, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_filter_skips_other_events_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let mut sub = db.subscribe(1).of_types(["fizz"]).batch_size(7);
    // The test keeps `db` open: a feed ends when the last handle is dropped.
    let writer_db = db.clone();
    let writer = tokio::spawn(async move {
        let db = writer_db;
        for seq in 1..=3_000u64 {
            let tag = if seq % 3 == 0 { "fizz" } else { "plain" };
            db.append_async(1u128, ExpectedVersion::Auto, [NewEvent::new(tag, seq.to_le_bytes().to_vec())])
                .await
                .unwrap();
        }
    });
    for n in 1..=1_000u64 {
        let e = sub.next_event().await.unwrap().unwrap();
        assert_eq!((e.seq, &*e.type_tag), (n * 3, "fizz"));
    }
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rare_type_is_found_across_batches_of_skipped_events() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    for seq in 1..=2_000u64 {
        let tag = if seq % 400 == 0 { "rare" } else { "common" };
        db.append(1u128, ExpectedVersion::Auto, [NewEvent::new(tag, seq.to_le_bytes().to_vec())]).unwrap();
    }
    // Batches of 7 scan at most 112 events per trip: most trips deliver nothing.
    let mut sub = db.subscribe(1).of_types(["rare"]).batch_size(7);
    for n in 1..=5u64 {
        assert_eq!(sub.next_event().await.unwrap().unwrap().seq, n * 400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_after_the_read_ahead_found_the_end_still_wakes_the_subscriber() {
    const GROUP: u64 = 7;
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let sub = db.subscribe(1).batch_size(GROUP as usize).poll_interval(Duration::from_hours(1));
    let (delivered, mut delivered_rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = tokio::spawn(async move {
        let mut sub = sub;
        while let Some(e) = sub.next_event().await {
            let seq = e.unwrap().seq;
            delivered.send(seq).unwrap();
            if seq % GROUP == 1 {
                // Holding the rest of a full batch: meanwhile the read-ahead reads on, finds
                // the end of the log, and the next group commits.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    for group in 0..20u64 {
        let events = (1..=GROUP).map(|i| NewEvent::new("t", (group * GROUP + i).to_le_bytes().to_vec()));
        db.append_async(1u128, ExpectedVersion::Auto, events).await.unwrap();
        // Once the group's first event is out, commit the next: had the subscriber marked the
        // watch as seen after that commit, it would wait for the next poll (an hour).
        let first = group * GROUP + 1;
        loop {
            let seq = tokio::time::timeout(Duration::from_secs(10), delivered_rx.recv())
                .await
                .expect("a commit did not wake the subscriber")
                .unwrap();
            if seq == first {
                break;
            }
        }
    }
    let last = 20 * GROUP;
    while tokio::time::timeout(Duration::from_secs(10), delivered_rx.recv())
        .await
        .expect("a commit did not wake the subscriber")
        .unwrap()
        < last
    {}
    drop(db);
    consumer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_stops_the_feed_after_the_events_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let payload = |seq: u64| format!("payload-of-seq-{seq:04}").into_bytes();
    {
        let db = Varve::open(dir.path()).unwrap();
        for seq in 1..=100u64 {
            db.append(u128::from(seq % 3), ExpectedVersion::Auto, [NewEvent::new("t", payload(seq))])
                .unwrap();
        }
    }
    assert!(damage::flip_in_file(dir.path(), &payload(60), 3) >= 1, "payload not found in the file");
    let db = Varve::open(dir.path()).unwrap();
    // Several batches, read ahead, before the damaged one.
    let mut sub = db.subscribe(1).batch_size(7);
    for seq in 1..60u64 {
        let e = sub.next_event().await.unwrap().unwrap();
        assert_eq!((e.seq, &e.payload[..]), (seq, &payload(seq)[..]));
    }
    for _ in 0..3 {
        let err = sub.next_event().await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Corrupt { seq: 60, .. }), "{err}");
        assert_eq!(sub.position(), 60, "the feed stays before the damaged record");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn position_is_where_a_new_subscription_would_continue() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    for seq in 1..=20u64 {
        db.append(1u128, ExpectedVersion::Auto, [NewEvent::new("t", seq.to_le_bytes().to_vec())]).unwrap();
    }
    let mut sub = db.subscribe(1).batch_size(10);
    assert_eq!(sub.position(), 1);
    assert_eq!(sub.next_event().await.unwrap().unwrap().seq, 1);
    assert_eq!(sub.position(), 2, "nine read events are buffered, not delivered");
    let mut resumed = db.subscribe(sub.position());
    assert_eq!(resumed.next_event().await.unwrap().unwrap().seq, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_next_event_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let mut sub = db.subscribe(1).batch_size(3);
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            for seq in 1..=500u64 {
                db.append_async(
                    1u128,
                    ExpectedVersion::Auto,
                    [NewEvent::new("t", seq.to_le_bytes().to_vec())],
                )
                .await
                .unwrap();
                if seq % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let (mut expected, mut cancelled) = (1u64, 0u32);
    while expected <= 500 {
        // A very short deadline drops `next_event` mid-wait or mid-read again and again.
        match tokio::time::timeout(Duration::from_micros(200), sub.next_event()).await {
            Ok(Some(e)) => {
                assert_eq!(e.unwrap().seq, expected);
                expected += 1;
            }
            Ok(None) => panic!("feed closed"),
            Err(_) => cancelled += 1,
        }
    }
    writer.await.unwrap();
    assert!(cancelled > 0, "the deadline never cancelled a call; the test did not test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_impl_delivers_the_same_feed_and_ends_when_the_store_closes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    for seq in 1..=1_000u64 {
        db.append(
            u128::from(seq % 4),
            ExpectedVersion::Auto,
            [NewEvent::new("t", seq.to_le_bytes().to_vec())],
        )
        .unwrap();
    }
    let sub = db.subscribe(990);
    let seqs: Vec<u64> = sub.take(11).map(|e| e.unwrap().seq).collect().await;
    assert_eq!(seqs, (990..=1_000).collect::<Vec<_>>());

    let mut live = db.subscribe(1_001);
    drop(db);
    let end = tokio::time::timeout(Duration::from_secs(5), live.next()).await.expect("the feed should end");
    assert!(end.is_none(), "a closed store ends the feed");
}

mod typed_filter {
    use varvedb::{Event, ExpectedVersion, NewEvent, Varve};

    #[derive(Event)]
    #[event(name = "order.placed")]
    struct OrderPlaced {
        cents: u64,
    }

    #[derive(Event)]
    #[event(name = "order.shipped")]
    struct OrderShipped;

    #[derive(Event)]
    #[event(name = "order.noted")]
    struct OrderNoted;

    #[tokio::test(flavor = "current_thread")]
    async fn of_filters_by_event_type_and_adds_up() {
        let dir = tempfile::tempdir().unwrap();
        let db = Varve::open(dir.path()).unwrap();
        let events = [
            NewEvent::from_event(&OrderPlaced { cents: 5 }).unwrap(),
            NewEvent::from_event(&OrderNoted).unwrap(),
            NewEvent::from_event(&OrderShipped).unwrap(),
            NewEvent::new("order.placed.raw", b"x".to_vec()),
            NewEvent::from_event(&OrderPlaced { cents: 6 }).unwrap(),
        ];
        db.append(1u128, ExpectedVersion::Auto, events).unwrap();
        let mut placed = db.subscribe(1).of::<OrderPlaced>();
        let mut both = db.subscribe(1).of::<OrderPlaced>().of::<OrderShipped>();
        let mut seqs = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let e = placed.next_event().await.unwrap().unwrap();
            assert_eq!(e.type_tag.as_ref(), "order.placed");
            seqs.0.push(e.seq);
        }
        for _ in 0..3 {
            seqs.1.push(both.next_event().await.unwrap().unwrap().seq);
        }
        assert_eq!(seqs, (vec![1, 5], vec![1, 3, 5]));
    }
}
