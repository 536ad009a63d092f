//! The `varve` binary, run on real stores written through the library.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use assert_cmd::cargo::CommandCargoExt;
use varvedb::{Event, EventData, ExpectedVersion, MasterKey, NewEvent, Options, Varve, WriteBatch};

#[derive(EventData, Debug, Clone)]
struct Line {
    sku: String,
    quantity: u16,
}

#[derive(EventData, Debug, Clone)]
enum Delivery {
    Pickup,
    Courier { address: String, express: bool },
}

#[derive(Event, Debug, Clone)]
#[event(name = "order.placed")]
struct Placed {
    customer: uuid::Uuid,
    lines: Vec<Line>,
    total_cents: u64,
    note: Option<String>,
    delivery: Delivery,
    weight: f64,
}

/// Typed metadata on the typed events.
#[derive(EventData, Debug, Clone)]
struct Audit {
    user: u64,
    reason: String,
    tags: BTreeMap<String, u32>,
    seen: HashSet<u16>,
}

fn audit(i: u64) -> Audit {
    Audit {
        user: 40 + i,
        reason: format!("checkout {i}"),
        tags: (0..i).map(|t| (format!("tag-{t}"), u32::try_from(t).unwrap())).collect(),
        seen: [7, 9].into_iter().collect(),
    }
}

const ORDER: u128 = 0x00aa;
const NOTES: u128 = 0x00bb;

fn placed(i: u64) -> Placed {
    Placed {
        customer: uuid::Uuid::from_u128(0x1234),
        lines: vec![Line { sku: format!("sku-{i}"), quantity: 2 }],
        total_cents: 1000 + i,
        note: i.is_multiple_of(2).then(|| "leave it at the door, please".to_owned()),
        delivery: if i.is_multiple_of(2) {
            Delivery::Pickup
        } else {
            Delivery::Courier { address: "1 Main St".into(), express: true }
        },
        weight: 1.5,
    }
}

/// A store with typed events in a stream of kind `order`, and raw events with ids and metadata.
fn write_store(dir: &Path, options: Options) {
    let db = options.open(dir).expect("open");
    let mut batch = WriteBatch::new();
    batch.append_kind(
        ORDER,
        "order",
        ExpectedVersion::NoStream,
        (1..=3)
            .map(|i| NewEvent::from_event(&placed(i)).and_then(|e| e.with_meta(&audit(i))).expect("archive")),
    );
    db.write(batch).expect("typed events");
    for i in 0..4u8 {
        let e = NewEvent::new("note.raw", format!("RAW-NOTE-PAYLOAD-{i}").into_bytes())
            .with_metadata(vec![i; 3])
            .with_id(0x5000 + u128::from(i));
        db.append(NOTES, ExpectedVersion::Auto, [e]).expect("raw event");
    }
}

