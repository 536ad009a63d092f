//! Layout descriptions: recorded in the schema registry beside the fingerprint, and enough to
//! turn any stored event into JSON without its Rust type. And, with varvedb's `serde`
//! feature, the archived types' own `Serialize`: JSON from Rust without the registry.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use proptest::collection::{btree_map, btree_set, hash_map, hash_set, vec};
use proptest::prelude::*;
use serde::Serialize;
use varvedb::{Describe, Event, EventData, ExpectedVersion, Layout, LayoutError, NewEvent, Varve, rkyv};

#[derive(EventData, Serialize, Debug, Clone)]
struct Inner {
    a: u8,
    b: Option<String>,
    c: (i16, bool),
}

#[derive(EventData, Serialize, Debug, Clone)]
enum Shape {
    Unit,
    New(u32),
    Pair(i64, String),
    Named { x: f64, tags: Vec<String> },
    Empty(),
}

#[derive(EventData, Serialize, Debug, Clone)]
struct Wrapper(u64);

#[derive(EventData, Serialize, Debug, Clone)]
struct Nothing;

#[derive(EventData, Serialize, Debug, Clone)]
struct Numbers {
    u8: u8,
    u16: u16,
    u32: u32,
    u64: u64,
    u128: u128,
    usize: usize,
    i8: i8,
    i16: i16,
    i32: i32,
    i64: i64,
    i128: i128,
    isize: isize,
    f32: f32,
    f64: f64,
}

#[derive(Event, Serialize, Debug, Clone)]
#[event(name = "test.everything")]
struct Everything {
    numbers: Numbers,
    flag: bool,
    letter: char,
    text: String,
    id: uuid::Uuid,
    list: Vec<u32>,
    nested: Vec<Inner>,
    maybe: Option<Box<Inner>>,
    boxed_str: Box<str>,
    boxed_slice: Box<[u16]>,
    array: [i8; 3],
    tuple: (u8, String, Option<char>),
    shapes: Vec<Shape>,
    wrapper: Wrapper,
    nothing: Nothing,
    unit: (),
    #[expect(clippy::option_option, reason = "a shape the decoder must read like any other")]
    deep: Option<Option<Vec<Vec<String>>>>,
}

/// Every map and set the decoder reads, with keys that serde writes as object keys.
#[derive(EventData, Serialize, Debug, Clone)]
struct Collections {
    by_name: BTreeMap<String, Inner>,
    by_number: BTreeMap<u32, Vec<String>>,
    signed: BTreeMap<i64, Shape>,
    names: BTreeSet<String>,
    numbers: BTreeSet<i16>,
    hashed: HashMap<String, u64>,
    hashed_numbers: HashMap<u16, Option<char>>,
    hash_set: HashSet<u32>,
    nested: Vec<BTreeMap<char, BTreeSet<u8>>>,
    maybe: Option<HashMap<String, BTreeMap<String, bool>>>,
    units: BTreeSet<()>,
}

/// Keys whose JSON is the same under both writers (serde writes some control characters as
/// `\b` and `\f`), so B-tree order can be checked on the text itself.
fn key() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z]{0,8}", "[a-z0-9 ]{9,30}"]
}

/// Sizes reaching B-trees of one, two and three levels (5, 35 entries and more).
const MANY: std::ops::Range<usize> = 0..60;

fn collections() -> impl Strategy<Value = Collections> {
    (
        (
            btree_map(key(), inner(), MANY),
            btree_map(any::<u32>(), vec(text(), 0..3), 0..8),
            btree_map(any::<i64>(), shape(), 0..40),
            btree_set(key(), MANY),
            btree_set(any::<i16>(), 0..200),
        ),
        (
            hash_map(key(), any::<u64>(), MANY),
            hash_map(any::<u16>(), proptest::option::of(any::<char>()), 0..20),
            hash_set(any::<u32>(), 0..100),
            vec(btree_map(any::<char>(), btree_set(any::<u8>(), 0..8), 0..8), 0..3),
            proptest::option::of(hash_map(key(), btree_map(key(), any::<bool>(), 0..4), 0..6)),
            btree_set(Just(()), 0..2),
        ),
    )
        .prop_map(
            |(
                (by_name, by_number, signed, names, numbers),
                (hashed, hashed_numbers, hash_set, nested, maybe, units),
            )| Collections {
                by_name,
                by_number,
                signed,
                names,
                numbers,
                hashed,
                hashed_numbers,
                hash_set,
                nested,
                maybe,
                units,
            },
        )
}

