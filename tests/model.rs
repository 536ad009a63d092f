//! Property test: random operation sequences against a plain `Vec` model of the log.

use proptest::prelude::*;
use varvedb::{Appended, Error, ExpectedVersion, NewEvent, Varve, WriteBatch};

/// (stream, first version, last version, first seq, last seq) of one stream append.
type Pos = (u128, u32, u32, u64, u64);

#[derive(Debug, Clone)]
enum Expect {
    Auto,
    NoStream,
    Exists,
    Exact(u32),
}

#[derive(Debug, Clone)]
struct Part {
    stream: u128,
    expect: Expect,
    payloads: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
enum Op {
    Write { parts: Vec<Part>, with_ids: bool },
    RetryLastWithIds,
    Reopen,
    ReadStream { stream: u128, from: u32 },
    ReadBackward { stream: u128, from: u32 },
    ReadAll { from: u64 },
    Event { seq: u64 },
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => (any::<u8>(), 1025..3000usize).prop_map(|(b, n)| vec![b; n]),
    ]
}

fn part() -> impl Strategy<Value = Part> {
    let expect = prop_oneof![
        Just(Expect::Auto),
        Just(Expect::NoStream),
        Just(Expect::Exists),
        (0..6u32).prop_map(Expect::Exact)
    ];
    (0..4u128, expect, proptest::collection::vec(payload(), 1..4))
        .prop_map(|(stream, expect, payloads)| Part { stream, expect, payloads })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (proptest::collection::vec(part(), 1..3), any::<bool>()).prop_map(|(parts, with_ids)| Op::Write { parts, with_ids }),
        1 => Just(Op::RetryLastWithIds),
        1 => Just(Op::Reopen),
        2 => (0..4u128, 0..6u32).prop_map(|(stream, from)| Op::ReadStream { stream, from }),
        1 => (0..4u128, prop_oneof![0..6u32, Just(u32::MAX)]).prop_map(|(stream, from)| Op::ReadBackward { stream, from }),
        1 => (0..20u64).prop_map(|from| Op::ReadAll { from }),
        1 => (0..20u64).prop_map(|seq| Op::Event { seq }),
    ]
}

/// The model: the log as a Vec of (stream, version, payload), seq = index + 1.
#[derive(Default)]
struct Model {
    log: Vec<(u128, u32, Vec<u8>)>,
}

impl Model {
    fn version(&self, stream: u128) -> Option<u32> {
        self.log.iter().rev().find(|e| e.0 == stream).map(|e| e.1)
    }

    /// Applies a request; `Err(())` if any expectation fails (then nothing changes).
    fn write(&mut self, parts: &[Part]) -> Result<Vec<Pos>, ()> {
        let mut staged = self.log.clone();
        let mut out = Vec::new();
        for p in parts {
            let current = staged.iter().rev().find(|e| e.0 == p.stream).map(|e| e.1);
            let ok = match p.expect {
                Expect::Auto => true,
                Expect::NoStream | Expect::Exact(0) => current.is_none(),
                Expect::Exists => current.is_some(),
                Expect::Exact(n) => current == Some(n),
            };
            if !ok {
                return Err(());
            }
            let first_seq = staged.len() as u64 + 1;
            let first_version = current.unwrap_or(0) + 1;
            for (i, payload) in p.payloads.iter().enumerate() {
                staged.push((p.stream, first_version + i as u32, payload.clone()));
            }
            out.push((p.stream, first_version, staged.last().unwrap().1, first_seq, staged.len() as u64));
        }
        self.log = staged;
        Ok(out)
    }
}

fn to_batch(parts: &[Part], ids: Option<u128>) -> WriteBatch {
    let mut batch = WriteBatch::new();
    let mut next_id = ids;
    for p in parts {
        let expected = match p.expect {
            Expect::Auto => ExpectedVersion::Auto,
            Expect::NoStream => ExpectedVersion::NoStream,
            Expect::Exists => ExpectedVersion::StreamExists,
            Expect::Exact(n) => ExpectedVersion::Exact(n),
        };
        let events = p.payloads.iter().map(|pl| {
            let e = NewEvent::new("t", pl.clone());
            match &mut next_id {
                Some(id) => {
                    *id += 1;
                    e.with_id(*id)
                }
                None => e,
            }
        });
        batch.append(p.stream, expected, events.collect::<Vec<_>>());
    }
    batch
}

