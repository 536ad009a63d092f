//! `varve`: look into a varvedb store without writing Rust. See `docs/cli.md`.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::value::RawValue;
use varvedb::{
    Error, ExpectedVersion, Layout, MasterKey, NewEvent, Options, ReadView, RecordedEvent, StreamId, Varve,
    WriteBatch,
};

/// Exit status: the command failed (the store could not be opened, a stream or seq does
/// not exist, an I/O error). Usage errors exit with 2, from clap.
const EXIT_FAILED: u8 = 1;
/// Exit status of `verify` when the store is damaged.
const EXIT_DAMAGED: u8 = 3;

/// Inspect, verify, export and follow a varvedb store.
///
/// Stores are opened read-only (the library's read-only mode: no writer lock, `data.mdb`
/// never written), except by the commands that change them (`rotate-key`, `shred`); `import`
/// writes a new store, `backup` a copy. No other command creates a store.
#[derive(Parser)]
#[command(name = "varve", version)]
struct Cli {
    /// Print JSON (one object, or one per line for event listings) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Store {
    /// The store's directory (the one holding `data.mdb`).
    store: PathBuf,
    /// The master key of an encrypted store: a file of 32 bytes, or of 64 hex digits.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Format, size, counts, encryption and registered schemas.
    Info(Store),
    /// Streams with their kind and version.
    Streams {
        #[command(flatten)]
        store: Store,
        /// Only streams of this kind.
        #[arg(long)]
        kind: Option<String>,
    },
    /// The events of one stream.
    Read {
        #[command(flatten)]
        store: Store,
        /// The stream's id: a UUID, or a number (decimal or 0x-prefixed hex).
        stream: String,
        /// The first version to print.
        #[arg(long, default_value_t = 1)]
        from: u32,
    },
    /// The global log, from a seq on.
    Log {
        #[command(flatten)]
        store: Store,
        /// The first seq to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Print at most this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// One event by its seq.
    Get {
        #[command(flatten)]
        store: Store,
        /// The event's global sequence number.
        seq: u64,
    },
    /// Prints the newest events, and with `-f` follows new commits (also of other processes).
    Tail {
        #[command(flatten)]
        store: Store,
        /// Keep running, printing each event as it is committed.
        #[arg(short, long)]
        follow: bool,
        /// How many of the newest events to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        /// How often to look for new commits, in milliseconds.
        #[arg(long, default_value_t = 100)]
        poll_ms: u64,
    },
    /// Checks every record, index and page; exits with 3 naming each damaged seq.
    Verify(Store),
    /// Every event as JSON Lines, payloads and typed metadata decoded through the schema
    /// registry.
    Export {
        #[command(flatten)]
        store: Store,
        /// Keep payloads and metadata as base64, after a line per layout description of the
        /// registry: the form `import` reads.
        #[arg(long)]
        raw: bool,
    },
    /// Reads an export made with `--raw` into a new store, keeping seqs, versions, ids,
    /// timestamps, kinds, metadata, schema versions and layout descriptions.
    Import {
        /// The directory of the new store (must not hold a store yet).
        store: PathBuf,
        /// The JSON Lines file to read; `-` reads standard input.
        input: PathBuf,
        /// Encrypt the new store under this master key (32 bytes, or 64 hex digits).
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
    /// Writes a compacted copy of the store to DEST, beside running writers.
    Backup {
        #[command(flatten)]
        store: Store,
        /// The directory of the copy (must not hold a store yet).
        dest: PathBuf,
    },
    /// Projections and processors: their checkpoint and how far they lag.
    Checkpoints(Store),
    /// Re-wraps every stream key of an encrypted store under a new master key.
    RotateKey {
        #[command(flatten)]
        store: Store,
        /// The new master key (same format as `--key-file`).
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
    /// Deletes a stream's key in an encrypted store: its events can never be read again.
    Shred {
        #[command(flatten)]
        store: Store,
        /// The stream's id.
        stream: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("varve: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[expect(clippy::too_many_lines, reason = "one short arm per command")]
fn run(cli: &Cli) -> Result<u8> {
    let out = std::io::stdout().lock();
    let mut out = BufWriter::new(out);
    let code = match &cli.command {
        Command::Info(store) => info(&open(store, Access::Read)?, cli.json, &mut out)?,
        Command::Streams { store, kind } => {
            streams(&open(store, Access::Read)?, kind.as_deref(), cli.json, &mut out)?
        }
        Command::Read { store, stream, from } => {
            let db = open(store, Access::Read)?;
            let view = db.begin_read()?;
            let stream = parse_stream(stream)?;
            if view.stream_version(stream)?.is_none() {
                return Err(format!("stream {stream} has no events").into());
            }
            let mut printer = Printer::new(&view, false, cli.json)?;
            let mut events = view.read_stream(stream, *from)?;
            let mut buf = Vec::new();
            while let Some(event) = events.next_reusing(&mut buf) {
                printer.print(&event?, &mut out)?;
            }
            0
        }
        Command::Log { store, from, limit } => {
            let db = open(store, Access::Read)?;
            let view = db.begin_read()?;
            let mut printer = Printer::new(&view, false, cli.json)?;
            let mut events = view.read_all(*from)?;
            let mut buf = Vec::new();
            let mut left = limit.unwrap_or(u64::MAX);
            while left > 0
                && let Some(event) = events.next_reusing(&mut buf)
            {
                printer.print(&event?, &mut out)?;
                left -= 1;
            }
            0
        }
        Command::Get { store, seq } => {
            let db = open(store, Access::Read)?;
            let view = db.begin_read()?;
            let mut printer = Printer::new(&view, false, cli.json)?;
            let event = view.event(*seq)?.ok_or_else(|| format!("no event with seq {seq}"))?;
            printer.print(&event, &mut out)?;
            0
        }
        Command::Tail { store, follow, lines, poll_ms } => tail(
            &open(store, Access::Read)?,
            *follow,
            *lines,
            Duration::from_millis(*poll_ms),
            cli.json,
            &mut out,
        )?,
        Command::Verify(store) => verify(&open(store, Access::Read)?, cli.json, &mut out)?,
        Command::Export { store, raw } => {
            let db = open(store, Access::Read)?;
            let view = db.begin_read()?;
            let mut printer = Printer::new(&view, *raw, true)?;
            if *raw {
                write_layouts(&view, &mut out)?;
            }
            let bar = progress(view.last_seq()?, "export");
            let mut events = view.read_all(1)?;
            let mut buf = Vec::new();
            while let Some(event) = events.next_reusing(&mut buf) {
                printer.print(&event?, &mut out)?;
                bar.inc(1);
            }
            bar.finish_and_clear();
            0
        }
        Command::Import { store, input, key_file } => import(store, input, key_file.as_deref(), &mut out)?,
        Command::Backup { store, dest } => {
            let db = open(store, Access::Read)?;
            let bar = spinner("backup");
            db.backup(dest)?;
            bar.finish_and_clear();
            let last = db.begin_read()?.last_seq()?;
            if cli.json {
                writeln!(out, "{}", serde_json::json!({ "backup": dest, "last_seq": last }))?;
            } else {
                writeln!(out, "backed up {} to {} (last seq {last})", store.store.display(), dest.display())?;
            }
            0
        }
        Command::Checkpoints(store) => {
            let db = open(store, Access::Read)?;
            let view = db.begin_read()?;
            let last = view.last_seq()?;
            for (name, seq) in view.checkpoints()? {
                let lag = last.saturating_sub(seq);
                if cli.json {
                    writeln!(out, "{}", serde_json::json!({ "name": name, "checkpoint": seq, "lag": lag }))?;
                } else {
                    writeln!(out, "{name}\tcheckpoint {seq}\tlag {lag}")?;
                }
            }
            0
        }
        Command::RotateKey { store, new_key_file } => {
            if store.key_file.is_none() {
                return Err("rotate-key needs the current key: --key-file".into());
            }
            let db = open(store, Access::Write)?;
            let new_key = read_key(new_key_file)?;
            let streams = db.rotate_master_key(&new_key)?;
            writeln!(out, "rotated the master key; {streams} stream keys re-wrapped")?;
            0
        }
        Command::Shred { store, stream } => {
            let db = open(store, Access::Write)?;
            let stream = parse_stream(stream)?;
            let shredded = db.shred(stream)?;
            if shredded {
                writeln!(out, "shredded stream {stream}")?;
            } else {
                writeln!(out, "stream {stream} was shredded already, or has no key")?;
            }
            0
        }
    };
    out.flush()?;
    Ok(code)
}

/// A progress bar on stderr; hidden when stderr is not a terminal, so scripts see nothing.
fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({per_sec}, {eta} left)")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// A spinner on stderr for work whose length is unknown.
fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// How a command opens its store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Read-only (`Options::read_only`): never writes `data.mdb`, takes no writer lock.
    Read,
    /// For the commands that change the store.
    Write,
}

/// Opens an existing store; never creates one.
fn open(store: &Store, access: Access) -> Result<Varve> {
    if !store.store.join("data.mdb").is_file() {
        return Err(format!("no store at {} (no data.mdb)", store.store.display()).into());
    }
    let mut options = Options::new().read_only(access == Access::Read);
    if let Some(file) = &store.key_file {
        options = options.encryption_key(read_key(file)?);
    }
    match options.open(&store.store) {
        Err(Error::KeyRequired { .. }) => {
            Err(format!("{} is encrypted: give its key with --key-file", store.store.display()).into())
        }
        other => Ok(other?),
    }
}

fn read_key(file: &Path) -> Result<MasterKey> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read key file {}: {e}", file.display()))?;
    if bytes.len() == 32 {
        return Ok(MasterKey::from_slice(&bytes)?);
    }
    let text = std::str::from_utf8(&bytes).unwrap_or("").trim();
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let raw: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<std::result::Result<_, _>>()?;
        return Ok(MasterKey::from_slice(&raw)?);
    }
    Err(format!("key file {} holds neither 32 bytes nor 64 hex digits", file.display()).into())
}

fn parse_stream(s: &str) -> Result<StreamId> {
    if let Ok(id) = varvedb::uuid::Uuid::parse_str(s) {
        return Ok(StreamId::from(id));
    }
    let n = match s.strip_prefix("0x") {
        Some(hex) => u128::from_str_radix(hex, 16),
        None => s.parse::<u128>(),
    };
    n.map(StreamId::from).map_err(|_| format!("{s:?} is no stream id (a UUID or a number)").into())
}

fn info(db: &Varve, json: bool, out: &mut impl Write) -> Result<u8> {
    let view = db.begin_read()?;
    let file_bytes = std::fs::metadata(db.path().join("data.mdb"))?.len();
    let last_seq = view.last_seq()?;
    let streams = view.streams()?.len();
    let schemas = view.schemas()?;
    let metadata: Vec<u64> = view.metadata_layouts()?.into_iter().map(|(fp, _)| fp).collect();
    if json {
        let schemas: Vec<_> = schemas
            .iter()
            .map(|s| {
                serde_json::json!({
                    "type": s.type_tag,
                    "version": s.version,
                    "fingerprint": format!("{:#018x}", s.fingerprint),
                    "described": s.layout.is_some(),
                })
            })
            .collect();
        let info = serde_json::json!({
            "path": db.path(),
            "file_bytes": file_bytes,
            "map_size": db.map_size(),
            "events": last_seq,
            "streams": streams,
            "encrypted": db.is_encrypted(),
            "store_id": db.store_id().map(|id| format!("{id:?}")),
            "schemas": schemas,
            "metadata_types": metadata.iter().map(|fp| format!("{fp:#018x}")).collect::<Vec<_>>(),
        });
        writeln!(out, "{info}")?;
    } else {
        writeln!(out, "store      {}", db.path().display())?;
        writeln!(out, "file       {file_bytes} bytes (map size {})", db.map_size())?;
        writeln!(out, "events     {last_seq}")?;
        writeln!(out, "streams    {streams}")?;
        writeln!(out, "encrypted  {}", if db.is_encrypted() { "yes" } else { "no" })?;
        writeln!(out, "schemas    {}", schemas.len())?;
        for s in &schemas {
            let described = if s.layout.is_some() { "described" } else { "fingerprint only" };
            writeln!(out, "  {} v{}  {:#018x}  {described}", s.type_tag, s.version, s.fingerprint)?;
        }
        writeln!(out, "metadata   {} described type(s)", metadata.len())?;
        for fp in &metadata {
            writeln!(out, "  {fp:#018x}")?;
        }
    }
    Ok(0)
}

fn streams(db: &Varve, kind: Option<&str>, json: bool, out: &mut impl Write) -> Result<u8> {
    let view = db.begin_read()?;
    for s in view.streams()? {
        if kind.is_some() && s.kind.as_deref() != kind {
            continue;
        }
        if json {
            let line =
                serde_json::json!({ "stream": s.stream.to_string(), "kind": s.kind, "version": s.version });
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}\t{}\tversion {}", s.stream, s.kind.as_deref().unwrap_or("-"), s.version)?;
        }
    }
    Ok(0)
}

fn tail(
    db: &Varve,
    follow: bool,
    lines: u64,
    poll: Duration,
    json: bool,
    out: &mut impl Write,
) -> Result<u8> {
    let mut next = {
        let view = db.begin_read()?;
        view.last_seq()?.saturating_sub(lines) + 1
    };
    loop {
        {
            let view = db.begin_read()?;
            let mut printer = Printer::new(&view, false, json)?;
            let mut events = view.read_all(next)?;
            let mut buf = Vec::new();
            while let Some(event) = events.next_reusing(&mut buf) {
                let event = event?;
                printer.print(&event, out)?;
                next = event.seq() + 1;
            }
        }
        out.flush()?;
        if !follow {
            return Ok(0);
        }
        // Commits of other processes do not reach this process's watch: poll the log's end.
        std::thread::sleep(poll);
    }
}

fn verify(db: &Varve, json: bool, out: &mut impl Write) -> Result<u8> {
    let view = db.begin_read()?;
    let last = view.last_seq()?;
    // Every record on its own first, so that all damaged seqs are named, not the first only.
    // A view keeps what it decrypts until it ends: a fresh one per chunk bounds the memory.
    let mut damaged = Vec::new();
    let bar = progress(last, "records");
    let mut seq = 1;
    while seq <= last {
        let chunk = db.begin_read()?;
        for s in seq..=last.min(seq + 4095) {
            if let Err(e) = chunk.event(s) {
                damaged.push((s, e.to_string()));
            }
            bar.inc(1);
        }
        seq += 4096;
    }
    bar.finish_and_clear();
    let bar = spinner("pages, indexes and blobs");
    let whole = view.check_integrity();
    bar.finish_and_clear();
    if json {
        let seqs: Vec<_> = damaged.iter().map(|(s, e)| serde_json::json!({ "seq": s, "error": e })).collect();
        let report = match &whole {
            Ok(r) => serde_json::json!({
                "ok": damaged.is_empty(), "events": r.events, "streams": r.streams,
                "blob_references": r.blob_references, "damaged": seqs,
            }),
            Err(e) => serde_json::json!({ "ok": false, "error": e.to_string(), "damaged": seqs }),
        };
        writeln!(out, "{report}")?;
    } else {
        for (seq, e) in &damaged {
            writeln!(out, "damaged seq {seq}: {e}")?;
        }
        match &whole {
            Ok(r) if damaged.is_empty() => writeln!(
                out,
                "ok: {} events, {} streams, {} blob references, {} pages checked",
                r.events, r.streams, r.blob_references, r.file.pages
            )?,
            Ok(_) => {}
            Err(e) => writeln!(out, "damaged: {e}")?,
        }
    }
    Ok(if damaged.is_empty() && whole.is_ok() { 0 } else { EXIT_DAMAGED })
}

/// A layout description at the head of a `--raw` export: of an event type's schema
/// (`type`, `schema_version`, `fingerprint`) or of a typed metadata type
/// (`metadata_fingerprint`).
#[derive(Serialize, serde::Deserialize)]
struct LayoutLine {
    layout_base64: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none", default)]
    type_tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    schema_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    metadata_fingerprint: Option<String>,
}

/// The registry's layout descriptions, one line each, so that an import records them too.
fn write_layouts(view: &ReadView<'_>, out: &mut impl Write) -> Result<()> {
    for s in view.schemas()? {
        if let Some(layout) = &s.layout {
            let line = LayoutLine {
                layout_base64: BASE64.encode(layout.encode()),
                type_tag: Some(s.type_tag.clone()),
                schema_version: Some(s.version),
                fingerprint: Some(format!("{:#018x}", s.fingerprint)),
                metadata_fingerprint: None,
            };
            serde_json::to_writer(&mut *out, &line)?;
            writeln!(out)?;
        }
    }
    for (fp, layout) in view.metadata_layouts()? {
        let line = LayoutLine {
            layout_base64: BASE64.encode(layout.encode()),
            type_tag: None,
            schema_version: None,
            fingerprint: None,
            metadata_fingerprint: Some(format!("{fp:#018x}")),
        };
        serde_json::to_writer(&mut *out, &line)?;
        writeln!(out)?;
    }
    Ok(())
}

/// Layout descriptions read from an export, to be recorded with the first event of each.
#[derive(Default)]
struct ImportedLayouts {
    schemas: HashMap<(String, u32), &'static [u8]>,
    metadata: HashMap<u64, &'static [u8]>,
}

impl ImportedLayouts {
    fn add(&mut self, line: LayoutLine) -> Result<()> {
        let bytes = BASE64.decode(&line.layout_base64)?;
        Layout::decode(&bytes)?;
        // The library takes descriptions as `'static`: one per schema of the export, kept
        // until this short-lived process ends.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        match (line.type_tag, line.schema_version, line.metadata_fingerprint) {
            (Some(tag), Some(version), None) => {
                self.schemas.insert((tag, version), bytes);
            }
            (None, None, Some(fp)) => {
                self.metadata.insert(parse_fingerprint(&fp)?, bytes);
            }
            _ => return Err("a layout line names neither a schema nor a metadata type".into()),
        }
        Ok(())
    }
}

fn parse_fingerprint(s: &str) -> Result<u64> {
    Ok(u64::from_str_radix(s.trim_start_matches("0x"), 16)?)
}

/// A line of an export, as `import` reads it.
#[derive(serde::Deserialize)]
struct Imported {
    seq: u64,
    stream: String,
    version: u32,
    timestamp_micros: u64,
    id: Option<String>,
    kind: Option<String>,
    #[serde(rename = "type")]
    type_tag: String,
    schema_version: u32,
    fingerprint: Option<String>,
    metadata_base64: Option<String>,
    payload_base64: Option<String>,
    #[serde(default)]
    shredded: bool,
}

/// Events of one stream, consecutive in the log: one append.
struct Run {
    stream: StreamId,
    kind: Option<String>,
    first_version: u32,
    first_seq: u64,
    events: Vec<NewEvent>,
}

fn import(dir: &Path, input: &Path, key_file: Option<&Path>, out: &mut impl Write) -> Result<u8> {
    if dir.join("data.mdb").exists() {
        return Err(format!("{} holds a store already; import writes a new one", dir.display()).into());
    }
    let reader: Box<dyn std::io::BufRead> = if input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(input)?))
    };
    let mut options = Options::new();
    if let Some(file) = key_file {
        options = options.encryption_key(read_key(file)?);
    }
    let db = options.open(dir)?;
    let mut batch: Vec<Run> = Vec::new();
    let mut layouts = ImportedLayouts::default();
    let mut in_batch = 0usize;
    let mut count = 0u64;
    for (n, line) in std::io::BufRead::lines(reader).enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|err| format!("line {}: {err}", n + 1))?;
        if value.get("layout_base64").is_some() {
            let l: LayoutLine =
                serde_json::from_value(value).map_err(|err| format!("line {}: {err}", n + 1))?;
            layouts.add(l).map_err(|err| format!("line {}: {err}", n + 1))?;
            continue;
        }
        let e: Imported = serde_json::from_value(value).map_err(|err| format!("line {}: {err}", n + 1))?;
        let event =
            to_new_event(&e, &layouts).map_err(|err| format!("line {} (seq {}): {err}", n + 1, e.seq))?;
        let stream = parse_stream(&e.stream)?;
        match batch.last_mut() {
            Some(run) if run.stream == stream => run.events.push(event),
            _ => {
                // One append per stream and request: a stream met again starts a new request.
                if batch.iter().any(|r| r.stream == stream) || in_batch >= 1000 {
                    write_runs(&db, std::mem::take(&mut batch))?;
                    in_batch = 0;
                }
                let run = Run {
                    stream,
                    kind: e.kind,
                    first_version: e.version,
                    first_seq: e.seq,
                    events: vec![event],
                };
                batch.push(run);
            }
        }
        in_batch += 1;
        count += 1;
    }
    write_runs(&db, batch)?;
    writeln!(out, "imported {count} events into {}", dir.display())?;
    Ok(0)
}