/// `value` with every array sorted by its elements' text: hash sets have no order of their own.
fn unordered(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(unordered).collect();
            items.sort_by_cached_key(Value::to_string);
            Value::Array(items)
        }
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), unordered(v))).collect()),
        other => other.clone(),
    }
}

fn text() -> impl Strategy<Value = String> {
    // Short and long: rkyv keeps up to 8 bytes inline, longer texts out of line.
    prop_oneof![".{0,8}", ".{9,40}", "[\"\\\\\\n\\t\\u{0}-\\u{1f}a-z]{0,12}"]
}

fn numbers() -> impl Strategy<Value = Numbers> {
    (
        (any::<u8>(), any::<u16>(), any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<i8>()),
        (any::<i16>(), any::<i32>(), any::<i64>(), any::<i64>(), any::<i32>(), any::<f32>(), any::<f64>()),
    )
        .prop_map(|((u8, u16, u32, u64, u128, usize, i8), (i16, i32, i64, i128, isize, f32, f64))| {
            Numbers {
                u8,
                u16,
                u32,
                u64,
                // serde_json holds integers of at most 64 bits.
                u128: u128::from(u128),
                usize: usize::try_from(usize).unwrap_or(usize::MAX),
                i8,
                i16,
                i32,
                i64,
                i128: i128::from(i128),
                isize: isize::try_from(isize).unwrap_or(0),
                f32,
                f64,
            }
        })
}

fn inner() -> impl Strategy<Value = Inner> {
    (any::<u8>(), proptest::option::of(text()), any::<(i16, bool)>()).prop_map(|(a, b, c)| Inner { a, b, c })
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Unit),
        any::<u32>().prop_map(Shape::New),
        (any::<i64>(), text()).prop_map(|(a, b)| Shape::Pair(a, b)),
        (any::<f64>(), vec(text(), 0..4)).prop_map(|(x, tags)| Shape::Named { x, tags }),
        Just(Shape::Empty()),
    ]
}

fn everything() -> impl Strategy<Value = Everything> {
    (
        (numbers(), any::<bool>(), any::<char>(), text(), any::<u128>(), vec(any::<u32>(), 0..6)),
        (
            vec(inner(), 0..4),
            proptest::option::of(inner()),
            text(),
            vec(any::<u16>(), 0..5),
            any::<[i8; 3]>(),
        ),
        (
            (any::<u8>(), text(), any::<Option<char>>()),
            vec(shape(), 0..5),
            any::<u64>(),
            proptest::option::of(proptest::option::of(vec(vec(text(), 0..3), 0..3))),
        ),
    )
        .prop_map(
            |(
                (numbers, flag, letter, text, id, list),
                (nested, maybe, boxed_str, boxed_slice, array),
                (tuple, shapes, wrapper, deep),
            )| Everything {
                numbers,
                flag,
                letter,
                text,
                id: uuid::Uuid::from_u128(id),
                list,
                nested,
                maybe: maybe.map(Box::new),
                boxed_str: boxed_str.into_boxed_str(),
                boxed_slice: boxed_slice.into_boxed_slice(),
                array,
                tuple,
                shapes,
                wrapper: Wrapper(wrapper),
                nothing: Nothing,
                unit: (),
                deep,
            },
        )
}

/// The generic decoding of `value`'s archive, parsed, next to serde's JSON of the value.
fn both<T>(value: &T) -> (serde_json::Value, serde_json::Value)
where
    T: Describe
        + Serialize
        + for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
{
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(value).expect("archive");
    let json = T::layout().to_json(&bytes).expect("decodes");
    let generic: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    (generic, serde_json::to_value(value).expect("serde"))
}

