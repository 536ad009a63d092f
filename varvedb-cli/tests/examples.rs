//! `varve` on the stores the repository's examples write: each example's own code (the
//! `examples/*.rs` files, compiled in here) fills a store, and every read command of the
//! real binary is run on it, beside a process that holds the store open for writing. The
//! outputs are checked against what the example wrote, and `data.mdb` must come out byte
//! for byte as it went in.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::Path;
use std::process::{Command, Output};

use assert_cmd::cargo::CommandCargoExt;
use base64::Engine as _;
use serde_json::Value;

#[path = "../../examples/audit.rs"]
#[allow(dead_code)]
mod audit;
#[path = "../../examples/bank.rs"]
#[allow(dead_code)]
mod bank;
#[path = "../../examples/encrypted.rs"]
#[allow(dead_code)]
mod encrypted;
#[path = "../../examples/evolution.rs"]
#[allow(dead_code)]
mod evolution;
#[path = "../../examples/orders.rs"]
#[allow(dead_code)]
mod orders;
#[path = "../../examples/projection.rs"]
#[allow(dead_code)]
mod projection;
#[path = "../../examples/quickstart.rs"]
#[allow(dead_code)]
mod quickstart;

fn varve<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::cargo_bin("varve").expect("binary").args(args).output().expect("runs")
}

/// Runs a command that must succeed; its standard output.
fn ok<S: AsRef<OsStr> + Debug>(args: &[S]) -> String {
    let out = varve(args);
    assert!(out.status.success(), "varve {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn json<S: AsRef<OsStr> + Debug>(args: &[S]) -> Value {
    serde_json::from_str(&ok(args)).unwrap_or_else(|e| panic!("varve {args:?}: {e}"))
}

fn json_lines<S: AsRef<OsStr> + Debug>(args: &[S]) -> Vec<Value> {
    ok(args).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

/// What the read commands said about a store.
struct Tour {
    info: Value,
    streams: Vec<Value>,
    export: Vec<Value>,
    checkpoints: Vec<Value>,
}

/// Every read command on the store in `dir` (`key`: its key file), with the store held open
/// for writing by this process meanwhile. Checks what the commands must agree on, and that
/// `data.mdb` is unchanged.
fn tour(dir: &Path, key: Option<&Path>) -> Tour {
    let store = dir.to_str().unwrap();
    let key = key.map(|k| k.to_str().unwrap());
    let run = |args: &[&str]| -> Vec<String> {
        // The command, the store, then the command's other arguments.
        let mut all: Vec<String> = vec!["--json".into(), args[0].to_owned(), store.to_owned()];
        all.extend(args[1..].iter().map(|a| (*a).to_owned()));
        if let Some(key) = key {
            all.extend(["--key-file".to_owned(), key.to_owned()]);
        }
        all
    };

    let before = std::fs::read(dir.join("data.mdb")).unwrap();
    let writer = match key {
        Some(key) => varvedb::Options::new()
            .encryption_key(varvedb::MasterKey::from_slice(&std::fs::read(key).unwrap()).unwrap())
            .open(dir)
            .unwrap(),
        None => varvedb::Varve::open(dir).unwrap(),
    };

    let info = json(&run(&["info"]));
    let streams = json_lines(&run(&["streams"]));
    let export = json_lines(&run(&["export"]));
    let log = json_lines(&run(&["log"]));
    let checkpoints = json_lines(&run(&["checkpoints"]));
    let verify = json(&run(&["verify"]));
    let events = info["events"].as_u64().unwrap();

    assert_eq!(export.len() as u64, events, "export has every event");
    assert_eq!(log, export, "the log and the export agree");
    assert_eq!(streams.len() as u64, info["streams"].as_u64().unwrap());
    let versions: u64 = streams.iter().map(|s| s["version"].as_u64().unwrap()).sum();
    assert_eq!(versions, events, "the streams' versions add up to the log");
    assert_eq!(verify["ok"], true);
    assert_eq!(verify["events"].as_u64(), Some(events));
    for (i, e) in export.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1));
    }
    for c in &checkpoints {
        let (seq, lag) = (c["checkpoint"].as_u64().unwrap(), c["lag"].as_u64().unwrap());
        assert_eq!(seq + lag, events, "{c}");
        assert!(!c["name"].as_str().unwrap().starts_with('\u{fffd}'), "no owner records: {c}");
    }

    // One stream read whole, one event by seq, the last events.
    let first = &streams[0];
    let id = first["stream"].as_str().unwrap();
    let read = json_lines(&run(&["read", id]));
    assert_eq!(read.len() as u64, first["version"].as_u64().unwrap());
    let of_stream: Vec<&Value> = export.iter().filter(|e| e["stream"] == id).collect();
    assert_eq!(read.iter().collect::<Vec<_>>(), of_stream);
    let mid = (events / 2).max(1);
    let got = json(&run(&["get", &mid.to_string()]));
    assert_eq!(got, export[mid as usize - 1]);
    let tail = json_lines(&run(&["tail", "-n", "3"]));
    assert_eq!(tail, export[export.len().saturating_sub(3)..]);

    drop(writer);
    assert!(std::fs::read(dir.join("data.mdb")).unwrap() == before, "read commands leave data.mdb as it was");
    Tour { info, streams, export, checkpoints }
}

