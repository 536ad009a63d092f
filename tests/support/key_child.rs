//! Child process for the multi-process tests of `tests/encryption.rs`: opens a store with the
//! master key given (or none) and runs commands from stdin, one per line, answering each with
//! one line on stdout, so the parent can interleave it with its own process's operations.
//!
//! Usage: `key-child <store dir> <key byte | none>`; prints `opened` once open.
//! Commands: `append <stream>` (one event, `ExpectedVersion::Auto`), `read <seq>`,
//! `shred <stream>`, `rotate <key byte>`, `quit`. Answers: `ok <detail>` or `err <Debug of the error>`.

use std::io::{BufRead, Write};

use varvedb::{ExpectedVersion, MasterKey, NewEvent, Options};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: key-child <store dir> <key byte | none>");
    let key = args.next().expect("usage: key-child <store dir> <key byte | none>");
    let mut options = Options::new();
    if key != "none" {
        options = options.encryption_key(MasterKey::from_bytes([key.parse().expect("a key byte"); 32]));
    }
    let db = options.open(&dir).expect("open store");
    let mut out = std::io::stdout();
    writeln!(out, "opened").unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let (command, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let answer = match command {
            "append" => {
                let stream: u128 = arg.parse().expect("a stream id");
                let event = NewEvent::new("noted", format!("written by the child to {stream}").into_bytes());
                db.append(stream, ExpectedVersion::Auto, [event]).map(|a| format!("{}", a.first_seq))
            }
            "read" => {
                let seq: u64 = arg.parse().expect("a seq");
                db.begin_read()
                    .and_then(|view| view.event(seq).map(|e| e.map(|e| e.payload().len())))
                    .map(|len| format!("{len:?}"))
            }
            "shred" => {
                let stream: u128 = arg.parse().expect("a stream id");
                db.shred(stream).map(|shredded| shredded.to_string())
            }
            "rotate" => {
                let byte: u8 = arg.parse().expect("a key byte");
                db.rotate_master_key(&MasterKey::from_bytes([byte; 32])).map(|n| n.to_string())
            }
            "quit" => break,
            other => panic!("unknown command {other:?}"),
        };
        match answer {
            Ok(detail) => writeln!(out, "ok {detail}").unwrap(),
            Err(e) => writeln!(out, "err {e:?}").unwrap(),
        }
        out.flush().unwrap();
    }
}