/// The JSON of `value`'s archive through `ArchivedX: Serialize` (varvedb's `serde` feature).
fn archived_json<T>(value: &T) -> serde_json::Value
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
    rkyv::Archived<T>: Serialize
        + rkyv::Portable
        + for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>,
{
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(value).expect("archive");
    let archived = rkyv::access::<rkyv::Archived<T>, rkyv::rancor::Error>(&bytes).expect("valid");
    serde_json::to_value(archived).expect("serializes")
}

fn cases() -> u32 {
    std::env::var("VARVEDB_LAYOUT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
}

/// Flips bytes of an archive and cuts it: each decoding is a JSON value or a typed error,
/// never a panic, never a read outside the bytes.
fn decode_damaged(
    layout: &Layout,
    mut bytes: Vec<u8>,
    flips: &[(prop::sample::Index, u8)],
    cut: prop::sample::Index,
) {
    for (at, b) in flips {
        let i = at.index(bytes.len());
        bytes[i] ^= b | 1;
    }
    let _ = layout.to_json(&bytes);
    let n = cut.index(bytes.len());
    let _ = layout.to_json(&bytes[n..]);
    let _ = layout.to_json(&bytes[..n]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn generic_json_equals_serde_json(value in everything()) {
        let (generic, serde) = both(&value);
        prop_assert_eq!(&generic, &serde);
        prop_assert_eq!(archived_json(&value), serde);
    }

    #[test]
    fn generic_json_of_plain_shapes(
        a in vec(vec(text(), 0..3), 0..4),
        b in any::<Option<Option<u8>>>(),
        c in any::<(u64, (i8, char), [bool; 2])>(),
        d in vec(shape(), 0..6),
    ) {
        let (g, s) = both(&a);
        prop_assert_eq!(g, s);
        let (g, s) = both(&b);
        prop_assert_eq!(g, s);
        let (g, s) = both(&c);
        prop_assert_eq!(g, s);
        let (g, s) = both(&d);
        prop_assert_eq!(g, s);
    }

    /// Maps and sets: a B-tree in key order (checked on the JSON text, where order shows),
    /// a hash table in any order (objects compare without order; lists are compared sorted,
    /// which only hash sets need).
    #[test]
    fn generic_json_of_maps_and_sets(value in collections()) {
        let (generic, serde) = both(&value);
        prop_assert_eq!(unordered(&generic), unordered(&serde));
        prop_assert_eq!(unordered(&archived_json(&value)), unordered(&serde));
        let (g, s) = both(&value.names);
        prop_assert_eq!(g.to_string(), s.to_string());
        let (g, s) = both(&value.numbers);
        prop_assert_eq!(g.to_string(), s.to_string());
        // Number keys, whose order a parsed object would not keep: compared as text.
        let numbered: BTreeMap<i64, u64> = value.signed.keys().map(|&k| (k, k.unsigned_abs() % 7)).collect();
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&numbered).expect("archive");
        let json = <BTreeMap<i64, u64>>::layout().to_json(&bytes).expect("decodes");
        prop_assert_eq!(json, serde_json::to_string(&numbered).expect("serde"));
    }

    /// Keys serde cannot write as object keys: a list of `[key, value]` pairs, in key order.
    #[test]
    fn maps_with_other_keys_are_pair_lists(value in btree_map(any::<(u8, bool)>(), key(), MANY)) {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&value).expect("archive");
        let json = <BTreeMap<(u8, bool), String>>::layout().to_json(&bytes).expect("decodes");
        let pairs: Vec<_> = value.iter().collect();
        prop_assert_eq!(json, serde_json::to_string(&pairs).expect("serde"));
    }

    /// Damaged maps and sets: a JSON value or a typed error, never a panic.
    #[test]
    fn damaged_collections_never_panic(
        value in collections(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&value).expect("archive").to_vec();
        decode_damaged(&Collections::layout(), bytes, &flips, cut);
    }

    /// Damaged archives: any byte changed, or the archive cut short, gives a JSON value or a
    /// typed error; never a panic, never a read outside the bytes.
    #[test]
    fn damaged_archives_never_panic(
        value in everything(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&value).expect("archive").to_vec();
        decode_damaged(&Everything::layout(), bytes, &flips, cut);
    }

    /// Damaged descriptions are refused with a typed error.
    #[test]
    fn damaged_descriptions_never_panic(at in any::<prop::sample::Index>(), b in any::<u8>()) {
        let mut enc = Everything::layout().encode();
        let i = at.index(enc.len());
        enc[i] ^= b | 1;
        let _ = Layout::decode(&enc);
        let _ = Layout::decode(&enc[..i]);
    }
}

