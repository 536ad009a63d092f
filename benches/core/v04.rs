//! varvedb 0.4.2 (crates.io), driven in a child process: `benches/varvedb04`.
//!
//! It cannot share this binary: Cargo unifies rkyv's format features within a build, and our
//! crate turns on `unaligned`, `little_endian` and `pointer_width_32`, so 0.4.2 would be
//! compiled for a format its users never get. The child is its own build with its own lock
//! file; this module builds it (a no-op when it is up to date), starts it once and sends it
//! one command per measurement, so it alternates with the other subjects like they do. The
//! child keeps the read stores open between repetitions, as the other subjects do.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::{Latency, Res, Sample, Shape};

pub(crate) struct V04 {
    child: Child,
    /// `None` once dropping: closing it is what tells the child to exit.
    input: Option<ChildStdin>,
    output: BufReader<ChildStdout>,
}

/// Builds the child into `<our target dir>/varvedb04`, apart from our own build.
fn build() -> Res<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/varvedb04/Cargo.toml");
    // This binary is `<target>/<profile>/deps/core-<hash>`.
    let exe = std::env::current_exe()?;
    let target = exe.ancestors().nth(3).ok_or("cannot place the child's target directory")?.join("varvedb04");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--locked", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .status()?;
    if !status.success() {
        return Err(format!("building {} failed ({status})", manifest.display()).into());
    }
    Ok(target.join("release").join("varvedb04-bench"))
}

fn arg(path: &Path) -> Res<&str> {
    let s = path.to_str().ok_or("a temporary path is not UTF-8")?;
    // The protocol separates arguments with whitespace.
    if s.contains(char::is_whitespace) {
        return Err(format!("the temporary path {s:?} contains whitespace; set TMPDIR").into());
    }
    Ok(s)
}

impl V04 {
    pub(crate) fn start() -> Res<V04> {
        let exe = build()?;
        let mut child = Command::new(&exe).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let input = child.stdin.take().ok_or("no stdin")?;
        let output = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(V04 { child, input: Some(input), output })
    }

    fn call(&mut self, command: &str) -> Res<HashMap<String, String>> {
        let input = self.input.as_mut().ok_or("closed")?;
        writeln!(input, "{command}")?;
        input.flush()?;
        let mut line = String::new();
        self.output.read_line(&mut line)?;
        let line = line.trim_end();
        if let Some(message) = line.strip_prefix("err ") {
            return Err(format!("varvedb 0.4.2 `{command}`: {message}").into());
        }
        let fields = line.strip_prefix("ok").ok_or_else(|| format!("the 0.4.2 child answered {line:?}"))?;
        Ok(fields
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    fn sample(&mut self, command: &str) -> Res<Sample> {
        let reply = self.call(command)?;
        let field =
            |k: &str| -> Res<u64> { Ok(reply.get(k).ok_or_else(|| format!("no {k} in reply"))?.parse()?) };
        let mut sample = Sample::new(field("events")?, Duration::from_nanos(field("nanos")?));
        if let Ok(commits) = field("commits") {
            sample.note = format!(" ({commits} commits)");
        }
        Ok(sample)
    }

    /// Checks the bulk loader against 0.4.2's own writes; returns the size of a stored event.
    pub(crate) fn check_loader(&mut self) -> Res<usize> {
        let (api, loader) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let reply = self.call(&format!("check-loader {} {}", arg(api.path())?, arg(loader.path())?))?;
        Ok(reply.get("value_bytes").ok_or("no value_bytes")?.parse()?)
    }

    pub(crate) fn append(&mut self, dir: &Path, shape: Shape, time: Duration) -> Res<Sample> {
        let (kind, batch) = match shape {
            Shape::OneStream { batch } => ("one", batch),
            Shape::Spread { batch } => ("spread", batch),
        };
        self.sample(&format!("append {} {kind} {batch} {}", arg(dir)?, time.as_millis()))
    }

    pub(crate) fn concurrent(&mut self, dir: &Path, writers: usize, time: Duration) -> Res<Sample> {
        self.sample(&format!("concurrent {} {writers} {}", arg(dir)?, time.as_millis()))
    }

    /// Writes `streams * per` events interleaved into `dir` with the bulk loader and keeps
    /// the store open.
    pub(crate) fn load_log(&mut self, dir: &Path, streams: usize, per: u64) -> Res<()> {
        self.call(&format!("load-interleaved {} {streams} {per}", arg(dir)?)).map(drop)
    }

    /// Appends `n` events to one stream through 0.4.2's API and keeps the store open.
    pub(crate) fn load_single(&mut self, dir: &Path, n: u64) -> Res<()> {
        self.call(&format!("load-single {} {n}", arg(dir)?)).map(drop)
    }

    pub(crate) fn scan(&mut self, dir: &Path) -> Res<Sample> {
        self.sample(&format!("scan {}", arg(dir)?))
    }

    pub(crate) fn fold(&mut self, dir: &Path) -> Res<Sample> {
        self.sample(&format!("fold {}", arg(dir)?))
    }

    pub(crate) fn close(&mut self, dir: &Path) -> Res<()> {
        self.call(&format!("close {}", arg(dir)?)).map(drop)
    }

    pub(crate) fn latency(&mut self, dir: &Path, samples: u64) -> Res<Vec<Latency>> {
        let reply = self.call(&format!("latency {} {samples}", arg(dir)?))?;
        let pairs = reply.get("samples").ok_or("no samples")?;
        pairs
            .split(',')
            .map(|pair| {
                let (total, commit) = pair.split_once(':').ok_or("bad sample")?;
                Ok(Latency {
                    total: Duration::from_nanos(total.parse()?),
                    commit: Duration::from_nanos(commit.parse()?),
                })
            })
            .collect()
    }
}

impl Drop for V04 {
    fn drop(&mut self) {
        // End of input ends the child's loop.
        self.input = None;
        let _ = self.child.wait();
    }
}