fn to_new_event(e: &Imported, layouts: &ImportedLayouts) -> Result<NewEvent> {
    if e.shredded {
        return Err("a shredded event has no payload to import".into());
    }
    let payload =
        e.payload_base64.as_deref().ok_or("no payload_base64: import reads exports made with --raw")?;
    let mut event =
        NewEvent::new(e.type_tag.clone(), BASE64.decode(payload)?).with_timestamp(e.timestamp_micros);
    if let Some(meta) = &e.metadata_base64 {
        let meta = BASE64.decode(meta)?;
        let described = meta.first_chunk::<8>().and_then(|fp| layouts.metadata.get(&u64::from_le_bytes(*fp)));
        event = match described {
            Some(layout) => event.with_described_metadata(meta, layout),
            None => event.with_metadata(meta),
        };
    }
    if let Some(id) = &e.id {
        event = event.with_id(u128::from_str_radix(id, 16)?);
    }
    if e.schema_version != 0 {
        let fp = e.fingerprint.as_deref().ok_or("a typed event without its fingerprint")?;
        let fp = parse_fingerprint(fp)?;
        event = match layouts.schemas.get(&(e.type_tag.clone(), e.schema_version)) {
            Some(layout) => event.with_described_schema(e.schema_version, fp, layout),
            None => event.with_schema(e.schema_version, fp),
        };
    }
    Ok(event)
}