#[test]
fn descriptions_round_trip() {
    let layout = Everything::layout();
    assert_eq!(Layout::decode(&layout.encode()), Ok(layout));
    assert!(matches!(Layout::decode(&[1, 200]), Err(LayoutError::BadDescription { at: 1 })));
}

#[test]
fn known_bad_bytes_are_typed_errors() {
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&(true, Some(3u8))).expect("archive");
    let layout = <(bool, Option<u8>)>::layout();
    let mut bad = bytes.to_vec();
    let root = bad.len() - 3;
    bad[root] = 2;
    assert_eq!(layout.to_json(&bad), Err(LayoutError::InvalidValue { at: root, what: "bool" }));
    let mut bad = bytes.to_vec();
    bad[root + 1] = 7;
    assert_eq!(layout.to_json(&bad), Err(LayoutError::InvalidValue { at: root + 1, what: "Option tag" }));
    assert!(matches!(layout.to_json(&bytes[..2]), Err(LayoutError::OutOfBounds { .. })));

    // A string pointing past the end of the archive.
    let long = "a text longer than eight bytes".to_string();
    let mut bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&long).expect("archive").to_vec();
    let at = bytes.len() - 4;
    bytes[at..].copy_from_slice(&1000i32.to_le_bytes());
    assert!(matches!(String::layout().to_json(&bytes), Err(LayoutError::OutOfBounds { .. })));

    // A damaged count of zero-sized values, which no bound check would catch.
    let mut bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&vec![(); 3]).expect("archive").to_vec();
    assert_eq!(<Vec<()>>::layout().to_json(&bytes), Ok("[null,null,null]".to_owned()));
    let at = bytes.len() - 4;
    bytes[at..].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(<Vec<()>>::layout().to_json(&bytes), Err(LayoutError::InvalidValue { .. })));
}

#[test]
fn the_registry_records_the_description() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = Varve::open(dir.path())?;
    let value = Everything {
        numbers: Numbers {
            u8: 1,
            u16: 2,
            u32: 3,
            u64: 4,
            u128: 5,
            usize: 6,
            i8: -1,
            i16: -2,
            i32: -3,
            i64: -4,
            i128: -5,
            isize: -6,
            f32: 0.5,
            f64: 1e300,
        },
        flag: true,
        letter: 'é',
        text: "a longer text, out of line".into(),
        id: uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
        list: vec![1, 2, 3],
        nested: vec![Inner { a: 9, b: None, c: (-7, false) }],
        maybe: Some(Box::new(Inner { a: 1, b: Some("x".into()), c: (0, true) })),
        boxed_str: "boxed".into(),
        boxed_slice: vec![5u16, 6].into_boxed_slice(),
        array: [1, -2, 3],
        tuple: (8, "eight bytes!".into(), Some('z')),
        shapes: vec![Shape::Unit, Shape::New(4), Shape::Named { x: 2.5, tags: vec!["t".into()] }],
        wrapper: Wrapper(11),
        nothing: Nothing,
        unit: (),
        deep: Some(None),
    };
    db.append(1u128, ExpectedVersion::Auto, [NewEvent::from_event(&value)?])?;
    let view = db.begin_read()?;
    let schemas = view.schemas()?;
    assert_eq!(schemas.len(), 1);
    assert_eq!((schemas[0].type_tag.as_str(), schemas[0].version), ("test.everything", 1));
    assert_eq!(schemas[0].fingerprint, <Everything as Event>::FINGERPRINT);
    assert_eq!(schemas[0].layout.as_ref(), Some(&Everything::layout()));
    assert_eq!(view.schema_layout("test.everything", 1)?, Some(Everything::layout()));
    assert_eq!(view.schema_layout("test.everything", 2)?, None);
    let event = view.event(1)?.expect("stored");
    let json: serde_json::Value = serde_json::from_str(&Everything::layout().to_json(event.payload())?)?;
    assert_eq!(json, serde_json::to_value(&value)?);
    // The archived event read in place from the store serializes as the event does.
    let archived = event.access::<ArchivedEverything>()?;
    assert_eq!(serde_json::to_string(archived)?, serde_json::to_string(&value)?);
    Ok(())
}

