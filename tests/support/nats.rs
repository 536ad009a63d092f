//! A NATS server with JetStream for a test: on a free port of 127.0.0.1, its store in a
//! temporary directory, killed when dropped.

#![allow(dead_code, reason = "each test uses part of it")]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Makes sure `nats-server` is on PATH, installing the Debian package `nats-server` if it is
/// not, so that `cargo test` alone sets up what these tests need on a fresh machine (as
/// `.ci/run` does before them). Once per test process.
fn ensure_installed() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        let present =
            || Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success());
        if present() {
            return Ok(());
        }
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        // The package lists of a fresh machine may be empty: install, else update and retry.
        if !apt(&["install", "-y", "-qq", "nats-server"]) {
            apt(&["update", "-qq"]);
            apt(&["install", "-y", "-qq", "nats-server"]);
        }
        if present() {
            Ok(())
        } else {
            Err("nats-server is not on PATH and `apt-get install nats-server` did not provide it; \
                 install the Debian package nats-server (as root)"
                .to_owned())
        }
    });
    if let Err(why) = result {
        panic!("{why}");
    }
}

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server` (from PATH) and waits until it accepts connections.
    pub fn start() -> NatsServer {
        ensure_installed();
        let dir = tempfile::tempdir().unwrap();
        // Ask the OS for a free port, then free it for the server.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = NatsServer { child: None, port, store: dir.path().join("js"), _dir: dir };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server, if running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not accept connections within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