fn positions(a: &[Appended]) -> Vec<Pos> {
    a.iter().map(|a| (a.stream.as_u128(), a.first_version, a.last_version, a.first_seq, a.last_seq)).collect()
}

type Row = (u64, u128, u32, Vec<u8>);

fn rows<'v>(it: impl Iterator<Item = Result<varvedb::RecordedEvent<'v>, Error>>) -> Vec<Row> {
    it.map(|e| {
        let e = e.unwrap();
        (e.seq(), e.stream().as_u128(), e.version(), e.payload().to_vec())
    })
    .collect()
}

fn model_rows(model: &Model) -> impl Iterator<Item = Row> + '_ {
    model.log.iter().enumerate().map(|(i, (s, v, p))| (i as u64 + 1, *s, *v, p.clone()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_vec_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Varve::open(dir.path()).unwrap();
        let mut model = Model::default();
        let mut next_id = 0u128;
        let mut last_with_ids: Option<(Vec<Part>, u128, Vec<Pos>)> = None;
        for op in ops {
            match op {
                Op::Write { parts, with_ids } => {
                    let ids = with_ids.then(|| { next_id += 100; next_id });
                    let got = db.write(to_batch(&parts, ids));
                    match (model.write(&parts), got) {
                        (Ok(want), Ok(got)) => {
                            prop_assert_eq!(&positions(&got), &want);
                            if let Some(id) = ids { last_with_ids = Some((parts, id, want)); }
                        }
                        (Err(()), Err(Error::ConcurrencyConflict { .. })) => {}
                        (want, got) => prop_assert!(false, "model {:?}, store {:?}", want, got),
                    }
                }
                Op::RetryLastWithIds => {
                    if let Some((parts, id, want)) = &last_with_ids {
                        let got = db.write(to_batch(parts, Some(*id))).unwrap();
                        prop_assert!(got.iter().all(|a| a.deduplicated));
                        prop_assert_eq!(&positions(&got), want);
                    }
                }
                Op::Reopen => {
                    drop(db);
                    db = Varve::open(dir.path()).unwrap();
                }
                Op::ReadStream { stream, from } => {
                    let view = db.begin_read().unwrap();
                    let want: Vec<Row> = model_rows(&model).filter(|r| r.1 == stream && r.2 >= from).collect();
                    prop_assert_eq!(rows(view.read_stream(stream, from).unwrap()), want);
                    prop_assert_eq!(view.stream_version(stream).unwrap(), model.version(stream));
                }
                Op::ReadBackward { stream, from } => {
                    let view = db.begin_read().unwrap();
                    let mut want: Vec<Row> = model_rows(&model).filter(|r| r.1 == stream && r.2 <= from).collect();
                    want.reverse();
                    prop_assert_eq!(rows(view.read_stream_backward(stream, from).unwrap()), want);
                }
                Op::ReadAll { from } => {
                    let view = db.begin_read().unwrap();
                    let want: Vec<Row> = model_rows(&model).filter(|r| r.0 >= from).collect();
                    prop_assert_eq!(rows(view.read_all(from).unwrap()), want);
                }
                Op::Event { seq } => {
                    let view = db.begin_read().unwrap();
                    let got = view.event(seq).unwrap().map(|e| (e.seq(), e.stream().as_u128(), e.version(), e.payload().to_vec()));
                    prop_assert_eq!(got, model_rows(&model).find(|r| r.0 == seq));
                }
            }
        }
        let report = db.begin_read().unwrap().check_integrity().unwrap();
        prop_assert_eq!(report.events, model.log.len() as u64);
    }
}