fn varve(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("varve").expect("binary").args(args).output().expect("runs")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    stdout(out).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

#[test]
fn every_command_has_help() {
    for cmd in [
        "info",
        "streams",
        "read",
        "log",
        "get",
        "tail",
        "verify",
        "export",
        "backup",
        "checkpoints",
        "rotate-key",
        "shred",
    ] {
        let out = varve(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help");
        assert!(stdout(&out).contains("Usage: varve"), "{cmd}: {}", stdout(&out));
    }
    assert_eq!(varve(&["no-such-command"]).status.code(), Some(2));
}

#[test]
fn info_streams_read_log_get() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    write_store(&store, Options::new());
    let s = store.to_str().unwrap();

    let out = varve(&["info", s, "--json"]);
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((info["events"].as_u64(), info["streams"].as_u64()), (Some(7), Some(2)));
    assert_eq!(info["encrypted"], false);
    assert_eq!(info["schemas"][0]["type"], "order.placed");
    assert_eq!(info["schemas"][0]["described"], true);
    assert_eq!(
        info["metadata_types"],
        serde_json::json!([format!("{:#018x}", <Audit as varvedb::Schema>::FINGERPRINT)])
    );
    assert!(stdout(&varve(&["info", s])).contains("order.placed v1"));

    let streams = json_lines(&varve(&["streams", s, "--json", "--kind", "order"]));
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0]["version"], 3);
    assert_eq!(streams[0]["kind"], "order");
    assert_eq!(json_lines(&varve(&["streams", s, "--json"])).len(), 2);

    let read = json_lines(&varve(&["read", s, &format!("{ORDER:#x}"), "--json", "--from", "2"]));
    assert_eq!(read.len(), 2);
    assert_eq!(read[0]["version"], 2);
    let payload = &read[0]["payload"];
    assert_eq!(payload["total_cents"], 1002);
    assert_eq!(payload["lines"][0]["sku"], "sku-2");
    assert_eq!(payload["note"], "leave it at the door, please");
    assert_eq!(payload["delivery"], "Pickup");
    assert_eq!(payload["customer"], uuid::Uuid::from_u128(0x1234).to_string());
    assert_eq!(read[1]["payload"]["delivery"]["Courier"]["express"], true);

    let log = json_lines(&varve(&["log", s, "--json", "--from", "4", "--limit", "2"]));
    assert_eq!(log.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(log[0]["type"], "note.raw");
    assert_eq!(log[0]["id"], format!("{:032x}", 0x5000));

    let get = json_lines(&varve(&["get", s, "1", "--json"]));
    assert_eq!(get[0]["payload"]["weight"], 1.5);
    let missing = varve(&["get", s, "99"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no event with seq 99"));

    // Nothing is created where there is no store.
    let none = dir.path().join("none");
    assert_eq!(varve(&["info", none.to_str().unwrap()]).status.code(), Some(1));
    assert!(!none.exists());
}

#[test]
fn verify_names_each_damaged_seq() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    write_store(&store, Options::new());
    let s = store.to_str().unwrap();
    let ok = varve(&["verify", s]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    assert!(stdout(&ok).starts_with("ok: 7 events"));

    // Flip one byte in the payloads of seqs 5 and 7 (notes 1 and 3).
    let file = store.join("data.mdb");
    let mut bytes = std::fs::read(&file).unwrap();
    // LMDB's freed pages may hold older copies of a record: flip the byte in every copy.
    for marker in [&b"RAW-NOTE-PAYLOAD-1"[..], b"RAW-NOTE-PAYLOAD-3"] {
        let found: Vec<usize> =
            bytes.windows(marker.len()).enumerate().filter(|(_, w)| *w == marker).map(|(i, _)| i).collect();
        assert!(!found.is_empty(), "payload in the file");
        for at in found {
            bytes[at + 2] ^= 0x01;
        }
    }
    std::fs::write(&file, &bytes).unwrap();

    let bad = varve(&["verify", s]);
    assert_eq!(bad.status.code(), Some(3), "{}", stdout(&bad));
    let text = stdout(&bad);
    assert!(text.contains("damaged seq 5:"), "{text}");
    assert!(text.contains("damaged seq 7:"), "{text}");
    assert!(!text.contains("damaged seq 6:"), "{text}");
    let report: serde_json::Value = serde_json::from_str(&stdout(&varve(&["verify", s, "--json"]))).unwrap();
    assert_eq!(report["ok"], false);
    let seqs: Vec<u64> =
        report["damaged"].as_array().unwrap().iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [5, 7]);
}

#[test]
fn export_decoded_and_raw() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    write_store(&store, Options::new());
    let s = store.to_str().unwrap();
    let out = varve(&["export", s]);
    assert!(out.status.success());
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[2]["payload"]["total_cents"], 1003);
    // Events without a registered layout keep their bytes.
    assert_eq!(lines[3]["payload_base64"], "UkFXLU5PVEUtUEFZTE9BRC0w");
    assert_eq!(lines[3]["metadata_base64"], "AAAA");
    // Typed metadata is decoded through the layout recorded with its first use.
    assert_eq!(lines[2]["metadata"]["user"], 43);
    assert_eq!(lines[2]["metadata"]["reason"], "checkout 3");
    assert_eq!(lines[2]["metadata"]["tags"], serde_json::json!({"tag-0": 0, "tag-1": 1, "tag-2": 2}));
    let mut seen: Vec<u64> =
        lines[2]["metadata"]["seen"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    seen.sort_unstable();
    assert_eq!(seen, [7, 9]);
    assert!(lines[2].get("metadata_base64").is_none());
    let text = stdout(&varve(&["get", s, "1"]));
    assert!(text.contains(r#"meta {"user":41,"reason":"checkout 1","tags":{"tag-0":0}"#), "{text}");

    let all = json_lines(&varve(&["export", s, "--raw"]));
    // The registry's layouts come first: the event type's and the metadata type's.
    assert_eq!(all[0]["type"], "order.placed");
    assert!(all[0]["layout_base64"].is_string());
    assert!(all[1]["metadata_fingerprint"].is_string());
    let raw: Vec<_> = all.into_iter().filter(|l| l.get("seq").is_some()).collect();
    assert_eq!(raw.len(), 7);
    assert!(raw.iter().all(|l| l.get("payload").is_none() && l["payload_base64"].is_string()));
    assert!(raw.iter().all(|l| l.get("metadata").is_none() && l["metadata_base64"].is_string()));
    // Everything but the payload is the same either way.
    for (a, b) in lines.iter().zip(&raw) {
        for field in ["seq", "stream", "version", "timestamp_micros", "id", "type", "schema_version"] {
            assert_eq!(a.get(field), b.get(field));
        }
    }
}

#[test]
fn encrypted_stores_need_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    write_store(&store, Options::new().encryption_key(MasterKey::from_bytes([7; 32])));
    let key = dir.path().join("key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let s = store.to_str().unwrap();
    let k = key.to_str().unwrap();

    let without = varve(&["export", s]);
    assert_eq!(without.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&without.stderr).contains("--key-file"));
    assert!(without.stdout.is_empty());

    let with = json_lines(&varve(&["export", s, "--key-file", k]));
    assert_eq!(with.len(), 7);
    assert_eq!(with[0]["payload"]["lines"][0]["sku"], "sku-1");
    let info: serde_json::Value =
        serde_json::from_str(&stdout(&varve(&["info", s, "--json", "--key-file", k]))).unwrap();
    assert_eq!(info["encrypted"], true);

    // Shred the notes, then rotate the key: the old key stops working, the new one reads.
    let shred = varve(&["shred", s, &format!("{NOTES}"), "--key-file", k]);
    assert!(shred.status.success(), "{}", String::from_utf8_lossy(&shred.stderr));
    let after = json_lines(&varve(&["export", s, "--key-file", k]));
    assert_eq!(after[3]["shredded"], true);
    assert!(after[3].get("payload_base64").is_none());
    assert_eq!(after[0]["payload"]["total_cents"], 1001);
    // Shredded events still pass their checksums and header MACs.
    let verified = varve(&["verify", s, "--key-file", k]);
    assert_eq!(verified.status.code(), Some(0), "{}", stdout(&verified));
    assert_eq!(varve(&["verify", s]).status.code(), Some(1));

    let new_key = dir.path().join("new-key");
    std::fs::write(&new_key, "ab".repeat(32)).unwrap();
    let n = new_key.to_str().unwrap();
    let rotate = varve(&["rotate-key", s, "--key-file", k, "--new-key-file", n]);
    assert!(rotate.status.success(), "{}", String::from_utf8_lossy(&rotate.stderr));
    assert_eq!(varve(&["export", s, "--key-file", k]).status.code(), Some(1));
    assert_eq!(json_lines(&varve(&["export", s, "--key-file", n])).len(), 7);
}

#[test]
fn export_import_export_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    write_store(&store, Options::new());
    {
        // A payload large enough to be stored as a blob, twice (one blob, two references).
        let db = Varve::open(&store).unwrap();
        let big = vec![0xa5u8; 5000];
        db.append(
            0xcc_u128,
            ExpectedVersion::NoStream,
            [NewEvent::new("big", big.clone()), NewEvent::new("big", big)],
        )
        .unwrap();
        let mut later = placed(9);
        later.lines.push(Line { sku: "extra".into(), quantity: 1 });
        db.append(ORDER, ExpectedVersion::Exact(3), [NewEvent::from_event(&later).unwrap()]).unwrap();
    }
    let s = store.to_str().unwrap();
    let first = varve(&["export", s, "--raw"]);
    assert!(first.status.success());
    let file = dir.path().join("export.jsonl");
    std::fs::write(&file, &first.stdout).unwrap();

    let copy = dir.path().join("copy");
    let c = copy.to_str().unwrap();
    let import = varve(&["import", c, file.to_str().unwrap()]);
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    assert!(stdout(&import).contains("imported 10 events"));
    let second = varve(&["export", c, "--raw"]);
    assert_eq!(stdout(&first), stdout(&second));
    // The layouts came along: the decoded exports are equal too, payloads and metadata decoded.
    let decoded_original = varve(&["export", s]);
    let decoded_copy = varve(&["export", c]);
    assert_eq!(stdout(&decoded_original), stdout(&decoded_copy));
    let lines = json_lines(&decoded_copy);
    assert_eq!(lines[0]["payload"]["total_cents"], 1001);
    assert_eq!(lines[0]["metadata"]["reason"], "checkout 1");
    assert_eq!(varve(&["verify", c]).status.code(), Some(0));
    // The kinds, versions and the typed events' registry entries came along.
    assert_eq!(stdout(&varve(&["streams", s])), stdout(&varve(&["streams", c])));
    let info: serde_json::Value = serde_json::from_str(&stdout(&varve(&["info", c, "--json"]))).unwrap();
    assert_eq!(info["schemas"][0]["fingerprint"], format!("{:#018x}", <Placed as Event>::FINGERPRINT));

    // Into an existing store, or from a decoded export: refused, nothing written.
    assert_eq!(varve(&["import", c, file.to_str().unwrap()]).status.code(), Some(1));
    let decoded = dir.path().join("decoded.jsonl");
    std::fs::write(&decoded, varve(&["export", s]).stdout).unwrap();
    let refused = varve(&["import", dir.path().join("other").to_str().unwrap(), decoded.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--raw"));
    // A damaged layout description: refused, naming the line.
    let text = stdout(&first);
    let (head, rest) = text.split_once('\n').unwrap();
    let mut line: serde_json::Value = serde_json::from_str(head).unwrap();
    line["layout_base64"] = "AcgA".into();
    let damaged = dir.path().join("damaged.jsonl");
    std::fs::write(&damaged, format!("{line}\n{rest}")).unwrap();
    let refused = varve(&["import", dir.path().join("third").to_str().unwrap(), damaged.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("line 1"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // An encrypted store: exported with its key, imported under another.
    let enc = dir.path().join("enc");
    write_store(&enc, Options::new().encryption_key(MasterKey::from_bytes([3; 32])));
    let key = dir.path().join("key");
    std::fs::write(&key, [3u8; 32]).unwrap();
    let k = key.to_str().unwrap();
    let exported = varve(&["export", enc.to_str().unwrap(), "--raw", "--key-file", k]);
    std::fs::write(&file, &exported.stdout).unwrap();
    let enc_copy = dir.path().join("enc-copy");
    let import = varve(&["import", enc_copy.to_str().unwrap(), file.to_str().unwrap(), "--key-file", k]);
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    let again = varve(&["export", enc_copy.to_str().unwrap(), "--raw", "--key-file", k]);
    assert_eq!(stdout(&exported), stdout(&again));
    assert_eq!(varve(&["export", enc_copy.to_str().unwrap()]).status.code(), Some(1));
}

#[test]
fn backup_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    write_store(&store, Options::new());
    let s = store.to_str().unwrap();
    let copy = dir.path().join("copy");
    let out = varve(&["backup", s, copy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&varve(&["export", s])), stdout(&varve(&["export", copy.to_str().unwrap()])));
    assert_eq!(varve(&["verify", copy.to_str().unwrap()]).status.code(), Some(0));
    assert_eq!(varve(&["checkpoints", s]).status.code(), Some(0));
}

#[test]
fn tail_follows_commits_of_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    write_store(&store, Options::new());
    let mut child = Command::cargo_bin("varve")
        .unwrap()
        .args(["tail", "-f", "-n", "1", "--json", store.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let pipe = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // A bound against a hang, not a measurement.
    let wait = Duration::from_secs(30);
    let first: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(wait).expect("the newest event")).unwrap();
    assert_eq!(first["seq"], 7);
    let db = Varve::open(&store).unwrap();
    db.append(NOTES, ExpectedVersion::Auto, [NewEvent::new("note.raw", b"later".to_vec())]).unwrap();
    let next: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(wait).expect("the new commit")).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(next["seq"], 8);
    assert_eq!(next["payload_base64"], "bGF0ZXI=");
}