#[derive(Event, Serialize, Debug)]
#[event(name = "test.noted")]
struct Noted {
    text: String,
}

#[derive(Default)]
struct Notebook {
    notes: u32,
}

#[varvedb::aggregate(name = "notebook")]
impl Notebook {
    fn noted(&mut self, _: &ArchivedNoted) {
        self.notes += 1;
    }
}

#[test]
fn the_registry_lists_schemas_beside_the_event_lists_of_aggregate_kinds()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = Varve::open(dir.path())?;
    // A typed append also records the kind's event list in the same table.
    db.stream::<Notebook>(3u128).append(ExpectedVersion::NoStream, Noted { text: "hi".into() })?;
    let view = db.begin_read()?;
    let schemas = view.schemas()?;
    assert_eq!(schemas.len(), 1, "{schemas:?}");
    assert_eq!((schemas[0].type_tag.as_str(), schemas[0].version), ("test.noted", 1));
    assert_eq!(schemas[0].layout.as_ref(), Some(&Noted::layout()));
    assert_eq!(db.stream::<Notebook>(3u128).load()?.state().notes, 1);
    Ok(())
}

#[test]
fn damaged_maps_and_sets_are_typed_errors() {
    // A B-tree set of 40 numbers: three levels. The root is eight bytes at the end.
    let set: BTreeSet<u32> = (0..40).collect();
    let layout = <BTreeSet<u32>>::layout();
    let good = rkyv::to_bytes::<rkyv::rancor::Error>(&set).expect("archive").to_vec();
    let expected = serde_json::to_string(&set).expect("serde");
    assert_eq!(layout.to_json(&good).as_deref(), Ok(expected.as_str()));
    let len_at = good.len() - 4;

    // A length the tree does not hold, larger or smaller.
    for len in [41u32, 39, 1, u32::MAX] {
        let mut bad = good.clone();
        bad[len_at..].copy_from_slice(&len.to_le_bytes());
        assert!(
            matches!(layout.to_json(&bad), Err(LayoutError::InvalidValue { .. })),
            "length {len}: {:?}",
            layout.to_json(&bad)
        );
    }
    // The root pointer aimed at itself: not a node kind.
    let mut bad = good.clone();
    bad[len_at - 4..len_at].copy_from_slice(&0i32.to_le_bytes());
    assert!(layout.to_json(&bad).is_err());
    // The root pointer aimed outside the archive.
    let mut bad = good.clone();
    bad[len_at - 4..len_at].copy_from_slice(&1000i32.to_le_bytes());
    assert!(matches!(layout.to_json(&bad), Err(LayoutError::OutOfBounds { .. })));

    // A hash map: pointer, length, capacity. A capacity not above the length is damage.
    let map: HashMap<String, u8> = (0..10u8).map(|i| (format!("key {i}"), i)).collect();
    let layout = <HashMap<String, u8>>::layout();
    let good = rkyv::to_bytes::<rkyv::rancor::Error>(&map).expect("archive").to_vec();
    let decoded: HashMap<String, u8> =
        serde_json::from_str(&layout.to_json(&good).expect("decodes")).expect("an object");
    assert_eq!(decoded, map);
    let cap_at = good.len() - 4;
    for cap in [10u32, 0, u32::MAX] {
        let mut bad = good.clone();
        bad[cap_at..].copy_from_slice(&cap.to_le_bytes());
        assert!(matches!(layout.to_json(&bad), Err(LayoutError::InvalidValue { .. })), "capacity {cap}");
    }
    // One more length than full buckets.
    let mut bad = good.clone();
    bad[cap_at - 4..cap_at].copy_from_slice(&11u32.to_le_bytes());
    assert!(matches!(layout.to_json(&bad), Err(LayoutError::InvalidValue { .. })));
}

