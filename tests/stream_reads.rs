//! Stream reads against the log they index, for streams written in runs and apart: the read
//! steps a log cursor along runs of consecutive seqs and looks events up elsewhere.

use varvedb::{ExpectedVersion, NewEvent, Varve, WriteBatch};

/// 6,000 appends to 7 streams: runs of one stream 1 to 150 long, so a stream's events are
/// sometimes consecutive in the log and sometimes a few or many records apart.
fn schedule() -> Vec<u128> {
    let mut x: u64 = 12_345;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    while out.len() < 6_000 {
        let r = next();
        let run = match r >> 60 {
            0..=3 => 1,
            4..=9 => (r >> 20) % 10 + 1,
            _ => (r >> 20) % 150 + 1,
        };
        out.extend(std::iter::repeat_n(u128::from(r % 7) + 1, run as usize));
    }
    out
}

#[test]
fn stream_reads_agree_with_the_log_whatever_the_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let streams = schedule();
    for chunk in streams.chunks(500) {
        let mut batch = WriteBatch::new();
        for &s in chunk {
            batch.append(s, ExpectedVersion::Auto, [NewEvent::new("t", vec![s as u8; 3])]);
        }
        db.write(batch).unwrap();
    }
    let view = db.begin_read().unwrap();
    let log: Vec<(u64, u128, u32)> = view
        .read_all(0)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.seq(), e.stream().as_u128(), e.version())
        })
        .collect();
    assert_eq!(log.len(), streams.len());
    assert_eq!(view.read_all(2).unwrap().count(), streams.len() - 1);
    for s in 1..=8u128 {
        let all: Vec<(u64, u32)> = log.iter().filter(|e| e.1 == s).map(|e| (e.0, e.2)).collect();
        for from in [0u32, 1, 2, 3, 17, 100, 500] {
            let want: Vec<_> = all.iter().copied().filter(|e| e.1 >= from).collect();
            let got: Vec<(u64, u32)> = view
                .read_stream(s, from)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.seq(), e.version())
                })
                .collect();
            assert_eq!(got, want, "stream {s} from version {from}");
            let (mut it, mut buf, mut reused) = (view.read_stream(s, from).unwrap(), Vec::new(), Vec::new());
            while let Some(e) = it.next_reusing(&mut buf) {
                let e = e.unwrap();
                reused.push((e.seq(), e.version()));
            }
            assert_eq!(reused, want, "stream {s} from version {from}, reusing a buffer");
        }
        let back: Vec<(u64, u32)> = view
            .read_stream_backward(s, u32::MAX)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.seq(), e.version())
            })
            .collect();
        assert_eq!(back, all.iter().rev().copied().collect::<Vec<_>>(), "stream {s} backward");
    }
}

#[test]
fn streams_as_long_as_the_read_ahead_and_around_it_read_whole_and_in_part() {
    // Stream reads look index entries up ahead of use, up to 8, more as more are used: the
    // lengths around those steps, appended round-robin so that every event is a lookup.
    let lengths = [1u32, 2, 7, 8, 9, 15, 16, 17];
    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let mut batch = WriteBatch::new();
    for round in 0..17 {
        for &len in lengths.iter().filter(|&&len| len > round) {
            batch.append(u128::from(len), ExpectedVersion::Auto, [NewEvent::new("t", vec![len as u8])]);
        }
    }
    db.write(batch).unwrap();
    let view = db.begin_read().unwrap();
    for len in lengths {
        let stream = u128::from(len);
        let read = |from: u32| -> Vec<u32> {
            view.read_stream(stream, from)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    assert_eq!((e.stream().as_u128(), e.payload()), (stream, &[len as u8][..]));
                    e.version()
                })
                .collect()
        };
        assert_eq!(read(1), (1..=len).collect::<Vec<_>>(), "stream {len}");
        assert_eq!(
            read(len / 2 + 1),
            (len / 2 + 1..=len).collect::<Vec<_>>(),
            "stream {len} from the middle"
        );
        assert_eq!(read(len + 1), Vec::<u32>::new(), "stream {len} past its end");
        let backward: Vec<u32> =
            view.read_stream_backward(stream, u32::MAX).unwrap().map(|e| e.unwrap().version()).collect();
        assert_eq!(backward, (1..=len).rev().collect::<Vec<_>>(), "stream {len} backward");
        for k in 1..=len as usize + 1 {
            let taken: Vec<u32> =
                view.read_stream(stream, 1).unwrap().take(k).map(|e| e.unwrap().version()).collect();
            assert_eq!(taken, (1..=len).take(k).collect::<Vec<_>>(), "stream {len}, the first {k}");
        }
    }
}

#[test]
fn a_point_lookup_by_stream_and_version_finds_the_event_or_nothing() {
    use varvedb::{Event, aggregate};

    #[derive(Event)]
    #[event(name = "counter.added")]
    struct Added {
        n: u64,
    }
    #[derive(Default)]
    struct Counter;
    #[aggregate]
    impl Counter {
        #[allow(clippy::unused_self)]
        fn added(&mut self, _: &ArchivedAdded) {}
    }

    let dir = tempfile::tempdir().unwrap();
    let db = Varve::open(dir.path()).unwrap();
    let schedule = schedule();
    for (i, &stream) in schedule.iter().take(600).enumerate() {
        db.append(stream, ExpectedVersion::Auto, [NewEvent::new("e", (i as u64).to_le_bytes().to_vec())])
            .unwrap();
    }
    let view = db.begin_read().unwrap();
    for stream in 1..=7u128 {
        let all: Vec<(u32, u64)> = view
            .read_stream(stream, 1)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.version(), e.seq()))
            .collect();
        for &(version, seq) in &all {
            let found = view.stream_event(stream, version).unwrap().expect("stored");
            assert_eq!((found.stream(), found.version(), found.seq()), (stream.into(), version, seq));
        }
        let past = u32::try_from(all.len()).unwrap() + 1;
        assert!(view.stream_event(stream, past).unwrap().is_none());
        assert!(view.stream_event(stream, 0).unwrap().is_none());
    }
    assert!(view.stream_event(99u128, 1).unwrap().is_none());
    drop(view);

    let counter = db.stream::<Counter>(100u128);
    counter.append_all(ExpectedVersion::NoStream, [Added { n: 1 }, Added { n: 2 }]).unwrap();
    let view = db.begin_read().unwrap();
    let second = counter.event_at(&view, 2).unwrap().expect("stored");
    assert_eq!(second.get::<Added>().unwrap().map(|a| a.n.to_native()), Some(2));
    assert!(counter.event_at(&view, 3).unwrap().is_none());
}