fn types(export: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in export {
        *counts.entry(e["type"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    counts
}

#[test]
fn quickstart() {
    let dir = tempfile::tempdir().unwrap();
    quickstart::run(dir.path()).unwrap();
    let t = tour(dir.path(), None);
    assert_eq!(t.streams.len(), 8, "eight accounts");
    assert_eq!(t.info["schemas"].as_array().map(Vec::len), Some(0), "raw rkyv payloads, no registry");
    // Each account opens with a deposit; its raw payload carries the memo.
    for e in &t.export[..8] {
        assert_eq!(e["type"], "deposited");
        assert_eq!(e["version"], 1);
        let payload =
            base64::engine::general_purpose::STANDARD.decode(e["payload_base64"].as_str().unwrap()).unwrap();
        assert!(payload.windows(15).any(|w| w == b"opening balance"), "{e}");
    }
}

#[test]
fn orders() {
    let dir = tempfile::tempdir().unwrap();
    orders::run(dir.path()).unwrap();
    let t = tour(dir.path(), None);
    assert_eq!(t.streams.len(), 2);
    assert!(t.streams.iter().all(|s| s["kind"] == "order" && s["version"] == 3));
    let first = &t.export[0];
    assert_eq!(first["type"], "order.placed");
    assert_eq!(first["payload"]["customer"], "ana");
    assert_eq!(
        first["payload"]["lines"][0],
        serde_json::json!({"sku": "tea", "quantity": 2, "unit_cents": 450})
    );
    assert_eq!(t.export[1]["payload"]["line"]["sku"], "mug");
    assert_eq!(t.export[2]["type"], "order.shipped");
    assert_eq!(t.export[2]["payload"]["carrier"], "dhl");
    assert!(t.info["schemas"].as_array().unwrap().iter().all(|s| s["described"] == true));
}

#[test]
fn bank() {
    let dir = tempfile::tempdir().unwrap();
    bank::run(dir.path()).unwrap();
    let t = tour(dir.path(), None);
    let kinds: Vec<&str> = t.streams.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["account", "account", "alerts"]);
    // Typed metadata, decoded: who asked, and a correlation id per command.
    let first = &t.export[0];
    assert_eq!(first["type"], "account.deposited");
    assert_eq!(first["metadata"]["user"], "teller-7");
    assert_eq!(first["metadata"]["correlation"], 1);
    // The alert names the withdrawal that caused it.
    let alerts: Vec<&Value> = t.export.iter().filter(|e| e["type"] == "alert.large-withdrawal").collect();
    assert_eq!(alerts.len(), 1);
    let cause = alerts[0]["metadata"]["causation"].as_u64().expect("a causation seq");
    let withdrawal = &t.export[cause as usize - 1];
    assert_eq!(withdrawal["type"], "account.withdrawn");
    assert!(withdrawal["payload"]["cents"].as_u64().unwrap() >= 5_000);
    assert_eq!(alerts[0]["metadata"]["correlation"], withdrawal["metadata"]["correlation"]);
    // The projection and the processor, each with its checkpoint.
    let names: Vec<&str> = t.checkpoints.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["balances", "notifier"]);
}

#[test]
fn evolution() {
    let dir = tempfile::tempdir().unwrap();
    evolution::run(dir.path()).unwrap();
    let t = tour(dir.path(), None);
    let schemas: Vec<u64> =
        t.info["schemas"].as_array().unwrap().iter().map(|s| s["version"].as_u64().unwrap()).collect();
    assert_eq!(schemas, [1, 2]);
    // Both versions decode as stored: the old shape, and the new one with its currency.
    let old: Vec<&Value> = t.export.iter().filter(|e| e["schema_version"] == 1).collect();
    let new: Vec<&Value> = t.export.iter().filter(|e| e["schema_version"] == 2).collect();
    assert!(!old.is_empty() && !new.is_empty());
    assert!(old.iter().all(|e| e["payload"]["currency"].is_null() && e["payload"]["amount_cents"].is_u64()));
    assert!(new.iter().all(|e| e["payload"]["currency"].is_string()));
    assert_eq!(t.checkpoints.len(), 1);
    assert_eq!(t.checkpoints[0]["lag"], 0);
}

#[test]
fn projection() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(projection::run(dir.path())).unwrap();
    let t = tour(dir.path(), None);
    let counts = types(&t.export);
    assert_eq!(counts.get("order.placed"), Some(&1000));
    assert_eq!(counts.get("order.cancelled"), Some(&10));
    // Each cancellation undoes an order placed before it, for the same customer and amount.
    for (i, e) in t.export.iter().enumerate().filter(|(_, e)| e["type"] == "order.cancelled") {
        assert!(
            t.export[..i].iter().any(|p| p["type"] == "order.placed" && p["payload"] == e["payload"]),
            "{e}"
        );
    }
    assert_eq!(t.checkpoints[0]["name"], "customer-totals");
    assert_eq!(t.checkpoints[0]["lag"], 0);
}

