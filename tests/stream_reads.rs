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