/// Writes runs in one request and checks each landed at its recorded seq and version.
fn write_runs(db: &Varve, runs: Vec<Run>) -> Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let mut batch = WriteBatch::new();
    let mut wanted = Vec::with_capacity(runs.len());
    for run in runs {
        let expected = match run.first_version {
            1 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v - 1),
        };
        wanted.push((run.first_seq, run.first_version));
        match &run.kind {
            Some(kind) if run.first_version == 1 => batch.append_kind(run.stream, kind, expected, run.events),
            _ => batch.append(run.stream, expected, run.events),
        };
    }
    for (appended, (seq, version)) in db.write(batch)?.iter().zip(wanted) {
        if (appended.first_seq, appended.first_version) != (seq, version) {
            return Err(format!(
                "seq {seq} landed at seq {} (version {} for {version}): the export has gaps",
                appended.first_seq, appended.first_version
            )
            .into());
        }
    }
    Ok(())
}

/// One event as a line of JSON.
#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    stream: String,
    version: u32,
    timestamp_micros: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(rename = "type")]
    type_tag: &'a str,
    schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_error: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    shredded: bool,
}

/// Prints events, decoding payloads through the layouts the registry holds.
struct Printer<'v> {
    view: &'v ReadView<'v>,
    layouts: HashMap<(String, u32), (u64, Option<Layout>)>,
    /// Layouts of typed metadata by fingerprint, looked up when first met.
    meta_layouts: HashMap<u64, Option<Layout>>,
    raw: bool,
    json: bool,
}