/// Typed metadata: its layout is recorded with its first use, keyed by its fingerprint, apart
/// from the event schemas; the stored metadata decodes through it.
#[test]
fn the_registry_records_metadata_layouts() -> Result<(), Box<dyn std::error::Error>> {
    use varvedb::Schema;
    let dir = tempfile::tempdir()?;
    let db = Varve::open(dir.path())?;
    let meta = Inner { a: 3, b: Some("who asked, and why".into()), c: (-1, true) };
    {
        let view = db.begin_read()?;
        assert_eq!(view.metadata_layout(<Inner as Schema>::FINGERPRINT)?, None);
    }
    let events = [
        NewEvent::new("raw", b"x".to_vec()).with_meta(&meta)?,
        NewEvent::new("raw", b"y".to_vec()).with_meta(&meta)?,
        // Raw bytes record nothing, even after typed metadata was set.
        NewEvent::new("raw", b"z".to_vec()).with_meta(&Wrapper(1))?.with_metadata(b"plain".to_vec()),
    ];
    db.append(1u128, ExpectedVersion::Auto, events)?;
    let view = db.begin_read()?;
    let layout = view.metadata_layout(<Inner as Schema>::FINGERPRINT)?.expect("recorded");
    assert_eq!(layout, Inner::layout());
    assert_eq!(view.metadata_layout(<Wrapper as Schema>::FINGERPRINT)?, None);
    // The event schema listing is not disturbed by metadata entries.
    assert!(view.schemas()?.is_empty());
    let event = view.event(1)?.expect("stored");
    let (fp, archive) = event.metadata().split_at(8);
    assert_eq!(u64::from_le_bytes(fp.try_into()?), <Inner as Schema>::FINGERPRINT);
    let json: serde_json::Value = serde_json::from_str(&layout.to_json(archive)?)?;
    assert_eq!(json, serde_json::to_value(&meta)?);
    Ok(())
}

/// Descriptions given with copied events are recorded like a type's own; a damaged one
/// refuses the request, with nothing written.
#[test]
fn described_schemas_and_metadata_from_elsewhere() -> Result<(), Box<dyn std::error::Error>> {
    use varvedb::Schema;
    let dir = tempfile::tempdir()?;
    let db = Varve::open(dir.path())?;
    let layout: &'static [u8] = Box::leak(Inner::layout().encode().into_boxed_slice());
    let meta = Wrapper(5);
    let mut meta_bytes = <Wrapper as Schema>::FINGERPRINT.to_le_bytes().to_vec();
    meta_bytes.extend_from_slice(&rkyv::to_bytes::<rkyv::rancor::Error>(&meta)?);
    let wrapper_layout: &'static [u8] = Box::leak(Wrapper::layout().encode().into_boxed_slice());
    let value = Inner { a: 1, b: None, c: (2, true) };
    let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&value)?.to_vec();

    let bad: &'static [u8] = &[1, 200];
    let refused = db.append(
        1u128,
        ExpectedVersion::Auto,
        [NewEvent::new("copied", payload.clone()).with_described_schema(1, 77, bad)],
    );
    assert!(matches!(refused, Err(varvedb::Error::BadLayoutDescription { .. })), "{refused:?}");
    let refused = db.append(
        1u128,
        ExpectedVersion::Auto,
        [NewEvent::new("copied", payload.clone()).with_described_metadata(meta_bytes.clone(), bad)],
    );
    assert!(matches!(refused, Err(varvedb::Error::BadLayoutDescription { .. })), "{refused:?}");
    assert_eq!(db.begin_read()?.last_seq()?, 0);

    let event = NewEvent::new("copied", payload)
        .with_described_schema(1, 77, layout)
        .with_described_metadata(meta_bytes, wrapper_layout);
    db.append(1u128, ExpectedVersion::Auto, [event])?;
    let view = db.begin_read()?;
    assert_eq!(view.schema_layout("copied", 1)?, Some(Inner::layout()));
    assert_eq!(view.metadata_layout(<Wrapper as Schema>::FINGERPRINT)?, Some(Wrapper::layout()));
    assert_eq!(view.metadata_layouts()?, vec![(<Wrapper as Schema>::FINGERPRINT, Wrapper::layout())]);
    Ok(())
}