#[test]
fn audit() {
    let dir = tempfile::tempdir().unwrap();
    audit::run(dir.path()).unwrap();
    let t = tour(dir.path(), None);
    // The actions are JSON bytes without a registered type: base64, which decodes to them.
    for e in &t.export {
        let raw =
            base64::engine::general_purpose::STANDARD.decode(e["payload_base64"].as_str().unwrap()).unwrap();
        let action: Value = serde_json::from_slice(&raw).unwrap();
        assert!(action["user"].is_u64(), "{action}");
        assert_eq!(e["stream"].as_str().unwrap().trim_start_matches(['0', '-']), action["user"].to_string());
    }
}

#[test]
fn encrypted() {
    let dir = tempfile::tempdir().unwrap();
    let key = encrypted::run(dir.path()).unwrap();
    let key_file = dir.path().join("master.key");
    std::fs::write(&key_file, key.as_bytes()).unwrap();
    let store = dir.path().join("customers");

    // Without the key: refused, nothing printed, no name leaks.
    let before = std::fs::read(store.join("data.mdb")).unwrap();
    for command in ["export", "read", "log", "info"] {
        let mut args = vec![command, store.to_str().unwrap()];
        if command == "read" {
            args.push("0xc000");
        }
        let out = varve(&args);
        assert_eq!(out.status.code(), Some(1), "{command}");
        assert!(out.stdout.is_empty(), "{command}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--key-file"), "{command}");
    }
    assert!(std::fs::read(store.join("data.mdb")).unwrap() == before);

    // With it: decrypted and decoded; the shredded customer's events keep their places only.
    let t = tour(&store, Some(&key_file));
    assert_eq!(t.info["encrypted"], true);
    assert_eq!(t.export.len(), 6);
    assert_eq!(t.export[0]["payload"], serde_json::json!({"name": "Ana Lima", "email": "ana@example.com"}));
    assert_eq!(t.export[5]["payload"]["address"], "12 Harbour Road");
    let shredded: Vec<u64> =
        t.export.iter().filter(|e| e["shredded"] == true).map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(shredded, [3, 4]);
    assert!(t.export.iter().filter(|e| e["shredded"] == true).all(|e| e["payload"].is_null()));
    let raw =
        json_lines(&["export", "--raw", store.to_str().unwrap(), "--key-file", key_file.to_str().unwrap()]);
    assert!(raw.iter().any(|l| l["payload_base64"].is_string()));

    // The backup the example took reads the same under the same key.
    let backup = tour(&dir.path().join("backup"), Some(&key_file));
    assert_eq!(backup.export, t.export);
}