impl<'v> Printer<'v> {
    fn new(view: &'v ReadView<'v>, raw: bool, json: bool) -> Result<Self> {
        let layouts = view
            .schemas()?
            .into_iter()
            .map(|s| ((s.type_tag, s.version), (s.fingerprint, s.layout)))
            .collect();
        Ok(Printer { view, layouts, meta_layouts: HashMap::new(), raw, json })
    }

    fn print(&mut self, e: &RecordedEvent<'_>, out: &mut impl Write) -> Result<()> {
        let mut line = Line {
            seq: e.seq(),
            stream: e.stream().to_string(),
            version: e.version(),
            timestamp_micros: e.timestamp_micros(),
            id: e.id().map(|id| format!("{id:032x}")),
            // The kind once per stream, on its first event: what an import needs.
            kind: if e.version() == 1 { self.view.stream_kind(e.stream())?.map(str::to_owned) } else { None },
            type_tag: e.type_tag(),
            schema_version: e.schema_version(),
            fingerprint: None,
            metadata: None,
            metadata_base64: None,
            metadata_error: None,
            payload: None,
            payload_base64: None,
            payload_error: None,
            shredded: e.is_shredded(),
        };
        self.metadata(e.metadata(), &mut line)?;
        let schema = self.layouts.get(&(e.type_tag().to_owned(), e.schema_version()));
        line.fingerprint = schema.map(|(fp, _)| format!("{fp:#018x}"));
        if !e.is_shredded() {
            let layout = if self.raw { None } else { schema.and_then(|(_, l)| l.as_ref()) };
            match layout.map(|l| l.to_json(e.payload())) {
                Some(Ok(json)) => line.payload = Some(RawValue::from_string(json)?),
                Some(Err(err)) => {
                    line.payload_error = Some(err.to_string());
                    line.payload_base64 = Some(BASE64.encode(e.payload()));
                }
                None => line.payload_base64 = Some(BASE64.encode(e.payload())),
            }
        }
        if self.json {
            serde_json::to_writer(&mut *out, &line)?;
            writeln!(out)?;
        } else {
            let payload = match (&line.payload, &line.payload_base64) {
                _ if line.shredded => "(shredded)".to_owned(),
                (Some(p), _) => p.get().to_owned(),
                (None, Some(b)) => format!("base64:{b}"),
                (None, None) => String::new(),
            };
            let meta = match (&line.metadata, &line.metadata_base64) {
                (Some(m), _) => format!(" meta {}", m.get()),
                (None, Some(b)) => format!(" meta base64:{b}"),
                (None, None) => String::new(),
            };
            writeln!(
                out,
                "#{} {} v{} {} (schema v{}) {}{meta}",
                line.seq, line.stream, line.version, line.type_tag, line.schema_version, payload
            )?;
        }
        Ok(())
    }

    /// Typed metadata (fingerprint ‖ archive) as JSON through the layout the registry holds
    /// for its fingerprint; anything else, and everything under `--raw`, as base64.
    fn metadata(&mut self, bytes: &[u8], line: &mut Line<'_>) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let typed = match bytes.split_first_chunk::<8>() {
            Some((fp, archive)) if !self.raw => {
                let fp = u64::from_le_bytes(*fp);
                if !self.meta_layouts.contains_key(&fp) {
                    let layout = self.view.metadata_layout(fp)?;
                    self.meta_layouts.insert(fp, layout);
                }
                self.meta_layouts.get(&fp).and_then(Option::as_ref).map(|l| l.to_json(archive))
            }
            _ => None,
        };
        match typed {
            Some(Ok(json)) => line.metadata = Some(RawValue::from_string(json)?),
            Some(Err(err)) => {
                line.metadata_error = Some(err.to_string());
                line.metadata_base64 = Some(BASE64.encode(bytes));
            }
            None => line.metadata_base64 = Some(BASE64.encode(bytes)),
        }
        Ok(())
    }
}
